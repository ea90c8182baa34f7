//! The `x-delayed-message` exchange type, compatible with RabbitMQ's
//! rabbitmq_delayed_message_exchange plugin.
//!
//! The exchange is declared with `x-delayed-type` (direct, fanout, topic, headers or
//! x-consistent-hash): its bindings route as that type. A message published with an
//! `x-delay` header (integer milliseconds) above zero is held by the exchange and routed
//! when the delay has elapsed, through the bindings that exist then; without the header, or
//! with `x-delay <= 0`, it is routed at once like any other message. Delays above
//! 2^32 - 1 ms are cut to that, as the plugin does.
//!
//! Held messages are ordered by due time in the exchange's own [`Deadlines`]; the exchange
//! is one target of the broker's timer ([`crate::timer`]) with at most one wake pending at
//! its earliest deadline, so a later-published shorter delay overtakes the earlier ones and
//! 100,000 held messages cost 100,000 heap pushes, never a scan.
//!
//! Persistence, as the plugin: a persistent message held by a durable exchange is written to
//! the store before it is confirmed, in a store queue of the exchange's own (key
//! [`STORE_KEY_PREFIX`] + the exchange's key), with its due time as wall-clock milliseconds
//! in front of the usual message header. When it is due it is routed (stored again for the
//! durable queues it reaches, like any persistent publish) and then removed from the
//! exchange's store queue, in that order: a crash in between delivers it twice, never zero
//! times. At startup [`recover`] holds the stored messages again ([`arm_recovered`] starts
//! their timer once the queues and bindings are back); those that fell due while
//! the broker was down are routed at once. Transient messages, and any held by a transient
//! exchange, are lost on restart.
//!
//! Decisions where the plugin differs or is silent:
//! - Publisher confirms: a held message is confirmed when it is accepted (once stored, if it
//!   is persisted); it counts as routed.
//! - `mandatory`: a held message is never returned. Routing happens later, when there may
//!   be no publisher left to return it to; the plugin cannot honour `mandatory` either (it
//!   returns every delayed message at once, even those delivered later). A due message that
//!   routes nowhere is dropped and logged at debug.
//! - Memory: held messages are charged to the memory watermark from the moment they are
//!   held.
//! - Deleting the exchange drops what it holds (and its store queue).
//! - The delivered message's `x-delay` header is negated (`-5000` after `x-delay: 5000`), as
//!   the plugin does, so that a consumer can tell it was delayed.
//! - Reached through an exchange-to-exchange binding, a delayed exchange routes at once: the
//!   delay applies to messages published to it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use lockgate_store::{Commit, QueueId, RecoveredQueue, Store, StoreError, StoredRef};
use lockgate_wire::{FieldTable, FieldValue};
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::{sender_selected, Exchange, ExchangeKind};
use crate::broker::Broker;
use crate::durable;
use crate::error::BrokerError;
use crate::memory::MemoryMonitor;
use crate::message::Message;
use crate::queue::Queue;
use crate::timer::{schedule, Deadlines, Timed};
use crate::vhost::VHost;

/// The plugin caps `x-delay` at the largest Erlang timer value.
const MAX_DELAY_MS: u64 = u32::MAX as u64;

/// Prefix of the store-queue key holding a durable delayed exchange's persistent messages.
/// An entity key starts with a length byte, and no vhost name is 255 bytes of this shape,
/// so recovery tells the two apart by the prefix.
pub(crate) const STORE_KEY_PREFIX: &[u8] = b"\xffx-delayed-message\x00";

/// Messages read back per store page at startup.
const RECOVERY_PAGE: usize = 1024;

/// The routing type of a delayed exchange, from `x-delayed-type`.
///
/// # Errors
/// `PreconditionFailed` "Invalid argument, 'x-delayed-type' must be an existing exchange
/// type" (the plugin's text) when it is missing, unknown or itself `x-delayed-message`.
pub(crate) fn delayed_type(arguments: &FieldTable) -> Result<ExchangeKind, BrokerError> {
    let invalid = || {
        BrokerError::precondition_failed(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    };
    let Some(FieldValue::LongString(name)) = arguments.get("x-delayed-type") else {
        return Err(invalid());
    };
    let name = std::str::from_utf8(name).map_err(|_| invalid())?;
    match ExchangeKind::parse(name) {
        Ok(ExchangeKind::DelayedMessage) | Err(_) => Err(invalid()),
        Ok(kind) => Ok(kind),
    }
}

/// The delay a message asks for: `x-delay` as integer milliseconds, `None` when absent,
/// not an integer, or not above zero (route at once).
pub(crate) fn requested_delay(message: &Message) -> Option<u64> {
    let headers = message.headers()?;
    let ms: i64 = match headers.get("x-delay")? {
        FieldValue::I8(n) => (*n).into(),
        FieldValue::U8(n) => (*n).into(),
        FieldValue::I16(n) => (*n).into(),
        FieldValue::U16(n) => (*n).into(),
        FieldValue::I32(n) => (*n).into(),
        FieldValue::U32(n) => (*n).into(),
        FieldValue::I64(n) => *n,
        _ => return None,
    };
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(|ms| ms.min(MAX_DELAY_MS))
}

/// Negates the `x-delay` header, as the plugin does, so that a consumer can tell the
/// message was delayed (`x-delay < 0`). The header is left as it was should the properties
/// not re-encode.
fn mark_delayed(message: &mut Message, delay_ms: u64) {
    let mut properties = message.properties();
    let Some(headers) = properties.headers.as_mut() else {
        return;
    };
    let negated = i64::try_from(delay_ms).map_or(i64::MIN, |ms| -ms);
    headers.insert("x-delay".to_owned(), FieldValue::I64(negated));
    if message.set_properties(&properties).is_err() {
        debug!("x-delay not negated: the properties do not re-encode");
    }
}

/// Wall-clock microseconds since the Unix epoch (stored due times survive a restart; an
/// `Instant` does not).
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The stored due time, in whole milliseconds rounded up: a recovered message is never
/// routed before its delay has passed.
fn due_unix_ms(delay_ms: u64) -> u64 {
    unix_us().div_ceil(1_000).saturating_add(delay_ms)
}

/// How long a recovered message with this stored due time still waits.
fn wait_for(due_unix_ms: u64, now_unix_us: u64) -> Duration {
    Duration::from_micros(
        due_unix_ms
            .saturating_mul(1_000)
            .saturating_sub(now_unix_us),
    )
}

/// The stored header of a held message: its due time, then the usual message header.
fn stored_header(due_unix_ms: u64, message: &Message) -> Bytes {
    let header = durable::message_header(message);
    let mut out = BytesMut::with_capacity(8 + header.len());
    out.put_u64(due_unix_ms);
    out.put_slice(&header);
    out.freeze()
}

/// What a due message needs to be enqueued: the exchange to route it through, its vhost
/// (for alternate exchanges) and the vhost's store. Captured from the first held message's
/// publish (or from recovery).
struct Publisher {
    exchange: Weak<Exchange>,
    vhost: Weak<VHost>,
    store: Option<Store>,
}

/// The store queue of a durable delayed exchange.
struct StoreQueue {
    id: QueueId,
    next_seq: u64,
}

/// A held message and, when persisted, its stored copy.
struct HeldMessage {
    message: Message,
    stored: Option<StoredRef>,
}

#[derive(Default)]
struct Held {
    messages: Deadlines<HeldMessage>,
    /// The wake requested from the timer, if any (the earliest deadline when it was set).
    scheduled: Option<Instant>,
    publisher: Option<Publisher>,
    store_queue: Option<StoreQueue>,
}

impl Held {
    /// Adds a message due at `due`; true when the timer must be asked for an earlier wake.
    fn push(&mut self, due: Instant, message: HeldMessage) -> bool {
        self.messages.push(due, message);
        let earlier = self.scheduled.is_none_or(|at| due < at);
        if earlier {
            self.scheduled = Some(due);
        }
        earlier
    }
}

/// The messages a delayed exchange holds. A timer target: see the module doc.
pub(crate) struct DelayedMessages {
    me: Weak<DelayedMessages>,
    held: Mutex<Held>,
}

impl DelayedMessages {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            held: Mutex::new(Held::default()),
        })
    }

    fn wake_at(&self, at: Instant) {
        let me: Weak<dyn Timed> = self.me.clone();
        schedule(at, me);
    }

    /// Holds `message` for `delay_ms`, persisting it when it is persistent and the exchange
    /// durable: then returns the commit of that write (confirm after it).
    pub(crate) fn hold(
        &self,
        exchange: &Arc<Exchange>,
        vhost: &VHost,
        mut message: Message,
        delay_ms: u64,
        memory: &Arc<MemoryMonitor>,
        store: Option<&Store>,
    ) -> Option<Commit> {
        let due = Instant::now() + Duration::from_millis(delay_ms);
        mark_delayed(&mut message, delay_ms);
        message.charge_to(memory);
        let persist = store.filter(|_| exchange.durable() && message.is_persistent());
        let (wake, commit) = {
            let mut held = self.held.lock();
            held.publisher.get_or_insert_with(|| Publisher {
                exchange: Arc::downgrade(exchange),
                vhost: vhost.handle(),
                store: store.cloned(),
            });
            let mut commit = None;
            let stored = persist.map(|store| {
                let queue = held.store_queue.get_or_insert_with(|| {
                    let mut key = STORE_KEY_PREFIX.to_vec();
                    key.extend_from_slice(&durable::entity_key(vhost.name(), exchange.name()));
                    // Written ahead of the publish below: the publish's commit covers it.
                    let (id, created) = store.put_queue(&key, b"");
                    drop(created);
                    StoreQueue { id, next_seq: 0 }
                });
                // Seqs grow per store queue in submission order: assigned under this lock.
                let seq = queue.next_seq;
                queue.next_seq += 1;
                let header = stored_header(due_unix_ms(delay_ms), &message);
                let (id, written) = store.publish(header, message.body_bytes(), &[(queue.id, seq)]);
                commit = Some(written);
                StoredRef {
                    queue: queue.id,
                    seq,
                    message: id,
                }
            });
            (held.push(due, HeldMessage { message, stored }), commit)
        };
        if wake {
            self.wake_at(due);
        }
        commit
    }

    /// Messages held now.
    pub(crate) fn len(&self) -> usize {
        self.held.lock().messages.len()
    }

    /// Drops every held message and the stored copies (the exchange was deleted).
    pub(crate) fn clear(&self) {
        let (dropped, store) = {
            let mut held = self.held.lock();
            let store = held
                .publisher
                .as_ref()
                .and_then(|p| p.store.clone())
                .zip(held.store_queue.take());
            (std::mem::take(&mut held.messages), store)
        };
        drop(dropped);
        if let Some((store, queue)) = store {
            drop(store.delete_queue(queue.id));
        }
    }
}

impl Timed for DelayedMessages {
    fn fire(&self, now: Instant) {
        let (due, exchange, vhost, store) = {
            let mut held = self.held.lock();
            let due: Vec<HeldMessage> = held.messages.pop_due(now).collect();
            held.scheduled = held.messages.next();
            if let Some(next) = held.scheduled {
                self.wake_at(next);
            }
            let Some(publisher) = held.publisher.as_ref() else {
                return;
            };
            let exchange = publisher.exchange.upgrade();
            (
                due,
                exchange,
                publisher.vhost.upgrade(),
                publisher.store.clone(),
            )
        };
        let (Some(exchange), Some(vhost)) = (exchange.filter(|x| !x.is_deleted()), vhost) else {
            return;
        };
        let mut queues = Vec::new();
        for mut held in due {
            // Held with its `BCC` header, which routes only now; malformed `CC`/`BCC`
            // headers were refused at basic.publish.
            let cc = sender_selected::take_routes(&mut held.message).unwrap_or_default();
            vhost.route(&exchange, &held.message, &cc, &mut queues);
            enqueue(held.message, &queues, store.as_ref());
            queues.clear();
            // After the publish above was submitted: a crash between the two writes
            // delivers the message twice rather than never.
            if let (Some(stored), Some(store)) = (held.stored, &store) {
                drop(store.remove(stored));
            }
        }
    }
}

/// Enqueues a due message on the queues it routed to, as `VHost::publish_with_commit`
/// does; it stays charged to the memory accounting from when it was held.
fn enqueue(message: Message, queues: &[Arc<Queue>], store: Option<&Store>) {
    if queues.is_empty() {
        debug!(
            exchange = %message.exchange(),
            routing_key = %message.routing_key(),
            "delayed message routed nowhere when due: dropped"
        );
        return;
    }
    let durable = message.is_persistent() && queues.iter().any(|q| q.store().is_some());
    match store.filter(|_| durable) {
        Some(store) => drop(crate::vhost::push_persistent(store, message, queues)),
        None => {
            let message = Arc::new(message);
            for queue in queues {
                queue.push(Arc::clone(&message));
            }
        }
    }
}

/// Recovery of a store queue at startup: when `rq` holds a delayed exchange's persistent
/// messages, holds them again in that exchange (due ones are routed at once) and returns
/// true; false for any other queue. A store queue whose exchange is gone is deleted.
///
/// # Errors
/// A store read failure.
pub(crate) fn recover(
    broker: &Broker,
    store: &Store,
    rq: &RecoveredQueue,
) -> Result<bool, StoreError> {
    let Some(key) = rq.key.strip_prefix(STORE_KEY_PREFIX) else {
        return Ok(false);
    };
    let exchange = durable::decode_entity_key(key)
        .ok()
        .and_then(|(vhost, name)| {
            let vhost = broker.vhost(&vhost)?;
            let exchange = vhost.exchange(&name)?;
            exchange.delayed.is_some().then_some((vhost, exchange))
        });
    let Some((vhost, exchange)) = exchange else {
        warn!(
            messages = rq.messages,
            "stored delayed messages of a missing delayed exchange removed"
        );
        drop(store.delete_queue(rq.id));
        return Ok(true);
    };
    let Some(delayed) = exchange.delayed.as_ref() else {
        return Ok(true);
    };
    let mut held = delayed.held.lock();
    held.publisher = Some(Publisher {
        exchange: Arc::downgrade(&exchange),
        vhost: Arc::downgrade(&vhost),
        store: Some(store.clone()),
    });
    held.store_queue = Some(StoreQueue {
        id: rq.id,
        next_seq: rq.next_seq,
    });
    let (now, now_unix_us) = (Instant::now(), unix_us());
    let mut from = rq.first_seq;
    while let Some(seq) = from {
        let page = store.page_in(rq.id, seq, RECOVERY_PAGE)?;
        from = page
            .last()
            .filter(|_| page.len() == RECOVERY_PAGE)
            .map(|last| last.seq + 1);
        for paged in page {
            let Some(id) = paged.message else {
                continue;
            };
            let stored = StoredRef {
                queue: rq.id,
                seq: paged.seq,
                message: id,
            };
            let header = &paged.record.header;
            let decoded = (header.len() >= 8)
                .then(|| header.slice(8..))
                .and_then(|rest| durable::decode_message_header(&rest).ok());
            let Some((exchange_name, routing_key, content)) = decoded else {
                warn!(
                    exchange = exchange.name(),
                    seq = paged.seq,
                    "malformed stored delayed message removed"
                );
                drop(store.remove(stored));
                continue;
            };
            let mut due_unix = [0u8; 8];
            due_unix.copy_from_slice(&header[..8]);
            let wait = wait_for(u64::from_be_bytes(due_unix), now_unix_us);
            let mut message = Message::new(exchange_name, routing_key, content, paged.record.body);
            message.charge_to(vhost.memory());
            held.push(
                now + wait,
                HeldMessage {
                    message,
                    stored: Some(stored),
                },
            );
        }
    }
    let count = held.messages.len();
    drop(held);
    debug!(
        exchange = exchange.name(),
        count, "delayed messages recovered"
    );
    Ok(true)
}

/// Arms the timer for the messages [`recover`] held again, once recovery has restored the
/// queues and bindings they route to: a message that fell due while the broker was down is
/// routed now, not before its destination exists.
pub(crate) fn arm_recovered(exchange: &Exchange) {
    let Some(delayed) = exchange.delayed.as_ref() else {
        return;
    };
    let next = {
        let mut held = delayed.held.lock();
        held.scheduled = held.messages.next();
        held.scheduled
    };
    if let Some(at) = next {
        delayed.wake_at(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_due_time_is_never_before_the_delay_has_passed() {
        let before = unix_us();
        let due = due_unix_ms(3_000);
        assert!(due * 1_000 >= before + 3_000_000);
        // Recovered a microsecond before it is due, it still waits that microsecond.
        assert_eq!(wait_for(due, due * 1_000 - 1), Duration::from_micros(1));
        assert_eq!(wait_for(due, due * 1_000 + 5), Duration::ZERO);
    }
}
