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
//!
//! What a message costs: a message held by one queue is one sled insert (its record under
//! its index key) and, once acked, one remove. A publish and the removal of the same copy
//! that meet in one group are both dropped before anything is written: the message was
//! acked before it was ever durable, so neither state has to reach the disk. Message
//! counts and the message id counter are written once per sled batch, delivered watermarks
//! once per group, never once per message.

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
        targets: Targets,
    },
    Remove(StoredRef),
    RemoveFrom {
        queue: QueueId,
        from_seq: u64,
    },
    /// Nothing to write: completes once everything queued before it is flushed. Also what
    /// a publish and the removal of its only copy become when they meet in one group.
    Barrier,
}

/// The `(queue, seq)` copies a publish stores; one copy needs no allocation.
pub(crate) enum Targets {
    One([(QueueId, u64); 1]),
    Many(Vec<(QueueId, u64)>),
}

impl Targets {
    pub(crate) fn new(targets: &[(QueueId, u64)]) -> Self {
        match targets {
            [one] => Targets::One([*one]),
            _ => Targets::Many(targets.to_vec()),
        }
    }

    fn as_slice(&self) -> &[(QueueId, u64)] {
        match self {
            Targets::One(one) => one,
            Targets::Many(many) => many,
        }
    }

    /// Drops the copy `(queue, seq)`; false when it is not a target.
    fn take(&mut self, queue: QueueId, seq: u64) -> bool {
        let Some(at) = self.as_slice().iter().position(|&t| t == (queue, seq)) else {
            return false;
        };
        match self {
            Targets::One(_) => *self = Targets::Many(Vec::new()),
            Targets::Many(many) => {
                many.remove(at);
            }
        }
        true
    }

    fn retain(&mut self, keep: impl Fn(&QueueId) -> bool) {
        match self {
            Targets::One([(queue, _)]) if !keep(queue) => *self = Targets::Many(Vec::new()),
            Targets::One(_) => {}
            Targets::Many(many) => many.retain(|(queue, _)| keep(queue)),
        }
    }
}

struct Pending {
    ops: Vec<Op>,
    /// Highest delivered seq per queue reported since the writer last took them.
    delivered: HashMap<QueueId, u64>,
    last_ticket: u64,
    closing: bool,
    /// Bytes of message records in `ops` (publishes wait while it is over the limit).
    record_bytes: u64,
    /// When the oldest op or mark still in `ops`/`delivered` was queued.
    since: Option<Instant>,
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
    /// `durable.ticket`, readable without the lock (checked for every confirm).
    durable_ticket: AtomicU64,
    durable_changed: Condvar,
    durable_watch: watch::Sender<Durable>,
    failed: AtomicBool,
    pub(crate) metrics: Metrics,
    /// When the oldest op of the batch the writer is applying was queued (`None` between
    /// batches). Locked after `pending` when both are.
    batch_since: Mutex<Option<Instant>>,
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
                delivered: HashMap::new(),
                last_ticket: 0,
                closing: false,
                record_bytes: 0,
                since: None,
            }),
            wake: Condvar::new(),
            taken: Condvar::new(),
            max_pending_bytes,
            durable: Mutex::new(Durable::default()),
            durable_ticket: AtomicU64::new(0),
            durable_changed: Condvar::new(),
            durable_watch: watch::Sender::new(Durable::default()),
            failed: AtomicBool::new(false),
            metrics: Metrics::default(),
            batch_since: Mutex::new(None),
        })
    }

    /// Queues ops for the writer and returns the commit covering all of them. Never waits:
    /// only publishes are subject to backpressure ([`Shared::submit_publish`]).
    pub(crate) fn submit(self: &Arc<Self>, ops: impl IntoIterator<Item = Op>) -> Commit {
        let pending = lock(&self.pending);
        self.enqueue(pending, ops)
    }

    /// Queues a publish (an op carrying message records); waits while
    /// `max_pending_bytes` of records are queued and not yet taken by the writer.
    pub(crate) fn submit_publish(self: &Arc<Self>, op: Op) -> Commit {
        let record_bytes = op.record_bytes();
        let mut pending = lock(&self.pending);
        let full = |p: &Pending| p.record_bytes >= self.max_pending_bytes && !p.closing;
        if full(&pending) {
            self.metrics.record_backpressure();
        }
        while full(&pending) {
            pending = self.taken.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        pending.record_bytes += record_bytes;
        self.enqueue(pending, [op])
    }

    fn enqueue(
        self: &Arc<Self>,
        mut pending: MutexGuard<'_, Pending>,
        ops: impl IntoIterator<Item = Op>,
    ) -> Commit {
        if pending.closing {
            return Commit {
                ticket: Ticket::Closed,
                shared: Arc::clone(self),
            };
        }
        let before = pending.ops.len();
        let idle = before == 0 && pending.delivered.is_empty();
        if idle {
            pending.since = Some(Instant::now());
        }
        pending.ops.extend(ops);
        let added = (pending.ops.len() - before) as u64;
        pending.last_ticket += added.max(1);
        if added == 0 {
            pending.ops.push(Op::Barrier);
        }
        let ticket = pending.last_ticket;
        drop(pending);
        if idle {
            self.wake.notify_one();
        }
        Commit {
            ticket: Ticket::At(ticket),
            shared: Arc::clone(self),
        }
    }

    /// Records that `queue` delivered up to `seq`: written with the writer's next group
    /// (the highest seq per queue), which it starts at once when idle.
    pub(crate) fn mark_delivered(&self, queue: QueueId, seq: u64) {
        let mut pending = lock(&self.pending);
        if pending.closing {
            return;
        }
        let idle = pending.ops.is_empty() && pending.delivered.is_empty();
        if idle {
            pending.since = Some(Instant::now());
        }
        let mark = pending.delivered.entry(queue).or_insert(seq);
        *mark = (*mark).max(seq);
        drop(pending);
        if idle {
            self.wake.notify_one();
        }
    }

    /// Asks the writer to drain what is queued and stop; later submissions fail.
    pub(crate) fn close(&self) {
        lock(&self.pending).closing = true;
        self.wake.notify_one();
        self.taken.notify_all();
    }

    pub(crate) fn durable_ticket(&self) -> u64 {
        self.durable_ticket.load(Ordering::Acquire)
    }

    /// How long the oldest write not yet durable has waited (`None` when none waits).
    pub(crate) fn oldest_write_wait(&self) -> Option<Duration> {
        let pending = lock(&self.pending);
        let batch = *lock(&self.batch_since);
        batch
            .into_iter()
            .chain(pending.since)
            .min()
            .map(|oldest| oldest.elapsed())
    }

    fn set_durable(&self, ticket: u64) {
        let snapshot = {
            let mut d = lock(&self.durable);
            d.ticket = ticket;
            self.durable_ticket.store(ticket, Ordering::Release);
            d.clone()
        };
        self.durable_changed.notify_all();
        self.durable_watch.send_replace(snapshot);
    }

    /// The writer stopped (an error, or a panic): nothing more is queued, and what is queued
    /// fails with `error` instead of waiting for the disk.
    pub(crate) fn fail(&self, error: StoreError) {
        let mut pending = lock(&self.pending);
        pending.closing = true;
        pending.since = None;
        *lock(&self.batch_since) = None;
        // Under the queue's lock: whoever sees the failure can queue nothing more.
        self.set_failed(error);
        drop(pending);
        self.wake.notify_one();
        self.taken.notify_all();
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
    /// Reference counts of messages held by more than one queue (stored under `M`, with an
    /// `R` count); a message absent here is stored with its only index entry.
    pub(crate) refs: HashMap<MessageId, u32>,
    /// Message ids below this may have an `M` record though held by one queue: written by
    /// format 1 or 2, which stored every message under `M` (see `keys.rs`).
    pub(crate) legacy_below: u64,
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
    /// The `N` value last put in a batch.
    next_message_written: u64,
    /// Number of the latest batch flushed (also stored under `S` in each batch).
    commit_seq: u64,
    /// When `commit_seq` was last written to the version file.
    version_written: Instant,
    /// The sled batch being filled, the whole ops in it, and the queues whose count it
    /// changed (their `C` is written when the batch is applied).
    batch: sled::Batch,
    batch_ops: usize,
    touched: Vec<QueueId>,
    /// Reused buffers: the taken op list, the delivered marks, publishes of the group by
    /// message id, one encoded record.
    spare_ops: Vec<Op>,
    spare_marks: HashMap<QueueId, u64>,
    published: HashMap<MessageId, usize>,
    scratch: Vec<u8>,
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
            legacy_below: 0,
            parts: HashMap::new(),
            delivered: HashMap::new(),
            counts: HashMap::new(),
            next_message: 0,
            next_message_written: 0,
            dead: HashSet::new(),
            commit_seq,
            version_written: Instant::now(),
            batch: sled::Batch::default(),
            batch_ops: 0,
            touched: Vec::new(),
            spare_ops: Vec::new(),
            spare_marks: HashMap::new(),
            published: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Sets the message id counter as recovered (it is written again only once it grows).
    pub(crate) fn set_next_message(&mut self, next: u64) {
        self.next_message = next;
        self.next_message_written = next;
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
            crate::failpoints::hold(crate::failpoints::STALL, &self.shared.path);
            let mut ops = std::mem::take(&mut self.spare_ops);
            let mut marks = std::mem::take(&mut self.spare_marks);
            let ticket = {
                let mut pending = lock(&self.shared.pending);
                while pending.ops.is_empty() && pending.delivered.is_empty() && !pending.closing {
                    pending = self
                        .shared
                        .wake
                        .wait(pending)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if pending.ops.is_empty() && pending.delivered.is_empty() {
                    drop(pending);
                    // Closing after a clean drain: record the exact last commit.
                    if let Err(e) = self.write_version_file() {
                        self.shared.set_failed(e);
                    }
                    return;
                }
                pending.record_bytes = 0;
                *lock(&self.shared.batch_since) = pending.since.take();
                self.shared.taken.notify_all();
                std::mem::swap(&mut pending.ops, &mut ops);
                std::mem::swap(&mut pending.delivered, &mut marks);
                pending.last_ticket
            };
            let started = Instant::now();
            let count = ops.len();
            let outcome = self.apply(&mut ops, &mut marks).and_then(|bytes| {
                #[cfg(feature = "failpoints")]
                crate::failpoints::check(crate::failpoints::FLUSH, &self.shared.path)?;
                self.db
                    .flush()
                    .map_err(|e| StoreError::io(&self.shared.path, "flushing a batch", e))?;
                Ok(bytes)
            });
            self.spare_ops = ops;
            self.spare_marks = marks;
            *lock(&self.shared.batch_since) = None;
            match outcome {
                Ok(bytes) => {
                    self.commit_seq += 1;
                    self.shared
                        .metrics
                        .record_batch(count as u64, bytes, started.elapsed());
                    self.shared.set_durable(ticket);
                }
                Err(e) => {
                    self.shared.fail(e);
                    return;
                }
            }
            // After the waiters were released: the version file only needs to lag behind.
            if self.version_written.elapsed() >= VERSION_FILE_EVERY {
                if let Err(e) = self.write_version_file() {
                    self.shared.fail(e);
                    return;
                }
            }
        }
    }

    /// Applies one group: the delivered marks, then the ops in order, in sled batches of at
    /// most [`SUB_BATCH_OPS`] whole ops (also split before a queue deletion or range
    /// removal, which must see what came before them). Leaves `ops` and `marks` empty.
    /// Returns the bytes of message records written.
    fn apply(&mut self, ops: &mut Vec<Op>, marks: &mut HashMap<QueueId, u64>) -> Result<u64> {
        #[cfg(feature = "failpoints")]
        crate::failpoints::check(crate::failpoints::APPLY, &self.shared.path)?;
        #[cfg(feature = "failpoints")]
        if crate::failpoints::armed(crate::failpoints::PANIC, &self.shared.path) {
            panic!("failpoint panic");
        }
        self.cancel_acked(ops);
        for (queue, seq) in marks.drain() {
            if self.dead.contains(&queue) {
                continue;
            }
            let mark = self.delivered.entry(queue).or_insert(seq);
            if seq >= *mark {
                *mark = seq;
                self.batch
                    .insert(&keys::delivered(queue), &seq.to_be_bytes());
            }
        }
        let mut bytes = 0u64;
        for op in ops.drain(..) {
            // sled's memory use grows steeply with the size of one batch (a 10,000-write
            // batch peaks above 1 GiB), so a group is applied in sub-batches; each op stays
            // whole inside one of them, which is the atomicity recovery relies on (a message
            // record with its index entries). Durability still comes from the one flush.
            if self.batch_ops >= SUB_BATCH_OPS {
                self.seal()?;
            }
            // Only ops that write count towards the size of a sled batch.
            self.batch_ops += usize::from(!matches!(op, Op::Barrier));
            match op {
                Op::PutDefinition { key, value } => self.batch.insert(key, value),
                Op::RemoveDefinition { key } => self.batch.remove(key),
                Op::PutQueue {
                    key,
                    value,
                    next_queue_id,
                } => {
                    self.batch.insert(key, value);
                    self.batch
                        .insert(keys::NEXT_QUEUE_ID, &next_queue_id.to_be_bytes());
                }
                Op::DeleteQueue { id, key } => {
                    self.seal()?;
                    self.batch.remove(key);
                    self.delete_queue_entries(id)?;
                    self.dead.insert(id);
                }
                Op::Publish {
                    id,
                    header,
                    body,
                    mut targets,
                } => {
                    targets.retain(|q| !self.dead.contains(q));
                    if !targets.as_slice().is_empty() {
                        bytes += self.put_message(id, &header, &body, targets.as_slice());
                    }
                }
                Op::Remove(r) => {
                    if !self.dead.contains(&r.queue) {
                        self.batch.remove(&keys::index(r.queue, r.seq));
                        self.release(r.message, false);
                        self.sub_count(r.queue, 1);
                    }
                }
                Op::RemoveFrom { queue, from_seq } => {
                    if !self.dead.contains(&queue) {
                        self.seal()?;
                        let removed = self.remove_range(queue, from_seq)?;
                        self.sub_count(queue, removed);
                    }
                }
                Op::Barrier => {}
            }
        }
        self.batch
            .insert(keys::COMMIT_SEQ, &(self.commit_seq + 1).to_be_bytes());
        self.seal()?;
        Ok(bytes)
    }

    /// Drops each publish's copy that a later remove of the same group takes back, and that
    /// remove: nothing of it was written yet, and once the group is flushed the copy is
    /// acked. A publish left without copies writes nothing.
    fn cancel_acked(&mut self, ops: &mut [Op]) {
        self.published.clear();
        let mut cancelled = 0;
        for at in 0..ops.len() {
            let removed = match &ops[at] {
                Op::Publish { id, .. } => {
                    self.published.insert(*id, at);
                    continue;
                }
                Op::Remove(r) => *r,
                _ => continue,
            };
            let Some(&publish) = self.published.get(&removed.message) else {
                continue;
            };
            let Op::Publish { targets, .. } = &mut ops[publish] else {
                continue;
            };
            if targets.take(removed.queue, removed.seq) {
                if targets.as_slice().is_empty() {
                    ops[publish] = Op::Barrier;
                }
                ops[at] = Op::Barrier;
                cancelled += 1;
            }
        }
        if cancelled > 0 {
            self.shared.metrics.record_acked_unwritten(cancelled);
        }
    }

    /// Writes a message record: under its index key when one queue holds it, else once
    /// under `M` with an index entry pointing to it per queue and an `R` count. Returns the
    /// record's bytes.
    fn put_message(
        &mut self,
        id: MessageId,
        header: &[u8],
        body: &[u8],
        targets: &[(QueueId, u64)],
    ) -> u64 {
        self.next_message = self.next_message.max(id.0 + 1);
        let inline = match targets {
            [(queue, seq)] => Some(keys::index(*queue, *seq)),
            _ => None,
        };
        let mut record = std::mem::take(&mut self.scratch);
        record.clear();
        if inline.is_some() {
            record.extend_from_slice(&id.0.to_be_bytes());
        }
        keys::encode_record_into(&mut record, header, body);
        let mut chunks = record.chunks(keys::RECORD_PART);
        let first = chunks.next().unwrap_or_default();
        match &inline {
            Some(key) => self.batch.insert(key, first),
            None => self.batch.insert(&keys::message(id), first),
        }
        let mut n = 0;
        for part in chunks {
            n += 1;
            self.batch.insert(&keys::part(id, n), part);
        }
        if n > 0 {
            self.parts.insert(id, n);
        }
        let bytes = (record.len() - if inline.is_some() { 8 } else { 0 }) as u64;
        self.scratch = record;
        if inline.is_none() {
            for &(queue, seq) in targets {
                self.batch
                    .insert(&keys::index(queue, seq), &id.0.to_be_bytes());
            }
            let refs = targets.len() as u32;
            self.refs.insert(id, refs);
            self.batch.insert(&keys::refs(id), &refs.to_be_bytes());
        }
        for &(queue, _) in targets {
            self.add_count(queue, 1);
        }
        bytes
    }

    /// Applies the batch being filled, with the counts it changed and the grown message id
    /// counter (so that they land atomically with the entries they count).
    fn seal(&mut self) -> Result<()> {
        for queue in self.touched.drain(..) {
            if let Some(count) = self.counts.get(&queue) {
                self.batch.insert(&keys::count(queue), &count.to_be_bytes());
            }
        }
        if self.next_message > self.next_message_written {
            self.next_message_written = self.next_message;
            self.batch
                .insert(keys::NEXT_MESSAGE_ID, &self.next_message.to_be_bytes());
        }
        self.batch_ops = 0;
        self.data
            .apply_batch(std::mem::take(&mut self.batch))
            .map_err(|e| StoreError::io(&self.shared.path, "writing a batch", e))
    }

    /// Drops one queue's reference to a message. `pointer`: the index entry was read and
    /// holds only the message id (the record is under `M`). Otherwise the caller knows
    /// only the id: a message absent from `refs` is stored with its index entry, unless
    /// its id is below `legacy_below`.
    fn release(&mut self, message: MessageId, pointer: bool) {
        match self.refs.get_mut(&message) {
            Some(n) if *n > 1 => {
                *n -= 1;
                self.batch.insert(&keys::refs(message), &n.to_be_bytes());
            }
            Some(_) => {
                self.refs.remove(&message);
                self.batch.remove(&keys::refs(message));
                self.remove_record(message);
            }
            None if pointer || message.0 < self.legacy_below => self.remove_record(message),
            None => self.remove_parts(message),
        }
    }

    /// Removes an `M` record with its parts.
    fn remove_record(&mut self, message: MessageId) {
        self.batch.remove(&keys::message(message));
        self.remove_parts(message);
    }

    /// Removes the continuation parts of a record.
    fn remove_parts(&mut self, message: MessageId) {
        for part in 1..=self.parts.remove(&message).unwrap_or(0) {
            self.batch.remove(&keys::part(message, part));
        }
    }

    /// Removes a queue's index entries (releasing their messages), its watermark and its
    /// spilled messages, into the batch being filled. Used by queue deletion and by the
    /// orphan sweep at startup.
    pub(crate) fn delete_queue_entries(&mut self, queue: QueueId) -> Result<u64> {
        let removed = self.remove_range(queue, 0)?;
        self.batch.remove(&keys::delivered(queue));
        self.delivered.remove(&queue);
        self.batch.remove(&keys::count(queue));
        self.counts.remove(&queue);
        Ok(removed)
    }

    fn add_count(&mut self, queue: QueueId, n: u64) {
        *self.counts.entry(queue).or_insert(0) += n;
        self.touch(queue);
    }

    fn sub_count(&mut self, queue: QueueId, n: u64) {
        let count = self.counts.entry(queue).or_insert(0);
        *count = count.saturating_sub(n);
        self.touch(queue);
    }

    fn touch(&mut self, queue: QueueId) {
        if !self.touched.contains(&queue) {
            self.touched.push(queue);
        }
    }

    /// Removes a queue's index entries (releasing their messages) and spilled messages with
    /// seq ≥ `from_seq`. Returns the index entries removed.
    fn remove_range(&mut self, queue: QueueId, from_seq: u64) -> Result<u64> {
        let path = self.shared.path.clone();
        let io = |e| StoreError::io(&path, "removing a queue's messages", e);
        let mut removed = 0u64;
        let range = keys::index(queue, from_seq)..=keys::index(queue, u64::MAX);
        for item in self.data.range(range) {
            let (key, value) = item.map_err(io)?;
            let entry = keys::decode_index(&value).ok_or_else(|| {
                StoreError::corrupt(&path, format!("short index entry for queue {}", queue.0))
            })?;
            self.batch.remove(key);
            self.release(entry.message, entry.inline.is_none());
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

    /// Applies what recovery put in the batch being filled (the orphan sweep).
    pub(crate) fn apply_recovered(&mut self) -> Result<()> {
        self.seal()
    }
}

/// Next id from an atomic counter (ids start at the recovered maximum + 1).
pub(crate) fn next_id(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed)
}
