//! The boundary between queues and a connection's writer.

use std::fmt;
use std::sync::Arc;

use crate::ids::{ConsumerTag, DeliveryTag};
use crate::message::Message;
use crate::queue::GetOk;

/// One message handed to a consumer (`basic.deliver`). Exchange and routing key come from
/// the message.
#[derive(Clone)]
pub struct Delivery {
    /// The consumer it is for.
    pub consumer_tag: ConsumerTag,
    /// The channel's tag for it.
    pub delivery_tag: DeliveryTag,
    /// True when it was delivered before and requeued.
    pub redelivered: bool,
    /// The consumer does not acknowledge (counted apart in the server's metrics).
    pub no_ack: bool,
    /// The message, shared with its queue until acked.
    pub message: Arc<Message>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("consumer_tag", &self.consumer_tag)
            .field("delivery_tag", &self.delivery_tag)
            .field("redelivered", &self.redelivered)
            .field("routing_key", &self.message.routing_key())
            .finish_non_exhaustive()
    }
}

/// The sink refused a delivery because its connection is gone; it hands the delivery back,
/// so the broker can put the message back in its queue.
#[derive(Debug)]
pub struct SinkClosed(pub Delivery);

/// The sink refused deliveries handed over together: their connection is gone. It hands
/// back those it did not take (the last ones, in order).
#[derive(Debug)]
pub struct SinkClosedAll(pub Vec<Delivery>);

/// Where a channel's deliveries and broker-initiated cancels go; one per AMQP channel,
/// implemented by the server (typically a push onto the connection writer's unbounded mpsc).
///
/// # Contract
/// - [`DeliverySink::deliver`], [`DeliverySink::deliver_all`] and [`DeliverySink::get_ok`]
///   are called with a queue lock and the channel's delivery lock held: they must not block
///   and must not call back into the broker. Deliveries and get-oks for one channel arrive in
///   delivery-tag order.
/// - Memory: a delivered message stays charged to the memory watermark until the `Delivery`
///   is dropped, so a writer that falls behind (a slow no-ack consumer, which prefetch does
///   not limit) raises the memory alarm and the server stops reading publishers. The sink
///   needs no bound of its own; it should drop each delivery once written.
/// - [`DeliverySink::consumer_cancelled`] is called with no broker lock held, after the
///   consumer has been removed, when the broker cancels it (its queue was deleted). The
///   server sends `basic.cancel` to clients with the `consumer_cancel_notify` capability.
pub trait DeliverySink: Send + Sync {
    /// Hands a delivery to the connection.
    ///
    /// # Errors
    /// [`SinkClosed`] with the delivery when the connection is gone; the broker requeues the
    /// message and stops delivering to this channel.
    fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed>;

    /// Hands several deliveries for this channel to the connection, in order (a queue's
    /// drain to one consumer). The default hands them over one by one.
    ///
    /// # Errors
    /// [`SinkClosedAll`] with the deliveries not taken when the connection is gone.
    fn deliver_all(&self, deliveries: Vec<Delivery>) -> Result<(), SinkClosedAll> {
        let mut rest = deliveries.into_iter();
        while let Some(delivery) = rest.next() {
            if let Err(SinkClosed(delivery)) = self.deliver(delivery) {
                return Err(SinkClosedAll(
                    std::iter::once(delivery).chain(rest).collect(),
                ));
            }
        }
        Ok(())
    }

    /// A `basic.get` took a message as delivery `got.delivery_tag`. Handed over under the
    /// lock that assigned the tag, as deliveries are, so that a delivery to this channel's
    /// consumers made meanwhile by another thread (which takes the next tag) cannot reach the
    /// connection before the get-ok. The writer gets the get-ok from here; the default
    /// ignores it (callers that only read the [`GetOk`] the get returns).
    fn get_ok(&self, got: &GetOk) {
        let _ = got;
    }

    /// The broker cancelled this consumer.
    fn consumer_cancelled(&self, consumer_tag: &ConsumerTag);

    /// Delivery `delivery_tag` was not acknowledged within its queue's consumer timeout
    /// (`timeout_ms`) and the queue's action is close-channel: the server closes the channel
    /// with 406 PRECONDITION_FAILED, as RabbitMQ does (closing requeues its deliveries).
    /// Called at most once per channel, with no broker lock held. The default ignores it.
    fn consumer_timeout(&self, delivery_tag: DeliveryTag, timeout_ms: u64) {
        let _ = (delivery_tag, timeout_ms);
    }
}

/// A sink that accepts every delivery and drops it (unit tests that only count).
#[cfg(test)]
pub(crate) struct Discard;

#[cfg(test)]
impl DeliverySink for Discard {
    fn deliver(&self, _: Delivery) -> Result<(), SinkClosed> {
        Ok(())
    }

    fn consumer_cancelled(&self, _: &ConsumerTag) {}
}
