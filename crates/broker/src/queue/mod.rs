//! Queues: ready messages, consumers and the push of messages to consumers with credit.
//!
//! A queue's state sits behind one short `parking_lot` mutex, never held across an `.await`.
//! Every message gets a per-queue sequence number when it is enqueued; the ready list stays
//! sorted by it, so a requeued message goes back to its original position. Delivery is a
//! push under that lock: when a message arrives or credit frees up, the queue hands ready
//! messages round-robin to consumers that have credit ([`Consumer::try_acquire`]), through
//! their channel's sink. Unacked deliveries live on the channel; the queue only counts them.

pub mod arguments;
pub(crate) mod spill;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use lockgate_store::{QueueId, Store, StoredRef};
use lockgate_wire::FieldTable;
use parking_lot::Mutex;

use crate::channel::ChannelShared;
use crate::consumer::Consumer;
use crate::error::{BrokerError, Resource};
use crate::ids::{ConnectionId, DeliveryTag};
use crate::message::Message;
use crate::stats::{QueueCounters, QueueSnapshot};
use crate::vhost::VHost;
use arguments::QueueArguments;

/// A message waiting in a queue.
pub(crate) struct Ready {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// The stored copy of a persistent message in a durable queue.
    pub stored: Option<StoredRef>,
    /// `message.size()`, kept here so that counting bytes on delivery does not touch the
    /// message itself (a cache miss per message in a long queue).
    pub size: u64,
}

/// Where a durable queue keeps its persistent messages.
#[derive(Clone, Debug)]
pub(crate) struct QueueStore {
    pub store: Store,
    pub id: QueueId,
}

#[derive(Default)]
struct QueueState {
    /// Sorted by `seq`.
    ready: VecDeque<Ready>,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Index of the consumer to try first for the next message (round-robin).
    cursor: usize,
    /// Deliveries from this queue that are not yet acked, on any channel.
    unacked: usize,
    had_consumer: bool,
    exclusive_consumer: bool,
    deleted: bool,
    /// Highest seq whose delivery was reported to the store (redelivered watermark).
    marked: Option<u64>,
    counters: QueueCounters,
    /// Messages on disk (spilled or recovered), after every message in `ready`.
    disk: Option<spill::DiskTail>,
    /// Messages that arrived while `disk` is set: in memory, after the disk tail, waiting to
    /// be spilled or to move to `ready` once the disk tail is paged in.
    pending: VecDeque<Ready>,
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
    /// The spill id of a non-durable queue, taken at its first spill.
    spill_id: Option<QueueId>,
    /// Wakes the broker's spill task when the head runs low.
    wake: Option<Arc<tokio::sync::Notify>>,
    /// A page-in was requested and not served yet.
    want_page: bool,
}

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
    arguments: QueueArguments,
    raw_arguments: FieldTable,
    /// Set for durable (non-exclusive) queues when the broker has a store.
    store: Option<QueueStore>,
    state: Mutex<QueueState>,
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
            arguments,
            raw_arguments,
            store: None,
            state: Mutex::new(QueueState::default()),
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

    /// The parsed `x-` arguments.
    pub fn arguments(&self) -> &QueueArguments {
        &self.arguments
    }

    /// The declaration arguments as stored (with `x-queue-type` filled in, as RabbitMQ).
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
        self.state.lock().deleted
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

    /// Enqueues a routed message and pushes what it can to consumers.
    pub(crate) fn push(&self, message: Arc<Message>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.counters.published += 1;
        let size = message.size();
        st.counters.ready_bytes += size;
        let item = Ready {
            seq,
            message,
            redelivered: false,
            stored: None,
            size,
        };
        if st.disk.is_some() {
            // Behind a disk tail: wait in memory for the spill task, in order.
            st.pending.push_back(item);
            return;
        }
        st.ready.push_back(item);
        drain(&mut st, self.store.as_ref());
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
    ) {
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
            return;
        }
        let item = Ready {
            seq: stored.seq,
            size: message.size(),
            message,
            redelivered: false,
            stored: Some(stored),
        };
        st.counters.published += 1;
        st.counters.ready_bytes += item.size;
        let behind_disk = st.disk.is_some();
        let list = if behind_disk {
            &mut st.pending
        } else {
            &mut st.ready
        };
        if list.back().is_none_or(|r| r.seq < item.seq) {
            list.push_back(item);
        } else {
            let at = list.partition_point(|r| r.seq < item.seq);
            list.insert(at, item);
        }
        if !behind_disk {
            drain(&mut st, self.store.as_ref());
        }
    }

    /// Appends messages read back from the store at startup (already in seq order).
    pub(crate) fn push_recovered(&self, items: impl IntoIterator<Item = Ready>) {
        let mut st = self.state.lock();
        let QueueState {
            ready, counters, ..
        } = &mut *st;
        ready.extend(
            items
                .into_iter()
                .inspect(|r| counters.ready_bytes += r.size),
        );
    }

    /// Puts unacked messages back at their original positions, marked redelivered, and
    /// pushes to consumers. `items` are (sequence number, message).
    pub(crate) fn requeue<'a>(
        &self,
        items: impl ExactSizeIterator<Item = (u64, &'a Arc<Message>, Option<StoredRef>)>,
    ) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(items.len());
        if st.deleted {
            return;
        }
        for (seq, message, stored) in items {
            let size = message.size();
            st.counters.ready_bytes += size;
            let at = st.ready.partition_point(|r| r.seq < seq);
            st.ready.insert(
                at,
                Ready {
                    seq,
                    message: Arc::clone(message),
                    redelivered: true,
                    stored,
                    size,
                },
            );
        }
        drain(&mut st, self.store.as_ref());
    }

    /// Forgets unacked deliveries (acked, or rejected without requeue), removes their stored
    /// copies, and pushes to consumers, whose credit may have grown.
    pub(crate) fn settle(&self, count: usize, stored: impl Iterator<Item = StoredRef>) {
        let mut stored = stored.peekable();
        if let (Some(qs), Some(_)) = (&self.store, stored.peek()) {
            // Nobody waits: an ack lost in a crash is redelivered (at-least-once).
            drop(qs.store.remove_many(stored));
        }
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(count);
        st.counters.acked += count as u64;
        drain(&mut st, self.store.as_ref());
    }

    /// Pushes to consumers after credit or flow changed elsewhere.
    pub(crate) fn kick(&self) {
        drain(&mut self.state.lock(), self.store.as_ref());
    }

    /// Registers a consumer. `on_registered` runs under the queue lock after validation,
    /// before the first delivery can happen.
    pub(crate) fn add_consumer(
        &self,
        consumer: &Arc<Consumer>,
        on_registered: impl FnOnce(),
    ) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(BrokerError::not_found(self.resource()));
        }
        if st.exclusive_consumer || (consumer.exclusive && !st.consumers.is_empty()) {
            return Err(BrokerError::access_refused(format_args!(
                "{} in exclusive use",
                self.resource()
            )));
        }
        on_registered();
        st.consumers.push(Arc::clone(consumer));
        st.had_consumer = true;
        st.exclusive_consumer |= consumer.exclusive;
        drain(&mut st, self.store.as_ref());
        Ok(())
    }

    /// Removes a consumer; true when the queue should now be auto-deleted.
    pub(crate) fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut st = self.state.lock();
        if let Some(at) = st.consumers.iter().position(|c| Arc::ptr_eq(c, consumer)) {
            st.consumers.remove(at);
            if at < st.cursor {
                st.cursor -= 1;
            }
            if st.cursor >= st.consumers.len() {
                st.cursor = 0;
            }
            if consumer.exclusive {
                st.exclusive_consumer = false;
            }
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
        let mut st = self.state.lock();
        let item = loop {
            if let Some(item) = st.ready.pop_front() {
                break item;
            }
            if st.deleted || st.disk.is_none() {
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
        st.counters.ready_bytes = st.counters.ready_bytes.saturating_sub(item.size);
        st.counters.delivered += 1;
        st.counters.redelivered += u64::from(item.redelivered);
        mark_delivered(&mut st.marked, item.stored, no_ack, self.store.as_ref());
        let message_count = saturate(st.total_ready());
        let (delivery_tag, redelivered, message) = channel.record_get(self, item, no_ack);
        if !no_ack {
            st.unacked += 1;
        }
        Some(GetOk {
            delivery_tag,
            redelivered,
            message_count,
            message,
        })
    }

    /// Its statistics now: counts, bytes, oldest ready age and the monotonic counters.
    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.state.lock();
        QueueSnapshot {
            ready: st.total_ready() as u64,
            unacked: st.unacked as u64,
            consumers: st.consumers.len() as u64,
            ready_bytes: st.counters.ready_bytes,
            spilled: st.disk.as_ref().map_or(0, |d| d.count as u64),
            spilled_bytes: st.disk.as_ref().map_or(0, |d| d.bytes),
            oldest_ready_age: st.ready.front().map(|r| r.message.received_at.elapsed()),
            published: st.counters.published,
            delivered: st.counters.delivered,
            redelivered: st.counters.redelivered,
            acked: st.counters.acked,
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
        let (dropped, pending, on_disk) = {
            let mut st = self.state.lock();
            st.counters.ready_bytes = 0;
            st.epoch += 1;
            let on_disk = match st.disk.take() {
                Some(disk) => {
                    // Persistent and spilled, pending included.
                    let removal = disk.store.remove_from(disk.id, disk.from_seq);
                    if let (Some(ticket), true) = (removal.ticket(), st.reserving > 0) {
                        st.purged_tails.push((disk.from_seq, ticket));
                    }
                    st.tail_removal = removal.ticket();
                    disk.count
                }
                None => 0,
            };
            (
                std::mem::take(&mut st.ready),
                std::mem::take(&mut st.pending),
                on_disk,
            )
        };
        let mut stored = dropped.iter().filter_map(|r| r.stored).peekable();
        if let (Some(qs), Some(_)) = (&self.store, stored.peek()) {
            drop(qs.store.remove_many(stored));
        }
        saturate(dropped.len() + pending.len() + on_disk)
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
            st.exclusive_consumer = false;
            st.counters.ready_bytes = 0;
            st.epoch += 1;
            let count = saturate(st.total_ready());
            let dropped = std::mem::take(&mut st.ready);
            st.pending.clear();
            if let (Some(disk), None) = (st.disk.take(), &self.store) {
                // A non-durable queue's spilled messages (a durable one's go with it below).
                drop(disk.store.remove_from(disk.id, 0));
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

/// Hands ready messages to consumers with credit, round-robin, until one side runs out.
fn drain(st: &mut QueueState, qs: Option<&QueueStore>) {
    let QueueState {
        ready,
        consumers,
        cursor,
        unacked,
        marked,
        counters,
        max_delivered,
        ..
    } = st;
    let n = consumers.len();
    while !ready.is_empty() && n > 0 {
        let Some(index) = (0..n)
            .map(|i| (*cursor + i) % n)
            .find(|&i| consumers[i].try_acquire())
        else {
            break;
        };
        *cursor = (index + 1) % n;
        let Some(item) = ready.pop_front() else {
            break;
        };
        let consumer = &consumers[index];
        let stored = item.stored;
        *max_delivered = (*max_delivered).max(Some(item.seq));
        let (size, redelivered) = (item.size, item.redelivered);
        match consumer.channel.deliver(consumer, item) {
            Ok(()) => {
                counters.ready_bytes = counters.ready_bytes.saturating_sub(size);
                counters.delivered += 1;
                counters.redelivered += u64::from(redelivered);
                mark_delivered(marked, stored, consumer.no_ack, qs);
                if !consumer.no_ack {
                    *unacked += 1;
                }
            }
            Err(item) => {
                // The connection is gone: the channel is now marked closed, so this
                // consumer gets no further credit, and the message keeps its place.
                consumer.release(1);
                ready.push_front(item);
            }
        }
    }
    // Give back what a burst left behind: a drained backlog must not pin its peak memory.
    if ready.capacity() > 1024 && ready.len() < ready.capacity() / 8 {
        ready.shrink_to(ready.len() * 2);
    }
    st.request_page_in();
}
