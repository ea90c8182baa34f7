//! Messages coming from the broker: deliveries (with their acknowledgement
//! methods), `basic.get` results, returned messages, and the streams they
//! arrive on.

use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::Stream;
use lockgate_wire::{basic, BasicProperties, ContentHeader, Method};
use tokio::sync::mpsc;
use tracing::debug;

use crate::channel::Channel;
use crate::channel_inner::ChannelHolder;
use crate::error::Result;
use crate::inbox::DeliveryReceiver;

/// What a delivery needs to acknowledge itself: its channel, which it keeps
/// open.
#[derive(Clone)]
pub(crate) struct Acker {
    pub(crate) holder: Arc<ChannelHolder>,
    /// The session the delivery came on; its tag is void on any other.
    pub(crate) epoch: u64,
}

/// A message delivered to a consumer (or fetched with `basic.get`).
///
/// Unless the consumer uses `no_ack`, settle it with exactly one of
/// [`ack`](Delivery::ack), [`nack`](Delivery::nack) or
/// [`reject`](Delivery::reject) (or a `multiple` variant on a later delivery).
/// After automatic recovery, settling a delivery from before the reconnection
/// is a no-op: the broker has already requeued it. A delivery keeps its channel
/// open, like a [`Channel`] handle.
///
/// The names are shared (`Arc<str>`): a consumer's deliveries share its tag,
/// and those that repeat the previous one's exchange and routing key share
/// them too, so a delivery allocates none of them.
pub struct Delivery {
    /// Tag of the consumer it was delivered to (empty for `basic.get`).
    pub consumer_tag: Arc<str>,
    /// Channel-scoped delivery tag, used to acknowledge it.
    pub delivery_tag: u64,
    /// Whether it was delivered before and not acknowledged.
    pub redelivered: bool,
    /// Exchange it was published to (empty for the default exchange).
    pub exchange: Arc<str>,
    /// Routing key it was published with.
    pub routing_key: Arc<str>,
    /// Its properties (content type, headers, reply-to, correlation id, ...):
    /// read them as a [`BasicProperties`] (`delivery.properties.reply_to`).
    pub properties: Properties,
    /// Its body.
    pub body: Bytes,
    pub(crate) acker: Acker,
}

/// A received message's properties, as a [`BasicProperties`] (it
/// dereferences to one), together with their encoded form.
///
/// They are kept as received and decoded on first use: a delivery moves
/// from the reader to the consumer's stream and into the application by
/// value, so it holds the encoded properties (a slice of the read buffer)
/// and, once decoded, a box, rather than a few hundred octets of inline
/// properties that would be copied at every step.
///
/// Two `Properties` are equal when their decoded properties are: the
/// header's body size and the encoding are not part of them.
#[derive(Clone)]
pub struct Properties {
    header: ContentHeader,
}

impl Properties {
    pub(crate) fn new(header: ContentHeader) -> Self {
        Self { header }
    }

    /// The properties as the broker encoded them (property flags and list).
    pub fn raw(&self) -> &[u8] {
        &self.header.raw
    }

    /// The decoded properties, by value.
    pub fn into_inner(self) -> BasicProperties {
        self.header.into_properties()
    }
}

impl Deref for Properties {
    type Target = BasicProperties;

    fn deref(&self) -> &BasicProperties {
        self.header.properties()
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.header.properties() == other.header.properties()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.header.properties(), f)
    }
}

impl From<Properties> for BasicProperties {
    fn from(properties: Properties) -> Self {
        properties.into_inner()
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("consumer_tag", &self.consumer_tag)
            .field("delivery_tag", &self.delivery_tag)
            .field("redelivered", &self.redelivered)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("properties", &self.properties)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Delivery {
    async fn settle(&self, method: Method) -> Result<()> {
        self.acker
            .holder
            .channel
            .send(method, Some(self.acker.epoch))
            .await
    }

    /// Acknowledges this delivery (`basic.ack`).
    ///
    /// # Errors
    ///
    /// The channel's error if it is closed ([`Error::Disconnected`](crate::Error::Disconnected)
    /// while recovering).
    pub async fn ack(&self) -> Result<()> {
        self.settle(Method::BasicAck(basic::Ack {
            delivery_tag: self.delivery_tag,
            multiple: false,
        }))
        .await
    }

    /// Acknowledges this delivery and every earlier unacknowledged one on the channel.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub async fn ack_multiple(&self) -> Result<()> {
        self.settle(Method::BasicAck(basic::Ack {
            delivery_tag: self.delivery_tag,
            multiple: true,
        }))
        .await
    }

    /// Rejects this delivery (`basic.nack`); with `requeue` the broker
    /// delivers it again (marked redelivered), otherwise drops or
    /// dead-letters it.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub async fn nack(&self, requeue: bool) -> Result<()> {
        self.settle(Method::BasicNack(basic::Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
        }))
        .await
    }

    /// Rejects this delivery and every earlier unacknowledged one on the channel.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub async fn nack_multiple(&self, requeue: bool) -> Result<()> {
        self.settle(Method::BasicNack(basic::Nack {
            delivery_tag: self.delivery_tag,
            multiple: true,
            requeue,
        }))
        .await
    }

    /// Gives back a delivery the application never saw (its consumer's stream
    /// was dropped). Nothing to do when the channel is closed: the broker has
    /// requeued it then.
    pub(crate) fn requeue_unseen(&self) {
        let reject = Method::BasicReject(basic::Reject {
            delivery_tag: self.delivery_tag,
            requeue: true,
        });
        let _ = self
            .acker
            .holder
            .channel
            .send_now(reject, Some(self.acker.epoch));
    }

    /// Rejects this delivery with the spec's `basic.reject`.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub async fn reject(&self, requeue: bool) -> Result<()> {
        self.settle(Method::BasicReject(basic::Reject {
            delivery_tag: self.delivery_tag,
            requeue,
        }))
        .await
    }
}

/// The result of [`Channel::basic_get`](crate::Channel::basic_get).
#[derive(Debug)]
pub struct GetMessage {
    /// The message, to be acknowledged like any delivery unless fetched with `no_ack`.
    pub delivery: Delivery,
    /// Messages left in the queue.
    pub message_count: u32,
}

/// A mandatory message the broker could not route (`basic.return`).
#[derive(Clone, Debug)]
pub struct ReturnedMessage {
    /// Why it came back, e.g. 312 (`NO_ROUTE`).
    pub reply_code: u16,
    /// The broker's text, e.g. `"NO_ROUTE"`.
    pub reply_text: String,
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
}

/// A consumer's deliveries, as a [`Stream`].
///
/// Items are `Ok(Delivery)`; if the broker closes the channel or the
/// connection fails, the stream yields that error once and ends. It ends
/// quietly after a cancel (by the application or the broker) or a close by
/// the application.
///
/// After automatic recovery, deliveries received on the lost connection that
/// it had not yielded yet are dropped (unless it consumes with `no_ack`): the
/// broker has requeued them and delivers them again.
///
/// Dropping it cancels the consumer (`basic.cancel`, not awaited) and gives
/// back (`basic.reject` with requeue) the deliveries it received but did not
/// yield, and those that arrive before the broker's cancel-ok; deliveries it
/// yielded are the application's to settle. It keeps its channel open (as
/// its deliveries do): when it was the last handle, dropping it closes the
/// channel.
///
/// ```no_run
/// # async fn demo(channel: lockgate_client::Channel) -> lockgate_client::Result<()> {
/// use futures::StreamExt;
/// use lockgate_client::{ConsumeOptions, FieldTable};
///
/// let mut consumer = channel
///     .basic_consume("tasks", "", ConsumeOptions::default(), FieldTable::default())
///     .await?;
/// while let Some(delivery) = consumer.next().await {
///     let delivery = delivery?;
///     println!("{:?}", delivery.body);
///     delivery.ack().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct Consumer {
    tag: String,
    channel: Channel,
    deliveries: DeliveryReceiver,
    /// Consumed with `no_ack`: its deliveries are settled already.
    no_ack: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("tag", &self.tag)
            .field("channel", &self.channel.id())
            .finish()
    }
}

impl Consumer {
    pub(crate) fn new(
        tag: String,
        channel: Channel,
        deliveries: DeliveryReceiver,
        no_ack: bool,
    ) -> Self {
        Self {
            tag,
            channel,
            deliveries,
            no_ack,
        }
    }

    /// The consumer tag (generated by the broker if none was given).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The channel the consumer runs on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Cancels the consumer (`basic.cancel`). Deliveries already received can
    /// still be read; then the stream ends.
    ///
    /// # Errors
    ///
    /// The channel's error if it is closed.
    pub async fn cancel(&self) -> Result<()> {
        self.channel.basic_cancel(&self.tag).await
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let unseen = self.deliveries.close();
        // Cancelled before the unseen deliveries go back: the broker must not
        // deliver them to this consumer again.
        self.channel.inner().cancel_dropped(&self.tag);
        if !self.no_ack {
            for delivery in unseen.into_iter().flatten() {
                delivery.requeue_unseen();
            }
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let item = ready!(self.deliveries.poll_recv(cx));
            match item {
                // Left by a lost connection: the broker delivers it again.
                Some(Ok(d)) if !self.no_ack && self.channel.inner().is_stale(d.acker.epoch) => {
                    debug!(
                        delivery_tag = d.delivery_tag,
                        "delivery from before recovery dropped"
                    );
                }
                item => return Poll::Ready(item),
            }
        }
    }
}

/// Returned messages of a channel, as a [`Stream`]; see
/// [`Channel::returns`](crate::Channel::returns). It ends when the channel closes.
#[derive(Debug)]
pub struct Returns {
    messages: mpsc::UnboundedReceiver<ReturnedMessage>,
}

impl Returns {
    pub(crate) fn new(messages: mpsc::UnboundedReceiver<ReturnedMessage>) -> Self {
        Self { messages }
    }
}

impl Stream for Returns {
    type Item = ReturnedMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.messages.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(body_size: u64, content_type: &str) -> Properties {
        let decoded = BasicProperties {
            content_type: Some(content_type.into()),
            ..BasicProperties::default()
        };
        Properties::new(ContentHeader::new(60, body_size, decoded).expect("encodes"))
    }

    #[test]
    fn properties_compare_and_print_without_the_body_size() {
        assert_eq!(
            properties(3, "text/plain"),
            properties(70_000, "text/plain")
        );
        assert_ne!(properties(3, "text/plain"), properties(3, "text/html"));
        let printed = format!("{:?}", properties(70_000, "text/plain"));
        assert!(!printed.contains("70000"), "{printed}");
        assert!(printed.contains("text/plain"), "{printed}");
    }
}
