//! Direct reply-to, as RabbitMQ 3.10 has it (<https://www.rabbitmq.com/direct-reply-to.html>).
//!
//! An RPC client consumes (no-ack) from the pseudo-queue [`REPLY_TO_QUEUE`] and publishes its
//! requests with `reply_to = "amq.rabbitmq.reply-to"`; the channel rewrites that to the
//! channel's own address, `amq.rabbitmq.reply-to.<suffix>`. A reply published to the default
//! exchange with that address as its routing key goes straight to the channel, from any
//! connection: no queue, no acknowledgement, delivered with the channel's next delivery tag.
//! When the consumer is gone (cancelled, channel or connection closed) the reply is dropped,
//! or returned when mandatory.
//!
//! Each vhost keeps its reply consumers by suffix ([`ReplyConsumers`]); the suffix is the
//! channel's connection and number and 128 random bits, so an address cannot be guessed and
//! one from an earlier consumer on the same channel number reaches nobody. An entry holds the
//! channel weakly and is removed when the channel's [`ReplyConsumer`] is dropped, so a channel
//! that goes away never leaks one. Ordinary publishes pay nothing: the registry is only asked
//! when the default exchange found no queue for the routing key, and the `reply_to` rewrite
//! reads one flag bit of the encoded properties.

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use lockgate_wire::BasicProperties;

use crate::channel::ChannelShared;
use crate::error::{BrokerError, Resource};
use crate::exchange::Exchange;
use crate::ids::ConsumerTag;
use crate::memory::MemoryMonitor;
use crate::message::Message;
use crate::vhost::{PublishOutcome, Published, VHost};

/// The pseudo-queue a reply consumer consumes from, and the `reply_to` value a publish on its
/// channel has rewritten to the channel's address.
pub const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// What every reply address starts with; the rest is the suffix.
const ADDRESS_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The `reply-to` bit of the first property flag word (AMQP 0-9-1 basic class: content-type
/// is bit 15, then content-encoding, headers, delivery-mode, priority, correlation-id,
/// reply-to).
const REPLY_TO_FLAG: u16 = 1 << 9;

/// A vhost's reply consumers by address suffix.
#[derive(Default)]
pub(crate) struct ReplyConsumers {
    by_suffix: DashMap<Box<str>, Entry>,
}

/// Where a reply goes.
struct Entry {
    channel: Weak<ChannelShared>,
    consumer_tag: ConsumerTag,
}

/// RabbitMQ's refusal of a publish that asks for a direct reply ([`REPLY_TO_QUEUE`]) on a
/// channel without a reply consumer.
#[must_use]
pub fn no_reply_consumer() -> BrokerError {
    BrokerError::precondition_failed("fast reply consumer does not exist")
}

impl ReplyConsumers {
    pub(crate) fn insert(&self, suffix: &str, channel: Weak<ChannelShared>, tag: ConsumerTag) {
        let entry = Entry {
            channel,
            consumer_tag: tag,
        };
        self.by_suffix.insert(suffix.into(), entry);
    }

    /// The live channel and consumer tag of the reply consumer at `address`, if any.
    fn find(&self, address: &str) -> Option<(Arc<ChannelShared>, ConsumerTag)> {
        let suffix = address.strip_prefix(ADDRESS_PREFIX)?;
        let entry = self.by_suffix.get(suffix)?;
        let channel = entry.channel.upgrade().filter(|c| !c.is_closed())?;
        Some((channel, entry.consumer_tag.clone()))
    }

    /// Hands `message`, published to `exchange` and routed to no queue, to the reply consumer
    /// its routing key names. Only the default exchange has reply addresses (RabbitMQ's
    /// `virtual_reply_queue`).
    ///
    /// # Errors
    /// The message back when it is no reply, or its consumer is gone: it is unroutable.
    pub(crate) fn deliver(
        &self,
        exchange: &Exchange,
        mut message: Message,
        memory: &Arc<MemoryMonitor>,
    ) -> Result<Published, Message> {
        // Octets first: the miss path of every default-exchange publish passes here.
        if !exchange.name().is_empty()
            || !message
                .routing_key_bytes()
                .starts_with(ADDRESS_PREFIX.as_bytes())
        {
            return Err(message);
        }
        let Some((channel, tag)) = self.find(message.routing_key()) else {
            return Err(message);
        };
        message.charge_to(memory);
        channel.deliver_reply(&tag, Arc::new(message))?;
        Ok(Published {
            outcome: PublishOutcome::Routed(1),
            commit: None,
            refused: false,
            blocked: None,
        })
    }
}

/// A channel's registration as the reply consumer of its vhost: its address lives as long as
/// this does. Made by [`crate::Channel::consume_reply_to`].
pub struct ReplyConsumer {
    vhost: Arc<VHost>,
    tag: ConsumerTag,
    /// `amq.rabbitmq.reply-to.<suffix>`.
    address: String,
}

impl std::fmt::Debug for ReplyConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyConsumer")
            .field("tag", &self.tag)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ReplyConsumer {
    pub(crate) fn new(vhost: Arc<VHost>, tag: ConsumerTag, suffix: &str) -> Self {
        Self {
            vhost,
            tag,
            address: format!("{ADDRESS_PREFIX}{suffix}"),
        }
    }

    /// Its consumer tag.
    pub fn tag(&self) -> &ConsumerTag {
        &self.tag
    }

    /// The address replies go to: what `reply_to` is rewritten to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A publish whose `reply_to` is [`REPLY_TO_QUEUE`] gets the channel's address instead,
    /// as RabbitMQ does; other messages are left alone, after a look at one flag bit.
    ///
    /// # Errors
    /// `PreconditionFailed` "fast reply consumer does not exist" (RabbitMQ's text) when the
    /// channel has no reply consumer; a reply address too long to encode is refused the same
    /// way.
    #[inline]
    pub fn set_reply_to(
        consumer: Option<&ReplyConsumer>,
        message: &mut Message,
    ) -> Result<(), BrokerError> {
        let flags = match message.header_raw() {
            [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
            _ => return Ok(()),
        };
        if flags & REPLY_TO_FLAG == 0 {
            return Ok(());
        }
        Self::rewrite(consumer, message)
    }

    #[cold]
    fn rewrite(consumer: Option<&ReplyConsumer>, message: &mut Message) -> Result<(), BrokerError> {
        let mut properties: BasicProperties = message.properties();
        if properties.reply_to.as_deref() != Some(REPLY_TO_QUEUE) {
            return Ok(());
        }
        let consumer = consumer.ok_or_else(no_reply_consumer)?;
        properties.reply_to = Some(consumer.address.clone());
        message
            .set_properties(&properties)
            .map_err(|_| no_reply_consumer())
    }

    /// `queue.declare` of `name`, when it is the pseudo-queue or a reply address: RabbitMQ
    /// treats every such declaration as passive. `None` for other names. The pseudo-queue
    /// always exists; an address exists while its consumer does (it has one consumer, and no
    /// messages).
    ///
    /// # Errors
    /// (Inside the `Some`) `NotFound` "no queue '<name>' in vhost '<vhost>'" for an address
    /// with no live consumer, or another name that merely starts like the pseudo-queue.
    pub fn declare(vhost: &VHost, name: &str) -> Option<Result<(), BrokerError>> {
        if !name.starts_with(REPLY_TO_QUEUE) {
            return None;
        }
        if name == REPLY_TO_QUEUE || vhost.reply_to.find(name).is_some() {
            return Some(Ok(()));
        }
        Some(Err(BrokerError::not_found(Resource::queue(
            name,
            vhost.name(),
        ))))
    }
}

impl Drop for ReplyConsumer {
    fn drop(&mut self) {
        if let Some(suffix) = self.address.strip_prefix(ADDRESS_PREFIX) {
            self.vhost.reply_to.by_suffix.remove(suffix);
        }
    }
}
