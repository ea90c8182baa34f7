//! The consumer side of one AMQP channel: delivery tags, unacked deliveries, qos, flow and
//! consumers.
//!
//! [`Channel`] is owned by the server's connection task and called with `&mut self`.
//! Queues deliver to it from other threads through the [`ChannelShared`] part: tag counter
//! and unacked list behind one short mutex (taken inside a queue lock, never the other way
//! round), credit and flags in atomics. Settling (ack, nack, reject, recover, close) takes
//! entries out under the channel mutex, releases it, and only then locks the queues.
//!
//! Consumer timeouts: a delivery from a queue with a consumer timeout pushes its deadline
//! (by tag, so in order for one queue) into the channel's own [`Deadlines`]; the channel
//! holds one wake on the broker's timer. When it fires, every due delivery still unacked
//! is taken back and requeued (or, with the close-channel action, the sink is told to close
//! the channel). A late ack, nack or reject of a tag taken back is ignored.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use lockgate_wire::FieldTable;
use parking_lot::Mutex;
use tracing::{debug, info};

use crate::consumer::Consumer;
use crate::error::BrokerError;
use crate::exchange::Exchange;
use crate::ids::{ChannelId, ConnectionId, ConsumerTag, DeliveryTag};
use crate::message::Message;
use crate::queue::arguments::{consume_priority, refuses_get, QueueType};
use crate::queue::{GetOk, Queue, Ready, Return};
use crate::sink::{Delivery, DeliverySink, SinkClosed, SinkClosedAll};
use crate::stats::ChannelSnapshot;
use crate::timer::{self, Deadlines, Timed};
use crate::unacked::{Source, UnackedEntry, UnackedList};
use crate::vhost::VHost;

mod reply_to;

struct Deliveries {
    next_tag: u64,
    unacked: UnackedList,
    /// Consumer-timeout deadlines by tag (lazy: a tag settled meanwhile is skipped).
    timeouts: Deadlines<u64>,
    /// The wake scheduled on the timer, if any.
    timer_at: Option<Instant>,
    /// Tags taken back by the consumer timeout: a late ack/nack/reject of one is ignored.
    /// Ordered, so that a `multiple` settlement forgets the ones it covers in O(log n).
    /// At most [`TIMED_OUT_KEPT`]: the oldest are forgotten first (a very late settlement
    /// of a forgotten tag is then an unknown delivery tag, as without a timeout).
    timed_out: BTreeSet<u64>,
    /// The close-channel timeout action was reported to the sink.
    timeout_reported: bool,
    /// Tags a transaction holds settled (out of `unacked` until commit or rollback): their
    /// deadlines stay in `timeouts`; one the timer found due meanwhile is kept here as the
    /// instant it fired, for a rollback to put back.
    held: HashMap<u64, Option<Instant>>,
}

/// The `basic.deliver` of `item` to `consumer` as delivery `tag`.
fn delivery(consumer: &Consumer, tag: u64, item: &Ready) -> Delivery {
    Delivery {
        consumer_tag: consumer.tag.clone(),
        delivery_tag: DeliveryTag(tag),
        redelivered: item.redelivered,
        no_ack: consumer.no_ack,
        message: Arc::clone(&item.message),
    }
}

/// How many timed-out tags a channel remembers for late settlements.
const TIMED_OUT_KEPT: usize = 4096;

impl Deliveries {
    /// Deadlines of deliveries settled meanwhile are only skipped when they come due:
    /// drops them once they outnumber the live ones (amortised O(1) per settlement). The
    /// live ones keep their deadlines, rather than being recomputed from the queue's
    /// timeout now: a policy that changed it applies to later deliveries only (see
    /// [`Queue::set_arguments`]), and no deadline moves earlier than the scheduled wake.
    fn compact_timeouts(&mut self) {
        if self.timeouts.len() <= 2 * (self.unacked.len() + self.held.len()) + 1024 {
            return;
        }
        let mut old = std::mem::take(&mut self.timeouts);
        // Every key `pop_due` yields at the earliest deadline is due exactly then.
        while let Some(at) = old.next() {
            for tag in old.pop_due(at) {
                if self.unacked.get(tag).is_some() || self.held.contains_key(&tag) {
                    self.timeouts.push(at, tag);
                }
            }
        }
    }

    /// Remembers `tag` as taken back by the consumer timeout.
    fn remember_timed_out(&mut self, tag: u64) {
        self.timed_out.insert(tag);
        if self.timed_out.len() > TIMED_OUT_KEPT {
            self.timed_out.pop_first();
        }
    }
}

/// How settled deliveries leave the channel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    /// nack/reject without requeue: dead-lettered where the queue says so.
    Reject,
    Requeue(Return),
}

/// The part of a channel that queues deliver into.
pub(crate) struct ChannelShared {
    me: Weak<ChannelShared>,
    connection: ConnectionId,
    id: ChannelId,
    sink: Arc<dyn DeliverySink>,
    deliveries: Mutex<Deliveries>,
    consumers: Mutex<HashMap<ConsumerTag, Arc<Consumer>>>,
    /// `basic.qos` global prefetch; 0 = unlimited.
    global_prefetch: AtomicU32,
    /// Unacked consumer deliveries on this channel (not `basic.get` ones).
    global_unacked: AtomicU32,
    /// `channel.flow` state.
    active: AtomicBool,
    /// Closed by the server, or its sink refused a delivery.
    closed: AtomicBool,
}

impl ChannelShared {
    pub fn can_deliver(&self) -> bool {
        self.active.load(Ordering::Acquire) && !self.closed.load(Ordering::Acquire)
    }

    pub fn acquire_global(&self) -> bool {
        let limit = self.global_prefetch.load(Ordering::Acquire);
        self.global_unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release_global(&self, count: u32) {
        self.global_unacked.fetch_sub(count, Ordering::AcqRel);
    }

    /// Delivers `item` to `consumer` through the sink, assigning the next tag and recording
    /// the delivery as unacked. Called under the consumer's queue lock. On a closed sink the
    /// item comes back and the channel is marked closed.
    pub fn deliver(&self, consumer: &Arc<Consumer>, item: Ready) -> Result<(), Ready> {
        let mut st = self.deliveries.lock();
        if let Err(SinkClosed(_)) = self.sink.deliver(delivery(consumer, st.next_tag, &item)) {
            self.closed.store(true, Ordering::Release);
            return Err(item);
        }
        self.record(&mut st, consumer, item);
        Ok(())
    }

    /// Delivers `items` (in order) to `consumer` like [`ChannelShared::deliver`], handing
    /// them to the sink together ([`DeliverySink::deliver_all`]), and calls `taken` for
    /// each one delivered. Those the sink refused stay in `items`, and the channel is marked
    /// closed. Called under the consumer's queue lock.
    pub fn deliver_all(
        &self,
        consumer: &Arc<Consumer>,
        items: &mut Vec<Ready>,
        mut taken: impl FnMut(&Ready),
    ) {
        let mut st = self.deliveries.lock();
        let first = st.next_tag;
        let sent = if let [item] = &items[..] {
            usize::from(self.sink.deliver(delivery(consumer, first, item)).is_ok())
        } else {
            // (Enumerate over a slice knows its length: one allocation, no checks per push.)
            let deliveries = items
                .iter()
                .enumerate()
                .map(|(i, item)| delivery(consumer, first + i as u64, item))
                .collect();
            match self.sink.deliver_all(deliveries) {
                Ok(()) => items.len(),
                Err(SinkClosedAll(refused)) => {
                    debug_assert!(refused.len() <= items.len());
                    items.len().saturating_sub(refused.len())
                }
            }
        };
        if sent < items.len() {
            self.closed.store(true, Ordering::Release);
        }
        for item in items.drain(..sent) {
            taken(&item);
            self.record(&mut st, consumer, item);
        }
    }

    /// Records the delivery of `item` under the next tag: unacked unless no-ack.
    fn record(&self, st: &mut Deliveries, consumer: &Arc<Consumer>, item: Ready) {
        let tag = st.next_tag;
        st.next_tag += 1;
        if !consumer.no_ack {
            let now = Instant::now();
            st.unacked.push(
                tag,
                UnackedEntry {
                    seq: item.seq,
                    stored: item.stored(),
                    message: item.message,
                    source: Source::Consumer(Arc::clone(consumer)),
                    delivered_at: now,
                },
            );
            self.watch_timeout(st, &consumer.queue, tag, now);
        }
    }

    /// Schedules the consumer timeout of delivery `tag` when its queue has one.
    fn watch_timeout(&self, st: &mut Deliveries, queue: &Queue, tag: u64, now: Instant) {
        let Some((ms, _)) = queue.consumer_timeout() else {
            return;
        };
        self.push_deadline(st, tag, now + Duration::from_millis(ms));
    }

    /// Schedules the consumer timeout of delivery `tag` at `at`.
    fn push_deadline(&self, st: &mut Deliveries, tag: u64, at: Instant) {
        st.timeouts.push(at, tag);
        if st.timer_at.is_none_or(|t| at < t) {
            st.timer_at = Some(at);
            let me: Weak<dyn Timed> = self.me.clone();
            timer::schedule(at, me);
        }
    }

    /// Records a `basic.get` result under the next tag (unacked unless no-ack) and hands its
    /// get-ok to the sink under the same lock, as [`ChannelShared::deliver`] does: tags reach
    /// the connection in order. Called under the queue lock; `message_count` is what the
    /// queue holds after it.
    pub fn record_get(
        &self,
        queue: &Arc<Queue>,
        item: Ready,
        no_ack: bool,
        message_count: u32,
    ) -> GetOk {
        let mut st = self.deliveries.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        let got = GetOk {
            delivery_tag: DeliveryTag(tag),
            redelivered: item.redelivered,
            message_count,
            message: Arc::clone(&item.message),
        };
        self.sink.get_ok(&got);
        if !no_ack {
            let now = Instant::now();
            st.unacked.push(
                tag,
                UnackedEntry {
                    seq: item.seq,
                    stored: item.stored(),
                    message: item.message,
                    source: Source::Get(Arc::clone(queue)),
                    delivered_at: now,
                },
            );
            self.watch_timeout(&mut st, queue, tag, now);
        }
        got
    }

    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Management: when the oldest unacked delivery matching `filter` was made.
    pub fn oldest_unacked(&self, filter: impl Fn(&UnackedEntry) -> bool) -> Option<Instant> {
        self.deliveries.lock().unacked.oldest(filter)
    }

    /// Management: calls `f(queue name, delivered at)` for the `limit` oldest unacked
    /// deliveries.
    pub fn for_each_unacked(&self, limit: usize, mut f: impl FnMut(&str, Instant)) {
        let st = self.deliveries.lock();
        st.unacked
            .for_each(limit, |e| f(e.queue().name(), e.delivered_at));
    }

    /// Management: this channel now.
    pub fn snapshot(&self) -> ChannelSnapshot {
        let (unacked, oldest) = {
            let st = self.deliveries.lock();
            (st.unacked.len() as u64, st.unacked.oldest(|_| true))
        };
        ChannelSnapshot {
            connection: self.connection,
            channel: self.id,
            consumers: u32::try_from(self.consumers.lock().len()).unwrap_or(u32::MAX),
            unacked,
            global_prefetch: self.global_prefetch.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            oldest_unacked_age: oldest.map(|t| t.elapsed()),
        }
    }

    /// The broker cancelled `consumer` (its queue was deleted): forget it and tell the sink.
    pub fn cancelled_by_broker(&self, consumer: &Arc<Consumer>) {
        let removed = {
            let mut consumers = self.consumers.lock();
            match consumers.get(&consumer.tag) {
                Some(c) if Arc::ptr_eq(c, consumer) => consumers.remove(&consumer.tag).is_some(),
                _ => false,
            }
        };
        if removed && !self.closed.load(Ordering::Acquire) {
            self.sink.consumer_cancelled(&consumer.tag);
        }
    }
}

/// One AMQP channel's consumer state, created by the server per `channel.open`.
///
/// Dropping it closes it (see [`Channel::close`]).
pub struct Channel {
    vhost: Arc<VHost>,
    shared: Arc<ChannelShared>,
    /// Prefetch given to consumers created from now on (`basic.qos` global=false).
    consumer_prefetch: u32,
    /// Reused buffers, so settling allocates nothing in the steady state.
    settling: Vec<UnackedEntry>,
    kicked: Vec<Arc<Queue>>,
    /// Deliveries settled inside a transaction, in the order the settlements came: taken out
    /// of the unacked list when the ack, nack or reject arrived (see [`Channel::hold_ack`]),
    /// settled by [`Channel::commit_held`], put back by [`Channel::rollback_held`], requeued
    /// when the channel closes.
    held: Vec<Held>,
    closed: bool,
}

/// A delivery a transaction settles at commit.
struct Held {
    tag: u64,
    entry: UnackedEntry,
    how: Settle,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("connection", &self.shared.connection)
            .field("id", &self.shared.id)
            .field("vhost", &self.vhost.name())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel of `connection` in `vhost`, delivering to `sink`.
    pub fn new(
        vhost: Arc<VHost>,
        connection: ConnectionId,
        id: ChannelId,
        sink: Arc<dyn DeliverySink>,
    ) -> Self {
        let shared = Arc::new_cyclic(|me| ChannelShared {
            me: me.clone(),
            connection,
            id,
            sink,
            deliveries: Mutex::new(Deliveries {
                next_tag: 1,
                unacked: UnackedList::default(),
                timeouts: Deadlines::new(),
                timer_at: None,
                timed_out: BTreeSet::new(),
                timeout_reported: false,
                held: HashMap::new(),
            }),
            consumers: Mutex::new(HashMap::new()),
            global_prefetch: AtomicU32::new(0),
            global_unacked: AtomicU32::new(0),
            active: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        });
        vhost.register_channel(&shared);
        Self {
            vhost,
            shared,
            consumer_prefetch: 0,
            settling: Vec::new(),
            kicked: Vec::new(),
            held: Vec::new(),
            closed: false,
        }
    }

    /// The vhost it was opened in.
    pub fn vhost(&self) -> &Arc<VHost> {
        &self.vhost
    }

    /// Its connection.
    pub fn connection(&self) -> ConnectionId {
        self.shared.connection
    }

    /// Its channel number.
    pub fn id(&self) -> ChannelId {
        self.shared.id
    }

    /// Deliveries awaiting ack.
    pub fn unacked_count(&self) -> usize {
        self.shared.deliveries.lock().unacked.len()
    }

    /// Active consumers.
    pub fn consumer_count(&self) -> usize {
        self.shared.consumers.lock().len()
    }

    /// `basic.consume`. An empty `consumer_tag` gets a generated "amq.ctag-..." one.
    /// `on_registered` runs once the consume is accepted, under the queue lock, before the
    /// consumer can receive anything: the server queues `consume-ok` there, so it always
    /// precedes the first `basic.deliver`. `arguments` may give the consumer a priority
    /// (`x-priority`, an integer, default 0): it gets messages before consumers of a lower
    /// priority on the queue while it has credit.
    ///
    /// # Errors
    /// `NotAllowed` (530, connection) for a tag already used on this channel; `NotFound` for
    /// a missing queue; `ResourceLocked` for another connection's exclusive queue;
    /// `PreconditionFailed` for an invalid `x-priority`; `NotImplemented` (540, connection)
    /// for a quorum queue on a channel with a global prefetch limit, as RabbitMQ 3.10;
    /// `AccessRefused` "queue 'q' in vhost '/' in exclusive use" when an exclusive consume
    /// meets other consumers or any consume meets an exclusive consumer.
    pub fn consume(
        &mut self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
        exclusive: bool,
        arguments: &FieldTable,
        on_registered: impl FnOnce(&ConsumerTag),
    ) -> Result<ConsumerTag, BrokerError> {
        let tag = if consumer_tag.is_empty() {
            ConsumerTag::generate()
        } else {
            ConsumerTag::from(consumer_tag)
        };
        if self.shared.consumers.lock().contains_key(&tag) {
            return Err(BrokerError::not_allowed(format_args!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let queue = self.vhost.queue_for(self.shared.connection, queue)?;
        let priority = consume_priority(arguments, &queue.resource())?;
        if QueueType::of(queue.raw_arguments()) == QueueType::Quorum
            && self.shared.global_prefetch.load(Ordering::Acquire) > 0
        {
            // RabbitMQ 3.10's quorum queues refuse a consumer under a channel-wide prefetch
            // limit, for the whole connection.
            return Err(BrokerError::not_implemented(format_args!(
                "{} does not support global qos",
                queue.resource()
            )));
        }
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            queue: Arc::clone(&queue),
            channel: Arc::clone(&self.shared),
            no_ack,
            exclusive,
            prefetch: self.consumer_prefetch,
            unacked: AtomicU32::new(0),
            priority,
            arguments: arguments.clone(),
        });
        // Registered on the channel first, so that a concurrent queue deletion that cancels
        // the consumer finds it here.
        self.shared
            .consumers
            .lock()
            .insert(tag.clone(), Arc::clone(&consumer));
        // Messages past their TTL go before the new consumer can be handed one.
        queue.kick();
        if let Err(e) = queue.add_consumer(&consumer, || on_registered(&tag)) {
            self.shared.consumers.lock().remove(&tag);
            return Err(e);
        }
        // The new consumer may have made room for blocked publishers.
        queue.kick();
        Ok(tag)
    }

    /// `basic.cancel`. Returns false when no such consumer exists (RabbitMQ replies
    /// cancel-ok anyway). Its unacked deliveries stay on the channel. Deletes the queue when
    /// it is auto-delete and this was its last consumer.
    pub fn cancel(&mut self, consumer_tag: &str) -> bool {
        let Some(consumer) = self.shared.consumers.lock().remove(consumer_tag) else {
            return false;
        };
        if consumer.queue.remove_consumer(&consumer) {
            self.vhost.auto_delete_queue(&consumer.queue);
        }
        consumer.queue.touch();
        true
    }

    /// `basic.ack`: `multiple` acks every delivery up to `tag`; tag 0 with `multiple` acks
    /// all outstanding deliveries. Returns how many deliveries it acknowledged (for metrics).
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag N".
    pub fn ack(&mut self, tag: DeliveryTag, multiple: bool) -> Result<usize, BrokerError> {
        self.take(tag, multiple)?;
        let acked = self.settling.len();
        self.settle(Settle::Ack);
        Ok(acked)
    }

    /// `basic.nack`: like [`Channel::ack`], then requeues (redelivered=true, original
    /// position) or drops the messages.
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag N".
    pub fn nack(
        &mut self,
        tag: DeliveryTag,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), BrokerError> {
        self.take(tag, multiple)?;
        self.settle(if requeue {
            Settle::Requeue(Return::Nack)
        } else {
            Settle::Reject
        });
        Ok(())
    }

    /// `basic.reject`: a single-message nack.
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag N".
    pub fn reject(&mut self, tag: DeliveryTag, requeue: bool) -> Result<(), BrokerError> {
        self.nack(tag, false, requeue)
    }

    /// `basic.ack` inside a transaction. As RabbitMQ (rabbit_channel collects the acks when
    /// they arrive and defers only the settlement): the deliveries it settles leave the
    /// unacked list now, so that an unknown tag fails this ack, not the commit, and a second
    /// settlement of them in the transaction is an unknown tag too. They keep their
    /// consumer's credit until [`Channel::commit_held`] settles them.
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag N".
    pub fn hold_ack(&mut self, tag: DeliveryTag, multiple: bool) -> Result<(), BrokerError> {
        self.hold(tag, multiple, Settle::Ack)
    }

    /// `basic.nack` or `basic.reject` inside a transaction, as [`Channel::hold_ack`].
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag N".
    pub fn hold_nack(
        &mut self,
        tag: DeliveryTag,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), BrokerError> {
        let how = if requeue {
            Settle::Requeue(Return::Nack)
        } else {
            Settle::Reject
        };
        self.hold(tag, multiple, how)
    }

    fn hold(&mut self, tag: DeliveryTag, multiple: bool, how: Settle) -> Result<(), BrokerError> {
        let mut st = self.shared.deliveries.lock();
        // The tags of what the take below moves (the live ones up to `tag`, or `tag`), read
        // under the same lock: the timer thread takes timed-out deliveries in between
        // otherwise.
        let tags: Vec<u64> = if multiple {
            st.unacked
                .iter()
                .map(|(t, _)| t)
                .take_while(|&t| tag.0 == 0 || t <= tag.0)
                .collect()
        } else {
            vec![tag.0]
        };
        take_locked(&mut st, tag, multiple, &mut self.settling)?;
        // (A late single settlement of a timed-out tag takes nothing: the zip is empty.)
        for (tag, entry) in tags.into_iter().zip(self.settling.drain(..)) {
            st.held.insert(tag, None);
            self.held.push(Held { tag, entry, how });
        }
        Ok(())
    }

    /// tx.commit: settles the deliveries held by [`Channel::hold_ack`] and
    /// [`Channel::hold_nack`], in the order those came. Returns how many were acked.
    pub fn commit_held(&mut self) -> usize {
        let mut acked = 0;
        self.shared.deliveries.lock().held.clear();
        let mut held = std::mem::take(&mut self.held).into_iter().peekable();
        while let Some(first) = held.next() {
            let how = first.how;
            self.settling.push(first.entry);
            while let Some(next) = held.next_if(|h| h.how == how) {
                self.settling.push(next.entry);
            }
            if how == Settle::Ack {
                acked += self.settling.len();
            }
            self.settle(how);
        }
        acked
    }

    /// tx.rollback: the held deliveries are unacked again under their tags, as RabbitMQ
    /// puts them back in its unacked queue. Each keeps the consumer-timeout deadline it got
    /// at delivery (one that came due while held fires now).
    pub fn rollback_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut st = self.shared.deliveries.lock();
        // The list only appends: rebuild it with the held ones merged back in tag order.
        // `iter` and `take_all` walk the live entries in the same order.
        let tags: Vec<u64> = st.unacked.iter().map(|(t, _)| t).collect();
        st.unacked.take_all(&mut self.settling);
        let mut entries: Vec<(u64, UnackedEntry)> =
            tags.into_iter().zip(self.settling.drain(..)).collect();
        let restored: Vec<u64> = self.held.iter().map(|h| h.tag).collect();
        entries.extend(self.held.drain(..).map(|h| (h.tag, h.entry)));
        entries.sort_unstable_by_key(|(tag, _)| *tag);
        for (tag, entry) in entries {
            st.unacked.push(tag, entry);
        }
        for tag in restored {
            if let Some(Some(at)) = st.held.remove(&tag) {
                self.shared.push_deadline(&mut st, tag, at);
            }
        }
    }

    /// `basic.publish` inside a transaction, checked now as RabbitMQ checks it at
    /// basic.publish in tx mode too (rabbit_channel): the exchange exists and is not
    /// internal. So a transaction never fails at commit, halfway through its publishes.
    /// The message is charged to the memory watermark while the transaction holds it (the
    /// charge goes with it to the queues at commit, and is released when it drops on
    /// rollback or close), so an uncommitted backlog raises the alarm like a queued one.
    /// Returns the exchange, for the commit.
    ///
    /// # Errors
    /// `NotFound` "no exchange 'x' in vhost '/'"; `AccessRefused` "cannot publish to
    /// internal exchange 'x' in vhost '/'".
    pub fn hold_publish(&self, message: &mut Message) -> Result<Arc<Exchange>, BrokerError> {
        let exchange = self.vhost.publishable_exchange(message.exchange())?;
        self.charge(message);
        Ok(exchange)
    }

    /// Charges `message` to the vhost's memory watermark until it drops: a message the server
    /// keeps outside the queues (a basic.return waiting in a writer whose client does not
    /// read) counts like a delivery.
    pub fn charge(&self, message: &mut Message) {
        message.charge_to(self.vhost.memory());
    }

    /// `basic.recover` / `recover-async`: requeues every unacked delivery.
    ///
    /// # Errors
    /// `NotImplemented` "requeue=false" (540, connection), as RabbitMQ.
    pub fn recover(&mut self, requeue: bool) -> Result<(), BrokerError> {
        if !requeue {
            return Err(BrokerError::not_implemented("requeue=false"));
        }
        self.requeue_all_unacked();
        Ok(())
    }

    /// `basic.get`. `Ok(None)` when the queue is empty (`get-empty`). A message taken is
    /// also handed to the sink ([`DeliverySink::get_ok`]), in tag order with deliveries.
    ///
    /// # Errors
    /// `NotFound` for a missing queue; `ResourceLocked` for another connection's exclusive
    /// queue, and for a quorum queue with a single active consumer (RabbitMQ's refusal).
    pub fn get(&mut self, queue: &str, no_ack: bool) -> Result<Option<GetOk>, BrokerError> {
        let queue = self.vhost.queue_for(self.shared.connection, queue)?;
        if refuses_get(queue.raw_arguments()) {
            return Err(BrokerError::ResourceLocked(format!(
                "RESOURCE_LOCKED - cannot obtain access to locked {}. basic.get operations are \
                 not supported by quorum queues with single active consumer",
                queue.resource()
            )));
        }
        Ok(queue.get(&self.vhost, &self.shared, no_ack))
    }

    /// `basic.qos` with RabbitMQ's meaning of `global`: false sets the prefetch of
    /// consumers created afterwards, true limits unacked deliveries across the channel.
    /// 0 means unlimited. (`prefetch_size` is refused by the server, as RabbitMQ does.)
    pub fn qos(&mut self, prefetch_count: u16, global: bool) {
        if global {
            self.shared
                .global_prefetch
                .store(u32::from(prefetch_count), Ordering::Release);
            self.kick_all();
        } else {
            self.consumer_prefetch = u32::from(prefetch_count);
        }
    }

    /// `channel.flow`: false pauses deliveries to this channel's consumers, true resumes.
    pub fn flow(&mut self, active: bool) {
        self.shared.active.store(active, Ordering::Release);
        if active {
            self.kick_all();
        }
    }

    /// Stops deliveries to this channel's consumers ahead of [`Channel::close`]. A connection
    /// that closes all its channels stops them all first, so that what one of them requeues
    /// is not delivered to another one that is closing too (which could never acknowledge
    /// it; the delivery would count against `x-delivery-limit`).
    pub fn stop_deliveries(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }

    /// Closes the channel: cancels its consumers (deleting auto-delete queues left without
    /// one), then requeues every unacked delivery at its original position with
    /// redelivered=true. Idempotent; also run on drop.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.shared.closed.store(true, Ordering::Release);
        self.vhost
            .unregister_channel(self.shared.connection, self.shared.id);
        let consumers: Vec<_> = self
            .shared
            .consumers
            .lock()
            .drain()
            .map(|(_, c)| c)
            .collect();
        for consumer in consumers {
            if consumer.queue.remove_consumer(&consumer) {
                self.vhost.auto_delete_queue(&consumer.queue);
            }
            consumer.queue.touch();
        }
        // What an open transaction settled was never settled: requeued with the rest.
        self.shared.deliveries.lock().held.clear();
        self.settling.extend(self.held.drain(..).map(|h| h.entry));
        self.requeue_all_unacked();
    }

    /// Requeues every unacked delivery, marked redelivered.
    fn requeue_all_unacked(&mut self) {
        self.shared
            .deliveries
            .lock()
            .unacked
            .take_all(&mut self.settling);
        self.settle(Settle::Requeue(Return::Close));
    }

    /// Takes the deliveries an ack/nack/reject of `tag` settles (see [`take_locked`]).
    fn take(&mut self, tag: DeliveryTag, multiple: bool) -> Result<(), BrokerError> {
        let mut st = self.shared.deliveries.lock();
        take_locked(&mut st, tag, multiple, &mut self.settling)
    }

    /// Settles the entries in `self.settling`: gives credit back, then per queue either
    /// requeues them or forgets them, which lets the queue deliver again.
    fn settle(&mut self, how: Settle) {
        settle_entries(&mut self.settling, how);
        if self.shared.global_prefetch.load(Ordering::Acquire) != 0 {
            // Channel-wide credit came back: consumers on other queues may proceed.
            self.kick_all();
        }
    }

    fn kick_all(&mut self) {
        self.shared.kick_all(&mut self.kicked);
    }
}

/// Moves the deliveries an ack/nack/reject of `tag` settles into `out`. A tag the consumer
/// timeout took back is not an error: the late settlement is ignored (with `multiple`, the
/// deliveries before it that are still outstanding are settled).
fn take_locked(
    st: &mut Deliveries,
    tag: DeliveryTag,
    multiple: bool,
    out: &mut Vec<UnackedEntry>,
) -> Result<(), BrokerError> {
    let result = st.unacked.take(tag.0, multiple, out);
    let late = result.is_err() && st.timed_out.remove(&tag.0);
    if late {
        debug!(
            delivery_tag = tag.0,
            "late settlement of a delivery taken back by the consumer timeout: ignored"
        );
        if multiple {
            st.unacked.take_through(tag.0, out);
        }
    }
    if multiple && !st.timed_out.is_empty() {
        st.timed_out = match tag.0 {
            0 | u64::MAX => BTreeSet::new(),
            through => st.timed_out.split_off(&(through + 1)),
        };
    }
    st.compact_timeouts();
    if late {
        Ok(())
    } else {
        result
    }
}

/// Gives the credit of `entries` back, then per queue requeues them or forgets them (which
/// lets the queue deliver again), and empties `entries`.
fn settle_entries(entries: &mut Vec<UnackedEntry>, how: Settle) {
    // One release per run of entries from the same consumer (usually all of them): two
    // atomic updates per settlement rather than per delivery.
    let mut run: Option<(&Arc<Consumer>, u32)> = None;
    for entry in entries.iter() {
        let Source::Consumer(consumer) = &entry.source else {
            continue;
        };
        match &mut run {
            Some((current, count)) if Arc::ptr_eq(current, consumer) => *count += 1,
            _ => {
                if let Some((previous, count)) = run.replace((consumer, 1)) {
                    previous.release(count);
                }
            }
        }
    }
    if let Some((consumer, count)) = run {
        consumer.release(count);
    }
    // Usually already in order (one queue, delivered in order): checking costs less than
    // sorting.
    let key = |e: &UnackedEntry| (Arc::as_ptr(e.queue()) as usize, e.seq);
    if !entries.is_sorted_by_key(key) {
        entries.sort_unstable_by_key(key);
    }
    let mut rest = &entries[..];
    while let Some(first) = rest.first() {
        let queue = first.queue();
        let len = rest
            .iter()
            .take_while(|e| Arc::ptr_eq(e.queue(), queue))
            .count();
        let (group, tail) = rest.split_at(len);
        match how {
            Settle::Requeue(cause) => {
                queue.requeue(group.iter().map(|e| (e.seq, &e.message, e.stored)), cause);
            }
            Settle::Ack | Settle::Reject => queue.settle(group, how == Settle::Reject),
        }
        rest = tail;
    }
    // Messages are dropped (and their memory released) here, outside every lock.
    entries.clear();
}

impl ChannelShared {
    fn kick_all(&self, kicked: &mut Vec<Arc<Queue>>) {
        kicked.extend(self.consumers.lock().values().map(|c| Arc::clone(&c.queue)));
        for queue in kicked.drain(..) {
            queue.kick();
        }
    }
}

impl Timed for ChannelShared {
    /// Consumer timeouts: takes back every due delivery still unacked and requeues it, or
    /// tells the sink to close the channel when its queue says close-channel.
    fn fire(&self, now: Instant) {
        let mut taken = Vec::new();
        let mut close = None;
        {
            let mut st = self.deliveries.lock();
            st.timer_at = None;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let due: Vec<u64> = st.timeouts.pop_due(now).collect();
            for tag in due {
                let Some(timeout) = st.unacked.get(tag).map(|e| e.queue().consumer_timeout())
                else {
                    if let Some(due) = st.held.get_mut(&tag) {
                        *due = Some(now);
                    }
                    continue;
                };
                match timeout {
                    Some((ms, true)) if !st.timeout_reported => {
                        st.timeout_reported = true;
                        close = Some((tag, ms));
                    }
                    Some((_, false)) if st.unacked.take(tag, false, &mut taken).is_ok() => {
                        st.remember_timed_out(tag);
                    }
                    _ => {}
                }
            }
            if let Some(next) = st.timeouts.next() {
                st.timer_at = Some(next);
                let me: Weak<dyn Timed> = self.me.clone();
                timer::schedule(next, me);
            }
        }
        if let Some((tag, ms)) = close {
            info!(
                connection = self.connection.0,
                channel = self.id.0,
                delivery_tag = tag,
                timeout_ms = ms,
                "consumer timeout: closing the channel"
            );
            self.sink.consumer_timeout(DeliveryTag(tag), ms);
        }
        if !taken.is_empty() {
            info!(
                connection = self.connection.0,
                channel = self.id.0,
                deliveries = taken.len(),
                "consumer timeout: deliveries taken back and requeued"
            );
            // The next delivery of each queue starts after the consumer that timed out, so
            // the message goes to another consumer first when there is one.
            for entry in &taken {
                if let Source::Consumer(consumer) = &entry.source {
                    consumer.queue.rotate_past(consumer);
                }
            }
            settle_entries(&mut taken, Settle::Requeue(Return::Timeout));
            if self.global_prefetch.load(Ordering::Acquire) != 0 {
                self.kick_all(&mut Vec::new());
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.close();
    }
}

/// A channel (connection 1, channel 1) whose deliveries are dropped: unit tests that only
/// count.
#[cfg(test)]
impl Channel {
    pub(crate) fn discarding(vhost: &Arc<VHost>) -> Self {
        Self::new(
            Arc::clone(vhost),
            ConnectionId(1),
            ChannelId(1),
            Arc::new(crate::sink::Discard),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Broker, BrokerConfig, QueueFlags};
    use bytes::Bytes;
    use lockgate_wire::{BasicProperties, ContentHeader, FieldValue};

    #[test]
    fn acked_deliveries_do_not_keep_their_timeout_deadlines() {
        let args: FieldTable = [("x-consumer-timeout".to_owned(), FieldValue::I64(1_800_000))]
            .into_iter()
            .collect();
        let v = vhost_with_queue(args);
        let mut ch = Channel::discarding(&v);
        ch.consume("q", "c", false, false, &FieldTable::default(), |_| {})
            .unwrap();
        let header = ContentHeader::new(60, 1, BasicProperties::default()).unwrap();
        for tag in 1..=20_000 {
            let m = Message::new(String::new(), "q".into(), header.clone(), Bytes::new());
            v.publish(false, m).unwrap();
            ch.ack(DeliveryTag(tag), false).unwrap();
        }
        let st = ch.shared.deliveries.lock();
        assert_eq!(st.unacked.len(), 0);
        assert!(st.timeouts.len() <= 1025, "{} deadlines", st.timeouts.len());
    }

    /// A broker's vhost "/" with a queue "q" declared with `arguments`.
    fn vhost_with_queue(arguments: FieldTable) -> Arc<VHost> {
        let v = Broker::new(BrokerConfig::default()).vhost("/").unwrap();
        v.declare_queue(ConnectionId(1), "q", QueueFlags::default(), arguments)
            .unwrap();
        v
    }

    /// A channel consuming from "q", whose consumer timeout a policy set to `ms`, with
    /// `count` deliveries outstanding (tags 1..=count).
    fn delivered_under_timeout(ms: u64, count: u64) -> (Arc<VHost>, Channel) {
        let v = vhost_with_queue(FieldTable::default());
        set_timeout(&v, ms);
        let mut ch = Channel::discarding(&v);
        ch.consume("q", "c", false, false, &FieldTable::default(), |_| {})
            .unwrap();
        for _ in 0..count {
            publish_one(&v);
        }
        assert_eq!(ch.unacked_count() as u64, count);
        (v, ch)
    }

    /// What a policy setting `consumer-timeout` does to the queue.
    fn set_timeout(v: &VHost, ms: u64) {
        let arguments = crate::QueueArguments {
            consumer_timeout: Some(ms),
            ..crate::QueueArguments::default()
        };
        v.queue("q")
            .unwrap()
            .set_arguments(arguments, Some("timeout".to_owned()));
    }

    fn publish_one(v: &VHost) {
        let header = ContentHeader::new(60, 1, BasicProperties::default()).unwrap();
        let m = Message::new(String::new(), "q".into(), header, Bytes::new());
        v.publish(false, m).unwrap();
    }

    #[test]
    fn compaction_keeps_each_delivery_deadline_when_the_timeout_changed() {
        for new_ms in [100, 7_200_000] {
            let (v, mut ch) = delivered_under_timeout(1_800_000, 1100);
            let first = ch.shared.deliveries.lock().timeouts.next();
            set_timeout(&v, new_ms);
            // Enough settlements (all but tag 1) to compact the deadlines.
            for tag in 2..=1100 {
                ch.ack(DeliveryTag(tag), false).unwrap();
            }
            let st = ch.shared.deliveries.lock();
            assert!(st.timeouts.len() < 100, "{} deadlines", st.timeouts.len());
            assert_eq!(st.timeouts.next(), first, "timeout changed to {new_ms} ms");
        }
    }

    #[test]
    fn a_lowered_timeout_does_not_take_back_older_deliveries_early() {
        let (v, mut ch) = delivered_under_timeout(1_800_000, 1100);
        set_timeout(&v, 100);
        for tag in 2..=1100 {
            ch.ack(DeliveryTag(tag), false).unwrap();
        }
        assert!(ch.cancel("c"));
        // A delivery under the new timeout (tag 1101), on the same channel: its deadline
        // wakes the channel long before tag 1's.
        publish_one(&v);
        assert!(ch.get("q", false).unwrap().is_some());
        let q = v.queue("q").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // (What one wake takes back is requeued by one call, under the queue lock.)
        while q.snapshot().timeout_redelivered == 0 {
            assert!(Instant::now() < deadline, "tag 1101 timed out within 30 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Taken back alone: tag 1 still has its 30 minutes.
        assert_eq!(q.snapshot().timeout_redelivered, 1);
        let st = ch.shared.deliveries.lock();
        assert!(st.unacked.get(1).is_some());
        assert_eq!(st.unacked.len(), 1);
    }

    #[test]
    fn settlements_held_by_a_transaction_go_back_in_tag_order_on_rollback() {
        let v = vhost_with_queue(FieldTable::default());
        let mut ch = Channel::discarding(&v);
        let header = ContentHeader::new(60, 1, BasicProperties::default()).unwrap();
        for _ in 0..5 {
            let m = Message::new(String::new(), "q".into(), header.clone(), Bytes::new());
            v.publish(false, m).unwrap();
        }
        for tag in 1..=4 {
            let got = ch.get("q", false).unwrap().unwrap();
            assert_eq!(got.delivery_tag, DeliveryTag(tag));
        }
        ch.hold_ack(DeliveryTag(2), false).unwrap();
        ch.hold_nack(DeliveryTag(4), false, true).unwrap();
        // Settled once in the transaction: a second settlement is an unknown tag.
        assert!(ch.hold_ack(DeliveryTag(2), false).is_err());
        assert_eq!(ch.unacked_count(), 2);
        ch.rollback_held();
        assert_eq!(ch.unacked_count(), 4);
        // A delivery after the rollback, then a multiple ack through the restored tag 2.
        assert_eq!(
            ch.get("q", false).unwrap().unwrap().delivery_tag,
            DeliveryTag(5)
        );
        assert_eq!(ch.ack(DeliveryTag(2), true).unwrap(), 2);
        ch.hold_ack(DeliveryTag(0), true).unwrap();
        assert_eq!(ch.unacked_count(), 0);
        assert_eq!(ch.commit_held(), 3);
        assert_eq!(v.queue("q").unwrap().snapshot().acked, 5);
    }

    #[test]
    fn a_deadline_that_came_due_while_held_fires_after_a_rollback() {
        let (v, mut ch) = delivered_under_timeout(1000, 1);
        ch.hold_ack(DeliveryTag(1), false).unwrap();
        // The timer comes by while the transaction holds tag 1: nothing to take back yet.
        let fired = Instant::now() + Duration::from_secs(2);
        ch.shared.fire(fired);
        assert_eq!(v.queue("q").unwrap().snapshot().timeout_redelivered, 0);
        set_timeout(&v, 3_600_000);
        ch.rollback_held();
        assert_eq!(ch.unacked_count(), 1);
        // Due already: not an hour from its delivery.
        let next = ch.shared.deliveries.lock().timeouts.next();
        assert_eq!(next, Some(fired));
        ch.shared.fire(fired);
        assert_eq!(v.queue("q").unwrap().snapshot().timeout_redelivered, 1);
        assert!(ch.shared.deliveries.lock().unacked.get(1).is_none());
    }
}
