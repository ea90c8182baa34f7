//! Sender-selected distribution, as RabbitMQ (`rabbit_basic:header_routes/1`;
//! <https://www.rabbitmq.com/sender-selected.html>): the long strings in a message's `CC` and
//! `BCC` array headers are routing keys too, for every exchange the message passes through
//! (array entries of other types are skipped), and `BCC` is removed before the message is
//! enqueued, so that no consumer sees it. A `CC` or `BCC` header that is not an array refuses
//! the publish.
//!
//! Most messages have no headers, and most that have some name neither key: the property
//! flags, then a scan of the encoded properties for the two keys, tell so before anything is
//! decoded.

use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

use crate::error::BrokerError;
use crate::message::Message;
use crate::queue::arguments::type_name;

/// The `headers` property's bit in the first octet of the (big-endian) property flags.
const HEADERS_FLAG: u8 = 0x20;

/// The routing keys `message` selects in its `CC` and `BCC` headers (empty, with nothing
/// allocated, for a message without them); `BCC` is removed from `message`.
///
/// # Errors
/// As [`check`].
pub(crate) fn take_routes(message: &mut Message) -> Result<Vec<String>, BrokerError> {
    if !may_select(message.header_raw()) {
        return Ok(Vec::new());
    }
    let mut properties = message.properties();
    let Some(headers) = properties.headers.as_mut() else {
        return Ok(Vec::new());
    };
    let keys = routes_in(headers)?;
    if headers.remove("BCC").is_some() {
        message
            .set_properties(&properties)
            .map_err(|e| BrokerError::precondition_failed(format_args!("invalid message: {e}")))?;
    }
    Ok(keys)
}

/// Refuses a message whose `CC` or `BCC` header is not an array, as RabbitMQ's channel does at
/// basic.publish whatever the exchange (a delayed exchange routes on them later).
///
/// # Errors
/// `PreconditionFailed` "invalid message: {unacceptable_type_in_header,"CC",longstr}" for a
/// `CC` or `BCC` header that is not an array, as RabbitMQ's channel answers.
pub(crate) fn check(message: &Message) -> Result<(), BrokerError> {
    check_encoded(message.header_raw())
}

/// [`check`] on encoded property flags and list (a content header's); properties that do not
/// decode have no headers to refuse.
///
/// # Errors
/// As [`check`].
pub fn check_encoded(raw: &[u8]) -> Result<(), BrokerError> {
    if !may_select(raw) {
        return Ok(());
    }
    match BasicProperties::decode(raw).map(|p| p.headers) {
        Ok(Some(headers)) => routes_in(&headers).map(drop),
        _ => Ok(()),
    }
}

/// The long strings of the `CC` and `BCC` arrays in `headers`.
fn routes_in(headers: &FieldTable) -> Result<Vec<String>, BrokerError> {
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        match headers.get(name) {
            None => {}
            Some(FieldValue::Array(routes)) => {
                keys.extend(routes.iter().filter_map(|route| match route {
                    FieldValue::LongString(key) => Some(String::from_utf8_lossy(key).into_owned()),
                    _ => None,
                }));
            }
            Some(other) => {
                return Err(BrokerError::precondition_failed(format_args!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                    type_name(other)
                )))
            }
        }
    }
    Ok(keys)
}

/// False when the encoded properties `raw` certainly have no `CC` or `BCC` header: no headers
/// at all, or neither key's shortstr encoding anywhere in them.
fn may_select(raw: &[u8]) -> bool {
    raw.first().is_some_and(|flags| flags & HEADERS_FLAG != 0)
        && raw
            .windows(4)
            .any(|w| matches!(w, [_, 2, b'C', b'C'] | [3, b'B', b'C', b'C']))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lockgate_wire::{BasicProperties, ContentHeader, FieldTable};

    use super::*;

    fn message(headers: Option<FieldTable>) -> Message {
        let properties = BasicProperties {
            headers,
            ..BasicProperties::default()
        };
        let header = ContentHeader::new(60, 1, properties).unwrap();
        Message::new("x".into(), "key".into(), header, Bytes::from_static(b"b"))
    }

    fn keys(entries: &[&str]) -> FieldValue {
        FieldValue::Array(
            entries
                .iter()
                .map(|k| FieldValue::LongString(Bytes::copy_from_slice(k.as_bytes())))
                .collect(),
        )
    }

    #[test]
    fn cc_and_bcc_keys_are_taken_and_bcc_is_removed() {
        let mut headers = FieldTable::default();
        headers.insert("CC", keys(&["a", "b"]));
        headers.insert("BCC", keys(&["c"]));
        headers.insert("app", FieldValue::I32(1));
        let mut m = message(Some(headers));
        assert_eq!(take_routes(&mut m).unwrap(), ["a", "b", "c"]);
        let left = m.headers().unwrap();
        assert!(left.get("BCC").is_none());
        assert_eq!(left.get("CC"), Some(&keys(&["a", "b"])));
        assert_eq!(left.get("app"), Some(&FieldValue::I32(1)));
        // Taken again (a dead-lettered copy), only CC is left.
        assert_eq!(take_routes(&mut m).unwrap(), ["a", "b"]);
    }

    #[test]
    fn messages_without_the_headers_are_left_alone() {
        let mut plain = message(None);
        assert!(take_routes(&mut plain).unwrap().is_empty());
        let mut headers = FieldTable::default();
        headers.insert("CCX", keys(&["a"]));
        headers.insert("x", keys(&["CC"]));
        let mut other = message(Some(headers));
        let raw = other.header_raw().to_vec();
        assert!(take_routes(&mut other).unwrap().is_empty());
        assert_eq!(other.header_raw(), raw);
    }

    #[test]
    fn a_header_that_is_not_an_array_is_refused() {
        let mut headers = FieldTable::default();
        headers.insert("BCC", FieldValue::LongString(Bytes::from_static(b"q")));
        let e = take_routes(&mut message(Some(headers))).unwrap_err();
        assert_eq!(
            e.text(),
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"BCC\",longstr}"
        );
    }
}
