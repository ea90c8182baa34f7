//! Identifier newtypes and server-generated names.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One client connection; exclusive queues belong to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// An AMQP channel number within its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u16);

/// A delivery tag: per channel, starting at 1, strictly increasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryTag(pub u64);

/// A consumer tag. Cloning is a reference-count increment, so every delivery can carry one
/// without allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerTag(Arc<str>);

impl ConsumerTag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A server-generated tag, "amq.ctag-" followed by 22 random URL-safe characters, as
    /// RabbitMQ generates them.
    pub fn generate() -> Self {
        Self(random_name("amq.ctag").into())
    }
}

impl From<&str> for ConsumerTag {
    fn from(tag: &str) -> Self {
        Self(tag.into())
    }
}

impl From<String> for ConsumerTag {
    fn from(tag: String) -> Self {
        Self(tag.into())
    }
}

impl Borrow<str> for ConsumerTag {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `prefix` + "-" + 128 random bits in unpadded URL-safe base64 (22 characters), the shape of
/// RabbitMQ's `rabbit_guid:binary/2` ("amq.gen-JzTY20BRgKO-HjmUJj0wLg").
pub(crate) fn random_name(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = u128::from(random_u64()) << 64 | u128::from(random_u64());
    let mut name = String::with_capacity(prefix.len() + 23);
    name.push_str(prefix);
    name.push('-');
    for i in 0..22 {
        let index = (bits >> (6 * i)) & 63;
        name.push(char::from(ALPHABET[index as usize]));
    }
    name
}

/// Random enough for unique names: std's per-process random hash keys, mixed with a counter.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}
