//! The broker: configuration, vhosts and the memory alarm.

use std::sync::Arc;

use dashmap::DashMap;
use lockgate_store::{Commit, DefinitionKind, Store};
use tokio::sync::watch;

use crate::ids::ConnectionId;
use crate::memory::MemoryMonitor;
use crate::vhost::VHost;

/// Broker settings, passed in by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Vhosts to create; "/" is the usual one.
    pub vhosts: Vec<String>,
    /// Bytes of held messages at which publishers are blocked; 0 disables the alarm.
    pub memory_high_watermark: u64,
    /// Largest accepted message body; the server enforces it at the content header.
    pub max_message_size: u64,
    /// Broker-wide consumer timeout in milliseconds (RabbitMQ's `consumer_timeout`), for
    /// queues whose arguments and policy set none; `None` disables it.
    pub consumer_timeout: Option<u64>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            vhosts: vec!["/".to_owned()],
            memory_high_watermark: 0,
            max_message_size: 128 * 1024 * 1024,
            consumer_timeout: None,
        }
    }
}

/// The broker: every vhost and the memory accounting they share.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    vhosts: DashMap<String, Arc<VHost>>,
    pub(crate) memory: Arc<MemoryMonitor>,
    store: Option<Store>,
    /// Queues wake the spill task through it when their in-memory head runs low.
    spill_wake: Arc<tokio::sync::Notify>,
}

impl Broker {
    /// A broker with the configured vhosts, each with its pre-declared exchanges.
    pub fn new(config: BrokerConfig) -> Arc<Self> {
        Self::build(config, None)
    }

    /// A broker that keeps durable definitions and persistent messages in `store`. Call
    /// [`Broker::recover`] with what [`Store::open`] returned before serving clients.
    pub fn with_store(config: BrokerConfig, store: Store) -> Arc<Self> {
        Self::build(config, Some(store))
    }

    fn build(config: BrokerConfig, store: Option<Store>) -> Arc<Self> {
        let memory = MemoryMonitor::new(config.memory_high_watermark);
        let broker = Self {
            vhosts: DashMap::new(),
            memory,
            config,
            store,
            spill_wake: Arc::new(tokio::sync::Notify::new()),
        };
        for name in &broker.config.vhosts {
            broker.add_vhost(name);
        }
        Arc::new(broker)
    }

    /// Its configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| Arc::clone(&v))
    }

    /// Creates a vhost unless it exists; returns it.
    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        let vhost = self.vhosts.entry(name.to_owned()).or_insert_with(|| {
            Arc::new_cyclic(|me| {
                VHost::new(
                    name.to_owned(),
                    Arc::clone(&self.memory),
                    self.store.clone(),
                    Arc::clone(&self.spill_wake),
                )
                .with_links(me.clone(), self.config.consumer_timeout)
            })
        });
        Arc::clone(&vhost)
    }

    /// Creates a vhost at runtime and stores it so that it survives a restart (vhosts from
    /// the config file are the config's business: use [`Broker::add_vhost`] for them).
    /// Returns the commit to await before reporting success; `None` without a store.
    pub fn create_vhost(&self, name: &str) -> (Arc<VHost>, Option<Commit>) {
        let vhost = self.add_vhost(name);
        let commit = self
            .store
            .as_ref()
            .map(|s| s.put_definition(DefinitionKind::VHost, name.as_bytes(), b""));
        (vhost, commit)
    }

    pub(crate) fn spill_wake(&self) -> &Arc<tokio::sync::Notify> {
        &self.spill_wake
    }

    /// The store, when the broker has one.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// A commit covering every store write queued so far; `None` without a store.
    pub fn sync(&self) -> Option<Commit> {
        self.store.as_ref().map(Store::sync)
    }

    /// Names of all vhosts.
    pub fn vhost_names(&self) -> Vec<String> {
        self.vhosts.iter().map(|v| v.key().clone()).collect()
    }

    /// The connection closed: deletes its exclusive queues in every vhost. Close (or drop)
    /// its channels first.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let vhosts: Vec<_> = self.vhosts.iter().map(|v| Arc::clone(&v)).collect();
        for vhost in vhosts {
            vhost.connection_closed(connection);
        }
    }

    /// Bytes of messages the broker holds (ready, unacked, or in a writer after a no-ack
    /// delivery).
    pub fn memory_used(&self) -> u64 {
        self.memory.used()
    }

    /// True while memory use is at or above the high watermark.
    pub fn memory_blocked(&self) -> bool {
        self.memory.blocked()
    }

    /// Follows the memory alarm: true above the watermark (stop reading from publishing
    /// connections), false below it (resume).
    pub fn memory_watch(&self) -> watch::Receiver<bool> {
        self.memory.subscribe()
    }
}
