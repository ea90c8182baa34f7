//! Writer counters (atomics), read with [`crate::Store::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Metrics {
    batches: AtomicU64,
    ops: AtomicU64,
    bytes: AtomicU64,
    last_batch_ops: AtomicU64,
    max_batch_ops: AtomicU64,
    flush_nanos_total: AtomicU64,
    last_flush_nanos: AtomicU64,
    max_flush_nanos: AtomicU64,
    backpressure_waits: AtomicU64,
    acked_unwritten: AtomicU64,
}

impl Metrics {
    pub(crate) fn record_batch(&self, ops: u64, bytes: u64, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_batch_ops.store(ops, Ordering::Relaxed);
        self.max_batch_ops.fetch_max(ops, Ordering::Relaxed);
        self.flush_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        self.last_flush_nanos.store(nanos, Ordering::Relaxed);
        self.max_flush_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    pub(crate) fn record_acked_unwritten(&self, copies: u64) {
        self.acked_unwritten.fetch_add(copies, Ordering::Relaxed);
    }

    pub(crate) fn record_backpressure(&self) {
        self.backpressure_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StoreMetrics {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreMetrics {
            batches: get(&self.batches),
            ops: get(&self.ops),
            message_bytes: get(&self.bytes),
            last_batch_ops: get(&self.last_batch_ops),
            max_batch_ops: get(&self.max_batch_ops),
            commit_time_total: Duration::from_nanos(get(&self.flush_nanos_total)),
            last_commit_time: Duration::from_nanos(get(&self.last_flush_nanos)),
            max_commit_time: Duration::from_nanos(get(&self.max_flush_nanos)),
            backpressure_waits: get(&self.backpressure_waits),
            acked_unwritten: get(&self.acked_unwritten),
        }
    }
}

/// A snapshot of the group-commit writer's counters since the store was opened.
///
/// A batch is everything queued while the previous batch was being written; its commit
/// time covers applying it and the fsync. `ops / batches` is the mean group size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Batches written and flushed (= fsyncs).
    pub batches: u64,
    /// Writes (publishes, removes, definition changes, ...) in those batches.
    pub ops: u64,
    /// Bytes of message records written.
    pub message_bytes: u64,
    /// Writes in the latest batch.
    pub last_batch_ops: u64,
    /// Writes in the largest batch.
    pub max_batch_ops: u64,
    /// Sum of apply + flush time over all batches.
    pub commit_time_total: Duration,
    /// Apply + flush time of the latest batch.
    pub last_commit_time: Duration,
    /// Longest apply + flush time.
    pub max_commit_time: Duration,
    /// Times a publish waited because `max_pending_bytes` of records were queued.
    pub backpressure_waits: u64,
    /// Message copies removed (acked) in the same batch that published them: neither the
    /// copy nor its removal was written.
    pub acked_unwritten: u64,
}
