//! The state of one channel, shared by its [`Channel`](crate::Channel)
//! handles and the connection's reader task: the pending synchronous calls,
//! the consumers' senders, outstanding publisher confirms, and the link to
//! the current session's writer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use std::task::Waker;

use bytes::{Bytes, BytesMut};
use lockgate_wire::{
    basic, confirm, encode_publish, BasicProperties, ContentHeader, FieldTable, Method, PublishRef,
};
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;

use crate::confirm::Confirmation;
use crate::connection::{channel_close, channel_open, ConnInner, Holder};
use crate::error::{Error, Result};
use crate::inbox::{DeliverySender, Sent};
use crate::io::Link;
use crate::message::{Delivery, ReturnedMessage};
use crate::options::{ConsumeOptions, PublishOptions};
use crate::outbox::{Append, Outbox};

/// The reply to a synchronous method, with its content for `basic.get-ok`.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) method: Method,
    pub(crate) content: Option<Content>,
}

/// A content header and its body.
#[derive(Debug)]
pub(crate) struct Content {
    pub(crate) header: ContentHeader,
    pub(crate) body: Bytes,
}

/// A synchronous call awaiting its reply.
struct PendingCall {
    reply: oneshot::Sender<Result<Reply>>,
    /// For `basic.consume`: where its deliveries go, registered under the
    /// tag the `consume-ok` names (before any delivery for it can arrive).
    consumer: Option<DeliverySender>,
}

/// Outstanding publisher confirms of a channel in confirm mode.
struct Confirms {
    next: u64,
    pending: BTreeMap<u64, oneshot::Sender<Result<()>>>,
}

/// Settings re-applied to the channel when the connection recovers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChannelSettings {
    pub(crate) prefetch_per_consumer: Option<u16>,
    pub(crate) prefetch_global: Option<u16>,
    pub(crate) confirm: bool,
}

#[derive(Default)]
struct ChannelState {
    /// The session's writer; `None` while the connection is recovering.
    link: Option<Link>,
    /// Set once the channel is closed for good.
    closed: Option<Error>,
    /// Synchronous calls awaiting their reply, oldest first. Calls are
    /// serialised, but a caller that gave up (dropped its future) leaves its
    /// entry here so that its late reply is not taken for the next call's.
    rpc: VecDeque<PendingCall>,
    consumers: HashMap<String, DeliverySender>,
    confirms: Option<Confirms>,
    returns: Option<mpsc::UnboundedSender<ReturnedMessage>>,
    settings: ChannelSettings,
    /// The application's hold on the channel, lent to each delivery.
    holder: Weak<ChannelHolder>,
    /// The broker sent `channel.flow` with `active` false: publishes wait.
    flow_paused: bool,
}

/// Shared state of one channel.
pub(crate) struct ChannelInner {
    pub(crate) id: u16,
    pub(crate) conn: Arc<ConnInner>,
    /// Serialises synchronous calls: their replies come back in order.
    rpc_lock: tokio::sync::Mutex<()>,
    state: Mutex<ChannelState>,
    /// The session whose deliveries the channel can still settle (0 while
    /// recovering); read without the lock by consumers, once per delivery.
    live_epoch: AtomicU64,
    /// Removed from the connection's channels: its number may belong to a new
    /// channel, which the reader must look up rather than use its cached slot.
    forgotten: AtomicBool,
    /// Wakes the publishers waiting while `flow_paused`.
    flow: Notify,
}

impl fmt::Debug for ChannelInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("id", &self.id).finish()
    }
}

/// The application's hold on a channel, shared by its
/// [`Channel`](crate::Channel) handles, its consumers and its deliveries.
/// When the last of them goes, the channel is closed: left open, it would keep
/// its number and, on the broker, its unacknowledged deliveries for the life of
/// the connection. The reader and recovery tasks hold the channel's state, not
/// this.
pub(crate) struct ChannelHolder {
    pub(crate) channel: Arc<ChannelInner>,
    /// Keeps the connection open; `None` for recovery's own channels.
    _connection: Option<Arc<Holder>>,
}

impl ChannelHolder {
    pub(crate) fn new(channel: Arc<ChannelInner>, connection: Option<Arc<Holder>>) -> Arc<Self> {
        let holder = Arc::new(Self {
            channel,
            _connection: connection,
        });
        holder.channel.lock().holder = Arc::downgrade(&holder);
        holder
    }
}

impl fmt::Debug for ChannelHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.channel, f)
    }
}

impl Drop for ChannelHolder {
    fn drop(&mut self) {
        // Runs before `_connection` goes: the channel's close precedes the
        // connection's when this was the connection's last handle too.
        self.channel.close_unheld();
    }
}

/// What became of a delivery handed to [`ChannelInner::on_delivery`].
pub(crate) enum Delivered {
    /// Queued; wake the consumer with this waker (if it is not awake).
    Queued(Option<Waker>),
    /// Not made: no such consumer, or the channel has no holder left.
    Dropped,
    /// Refused by a consumer whose stream is gone (and which is being
    /// cancelled). The caller gives it back to the broker when `requeue`, and
    /// drops it outside the channel's lock: it may hold the channel's last
    /// handle.
    Unclaimed { delivery: Delivery, requeue: bool },
}

/// What a publish waits for before it tries again.
enum Wait<'a> {
    /// Room in the outbox.
    Room(Arc<Outbox>),
    /// `channel.flow` with `active` true (or the channel's end).
    Flow(Pin<Box<Notified<'a>>>),
    /// The end of the session whose writer stopped.
    Ended(Link),
}

/// Longest AMQP short string.
const SHORTSTR_MAX: usize = 255;

/// The confirmation for the message being queued now: numbered when the
/// channel is in confirm mode.
fn next_confirmation(confirms: &mut Option<Confirms>) -> Confirmation {
    match confirms {
        Some(confirms) => {
            let (tx, rx) = oneshot::channel();
            confirms.pending.insert(confirms.next, tx);
            confirms.next += 1;
            Confirmation::pending(rx)
        }
        None => Confirmation::not_requested(),
    }
}

pub(crate) fn unexpected(method: &Method, expected: &str) -> Error {
    Error::UnexpectedFrame(format!("{} instead of {expected}", method.name()))
}

impl ChannelState {
    /// Sends `basic.cancel` once for consumer `tag`, whose stream is gone (it
    /// was dropped, or its `basic_consume` call was abandoned). Until the
    /// cancel-ok, which no one awaits, its deliveries are refused by its stream
    /// and given back ([`Delivered::Unclaimed`]). Returns the consumer's sender
    /// when nothing can be sent (recovering, or the writer is gone): the
    /// broker's consumer went with the socket.
    fn cancel_unread(&mut self, id: u16, tag: &str) -> Option<DeliverySender> {
        let tx = self.consumers.get_mut(tag)?;
        if tx.cancelling {
            return None;
        }
        tx.cancelling = true;
        let cancel = Method::BasicCancel(basic::Cancel {
            consumer_tag: tag.into(),
            nowait: false,
        });
        let sent = self.link.as_ref().map(|link| link.send_method(id, cancel));
        if matches!(sent, Some(Ok(Append::Done))) {
            // Queued with its send, as `call` does: replies match calls in order.
            let (reply, _) = oneshot::channel();
            self.rpc.push_back(PendingCall {
                reply,
                consumer: None,
            });
            None
        } else {
            self.consumers.remove(tag)
        }
    }
}

impl ChannelInner {
    pub(crate) fn new(id: u16, conn: Arc<ConnInner>, link: Link) -> Self {
        Self {
            id,
            conn,
            rpc_lock: tokio::sync::Mutex::new(()),
            live_epoch: AtomicU64::new(link.epoch),
            forgotten: AtomicBool::new(false),
            flow: Notify::new(),
            state: Mutex::new(ChannelState {
                link: Some(link),
                ..ChannelState::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn link(&self) -> Result<Link> {
        let st = self.lock();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        st.link.clone().ok_or(Error::Disconnected)
    }

    /// The error to report when the writer went away under a call.
    fn current_error(&self) -> Error {
        self.lock().closed.clone().unwrap_or(Error::Disconnected)
    }

    /// The error to report when `link`'s outbox refused a frame: its writer
    /// stopped, and the session is ending. The reader records why right after
    /// (on the channel when the connection is finished: the broker's close,
    /// the socket error); until it has, the channel does not know.
    async fn ended_error(&self, link: &Link) -> Error {
        link.ended.cancelled().await;
        self.current_error()
    }

    /// Sends a synchronous method and waits for its reply. `via` is the link
    /// of a session being recovered (the channel's own link is unset then).
    pub(crate) async fn call(
        &self,
        method: Method,
        consumer: Option<DeliverySender>,
        via: Option<&Link>,
    ) -> Result<Reply> {
        let _serial = self.rpc_lock.lock().await;
        let (tx, rx) = oneshot::channel();
        let selects_confirms = matches!(method, Method::ConfirmSelect(_));
        let qos = match &method {
            Method::BasicQos(q) => Some((q.global, q.prefetch_count)),
            _ => None,
        };
        let ended = {
            let mut st = self.lock();
            if let Some(e) = &st.closed {
                return Err(e.clone());
            }
            if let (Method::BasicConsume(c), None) = (&method, &consumer) {
                // A consumer restarted by recovery keeps its stream; once that is
                // gone (dropped meanwhile), a restarted consumer would take
                // messages no one reads. Checked under the lock the drop takes.
                if st
                    .consumers
                    .get(&c.consumer_tag)
                    .is_none_or(|tx| tx.cancelling)
                {
                    return Err(Error::ClientClosed);
                }
            }
            let link = match via {
                Some(link) => link,
                None => st.link.as_ref().ok_or(Error::Disconnected)?,
            };
            // Queued before the reply can be read: the reader needs this
            // lock to hand the reply over.
            if link.send_method(self.id, method)? == Append::Closed {
                Some(link.clone())
            } else {
                if selects_confirms {
                    // The broker numbers every publish after confirm.select, even one
                    // queued by another task before select-ok is back: number from here.
                    st.confirms.get_or_insert_with(|| Confirms {
                        next: 1,
                        pending: BTreeMap::new(),
                    });
                    // And recovery selects it again, whether or not select-ok comes back
                    // (the call abandoned, the connection lost): numbered publishes that
                    // the broker does not confirm would wait forever.
                    st.settings.confirm = true;
                }
                // Likewise a prefetch the broker may have applied is re-applied.
                match qos {
                    Some((true, count)) => st.settings.prefetch_global = Some(count),
                    Some((false, count)) => st.settings.prefetch_per_consumer = Some(count),
                    None => {}
                }
                st.rpc.push_back(PendingCall {
                    reply: tx,
                    consumer,
                });
                None
            }
        };
        match ended {
            Some(link) => Err(self.ended_error(&link).await),
            None => rx.await.unwrap_or_else(|_| Err(self.current_error())),
        }
    }

    /// Sends an asynchronous method (ack, nack, reject). With `epoch`, a
    /// method meant for an earlier session is dropped: its delivery tag means
    /// nothing to the new one (the broker has requeued that delivery).
    pub(crate) async fn send(&self, method: Method, epoch: Option<u64>) -> Result<()> {
        match self.send_now(method, epoch)? {
            Some(ended) => Err(self.ended_error(&ended).await),
            None => Ok(()),
        }
    }

    /// [`ChannelInner::send`] without waiting: `Some(link)` when the method was
    /// not sent because that session's writer has stopped.
    pub(crate) fn send_now(&self, method: Method, epoch: Option<u64>) -> Result<Option<Link>> {
        let st = self.lock();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        let link = st.link.as_ref().ok_or(Error::Disconnected)?;
        if epoch.is_some_and(|e| e != link.epoch) {
            debug!(
                channel = self.id,
                "acknowledgement from before recovery dropped"
            );
            return Ok(None);
        }
        match link.send_method(self.id, method)? {
            Append::Done | Append::Full => Ok(None),
            Append::Closed => Ok(Some(link.clone())),
        }
    }

    /// `channel.open` (and, during recovery, on the new session's link).
    pub(crate) async fn open(&self, via: Option<&Link>) -> Result<()> {
        match self.call(channel_open(), None, via).await?.method {
            Method::ChannelOpenOk(_) => Ok(()),
            other => Err(unexpected(&other, "channel.open-ok")),
        }
    }

    pub(crate) async fn qos(
        &self,
        prefetch_count: u16,
        global: bool,
        via: Option<&Link>,
    ) -> Result<()> {
        let method = Method::BasicQos(basic::Qos {
            prefetch_size: 0,
            prefetch_count,
            global,
        });
        match self.call(method, None, via).await?.method {
            Method::BasicQosOk(_) => Ok(()),
            other => Err(unexpected(&other, "basic.qos-ok")),
        }
    }

    pub(crate) async fn confirm_select(&self, via: Option<&Link>) -> Result<()> {
        let method = Method::ConfirmSelect(confirm::Select { nowait: false });
        match self.call(method, None, via).await?.method {
            Method::ConfirmSelectOk(_) => Ok(()),
            other => Err(unexpected(&other, "confirm.select-ok")),
        }
    }

    /// `basic.consume`; the consumer's sender is registered when the
    /// `consume-ok` arrives, before any delivery for it can.
    pub(crate) async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: ConsumeOptions,
        arguments: FieldTable,
        sender: Option<DeliverySender>,
        via: Option<&Link>,
    ) -> Result<String> {
        let method = Method::BasicConsume(basic::Consume {
            queue: queue.into(),
            consumer_tag: consumer_tag.into(),
            no_local: options.no_local,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            nowait: false,
            arguments,
        });
        match self.call(method, sender, via).await?.method {
            Method::BasicConsumeOk(ok) => Ok(ok.consumer_tag),
            other => Err(unexpected(&other, "basic.consume-ok")),
        }
    }

    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<Confirmation> {
        if exchange.len() > SHORTSTR_MAX || routing_key.len() > SHORTSTR_MAX {
            return Err(Error::InvalidArgument(
                "exchange and routing key are limited to 255 bytes".into(),
            ));
        }
        let publish = PublishRef {
            exchange,
            routing_key,
            mandatory: options.mandatory,
            immediate: false,
        };
        let mut epoch = None;
        loop {
            // The message is encoded, queued and numbered under the channel's
            // lock, so the broker sees messages in sequence-number order.
            let wait = {
                let mut guard = self.lock();
                let st = &mut *guard;
                if let Some(e) = &st.closed {
                    return Err(e.clone());
                }
                let link = st.link.as_ref().ok_or(Error::Disconnected)?;
                if *epoch.get_or_insert(link.epoch) != link.epoch {
                    // Recovered while waiting: the caller decides whether to
                    // publish again on the new session.
                    return Err(Error::Disconnected);
                }
                if st.flow_paused {
                    // Registered under the lock that resuming takes.
                    let mut resumed = Box::pin(self.flow.notified());
                    resumed.as_mut().enable();
                    Wait::Flow(resumed)
                } else {
                    let encode = |buf: &mut BytesMut| {
                        encode_publish(buf, self.id, &publish, properties, body, link.frame_max)
                            .map_err(|e| Error::InvalidArgument(e.to_string()))
                    };
                    match link.outbox.append(true, encode)? {
                        Append::Done => return Ok(next_confirmation(&mut st.confirms)),
                        Append::Closed => Wait::Ended(link.clone()),
                        Append::Full => Wait::Room(link.outbox.clone()),
                    }
                }
            };
            match wait {
                Wait::Room(outbox) => outbox.room().await,
                Wait::Flow(resumed) => resumed.await,
                Wait::Ended(link) => return Err(self.ended_error(&link).await),
            }
        }
    }

    /// `channel.flow` from the broker: while it is not `active`, publishes
    /// wait (the channel's other methods do not).
    pub(crate) fn set_flow(&self, active: bool) {
        self.lock().flow_paused = !active;
        if active {
            self.flow.notify_waiters();
        }
    }

    pub(crate) fn set_returns(&self, sender: mpsc::UnboundedSender<ReturnedMessage>) {
        self.lock().returns = Some(sender);
    }

    pub(crate) fn settings(&self) -> ChannelSettings {
        self.lock().settings
    }

    pub(crate) fn is_open(&self) -> bool {
        let st = self.lock();
        st.closed.is_none() && st.link.is_some()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Whether a delivery that came on session `epoch` was left behind by a
    /// lost connection the channel outlived (recovering or recovered): the
    /// broker has requeued it, and an ack for it would be dropped.
    pub(crate) fn is_stale(&self, epoch: u64) -> bool {
        self.live_epoch.load(Ordering::Acquire) != epoch
    }

    /// Whether the connection no longer lists the channel (its number may be
    /// another channel's now).
    pub(crate) fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::Acquire)
    }

    /// The connection removed the channel from its list.
    pub(crate) fn forget(&self) {
        self.forgotten.store(true, Ordering::Release);
    }

    /// Whether the application still holds the channel (a handle, a consumer
    /// or a delivery).
    pub(crate) fn is_held(&self) -> bool {
        self.lock().holder.strong_count() > 0
    }

    /// No handle is left: sends `channel.close` 200 without waiting (the
    /// reader forgets the channel at its close-ok), or forgets the channel at
    /// once when the connection is recovering or gone.
    fn close_unheld(self: &Arc<Self>) {
        let st = self.lock();
        if st.closed.is_some() {
            return;
        }
        let close = channel_close();
        let sent = st
            .link
            .as_ref()
            .map(|link| link.send_method(self.id, close));
        drop(st);
        if !matches!(sent, Some(Ok(Append::Done))) {
            self.conn.channel_closed(self, Error::ClientClosed);
        }
    }

    /// The application dropped consumer `tag`'s stream: cancels the consumer
    /// so that the broker stops delivering to it (see
    /// [`ChannelState::cancel_unread`]).
    pub(crate) fn cancel_dropped(&self, tag: &str) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        let gone = st.cancel_unread(self.id, tag);
        drop(st);
        drop(gone);
        self.conn.forget_consumer(tag);
    }

    // ---- called by the reader task ----

    pub(crate) fn on_reply(&self, reply: Reply) {
        let mut st = self.lock();
        let Some(call) = st.rpc.pop_front() else {
            debug!(
                channel = self.id,
                method = reply.method.name(),
                "reply without a pending call dropped"
            );
            return;
        };
        if let (Method::BasicConsumeOk(ok), Some(sender)) = (&reply.method, call.consumer) {
            st.consumers.insert(ok.consumer_tag.clone(), sender);
        }
        drop(st);
        // The caller may have given up (dropped its future); nothing to do then.
        let _ = call.reply.send(Ok(reply));
    }

    /// The consumer is gone (cancel-ok or a broker cancel): its stream ends.
    pub(crate) fn on_cancelled(&self, tag: &str) {
        self.lock().consumers.remove(tag);
    }

    pub(crate) fn on_confirm(&self, tag: u64, multiple: bool, ack: bool) {
        let done: Vec<oneshot::Sender<Result<()>>> = {
            let mut st = self.lock();
            let Some(confirms) = st.confirms.as_mut() else {
                debug!(
                    channel = self.id,
                    "confirm on a channel not in confirm mode"
                );
                return;
            };
            if multiple {
                let rest = if tag == 0 {
                    BTreeMap::new()
                } else {
                    confirms.pending.split_off(&(tag + 1))
                };
                std::mem::replace(&mut confirms.pending, rest)
                    .into_values()
                    .collect()
            } else {
                confirms.pending.remove(&tag).into_iter().collect()
            }
        };
        for tx in done {
            let _ = tx.send(if ack { Ok(()) } else { Err(Error::Nacked) });
        }
    }

    /// Makes the delivery for `consumer_tag` (lending it the channel's
    /// holder) and queues it for its consumer; the reader wakes the returned
    /// waker once the read is dispatched.
    pub(crate) fn on_delivery(
        &self,
        consumer_tag: &str,
        delivery: impl FnOnce(Arc<ChannelHolder>) -> Delivery,
    ) -> Delivered {
        let mut st = self.lock();
        // One consumer per channel is the common case: skip hashing the tag.
        let tx = match st.consumers.len() {
            1 => st
                .consumers
                .iter()
                .next()
                .filter(|(tag, _)| tag.as_str() == consumer_tag)
                .map(|(_, tx)| tx),
            _ => st.consumers.get(consumer_tag),
        };
        let Some(tx) = tx else {
            debug!(
                channel = self.id,
                "delivery for an unknown consumer dropped"
            );
            return Delivered::Dropped;
        };
        // No holder: the application let go of the channel, which is closing
        // (the broker requeues the delivery).
        let Some(holder) = st.holder.upgrade() else {
            return Delivered::Dropped;
        };
        let requeue = tx.acks;
        let sent = tx.send(Ok(delivery(holder)));
        if matches!(sent, Sent::Refused(_)) {
            // A stream no one reads: a `basic_consume` abandoned after it was
            // sent, or a dropped consumer (cancelled already). Given back while
            // the consumer is still on the broker, the delivery would come
            // straight back.
            drop(st.cancel_unread(self.id, consumer_tag));
        }
        match sent {
            Sent::Queued(waker) => Delivered::Queued(waker),
            Sent::Refused(Ok(delivery)) => Delivered::Unclaimed { delivery, requeue },
            Sent::Refused(Err(_)) => Delivered::Dropped,
        }
    }

    pub(crate) fn on_return(&self, message: ReturnedMessage) {
        let st = self.lock();
        match &st.returns {
            Some(tx) if tx.send(message).is_ok() => {}
            _ => debug!(
                channel = self.id,
                "returned message without a listener dropped"
            ),
        }
    }

    // ---- lifecycle ----

    /// Ends the channel for good: every pending call, confirm and consumer
    /// gets `error` (consumers end quietly when the application closed it).
    pub(crate) fn finish(&self, error: Error) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        st.closed = Some(error.clone());
        st.link = None;
        st.returns = None;
        st.flow_paused = false;
        let rpc = std::mem::take(&mut st.rpc);
        let confirms = st.confirms.take();
        let consumers = std::mem::take(&mut st.consumers);
        drop(st);
        self.flow.notify_waiters();
        for call in rpc {
            let _ = call.reply.send(Err(error.clone()));
        }
        for tx in confirms.into_iter().flat_map(|c| c.pending.into_values()) {
            let _ = tx.send(Err(error.clone()));
        }
        if !matches!(error, Error::ClientClosed) {
            for tx in consumers.into_values() {
                tx.send_now(Err(error.clone()));
            }
        }
    }

    /// The connection was lost and is being recovered: pending calls and
    /// confirms fail, consumers stay (they resume after recovery) but for those
    /// being cancelled (their cancel-ok went with the socket; recovery does not
    /// restart them).
    pub(crate) fn suspend(&self, error: &Error) {
        let mut st = self.lock();
        st.link = None;
        // The channel re-opened on a new socket starts with its flow active.
        st.flow_paused = false;
        self.live_epoch.store(0, Ordering::Release);
        st.consumers.retain(|_, tx| !tx.cancelling);
        let rpc = std::mem::take(&mut st.rpc);
        let pending = st
            .confirms
            .as_mut()
            .map(|c| std::mem::take(&mut c.pending))
            .unwrap_or_default();
        drop(st);
        self.flow.notify_waiters();
        for call in rpc {
            let _ = call.reply.send(Err(error.clone()));
        }
        for tx in pending.into_values() {
            let _ = tx.send(Err(error.clone()));
        }
    }

    /// Recovery re-opened the channel on a new session. False when the
    /// application closed it meanwhile.
    pub(crate) fn resume(&self, link: Link) -> bool {
        let mut st = self.lock();
        if st.closed.is_some() {
            return false;
        }
        self.live_epoch.store(link.epoch, Ordering::Release);
        st.link = Some(link);
        if let Some(confirms) = st.confirms.as_mut() {
            confirms.next = 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::inbox;
    use crate::outbox::Outbox;
    use crate::uri::ConnectionOptions;

    #[test]
    fn a_consumer_cancelled_before_the_connection_was_lost_is_forgotten() {
        let conn = ConnInner::new(ConnectionOptions::default());
        let ch = ChannelInner::new(1, conn, Link::new(Arc::new(Outbox::default()), 1, 0));
        let (sender, receiver) = inbox(true);
        ch.lock().consumers.insert("ctag".into(), sender);
        // Its stream is dropped: basic.cancel goes out, the consumer waits for cancel-ok.
        drop(receiver);
        ch.cancel_dropped("ctag");
        assert!(ch.lock().consumers.contains_key("ctag"));
        // The cancel-ok went with the socket, and recovery does not restart it.
        ch.suspend(&Error::Disconnected);
        assert!(ch.lock().consumers.is_empty());
    }
}
