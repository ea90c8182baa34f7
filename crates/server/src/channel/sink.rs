//! How the broker reaches a channel: deliveries and consumer cancellations go straight onto the
//! connection writer's queue.

use std::sync::Arc;

use lockgate_broker::{
    ConsumerTag, Delivery, DeliverySink, DeliveryTag, GetOk, SinkClosed, SinkClosedAll,
};
use lockgate_wire::{basic, Method};
use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::{Counter, GlobalCounters};
use crate::writer::Outbound;

/// What the broker asks of a connection's reader, outside any method it received.
#[derive(Debug)]
pub enum ChannelEvent {
    /// Close channel `number` (if `serial` is still the one open under that number) with 406:
    /// a delivery was not acknowledged within the consumer timeout (action close-channel).
    ConsumerTimeout {
        /// Channel number.
        number: u16,
        /// The channel's serial (see `ChannelInit::serial`).
        serial: u64,
        /// RabbitMQ's text.
        text: String,
    },
}

/// The delivery sink the broker pushes to: straight onto the connection writer's queue.
pub(super) struct ChannelSink {
    pub(super) number: u16,
    pub(super) out: UnboundedSender<Outbound>,
    pub(super) cancel_notify: bool,
    pub(super) counters: Arc<GlobalCounters>,
    pub(super) events: UnboundedSender<ChannelEvent>,
    pub(super) serial: u64,
}

impl DeliverySink for ChannelSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
        let (redelivered, no_ack) = (delivery.redelivered, delivery.no_ack);
        let msg = Outbound::Deliver {
            channel: self.number,
            delivery,
        };
        match self.out.send(msg) {
            Ok(()) => {
                self.counters.delivered(redelivered, no_ack);
                Ok(())
            }
            // The writer is gone: hand the delivery back so the broker requeues it.
            Err(SendError(Outbound::Deliver { delivery, .. })) => Err(SinkClosed(delivery)),
            // Only a Deliver was sent, so only a Deliver can come back.
            Err(SendError(_)) => Ok(()),
        }
    }

    fn deliver_all(&self, deliveries: Vec<Delivery>) -> Result<(), SinkClosedAll> {
        // A batch goes to one consumer: one no-ack for all of it.
        let no_ack = deliveries.first().is_some_and(|d| d.no_ack);
        let delivered = if no_ack {
            Counter::DeliveredConsumeAutoAck
        } else {
            Counter::DeliveredConsumeManualAck
        };
        let n = deliveries.len() as u64;
        let redelivered = deliveries.iter().filter(|d| d.redelivered).count() as u64;
        let msg = Outbound::Deliveries {
            channel: self.number,
            deliveries,
        };
        match self.out.send(msg) {
            Ok(()) => {
                self.counters.add(delivered, n);
                if redelivered > 0 {
                    self.counters.add(Counter::Redelivered, redelivered);
                }
                Ok(())
            }
            // The writer is gone: hand them back so the broker requeues them.
            Err(SendError(Outbound::Deliveries { deliveries, .. })) => {
                Err(SinkClosedAll(deliveries))
            }
            // Only Deliveries were sent, so only Deliveries can come back.
            Err(SendError(_)) => Ok(()),
        }
    }

    fn get_ok(&self, got: &GetOk) {
        // A writer gone means the connection is closing: an unacked get is requeued with
        // the channel.
        let _ = self.out.send(Outbound::Content {
            channel: self.number,
            method: Box::new(Method::BasicGetOk(basic::GetOk {
                delivery_tag: got.delivery_tag.0,
                redelivered: got.redelivered,
                exchange: got.message.exchange().to_owned(),
                routing_key: got.message.routing_key().to_owned(),
                message_count: got.message_count,
            })),
            message: Arc::clone(&got.message),
        });
    }

    fn consumer_timeout(&self, _delivery_tag: DeliveryTag, timeout_ms: u64) {
        // RabbitMQ's text (rabbit_channel, consumer_timeout).
        let text = format!(
            "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout_ms} \
             ms. This timeout value can be configured, see consumers doc guide to learn more",
            self.number
        );
        let _ = self.events.send(ChannelEvent::ConsumerTimeout {
            number: self.number,
            serial: self.serial,
            text,
        });
    }

    fn consumer_cancelled(&self, tag: &ConsumerTag) {
        if self.cancel_notify {
            let _ = self.out.send(Outbound::method(
                self.number,
                basic::Cancel {
                    consumer_tag: tag.to_string(),
                    nowait: true,
                },
            ));
        }
    }
}
