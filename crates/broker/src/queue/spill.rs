//! A queue's disk tail: the part of its backlog whose bodies live in the store, not in memory.
//!
//! Layout of a queue's messages, in seq order:
//!
//! ```text
//! ready (memory, the head)  |  disk tail [from_seq, end_seq)  |  pending (memory)
//! ```
//!
//! Consumers take from `ready`. While a disk tail exists, new messages go to `pending` so that
//! order is kept; the broker's spill task (`crate::spill`) writes `pending` (and, when the
//! tail is first created, the part of `ready` beyond the head) to the store, and pages the
//! tail back into `ready` in seq order before the head runs dry. Every requeued or unacked
//! message sorts before the tail: only messages after the highest seq ever delivered are
//! spilled. The store I/O runs on the spill task, never under the queue lock: these functions
//! only move messages between the lists and account for them.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use lockgate_store::{QueueId, Store};

use super::{drain, Queue, QueueState, Ready};
use crate::vhost::VHost;

/// The in-memory head is paged back up when it falls below this many messages.
pub(crate) const PAGE_LOW: usize = 256;

/// Head byte budget of a queue recovered with a disk tail, until the spill task sets one.
const RECOVERED_HEAD_BYTES: u64 = 4 << 20;

/// Messages `basic.get` pages in at once when the head is empty.
const GET_PAGE: usize = 64;

/// How long `basic.get` waits for the spill task's own spill or page-in of the queue.
const GET_WAIT: Duration = Duration::from_secs(2);

/// The part of a queue's backlog that lives in the store.
pub(crate) struct DiskTail {
    pub store: Store,
    /// The store id its messages are kept under (a durable queue's own id, or a spill id).
    pub id: QueueId,
    /// The first seq on disk.
    pub from_seq: u64,
    /// One past the last seq on disk (later seqs are in `pending`).
    pub end_seq: u64,
    /// Messages on disk.
    pub count: usize,
    /// Their bytes (an estimate after recovery): sizes page-ins to the head budget.
    pub bytes: u64,
    /// Bytes of the in-memory head a page-in may fill up to.
    pub head_bytes: u64,
}

/// Messages taken out of a queue to be written to its disk tail.
pub(crate) struct SpillBatch {
    pub store: Store,
    pub id: QueueId,
    pub items: Vec<Ready>,
    epoch: u64,
    /// This batch created the disk tail.
    created: bool,
}

/// A page-in to run: read `[from_seq, end_seq)` from the store, up to a page.
pub(crate) struct PageRequest {
    pub store: Store,
    pub id: QueueId,
    pub from_seq: u64,
    pub end_seq: u64,
    /// Messages to read: what fits in the head's byte budget, at least one.
    pub max: usize,
    epoch: u64,
}

/// How many of the first messages of `list` make a batch: at most `max`, and stopping once
/// `max_bytes` is reached (at least one).
fn batch_len(list: &VecDeque<Ready>, max: usize, max_bytes: u64) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for r in list.iter().take(max) {
        n += 1;
        bytes += r.size;
        if bytes >= max_bytes {
            break;
        }
    }
    n
}

impl QueueState {
    /// Messages waiting for a consumer: in memory and on disk.
    pub(super) fn total_ready(&self) -> usize {
        self.ready.len()
            + self.pending.len()
            + self.delayed.len()
            + self.disk.as_ref().map_or(0, |d| d.count)
    }

    /// Wakes the spill task when the head runs low and a disk tail waits.
    pub(super) fn request_page_in(&mut self) {
        if self.disk.is_some() && !self.want_page && self.ready.len() < PAGE_LOW {
            if let Some(wake) = &self.wake {
                self.want_page = true;
                wake.notify_one();
            }
        }
    }
}

impl Queue {
    /// Messages kept in memory beyond the head, which a spill could move to disk.
    pub(crate) fn spillable(&self) -> usize {
        let st = self.state.lock();
        if !st.ready.can_spill() {
            0
        } else if st.disk.is_some() {
            st.pending.len()
        } else {
            st.ready.len()
        }
    }

    /// True while part of the queue lives on disk.
    pub(crate) fn has_disk_tail(&self) -> bool {
        self.state.lock().disk.is_some()
    }

    /// Takes up to `max` messages (and about `max_bytes`) to write to the disk tail, keeping
    /// a head of at most
    /// `head_count` messages and `head_bytes` bytes in memory. `None` when there is nothing
    /// to spill or the queue is busy (deleted, another spill or page-in in flight, a
    /// persistent publish between seq reservation and push, a purge's removal of the last
    /// disk tail not applied by the store yet).
    pub(crate) fn take_spill(
        &self,
        store: &Store,
        head_count: usize,
        head_bytes: u64,
        max: usize,
        max_bytes: u64,
    ) -> Option<SpillBatch> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if st.deleted || st.busy || st.reserving > 0 || max == 0 || !st.ready.can_spill() {
            return None;
        }
        if let Some(ticket) = st.tail_removal {
            if store.durable_ticket() < ticket {
                return None;
            }
            st.tail_removal = None;
        }
        let created = st.disk.is_none();
        let items: Vec<Ready> = if created {
            let delivered = st.max_delivered;
            let min_start = st
                .ready
                .partition_point(|r| delivered.is_some_and(|m| r.seq <= m));
            let (mut keep, mut bytes) = (0, 0);
            while keep < st.ready.len() && keep < head_count && bytes < head_bytes {
                bytes += st.ready[keep].size;
                keep += 1;
            }
            let start = keep.max(min_start);
            if start >= st.ready.len() {
                return None;
            }
            let mut tail = st.ready.split_off(start);
            let n = batch_len(&tail, max, max_bytes);
            let rest = tail.split_off(n);
            // Beyond this batch: still in memory, but now behind the disk tail.
            st.pending = rest;
            tail.into()
        } else {
            if st.pending.is_empty() {
                return None;
            }
            let n = batch_len(&st.pending, max, max_bytes);
            st.pending.drain(..n).collect()
        };
        let (first, last) = match (items.first(), items.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => return None,
        };
        let id = match (&self.store, st.spill_id) {
            (Some(qs), _) => qs.id,
            (None, Some(id)) => id,
            (None, None) => {
                let id = store.transient_queue_id();
                st.spill_id = Some(id);
                id
            }
        };
        let bytes: u64 = items.iter().map(|r| r.size).sum();
        st.counters.ready_bytes = st.counters.ready_bytes.saturating_sub(bytes);
        Self::remember_arrivals(st, &items);
        match &mut st.disk {
            Some(disk) => {
                disk.count += items.len();
                disk.bytes += bytes;
                disk.end_seq = last + 1;
                disk.head_bytes = head_bytes;
            }
            None => {
                st.disk = Some(DiskTail {
                    store: store.clone(),
                    id,
                    from_seq: first,
                    end_seq: last + 1,
                    count: items.len(),
                    bytes,
                    head_bytes,
                });
            }
        }
        st.busy = true;
        Some(SpillBatch {
            store: store.clone(),
            id,
            items,
            epoch: st.epoch,
            created,
        })
    }

    /// Ends a spill. On success the batch's messages are dropped from memory (after the
    /// lock is released); on failure they go back in place. Returns the seq range to discard
    /// from the spill tree when the queue was purged or deleted while writing.
    pub(crate) fn finish_spill(&self, batch: SpillBatch, written: bool) -> Option<Range<u64>> {
        let SpillBatch {
            items,
            epoch,
            created,
            ..
        } = batch;
        let range = match (items.first(), items.last()) {
            (Some(f), Some(l)) => f.seq..l.seq + 1,
            _ => return None,
        };
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.busy = false;
        if st.epoch != epoch {
            return written.then_some(range);
        }
        if written {
            drop(guard);
            drop(items);
            return None;
        }
        // The write failed (disk full): keep the messages in memory, in order.
        st.spilled_arrivals.retain(|(seq, _)| !range.contains(seq));
        let bytes: u64 = items.iter().map(|r| r.size).sum();
        st.counters.ready_bytes += bytes;
        let n = items.len();
        if created {
            st.disk = None;
            st.ready.extend(items);
            let pending = std::mem::take(&mut st.pending);
            st.ready.extend(pending);
            drain(st, self.store.as_ref());
        } else {
            if let Some(disk) = &mut st.disk {
                disk.count -= n.min(disk.count);
                disk.bytes = disk.bytes.saturating_sub(bytes);
                disk.end_seq = range.start;
            }
            let mut back: VecDeque<Ready> = items.into();
            back.append(&mut st.pending);
            st.pending = back;
        }
        None
    }

    /// A page-in to run when the head is low and a disk tail waits; marks the queue busy.
    /// At most `max` messages, and no more than fit in the head's byte budget.
    pub(crate) fn page_request(&self, max: usize) -> Option<PageRequest> {
        let mut st = self.state.lock();
        st.want_page = false;
        if st.deleted || st.busy || st.ready.len() >= PAGE_LOW {
            return None;
        }
        let disk = st.disk.as_ref()?;
        let in_head: u64 = st.ready.iter().map(|r| r.size).sum();
        let room = disk.head_bytes.saturating_sub(in_head);
        let average = (disk.bytes / disk.count.max(1) as u64).max(1);
        let fits = usize::try_from(room / average).unwrap_or(usize::MAX);
        if fits == 0 && !st.ready.is_empty() {
            return None;
        }
        let request = PageRequest {
            store: disk.store.clone(),
            id: disk.id,
            from_seq: disk.from_seq,
            end_seq: disk.end_seq,
            max: fits.clamp(1, max),
            epoch: st.epoch,
        };
        st.busy = true;
        Some(request)
    }

    /// Ends a page-in: appends the messages read (`None` when the read failed) to the head
    /// and shrinks the disk tail; once it is empty, `pending` follows them into `ready`.
    pub(crate) fn finish_page(&self, request: &PageRequest, paged: Option<Vec<Ready>>) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.busy = false;
        if st.epoch != request.epoch {
            return;
        }
        let Some(mut paged) = paged else {
            return;
        };
        self.restore_arrivals(st, &mut paged);
        let Some(disk) = &mut st.disk else {
            return;
        };
        let n = paged.len();
        let bytes: u64 = paged.iter().map(|r| r.size).sum();
        if let Some(last) = paged.last() {
            disk.from_seq = last.seq + 1;
        }
        disk.count = disk.count.saturating_sub(n);
        disk.bytes = disk.bytes.saturating_sub(bytes);
        // An empty page means nothing is left in the range, whatever the count said.
        if disk.count == 0 || n == 0 || disk.from_seq >= disk.end_seq {
            st.disk = None;
        }
        st.counters.ready_bytes += bytes;
        st.ready.extend(paged);
        if st.disk.is_none() {
            let pending = std::mem::take(&mut st.pending);
            st.ready.extend(pending);
        }
        // Messages that expired on disk go before anything is delivered.
        let mut dead = Vec::new();
        self.expire_due(st, std::time::Instant::now(), usize::MAX, &mut dead);
        drain(st, self.store.as_ref());
        drop(guard);
        self.dead_letter(dead);
    }

    /// Pages in the next messages of the disk tail for `basic.get`, whose head is empty;
    /// false when it could not (deleted, the read failed, or the queue stayed busy).
    ///
    /// `basic.get` is synchronous (the server calls it from the connection's reader task),
    /// so the read runs right here, through the same page request as the spill task, and
    /// off the async worker with `block_in_place` on a multi-threaded runtime. When the
    /// spill task has a spill or page-in of this queue in flight, it waits for it (at most
    /// [`GET_WAIT`]); on a current-thread runtime that task cannot finish while we block,
    /// so get answers empty and leaves the page-in to it.
    pub(crate) fn page_in_for_get(&self, vhost: &VHost) -> bool {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let run = || {
            let deadline = Instant::now() + GET_WAIT;
            loop {
                if let Some(request) = self.page_request(GET_PAGE) {
                    let paged = crate::spill::page_in_blocking(vhost, &request);
                    let ok = paged.is_some();
                    self.finish_page(&request, paged);
                    return ok;
                }
                {
                    let st = self.state.lock();
                    if st.deleted || st.disk.is_none() || !st.ready.is_empty() {
                        return !st.deleted;
                    }
                    if !st.busy || !multi_thread || Instant::now() >= deadline {
                        return false;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        if multi_thread {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    /// After recovery loaded the first `loaded` messages: the rest stays on disk as the tail.
    /// `average` is the mean size of the messages loaded, standing for those left on disk.
    pub(crate) fn set_recovered_tail(
        &self,
        store: Store,
        id: QueueId,
        range: Range<u64>,
        count: usize,
        average: u64,
    ) {
        if count == 0 {
            return;
        }
        let mut st = self.state.lock();
        st.disk = Some(DiskTail {
            store,
            id,
            from_seq: range.start,
            end_seq: range.end,
            count,
            bytes: average.saturating_mul(count as u64),
            head_bytes: RECOVERED_HEAD_BYTES,
        });
    }
}
