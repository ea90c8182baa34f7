//! Opening a store: format and integrity checks, then recovery of definitions, queue
//! indexes and counters, and the sweep of what a crash left half done.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Result, StoreError};
use crate::ids::{DefinitionKind, MessageId, QueueId, QUEUE_KIND};
use crate::keys;
use crate::store::{StoreConfig, FORMAT_VERSION};
use crate::version::{self, VersionFile};
use crate::writer::{Shared, Writer};

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) by_key: HashMap<Vec<u8>, QueueId>,
    pub(crate) keys: HashMap<QueueId, Vec<u8>>,
}

/// A definition as recovered: the broker's key and value for one [`DefinitionKind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// Its kind.
    pub kind: DefinitionKind,
    /// The broker's key (e.g. vhost + name).
    pub key: Bytes,
    /// The broker's encoded value.
    pub value: Bytes,
}

/// A durable queue as recovered. Its messages are read with [`crate::Store::queue_index`] and
/// [`crate::Store::page_in`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredQueue {
    /// The id its messages are stored under.
    pub id: QueueId,
    /// The broker's key.
    pub key: Bytes,
    /// The broker's encoded value (arguments, flags).
    pub value: Bytes,
    /// How many messages it holds on disk (persistent ones; ready and unacked before the
    /// restart alike), without walking its index.
    pub messages: u64,
    /// Sequence number of its oldest stored message, if any.
    pub first_seq: Option<u64>,
    /// The sequence number to give its next message (one past the newest stored).
    pub next_seq: u64,
    /// Messages up to this seq were delivered before the restart: they come back with
    /// redelivered = true.
    pub delivered_through: Option<u64>,
}

/// What [`crate::Store::open`] found.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// False after a crash (`kill -9`, power loss): the store was not closed.
    pub clean_shutdown: bool,
    /// Every definition, grouped by kind in [`DefinitionKind::ALL`] order, keys sorted.
    pub definitions: Vec<Definition>,
    /// Every durable queue, by id.
    pub queues: Vec<RecoveredQueue>,
    /// Index entries of queues whose definition was gone (a deletion cut short), removed.
    pub orphans_removed: u64,
    /// Spilled transient messages discarded (transient messages do not survive a restart).
    pub spilled_discarded: u64,
}

/// Everything [`crate::Store::open`] needs to start.
pub(crate) struct Opened {
    pub(crate) path: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) meta: sled::Tree,
    pub(crate) data: sled::Tree,
    pub(crate) spill: sled::Tree,
    pub(crate) shared: Arc<Shared>,
    pub(crate) writer: Writer,
    pub(crate) registry: Registry,
    pub(crate) next_queue: u64,
    pub(crate) next_message: u64,
    pub(crate) recovered_marks: HashMap<QueueId, u64>,
    pub(crate) recovery: Recovery,
}

/// Opens the engine, checks the store and recovers it. Nothing is written before every
/// check passed.
pub(crate) fn open(path: &Path, config: &StoreConfig) -> Result<Opened> {
    let path = path.to_path_buf();
    std::fs::create_dir_all(&path).map_err(|e| StoreError::Open {
        path: path.clone(),
        source: Box::new(e),
    })?;
    let recorded = version::read(&path)?;
    if let Some(v) = recorded {
        if v.format != FORMAT_VERSION && !UPGRADABLE_FORMATS.contains(&v.format) {
            return Err(StoreError::UnsupportedVersion {
                path,
                found: v.format,
                supported: FORMAT_VERSION,
            });
        }
    }
    let db = open_engine(&path, config)?;
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|e| StoreError::io(&path, "opening a tree", e))
    };
    let (meta, data, spill) = (tree("meta")?, tree("data")?, tree("spill")?);
    let io = |action: &'static str| {
        let path = path.as_path();
        move |e| StoreError::io(path, action, e)
    };

    // `Some(false)` for a new store, `Some(true)` for a format 1 or 2 store (upgraded in
    // place: see FORMAT_VERSION), `None` for a current one.
    let upgrade = match meta
        .get(keys::META_FORMAT)
        .map_err(io("reading the format"))?
    {
        None if recorded.is_some() || !data.is_empty() => {
            return Err(StoreError::corrupt(
                &path,
                "the format record is missing: the database file was truncated or replaced, \
                 or this is not a lockgate store",
            ));
        }
        None => Some(false),
        Some(raw) => {
            let found = <[u8; 4]>::try_from(raw.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::corrupt(&path, "the format record is malformed"))?;
            if found != FORMAT_VERSION && !UPGRADABLE_FORMATS.contains(&found) {
                return Err(StoreError::UnsupportedVersion {
                    path,
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            (found != FORMAT_VERSION).then_some(true)
        }
    };
    let commit_seq = data
        .get(keys::COMMIT_SEQ)
        .map_err(io("reading the commit number"))?
        .and_then(|v| keys::u64_at(&v, 0))
        .unwrap_or(0);
    if let Some(v) = recorded {
        if commit_seq < v.committed {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "the database ends at commit {commit_seq} but commit {} was flushed \
                     before: the file was truncated, damaged or replaced by an older copy (if \
                     you restored an older copy on purpose, delete {} to accept it)",
                    v.committed,
                    version::VERSION_FILE
                ),
            ));
        }
    }

    let last_record = data
        .range(keys::message(MessageId(0))..=keys::message(MessageId(u64::MAX)))
        .next_back()
        .transpose()
        .map_err(io("reading message ids"))?
        .and_then(|(k, _)| keys::u64_at(&k, 1))
        .map_or(1, |id| id + 1);
    let recorded_next = data
        .get(keys::NEXT_MESSAGE_ID)
        .map_err(io("reading message ids"))?
        .and_then(|v| keys::u64_at(&v, 0))
        .unwrap_or(1);
    // Ids of acked messages are never handed out again.
    let next_message = last_record.max(recorded_next);

    // Every check passed: from here on the store is ours to change.
    if let Some(legacy) = upgrade {
        let mut batch = sled::Batch::default();
        batch.insert(keys::META_FORMAT, &FORMAT_VERSION.to_be_bytes());
        if legacy {
            // Every message an older format wrote has an id below this one.
            batch.insert(keys::META_LEGACY_BELOW, &next_message.to_be_bytes());
        }
        meta.apply_batch(batch).map_err(io("writing the format"))?;
    }
    let legacy_below = meta
        .get(keys::META_LEGACY_BELOW)
        .map_err(io("reading the format"))?
        .and_then(|v| keys::u64_at(&v, 0))
        .unwrap_or(0);
    let clean_shutdown = meta
        .get(keys::META_CLEAN)
        .map_err(io("reading the shutdown mark"))?
        .is_some_and(|v| v.as_ref() == [1]);
    meta.insert(keys::META_CLEAN, &[0u8])
        .map_err(io("writing the shutdown mark"))?;
    let spilled_discarded = spill
        .iter()
        .keys()
        .filter(|k| k.as_ref().is_ok_and(|k| keys::is_spill_head(k)))
        .count() as u64;
    spill.clear().map_err(io("discarding spilled messages"))?;
    db.flush().map_err(io("flushing"))?;
    if recorded.is_none_or(|v| v.format != FORMAT_VERSION) {
        version::write(
            &path,
            VersionFile {
                format: FORMAT_VERSION,
                committed: recorded.map_or(commit_seq, |v| v.committed),
            },
        )?;
    }

    let shared = Shared::new(path.clone(), config.max_pending_bytes);
    let mut writer = Writer::new(
        Arc::clone(&shared),
        db.clone(),
        data.clone(),
        spill.clone(),
        commit_seq,
    );
    let mut recovery = Recovery {
        clean_shutdown,
        spilled_discarded,
        ..Recovery::default()
    };
    writer.legacy_below = legacy_below;
    writer.set_next_message(next_message);
    let (registry, next_queue) = recover_definitions(&path, &data, &mut recovery)?;
    recover_counters(&path, &data, &mut writer)?;
    recovery.orphans_removed = recover_queues(&path, &data, &mut writer, &mut recovery)?;
    db.flush().map_err(io("flushing"))?;
    let recovered_marks = writer.delivered.clone();
    Ok(Opened {
        path,
        db,
        meta,
        data,
        spill,
        shared,
        writer,
        registry,
        next_queue,
        next_message,
        recovered_marks,
        recovery,
    })
}

/// Opens sled, turning its errors and panics on damaged files into typed errors.
///
/// The engine's background threads can hold the file lock for a moment after a store of
/// this process was dropped, so a lock conflict is retried for up to [`LOCK_WAIT`].
fn open_engine(path: &Path, config: &StoreConfig) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open_engine_once(path, config) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The older formats this build still opens (and upgrades to [`FORMAT_VERSION`]).
const UPGRADABLE_FORMATS: [u32; 2] = [1, 2];

/// Upper bound on the engine's page cache, whatever the configuration asks: its memory comes
/// on top of the broker's memory budget (docs/durability.md, "the fixed overhead").
pub(crate) const MAX_CACHE_CAPACITY: u64 = 32 << 20;

/// How long [`open_engine`] waits for a held lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn open_engine_once(path: &Path, config: &StoreConfig) -> Result<sled::Db> {
    let cfg = sled::Config::new()
        .path(path)
        .cache_capacity(config.cache_capacity.min(MAX_CACHE_CAPACITY))
        .flush_every_ms(config.background_flush_ms);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open()));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
            Err(StoreError::Locked {
                path: path.to_path_buf(),
            })
        }
        Ok(Err(e @ sled::Error::Corruption { .. })) => Err(StoreError::io(path, "opening", e)),
        Ok(Err(sled::Error::Unsupported(detail))) => Err(StoreError::Corrupt {
            path: path.join("conf"),
            detail: format!("the engine refused its configuration: {detail}"),
        }),
        Ok(Err(e)) => Err(StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(e),
        }),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown".into());
            Err(StoreError::corrupt(
                path,
                format!("the engine failed while recovering: {detail}"),
            ))
        }
    }
}

/// Loads definitions and the queue registry. Returns the registry and the next queue id.
fn recover_definitions(
    path: &Path,
    data: &sled::Tree,
    recovery: &mut Recovery,
) -> Result<(Registry, u64)> {
    let io = |e| StoreError::io(path, "reading definitions", e);
    let mut registry = Registry::default();
    let mut by_kind: Vec<Vec<Definition>> = vec![Vec::new(); DefinitionKind::ALL.len()];
    let mut next_queue = data
        .get(keys::NEXT_QUEUE_ID)
        .map_err(io)?
        .and_then(|v| keys::u64_at(&v, 0))
        .unwrap_or(1);
    for item in data.scan_prefix([keys::DEFINITION]) {
        let (key, value) = item.map_err(io)?;
        let tag = *key
            .get(1)
            .ok_or_else(|| StoreError::corrupt(path, "definition key without a kind"))?;
        let broker_key = Bytes::copy_from_slice(&key[2..]);
        if tag == QUEUE_KIND {
            let id = keys::u64_at(&value, 0)
                .ok_or_else(|| StoreError::corrupt(path, "queue definition without an id"))?;
            next_queue = next_queue.max(id + 1);
            registry.by_key.insert(broker_key.to_vec(), QueueId(id));
            registry.keys.insert(QueueId(id), broker_key.to_vec());
            recovery.queues.push(RecoveredQueue {
                id: QueueId(id),
                key: broker_key,
                value: Bytes::copy_from_slice(&value[8..]),
                first_seq: None,
                next_seq: 0,
                delivered_through: None,
                messages: 0,
            });
            continue;
        }
        let slot = DefinitionKind::ALL
            .iter()
            .position(|k| k.tag() == tag)
            .ok_or_else(|| StoreError::corrupt(path, format!("unknown definition kind {tag}")))?;
        by_kind[slot].push(Definition {
            kind: DefinitionKind::ALL[slot],
            key: broker_key,
            value: Bytes::copy_from_slice(&value),
        });
    }
    recovery.definitions = by_kind.into_iter().flatten().collect();
    recovery.queues.sort_by_key(|q| q.id);
    Ok((registry, next_queue))
}

/// Loads the reference counts of shared messages, the delivered watermarks and the
/// per-queue message counts.
fn recover_counters(path: &Path, data: &sled::Tree, writer: &mut Writer) -> Result<()> {
    let io = |e| StoreError::io(path, "reading counters", e);
    for item in data.scan_prefix([keys::REFS]) {
        let (key, value) = item.map_err(io)?;
        let id = keys::u64_at(&key, 1);
        let n = <[u8; 4]>::try_from(value.as_ref())
            .ok()
            .map(u32::from_be_bytes);
        match (id, n) {
            (Some(id), Some(n)) => writer.refs.insert(MessageId(id), n),
            _ => return Err(StoreError::corrupt(path, "malformed reference count")),
        };
    }
    for item in data.scan_prefix([keys::PART]) {
        let (key, _) = item.map_err(io)?;
        let part = <[u8; 4]>::try_from(key.get(9..).unwrap_or_default())
            .ok()
            .map(u32::from_be_bytes);
        match (keys::u64_at(&key, 1), part) {
            (Some(id), Some(part)) => {
                let n = writer.parts.entry(MessageId(id)).or_insert(0);
                *n = (*n).max(part);
            }
            _ => return Err(StoreError::corrupt(path, "malformed message part key")),
        }
    }
    for item in data.scan_prefix([keys::DELIVERED]) {
        let (key, value) = item.map_err(io)?;
        match (keys::u64_at(&key, 1), keys::u64_at(&value, 0)) {
            (Some(q), Some(seq)) => writer.delivered.insert(QueueId(q), seq),
            _ => return Err(StoreError::corrupt(path, "malformed delivered watermark")),
        };
    }
    for item in data.scan_prefix([keys::COUNT]) {
        let (key, value) = item.map_err(io)?;
        match (keys::u64_at(&key, 1), keys::u64_at(&value, 0)) {
            (Some(q), Some(n)) => writer.counts.insert(QueueId(q), n),
            _ => return Err(StoreError::corrupt(path, "malformed message count")),
        };
    }
    Ok(())
}

/// Finds each queue's first and last seq by seeking (no full scan) and sweeps index entries
/// of queues with no definition (a deletion that a crash cut short). Returns entries swept.
fn recover_queues(
    path: &Path,
    data: &sled::Tree,
    writer: &mut Writer,
    recovery: &mut Recovery,
) -> Result<u64> {
    let io = |e| StoreError::io(path, "reading queue indexes", e);
    let known: HashMap<QueueId, usize> = recovery
        .queues
        .iter()
        .enumerate()
        .map(|(i, q)| (q.id, i))
        .collect();
    let mut orphans = Vec::new();
    let mut cursor = Some(0u64);
    while let Some(from) = cursor {
        let first = data
            .range(keys::index(QueueId(from), 0)..=keys::index(QueueId(u64::MAX), u64::MAX))
            .next()
            .transpose()
            .map_err(io)?;
        let Some((key, _)) = first else { break };
        let (Some(queue), Some(first_seq)) = (keys::u64_at(&key, 1), keys::u64_at(&key, 9)) else {
            return Err(StoreError::corrupt(path, "malformed index key"));
        };
        let queue = QueueId(queue);
        match known.get(&queue) {
            Some(&i) => {
                let last = data
                    .range(keys::index(queue, 0)..=keys::index(queue, u64::MAX))
                    .next_back()
                    .transpose()
                    .map_err(io)?
                    .and_then(|(k, _)| keys::u64_at(&k, 9))
                    .unwrap_or(first_seq);
                let q = &mut recovery.queues[i];
                q.first_seq = Some(first_seq);
                q.next_seq = last + 1;
            }
            None => orphans.push(queue),
        }
        cursor = queue.0.checked_add(1);
    }
    for q in &mut recovery.queues {
        q.messages = writer.counts.get(&q.id).copied().unwrap_or(0);
        q.delivered_through = writer.delivered.get(&q.id).copied();
        if let Some(mark) = q.delivered_through {
            q.next_seq = q.next_seq.max(mark + 1);
        }
    }
    let stale_marks: Vec<QueueId> = writer
        .delivered
        .keys()
        .chain(writer.counts.keys())
        .filter(|q| !known.contains_key(q))
        .copied()
        .collect();
    orphans.extend(stale_marks);
    orphans.sort_unstable();
    orphans.dedup();
    let mut removed = 0;
    for queue in orphans {
        removed += writer.delete_queue_entries(queue)?;
        writer.apply_recovered()?;
    }
    Ok(removed)
}
