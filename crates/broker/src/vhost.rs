//! A virtual host: its exchanges, queues and bindings, and publishing.
//!
//! Exchanges and queues live in `DashMap`s. Topology changes (declare, delete, bind,
//! unbind) are serialised per vhost by one mutex that also guards the index of bindings by
//! destination; publishing never takes it: it reads the exchange's routing table and locks
//! only the queues it routes to.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use lockgate_store::{Commit, DefinitionKind, Store, StoredRef};
use lockgate_wire::FieldTable;
use parking_lot::Mutex;
use tracing::debug;

use crate::channel::ChannelShared;
use crate::durable;
use crate::error::{BrokerError, Resource};
use crate::exchange::sender_selected;
use crate::exchange::{BindingEntry, Destination, Exchange, ExchangeFlags, ExchangeKind};
use crate::ids::{random_name, ChannelId, ConnectionId};
use crate::memory::{MemoryCharge, MemoryMonitor};
use crate::message::Message;
use crate::queue::arguments::{assert_equivalent, QueueArguments, QueueType};
use crate::queue::{Admit, Queue, QueueStore};

mod introspect;
mod policies;

/// Declaration flags of a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFlags {
    /// Only check that it exists (404 otherwise).
    pub passive: bool,
    /// Survives a restart (recorded now; persisted once the store lands). Ignored for
    /// exclusive queues, as RabbitMQ.
    pub durable: bool,
    /// Owned by the declaring connection and deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes, after it had one.
    pub auto_delete: bool,
}

/// `queue.declare-ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The queue's name (generated when the declare had none).
    pub queue: String,
    /// Ready messages.
    pub message_count: u32,
    /// Active consumers.
    pub consumer_count: u32,
}

/// What happened to a published message.
#[derive(Debug)]
pub enum PublishOutcome {
    /// Enqueued on this many queues (at least one).
    Routed(usize),
    /// No queue matched and the message was not mandatory: it was dropped.
    Dropped,
    /// No queue matched and the message was mandatory: here it is back, for
    /// `basic.return` 312 NO_ROUTE.
    Unroutable(Box<Message>),
}

/// What [`VHost::publish_checked`] did with a message.
#[derive(Debug)]
pub struct Published {
    /// Where it went.
    pub outcome: PublishOutcome,
    /// The store commit a confirm waits for (see [`VHost::publish_with_commit`]).
    pub commit: Option<Commit>,
    /// A queue refused it at its length limit (overflow reject-publish or
    /// reject-publish-dlx): a confirming publisher gets basic.nack.
    pub refused: bool,
    /// A queue with overflow `block` is full after it: stop reading from the publisher until
    /// that queue's [`Queue::room`] turns true.
    pub blocked: Option<Arc<Queue>>,
}

impl Published {
    fn routed(outcome: PublishOutcome, commit: Option<Commit>) -> Self {
        Self {
            outcome,
            commit,
            refused: false,
            blocked: None,
        }
    }

    fn admitted(&mut self, queue: &Arc<Queue>, admit: Admit) {
        match admit {
            Admit::Enqueued => {}
            Admit::Refused => self.refused = true,
            Admit::Full => self.blocked = Some(Arc::clone(queue)),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum DestinationName {
    Queue(String),
    Exchange(String),
}

impl DestinationName {
    fn of(destination: &Destination) -> Self {
        match destination {
            Destination::Queue(q) => Self::Queue(q.name().to_owned()),
            Destination::Exchange(x) => Self::Exchange(x.name().to_owned()),
        }
    }
}

/// A binding seen from its destination.
struct Incoming {
    source: Arc<Exchange>,
    routing_key: String,
    arguments: FieldTable,
}

impl Incoming {
    fn is(&self, source: &Arc<Exchange>, key: &str, arguments: &FieldTable) -> bool {
        Arc::ptr_eq(&self.source, source) && self.routing_key == key && &self.arguments == arguments
    }
}

#[derive(Default)]
struct Topology {
    /// Bindings by destination, to remove them when the destination is deleted.
    incoming: HashMap<DestinationName, Vec<Incoming>>,
    /// Exclusive queues by owning connection, to delete them when it closes.
    exclusive: HashMap<ConnectionId, Vec<Arc<Queue>>>,
}

impl Topology {
    fn add(&mut self, destination: DestinationName, incoming: Incoming) {
        self.incoming.entry(destination).or_default().push(incoming);
    }

    fn contains(
        &self,
        destination: &DestinationName,
        source: &Arc<Exchange>,
        key: &str,
        arguments: &FieldTable,
    ) -> bool {
        self.incoming
            .get(destination)
            .is_some_and(|list| list.iter().any(|b| b.is(source, key, arguments)))
    }

    fn remove(
        &mut self,
        destination: &DestinationName,
        source: &Arc<Exchange>,
        key: &str,
        arguments: &FieldTable,
    ) {
        if let Some(list) = self.incoming.get_mut(destination) {
            if let Some(at) = list.iter().position(|b| b.is(source, key, arguments)) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                self.incoming.remove(destination);
            }
        }
    }
}

/// A queue's name as the key of [`VHost`]'s queue map, hashed and compared as bytes: the
/// default exchange looks a queue up by the routing key's bytes as the message holds them,
/// without checking that they are UTF-8 on every publish.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueKey(String);

impl Hash for QueueKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for QueueKey {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

thread_local! {
    /// Routing scratch space, reused so that publishing allocates nothing but the message.
    static ROUTE_SCRATCH: RefCell<Vec<Arc<Queue>>> = const { RefCell::new(Vec::new()) };
}

/// A virtual host.
pub struct VHost {
    name: String,
    /// By name. Every publish looks up its queue (default exchange) or, on a cache miss, its
    /// exchange here: foldhash, seeded at random per map, costs a fraction of SipHash and
    /// still gives clients no fixed collisions to aim at.
    exchanges: DashMap<String, Arc<Exchange>, RandomState>,
    queues: DashMap<QueueKey, Arc<Queue>, RandomState>,
    topology: Mutex<Topology>,
    memory: Arc<MemoryMonitor>,
    /// Where durable definitions and persistent messages go; `None` runs in memory only.
    store: Option<Store>,
    /// Open channels, for the management API (`introspect.rs`); changed at open and close
    /// only.
    channels: DashMap<(ConnectionId, ChannelId), Arc<ChannelShared>>,
    /// Direct reply-to consumers by address (`reply_to.rs`).
    pub(crate) reply_to: crate::reply_to::ReplyConsumers,
    /// The broker's spill task, woken by queues whose head runs low.
    spill_wake: Arc<tokio::sync::Notify>,
    /// Its policies (`vhost/policies.rs`).
    policies: policies::Policies,
    /// Itself, handed to its queues (dead-lettering, `x-expires`).
    me: Weak<VHost>,
    /// The broker-wide consumer timeout (ms), for queues that set none.
    consumer_timeout: Option<u64>,
}

impl fmt::Debug for VHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VHost")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The exchanges every vhost starts with.
const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

impl VHost {
    pub(crate) fn new(
        name: String,
        memory: Arc<MemoryMonitor>,
        store: Option<Store>,
        spill_wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        let exchanges = DashMap::with_hasher(RandomState::default());
        for (xname, kind) in PREDECLARED {
            let flags = ExchangeFlags {
                durable: true,
                ..ExchangeFlags::default()
            };
            exchanges.insert(
                (*xname).to_owned(),
                Arc::new(Exchange::new(
                    (*xname).to_owned(),
                    *kind,
                    flags,
                    FieldTable::default(),
                )),
            );
        }
        Self {
            name,
            exchanges,
            queues: DashMap::with_hasher(RandomState::default()),
            topology: Mutex::new(Topology::default()),
            memory,
            store,
            channels: DashMap::new(),
            reply_to: crate::reply_to::ReplyConsumers::default(),
            spill_wake,
            policies: policies::Policies::default(),
            me: Weak::new(),
            consumer_timeout: None,
        }
    }

    /// Links the vhost to its own `Arc` (built with `Arc::new_cyclic`) and sets the
    /// broker-wide consumer timeout its queues default to.
    pub(crate) fn with_links(mut self, me: Weak<VHost>, consumer_timeout: Option<u64>) -> Self {
        self.me = me;
        self.consumer_timeout = consumer_timeout;
        self
    }

    /// A weak handle on itself (a delayed exchange routes due messages through it).
    pub(crate) fn handle(&self) -> Weak<VHost> {
        self.me.clone()
    }

    /// Shares a new queue, linked to this vhost.
    fn share_queue(&self, queue: Queue) -> Arc<Queue> {
        queue.with_wake(Arc::clone(&self.spill_wake)).into_arc(
            self.me.clone(),
            Arc::clone(&self.memory),
            self.consumer_timeout,
        )
    }

    /// Every queue's handle (the spill task walks them).
    pub(crate) fn queue_handles(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| Arc::clone(&q)).collect()
    }

    /// A commit covering every durable change made so far (declarations, deletions,
    /// bindings): await it before answering the method that made the change. `None` without
    /// a store.
    pub fn sync(&self) -> Option<Commit> {
        self.store.as_ref().map(Store::sync)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An exchange handle, for the server to cache (drop it once `is_deleted()`).
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|x| Arc::clone(&x))
    }

    /// A queue handle.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queue_by_octets(name.as_bytes())
    }

    /// [`VHost::queue`] by the name's octets, such as a message's routing key: a publisher
    /// taking turns between queues (its server's route cache misses every time) pays no UTF-8
    /// check for the lookup.
    pub fn queue_by_octets(&self, name: &[u8]) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| Arc::clone(&q))
    }

    /// Names of all exchanges.
    pub fn exchange_names(&self) -> Vec<String> {
        self.exchanges.iter().map(|x| x.key().clone()).collect()
    }

    /// Names of all queues.
    pub fn queue_names(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.key().0.clone()).collect()
    }

    fn exchange_resource<'a>(&'a self, name: &'a str) -> Resource<'a> {
        Resource::exchange(name, &self.name)
    }

    fn queue_resource<'a>(&'a self, name: &'a str) -> Resource<'a> {
        Resource::queue(name, &self.name)
    }

    fn existing_exchange(&self, name: &str) -> Result<Arc<Exchange>, BrokerError> {
        self.exchange(name)
            .ok_or_else(|| BrokerError::not_found(self.exchange_resource(name)))
    }

    fn existing_queue(&self, name: &str) -> Result<Arc<Queue>, BrokerError> {
        self.queue(name)
            .ok_or_else(|| BrokerError::not_found(self.queue_resource(name)))
    }

    /// The queue, if it exists and `connection` may use it.
    pub(crate) fn queue_for(
        &self,
        connection: ConnectionId,
        name: &str,
    ) -> Result<Arc<Queue>, BrokerError> {
        let queue = self.existing_queue(name)?;
        queue.check_access(connection)?;
        Ok(queue)
    }

    /// `exchange.declare`. `kind` is the type name as sent; passive declares ignore it and
    /// the other flags.
    ///
    /// # Errors
    /// `AccessRefused` for the default exchange or a new name starting with "amq.";
    /// `NotFound` for a passive declare of a missing exchange; `CommandInvalid` (503,
    /// connection) for an unknown type; `PreconditionFailed` for an inequivalent redeclaration ("inequivalent arg 'type' for exchange
    /// 'x' in vhost '/': received 'fanout' but current is 'direct'").
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        flags: ExchangeFlags,
        arguments: FieldTable,
    ) -> Result<Arc<Exchange>, BrokerError> {
        if flags.passive {
            if name.is_empty() {
                return Err(BrokerError::default_exchange());
            }
            return self.existing_exchange(name);
        }
        let kind = ExchangeKind::parse(kind)?;
        if name.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        let _topology = self.topology.lock();
        let Some(existing) = self.exchange(name) else {
            // In RabbitMQ's order (rabbit_channel, rabbit_exchange:declare): the name, the
            // alternate exchange's type, then the type's own arguments; an existing exchange
            // is only compared.
            if name.starts_with("amq.") {
                return Err(BrokerError::access_refused(format_args!(
                    "exchange name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            crate::exchange::check_alternate_argument(&arguments, &self.exchange_resource(name))?;
            crate::exchange::validate_arguments(kind, &arguments)?;
            if let (Some(store), true) = (&self.store, flags.durable) {
                drop(store.put_definition(
                    DefinitionKind::Exchange,
                    &durable::entity_key(&self.name, name),
                    &durable::exchange_value(kind, flags, &arguments),
                ));
            }
            let exchange = Arc::new(Exchange::new(name.to_owned(), kind, flags, arguments));
            self.apply_exchange_policy(&exchange);
            self.exchanges
                .insert(name.to_owned(), Arc::clone(&exchange));
            debug!(vhost = %self.name, exchange = name, %kind, "exchange declared");
            return Ok(exchange);
        };
        let resource = self.exchange_resource(name);
        let field = |key: &str, current: &dyn fmt::Display, received: &dyn fmt::Display| {
            BrokerError::inequivalent(
                key,
                &resource,
                &format!("'{received}'"),
                &format!("'{current}'"),
            )
        };
        if existing.kind() != kind {
            return Err(field("type", &existing.kind(), &kind));
        }
        if existing.durable() != flags.durable {
            return Err(field("durable", &existing.durable(), &flags.durable));
        }
        if existing.auto_delete() != flags.auto_delete {
            return Err(field(
                "auto_delete",
                &existing.auto_delete(),
                &flags.auto_delete,
            ));
        }
        if existing.internal() != flags.internal {
            return Err(field("internal", &existing.internal(), &flags.internal));
        }
        crate::queue::arguments::assert_equivalent_args(
            existing.arguments(),
            &arguments,
            &resource,
            &["alternate-exchange"],
        )?;
        Ok(existing)
    }

    /// `exchange.delete`. Deleting a missing exchange succeeds, as in RabbitMQ.
    ///
    /// # Errors
    /// `AccessRefused` for the default exchange and "amq.*" exchanges;
    /// `PreconditionFailed` "exchange 'x' in vhost '/' in use" with `if_unused` when it is
    /// the source of a binding.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), BrokerError> {
        if name.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        if name.starts_with("amq.") {
            return Err(BrokerError::access_refused(format_args!(
                "deletion of system {} not allowed",
                self.exchange_resource(name)
            )));
        }
        let mut topology = self.topology.lock();
        let Some(exchange) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && exchange.binding_count() != 0 {
            return Err(BrokerError::precondition_failed(format_args!(
                "{} in use",
                self.exchange_resource(name)
            )));
        }
        self.remove_exchange(&mut topology, &exchange);
        Ok(())
    }

    /// `exchange.bind`: routes what reaches `source` on to `destination` too.
    ///
    /// # Errors
    /// `AccessRefused` when either is the default exchange; `NotFound` when either is
    /// missing; `PreconditionFailed` for invalid headers-binding arguments.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        if destination.is_empty() || source.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        self.bind(
            source,
            || {
                self.existing_exchange(destination)
                    .map(Destination::Exchange)
            },
            |_| Ok(()),
            routing_key,
            arguments,
        )
    }

    /// `exchange.unbind`. Removing a binding that does not exist succeeds, also when either
    /// exchange is missing.
    ///
    /// # Errors
    /// `AccessRefused` when either is the default exchange.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), BrokerError> {
        if destination.is_empty() || source.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        self.unbind(
            source,
            || {
                self.existing_exchange(destination)
                    .map(Destination::Exchange)
            },
            |_| Ok(()),
            routing_key,
            arguments,
        )
    }

    /// `queue.declare` on behalf of `connection`. An empty name gets a generated
    /// "amq.gen-..." one.
    ///
    /// # Errors
    /// `NotFound` "no queue 'q' in vhost '/'" for a passive declare of a missing queue;
    /// `AccessRefused` for a new name starting with "amq."; `ResourceLocked` when the queue
    /// is exclusive to another connection or the exclusive flag differs;
    /// `PreconditionFailed` for invalid arguments or an inequivalent redeclaration.
    pub fn declare_queue(
        &self,
        connection: ConnectionId,
        name: &str,
        flags: QueueFlags,
        arguments: FieldTable,
    ) -> Result<QueueDeclareOk, BrokerError> {
        if flags.passive {
            let queue = self.existing_queue(name)?;
            queue.check_access(connection)?;
            // A declaration, passive or not, is a use of the queue (x-expires), as RabbitMQ.
            queue.touch();
            let (message_count, consumer_count) = queue.counts();
            return Ok(QueueDeclareOk {
                queue: name.to_owned(),
                message_count,
                consumer_count,
            });
        }
        let name = if name.is_empty() {
            // Before anything else, as RabbitMQ's channel (a quorum queue needs a name its
            // clients agree on).
            if QueueType::of(&arguments) == QueueType::Quorum {
                return Err(BrokerError::precondition_failed(format_args!(
                    "Cannot declare a server-named queue for type {}",
                    QueueType::Quorum.module()
                )));
            }
            random_name("amq.gen")
        } else if name.starts_with("amq.") {
            return Err(BrokerError::access_refused(format_args!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        } else {
            name.to_owned()
        };
        let durable = flags.durable && !flags.exclusive;
        let owner = flags.exclusive.then_some(connection);
        let mut topology = self.topology.lock();
        if let Some(queue) = self.queue(&name) {
            let resource = queue.resource();
            if queue.exclusive_owner() != owner {
                return Err(BrokerError::resource_locked(&resource));
            }
            let bool_field = |key: &str, current: bool, received: bool| {
                BrokerError::inequivalent(
                    key,
                    &resource,
                    &format!("'{received}'"),
                    &format!("'{current}'"),
                )
            };
            if queue.durable() != durable {
                return Err(bool_field("durable", queue.durable(), durable));
            }
            if queue.auto_delete() != flags.auto_delete {
                return Err(bool_field(
                    "auto_delete",
                    queue.auto_delete(),
                    flags.auto_delete,
                ));
            }
            assert_equivalent(queue.raw_arguments(), &arguments, &resource)?;
            queue.touch();
            let (message_count, consumer_count) = queue.counts();
            return Ok(QueueDeclareOk {
                queue: name,
                message_count,
                consumer_count,
            });
        }
        // Policies (vhost/policies.rs): client arguments over the matching policy.
        let (parsed, policy) = self.declare_arguments(&name, flags, &arguments)?;
        let mut queue = Queue::new(
            name.clone(),
            self.name.clone(),
            durable,
            flags.auto_delete,
            owner,
            parsed.clone(),
            arguments,
        );
        if policy.is_some() {
            queue.set_arguments(parsed, policy);
        }
        if let (Some(store), true) = (&self.store, durable) {
            let (id, commit) = store.put_queue(
                &durable::entity_key(&self.name, &name),
                &durable::queue_value(flags.auto_delete, queue.raw_arguments()),
            );
            drop(commit);
            let qs = QueueStore {
                store: store.clone(),
                id,
            };
            queue = queue.with_store(qs, 0, None);
        }
        let queue = self.share_queue(queue);
        if let Some(owner) = owner {
            topology
                .exclusive
                .entry(owner)
                .or_default()
                .push(Arc::clone(&queue));
        }
        self.queues.insert(QueueKey(name.clone()), queue);
        debug!(vhost = %self.name, queue = %name, durable, exclusive = flags.exclusive, auto_delete = flags.auto_delete, "queue declared");
        Ok(QueueDeclareOk {
            queue: name,
            message_count: 0,
            consumer_count: 0,
        })
    }

    /// `queue.bind`.
    ///
    /// # Errors
    /// `AccessRefused` for the default exchange; `NotFound` for a missing exchange or
    /// queue; `ResourceLocked` for another connection's exclusive queue;
    /// `PreconditionFailed` for invalid headers-binding arguments.
    pub fn bind_queue(
        &self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        if exchange.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        self.bind(
            exchange,
            || self.existing_queue(queue).map(Destination::Queue),
            |destination| destination_access(destination, connection),
            routing_key,
            arguments,
        )
    }

    /// `queue.unbind`. Removing a binding that does not exist succeeds, also when the
    /// exchange or the queue is missing.
    ///
    /// # Errors
    /// `AccessRefused` for the default exchange; `ResourceLocked` for a binding of another
    /// connection's exclusive queue.
    pub fn unbind_queue(
        &self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), BrokerError> {
        if exchange.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        self.unbind(
            exchange,
            || self.existing_queue(queue).map(Destination::Queue),
            |destination| destination_access(destination, connection),
            routing_key,
            arguments,
        )
    }

    /// `queue.purge`: drops the ready messages and returns how many; unacked ones stay.
    ///
    /// # Errors
    /// `NotFound`; `ResourceLocked` for another connection's exclusive queue.
    pub fn purge_queue(&self, connection: ConnectionId, queue: &str) -> Result<u32, BrokerError> {
        Ok(self.queue_for(connection, queue)?.purge())
    }

    /// `queue.delete`: returns the number of ready messages dropped. Its consumers are
    /// cancelled (the sinks hear of it). Deleting a missing queue returns 0, as RabbitMQ.
    ///
    /// # Errors
    /// `ResourceLocked` for another connection's exclusive queue; `PreconditionFailed`
    /// "queue 'q' in vhost '/' in use" (`if_unused`, it has consumers) or "... not empty"
    /// (`if_empty`, it has ready messages).
    pub fn delete_queue(
        &self,
        connection: ConnectionId,
        queue: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, BrokerError> {
        let Some(q) = self.queue(queue) else {
            return Ok(0);
        };
        q.check_access(connection)?;
        self.remove_queue(&q, if_unused, if_empty)
    }

    /// The connection closed: deletes the queues it declared exclusive. Call after closing
    /// its channels.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let owned = self
            .topology
            .lock()
            .exclusive
            .remove(&connection)
            .unwrap_or_default();
        for queue in owned {
            debug!(vhost = %self.name, queue = queue.name(), "deleting exclusive queue of closed connection");
            // Neither condition is checked, so this cannot fail.
            let _ = self.remove_queue(&queue, false, false);
        }
    }

    /// Deletes a queue left unused for its `x-expires` (checked again under the lock).
    pub(crate) fn expire_queue(&self, queue: &Arc<Queue>) {
        if self.remove_queue(queue, true, false).is_ok() {
            debug!(vhost = %self.name, queue = queue.name(), "queue expired (x-expires)");
        }
    }

    /// Deletes an auto-delete queue whose last consumer went. Checked again under the lock:
    /// if a consumer arrived meanwhile, the `in use` error leaves the queue in place.
    pub(crate) fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        if self.remove_queue(queue, true, false).is_ok() {
            debug!(vhost = %self.name, queue = queue.name(), "auto-delete queue lost its last consumer");
        }
    }

    fn remove_queue(
        &self,
        queue: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, BrokerError> {
        let consumers = {
            let mut topology = self.topology.lock();
            if queue.is_deleted() {
                return Ok(0);
            }
            let (count, consumers) = queue.delete(if_unused, if_empty)?;
            debug!(vhost = %self.name, queue = queue.name(), "queue deleted");
            if let Some(owner) = queue.exclusive_owner() {
                if let Some(owned) = topology.exclusive.get_mut(&owner) {
                    owned.retain(|q| !Arc::ptr_eq(q, queue));
                    if owned.is_empty() {
                        topology.exclusive.remove(&owner);
                    }
                }
            }
            self.queues
                .remove_if(queue.name().as_bytes(), |_, q| Arc::ptr_eq(q, queue));
            let destination = Destination::Queue(Arc::clone(queue));
            self.unbind_incoming(&mut topology, &destination, |topology, source| {
                if !source.is_deleted() {
                    self.remove_exchange(topology, &source);
                }
            });
            (count, consumers)
        };
        let (count, consumers) = consumers;
        for consumer in consumers {
            consumer.channel.cancelled_by_broker(&consumer);
        }
        Ok(count)
    }

    /// Recreates a stored exchange (nothing is written back).
    pub(crate) fn recover_exchange(&self, name: &str, stored: durable::StoredExchange) {
        let _topology = self.topology.lock();
        let exchange = Exchange::new(name.to_owned(), stored.kind, stored.flags, stored.arguments);
        let exchange = Arc::new(exchange);
        self.apply_exchange_policy(&exchange);
        self.exchanges.insert(name.to_owned(), exchange);
    }

    /// Recreates a stored durable queue (nothing is written back).
    ///
    /// # Errors
    /// `PreconditionFailed` when its stored arguments no longer parse.
    pub(crate) fn recover_queue(
        &self,
        name: &str,
        auto_delete: bool,
        arguments: FieldTable,
        store: QueueStore,
        next_seq: u64,
        marked: Option<u64>,
    ) -> Result<Arc<Queue>, BrokerError> {
        let parsed = QueueArguments::parse(&arguments, &self.queue_resource(name))?;
        let queue = Queue::new(
            name.to_owned(),
            self.name.clone(),
            true,
            auto_delete,
            None,
            parsed,
            arguments,
        )
        .with_store(store, next_seq, marked);
        let queue = self.share_queue(queue);
        let _topology = self.topology.lock();
        self.queues
            .insert(QueueKey(name.to_owned()), Arc::clone(&queue));
        Ok(queue)
    }

    /// Recreates a stored binding (nothing is written back). False when its source or
    /// destination is gone.
    pub(crate) fn recover_binding(&self, b: durable::StoredBinding) -> bool {
        let mut topology = self.topology.lock();
        let Some(source) = self.exchange(&b.source) else {
            return false;
        };
        let (destination, name) = if b.to_queue {
            match self.queue(&b.destination) {
                Some(q) => (Destination::Queue(q), DestinationName::Queue(b.destination)),
                None => return false,
            }
        } else {
            match self.exchange(&b.destination) {
                Some(x) => (
                    Destination::Exchange(x),
                    DestinationName::Exchange(b.destination),
                ),
                None => return false,
            }
        };
        let added = source.router.write().add(BindingEntry {
            routing_key: b.routing_key.clone(),
            arguments: b.arguments.clone(),
            destination,
        });
        if let Ok(true) = added {
            topology.add(
                name,
                Incoming {
                    source,
                    routing_key: b.routing_key,
                    arguments: b.arguments,
                },
            );
        }
        added.is_ok()
    }

    /// Charges `bytes` to the memory watermark until the returned charge drops: what the
    /// server holds for a client outside the broker's messages (a body arriving in pieces).
    pub fn charge_memory(&self, bytes: u64) -> MemoryCharge {
        MemoryCharge::new(Arc::clone(&self.memory), bytes)
    }

    /// The memory accounting, for messages recovered at startup.
    pub(crate) fn memory(&self) -> &Arc<MemoryMonitor> {
        &self.memory
    }

    /// `exchange.bind` and `queue.bind` once the destination's name is checked: resolves
    /// both ends under the topology lock, source first, then adds the binding. In RabbitMQ's
    /// order: both ends exist, the binding is valid for the source's type, and only then
    /// `access` (the exclusive-queue check) may refuse the destination.
    fn bind(
        &self,
        source: &str,
        destination: impl FnOnce() -> Result<Destination, BrokerError>,
        access: impl FnOnce(&Destination) -> Result<(), BrokerError>,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        let mut topology = self.topology.lock();
        let source = self.existing_exchange(source)?;
        let destination = destination()?;
        source.router.read().validate(routing_key, &arguments)?;
        access(&destination)?;
        self.add_binding(&mut topology, source, destination, routing_key, arguments)
    }

    /// As [`VHost::bind`], for `exchange.unbind` and `queue.unbind`. A missing source or
    /// destination succeeds, as a missing binding does: RabbitMQ's unbind is idempotent
    /// (teardown code unbinds what may already be gone). As in RabbitMQ, `access` is asked
    /// only about a binding that exists.
    fn unbind(
        &self,
        source: &str,
        destination: impl FnOnce() -> Result<Destination, BrokerError>,
        access: impl FnOnce(&Destination) -> Result<(), BrokerError>,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), BrokerError> {
        let mut topology = self.topology.lock();
        let Some(source) = self.exchange(source) else {
            return Ok(());
        };
        let destination = match destination() {
            Ok(destination) => destination,
            Err(BrokerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let name = DestinationName::of(&destination);
        if topology.contains(&name, &source, routing_key, arguments) {
            access(&destination)?;
            self.remove_binding(&mut topology, &source, &destination, routing_key, arguments);
        }
        Ok(())
    }

    fn add_binding(
        &self,
        topology: &mut Topology,
        source: Arc<Exchange>,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        let name = DestinationName::of(&destination);
        let key = self.binding_key(&source, &destination, routing_key, &arguments);
        let added = source.router.write().add(BindingEntry {
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
            destination,
        })?;
        if let (true, Some(store), Some(key)) = (added, &self.store, key) {
            drop(store.put_definition(DefinitionKind::Binding, &key, b""));
        }
        if added {
            topology.add(
                name,
                Incoming {
                    source,
                    routing_key: routing_key.to_owned(),
                    arguments,
                },
            );
        }
        Ok(())
    }

    fn remove_binding(
        &self,
        topology: &mut Topology,
        source: &Arc<Exchange>,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) {
        let (removed, now_empty) = {
            let mut router = source.router.write();
            let removed = router.remove(routing_key, arguments, destination);
            (removed, router.is_empty())
        };
        if removed {
            self.forget_binding(source, destination, routing_key, arguments);
            topology.remove(
                &DestinationName::of(destination),
                source,
                routing_key,
                arguments,
            );
            if now_empty && source.auto_delete() {
                self.remove_exchange(topology, source);
            }
        }
    }

    /// Deletes an exchange and every binding it is part of; auto-delete exchanges left
    /// without bindings go too.
    fn remove_exchange(&self, topology: &mut Topology, exchange: &Arc<Exchange>) {
        let mut pending = vec![Arc::clone(exchange)];
        while let Some(exchange) = pending.pop() {
            if exchange.is_deleted() {
                continue;
            }
            exchange.mark_deleted();
            debug!(vhost = %self.name, exchange = exchange.name(), "exchange deleted");
            if let (Some(store), true) = (&self.store, exchange.durable()) {
                drop(store.remove_definition(
                    DefinitionKind::Exchange,
                    &durable::entity_key(&self.name, exchange.name()),
                ));
            }
            self.exchanges
                .remove_if(exchange.name(), |_, x| Arc::ptr_eq(x, &exchange));
            let outgoing = exchange.router.write().take_all();
            for binding in outgoing {
                self.forget_binding(
                    &exchange,
                    &binding.destination,
                    &binding.routing_key,
                    &binding.arguments,
                );
                let name = DestinationName::of(&binding.destination);
                topology.remove(&name, &exchange, &binding.routing_key, &binding.arguments);
            }
            let destination = Destination::Exchange(Arc::clone(&exchange));
            self.unbind_incoming(topology, &destination, |_, source| pending.push(source));
        }
    }

    /// Removes every binding to `destination`, which is being deleted, and hands each
    /// auto-delete source this leaves without bindings to `emptied`, in binding order.
    fn unbind_incoming(
        &self,
        topology: &mut Topology,
        destination: &Destination,
        mut emptied: impl FnMut(&mut Topology, Arc<Exchange>),
    ) {
        let name = DestinationName::of(destination);
        for incoming in topology.incoming.remove(&name).unwrap_or_default() {
            let now_empty = {
                let mut router = incoming.source.router.write();
                router.remove(&incoming.routing_key, &incoming.arguments, destination);
                router.is_empty()
            };
            self.forget_binding(
                &incoming.source,
                destination,
                &incoming.routing_key,
                &incoming.arguments,
            );
            if now_empty && incoming.source.auto_delete() {
                emptied(topology, incoming.source);
            }
        }
    }

    /// The store key of a binding that survives a restart (source and destination both
    /// durable), `None` for a transient one or without a store.
    fn binding_key(
        &self,
        source: &Exchange,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Option<bytes::Bytes> {
        self.store.as_ref()?;
        let (to_queue, name, durable) = match destination {
            Destination::Queue(q) => (true, q.name(), q.store().is_some()),
            Destination::Exchange(x) => (false, x.name(), x.durable()),
        };
        (durable && source.durable()).then(|| {
            durable::binding_key(
                &self.name,
                source.name(),
                to_queue,
                name,
                routing_key,
                arguments,
            )
        })
    }

    /// Removes a binding's stored definition, if it has one.
    fn forget_binding(
        &self,
        source: &Exchange,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) {
        if let (Some(store), Some(key)) = (
            &self.store,
            self.binding_key(source, destination, routing_key, arguments),
        ) {
            drop(store.remove_definition(DefinitionKind::Binding, &key));
        }
    }

    /// `basic.publish` by exchange name.
    ///
    /// # Errors
    /// As [`VHost::publish_to`], plus `NotFound` "no exchange 'x' in vhost '/'".
    pub fn publish(
        &self,
        mandatory: bool,
        message: Message,
    ) -> Result<PublishOutcome, BrokerError> {
        let exchange = self.existing_exchange(message.exchange())?;
        self.publish_to(&exchange, mandatory, message)
    }

    /// The exchange a `basic.publish` names, if it may be published to: RabbitMQ checks this
    /// before the message's properties.
    ///
    /// # Errors
    /// `NotFound` "no exchange 'x' in vhost '/'"; `AccessRefused` "cannot publish to internal
    /// exchange 'x' in vhost '/'".
    pub fn publishable_exchange(&self, name: &str) -> Result<Arc<Exchange>, BrokerError> {
        let exchange = self
            .exchange(name)
            .filter(|x| !x.is_deleted())
            .ok_or_else(|| BrokerError::not_found(self.exchange_resource(name)))?;
        if exchange.internal() {
            return Err(BrokerError::access_refused(format_args!(
                "cannot publish to internal {}",
                self.exchange_resource(name)
            )));
        }
        Ok(exchange)
    }

    /// `basic.publish` through a cached exchange handle: routes the message (following
    /// exchange-to-exchange bindings, each queue at most once) and enqueues one shared
    /// `Arc<Message>` on every queue reached. `message.exchange()` should be the handle's name.
    ///
    /// # Errors
    /// `NotFound` when the exchange has been deleted (drop the cached handle);
    /// `AccessRefused` "cannot publish to internal exchange 'x' in vhost '/'";
    /// `PreconditionFailed` for a `CC` or `BCC` header that is not an array.
    pub fn publish_to(
        &self,
        exchange: &Arc<Exchange>,
        mandatory: bool,
        message: Message,
    ) -> Result<PublishOutcome, BrokerError> {
        self.publish_with_commit(exchange, mandatory, message)
            .map(|(outcome, _)| outcome)
    }

    /// [`VHost::publish_to`], also returning the store commit of a persistent message routed
    /// to at least one durable queue: a publisher confirm for it must wait until the commit
    /// completes (group commit: one flush covers every publish queued meanwhile, and commit
    /// tickets grow in publish order). `None` when nothing was written: the message can be
    /// confirmed at once. Transient messages never touch the store.
    ///
    /// # Errors
    /// As [`VHost::publish_to`].
    pub fn publish_with_commit(
        &self,
        exchange: &Arc<Exchange>,
        mandatory: bool,
        message: Message,
    ) -> Result<(PublishOutcome, Option<Commit>), BrokerError> {
        self.publish_checked(exchange, mandatory, message)
            .map(|p| (p.outcome, p.commit))
    }

    /// [`VHost::publish_with_commit`], also telling what the queues' length limits did: a
    /// refusal (overflow reject-publish: nack a confirming publisher) and a full queue with
    /// overflow `block` (stop reading from the publisher until [`Queue::room`] turns true).
    ///
    /// # Errors
    /// As [`VHost::publish_to`].
    pub fn publish_checked(
        &self,
        exchange: &Arc<Exchange>,
        mandatory: bool,
        mut message: Message,
    ) -> Result<Published, BrokerError> {
        if exchange.is_deleted() {
            return Err(BrokerError::not_found(
                self.exchange_resource(exchange.name()),
            ));
        }
        if exchange.internal() {
            return Err(BrokerError::access_refused(format_args!(
                "cannot publish to internal {}",
                self.exchange_resource(exchange.name())
            )));
        }
        // A delayed exchange holds a message with `x-delay` and routes it when due.
        if let Some(delay) = exchange.requested_delay(&message) {
            sender_selected::check(&message)?;
            let (memory, store) = (&self.memory, self.store.as_ref());
            let commit = exchange.hold_delayed(self, message, delay, memory, store);
            return Ok(Published::routed(PublishOutcome::Routed(1), commit));
        }
        let cc = sender_selected::take_routes(&mut message)?;
        let mut queues = ROUTE_SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        self.route(exchange, &message, &cc, &mut queues);
        let published = self.deliver_routed(exchange, mandatory, message, &queues);
        queues.clear();
        ROUTE_SCRATCH.with(|s| *s.borrow_mut() = queues);
        Ok(published)
    }

    /// Enqueues a routed message on `queues`; one that reached no queue goes to a direct
    /// reply-to consumer when it names one, else back to a mandatory publisher or nowhere.
    fn deliver_routed(
        &self,
        exchange: &Arc<Exchange>,
        mandatory: bool,
        message: Message,
        queues: &[Arc<Queue>],
    ) -> Published {
        if queues.is_empty() {
            // Direct reply-to: only a default-exchange publish that found no queue pays for
            // the check.
            match self.reply_to.deliver(exchange, message, &self.memory) {
                Ok(published) => published,
                Err(message) => {
                    let outcome = if mandatory {
                        PublishOutcome::Unroutable(Box::new(message))
                    } else {
                        PublishOutcome::Dropped
                    };
                    Published::routed(outcome, None)
                }
            }
        } else {
            let mut published = Published::routed(PublishOutcome::Routed(queues.len()), None);
            published.commit = self.enqueue(message, queues, &mut published);
            published
        }
    }

    /// Routes a publish a transaction holds when it is published, as RabbitMQ does: the
    /// queues it reaches then take it at commit ([`VHost::publish_held`]), whatever the
    /// bindings became in between. `None` for a message with `x-delay` to a delayed exchange,
    /// which the exchange takes at commit.
    ///
    /// # Errors
    /// `PreconditionFailed` for a `CC` or `BCC` header that is not an array.
    pub fn route_held(
        &self,
        exchange: &Arc<Exchange>,
        message: &mut Message,
    ) -> Result<Option<Vec<Arc<Queue>>>, BrokerError> {
        if exchange.requested_delay(message).is_some() {
            sender_selected::check(message)?;
            return Ok(None);
        }
        let cc = sender_selected::take_routes(message)?;
        let mut queues = Vec::new();
        self.route(exchange, message, &cc, &mut queues);
        Ok(Some(queues))
    }

    /// Commits a transaction's publish to the queues [`VHost::route_held`] found for it. As
    /// RabbitMQ, which keeps their names and looks them up at commit: one deleted since is
    /// left out, unless a queue was declared again under its name, which takes the message.
    pub fn publish_held(
        &self,
        exchange: &Arc<Exchange>,
        mandatory: bool,
        message: Message,
        mut queues: Vec<Arc<Queue>>,
    ) -> Published {
        let mut replaced = false;
        queues.retain_mut(|q| {
            if !q.is_deleted() {
                return true;
            }
            match self.queue(q.name()) {
                Some(again) if !again.is_deleted() => {
                    *q = again;
                    replaced = true;
                    true
                }
                _ => false,
            }
        });
        if replaced {
            // Each queue once, even if one was declared again while the publish was routed.
            queues.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
            queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        self.deliver_routed(exchange, mandatory, message, &queues)
    }

    /// Publishes `message` to `queue`, the queue its routing key names, resolved by the
    /// caller (a channel remembers where its last publish to the default exchange went):
    /// what [`VHost::publish_checked`] does for the default exchange, which is never
    /// deleted, internal or delayed, without hashing the routing key again.
    ///
    /// # Errors
    /// `PreconditionFailed` for a `CC` or `BCC` header that is not an array.
    pub fn publish_to_queue_checked(
        &self,
        queue: &Arc<Queue>,
        mut message: Message,
    ) -> Result<Published, BrokerError> {
        let cc = sender_selected::take_routes(&mut message)?;
        Ok(self.publish_to_queue_with(queue, message, &cc))
    }

    /// Enqueues `message` on `queue` and on the queues its sender-selected keys `cc` name.
    fn publish_to_queue_with(
        &self,
        queue: &Arc<Queue>,
        message: Message,
        cc: &[String],
    ) -> Published {
        if cc.is_empty() {
            let mut published = Published::routed(PublishOutcome::Routed(1), None);
            published.commit = self.enqueue(message, std::slice::from_ref(queue), &mut published);
            return published;
        }
        let mut queues = vec![Arc::clone(queue)];
        self.route_default(cc, &mut queues);
        let mut published = Published::routed(PublishOutcome::Routed(queues.len()), None);
        published.commit = self.enqueue(message, &queues, &mut published);
        published
    }

    /// Charges a routed message to the memory accounting and enqueues it on `queues`
    /// (stored first when persistent and a queue is durable); records what the queues'
    /// limits did in `published`. Returns the store commit, if any.
    fn enqueue(
        &self,
        mut message: Message,
        queues: &[Arc<Queue>],
        published: &mut Published,
    ) -> Option<Commit> {
        message.charge_to(&self.memory);
        let store = self
            .store
            .as_ref()
            .filter(|_| message.is_persistent() && queues.iter().any(|q| q.store().is_some()));
        if let Some(store) = store {
            return Some(push_persistent_checked(store, message, queues, published));
        }
        let message = Arc::new(message);
        for queue in queues {
            published.admitted(queue, queue.push(Arc::clone(&message)));
        }
        None
    }

    /// Republishes a dead-lettered message to the exchange `name` (dropped when it does not
    /// exist or routes nowhere). Unless the death was a rejection, queues the message
    /// already died in without a rejection since are left out (RabbitMQ's cycle rule).
    pub(crate) fn publish_dead_letter(
        &self,
        name: &str,
        mut message: Message,
        rejected: bool,
    ) -> bool {
        let Some(exchange) = self.exchange(name).filter(|x| !x.is_deleted()) else {
            debug!(vhost = %self.name, exchange = name, "dead-letter exchange missing: message dropped");
            return false;
        };
        // Its `CC` keys still route, as RabbitMQ routes a dead-lettered message on its
        // original keys (dead-lettering with a new routing key removed the header).
        let cc = sender_selected::take_routes(&mut message).unwrap_or_default();
        let mut queues = Vec::new();
        self.route(&exchange, &message, &cc, &mut queues);
        if !rejected {
            queues.retain(|q| !crate::queue::deadletter::is_cycle(&message, q.name()));
        }
        if queues.is_empty() {
            debug!(vhost = %self.name, exchange = name, "dead-lettered message routed nowhere: dropped");
            return false;
        }
        let mut published = Published::routed(PublishOutcome::Routed(queues.len()), None);
        drop(self.enqueue(message, &queues, &mut published));
        true
    }

    /// Collects the queues `message` reaches from `exchange` on its routing key and the
    /// sender-selected keys `cc`, each once. The default exchange never has an alternate
    /// exchange (RabbitMQ routes it apart).
    pub(crate) fn route(
        &self,
        exchange: &Arc<Exchange>,
        message: &Message,
        cc: &[String],
        out: &mut Vec<Arc<Queue>>,
    ) {
        if exchange.is_default() {
            if let Some(queue) = self.queues.get(message.routing_key_bytes()) {
                out.push(Arc::clone(&queue));
            }
            if !cc.is_empty() {
                self.route_default(cc, out);
            }
            return;
        }
        crate::exchange::route_from(exchange, message, cc, &|name| self.exchange(name), out);
    }

    /// Adds the queues the keys `cc` name (the default exchange's routing) to `out`, which
    /// then holds each queue once.
    fn route_default(&self, cc: &[String], out: &mut Vec<Arc<Queue>>) {
        out.extend(
            cc.iter()
                .filter_map(|key| self.queues.get(key.as_bytes()).map(|q| Arc::clone(&q))),
        );
        out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}

/// Stores a persistent message once for all its durable target queues, then enqueues it
/// everywhere. The store write is queued before the message becomes visible in any queue,
/// so an ack's remove can never reach the store ahead of the publish (which would bring
/// the acked message back after a restart).
pub(crate) fn push_persistent(store: &Store, message: Message, queues: &[Arc<Queue>]) -> Commit {
    let mut published = Published::routed(PublishOutcome::Routed(queues.len()), None);
    push_persistent_checked(store, message, queues, &mut published)
}

/// [`push_persistent`], recording what the queues' length limits did in `published`.
fn push_persistent_checked(
    store: &Store,
    message: Message,
    queues: &[Arc<Queue>],
    published: &mut Published,
) -> Commit {
    let header = durable::message_header(&message);
    let targets: Vec<(lockgate_store::QueueId, u64)> = queues
        .iter()
        .filter_map(|q| q.store().map(|qs| (qs.id, q.reserve_seq())))
        .collect();
    let (id, commit) = store.publish(header, message.body_bytes(), &targets);
    let message = Arc::new(message);
    let mut reserved = targets.iter();
    for queue in queues {
        match queue.store() {
            Some(_) => {
                let Some(&(queue_id, seq)) = reserved.next() else {
                    continue;
                };
                let stored = StoredRef {
                    queue: queue_id,
                    seq,
                    message: id,
                };
                let admit = queue.push_reserved(Arc::clone(&message), stored, commit.ticket());
                published.admitted(queue, admit);
            }
            None => published.admitted(queue, queue.push(Arc::clone(&message))),
        }
    }
    commit
}

/// The exclusive-access check on a binding's destination: a queue may be another
/// connection's; an exchange has no owner.
fn destination_access(
    destination: &Destination,
    connection: ConnectionId,
) -> Result<(), BrokerError> {
    match destination {
        Destination::Queue(queue) => queue.check_access(connection),
        Destination::Exchange(_) => Ok(()),
    }
}
