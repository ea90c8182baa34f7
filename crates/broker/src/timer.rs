//! The broker's one timer facility: consumer timeouts, retry delays, TTL expiry and delayed
//! exchanges all wake through here. Nothing else in the broker runs a timer thread or scans
//! periodically.
//!
//! Two pieces:
//!
//! - [`schedule`]`(at, target)`: a process-wide min-heap of `(Instant, Weak<dyn Timed>)`
//!   served by one std thread (started lazily on the first call, so it works without a tokio
//!   runtime, in unit tests too). The thread sleeps on a condvar until the earliest entry is
//!   due (an earlier `schedule` wakes it early), then calls [`Timed::fire`] with no lock of
//!   its own held. A target that has been dropped is skipped: nobody has to cancel anything.
//! - [`Deadlines`]: a target's own ordered deadlines (`push`, `next`, `pop_due`). Deadlines
//!   that arrive in order (a fixed timeout per queue, a fixed TTL) go to a `VecDeque` in O(1);
//!   others go to a binary heap in O(log n). Cancellation is lazy: the target keeps its own
//!   record of what is live (an unacked delivery tag, a message sequence number) and ignores
//!   a popped key that is no longer live.
//!
//! The pattern every target follows, so the global heap holds about one entry per target
//! however many deadlines the targets hold (100,000 outstanding deliveries cost 100,000
//! pushes into their queue's `Deadlines`, and one or two entries in the global heap):
//!
//! 1. Inside its own lock, the target pushes the deadline into its `Deadlines` and compares
//!    `deadlines.next()` with the wake it has already scheduled (`Option<Instant>` kept next
//!    to the deadlines). Only if the new earliest deadline is earlier, or nothing is
//!    scheduled, it records the new wake and calls `schedule(at, weak_self)` (after
//!    releasing its lock, or inside it: `schedule` takes only the timer's own short mutex).
//! 2. `fire(now)` runs on the timer thread: the target takes its lock, clears its recorded
//!    wake, pops `pop_due(now)`, handles the live keys, and if `next()` is still `Some`,
//!    records it and schedules it again.
//!
//! An extra, stale entry (the target rescheduled earlier, then the old entry fires) only
//! costs a `fire` that finds nothing due. `fire` must not block for long: every target
//! shares the one thread.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Something that wants to be woken at a deadline (a queue, a delayed exchange).
pub(crate) trait Timed: Send + Sync {
    /// Called on the timer thread at or after the scheduled instant, with no timer lock held.
    /// `now` is the time the thread woke; pop what is due at `now` and schedule the next wake.
    fn fire(&self, now: Instant);
}

/// Wakes `target` at `at` (at once if `at` is past). O(log n) in the number of scheduled
/// entries. If the target has been dropped by then, nothing happens.
///
/// # Panics
/// On the first call, if the operating system refuses to start the timer thread.
pub(crate) fn schedule(at: Instant, target: Weak<dyn Timed>) {
    let timer = TIMER.get_or_init(Timer::default);
    STARTED.call_once(|| {
        std::thread::Builder::new()
            .name("lockgate-timer".into())
            .spawn(move || timer.run())
            .expect("spawning the timer thread");
    });
    timer.schedule(at, target);
}

static TIMER: OnceLock<Timer> = OnceLock::new();
static STARTED: Once = Once::new();

#[derive(Default)]
struct Timer {
    heap: Mutex<TimerHeap>,
    wake: Condvar,
}

#[derive(Default)]
struct TimerHeap {
    entries: BinaryHeap<Slot<Weak<dyn Timed>>>,
    seq: u64,
}

impl Timer {
    fn schedule(&self, at: Instant, target: Weak<dyn Timed>) {
        let mut heap = self.heap.lock();
        let earlier = heap.entries.peek().is_none_or(|first| at < first.at);
        let seq = heap.seq;
        heap.seq += 1;
        heap.entries.push(Slot {
            at,
            seq,
            value: target,
        });
        drop(heap);
        if earlier {
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let mut due = Vec::new();
        let mut heap = self.heap.lock();
        loop {
            let Some(first) = heap.entries.peek().map(|slot| slot.at) else {
                self.wake.wait(&mut heap);
                continue;
            };
            if first > Instant::now() {
                self.wake.wait_until(&mut heap, first);
                continue;
            }
            let now = Instant::now();
            while heap.entries.peek().is_some_and(|slot| slot.at <= now) {
                if let Some(slot) = heap.entries.pop() {
                    due.push(slot.value);
                }
            }
            drop(heap);
            for target in due.drain(..) {
                if let Some(target) = target.upgrade() {
                    // A panicking target must not stop every other target's timers.
                    if catch_unwind(AssertUnwindSafe(|| target.fire(now))).is_err() {
                        tracing::error!("a timer target panicked in fire");
                    }
                }
            }
            heap = self.heap.lock();
        }
    }
}

/// One heap entry, ordered so that `BinaryHeap` (a max-heap) pops the earliest `at` first and,
/// among equal instants, the first pushed.
struct Slot<V> {
    at: Instant,
    seq: u64,
    value: V,
}

impl<V> PartialEq for Slot<V> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}

impl<V> Eq for Slot<V> {}

impl<V> PartialOrd for Slot<V> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<V> Ord for Slot<V> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A target's own deadlines, earliest first; equal deadlines pop in push order. Pushes in
/// non-decreasing order cost O(1) (a `VecDeque`), the others O(log n) (a heap). Keys are not
/// removed on cancellation: the owner ignores a popped key that is no longer live.
pub(crate) struct Deadlines<K> {
    in_order: VecDeque<Slot<K>>,
    out_of_order: BinaryHeap<Slot<K>>,
    seq: u64,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            in_order: VecDeque::new(),
            out_of_order: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<K> Deadlines<K> {
    /// An empty set of deadlines.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `key`, due at `at`.
    pub(crate) fn push(&mut self, at: Instant, key: K) {
        let seq = self.seq;
        self.seq += 1;
        let slot = Slot {
            at,
            seq,
            value: key,
        };
        if self.in_order.back().is_none_or(|last| last.at <= at) {
            self.in_order.push_back(slot);
        } else {
            self.out_of_order.push(slot);
        }
    }

    /// The earliest deadline, if any (cancelled keys included: cancellation is lazy).
    pub(crate) fn next(&self) -> Option<Instant> {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(b)) => Some(a.at.min(b.at)),
            (Some(a), None) => Some(a.at),
            (None, Some(b)) => Some(b.at),
            (None, None) => None,
        }
    }

    /// Removes and yields, earliest first, every key due at or before `now`. Keys not taken
    /// from the iterator stay in place.
    pub(crate) fn pop_due(&mut self, now: Instant) -> impl Iterator<Item = K> + '_ {
        std::iter::from_fn(move || self.pop_if_due(now))
    }

    /// The number of keys held, cancelled ones included.
    pub(crate) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    fn pop_if_due(&mut self, now: Instant) -> Option<K> {
        let take_heap = match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(b)) => (b.at, b.seq) < (a.at, a.seq),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => return None,
        };
        if take_heap {
            if self.out_of_order.peek().is_some_and(|slot| slot.at <= now) {
                return self.out_of_order.pop().map(|slot| slot.value);
            }
        } else if self.in_order.front().is_some_and(|slot| slot.at <= now) {
            return self.in_order.pop_front().map(|slot| slot.value);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::sync::Arc;
    use std::time::Duration;

    struct Recorder {
        name: &'static str,
        fired: Mutex<Sender<(&'static str, Instant)>>,
    }

    impl Timed for Recorder {
        fn fire(&self, now: Instant) {
            let _ = self.fired.lock().send((self.name, now));
        }
    }

    fn recorder(name: &'static str, tx: &Sender<(&'static str, Instant)>) -> Arc<Recorder> {
        Arc::new(Recorder {
            name,
            fired: Mutex::new(tx.clone()),
        })
    }

    fn weak(target: &Arc<Recorder>) -> Weak<dyn Timed> {
        let target: Arc<dyn Timed> = target.clone();
        Arc::downgrade(&target)
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn fires_in_deadline_order_not_schedule_order() {
        let (tx, rx) = channel();
        // Far enough ahead that all three are scheduled before the first is due, even when
        // the test thread stalls.
        let start = Instant::now() + Duration::from_millis(500);
        let late = recorder("late", &tx);
        let early = recorder("early", &tx);
        let middle = recorder("middle", &tx);
        schedule(start + Duration::from_millis(120), weak(&late));
        schedule(start + Duration::from_millis(40), weak(&early));
        schedule(start + Duration::from_millis(80), weak(&middle));
        let mut order = Vec::new();
        for _ in 0..3 {
            let (name, now) = rx.recv_timeout(WAIT).expect("a target fired");
            order.push(name);
            assert!(now >= start + Duration::from_millis(40));
        }
        assert_eq!(order, ["early", "middle", "late"]);
    }

    #[test]
    fn fires_no_earlier_than_its_deadline() {
        let (tx, rx) = channel();
        let target = recorder("t", &tx);
        let at = Instant::now() + Duration::from_millis(50);
        schedule(at, weak(&target));
        let (_, now) = rx.recv_timeout(WAIT).expect("fired");
        assert!(now >= at);
        assert!(Instant::now() >= at);
    }

    #[test]
    fn skips_dropped_targets() {
        let (tx, rx) = channel();
        let start = Instant::now();
        let dropped = recorder("dropped", &tx);
        let kept = recorder("kept", &tx);
        // Dropped before it is scheduled: a stalled test thread cannot let it fire first.
        let dead = weak(&dropped);
        drop(dropped);
        schedule(start + Duration::from_millis(20), dead);
        schedule(start + Duration::from_millis(60), weak(&kept));
        let (name, _) = rx.recv_timeout(WAIT).expect("fired");
        assert_eq!(name, "kept");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_earlier_schedule_wakes_the_thread_early() {
        let (tx, rx) = channel();
        let start = Instant::now();
        let far = recorder("far", &tx);
        let near = recorder("near", &tx);
        // The thread goes to sleep until `far`; `near` must interrupt that sleep.
        schedule(start + Duration::from_secs(3600), weak(&far));
        std::thread::yield_now();
        schedule(start + Duration::from_millis(30), weak(&near));
        let (name, now) = rx.recv_timeout(WAIT).expect("near fired");
        assert_eq!(name, "near");
        assert!(now - start < Duration::from_secs(3));
    }

    #[test]
    fn a_past_deadline_fires_at_once() {
        let (tx, rx) = channel();
        let target = recorder("past", &tx);
        let at = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        schedule(at, weak(&target));
        assert_eq!(rx.recv_timeout(WAIT).expect("fired").0, "past");
    }

    #[test]
    fn deadlines_pop_in_order_and_only_what_is_due() {
        let base = Instant::now();
        let ms = |n: u64| base + Duration::from_millis(n);
        let mut deadlines = Deadlines::new();
        deadlines.push(ms(30), "c");
        deadlines.push(ms(10), "a");
        deadlines.push(ms(40), "d");
        deadlines.push(ms(20), "b");
        deadlines.push(ms(20), "b2");
        assert_eq!(deadlines.len(), 5);
        assert_eq!(deadlines.next(), Some(ms(10)));
        assert_eq!(
            deadlines.pop_due(ms(25)).collect::<Vec<_>>(),
            ["a", "b", "b2"]
        );
        assert_eq!(deadlines.next(), Some(ms(30)));
        assert_eq!(deadlines.pop_due(ms(29)).count(), 0);
        assert_eq!(deadlines.pop_due(ms(100)).collect::<Vec<_>>(), ["c", "d"]);
        assert_eq!(deadlines.len(), 0);
        assert_eq!(deadlines.next(), None);
    }

    #[test]
    fn an_unconsumed_pop_due_iterator_leaves_keys_in_place() {
        let base = Instant::now();
        let mut deadlines = Deadlines::new();
        deadlines.push(base, 1);
        deadlines.push(base, 2);
        assert_eq!(deadlines.pop_due(base).next(), Some(1));
        assert_eq!(deadlines.len(), 1);
        assert_eq!(deadlines.pop_due(base).next(), Some(2));
    }

    #[test]
    fn a_hundred_thousand_deadlines_pop_in_order() {
        let base = Instant::now();
        let mut deadlines = Deadlines::new();
        // Mostly in order (the fast path), with every seventh deadline out of order.
        let offsets: Vec<u64> = (0..100_000u64)
            .map(|i| if i % 7 == 0 { (i * 7919) % 100_000 } else { i })
            .collect();
        for (i, offset) in offsets.iter().enumerate() {
            deadlines.push(base + Duration::from_micros(*offset), (*offset, i));
        }
        assert_eq!(deadlines.len(), 100_000);
        let popped: Vec<(u64, usize)> = deadlines.pop_due(base + Duration::from_secs(1)).collect();
        assert_eq!(popped.len(), 100_000);
        assert!(popped.windows(2).all(|w| w[0] <= w[1]));
        let mut expected: Vec<(u64, usize)> =
            offsets.iter().enumerate().map(|(i, o)| (*o, i)).collect();
        expected.sort_unstable();
        assert_eq!(popped, expected);
    }
}
