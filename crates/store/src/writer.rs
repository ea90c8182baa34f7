//! The group-commit writer: one dedicated thread owns every write to the data tree.
//!
//! Callers push an [`Op`] onto a shared pending list under a short mutex and get a ticket
//! (a counter incremented under the same lock, so ticket order is list order). The writer
//! wakes, takes the whole list, applies it (in sled batches, each op atomic), calls `flush`
//! (fsync) once, then publishes "durable up to ticket N": every [`Commit`] with a ticket ≤ N
//! completes at once. While it flushes, new writes pile up and become the next batch, so
//! the number of fsyncs per second stays bounded however many publishers there are.
//!
//! Only this thread writes the data tree, which lets it keep the reference counts of shared
//! messages, the per-queue message counts and the delivered watermarks in memory without
//! read-modify-write races.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::{Result, StoreError};
use crate::ids::{MessageId, QueueId, StoredRef};
use crate::keys;
use crate::metrics::Metrics;
use crate::store::FORMAT_VERSION;
use crate::version::{self, VersionFile};

/// Ops per sled batch within one group commit.
const SUB_BATCH_OPS: usize = 64;

/// How often the writer records its latest flushed commit in the version file.
const VERSION_FILE_EVERY: Duration = Duration::from_secs(1);

/// One write, applied by the writer thread in the order it was queued.
pub(crate) enum Op {
    PutDefinition {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveDefinition {
        key: Vec<u8>,
    },
    PutQueue {
        key: Vec<u8>,
        value: Vec<u8>,
        next_queue_id: u64,
    },
    DeleteQueue {
        id: QueueId,
        key: Vec<u8>,
    },
    Publish {
        id: MessageId,
        header: Bytes,
        body: Bytes,
        targets: Vec<(QueueId, u64)>,
    },
    Remove(StoredRef),
    RemoveFrom {
        queue: QueueId,
        from_seq: u64,
    },
    Delivered {
        queue: QueueId,
        seq: u64,
    },
    /// Nothing to write: completes once everything queued before it is flushed.
    Barrier,
}

struct Pending {
    ops: Vec<Op>,
    last_ticket: u64,
    closing: bool,
    /// Bytes of message records in `ops` (publishes wait while it is over the limit).
    record_bytes: u64,
}

/// What is durable: every ticket up to `ticket`, unless the writer failed.
#[derive(Clone, Default)]
pub(crate) struct Durable {
    ticket: u64,
    failed: Option<Arc<StoreError>>,
}

/// State shared by callers and the writer thread.
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Notified when the writer takes the pending ops (publishes waiting for room).
    taken: Condvar,
    max_pending_bytes: u64,
    durable: Mutex<Durable>,
    durable_changed: Condvar,
    durable_watch: watch::Sender<Durable>,
    failed: AtomicBool,
    pub(crate) metrics: Metrics,
}

/// Locks a mutex, ignoring poisoning: the data behind these locks stays consistent because
/// no code panics while holding them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(path: PathBuf, max_pending_bytes: u64) -> Arc<Self> {
        Arc::new(Shared {
            path,
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                last_ticket: 0,
                closing: false,
                record_bytes: 0,
            }),
            wake: Condvar::new(),
            taken: Condvar::new(),
            max_pending_bytes,
            durable: Mutex::new(Durable::default()),
            durable_changed: Condvar::new(),
            durable_watch: watch::Sender::new(Durable::default()),
            failed: AtomicBool::new(false),
            metrics: Metrics::default(),
        })
    }

    /// Queues ops for the writer and returns the commit covering all of them.
    pub(crate) fn submit(self: &Arc<Self>, ops: impl IntoIterator<Item = Op>) -> Commit {
        let ops: Vec<Op> = ops.into_iter().collect();
        let record_bytes: u64 = ops.iter().map(Op::record_bytes).sum();
        let mut pending = lock(&self.pending);
        // Backpressure: a publish waits while the writer has not taken what is queued.
        let full = |p: &Pending| {
            record_bytes > 0 && p.record_bytes >= self.max_pending_bytes && !p.closing
        };
        if full(&pending) {
            self.metrics.record_backpressure();
        }
        while full(&pending) {
            pending = self.taken.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        pending.record_bytes += record_bytes;
        if pending.closing {
            return Commit {
                ticket: Ticket::Closed,
                shared: Arc::clone(self),
            };
        }
        let before = pending.ops.len();
        pending.ops.extend(ops);
        let added = (pending.ops.len() - before) as u64;
        pending.last_ticket += added.max(1);
        if added == 0 {
            pending.ops.push(Op::Barrier);
        }
        let ticket = pending.last_ticket;
        let wake = before == 0;
        drop(pending);
        if wake {
            self.wake.notify_one();
        }
        Commit {
            ticket: Ticket::At(ticket),
            shared: Arc::clone(self),
        }
    }

    /// Asks the writer to drain what is queued and stop; later submissions fail.
    pub(crate) fn close(&self) {
        lock(&self.pending).closing = true;
        self.wake.notify_one();
        self.taken.notify_all();
    }

    pub(crate) fn durable_ticket(&self) -> u64 {
        lock(&self.durable).ticket
    }

    fn set_durable(&self, ticket: u64) {
        let snapshot = {
            let mut d = lock(&self.durable);
            d.ticket = ticket;
            d.clone()
        };
        self.durable_changed.notify_all();
        self.durable_watch.send_replace(snapshot);
    }

    pub(crate) fn set_failed(&self, error: StoreError) {
        self.failed.store(true, Ordering::Release);
        let snapshot = {
            let mut d = lock(&self.durable);
            d.failed = Some(Arc::new(error));
            d.clone()
        };
        self.durable_changed.notify_all();
        self.durable_watch.send_replace(snapshot);
    }

    pub(crate) fn failure(&self) -> Option<StoreError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.durable)
            .failed
            .clone()
            .map(|cause| StoreError::Failed {
                path: self.path.clone(),
                cause,
            })
    }

    fn outcome(&self, ticket: u64, state: &Durable) -> Option<Result<()>> {
        if state.ticket >= ticket {
            Some(Ok(()))
        } else {
            state.failed.clone().map(|cause| {
                Err(StoreError::Failed {
                    path: self.path.clone(),
                    cause,
                })
            })
        }
    }

    pub(crate) async fn wait_durable(&self, ticket: u64) -> Result<()> {
        let mut rx = self.durable_watch.subscribe();
        let state = rx
            .wait_for(|d| d.ticket >= ticket || d.failed.is_some())
            .await
            .map_err(|_| StoreError::Closed {
                path: self.path.clone(),
            })?
            .clone();
        self.outcome(ticket, &state).unwrap_or(Ok(()))
    }

    pub(crate) fn wait_durable_blocking(&self, ticket: u64) -> Result<()> {
        let mut d = lock(&self.durable);
        loop {
            if let Some(outcome) = self.outcome(ticket, &d) {
                return outcome;
            }
            d = self
                .durable_changed
                .wait(d)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

enum Ticket {
    At(u64),
    Closed,
}

/// Completes when the writes it covers are flushed to disk. Send the publisher confirm (or
/// the declare-ok of a durable entity) only after it completes with `Ok`.
///
/// Dropping a `Commit` does not cancel the write.
#[must_use = "a Commit tells when the write is durable; wait on it before confirming"]
pub struct Commit {
    ticket: Ticket,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ticket {
            Ticket::At(t) => f.debug_tuple("Commit").field(&t).finish(),
            Ticket::Closed => f.write_str("Commit(closed)"),
        }
    }
}

impl Commit {
    /// The ticket: tickets grow in submission order and a flush makes every ticket up to
    /// [`crate::Store::durable_ticket`] durable, so a server can confirm a whole run of
    /// publishes with one `basic.ack multiple=true`. `None` when the store was closed.
    pub fn ticket(&self) -> Option<u64> {
        match self.ticket {
            Ticket::At(t) => Some(t),
            Ticket::Closed => None,
        }
    }

    /// Waits until the writes are flushed. Does not block the async worker.
    ///
    /// # Errors
    /// [`StoreError::Failed`] when the batch (or an earlier one) could not be written or
    /// flushed, [`StoreError::Closed`] when the store was closed before the write was queued.
    pub async fn wait(self) -> Result<()> {
        match self.ticket {
            Ticket::At(t) => self.shared.wait_durable(t).await,
            Ticket::Closed => Err(self.closed()),
        }
    }

    /// Like [`Commit::wait`], blocking the calling thread (never call it on an async worker).
    ///
    /// # Errors
    /// As [`Commit::wait`].
    pub fn wait_blocking(self) -> Result<()> {
        match self.ticket {
            Ticket::At(t) => self.shared.wait_durable_blocking(t),
            Ticket::Closed => Err(self.closed()),
        }
    }

    fn closed(&self) -> StoreError {
        self.shared.failure().unwrap_or_else(|| StoreError::Closed {
            path: self.shared.path.clone(),
        })
    }
}

impl Op {
    /// Bytes of message record this op writes (what backpressure counts).
    fn record_bytes(&self) -> u64 {
        match self {
            Op::Publish { header, body, .. } => (header.len() + body.len()) as u64,
            _ => 0,
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) db: sled::Db,
    pub(crate) data: sled::Tree,
    pub(crate) spill: sled::Tree,
    /// Reference counts of messages held by more than one queue (absent = 1).
    pub(crate) refs: HashMap<MessageId, u32>,
    /// Highest delivered seq per queue, persisted under `W` + queue id.
    pub(crate) delivered: HashMap<QueueId, u64>,
    /// Continuation parts (`P` keys) of message records longer than one part.
    pub(crate) parts: HashMap<MessageId, u32>,
    /// Index entries per queue, persisted under `C` + queue id.
    pub(crate) counts: HashMap<QueueId, u64>,
    /// Queues deleted while running: late removes and publishes for them are ignored, so a
    /// message shared with a deleted queue is not released twice. Ids are never reused
    /// within a process.
    pub(crate) dead: HashSet<QueueId>,
    /// One past the highest message id written (persisted under `N`).
    pub(crate) next_message: u64,
    /// Number of the latest batch flushed (also stored under `S` in each batch).
    commit_seq: u64,
    /// When `commit_seq` was last written to the version file.
    version_written: Instant,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        db: sled::Db,
        data: sled::Tree,
        spill: sled::Tree,
        commit_seq: u64,
    ) -> Self {
        Writer {
            shared,
            db,
            data,
            spill,
            refs: HashMap::new(),
            parts: HashMap::new(),
            delivered: HashMap::new(),
            counts: HashMap::new(),
            next_message: 0,
            dead: HashSet::new(),
            commit_seq,
            version_written: Instant::now(),
        }
    }

    /// Records the latest flushed commit outside the database (see `version.rs`).
    fn write_version_file(&mut self) -> Result<()> {
        self.version_written = Instant::now();
        version::write(
            &self.shared.path,
            VersionFile {
                format: FORMAT_VERSION,
                committed: self.commit_seq,
            },
        )
    }

    /// The thread's loop: take everything pending, apply, flush, publish the ticket.
    pub(crate) fn run(mut self) {
        loop {
            #[cfg(feature = "failpoints")]
            crate::failpoints::stall(&self.shared.path);
            let (ops, ticket) = {
                let mut pending = lock(&self.shared.pending);
                while pending.ops.is_empty() && !pending.closing {
                    pending = self
                        .shared
                        .wake
                        .wait(pending)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if pending.ops.is_empty() {
                    drop(pending);
                    // Closing after a clean drain: record the exact last commit.
                    if let Err(e) = self.write_version_file() {
                        self.shared.set_failed(e);
                    }
                    return;
                }
                pending.record_bytes = 0;
                self.shared.taken.notify_all();
                (std::mem::take(&mut pending.ops), pending.last_ticket)
            };
            let started = Instant::now();
            let count = ops.len();
            let outcome = self.apply(ops).and_then(|bytes| {
                #[cfg(feature = "failpoints")]
                crate::failpoints::check(crate::failpoints::FLUSH, &self.shared.path)?;
                self.db
                    .flush()
                    .map_err(|e| StoreError::io(&self.shared.path, "flushing a batch", e))?;
                Ok(bytes)
            });
            match outcome {
                Ok(bytes) => {
                    self.commit_seq += 1;
                    self.shared
                        .metrics
                        .record_batch(count as u64, bytes, started.elapsed());
                    self.shared.set_durable(ticket);
                }
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
            // After the waiters were released: the version file only needs to lag behind.
            if self.version_written.elapsed() >= VERSION_FILE_EVERY {
                if let Err(e) = self.write_version_file() {
                    self.fail(e);
                    return;
                }
            }
        }
    }

    fn fail(&self, error: StoreError) {
        self.shared.set_failed(error);
        lock(&self.shared.pending).closing = true;
        self.shared.taken.notify_all();
    }

    /// Applies ops in order, in sled batches of at most [`SUB_BATCH_OPS`] whole ops (also
    /// split before a queue deletion or range removal, which must see what came before
    /// them). Returns the bytes of message records written.
    fn apply(&mut self, ops: Vec<Op>) -> Result<u64> {
        #[cfg(feature = "failpoints")]
        crate::failpoints::check(crate::failpoints::APPLY, &self.shared.path)?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0usize;
        let mut bytes = 0u64;
        for op in ops {
            // sled's memory use grows steeply with the size of one batch (a 10,000-write
            // batch peaks above 1 GiB), so a group is applied in sub-batches; each op stays
            // whole inside one of them, which is the atomicity recovery relies on (a message
            // record with its index entries). Durability still comes from the one flush.
            if in_batch >= SUB_BATCH_OPS {
                self.commit_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
            in_batch += 1;
            match op {
                Op::PutDefinition { key, value } => batch.insert(key, value),
                Op::RemoveDefinition { key } => batch.remove(key),
                Op::PutQueue {
                    key,
                    value,
                    next_queue_id,
                } => {
                    batch.insert(key, value);
                    batch.insert(keys::NEXT_QUEUE_ID, &next_queue_id.to_be_bytes());
                }
                Op::DeleteQueue { id, key } => {
                    self.commit_batch(std::mem::take(&mut batch))?;
                    batch.remove(key);
                    self.delete_queue_entries(id, &mut batch)?;
                    self.dead.insert(id);
                }
                Op::Publish {
                    id,
                    header,
                    body,
                    mut targets,
                } => {
                    targets.retain(|(q, _)| !self.dead.contains(q));
                    if targets.is_empty() {
                        continue;
                    }
                    self.next_message = self.next_message.max(id.0 + 1);
                    let record = keys::encode_record(&header, &body);
                    bytes += record.len() as u64;
                    let mut parts = record.chunks(keys::RECORD_PART);
                    batch.insert(&keys::message(id), parts.next().unwrap_or_default());
                    let mut n = 0;
                    for part in parts {
                        n += 1;
                        batch.insert(&keys::part(id, n), part);
                    }
                    if n > 0 {
                        self.parts.insert(id, n);
                    }
                    for (queue, seq) in &targets {
                        batch.insert(&keys::index(*queue, *seq), &id.0.to_be_bytes());
                        self.add_count(*queue, 1, &mut batch);
                    }
                    if targets.len() > 1 {
                        let n = targets.len() as u32;
                        self.refs.insert(id, n);
                        batch.insert(&keys::refs(id), &n.to_be_bytes());
                    }
                }
                Op::Remove(r) => {
                    if !self.dead.contains(&r.queue) {
                        batch.remove(&keys::index(r.queue, r.seq));
                        self.release(r.message, &mut batch);
                        self.sub_count(r.queue, 1, &mut batch);
                    }
                }
                Op::RemoveFrom { queue, from_seq } => {
                    if !self.dead.contains(&queue) {
                        self.commit_batch(std::mem::take(&mut batch))?;
                        let removed = self.remove_range(queue, from_seq, &mut batch)?;
                        self.sub_count(queue, removed, &mut batch);
                    }
                }
                Op::Delivered { queue, seq } => {
                    if self.dead.contains(&queue) {
                        continue;
                    }
                    let mark = self.delivered.entry(queue).or_insert(seq);
                    if seq >= *mark {
                        *mark = seq;
                        batch.insert(&keys::delivered(queue), &seq.to_be_bytes());
                    }
                }
                Op::Barrier => {}
            }
        }
        batch.insert(keys::COMMIT_SEQ, &(self.commit_seq + 1).to_be_bytes());
        batch.insert(keys::NEXT_MESSAGE_ID, &self.next_message.to_be_bytes());
        self.commit_batch(batch)?;
        Ok(bytes)
    }

    fn commit_batch(&self, batch: sled::Batch) -> Result<()> {
        self.data
            .apply_batch(batch)
            .map_err(|e| StoreError::io(&self.shared.path, "writing a batch", e))
    }

    /// Drops one queue's reference to a message; the record goes with the last one.
    fn release(&mut self, message: MessageId, batch: &mut sled::Batch) {
        match self.refs.get_mut(&message) {
            Some(n) if *n > 1 => {
                *n -= 1;
                batch.insert(&keys::refs(message), &n.to_be_bytes());
            }
            Some(_) => {
                self.refs.remove(&message);
                batch.remove(&keys::refs(message));
                self.remove_record(message, batch);
            }
            None => self.remove_record(message, batch),
        }
    }

    /// Removes a message record with its parts.
    fn remove_record(&mut self, message: MessageId, batch: &mut sled::Batch) {
        batch.remove(&keys::message(message));
        for part in 1..=self.parts.remove(&message).unwrap_or(0) {
            batch.remove(&keys::part(message, part));
        }
    }

    /// Removes a queue's index entries (releasing their messages), its watermark and its
    /// spilled messages. Used by queue deletion and by the orphan sweep at startup.
    pub(crate) fn delete_queue_entries(
        &mut self,
        queue: QueueId,
        batch: &mut sled::Batch,
    ) -> Result<u64> {
        let removed = self.remove_range(queue, 0, batch)?;
        batch.remove(&keys::delivered(queue));
        self.delivered.remove(&queue);
        batch.remove(&keys::count(queue));
        self.counts.remove(&queue);
        Ok(removed)
    }

    fn add_count(&mut self, queue: QueueId, n: u64, batch: &mut sled::Batch) {
        let count = self.counts.entry(queue).or_insert(0);
        *count += n;
        batch.insert(&keys::count(queue), &count.to_be_bytes());
    }

    fn sub_count(&mut self, queue: QueueId, n: u64, batch: &mut sled::Batch) {
        let count = self.counts.entry(queue).or_insert(0);
        *count = count.saturating_sub(n);
        batch.insert(&keys::count(queue), &count.to_be_bytes());
    }

    /// Removes a queue's index entries (releasing their messages) and spilled messages with
    /// seq ≥ `from_seq`. Returns the index entries removed.
    fn remove_range(
        &mut self,
        queue: QueueId,
        from_seq: u64,
        batch: &mut sled::Batch,
    ) -> Result<u64> {
        let path = self.shared.path.clone();
        let io = |e| StoreError::io(&path, "removing a queue's messages", e);
        let mut removed = 0u64;
        let range = keys::index(queue, from_seq)..=keys::index(queue, u64::MAX);
        for item in self.data.range(range) {
            let (key, value) = item.map_err(io)?;
            let message = keys::u64_at(&value, 0).ok_or_else(|| {
                StoreError::corrupt(&path, format!("short index entry for queue {}", queue.0))
            })?;
            batch.remove(key);
            self.release(MessageId(message), batch);
            removed += 1;
        }
        let mut spilled = sled::Batch::default();
        let range = keys::spill(queue, from_seq)..=keys::spill(queue, u64::MAX);
        for item in self.spill.range(range) {
            let (key, _) = item.map_err(io)?;
            spilled.remove(key);
        }
        self.spill.apply_batch(spilled).map_err(io)?;
        Ok(removed)
    }
}

/// Next id from an atomic counter (ids start at the recovered maximum + 1).
pub(crate) fn next_id(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed)
}
