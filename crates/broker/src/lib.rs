//! lockgate-broker: the broker model. Vhosts, exchanges and routing, queues, consumers with
//! prefetch credit, acknowledgements and redelivery, memory accounting. It uses
//! `lockgate-wire`'s message model (field tables, properties, content header) and never sees
//! a frame, a method or a socket: the server translates AMQP methods into calls here.
//!
//! Layout, one concept per file:
//!
//! | file | concept |
//! |---|---|
//! | `broker.rs` | [`Broker`], [`BrokerConfig`]: vhosts, memory alarm ([`Broker::memory_watch`]) |
//! | `vhost.rs` | [`VHost`]: declare/delete/bind exchanges and queues, [`VHost::publish_to`] |
//! | `exchange/` | [`Exchange`] handles and routing tables: direct, fanout, `topic.rs` (trie), `headers.rs` |
//! | `exchange/consistent_hash.rs` (+ `erlang_hash.rs`), `exchange/delayed.rs` | `x-consistent-hash` ring, hashed as RabbitMQ does; `x-delayed-message` held messages |
//! | `queue/` | [`Queue`]: ready list, round-robin push to consumers; `arguments.rs` typed `x-` args |
//! | `channel.rs` | [`Channel`]: consume, ack/nack/reject, get, qos, flow, recover, close |
//! | `consumer.rs` | a consumer and its prefetch credit |
//! | `unacked.rs` | a channel's unacked deliveries by tag |
//! | `sink.rs` | [`DeliverySink`], [`Delivery`]: how deliveries reach the connection writer |
//! | `message.rs` | [`Message`], shared as `Arc<Message>` |
//! | `memory.rs` | byte accounting and the high-watermark `watch` |
//! | `policy.rs` | [`Policy`]: queue settings by name pattern; `vhost/policies.rs` applies them |
//! | `stats.rs` | queue counters and snapshots for management and metrics (`vhost/introspect.rs` reads them) |
//! | `durable.rs` | encoding of stored definitions and message headers |
//! | `recovery.rs` | [`Broker::recover`]: rebuilding from the store at startup |
//! | `spill.rs` | [`Broker::spawn_spill_task`]: moving long backlogs to disk and back |
//! | `queue/spill.rs` | a queue's disk tail |
//! | `queue/dedup.rs` | `x-deduplication-window`: message ids a queue remembers |
//! | `reply_to.rs`, `channel/reply_to.rs` | direct reply-to (`amq.rabbitmq.reply-to`): reply consumers, delivery without a queue |
//! | `timer.rs` | the one timer thread (`schedule`) and per-target `Deadlines` |
//! | `ids.rs` | id newtypes, generated names |
//! | `error.rs` | [`BrokerError`] with RabbitMQ's reply texts |
//!
//! Tests (`tests/`): routing per exchange type, declarations and their errors, consumers and
//! acknowledgements, a `VecDeque` model of a queue under random operations (proptest), and
//! threads publishing and consuming at once. Benchmarks (`benches/`, criterion): queue
//! operations and routing with many bindings.
//!
//! Locking: registries are `DashMap`s; each queue has one short `parking_lot` mutex, never
//! held across `.await`; a channel's delivery mutex may be taken inside a queue lock, never
//! the reverse; per-vhost topology changes share one mutex that publishing never takes.
//! Publishing routes on the caller's thread and allocates nothing but the `Arc<Message>`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker;
mod channel;
mod consumer;
mod durable;
mod error;
mod exchange;
mod ids;
mod memory;
mod message;
mod policy;
mod queue;
mod recovery;
mod reply_to;
mod sink;
mod spill;
mod stats;
mod timer;
mod unacked;
mod vhost;

pub use broker::{Broker, BrokerConfig};
pub use channel::Channel;
pub use error::BrokerError;
pub use exchange::sender_selected::check_encoded as check_sender_selected;
pub use exchange::{Exchange, ExchangeFlags, ExchangeKind};
pub use ids::{ChannelId, ConnectionId, ConsumerTag, DeliveryTag};
pub use memory::MemoryCharge;
pub use message::{parse_expiration, Message};
pub use policy::{ApplyTo, Policy, PolicyError};
pub use queue::arguments::{DedupWindow, Overflow, QueueArguments, TimeoutAction};
pub use queue::{GetOk, Queue};
pub use recovery::{RecoveryError, RecoverySummary};
pub use reply_to::{no_reply_consumer, ReplyConsumer, REPLY_TO_QUEUE};
pub use sink::{Delivery, DeliverySink, SinkClosed, SinkClosedAll};
pub use stats::{BindingSnapshot, ChannelSnapshot, ConsumerSnapshot, QueueSnapshot};
pub use vhost::{PublishOutcome, Published, QueueDeclareOk, QueueFlags, VHost};
