//! [`Store`]: opening (with format checks and recovery), the write calls that go through the
//! group-commit writer, and the read and spill calls that run on the caller's thread.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::error::{Result, StoreError};
use crate::ids::{DefinitionKind, MessageId, QueueId, StoredRef, QUEUE_KIND};
use crate::in_flight::{InFlight, Running};
use crate::keys;
use crate::metrics::StoreMetrics;
use crate::recovery::{self, Recovery, Registry};
use crate::writer::{next_id, Commit, Op, Shared, Targets};

/// Bytes of spill writes and removals after which the spill calls flush the engine. sled
/// 0.34 reclaims a segment only once its contents were flushed: between its own periodic
/// flushes a queue turning over spilled messages at disk speed left hundreds of MiB of dead
/// segments (and their buffers in memory) behind. Flushing every few MiB keeps both the
/// files and the engine's memory proportional to what is live.
const SPILL_FLUSH_BYTES: u64 = 4 << 20;

/// The on-disk format this build writes. Bump it with any change to the key layout or record
/// encoding; [`Store::open`] refuses any other version, except formats 1 and 2, which it
/// reads and upgrades in place: format 2 added the `P` parts of records longer than 4 KiB
/// (a format 1 store simply has none), format 3 stores a message held by one queue in its
/// index entry instead of under `M` (the `M` records of older stores are read and removed
/// as they were written).
pub const FORMAT_VERSION: u32 = 3;

/// Tunables of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of the engine's page cache (hot records are read from it, not from disk); at
    /// most 32 MiB are used.
    pub cache_capacity: u64,
    /// The engine's own periodic flush, in milliseconds (covers spill writes; persistent
    /// writes are flushed by the group-commit writer regardless). `None` disables it.
    pub background_flush_ms: Option<u64>,
    /// Bytes of persistent message records queued for the writer and not taken by it yet
    /// beyond which [`Store::publish`] waits (blocking its thread) until the writer takes
    /// the queue: without publisher confirms nothing else bounds what a fast publisher
    /// piles up ahead of a slow disk. Removes, definitions and barriers never wait.
    pub max_pending_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_capacity: 32 * 1024 * 1024,
            background_flush_ms: Some(500),
            max_pending_bytes: 64 << 20,
        }
    }
}

/// One index entry of a durable queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Position in the queue.
    pub seq: u64,
    /// The message record.
    pub message: MessageId,
    /// Delivered before the restart (seq ≤ the queue's delivered watermark).
    pub redelivered: bool,
}

/// A message's stored bytes: the broker's header bytes (exchange, routing key, content
/// header as it chooses to encode them) and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    /// The broker's header bytes.
    pub header: Bytes,
    /// The body.
    pub body: Bytes,
}

/// A transient message to spill to disk.
#[derive(Clone, Debug)]
pub struct SpillRecord {
    /// Position in its queue (spilled messages come back in this order).
    pub seq: u64,
    /// The broker's header bytes.
    pub header: Bytes,
    /// The body.
    pub body: Bytes,
}

/// A message read back by [`Store::page_in`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedMessage {
    /// Position in its queue.
    pub seq: u64,
    /// `Some` for a persistent message (still stored until removed), `None` for a spilled
    /// transient one (its spill record is gone once paged in).
    pub message: Option<MessageId>,
    /// Delivered before the restart (persistent messages only).
    pub redelivered: bool,
    /// Header and body.
    pub record: MessageRecord,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    spill: sled::Tree,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    next_message: AtomicU64,
    next_queue: AtomicU64,
    /// Spill bytes written or removed since the spill calls last flushed.
    spill_unflushed: AtomicU64,
    /// The spill calls running now (they bypass the writer, so its wait does not cover them).
    spill_calls: InFlight,
    /// Seq ranges of spilled records a failed [`Store::discard_spilled`] left behind: the
    /// next spill call retries them. A range stays listed until its retry has removed it.
    owed_discards: Mutex<Vec<(QueueId, Range<u64>)>>,
    /// Held while the owed discards are retried: one retry at a time, and spill calls that
    /// find a range owed wait for the retry in flight.
    settling: Mutex<()>,
    queues: Mutex<Registry>,
    /// Delivered watermarks as found at open: what "redelivered" means for recovered entries.
    recovered_marks: HashMap<QueueId, u64>,
}

/// The persistent store. Cheap to clone (one `Arc`); every clone is the same store.
///
/// Blocking: [`Store::open`], [`Store::close`], the reads ([`Store::read_message`],
/// [`Store::queue_index`], [`Store::page_in`]) and the spill calls touch the disk on the
/// caller's thread; call them from `spawn_blocking` or use the `_async` variants. The write
/// calls (`put_*`, `delete_queue`, `publish`, `remove`, `mark_delivered`, `sync`) queue the
/// write and return a [`Commit`] to await; only `publish` can wait, for the writer to take
/// the queue when [`StoreConfig::max_pending_bytes`] of records are pending.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens (or creates) the store in directory `path`, checks its format version, sweeps
    /// what a crash left half done, discards spilled transient messages, and returns what it
    /// recovered. Blocks: use [`Store::open_async`] from async code.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedVersion`] for a store of another format,
    /// [`StoreError::Corrupt`] for unreadable, truncated or foreign files (naming the file),
    /// [`StoreError::Locked`] when another process has it open, [`StoreError::Open`] /
    /// [`StoreError::Io`] for file-system errors.
    pub fn open(path: impl AsRef<Path>, config: &StoreConfig) -> Result<(Store, Recovery)> {
        let opened = recovery::open(path.as_ref(), config)?;
        let path = opened.path;
        let writer = opened.writer;
        let shared = Arc::clone(&opened.shared);
        let handle = std::thread::Builder::new()
            .name("lockgate-store-writer".into())
            .spawn(move || {
                // A panic in the writer must not leave waiters hanging: fail them instead.
                let run = std::panic::AssertUnwindSafe(|| writer.run());
                if std::panic::catch_unwind(run).is_err() {
                    shared.fail(StoreError::Io {
                        path: shared.path.clone(),
                        action: "writing",
                        source: "the writer thread panicked".into(),
                    });
                }
            })
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Box::new(e),
            })?;
        let store = Store {
            inner: Arc::new(Inner {
                path,
                db: opened.db,
                data: opened.data,
                meta: opened.meta,
                spill: opened.spill,
                shared: opened.shared,
                writer: Mutex::new(Some(handle)),
                next_message: AtomicU64::new(opened.next_message),
                next_queue: AtomicU64::new(opened.next_queue),
                spill_unflushed: AtomicU64::new(0),
                spill_calls: InFlight::default(),
                owed_discards: Mutex::new(Vec::new()),
                settling: Mutex::new(()),
                queues: Mutex::new(opened.registry),
                recovered_marks: opened.recovered_marks,
            }),
        };
        Ok((store, opened.recovery))
    }

    /// [`Store::open`] on a blocking thread.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open_async(path: PathBuf, config: StoreConfig) -> Result<(Store, Recovery)> {
        let shown = path.clone();
        tokio::task::spawn_blocking(move || Store::open(path, &config))
            .await
            .map_err(|e| StoreError::Open {
                path: shown,
                source: Box::new(e),
            })?
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    // ----- definitions -------------------------------------------------------------------

    /// Stores (or replaces) a definition. Await the commit before answering declare-ok.
    pub fn put_definition(&self, kind: DefinitionKind, key: &[u8], value: &[u8]) -> Commit {
        self.inner.shared.submit([Op::PutDefinition {
            key: keys::definition(kind.tag(), key),
            value: value.to_vec(),
        }])
    }

    /// Removes a definition (absent is fine).
    pub fn remove_definition(&self, kind: DefinitionKind, key: &[u8]) -> Commit {
        self.inner.shared.submit([Op::RemoveDefinition {
            key: keys::definition(kind.tag(), key),
        }])
    }

    /// Stores a durable queue's definition and returns its id (the same id when `key` is
    /// already stored: the value is replaced).
    pub fn put_queue(&self, key: &[u8], value: &[u8]) -> (QueueId, Commit) {
        let mut registry = lock(&self.inner.queues);
        let id = match registry.by_key.get(key) {
            Some(id) => *id,
            None => {
                let id = QueueId(next_id(&self.inner.next_queue));
                registry.by_key.insert(key.to_vec(), id);
                registry.keys.insert(id, key.to_vec());
                id
            }
        };
        let mut stored = Vec::with_capacity(8 + value.len());
        stored.extend_from_slice(&id.0.to_be_bytes());
        stored.extend_from_slice(value);
        // Submitted under the registry lock so that the id counter written is never lower
        // than an id already handed out.
        let commit = self.inner.shared.submit([Op::PutQueue {
            key: keys::definition(QUEUE_KIND, key),
            value: stored,
            next_queue_id: id.0.max(self.next_queue_hint()) + 1,
        }]);
        (id, commit)
    }

    fn next_queue_hint(&self) -> u64 {
        self.inner
            .next_queue
            .load(Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// Deletes a durable queue: its definition, every stored message of it (a message shared
    /// with other queues stays for them), its watermark and its spilled messages. Removes
    /// submitted later for this queue are ignored. Unknown ids are a no-op.
    pub fn delete_queue(&self, id: QueueId) -> Commit {
        let key = {
            let mut registry = lock(&self.inner.queues);
            let key = registry.keys.remove(&id);
            if let Some(k) = &key {
                registry.by_key.remove(k);
            }
            key
        };
        match key {
            Some(key) => self.inner.shared.submit([Op::DeleteQueue {
                id,
                key: keys::definition(QUEUE_KIND, &key),
            }]),
            None => self.inner.shared.submit([]),
        }
    }

    /// An id for a non-durable queue that spills: it never collides with a durable queue's
    /// id. Nothing is written.
    pub fn transient_queue_id(&self) -> QueueId {
        QueueId(next_id(&self.inner.next_queue))
    }

    // ----- persistent messages -----------------------------------------------------------

    /// Stores a persistent message once, with one index entry per `(queue, seq)` target (the
    /// record is freed when the last of them is removed). Seqs must grow per queue in the
    /// queue's order; the broker assigns them under its queue lock. Confirm the publish when
    /// the commit completes.
    ///
    /// Blocks only when [`StoreConfig::max_pending_bytes`] of records wait for the writer,
    /// until the writer takes them (one commit at most: it takes everything queued at once).
    pub fn publish(
        &self,
        header: Bytes,
        body: Bytes,
        targets: &[(QueueId, u64)],
    ) -> (MessageId, Commit) {
        let id = MessageId(next_id(&self.inner.next_message));
        let commit = self.inner.shared.submit_publish(Op::Publish {
            id,
            header,
            body,
            targets: Targets::new(targets),
        });
        (id, commit)
    }

    /// Removes one stored copy (ack, reject without requeue, purge, TTL, overflow drop). Call
    /// it once per [`StoredRef`]: the record is freed with its last copy and never comes
    /// back once the commit completes.
    pub fn remove(&self, stored: StoredRef) -> Commit {
        self.inner.shared.submit([Op::Remove(stored)])
    }

    /// [`Store::remove`] for many copies in one submission (multiple acks, purge).
    pub fn remove_many(&self, stored: impl IntoIterator<Item = StoredRef>) -> Commit {
        self.inner.shared.submit(stored.into_iter().map(Op::Remove))
    }

    /// Removes every stored message of `queue` with seq ≥ `from_seq`, persistent (index
    /// entries, records freed with their last copy) and spilled: purging the part of a queue
    /// that lives only on disk, whose message ids the broker does not hold. The caller
    /// must not hold unacked deliveries in that range (they would be removed too).
    pub fn remove_from(&self, queue: QueueId, from_seq: u64) -> Commit {
        self.inner
            .shared
            .submit([Op::RemoveFrom { queue, from_seq }])
    }

    /// Records that the message at `seq` of `queue` was delivered. Only the highest seq per
    /// queue is kept (a watermark, written with the next batch); after a restart, messages
    /// at or below it come back redelivered. Nobody needs to wait on it.
    pub fn mark_delivered(&self, queue: QueueId, seq: u64) {
        self.inner.shared.mark_delivered(queue, seq);
    }

    /// A commit covering everything submitted so far (nothing new is written).
    pub fn sync(&self) -> Commit {
        self.inner.shared.submit([])
    }

    /// Every commit ticket up to this one is durable.
    pub fn durable_ticket(&self) -> u64 {
        self.inner.shared.durable_ticket()
    }

    /// How long the oldest write that is not durable yet has waited for the writer: a few
    /// milliseconds at most while the disk keeps up, `None` when nothing waits. Growing
    /// without bound means writes are stuck (a hung disk, or the engine). Spill calls do not
    /// go through the writer: see [`Store::oldest_spill_wait`].
    pub fn oldest_write_wait(&self) -> Option<std::time::Duration> {
        self.inner.shared.oldest_write_wait()
    }

    /// How long the oldest spill call still running ([`Store::spill`], [`Store::page_in`],
    /// [`Store::discard_spilled`], from any thread) has run, `None` when none runs: what
    /// [`Store::oldest_write_wait`] is for the writer. These calls go to the engine
    /// directly, not through the writer: on a broker with transient traffic only, a hung
    /// disk shows here and not there. The age may include the runs of calls that started
    /// just before the oldest one (see `in_flight.rs`): milliseconds on a healthy disk.
    pub fn oldest_spill_wait(&self) -> Option<std::time::Duration> {
        self.inner.spill_calls.oldest()
    }

    /// Waits until `ticket` is durable (see [`Commit::ticket`]).
    ///
    /// # Errors
    /// As [`Commit::wait`].
    pub async fn wait_durable(&self, ticket: u64) -> Result<()> {
        self.inner.shared.wait_durable(ticket).await
    }

    /// The writer's counters.
    pub fn metrics(&self) -> StoreMetrics {
        self.inner.shared.metrics.snapshot()
    }

    /// The writer's failure, if it stopped (every later commit fails with it).
    pub fn failure(&self) -> Option<StoreError> {
        self.inner.shared.failure()
    }

    // ----- reads -------------------------------------------------------------------------

    /// Reads the stored copy `stored` of a persistent message (`None` once it was removed).
    /// Blocks (usually served from the page cache).
    ///
    /// # Errors
    /// [`StoreError::Io`] on a read failure, [`StoreError::Corrupt`] on a malformed record
    /// or an index entry whose record is missing.
    pub fn read_message(&self, stored: StoredRef) -> Result<Option<MessageRecord>> {
        let path = &self.inner.path;
        let key = keys::index(stored.queue, stored.seq);
        let Some(value) = self
            .inner
            .data
            .get(key)
            .map_err(|e| StoreError::io(path, "reading a message", e))?
        else {
            return Ok(None);
        };
        self.entry_record(stored.queue, stored.seq, &value)
            .map(|(_, record)| Some(record))
    }

    /// The message of index entry `value` (at `queue`, `seq`) and its record.
    fn entry_record(
        &self,
        queue: QueueId,
        seq: u64,
        value: &[u8],
    ) -> Result<(MessageId, MessageRecord)> {
        let path = &self.inner.path;
        let entry = keys::decode_index(value).ok_or_else(|| {
            StoreError::corrupt(
                path,
                format!("queue {} seq {seq}: short index entry", queue.0),
            )
        })?;
        let id = entry.message;
        let record = match entry.inline {
            Some(first) => self.assemble(id, first, value.len())?,
            None => {
                let first = self
                    .inner
                    .data
                    .get(keys::message(id))
                    .map_err(|e| StoreError::io(path, "reading a message", e))?
                    .ok_or_else(|| {
                        StoreError::corrupt(
                            path,
                            format!(
                                "queue {} seq {seq} points to missing message {}",
                                queue.0, id.0
                            ),
                        )
                    })?;
                self.assemble(id, &first, first.len())?
            }
        };
        Ok((id, record))
    }

    /// A record from its first part and the continuation parts of message `id`. Only a
    /// record whose first value (`value_len` bytes) is a whole part has continuation parts.
    fn assemble(&self, id: MessageId, first: &[u8], value_len: usize) -> Result<MessageRecord> {
        let path = &self.inner.path;
        let mut raw = first.to_vec();
        if value_len >= keys::RECORD_PART {
            let parts = keys::part(id, 1)..=keys::part(id, u32::MAX);
            for part in self.inner.data.range(parts) {
                let (_, part) = part.map_err(|e| StoreError::io(path, "reading a message", e))?;
                raw.extend_from_slice(&part);
            }
        }
        keys::decode_record(Bytes::from(raw))
            .map(|(header, body)| MessageRecord { header, body })
            .ok_or_else(|| StoreError::corrupt(path, format!("message {} is malformed", id.0)))
    }

    /// The index of a durable queue in seq order, read lazily: one entry per stored message,
    /// without its body. What the broker walks at startup to rebuild a queue.
    pub fn queue_index(&self, queue: QueueId) -> QueueIndex {
        QueueIndex {
            iter: self
                .inner
                .data
                .range(keys::index(queue, 0)..=keys::index(queue, u64::MAX)),
            mark: self.inner.recovered_marks.get(&queue).copied(),
            path: self.inner.path.clone(),
        }
    }

    /// Reads up to `max` messages of `queue` with seq ≥ `from_seq`, in seq order, merging
    /// its persistent messages (index + record) and its spilled transient ones. Spilled
    /// records returned are removed from disk (the caller holds them now); persistent ones
    /// stay until [`Store::remove`]. Blocks.
    ///
    /// Spill a persistent message's body from memory only after its publish commit
    /// completed: before that, its index entry may not be written yet.
    ///
    /// # Errors
    /// [`StoreError::Io`] on read failures, [`StoreError::Corrupt`] for malformed records or
    /// an index entry whose record is missing.
    pub fn page_in(&self, queue: QueueId, from_seq: u64, max: usize) -> Result<Vec<PagedMessage>> {
        let _running = self.spill_call();
        let path = &self.inner.path;
        let io = |e| StoreError::io(path, "paging messages in", e);
        let mut persistent = self
            .inner
            .data
            .range(keys::index(queue, from_seq)..=keys::index(queue, u64::MAX))
            .peekable();
        let mut spilled = self
            .inner
            .spill
            .range(keys::spill(queue, from_seq)..=keys::spill(queue, u64::MAX))
            .peekable();
        let mark = self.inner.recovered_marks.get(&queue).copied();
        let mut out = Vec::with_capacity(max.min(1024));
        let mut taken = sled::Batch::default();
        let mut taken_bytes = 0u64;
        let seq_of = |key: &[u8], at| {
            keys::u64_at(key, at).ok_or_else(|| StoreError::corrupt(path, "short key"))
        };
        while out.len() < max {
            let p = match persistent.peek() {
                Some(Ok((k, _))) => Some(seq_of(k, 9)?),
                Some(Err(e)) => return Err(io(e.clone())),
                None => None,
            };
            let s = match spilled.peek() {
                Some(Ok((k, _))) => Some(seq_of(k, 8)?),
                Some(Err(e)) => return Err(io(e.clone())),
                None => None,
            };
            let take_spilled = match (p, s) {
                (None, None) => break,
                (Some(p), Some(s)) => s < p,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if take_spilled {
                let Some(Ok((key, first))) = spilled.next() else {
                    break;
                };
                let seq = seq_of(&key, 8)?;
                if !keys::is_spill_head(&key) {
                    return Err(StoreError::corrupt(
                        path,
                        format!("spilled message {seq} lacks its first part"),
                    ));
                }
                taken_bytes += first.len() as u64;
                taken.remove(key);
                let mut raw = first.to_vec();
                while let Some(Ok((key, _))) = spilled.peek() {
                    if keys::is_spill_head(key) {
                        break;
                    }
                    let Some(Ok((key, part))) = spilled.next() else {
                        break;
                    };
                    taken_bytes += part.len() as u64;
                    raw.extend_from_slice(&part);
                    taken.remove(key);
                }
                let record = keys::decode_record(Bytes::from(raw))
                    .map(|(header, body)| MessageRecord { header, body })
                    .ok_or_else(|| {
                        StoreError::corrupt(path, format!("spilled message {seq} is malformed"))
                    })?;
                out.push(PagedMessage {
                    seq,
                    message: None,
                    redelivered: false,
                    record,
                });
            } else {
                let Some(Ok((key, value))) = persistent.next() else {
                    break;
                };
                let seq = seq_of(&key, 9)?;
                let (id, record) = self.entry_record(queue, seq, &value)?;
                out.push(PagedMessage {
                    seq,
                    message: Some(id),
                    redelivered: mark.is_some_and(|m| seq <= m),
                    record,
                });
            }
        }
        self.inner.spill.apply_batch(taken).map_err(io)?;
        self.spilled_bytes(taken_bytes)?;
        Ok(out)
    }

    /// [`Store::page_in`] on a blocking thread.
    ///
    /// # Errors
    /// As [`Store::page_in`].
    pub async fn page_in_async(
        &self,
        queue: QueueId,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<PagedMessage>> {
        let store = self.clone();
        self.blocking(move || store.page_in(queue, from_seq, max))
            .await
    }

    // ----- spill -------------------------------------------------------------------------

    /// Writes transient messages of `queue` to disk so the broker can drop their bodies from
    /// memory; [`Store::page_in`] brings them back in seq order. Not flushed (they do not
    /// survive a restart anyway). Returns the bytes written. Blocks briefly.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the write fails (disk full): keep the messages in memory.
    pub fn spill(&self, queue: QueueId, records: &[SpillRecord]) -> Result<u64> {
        let _running = self.spill_call();
        let mut batch = sled::Batch::default();
        let mut bytes = 0u64;
        for r in records {
            let record = keys::encode_record(&r.header, &r.body);
            bytes += record.len() as u64;
            let mut parts = record.chunks(keys::RECORD_PART);
            batch.insert(&keys::spill(queue, r.seq), parts.next().unwrap_or_default());
            for (n, part) in (1u32..).zip(parts) {
                batch.insert(&keys::spill_part(queue, r.seq, n), part);
            }
        }
        self.inner
            .spill
            .apply_batch(batch)
            .map_err(|e| StoreError::io(&self.inner.path, "spilling messages", e))?;
        self.spilled_bytes(bytes)?;
        Ok(bytes)
    }

    /// [`Store::spill`] on a blocking thread.
    ///
    /// # Errors
    /// As [`Store::spill`].
    pub async fn spill_async(&self, queue: QueueId, records: Vec<SpillRecord>) -> Result<u64> {
        let store = self.clone();
        self.blocking(move || store.spill(queue, &records)).await
    }

    /// Drops spilled transient messages of `queue` with seq in `seqs` (purge, TTL, a deleted
    /// non-durable queue: pass `0..u64::MAX`). Returns how many were dropped. Blocks.
    ///
    /// A discard that fails is owed, not forgotten: every later spill call (of any queue)
    /// first retries the discards owed, until the retry succeeds (and the broker's spill task
    /// retries them on its tick: [`Store::retry_owed_discards`]), and the next start clears
    /// the whole spill tree anyway. So the records of a purged queue neither fill the disk for
    /// the rest of the run nor come back after a restart.
    ///
    /// # Errors
    /// [`StoreError::Io`] on failure (the range is then owed, as above).
    pub fn discard_spilled(&self, queue: QueueId, seqs: Range<u64>) -> Result<u64> {
        let _running = self.spill_call();
        self.remove_spilled(queue, seqs.clone()).inspect_err(|_| {
            lock(&self.inner.owed_discards).push((queue, seqs));
        })
    }

    /// [`Store::discard_spilled`] on a blocking thread.
    ///
    /// # Errors
    /// As [`Store::discard_spilled`].
    pub async fn discard_spilled_async(&self, queue: QueueId, seqs: Range<u64>) -> Result<u64> {
        let store = self.clone();
        self.blocking(move || store.discard_spilled(queue, seqs))
            .await
    }

    /// How many failed discards are owed (see [`Store::discard_spilled`]).
    pub fn owed_discards(&self) -> usize {
        lock(&self.inner.owed_discards).len()
    }

    /// Retries the discards owed, as a spill call; returns how many are still owed. Blocks.
    /// The broker's spill task calls it on its own tick, so that an idle broker, which makes
    /// no spill call, does not keep the records of a purged queue until its next spill call.
    pub fn retry_owed_discards(&self) -> usize {
        let _running = self.spill_call();
        self.owed_discards()
    }

    /// [`Store::retry_owed_discards`] on a blocking thread.
    ///
    /// # Errors
    /// The blocking task failed.
    pub async fn retry_owed_discards_async(&self) -> Result<usize> {
        let store = self.clone();
        self.blocking(move || Ok(store.retry_owed_discards())).await
    }

    /// Removes the spilled records of `queue` with seq in `seqs`; returns how many messages.
    fn remove_spilled(&self, queue: QueueId, seqs: Range<u64>) -> Result<u64> {
        let io = |e| StoreError::io(&self.inner.path, "discarding spilled messages", e);
        #[cfg(feature = "failpoints")]
        crate::failpoints::check(crate::failpoints::DISCARD, &self.inner.path)?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let mut bytes = 0;
        for item in self
            .inner
            .spill
            .range(keys::spill(queue, seqs.start)..keys::spill(queue, seqs.end))
        {
            let (key, value) = item.map_err(io)?;
            bytes += value.len() as u64;
            n += u64::from(keys::is_spill_head(&key));
            batch.remove(key);
        }
        self.inner.spill.apply_batch(batch).map_err(io)?;
        self.spilled_bytes(bytes)?;
        Ok(n)
    }

    /// Retries the discards owed (see [`Store::discard_spilled`]); those failing again stay
    /// owed. A range leaves the list only once it is removed, and a spill call that finds one
    /// listed waits for the retry in flight: were it to go on meanwhile, a page-in could
    /// return records the retry has not removed yet. Nothing owed (the rule): no wait.
    fn settle_owed_discards(&self) {
        if lock(&self.inner.owed_discards).is_empty() {
            return;
        }
        let _settling = lock(&self.inner.settling);
        let owed = lock(&self.inner.owed_discards).clone();
        let settled: Vec<_> = owed
            .into_iter()
            .filter(|(queue, seqs)| self.remove_spilled(*queue, seqs.clone()).is_ok())
            .collect();
        lock(&self.inner.owed_discards).retain(|owed| !settled.contains(owed));
    }

    /// Counts a spill call as running (for [`Store::oldest_spill_wait`]) until the guard is
    /// dropped, after retrying the discards owed: before the call reads or writes anything,
    /// so that a page-in never returns a message whose discard failed.
    fn spill_call(&self) -> Running<'_> {
        let running = self.inner.spill_calls.start();
        #[cfg(feature = "failpoints")]
        crate::failpoints::hold(crate::failpoints::SPILL_STALL, &self.inner.path);
        self.settle_owed_discards();
        running
    }

    /// Counts spill traffic and flushes the engine every [`SPILL_FLUSH_BYTES`] of it.
    fn spilled_bytes(&self, bytes: u64) -> Result<()> {
        let before = self
            .inner
            .spill_unflushed
            .fetch_add(bytes, Ordering::Relaxed);
        if before + bytes < SPILL_FLUSH_BYTES {
            return Ok(());
        }
        self.inner.spill_unflushed.store(0, Ordering::Relaxed);
        self.inner
            .db
            .flush()
            .map(drop)
            .map_err(|e| StoreError::io(&self.inner.path, "flushing spilled messages", e))
    }

    /// Bytes the engine uses on disk (all trees). Blocks: it asks the file system for the
    /// size of the engine's files, which on a volume that stopped answering never returns.
    ///
    /// # Errors
    /// [`StoreError::Io`] on failure.
    pub fn size_on_disk(&self) -> Result<u64> {
        #[cfg(feature = "failpoints")]
        crate::failpoints::hold(crate::failpoints::SIZE_STALL, &self.inner.path);
        self.inner
            .db
            .size_on_disk()
            .map_err(|e| StoreError::io(&self.inner.path, "measuring the database", e))
    }

    // ----- shutdown ----------------------------------------------------------------------

    /// Writes and flushes everything queued, stops the writer, marks the shutdown clean.
    /// Later writes fail with [`StoreError::Closed`]. Dropping the last clone closes too
    /// (ignoring errors, and blocking the dropping thread: close explicitly in async code).
    /// Blocks: use [`Store::close_async`] from async code.
    ///
    /// # Errors
    /// The writer's failure, or [`StoreError::Io`] when the final flush fails.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }

    /// [`Store::close`] on a blocking thread.
    ///
    /// # Errors
    /// As [`Store::close`].
    pub async fn close_async(&self) -> Result<()> {
        let store = self.clone();
        self.blocking(move || store.close()).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Io {
                path: self.inner.path.clone(),
                action: "running a blocking task",
                source: Box::new(e),
            })?
    }
}

impl Inner {
    fn close(&self) -> Result<()> {
        let Some(handle) = lock(&self.writer).take() else {
            return Ok(());
        };
        self.shared.close();
        // The writer returns after draining everything queued, or after a failure (then the
        // clean mark stays unwritten and the next start is treated as a crash recovery).
        let _ = handle.join();
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        let io = |e| StoreError::io(&self.path, "closing", e);
        self.meta.insert(keys::META_CLEAN, &[1u8]).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Errors were already reported to every waiter; nothing else can be done here.
        let _ = self.close();
    }
}

/// Iterator over a durable queue's index entries in seq order ([`Store::queue_index`]).
pub struct QueueIndex {
    iter: sled::Iter,
    mark: Option<u64>,
    path: PathBuf,
}

impl Iterator for QueueIndex {
    type Item = Result<IndexEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.iter.next()?;
        Some(
            item.map_err(|e| StoreError::io(&self.path, "reading a queue index", e))
                .and_then(
                    |(key, value)| match (keys::u64_at(&key, 9), keys::u64_at(&value, 0)) {
                        (Some(seq), Some(message)) => Ok(IndexEntry {
                            seq,
                            message: MessageId(message),
                            redelivered: self.mark.is_some_and(|m| seq <= m),
                        }),
                        _ => Err(StoreError::corrupt(&self.path, "malformed index entry")),
                    },
                ),
        )
    }
}
