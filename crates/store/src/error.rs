//! [`StoreError`]: every failure names the store's path and keeps its cause.

use std::path::PathBuf;
use std::sync::Arc;

/// The boxed cause of a failure inside the database engine (its error type stays private).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in the store. Every variant names the file or directory involved and,
/// where the operator can act, says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened: permissions, missing directory, engine error.
    #[error("store {path}: cannot open the database: {source}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// The engine's or the file system's error.
        #[source]
        source: Cause,
    },
    /// Another process (or another `Store` in this process) holds the database lock.
    #[error(
        "store {path}: the database is locked by another process; stop the other lockgate \
         or give this one another data directory"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The files exist but cannot be read back: torn, truncated, overwritten or not a store.
    #[error(
        "store {path} is corrupt: {detail}; lockgate refuses to start on it. Move the directory away and \
         restore it from a backup, or delete it to start empty (its durable queues, \
         definitions and persistent messages are then lost)"
    )]
    Corrupt {
        /// The file found corrupt (the database file, or the directory when unknown).
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The store was written by a build with another on-disk format.
    #[error(
        "store {path} has format version {found}, this build reads version {supported}; run \
         the lockgate release that wrote it, or move the directory away to start empty"
    )]
    UnsupportedVersion {
        /// The store directory.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A read, write or flush failed while the store was running (disk full, I/O error).
    #[error("store {path}: {action} failed: {source}")]
    Io {
        /// The store directory.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// The engine's or the file system's error.
        #[source]
        source: Cause,
    },
    /// An earlier write failed; the writer refuses further writes so that nothing is
    /// confirmed out of order. Restart the broker once the cause is fixed.
    #[error("store {path}: writes stopped after an earlier failure: {cause}")]
    Failed {
        /// The store directory.
        path: PathBuf,
        /// The failure that stopped the writer.
        cause: Arc<StoreError>,
    },
    /// The store was closed.
    #[error("store {path} is closed")]
    Closed {
        /// The store directory.
        path: PathBuf,
    },
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, action: &'static str, source: sled::Error) -> Self {
        match source {
            sled::Error::Corruption { at, .. } => StoreError::Corrupt {
                path: path.join(DB_FILE),
                detail: match at {
                    Some(at) => format!("the engine found a bad record at {at:?} while {action}"),
                    None => format!("the engine found a bad record while {action}"),
                },
            },
            other => StoreError::Io {
                path: path.to_path_buf(),
                action,
                source: Box::new(other),
            },
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.join(DB_FILE),
            detail: detail.into(),
        }
    }
}

/// The engine's data file inside the store directory.
pub(crate) const DB_FILE: &str = "db";

/// Shorthand for results in this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
