//! The `x-consistent-hash` exchange type, compatible with RabbitMQ's
//! rabbitmq_consistent_hash_exchange plugin.
//!
//! The binding key is a weight: a positive integer, the number of buckets the binding owns.
//! As in the plugin, buckets are numbered in binding order (a binding of weight `w` added
//! when `n` buckets exist owns buckets `n .. n + w`; removing a binding shifts the later
//! ones down), and a message goes to the bucket that jump consistent hashing (Lamping and
//! Veach) picks for the hash of its routing key, of the header named by the `hash-header`
//! exchange argument, or of the property named by `hash-property` (`message_id`,
//! `correlation_id` or `timestamp`). So a key always lands on the same binding while the
//! bindings stay the same, bindings share keys in proportion to their weights, and adding a
//! binding moves only about `w / total` of the keys.
//!
//! The hash is the plugin's own ([`super::erlang_hash`]): Erlang's `phash2` of the value
//! (the routing key as a binary, a header as `{Type, Value}`, a property as a binary, and
//! `undefined` when the header or property is missing), seeding the `exs1024` generator
//! that drives the jump. So with the same bindings made in the same order, a key lands on
//! the same queue as on RabbitMQ (checked against values from an Erlang node). Float,
//! decimal, table and array header values are the exception: they hash by their text.
//! All messages without the header (or property) go to one binding, as in the plugin.
//!
//! Bindings live in a list in binding order with their cumulative weights beside it:
//! routing is the jump hash (O(log total weight)) plus a binary search, with no memory per
//! bucket, so a weight of 1,000,000 costs nothing more than a weight of 1.

use lockgate_wire::{FieldTable, FieldValue};

use super::erlang_hash::{jump_consistent_hash, Term};
use super::{BindingEntry, Destination};
use crate::error::BrokerError;
use crate::message::Message;

/// What a consistent-hash exchange hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HashOn {
    RoutingKey,
    Header(String),
    Property(HashProperty),
}

/// The properties the plugin can hash on (`hash-property`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashProperty {
    MessageId,
    CorrelationId,
    Timestamp,
}

impl HashOn {
    /// Reads `hash-header` / `hash-property` from the exchange's arguments.
    ///
    /// # Errors
    /// `PreconditionFailed` with the plugin's texts: "hash-header and hash-property are
    /// mutually exclusive", "Unsupported property: x".
    pub(crate) fn parse(arguments: &FieldTable) -> Result<Self, BrokerError> {
        let text = |key: &str| match arguments.get(key) {
            Some(FieldValue::LongString(s)) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        };
        match (text("hash-header"), text("hash-property")) {
            (None, None) => Ok(Self::RoutingKey),
            (Some(header), None) => Ok(Self::Header(header)),
            (None, Some(property)) => match property.as_str() {
                "message_id" => Ok(Self::Property(HashProperty::MessageId)),
                "correlation_id" => Ok(Self::Property(HashProperty::CorrelationId)),
                "timestamp" => Ok(Self::Property(HashProperty::Timestamp)),
                other => Err(BrokerError::precondition_failed(format_args!(
                    "Unsupported property: {other}"
                ))),
            },
            (Some(_), Some(_)) => Err(BrokerError::precondition_failed(
                "hash-header and hash-property are mutually exclusive",
            )),
        }
    }

    /// The bucket in `0..buckets` that `message` hashes to, exactly as the plugin picks it.
    fn bucket(&self, message: &Message, buckets: u64) -> u64 {
        let properties = &message.properties();
        let timestamp;
        let typed;
        let debug;
        let term = match self {
            Self::RoutingKey => Term::Binary(message.routing_key().as_bytes()),
            Self::Header(name) => match properties.headers.as_ref().and_then(|h| h.get(name)) {
                Some(value) => match typed_value(value) {
                    Some((kind, value)) => {
                        typed = [Term::Atom(kind), value];
                        Term::Tuple(&typed)
                    }
                    None => {
                        debug = format!("{value:?}");
                        Term::Binary(debug.as_bytes())
                    }
                },
                None => Term::Atom("undefined"),
            },
            Self::Property(HashProperty::MessageId) => text(properties.message_id.as_deref()),
            Self::Property(HashProperty::CorrelationId) => {
                text(properties.correlation_id.as_deref())
            }
            Self::Property(HashProperty::Timestamp) => {
                timestamp = properties.timestamp.map(|t| t.to_string());
                text(timestamp.as_deref())
            }
        };
        jump_consistent_hash(&term, buckets)
    }
}

/// A property as the plugin hashes it: its bytes, or `undefined` when absent.
fn text(value: Option<&str>) -> Term<'_> {
    match value {
        Some(v) => Term::Binary(v.as_bytes()),
        None => Term::Atom("undefined"),
    }
}

/// A header value as RabbitMQ's `rabbit_misc:table_lookup` returns it, `{Type, Value}`:
/// its type atom and value. `None` for floats, decimals, tables and arrays, which then hash
/// by their text: consistently, but not as on RabbitMQ.
fn typed_value(value: &FieldValue) -> Option<(&'static str, Term<'_>)> {
    Some(match value {
        FieldValue::LongString(s) => ("longstr", Term::Binary(s)),
        FieldValue::ByteArray(s) => ("binary", Term::Binary(s)),
        FieldValue::Bool(b) => ("bool", Term::Atom(if *b { "true" } else { "false" })),
        FieldValue::I8(n) => ("byte", Term::Int((*n).into())),
        FieldValue::U8(n) => ("unsignedbyte", Term::Int((*n).into())),
        FieldValue::I16(n) => ("short", Term::Int((*n).into())),
        FieldValue::U16(n) => ("unsignedshort", Term::Int((*n).into())),
        FieldValue::I32(n) => ("signedint", Term::Int((*n).into())),
        FieldValue::U32(n) => ("unsignedint", Term::Int((*n).into())),
        FieldValue::I64(n) => ("long", Term::Int(*n)),
        FieldValue::Timestamp(t) => ("timestamp", Term::Int(i64::try_from(*t).ok()?)),
        FieldValue::Void => ("void", Term::Atom("undefined")),
        _ => return None,
    })
}

/// Parses a binding key as a weight.
///
/// # Errors
/// `PreconditionFailed` as the plugin words it: "The binding key must be an integer: x",
/// "The binding key must be greater than 0".
fn weight(key: &str) -> Result<u64, BrokerError> {
    let n: i64 = key.trim().parse().map_err(|_| {
        BrokerError::precondition_failed(format_args!(
            "The binding key must be an integer: \"{key}\""
        ))
    })?;
    u64::try_from(n)
        .ok()
        .filter(|w| *w >= 1)
        .ok_or_else(|| BrokerError::precondition_failed("The binding key must be greater than 0"))
}

/// A consistent-hash exchange's bindings and ring.
#[derive(Debug)]
pub(crate) struct ConsistentHashRouter {
    hash_on: HashOn,
    bindings: Vec<BindingEntry>,
    /// `ends[i]` is one past the last bucket of `bindings[i]`: the running sum of weights.
    ends: Vec<u64>,
}

impl ConsistentHashRouter {
    /// An empty ring hashing on `hash_on`.
    pub(crate) fn new(hash_on: HashOn) -> Self {
        Self {
            hash_on,
            bindings: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// # Errors
    /// `PreconditionFailed` when the key is not a positive integer.
    pub(crate) fn validate(routing_key: &str) -> Result<(), BrokerError> {
        weight(routing_key).map(drop)
    }

    /// Adds a binding whose key is its weight; `Ok(false)` when it already exists.
    ///
    /// # Errors
    /// `PreconditionFailed` when the key is not a positive integer.
    pub(crate) fn add(&mut self, entry: BindingEntry) -> Result<bool, BrokerError> {
        let weight = weight(&entry.routing_key)?;
        if self.bindings.iter().any(|b| b.same(&entry)) {
            return Ok(false);
        }
        let end = self.total().saturating_add(weight);
        self.bindings.push(entry);
        self.ends.push(end);
        Ok(true)
    }

    /// Removes a binding; the buckets after it shift down by its weight.
    pub(crate) fn remove(
        &mut self,
        key: &str,
        arguments: &FieldTable,
        destination: &Destination,
    ) -> bool {
        let Some(at) = self.bindings.iter().position(|b| {
            b.routing_key == key && &b.arguments == arguments && &b.destination == destination
        }) else {
            return false;
        };
        self.bindings.remove(at);
        self.rebuild_ends();
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Calls `f` with the one destination `message` hashes to (none without bindings).
    pub(crate) fn route(&self, message: &Message, f: &mut impl FnMut(&Destination)) {
        let total = self.total();
        if total == 0 {
            return;
        }
        let bucket = self.hash_on.bucket(message, total);
        let at = self.ends.partition_point(|end| *end <= bucket);
        if let Some(binding) = self.bindings.get(at) {
            f(&binding.destination);
        }
    }

    pub(crate) fn take_all(&mut self) -> Vec<BindingEntry> {
        self.ends.clear();
        std::mem::take(&mut self.bindings)
    }

    fn total(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    fn rebuild_ends(&mut self) {
        self.ends.clear();
        let mut end = 0u64;
        for binding in &self.bindings {
            // Every stored key parsed as a weight when it was added.
            end = end.saturating_add(weight(&binding.routing_key).unwrap_or(1));
            self.ends.push(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{Exchange, ExchangeFlags, ExchangeKind};
    use bytes::Bytes;
    use lockgate_wire::{BasicProperties, ContentHeader};
    use std::sync::Arc;

    #[test]
    fn growing_the_ring_moves_only_keys_to_the_new_bucket() {
        for key in 0..5_000u64 {
            let key = key.to_string();
            let term = Term::Binary(key.as_bytes());
            let before = jump_consistent_hash(&term, 10);
            let after = jump_consistent_hash(&term, 11);
            assert!(
                after == before || after == 10,
                "key {key}: {before} -> {after}"
            );
        }
    }

    #[test]
    fn weights_must_be_positive_integers() {
        assert_eq!(weight("3").unwrap(), 3);
        assert!(weight("0")
            .unwrap_err()
            .text()
            .contains("must be greater than 0"));
        assert!(weight("-2").is_err());
        assert!(weight("abc")
            .unwrap_err()
            .text()
            .contains("must be an integer"));
    }

    #[test]
    fn hash_arguments_follow_the_plugin() {
        let table = |pairs: &[(&str, &str)]| -> FieldTable {
            pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect()
        };
        assert_eq!(HashOn::parse(&table(&[])).unwrap(), HashOn::RoutingKey);
        assert_eq!(
            HashOn::parse(&table(&[("hash-header", "user")])).unwrap(),
            HashOn::Header("user".into())
        );
        assert_eq!(
            HashOn::parse(&table(&[("hash-property", "message_id")])).unwrap(),
            HashOn::Property(HashProperty::MessageId)
        );
        assert!(HashOn::parse(&table(&[("hash-property", "app_id")]))
            .unwrap_err()
            .text()
            .contains("Unsupported property: app_id"));
        assert!(HashOn::parse(&table(&[
            ("hash-header", "a"),
            ("hash-property", "timestamp")
        ]))
        .unwrap_err()
        .text()
        .contains("mutually exclusive"));
    }

    /// Destinations in these tests are exchanges: cheap to build, and routing only compares
    /// them by pointer.
    fn queue(name: &str) -> Arc<Exchange> {
        Arc::new(Exchange::new(
            name.into(),
            ExchangeKind::Fanout,
            ExchangeFlags::default(),
            FieldTable::default(),
        ))
    }

    fn message(routing_key: &str) -> Message {
        Message::new(
            "chx".into(),
            routing_key.into(),
            ContentHeader::new(60, 0, BasicProperties::default()).unwrap(),
            Bytes::new(),
        )
    }

    fn routed(router: &ConsistentHashRouter, m: &Message) -> Vec<String> {
        let mut out = Vec::new();
        router.route(m, &mut |d| {
            if let Destination::Exchange(x) = d {
                out.push(x.name().to_owned());
            }
        });
        out
    }

    fn bind(router: &mut ConsistentHashRouter, q: &Arc<Exchange>, weight: &str) {
        let added = router.add(BindingEntry {
            routing_key: weight.into(),
            arguments: FieldTable::default(),
            destination: Destination::Exchange(Arc::clone(q)),
        });
        assert!(added.unwrap());
    }

    #[test]
    fn a_key_always_routes_to_one_queue_and_weights_shape_the_split() {
        let (a, b) = (queue("a"), queue("b"));
        let mut router = ConsistentHashRouter::new(HashOn::RoutingKey);
        assert!(routed(&router, &message("k")).is_empty());
        bind(&mut router, &a, "1");
        bind(&mut router, &b, "3");
        let mut to_b = 0;
        for i in 0..4_000 {
            let m = message(&format!("key-{i}"));
            let first = routed(&router, &m);
            assert_eq!(first.len(), 1);
            assert_eq!(first, routed(&router, &m));
            if first[0] == "b" {
                to_b += 1;
            }
        }
        assert!((2_700..3_300).contains(&to_b), "b got {to_b} of 4000");
    }

    #[test]
    fn removing_a_binding_only_moves_its_keys() {
        let (a, b, c) = (queue("a"), queue("b"), queue("c"));
        let mut router = ConsistentHashRouter::new(HashOn::RoutingKey);
        bind(&mut router, &a, "2");
        bind(&mut router, &b, "2");
        bind(&mut router, &c, "2");
        let before: Vec<Vec<String>> = (0..500)
            .map(|i| routed(&router, &message(&format!("k{i}"))))
            .collect();
        assert!(router.remove("2", &FieldTable::default(), &Destination::Exchange(c)));
        for (i, old) in before.iter().enumerate() {
            if old[0] != "c" {
                assert_eq!(&routed(&router, &message(&format!("k{i}"))), old);
            }
        }
    }
}
