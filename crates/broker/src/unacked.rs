//! A channel's unacknowledged deliveries, ordered by delivery tag.
//!
//! Tags are assigned in increasing order, so the list is a `VecDeque` sorted by tag. Acks
//! usually settle the oldest delivery: that is an O(1) pop at the front. An ack from the
//! middle is a binary search and leaves a tombstone that is popped once it reaches the
//! front, or dropped when tombstones outnumber live entries. `multiple` settles a prefix: a drain of a range. Tags of no-ack deliveries never
//! enter the list, so it holds only what can still be acked.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::consumer::Consumer;
use crate::error::BrokerError;
use crate::message::Message;
use crate::queue::Queue;

/// Where an unacked delivery came from.
pub(crate) enum Source {
    /// A consumer, whose credit the settlement gives back.
    Consumer(Arc<Consumer>),
    /// `basic.get`, which takes no credit.
    Get(Arc<Queue>),
}

pub(crate) struct UnackedEntry {
    /// Position in the source queue, for requeueing at the original place.
    pub seq: u64,
    pub message: Arc<Message>,
    pub source: Source,
    /// The stored copy, removed when the delivery is acked or dropped.
    pub stored: Option<lockgate_store::StoredRef>,
    /// When it was delivered, for the management API's oldest-unacked age.
    pub delivered_at: std::time::Instant,
}

impl UnackedEntry {
    pub fn queue(&self) -> &Arc<Queue> {
        match &self.source {
            Source::Consumer(c) => &c.queue,
            Source::Get(q) => q,
        }
    }
}

struct Slot {
    tag: u64,
    /// `None` once settled out of order (a tombstone).
    entry: Option<UnackedEntry>,
}

#[derive(Default)]
pub(crate) struct UnackedList {
    slots: VecDeque<Slot>,
    live: usize,
}

impl UnackedList {
    pub fn len(&self) -> usize {
        self.live
    }

    /// Appends a delivery; `tag` must be greater than every tag already in the list.
    pub fn push(&mut self, tag: u64, entry: UnackedEntry) {
        self.slots.push_back(Slot {
            tag,
            entry: Some(entry),
        });
        self.live += 1;
    }

    /// Moves the deliveries settled by an ack/nack of `tag` into `out`, oldest first:
    /// just `tag`, or with `multiple` every delivery up to it (tag 0 = all).
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag N" when `tag` is not outstanding, as
    /// RabbitMQ (also for `multiple` with a tag that was already settled).
    pub fn take(
        &mut self,
        tag: u64,
        multiple: bool,
        out: &mut Vec<UnackedEntry>,
    ) -> Result<(), BrokerError> {
        if multiple && tag == 0 {
            self.take_all(out);
            return Ok(());
        }
        let index = match self.slots.front() {
            Some(front) if front.tag == tag => 0,
            _ => self
                .slots
                .binary_search_by_key(&tag, |s| s.tag)
                .map_err(|_| BrokerError::unknown_delivery_tag(tag))?,
        };
        if self.slots[index].entry.is_none() {
            return Err(BrokerError::unknown_delivery_tag(tag));
        }
        let before = out.len();
        if multiple {
            out.extend(self.slots.drain(..=index).filter_map(|s| s.entry));
        } else if let Some(entry) = self.slots[index].entry.take() {
            out.push(entry);
        }
        self.live -= out.len() - before;
        while self.slots.front().is_some_and(|s| s.entry.is_none()) {
            self.slots.pop_front();
        }
        // One old delivery left unacked must not pin a growing run of tombstones behind
        // it: compact once they outnumber the live entries (amortised O(1) per ack).
        if self.slots.len() > 2 * self.live + 64 {
            self.slots.retain(|s| s.entry.is_some());
        }
        Ok(())
    }

    /// The delivery time of the oldest outstanding entry matching `filter` (management
    /// only: a scan, oldest first, that stops at the first match).
    pub fn oldest(&self, filter: impl Fn(&UnackedEntry) -> bool) -> Option<std::time::Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.entry.as_ref())
            .find(|e| filter(e))
            .map(|e| e.delivered_at)
    }

    /// Calls `f` on the `limit` oldest outstanding deliveries, oldest first (management
    /// only; the limit bounds how long the channel's lock is held).
    pub fn for_each(&self, limit: usize, f: impl FnMut(&UnackedEntry)) {
        self.slots
            .iter()
            .filter_map(|s| s.entry.as_ref())
            .take(limit)
            .for_each(f);
    }

    /// Every outstanding delivery with its tag, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &UnackedEntry)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.entry.as_ref().map(|e| (s.tag, e)))
    }

    /// The outstanding delivery `tag`, if any.
    pub fn get(&self, tag: u64) -> Option<&UnackedEntry> {
        let index = self.slots.binary_search_by_key(&tag, |s| s.tag).ok()?;
        self.slots[index].entry.as_ref()
    }

    /// Moves every outstanding delivery with a tag up to `tag` into `out`, oldest first
    /// (`multiple` settlement through a tag that is no longer outstanding).
    pub fn take_through(&mut self, tag: u64, out: &mut Vec<UnackedEntry>) {
        let end = self.slots.partition_point(|s| s.tag <= tag);
        let before = out.len();
        out.extend(self.slots.drain(..end).filter_map(|s| s.entry));
        self.live -= out.len() - before;
    }

    /// Moves every outstanding delivery into `out`, oldest first.
    pub fn take_all(&mut self, out: &mut Vec<UnackedEntry>) {
        out.reserve(self.live);
        out.extend(self.slots.drain(..).filter_map(|s| s.entry));
        self.live = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_behind_an_old_delivery_are_compacted() {
        let mut list = UnackedList::default();
        let queue = Arc::new(Queue::new(
            "q".into(),
            "/".into(),
            false,
            false,
            None,
            crate::QueueArguments::default(),
            lockgate_wire::FieldTable::default(),
        ));
        let message = Arc::new(Message::new(
            String::new(),
            "q".into(),
            lockgate_wire::ContentHeader::default(),
            bytes::Bytes::new(),
        ));
        let mut out = Vec::new();
        for tag in 1..=10_000 {
            list.push(
                tag,
                UnackedEntry {
                    seq: tag,
                    message: Arc::clone(&message),
                    source: Source::Get(Arc::clone(&queue)),
                    stored: None,
                    delivered_at: std::time::Instant::now(),
                },
            );
            if tag > 1 {
                list.take(tag, false, &mut out).unwrap();
            }
        }
        assert_eq!(list.len(), 1);
        assert!(
            list.slots.len() <= 2 * list.len() + 65,
            "{}",
            list.slots.len()
        );
        list.take(1, false, &mut out).unwrap();
        assert_eq!(list.len(), 0);
        assert!(list.take(2, false, &mut out).is_err());
    }
}
