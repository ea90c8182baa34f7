//! Direct reply-to on a channel (`lockgate_broker::ReplyConsumer` holds the logic): consuming
//! the pseudo-queue `amq.rabbitmq.reply-to`, cancelling that consumer, and declaring the
//! pseudo-queue or a reply address, with RabbitMQ 3.10's replies and errors
//! (`rabbit_channel`). The `reply_to` rewrite of a publish is in `Channel::publish`.

use lockgate_broker::ReplyConsumer;
use lockgate_wire::{basic, queue};

use super::{broker_error, Channel};
use crate::error::AmqpError;

impl Channel {
    /// `basic.consume` of the pseudo-queue: the channel becomes its vhost's reply consumer.
    ///
    /// # Errors
    /// 406 "reply consumer cannot acknowledge" unless no-ack; 406 "reply consumer already
    /// set" for a second one on the channel.
    pub(super) fn on_reply_to_consume(
        &mut self,
        consume: &basic::Consume,
    ) -> Result<(), AmqpError> {
        if !consume.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply_consumer.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let consumer = self.broker.consume_reply_to(&consume.consumer_tag);
        self.reply(
            consume.nowait,
            basic::ConsumeOk {
                consumer_tag: consumer.tag().to_string(),
            },
        );
        self.reply_consumer = Some(consumer);
        Ok(())
    }

    /// `basic.cancel`: whether it cancelled the reply consumer (and answered).
    pub(super) fn on_reply_to_cancel(&mut self, cancel: &basic::Cancel) -> bool {
        if self
            .reply_consumer
            .as_ref()
            .is_none_or(|c| c.tag().as_str() != cancel.consumer_tag)
        {
            return false;
        }
        self.reply_consumer = None;
        self.reply(
            cancel.nowait,
            basic::CancelOk {
                consumer_tag: cancel.consumer_tag.clone(),
            },
        );
        true
    }

    /// `queue.declare` of the pseudo-queue or a reply address (always passive, as in
    /// RabbitMQ): declare-ok with no messages and one consumer. `None` for other names.
    pub(super) fn on_reply_to_declare(
        &mut self,
        declare: &queue::Declare,
    ) -> Option<Result<(), AmqpError>> {
        let declared = ReplyConsumer::declare(&self.vhost, &declare.queue)?;
        Some(declared.map_err(broker_error).map(|()| {
            self.reply(
                declare.nowait,
                queue::DeclareOk {
                    queue: declare.queue.clone(),
                    message_count: 0,
                    consumer_count: 1,
                },
            );
        }))
    }
}
