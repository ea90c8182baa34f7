//! Fault injection for tests (feature `failpoints`): make the writer fail for one store.
//!
//! A failpoint is armed for a store directory, so tests running in parallel do not see each
//! other's faults.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Result, StoreError};

/// Fails the next batch before anything of it is written.
pub const APPLY: &str = "apply";
/// Fails the flush after a batch was written (the batch is in memory, not confirmed).
pub const FLUSH: &str = "flush";

/// Panics in the writer while it applies a batch.
pub const PANIC: &str = "panic";

/// Holds the writer before it takes the next batch, until disarmed (writes pile up).
pub const STALL: &str = "stall";

static ARMED: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

/// Stores whose writer is held by [`STALL`] right now.
static STALLED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Arms failpoint `name` for the store at `path` until [`disarm`].
pub fn arm(name: &'static str, path: &Path) {
    let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    armed.push((name, path.to_path_buf()));
}

/// Disarms failpoint `name` for the store at `path`.
pub fn disarm(name: &'static str, path: &Path) {
    let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    armed.retain(|(n, p)| !(*n == name && p == path));
}

/// True while the writer of the store at `path` is held by [`STALL`] (it takes nothing).
pub fn stalled(path: &Path) -> bool {
    let stalled = STALLED.lock().unwrap_or_else(|e| e.into_inner());
    stalled.iter().any(|p| p == path)
}

/// Holds the calling writer while [`STALL`] is armed for `path`.
pub(crate) fn stall(path: &Path) {
    if !armed(STALL, path) {
        return;
    }
    STALLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
    while armed(STALL, path) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    STALLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

pub(crate) fn armed(name: &'static str, path: &Path) -> bool {
    let armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    armed.iter().any(|(n, p)| *n == name && p == path)
}

pub(crate) fn check(name: &'static str, path: &Path) -> Result<()> {
    let armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    if armed.iter().any(|(n, p)| *n == name && p == path) {
        return Err(StoreError::Io {
            path: path.to_path_buf(),
            action: name,
            source: format!("failpoint {name} triggered").into(),
        });
    }
    Ok(())
}
