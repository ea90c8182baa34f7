//! The channel's half of direct reply-to (`crate::reply_to`): registering as the reply
//! consumer, and delivering a reply with the channel's next delivery tag. A child of
//! `channel.rs` because both use the channel's delivery lock and tag counter.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Channel, ChannelShared};
use crate::ids::{random_name, ConsumerTag, DeliveryTag};
use crate::message::Message;
use crate::reply_to::ReplyConsumer;
use crate::sink::{Delivery, SinkClosed};

impl Channel {
    /// Makes this channel the reply consumer `consumer_tag` (generated when empty, as for
    /// queues) of its vhost: replies to the returned consumer's address come here until it
    /// is dropped. The server checks RabbitMQ's preconditions (no-ack, one per channel).
    pub fn consume_reply_to(&self, consumer_tag: &str) -> ReplyConsumer {
        let tag = if consumer_tag.is_empty() {
            ConsumerTag::generate()
        } else {
            ConsumerTag::from(consumer_tag)
        };
        // The channel's identity for whoever reads an address in a log, then 128 random bits.
        let suffix = random_name(&format!(
            "{}.{}",
            self.shared.connection.0, self.shared.id.0
        ));
        self.vhost
            .reply_to
            .insert(&suffix, Arc::downgrade(&self.shared), tag.clone());
        ReplyConsumer::new(Arc::clone(&self.vhost), tag, &suffix)
    }
}

impl ChannelShared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Delivers a reply to this channel's reply consumer `consumer_tag`: no-ack, with the
    /// next delivery tag, so tags stay strictly increasing across the channel's consumers.
    /// `channel.flow` does not hold replies back, as in RabbitMQ.
    ///
    /// # Errors
    /// The message back when the channel is closed or its connection gone.
    pub(crate) fn deliver_reply(
        &self,
        consumer_tag: &ConsumerTag,
        message: Arc<Message>,
    ) -> Result<(), Message> {
        let mut st = self.deliveries.lock();
        let back = |message: Arc<Message>| {
            // The only other reference was the delivery's; should one remain, the reply is
            // as good as delivered to a connection that is going away.
            Arc::try_unwrap(message).map_or(Ok(()), Err)
        };
        if self.is_closed() {
            return back(message);
        }
        let delivery = Delivery {
            consumer_tag: consumer_tag.clone(),
            delivery_tag: DeliveryTag(st.next_tag),
            redelivered: false,
            no_ack: true,
            message,
        };
        if let Err(SinkClosed(delivery)) = self.sink.deliver(delivery) {
            self.closed.store(true, Ordering::Release);
            return back(delivery.message);
        }
        st.next_tag += 1;
        Ok(())
    }
}
