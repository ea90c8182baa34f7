//! Startup: rebuilding vhosts, exchanges, queues, bindings and persistent messages from
//! what [`lockgate_store::Store::open`] recovered.
//!
//! Order matters: vhosts, then exchanges, then queues, then bindings (which need both
//! ends), then each queue's messages in seq order. Nothing is written back. Messages come
//! back in publish order; those at or below a queue's delivered watermark (delivered and
//! not acked before the stop) come back with redelivered = true.

use std::sync::Arc;

use lockgate_store::{DefinitionKind, Recovery, Store, StoreError, StoredRef};
use tracing::{info, warn};

use crate::broker::Broker;
use crate::durable::{self, Malformed};
use crate::error::BrokerError;
use crate::message::Message;
use crate::queue::{Queue, QueueStore, Ready};

/// Messages of each queue loaded into memory at startup; the rest stays on disk as the
/// queue's disk tail and is paged in by the spill task ahead of the consumers.
const RECOVERY_HEAD: usize = 1024;

/// Why startup could not rebuild the broker from its store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The broker has no store.
    #[error("the broker was built without a store")]
    NoStore,
    /// Reading the store failed (it names the file and what to do).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode: the store is damaged or from an incompatible build.
    #[error(
        "store {path} is corrupt: {detail}; lockgate refuses to start on it. Move the \
         directory away and restore it from a backup, or delete it to start empty"
    )]
    Malformed {
        /// The store directory.
        path: std::path::PathBuf,
        /// Which record failed to decode.
        detail: String,
    },
    /// A stored queue's arguments no longer validate.
    #[error("store {path}: stored queue {queue:?}: {source}")]
    Queue {
        /// The store directory.
        path: std::path::PathBuf,
        /// The queue's name.
        queue: String,
        /// The validation error.
        #[source]
        source: BrokerError,
    },
}

/// What [`Broker::recover`] rebuilt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoverySummary {
    /// Vhosts created from the store (beyond the configured ones).
    pub vhosts: usize,
    /// Durable exchanges.
    pub exchanges: usize,
    /// Durable queues.
    pub queues: usize,
    /// Durable bindings.
    pub bindings: usize,
    /// Bindings skipped because their source or destination was gone.
    pub bindings_skipped: usize,
    /// Persistent messages put back in their queues.
    pub messages: u64,
    /// Of those, how many come back with redelivered = true.
    pub redelivered: u64,
}

impl Broker {
    /// Rebuilds durable definitions and persistent messages from `recovery`. Blocks (it
    /// reads every message): run it on a blocking thread, before accepting connections.
    ///
    /// # Errors
    /// [`RecoveryError`] naming the store when a record cannot be read or decoded: the
    /// broker must not start on a store it cannot fully read.
    pub fn recover(&self, recovery: &Recovery) -> Result<RecoverySummary, RecoveryError> {
        let store = self.store().ok_or(RecoveryError::NoStore)?.clone();
        let path = store.path().to_path_buf();
        let bad = |detail: String| {
            let path = path.clone();
            move |source: Malformed| RecoveryError::Malformed {
                path,
                detail: format!("{source} ({detail})"),
            }
        };
        let mut summary = RecoverySummary::default();
        for def in &recovery.definitions {
            match def.kind {
                DefinitionKind::VHost => {
                    let name = std::str::from_utf8(&def.key)
                        .map_err(|_| durable::malformed("vhost"))
                        .map_err(bad("a vhost".into()))?;
                    if self.vhost(name).is_none() {
                        self.add_vhost(name);
                        summary.vhosts += 1;
                    }
                }
                DefinitionKind::Exchange => {
                    let (vhost, name) = durable::decode_entity_key(&def.key)
                        .map_err(bad("an exchange key".into()))?;
                    let stored = durable::decode_exchange(&def.value)
                        .map_err(bad(format!("exchange {name:?}")))?;
                    match self.vhost(&vhost) {
                        Some(v) => {
                            v.recover_exchange(&name, stored);
                            summary.exchanges += 1;
                        }
                        None => warn!(
                            vhost,
                            exchange = name,
                            "stored exchange of an unknown vhost skipped"
                        ),
                    }
                }
                _ => {}
            }
        }
        let mut queues: Vec<(Arc<Queue>, &lockgate_store::RecoveredQueue)> = Vec::new();
        for rq in &recovery.queues {
            // A durable delayed exchange's held messages (exchange/delayed.rs).
            if crate::exchange::recover_delayed(self, &store, rq)? {
                continue;
            }
            let (vhost, name) =
                durable::decode_entity_key(&rq.key).map_err(bad("a queue key".into()))?;
            let (auto_delete, arguments) =
                durable::decode_queue(&rq.value).map_err(bad(format!("queue {name:?}")))?;
            let Some(v) = self.vhost(&vhost) else {
                warn!(
                    vhost,
                    queue = name,
                    "stored queue of an unknown vhost skipped"
                );
                continue;
            };
            let qs = QueueStore {
                store: store.clone(),
                id: rq.id,
            };
            let queue = v
                .recover_queue(
                    &name,
                    auto_delete,
                    arguments,
                    qs,
                    rq.next_seq,
                    rq.delivered_through,
                )
                .map_err(|source| RecoveryError::Queue {
                    path: path.clone(),
                    queue: name.clone(),
                    source,
                })?;
            queues.push((queue, rq));
            summary.queues += 1;
        }
        for def in &recovery.definitions {
            if def.kind != DefinitionKind::Binding {
                continue;
            }
            let b = durable::decode_binding(&def.key).map_err(bad("a binding".into()))?;
            let recovered = self.vhost(&b.vhost).is_some_and(|v| {
                let shown = format!("{} -> {}", b.source, b.destination);
                let ok = v.recover_binding(b);
                if !ok {
                    warn!(
                        binding = shown,
                        "stored binding without its source or destination skipped"
                    );
                }
                ok
            });
            if recovered {
                summary.bindings += 1;
            } else {
                summary.bindings_skipped += 1;
            }
        }
        for (queue, rq) in queues {
            let Some(vhost) = self.vhost(
                &durable::decode_entity_key(&rq.key)
                    .map_err(bad("a queue key".into()))?
                    .0,
            ) else {
                continue;
            };
            let (n, redelivered) = load_messages(&store, &vhost, &queue, rq)?;
            summary.messages += n;
            summary.redelivered += redelivered;
        }
        for vhost in self
            .vhost_names()
            .iter()
            .filter_map(|name| self.vhost(name))
        {
            for exchange in vhost.exchange_names() {
                if let Some(exchange) = vhost.exchange(&exchange) {
                    crate::exchange::arm_recovered_delayed(&exchange);
                }
            }
        }
        info!(
            exchanges = summary.exchanges,
            queues = summary.queues,
            bindings = summary.bindings,
            messages = summary.messages,
            redelivered = summary.redelivered,
            "recovered from the store"
        );
        Ok(summary)
    }
}

/// Loads the head of a queue (its first messages, in seq order) and leaves the rest on disk
/// as its disk tail. Returns (messages, redelivered among those loaded).
fn load_messages(
    store: &Store,
    vhost: &crate::vhost::VHost,
    queue: &Queue,
    rq: &lockgate_store::RecoveredQueue,
) -> Result<(u64, u64), RecoveryError> {
    let Some(from) = rq.first_seq else {
        return Ok((0, 0));
    };
    let mut redelivered = 0u64;
    {
        let page = store.page_in(rq.id, from, RECOVERY_HEAD)?;
        let next = page.last().map_or(from, |last| last.seq + 1);
        let mut items = Vec::with_capacity(page.len());
        for paged in page {
            let Some(message_id) = paged.message else {
                continue;
            };
            let (exchange, routing_key, header) =
                durable::decode_message_header(&paged.record.header).map_err(|source| {
                    RecoveryError::Malformed {
                        path: store.path().to_path_buf(),
                        detail: format!(
                            "{source} (message {} of queue {:?})",
                            message_id.0,
                            queue.name()
                        ),
                    }
                })?;
            let mut message = Message::new(exchange, routing_key, header, paged.record.body);
            message.charge_to(vhost.memory());
            redelivered += u64::from(paged.redelivered);
            let stored = StoredRef {
                queue: rq.id,
                seq: paged.seq,
                message: message_id,
            };
            items.push(Ready::new(
                paged.seq,
                Arc::new(message),
                paged.redelivered,
                Some(stored),
            ));
        }
        let loaded = items.len() as u64;
        let average = items.iter().map(|r| r.size()).sum::<u64>() / loaded.max(1);
        queue.push_recovered(items);
        let rest = usize::try_from(rq.messages.saturating_sub(loaded)).unwrap_or(usize::MAX);
        queue.set_recovered_tail(store.clone(), rq.id, next..rq.next_seq, rest, average);
    }
    Ok((rq.messages, redelivered))
}
