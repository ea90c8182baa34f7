//! The broker's encoding of what it persists: definition keys and values, and the header
//! bytes stored beside a persistent message's body. The store never parses these.
//!
//! Strings are length-prefixed (u8 for AMQP short strings and names, which are at most 255
//! octets; RabbitMQ's limit), integers big-endian, argument tables in AMQP field-table form
//! (wire's encoder). Keys are built so that equal definitions give equal keys:
//!
//! | record | key | value |
//! |---|---|---|
//! | vhost | name | empty |
//! | exchange | vhost, name | kind, flags (bit 0 auto-delete, bit 1 internal), arguments |
//! | queue | vhost, name | flags (bit 0 auto-delete), arguments |
//! | binding | vhost, source, `q`/`e`, destination, routing key, arguments | empty |
//! | message header | — | exchange, routing key, u16 class id, u64 body size, raw properties |
//!
//! Binding arguments are part of the key because they are part of a binding's identity, as
//! in RabbitMQ. Changing any of this needs a new store format version.

use bytes::{BufMut, Bytes, BytesMut};
use lockgate_wire::{ContentHeader, FieldTable};

use crate::exchange::{ExchangeFlags, ExchangeKind};
use crate::message::Message;

/// A stored record that does not decode: the store is damaged or from another build.
#[derive(Debug, thiserror::Error)]
#[error("malformed stored {what}")]
pub(crate) struct Malformed {
    what: &'static str,
}

pub(crate) fn malformed(what: &'static str) -> Malformed {
    Malformed { what }
}

fn put_str(dst: &mut BytesMut, s: &str) {
    // Names are AMQP short strings (≤ 255 octets); a longer one never reaches here.
    let bytes = s.as_bytes();
    let len = bytes.len().min(255);
    dst.put_u8(len as u8);
    dst.put_slice(&bytes[..len]);
}

fn put_table(dst: &mut BytesMut, table: &FieldTable) {
    // A table that arrived on the wire re-encodes; if not, an empty table is stored.
    let mark = dst.len();
    if table.encode(dst).is_err() {
        dst.truncate(mark);
        dst.put_u32(0);
    }
}

/// A cursor over stored bytes.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(src: &'a [u8], what: &'static str) -> Self {
        Self { rest: src, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(malformed(self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let raw = self.take(2)?;
        Ok(u16::from_be_bytes([raw[0], raw[1]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let raw: [u8; 8] = self.take(8)?.try_into().map_err(|_| malformed(self.what))?;
        Ok(u64::from_be_bytes(raw))
    }

    fn str(&mut self) -> Result<String, Malformed> {
        let len = usize::from(self.u8()?);
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| malformed(self.what))
    }

    fn table(self) -> Result<FieldTable, Malformed> {
        FieldTable::decode(self.rest).map_err(|_| malformed(self.what))
    }
}

/// Key of a vhost-scoped entity (exchange or queue).
pub(crate) fn entity_key(vhost: &str, name: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(2 + vhost.len() + name.len());
    put_str(&mut k, vhost);
    put_str(&mut k, name);
    k.freeze()
}

/// Decodes [`entity_key`] into (vhost, name).
pub(crate) fn decode_entity_key(key: &[u8]) -> Result<(String, String), Malformed> {
    let mut r = Reader::new(key, "exchange or queue key");
    let vhost = r.str()?;
    let name = r.str()?;
    Ok((vhost, name))
}

/// An exchange definition's value.
pub(crate) fn exchange_value(
    kind: ExchangeKind,
    flags: ExchangeFlags,
    arguments: &FieldTable,
) -> Bytes {
    let mut v = BytesMut::new();
    put_str(&mut v, kind.as_str());
    v.put_u8(u8::from(flags.auto_delete) | u8::from(flags.internal) << 1);
    put_table(&mut v, arguments);
    v.freeze()
}

/// A stored exchange.
pub(crate) struct StoredExchange {
    pub kind: ExchangeKind,
    pub flags: ExchangeFlags,
    pub arguments: FieldTable,
}

pub(crate) fn decode_exchange(value: &[u8]) -> Result<StoredExchange, Malformed> {
    let mut r = Reader::new(value, "exchange");
    let kind = ExchangeKind::parse(&r.str()?).map_err(|_| malformed("exchange type"))?;
    let bits = r.u8()?;
    let flags = ExchangeFlags {
        passive: false,
        durable: true,
        auto_delete: bits & 1 != 0,
        internal: bits & 2 != 0,
    };
    Ok(StoredExchange {
        kind,
        flags,
        arguments: r.table()?,
    })
}

/// A queue definition's value.
pub(crate) fn queue_value(auto_delete: bool, arguments: &FieldTable) -> Bytes {
    let mut v = BytesMut::new();
    v.put_u8(u8::from(auto_delete));
    put_table(&mut v, arguments);
    v.freeze()
}

/// Decodes [`queue_value`] into (auto_delete, arguments).
pub(crate) fn decode_queue(value: &[u8]) -> Result<(bool, FieldTable), Malformed> {
    let mut r = Reader::new(value, "queue");
    let auto_delete = r.u8()? & 1 != 0;
    Ok((auto_delete, r.table()?))
}

/// A binding as stored (its key is all of it).
#[derive(Debug, PartialEq)]
pub(crate) struct StoredBinding {
    pub vhost: String,
    pub source: String,
    /// True when the destination is a queue, false for an exchange.
    pub to_queue: bool,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

pub(crate) fn binding_key(
    vhost: &str,
    source: &str,
    to_queue: bool,
    destination: &str,
    routing_key: &str,
    arguments: &FieldTable,
) -> Bytes {
    let mut k = BytesMut::new();
    put_str(&mut k, vhost);
    put_str(&mut k, source);
    k.put_u8(if to_queue { b'q' } else { b'e' });
    put_str(&mut k, destination);
    put_str(&mut k, routing_key);
    put_table(&mut k, arguments);
    k.freeze()
}

pub(crate) fn decode_binding(key: &[u8]) -> Result<StoredBinding, Malformed> {
    let mut r = Reader::new(key, "binding");
    let vhost = r.str()?;
    let source = r.str()?;
    let to_queue = match r.u8()? {
        b'q' => true,
        b'e' => false,
        _ => return Err(malformed("binding")),
    };
    let destination = r.str()?;
    let routing_key = r.str()?;
    Ok(StoredBinding {
        vhost,
        source,
        to_queue,
        destination,
        routing_key,
        arguments: r.table()?,
    })
}

/// The header bytes stored with a persistent message's body.
pub(crate) fn message_header(message: &Message) -> Bytes {
    let (exchange, routing_key, header) = (
        message.exchange(),
        message.routing_key(),
        message.header_ref(),
    );
    let mut h =
        BytesMut::with_capacity(2 + exchange.len() + routing_key.len() + 10 + header.raw.len());
    put_str(&mut h, exchange);
    put_str(&mut h, routing_key);
    h.put_u16(header.class_id);
    h.put_u64(header.body_size);
    h.put_slice(header.raw);
    h.freeze()
}

/// Decodes [`message_header`] into (exchange, routing key, content header).
pub(crate) fn decode_message_header(
    bytes: &Bytes,
) -> Result<(String, String, ContentHeader), Malformed> {
    let mut r = Reader::new(bytes, "message header");
    let exchange = r.str()?;
    let routing_key = r.str()?;
    let class_id = r.u16()?;
    let body_size = r.u64()?;
    let at = bytes.len() - r.rest.len();
    let header = ContentHeader::from_raw(class_id, body_size, bytes.slice(at..))
        .map_err(|_| malformed("message properties"))?;
    Ok((exchange, routing_key, header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockgate_wire::{BasicProperties, FieldValue};

    fn table() -> FieldTable {
        [
            ("x-match".to_owned(), FieldValue::LongString("all".into())),
            ("n".to_owned(), FieldValue::I32(7)),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn entity_keys_round_trip() {
        let key = entity_key("/", "orders");
        assert_eq!(
            decode_entity_key(&key).unwrap(),
            ("/".to_owned(), "orders".to_owned())
        );
        assert!(decode_entity_key(&key[..3]).is_err());
    }

    #[test]
    fn exchange_values_round_trip() {
        let flags = ExchangeFlags {
            passive: false,
            durable: true,
            auto_delete: true,
            internal: true,
        };
        let v = exchange_value(ExchangeKind::Headers, flags, &table());
        let x = decode_exchange(&v).unwrap();
        assert_eq!(x.kind, ExchangeKind::Headers);
        assert_eq!(x.flags, flags);
        assert_eq!(x.arguments, table());
    }

    #[test]
    fn queue_values_round_trip() {
        let v = queue_value(true, &table());
        assert_eq!(decode_queue(&v).unwrap(), (true, table()));
        assert!(decode_queue(&[]).is_err());
    }

    #[test]
    fn binding_keys_round_trip_and_differ_by_arguments() {
        let k = binding_key("/", "x", true, "q", "a.b", &table());
        let b = decode_binding(&k).unwrap();
        assert_eq!(
            b,
            StoredBinding {
                vhost: "/".into(),
                source: "x".into(),
                to_queue: true,
                destination: "q".into(),
                routing_key: "a.b".into(),
                arguments: table(),
            }
        );
        assert_ne!(
            k,
            binding_key("/", "x", true, "q", "a.b", &FieldTable::default())
        );
    }

    #[test]
    fn message_headers_round_trip() {
        let props = BasicProperties {
            delivery_mode: Some(2),
            message_id: Some("m1".into()),
            ..BasicProperties::default()
        };
        let header = ContentHeader::new(60, 5, props).unwrap();
        let message = Message::new("amq.direct".into(), "rk".into(), &header, "hello".into());
        let bytes = message_header(&message);
        let (x, rk, h) = decode_message_header(&bytes).unwrap();
        assert_eq!((x.as_str(), rk.as_str()), ("amq.direct", "rk"));
        assert_eq!(h, header);
        assert!(decode_message_header(&bytes.slice(..4)).is_err());
    }
}
