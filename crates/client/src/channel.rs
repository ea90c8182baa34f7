//! [`Channel`]: declarations, publishing, consuming.

use std::borrow::Borrow;
use std::sync::Arc;

use lockgate_wire::{basic, exchange, queue, BasicProperties, FieldTable, Method};
use tokio::sync::mpsc;

use crate::channel_inner::{unexpected, ChannelHolder, ChannelInner};
use crate::confirm::Confirmation;
use crate::connection::{channel_close, Holder};
use crate::error::{Error, Result};
use crate::inbox::inbox;
use crate::message::{Acker, Consumer, Delivery, GetMessage, Properties, Returns};
use crate::options::{
    ConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeKind, GetOptions,
    PublishOptions, QosOptions, QueueDeclareOptions, QueueDeleteOptions, QueueInfo,
};
use crate::recovery::{
    RecordedBinding, RecordedConsumer, RecordedExchange, RecordedQueue, Topology,
};

/// An AMQP channel: a lightweight, cheaply cloned handle to one of the
/// connection's multiplexed sessions.
///
/// Synchronous methods (declare, bind, consume, ...) on one channel run one
/// at a time; publishing does not wait for them. A channel closed by the
/// broker (e.g. after a 404) reports that error on every later call; open a
/// new one to continue: the connection stays usable.
///
/// Its handles, consumers and deliveries keep it (and its connection) open;
/// once the last of them is dropped, the channel is closed (`channel.close`
/// 200) without waiting for the broker's answer, and the broker requeues its
/// unacknowledged deliveries.
#[derive(Clone, Debug)]
pub struct Channel {
    inner: Arc<ChannelInner>,
    holder: Arc<ChannelHolder>,
}

impl Channel {
    /// `connection` is the connection's holder, `None` for recovery's own
    /// channels (they do not keep the connection open).
    pub(crate) fn from_inner(inner: Arc<ChannelInner>, connection: Option<Arc<Holder>>) -> Self {
        Self {
            holder: ChannelHolder::new(inner.clone(), connection),
            inner,
        }
    }

    fn record(&self, f: impl FnOnce(&mut Topology)) {
        if self.inner.conn.records_topology() {
            f(&mut self.inner.conn.lock_topology());
        }
    }

    /// Sends a synchronous method whose reply carries nothing we need and, once the
    /// broker answers with `expected` ("exchange.bind-ok"), records `change`.
    async fn call_and_record(
        &self,
        method: Method,
        expected: &'static str,
        change: impl FnOnce(&mut Topology),
    ) -> Result<()> {
        let reply = self.inner.call(method, None, None).await?.method;
        if reply.name() != expected {
            return Err(unexpected(&reply, expected));
        }
        self.record(change);
        Ok(())
    }

    pub(crate) fn inner(&self) -> &Arc<ChannelInner> {
        &self.inner
    }

    /// The channel number.
    pub fn id(&self) -> u16 {
        self.inner.id
    }

    /// Whether the channel can be used now (not closed, connection not recovering).
    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    /// Closes the channel (`channel.close` 200). Consumers on it end. Closing
    /// a channel that this application already closed is a no-op. While the
    /// connection recovers, the channel is closed at once (its broker side went
    /// with the lost socket) and is not recovered.
    ///
    /// # Errors
    ///
    /// The error that closed the channel if the broker closed it first.
    pub async fn close(&self) -> Result<()> {
        let method = channel_close();
        match self.inner.call(method, None, None).await {
            Ok(_) | Err(Error::ClientClosed) => Ok(()),
            // Failed but not closed: the connection was lost and is recovering.
            Err(_) if !self.inner.is_closed() => {
                self.inner
                    .conn
                    .channel_closed(&self.inner, Error::ClientClosed);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Declares an exchange (`exchange.declare`).
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 406 if it exists with other settings, 404
    /// with `passive` if it does not exist, 403 for reserved `amq.` names.
    pub async fn exchange_declare(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::ExchangeDeclare(exchange::Declare {
            exchange: name.into(),
            kind: kind.as_str().into(),
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            nowait: false,
            arguments: arguments.clone(),
        });
        match self.inner.call(method, None, None).await?.method {
            Method::ExchangeDeclareOk(_) => {
                if !options.passive {
                    self.record(|t| {
                        t.add_exchange(RecordedExchange {
                            name: name.into(),
                            kind,
                            options,
                            arguments,
                        })
                    });
                }
                Ok(())
            }
            other => Err(unexpected(&other, "exchange.declare-ok")),
        }
    }

    /// Deletes an exchange (`exchange.delete`).
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 406 if `if_unused` and it has bindings
    /// (RabbitMQ answers 200 for a missing exchange).
    pub async fn exchange_delete(&self, name: &str, options: ExchangeDeleteOptions) -> Result<()> {
        let method = Method::ExchangeDelete(exchange::Delete {
            exchange: name.into(),
            if_unused: options.if_unused,
            nowait: false,
        });
        self.call_and_record(method, "exchange.delete-ok", |t| t.delete_exchange(name))
            .await
    }

    /// Binds exchange `destination` to exchange `source` (`exchange.bind`, a
    /// RabbitMQ extension).
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 if either exchange does not exist.
    pub async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::ExchangeBind(exchange::Bind {
            destination: destination.into(),
            source: source.into(),
            routing_key: routing_key.into(),
            nowait: false,
            arguments: arguments.clone(),
        });
        self.call_and_record(method, "exchange.bind-ok", |t| {
            t.add_binding(RecordedBinding {
                to_exchange: true,
                destination: destination.into(),
                source: source.into(),
                routing_key: routing_key.into(),
                arguments,
            });
        })
        .await
    }

    /// Removes an exchange-to-exchange binding (`exchange.unbind`).
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 if either exchange does not exist.
    pub async fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let binding = RecordedBinding {
            to_exchange: true,
            destination: destination.into(),
            source: source.into(),
            routing_key: routing_key.into(),
            arguments: arguments.clone(),
        };
        let method = Method::ExchangeUnbind(exchange::Unbind {
            destination: destination.into(),
            source: source.into(),
            routing_key: routing_key.into(),
            nowait: false,
            arguments,
        });
        self.call_and_record(method, "exchange.unbind-ok", |t| {
            t.remove_binding(&binding);
        })
        .await
    }

    /// Declares a queue (`queue.declare`). An empty `name` asks the broker to
    /// generate one (`amq.gen-...`), returned in [`QueueInfo::name`].
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 406 if it exists with other settings, 404
    /// with `passive` if it does not exist, 405 if another connection owns it.
    pub async fn queue_declare(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<QueueInfo> {
        let method = Method::QueueDeclare(queue::Declare {
            queue: name.into(),
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            nowait: false,
            arguments: arguments.clone(),
        });
        match self.inner.call(method, None, None).await?.method {
            Method::QueueDeclareOk(ok) => {
                if !options.passive {
                    self.record(|t| {
                        t.add_queue(RecordedQueue {
                            name: ok.queue.clone(),
                            server_named: name.is_empty(),
                            options,
                            arguments,
                        })
                    });
                }
                Ok(QueueInfo {
                    name: ok.queue,
                    message_count: ok.message_count,
                    consumer_count: ok.consumer_count,
                })
            }
            other => Err(unexpected(&other, "queue.declare-ok")),
        }
    }

    /// Binds a queue to an exchange (`queue.bind`).
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 if the queue or exchange does not exist.
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = Method::QueueBind(queue::Bind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            nowait: false,
            arguments: arguments.clone(),
        });
        self.call_and_record(method, "queue.bind-ok", |t| {
            t.add_binding(RecordedBinding {
                to_exchange: false,
                destination: queue.into(),
                source: exchange.into(),
                routing_key: routing_key.into(),
                arguments,
            });
        })
        .await
    }

    /// Removes a queue binding (`queue.unbind`).
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 if the queue or exchange does not exist.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let binding = RecordedBinding {
            to_exchange: false,
            destination: queue.into(),
            source: exchange.into(),
            routing_key: routing_key.into(),
            arguments: arguments.clone(),
        };
        let method = Method::QueueUnbind(queue::Unbind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            arguments,
        });
        self.call_and_record(method, "queue.unbind-ok", |t| {
            t.remove_binding(&binding);
        })
        .await
    }

    /// Removes every ready message from a queue (`queue.purge`); returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 if the queue does not exist.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32> {
        let method = Method::QueuePurge(queue::Purge {
            queue: queue.into(),
            nowait: false,
        });
        match self.inner.call(method, None, None).await?.method {
            Method::QueuePurgeOk(ok) => Ok(ok.message_count),
            other => Err(unexpected(&other, "queue.purge-ok")),
        }
    }

    /// Deletes a queue (`queue.delete`); returns how many messages it held.
    /// Its consumers are cancelled by the broker.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 406 when `if_unused`/`if_empty` do not
    /// hold (RabbitMQ answers 0 for a missing queue).
    pub async fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32> {
        let method = Method::QueueDelete(queue::Delete {
            queue: queue.into(),
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            nowait: false,
        });
        match self.inner.call(method, None, None).await?.method {
            Method::QueueDeleteOk(ok) => {
                self.record(|t| t.delete_queue(queue));
                Ok(ok.message_count)
            }
            other => Err(unexpected(&other, "queue.delete-ok")),
        }
    }

    /// Limits unacknowledged deliveries (`basic.qos`); 0 means no limit.
    ///
    /// # Errors
    ///
    /// The channel's error if it is closed.
    pub async fn basic_qos(&self, prefetch_count: u16, options: QosOptions) -> Result<()> {
        self.inner.qos(prefetch_count, options.global, None).await
    }

    /// Puts the channel in publisher-confirm mode (`confirm.select`): from
    /// now on every [`Channel::basic_publish`] returns a [`Confirmation`] that
    /// resolves when the broker acks (or nacks) the message.
    ///
    /// # Errors
    ///
    /// The channel's error if it is closed; 406 if it is in transaction mode.
    pub async fn confirm_select(&self) -> Result<()> {
        self.inner.confirm_select(None).await
    }

    /// Publishes a message (`basic.publish` + header + body frames).
    ///
    /// The frames are encoded straight into the connection's output buffer, so
    /// `properties` and `body` may be borrowed (`&properties`, `&buf[..]`):
    /// a publisher that reuses them allocates nothing per message. Returns
    /// once the message is queued for the socket (waiting only while that
    /// buffer is full). The returned [`Confirmation`] resolves when the
    /// broker confirms the message if the channel is in confirm mode, at once
    /// otherwise; awaiting it is optional, so many publishes can be in flight:
    ///
    /// ```no_run
    /// # async fn demo(channel: lockgate_client::Channel) -> lockgate_client::Result<()> {
    /// use lockgate_client::{BasicProperties, PublishOptions};
    ///
    /// channel.confirm_select().await?;
    /// let mut pending = Vec::new();
    /// for i in 0..100 {
    ///     let body = format!("message {i}");
    ///     pending.push(
    ///         channel
    ///             .basic_publish("", "tasks", PublishOptions::default(), BasicProperties::default(), body)
    ///             .await?,
    ///     );
    /// }
    /// for confirmation in pending {
    ///     confirmation.await?; // Err(Error::Nacked) if the broker refused it
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// With `mandatory`, a message that reaches no queue comes back on
    /// [`Channel::returns`] (and, in confirm mode, is still acked).
    ///
    /// While the broker has paused the channel (`channel.flow` with `active`
    /// false), a publish waits, as the RabbitMQ Java client's does: it returns
    /// once the broker resumes the channel (`channel.flow` with `active` true),
    /// and nothing of it is sent before. The channel's other methods (acks,
    /// declarations) do not wait. RabbitMQ and lockgate do not pause channels
    /// (they block the connection: see
    /// [`Connection::blocked`](crate::Connection::blocked)); other brokers and
    /// proxies may. Dropping the waiting future publishes nothing.
    ///
    /// # Errors
    ///
    /// The channel's error if it is closed (also when it closes while the
    /// publish waits); [`Error::Disconnected`] while the connection recovers
    /// (or when it is lost while the publish waits). A publish to a missing
    /// exchange closes the channel with 404, reported on the next call (and on
    /// pending confirmations).
    pub async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: impl Borrow<BasicProperties>,
        body: impl AsRef<[u8]>,
    ) -> Result<Confirmation> {
        self.inner
            .publish(
                exchange,
                routing_key,
                options,
                properties.borrow(),
                body.as_ref(),
            )
            .await
    }

    /// Starts a consumer (`basic.consume`) and returns its stream of
    /// deliveries. An empty `consumer_tag` lets the broker pick one
    /// ([`Consumer::tag`]).
    ///
    /// The stream ends after [`Consumer::cancel`], when the broker cancels the
    /// consumer (its queue was deleted), or when the channel closes (after
    /// yielding the broker's error, if any).
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 if the queue does not exist, 403 if
    /// it has an exclusive consumer, 405 if another connection owns it.
    pub async fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer> {
        let (tx, rx) = inbox(!options.no_ack);
        let tag = self
            .inner
            .consume(
                queue,
                consumer_tag,
                options,
                arguments.clone(),
                Some(tx),
                None,
            )
            .await?;
        self.record(|t| {
            t.add_consumer(RecordedConsumer {
                channel: self.inner.id,
                tag: tag.clone(),
                queue: queue.into(),
                options,
                arguments,
            })
        });
        Ok(Consumer::new(tag, self.clone(), rx, options.no_ack))
    }

    /// Cancels a consumer (`basic.cancel`); its stream ends once the broker
    /// confirms.
    ///
    /// # Errors
    ///
    /// The channel's error if it is closed.
    pub async fn basic_cancel(&self, consumer_tag: &str) -> Result<()> {
        let method = Method::BasicCancel(basic::Cancel {
            consumer_tag: consumer_tag.into(),
            nowait: false,
        });
        self.call_and_record(method, "basic.cancel-ok", |t| {
            t.forget_consumer(consumer_tag);
        })
        .await
    }

    /// Fetches one message (`basic.get`); `None` if the queue is empty.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 if the queue does not exist.
    pub async fn basic_get(&self, queue: &str, options: GetOptions) -> Result<Option<GetMessage>> {
        let method = Method::BasicGet(basic::Get {
            queue: queue.into(),
            no_ack: options.no_ack,
        });
        let reply = self.inner.call(method, None, None).await?;
        match (reply.method, reply.content) {
            (Method::BasicGetEmpty(_), _) => Ok(None),
            (Method::BasicGetOk(ok), Some(content)) => {
                let epoch = self.inner.link().map(|l| l.epoch).unwrap_or_default();
                Ok(Some(GetMessage {
                    message_count: ok.message_count,
                    delivery: Delivery {
                        consumer_tag: Arc::from(""),
                        delivery_tag: ok.delivery_tag,
                        redelivered: ok.redelivered,
                        exchange: ok.exchange.into(),
                        routing_key: ok.routing_key.into(),
                        properties: Properties::new(content.header),
                        body: content.body,
                        acker: Acker {
                            holder: self.holder.clone(),
                            epoch,
                        },
                    },
                }))
            }
            (other, _) => Err(unexpected(&other, "basic.get-ok")),
        }
    }

    /// Asks the broker to redeliver this channel's unacknowledged messages
    /// (`basic.recover`); with `requeue` they may go to other consumers.
    ///
    /// # Errors
    ///
    /// The channel's error if it is closed.
    pub async fn basic_recover(&self, requeue: bool) -> Result<()> {
        let method = Method::BasicRecover(basic::Recover { requeue });
        match self.inner.call(method, None, None).await?.method {
            Method::BasicRecoverOk(_) => Ok(()),
            other => Err(unexpected(&other, "basic.recover-ok")),
        }
    }

    /// A stream of messages the broker returns (`basic.return`: mandatory
    /// messages that reached no queue). Calling it again replaces the
    /// previous stream; without one, returned messages are dropped.
    pub fn returns(&self) -> Returns {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.set_returns(tx);
        Returns::new(rx)
    }
}
