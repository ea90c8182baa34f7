//! An async AMQP 0-9-1 client for lockgate (and RabbitMQ: it is the same
//! protocol), built on tokio and the `lockgate-wire` codec.
//!
//! ```no_run
//! use futures::StreamExt;
//! use lockgate_client::{
//!     BasicProperties, ConsumeOptions, Connection, FieldTable, PublishOptions, QueueDeclareOptions,
//! };
//!
//! # async fn demo() -> lockgate_client::Result<()> {
//! let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let channel = conn.open_channel().await?;
//! channel
//!     .queue_declare("hello", QueueDeclareOptions::default(), FieldTable::default())
//!     .await?;
//!
//! // Publish with a publisher confirm.
//! channel.confirm_select().await?;
//! let confirmation = channel
//!     .basic_publish("", "hello", PublishOptions::default(), BasicProperties::default(), "hi!")
//!     .await?;
//! confirmation.await?;
//!
//! // Consume and acknowledge.
//! let mut consumer = channel
//!     .basic_consume("hello", "", ConsumeOptions::default(), FieldTable::default())
//!     .await?;
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     assert_eq!(&delivery.body[..], b"hi!");
//!     delivery.ack().await?;
//! }
//! conn.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`Connection`] (`connection.rs`): URI → socket → handshake (PLAIN,
//!   tune, heartbeats), opening channels, clean close. Options and the URI
//!   form are in `uri.rs` ([`ConnectionOptions`]).
//! - `io.rs`: one reader and one writer task per socket. Channels encode
//!   their frames into the session's output buffer (`outbox.rs`), which the
//!   writer takes whole and writes with one syscall; the reader routes each
//!   frame to its channel without awaiting the application, and deliveries
//!   to their consumer's inbox (`inbox.rs`), waking each consumer once per
//!   read.
//! - [`Channel`] (`channel.rs`): declarations with typed options
//!   (`options.rs`), publishing ([`Confirmation`] in `confirm.rs`), consuming
//!   ([`Consumer`], [`Delivery`] in `message.rs`), `basic.get`, returns. The
//!   state the reader updates (pending calls, consumers, confirms) is in
//!   `channel_inner.rs`.
//! - `recovery.rs`: optional automatic recovery ([`RecoveryConfig`]).
//! - [`Error`] (`error.rs`): one typed error carrying the broker's reply
//!   code and text; a failure is reported to every pending call and stream.
//!
//! # Concurrency
//!
//! Handles are cheap to clone and `Send + Sync`. Synchronous methods on one
//! channel run one at a time; use several channels for parallel work.
//! Deliveries are buffered per consumer without bound: use
//! [`Channel::basic_qos`] to limit how many the broker sends ahead.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod channel;
mod channel_inner;
mod confirm;
mod connection;
mod error;
mod inbox;
mod io;
mod message;
mod options;
mod outbox;
mod recovery;
mod uri;

pub use channel::Channel;
pub use confirm::Confirmation;
pub use connection::Connection;
pub use error::{CloseReason, Error, Result};
pub use message::{Consumer, Delivery, GetMessage, Properties, ReturnedMessage, Returns};
pub use options::{
    ConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeKind, GetOptions,
    PublishOptions, QosOptions, QueueDeclareOptions, QueueDeleteOptions, QueueInfo,
};
pub use uri::{ConnectionOptions, RecoveryConfig, DEFAULT_PORT};

/// The wire types the API uses, re-exported so that users need not depend on
/// `lockgate-wire` themselves.
pub use lockgate_wire::{BasicProperties, Decimal, FieldTable, FieldValue};
