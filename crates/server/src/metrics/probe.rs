//! The figures of `/metrics` that ask the file system: the free space of the data directory's
//! file system (`statvfs`) and the store's size on disk (the engine's file sizes).
//!
//! On a volume that stopped answering (a hung disk, a dead network mount) those calls never
//! return, and a scrape waiting for them would never answer either, exactly when the operator
//! needs the rest. So they are measured off the request path: a scrape starts a probe on the
//! blocking pool unless one is still running, and waits for it until [`PROBE_WAIT`] after that
//! probe started. Past that, it answers with the figures of the last probe that returned,
//! flagged stale (`lockgate_disk_probe_stale 1`, and their age keeps growing). One probe runs
//! at a time: a hung one holds one thread, however many scrapes come, and once a probe has
//! run longer than the wait, scrapes answer at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lockgate_store::Store;
use tokio::sync::watch;

/// How long after a probe started a scrape waits for it. A healthy disk answers within
/// milliseconds; Prometheus gives up on a scrape after 10 s by default.
pub(super) const PROBE_WAIT: Duration = Duration::from_secs(1);

/// What one probe measured.
#[derive(Clone, Copy, Debug)]
pub(super) struct DiskFigures {
    /// Free bytes on the data directory's file system; `None` when it could not be read.
    pub free: Option<u64>,
    /// Bytes of the store's files; `None` without a store, or when they could not be read.
    pub store_size: Option<u64>,
    /// When the probe returned.
    pub measured: Instant,
}

/// The figures a scrape shows.
#[derive(Clone, Copy, Debug)]
pub(super) struct DiskReading {
    /// The last probe that returned; `None` before any did.
    pub figures: Option<DiskFigures>,
    /// The probe running for this scrape did not return within the wait: the figures are
    /// from an earlier one.
    pub stale: bool,
}

/// Measures the disk figures, one probe at a time (see the module doc).
pub(super) struct DiskProbe {
    data_dir: PathBuf,
    store: Option<Store>,
    /// The figures of the last probe that returned; a probe returning sends new ones.
    figures: watch::Sender<Option<DiskFigures>>,
    /// When the probe running now started; `None` while none runs.
    running: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DiskProbe {
    pub(super) fn new(data_dir: PathBuf, store: Option<Store>) -> Arc<Self> {
        Arc::new(DiskProbe {
            data_dir,
            store,
            figures: watch::Sender::new(None),
            running: Mutex::new(None),
        })
    }

    /// The figures for a scrape: fresh when the probe returns before `wait` after it started,
    /// else the last ones, flagged stale.
    pub(super) async fn read(self: &Arc<Self>, wait: Duration) -> DiskReading {
        // Subscribed before a probe can start: its figures count as new.
        let mut figures = self.figures.subscribe();
        let started = *lock(&self.running).get_or_insert_with(|| {
            let probe = Arc::clone(self);
            // Not awaited: a probe on a volume that stopped answering never returns.
            drop(tokio::task::spawn_blocking(move || probe.measure()));
            Instant::now()
        });
        let deadline = tokio::time::Instant::from_std(started + wait);
        let fresh = matches!(
            tokio::time::timeout_at(deadline, figures.changed()).await,
            Ok(Ok(()))
        );
        let latest = *figures.borrow();
        DiskReading {
            figures: latest,
            stale: !fresh,
        }
    }

    /// One probe, on a blocking thread.
    fn measure(&self) {
        let free = crate::disk::available_space(&self.data_dir).ok();
        let store_size = self.store.as_ref().and_then(|s| s.size_on_disk().ok());
        // Free before sending: a scrape that comes in between starts the next probe, and has
        // subscribed already, so these figures reach it.
        *lock(&self.running) = None;
        self.figures.send_replace(Some(DiskFigures {
            free,
            store_size,
            measured: Instant::now(),
        }));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use lockgate_store::{failpoints, StoreConfig};

    use super::*;

    /// Holds the store's size measurement of the store at `dir` until dropped (also when an
    /// assertion fails: the runtime of a test waits for its blocking threads).
    pub(crate) struct Stall<'a>(&'a std::path::Path);

    impl<'a> Stall<'a> {
        pub(crate) fn arm(dir: &'a std::path::Path) -> Self {
            failpoints::arm(failpoints::SIZE_STALL, dir);
            Stall(dir)
        }
    }

    impl Drop for Stall<'_> {
        fn drop(&mut self) {
            failpoints::disarm(failpoints::SIZE_STALL, self.0);
        }
    }

    /// However many scrapes come while a probe hangs, it stays the only one: they neither
    /// start another nor wait once it has run past the wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_probe_runs_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let probe = DiskProbe::new(dir.path().to_path_buf(), Some(store));
        let stall = Stall::arm(dir.path());
        let first = probe.read(Duration::ZERO).await;
        assert!(first.stale && first.figures.is_none(), "{first:?}");
        let started = lock(&probe.running).expect("a probe runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !failpoints::held(failpoints::SIZE_STALL, dir.path()) {
            assert!(Instant::now() < deadline, "the probe was not held");
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..10 {
            assert!(probe.read(Duration::ZERO).await.stale);
        }
        assert_eq!(*lock(&probe.running), Some(started), "the same probe runs");
        drop(stall);
        let fresh = probe.read(Duration::from_secs(30)).await;
        assert!(!fresh.stale, "{fresh:?}");
        let figures = fresh.figures.expect("figures");
        assert!(figures.free.is_some() && figures.store_size.is_some());
    }
}
