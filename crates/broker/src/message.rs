//! The message as the broker holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, FieldValue};

use crate::memory::{MemoryCharge, MemoryMonitor};

/// A published message. Routed to N queues it is one `Arc<Message>`: queues, unacked lists
/// and deliveries share it, the body is never copied.
///
/// The header is kept as received (`header.raw` is what the server writes back), with the
/// properties decoded once for the fields the broker reads. Queue code only asks for
/// [`Message::size`], never for the body, so a later store can keep the body on disk.
#[derive(Debug)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The content header: class id, body size, properties and their encoded bytes.
    pub header: ContentHeader,
    /// The body.
    pub body: Bytes,
    /// Set when the broker accepts the message; releases its bytes when the message drops.
    charge: Option<MemoryCharge>,
    /// When it was assembled, for the management API's oldest-message age and TTL.
    pub(crate) received_at: Instant,
    /// The `expiration` property in milliseconds, parsed once (`None` when absent or not a
    /// non-negative integer, which RabbitMQ would have refused).
    pub(crate) expiration: Option<u64>,
    /// How many times this copy was returned to its queue (nack or reject with requeue,
    /// consumer timeout, channel closed): the `x-delivery-count` it carries. A returned
    /// message is its queue's own copy, so the count is per queue.
    pub(crate) returns: u32,
}

impl Message {
    /// A message as the server assembled it from `basic.publish`, header and body frames.
    pub fn new(exchange: String, routing_key: String, header: ContentHeader, body: Bytes) -> Self {
        let expiration = header
            .properties
            .expiration
            .as_deref()
            .and_then(|e| e.parse::<u64>().ok());
        Self {
            exchange,
            routing_key,
            header,
            body,
            charge: None,
            received_at: Instant::now(),
            expiration,
            returns: 0,
        }
    }

    /// A copy with other properties (the header is re-encoded; the body is shared), charged
    /// to the same memory accounting, keeping its arrival time. `None` when the properties
    /// do not encode (a header table over 4 GiB), which cannot happen for a header that
    /// arrived on the wire plus a few broker fields.
    pub(crate) fn with_properties(
        &self,
        properties: BasicProperties,
        memory: &Arc<MemoryMonitor>,
    ) -> Option<Self> {
        let header =
            ContentHeader::new(self.header.class_id, self.header.body_size, properties).ok()?;
        let mut message = Self::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            header,
            self.body.clone(),
        );
        message.received_at = self.received_at;
        message.returns = self.returns;
        message.set_charge(memory.charge(message.size()));
        Some(message)
    }

    /// The copy a queue puts back after its `returns`-th return: `x-delivery-count` set in
    /// its headers (only redeliveries pay for re-encoding the header).
    pub(crate) fn returned(&self, returns: u32, memory: &Arc<MemoryMonitor>) -> Option<Self> {
        let mut properties = self.header.properties.clone();
        properties
            .headers
            .get_or_insert_with(FieldTable::default)
            .insert(
                "x-delivery-count".to_owned(),
                FieldValue::I64(i64::from(returns)),
            );
        let mut message = self.with_properties(properties, memory)?;
        message.returns = returns;
        Some(message)
    }

    /// When this message expires in a queue whose `x-message-ttl` is `queue_ttl`: the
    /// earlier of the two TTLs, counted from its arrival.
    pub(crate) fn expires_at(&self, queue_ttl: Option<u64>) -> Option<Instant> {
        let ttl = match (queue_ttl, self.expiration) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(self.received_at + Duration::from_millis(ttl))
    }

    /// Bytes counted against the memory watermark: body plus encoded header.
    pub fn size(&self) -> u64 {
        self.body.len() as u64 + self.header.raw.len() as u64
    }

    /// True when the publisher asked for persistence (delivery-mode 2).
    pub fn is_persistent(&self) -> bool {
        self.header.properties.delivery_mode == Some(2)
    }

    pub(crate) fn set_charge(&mut self, charge: MemoryCharge) {
        self.charge = Some(charge);
    }
}

/// A copy sharing the body and header bytes; it is not charged to the memory accounting
/// until it is published.
impl Clone for Message {
    fn clone(&self) -> Self {
        Self::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            self.header.clone(),
            self.body.clone(),
        )
    }
}
