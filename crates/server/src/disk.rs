//! The data directory's disk figures, and the disk alarm that follows them.
//!
//! One probe measures the free space of the data directory's file system (`statvfs`) and the
//! store's size on disk (the engine's file sizes). Two readers share it: the disk alarm, which
//! asks every second, and `/metrics`, which asks at each scrape. On a volume that stopped
//! answering (a hung disk, a dead network mount) those calls never return, so neither reader
//! waits on them: a probe runs on the blocking pool, one at a time (a hung one holds one
//! thread, however many ticks and scrapes come), and a reader that finds one running joins it.
//!
//! The alarm: below `disk.free_limit` it is on and connections that publish stop being read,
//! as for the memory alarm (RabbitMQ's disk alarm); consumers keep going, so acks free space.
//! A probe that has not returned after [`CHECK_WAIT`] is logged. Meanwhile the alarm keeps its
//! last state, as RabbitMQ's does (its disk monitor asks `df` synchronously, so a hung `df`
//! holds it and the alarm where they were): free space that cannot be read is not evidence
//! that the disk is full, and raising the alarm would block every publisher, including
//! those whose messages never touch the disk, for as long as a slow mount stalls. A volume
//! that really stopped answering stops the store's writes, and their backpressure and the
//! memory alarm block publishers then. The monitor keeps ticking while a probe hangs, so it
//! still ends with its receiver.
//!
//! A scrape waits for the probe until [`PROBE_WAIT`] after it started. Past that, it shows the
//! figures of the last probe that returned, flagged stale (`lockgate_disk_probe_stale 1`, and
//! their age keeps growing); once a probe has run longer than the wait, scrapes answer at once.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lockgate_store::Store;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the alarm asks for free space.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A probe that has not returned after this long is logged (RabbitMQ gives its disk-free
/// command 5 s on Windows, where it has a time limit).
const CHECK_WAIT: Duration = Duration::from_secs(5);

/// How long after a probe started a scrape waits for it. A healthy disk answers within
/// milliseconds; Prometheus gives up on a scrape after 10 s by default.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Free bytes available to unprivileged users on the file system holding `path`.
///
/// # Errors
/// The file system cannot be queried.
pub fn available_space(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What one probe measured.
#[derive(Clone, Copy, Debug)]
pub struct DiskFigures {
    /// Free bytes on the data directory's file system; `None` when it could not be read.
    pub free: Option<u64>,
    /// Bytes of the store's files; `None` without a store, or when they could not be read.
    pub store_size: Option<u64>,
    /// When the probe returned.
    pub measured: Instant,
}

/// The figures a scrape shows.
#[derive(Clone, Copy, Debug)]
pub struct DiskReading {
    /// The last probe that returned; `None` before any did.
    pub figures: Option<DiskFigures>,
    /// The probe running for this scrape did not return within the wait: the figures are
    /// from an earlier one.
    pub stale: bool,
}

/// What a probe calls on the blocking pool: (free space, store size).
type Measure = dyn Fn() -> (io::Result<u64>, Option<u64>) + Send + Sync;

/// Measures the disk figures, one probe at a time (see the module doc).
pub struct DiskProbe {
    /// The data directory, for the logs.
    path: PathBuf,
    measure: Box<Measure>,
    /// The figures of the last probe that returned; a probe returning sends new ones.
    figures: watch::Sender<Option<DiskFigures>>,
    /// When the probe running now started; `None` while none runs.
    running: Mutex<Option<Instant>>,
    /// The last probe could not read the free space (logged once until it can again).
    failing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DiskProbe {
    /// The probe of `data_dir` and `store`.
    pub fn new(data_dir: PathBuf, store: Option<Store>) -> Arc<Self> {
        let dir = data_dir.clone();
        Self::measuring(
            data_dir,
            Box::new(move || {
                let free = available_space(&dir);
                let size = store.as_ref().and_then(|s| s.size_on_disk().ok());
                (free, size)
            }),
        )
    }

    fn measuring(path: PathBuf, measure: Box<Measure>) -> Arc<Self> {
        Arc::new(DiskProbe {
            path,
            measure,
            figures: watch::Sender::new(None),
            running: Mutex::new(None),
            failing: AtomicBool::new(false),
        })
    }

    /// Starts a probe unless one runs; returns when the running one started. Subscribe
    /// first: its figures then count as new.
    fn start(self: &Arc<Self>) -> Instant {
        *lock(&self.running).get_or_insert_with(|| {
            let probe = Arc::clone(self);
            // Not awaited: a probe on a volume that stopped answering never returns.
            drop(tokio::task::spawn_blocking(move || probe.measure()));
            Instant::now()
        })
    }

    /// The figures for a scrape: fresh when the probe returns before `wait` after it started,
    /// else the last ones, flagged stale.
    pub async fn read(self: &Arc<Self>, wait: Duration) -> DiskReading {
        let mut figures = self.figures.subscribe();
        let started = self.start();
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
        let (free, store_size) = (self.measure)();
        let free = match free {
            Ok(free) => {
                self.failing.store(false, Ordering::Relaxed);
                Some(free)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, path = %self.path.display(), "cannot read free disk space");
                }
                None
            }
        };
        // Free before sending: a reader that comes in between starts the next probe, and has
        // subscribed already, so these figures reach it.
        *lock(&self.running) = None;
        self.figures.send_replace(Some(DiskFigures {
            free,
            store_size,
            measured: Instant::now(),
        }));
    }
}

/// Starts the disk alarm on `probe`: `alarm` is true while free space is below `limit`
/// bytes. A limit of 0 disables it (the alarm never goes on).
pub fn spawn_monitor(probe: Arc<DiskProbe>, limit: u64, alarm: watch::Sender<bool>) {
    if limit > 0 {
        tokio::spawn(monitor(probe, limit, CHECK_EVERY, alarm));
    }
}

/// Asks `probe` for free space every `every` and sets the alarm; ends when every receiver of
/// `alarm` is gone (see the module doc for a probe that does not return).
async fn monitor(probe: Arc<DiskProbe>, limit: u64, every: Duration, alarm: watch::Sender<bool>) {
    let mut figures = probe.figures.subscribe();
    let mut hung = false;
    loop {
        let started = probe.start();
        tokio::select! {
            changed = figures.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(every) => {
                if !hung && started.elapsed() >= CHECK_WAIT {
                    hung = true;
                    warn!(path = %probe.path.display(), waited_s = started.elapsed().as_secs(), "the free disk space check has not returned (a hung or overloaded volume): the disk alarm keeps its state until it does");
                }
                continue;
            }
            () = alarm.closed() => return,
        }
        if hung {
            hung = false;
            info!(path = %probe.path.display(), took_s = started.elapsed().as_secs(), "the free disk space check returned again");
        }
        let free = figures.borrow_and_update().and_then(|f| f.free);
        if let Some(free) = free {
            let low = free < limit;
            alarm.send_if_modified(|on| {
                if *on == low {
                    return false;
                }
                *on = low;
                if low {
                    warn!(free, limit, path = %probe.path.display(), "disk alarm: free space below disk.free_limit, blocking publishers");
                } else {
                    warn!(free, limit, "disk alarm cleared");
                }
                true
            });
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = alarm.closed() => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Condvar;

    use lockgate_store::{failpoints, StoreConfig};
    use tokio::task::JoinHandle;

    use super::*;

    /// A volume for the monitor: it reports `free` bytes, or holds the check while `hang`.
    #[derive(Default)]
    struct Volume {
        state: Mutex<VolumeState>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct VolumeState {
        free: u64,
        hang: bool,
        /// Checks started.
        checks: usize,
        /// Checks held right now.
        held: usize,
    }

    impl Volume {
        fn check(&self) -> io::Result<u64> {
            let mut st = self.state.lock().expect("volume");
            st.checks += 1;
            st.held += 1;
            self.changed.notify_all();
            while st.hang {
                st = self.changed.wait(st).expect("volume");
            }
            st.held -= 1;
            Ok(st.free)
        }

        fn set(&self, free: u64, hang: bool) {
            let mut st = self.state.lock().expect("volume");
            st.free = free;
            st.hang = hang;
            self.changed.notify_all();
        }

        /// Waits until a check is held (on a blocking thread: the runtime goes on).
        async fn until_held(self: &Arc<Self>) {
            let volume = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let mut st = volume.state.lock().expect("volume");
                while st.held == 0 {
                    st = volume.changed.wait(st).expect("volume");
                }
            })
            .await
            .expect("waiting for a held check");
        }

        fn checks(&self) -> usize {
            self.state.lock().expect("volume").checks
        }

        fn held(&self) -> bool {
            self.state.lock().expect("volume").held > 0
        }
    }

    /// Lets a held check return when the test ends, also when an assertion fails: the
    /// test's runtime waits for its blocking threads.
    struct Release(Arc<Volume>);

    impl Drop for Release {
        fn drop(&mut self) {
            self.0.set(0, false);
        }
    }

    const LIMIT: u64 = 1000;

    fn start(volume: &Arc<Volume>) -> (JoinHandle<()>, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let v = Arc::clone(volume);
        let probe =
            DiskProbe::measuring(PathBuf::from("/fake"), Box::new(move || (v.check(), None)));
        let task = tokio::spawn(monitor(probe, LIMIT, CHECK_EVERY, tx));
        (task, rx)
    }

    /// While the volume stops answering, the alarm keeps its state and no second check
    /// starts however many ticks pass; once the check returns, the alarm follows it again.
    #[tokio::test(start_paused = true)]
    async fn a_hung_check_keeps_the_alarm_and_starts_no_other() {
        let volume = Arc::new(Volume::default());
        let _release = Release(Arc::clone(&volume));
        volume.set(LIMIT - 1, false);
        let (_task, mut rx) = start(&volume);
        rx.wait_for(|on| *on).await.expect("alarm on");
        volume.set(LIMIT - 1, true);
        // Paused time, advanced by hand (a blocking call running stops it advancing itself):
        // the monitor's next tick starts the check that hangs.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !volume.held() {
            assert!(Instant::now() < deadline, "no check was held");
            tokio::time::advance(CHECK_EVERY).await;
        }
        let checks = volume.checks();
        // Each step lets the monitor tick.
        for _ in 0..600 {
            tokio::time::advance(CHECK_EVERY).await;
        }
        assert_eq!(volume.checks(), checks, "a second check started");
        assert!(
            *rx.borrow(),
            "the alarm changed while the volume did not answer"
        );
        volume.set(LIMIT, false);
        rx.wait_for(|on| !*on).await.expect("alarm off");
    }

    /// The monitor does not wait on a hung check: it ends once its receivers are gone.
    #[tokio::test(start_paused = true)]
    async fn the_monitor_ends_with_its_receiver_while_a_check_hangs() {
        let volume = Arc::new(Volume::default());
        let _release = Release(Arc::clone(&volume));
        volume.set(LIMIT, true);
        let (task, rx) = start(&volume);
        volume.until_held().await;
        drop(rx);
        for _ in 0..10 {
            if task.is_finished() {
                break;
            }
            tokio::time::advance(CHECK_EVERY).await;
        }
        assert!(task.is_finished(), "the monitor waits on the hung check");
    }

    /// The alarm and the scrapes read one probe: while it hangs, neither starts another (a hung
    /// volume holds one thread), and both get its figures once it returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_alarm_and_scrapes_share_one_probe() {
        let volume = Arc::new(Volume::default());
        let _release = Release(Arc::clone(&volume));
        volume.set(LIMIT - 1, true);
        let v = Arc::clone(&volume);
        let probe =
            DiskProbe::measuring(PathBuf::from("/fake"), Box::new(move || (v.check(), None)));
        let (tx, mut rx) = watch::channel(false);
        tokio::spawn(monitor(Arc::clone(&probe), LIMIT, CHECK_EVERY, tx));
        volume.until_held().await;
        for _ in 0..10 {
            assert!(probe.read(Duration::ZERO).await.stale);
        }
        assert_eq!(volume.checks(), 1, "a second probe started");
        assert!(
            !*rx.borrow(),
            "the alarm changed while the volume did not answer"
        );
        volume.set(LIMIT - 1, false);
        let fresh = probe.read(Duration::from_secs(30)).await;
        assert_eq!(
            fresh.figures.and_then(|f| f.free),
            Some(LIMIT - 1),
            "{fresh:?}"
        );
        rx.wait_for(|on| *on).await.expect("alarm on");
    }

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
