//! Precise pacing for fixed-rate publishing (the latency scenario).
//!
//! The tokio timer has a 1 ms granularity: a paced publisher on it wakes up
//! to a millisecond late and then sends every message that fell due in a
//! burst, so the bench's own timing error (and the queueing its bursts
//! cause) would show up in the latency percentiles of whichever broker is
//! measured. Instead, the paced publisher runs on a thread of its own that:
//!
//! 1. sets its timer slack to 1 ns (`PR_SET_TIMERSLACK`; the default 50 µs
//!    lets the kernel defer the wake-up to batch timers),
//! 2. sleeps in the OS until a short spin margin before the message's due
//!    time: [`SPIN`], or a tenth of the period at rates above 1,666 msg/s,
//! 3. spins for the rest, yielding the core to any other runnable thread at
//!    each turn (the broker runs on the same two cores).
//!
//! The OS sleep typically overshoots by a few tens of microseconds on a VM;
//! the spin absorbs that at low rates, and at any rate it costs at most a
//! tenth of a core, so the bench does not take a core from the broker to
//! pace. At high rates a message may then leave some microseconds late
//! (two messages in a row at worst), which does not distort latency: each
//! message is stamped when it actually leaves. [`Pacer::into_lag`] records
//! how late each message left, so the bench's own error is reported next to
//! the latencies it could distort.

use std::time::{Duration, Instant};

use crate::latency::Recorder;

/// How long before the due time the pacer stops sleeping and spins. Above
/// the usual overshoot of a 1 ns-slack sleep here (p50 ~30 µs, p90 ~45 µs on
/// the 2-core test VM under load).
pub const SPIN: Duration = Duration::from_micros(60);

/// Message `n` of a fixed-rate stream is due `n / rate` seconds after the
/// start.
#[derive(Debug)]
pub struct Pacer {
    started: Instant,
    rate: f64,
    /// How long before a due time sleeping stops and spinning starts.
    spin: Duration,
    /// How late messages left, relative to their due time (µs).
    lag: Recorder,
}

impl Pacer {
    /// Starts the schedule now, at `rate` messages per second (at least 1),
    /// and makes the calling thread's sleeps precise.
    pub fn start(rate: u64) -> Self {
        // On failure the default slack (50 µs) stays: pacing is then
        // coarser, and the recorded lag shows it.
        precise_timer_slack();
        let rate = rate.max(1) as f64;
        Self {
            started: Instant::now(),
            rate,
            spin: SPIN.min(Duration::from_secs_f64(0.1 / rate)),
            lag: Recorder::default(),
        }
    }

    /// When message `n` is due.
    pub fn due(&self, n: u64) -> Instant {
        self.started + Duration::from_secs_f64(n as f64 / self.rate)
    }

    /// Blocks the thread until `due`. Returns whether it had to wait (the
    /// publisher was on schedule).
    pub fn wait_until(&self, due: Instant) -> bool {
        let mut waited = false;
        loop {
            let now = Instant::now();
            if now >= due {
                return waited;
            }
            waited = true;
            let left = due - now;
            if left > self.spin {
                std::thread::sleep(left - self.spin);
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Records that a message due at `due` left at `sent`.
    pub fn record_lag(&mut self, due: Instant, sent: Instant) {
        let late = sent.saturating_duration_since(due).as_micros();
        self.lag.record_us(u64::try_from(late).unwrap_or(u64::MAX));
    }

    /// How late messages left.
    pub fn into_lag(self) -> Recorder {
        self.lag
    }
}

/// Sets the calling thread's timer slack to 1 ns.
fn precise_timer_slack() {
    // PR_SET_TIMERSLACK takes the slack in ns as an unsigned long.
    let slack: libc::c_ulong = 1;
    // SAFETY: prctl(PR_SET_TIMERSLACK, n) reads no memory; it only sets a
    // scheduling attribute of the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, slack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_due_at_the_rate() {
        let pacer = Pacer::start(1000);
        assert_eq!(pacer.due(0), pacer.started);
        assert_eq!(pacer.due(1500) - pacer.started, Duration::from_millis(1500));
    }

    #[test]
    fn spinning_takes_at_most_a_tenth_of_the_period() {
        assert_eq!(Pacer::start(1000).spin, SPIN);
        assert_eq!(Pacer::start(50_000).spin, Duration::from_micros(2));
    }

    #[test]
    fn waiting_ends_at_the_due_time_not_before() {
        let pacer = Pacer::start(1000);
        let due = Instant::now() + Duration::from_millis(2);
        assert!(pacer.wait_until(due));
        assert!(Instant::now() >= due);
        assert!(!pacer.wait_until(due));
    }
}
