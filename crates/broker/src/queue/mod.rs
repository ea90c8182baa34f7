//! Queues: ready messages, consumers and the push of messages to consumers with credit.
//!
//! A queue's state sits behind one short `parking_lot` mutex, never held across an `.await`.
//! Every message gets a per-queue sequence number when it is enqueued; the ready list stays
//! sorted by it, so a requeued message goes back to its original position. Delivery is a
//! push under that lock: when a message arrives or credit frees up, the queue hands ready
//! messages to consumers that have credit ([`Consumer::try_acquire`]), through their
//! channel's sink: to those of the highest priority (`x-priority`) first, round-robin among
//! equals ([`Levels`]). Unacked deliveries live on the channel; the queue only counts them.
//! A queue with one active consumer (the common case) first takes the messages it can
//! deliver, then hands them to the channel together ([`ChannelShared::deliver_all`]): one
//! send to the connection's writer rather than one per message.
//!
//! Reliability settings (see docs/semantics/reliability.md): length limits and overflow are
//! applied here on every enqueue; TTL, retry delays and `x-expires` wake the queue through
//! the broker's one timer (`expiry.rs`); dead-lettering is in `deadletter.rs`.

pub mod arguments;
pub(crate) mod deadletter;
mod dedup;
mod expiry;
mod groups;
mod ready;
pub(crate) mod spill;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use lockgate_store::{QueueId, Store, StoredRef};
use lockgate_wire::FieldTable;
use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::watch;

use crate::channel::ChannelShared;
use crate::consumer::{Consumer, Levels};
use crate::error::{BrokerError, Resource};
use crate::ids::{ConnectionId, DeliveryTag};
use crate::memory::MemoryMonitor;
use crate::message::Message;
use crate::stats::{QueueCounters, QueueSnapshot};
use crate::timer::Deadlines;
use crate::unacked::UnackedEntry;
use crate::vhost::VHost;
use arguments::{Overflow, QueueArguments, TimeoutAction};
use deadletter::{Dead, Reason};
use ready::ReadyList;

/// What a queue did with a published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Enqueued.
    Enqueued,
    /// Enqueued, and the queue (overflow `block`) is now full: pause the publisher until
    /// [`Queue::room`] says it has room again.
    Full,
    /// Refused by the length limit (overflow `reject-publish` / `reject-publish-dlx`).
    Refused,
}

/// Why deliveries go back to their queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Return {
    /// `basic.nack` / `basic.reject` with requeue (a retry delay applies).
    Nack,
    /// Not acknowledged within the consumer timeout (a retry delay applies).
    Timeout,
    /// Channel closed or `basic.recover`: back at once.
    Close,
}

/// A message waiting in a queue: 32 octets, with a backlog's ready list one of these per
/// message (a test holds the size).
pub(crate) struct Ready {
    pub seq: u64,
    pub message: Arc<Message>,
    /// The stored copy of a persistent message in a durable queue, boxed: a transient message
    /// has none, and for it the 24 octets would make every entry 8 bytes larger than this
    /// pointer does. A stored message pays a small allocation beside its store write.
    stored: Option<Box<StoredRef>>,
    /// `message.size()`, kept here so that counting bytes on delivery does not touch the
    /// message itself (a cache miss per message in a long queue); [`Ready::SIZE_ELSEWHERE`]
    /// when it does not fit, and then read from the message.
    size: u32,
    pub redelivered: bool,
}

impl Ready {
    /// `Ready::size` of a message of 4 GiB or more.
    const SIZE_ELSEWHERE: u32 = u32::MAX;

    pub fn new(
        seq: u64,
        message: Arc<Message>,
        redelivered: bool,
        stored: Option<StoredRef>,
    ) -> Self {
        let size = u32::try_from(message.size()).unwrap_or(Self::SIZE_ELSEWHERE);
        Self {
            seq,
            message,
            stored: stored.map(Box::new),
            size,
            redelivered,
        }
    }

    /// `message.size()`.
    pub fn size(&self) -> u64 {
        if self.size == Self::SIZE_ELSEWHERE {
            self.message.size()
        } else {
            u64::from(self.size)
        }
    }

    /// The stored copy, if the message has one.
    pub fn stored(&self) -> Option<StoredRef> {
        self.stored.as_deref().copied()
    }

    /// Gives the message its stored copy back (a page read from disk).
    pub fn set_stored(&mut self, stored: StoredRef) {
        self.stored = Some(Box::new(stored));
    }
}

/// Where a durable queue keeps its persistent messages.
#[derive(Clone, Debug)]
pub(crate) struct QueueStore {
    pub store: Store,
    pub id: QueueId,
}

#[derive(Default)]
struct QueueState {
    /// The effective arguments, read by the message path under this lock.
    args: Arc<QueueArguments>,
    /// The policy `args` come from, if any.
    policy: Option<String>,
    /// Body bytes of the ready messages (memory, disk and delayed), for
    /// `x-max-length-bytes`, which counts bodies only, as RabbitMQ.
    body_bytes: u64,
    /// TTL deadlines by seq. Cancellation is lazy: a popped seq that is no longer ready (or
    /// not expired: its TTL changed) is skipped.
    expiry: Deadlines<u64>,
    /// Messages requeued with a retry delay, by seq, until their deadline in `retry`; they
    /// count as ready.
    delayed: BTreeMap<u64, Ready>,
    retry: Deadlines<u64>,
    /// Message ids remembered for `x-deduplication-window` (`dedup.rs`).
    dedup: dedup::Seen,
    /// The earliest wake scheduled on the broker's timer, if any.
    timer_at: Option<Instant>,
    /// When a consumer, `basic.get` or a redeclaration last used the queue (`x-expires`).
    last_used: Option<Instant>,
    /// In delivery order: FIFO by seq, by priority, or by group (`ready.rs`).
    ready: ReadyList,
    next_seq: u64,
    /// Sorted by priority, highest first, in arrival order within a priority; with single
    /// active consumer the active one (the first) keeps its place ([`waiting_position`]).
    consumers: Vec<Arc<Consumer>>,
    /// Single active consumer: a former active consumer left with deliveries unsettled; the
    /// next one gets nothing until the queue's unacked count (kept under this lock, unlike
    /// the consumer's own credit count) is back to zero, so the requeued messages go first.
    fading: bool,
    /// The consumers' priority levels, with the round-robin turn in each (not used with
    /// single active consumer).
    levels: Levels,
    /// The consumers whose deliveries timed out and are being requeued (one timer wake of
    /// a channel can take back those of several): until they are, the levels (and a grouped
    /// queue's drain by priority) try every other consumer, of any priority, before them
    /// ([`Queue::rotate_past`]). Empty otherwise.
    passed_over: Vec<Weak<Consumer>>,
    /// Delayed messages (by seq) that a consumer timeout took back, with the consumers
    /// passed over when they were taken back: passed over again when their retry delay ends
    /// (`expiry.rs`).
    retry_passed_over: HashMap<u64, Arc<[Weak<Consumer>]>>,
    /// Deliveries from this queue that are not yet acked, on any channel.
    unacked: usize,
    had_consumer: bool,
    exclusive_consumer: bool,
    deleted: bool,
    /// Highest seq whose delivery was reported to the store (redelivered watermark).
    marked: Option<u64>,
    counters: QueueCounters,
    /// Messages on disk (spilled or recovered), after the in-memory ones of their lane, and
    /// those that arrived behind them (`spill.rs`).
    tails: spill::Tails,
    /// Bumped by purge and delete: a spill or page-in that ran meanwhile is discarded.
    epoch: u64,
    /// A spill write or page-in of this queue is in flight.
    busy: bool,
    /// Seqs reserved for persistent messages not pushed yet (no spill meanwhile).
    reserving: usize,
    /// Disk tails purged while seqs were reserved: (first seq removed, ticket of the
    /// removal). Cleared once no seq is reserved.
    purged_tails: Vec<(u64, u64)>,
    /// Ticket of the last purge's removal of a disk tail: until the store has applied it,
    /// nothing is spilled (spill records bypass the store's writer, and the removal would
    /// delete the new ones too).
    tail_removal: Option<u64>,
    /// Highest seq ever delivered: only later messages are spilled, so that every unacked
    /// (and requeued) message sorts before the disk tail.
    max_delivered: Option<u64>,
    /// Wakes the broker's spill task when the head runs low.
    wake: Option<Arc<tokio::sync::Notify>>,
    /// A page-in was requested and not served yet.
    want_page: bool,
    /// Messages a drain took for the only active consumer (the first), with its credit, to
    /// hand over together ([`hand_over`]); a drain that takes one delivers it directly.
    /// Empty outside a drain.
    outgoing: Vec<Ready>,
}

thread_local! {
    /// An emptied `QueueState::outgoing`, for the next drain on this thread: a drain
    /// allocates nothing in the steady state.
    static SPARE: Cell<Vec<Ready>> = const { Cell::new(Vec::new()) };
}

/// The largest [`SPARE`] a thread keeps: enough for the runs of a steady stream, while a
/// backlog's full run (`HAND_OVER_MAX`, ~64 KiB) is given back.
const SPARE_MAX: usize = 128;

/// The most messages handed over together: a long drain (a backlog, a no-ack consumer)
/// goes in runs of this many rather than all at once, so that it holds no second copy of
/// the backlog's list, and [`SPARE`] stays this short.
const HAND_OVER_MAX: usize = 1024;

/// What `basic.get` returns when the queue had a message.
#[derive(Debug)]
pub struct GetOk {
    /// The channel's tag for it.
    pub delivery_tag: DeliveryTag,
    /// True when it was delivered before and requeued.
    pub redelivered: bool,
    /// Ready messages left in the queue.
    pub message_count: u32,
    /// The message.
    pub message: Arc<Message>,
}

/// A queue.
pub struct Queue {
    name: String,
    vhost: String,
    durable: bool,
    auto_delete: bool,
    exclusive_owner: Option<ConnectionId>,
    raw_arguments: FieldTable,
    /// Set for durable (non-exclusive) queues when the broker has a store.
    store: Option<QueueStore>,
    /// Itself, for the timer ([`Queue::into_arc`]).
    me: Weak<Queue>,
    /// Its vhost, for dead-lettering and `x-expires`.
    vhost_ref: Weak<VHost>,
    /// The broker's memory accounting (copies made for redelivery and dead-lettering).
    memory: Arc<MemoryMonitor>,
    /// The broker-wide consumer timeout, for when the arguments set none.
    default_timeout: Option<u64>,
    /// The effective consumer timeout in ms (0 = none) and its action, read by channels
    /// on every delivery without taking the queue lock.
    timeout_ms: AtomicU64,
    timeout_close: AtomicBool,
    /// `QueueState::deleted`, readable without the lock: a channel checks its cached
    /// destination with every publish.
    deleted: AtomicBool,
    /// True while the queue has room (overflow `block`): blocked publishers wait on it.
    room: watch::Sender<bool>,
    state: Mutex<QueueState>,
    /// Notified when a spill or page-in of the queue finishes (`basic.get` waits on it).
    spill_done: Condvar,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .field("durable", &self.durable)
            .field("auto_delete", &self.auto_delete)
            .field("exclusive_owner", &self.exclusive_owner)
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(
        name: String,
        vhost: String,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<ConnectionId>,
        arguments: QueueArguments,
        raw_arguments: FieldTable,
    ) -> Self {
        Self {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            raw_arguments,
            store: None,
            me: Weak::new(),
            vhost_ref: Weak::new(),
            memory: MemoryMonitor::new(0),
            default_timeout: None,
            timeout_ms: AtomicU64::new(0),
            timeout_close: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            room: watch::Sender::new(true),
            spill_done: Condvar::new(),
            state: Mutex::new(QueueState {
                ready: ReadyList::new(&arguments),
                args: Arc::new(arguments),
                ..QueueState::default()
            }),
        }
    }

    /// Makes this queue keep its persistent messages in `store` under `id`, continuing at
    /// `next_seq` with `marked` as the delivered watermark (both from recovery, or 0 / None
    /// for a new queue).
    pub(crate) fn with_store(
        mut self,
        store: QueueStore,
        next_seq: u64,
        marked: Option<u64>,
    ) -> Self {
        let st = self.state.get_mut();
        st.next_seq = next_seq;
        st.marked = marked;
        self.store = Some(store);
        self
    }

    /// Shares the queue, linked to its vhost (dead-lettering, `x-expires`) and the broker's
    /// consumer-timeout default, and starts its `x-expires` clock.
    pub(crate) fn into_arc(
        mut self,
        vhost: Weak<VHost>,
        memory: Arc<MemoryMonitor>,
        default_timeout: Option<u64>,
    ) -> Arc<Self> {
        self.vhost_ref = vhost;
        self.memory = memory;
        self.default_timeout = default_timeout;
        let queue = Arc::new_cyclic(|me| {
            self.me = me.clone();
            self
        });
        let mut st = queue.state.lock();
        let args = Arc::clone(&st.args);
        queue.apply_timeout(&args);
        queue.touch_locked(&mut st);
        drop(st);
        queue
    }

    /// Lets this queue wake the broker's spill task when its in-memory head runs low.
    pub(crate) fn with_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.state.get_mut().wake = Some(wake);
        self
    }

    /// The store and id of a durable queue.
    pub(crate) fn store(&self) -> Option<&QueueStore> {
        self.store.as_ref()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declared durable (and not exclusive).
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Declared auto-delete: deleted when its last consumer goes, after it had one.
    pub fn auto_delete(&self) -> bool {
        self.auto_delete
    }

    /// The connection owning it when declared exclusive.
    pub fn exclusive_owner(&self) -> Option<ConnectionId> {
        self.exclusive_owner
    }

    /// The effective arguments: the client's own over the matching policy's.
    pub fn arguments(&self) -> Arc<QueueArguments> {
        Arc::clone(&self.state.lock().args)
    }

    /// The policy whose settings apply to this queue, if any.
    pub fn policy_name(&self) -> Option<String> {
        self.state.lock().policy.clone()
    }

    /// Replaces the effective arguments (a policy was set, changed or removed) and applies
    /// them now where that makes sense: a lower length limit trims the queue at once, a new
    /// TTL applies to messages that arrive from now on, a new consumer timeout to deliveries
    /// made from now on. A new shape may make messages deliverable to consumers that could
    /// not take them before (a group held by another consumer, a priority level waiting for
    /// its page-in): they are handed out now.
    pub fn set_arguments(&self, arguments: QueueArguments, policy: Option<String>) {
        let mut st = self.state.lock();
        let args = Arc::new(arguments);
        let ttl_changed = st.args.message_ttl != args.message_ttl;
        st.args = Arc::clone(&args);
        st.policy = policy;
        if args.dedup.is_none() {
            // Only a queue with a window looks at (and clears) the ids it remembers.
            st.dedup = dedup::Seen::default();
        }
        if ttl_changed {
            self.reschedule_expiry(&mut st);
        }
        st.reshape();
        self.apply_timeout(&args);
        self.touch_locked(&mut st);
        let mut dead = Vec::new();
        self.trim(&mut st, &mut dead);
        drain(&mut st, self.store.as_ref());
        self.refresh_room(&st);
        drop(st);
        self.dead_letter(dead);
    }

    fn apply_timeout(&self, args: &QueueArguments) {
        let ms = args.consumer_timeout.or(self.default_timeout).unwrap_or(0);
        self.timeout_ms.store(ms, Ordering::Relaxed);
        self.timeout_close.store(
            args.consumer_timeout_action == TimeoutAction::CloseChannel,
            Ordering::Relaxed,
        );
    }

    /// The consumer timeout of deliveries from this queue: (ms, close the channel rather
    /// than requeue). Lock-free: channels read it on every delivery.
    pub(crate) fn consumer_timeout(&self) -> Option<(u64, bool)> {
        match self.timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((ms, self.timeout_close.load(Ordering::Relaxed))),
        }
    }

    /// Follows whether the queue has room (overflow `block`): publishers paused by
    /// [`Admit::Full`] resume when it turns true (also when the queue is deleted).
    pub fn room(&self) -> watch::Receiver<bool> {
        self.room.subscribe()
    }

    /// The declaration arguments as the client sent them (RabbitMQ 3.10 stores them so too).
    pub fn raw_arguments(&self) -> &FieldTable {
        &self.raw_arguments
    }

    /// Ready messages (what `queue.declare-ok` reports).
    pub fn message_count(&self) -> u32 {
        saturate(self.state.lock().total_ready())
    }

    /// Delivered, not yet acknowledged messages.
    pub fn unacked_count(&self) -> u32 {
        saturate(self.state.lock().unacked)
    }

    /// Active consumers.
    pub fn consumer_count(&self) -> u32 {
        saturate(self.state.lock().consumers.len())
    }

    /// True once deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn resource(&self) -> Resource<'_> {
        Resource::queue(&self.name, &self.vhost)
    }

    /// RabbitMQ's lax exclusive-access check (everything but redeclaration): a queue owned
    /// by another connection is locked.
    pub(crate) fn check_access(&self, connection: ConnectionId) -> Result<(), BrokerError> {
        match self.exclusive_owner {
            Some(owner) if owner != connection => {
                Err(BrokerError::resource_locked(&self.resource()))
            }
            _ => Ok(()),
        }
    }

    /// (ready, consumers) for `queue.declare-ok`.
    pub(crate) fn counts(&self) -> (u32, u32) {
        let st = self.state.lock();
        (saturate(st.total_ready()), saturate(st.consumers.len()))
    }

    /// Enqueues a routed message and pushes what it can to consumers; the length limit
    /// may refuse it or drop older messages.
    pub(crate) fn push(&self, message: Arc<Message>) -> Admit {
        let mut st = self.state.lock();
        if st.deleted {
            return Admit::Enqueued;
        }
        if refuses(&st, &message) {
            return self.refuse(st, message, None);
        }
        if st.args.dedup.is_some() && dedup::duplicate(&mut st, &message) {
            return Admit::Enqueued;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.counters.published += 1;
        let size = message.size();
        st.counters.ready_bytes += size;
        let mut dead = Vec::new();
        let now = self.expire_overdue(&mut st, &mut dead);
        let due = self.enqueued(&mut st, seq, &message);
        let item = Ready::new(seq, message, false, None);
        // Behind a disk tail, it waits in memory for the spill task, in order.
        if let Some(item) = st.hold_behind_tail(item) {
            st.ready.push_back(item);
            drain(&mut st, self.store.as_ref());
            self.expire_arrival(&mut st, due, now, &mut dead);
        }
        self.after_enqueue(st, dead)
    }

    /// Accounts for a message entering the ready messages: body bytes and its TTL deadline,
    /// which it returns.
    fn enqueued(&self, st: &mut QueueState, seq: u64, message: &Message) -> Option<Instant> {
        st.body_bytes += message.body().len() as u64;
        let at = message.expires_at(st.args.message_ttl)?;
        // Deadlines of messages that left (delivered, acked, purged) are only skipped
        // when due: rebuild once they outnumber the live ones (amortised O(1)).
        if st.expiry.len() > 2 * expiry::ready_count(st) + 1024 {
            self.reschedule_expiry(st);
        }
        st.expiry.push(at, seq);
        self.arm(st, at);
        Some(at)
    }

    /// After the drain that followed an arrival: the new message, due at `due`, expires now
    /// if it was due on arrival and the drain left it. This is RabbitMQ's TTL 0: a message
    /// expires on reaching the queue unless a consumer can take it at once. Messages that
    /// were waiting before are expired before that drain ([`Queue::expire_overdue`], which
    /// read the clock as `now`, if it did), so that none of them is delivered late.
    fn expire_arrival(
        &self,
        st: &mut QueueState,
        due: Option<Instant>,
        now: Option<Instant>,
        dead: &mut Vec<Dead>,
    ) {
        let Some(due) = due else {
            return;
        };
        let now = now.unwrap_or_else(Instant::now);
        if due <= now {
            self.expire_due(st, now, usize::MAX, dead);
        }
    }

    /// Refuses a publish at the length limit (reject-publish, reject-publish-dlx): the
    /// message is dead-lettered (reason maxlen) with `-dlx`, dropped otherwise, and its
    /// stored copy removed.
    fn refuse(
        &self,
        mut st: MutexGuard<'_, QueueState>,
        message: Arc<Message>,
        stored: Option<StoredRef>,
    ) -> Admit {
        st.counters.rejected_overflow += 1;
        let dlx = st.args.overflow == Some(Overflow::RejectPublishDlx)
            && st.args.dead_letter_exchange.is_some();
        drop(st);
        if dlx {
            self.dead_letter(vec![Dead {
                message,
                stored,
                reason: Reason::MaxLen,
            }]);
        } else if let (Some(stored), Some(qs)) = (stored, &self.store) {
            drop(qs.store.remove(stored));
        }
        Admit::Refused
    }

    /// After an enqueue: drop-head trims to the limit (dead-lettering what it drops), block
    /// reports a full queue.
    /// `dead` holds what was discarded before (overdue TTL).
    fn after_enqueue(&self, mut st: MutexGuard<'_, QueueState>, mut dead: Vec<Dead>) -> Admit {
        let mut admit = Admit::Enqueued;
        if st.args.max_length.is_some() || st.args.max_length_bytes.is_some() {
            self.trim(&mut st, &mut dead);
            if st.args.overflow == Some(Overflow::Block) && at_limit(&st) {
                self.refresh_room(&st);
                admit = Admit::Full;
            }
        }
        drop(st);
        if !dead.is_empty() {
            self.dead_letter(dead);
        }
        admit
    }

    /// Removes the messages whose TTL passed but whose timer wake has not run yet, so that
    /// the drain that follows never delivers one. Only queues holding TTL deadlines pay for
    /// the clock read; returns the time read, if any.
    fn expire_overdue(&self, st: &mut QueueState, dead: &mut Vec<Dead>) -> Option<Instant> {
        let next = st.expiry.next()?;
        let now = Instant::now();
        if next <= now {
            self.expire_due(st, now, usize::MAX, dead);
        }
        Some(now)
    }

    /// Drop-head: drops the oldest ready messages while the queue is over its limit. Only
    /// the in-memory head is dropped from: messages held aside by a retry delay, or on disk
    /// behind an empty head, wait until they are back in it.
    fn trim(&self, st: &mut QueueState, dead: &mut Vec<Dead>) {
        if !matches!(st.args.overflow, None | Some(Overflow::DropHead)) {
            return;
        }
        while over_limit(st) {
            let Some(item) = st.ready.pop_front() else {
                break;
            };
            st.counters.dropped_overflow += 1;
            self.discard(st, item, Reason::MaxLen, dead);
        }
    }

    /// Removes a ready message for good (expired, dropped by the limit): it is
    /// dead-lettered when the queue has a dead-letter exchange, dropped otherwise.
    fn discard(&self, st: &mut QueueState, item: Ready, reason: Reason, dead: &mut Vec<Dead>) {
        st.counters.ready_bytes = st.counters.ready_bytes.saturating_sub(item.size());
        st.body_bytes = st
            .body_bytes
            .saturating_sub(item.message.body().len() as u64);
        let stored = match (&self.store, item.stored()) {
            // Nothing to republish first: the stored copy's removal is submitted now, so
            // the store agrees with the queue as soon as the message is gone from it.
            (Some(qs), Some(stored)) if st.args.dead_letter_exchange.is_none() => {
                drop(qs.store.remove(stored));
                None
            }
            (_, stored) => stored,
        };
        dead.push(Dead {
            message: item.message,
            stored,
            reason,
        });
    }

    /// Tells blocked publishers whether the queue has room (overflow `block` only).
    fn refresh_room(&self, st: &QueueState) {
        if st.args.overflow != Some(Overflow::Block) && *self.room.borrow() {
            return;
        }
        let room = st.deleted || st.args.overflow != Some(Overflow::Block) || !at_limit(st);
        self.room
            .send_if_modified(|r| std::mem::replace(r, room) != room);
    }

    /// Takes the next sequence number for a persistent message that is about to be stored;
    /// [`Queue::push_reserved`] enqueues it once the store has the write queued.
    pub(crate) fn reserve_seq(&self) -> u64 {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.reserving += 1;
        seq
    }

    /// Enqueues a message at its reserved seq (in order: another publisher may have pushed
    /// a later seq meanwhile). `ticket` is the ticket of its store publish.
    ///
    /// A purge that ran between the reservation and this push removed the disk tail with
    /// an open-ended [`Store::remove_from`], which also removed this message's stored copy
    /// when its publish reached the store before the removal (an earlier ticket): it is
    /// then purged with the tail rather than kept in memory without its stored copy.
    pub(crate) fn push_reserved(
        &self,
        message: Arc<Message>,
        stored: StoredRef,
        ticket: Option<u64>,
    ) -> Admit {
        let mut st = self.state.lock();
        st.reserving = st.reserving.saturating_sub(1);
        let purged = ticket.is_some_and(|t| {
            st.purged_tails
                .iter()
                .any(|&(from, removal)| stored.seq >= from && t < removal)
        });
        if st.reserving == 0 {
            st.purged_tails.clear();
        }
        if st.deleted || purged {
            return Admit::Enqueued;
        }
        if refuses(&st, &message) {
            return self.refuse(st, message, Some(stored));
        }
        if st.args.dedup.is_some() && dedup::duplicate(&mut st, &message) {
            if let Some(qs) = &self.store {
                drop(qs.store.remove(stored));
            }
            return Admit::Enqueued;
        }
        let mut dead = Vec::new();
        let now = self.expire_overdue(&mut st, &mut dead);
        let due = self.enqueued(&mut st, stored.seq, &message);
        let item = Ready::new(stored.seq, message, false, Some(stored));
        st.counters.published += 1;
        st.counters.ready_bytes += item.size();
        if let Some(item) = st.hold_behind_tail(item) {
            st.ready.push_back(item);
            drain(&mut st, self.store.as_ref());
            self.expire_arrival(&mut st, due, now, &mut dead);
        }
        self.after_enqueue(st, dead)
    }

    /// Appends messages read back from the store at startup (already in seq order).
    /// Their TTL counts from now: the store does not keep arrival times.
    pub(crate) fn push_recovered(&self, items: impl IntoIterator<Item = Ready>) {
        let mut st = self.state.lock();
        for item in items {
            st.counters.ready_bytes += item.size();
            self.enqueued(&mut st, item.seq, &item.message);
            st.ready.push_back(item);
        }
    }

    /// Puts unacked messages back at their original positions, marked redelivered and
    /// carrying `x-delivery-count`, and pushes to consumers. `items` are (sequence number,
    /// message, stored copy). A message past `x-delivery-limit` is dead-lettered (reason
    /// delivery_limit) instead; with `x-retry-delay`, one returned by a nack or a timeout
    /// waits aside until its delay (doubling per return, up to `x-retry-delay-max`) passed.
    pub(crate) fn requeue<'a>(
        &self,
        items: impl ExactSizeIterator<Item = (u64, &'a Arc<Message>, Option<StoredRef>)>,
        cause: Return,
    ) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(items.len());
        if st.deleted {
            return;
        }
        let args = Arc::clone(&st.args);
        let mut dead = Vec::new();
        let now = Instant::now();
        let passed_over: Option<Arc<[Weak<Consumer>]>> = match cause {
            Return::Timeout if !st.passed_over.is_empty() => Some(st.passed_over[..].into()),
            _ => None,
        };
        for (seq, message, stored) in items {
            let returns = message.returns().saturating_add(1);
            if cause == Return::Timeout {
                st.counters.timeout_redelivered += 1;
            }
            if args
                .delivery_limit
                .is_some_and(|limit| u64::from(returns) > limit)
            {
                st.ready.settled(seq);
                st.counters.delivery_limit_dropped += 1;
                dead.push(Dead {
                    message: Arc::clone(message),
                    stored,
                    reason: Reason::DeliveryLimit,
                });
                continue;
            }
            if message
                .expires_at(args.message_ttl)
                .is_some_and(|at| at <= now)
            {
                st.ready.settled(seq);
                st.counters.expired += 1;
                dead.push(Dead {
                    message: Arc::clone(message),
                    stored,
                    reason: Reason::Expired,
                });
                continue;
            }
            let message = message
                .returned(returns, &self.memory)
                .map_or_else(|| Arc::clone(message), Arc::new);
            let size = message.size();
            st.counters.ready_bytes += size;
            self.enqueued(&mut st, seq, &message);
            let item = Ready::new(seq, message, true, stored);
            match (cause, args.retry_delay) {
                (Return::Nack | Return::Timeout, Some(delay)) => {
                    let at = now + retry_delay(delay, args.retry_delay_max, returns);
                    st.ready.settled(seq);
                    st.delayed.insert(seq, item);
                    if let Some(consumers) = &passed_over {
                        st.retry_passed_over.insert(seq, Arc::clone(consumers));
                    }
                    st.retry.push(at, seq);
                    self.arm(&mut st, at);
                }
                _ => insert_ready(&mut st, item),
            }
        }
        self.expire_overdue(&mut st, &mut dead);
        drain(&mut st, self.store.as_ref());
        if cause == Return::Timeout {
            st.passed_over.clear();
        }
        self.trim(&mut st, &mut dead);
        self.refresh_room(&st);
        drop(st);
        self.dead_letter(dead);
    }

    /// Forgets unacked deliveries (acked, or rejected without requeue), removes their stored
    /// copies (dead-lettering rejected ones first, reason rejected), and pushes to
    /// consumers, whose credit may have grown.
    pub(crate) fn settle(&self, entries: &[UnackedEntry], rejected: bool) {
        let count = entries.len();
        let dlx = rejected && self.state.lock().args.dead_letter_exchange.is_some();
        if dlx {
            self.dead_letter(
                entries
                    .iter()
                    .map(|e| Dead {
                        message: Arc::clone(&e.message),
                        stored: e.stored,
                        reason: Reason::Rejected,
                    })
                    .collect(),
            );
        } else {
            let mut stored = entries.iter().filter_map(|e| e.stored).peekable();
            if let (Some(qs), Some(_)) = (&self.store, stored.peek()) {
                // Nobody waits: an ack lost in a crash is redelivered (at-least-once).
                drop(qs.store.remove_many(stored));
            }
        }
        let mut st = self.state.lock();
        for e in entries {
            st.ready.settled(e.seq);
        }
        st.unacked = st.unacked.saturating_sub(count);
        st.counters.acked += count as u64;
        let mut overdue = Vec::new();
        self.expire_overdue(&mut st, &mut overdue);
        drain(&mut st, self.store.as_ref());
        self.refresh_room(&st);
        drop(st);
        self.dead_letter(overdue);
    }

    /// A delivery to `consumer` timed out and is about to be requeued: it should go to
    /// another consumer first. Until it is requeued, every other consumer is tried before
    /// `consumer`, whatever the priorities (a consumer that does not ack would otherwise get
    /// it back for as long as it is the highest with credit), and its level tries it last
    /// from then on. On a single-active-consumer queue the next waiting consumer becomes
    /// active (the timed-out one goes to the back of the line of its priority, and the new
    /// one starts once the old one's deliveries are back); on a grouped queue the
    /// consumer's groups move away (`groups.rs`).
    pub(crate) fn rotate_past(&self, consumer: &Arc<Consumer>) {
        let mut st = self.state.lock();
        let Some(at) = st.consumers.iter().position(|c| Arc::ptr_eq(c, consumer)) else {
            return;
        };
        if let Some(groups) = st.ready.groups_mut() {
            groups.timed_out(consumer);
        }
        if st.args.single_active_consumer {
            if at == 0 && st.consumers.len() > 1 {
                let active = st.consumers.remove(0);
                let line = waiting_position(&st.consumers, active.priority);
                st.consumers.insert(line, active);
                st.fading = true;
            }
        } else {
            st.levels.try_last(at);
            pass_over(&mut st.passed_over, consumer);
        }
    }

    /// Pushes to consumers after credit or flow changed elsewhere.
    pub(crate) fn kick(&self) {
        let mut st = self.state.lock();
        let mut dead = Vec::new();
        self.expire_overdue(&mut st, &mut dead);
        drain(&mut st, self.store.as_ref());
        self.refresh_room(&st);
        drop(st);
        self.dead_letter(dead);
    }

    /// Registers a consumer. `on_registered` runs under the queue lock after validation,
    /// before the first delivery can happen. It goes after the consumers of its priority and
    /// above, before those of a lower one. On a single-active-consumer queue it waits
    /// (counted as a consumer, as RabbitMQ) until the active consumer and those ahead of it
    /// in line are gone: as in RabbitMQ 3.10, a consumer of a higher priority does not take
    /// over from the active one, it only goes ahead of the waiting consumers of a lower
    /// priority. A grouped queue gives it its share of the idle groups.
    ///
    /// # Errors
    /// `NotFound` for a deleted queue; `AccessRefused` "... in exclusive use" for an
    /// exclusive consume on a queue with consumers or with single active consumer (as
    /// RabbitMQ), or any consume on a queue with an exclusive consumer.
    pub(crate) fn add_consumer(
        &self,
        consumer: &Arc<Consumer>,
        on_registered: impl FnOnce(),
    ) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(BrokerError::not_found(self.resource()));
        }
        let exclusive_refused =
            consumer.exclusive && (!st.consumers.is_empty() || st.args.single_active_consumer);
        if st.exclusive_consumer || exclusive_refused {
            return Err(BrokerError::access_refused(format_args!(
                "{} in exclusive use",
                self.resource()
            )));
        }
        on_registered();
        let at = if st.args.single_active_consumer {
            waiting_position(&st.consumers, consumer.priority)
        } else {
            st.levels.insert(consumer.priority)
        };
        st.consumers.insert(at, Arc::clone(consumer));
        st.had_consumer = true;
        st.exclusive_consumer |= consumer.exclusive;
        if let Some(groups) = st.ready.groups_mut() {
            groups.add_consumer(consumer);
        }
        drain(&mut st, self.store.as_ref());
        Ok(())
    }

    /// Removes a consumer; true when the queue should now be auto-deleted. The next
    /// consumer takes over: on a single-active-consumer queue once the removed one's
    /// deliveries are settled or requeued; on a grouped queue its groups move (those with
    /// deliveries in flight once these are settled or requeued).
    pub(crate) fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut st = self.state.lock();
        if let Some(at) = st.consumers.iter().position(|c| Arc::ptr_eq(c, consumer)) {
            st.consumers.remove(at);
            if !st.args.single_active_consumer {
                st.levels.remove(at);
            }
            if consumer.exclusive {
                st.exclusive_consumer = false;
            }
            let unsettled = !consumer.no_ack && consumer.unacked.load(Ordering::Acquire) > 0;
            if st.args.single_active_consumer && at == 0 && unsettled {
                st.fading = true;
            }
            if let Some(groups) = st.ready.groups_mut() {
                groups.remove_consumer(consumer);
            }
            drain(&mut st, self.store.as_ref());
        }
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// `basic.get`: takes the first ready message and records it on `channel`. When the
    /// in-memory head is empty but the queue has a disk tail, the next messages are paged in
    /// here, synchronously (see [`Queue::page_in_for_get`]), so get never answers empty for a
    /// queue whose count is not zero.
    pub(crate) fn get(
        self: &Arc<Self>,
        vhost: &VHost,
        channel: &ChannelShared,
        no_ack: bool,
    ) -> Option<GetOk> {
        let mut dead = Vec::new();
        let got = self.get_unless_expired(vhost, channel, no_ack, &mut dead);
        self.dead_letter(dead);
        got
    }

    /// [`Queue::get`]; a message found expired at the head (its timer has not fired yet) is
    /// discarded into `dead` rather than returned.
    fn get_unless_expired(
        self: &Arc<Self>,
        vhost: &VHost,
        channel: &ChannelShared,
        no_ack: bool,
        dead: &mut Vec<Dead>,
    ) -> Option<GetOk> {
        let mut st = self.state.lock();
        // Every basic.get is a use (x-expires), an empty one too, as RabbitMQ: a queue being
        // polled is not deleted under its poller.
        self.touch_locked(&mut st);
        let now = Instant::now();
        let item = loop {
            if let Some(item) = st.ready.pop_front() {
                if item
                    .message
                    .expires_at(st.args.message_ttl)
                    .is_some_and(|at| at <= now)
                {
                    st.counters.expired += 1;
                    self.discard(&mut st, item, Reason::Expired, dead);
                    continue;
                }
                break item;
            }
            if st.deleted || !st.tails.on_disk() {
                return None;
            }
            drop(st);
            if !self.page_in_for_get(vhost) {
                let mut st = self.state.lock();
                st.request_page_in();
                return None;
            }
            st = self.state.lock();
        };
        st.request_page_in();
        st.max_delivered = st.max_delivered.max(Some(item.seq));
        st.counters.ready_bytes = st.counters.ready_bytes.saturating_sub(item.size());
        st.body_bytes = st
            .body_bytes
            .saturating_sub(item.message.body().len() as u64);
        st.counters.delivered += 1;
        st.counters.redelivered += u64::from(item.redelivered);
        mark_delivered(&mut st.marked, item.stored(), no_ack, self.store.as_ref());
        let message_count = saturate(st.total_ready());
        let got = channel.record_get(self, item, no_ack, message_count);
        if !no_ack {
            st.unacked += 1;
        }
        self.refresh_room(&st);
        Some(got)
    }

    /// Its statistics now: counts, bytes, oldest ready age and the monotonic counters.
    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.state.lock();
        QueueSnapshot {
            ready: st.total_ready() as u64,
            unacked: st.unacked as u64,
            consumers: st.consumers.len() as u64,
            ready_bytes: st.counters.ready_bytes,
            spilled: st.tails.count() as u64,
            spilled_bytes: st.tails.bytes(),
            oldest_ready_age: st.ready.front().map(|r| r.message.received_at().elapsed()),
            published: st.counters.published,
            delivered: st.counters.delivered,
            redelivered: st.counters.redelivered,
            acked: st.counters.acked,
            expired: st.counters.expired,
            dead_lettered: st.counters.dead_lettered,
            dropped_overflow: st.counters.dropped_overflow,
            rejected_overflow: st.counters.rejected_overflow,
            timeout_redelivered: st.counters.timeout_redelivered,
            delivery_limit_dropped: st.counters.delivery_limit_dropped,
            dedup_dropped: st.counters.dedup_dropped,
        }
    }

    /// Its consumers now (management only: the handles are cloned under the lock).
    pub(crate) fn consumer_handles(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }

    /// Drops every ready message; returns how many. Unacked messages are untouched.
    ///
    /// The disk tail goes with [`Store::remove_from`] (its message ids are not in memory),
    /// which removes every stored seq from the tail on. It is submitted under the queue lock,
    /// so it removes exactly the seqs below `next_seq` at this moment: a publish reserving a
    /// seq afterwards reaches the store after the removal and keeps its copy. Publishes
    /// whose seq was reserved before are settled by [`Queue::push_reserved`].
    pub(crate) fn purge(&self) -> u32 {
        let (dropped, pending, on_disk, delayed, by_range) = {
            let mut st = self.state.lock();
            st.counters.ready_bytes = 0;
            st.body_bytes = 0;
            let delayed = std::mem::take(&mut st.delayed);
            st.retry_passed_over.clear();
            st.epoch += 1;
            let durable = self.store.as_ref().map(|qs| qs.id);
            let (disks, pending) = st.tails.take(durable);
            // Stored copies from here on go with the removal by range.
            let by_range = disks
                .iter()
                .filter(|d| Some(d.id) == durable)
                .map(|d| d.from_seq)
                .min();
            let mut on_disk = 0;
            for disk in disks {
                on_disk += disk.count;
                let (from, by_index) = (disk.from_seq, Some(disk.id) == durable);
                let ticket = disk.purge(durable, by_range);
                if let (Some(ticket), true, true) = (ticket, by_index, st.reserving > 0) {
                    st.purged_tails.push((from, ticket));
                }
                st.tail_removal = st.tail_removal.max(ticket);
            }
            self.refresh_room(&st);
            (st.ready.take(), pending, on_disk, delayed, by_range)
        };
        let mut stored = dropped
            .iter()
            .chain(delayed.values())
            .filter_map(Ready::stored)
            .filter(|r| by_range.is_none_or(|from| r.seq < from))
            .peekable();
        if let (Some(qs), Some(_)) = (&self.store, stored.peek()) {
            drop(qs.store.remove_many(stored));
        }
        saturate(dropped.len() + pending.len() + on_disk + delayed.len())
    }

    /// Checks `if-unused` / `if-empty`, then marks the queue deleted. Returns the ready
    /// count and the consumers to cancel.
    pub(crate) fn delete(
        &self,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(u32, Vec<Arc<Consumer>>), BrokerError> {
        let (count, consumers, dropped) = {
            let mut st = self.state.lock();
            if if_unused && !st.consumers.is_empty() {
                return Err(BrokerError::precondition_failed(format_args!(
                    "{} in use",
                    self.resource()
                )));
            }
            if if_empty && st.total_ready() != 0 {
                return Err(BrokerError::precondition_failed(format_args!(
                    "{} not empty",
                    self.resource()
                )));
            }
            st.deleted = true;
            self.deleted.store(true, Ordering::Release);
            st.exclusive_consumer = false;
            st.counters.ready_bytes = 0;
            st.body_bytes = 0;
            st.epoch += 1;
            let count = saturate(st.total_ready());
            let dropped = st.ready.take();
            st.delayed.clear();
            st.retry_passed_over.clear();
            self.refresh_room(&st);
            let durable = self.store.as_ref().map(|qs| qs.id);
            // Spilled messages (a durable queue's own go with it below).
            for disk in st.tails.take(durable).0 {
                disk.discard(durable);
            }
            (count, std::mem::take(&mut st.consumers), dropped)
        };
        if let Some(qs) = &self.store {
            // Its unacked messages go too; later acks of them are ignored by the store.
            drop(qs.store.delete_queue(qs.id));
        }
        drop(dropped);
        Ok((count, consumers))
    }
}

/// Hands what [`take_ready`] took to the consumer's channel, together, and accounts for
/// what it delivered. What its connection refused (it is gone) keeps its place, and the
/// credit comes back.
fn hand_over(st: &mut QueueState, qs: Option<&QueueStore>) {
    if st.outgoing.is_empty() {
        return;
    }
    let mut items = std::mem::take(&mut st.outgoing);
    let QueueState {
        args,
        consumers,
        ready,
        unacked,
        marked,
        counters,
        max_delivered,
        body_bytes,
        ..
    } = st;
    // `take_ready` fills `outgoing` only for a sole active consumer, the first.
    debug_assert!(args.single_active_consumer || consumers.len() == 1);
    let consumer = &consumers[0];
    let mut tally = Tally {
        unacked,
        marked,
        counters,
        max_delivered,
        body_bytes,
        qs,
    };
    consumer
        .channel
        .deliver_all(consumer, &mut items, |item| tally.delivered(consumer, item));
    if !items.is_empty() {
        consumer.release(saturate(items.len()));
        for item in items.drain(..) {
            ready.insert(item);
        }
    }
    recycle(items);
}

/// Where a consumer of `priority` joins a single-active-consumer queue's `consumers`: the
/// active one (the first) keeps its place, the waiting ones are in line by priority, then
/// arrival (RabbitMQ 3.10 makes the first of the highest priority active next).
fn waiting_position(consumers: &[Arc<Consumer>], priority: i64) -> usize {
    let active = consumers.len().min(1);
    active + consumers[active..].partition_point(|c| c.priority >= priority)
}

/// Adds `consumer` to the consumers passed over (`QueueState::passed_over`), once.
fn pass_over(passed_over: &mut Vec<Weak<Consumer>>, consumer: &Arc<Consumer>) {
    if !passed_over
        .iter()
        .any(|p| ptr::eq(p.as_ptr(), Arc::as_ptr(consumer)))
    {
        passed_over.push(Arc::downgrade(consumer));
    }
}

/// Keeps an emptied `QueueState::outgoing` for the next drain on this thread.
fn recycle(items: Vec<Ready>) {
    if items.capacity() <= SPARE_MAX {
        SPARE.set(items);
    }
}

/// Reports a delivery of a stored message: raises the queue's delivered watermark (so the
/// message comes back redelivered after a crash), or removes the copy for a no-ack delivery.
fn mark_delivered(
    marked: &mut Option<u64>,
    stored: Option<StoredRef>,
    no_ack: bool,
    qs: Option<&QueueStore>,
) {
    let (Some(stored), Some(qs)) = (stored, qs) else {
        return;
    };
    if no_ack {
        drop(qs.store.remove(stored));
    } else if marked.is_none_or(|m| stored.seq > m) {
        *marked = Some(stored.seq);
        qs.store.mark_delivered(qs.id, stored.seq);
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Hands ready messages to consumers with credit until one side runs out (see
/// [`take_ready`]).
fn drain(st: &mut QueueState, qs: Option<&QueueStore>) {
    loop {
        take_ready(st, qs);
        let full = st.outgoing.len() == HAND_OVER_MAX;
        hand_over(st, qs);
        if !full {
            break;
        }
    }
}

/// Hands ready messages to consumers with credit until one side runs out: to the highest
/// priority level with credit, round-robin within it ([`Levels`]); with single active
/// consumer to the first registered only, once no former
/// active consumer has deliveries left to settle; on a grouped queue each consumer takes
/// the messages of its own groups and those without a group (`groups.rs`). What goes to a
/// sole active consumer is only taken, into `outgoing`, for [`hand_over`], unless it is one
/// message: that one is delivered here, with no list.
fn take_ready(st: &mut QueueState, qs: Option<&QueueStore>) {
    let QueueState {
        args,
        ready,
        consumers,
        fading,
        levels,
        passed_over,
        unacked,
        marked,
        counters,
        max_delivered,
        body_bytes,
        outgoing,
        ..
    } = st;
    // Single active consumer: the first registered, once its predecessor's deliveries are
    // settled or back in the queue.
    *fading &= *unacked > 0;
    let active = match (args.single_active_consumer, *fading) {
        (false, _) => consumers.len(),
        (true, false) => consumers.len().min(1),
        (true, true) => 0,
    };
    let idle = *unacked == 0;
    let mut tally = Tally {
        unacked,
        marked,
        counters,
        max_delivered,
        body_bytes,
        qs,
    };
    if let Some(groups) = ready.groups_mut() {
        groups.drain(idle, passed_over, |consumer, item| {
            tally.deliver(consumer, item)
        });
    } else if active == 1 {
        let consumer = &consumers[0];
        // The first taken waits here until a second one is: a drain of one (prefetch 1, a
        // quiet queue) costs what it did before hand-over, no list and no `SPARE`.
        let mut first = None;
        while !ready.is_empty() && outgoing.len() < HAND_OVER_MAX && consumer.try_acquire() {
            let Some(item) = ready.pop_front() else {
                consumer.release(1);
                break;
            };
            *tally.max_delivered = (*tally.max_delivered).max(Some(item.seq));
            if outgoing.is_empty() && first.is_none() {
                first = Some(item);
                continue;
            }
            if outgoing.capacity() == 0 {
                *outgoing = SPARE.take();
            }
            outgoing.extend(first.take());
            outgoing.push(item);
        }
        if let Some(item) = first {
            if let Err(item) = tally.deliver(consumer, item) {
                consumer.release(1);
                ready.insert(item);
            }
        }
    } else if active > 1 {
        // Not single active consumer: the levels cover every consumer.
        let passed = |c: &Arc<Consumer>| {
            passed_over
                .iter()
                .any(|p| ptr::eq(Arc::as_ptr(c), p.as_ptr()))
        };
        while !ready.is_empty() {
            let others_first = (!passed_over.is_empty())
                .then(|| levels.pick(|i| !passed(&consumers[i]) && consumers[i].try_acquire()))
                .flatten();
            let Some(index) = others_first.or_else(|| levels.pick(|i| consumers[i].try_acquire()))
            else {
                break;
            };
            let consumer = &consumers[index];
            let Some(item) = ready.pop_front() else {
                consumer.release(1);
                break;
            };
            if let Err(item) = tally.deliver(consumer, item) {
                consumer.release(1);
                ready.insert(item);
            }
        }
    }
    ready.shrink();
    st.request_page_in();
}

/// The queue's books that a delivery updates, borrowed from its state for one drain.
struct Tally<'a> {
    unacked: &'a mut usize,
    marked: &'a mut Option<u64>,
    counters: &'a mut QueueCounters,
    max_delivered: &'a mut Option<u64>,
    body_bytes: &'a mut u64,
    qs: Option<&'a QueueStore>,
}

impl Tally<'_> {
    /// Hands `item` to `consumer` and accounts for it. On a closed connection the item
    /// comes back: the channel is now marked closed, so this consumer gets no further
    /// credit, and the message keeps its place.
    #[inline(always)]
    fn deliver(&mut self, consumer: &Arc<Consumer>, item: Ready) -> Result<(), Ready> {
        let stored = item.stored();
        *self.max_delivered = (*self.max_delivered).max(Some(item.seq));
        let (size, redelivered) = (item.size(), item.redelivered);
        let body = item.message.body().len() as u64;
        consumer.channel.deliver(consumer, item)?;
        self.count(size, body, redelivered, consumer.no_ack);
        mark_delivered(self.marked, stored, consumer.no_ack, self.qs);
        Ok(())
    }

    /// Accounts for `item`, handed to `consumer` by [`hand_over`].
    fn delivered(&mut self, consumer: &Consumer, item: &Ready) {
        let body = item.message.body().len() as u64;
        self.count(item.size(), body, item.redelivered, consumer.no_ack);
        mark_delivered(self.marked, item.stored(), consumer.no_ack, self.qs);
    }

    fn count(&mut self, size: u64, body: u64, redelivered: bool, no_ack: bool) {
        let counters = &mut *self.counters;
        counters.ready_bytes = counters.ready_bytes.saturating_sub(size);
        *self.body_bytes = self.body_bytes.saturating_sub(body);
        counters.delivered += 1;
        counters.redelivered += u64::from(redelivered);
        if !no_ack {
            *self.unacked += 1;
        }
    }
}

/// Inserts a returned message at its seq position in the ready list.
fn insert_ready(st: &mut QueueState, item: Ready) {
    st.ready.insert(item);
}

/// The delay before the `returns`-th return is deliverable again: `base`, doubling with
/// each further return, up to `max` (RabbitMQ's longest expiry when unset).
fn retry_delay(base: u64, max: Option<u64>, returns: u32) -> std::time::Duration {
    let doublings = returns.saturating_sub(1).min(40);
    let delay = base.saturating_mul(1u64 << doublings);
    std::time::Duration::from_millis(delay.min(max.unwrap_or(315_360_000_000)))
}

/// RabbitMQ's `is_over_limit` for reject-publish: the queue is at (or past) its limit.
fn at_limit(st: &QueueState) -> bool {
    st.args
        .max_length
        .is_some_and(|max| st.total_ready() as u64 >= max)
        || st
            .args
            .max_length_bytes
            .is_some_and(|max| st.body_bytes >= max)
}

/// Past the limit (drop-head drops until this is false).
fn over_limit(st: &QueueState) -> bool {
    st.args
        .max_length
        .is_some_and(|max| st.total_ready() as u64 > max)
        || st
            .args
            .max_length_bytes
            .is_some_and(|max| st.body_bytes > max)
}

/// A publish of `message` is refused: overflow reject-publish(-dlx) and the queue would go
/// past a limit with it (RabbitMQ's `will_overflow`: one more message than `max_length`, or
/// ready body bytes plus its body above `max_length_bytes`).
fn refuses(st: &QueueState, message: &Message) -> bool {
    matches!(
        st.args.overflow,
        Some(Overflow::RejectPublish | Overflow::RejectPublishDlx)
    ) && (st
        .args
        .max_length
        .is_some_and(|max| st.total_ready() as u64 >= max)
        || st
            .args
            .max_length_bytes
            .is_some_and(|max| st.body_bytes + message.body().len() as u64 > max))
}
