//! The disk alarm: free space on the data directory's file system, checked every second.
//!
//! Below `disk.free_limit` the alarm is on and connections that publish stop being read, as
//! for the memory alarm (RabbitMQ's disk alarm); consumers keep going, so acks free space.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

/// How often free space is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Free bytes available to unprivileged users on the file system holding `path`.
///
/// # Errors
/// The file system cannot be queried.
pub fn available_space(path: &std::path::Path) -> std::io::Result<u64> {
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
    tokio::spawn(async move {
        let mut failed_before = false;
        loop {
            let probe = path.clone();
            let free = tokio::task::spawn_blocking(move || available_space(&probe)).await;
            match free {
                Ok(Ok(free)) => {
                    failed_before = false;
                    let low = free < limit;
                    tx.send_if_modified(|alarm| {
                        if *alarm == low {
                            return false;
                        }
                        *alarm = low;
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
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    });
    rx
}
