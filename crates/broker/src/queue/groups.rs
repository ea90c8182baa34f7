//! Message groups (`x-group-header = "<header name>"`): messages with the same value of that
//! header go to the same consumer while it is subscribed, so a queue stays load-balanced
//! while each key keeps its order.
//!
//! The grouped shape of the ready list. Ready messages live per group (one `VecDeque` each,
//! sorted by seq); messages without the header ("loose") in one more list that any consumer
//! takes from. Each group is assigned to one consumer (its owner); every owner keeps the heads
//! of its groups in a `BTreeSet<(seq, group)>`, so the drain finds a consumer's next message
//! (the oldest of its groups' heads and the loose head) in O(log g), and a group whose
//! consumer has no credit never blocks the others behind it. A seq -> group index serves
//! removal by seq (TTL) in O(log n).
//!
//! Rules:
//! - A group is assigned when it gets a message and has no owner: to the consumer with the
//!   fewest groups. It stays with that consumer while the consumer is subscribed, also while
//!   idle (up to [`IDLE_GROUPS`] idle groups are remembered).
//! - A consumer joining takes idle groups (nothing in flight) from the consumers above their
//!   share until it has its own; a group with deliveries in flight never moves while its
//!   consumer is subscribed, so its order holds.
//! - A consumer leaving (cancel, channel close, connection loss) gives its groups with
//!   nothing in flight to the least loaded consumers at once. A group with deliveries in
//!   flight stays held (nobody gets its messages) until they are settled or requeued; a
//!   requeued delivery sorts by seq before the group's later messages, so the group's new
//!   consumer gets it first and per-key order holds across a crash. As a safety net, whenever
//!   the queue has no unacked delivery at all, every group counts as idle.
//! - Consumer priorities (`x-priority`): the drain serves the consumers of the highest
//!   priority first, round-robin among equals, so the loose messages go to the highest
//!   priority consumer with credit. Groups are still assigned by load, whatever the
//!   priority: a group sticks to its consumer, and giving every new group to the highest
//!   priority would leave the others nothing to take once it is at its prefetch limit.
//! - `basic.get`, drop-head and TTL take messages regardless of groups.
//! - The key is the header's value: strings and byte arrays by their bytes, other types by
//!   type and value (the integer 5 and the string "5" are different groups).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use lockgate_wire::FieldValue;

use super::ready::{find_seq, insert_sorted, nth, remove_seq, shrink};
use super::Ready;
use crate::consumer::Consumer;

/// Idle groups (nothing ready or in flight) remembered with their consumer, so that a key
/// keeps its consumer between bursts. Past this many, all idle groups are forgotten at once
/// (amortised O(1) per new group) and placed afresh when their key comes back: a queue with
/// an unbounded key space (order ids) holds bounded memory.
const IDLE_GROUPS: usize = 65_536;

#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey(Bytes);

struct Slot {
    key: GroupKey,
    /// Ready messages of the group, sorted by seq.
    ready: VecDeque<Ready>,
    /// Index in `owners`; `None` while the queue has no consumer.
    owner: Option<usize>,
    /// Deliveries of the group not settled yet.
    inflight: usize,
    /// Its consumer timed out: the group moves once nothing of it is in flight.
    handoff: bool,
}

struct Owner {
    /// Weak: the consumer holds its queue, and a deleted queue's consumers are never removed
    /// from it one by one.
    consumer: Weak<Consumer>,
    /// Removed from the queue; kept while it holds groups with deliveries in flight.
    gone: bool,
    /// A delivery to it timed out: it gets groups only when every consumer has.
    suspect: bool,
    /// The consumer's priority.
    priority: i64,
    /// When it last took a message ([`Groups::clock`]): among consumers of one priority,
    /// the one served longest ago goes first.
    served: u64,
    /// Groups assigned to it.
    groups: usize,
    /// (head seq, slot) of its groups that have ready messages.
    heads: BTreeSet<(u64, usize)>,
}

/// The grouped ready list and the group-to-consumer assignment. See the module doc.
pub(crate) struct Groups {
    header: String,
    loose: VecDeque<Ready>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_key: HashMap<GroupKey, usize>,
    /// (head seq, slot) of every group with ready messages: the global order.
    heads: BTreeSet<(u64, usize)>,
    owners: Vec<Option<Owner>>,
    /// Seq -> slot of the deliveries in flight.
    inflight: HashMap<u64, usize>,
    /// Seq -> slot of the ready messages of a group (TTL removes by seq).
    at: HashMap<u64, usize>,
    len: usize,
    /// Owner index to try first (round-robin), when all consumers have one priority.
    cursor: usize,
    /// The subscribed consumers do not all have one priority.
    prioritized: bool,
    /// Counts the deliveries of a prioritized drain (`Owner::served`).
    clock: u64,
    /// Subscribed owners in the order a prioritized drain tries them; reused.
    order: Vec<usize>,
}

impl Groups {
    pub fn new(header: String) -> Self {
        Self {
            header,
            loose: VecDeque::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            heads: BTreeSet::new(),
            owners: Vec::new(),
            inflight: HashMap::new(),
            at: HashMap::new(),
            len: 0,
            cursor: 0,
            prioritized: false,
            clock: 0,
            order: Vec::new(),
        }
    }

    pub fn header(&self) -> &str {
        &self.header
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn key_of(&self, item: &Ready) -> Option<GroupKey> {
        let headers = item.message.headers()?;
        Some(GroupKey(match headers.get(&self.header)? {
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => b.clone(),
            FieldValue::Void => return None,
            other => Bytes::from(format!("{other:?}")),
        }))
    }

    fn slot(&self, s: usize) -> &Slot {
        match self.slots.get(s) {
            Some(Some(slot)) => slot,
            _ => unreachable!("group slot {s} is live"),
        }
    }

    fn slot_mut(&mut self, s: usize) -> &mut Slot {
        match self.slots.get_mut(s) {
            Some(Some(slot)) => slot,
            _ => unreachable!("group slot {s} is live"),
        }
    }

    fn owner_index(&self, consumer: &Arc<Consumer>) -> Option<usize> {
        self.owners.iter().position(|o| {
            o.as_ref().is_some_and(|o| {
                !o.gone && std::ptr::eq(o.consumer.as_ptr(), Arc::as_ptr(consumer))
            })
        })
    }

    /// The subscribed consumer with the fewest groups, one that never timed out if any.
    fn least_loaded(&self) -> Option<usize> {
        self.owners
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                o.as_ref()
                    .filter(|o| !o.gone)
                    .map(|o| (o.suspect, o.groups, i))
            })
            .min()
            .map(|(_, _, i)| i)
    }

    /// The group of `key`, created (and assigned) when new.
    fn slot_for(&mut self, key: GroupKey) -> usize {
        if let Some(&s) = self.by_key.get(&key) {
            return s;
        }
        // Groups with messages ready or in flight, at most: the rest are idle.
        if self.by_key.len() >= IDLE_GROUPS + self.heads.len() + self.inflight.len() {
            self.forget_idle();
        }
        let slot = Slot {
            key: key.clone(),
            ready: VecDeque::new(),
            owner: None,
            inflight: 0,
            handoff: false,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(slot);
                s
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(key, s);
        let owner = self.least_loaded();
        self.set_owner(s, owner);
        s
    }

    /// Moves group `s` to `owner`, carrying its head along.
    fn set_owner(&mut self, s: usize, owner: Option<usize>) {
        let (old, head) = {
            let slot = self.slot(s);
            (slot.owner, slot.ready.front().map(|r| r.seq))
        };
        if let Some(o) = old.and_then(|o| self.owners[o].as_mut()) {
            o.groups -= 1;
            if let Some(h) = head {
                o.heads.remove(&(h, s));
            }
        }
        if let Some(o) = owner.and_then(|o| self.owners[o].as_mut()) {
            o.groups += 1;
            if let Some(h) = head {
                o.heads.insert((h, s));
            }
        }
        self.slot_mut(s).owner = owner;
        if let Some(o) = old {
            self.drop_owner_if_done(o);
        }
    }

    /// Forgets a departed owner once it holds no group.
    fn drop_owner_if_done(&mut self, o: usize) {
        if self.owners[o]
            .as_ref()
            .is_some_and(|w| w.gone && w.groups == 0)
        {
            self.owners[o] = None;
        }
    }

    /// Re-files group `s`'s head after its ready list changed at the front.
    fn head_changed(&mut self, s: usize, old_head: Option<u64>) {
        let (owner, head) = {
            let slot = self.slot(s);
            (slot.owner, slot.ready.front().map(|r| r.seq))
        };
        if old_head == head {
            return;
        }
        if let Some(h) = old_head {
            self.heads.remove(&(h, s));
        }
        if let Some(h) = head {
            self.heads.insert((h, s));
        }
        if let Some(o) = owner.and_then(|o| self.owners[o].as_mut()) {
            if let Some(h) = old_head {
                o.heads.remove(&(h, s));
            }
            if let Some(h) = head {
                o.heads.insert((h, s));
            }
        }
    }

    /// After group `s` lost a message or a delivery: a group with nothing in flight whose
    /// consumer is gone (or that has none) goes to the least loaded consumer, or is
    /// forgotten when it has nothing ready either. An idle group of a subscribed consumer
    /// stays with it (see [`IDLE_GROUPS`]).
    fn settle_slot(&mut self, s: usize) {
        let (empty, inflight, owner) = {
            let slot = self.slot(s);
            (slot.ready.is_empty(), slot.inflight, slot.owner)
        };
        if inflight > 0 {
            return;
        }
        let subscribed = owner.is_some_and(|o| self.owners[o].as_ref().is_some_and(|w| !w.gone));
        let handoff = std::mem::take(&mut self.slot_mut(s).handoff);
        if subscribed && !handoff {
            return;
        }
        if empty {
            self.forget(s);
        } else {
            let to = self.least_loaded();
            self.set_owner(s, to);
        }
    }

    fn forget(&mut self, s: usize) {
        self.set_owner(s, None);
        if let Some(slot) = self.slots[s].take() {
            self.by_key.remove(&slot.key);
        }
        self.free.push(s);
    }

    /// Forgets every idle group (nothing ready, nothing in flight).
    fn forget_idle(&mut self) {
        for s in 0..self.slots.len() {
            if self.slots[s]
                .as_ref()
                .is_some_and(|slot| slot.ready.is_empty() && slot.inflight == 0)
            {
                self.forget(s);
            }
        }
    }

    /// Files a message under its group (or the loose list). A seq in flight is a requeue:
    /// it no longer counts as in flight.
    pub fn insert(&mut self, item: Ready) {
        self.len += 1;
        let Some(key) = self.key_of(&item) else {
            insert_sorted(&mut self.loose, item);
            return;
        };
        let s = self.slot_for(key);
        let returning = self.inflight.remove(&item.seq).is_some();
        self.at.insert(item.seq, s);
        let old_head = self.slot(s).ready.front().map(|r| r.seq);
        {
            let slot = self.slot_mut(s);
            insert_sorted(&mut slot.ready, item);
            if returning {
                slot.inflight = slot.inflight.saturating_sub(1);
            }
        }
        self.head_changed(s, old_head);
        self.settle_slot(s);
    }

    /// A delivery to `consumer` timed out (`x-consumer-timeout`): a consumer that hangs must
    /// not keep its groups. Each of them moves to another consumer once nothing of it is in
    /// flight any more (the timed-out delivery is requeued next, so order holds), and the
    /// consumer gets groups again only when every other one has timed out too.
    pub fn timed_out(&mut self, consumer: &Arc<Consumer>) {
        let Some(o) = self.owner_index(consumer) else {
            return;
        };
        if let Some(w) = self.owners[o].as_mut() {
            w.suspect = true;
        }
        for slot in self.slots.iter_mut().flatten() {
            if slot.owner == Some(o) {
                slot.handoff = true;
            }
        }
    }

    /// A delivery ended for good: it no longer holds its group.
    pub fn settled(&mut self, seq: u64) {
        if let Some(s) = self.inflight.remove(&seq) {
            if let Some(Some(slot)) = self.slots.get_mut(s) {
                slot.inflight = slot.inflight.saturating_sub(1);
                self.settle_slot(s);
            }
        }
    }

    /// Where the oldest message is: (seq, its group or `None` for loose).
    fn oldest(&self) -> Option<(u64, Option<usize>)> {
        let loose = self.loose.front().map(|r| (r.seq, None));
        let grouped = self.heads.first().map(|&(seq, s)| (seq, Some(s)));
        match (loose, grouped) {
            (Some(l), Some(g)) => Some(if l.0 < g.0 { l } else { g }),
            (l, g) => l.or(g),
        }
    }

    pub fn front(&self) -> Option<&Ready> {
        match self.oldest()? {
            (_, None) => self.loose.front(),
            (_, Some(s)) => self.slot(s).ready.front(),
        }
    }

    /// Takes the head of group `s` (or the loose head).
    fn take_head(&mut self, s: Option<usize>) -> Option<Ready> {
        let Some(s) = s else {
            let item = self.loose.pop_front();
            self.len -= usize::from(item.is_some());
            return item;
        };
        let item = self.slot_mut(s).ready.pop_front()?;
        self.at.remove(&item.seq);
        self.len -= 1;
        self.head_changed(s, Some(item.seq));
        Some(item)
    }

    pub fn pop_front(&mut self) -> Option<Ready> {
        let (_, s) = self.oldest()?;
        let item = self.take_head(s);
        if let Some(s) = s {
            self.settle_slot(s);
        }
        item
    }

    pub fn remove(&mut self, seq: u64) -> Option<Ready> {
        if let Some(item) = remove_seq(&mut self.loose, seq) {
            self.len -= 1;
            return Some(item);
        }
        let s = self.at.remove(&seq)?;
        let old_head = self.slot(s).ready.front().map(|r| r.seq);
        let item = remove_seq(&mut self.slot_mut(s).ready, seq)?;
        self.len -= 1;
        self.head_changed(s, old_head);
        self.settle_slot(s);
        Some(item)
    }

    pub fn find(&self, seq: u64) -> Option<&Ready> {
        find_seq(&self.loose, seq).or_else(|| find_seq(&self.slot(*self.at.get(&seq)?).ready, seq))
    }

    pub fn get(&self, i: usize) -> Option<&Ready> {
        nth(
            std::iter::once(&self.loose).chain(self.slots.iter().flatten().map(|s| &s.ready)),
            i,
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ready> + '_ {
        self.loose.iter().chain(
            self.slots
                .iter()
                .flatten()
                .flat_map(|slot| slot.ready.iter()),
        )
    }

    /// Takes every ready message out (purge, delete); groups with deliveries in flight stay
    /// assigned.
    pub fn take_all(&mut self) -> VecDeque<Ready> {
        let mut all = std::mem::take(&mut self.loose);
        let live: Vec<usize> = self.heads.iter().map(|&(_, s)| s).collect();
        for s in live {
            let old_head = self.slot(s).ready.front().map(|r| r.seq);
            let taken = std::mem::take(&mut self.slot_mut(s).ready);
            all.extend(taken);
            self.head_changed(s, old_head);
            self.settle_slot(s);
        }
        self.len = 0;
        self.at.clear();
        all
    }

    pub fn shrink(&mut self) {
        shrink(&mut self.loose);
    }

    /// Where a disk tail may start (see `ReadyList::spill_cut`): the messages are walked in
    /// seq order, whatever their group, by merging the loose list and the groups' lists.
    pub fn spill_cut(
        &self,
        delivered: Option<u64>,
        head_count: usize,
        head_bytes: u64,
    ) -> Option<u64> {
        let lists: Vec<&VecDeque<Ready>> = std::iter::once(&self.loose)
            .chain(self.heads.iter().map(|&(_, s)| &self.slot(s).ready))
            .collect();
        let mut next: BinaryHeap<Reverse<(u64, usize, usize)>> = lists
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.front().map(|r| Reverse((r.seq, i, 0))))
            .collect();
        let (mut count, mut bytes) = (0, 0);
        while let Some(Reverse((seq, i, at))) = next.pop() {
            if (count >= head_count || bytes >= head_bytes) && delivered.is_none_or(|m| seq > m) {
                return Some(seq);
            }
            count += 1;
            bytes += lists[i][at].size();
            if let Some(r) = lists[i].get(at + 1) {
                next.push(Reverse((r.seq, i, at + 1)));
            }
        }
        None
    }

    /// Takes every message with seq ≥ `from_seq` out, in seq order (to spill them). Groups
    /// keep their consumers; paged back in, the messages go to the end of their groups.
    pub fn split_from(&mut self, from_seq: u64) -> VecDeque<Ready> {
        let at = self.loose.partition_point(|r| r.seq < from_seq);
        let mut out: Vec<Ready> = self.loose.split_off(at).into();
        let live: Vec<usize> = self.heads.iter().map(|&(_, s)| s).collect();
        for s in live {
            let slot = self.slot_mut(s);
            let old_head = slot.ready.front().map(|r| r.seq);
            let at = slot.ready.partition_point(|r| r.seq < from_seq);
            let tail = slot.ready.split_off(at);
            if tail.is_empty() {
                continue;
            }
            for r in &tail {
                self.at.remove(&r.seq);
            }
            out.extend(tail);
            self.head_changed(s, old_head);
            self.settle_slot(s);
        }
        self.len -= out.len();
        out.sort_unstable_by_key(|r| r.seq);
        out.into()
    }

    /// A consumer subscribed: it takes the groups without an owner, then idle groups (nothing
    /// in flight) from the most loaded consumers until it has its share.
    pub fn add_consumer(&mut self, consumer: &Arc<Consumer>) {
        let owner = Owner {
            consumer: Arc::downgrade(consumer),
            gone: false,
            suspect: false,
            priority: consumer.priority,
            served: 0,
            groups: 0,
            heads: BTreeSet::new(),
        };
        let o = match self.owners.iter().position(Option::is_none) {
            Some(o) => {
                self.owners[o] = Some(owner);
                o
            }
            None => {
                self.owners.push(Some(owner));
                self.owners.len() - 1
            }
        };
        self.prioritized = self.priorities_differ();
        let unowned: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.as_ref().is_some_and(|slot| slot.owner.is_none()))
            .map(|(s, _)| s)
            .collect();
        for s in unowned {
            let to = self.least_loaded();
            self.set_owner(s, to);
        }
        let live = self.owners.iter().flatten().filter(|w| !w.gone).count();
        let total: usize = self
            .owners
            .iter()
            .flatten()
            .filter(|w| !w.gone)
            .map(|w| w.groups)
            .sum();
        let share = total / live.max(1);
        for s in 0..self.slots.len() {
            if self.owners[o].as_ref().is_none_or(|w| w.groups >= share) {
                break;
            }
            let Some(slot) = &self.slots[s] else { continue };
            let Some(from) = slot.owner else { continue };
            let movable = slot.inflight == 0
                && from != o
                && self.owners[from]
                    .as_ref()
                    .is_some_and(|w| !w.gone && w.groups > share);
            if movable {
                self.set_owner(s, Some(o));
            }
        }
    }

    /// A consumer went away: its idle groups move now, its groups with deliveries in flight
    /// once those are settled or requeued.
    pub fn remove_consumer(&mut self, consumer: &Arc<Consumer>) {
        let Some(o) = self.owner_index(consumer) else {
            return;
        };
        if let Some(w) = self.owners[o].as_mut() {
            w.gone = true;
        }
        self.prioritized = self.priorities_differ();
        self.release_gone(o);
    }

    /// True when the subscribed consumers do not all have one priority.
    fn priorities_differ(&self) -> bool {
        let mut live = self.owners.iter().flatten().filter(|w| !w.gone);
        let first = live.next().map(|w| w.priority);
        live.any(|w| Some(w.priority) != first)
    }

    /// Hands on the groups of departed owner `o` that have nothing in flight; all of them
    /// when the consumer has no unacked delivery left (a settle path that did not report).
    fn release_gone(&mut self, o: usize) {
        let held: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.as_ref().is_some_and(|slot| slot.owner == Some(o)))
            .map(|(s, _)| s)
            .collect();
        for s in held {
            self.settle_slot(s);
        }
        self.drop_owner_if_done(o);
    }

    /// The queue has no unacked delivery at all (its count is kept under the queue lock): any
    /// in-flight count left is stale (a settle path that did not report), so it is cleared.
    fn forget_inflight(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        self.inflight.clear();
        for s in 0..self.slots.len() {
            if let Some(slot) = self.slots[s].as_mut() {
                slot.inflight = 0;
                self.settle_slot(s);
            }
        }
    }

    /// Hands ready messages to subscribed consumers with credit, round-robin (by priority
    /// first when they differ, see [`Groups::drain_by_priority`]): each takes the oldest of
    /// its groups' heads and the loose head. `deliver` hands a message to a consumer, or
    /// gives it back when the consumer's connection is gone.
    /// `queue_idle`: the queue has no unacked delivery (see [`Groups::forget_inflight`]).
    /// `passed_over`: consumers whose deliveries timed out and are being requeued, tried
    /// after the others when priorities differ.
    pub fn drain(
        &mut self,
        queue_idle: bool,
        passed_over: &[Weak<Consumer>],
        mut deliver: impl FnMut(&Arc<Consumer>, Ready) -> Result<(), Ready>,
    ) {
        if queue_idle {
            self.forget_inflight();
        }
        if self.prioritized {
            self.drain_by_priority(passed_over, &mut deliver);
            return;
        }
        let n = self.owners.len();
        let mut idle = 0;
        let mut o = self.cursor;
        while idle < n && self.len > 0 {
            o %= n;
            if self.deliver_one(o, &mut deliver) {
                idle = 0;
                self.cursor = (o + 1) % n;
            } else {
                idle += 1;
            }
            o += 1;
        }
    }

    /// [`Groups::drain`] when the consumers' priorities differ: each message goes to the
    /// first consumer that takes one, trying them by priority, highest first, and among
    /// equals the one served longest ago first (RabbitMQ's round-robin within a priority);
    /// `passed_over` last of all.
    fn drain_by_priority(
        &mut self,
        passed_over: &[Weak<Consumer>],
        deliver: &mut impl FnMut(&Arc<Consumer>, Ready) -> Result<(), Ready>,
    ) {
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(
            self.owners
                .iter()
                .enumerate()
                .filter(|(_, w)| w.as_ref().is_some_and(|w| !w.gone))
                .map(|(o, _)| o),
        );
        // (passed over, priority): the consumers taking turns, in the order tried.
        let rank = |w: &Owner| {
            let passed = passed_over.iter().any(|p| Weak::ptr_eq(&w.consumer, p));
            (passed, Reverse(w.priority))
        };
        order.sort_by_key(|&o| self.owners[o].as_ref().map(|w| (rank(w), w.served)));
        'messages: while self.len > 0 {
            for i in 0..order.len() {
                if !self.deliver_one(order[i], deliver) {
                    continue;
                }
                self.clock += 1;
                let turn = self.owners[order[i]].as_mut().map(|w| {
                    w.served = self.clock;
                    rank(w)
                });
                // Behind the others it takes turns with.
                let level = order[i..]
                    .iter()
                    .take_while(|&&o| self.owners[o].as_ref().map(rank) == turn)
                    .count();
                order[i..i + level].rotate_left(1);
                continue 'messages;
            }
            break;
        }
        self.order = order;
    }

    /// One delivery to owner `o`, if it has a message and credit.
    fn deliver_one(
        &mut self,
        o: usize,
        deliver: &mut impl FnMut(&Arc<Consumer>, Ready) -> Result<(), Ready>,
    ) -> bool {
        let Some(w) = self.owners[o].as_ref().filter(|w| !w.gone) else {
            return false;
        };
        let group = w.heads.first().copied();
        let loose = self.loose.front().map(|r| r.seq);
        let from = match (group, loose) {
            (Some((g, s)), Some(l)) if g < l => Some(s),
            (Some((_, s)), None) => Some(s),
            (_, Some(_)) => None,
            (None, None) => return false,
        };
        let Some(consumer) = w.consumer.upgrade() else {
            return false;
        };
        if !consumer.try_acquire() {
            return false;
        }
        let Some(item) = self.take_head(from) else {
            consumer.release(1);
            return false;
        };
        let seq = item.seq;
        let tracked = match from {
            Some(s) if !consumer.no_ack => {
                self.slot_mut(s).inflight += 1;
                self.inflight.insert(seq, s);
                true
            }
            _ => false,
        };
        match deliver(&consumer, item) {
            Ok(()) => {
                if let (Some(s), false) = (from, tracked) {
                    self.settle_slot(s);
                }
                true
            }
            Err(item) => {
                consumer.release(1);
                // `insert` also takes it out of the in-flight count.
                self.insert(item);
                false
            }
        }
    }
}
