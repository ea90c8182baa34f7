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
//! A policy that changes the queue's shape (`max-priority`, `group-header`) changes its
//! lanes, and a disk tail of the old shape holds messages of several new lanes. So a reshape
//! with a disk tail *re-files*: the old tails become the sources of one [`Refile`], and the
//! new lanes start with the in-memory messages before the first seq on disk. The sources are
//! paged in merged seq order (a page per source at most in memory, as a look-ahead), and each
//! message, and each one held in memory behind them (the old shape's in-memory messages from
//! that seq on, and arrivals meanwhile), is filed under its new lane once nothing still on
//! disk comes before it: into the lane's head, or behind its own disk tail if it has one. The
//! new lanes spill as usual meanwhile, so what was read goes back to disk, per lane, when
//! memory is short: a page is read while memory is below the spill threshold, once the
//! spill task has looked at the queue since the last page, or when nothing filed is left in
//! memory (consumers or `basic.get` wait for it, as for a lane's page-in). The queue
//! delivers what is filed meanwhile, in the new shape's order: for a FIFO or grouped queue
//! that is its order anyway (the sources feed its lane behind its head). A priority queue
//! delivers each filed message after every filed one of a higher priority, and the
//! re-filing files in seq order, so during a re-filing a message is never delivered before
//! a higher-priority message published before it, and FIFO within a priority holds; but a
//! message still waiting to be filed (on disk, or published during the re-filing) may come
//! after lower-priority messages published before it, as if it had been published when it
//! is filed. Strict priority order over the whole backlog would have to read all of it
//! before the first delivery, which under sustained publishing may never end. Once the
//! re-filing is done, every message is at its priority, wherever it was. A spill write or
//! page-in in flight during a reshape finds its tail among the sources when it ends. The
//! messages held in memory spill too, as any lane's (those published meanwhile are what can
//! grow): the first such spill makes them a source of their own, under a spill id, and later
//! held messages past its end are appended to it; it is read back in merged seq order with
//! the others, so they keep their place.
//!
//! The store I/O runs on the spill task, never under the queue lock: these functions only
//! move messages between the lists and account for them.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockgate_store::{QueueId, Store, StoredRef};

use super::ready::insert_sorted;
use super::{drain, Queue, QueueState, Ready};
use crate::vhost::VHost;

/// The in-memory head is paged back up when it falls below this many messages.
pub(crate) const PAGE_LOW: usize = 256;

/// Head byte budget of a queue recovered with a disk tail, until the spill task sets one.
const RECOVERED_HEAD_BYTES: u64 = 4 << 20;

/// The lane of a [`SpillBatch`] of a re-filing's held messages (none of the lanes).
const HELD: usize = usize::MAX;

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

/// A reshape's re-filing of the old shape's disk tails into the new lanes (module doc).
#[derive(Default)]
struct Refile {
    /// The old disk tails (and the source of held messages), paged in merged seq order.
    sources: Vec<Source>,
    /// Messages in memory waiting for the sources to be read past them (seq order): the old
    /// shape's from the first seq on disk on, and those arrived since. They spill to the
    /// source of held messages ([`Queue::take_held_spill`]).
    held: VecDeque<Ready>,
    /// A page was read since the spill task last ranked the queue for spilling.
    read: bool,
}

/// One disk tail being re-filed.
struct Source {
    disk: DiskTail,
    /// Arrival times of its messages that can expire (seq order), restored on page-in.
    arrivals: VecDeque<(u64, Instant)>,
    /// Read, not filed yet: it comes after a message still in another source.
    buffer: VecDeque<Ready>,
    /// Made of messages the re-filing held, spilled ([`Queue::take_held_spill`]): further
    /// held messages past its end are appended to it.
    held: bool,
}

impl Source {
    /// No message of it is left with a seq below this one.
    fn position(&self) -> u64 {
        self.buffer.front().map_or(self.disk.from_seq, |r| r.seq)
    }

    fn exhausted(&self) -> bool {
        self.buffer.is_empty() && (self.disk.count == 0 || self.disk.from_seq >= self.disk.end_seq)
    }
}

impl Refile {
    /// The source to file from (or read) next: the one furthest behind.
    fn next(&self) -> Option<usize> {
        (0..self.sources.len()).min_by_key(|&i| self.sources[i].position())
    }

    /// Every message still in a source has this seq or more.
    fn position(&self) -> u64 {
        self.sources
            .iter()
            .map(Source::position)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The messages read or held, not filed yet.
    fn waiting(&self) -> impl Iterator<Item = &Ready> + '_ {
        let buffers = self.sources.iter().flat_map(|s| s.buffer.iter());
        self.held.iter().chain(buffers)
    }
}

/// A queue's lanes with their disk tails. See the module doc.
#[derive(Default)]
pub(crate) struct Tails {
    lanes: Vec<Lane>,
    /// Lanes with a disk tail, and one more while a re-filing runs: with none, the message
    /// path pays one comparison.
    spilled: usize,
    /// The re-filing of a reshape, while it runs.
    refile: Option<Box<Refile>>,
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

    /// Messages waiting behind a disk tail, in memory (a re-filing's too).
    pub fn pending_len(&self) -> usize {
        let refile = self.refile.iter().map(|r| {
            let buffers: usize = r.sources.iter().map(|s| s.buffer.len()).sum();
            r.held.len() + buffers
        });
        self.lanes
            .iter()
            .map(|l| l.pending.len())
            .chain(refile)
            .sum()
    }

    /// The messages waiting behind a disk tail (a re-filing's too).
    pub fn pending(&self) -> impl Iterator<Item = &Ready> + '_ {
        let refile = self.refile.iter().flat_map(|r| r.waiting());
        self.lanes
            .iter()
            .flat_map(|l| l.pending.iter())
            .chain(refile)
    }

    /// Removes the waiting message `seq` if `pred` holds for it.
    pub fn remove_pending(&mut self, seq: u64, pred: impl Fn(&Ready) -> bool) -> Option<Ready> {
        let lanes = self.lanes.iter_mut().map(|l| &mut l.pending);
        let refile = self.refile.iter_mut().flat_map(|r| {
            let buffers = r.sources.iter_mut().map(|s| &mut s.buffer);
            std::iter::once(&mut r.held).chain(buffers)
        });
        lanes.chain(refile).find_map(|list| {
            let at = list.partition_point(|r| r.seq < seq);
            if list.get(at).is_some_and(&pred) {
                list.remove(at)
            } else {
                None
            }
        })
    }

    /// The first seq on disk, re-filing included.
    fn first_on_disk(&self) -> Option<u64> {
        let refile = self.refile.iter().map(|r| r.position());
        let lanes = self.lanes.iter().filter_map(|l| l.disk.as_ref());
        lanes.map(|d| d.from_seq).chain(refile).min()
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
        if let Some(refile) = self.refile.take() {
            let Refile {
                sources, mut held, ..
            } = *refile;
            for source in sources {
                held.extend(source.buffer);
                disks.push(source.disk);
            }
            // Their stored copies go with a tail's purge (by range from a tail kept under
            // `durable`, one by one below it).
            if let Some(disk) = disks.first_mut() {
                let waiting = held.iter();
                disk.copied
                    .extend(waiting.filter_map(|r| Some((r.stored()?, r.redelivered))));
            }
            pending.extend(held);
        }
        for lane in &mut self.lanes {
            if let Some(mut disk) = lane.disk.take() {
                if Some(disk.id) != durable {
                    let waiting = lane.pending.iter();
                    disk.copied
                        .extend(waiting.filter_map(|r| Some((r.stored()?, r.redelivered))));
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
        let refile = self.refile.iter().flat_map(|r| r.sources.iter());
        let lanes = self.lanes.iter().filter_map(|l| l.disk.as_ref());
        lanes.chain(refile.map(|s| &s.disk))
    }

    /// Source `source` of the re-filing, while one runs.
    fn source_mut(&mut self, source: usize) -> Option<&mut Source> {
        self.refile.as_mut()?.sources.get_mut(source)
    }

    fn lane_mut(&mut self, lane: usize) -> &mut Lane {
        if self.lanes.len() <= lane {
            self.lanes.resize_with(lane + 1, Lane::default);
        }
        &mut self.lanes[lane]
    }
}

impl DiskTail {
    /// The tail that `items` (in seq order), written under `id`, start; `head_bytes` sizes
    /// its pages, `copy`: as in [`DiskTail::append`].
    fn of(store: &Store, id: QueueId, items: &[Ready], head_bytes: u64, copy: bool) -> Self {
        let from_seq = items.first().map_or(0, |r| r.seq);
        let mut disk = Self {
            store: store.clone(),
            id,
            from_seq,
            end_seq: from_seq,
            count: 0,
            bytes: 0,
            head_bytes,
            copied: VecDeque::new(),
        };
        disk.append(items, copy);
        disk
    }

    /// Accounts for `items` (in seq order) written after its end; `copy`: their persistent
    /// messages are written too, and their stored copies kept until paged in.
    fn append(&mut self, items: &[Ready], copy: bool) {
        let Some(last) = items.last() else {
            return;
        };
        self.count += items.len();
        self.bytes += items.iter().map(|r| r.size()).sum::<u64>();
        self.end_seq = last.seq + 1;
        if copy {
            let copied = items
                .iter()
                .filter_map(|r| Some((r.stored()?, r.redelivered)));
            self.copied.extend(copied);
        }
    }

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

    /// Gives the messages of a page their stored copies and redelivered flags back (a
    /// priority level of a durable queue), and accounts for them leaving the disk: `complete`
    /// when nothing before `end_seq` is left after them.
    fn paged(&mut self, paged: &mut [Ready], complete: bool) {
        for item in paged.iter_mut() {
            while self.copied.front().is_some_and(|(r, _)| r.seq < item.seq) {
                self.copied.pop_front();
            }
            if self.copied.front().is_some_and(|(r, _)| r.seq == item.seq) {
                if let Some((stored, redelivered)) = self.copied.pop_front() {
                    item.set_stored(stored);
                    item.redelivered = redelivered;
                }
            }
        }
        let bytes: u64 = paged.iter().map(|r| r.size()).sum();
        match paged.last() {
            _ if complete => self.from_seq = self.end_seq,
            Some(last) => self.from_seq = last.seq + 1,
            None => {}
        }
        self.count = self.count.saturating_sub(paged.len());
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// How many of its messages `bytes` hold, at their average size.
    fn fits(&self, bytes: u64) -> usize {
        let average = (self.bytes / self.count.max(1) as u64).max(1);
        usize::try_from(bytes / average).unwrap_or(usize::MAX)
    }

    /// A page-in of its first `fits` messages (1 to `max`), for `lane`.
    fn page_request(&self, fits: usize, max: usize, lane: usize, epoch: u64) -> PageRequest {
        PageRequest {
            store: self.store.clone(),
            id: self.id,
            from_seq: self.from_seq,
            end_seq: self.end_seq,
            max: fits.clamp(1, max),
            lane,
            epoch,
        }
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
        bytes += r.size();
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
        if let Some(refile) = &mut self.tails.refile {
            insert_sorted(&mut refile.held, item);
            return None;
        }
        let lane = if self.tails.recovered {
            0
        } else {
            self.ready.lane_of(&item)
        };
        match self.tails.lanes.get_mut(lane) {
            Some(l) if l.disk.is_some() => {
                insert_sorted(&mut l.pending, item);
                None
            }
            _ => Some(item),
        }
    }

    /// Files the messages into the shape the arguments ask for, after a policy changed them
    /// (see the module doc): with a disk tail, they are re-filed. A spill write or page-in in
    /// flight finds its tail among the sources when it ends.
    pub(super) fn reshape(&mut self) {
        let hold_from = self.tails.first_on_disk();
        let args = Arc::clone(&self.args);
        let reshaped = self
            .ready
            .reshape(&args, &self.consumers, self.max_delivered, hold_from);
        let (Some(held), Some(_)) = (reshaped, hold_from) else {
            return;
        };
        let mut refile = self.tails.refile.take().unwrap_or_default();
        refile.held.extend(held);
        for lane in std::mem::take(&mut self.tails.lanes) {
            refile.held.extend(lane.pending);
            if let Some(disk) = lane.disk {
                refile.sources.push(Source {
                    disk,
                    arrivals: lane.arrivals,
                    buffer: VecDeque::new(),
                    held: false,
                });
            }
        }
        refile
            .held
            .make_contiguous()
            .sort_unstable_by_key(|r| r.seq);
        self.tails.refile = Some(refile);
        self.tails.spilled = 1;
        self.tails.recovered = false;
    }

    /// Files what the re-filing may file now: the messages read and held that no message
    /// still on disk comes before. Ends it once every source is read.
    fn advance_refile(&mut self) {
        let Some(mut refile) = self.tails.refile.take() else {
            return;
        };
        let mut filed = Vec::new();
        loop {
            refile.sources.retain(|s| !s.exhausted());
            let Some(next) = refile.next() else { break };
            let bound = (0..refile.sources.len())
                .filter(|&i| i != next)
                .map(|i| refile.sources[i].position())
                .min()
                .unwrap_or(u64::MAX);
            let buffer = &mut refile.sources[next].buffer;
            if buffer.is_empty() {
                break;
            }
            // Seqs are unique: a bound equal to the front is another source's lower bound.
            while buffer.front().is_some_and(|r| r.seq <= bound) {
                filed.extend(buffer.pop_front());
            }
        }
        let position = refile.position();
        while refile.held.front().is_some_and(|r| r.seq < position) {
            filed.extend(refile.held.pop_front());
        }
        if refile.sources.is_empty() {
            filed.extend(refile.held.drain(..));
            self.tails.spilled -= 1;
        } else {
            self.tails.refile = Some(refile);
        }
        filed.sort_unstable_by_key(|r| r.seq);
        for item in filed {
            self.file(item);
        }
    }

    /// A spill write to a tail that became source `source` failed: its messages stay in
    /// memory, filed like those held once nothing on disk comes before them.
    fn unspill_source(&mut self, source: usize, items: Vec<Ready>, range: &Range<u64>, bytes: u64) {
        let Some(refile) = self.tails.refile.as_mut() else {
            return;
        };
        let s = &mut refile.sources[source];
        s.arrivals.retain(|(seq, _)| !range.contains(seq));
        let disk = &mut s.disk;
        disk.count -= items.len().min(disk.count);
        disk.bytes = disk.bytes.saturating_sub(bytes);
        disk.end_seq = range.start;
        disk.copied.retain(|(r, _)| r.seq < range.start);
        for item in items {
            insert_sorted(&mut refile.held, item);
        }
        self.advance_refile();
    }

    /// Files a message under its lane: behind the lane's disk tail if it has one, else in
    /// the ready list.
    fn file(&mut self, item: Ready) {
        let lane = self.ready.lane_of(&item);
        match self.tails.lanes.get_mut(lane) {
            Some(l) if l.disk.is_some() => insert_sorted(&mut l.pending, item),
            _ => self.ready.insert(item),
        }
    }

    /// The next page of a re-filing, if it runs and may read: memory is below the spill
    /// threshold (`room`), the spill task ranked the queue since the last page, or nothing
    /// filed is left in memory (the consumers wait for this page, as for a lane's page-in).
    fn refile_request(&mut self, max: usize, room: bool) -> Option<PageRequest> {
        let starved = self.ready.is_empty();
        let refile = self.tails.refile.as_mut()?;
        if !room && !starved && refile.read {
            return None;
        }
        let source = refile.next()?;
        let disk = &refile.sources[source].disk;
        // A page per source may wait in memory: they share a head's budget.
        let budget = disk.head_bytes / refile.sources.len() as u64;
        let request = disk.page_request(disk.fits(budget), max, 0, self.epoch);
        refile.read = true;
        Some(request)
    }

    /// Where the re-filing's held messages that may spill start (an index in `held`): those
    /// past the end of its source of held messages, if it has one (they are appended to it),
    /// and after the last delivery. `None` without a re-filing.
    fn held_spill_from(&self) -> Option<usize> {
        let refile = self.tails.refile.as_ref()?;
        let appended = refile
            .sources
            .iter()
            .filter(|s| s.held)
            .map(|s| s.disk.end_seq);
        let undelivered = self.max_delivered.map(|m| m + 1);
        let from = appended.max().max(undelivered).unwrap_or(0);
        Some(refile.held.partition_point(|r| r.seq < from))
    }

    /// The re-filing's source a page-in or spill of tail `id` is about, `matches` telling
    /// its disk tail.
    fn source_of(&self, id: QueueId, matches: impl Fn(&DiskTail) -> bool) -> Option<usize> {
        let refile = self.tails.refile.as_ref()?;
        (0..refile.sources.len()).find(|&i| {
            let disk = &refile.sources[i].disk;
            disk.id == id && matches(disk)
        })
    }

    /// Files a page read from source `source` of the re-filing.
    fn finish_refile_page(
        &mut self,
        queue: &Queue,
        request: &PageRequest,
        source: usize,
        mut paged: Vec<Ready>,
    ) {
        let Some(s) = self.tails.source_mut(source) else {
            return;
        };
        // TTL restore works on a lane's arrivals: lend the source's to a spare lane.
        let arrivals = std::mem::take(&mut s.arrivals);
        let spare = self.tails.lanes.len();
        *self.tails.arrivals_mut(spare) = arrivals;
        queue.restore_arrivals(self, spare, &mut paged);
        let arrivals = std::mem::take(self.tails.arrivals_mut(spare));
        self.tails.lanes.truncate(spare);
        let Some(s) = self.tails.source_mut(source) else {
            return;
        };
        s.arrivals = arrivals;
        // A short page read everything before the end.
        let complete = paged.len() < request.max;
        s.disk.paged(&mut paged, complete);
        self.counters.ready_bytes += paged.iter().map(|r| r.size()).sum::<u64>();
        s.buffer.extend(paged);
        self.advance_refile();
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
            (self.ready.len(), self.ready.iter().map(|r| r.size()).sum())
        } else {
            (self.ready.lane_len(lane), self.ready.lane_bytes(lane))
        }
    }

    /// Wakes the spill task when a head runs low and a disk tail waits.
    #[inline]
    pub(super) fn request_page_in(&mut self) {
        if self.tails.on_disk()
            && !self.want_page
            && (self.tails.refile.is_some() || self.lane_to_page().is_some())
        {
            if let Some(wake) = &self.wake {
                self.want_page = true;
                wake.notify_one();
            }
        }
    }

    /// [`Queue::page_request`] under the lock; `room`: memory is below the spill threshold.
    /// A lane's page-in goes before a re-filing's page: what the lanes hold on disk was
    /// filed already, and a priority level waiting for its page holds back the lower ones.
    fn page_request_locked(&mut self, max: usize, room: bool) -> Option<PageRequest> {
        self.want_page = false;
        if self.deleted || self.busy {
            return None;
        }
        let request = self
            .lane_request(max)
            .or_else(|| self.refile_request(max, room))?;
        self.busy = true;
        Some(request)
    }

    /// The page-in of the lane to page next ([`QueueState::lane_to_page`]), if its head has
    /// room for one.
    fn lane_request(&self, max: usize) -> Option<PageRequest> {
        let lane = self.lane_to_page()?;
        let (head_len, head_bytes) = self.head_of(lane);
        let disk = self.tails.lanes[lane].disk.as_ref()?;
        let room = disk.head_bytes.saturating_sub(head_bytes);
        let fits = disk.fits(room);
        // A head still three quarters full waits: pages come in a quarter of the budget at
        // least, not a message per ack.
        if head_len > 0 && (fits == 0 || room < disk.head_bytes / 4) {
            return None;
        }
        Some(disk.page_request(fits, max, lane, self.epoch))
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
    /// Messages kept in memory beyond the heads, which a spill could move to disk. The spill
    /// task asks before it spills: a re-filing may read its next page (see the module doc).
    pub(crate) fn spillable(&self) -> usize {
        let mut st = self.state.lock();
        if let Some(refile) = &mut st.tails.refile {
            refile.read = false;
        }
        if st.tails.holds_spill(st.ready.lanes()) {
            return 0;
        }
        let held = match (st.held_spill_from(), &st.tails.refile) {
            (Some(from), Some(refile)) => refile.held.len() - from,
            _ => 0,
        };
        held + (0..st.ready.lanes())
            .map(|lane| match st.tails.lanes.get(lane) {
                Some(Lane {
                    disk: Some(_),
                    pending,
                    ..
                }) => pending.len(),
                _ => st.ready.lane_len(lane),
            })
            .sum::<usize>()
    }

    /// Its lanes (see the module doc): one per priority, else one.
    pub(crate) fn lanes(&self) -> usize {
        self.state.lock().ready.lanes()
    }

    /// True while part of the queue lives on disk.
    pub(crate) fn has_disk_tail(&self) -> bool {
        self.state.lock().tails.on_disk()
    }

    /// The store id a lane spills under, if it has one yet: its disk tail's; else a durable
    /// FIFO or grouped queue's own id, unless a re-filing runs; else the lane's spill id.
    ///
    /// A re-filing's source may be kept under the queue's own id, and a page-in takes every
    /// spilled record of its id it reads, beyond its tail's end too: so while one runs, the
    /// lane spills under an id of its own, as a priority level does.
    fn lane_id(&self, st: &QueueState, lane: usize) -> Option<QueueId> {
        let l = st.tails.lanes.get(lane);
        if let Some(disk) = l.and_then(|l| l.disk.as_ref()) {
            return Some(disk.id);
        }
        match (&self.store, st.ready.lanes(), &st.tails.refile) {
            (Some(qs), 1, None) => Some(qs.id),
            _ => l.and_then(|l| l.id),
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
        if let Some(batch) = self.take_held_spill(st, store, head_bytes, max, max_bytes) {
            return Some(batch);
        }
        let head_bytes = head_bytes / used.max(1) as u64;
        for lane in 0..lanes {
            let (items, created) = match st.tails.lanes.get_mut(lane) {
                Some(Lane {
                    disk: Some(_),
                    pending,
                    ..
                }) => {
                    if pending.is_empty() {
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

    /// Takes up to `max` messages (and about `max_bytes`) that a re-filing holds in memory,
    /// to write to its source of held messages (created by the first such spill, under a
    /// spill id of its own): like the old tails, it is read back in merged seq order, so
    /// what arrives during a re-filing obeys the spill budget and keeps its place (see the
    /// module doc). `head_bytes` sizes the source's pages. Marks the queue busy.
    fn take_held_spill(
        &self,
        st: &mut QueueState,
        store: &Store,
        head_bytes: u64,
        max: usize,
        max_bytes: u64,
    ) -> Option<SpillBatch> {
        let from = st.held_spill_from()?;
        let ttl = st.args.message_ttl;
        let refile = st.tails.refile.as_mut()?;
        if from == refile.held.len() {
            return None;
        }
        let mut taken = refile.held.split_off(from);
        let n = batch_len(&taken, max, max_bytes);
        refile.held.extend(taken.split_off(n));
        let items: Vec<Ready> = taken.into();
        let arrivals = items
            .iter()
            .filter(|r| r.message.expires_at(ttl).is_some())
            .map(|r| (r.seq, r.message.received_at()));
        let id = match refile.sources.iter_mut().find(|s| s.held) {
            Some(source) => {
                let disk = &mut source.disk;
                if disk.count == 0 || disk.from_seq >= disk.end_seq {
                    // Read to its end: it starts again at this batch.
                    disk.from_seq = items[0].seq;
                }
                disk.append(&items, true);
                source.arrivals.extend(arrivals);
                disk.id
            }
            None => {
                let id = store.transient_queue_id();
                refile.sources.push(Source {
                    disk: DiskTail::of(store, id, &items, head_bytes, true),
                    arrivals: arrivals.collect(),
                    buffer: VecDeque::new(),
                    held: true,
                });
                id
            }
        };
        let bytes: u64 = items.iter().map(|r| r.size()).sum();
        st.counters.ready_bytes = st.counters.ready_bytes.saturating_sub(bytes);
        st.busy = true;
        Some(SpillBatch {
            store: store.clone(),
            id,
            items,
            copy_persistent: true,
            lane: HELD,
            epoch: st.epoch,
            created: false,
        })
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
        let bytes: u64 = items.iter().map(|r| r.size()).sum();
        st.counters.ready_bytes = st.counters.ready_bytes.saturating_sub(bytes);
        Self::remember_arrivals(st, lane, &items);
        let l = st.tails.lane_mut(lane);
        match &mut l.disk {
            Some(disk) => {
                disk.append(&items, copy_persistent);
                disk.head_bytes = head_bytes;
            }
            None => {
                l.disk = Some(DiskTail::of(store, id, &items, head_bytes, copy_persistent));
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
            id: batch_id,
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
        let bytes: u64 = items.iter().map(|r| r.size()).sum();
        st.counters.ready_bytes += bytes;
        let own = |d: &DiskTail| d.id == batch_id && d.end_seq == range.end;
        if !st
            .tails
            .lanes
            .get(lane)
            .and_then(|l| l.disk.as_ref())
            .is_some_and(own)
        {
            // A reshape made the tail a re-filing's source: what may be filed now is
            // deliverable.
            if let Some(source) = st.source_of(batch_id, own) {
                st.unspill_source(source, items, &range, bytes);
                drain(st, self.store.as_ref());
            }
            return None;
        }
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
        let room = self.below_spill_threshold();
        self.state.lock().page_request_locked(max, room)
    }

    /// The broker's memory is below the spill task's threshold (half the high watermark).
    fn below_spill_threshold(&self) -> bool {
        let watermark = self.memory.high_watermark();
        watermark == 0 || self.memory.used() <= watermark / 2
    }

    /// Ends a page-in: appends the messages read (`None` when the read failed) to the head
    /// and shrinks the disk tail; once it is empty, the lane's `pending` follows them. A
    /// re-filing's page is filed instead (see the module doc).
    pub(crate) fn finish_page(&self, request: &PageRequest, paged: Option<Vec<Ready>>) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.busy = false;
        self.wake_gets(st);
        if let (true, Some(paged)) = (st.epoch == request.epoch, paged) {
            // A re-filing's page, or a lane's whose tail a reshape made a source meanwhile.
            match st.source_of(request.id, |d| d.from_seq == request.from_seq) {
                Some(source) => st.finish_refile_page(self, request, source, paged),
                None => self.file_page(st, request, paged),
            }
        }
        // Messages that expired on disk go before anything is delivered.
        let mut dead = Vec::new();
        self.expire_due(st, Instant::now(), usize::MAX, &mut dead);
        drain(st, self.store.as_ref());
        drop(guard);
        self.dead_letter(dead);
    }

    /// [`Queue::finish_page`] of a lane's own disk tail.
    fn file_page(&self, st: &mut QueueState, request: &PageRequest, mut paged: Vec<Ready>) {
        let lane = request.lane;
        self.restore_arrivals(st, lane, &mut paged);
        let disk = st.tails.lanes.get_mut(lane).and_then(|l| l.disk.as_mut());
        let Some(disk) = disk.filter(|d| d.id == request.id && d.from_seq == request.from_seq)
        else {
            return;
        };
        disk.paged(&mut paged, false);
        let n = paged.len();
        // An empty page means nothing is left in the range, whatever the count said.
        let emptied = disk.count == 0 || n == 0 || disk.from_seq >= disk.end_seq;
        st.counters.ready_bytes += paged.iter().map(|r| r.size()).sum::<u64>();
        st.ready.extend(paged);
        if emptied {
            st.close_tail(lane);
        }
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
                    let room = self.below_spill_threshold();
                    let Some(request) = st.page_request_locked(GET_PAGE, room) else {
                        return false;
                    };
                    drop(st);
                    let paged = crate::spill::page_in_blocking(vhost, &request);
                    let ok = paged.is_some();
                    self.finish_page(&request, paged);
                    if !ok {
                        return false;
                    }
                    // A re-filing's page may file nothing deliverable yet (its messages wait
                    // for another source, or go behind a lane's disk tail): read on.
                    st = self.state.lock();
                    continue;
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
    use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, FieldValue};

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
        let (_broker, vhost) = with_queue(&store, config, QueueFlags::default());
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
        write(&store, &queue, batch).await;
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

    /// A broker on `store` with queue "q" declared with `flags`.
    fn with_queue(
        store: &Store,
        config: BrokerConfig,
        flags: QueueFlags,
    ) -> (Arc<Broker>, Arc<VHost>) {
        let broker = Broker::with_store(config, store.clone());
        let vhost = broker.vhost("/").expect("vhost");
        vhost
            .declare_queue(ConnectionId(1), "q", flags, FieldTable::default())
            .expect("declare");
        (broker, vhost)
    }

    /// Writes a spill batch as the spill task does (transient bodies only, unless copied).
    async fn write(store: &Store, queue: &Queue, batch: SpillBatch) {
        let records: Vec<SpillRecord> = batch
            .items
            .iter()
            .filter(|r| r.stored.is_none() || batch.copy_persistent)
            .map(|r| SpillRecord {
                seq: r.seq,
                header: crate::durable::message_header(&r.message),
                body: r.message.body_bytes(),
            })
            .collect();
        store.spill_async(batch.id, records).await.expect("spilled");
        assert!(queue.finish_spill(batch, true).is_none());
    }

    /// A durable FIFO queue with transient messages on disk (kept under its own store id)
    /// is made a grouped queue, and its one lane spills again while the re-filing runs: a
    /// page-in of that lane's new tail must not read (and take) the re-filing's records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_spilled_while_re_filing_keeps_apart_from_the_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        // Always over the spill threshold: one re-filing page per ranking.
        let config = BrokerConfig {
            memory_high_watermark: 1,
            ..BrokerConfig::default()
        };
        let flags = QueueFlags {
            durable: true,
            ..QueueFlags::default()
        };
        let (_broker, vhost) = with_queue(&store, config, flags);
        for i in 0..1000u16 {
            let body = format!("{i:08}");
            let header = ContentHeader::new(60, body.len() as u64, BasicProperties::default())
                .expect("header");
            let message = Message::new(String::new(), "q".into(), header, Bytes::from(body));
            vhost.publish(false, message).expect("publish");
        }
        let queue = vhost.queue("q").expect("queue");
        let spill = |queue: &Queue| queue.take_spill(&store, 10, u64::MAX, usize::MAX, u64::MAX);
        write(&store, &queue, spill(&queue).expect("a batch")).await;
        make_grouped_queue(&vhost);
        let request = queue.page_request(100).expect("a re-filing page");
        queue.finish_page(&request, crate::spill::page_in_blocking(&vhost, &request));
        write(&store, &queue, spill(&queue).expect("the lane spills")).await;
        while queue.has_disk_tail() {
            let request = queue.page_request(512).expect("a page");
            queue.finish_page(&request, crate::spill::page_in_blocking(&vhost, &request));
            queue.spillable();
        }
        let mut channel = Channel::discarding(&vhost);
        let got: Vec<u16> = std::iter::from_fn(|| channel.get("q", true).expect("get"))
            .map(|ok| {
                let body = std::str::from_utf8(ok.message.body()).expect("utf-8");
                body.parse().expect("index")
            })
            .collect();
        assert_eq!(got, (0..1000).collect::<Vec<u16>>());
    }

    /// Broker on `store` with FIFO queue "q" holding messages 0..1000 of priorities `i % 3`,
    /// all but the first 10 written to a disk tail.
    async fn spilled_priorities(store: &Store) -> (Arc<Broker>, Arc<VHost>, Arc<Queue>) {
        let (broker, vhost) = with_queue(store, BrokerConfig::default(), QueueFlags::default());
        publish_prioritised(&vhost, 0..1000);
        let queue = vhost.queue("q").expect("queue");
        write(store, &queue, spill(store, &queue).expect("a batch")).await;
        (broker, vhost, queue)
    }

    /// Publishes messages `range` to "q": priority `i % 3`, the number in the body.
    fn publish_prioritised(vhost: &VHost, range: Range<u16>) {
        for i in range {
            let properties = BasicProperties {
                priority: Some(u8::try_from(i % 3).expect("priority")),
                ..BasicProperties::default()
            };
            let body = format!("{i:08}");
            let header = ContentHeader::new(60, body.len() as u64, properties).expect("header");
            let message = Message::new(String::new(), "q".into(), header, Bytes::from(body));
            vhost.publish(false, message).expect("publish");
        }
    }

    /// What the spill task takes from `queue` keeping heads of 10 messages.
    fn spill(store: &Store, queue: &Queue) -> Option<SpillBatch> {
        queue.take_spill(store, 10, u64::MAX, usize::MAX, u64::MAX)
    }

    /// A policy makes "q" a grouped queue (groups by header "k").
    fn make_grouped_queue(vhost: &VHost) {
        let definition = [(
            "group-header".to_owned(),
            FieldValue::LongString("k".into()),
        )]
        .into_iter()
        .collect();
        let policy = crate::Policy::new("/", "p", "^q$", crate::ApplyTo::Queues, 0, definition)
            .expect("policy");
        vhost.set_policies(vec![policy]);
    }

    /// A policy makes "q" a priority queue (levels 0 to 2).
    fn make_priority_queue(vhost: &VHost) {
        let definition = [("max-priority".to_owned(), FieldValue::I64(2))]
            .into_iter()
            .collect();
        let policy = crate::Policy::new("/", "p", "^q$", crate::ApplyTo::Queues, 0, definition)
            .expect("policy");
        vhost.set_policies(vec![policy]);
    }

    /// Pages the re-filing in to its end, then takes every message with `basic.get`: they
    /// must be `0..n` in priority order, FIFO within a priority.
    fn re_file_and_get_in_priority_order(vhost: &Arc<VHost>, queue: &Queue, n: u16) {
        while queue.has_disk_tail() {
            let request = queue.page_request(100).expect("the next page");
            queue.finish_page(&request, crate::spill::page_in_blocking(vhost, &request));
            queue.spillable();
        }
        let mut channel = Channel::discarding(vhost);
        let got: Vec<u16> = std::iter::from_fn(|| channel.get("q", true).expect("get"))
            .map(|ok| {
                let body = std::str::from_utf8(ok.message.body()).expect("utf-8");
                body.parse().expect("index")
            })
            .collect();
        let mut expected: Vec<u16> = (0..n).collect();
        expected.sort_by_key(|&i| (std::cmp::Reverse(i % 3), i));
        assert_eq!(got, expected);
    }

    /// A policy makes a FIFO queue a priority queue while a page-in of its disk tail runs:
    /// the page comes back to the tail, now a re-filing's source, and is filed by priority;
    /// once the whole tail is re-filed, everything comes in priority order, FIFO within a
    /// priority.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reshape_during_a_page_in_files_the_page_by_priority() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let (_broker, vhost, queue) = spilled_priorities(&store).await;
        let request = queue.page_request(100).expect("a page-in");
        make_priority_queue(&vhost);
        let paged = crate::spill::page_in_blocking(&vhost, &request);
        queue.finish_page(&request, paged);
        re_file_and_get_in_priority_order(&vhost, &queue, 1000);
    }

    /// Messages published while a priority queue re-files its disk tail spill like any
    /// others (to a source of their own, which a later spill appends to), rather than wait
    /// in memory for the re-filing to end; every message then comes once, in priority order,
    /// FIFO within a priority.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_published_during_a_re_filing_spill_and_keep_their_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let (_broker, vhost, queue) = spilled_priorities(&store).await;
        make_priority_queue(&vhost);
        publish_prioritised(&vhost, 1000..1500);
        let batch = spill(&store, &queue).expect("the messages held spill");
        assert_eq!(
            (batch.items.len(), batch.items[0].seq),
            (500, 1000),
            "the messages published during the re-filing"
        );
        write(&store, &queue, batch).await;
        assert_eq!(
            queue.state.lock().tails.pending_len(),
            0,
            "none held in memory"
        );
        let request = queue.page_request(100).expect("a re-filing page");
        queue.finish_page(&request, crate::spill::page_in_blocking(&vhost, &request));
        queue.spillable();
        publish_prioritised(&vhost, 1500..1600);
        let batch = spill(&store, &queue).expect("the messages held since spill");
        assert_eq!((batch.items.len(), batch.items[0].seq), (100, 1500));
        write(&store, &queue, batch).await;
        re_file_and_get_in_priority_order(&vhost, &queue, 1600);
    }

    /// `basic.get` on a queue made a priority queue while most of it is on disk, with memory
    /// over the spill threshold (the re-filing may read a page per ranking by the spill
    /// task, which does not run here) and messages published since waiting for the
    /// re-filing: every get answers a message while the count says one is left, reading the
    /// re-filing as far as it needs. They come FIFO within a priority, and none before a
    /// message of a higher priority published before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_answers_a_message_while_a_priority_queue_re_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let config = BrokerConfig {
            memory_high_watermark: 1,
            ..BrokerConfig::default()
        };
        let (_broker, vhost) = with_queue(&store, config, QueueFlags::default());
        publish_prioritised(&vhost, 0..1000);
        let queue = vhost.queue("q").expect("queue");
        write(&store, &queue, spill(&store, &queue).expect("a batch")).await;
        make_priority_queue(&vhost);
        publish_prioritised(&vhost, 1000..1100);
        let mut channel = Channel::discarding(&vhost);
        let mut got = Vec::new();
        for left in (0..1100u32).rev() {
            let ok = channel.get("q", true).expect("get").unwrap_or_else(|| {
                panic!("get-empty with {} ready, after {} got", left + 1, got.len())
            });
            assert_eq!(ok.message_count, left, "the count after a get");
            let body = std::str::from_utf8(ok.message.body()).expect("utf-8");
            got.push(body.parse::<u16>().expect("index"));
        }
        assert!(channel.get("q", true).expect("get").is_none(), "empty");
        let mut seen = got.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..1100).collect::<Vec<u16>>(), "every message once");
        let mut delivered = vec![false; got.len()];
        for (at, &i) in got.iter().enumerate() {
            let same_later = (i + 1..1100).any(|j| j % 3 == i % 3 && delivered[usize::from(j)]);
            let higher_earlier_left = (0..i).any(|j| j % 3 > i % 3 && !delivered[usize::from(j)]);
            assert!(
                !same_later && !higher_earlier_left,
                "message {i} at position {at}: out of order"
            );
            delivered[usize::from(i)] = true;
        }
    }

    /// A spill write of a FIFO queue's first batch fails (disk full) after a policy made the
    /// queue a grouped one, so its tail had become a re-filing's only source: the messages
    /// come back and end the re-filing, and a waiting consumer gets them at once, not at the
    /// next publish or ack.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_of_a_failed_spill_write_during_a_re_filing_go_to_the_consumers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let (_broker, vhost) = with_queue(&store, BrokerConfig::default(), QueueFlags::default());
        publish_prioritised(&vhost, 0..1000);
        let queue = vhost.queue("q").expect("queue");
        let batch = spill(&store, &queue).expect("a batch");
        make_grouped_queue(&vhost);
        let mut channel = Channel::discarding(&vhost);
        channel
            .consume("q", "c", true, false, &FieldTable::default(), |_| {})
            .expect("consume");
        assert_eq!(queue.message_count(), 990, "the head is delivered");
        assert!(queue.finish_spill(batch, false).is_none());
        assert!(!queue.has_disk_tail(), "the re-filing ended");
        assert_eq!(queue.message_count(), 0, "the rest is delivered");
    }
}
