//! The consumer side of one AMQP channel: delivery tags, unacked deliveries, qos, flow and
//! consumers.
//!
//! [`Channel`] is owned by the server's connection task and called with `&mut self`.
//! Queues deliver to it from other threads through the [`ChannelShared`] part: tag counter
//! and unacked list behind one short mutex (taken inside a queue lock, never the other way
//! round), credit and flags in atomics. Settling (ack, nack, reject, recover, close) takes
//! entries out under the channel mutex, releases it, and only then locks the queues.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lockgate_wire::FieldTable;
use parking_lot::Mutex;

use crate::consumer::Consumer;
use crate::error::BrokerError;
use crate::ids::{ChannelId, ConnectionId, ConsumerTag, DeliveryTag};
use crate::message::Message;
use crate::queue::arguments::check_consume_arguments;
use crate::queue::{GetOk, Queue, Ready};
use crate::sink::{Delivery, DeliverySink, SinkClosed};
use crate::stats::ChannelSnapshot;
use crate::unacked::{Source, UnackedEntry, UnackedList};
use crate::vhost::VHost;

struct Deliveries {
    next_tag: u64,
    unacked: UnackedList,
}

/// The part of a channel that queues deliver into.
pub(crate) struct ChannelShared {
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
        let delivery = Delivery {
            consumer_tag: consumer.tag.clone(),
            delivery_tag: DeliveryTag(st.next_tag),
            redelivered: item.redelivered,
            no_ack: consumer.no_ack,
            message: Arc::clone(&item.message),
        };
        if let Err(SinkClosed(_)) = self.sink.deliver(delivery) {
            self.closed.store(true, Ordering::Release);
            return Err(item);
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        if !consumer.no_ack {
            st.unacked.push(
                tag,
                UnackedEntry {
                    seq: item.seq,
                    message: item.message,
                    source: Source::Consumer(Arc::clone(consumer)),
                    stored: item.stored,
                    delivered_at: std::time::Instant::now(),
                },
            );
        }
        Ok(())
    }

    /// Records a `basic.get` result; returns (tag, redelivered, message).
    pub fn record_get(
        &self,
        queue: &Arc<Queue>,
        item: Ready,
        no_ack: bool,
    ) -> (DeliveryTag, bool, Arc<Message>) {
        let mut st = self.deliveries.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        if !no_ack {
            st.unacked.push(
                tag,
                UnackedEntry {
                    seq: item.seq,
                    message: Arc::clone(&item.message),
                    source: Source::Get(Arc::clone(queue)),
                    stored: item.stored,
                    delivered_at: std::time::Instant::now(),
                },
            );
        }
        (DeliveryTag(tag), item.redelivered, item.message)
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
    closed: bool,
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
        let shared = Arc::new(ChannelShared {
            connection,
            id,
            sink,
            deliveries: Mutex::new(Deliveries {
                next_tag: 1,
                unacked: UnackedList::default(),
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
    /// precedes the first `basic.deliver`. `arguments` are validated (`x-priority` must be an
    /// integer) and not yet used.
    ///
    /// # Errors
    /// `NotAllowed` (530, connection) for a tag already used on this channel; `NotFound` for
    /// a missing queue; `ResourceLocked` for another connection's exclusive queue;
    /// `PreconditionFailed` for an invalid `x-priority`;
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
        check_consume_arguments(arguments, &queue.resource())?;
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            queue: Arc::clone(&queue),
            channel: Arc::clone(&self.shared),
            no_ack,
            exclusive,
            prefetch: self.consumer_prefetch,
            unacked: AtomicU32::new(0),
        });
        // Registered on the channel first, so that a concurrent queue deletion that cancels
        // the consumer finds it here.
        self.shared
            .consumers
            .lock()
            .insert(tag.clone(), Arc::clone(&consumer));
        if let Err(e) = queue.add_consumer(&consumer, || on_registered(&tag)) {
            self.shared.consumers.lock().remove(&tag);
            return Err(e);
        }
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
        self.settle(false);
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
        self.settle(requeue);
        Ok(())
    }

    /// `basic.reject`: a single-message nack.
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag N".
    pub fn reject(&mut self, tag: DeliveryTag, requeue: bool) -> Result<(), BrokerError> {
        self.nack(tag, false, requeue)
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

    /// `basic.get`. `Ok(None)` when the queue is empty (`get-empty`).
    ///
    /// # Errors
    /// `NotFound` for a missing queue; `ResourceLocked` for another connection's exclusive
    /// queue.
    pub fn get(&mut self, queue: &str, no_ack: bool) -> Result<Option<GetOk>, BrokerError> {
        let queue = self.vhost.queue_for(self.shared.connection, queue)?;
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
        }
        self.requeue_all_unacked();
    }

    /// Requeues every unacked delivery, marked redelivered.
    fn requeue_all_unacked(&mut self) {
        self.shared
            .deliveries
            .lock()
            .unacked
            .take_all(&mut self.settling);
        self.settle(true);
    }

    fn take(&mut self, tag: DeliveryTag, multiple: bool) -> Result<(), BrokerError> {
        self.shared
            .deliveries
            .lock()
            .unacked
            .take(tag.0, multiple, &mut self.settling)
    }

    /// Settles the entries in `self.settling`: gives credit back, then per queue either
    /// requeues them or forgets them, which lets the queue deliver again.
    fn settle(&mut self, requeue: bool) {
        let entries = &mut self.settling;
        for entry in entries.iter() {
            if let Source::Consumer(consumer) = &entry.source {
                consumer.release(1);
            }
        }
        if entries.len() > 1 {
            entries.sort_unstable_by_key(|e| (Arc::as_ptr(e.queue()) as usize, e.seq));
        }
        let mut rest = &entries[..];
        while let Some(first) = rest.first() {
            let queue = first.queue();
            let len = rest
                .iter()
                .take_while(|e| Arc::ptr_eq(e.queue(), queue))
                .count();
            let (group, tail) = rest.split_at(len);
            if requeue {
                queue.requeue(group.iter().map(|e| (e.seq, &e.message, e.stored)));
            } else {
                queue.settle(group.len(), group.iter().filter_map(|e| e.stored));
            }
            rest = tail;
        }
        // Messages are dropped (and their memory released) here, outside every lock.
        entries.clear();
        if self.shared.global_prefetch.load(Ordering::Acquire) != 0 {
            // Channel-wide credit came back: consumers on other queues may proceed.
            self.kick_all();
        }
    }

    fn kick_all(&mut self) {
        self.kicked.extend(
            self.shared
                .consumers
                .lock()
                .values()
                .map(|c| Arc::clone(&c.queue)),
        );
        for queue in self.kicked.drain(..) {
            queue.kick();
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.close();
    }
}
