//! Exchanges and their routing tables.
//!
//! An [`Exchange`] is a handle the server may cache: routing reads its table under a
//! read lock, and [`Exchange::is_deleted`] tells a cached handle it is stale. Each type keeps
//! its bindings in the structure that routes fastest for it: direct in a hash map by routing
//! key, fanout in a list, topic in a trie ([`topic`]), headers as compiled matchers
//! ([`headers`]), consistent hash as a weighted ring ([`consistent_hash`]). A delayed
//! exchange ([`delayed`]) routes as its `x-delayed-type` and holds messages that ask for a
//! delay until they are due. Destinations are `Arc` handles, so routing never looks a
//! queue up by name.
//!
//! Two RabbitMQ features widen routing, without cost for messages that do not use them: the
//! keys of a message's `CC` and `BCC` headers ([`sender_selected`]) route beside its routing
//! key, and an exchange whose bindings match nothing passes the message to its alternate
//! exchange ([`route_from`]).

mod consistent_hash;
mod delayed;
mod erlang_hash;
mod headers;
pub(crate) mod sender_selected;
mod topic;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lockgate_wire::{FieldTable, FieldValue};
use parking_lot::RwLock;

use lockgate_store::{Commit, Store};

use crate::error::BrokerError;
use crate::memory::MemoryMonitor;
use crate::message::Message;
use crate::queue::Queue;

use consistent_hash::{ConsistentHashRouter, HashOn};
pub(crate) use delayed::{arm_recovered as arm_recovered_delayed, recover as recover_delayed};
use delayed::{delayed_type, requested_delay, DelayedMessages};
pub(crate) use headers::HeadersRouter;
pub(crate) use topic::TopicRouter;

/// The exchange types lockgate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes to bindings whose key equals the routing key.
    Direct,
    /// Routes to every binding.
    Fanout,
    /// Routes by pattern: `*` one word, `#` zero or more.
    Topic,
    /// Routes on message headers (`x-match`).
    Headers,
    /// `x-consistent-hash`: one binding per message, by a hash of the routing key (or a
    /// header or property); binding keys are weights.
    ConsistentHash,
    /// `x-delayed-message`: routes as its `x-delayed-type`, after the message's `x-delay`.
    DelayedMessage,
}

impl ExchangeKind {
    /// Parses the type name of `exchange.declare`.
    ///
    /// # Errors
    /// `CommandInvalid` "unknown exchange type 'x'" (503, closes the connection), as
    /// RabbitMQ 3.x answers on the wire.
    pub fn parse(name: &str) -> Result<Self, BrokerError> {
        match name {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            "x-consistent-hash" => Ok(Self::ConsistentHash),
            "x-delayed-message" => Ok(Self::DelayedMessage),
            other => Err(BrokerError::command_invalid(format_args!(
                "unknown exchange type '{other}'"
            ))),
        }
    }

    /// The type name as in `exchange.declare`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::ConsistentHash => "x-consistent-hash",
            Self::DelayedMessage => "x-delayed-message",
        }
    }
}

/// Checks the arguments a type reads at declaration, so that routing never meets a bad one.
///
/// # Errors
/// `PreconditionFailed` for an invalid `hash-header`/`hash-property` (consistent hash) or
/// `x-delayed-type` (delayed), with the plugins' texts.
pub(crate) fn validate_arguments(
    kind: ExchangeKind,
    arguments: &FieldTable,
) -> Result<(), BrokerError> {
    match kind {
        ExchangeKind::ConsistentHash => HashOn::parse(arguments).map(drop),
        ExchangeKind::DelayedMessage => validate_arguments(delayed_type(arguments)?, arguments),
        ExchangeKind::Direct
        | ExchangeKind::Fanout
        | ExchangeKind::Topic
        | ExchangeKind::Headers => Ok(()),
    }
}

/// The `alternate-exchange` argument, when it is a long string (declaring refuses any other
/// type; see [`check_alternate_argument`]).
fn alternate_argument(arguments: &FieldTable) -> Option<&str> {
    arguments
        .get("alternate-exchange")
        .and_then(FieldValue::as_str)
}

/// Checks the type of an `alternate-exchange` argument, as RabbitMQ's channel does at
/// `exchange.declare`.
///
/// # Errors
/// `PreconditionFailed` "invalid type 'long' for arg 'alternate-exchange' in exchange 'x' in
/// vhost '/'".
pub(crate) fn check_alternate_argument(
    arguments: &FieldTable,
    resource: &crate::error::Resource<'_>,
) -> Result<(), BrokerError> {
    match arguments.get("alternate-exchange") {
        None | Some(FieldValue::LongString(_)) => Ok(()),
        Some(other) => Err(BrokerError::precondition_failed(format_args!(
            "invalid type '{}' for arg 'alternate-exchange' in {resource}",
            crate::queue::arguments::type_name(other)
        ))),
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a binding leads.
#[derive(Clone)]
pub(crate) enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Queue(a), Self::Queue(b)) => Arc::ptr_eq(a, b),
            (Self::Exchange(a), Self::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Queue(q) => write!(f, "queue {:?}", q.name()),
            Self::Exchange(x) => write!(f, "exchange {:?}", x.name()),
        }
    }
}

/// One binding as a routing table stores it; the source is the table's exchange.
#[derive(Clone, Debug)]
pub(crate) struct BindingEntry {
    pub routing_key: String,
    pub arguments: FieldTable,
    pub destination: Destination,
}

impl BindingEntry {
    /// Bindings are identified by (source, destination, key, arguments), as in RabbitMQ.
    fn same(&self, other: &BindingEntry) -> bool {
        self.routing_key == other.routing_key
            && self.arguments == other.arguments
            && self.destination == other.destination
    }
}

#[derive(Debug, Default)]
pub(crate) struct DirectRouter {
    /// Looked up on every publish: foldhash, randomly seeded per map (see `VHost`).
    by_key: HashMap<String, Vec<BindingEntry>, foldhash::fast::RandomState>,
    len: usize,
}

impl DirectRouter {
    fn add(&mut self, entry: BindingEntry) -> bool {
        let bucket = self.by_key.entry(entry.routing_key.clone()).or_default();
        if bucket.iter().any(|b| b.same(&entry)) {
            return false;
        }
        bucket.push(entry);
        self.len += 1;
        true
    }

    fn remove(&mut self, key: &str, arguments: &FieldTable, destination: &Destination) -> bool {
        let Some(bucket) = self.by_key.get_mut(key) else {
            return false;
        };
        let before = bucket.len();
        bucket.retain(|b| !(&b.arguments == arguments && &b.destination == destination));
        let removed = bucket.len() != before;
        if bucket.is_empty() {
            self.by_key.remove(key);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn route(&self, routing_key: &str, f: &mut impl FnMut(&Destination)) {
        if let Some(bucket) = self.by_key.get(routing_key) {
            for binding in bucket {
                f(&binding.destination);
            }
        }
    }

    fn take_all(&mut self) -> Vec<BindingEntry> {
        self.len = 0;
        self.by_key.drain().flat_map(|(_, bucket)| bucket).collect()
    }
}

#[derive(Debug, Default)]
pub(crate) struct FanoutRouter {
    bindings: Vec<BindingEntry>,
}

impl FanoutRouter {
    fn add(&mut self, entry: BindingEntry) -> bool {
        if self.bindings.iter().any(|b| b.same(&entry)) {
            return false;
        }
        self.bindings.push(entry);
        true
    }

    fn remove(&mut self, key: &str, arguments: &FieldTable, destination: &Destination) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|b| {
            !(b.routing_key == key && &b.arguments == arguments && &b.destination == destination)
        });
        self.bindings.len() != before
    }

    fn route(&self, f: &mut impl FnMut(&Destination)) {
        for binding in &self.bindings {
            f(&binding.destination);
        }
    }
}

/// An exchange's routing table.
#[derive(Debug)]
pub(crate) enum Router {
    Direct(DirectRouter),
    Fanout(FanoutRouter),
    Topic(TopicRouter),
    Headers(HeadersRouter),
    ConsistentHash(ConsistentHashRouter),
}

impl Router {
    /// The table for `kind`. Arguments were checked by [`validate_arguments`] when the
    /// exchange was declared; should a stored one no longer parse, the type's default
    /// applies (routing key hash; direct routing for a delayed exchange).
    fn new(kind: ExchangeKind, arguments: &FieldTable) -> Self {
        match kind {
            ExchangeKind::Direct => Self::Direct(DirectRouter::default()),
            ExchangeKind::Fanout => Self::Fanout(FanoutRouter::default()),
            ExchangeKind::Topic => Self::Topic(TopicRouter::default()),
            ExchangeKind::Headers => Self::Headers(HeadersRouter::default()),
            ExchangeKind::ConsistentHash => Self::ConsistentHash(ConsistentHashRouter::new(
                HashOn::parse(arguments).unwrap_or(HashOn::RoutingKey),
            )),
            ExchangeKind::DelayedMessage => Self::new(
                delayed_type(arguments).unwrap_or(ExchangeKind::Direct),
                arguments,
            ),
        }
    }

    /// Checks a binding's key and arguments as this exchange type would on `add`, without
    /// adding it: RabbitMQ validates a binding before it checks the destination's exclusive
    /// access.
    ///
    /// # Errors
    /// As [`Router::add`].
    pub fn validate(&self, routing_key: &str, arguments: &FieldTable) -> Result<(), BrokerError> {
        match self {
            Self::Direct(_) | Self::Fanout(_) | Self::Topic(_) => Ok(()),
            Self::Headers(_) => HeadersRouter::validate(arguments),
            Self::ConsistentHash(_) => ConsistentHashRouter::validate(routing_key),
        }
    }

    /// Adds a binding; `Ok(false)` when it already exists (binding is idempotent).
    ///
    /// # Errors
    /// `PreconditionFailed` for invalid headers-binding arguments or a consistent-hash
    /// binding key that is not a positive integer.
    pub fn add(&mut self, entry: BindingEntry) -> Result<bool, BrokerError> {
        Ok(match self {
            Self::Direct(r) => r.add(entry),
            Self::Fanout(r) => r.add(entry),
            Self::Topic(r) => r.add(entry),
            Self::Headers(r) => return r.add(entry),
            Self::ConsistentHash(r) => return r.add(entry),
        })
    }

    /// Removes a binding; false when there was none.
    pub fn remove(&mut self, key: &str, arguments: &FieldTable, destination: &Destination) -> bool {
        match self {
            Self::Direct(r) => r.remove(key, arguments, destination),
            Self::Fanout(r) => r.remove(key, arguments, destination),
            Self::Topic(r) => r.remove(key, arguments, destination),
            Self::Headers(r) => r.remove(key, arguments, destination),
            Self::ConsistentHash(r) => r.remove(key, arguments, destination),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Direct(r) => r.len,
            Self::Fanout(r) => r.bindings.len(),
            Self::Topic(r) => r.len(),
            Self::Headers(r) => r.len(),
            Self::ConsistentHash(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every destination the message matches (possibly more than once), on
    /// its routing key and the sender-selected keys `cc`. Fanout, headers and consistent
    /// hash read no key list, as RabbitMQ's (the last hashes the routing key only).
    pub fn route(&self, message: &Message, cc: &[String], f: &mut impl FnMut(&Destination)) {
        match self {
            Self::Direct(r) => {
                r.route(message.routing_key(), f);
                for key in cc {
                    r.route(key, f);
                }
            }
            Self::Fanout(r) => r.route(f),
            Self::Topic(r) => {
                r.route(message.routing_key(), f);
                for key in cc {
                    r.route(key, f);
                }
            }
            Self::Headers(r) => r.route(message.headers().as_ref(), f),
            Self::ConsistentHash(r) => r.route(message, f),
        }
    }

    pub fn take_all(&mut self) -> Vec<BindingEntry> {
        match self {
            Self::Direct(r) => r.take_all(),
            Self::Fanout(r) => std::mem::take(&mut r.bindings),
            Self::Topic(r) => r.take_all(),
            Self::Headers(r) => r.take_all(),
            Self::ConsistentHash(r) => r.take_all(),
        }
    }
}

/// Declaration flags of an exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeFlags {
    /// Only check that it exists (404 otherwise); the other flags and the type are ignored.
    pub passive: bool,
    /// Survives a restart (recorded now; persisted once the store lands).
    pub durable: bool,
    /// Deleted when its last binding (as source) goes.
    pub auto_delete: bool,
    /// Cannot be published to by clients, only reached through exchange-to-exchange bindings.
    pub internal: bool,
}

/// An exchange. Cheap to share: the server may cache the `Arc` per channel and must drop it
/// once [`Exchange::is_deleted`] is true.
pub struct Exchange {
    name: String,
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: FieldTable,
    /// Where a message that matches no binding goes: the `alternate-exchange` argument, else
    /// the key of the policy that applies (RabbitMQ's precedence). Read only for such a
    /// message; changed when the policies are.
    alternate: RwLock<Option<Arc<str>>>,
    pub(crate) router: RwLock<Router>,
    deleted: AtomicBool,
    /// The messages a delayed exchange holds; `None` for the other types.
    delayed: Option<Arc<DelayedMessages>>,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("durable", &self.durable)
            .field("auto_delete", &self.auto_delete)
            .field("internal", &self.internal)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    pub(crate) fn new(
        name: String,
        kind: ExchangeKind,
        flags: ExchangeFlags,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name,
            kind,
            durable: flags.durable,
            auto_delete: flags.auto_delete,
            internal: flags.internal,
            router: RwLock::new(Router::new(kind, &arguments)),
            alternate: RwLock::new(alternate_argument(&arguments).map(Arc::from)),
            deleted: AtomicBool::new(false),
            delayed: (kind == ExchangeKind::DelayedMessage).then(DelayedMessages::new),
            arguments,
        }
    }

    /// Its name ("" for the default exchange).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its type.
    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    /// Declared durable.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Declared auto-delete.
    pub fn auto_delete(&self) -> bool {
        self.auto_delete
    }

    /// Declared internal.
    pub fn internal(&self) -> bool {
        self.internal
    }

    /// Its declaration arguments.
    pub fn arguments(&self) -> &FieldTable {
        &self.arguments
    }

    /// The name of its alternate exchange, if it has one (from its argument or a policy).
    pub fn alternate_exchange(&self) -> Option<Arc<str>> {
        self.alternate.read().clone()
    }

    /// Sets the alternate exchange that the policy applying to this exchange names (`None`:
    /// no policy, or one without the key); the argument, when given, keeps precedence.
    pub(crate) fn set_policy_alternate(&self, policy: Option<&str>) {
        let alternate = alternate_argument(&self.arguments).or(policy);
        let mut current = self.alternate.write();
        if current.as_deref() != alternate {
            *current = alternate.map(Arc::from);
        }
    }

    /// True once deleted: a cached handle must be dropped and looked up again.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.router.read().len()
    }

    pub(crate) fn is_default(&self) -> bool {
        self.name.is_empty()
    }

    /// Messages a delayed exchange holds until they are due (0 for other types).
    pub fn delayed_count(&self) -> usize {
        self.delayed.as_ref().map_or(0, |d| d.len())
    }

    /// Adds the destinations of this exchange's own bindings that `message` matches (on its
    /// routing key and the keys `cc`): queues to `out`, exchanges to `exchanges`. When it
    /// matches none, adds its alternate exchange, if that exists, to `exchanges`.
    fn route_one(
        &self,
        message: &Message,
        cc: &[String],
        exchanges_by_name: &dyn Fn(&str) -> Option<Arc<Exchange>>,
        out: &mut Vec<Arc<Queue>>,
        exchanges: &mut Vec<Arc<Exchange>>,
    ) {
        let matched = (out.len(), exchanges.len());
        self.router
            .read()
            .route(message, cc, &mut |destination| match destination {
                Destination::Queue(q) => out.push(Arc::clone(q)),
                Destination::Exchange(x) => exchanges.push(Arc::clone(x)),
            });
        if matched == (out.len(), exchanges.len()) {
            self.add_alternate(exchanges_by_name, exchanges);
        }
    }

    /// RabbitMQ's `process_alternate`: an exchange whose bindings matched nothing passes the
    /// message to its alternate exchange; a missing one is skipped. Cold: most messages
    /// match, and most exchanges have no alternate.
    #[cold]
    fn add_alternate(
        &self,
        exchanges_by_name: &dyn Fn(&str) -> Option<Arc<Exchange>>,
        exchanges: &mut Vec<Arc<Exchange>>,
    ) {
        let Some(name) = self.alternate_exchange() else {
            return;
        };
        exchanges.extend(exchanges_by_name(&name).filter(|x| !x.is_deleted()));
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        if let Some(delayed) = &self.delayed {
            delayed.clear();
        }
    }

    /// The delay `message` asks of this exchange: `Some` only for a delayed exchange and an
    /// `x-delay` above zero. Then publishing hands it to [`Exchange::hold_delayed`].
    pub(crate) fn requested_delay(&self, message: &Message) -> Option<u64> {
        self.delayed.as_ref().and_then(|_| requested_delay(message))
    }

    /// Holds `message` (in vhost `vhost`) for `delay_ms`, then routes it; returns the commit
    /// of its store write when it was persisted (durable exchange, persistent message).
    pub(crate) fn hold_delayed(
        self: &Arc<Self>,
        vhost: &crate::vhost::VHost,
        message: Message,
        delay_ms: u64,
        memory: &Arc<MemoryMonitor>,
        store: Option<&Store>,
    ) -> Option<Commit> {
        let delayed = self.delayed.as_ref()?;
        delayed.hold(self, vhost, message, delay_ms, memory, store)
    }
}

/// Collects the queues `message` reaches from `exchange` (not the default exchange) on its
/// routing key and the sender-selected keys `cc`, following exchange-to-exchange bindings
/// and, from every exchange reached that matches nothing, its alternate exchange (looked up
/// with `exchanges_by_name`; RabbitMQ's `rabbit_exchange:route/3`), each exchange and each
/// queue once.
pub(crate) fn route_from(
    exchange: &Arc<Exchange>,
    message: &Message,
    cc: &[String],
    exchanges_by_name: &dyn Fn(&str) -> Option<Arc<Exchange>>,
    out: &mut Vec<Arc<Queue>>,
) {
    // Exchange-to-exchange bindings and alternate exchanges are rare: without them nothing
    // here allocates.
    let mut pending: Vec<Arc<Exchange>> = Vec::new();
    exchange.route_one(message, cc, exchanges_by_name, out, &mut pending);
    if !pending.is_empty() {
        // A set, not a list: one exchange may be bound to thousands of others.
        let mut visited: HashSet<*const Exchange> = HashSet::from([Arc::as_ptr(exchange)]);
        while let Some(next) = pending.pop() {
            if visited.insert(Arc::as_ptr(&next)) {
                next.route_one(message, cc, exchanges_by_name, out, &mut pending);
            }
        }
    }
    if out.len() > 1 {
        out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}
