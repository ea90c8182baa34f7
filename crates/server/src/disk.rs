//! The disk alarm: free space on the data directory's file system, checked every second.
//!
//! Below `disk.free_limit` the alarm is on and connections that publish stop being read, as
//! for the memory alarm (RabbitMQ's disk alarm); consumers keep going, so acks free space.
//!
//! The check (`statvfs`) runs on the blocking pool and never returns on a volume that stopped
//! answering (a hung disk, a dead network mount). The monitor does not wait on it: one check
//! runs at a time, the monitor keeps ticking while it hangs (so a hung check holds one
//! blocking thread, not one per tick, and the monitor still ends with its receiver), and a
//! check that has not returned after [`CHECK_WAIT`] is logged. Meanwhile the alarm keeps its
//! last state, as RabbitMQ's does (its disk monitor asks `df` synchronously, so a hung `df`
//! holds it and the alarm where they were): free space that cannot be read is not evidence
//! that the disk is full, and raising the alarm would block every publisher, including
//! those whose messages never touch the disk, for as long as a slow mount stalls. A volume
//! that really stopped answering stops the store's writes, and their backpressure and the
//! memory alarm block publishers then. `/metrics` shows the same hang
//! (`lockgate_disk_probe_stale`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often free space is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A check that has not returned after this long is logged (RabbitMQ gives its disk-free
/// command 5 s on Windows, where it has a time limit).
const CHECK_WAIT: Duration = Duration::from_secs(5);

/// Free bytes available to unprivileged users on the file system holding `path`.
///
/// # Errors
/// The file system cannot be queried.
pub fn available_space(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Starts the monitor; the receiver is true while free space is below `limit` bytes.
/// A limit of 0 disables it (the alarm never goes on).
pub fn spawn_monitor(path: PathBuf, limit: u64) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    if limit == 0 {
        return rx;
    }
    let probe = path.clone();
    tokio::spawn(monitor(
        move || available_space(&probe),
        path,
        limit,
        CHECK_EVERY,
        tx,
    ));
    rx
}

/// Checks free space with `measure` every `every` and sets the alarm; ends when every
/// receiver of `alarm` is gone (see the module doc for a check that does not return).
async fn monitor<F>(
    measure: F,
    path: PathBuf,
    limit: u64,
    every: Duration,
    alarm: watch::Sender<bool>,
) where
    F: Fn() -> io::Result<u64> + Send + Sync + 'static,
{
    let measure = Arc::new(measure);
    let mut failed_before = false;
    let mut pending: Option<(JoinHandle<io::Result<u64>>, Instant)> = None;
    let mut hung = false;
    loop {
        let (check, started) = pending.get_or_insert_with(|| {
            let measure = Arc::clone(&measure);
            (
                tokio::task::spawn_blocking(move || measure()),
                Instant::now(),
            )
        });
        let started = *started;
        let free = tokio::select! {
            free = &mut *check => free,
            () = tokio::time::sleep(every) => {
                if !hung && started.elapsed() >= CHECK_WAIT {
                    hung = true;
                    warn!(path = %path.display(), waited_s = started.elapsed().as_secs(), "the free disk space check has not returned (a hung or overloaded volume): the disk alarm keeps its state until it does");
                }
                continue;
            }
            () = alarm.closed() => return,
        };
        pending = None;
        if hung {
            hung = false;
            info!(path = %path.display(), took_s = started.elapsed().as_secs(), "the free disk space check returned again");
        }
        match free {
            Ok(Ok(free)) => {
                failed_before = false;
                let low = free < limit;
                alarm.send_if_modified(|on| {
                    if *on == low {
                        return false;
                    }
                    *on = low;
                    if low {
                        warn!(free, limit, path = %path.display(), "disk alarm: free space below disk.free_limit, blocking publishers");
                    } else {
                        warn!(free, limit, "disk alarm cleared");
                    }
                    true
                });
            }
            Ok(Err(e)) if !failed_before => {
                failed_before = true;
                warn!(error = %e, path = %path.display(), "cannot read free disk space");
            }
            Ok(Err(_)) => {}
            Err(e) => debug!(error = %e, "disk check task failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = alarm.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

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
        let task = tokio::spawn(monitor(
            move || v.check(),
            PathBuf::from("/fake"),
            LIMIT,
            CHECK_EVERY,
            tx,
        ));
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
}
