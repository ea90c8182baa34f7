//! Dead-lettering: what a queue does with a message it gives up on (rejected without requeue,
//! expired, dropped by its length limit, or past its delivery limit).
//!
//! With `x-dead-letter-exchange` the message is republished there, under
//! `x-dead-letter-routing-key` or its own routing key, with an `x-death` header shaped as
//! RabbitMQ 3.10 writes it (`rabbit_dead_letter:make_msg/5`): an array of tables, most recent
//! first, one per (queue, reason), each with `count`, `reason`, `queue`, `time`, `exchange`,
//! `routing-keys` and, when the message had an expiration, `original-expiration` (the
//! property itself is removed, so the copy does not expire again for the same reason). The
//! first death also sets `x-first-death-reason`, `x-first-death-queue` and
//! `x-first-death-exchange`. Without a dead-letter exchange the message is dropped.
//!
//! Cycles: as RabbitMQ (`rabbit_dead_letter:detect_cycles/3`), a message dead-lettered for a
//! reason other than `rejected` is not delivered to a queue it already died in when no death
//! since then was a rejection; such a cycle would otherwise loop forever without a client
//! ever seeing it.
//!
//! Dead-letters are collected under the queue lock and published after it is released (the
//! dead-letter exchange may route back to the same queue). A persistent message routed to a
//! durable queue is stored there before its stored copy in this queue is removed: the store
//! applies writes in submission order, so a crash leaves it in one queue or (at worst) both,
//! never in neither.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lockgate_store::StoredRef;
use lockgate_wire::{FieldTable, FieldValue};

use super::Queue;
use crate::message::Message;

/// Why a message was dead-lettered (the `reason` of its `x-death` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// `basic.reject` / `basic.nack` with requeue=false.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped (drop-head) or refused (reject-publish-dlx) by the length limit.
    MaxLen,
    /// Returned more times than `x-delivery-limit`.
    DeliveryLimit,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::MaxLen => "maxlen",
            Self::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message a queue gave up on, waiting to be dead-lettered once the queue lock is released.
pub(crate) struct Dead {
    pub message: Arc<Message>,
    /// Its stored copy in this queue, removed after the dead-letter publish.
    pub stored: Option<StoredRef>,
    pub reason: Reason,
}

fn long_string(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

/// The message to publish to the dead-letter exchange `dlx`: a copy of `message` (body
/// shared) with its `x-death` headers updated for a death in `queue`, its expiration
/// removed, and routed with `routing_key` when given (else its own).
pub(crate) fn dead_lettered(
    message: &Message,
    reason: Reason,
    queue: &str,
    dlx: &str,
    routing_key: Option<&str>,
    memory: &Arc<crate::memory::MemoryMonitor>,
) -> Option<Message> {
    let mut properties = message.properties();
    let mut headers = properties.headers.take().unwrap_or_default();
    let original_expiration = properties.expiration.take();
    let mut deaths: Vec<FieldValue> = match headers.remove("x-death") {
        Some(FieldValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| {
        d.as_table().is_some_and(|t| {
            t.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        })
    });
    let entry = match same {
        Some(at) => {
            // RabbitMQ bumps the count and moves the entry to the front, nothing else.
            let mut entry = match deaths.remove(at) {
                FieldValue::Table(t) => t,
                _ => FieldTable::default(),
            };
            let count = entry.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            entry.insert("count", FieldValue::I64(count.saturating_add(1)));
            entry
        }
        None => {
            let mut entry = FieldTable::default();
            entry.insert("count", FieldValue::I64(1));
            entry.insert("reason", long_string(reason.as_str()));
            entry.insert("queue", long_string(queue));
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            entry.insert("time", FieldValue::Timestamp(now));
            entry.insert("exchange", long_string(message.exchange()));
            // Its routing key and its sender-selected CC keys, as RabbitMQ records them.
            let mut keys = vec![long_string(message.routing_key())];
            if let Some(FieldValue::Array(cc)) = headers.get("CC") {
                keys.extend(cc.iter().filter(|k| k.as_str().is_some()).cloned());
            }
            entry.insert("routing-keys", FieldValue::Array(keys));
            if let Some(expiration) = &original_expiration {
                entry.insert("original-expiration", long_string(expiration));
            }
            entry
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    if routing_key.is_some() {
        // A new routing key replaces the CC keys too (RabbitMQ drops the header).
        headers.remove("CC");
    }
    headers.insert("x-death", FieldValue::Array(deaths));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason", long_string(reason.as_str()));
        headers.insert("x-first-death-queue", long_string(queue));
        headers.insert("x-first-death-exchange", long_string(message.exchange()));
    }
    properties.headers = Some(headers);
    // The copy starts a new life: its TTL counts from now and it has not been returned.
    let routing_key = routing_key.unwrap_or(message.routing_key());
    message.republished(dlx, routing_key, &properties, memory)
}

/// RabbitMQ's `is_cycle/2`: true when `message` (already carrying its new death) would go
/// back to `queue`, in which it died before, with no rejection since.
pub(crate) fn is_cycle(message: &Message, queue: &str) -> bool {
    let headers = message.headers();
    let Some(FieldValue::Array(deaths)) = headers.as_ref().and_then(|h| h.get("x-death")) else {
        return false;
    };
    let field = |d: &FieldValue, key: &str| {
        d.as_table()
            .and_then(|t| t.get(key))
            .and_then(FieldValue::as_str)
            .map(str::to_owned)
    };
    let Some(at) = deaths
        .iter()
        .position(|d| field(d, "queue").as_deref() == Some(queue))
    else {
        return false;
    };
    deaths[..=at]
        .iter()
        .all(|d| field(d, "reason").as_deref() != Some(Reason::Rejected.as_str()))
}

impl Queue {
    /// Publishes `dead` to the dead-letter exchange (or drops them without one), then
    /// removes their stored copies in this queue. Call with no queue lock held.
    pub(crate) fn dead_letter(&self, dead: Vec<Dead>) {
        if dead.is_empty() {
            return;
        }
        let args = self.arguments();
        let vhost = self.vhost_ref.upgrade();
        if let (Some(dlx), Some(vhost)) = (&args.dead_letter_exchange, &vhost) {
            let key = args.dead_letter_routing_key.as_deref();
            let mut routed = 0;
            for d in &dead {
                let copy =
                    dead_lettered(&d.message, d.reason, &self.name, dlx, key, vhost.memory());
                if let Some(copy) = copy {
                    let rejected = d.reason == Reason::Rejected;
                    routed += u64::from(vhost.publish_dead_letter(dlx, copy, rejected));
                }
            }
            if routed > 0 {
                self.state.lock().counters.dead_lettered += routed;
            }
        }
        let mut stored = dead.iter().filter_map(|d| d.stored).peekable();
        if let (Some(qs), Some(_)) = (&self.store, stored.peek()) {
            drop(qs.store.remove_many(stored));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryMonitor;
    use lockgate_wire::{BasicProperties, ContentHeader};

    fn message(properties: BasicProperties) -> Message {
        let header = ContentHeader::new(60, 1, properties).unwrap();
        Message::new("ex".into(), "rk".into(), header, Bytes::from_static(b"x"))
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        m.headers()
            .unwrap()
            .get("x-death")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_table().unwrap().clone())
            .collect()
    }

    #[test]
    fn x_death_is_shaped_as_rabbitmq_writes_it() {
        let memory = MemoryMonitor::new(0);
        let m = message(BasicProperties {
            expiration: Some("500".into()),
            ..BasicProperties::default()
        });
        let d = dead_lettered(&m, Reason::Expired, "q1", "dlx", Some("dl"), &memory).unwrap();
        assert_eq!(d.routing_key(), "dl");
        assert_eq!(d.properties().expiration, None);
        let entries = deaths(&d);
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(e.get("reason").unwrap().as_str(), Some("expired"));
        assert_eq!(e.get("queue").unwrap().as_str(), Some("q1"));
        assert_eq!(e.get("exchange").unwrap().as_str(), Some("ex"));
        assert_eq!(e.get("original-expiration").unwrap().as_str(), Some("500"));
        assert!(matches!(e.get("time"), Some(FieldValue::Timestamp(_))));
        assert_eq!(
            e.get("routing-keys"),
            Some(&FieldValue::Array(vec![long_string("rk")]))
        );
        let h = d.headers().unwrap();
        assert_eq!(
            h.get("x-first-death-reason").unwrap().as_str(),
            Some("expired")
        );
        assert_eq!(h.get("x-first-death-queue").unwrap().as_str(), Some("q1"));
        assert_eq!(
            h.get("x-first-death-exchange").unwrap().as_str(),
            Some("ex")
        );

        // The same queue and reason again: count 2, still one entry; another reason: a new
        // entry in front.
        let again = dead_lettered(&d, Reason::Expired, "q1", "dlx", None, &memory).unwrap();
        assert_eq!(deaths(&again).len(), 1);
        assert_eq!(deaths(&again)[0].get("count"), Some(&FieldValue::I64(2)));
        let other = dead_lettered(&again, Reason::Rejected, "q2", "dlx", None, &memory).unwrap();
        let entries = deaths(&other);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].get("queue").unwrap().as_str(), Some("q2"));
        let h = other.headers().unwrap();
        assert_eq!(h.get("x-first-death-queue").unwrap().as_str(), Some("q1"));
    }

    #[test]
    fn cc_keys_are_recorded_and_dropped_with_a_new_routing_key() {
        let memory = MemoryMonitor::new(0);
        let mut headers = FieldTable::default();
        headers.insert("CC", FieldValue::Array(vec![long_string("audit")]));
        let m = message(BasicProperties {
            headers: Some(headers),
            ..BasicProperties::default()
        });
        let kept = dead_lettered(&m, Reason::Rejected, "q", "dlx", None, &memory).unwrap();
        assert_eq!(
            deaths(&kept)[0].get("routing-keys"),
            Some(&FieldValue::Array(vec![
                long_string("rk"),
                long_string("audit")
            ]))
        );
        let h = kept.headers().unwrap();
        assert!(h.contains_key("CC"));
        let moved = dead_lettered(&m, Reason::Rejected, "q", "dlx", Some("dl"), &memory).unwrap();
        let h = moved.headers().unwrap();
        assert!(!h.contains_key("CC"));
    }

    #[test]
    fn cycles_without_a_rejection_are_detected() {
        let memory = MemoryMonitor::new(0);
        let m = message(BasicProperties::default());
        let d = dead_lettered(&m, Reason::Expired, "a", "dlx", None, &memory).unwrap();
        assert!(is_cycle(&d, "a"));
        assert!(!is_cycle(&d, "b"));
        let d = dead_lettered(&d, Reason::Rejected, "b", "dlx", None, &memory).unwrap();
        assert!(
            !is_cycle(&d, "a"),
            "a rejection in the cycle lets it through"
        );
        let d = dead_lettered(&d, Reason::Expired, "c", "dlx", None, &memory).unwrap();
        assert!(is_cycle(&d, "c"));
    }
}
