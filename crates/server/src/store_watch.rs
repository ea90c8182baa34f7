//! The store watchdog: tells the operator when store writes have waited far longer than a disk
//! takes (a disk that stopped answering, or the storage engine stuck), and when they move again.
//!
//! Two kinds of writes are watched apart, because a stall of each stops different things:
//! - durable writes, which go through the store's group-commit writer: while they wait,
//!   persistent publishes hold their publisher confirms and queues declared or deleted hold
//!   their replies, so clients see a broker that stopped answering some calls and not others;
//! - spill calls (message bodies written to disk when memory fills, read back, discarded),
//!   which the spill task and `basic.get` make on the engine directly: while one hangs, queues
//!   stop handing memory back (the memory alarm then blocks publishers) and consumers of
//!   spilled queues wait. A broker with transient traffic only makes no durable writes at all.
//!
//! The waits are `lockgate_store_oldest_write_seconds{writes="durable"}` and
//! `{writes="spill"}` in /metrics; this task puts each in the log once it passes
//! [`STALLED_AFTER`].

use std::time::Duration;

use lockgate_store::Store;
use tracing::{error, warn};

/// How often the waits are read (one lock of the writer's queue, one of the spill calls').
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// A write waiting this long is reported. A healthy store makes a write durable within
/// milliseconds, and within a few seconds on a disk saturated by other work.
const STALLED_AFTER: Duration = Duration::from_secs(30);

/// Starts the watchdog for `store`; it runs as long as the runtime.
pub fn spawn(store: Store) {
    tokio::spawn(async move {
        let mut watchdog = Watchdog::new(STALLED_AFTER);
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            for (writes, report) in watchdog.check(&store) {
                log(&store, writes, report);
            }
        }
    });
}

fn log(store: &Store, writes: Writes, report: Report) {
    let path = store.path().display();
    match (writes, report) {
        (Writes::Durable, Report::Stalled(waited)) => error!(
            waited_s = waited.as_secs(),
            path = %path,
            "store writes have not become durable for {}s: persistent publishes and their confirms wait; \
             check the disk (a backtrace of the broker shows a stuck engine)",
            waited.as_secs()
        ),
        (Writes::Durable, Report::Resumed) => warn!("store writes are durable again"),
        (Writes::Spill, Report::Stalled(waited)) => error!(
            waited_s = waited.as_secs(),
            path = %path,
            "spilling messages to or from disk has not finished for {}s: queues keep their messages in \
             memory (the memory alarm blocks publishers once it is full) and consumers of spilled queues \
             wait; check the disk (a backtrace of the broker shows a stuck engine)",
            waited.as_secs()
        ),
        (Writes::Spill, Report::Resumed) => warn!("spilling messages to and from disk works again"),
    }
}

/// Which writes a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writes {
    /// Through the group-commit writer ([`Store::oldest_write_wait`]).
    Durable,
    /// Spill calls ([`Store::oldest_spill_wait`]).
    Spill,
}

/// What changed since the last reading.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// The oldest write has waited this long: past the limit, first seen.
    Stalled(Duration),
    /// After a report, writes went through again.
    Resumed,
}

/// Both kinds of writes of one store, each reported once per stall.
struct Watchdog {
    stalled_after: Duration,
    durable: Watch,
    spill: Watch,
}

impl Watchdog {
    fn new(stalled_after: Duration) -> Self {
        Watchdog {
            stalled_after,
            durable: Watch::default(),
            spill: Watch::default(),
        }
    }

    /// Reads both waits once and returns what changed.
    fn check(&mut self, store: &Store) -> Vec<(Writes, Report)> {
        let mut reports = Vec::new();
        // Read before the failure: a writer that fails clears its wait and sets its failure
        // in one step, so an empty wait read here is never a failure seen too late.
        let durable = store.oldest_write_wait();
        // A failed store fails its durable writes instead of holding them, and its failure is
        // reported where it happened: a stall reported before is not "over". Spill calls go
        // to the engine directly and can still hang.
        if store.failure().is_none() {
            let report = self.durable.observe(durable, self.stalled_after);
            reports.extend(report.map(|r| (Writes::Durable, r)));
        }
        let report = self
            .spill
            .observe(store.oldest_spill_wait(), self.stalled_after);
        reports.extend(report.map(|r| (Writes::Spill, r)));
        reports
    }
}

/// Remembers whether a stall was reported, so each one is logged once, with its end.
#[derive(Default)]
struct Watch {
    reported: bool,
}

impl Watch {
    fn observe(&mut self, oldest_wait: Option<Duration>, after: Duration) -> Option<Report> {
        let stalled = oldest_wait.filter(|wait| *wait >= after);
        match (stalled, self.reported) {
            (Some(wait), false) => {
                self.reported = true;
                Some(Report::Stalled(wait))
            }
            (None, true) => {
                self.reported = false;
                Some(Report::Resumed)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use lockgate_store::{failpoints, StoreConfig};

    use super::*;

    #[test]
    fn a_stall_is_reported_once_and_so_is_its_end() {
        let mut watch = Watch::default();
        let short = Some(Duration::from_millis(3));
        let long = STALLED_AFTER + Duration::from_secs(1);
        let mut observe = |wait| watch.observe(wait, STALLED_AFTER);
        assert_eq!(observe(None), None);
        assert_eq!(observe(short), None, "a write in progress is no stall");
        assert_eq!(
            observe(Some(STALLED_AFTER)),
            Some(Report::Stalled(STALLED_AFTER))
        );
        assert_eq!(observe(Some(long)), None, "reported once");
        assert_eq!(observe(short), Some(Report::Resumed));
        assert_eq!(observe(None), None);
        assert_eq!(observe(Some(long)), Some(Report::Stalled(long)));
        assert_eq!(observe(None), Some(Report::Resumed));
    }

    /// Short enough for a test, far above what an idle store's writes take.
    const TEST_STALLED_AFTER: Duration = Duration::from_millis(50);

    /// Checks until the watchdog reports something (10 s at most).
    fn next_reports(watchdog: &mut Watchdog, store: &Store) -> Vec<(Writes, Report)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reports = watchdog.check(store);
            if !reports.is_empty() {
                return reports;
            }
            assert!(Instant::now() < deadline, "nothing was reported");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_held(name: &'static str, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !failpoints::held(name, dir) {
            assert!(Instant::now() < deadline, "{name} held nothing");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A spill call that hangs is reported, although the writer has nothing to do (a broker
    /// with transient traffic only), and so is its end.
    #[test]
    fn a_held_spill_call_is_reported_and_so_is_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let mut watchdog = Watchdog::new(TEST_STALLED_AFTER);
        assert_eq!(watchdog.check(&store), []);
        failpoints::arm(failpoints::SPILL_STALL, dir.path());
        let held = {
            let store = store.clone();
            let queue = store.transient_queue_id();
            std::thread::spawn(move || store.discard_spilled(queue, 0..u64::MAX))
        };
        wait_held(failpoints::SPILL_STALL, dir.path());
        let reports = next_reports(&mut watchdog, &store);
        assert!(
            matches!(reports[..], [(Writes::Spill, Report::Stalled(waited))] if waited >= TEST_STALLED_AFTER),
            "{reports:?}"
        );
        assert_eq!(
            store.oldest_write_wait(),
            None,
            "the writer waits on nothing"
        );
        assert_eq!(watchdog.check(&store), [], "reported once");
        failpoints::disarm(failpoints::SPILL_STALL, dir.path());
        held.join().expect("discard").expect("discarded");
        assert_eq!(
            next_reports(&mut watchdog, &store),
            [(Writes::Spill, Report::Resumed)]
        );
    }

    /// A held writer is reported as durable writes waiting, and so is its end.
    #[test]
    fn a_held_writer_is_reported_and_so_is_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let mut watchdog = Watchdog::new(TEST_STALLED_AFTER);
        failpoints::arm(failpoints::STALL, dir.path());
        // A barrier wakes the writer, which then holds before taking the next write.
        drop(store.sync());
        wait_held(failpoints::STALL, dir.path());
        let commit = store.sync();
        let reports = next_reports(&mut watchdog, &store);
        assert!(
            matches!(reports[..], [(Writes::Durable, Report::Stalled(waited))] if waited >= TEST_STALLED_AFTER),
            "{reports:?}"
        );
        failpoints::disarm(failpoints::STALL, dir.path());
        commit.wait_blocking().expect("durable");
        assert_eq!(
            next_reports(&mut watchdog, &store),
            [(Writes::Durable, Report::Resumed)]
        );
    }
}
