//! The message as the broker holds it.

use std::time::Instant;

use bytes::Bytes;
use lockgate_wire::ContentHeader;

use crate::memory::MemoryCharge;

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
    /// When it was assembled, for the management API's oldest-message age.
    pub(crate) received_at: Instant,
}

impl Message {
    /// A message as the server assembled it from `basic.publish`, header and body frames.
    pub fn new(exchange: String, routing_key: String, header: ContentHeader, body: Bytes) -> Self {
        Self {
            exchange,
            routing_key,
            header,
            body,
            charge: None,
            received_at: Instant::now(),
        }
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
