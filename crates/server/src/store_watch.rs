//! The store watchdog: tells the operator when writes have waited on the store far longer
//! than a disk takes (a disk that stopped answering, or the storage engine stuck), and when
//! they move again.
//!
//! While writes wait, persistent publishes hold their publisher confirms and queues declared
//! or deleted hold their replies: clients see a broker that stopped answering some calls and
//! not others. The wait itself is `lockgate_store_oldest_write_seconds` in /metrics; this
//! task puts it in the log once it passes [`STALLED_AFTER`].

use std::time::Duration;

use lockgate_store::Store;
use tracing::{error, warn};

/// How often the wait is read (one lock of the writer's queue).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// A write waiting this long is reported. A healthy store makes a write durable within
/// milliseconds, and within a few seconds on a disk saturated by other work.
const STALLED_AFTER: Duration = Duration::from_secs(30);

/// Starts the watchdog for `store`; it runs as long as the runtime.
pub fn spawn(store: Store) {
    tokio::spawn(async move {
        let mut watch = Watch::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            if store.failure().is_some() {
                // Nothing waits on a failed store (its writes fail), and its failure is
                // reported where it happened: a stall reported before is not "over".
                return;
            }
            match watch.observe(store.oldest_write_wait()) {
                Some(Report::Stalled(waited)) => error!(
                    waited_s = waited.as_secs(),
                    path = %store.path().display(),
                    "store writes have not become durable for {}s: persistent publishes and their confirms wait; \
                     check the disk (a backtrace of the broker shows a stuck engine)",
                    waited.as_secs()
                ),
                Some(Report::Resumed) => warn!("store writes are durable again"),
                None => {}
            }
        }
    });
}

/// What changed since the last reading.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// The oldest write has waited this long: past [`STALLED_AFTER`], first seen.
    Stalled(Duration),
    /// After a report, writes went through again.
    Resumed,
}

/// Remembers whether a stall was reported, so each one is logged once, with its end.
#[derive(Default)]
struct Watch {
    reported: bool,
}

impl Watch {
    fn observe(&mut self, oldest_write_wait: Option<Duration>) -> Option<Report> {
        let stalled = oldest_write_wait.filter(|wait| *wait >= STALLED_AFTER);
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
    use super::*;

    #[test]
    fn a_stall_is_reported_once_and_so_is_its_end() {
        let mut watch = Watch::default();
        let short = Some(Duration::from_millis(3));
        let long = STALLED_AFTER + Duration::from_secs(1);
        assert_eq!(watch.observe(None), None);
        assert_eq!(
            watch.observe(short),
            None,
            "a write in progress is no stall"
        );
        assert_eq!(
            watch.observe(Some(STALLED_AFTER)),
            Some(Report::Stalled(STALLED_AFTER))
        );
        assert_eq!(watch.observe(Some(long)), None, "reported once");
        assert_eq!(watch.observe(short), Some(Report::Resumed));
        assert_eq!(watch.observe(None), None);
        assert_eq!(watch.observe(Some(long)), Some(Report::Stalled(long)));
        assert_eq!(watch.observe(None), Some(Report::Resumed));
    }
}
