//! The ready list: a queue's in-memory messages waiting for a consumer, in delivery order.
//!
//! Three shapes behind one API, chosen from the queue's arguments at declaration:
//!
//! - FIFO (no `x-max-priority`, no `x-group-header`): one `VecDeque` sorted by seq. This is
//!   the hot path; every operation is the `VecDeque` operation it was before the other shapes
//!   existed, behind one enum match.
//! - Priority (`x-max-priority` = N > 0): one `VecDeque` per priority 0..=N, each sorted by
//!   seq. A message's priority is its `priority` property, 0 when absent, N when above N
//!   (RabbitMQ's rule). Higher priorities are delivered first, FIFO within a priority; a
//!   requeued message goes back to its seq position within its priority.
//! - Grouped (`x-group-header`): messages kept per group with the consumer each group is
//!   assigned to (see `groups.rs`). `x-max-priority` is ignored on such a queue: per-key order
//!   is its contract.
//!
//! Spill (the disk tails, `spill.rs`) works on *lanes*, parts of the list that are each
//! delivered in seq order: a FIFO or grouped list is one lane (a grouped list's messages in
//! seq order, whatever their group), a priority list has one lane per priority. A lane's
//! disk tail holds its messages from a cut seq on ([`ReadyList::spill_cut`],
//! [`ReadyList::split_lane`]); messages paged back come in through [`ReadyList::extend`],
//! which files each under its priority or group. A priority level whose in-memory head is
//! empty while it still has messages on disk ([`ReadyList::set_spilled`]) stops delivery of
//! the lower levels until it is paged in, so spilling never changes the delivery order.
//! A reshape with messages on disk keeps in the new shape only those before the first seq
//! on disk ([`ReadyList::reshape`]); the rest is filed as the old disk tails are re-filed
//! (`spill.rs`), and the list delivers what is filed meanwhile.

use std::collections::VecDeque;
use std::ops::Index;

use std::sync::Arc;

use super::arguments::QueueArguments;
use super::groups::Groups;
use super::Ready;
use crate::consumer::Consumer;

/// A queue's ready messages. See the module doc.
pub(crate) struct ReadyList {
    inner: Inner,
}

enum Inner {
    Fifo(VecDeque<Ready>),
    Priority(Levels),
    Grouped(Box<Groups>),
}

/// One list per priority, index = priority.
struct Levels {
    levels: Vec<VecDeque<Ready>>,
    len: usize,
    /// Every level above this one is empty and has nothing on disk: delivery starts looking
    /// here, not at 255.
    top: usize,
    /// Per level: part of it is on disk, after its in-memory messages.
    spilled: Vec<bool>,
    /// Per level: the highest seq taken from it (delivered, got or dropped); its disk tail
    /// starts after it, so that a requeued message always sorts before the tail.
    popped: Vec<Option<u64>>,
}

impl Default for ReadyList {
    fn default() -> Self {
        Self {
            inner: Inner::Fifo(VecDeque::new()),
        }
    }
}

impl ReadyList {
    /// The shape the queue's arguments ask for. A single-active-consumer queue ignores the
    /// group header (one consumer takes every group anyway).
    pub fn new(arguments: &QueueArguments) -> Self {
        let inner = match (&arguments.group_header, arguments.max_priority) {
            (Some(header), _) if !arguments.single_active_consumer => {
                Inner::Grouped(Box::new(Groups::new(header.clone())))
            }
            (_, Some(max)) if max > 0 => Inner::Priority(Levels::new(usize::from(max) + 1)),
            _ => Inner::Fifo(VecDeque::new()),
        };
        Self { inner }
    }

    /// Changes the shape when the arguments changed (a policy set or removed
    /// `max-priority` or `group-header`): every message is filed again, except those from
    /// seq `hold_from` on, which are returned (in seq order) for the caller to file once the
    /// disk tails are re-filed (`spill.rs`). `None` when the shape stays. A new grouped list
    /// starts with `consumers` and no group; deliveries in flight are not tracked by it. A
    /// new priority list's levels start with what was taken before (see
    /// [`Levels::inherit_popped`]; `delivered` is the queue's highest delivered seq), so that
    /// deliveries in flight still sort before any disk tail when they come back.
    pub fn reshape(
        &mut self,
        arguments: &QueueArguments,
        consumers: &[Arc<Consumer>],
        delivered: Option<u64>,
        hold_from: Option<u64>,
    ) -> Option<VecDeque<Ready>> {
        let same = match (&self.inner, ReadyList::new(arguments).inner) {
            (Inner::Fifo(_), Inner::Fifo(_)) => true,
            (Inner::Priority(a), Inner::Priority(b)) => a.levels.len() == b.levels.len(),
            (Inner::Grouped(a), Inner::Grouped(b)) => a.header() == b.header(),
            _ => false,
        };
        if same {
            return None;
        }
        let old = self.take();
        *self = ReadyList::new(arguments);
        if let Inner::Priority(levels) = &mut self.inner {
            levels.inherit_popped(&old.inner, delivered);
        }
        if let Inner::Grouped(g) = &mut self.inner {
            for consumer in consumers {
                g.add_consumer(consumer);
            }
        }
        let (mut held, kept): (Vec<Ready>, Vec<Ready>) = old
            .iter_owned()
            .into_iter()
            .partition(|r| hold_from.is_some_and(|from| r.seq >= from));
        self.extend(kept);
        held.sort_unstable_by_key(|r| r.seq);
        Some(held.into())
    }

    /// An empty list of the same shape (a priority list remembers what was taken from each
    /// level: deliveries in flight may come back).
    fn empty_like(&self) -> Inner {
        match &self.inner {
            Inner::Fifo(_) | Inner::Grouped(_) => Inner::Fifo(VecDeque::new()),
            Inner::Priority(p) => Inner::Priority(Levels {
                popped: p.popped.clone(),
                ..Levels::new(p.levels.len())
            }),
        }
    }

    /// Messages in the list.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Fifo(l) => l.len(),
            Inner::Priority(p) => p.len,
            Inner::Grouped(g) => g.len(),
        }
    }

    /// True when no message is ready.
    #[inline]
    pub fn is_empty(&self) -> bool {
        match &self.inner {
            Inner::Fifo(l) => l.is_empty(),
            Inner::Priority(p) => p.len == 0,
            Inner::Grouped(g) => g.len() == 0,
        }
    }

    /// The group index of a grouped list.
    #[inline]
    pub(super) fn groups_mut(&mut self) -> Option<&mut Groups> {
        match &mut self.inner {
            Inner::Grouped(g) => Some(g),
            _ => None,
        }
    }

    /// Appends a message that arrived (or was paged in). Its seq is normally greater than
    /// every seq in its list; when it is not, it is inserted at its place instead.
    #[inline]
    pub fn push_back(&mut self, item: Ready) {
        self.insert(item);
    }

    /// Puts a message back at its seq position (within its priority, or its group): a
    /// requeue, or a message whose retry delay is over. A grouped list also counts it as no
    /// longer in flight.
    #[inline]
    pub fn insert(&mut self, item: Ready) {
        match &mut self.inner {
            Inner::Fifo(l) => insert_sorted(l, item),
            _ => self.insert_filed(item),
        }
    }

    /// [`ReadyList::insert`] for the priority and grouped shapes, kept out of the FIFO path.
    #[inline(never)]
    fn insert_filed(&mut self, item: Ready) {
        match &mut self.inner {
            Inner::Fifo(l) => insert_sorted(l, item),
            Inner::Priority(p) => p.insert(item),
            Inner::Grouped(g) => g.insert(item),
        }
    }

    /// The next message to deliver (for a grouped list: the oldest, whatever its group).
    #[inline]
    pub fn front(&self) -> Option<&Ready> {
        match &self.inner {
            Inner::Fifo(l) => l.front(),
            Inner::Priority(p) => p.levels[p.next_level()?].front(),
            Inner::Grouped(g) => g.front(),
        }
    }

    /// Takes the next message (for a grouped list: the oldest, whatever its group; this is
    /// what `basic.get` and drop-head use).
    #[inline]
    pub fn pop_front(&mut self) -> Option<Ready> {
        match &mut self.inner {
            Inner::Fifo(l) => l.pop_front(),
            _ => self.pop_filed(),
        }
    }

    /// [`ReadyList::pop_front`] for the priority and grouped shapes.
    #[inline(never)]
    fn pop_filed(&mut self) -> Option<Ready> {
        match &mut self.inner {
            Inner::Fifo(l) => l.pop_front(),
            Inner::Priority(p) => {
                while p.top > 0 && p.levels[p.top].is_empty() && !p.spilled[p.top] {
                    p.top -= 1;
                }
                let level = p.next_level()?;
                let item = p.levels[level].pop_front()?;
                p.len -= 1;
                p.popped[level] = p.popped[level].max(Some(item.seq));
                Some(item)
            }
            Inner::Grouped(g) => g.pop_front(),
        }
    }

    /// Removes the message with this seq, wherever it stands (TTL). O(log n) to find it plus
    /// the `VecDeque` removal (moves the shorter side); a priority list searches each
    /// priority, a grouped list finds the group in its seq index.
    pub fn remove(&mut self, seq: u64) -> Option<Ready> {
        match &mut self.inner {
            Inner::Fifo(l) => remove_seq(l, seq),
            Inner::Priority(p) => {
                let item = p.levels.iter_mut().find_map(|l| remove_seq(l, seq));
                p.len -= usize::from(item.is_some());
                item
            }
            Inner::Grouped(g) => g.remove(seq),
        }
    }

    /// The message with this seq, if it is in the list.
    pub fn find(&self, seq: u64) -> Option<&Ready> {
        match &self.inner {
            Inner::Fifo(l) => find_seq(l, seq),
            Inner::Priority(p) => p.levels.iter().find_map(|l| find_seq(l, seq)),
            Inner::Grouped(g) => g.find(seq),
        }
    }

    /// A delivery of this queue ended without coming back to the list (acked, rejected
    /// without requeue, dropped, dead-lettered): a grouped list forgets it as in flight, which
    /// lets its group move to another consumer. No-op for the other shapes.
    pub fn settled(&mut self, seq: u64) {
        if let Inner::Grouped(g) = &mut self.inner {
            g.settled(seq);
        }
    }

    /// The messages in delivery order (a grouped list: group by group, each in seq order).
    pub fn iter(&self) -> impl Iterator<Item = &Ready> + '_ {
        let (fifo, levels, groups) = match &self.inner {
            Inner::Fifo(l) => (Some(l), None, None),
            Inner::Priority(p) => (None, Some(p), None),
            Inner::Grouped(g) => (None, None, Some(g)),
        };
        fifo.into_iter()
            .flatten()
            .chain(
                levels
                    .into_iter()
                    .flat_map(|p| p.levels.iter().rev().flatten()),
            )
            .chain(groups.into_iter().flat_map(|g| g.iter()))
    }

    /// The `i`-th message in [`ReadyList::iter`] order (O(1) for FIFO, O(lists) otherwise).
    pub fn get(&self, i: usize) -> Option<&Ready> {
        match &self.inner {
            Inner::Fifo(l) => l.get(i),
            Inner::Priority(p) => nth(p.levels.iter().rev(), i),
            Inner::Grouped(g) => g.get(i),
        }
    }

    /// The messages, by value, in [`ReadyList::iter`] order.
    fn iter_owned(self) -> Vec<Ready> {
        match self.inner {
            Inner::Fifo(l) => l.into(),
            Inner::Priority(p) => p.levels.into_iter().rev().flatten().collect(),
            Inner::Grouped(mut g) => g.take_all().into(),
        }
    }

    /// Takes every message out, leaving an empty list of the same shape (a grouped list keeps
    /// its group assignments and in-flight counts). The returned list is only for iterating
    /// and dropping (outside the queue lock).
    pub fn take(&mut self) -> ReadyList {
        if let Inner::Grouped(g) = &mut self.inner {
            return ReadyList {
                inner: Inner::Fifo(g.take_all()),
            };
        }
        let empty = self.empty_like();
        ReadyList {
            inner: std::mem::replace(&mut self.inner, empty),
        }
    }

    /// The lanes of the list (see the module doc): one per priority, else one.
    pub fn lanes(&self) -> usize {
        match &self.inner {
            Inner::Priority(p) => p.levels.len(),
            _ => 1,
        }
    }

    /// The lane a message belongs to.
    #[inline]
    pub fn lane_of(&self, item: &Ready) -> usize {
        match &self.inner {
            Inner::Priority(p) => p.level_of(item),
            _ => 0,
        }
    }

    /// Messages of a lane in memory.
    pub fn lane_len(&self, lane: usize) -> usize {
        match &self.inner {
            Inner::Priority(p) => p.levels.get(lane).map_or(0, VecDeque::len),
            _ => self.len(),
        }
    }

    /// Bytes of a lane's messages in memory.
    pub fn lane_bytes(&self, lane: usize) -> u64 {
        match &self.inner {
            Inner::Priority(p) => p
                .levels
                .get(lane)
                .into_iter()
                .flatten()
                .map(|r| r.size())
                .sum(),
            _ => self.iter().map(|r| r.size()).sum(),
        }
    }

    /// Marks a priority level as having (or no longer having) messages on disk after its
    /// in-memory ones: while its head is empty, lower levels wait. No-op for the other
    /// shapes, whose disk tail comes after everything in memory anyway.
    pub fn set_spilled(&mut self, lane: usize, spilled: bool) {
        if let Inner::Priority(p) = &mut self.inner {
            if let Some(s) = p.spilled.get_mut(lane) {
                *s = spilled;
                if spilled {
                    p.top = p.top.max(lane);
                }
            }
        }
    }

    /// Where a disk tail of `lane` may start: the seq of the first message beyond a head of
    /// `head_count` messages and `head_bytes` bytes (in the lane's seq order) that was never
    /// taken before, i.e. after `delivered` (the queue's highest delivered seq; a priority
    /// level uses its own). `None` when nothing lies beyond.
    pub fn spill_cut(
        &self,
        lane: usize,
        delivered: Option<u64>,
        head_count: usize,
        head_bytes: u64,
    ) -> Option<u64> {
        match &self.inner {
            Inner::Fifo(l) => cut(l, delivered, head_count, head_bytes),
            Inner::Priority(p) => cut(p.levels.get(lane)?, p.popped[lane], head_count, head_bytes),
            Inner::Grouped(g) => g.spill_cut(delivered, head_count, head_bytes),
        }
    }

    /// Takes the messages of `lane` with seq ≥ `from_seq` out, in seq order (to spill them).
    pub fn split_lane(&mut self, lane: usize, from_seq: u64) -> VecDeque<Ready> {
        match &mut self.inner {
            Inner::Fifo(l) => l.split_off(l.partition_point(|r| r.seq < from_seq)),
            Inner::Priority(p) => {
                let Some(l) = p.levels.get_mut(lane) else {
                    return VecDeque::new();
                };
                let tail = l.split_off(l.partition_point(|r| r.seq < from_seq));
                p.len -= tail.len();
                tail
            }
            Inner::Grouped(g) => g.split_from(from_seq),
        }
    }

    /// Gives back what a burst left behind: a drained backlog must not pin its peak memory.
    #[inline]
    pub fn shrink(&mut self) {
        match &mut self.inner {
            Inner::Fifo(l) => shrink(l),
            Inner::Priority(p) => p.levels.iter_mut().for_each(shrink),
            Inner::Grouped(g) => g.shrink(),
        }
    }
}

impl Extend<Ready> for ReadyList {
    fn extend<T: IntoIterator<Item = Ready>>(&mut self, iter: T) {
        match &mut self.inner {
            Inner::Fifo(l) => {
                for item in iter {
                    insert_sorted(l, item);
                }
            }
            _ => {
                for item in iter {
                    self.push_back(item);
                }
            }
        }
    }
}

impl Index<usize> for ReadyList {
    type Output = Ready;

    /// # Panics
    /// When `i` is out of bounds, as `VecDeque`.
    fn index(&self, i: usize) -> &Ready {
        match self.get(i) {
            Some(r) => r,
            None => panic!("ready list index {i} out of bounds (len {})", self.len()),
        }
    }
}

impl Levels {
    fn new(n: usize) -> Self {
        Levels {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            top: 0,
            spilled: vec![false; n],
            popped: vec![None; n],
        }
    }

    /// The message priorities filed under `level`: its own, and every one above it for the
    /// top level.
    fn priorities(&self, level: usize) -> (usize, usize) {
        if level + 1 == self.levels.len() {
            (level, usize::from(u8::MAX))
        } else {
            (level, level)
        }
    }

    /// Sets the popped marks of a list replacing `old` (a reshape): a delivery in flight
    /// comes back to the level of its priority, so each level starts at the highest mark of
    /// the old levels that shared a priority with it. A FIFO or grouped list has no marks of
    /// its own: its one lane's is `delivered`, the queue's highest delivered seq.
    fn inherit_popped(&mut self, old: &Inner, delivered: Option<u64>) {
        for level in 0..self.levels.len() {
            let (low, high) = self.priorities(level);
            self.popped[level] = match old {
                Inner::Priority(p) => (0..p.levels.len())
                    .filter(|&o| {
                        let (old_low, old_high) = p.priorities(o);
                        old_low <= high && low <= old_high
                    })
                    .filter_map(|o| p.popped[o])
                    .max(),
                Inner::Fifo(_) | Inner::Grouped(_) => delivered,
            };
        }
    }

    /// A message's priority, capped at the queue's maximum.
    #[inline]
    fn level_of(&self, item: &Ready) -> usize {
        usize::from(item.message.priority()).min(self.levels.len() - 1)
    }

    /// The level delivery takes from next: the highest one holding messages, unless a
    /// higher one has an empty head and messages on disk (`None`: they go first, once paged
    /// in).
    #[inline]
    fn next_level(&self) -> Option<usize> {
        for level in (0..=self.top).rev() {
            if !self.levels[level].is_empty() {
                return Some(level);
            }
            if self.spilled[level] {
                return None;
            }
        }
        None
    }

    fn insert(&mut self, item: Ready) {
        let level = self.level_of(&item);
        insert_sorted(&mut self.levels[level], item);
        self.len += 1;
        self.top = self.top.max(level);
    }
}

/// [`ReadyList::spill_cut`] in one seq-sorted list.
fn cut(
    list: &VecDeque<Ready>,
    delivered: Option<u64>,
    head_count: usize,
    head_bytes: u64,
) -> Option<u64> {
    let min_start = list.partition_point(|r| delivered.is_some_and(|m| r.seq <= m));
    let (mut keep, mut bytes) = (0, 0);
    while keep < list.len() && keep < head_count && bytes < head_bytes {
        bytes += list[keep].size();
        keep += 1;
    }
    list.get(keep.max(min_start)).map(|r| r.seq)
}

/// The `i`-th message of `lists` taken one after the other.
pub(super) fn nth<'a>(
    lists: impl Iterator<Item = &'a VecDeque<Ready>>,
    mut i: usize,
) -> Option<&'a Ready> {
    for list in lists {
        if i < list.len() {
            return list.get(i);
        }
        i -= list.len();
    }
    None
}

/// Inserts `item` at its seq position; O(1) at either end (the usual cases: a new message
/// at the back, a requeue of the last delivery at the front).
#[inline]
pub(super) fn insert_sorted(list: &mut VecDeque<Ready>, item: Ready) {
    if list.back().is_none_or(|r| r.seq < item.seq) {
        list.push_back(item);
    } else {
        insert_before_back(list, item);
    }
}

#[inline(never)]
fn insert_before_back(list: &mut VecDeque<Ready>, item: Ready) {
    if list.front().is_some_and(|r| r.seq > item.seq) {
        list.push_front(item);
    } else {
        let at = list.partition_point(|r| r.seq < item.seq);
        list.insert(at, item);
    }
}

/// The message with this seq in a list sorted by seq.
pub(super) fn find_seq(list: &VecDeque<Ready>, seq: u64) -> Option<&Ready> {
    let at = list.binary_search_by_key(&seq, |r| r.seq).ok()?;
    list.get(at)
}

/// Removes the message with this seq from a list sorted by seq.
pub(super) fn remove_seq(list: &mut VecDeque<Ready>, seq: u64) -> Option<Ready> {
    let at = list.binary_search_by_key(&seq, |r| r.seq).ok()?;
    list.remove(at)
}

#[inline]
pub(super) fn shrink(list: &mut VecDeque<Ready>) {
    if list.capacity() > 1024 && list.len() < list.capacity() / 8 {
        list.shrink_to(list.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, FieldValue};

    use super::*;
    use crate::message::Message;

    fn item(seq: u64, priority: Option<u8>, key: Option<&str>) -> Ready {
        let headers = key.map(|k| {
            [(
                "k".to_owned(),
                FieldValue::LongString(Bytes::from(k.to_owned())),
            )]
            .into_iter()
            .collect::<FieldTable>()
        });
        let properties = BasicProperties {
            priority,
            headers,
            ..BasicProperties::default()
        };
        let header = ContentHeader::new(60, 0, properties).expect("header");
        let message = Message::new(String::new(), "q".into(), header, Bytes::new());
        Ready::new(seq, Arc::new(message), false, None)
    }

    #[test]
    fn a_ready_entry_is_four_words() {
        // A backlog's ready list holds one per message (a `VecDeque` of a power of two).
        assert_eq!(std::mem::size_of::<Ready>(), 32);
    }

    #[test]
    fn a_ready_entry_reads_back_its_size_and_stored_copy() {
        let mut r = item(7, Some(3), Some("g"));
        let size = r.message.size();
        assert!(size > 0);
        assert_eq!((r.size(), r.stored()), (size, None));
        let stored = lockgate_store::StoredRef {
            queue: lockgate_store::QueueId(u64::MAX),
            seq: 7,
            message: lockgate_store::MessageId(u64::MAX - 1),
        };
        r.set_stored(stored);
        assert_eq!(r.stored(), Some(stored));
        let kept = Ready::new(7, Arc::clone(&r.message), true, Some(stored));
        assert_eq!((kept.size(), kept.stored()), (size, Some(stored)));
        assert!(kept.redelivered);
        // A message of 4 GiB or more: its size is read from the message.
        r.size = Ready::SIZE_ELSEWHERE;
        assert_eq!(r.size(), size);
    }

    fn seqs(list: &ReadyList) -> Vec<u64> {
        list.iter().map(|r| r.seq).collect()
    }

    fn args(max_priority: Option<u8>, group: Option<&str>) -> QueueArguments {
        QueueArguments {
            max_priority,
            group_header: group.map(str::to_owned),
            ..QueueArguments::default()
        }
    }

    #[test]
    fn priority_list_orders_by_priority_then_seq_and_removes_anywhere() {
        let mut list = ReadyList::new(&args(Some(3), None));
        for (seq, p) in [
            (0, None),
            (1, Some(2)),
            (2, Some(7)),
            (3, Some(2)),
            (4, Some(0)),
        ] {
            list.push_back(item(seq, p, None));
        }
        assert_eq!(seqs(&list), [2, 1, 3, 0, 4]);
        assert_eq!(list.get(2).map(|r| r.seq), Some(3));
        assert_eq!(list[4].seq, 4);
        assert_eq!(list.remove(3).map(|r| r.seq), Some(3));
        assert!(list.find(3).is_none());
        list.insert(item(3, Some(2), None));
        assert_eq!(list.pop_front().map(|r| r.seq), Some(2));
        assert_eq!(list.front().map(|r| r.seq), Some(1));
        assert_eq!(list.lanes(), 4);
        let taken = list.take();
        assert_eq!((taken.len(), list.len()), (4, 0));
        list.push_back(item(9, Some(1), None));
        list.push_back(item(10, Some(3), None));
        assert_eq!(seqs(&list), [10, 9], "still a priority list after take");
    }

    #[test]
    fn grouped_list_keeps_global_order_for_get_and_removes_by_seq() {
        let mut list = ReadyList::new(&args(Some(9), Some("k")));
        for (seq, key) in [(0, Some("a")), (1, None), (2, Some("b")), (3, Some("a"))] {
            list.push_back(item(seq, Some(9), key));
        }
        assert_eq!(list.len(), 4);
        assert_eq!(list.front().map(|r| r.seq), Some(0));
        assert_eq!(list.remove(3).map(|r| r.seq), Some(3));
        assert_eq!(list.remove(3).map(|r| r.seq), None);
        assert_eq!(list.find(2).map(|r| r.seq), Some(2));
        let order: Vec<u64> = std::iter::from_fn(|| list.pop_front().map(|r| r.seq)).collect();
        assert_eq!(
            order,
            [0, 1, 2],
            "priorities are ignored on a grouped queue"
        );
        assert!(list.is_empty());
    }

    #[test]
    fn a_priority_level_with_messages_on_disk_holds_back_the_lower_levels() {
        let mut list = ReadyList::new(&args(Some(2), None));
        for (seq, p) in [
            (0, Some(2)),
            (1, Some(0)),
            (2, Some(2)),
            (3, Some(2)),
            (4, None),
        ] {
            list.push_back(item(seq, p, None));
        }
        assert_eq!(list.spill_cut(2, None, 1, u64::MAX), Some(2));
        let tail = list.split_lane(2, 2);
        assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
        list.set_spilled(2, true);
        assert_eq!(list.pop_front().map(|r| r.seq), Some(0));
        assert!(list.front().is_none(), "level 2 is on disk: level 0 waits");
        assert!(list.pop_front().is_none());
        assert_eq!(list.len(), 2);
        list.extend(tail);
        list.set_spilled(2, false);
        let order: Vec<u64> = std::iter::from_fn(|| list.pop_front().map(|r| r.seq)).collect();
        assert_eq!(order, [2, 3, 1, 4]);
        // A level's tail starts after what was taken from it: a requeue sorts before it.
        list.insert(item(3, Some(2), None));
        list.push_back(item(5, Some(2), None));
        list.push_back(item(6, Some(2), None));
        assert_eq!(list.spill_cut(2, None, 0, 0), Some(5));
    }

    #[test]
    fn a_grouped_list_spills_its_newest_messages_of_every_group() {
        let mut list = ReadyList::new(&args(None, Some("k")));
        for (seq, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "b"), (4, "a")] {
            list.push_back(item(seq, None, Some(key)));
        }
        list.push_back(item(5, None, None));
        assert_eq!(list.spill_cut(0, None, 2, u64::MAX), Some(2));
        assert_eq!(list.spill_cut(0, Some(3), 2, u64::MAX), Some(4));
        let tail = list.split_lane(0, 2);
        assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4, 5]);
        assert_eq!(seqs(&list), [0, 1]);
        assert!(list.find(3).is_none());
        list.extend(tail);
        assert_eq!(list.len(), 6);
        let order: Vec<u64> = std::iter::from_fn(|| list.pop_front().map(|r| r.seq)).collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn reshape_refiles_the_messages() {
        let mut list = ReadyList::new(&args(None, None));
        for (seq, p) in [(0, Some(1)), (1, Some(5)), (2, None)] {
            list.push_back(item(seq, p, None));
        }
        assert_eq!(seqs(&list), [0, 1, 2]);
        list.reshape(&args(Some(5), None), &[], None, None);
        assert_eq!(seqs(&list), [1, 0, 2]);
        list.reshape(&args(Some(5), None), &[], None, None);
        assert_eq!(seqs(&list), [1, 0, 2]);
        list.reshape(&args(None, None), &[], None, None);
        assert_eq!(seqs(&list), [0, 1, 2]);
    }

    #[test]
    fn reshape_keeps_requeued_deliveries_before_a_later_disk_tail() {
        // A FIFO list's mark is the queue's: 2, 3 and 4 are in flight and 1 was requeued.
        let mut list = ReadyList::new(&args(None, None));
        for seq in [0, 1, 5, 6] {
            list.push_back(item(seq, None, None));
        }
        list.reshape(&args(Some(1), None), &[], Some(4), None);
        assert_eq!(list.spill_cut(0, None, 0, 0), Some(5));
        // A priority list's marks follow the priorities they were taken from: level 1 held
        // priorities 1 and up, so new levels 1 and 3 start after what it gave out.
        let mut list = ReadyList::new(&args(Some(1), None));
        for (seq, p) in [
            (0, None),
            (1, Some(3)),
            (2, Some(1)),
            (3, None),
            (4, Some(3)),
            (5, Some(1)),
        ] {
            list.push_back(item(seq, p, None));
        }
        assert_eq!(list.pop_front().map(|r| r.seq), Some(1));
        assert_eq!(list.pop_front().map(|r| r.seq), Some(2));
        list.reshape(&args(Some(3), None), &[], Some(2), None);
        list.insert(item(1, Some(3), None));
        list.insert(item(2, Some(1), None));
        assert_eq!(list.spill_cut(3, None, 0, 0), Some(4));
        assert_eq!(list.spill_cut(1, None, 0, 0), Some(5));
        assert_eq!(
            list.spill_cut(0, None, 0, 0),
            Some(0),
            "nothing was taken from priority 0"
        );
    }
}
