//! RabbitMQ's global message counters (`rabbitmq_global_messages_*_total`), bumped on the
//! hot path without a lock: each counter is split into cache-line-aligned shards and a thread
//! always adds to its own shard, so publishers and consumers on different runtime workers do
//! not bounce one cache line between cores. A read sums the shards.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use lockgate_broker::PublishOutcome;

/// One counter, named as RabbitMQ's Prometheus plugin names it (without the
/// `rabbitmq_global_` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Messages published by clients.
    Received,
    /// Messages published on channels in confirm mode.
    ReceivedConfirm,
    /// Messages routed to at least one queue.
    Routed,
    /// Unroutable messages dropped (not mandatory).
    UnroutableDropped,
    /// Unroutable messages returned (mandatory).
    UnroutableReturned,
    /// Messages confirmed to publishers.
    Confirmed,
    /// Deliveries to consumers with manual acknowledgement.
    DeliveredConsumeManualAck,
    /// Deliveries to consumers with automatic acknowledgement.
    DeliveredConsumeAutoAck,
    /// basic.get answers with manual acknowledgement.
    DeliveredGetManualAck,
    /// basic.get answers with automatic acknowledgement.
    DeliveredGetAutoAck,
    /// basic.get answered with get-empty.
    GetEmpty,
    /// Deliveries (consume or get) with redelivered=true.
    Redelivered,
    /// Messages acknowledged by consumers.
    Acknowledged,
}

const COUNT: usize = 13;

impl Counter {
    /// Every counter, in exposition order.
    pub const ALL: [Counter; COUNT] = [
        Counter::Received,
        Counter::ReceivedConfirm,
        Counter::Routed,
        Counter::UnroutableDropped,
        Counter::UnroutableReturned,
        Counter::Confirmed,
        Counter::DeliveredConsumeManualAck,
        Counter::DeliveredConsumeAutoAck,
        Counter::DeliveredGetManualAck,
        Counter::DeliveredGetAutoAck,
        Counter::GetEmpty,
        Counter::Redelivered,
        Counter::Acknowledged,
    ];

    /// The metric name after `rabbitmq_global_`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Received => "messages_received_total",
            Self::ReceivedConfirm => "messages_received_confirm_total",
            Self::Routed => "messages_routed_total",
            Self::UnroutableDropped => "messages_unroutable_dropped_total",
            Self::UnroutableReturned => "messages_unroutable_returned_total",
            Self::Confirmed => "messages_confirmed_total",
            Self::DeliveredConsumeManualAck => "messages_delivered_consume_manual_ack_total",
            Self::DeliveredConsumeAutoAck => "messages_delivered_consume_auto_ack_total",
            Self::DeliveredGetManualAck => "messages_delivered_get_manual_ack_total",
            Self::DeliveredGetAutoAck => "messages_delivered_get_auto_ack_total",
            Self::GetEmpty => "messages_get_empty_total",
            Self::Redelivered => "messages_redelivered_total",
            Self::Acknowledged => "messages_acknowledged_total",
        }
    }

    /// RabbitMQ's help text.
    pub fn help(self) -> &'static str {
        match self {
            Self::Received => "Total number of messages received from publishers",
            Self::ReceivedConfirm => {
                "Total number of messages received from publishers expecting confirmations"
            }
            Self::Routed => "Total number of messages routed to queues or streams",
            Self::UnroutableDropped => {
                "Total number of messages published as non-mandatory into an exchange and \
                 dropped as unroutable"
            }
            Self::UnroutableReturned => {
                "Total number of messages published as mandatory into an exchange and returned \
                 to the publisher as unroutable"
            }
            Self::Confirmed => "Total number of messages confirmed to publishers",
            Self::DeliveredConsumeManualAck => {
                "Total number of messages delivered to consumers using basic.consume with manual \
                 acknowledgment"
            }
            Self::DeliveredConsumeAutoAck => {
                "Total number of messages delivered to consumers using basic.consume with \
                 automatic acknowledgment"
            }
            Self::DeliveredGetManualAck => {
                "Total number of messages delivered to consumers using basic.get with manual \
                 acknowledgment"
            }
            Self::DeliveredGetAutoAck => {
                "Total number of messages delivered to consumers using basic.get with automatic \
                 acknowledgment"
            }
            Self::GetEmpty => "Total number of times basic.get operations fetched no message",
            Self::Redelivered => "Total number of messages redelivered to consumers",
            Self::Acknowledged => "Total number of messages acknowledged by consumers",
        }
    }
}

/// How many shards each counter has: enough that runtime workers rarely share one.
const SHARDS: usize = 16;

/// One shard of every counter, on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard([AtomicU64; COUNT]);

/// The global counters.
pub struct GlobalCounters {
    shards: Box<[Shard]>,
}

impl Default for GlobalCounters {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

/// The calling thread's shard, assigned round-robin on first use.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl GlobalCounters {
    /// Adds `n` to `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(shard) = self.shards.get(shard_index()) {
            shard.0[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The current total of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[counter as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// A message published on a channel (in confirm mode or not).
    pub fn published(&self, confirm: bool) {
        self.add(Counter::Received, 1);
        if confirm {
            self.add(Counter::ReceivedConfirm, 1);
        }
    }

    /// Where a published message went.
    pub fn routed(&self, outcome: &PublishOutcome) {
        let counter = match outcome {
            PublishOutcome::Routed(_) => Counter::Routed,
            PublishOutcome::Dropped => Counter::UnroutableDropped,
            PublishOutcome::Unroutable(_) => Counter::UnroutableReturned,
        };
        self.add(counter, 1);
    }

    /// A basic.get answer: get-ok (`Some(redelivered)`) or get-empty (`None`).
    pub fn got(&self, redelivered: Option<bool>, no_ack: bool) {
        match redelivered {
            None => self.add(Counter::GetEmpty, 1),
            Some(redelivered) => {
                self.add(
                    if no_ack {
                        Counter::DeliveredGetAutoAck
                    } else {
                        Counter::DeliveredGetManualAck
                    },
                    1,
                );
                if redelivered {
                    self.add(Counter::Redelivered, 1);
                }
            }
        }
    }

    /// A basic.deliver to a consumer.
    pub fn delivered(&self, redelivered: bool, no_ack: bool) {
        self.add(
            if no_ack {
                Counter::DeliveredConsumeAutoAck
            } else {
                Counter::DeliveredConsumeManualAck
            },
            1,
        );
        if redelivered {
            self.add(Counter::Redelivered, 1);
        }
    }

    /// Every delivery to consumers and by basic.get, summed as RabbitMQ's
    /// `messages_delivered_total`.
    pub fn delivered_total(&self) -> u64 {
        [
            Counter::DeliveredConsumeManualAck,
            Counter::DeliveredConsumeAutoAck,
            Counter::DeliveredGetManualAck,
            Counter::DeliveredGetAutoAck,
        ]
        .into_iter()
        .map(|c| self.get(c))
        .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counts_across_threads() {
        let counters = Arc::new(GlobalCounters::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counters = Arc::clone(&counters);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counters.add(Counter::Received, 1);
                        counters.add(Counter::DeliveredGetAutoAck, 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counters.get(Counter::Received), 8000);
        assert_eq!(counters.delivered_total(), 16000);
        assert_eq!(counters.get(Counter::Acknowledged), 0);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNT);
    }
}
