//! Memory accounting and the high-watermark alarm.
//!
//! A routed message is charged once, when it is wrapped in its `Arc`, and released when the
//! message drops with its last reference: ready in a queue, unacked on a channel, or waiting
//! in a connection writer after a no-ack delivery. A message routed to N queues is one
//! allocation and is counted once. Counting until the writer drops the delivery is what bounds a slow no-ack
//! consumer: its backlog keeps the alarm raised, and the server stops reading publishers.
//! Messages the server holds for a client outside the queues are charged the same way: the
//! publishes an open transaction buffered (charged at basic.publish, the charge moving to the
//! queues at commit and released on rollback or close), and basic.return messages waiting in
//! a writer whose client does not read. A body arriving over several frames is charged as its
//! frames arrive, by the server through a `MemoryCharge`, and released when the message is
//! complete (which is charged then) or its channel closes.
//!
//! The counter is one atomic; the `watch` channel is touched only when the counter crosses the
//! watermark, and then the state is recomputed from the counter under the watch's own lock,
//! so racing crossings always settle on the right value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Counts the bytes of messages held by the broker and raises the alarm above the watermark.
#[derive(Debug)]
pub(crate) struct MemoryMonitor {
    used: AtomicU64,
    /// Bytes at or above which the alarm is raised; 0 disables it.
    high_watermark: u64,
    blocked: watch::Sender<bool>,
}

impl MemoryMonitor {
    pub fn new(high_watermark: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            high_watermark,
            blocked: watch::Sender::new(false),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes at or above which the alarm is raised; 0 when it is disabled.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    pub fn blocked(&self) -> bool {
        *self.blocked.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.blocked.subscribe()
    }

    /// Charges `bytes` (a message accepted by the broker); [`MemoryMonitor::release`]
    /// gives them back when it goes.
    pub fn add(&self, bytes: u64) {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if self.high_watermark != 0
            && before < self.high_watermark
            && before + bytes >= self.high_watermark
        {
            self.refresh();
        }
    }

    /// Releases `bytes` charged by [`MemoryMonitor::add`].
    pub fn release(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        if self.high_watermark != 0
            && before >= self.high_watermark
            && before - bytes < self.high_watermark
        {
            self.refresh();
        }
    }

    fn refresh(&self) {
        self.blocked.send_if_modified(|blocked| {
            let now = self.used.load(Ordering::Relaxed) >= self.high_watermark;
            let changed = *blocked != now;
            *blocked = now;
            changed
        });
    }
}

/// Bytes the server holds for a client outside any message (a body arriving over several
/// frames), charged to the memory watermark until the charge drops.
#[derive(Debug)]
pub struct MemoryCharge {
    memory: Arc<MemoryMonitor>,
    bytes: u64,
}

impl MemoryCharge {
    pub(crate) fn new(memory: Arc<MemoryMonitor>, bytes: u64) -> Self {
        memory.add(bytes);
        Self { memory, bytes }
    }

    /// Changes the charge to `bytes`, charging or releasing the difference.
    pub fn set(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.memory.add(bytes - self.bytes);
        } else if bytes < self.bytes {
            self.memory.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        self.memory.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_toggles_at_the_watermark() {
        let monitor = MemoryMonitor::new(100);
        let rx = monitor.subscribe();
        monitor.add(60);
        assert!(!*rx.borrow());
        monitor.add(40);
        assert!(*rx.borrow());
        assert_eq!(monitor.used(), 100);
        monitor.release(60);
        assert!(!*rx.borrow());
        monitor.release(40);
        assert_eq!(monitor.used(), 0);
    }

    #[test]
    fn zero_watermark_never_blocks() {
        let monitor = MemoryMonitor::new(0);
        monitor.add(u64::from(u32::MAX));
        assert!(!monitor.blocked());
    }

    #[test]
    fn a_charge_follows_its_size_and_goes_with_its_drop() {
        let monitor = MemoryMonitor::new(100);
        let mut charge = MemoryCharge::new(Arc::clone(&monitor), 60);
        assert_eq!(monitor.used(), 60);
        charge.set(120);
        assert!(monitor.blocked());
        charge.set(30);
        assert_eq!(monitor.used(), 30);
        assert!(!monitor.blocked());
        drop(charge);
        assert_eq!(monitor.used(), 0);
    }
}
