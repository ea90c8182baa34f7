//! How the broker reaches a channel: deliveries and consumer cancellations go straight onto the
//! connection writer's queue.

use std::sync::Arc;

use lockgate_broker::{ConsumerTag, Delivery, DeliverySink, SinkClosed};
use lockgate_wire::basic;
use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::GlobalCounters;
use crate::writer::Outbound;

/// The delivery sink the broker pushes to: straight onto the connection writer's queue.
pub(super) struct ChannelSink {
    pub(super) number: u16,
    pub(super) out: UnboundedSender<Outbound>,
    pub(super) cancel_notify: bool,
    pub(super) counters: Arc<GlobalCounters>,
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
