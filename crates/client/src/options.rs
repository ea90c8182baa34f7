//! Typed options of the channel methods.
//!
//! Every struct is `Default` (all flags false), so callers write
//! `QueueDeclareOptions { durable: true, ..Default::default() }`.

use std::fmt;

/// Exchange type for [`Channel::exchange_declare`](crate::Channel::exchange_declare).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes on an exact routing-key match.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on dotted routing-key patterns (`*`, `#`).
    Topic,
    /// Routes on message headers (`x-match`).
    Headers,
    /// Any other type the broker knows (e.g. `x-consistent-hash`).
    Custom(String),
}

impl ExchangeKind {
    /// The type name sent in `exchange.declare`.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Custom(s) => s,
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flags of `exchange.declare`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that the exchange exists (404 if not); declare nothing.
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Delete when the last binding is removed.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings.
    pub internal: bool,
}

/// Flags of `exchange.delete`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeDeleteOptions {
    /// Fail with 406 if the exchange still has bindings.
    pub if_unused: bool,
}

/// Flags of `queue.declare`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists (404 if not); declare nothing.
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Owned by this connection: other connections get 405, and the queue is
    /// deleted when the connection closes.
    pub exclusive: bool,
    /// Delete when the last consumer is cancelled.
    pub auto_delete: bool,
}

/// Flags of `queue.delete`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Fail with 406 if the queue has consumers.
    pub if_unused: bool,
    /// Fail with 406 if the queue has messages.
    pub if_empty: bool,
}

/// Flags of `basic.qos`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosOptions {
    /// RabbitMQ's reading: `false` limits each new consumer on the channel,
    /// `true` limits the channel as a whole.
    pub global: bool,
}

/// Flags of `basic.publish`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return the message (`basic.return`, 312 NO_ROUTE) when it reaches no queue.
    pub mandatory: bool,
}

/// Flags of `basic.consume`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Deliveries need no acknowledgement (they are settled when sent).
    pub no_ack: bool,
    /// Be the only consumer of the queue (403 if another exists).
    pub exclusive: bool,
    /// Do not receive messages published on this connection (ignored by RabbitMQ).
    pub no_local: bool,
}

/// Flags of `basic.get`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// The message needs no acknowledgement.
    pub no_ack: bool,
}

/// The reply to `queue.declare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's name (the generated one when the declared name was empty).
    pub name: String,
    /// Messages ready in the queue.
    pub message_count: u32,
    /// Consumers of the queue.
    pub consumer_count: u32,
}
