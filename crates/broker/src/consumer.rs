//! A consumer: the link between one queue and one channel, with its prefetch credit and
//! its priority.
//!
//! Credit is counted in atomics so that it can be taken under the queue lock (when
//! delivering) and given back without it (when the channel acks). A consumer's own count is
//! only ever raised under its queue's lock, so check-then-increment is race-free; the
//! channel-wide count (`basic.qos` global) is shared by several queues and is raised with a
//! compare-and-swap.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use lockgate_wire::FieldTable;

use crate::channel::ChannelShared;
use crate::ids::ConsumerTag;
use crate::queue::Queue;

pub(crate) struct Consumer {
    pub tag: ConsumerTag,
    pub queue: Arc<Queue>,
    pub channel: Arc<ChannelShared>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (`basic.qos` global=false before the consume); 0 = unlimited.
    pub prefetch: u32,
    /// Unacked deliveries to this consumer.
    pub unacked: AtomicU32,
    /// `x-priority` (default 0): while it has credit, a consumer gets messages before the
    /// queue's consumers of a lower priority ([`Levels`]).
    pub priority: i64,
    /// The `basic.consume` arguments as the client sent them (listed by the management API).
    pub arguments: FieldTable,
}

impl Consumer {
    /// Takes one unit of credit for a delivery; false when the consumer cannot take more
    /// now (prefetch reached, channel flow off, channel closed).
    pub fn try_acquire(&self) -> bool {
        if !self.channel.can_deliver() {
            return false;
        }
        if self.no_ack {
            return true;
        }
        if self.prefetch != 0 && self.unacked.load(Ordering::Acquire) >= self.prefetch {
            return false;
        }
        if !self.channel.acquire_global() {
            return false;
        }
        self.unacked.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Gives back credit for `count` deliveries that are settled (or were never made).
    pub fn release(&self, count: u32) {
        if !self.no_ack {
            self.unacked.fetch_sub(count, Ordering::AcqRel);
            self.channel.release_global(count);
        }
    }
}

/// RabbitMQ's consumer priorities (`rabbit_queue_consumers`): a queue keeps its consumers
/// sorted by priority, highest first and in arrival order within a priority, and these
/// levels over that list. A message goes to the highest level that has a consumer with
/// credit, round-robin within the level: each level tries its consumers from its own
/// cursor. With every consumer at one priority (the common case) there is one level, and
/// picking a consumer costs what a plain round-robin does.
#[derive(Default)]
pub(crate) struct Levels {
    /// Highest priority first; the lengths add up to the list's.
    levels: Vec<Level>,
}

struct Level {
    priority: i64,
    len: usize,
    /// Offset in the level of the consumer to try first.
    next: usize,
}

impl Levels {
    /// Files a consumer of `priority` at the end of its level; returns its index in the
    /// sorted list.
    pub fn insert(&mut self, priority: i64) -> usize {
        let mut start = 0;
        for i in 0..self.levels.len() {
            let level = &mut self.levels[i];
            if level.priority == priority {
                level.len += 1;
                return start + level.len - 1;
            }
            if level.priority < priority {
                self.levels.insert(i, Level::new(priority));
                return start;
            }
            start += level.len;
        }
        self.levels.push(Level::new(priority));
        start
    }

    /// Forgets the consumer at `index` of the sorted list.
    pub fn remove(&mut self, index: usize) {
        let Some((i, at)) = self.locate(index) else {
            return;
        };
        let level = &mut self.levels[i];
        level.len -= 1;
        if at < level.next {
            level.next -= 1;
        }
        if level.next >= level.len {
            level.next = 0;
        }
        if level.len == 0 {
            self.levels.remove(i);
        }
    }

    /// Makes the consumer at `index` the last one its level tries.
    pub fn try_last(&mut self, index: usize) {
        if let Some((i, at)) = self.locate(index) {
            let level = &mut self.levels[i];
            level.next = (at + 1) % level.len;
        }
    }

    /// The index of the first consumer that `take` accepts (it takes credit), trying the
    /// levels from the highest, each round-robin from its cursor; that level's cursor moves
    /// past it.
    #[inline]
    pub fn pick(&mut self, mut take: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut start = 0;
        for level in &mut self.levels {
            let n = level.len;
            if let Some(at) = (0..n)
                .map(|i| (level.next + i) % n)
                .find(|&at| take(start + at))
            {
                level.next = (at + 1) % n;
                return Some(start + at);
            }
            start += n;
        }
        None
    }

    /// (level, offset in it) of `index`.
    fn locate(&self, index: usize) -> Option<(usize, usize)> {
        let mut start = 0;
        for (i, level) in self.levels.iter().enumerate() {
            if index < start + level.len {
                return Some((i, index - start));
            }
            start += level.len;
        }
        None
    }
}

impl Level {
    fn new(priority: i64) -> Self {
        Self {
            priority,
            len: 1,
            next: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Levels;

    /// Levels over `priorities` filed in this order, and the sorted list's priorities.
    fn filed(priorities: &[i64]) -> (Levels, Vec<i64>) {
        let mut levels = Levels::default();
        let mut list = Vec::new();
        for &p in priorities {
            let at = levels.insert(p);
            list.insert(at, p);
        }
        (levels, list)
    }

    #[test]
    fn consumers_are_filed_by_priority_then_arrival() {
        let mut levels = Levels::default();
        let mut list: Vec<(i64, usize)> = Vec::new();
        for (n, p) in [0, 5, -3, 5, 0, 10].into_iter().enumerate() {
            let at = levels.insert(p);
            list.insert(at, (p, n));
        }
        assert_eq!(list, [(10, 5), (5, 1), (5, 3), (0, 0), (0, 4), (-3, 2)]);
    }

    #[test]
    fn the_highest_level_with_credit_is_served_round_robin() {
        let (mut levels, list) = filed(&[0, 10, 10, 0]);
        assert_eq!(list, [10, 10, 0, 0]);
        let picks: Vec<_> = (0..4).filter_map(|_| levels.pick(|_| true)).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        // The high level is out of credit: the low one takes turns.
        let picks: Vec<_> = (0..3).filter_map(|_| levels.pick(|i| i >= 2)).collect();
        assert_eq!(picks, [2, 3, 2]);
        // Nobody has credit.
        assert_eq!(levels.pick(|_| false), None);
    }

    #[test]
    fn removal_keeps_each_level_turn() {
        let (mut levels, _) = filed(&[1, 1, 1, 0]);
        assert_eq!(levels.pick(|_| true), Some(0));
        assert_eq!(levels.pick(|_| true), Some(1));
        // The one that had its turn leaves: the next one is still next.
        levels.remove(1);
        assert_eq!(levels.pick(|_| true), Some(1));
        levels.remove(0);
        levels.remove(0);
        // The level is gone: the rest follow.
        assert_eq!(levels.pick(|_| true), Some(0));
        levels.remove(0);
        assert_eq!(levels.pick(|_| true), None);
    }

    #[test]
    fn a_consumer_tried_last_goes_after_the_rest_of_its_level() {
        let (mut levels, _) = filed(&[0, 0, 0]);
        levels.try_last(0);
        assert_eq!(levels.pick(|_| true), Some(1));
        levels.try_last(2);
        assert_eq!(levels.pick(|_| true), Some(0));
    }
}
