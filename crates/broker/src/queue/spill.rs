//! A queue's disk tails: the parts of its backlog whose bodies live in the store, not in
//! memory.
//!
//! The ready list is made of lanes, each delivered in seq order (`ready.rs`): a FIFO or
//! grouped queue is one lane, a priority queue has one per priority. Layout of a lane's
//! messages, in seq order:
//!
//! ```text
//! ready (memory, the head)  |  disk tail [from_seq, end_seq)  |  pending (memory)
//! ```
//!
//! Consumers take from `ready`. While a lane has a disk tail, its new messages go to its
//! `pending` so that order is kept; the broker's spill task (`crate::spill`) writes `pending`
//! (and, when the tail is first created, the part of the lane beyond its head) to the store,
//! and pages the tail back into `ready` in seq order before the head runs dry. Every requeued
//! or unacked message sorts before the tail: only messages after the highest seq ever taken
//! from the lane are spilled. A priority level whose head ran dry before its page-in arrived
//! holds back the lower levels (`ReadyList::set_spilled`), so priorities keep their order.
//!
//! A lane's messages are stored under the queue's store id (a durable FIFO or grouped queue:
//! persistent messages are already in the store and are read back by index) or a spill id of
//! its own (a non-durable queue, or a priority level: the queue's index interleaves all
//! levels). A priority level of a durable queue also writes its persistent messages to the
//! spill tree and keeps their stored references in memory (32 bytes each) until paged in.
//!
//! A durable queue recovered with more messages than recovery loads keeps the rest on disk
//! as lane 0's tail, whatever their priorities (the queue's index interleaves them). Until
//! it is paged in whole, it is the tail of every lane: each new message waits behind it and
//! it pages in (in seq order, each message filed under its priority) when the whole ready
//! list runs low. A FIFO or grouped queue spills what waits behind it onto it, as onto any
//! tail of its own; a priority queue's levels do not spill meanwhile (their tails would be
//! overtaken by its pages), so what waits behind it stays in memory. So a message still on disk after a restart is delivered
//! after every message in memory, whatever its priority, and FIFO within a priority holds.
//!
//! The store I/O runs on the spill task, never under the queue lock: these functions only
//! move messages between the lists and account for them.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use lockgate_store::{QueueId, Store, StoredRef};

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

/// The part of a lane's backlog that lives in the store.
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
    /// Bytes of the lane's in-memory head a page-in may fill up to.
    pub head_bytes: u64,
    /// Persistent messages written to the spill tree (a priority level of a durable queue):
    /// their stored copies and redelivered flags, in seq order, given back on page-in and
    /// removed by a purge.
    copied: VecDeque<(StoredRef, bool)>,
}

/// One lane's spill state.
#[derive(Default)]
struct Lane {
    disk: Option<DiskTail>,
    /// Messages that arrived while `disk` is set: in memory, after the disk tail, waiting to
    /// be spilled or to move to `ready` once the disk tail is paged in.
    pending: VecDeque<Ready>,
    /// Arrival times of spilled messages that can expire (seq order), restored on page-in.
    arrivals: VecDeque<(u64, Instant)>,
    /// The lane's spill id (a non-durable queue, a priority level), taken at its first spill.
    id: Option<QueueId>,
}

/// A queue's lanes with their disk tails. See the module doc.
#[derive(Default)]
pub(crate) struct Tails {
    lanes: Vec<Lane>,
    /// Lanes with a disk tail: with none, the message path pays one comparison.
    spilled: usize,
    /// `basic.get` calls waiting for a spill or page-in of the queue to finish.
    waiting_gets: usize,
    /// Lane 0's disk tail is the one recovery left, holding messages of every lane: it is
    /// the tail of the whole queue (see the module doc).
    recovered: bool,
}

impl Tails {
    /// True while part of the queue lives on disk.
    #[inline]
    pub fn on_disk(&self) -> bool {
        self.spilled > 0
    }

    /// True while a recovered tail of a priority queue (`lanes` > 1) exists: it holds
    /// messages of every level, so no level may spill a tail of its own and the messages
    /// held behind it stay in memory until it is paged in. A FIFO or grouped queue's
    /// recovered tail is its only lane's, and what arrives behind it spills onto it.
    fn holds_spill(&self, lanes: usize) -> bool {
        self.recovered && lanes > 1
    }

    /// Messages on disk.
    pub fn count(&self) -> usize {
        self.disks().map(|d| d.count).sum()
    }

    /// Bytes on disk (an estimate after recovery).
    pub fn bytes(&self) -> u64 {
        self.disks().map(|d| d.bytes).sum()
    }

    /// Messages waiting behind a disk tail, in memory.
    pub fn pending_len(&self) -> usize {
        self.lanes.iter().map(|l| l.pending.len()).sum()
    }

    /// The messages waiting behind a disk tail.
    pub fn pending(&self) -> impl Iterator<Item = &Ready> + '_ {
        self.lanes.iter().flat_map(|l| l.pending.iter())
    }

    /// Removes the waiting message `seq` if `pred` holds for it.
    pub fn remove_pending(&mut self, seq: u64, pred: impl Fn(&Ready) -> bool) -> Option<Ready> {
        self.lanes.iter_mut().find_map(|l| {
            let at = l.pending.partition_point(|r| r.seq < seq);
            if l.pending.get(at).is_some_and(&pred) {
                l.pending.remove(at)
            } else {
                None
            }
        })
    }

    /// Takes everything out (purge, delete): the disk tails to remove from the store and the
    /// waiting messages. A lane whose messages are not kept under `durable` (the queue's
    /// store id) hands its waiting persistent messages' stored copies to its tail, for
    /// [`DiskTail::purge`]. The lanes' spill ids stay.
    pub fn take(&mut self, durable: Option<QueueId>) -> (Vec<DiskTail>, Vec<Ready>) {
        self.spilled = 0;
        self.recovered = false;
        let mut disks = Vec::new();
        let mut pending = Vec::new();
        for lane in &mut self.lanes {
            if let Some(mut disk) = lane.disk.take() {
                if Some(disk.id) != durable {
                    let waiting = lane.pending.iter();
                    disk.copied
                        .extend(waiting.filter_map(|r| Some((r.stored?, r.redelivered))));
                }
                disks.push(disk);
            }
            pending.extend(lane.pending.drain(..));
            lane.arrivals.clear();
        }
        (disks, pending)
    }

    /// Arrival times of a lane's spilled messages that can expire (seq order).
    pub fn arrivals_mut(&mut self, lane: usize) -> &mut VecDeque<(u64, Instant)> {
        &mut self.lane_mut(lane).arrivals
    }

    fn disks(&self) -> impl Iterator<Item = &DiskTail> + '_ {
        self.lanes.iter().filter_map(|l| l.disk.as_ref())
    }

    fn lane_mut(&mut self, lane: usize) -> &mut Lane {
        if self.lanes.len() <= lane {
            self.lanes.resize_with(lane + 1, Lane::default);
        }
        &mut self.lanes[lane]
    }
}

impl DiskTail {
    /// Purge: removes its messages from the store, spilled records and persistent messages
    /// (under `durable`, the queue's store id, from its first seq on, those waiting behind it
    /// included; elsewhere by their stored copies, except those from `by_range` on, which a
    /// tail kept under `durable` removes by range: a copy is removed once). Returns the
    /// ticket of the removal by range.
    pub(super) fn purge(self, durable: Option<QueueId>, by_range: Option<u64>) -> Option<u64> {
        let mut copied = self
            .copied
            .iter()
            .map(|(r, _)| *r)
            .filter(|r| by_range.is_none_or(|from| r.seq < from))
            .peekable();
        if copied.peek().is_some() {
            drop(self.store.remove_many(copied));
        }
        let from = if Some(self.id) == durable {
            self.from_seq
        } else {
            0
        };
        self.store.remove_from(self.id, from).ticket()
    }

    /// Queue deleted: removes its spilled records unless they are kept under `durable`, the
    /// queue's store id (the store deletes the queue's messages with it).
    pub(super) fn discard(self, durable: Option<QueueId>) {
        if Some(self.id) != durable {
            drop(self.store.remove_from(self.id, 0));
        }
    }
}

/// Messages taken out of a queue to be written to a disk tail.
pub(crate) struct SpillBatch {
    pub store: Store,
    pub id: QueueId,
    pub items: Vec<Ready>,
    /// Persistent messages are written too (their lane is not read by the queue's index).
    pub copy_persistent: bool,
    lane: usize,
    epoch: u64,
    /// This batch created the disk tail.
    created: bool,
}

/// A page-in to run: read `[from_seq, end_seq)` of a lane's disk tail, up to a page.
pub(crate) struct PageRequest {
    pub store: Store,
    pub id: QueueId,
    pub from_seq: u64,
    pub end_seq: u64,
    /// Messages to read: what fits in the head's byte budget, at least one.
    pub max: usize,
    lane: usize,
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
        let tails = if self.tails.on_disk() {
            self.tails.pending_len() + self.tails.count()
        } else {
            0
        };
        self.ready.len() + self.delayed.len() + tails
    }

    /// A message arriving: `Some` when it goes to the ready list, `None` when its lane has a
    /// disk tail and it was queued behind it (in seq order).
    #[inline]
    pub(super) fn hold_behind_tail(&mut self, item: Ready) -> Option<Ready> {
        if !self.tails.on_disk() {
            return Some(item);
        }
        self.hold_behind_tail_slow(item)
    }

    #[inline(never)]
    fn hold_behind_tail_slow(&mut self, item: Ready) -> Option<Ready> {
        let lane = if self.tails.recovered {
            0
        } else {
            self.ready.lane_of(&item)
        };
        match self.tails.lanes.get_mut(lane) {
            Some(l) if l.disk.is_some() => {
                super::ready::insert_sorted(&mut l.pending, item);
                None
            }
            _ => Some(item),
        }
    }

    /// The lane to page in next: the first, in delivery order, with a disk tail and a head
    /// below [`PAGE_LOW`] (a recovered tail: the whole ready list below it).
    fn lane_to_page(&self) -> Option<usize> {
        if self.tails.recovered {
            return (self.ready.len() < PAGE_LOW).then_some(0);
        }
        (0..self.tails.lanes.len()).rev().find(|&lane| {
            self.tails.lanes[lane].disk.is_some() && self.ready.lane_len(lane) < PAGE_LOW
        })
    }

    /// Messages and bytes in memory a page-in of `lane` counts against its head budget: the
    /// lane's, or the whole ready list's for a recovered tail (it pages into every lane).
    fn head_of(&self, lane: usize) -> (usize, u64) {
        if self.tails.recovered {
            (self.ready.len(), self.ready.iter().map(|r| r.size).sum())
        } else {
            (self.ready.lane_len(lane), self.ready.lane_bytes(lane))
        }
    }

    /// Wakes the spill task when a head runs low and a disk tail waits.
    #[inline]
    pub(super) fn request_page_in(&mut self) {
        if self.tails.on_disk() && !self.want_page && self.lane_to_page().is_some() {
            if let Some(wake) = &self.wake {
                self.want_page = true;
                wake.notify_one();
            }
        }
    }

    /// [`Queue::page_request`] under the lock.
    fn page_request_locked(&mut self, max: usize) -> Option<PageRequest> {
        self.want_page = false;
        if self.deleted || self.busy {
            return None;
        }
        let lane = self.lane_to_page()?;
        let (head_len, head_bytes) = self.head_of(lane);
        let disk = self.tails.lanes[lane].disk.as_ref()?;
        let room = disk.head_bytes.saturating_sub(head_bytes);
        let average = (disk.bytes / disk.count.max(1) as u64).max(1);
        let fits = usize::try_from(room / average).unwrap_or(usize::MAX);
        // A head still three quarters full waits: pages come in a quarter of the budget at
        // least, not a message per ack.
        if head_len > 0 && (fits == 0 || room < disk.head_bytes / 4) {
            return None;
        }
        let request = PageRequest {
            store: disk.store.clone(),
            id: disk.id,
            from_seq: disk.from_seq,
            end_seq: disk.end_seq,
            max: fits.clamp(1, max),
            lane,
            epoch: self.epoch,
        };
        self.busy = true;
        Some(request)
    }

    /// A lane's disk tail is gone (paged in, or its first write failed): its waiting
    /// messages join the ready list.
    fn close_tail(&mut self, lane: usize) {
        let l = &mut self.tails.lanes[lane];
        if l.disk.take().is_some() {
            self.tails.spilled -= 1;
        }
        if lane == 0 {
            self.tails.recovered = false;
        }
        let pending = std::mem::take(&mut l.pending);
        self.ready.set_spilled(lane, false);
        self.ready.extend(pending);
    }
}

impl Queue {
    /// Messages kept in memory beyond the heads, which a spill could move to disk.
    pub(crate) fn spillable(&self) -> usize {
        let st = self.state.lock();
        if st.tails.holds_spill(st.ready.lanes()) {
            return 0;
        }
        (0..st.ready.lanes())
            .map(|lane| match st.tails.lanes.get(lane) {
                Some(Lane {
                    disk: Some(disk),
                    pending,
                    ..
                }) if Some(disk.id) == self.lane_id(&st, lane) => pending.len(),
                Some(Lane { disk: Some(_), .. }) => 0,
                _ => st.ready.lane_len(lane),
            })
            .sum()
    }

    /// Its lanes (see the module doc): one per priority, else one.
    pub(crate) fn lanes(&self) -> usize {
        self.state.lock().ready.lanes()
    }

    /// True while part of the queue lives on disk.
    pub(crate) fn has_disk_tail(&self) -> bool {
        self.state.lock().tails.on_disk()
    }

    /// The store id a lane spills under, if it has one yet: a durable FIFO or grouped
    /// queue's own id, else the lane's spill id.
    fn lane_id(&self, st: &QueueState, lane: usize) -> Option<QueueId> {
        match (&self.store, st.ready.lanes()) {
            (Some(qs), 1) => Some(qs.id),
            _ => st.tails.lanes.get(lane).and_then(|l| l.id),
        }
    }

    /// Takes up to `max` messages (and about `max_bytes`) to write to a disk tail, keeping
    /// a head of at most `head_count` messages and `head_bytes` bytes per lane in memory (a
    /// priority queue shares `head_bytes` between its levels). The lowest priority spills
    /// first. `None` when there is nothing to spill or the queue is busy (deleted, another
    /// spill or page-in in flight, a persistent publish between seq reservation and push, a
    /// purge's removal of the last disk tail not applied by the store yet, a tail left by
    /// recovery not paged in whole yet).
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
        if st.deleted
            || st.busy
            || st.reserving > 0
            || st.tails.holds_spill(st.ready.lanes())
            || max == 0
        {
            return None;
        }
        if let Some(ticket) = st.tail_removal {
            if store.durable_ticket() < ticket {
                return None;
            }
            st.tail_removal = None;
        }
        let lanes = st.ready.lanes();
        let used = (0..lanes)
            .filter(|&lane| st.ready.lane_len(lane) > 0)
            .count();
        let head_bytes = head_bytes / used.max(1) as u64;
        for lane in 0..lanes {
            let own = self.lane_id(st, lane);
            let (items, created) = match st.tails.lanes.get_mut(lane) {
                Some(Lane {
                    disk: Some(disk),
                    pending,
                    ..
                }) => {
                    if Some(disk.id) != own || pending.is_empty() {
                        continue;
                    }
                    let n = batch_len(pending, max, max_bytes);
                    (pending.drain(..n).collect::<Vec<_>>(), false)
                }
                _ => {
                    let Some(cut) =
                        st.ready
                            .spill_cut(lane, st.max_delivered, head_count, head_bytes)
                    else {
                        continue;
                    };
                    let mut tail = st.ready.split_lane(lane, cut);
                    let n = batch_len(&tail, max, max_bytes);
                    // Beyond this batch: still in memory, but now behind the disk tail.
                    st.tails.lane_mut(lane).pending = tail.split_off(n);
                    (tail.into(), true)
                }
            };
            return Some(self.start_spill(st, store, lane, items, created, head_bytes));
        }
        None
    }

    /// Accounts for `items` leaving lane `lane` for its disk tail (creating it) and marks the
    /// queue busy until [`Queue::finish_spill`].
    fn start_spill(
        &self,
        st: &mut QueueState,
        store: &Store,
        lane: usize,
        items: Vec<Ready>,
        created: bool,
        head_bytes: u64,
    ) -> SpillBatch {
        let id = match self.lane_id(st, lane) {
            Some(id) => id,
            None => {
                let id = store.transient_queue_id();
                st.tails.lane_mut(lane).id = Some(id);
                id
            }
        };
        let copy_persistent = self.store.as_ref().is_none_or(|qs| qs.id != id);
        let bytes: u64 = items.iter().map(|r| r.size).sum();
        st.counters.ready_bytes = st.counters.ready_bytes.saturating_sub(bytes);
        Self::remember_arrivals(st, lane, &items);
        let (first, end) = match (items.first(), items.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq + 1),
            _ => (0, 0),
        };
        let copied = items
            .iter()
            .filter(|_| copy_persistent)
            .filter_map(|r| Some((r.stored?, r.redelivered)));
        let l = st.tails.lane_mut(lane);
        match &mut l.disk {
            Some(disk) => {
                disk.count += items.len();
                disk.bytes += bytes;
                disk.end_seq = end;
                disk.head_bytes = head_bytes;
                disk.copied.extend(copied);
            }
            None => {
                l.disk = Some(DiskTail {
                    store: store.clone(),
                    id,
                    from_seq: first,
                    end_seq: end,
                    count: items.len(),
                    bytes,
                    head_bytes,
                    copied: copied.collect(),
                });
                st.tails.spilled += 1;
                st.ready.set_spilled(lane, true);
            }
        }
        st.busy = true;
        SpillBatch {
            store: store.clone(),
            id,
            items,
            copy_persistent,
            lane,
            epoch: st.epoch,
            created,
        }
    }

    /// Ends a spill. On success the batch's messages are dropped from memory (after the
    /// lock is released); on failure they go back in place. Returns the seq range to discard
    /// from the spill tree when the queue was purged or deleted while writing.
    pub(crate) fn finish_spill(&self, batch: SpillBatch, written: bool) -> Option<Range<u64>> {
        let SpillBatch {
            items,
            lane,
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
        self.wake_gets(st);
        if st.epoch != epoch {
            return written.then_some(range);
        }
        if written {
            drop(guard);
            drop(items);
            return None;
        }
        // The write failed (disk full): keep the messages in memory, in order.
        let bytes: u64 = items.iter().map(|r| r.size).sum();
        st.counters.ready_bytes += bytes;
        let l = st.tails.lane_mut(lane);
        l.arrivals.retain(|(seq, _)| !range.contains(seq));
        if created {
            st.ready.extend(items);
            st.close_tail(lane);
            drain(st, self.store.as_ref());
        } else {
            if let Some(disk) = &mut l.disk {
                disk.count -= items.len().min(disk.count);
                disk.bytes = disk.bytes.saturating_sub(bytes);
                disk.end_seq = range.start;
                disk.copied.retain(|(r, _)| r.seq < range.start);
            }
            let mut back: VecDeque<Ready> = items.into();
            back.append(&mut l.pending);
            l.pending = back;
        }
        None
    }

    /// A page-in to run when a head is low and a disk tail waits; marks the queue busy.
    /// At most `max` messages, and no more than fit in the lane's head byte budget.
    pub(crate) fn page_request(&self, max: usize) -> Option<PageRequest> {
        self.state.lock().page_request_locked(max)
    }

    /// Ends a page-in: appends the messages read (`None` when the read failed) to the head
    /// and shrinks the disk tail; once it is empty, the lane's `pending` follows them.
    pub(crate) fn finish_page(&self, request: &PageRequest, paged: Option<Vec<Ready>>) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.busy = false;
        self.wake_gets(st);
        if st.epoch != request.epoch {
            return;
        }
        let Some(mut paged) = paged else {
            return;
        };
        let lane = request.lane;
        self.restore_arrivals(st, lane, &mut paged);
        let Some(disk) = st.tails.lanes[lane].disk.as_mut() else {
            return;
        };
        for item in &mut paged {
            while disk.copied.front().is_some_and(|(r, _)| r.seq < item.seq) {
                disk.copied.pop_front();
            }
            if disk.copied.front().is_some_and(|(r, _)| r.seq == item.seq) {
                if let Some((stored, redelivered)) = disk.copied.pop_front() {
                    item.stored = Some(stored);
                    item.redelivered = redelivered;
                }
            }
        }
        let n = paged.len();
        let bytes: u64 = paged.iter().map(|r| r.size).sum();
        if let Some(last) = paged.last() {
            disk.from_seq = last.seq + 1;
        }
        disk.count = disk.count.saturating_sub(n);
        disk.bytes = disk.bytes.saturating_sub(bytes);
        // An empty page means nothing is left in the range, whatever the count said.
        let emptied = disk.count == 0 || n == 0 || disk.from_seq >= disk.end_seq;
        st.counters.ready_bytes += bytes;
        st.ready.extend(paged);
        if emptied {
            st.close_tail(lane);
        }
        // Messages that expired on disk go before anything is delivered.
        let mut dead = Vec::new();
        self.expire_due(st, Instant::now(), usize::MAX, &mut dead);
        drain(st, self.store.as_ref());
        drop(guard);
        self.dead_letter(dead);
    }

    /// Wakes the `basic.get` calls waiting for the queue to be free of spill work.
    fn wake_gets(&self, st: &QueueState) {
        if st.tails.waiting_gets > 0 {
            self.spill_done.notify_all();
        }
    }

    /// Pages in the next messages of the disk tail for `basic.get`, whose head is empty;
    /// false when it could not (deleted, the read failed, or the queue stayed busy).
    ///
    /// `basic.get` is synchronous (the server calls it from the connection's reader task),
    /// so the read runs right here, through the same page request as the spill task, and
    /// off the async worker with `block_in_place` on a multi-threaded runtime. When the
    /// spill task has a spill or page-in of this queue in flight, it waits (inside
    /// `block_in_place`) on the queue's condition variable, which the spill task notifies
    /// when it finishes (at most [`GET_WAIT`]); on a current-thread runtime that task cannot
    /// finish while we block, so get answers empty and leaves the page-in to it.
    pub(crate) fn page_in_for_get(&self, vhost: &VHost) -> bool {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let run = || {
            let deadline = Instant::now() + GET_WAIT;
            let mut st = self.state.lock();
            loop {
                if st.deleted {
                    return false;
                }
                if !st.tails.on_disk() || st.ready.front().is_some() {
                    return true;
                }
                if !st.busy {
                    let Some(request) = st.page_request_locked(GET_PAGE) else {
                        return false;
                    };
                    drop(st);
                    let paged = crate::spill::page_in_blocking(vhost, &request);
                    let ok = paged.is_some();
                    self.finish_page(&request, paged);
                    return ok;
                }
                if !multi_thread {
                    return false;
                }
                st.tails.waiting_gets += 1;
                let waited = self.spill_done.wait_until(&mut st, deadline);
                st.tails.waiting_gets -= 1;
                if waited.timed_out() {
                    return false;
                }
            }
        };
        if multi_thread {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    /// After recovery loaded the first `loaded` messages: the rest stays on disk as the tail
    /// of the whole queue, kept as lane 0's (see the module doc; each message paged in is
    /// filed under its priority). `average` is the mean size of the messages loaded,
    /// standing for those left on disk.
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
        if st.tails.lane_mut(0).disk.is_none() {
            st.tails.spilled += 1;
        }
        st.tails.recovered = true;
        st.ready.set_spilled(0, true);
        st.tails.lane_mut(0).disk = Some(DiskTail {
            store,
            id,
            from_seq: range.start,
            end_seq: range.end,
            count,
            bytes: average.saturating_mul(count as u64),
            head_bytes: RECOVERED_HEAD_BYTES,
            copied: VecDeque::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lockgate_store::{SpillRecord, StoreConfig};
    use lockgate_wire::{BasicProperties, ContentHeader, FieldTable};

    use super::*;
    use crate::message::Message;
    use crate::{Broker, BrokerConfig, Channel, ConnectionId, QueueFlags};

    /// `basic.get` on a queue whose head is empty while the spill task pages its disk tail
    /// in: the get waits for that page-in (on the queue's condition variable) and returns
    /// its first message, rather than answering empty or reading the disk itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_waits_for_the_spill_tasks_page_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let config = BrokerConfig {
            memory_high_watermark: 1 << 20,
            ..BrokerConfig::default()
        };
        let broker = Broker::with_store(config, store.clone());
        let vhost = broker.vhost("/").expect("vhost");
        vhost
            .declare_queue(
                ConnectionId(1),
                "q",
                QueueFlags::default(),
                FieldTable::default(),
            )
            .expect("declare");
        for i in 0..1000 {
            let body = format!("{i:08}:{}", "x".repeat(1000));
            let header = ContentHeader::new(60, body.len() as u64, BasicProperties::default())
                .expect("header");
            let message = Message::new(String::new(), "q".into(), header, Bytes::from(body));
            vhost.publish(false, message).expect("publish");
        }
        let queue = vhost.queue("q").expect("queue");
        let batch = queue
            .take_spill(&store, 10, u64::MAX, usize::MAX, u64::MAX)
            .expect("a batch");
        let records: Vec<SpillRecord> = batch
            .items
            .iter()
            .map(|r| SpillRecord {
                seq: r.seq,
                header: crate::durable::message_header(&r.message),
                body: r.message.body_bytes(),
            })
            .collect();
        store.spill_async(batch.id, records).await.expect("spilled");
        assert!(queue.finish_spill(batch, true).is_none());
        let mut channel = Channel::discarding(&vhost);
        for i in 0..10 {
            let ok = channel.get("q", true).expect("get").expect("the head");
            assert_eq!(&ok.message.body()[..8], format!("{i:08}").as_bytes());
        }
        // The spill task's page-in, in flight.
        let request = queue.page_request(512).expect("a page-in");
        let get = tokio::task::spawn_blocking(move || channel.get("q", true));
        while queue.state.lock().tails.waiting_gets == 0 {
            tokio::task::yield_now().await;
        }
        let paged = crate::spill::page_in_blocking(&vhost, &request);
        assert_eq!(paged.as_ref().map(Vec::len), Some(512));
        queue.finish_page(&request, paged);
        let ok = get
            .await
            .expect("get ran")
            .expect("get")
            .expect("the page's first message");
        assert_eq!(&ok.message.body()[..8], b"00000010");
        assert_eq!(ok.message_count, 989);
    }
}
