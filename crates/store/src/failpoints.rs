//! Fault injection for tests (feature `failpoints`): make the writer or the discards of
//! spilled messages fail for one store, or hold its writer, its spill calls or its size
//! measurement.
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

/// Holds every spill call (spill, page-in, discard) as it starts, until disarmed: a call
/// counted as running that does not return, as on a hung disk.
pub const SPILL_STALL: &str = "spill-stall";

/// Fails every removal of spilled messages ([`crate::Store::discard_spilled`], and the retries
/// of the discards that failed before) before anything is removed.
pub const DISCARD: &str = "discard";

/// Holds [`crate::Store::size_on_disk`] as it starts, until disarmed: the engine measuring
/// its files on a volume that stopped answering.
pub const SIZE_STALL: &str = "size-stall";

static ARMED: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

/// Threads held right now: by which failpoint, for which store.
static HELD: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

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

/// True while a thread of the store at `path` is held by failpoint `name` ([`STALL`]: the
/// writer, which takes nothing; [`SPILL_STALL`]: a spill call; [`SIZE_STALL`]: a size
/// measurement).
pub fn held(name: &'static str, path: &Path) -> bool {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.iter().any(|(n, p)| *n == name && p == path)
}

/// Holds the calling thread while failpoint `name` is armed for `path`.
pub(crate) fn hold(name: &'static str, path: &Path) {
    if !armed(name, path) {
        return;
    }
    let entry = (name, path.to_path_buf());
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(entry.clone());
    while armed(name, path) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    // One entry per held thread: several spill calls can be held at once.
    if let Some(at) = held.iter().position(|e| *e == entry) {
        held.swap_remove(at);
    }
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
