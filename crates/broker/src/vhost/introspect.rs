//! What the management API reads from a vhost: channels, consumers, bindings and unacked
//! ages. Nothing here runs on the message path; the channel registry changes only when a
//! channel opens or closes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{DestinationName, VHost};
use crate::channel::ChannelShared;
use crate::ids::{ChannelId, ConnectionId};
use crate::stats::{BindingSnapshot, ChannelSnapshot, ConsumerSnapshot};

/// How many unacked deliveries per channel [`VHost::oldest_unacked_by_queue`] looks at.
const UNACKED_SCAN_LIMIT: usize = 10_000;

impl VHost {
    pub(crate) fn register_channel(&self, shared: &Arc<ChannelShared>) {
        self.channels
            .insert((shared.connection(), shared.id()), Arc::clone(shared));
    }

    pub(crate) fn unregister_channel(&self, connection: ConnectionId, id: ChannelId) {
        self.channels.remove(&(connection, id));
    }

    /// Every open channel in this vhost, sorted by connection and number.
    pub fn channels(&self) -> Vec<ChannelSnapshot> {
        let handles: Vec<_> = self
            .channels
            .iter()
            .map(|c| Arc::clone(c.value()))
            .collect();
        let mut out: Vec<_> = handles.iter().map(|c| c.snapshot()).collect();
        out.sort_by_key(|c| (c.connection, c.channel));
        out
    }

    /// Every consumer in this vhost, with its credit and oldest unacked delivery.
    pub fn consumers(&self) -> Vec<ConsumerSnapshot> {
        let queues: Vec<_> = self.queues.iter().map(|q| Arc::clone(q.value())).collect();
        let now = Instant::now();
        let mut out = Vec::new();
        for queue in queues {
            for consumer in queue.consumer_handles() {
                let oldest = consumer.channel.oldest_unacked(|e| {
                    matches!(&e.source, crate::unacked::Source::Consumer(c) if Arc::ptr_eq(c, &consumer))
                });
                out.push(ConsumerSnapshot {
                    tag: consumer.tag.clone(),
                    queue: queue.name().to_owned(),
                    connection: consumer.channel.connection(),
                    channel: consumer.channel.id(),
                    no_ack: consumer.no_ack,
                    exclusive: consumer.exclusive,
                    prefetch: consumer.prefetch,
                    priority: consumer.priority,
                    arguments: consumer.arguments.clone(),
                    unacked: consumer.unacked.load(Ordering::Relaxed),
                    oldest_unacked_age: oldest.map(|t| now.saturating_duration_since(t)),
                });
            }
        }
        out.sort_by(|a, b| {
            (a.connection, a.channel, &a.tag).cmp(&(b.connection, b.channel, &b.tag))
        });
        out
    }

    /// For each queue with unacked deliveries, when its oldest one was delivered. Each
    /// channel's list is in delivery order and only its 10 000 oldest entries
    /// are looked at, so a queue whose deliveries all sit behind that many newer-queue ones on
    /// every channel is missed: a bounded lock hold matters more than that corner.
    pub fn oldest_unacked_by_queue(&self) -> HashMap<String, Instant> {
        let handles: Vec<_> = self
            .channels
            .iter()
            .map(|c| Arc::clone(c.value()))
            .collect();
        let mut out: HashMap<String, Instant> = HashMap::new();
        for channel in handles {
            channel.for_each_unacked(UNACKED_SCAN_LIMIT, |queue, delivered_at| {
                out.entry(queue.to_owned())
                    .and_modify(|t| *t = (*t).min(delivered_at))
                    .or_insert(delivered_at);
            });
        }
        out
    }

    /// Every binding with an exchange source in this vhost (the default exchange's implicit
    /// bindings are not stored, so they are not listed here).
    pub fn bindings(&self) -> Vec<BindingSnapshot> {
        let topology = self.topology.lock();
        let mut out: Vec<_> = topology
            .incoming
            .iter()
            .flat_map(|(destination, list)| {
                let (name, is_queue) = match destination {
                    DestinationName::Queue(n) => (n, true),
                    DestinationName::Exchange(n) => (n, false),
                };
                list.iter().map(move |b| BindingSnapshot {
                    source: b.source.name().to_owned(),
                    destination: name.clone(),
                    destination_is_queue: is_queue,
                    routing_key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                })
            })
            .collect();
        drop(topology);
        out.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        out
    }
}
