//! The version file beside sled's files: the format version and the last commit known to be
//! flushed. It lives outside the database so that a database file that was truncated,
//! damaged or swapped for an older copy is noticed: sled alone recovers whatever prefix of
//! its log it can read, which after damage would be silent loss.

use std::io::Write;
use std::path::Path;

use crate::error::{Result, StoreError};

/// The version file's name.
pub const VERSION_FILE: &str = "lockgate-store.version";

/// What the version file records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VersionFile {
    pub(crate) format: u32,
    /// A commit number that was flushed: the database must hold at least this commit.
    pub(crate) committed: u64,
}

pub(crate) fn read(dir: &Path) -> Result<Option<VersionFile>> {
    let file = dir.join(VERSION_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Open {
                path: file,
                source: Box::new(e),
            })
        }
    };
    let mut lines = text.lines();
    let format = lines
        .next()
        .and_then(|l| l.strip_prefix("lockgate-store format "))
        .and_then(|v| v.trim().parse().ok());
    let committed = lines
        .next()
        .and_then(|l| l.strip_prefix("committed "))
        .and_then(|v| v.trim().parse().ok());
    match (format, committed) {
        (Some(format), Some(committed)) => Ok(Some(VersionFile { format, committed })),
        (Some(format), None) => Ok(Some(VersionFile {
            format,
            committed: 0,
        })),
        _ => Err(StoreError::Corrupt {
            path: file,
            detail: format!("unreadable version file ({:?})", text.trim()),
        }),
    }
}

/// Replaces the version file atomically (write a temporary file, fsync, rename).
pub(crate) fn write(dir: &Path, v: VersionFile) -> Result<()> {
    let file = dir.join(VERSION_FILE);
    let tmp = dir.join(format!("{VERSION_FILE}.tmp"));
    let err = |e: std::io::Error| StoreError::Io {
        path: file.clone(),
        action: "writing the version file",
        source: Box::new(e),
    };
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    write!(
        f,
        "lockgate-store format {}\ncommitted {}\n",
        v.format, v.committed
    )
    .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &file).map_err(err)
}
