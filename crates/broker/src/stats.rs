//! Statistics for the management API and metrics: per-queue counters kept in the queue's
//! state (bumped under the lock the queue already holds, so they cost no extra
//! synchronisation) and point-in-time snapshots of queues, consumers, channels and bindings.
//!
//! Snapshots are for operators, never for the message path: taking one locks a queue (or a
//! channel's delivery list) briefly, and the unacked ages scan a channel's unacked list.
//! Rates are the reader's business: sample the monotonic counters and divide.

use std::time::Duration;

use lockgate_wire::FieldTable;

use crate::ids::{ChannelId, ConnectionId, ConsumerTag};

/// Running totals of one queue, kept under its lock.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueCounters {
    /// Body + header bytes of the ready messages.
    pub ready_bytes: u64,
    /// Messages enqueued by publishing (not requeues, not recovery).
    pub published: u64,
    /// Deliveries to consumers and `basic.get` results, acked or not.
    pub delivered: u64,
    /// The part of `delivered` that had been delivered before.
    pub redelivered: u64,
    /// Deliveries settled without requeue (ack, or nack/reject without requeue).
    pub acked: u64,
    /// Messages removed because their TTL passed (dead-lettered or dropped).
    pub expired: u64,
    /// Messages the dead-letter exchange routed to a queue, for any reason (not those
    /// dropped: exchange missing, routed nowhere, or a dead-letter cycle).
    pub dead_lettered: u64,
    /// Messages dropped from the head by the length limit (overflow drop-head).
    pub dropped_overflow: u64,
    /// Publishes refused by the length limit (overflow reject-publish / -dlx).
    pub rejected_overflow: u64,
    /// Deliveries taken back because the consumer timeout passed.
    pub timeout_redelivered: u64,
    /// Messages dead-lettered or dropped for passing `x-delivery-limit`.
    pub delivery_limit_dropped: u64,
    /// Publishes not enqueued because their message-id was already enqueued within the
    /// `x-deduplication-window` (C, `queue/dedup.rs`).
    pub dedup_dropped: u64,
}

/// A queue at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Ready messages.
    pub ready: u64,
    /// Delivered, not yet acknowledged.
    pub unacked: u64,
    /// Active consumers.
    pub consumers: u64,
    /// Body + header bytes of the ready messages held in memory.
    pub ready_bytes: u64,
    /// Ready messages whose bodies live on disk (spilled, or not yet paged in after a
    /// restart).
    pub spilled: u64,
    /// Their bytes (an estimate after recovery).
    pub spilled_bytes: u64,
    /// Age of the oldest ready message (time since it was published).
    pub oldest_ready_age: Option<Duration>,
    /// Messages published into the queue since it was created (monotonic).
    pub published: u64,
    /// Deliveries, consumer and `basic.get` (monotonic).
    pub delivered: u64,
    /// Redeliveries (monotonic, included in `delivered`).
    pub redelivered: u64,
    /// Deliveries settled without requeue (monotonic).
    pub acked: u64,
    /// Messages removed because their TTL passed, dead-lettered or dropped (monotonic).
    pub expired: u64,
    /// Messages the queue's dead-letter exchange routed to a queue, any reason; those it
    /// dropped (exchange missing, routed nowhere, a dead-letter cycle) are not counted
    /// (monotonic).
    pub dead_lettered: u64,
    /// Messages dropped from the head by `x-max-length(-bytes)`, overflow drop-head
    /// (monotonic; dead-lettered ones included).
    pub dropped_overflow: u64,
    /// Publishes refused by the length limit, overflow reject-publish(-dlx) (monotonic).
    pub rejected_overflow: u64,
    /// Deliveries taken back from consumers after `x-consumer-timeout` (monotonic).
    pub timeout_redelivered: u64,
    /// Messages dead-lettered or dropped for passing `x-delivery-limit` (monotonic).
    pub delivery_limit_dropped: u64,
    /// Publishes not enqueued because their message-id was already enqueued within the
    /// queue's `x-deduplication-window` (monotonic; they were confirmed to the publisher).
    pub dedup_dropped: u64,
}

/// A consumer at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSnapshot {
    /// Its tag.
    pub tag: ConsumerTag,
    /// The queue it consumes from.
    pub queue: String,
    /// Its connection.
    pub connection: ConnectionId,
    /// Its channel.
    pub channel: ChannelId,
    /// Consumed without acknowledgements.
    pub no_ack: bool,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// Its prefetch count (0 = unlimited).
    pub prefetch: u32,
    /// Its `x-priority` (0 when not given).
    pub priority: i64,
    /// The `basic.consume` arguments as the client sent them.
    pub arguments: FieldTable,
    /// Deliveries to it not yet acknowledged.
    pub unacked: u32,
    /// Age of its oldest unacknowledged delivery.
    pub oldest_unacked_age: Option<Duration>,
}

/// A channel at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSnapshot {
    /// Its connection.
    pub connection: ConnectionId,
    /// Its number.
    pub channel: ChannelId,
    /// Active consumers.
    pub consumers: u32,
    /// Deliveries awaiting acknowledgement (consumers and `basic.get`).
    pub unacked: u64,
    /// `basic.qos` global=true prefetch (0 = unlimited).
    pub global_prefetch: u32,
    /// `channel.flow` state.
    pub active: bool,
    /// Age of its oldest unacknowledged delivery.
    pub oldest_unacked_age: Option<Duration>,
}

/// A binding, queue or exchange destination.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingSnapshot {
    /// The source exchange ("" is the default exchange).
    pub source: String,
    /// The destination queue or exchange.
    pub destination: String,
    /// True when the destination is a queue.
    pub destination_is_queue: bool,
    /// The binding key.
    pub routing_key: String,
    /// The binding arguments.
    pub arguments: FieldTable,
}
