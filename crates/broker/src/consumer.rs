//! A consumer: the link between one queue and one channel, with its prefetch credit.
//!
//! Credit is counted in atomics so that it can be taken under the queue lock (when
//! delivering) and given back without it (when the channel acks). A consumer's own count is
//! only ever raised under its queue's lock, so check-then-increment is race-free; the
//! channel-wide count (`basic.qos` global) is shared by several queues and is raised with a
//! compare-and-swap.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

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
