//! [`InFlight`]: how long the oldest of the calls running on callers' threads has run, for the
//! spill calls ([`crate::Store::oldest_spill_wait`]).
//!
//! Spilling, paging in and discarding go to the engine on the caller's thread, outside the
//! writer's queue, and several can run at once (the spill task, and `basic.get`s paging in a
//! disk tail), so the writer's "oldest queued op" does not see them. Timing each call would
//! read the clock per call; like the writer, this reads it once per idle-to-busy transition,
//! of a cohort: a call joins the current cohort, whose start is that of its first call. Once
//! every call of the older cohort has returned, the current cohort becomes the older one and
//! the next call starts a new one.
//!
//! The age reported is the start of the oldest cohort with a call still running. It never
//! understates the age of the oldest running call (its cohort started no later than it did),
//! and it overstates it only by how long the calls that started before it in its cohort ran:
//! a stream of overlapping short calls reads as the length of a call or two, however long the
//! stream lasts, while a call that never returns keeps its cohort, and the age, growing.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Cohort {
    /// When its first call started; `None` while no call of it runs.
    since: Option<Instant>,
    running: u64,
}

#[derive(Default)]
struct Cohorts {
    older: Cohort,
    current: Cohort,
    /// Number of the current cohort (the older one is the one before it).
    generation: u64,
}

/// Calls running now, in two cohorts (see the module docs).
#[derive(Default)]
pub(crate) struct InFlight {
    cohorts: Mutex<Cohorts>,
}

/// A call counted as running until this is dropped (also when the call fails or panics).
pub(crate) struct Running<'a> {
    in_flight: &'a InFlight,
    generation: u64,
}

/// Locks a mutex, ignoring poisoning: nothing panics while holding this one.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InFlight {
    /// Counts a call as running until the returned guard is dropped.
    pub(crate) fn start(&self) -> Running<'_> {
        let mut cohorts = lock(&self.cohorts);
        let current = &mut cohorts.current;
        if current.running == 0 {
            current.since = Some(Instant::now());
        }
        current.running += 1;
        Running {
            in_flight: self,
            generation: cohorts.generation,
        }
    }

    /// How long the oldest running call has run, to within the calls started before it in
    /// its cohort; `None` when no call runs.
    pub(crate) fn oldest(&self) -> Option<Duration> {
        let cohorts = lock(&self.cohorts);
        cohorts
            .older
            .since
            .or(cohorts.current.since)
            .map(|since| since.elapsed())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut cohorts = lock(&self.in_flight.cohorts);
        let generation = cohorts.generation;
        // A cohort becomes the older one only once the older one is empty, so a running
        // call belongs to one of the two.
        let cohort = if self.generation == generation {
            &mut cohorts.current
        } else {
            &mut cohorts.older
        };
        cohort.running -= 1;
        if cohort.running == 0 {
            cohort.since = None;
        }
        if cohorts.older.running == 0 {
            cohorts.older = std::mem::take(&mut cohorts.current);
            cohorts.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause() {
        std::thread::sleep(Duration::from_millis(2));
    }

    #[test]
    fn a_call_is_timed_while_it_runs() {
        let in_flight = InFlight::default();
        assert_eq!(in_flight.oldest(), None);
        let call = in_flight.start();
        let first = in_flight.oldest().expect("a call runs");
        pause();
        assert!(in_flight.oldest().expect("still runs") > first);
        drop(call);
        assert_eq!(in_flight.oldest(), None);
    }

    /// Calls that overlap end to end for far longer than any of them runs: the age stays
    /// that of the calls, never the length of the busy stretch.
    #[test]
    fn overlapping_calls_read_as_their_own_age() {
        let in_flight = InFlight::default();
        let began = Instant::now();
        let mut previous = (Instant::now(), in_flight.start());
        for _ in 0..50 {
            pause();
            let before = Instant::now();
            let next = in_flight.start();
            let (started, call) = std::mem::replace(&mut previous, (before, next));
            drop(call);
            let oldest = in_flight.oldest().expect("a call runs");
            // At most the age of the call that just ended (started before the running one).
            assert!(
                oldest <= started.elapsed(),
                "{oldest:?} after a busy stretch of {:?}",
                began.elapsed()
            );
        }
    }

    /// A call that does not return keeps the age growing while short calls come and go.
    #[test]
    fn a_stuck_call_is_seen_behind_short_ones() {
        let in_flight = InFlight::default();
        let stuck = in_flight.start();
        let started = Instant::now();
        for _ in 0..20 {
            let call = in_flight.start();
            pause();
            drop(call);
            let at_least = started.elapsed();
            assert!(in_flight.oldest().expect("the stuck call runs") >= at_least);
        }
        drop(stuck);
        assert_eq!(in_flight.oldest(), None);
    }
}
