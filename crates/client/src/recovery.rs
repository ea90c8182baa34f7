//! Automatic connection recovery, as the RabbitMQ Java client does it.
//!
//! While recovery is enabled, channels record what the application declared
//! (exchanges, queues, bindings) and the consumers it started. When the
//! connection is lost, the reader calls [`spawn`]; the recovery task
//! reconnects with exponential backoff, re-opens every channel that was open
//! (re-applying qos and confirm mode), re-declares the recorded topology on a
//! temporary channel (server-named queues get new names, and the bindings and
//! consumers that used them follow), gives the channels back to the
//! application, and restarts the consumers with their old tags on their old
//! channels, feeding the same [`Consumer`](crate::Consumer) streams.

use std::collections::HashMap;
use std::sync::Arc;

use lockgate_wire::FieldTable;
use tracing::{info, warn};

use crate::channel::Channel;
use crate::channel_inner::ChannelInner;
use crate::connection::{channel_close, handshake, ConnInner, Status};
use crate::error::{Error, Result};
use crate::io::{Link, Session};
use crate::options::{ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, QueueDeclareOptions};

/// An exchange declared by the application.
#[derive(Clone, Debug)]
pub(crate) struct RecordedExchange {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) options: ExchangeDeclareOptions,
    pub(crate) arguments: FieldTable,
}

/// A queue declared by the application.
#[derive(Clone, Debug)]
pub(crate) struct RecordedQueue {
    pub(crate) name: String,
    /// Declared with an empty name: re-declared the same way, under a new name.
    pub(crate) server_named: bool,
    pub(crate) options: QueueDeclareOptions,
    pub(crate) arguments: FieldTable,
}

/// A queue (or exchange-to-exchange) binding made by the application.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RecordedBinding {
    pub(crate) to_exchange: bool,
    pub(crate) destination: String,
    pub(crate) source: String,
    pub(crate) routing_key: String,
    pub(crate) arguments: FieldTable,
}

/// A consumer started by the application.
#[derive(Clone, Debug)]
pub(crate) struct RecordedConsumer {
    pub(crate) channel: u16,
    pub(crate) tag: String,
    pub(crate) queue: String,
    pub(crate) options: ConsumeOptions,
    pub(crate) arguments: FieldTable,
}

/// Everything recovery re-creates, in declaration order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Topology {
    exchanges: Vec<RecordedExchange>,
    queues: Vec<RecordedQueue>,
    bindings: Vec<RecordedBinding>,
    consumers: Vec<RecordedConsumer>,
}

impl Topology {
    pub(crate) fn add_exchange(&mut self, exchange: RecordedExchange) {
        self.exchanges.retain(|e| e.name != exchange.name);
        self.exchanges.push(exchange);
    }

    pub(crate) fn delete_exchange(&mut self, name: &str) {
        self.exchanges.retain(|e| e.name != name);
        self.bindings
            .retain(|b| b.source != name && !(b.to_exchange && b.destination == name));
    }

    pub(crate) fn add_queue(&mut self, queue: RecordedQueue) {
        self.queues.retain(|q| q.name != queue.name);
        self.queues.push(queue);
    }

    pub(crate) fn delete_queue(&mut self, name: &str) {
        self.queues.retain(|q| q.name != name);
        self.bindings
            .retain(|b| b.to_exchange || b.destination != name);
        self.consumers.retain(|c| c.queue != name);
    }

    pub(crate) fn add_binding(&mut self, binding: RecordedBinding) {
        if !self.bindings.contains(&binding) {
            self.bindings.push(binding);
        }
    }

    pub(crate) fn remove_binding(&mut self, binding: &RecordedBinding) {
        self.bindings.retain(|b| b != binding);
    }

    pub(crate) fn add_consumer(&mut self, consumer: RecordedConsumer) {
        self.consumers.retain(|c| c.tag != consumer.tag);
        self.consumers.push(consumer);
    }

    pub(crate) fn forget_consumer(&mut self, tag: &str) {
        self.consumers.retain(|c| c.tag != tag);
    }

    pub(crate) fn forget_channel(&mut self, channel: u16) {
        self.consumers.retain(|c| c.channel != channel);
    }

    /// A server-named queue came back under a new name.
    fn rename_queue(&mut self, old: &str, new: &str) {
        self.queues.retain(|q| q.name != old);
        for b in &mut self.bindings {
            if !b.to_exchange && b.destination == old {
                b.destination = new.to_string();
            }
        }
        for c in &mut self.consumers {
            if c.queue == old {
                c.queue = new.to_string();
            }
        }
    }
}

/// Starts the recovery task of a lost connection.
pub(crate) fn spawn(conn: Arc<ConnInner>) {
    tokio::spawn(run(conn));
}

async fn run(conn: Arc<ConnInner>) {
    let Some(config) = conn.options.recovery.clone() else {
        return;
    };
    let mut delay = config.initial_delay;
    let mut attempts = 0u32;
    loop {
        tokio::time::sleep(delay).await;
        if !conn.is_recovering() {
            return;
        }
        attempts += 1;
        match attempt(&conn).await {
            Ok(()) => {
                info!(attempts, "connection recovered");
                return;
            }
            Err(e) => {
                warn!(error = %e, attempt = attempts, "connection recovery attempt failed");
                if config.max_attempts.is_some_and(|max| attempts >= max) {
                    conn.finish(e);
                    return;
                }
                delay = (delay * 2).min(config.max_delay);
            }
        }
    }
}

async fn attempt(conn: &Arc<ConnInner>) -> Result<()> {
    let established = handshake(&conn.options).await?;
    if !conn.is_recovering() {
        return Ok(());
    }
    let session = conn.start_session(established);
    if let Err(e) = restore(conn, &session).await {
        session.stop.cancel();
        return Err(e);
    }
    let mut st = conn.lock_state();
    let current = st.session.as_ref().map(|s| s.link.epoch) == Some(session.link.epoch);
    match st.status {
        Status::Recovering if current => {
            st.status = Status::Open;
            Ok(())
        }
        Status::Recovering => Err(Error::Disconnected),
        // Closed by the application meanwhile.
        _ => {
            drop(st);
            session.stop.cancel();
            Ok(())
        }
    }
}

/// A channel error (say, a queue re-declared with other arguments by someone
/// else) skips that entity; anything else aborts the attempt.
fn skippable(e: &Error, what: &str, name: &str) -> Result<()> {
    if matches!(e, Error::ChannelClosed(_)) {
        warn!(error = %e, what, name, "could not recover");
        Ok(())
    } else {
        Err(e.clone())
    }
}

/// Opens a channel on the session being recovered, outside the `Open` check.
async fn temporary_channel(conn: &Arc<ConnInner>, link: &Link) -> Result<Channel> {
    let ch = {
        let mut st = conn.lock_state();
        let id = st.allocate_channel()?;
        let ch = Arc::new(ChannelInner::new(id, conn.clone(), link.clone()));
        st.channels.insert(id, ch.clone());
        ch
    };
    if let Err(e) = ch.open(None).await {
        conn.channel_closed(&ch, e.clone());
        return Err(e);
    }
    Ok(Channel::from_inner(ch, None))
}

/// The temporary channel, re-opened if an error closed it.
async fn usable(conn: &Arc<ConnInner>, link: &Link, tmp: &mut Channel) -> Result<Channel> {
    if !tmp.is_open() {
        *tmp = temporary_channel(conn, link).await?;
    }
    Ok(tmp.clone())
}

async fn restore(conn: &Arc<ConnInner>, session: &Session) -> Result<()> {
    let link = &session.link;
    let mut channels: Vec<Arc<ChannelInner>> =
        conn.lock_state().channels.values().cloned().collect();
    channels.sort_by_key(|c| c.id);
    let mut reopened = Vec::new();
    for ch in channels.iter().filter(|c| !c.is_closed()) {
        if !ch.is_held() {
            // Dropped by the application; its channel.close went with the old
            // socket. Forgetting it also forgets its consumers.
            conn.channel_closed(ch, Error::ClientClosed);
            continue;
        }
        ch.open(Some(link)).await?;
        let settings = ch.settings();
        if let Some(n) = settings.prefetch_global {
            ch.qos(n, true, Some(link)).await?;
        }
        if let Some(n) = settings.prefetch_per_consumer {
            ch.qos(n, false, Some(link)).await?;
        }
        if settings.confirm {
            ch.confirm_select(Some(link)).await?;
        }
        reopened.push(ch);
    }

    let topology = conn.lock_topology().clone();
    let mut tmp = temporary_channel(conn, link).await?;
    for x in topology.exchanges {
        let ch = usable(conn, link, &mut tmp).await?;
        if let Err(e) = ch
            .exchange_declare(&x.name, x.kind, x.options, x.arguments)
            .await
        {
            skippable(&e, "exchange", &x.name)?;
        }
    }
    let mut renamed: HashMap<String, String> = HashMap::new();
    for q in topology.queues {
        let ch = usable(conn, link, &mut tmp).await?;
        let name = if q.server_named { "" } else { q.name.as_str() };
        match ch.queue_declare(name, q.options, q.arguments).await {
            Ok(info) if info.name != q.name => {
                info!(old = %q.name, new = %info.name, "server-named queue recovered under a new name");
                conn.lock_topology().rename_queue(&q.name, &info.name);
                renamed.insert(q.name, info.name);
            }
            Ok(_) => {}
            Err(e) => skippable(&e, "queue", &q.name)?,
        }
    }
    let queue_name = |name: &str| {
        renamed
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    };
    for b in topology.bindings {
        let ch = usable(conn, link, &mut tmp).await?;
        let result = if b.to_exchange {
            ch.exchange_bind(&b.destination, &b.source, &b.routing_key, b.arguments)
                .await
        } else {
            ch.queue_bind(
                &queue_name(&b.destination),
                &b.source,
                &b.routing_key,
                b.arguments,
            )
            .await
        };
        if let Err(e) = result {
            skippable(&e, "binding", &b.destination)?;
        }
    }
    if tmp.is_open() {
        tmp.close().await?;
    }
    // Only now may the application use its channels again: a message published
    // before its exchange, queue or binding is back would be lost (or close the
    // channel with 404). Before the consumers, whose deliveries it acknowledges.
    for ch in reopened {
        if !ch.resume(link.clone()) {
            // Closed by the application since it was re-opened: close it on the
            // broker too (the reader forgets it at its close-ok).
            link.send_method(ch.id, channel_close())?;
        }
    }
    for c in topology.consumers {
        let Some(ch) = conn.channel(c.channel).filter(|ch| !ch.is_closed()) else {
            continue;
        };
        let queue = queue_name(&c.queue);
        match ch
            .consume(&queue, &c.tag, c.options, c.arguments, None, None)
            .await
        {
            // Its stream (or its channel) was let go of meanwhile.
            Ok(_) | Err(Error::ClientClosed) => {}
            Err(e) => skippable(&e, "consumer", &c.tag)?,
        }
    }
    Ok(())
}
