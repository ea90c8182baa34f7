//! One AMQP channel: assembles published content, turns methods into broker calls, and keeps
//! the channel's modes (publisher confirms, transactions).
//!
//! Runs on the connection's reader task; every handler is synchronous (the broker's queue locks
//! are short and never held across an await). A handler's `Err` is a protocol error that the
//! connection turns into channel.close (soft) or connection.close (hard).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use lockgate_broker::{
    BrokerError, ChannelId, ConnectionId, ConsumerTag, DeliveryTag, Exchange, ExchangeFlags,
    ExchangeKind, Message, PublishOutcome, Published, Queue, QueueFlags, VHost,
};
use lockgate_store::{Commit, Store};
use lockgate_wire::{
    access, basic, channel as ch, confirm, exchange, queue, reply_code, tx, ContentHeader,
    HeaderRef, Method, PublishHead, BASIC_CLASS_ID,
};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, trace};

mod content;
mod reply_to;
mod sink;
#[cfg(test)]
mod tests;

use self::content::{Body, Content};
pub use self::sink::ChannelEvent;
use self::sink::ChannelSink;
use crate::connection::ClientCapabilities;
use crate::error::AmqpError;
use crate::metrics::{Counter, GlobalCounters};
use crate::permissions::Access;
use crate::writer::Outbound;

/// What a channel is created with.
pub struct ChannelInit {
    /// Channel number.
    pub number: u16,
    /// Owning connection (exclusive queues).
    pub connection: ConnectionId,
    /// The connection's vhost.
    pub vhost: Arc<VHost>,
    /// The connection writer's queue.
    pub out: UnboundedSender<Outbound>,
    /// What the client supports.
    pub capabilities: ClientCapabilities,
    /// Largest accepted message body.
    pub max_message_size: u64,
    /// The authenticated user (checked against the user-id property).
    pub user: Arc<str>,
    /// The broker's store: confirms of persistent messages wait for its flushes.
    pub store: Option<Store>,
    /// The user's permissions in the vhost, checked before every method.
    pub access: Access,
    /// Global message counters (metrics).
    pub counters: Arc<GlobalCounters>,
    /// Where the broker's requests to the connection go (close on consumer timeout).
    pub events: UnboundedSender<ChannelEvent>,
    /// Identifies this opening of the channel number in those events.
    pub serial: u64,
}

/// Publisher confirms or transactions, mutually exclusive as in RabbitMQ.
enum Mode {
    Plain,
    Confirm {
        /// Sequence number of the next publish.
        next: u64,
        /// Lowest sequence number not confirmed yet.
        unconfirmed: u64,
        /// Publishes whose store commit was not known durable yet: (sequence number, commit
        /// ticket), both increasing. Nothing at or after the first of them is confirmed.
        waiting: VecDeque<(u64, u64)>,
        /// Publishes a queue refused (overflow reject-publish): nacked, not acked, in order.
        refused: VecDeque<u64>,
    },
    Tx(Box<TxBuffer>),
}

/// Publishes buffered by a transaction until tx.commit, each checked when it arrived (see
/// [`lockgate_broker::Channel::hold_publish`]). Its acks, nacks and rejects are held by the
/// broker's channel.
#[derive(Default)]
struct TxBuffer {
    publishes: Vec<TxPublish>,
}

/// A publish a transaction holds: the message, charged to the memory watermark, the
/// exchange it was checked against, and the queues it was routed to when it was published
/// (`None`: a delayed exchange takes it at commit).
struct TxPublish {
    mandatory: bool,
    exchange: Arc<Exchange>,
    message: Message,
    queues: Option<Vec<Arc<Queue>>>,
}

/// A buffered acknowledgement.
enum AckOp {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

/// One open channel.
pub struct Channel {
    number: u16,
    connection: ConnectionId,
    vhost: Arc<VHost>,
    out: UnboundedSender<Outbound>,
    broker: lockgate_broker::Channel,
    max_message_size: u64,
    user: Arc<str>,
    content: Content,
    mode: Mode,
    /// The exchange last published to: consecutive publishes skip the name lookup.
    exchange_cache: Option<Arc<Exchange>>,
    /// The routing key of the last publish to the default exchange and the queue it named:
    /// consecutive publishes to the same queue skip hashing its name. A publish to another
    /// queue reuses the key's buffer (no allocation per publish for a publisher that takes
    /// turns between queues).
    default_route: Option<(String, Arc<Queue>)>,
    store: Option<Store>,
    access: Access,
    counters: Arc<GlobalCounters>,
    /// A full queue (overflow `block`) the last publish reached: the connection stops
    /// reading until it has room.
    blocked: Option<Arc<Queue>>,
    /// The queue last declared on the channel, which an empty queue name means (see
    /// [`Channel::expand_shortcuts`]).
    last_queue: Option<String>,
    /// Its direct reply-to consumer (`amq.rabbitmq.reply-to`), if any (`reply_to.rs`).
    reply_consumer: Option<lockgate_broker::ReplyConsumer>,
}

/// Whether two names are the same, lengths first: most publishes name the default exchange
/// "", and a memcmp call per publish shows in profiles.
fn same_octets(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// RabbitMQ dropped basic.publish's `immediate` in 3.0 and refuses it the same way.
fn refuse_immediate(immediate: bool) -> Result<(), AmqpError> {
    if immediate {
        return Err(AmqpError::not_implemented("immediate=true"));
    }
    Ok(())
}

// The frame errors of content out of step, in RabbitMQ's words (rabbit_command_assembler).
// Those that break a publish's content name the basic.publish.

/// A content frame where a method frame was expected (no publish before it).
pub(crate) fn not_a_method() -> AmqpError {
    AmqpError::unexpected_frame("expected method frame, got non method frame instead")
}

/// Another frame where a basic.publish's content header was expected.
fn not_a_header() -> AmqpError {
    AmqpError::unexpected_frame(format!(
        "expected content header for class {BASIC_CLASS_ID}, got non content header frame \
         instead"
    ))
    .on(60, 40)
}

/// Another frame where more of a basic.publish's body was expected.
fn not_a_body() -> AmqpError {
    AmqpError::unexpected_frame("expected content body, got non content body frame instead")
        .on(60, 40)
}

/// Maps a broker error to a protocol error (the broker's text is RabbitMQ's).
fn broker_error(error: BrokerError) -> AmqpError {
    AmqpError::new(error.reply_code(), error.text())
}

/// What RabbitMQ refuses in the content header of a publish by `user` to `exchange`: a body
/// over `max_message_size`, a `user_id` other than the publisher's, a bad `expiration`, a
/// `delivery_mode` other than 1 or 2. The management API's publish goes through it too, as
/// RabbitMQ's goes through a channel (its `reply_to` is not checked: see
/// [`check_publish_content`]).
///
/// # Errors
/// 406 with RabbitMQ's text; when a property is refused and the exchange is missing or
/// internal, the exchange's 404 or 403.
pub(crate) fn check_content(
    vhost: &VHost,
    user: &str,
    max_message_size: u64,
    exchange: &str,
    header: HeaderRef<'_>,
) -> Result<(), AmqpError> {
    check_publish_content(vhost, user, max_message_size, exchange, header, true)
}

/// [`check_content`], and, before the other properties (RabbitMQ's
/// `rabbit_channel:maybe_set_fast_reply_to` runs after the exchange's checks and before
/// theirs), a `reply_to` asking for a direct reply on a channel without a `reply_consumer`.
fn check_publish_content(
    vhost: &VHost,
    user: &str,
    max_message_size: u64,
    exchange: &str,
    header: HeaderRef<'_>,
    reply_consumer: bool,
) -> Result<(), AmqpError> {
    if header.body_size > max_message_size {
        // As RabbitMQ (rabbit_channel:check_msg_size); a channel checks at the header, before
        // buffering the body. The body frames that follow are ignored once it is closing.
        return Err(AmqpError::precondition_failed(format!(
            "message size {} is larger than configured max size {max_message_size}",
            header.body_size
        )));
    }
    let view = header.view();
    let refused =
        if !reply_consumer && view.reply_to() == Some(lockgate_broker::REPLY_TO_QUEUE.as_bytes()) {
            broker_error(lockgate_broker::no_reply_consumer())
        } else if let Some(user_id) = view.user_id().filter(|u| **u != *user) {
            // As RabbitMQ (rabbit_channel:check_user_id_header): no impersonation.
            AmqpError::precondition_failed(format!(
                "user_id property set to '{user_id}' but authenticated user was '{user}'"
            ))
        } else if let Some((expiration, why)) = view.expiration().and_then(|expiration| {
            // As RabbitMQ (rabbit_channel:check_expiration_header).
            lockgate_broker::parse_expiration(&expiration)
                .err()
                .map(|why| (expiration, why))
        }) {
            AmqpError::precondition_failed(format!("invalid expiration '{expiration}': {why}"))
        } else if let Some(mode) = view.delivery_mode().filter(|m| !matches!(m, 1 | 2)) {
            // As RabbitMQ (rabbit_basic:message): a `CC` or `BCC` header that is not an array
            // is reported before the mode. The broker checks those headers at publish, but
            // this publish ends here.
            match lockgate_broker::check_sender_selected(header.raw) {
                Err(e) => broker_error(e),
                Ok(()) => AmqpError::precondition_failed(format!(
                    "invalid message: {{delivery_mode_unknown,{mode}}}"
                )),
            }
        } else {
            return Ok(());
        };
    // RabbitMQ looks the exchange up before it reads the properties: a publish that fails
    // both gets the exchange's error.
    Err(match vhost.publishable_exchange(exchange) {
        Ok(_) => refused,
        Err(e) => broker_error(e),
    })
}

impl Channel {
    /// Opens the channel's broker side.
    pub fn new(init: ChannelInit) -> Self {
        let sink = Arc::new(ChannelSink {
            number: init.number,
            out: init.out.clone(),
            cancel_notify: init.capabilities.consumer_cancel_notify,
            counters: Arc::clone(&init.counters),
            events: init.events,
            serial: init.serial,
        });
        let broker = lockgate_broker::Channel::new(
            Arc::clone(&init.vhost),
            init.connection,
            ChannelId(init.number),
            sink,
        );
        Self {
            number: init.number,
            connection: init.connection,
            vhost: init.vhost,
            out: init.out,
            broker,
            max_message_size: init.max_message_size,
            user: init.user,
            content: Content::Idle,
            mode: Mode::Plain,
            exchange_cache: None,
            default_route: None,
            store: init.store,
            access: init.access,
            counters: init.counters,
            blocked: None,
            last_queue: None,
            reply_consumer: None,
        }
    }

    /// The full queue (overflow `block`) a publish just reached, if any: the connection
    /// stops reading from the client until [`Queue::room`] turns true.
    pub fn take_blocked(&mut self) -> Option<Arc<Queue>> {
        self.blocked.take()
    }

    /// Makes the writer wait for `commit` before it sends anything queued after this (the
    /// reply of a durable declaration, binding or deletion): the client hears "ok" only once
    /// the change is on disk. The reader does not wait.
    fn after_commit(&self, commit: Option<Commit>) {
        if let Some(commit) = commit {
            let _ = self.out.send(Outbound::AfterCommit(commit));
        }
    }

    /// A reply to a method that changed durable state: sent once the store flushed it.
    fn durable_reply(&self, nowait: bool, method: impl Into<Method>) {
        if !nowait {
            self.after_commit(self.vhost.sync());
            self.send(method);
        }
    }

    fn send(&self, method: impl Into<Method>) {
        let _ = self.out.send(Outbound::method(self.number, method));
    }

    /// Releases the broker side: consumers cancelled, unacked deliveries requeued.
    pub fn close(&mut self) {
        self.reply_consumer = None;
        self.broker.close();
    }

    /// See [`lockgate_broker::Channel::stop_deliveries`].
    pub fn stop_deliveries(&self) {
        self.broker.stop_deliveries();
    }

    /// Whether confirms are waiting for [`Channel::flush_confirms`].
    pub fn has_pending_confirms(&self) -> bool {
        matches!(self.mode, Mode::Confirm { next, unconfirmed, .. } if unconfirmed < next)
    }

    /// The oldest store commit ticket a confirm waits for, if any: the connection wakes when
    /// the store's flushes reach it and calls [`Channel::flush_confirms`] again.
    pub fn waiting_ticket(&self) -> Option<u64> {
        match &self.mode {
            Mode::Confirm { waiting, .. } => waiting.front().map(|&(_, ticket)| ticket),
            _ => None,
        }
    }

    /// Sends one basic.ack covering every publish that can be confirmed now (multiple when
    /// several): all publishes before the first whose store commit is not durable yet. One
    /// flush of the store typically releases a whole run of them at once.
    pub fn flush_confirms(&mut self) {
        let durable = self.store.as_ref().map_or(u64::MAX, Store::durable_ticket);
        if let Mode::Confirm {
            next,
            unconfirmed,
            waiting,
            refused,
        } = &mut self.mode
        {
            while waiting
                .front()
                .is_some_and(|&(_, ticket)| ticket <= durable)
            {
                waiting.pop_front();
            }
            let end = waiting.front().map_or(*next, |&(seq, _)| seq);
            while *unconfirmed < end {
                // Acks up to the next refused publish, which gets a nack of its own.
                let nack = refused.front().copied().filter(|&seq| seq < end);
                let stop = nack.unwrap_or(end);
                if *unconfirmed < stop {
                    self.counters.add(Counter::Confirmed, stop - *unconfirmed);
                    let last = stop - 1;
                    let multiple = last > *unconfirmed;
                    let _ = self.out.send(Outbound::method(
                        self.number,
                        basic::Ack {
                            delivery_tag: last,
                            multiple,
                        },
                    ));
                }
                *unconfirmed = stop;
                if let Some(seq) = nack {
                    refused.pop_front();
                    *unconfirmed = seq + 1;
                    let _ = self.out.send(Outbound::method(
                        self.number,
                        basic::Nack {
                            delivery_tag: seq,
                            multiple: false,
                            requeue: false,
                        },
                    ));
                }
            }
        }
    }

    /// The store failed: every unconfirmed publish is nacked, as RabbitMQ does on an
    /// internal error.
    pub fn nack_unconfirmed(&mut self) {
        if let Mode::Confirm {
            next,
            unconfirmed,
            waiting,
            refused,
        } = &mut self.mode
        {
            waiting.clear();
            refused.clear();
            if *unconfirmed < *next {
                let last = *next - 1;
                let multiple = last > *unconfirmed;
                *unconfirmed = *next;
                let _ = self.out.send(Outbound::method(
                    self.number,
                    basic::Nack {
                        delivery_tag: last,
                        multiple,
                        requeue: false,
                    },
                ));
            }
        }
    }

    /// A method frame for this channel (not channel.open/close, which the connection handles).
    ///
    /// # Errors
    /// The protocol error the method causes, with the method's class and method ids.
    pub fn on_method(&mut self, method: Method) -> Result<(), AmqpError> {
        let (class_id, method_id) = (method.class_id(), method.method_id());
        self.expect_method()?;
        self.dispatch(method).map_err(|e| e.on(class_id, method_id))
    }

    /// A basic.publish whose header and whole body came with it (the connection's fast
    /// path): the checks, errors and outcome of [`Channel::on_method`], [`Channel::on_header`]
    /// and [`Channel::on_body`] for those frames, without keeping the method in between.
    /// `received_at` is when the frames were read: the message's TTL starts there.
    ///
    /// # Errors
    /// As those three for the publish, its header and its body.
    pub fn on_publish_frames(
        &mut self,
        head: &PublishHead,
        body: Bytes,
        received_at: Instant,
    ) -> Result<(), AmqpError> {
        self.expect_method()?;
        trace!(method = basic::Publish::NAME, "method");
        // A publisher naming the exchange and the queue of its last publish again (the usual
        // case) gets the names from the caches below: no UTF-8 check of its octets.
        let exchange = match self.exchange_cache.as_deref() {
            Some(cached) if same_octets(cached.name().as_bytes(), head.exchange_octets()) => {
                Cow::Borrowed(cached.name())
            }
            _ => head.exchange(),
        };
        let routing_key = match &self.default_route {
            Some((key, _)) if same_octets(key.as_bytes(), head.routing_key_octets()) => {
                Cow::Borrowed(key.as_str())
            }
            _ => head.routing_key(),
        };
        self.access
            .check_publish(&exchange)
            .and_then(|()| refuse_immediate(head.immediate()))
            .map_err(|e| e.on(basic::Publish::CLASS_ID, basic::Publish::METHOD_ID))?;
        let header = head.header();
        self.check_header(&exchange, header)?;
        let message = Message::from_parts_at(&exchange, &routing_key, header, body, received_at);
        self.publish(head.mandatory(), message)
    }

    /// The error for a method frame where content was expected, if it was.
    fn expect_method(&self) -> Result<(), AmqpError> {
        match self.content {
            Content::Idle => Ok(()),
            // As RabbitMQ's rabbit_command_assembler: the error names the publish whose
            // content the frame broke.
            Content::Header(_) => Err(not_a_header()),
            Content::Body { .. } => Err(not_a_body()),
        }
    }

    /// A content header frame.
    ///
    /// # Errors
    /// 505 when no basic.publish precedes it or the class is wrong; 406 when the announced
    /// size is above max_message_size.
    pub fn on_header(&mut self, header: ContentHeader) -> Result<(), AmqpError> {
        let publish = match std::mem::replace(&mut self.content, Content::Idle) {
            Content::Header(publish) => publish,
            Content::Idle => return Err(not_a_method()),
            Content::Body { .. } => return Err(not_a_body()),
        };
        self.check_header(&publish.exchange, HeaderRef::from(&header))?;
        if header.body_size == 0 {
            let message = Message::from_parts(
                &publish.exchange,
                &publish.routing_key,
                &header,
                Bytes::new(),
            );
            return self.publish(publish.mandatory, message);
        }
        let remaining = header.body_size;
        self.content = Content::Body {
            publish,
            header,
            body: Body::Empty,
            remaining,
        };
        Ok(())
    }

    /// A header frame the decoder refused for its class (`Some`) or its weight (`None`): the
    /// error is what the channel expected, as in RabbitMQ's rabbit_command_assembler (a
    /// header with a non-zero weight is no content header to it).
    pub fn on_bad_header(&self, class_id: Option<u16>) -> AmqpError {
        match (&self.content, class_id) {
            (Content::Idle, _) => not_a_method(),
            (Content::Header(_), Some(class_id)) => AmqpError::unexpected_frame(format!(
                "expected content header for class {BASIC_CLASS_ID}, got one for class \
                 {class_id} instead"
            ))
            .on(60, 40),
            (Content::Header(_), None) => not_a_header(),
            (Content::Body { .. }, _) => not_a_body(),
        }
    }

    /// What a content header (of class basic: the decoder refuses others) is checked for
    /// once a basic.publish to `exchange` preceded it.
    fn check_header(&self, exchange: &str, header: HeaderRef<'_>) -> Result<(), AmqpError> {
        check_publish_content(
            &self.vhost,
            &self.user,
            self.max_message_size,
            exchange,
            header,
            self.reply_consumer.is_some(),
        )
        .map_err(|e| e.on(60, 40))
    }

    /// A content body frame.
    ///
    /// # Errors
    /// 505 when no header precedes it; 501 when it runs past the announced body size.
    pub fn on_body(&mut self, payload: Bytes) -> Result<(), AmqpError> {
        let Content::Body {
            publish,
            header,
            body,
            remaining,
        } = &mut self.content
        else {
            return Err(match self.content {
                Content::Header(_) => not_a_header(),
                _ => not_a_method(),
            });
        };
        let len = payload.len() as u64;
        if len > *remaining {
            // RabbitMQ's rabbit_command_assembler: a frame error on basic.publish.
            return Err(AmqpError::frame_error(
                "content body frame exceeds remaining content size",
            )
            .on(60, 40));
        }
        *remaining -= len;
        let body = match body {
            // A body in one frame, the usual case, is that frame.
            Body::Empty if *remaining == 0 => payload,
            body => {
                body.push(&payload, *remaining + len, &self.vhost);
                if *remaining > 0 {
                    return Ok(());
                }
                std::mem::replace(body, Body::Empty).into_bytes()
            }
        };
        // The message is built from the parts where they are (no move of the method and
        // header out of `content`), then `content` is emptied.
        let message = Message::from_parts(&publish.exchange, &publish.routing_key, header, body);
        let mandatory = publish.mandatory;
        self.content = Content::Idle;
        self.publish(mandatory, message)
    }

    fn publish(&mut self, mandatory: bool, mut message: Message) -> Result<(), AmqpError> {
        lockgate_broker::ReplyConsumer::set_reply_to(self.reply_consumer.as_ref(), &mut message)
            .map_err(|e| broker_error(e).on(60, 40))?;
        self.counters
            .published(matches!(self.mode, Mode::Confirm { .. }));
        if let Mode::Tx(buffer) = &mut self.mode {
            let exchange = self
                .broker
                .hold_publish(&mut message)
                .map_err(|e| broker_error(e).on(60, 40))?;
            let queues = self
                .vhost
                .route_held(&exchange, &mut message)
                .map_err(|e| broker_error(e).on(60, 40))?;
            buffer.publishes.push(TxPublish {
                mandatory,
                exchange,
                message,
                queues,
            });
            return Ok(());
        }
        let published = self.route(mandatory, message).map_err(|e| e.on(60, 40))?;
        if let Mode::Confirm {
            next,
            waiting,
            refused,
            ..
        } = &mut self.mode
        {
            if let Some(ticket) = published.commit.as_ref().and_then(Commit::ticket) {
                waiting.push_back((*next, ticket));
            }
            if published.refused {
                refused.push_back(*next);
            }
            *next += 1;
        }
        if published.blocked.is_some() {
            self.blocked = published.blocked;
        }
        Ok(())
    }

    /// The handle of the exchange `message` was published to, from the channel's cache when
    /// it is still live (else looked up and cached). Lent from the cache, as
    /// [`Channel::default_destination`] lends the queue: a clone of each handle per publish
    /// is two atomic updates of a count that other threads touch too, and showed in profiles.
    fn exchange<'c>(
        cache: &'c mut Option<Arc<Exchange>>,
        vhost: &VHost,
        message: &Message,
    ) -> Option<&'c Arc<Exchange>> {
        // Octets: a UTF-8 check per publish shows in profiles.
        let live = cache.as_deref().is_some_and(|cached| {
            same_octets(cached.name().as_bytes(), message.exchange_bytes()) && !cached.is_deleted()
        });
        if !live {
            *cache = Some(vhost.exchange(message.exchange())?);
        }
        cache.as_ref()
    }

    /// For a publish to the default exchange, the queue its routing key names, from the
    /// channel's cache while that queue lives (a queue deleted and declared again under the
    /// same name is looked up anew). `None` for other exchanges and when no such queue
    /// exists (the exchange's routing then handles it, mandatory returns included).
    fn default_destination<'c>(
        cache: &'c mut Option<(String, Arc<Queue>)>,
        vhost: &VHost,
        exchange: &Exchange,
        message: &Message,
    ) -> Option<&'c Arc<Queue>> {
        if !exchange.name().is_empty() {
            return None;
        }
        let live = cache.as_ref().is_some_and(|(cached_key, queue)| {
            same_octets(cached_key.as_bytes(), message.routing_key_bytes()) && !queue.is_deleted()
        });
        if !live {
            // Found by the key's octets, the queue's name is the key.
            let queue = vhost.queue_by_octets(message.routing_key_bytes())?;
            match cache {
                Some((cached_key, cached_queue)) => {
                    cached_key.clear();
                    cached_key.push_str(queue.name());
                    *cached_queue = queue;
                }
                None => *cache = Some((queue.name().to_owned(), queue)),
            }
        }
        cache.as_ref().map(|(_, queue)| queue)
    }

    /// Routes one message; an unroutable mandatory message comes back as basic.return.
    /// Returns what the publish did: the store commit of a persistent message that reached a
    /// durable queue, a refusal by a length limit, a full queue that blocks the publisher.
    fn route(&mut self, mandatory: bool, message: Message) -> Result<Published, AmqpError> {
        let vhost = &*self.vhost;
        let mut published = match Self::exchange(&mut self.exchange_cache, vhost, &message) {
            Some(exchange) => {
                match Self::default_destination(&mut self.default_route, vhost, exchange, &message)
                {
                    Some(queue) => vhost.publish_to_queue_checked(queue, message),
                    None => vhost.publish_checked(exchange, mandatory, message),
                }
            }
            // Missing: the by-name path produces RabbitMQ's NOT_FOUND text.
            None => vhost.publish(mandatory, message).map(|outcome| Published {
                outcome,
                commit: None,
                refused: false,
                blocked: None,
            }),
        }
        .map_err(broker_error)?;
        self.routed(&mut published);
        Ok(published)
    }

    /// Counts where a publish went, and sends an unroutable mandatory message back as
    /// basic.return.
    fn routed(&self, published: &mut Published) {
        let outcome = std::mem::replace(&mut published.outcome, PublishOutcome::Dropped);
        self.counters.routed(&outcome);
        if let PublishOutcome::Unroutable(message) = outcome {
            trace!(exchange = %message.exchange(), routing_key = %message.routing_key(), "returned");
            let mut message = *message;
            // Charged until the writer drops it, like a delivery: returns piling up for a
            // client that does not read raise the memory alarm, which blocks its publishes.
            self.broker.charge(&mut message);
            let message = Arc::new(message);
            let _ = self.out.send(Outbound::Content {
                channel: self.number,
                method: Box::new(Method::BasicReturn(basic::Return {
                    reply_code: reply_code::NO_ROUTE,
                    reply_text: "NO_ROUTE".to_owned(),
                    exchange: message.exchange().to_owned(),
                    routing_key: message.routing_key().to_owned(),
                })),
                message,
            });
        }
    }

    /// RabbitMQ's shortcuts (rabbit_channel `expand_queue_name_shortcut`,
    /// `expand_routing_key_shortcut`), from the spec's queue-name domain: an empty queue name
    /// in these methods means the queue last declared on the channel, and queue.bind/unbind
    /// with an empty routing key as well take its name as the routing key. Expanded before the
    /// permission check, which then sees the queue actually used.
    fn expand_shortcuts(&self, method: &mut Method) -> Result<(), AmqpError> {
        let (queue, routing_key) = match method {
            Method::QueueBind(m) => (&mut m.queue, Some(&mut m.routing_key)),
            Method::QueueUnbind(m) => (&mut m.queue, Some(&mut m.routing_key)),
            Method::QueuePurge(m) => (&mut m.queue, None),
            Method::QueueDelete(m) => (&mut m.queue, None),
            Method::BasicGet(m) => (&mut m.queue, None),
            Method::BasicConsume(m) => (&mut m.queue, None),
            _ => return Ok(()),
        };
        if !queue.is_empty() {
            return Ok(());
        }
        let last = self.last_queue.as_ref().ok_or_else(|| {
            AmqpError::new(
                reply_code::NOT_FOUND,
                "NOT_FOUND - no previously declared queue",
            )
        })?;
        queue.clone_from(last);
        if let Some(key) = routing_key.filter(|key| key.is_empty()) {
            key.clone_from(last);
        }
        Ok(())
    }

    fn dispatch(&mut self, mut method: Method) -> Result<(), AmqpError> {
        trace!(method = method.name(), "method");
        self.expand_shortcuts(&mut method)?;
        self.access.check_method(&method, &self.vhost)?;
        match method {
            Method::BasicPublish(m) => self.on_basic_publish(m),
            Method::BasicAck(m) => self.on_ack(AckOp::Ack {
                tag: m.delivery_tag,
                multiple: m.multiple,
            }),
            Method::BasicNack(m) => self.on_ack(AckOp::Nack {
                tag: m.delivery_tag,
                multiple: m.multiple,
                requeue: m.requeue,
            }),
            Method::BasicReject(m) => self.on_ack(AckOp::Nack {
                tag: m.delivery_tag,
                multiple: false,
                requeue: m.requeue,
            }),
            Method::BasicQos(m) => self.on_basic_qos(&m),
            Method::BasicConsume(m) => self.on_basic_consume(m),
            Method::BasicCancel(m) => self.on_basic_cancel(&m),
            Method::BasicGet(m) => self.on_basic_get(&m),
            Method::BasicRecover(m) => {
                self.broker.recover(m.requeue).map_err(broker_error)?;
                self.send(basic::RecoverOk {});
                Ok(())
            }
            Method::BasicRecoverAsync(m) => self.broker.recover(m.requeue).map_err(broker_error),
            Method::ChannelFlow(m) => {
                self.broker.flow(m.active);
                self.send(ch::FlowOk { active: m.active });
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::AccessRequest(_) => {
                self.send(access::RequestOk {});
                Ok(())
            }
            Method::ExchangeDeclare(m) => self.on_exchange_declare(m),
            Method::ExchangeDelete(m) => {
                self.vhost
                    .delete_exchange(&m.exchange, m.if_unused)
                    .map_err(broker_error)?;
                self.durable_reply(m.nowait, exchange::DeleteOk {});
                Ok(())
            }
            Method::ExchangeBind(m) => {
                self.vhost
                    .bind_exchange(&m.destination, &m.source, &m.routing_key, m.arguments)
                    .map_err(broker_error)?;
                self.durable_reply(m.nowait, exchange::BindOk {});
                Ok(())
            }
            Method::ExchangeUnbind(m) => {
                self.vhost
                    .unbind_exchange(&m.destination, &m.source, &m.routing_key, &m.arguments)
                    .map_err(broker_error)?;
                self.durable_reply(m.nowait, exchange::UnbindOk {});
                Ok(())
            }
            Method::QueueDeclare(m) => self.on_queue_declare(m),
            Method::QueueBind(m) => {
                self.vhost
                    .bind_queue(
                        self.connection,
                        &m.queue,
                        &m.exchange,
                        &m.routing_key,
                        m.arguments,
                    )
                    .map_err(broker_error)?;
                self.durable_reply(m.nowait, queue::BindOk {});
                Ok(())
            }
            Method::QueueUnbind(m) => {
                self.vhost
                    .unbind_queue(
                        self.connection,
                        &m.queue,
                        &m.exchange,
                        &m.routing_key,
                        &m.arguments,
                    )
                    .map_err(broker_error)?;
                self.durable_reply(false, queue::UnbindOk {});
                Ok(())
            }
            Method::QueuePurge(m) => {
                let message_count = self
                    .vhost
                    .purge_queue(self.connection, &m.queue)
                    .map_err(broker_error)?;
                self.reply(m.nowait, queue::PurgeOk { message_count });
                Ok(())
            }
            Method::QueueDelete(m) => {
                let message_count = self
                    .vhost
                    .delete_queue(self.connection, &m.queue, m.if_unused, m.if_empty)
                    .map_err(broker_error)?;
                self.durable_reply(m.nowait, queue::DeleteOk { message_count });
                Ok(())
            }
            Method::ConfirmSelect(m) => self.on_confirm_select(m.nowait),
            Method::TxSelect(_) => self.on_tx_select(),
            Method::TxCommit(_) => self.on_tx_commit(),
            Method::TxRollback(_) => self.on_tx_rollback(),
            other => Err(AmqpError::command_invalid(format!(
                "unexpected method {} from the client on a channel",
                other.name()
            ))),
        }
    }

    fn reply(&self, nowait: bool, method: impl Into<Method>) {
        if !nowait {
            self.send(method);
        }
    }

    fn on_basic_publish(&mut self, publish: basic::Publish) -> Result<(), AmqpError> {
        refuse_immediate(publish.immediate)?;
        self.content = Content::Header(publish);
        Ok(())
    }

    fn on_ack(&mut self, op: AckOp) -> Result<(), AmqpError> {
        let tx = matches!(self.mode, Mode::Tx(_));
        match op {
            AckOp::Ack { tag, multiple } if tx => self.broker.hold_ack(DeliveryTag(tag), multiple),
            AckOp::Ack { tag, multiple } => self
                .broker
                .ack(DeliveryTag(tag), multiple)
                .map(|acked| self.count_acked(acked)),
            AckOp::Nack {
                tag,
                multiple,
                requeue,
            } if tx => self.broker.hold_nack(DeliveryTag(tag), multiple, requeue),
            AckOp::Nack {
                tag,
                multiple,
                requeue,
            } => self.broker.nack(DeliveryTag(tag), multiple, requeue),
        }
        .map_err(broker_error)
    }

    fn count_acked(&self, acked: usize) {
        self.counters.add(
            Counter::Acknowledged,
            u64::try_from(acked).unwrap_or(u64::MAX),
        );
    }

    fn on_basic_qos(&mut self, qos: &basic::Qos) -> Result<(), AmqpError> {
        if qos.prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!(
                "prefetch_size!=0 ({})",
                qos.prefetch_size
            )));
        }
        self.broker.qos(qos.prefetch_count, qos.global);
        self.send(basic::QosOk {});
        Ok(())
    }

    fn on_basic_consume(&mut self, consume: basic::Consume) -> Result<(), AmqpError> {
        if consume.queue == lockgate_broker::REPLY_TO_QUEUE {
            return self.on_reply_to_consume(&consume);
        }
        let out = self.out.clone();
        let number = self.number;
        let nowait = consume.nowait;
        self.broker
            .consume(
                &consume.queue,
                &consume.consumer_tag,
                consume.no_ack,
                consume.exclusive,
                &consume.arguments,
                move |tag: &ConsumerTag| {
                    if !nowait {
                        let _ = out.send(Outbound::method(
                            number,
                            basic::ConsumeOk {
                                consumer_tag: tag.to_string(),
                            },
                        ));
                    }
                },
            )
            .map_err(broker_error)?;
        Ok(())
    }

    fn on_basic_cancel(&mut self, cancel: &basic::Cancel) -> Result<(), AmqpError> {
        if self.on_reply_to_cancel(cancel) {
            return Ok(());
        }
        self.broker.cancel(cancel.consumer_tag.as_str());
        self.reply(
            cancel.nowait,
            basic::CancelOk {
                consumer_tag: cancel.consumer_tag.clone(),
            },
        );
        Ok(())
    }

    fn on_basic_get(&mut self, get: &basic::Get) -> Result<(), AmqpError> {
        // The get-ok went to the writer from the broker's sink, under the lock that assigned
        // its tag (see `ChannelSink::get_ok`).
        let got = self
            .broker
            .get(&get.queue, get.no_ack)
            .map_err(broker_error)?;
        self.counters
            .got(got.as_ref().map(|g| g.redelivered), get.no_ack);
        if got.is_none() {
            self.send(basic::GetEmpty {
                cluster_id: String::new(),
            });
        }
        Ok(())
    }

    fn on_exchange_declare(&mut self, declare: exchange::Declare) -> Result<(), AmqpError> {
        // RabbitMQ checks the type first and treats an unknown one as a connection error
        // (rabbit_exchange:check_type, 503 COMMAND_INVALID).
        if !declare.passive && ExchangeKind::parse(&declare.kind).is_err() {
            return Err(AmqpError::command_invalid(format!(
                "unknown exchange type '{}'",
                declare.kind
            )));
        }
        self.vhost
            .declare_exchange(
                &declare.exchange,
                &declare.kind,
                ExchangeFlags {
                    passive: declare.passive,
                    durable: declare.durable,
                    auto_delete: declare.auto_delete,
                    internal: declare.internal,
                },
                declare.arguments,
            )
            .map_err(broker_error)?;
        if declare.durable && !declare.passive {
            self.durable_reply(declare.nowait, exchange::DeclareOk {});
        } else {
            self.reply(declare.nowait, exchange::DeclareOk {});
        }
        Ok(())
    }

    fn on_queue_declare(&mut self, declare: queue::Declare) -> Result<(), AmqpError> {
        if let Some(reply) = self.on_reply_to_declare(&declare) {
            return reply;
        }
        let ok = self
            .vhost
            .declare_queue(
                self.connection,
                &declare.queue,
                QueueFlags {
                    passive: declare.passive,
                    durable: declare.durable,
                    exclusive: declare.exclusive,
                    auto_delete: declare.auto_delete,
                },
                declare.arguments,
            )
            .map_err(broker_error)?;
        self.access.queue_declared(&self.vhost, &ok.queue);
        self.last_queue = Some(ok.queue.clone());
        let reply = queue::DeclareOk {
            queue: ok.queue,
            message_count: ok.message_count,
            consumer_count: ok.consumer_count,
        };
        if declare.durable && !declare.exclusive && !declare.passive {
            self.durable_reply(declare.nowait, reply);
        } else {
            self.reply(declare.nowait, reply);
        }
        Ok(())
    }

    fn on_confirm_select(&mut self, nowait: bool) -> Result<(), AmqpError> {
        match self.mode {
            Mode::Tx(_) => {
                return Err(AmqpError::precondition_failed(
                    "cannot switch from tx to confirm mode",
                ))
            }
            Mode::Plain => {
                self.mode = Mode::Confirm {
                    next: 1,
                    unconfirmed: 1,
                    waiting: VecDeque::new(),
                    refused: VecDeque::new(),
                };
                debug!("publisher confirms on");
            }
            Mode::Confirm { .. } => {}
        }
        self.reply(nowait, confirm::SelectOk {});
        Ok(())
    }

    fn on_tx_select(&mut self) -> Result<(), AmqpError> {
        match self.mode {
            Mode::Confirm { .. } => {
                return Err(AmqpError::precondition_failed(
                    "cannot switch from confirm to tx mode",
                ))
            }
            Mode::Plain => self.mode = Mode::Tx(Box::default()),
            Mode::Tx(_) => {}
        }
        self.send(tx::SelectOk {});
        Ok(())
    }

    fn on_tx_commit(&mut self) -> Result<(), AmqpError> {
        let Mode::Tx(buffer) = &mut self.mode else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        // Everything was checked when it arrived: nothing here fails halfway.
        let TxBuffer { publishes } = std::mem::take(buffer.as_mut());
        let mut stored = None;
        for publish in publishes {
            let mut published = self.commit_publish(publish);
            self.routed(&mut published);
            stored = published.commit.or(stored);
            if published.blocked.is_some() {
                self.blocked = published.blocked;
            }
        }
        let acked = self.broker.commit_held();
        self.count_acked(acked);
        // Commit tickets grow in submission order: the last one covers the transaction.
        self.after_commit(stored);
        self.send(tx::CommitOk {});
        Ok(())
    }

    /// Enqueues a publish a transaction held on the queues it was routed to at basic.publish.
    /// A delayed exchange takes its message now, or drops it when it was deleted since, as a
    /// publish that raced the deletion would be.
    fn commit_publish(&self, publish: TxPublish) -> Published {
        let TxPublish {
            mandatory,
            exchange,
            message,
            queues,
        } = publish;
        if let Some(queues) = queues {
            return self
                .vhost
                .publish_held(&exchange, mandatory, message, queues);
        }
        let dropped = || Published {
            outcome: PublishOutcome::Dropped,
            commit: None,
            refused: false,
            blocked: None,
        };
        if exchange.is_deleted() {
            let mut published = dropped();
            if mandatory {
                published.outcome = PublishOutcome::Unroutable(Box::new(message));
            }
            return published;
        }
        self.vhost
            .publish_checked(&exchange, mandatory, message)
            .unwrap_or_else(|e| {
                // Deleted after the check above (`internal` never changes): the message went
                // with the exchange.
                debug!(
                    error = e.text(),
                    "a transaction's publish met its exchange deleted"
                );
                dropped()
            })
    }

    fn on_tx_rollback(&mut self) -> Result<(), AmqpError> {
        let Mode::Tx(buffer) = &mut self.mode else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        **buffer = TxBuffer::default();
        self.broker.rollback_held();
        self.send(tx::RollbackOk {});
        Ok(())
    }
}
