//! The socket side of a connection: one writer task and one reader task per
//! TCP connection ("session").
//!
//! The writer owns the write half. Channels append their encoded frames to
//! the session's [`Outbox`] (publishers pay for their own frames, and a
//! message costs no queue item or allocation); the writer takes everything
//! appended so far, writes it with one syscall, and sends heartbeats when it
//! has been idle.
//!
//! The reader owns the read half and the frame decoder. It reads 64 KiB at a
//! time and dispatches every complete frame in the buffer before it waits
//! again: replies resolve the channel's pending call, deliveries go to the
//! consumers' inboxes (each consumer is woken once per read, not once per
//! delivery), confirms resolve publishers'
//! [`Confirmation`](crate::Confirmation)s. It never awaits a user, so one
//! slow consumer cannot stall the others. When the socket ends, for whatever
//! reason, it tells the connection, which fails or suspends every pending
//! call.

use std::io;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use lockgate_wire::{
    basic, channel, connection, reply_code, ContentHeader, DeliverOctets, DeliverRef, Frame,
    FrameCodec, Method, WireError, FRAME_OVERHEAD, MAX_SHORTSTR,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{interval, Interval, MissedTickBehavior};
use tokio_util::codec::{Decoder, FramedParts, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::channel_inner::{ChannelInner, Content, Delivered, Reply};
use crate::connection::{ConnInner, CLOSE_TIMEOUT};
use crate::error::{CloseReason, Error, Result};
use crate::message::{Acker, Delivery, Properties, ReturnedMessage};
use crate::outbox::{Append, Outbox};

/// The writer keeps at most this much buffer capacity between batches (one
/// large message must not pin its size for the life of the connection).
const WRITE_BUF_KEEP: usize = 1024 * 1024;

/// The writer's side of a session, as held by channels.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) outbox: Arc<Outbox>,
    /// Which session this is; deliveries remember it so that acks for a
    /// previous session's delivery tags are dropped after recovery.
    pub(crate) epoch: u64,
    /// The session's negotiated frame_max (0 = none): publishers encode
    /// their frames against it.
    pub(crate) frame_max: u32,
    /// Cancelled once the session has ended and the connection has recorded
    /// why (its channels are failed or suspended). A call that finds the
    /// outbox closed waits for it, so that it reports that error (the broker's
    /// close, the socket error) rather than [`Error::Disconnected`].
    pub(crate) ended: CancellationToken,
}

impl Link {
    pub(crate) fn new(outbox: Arc<Outbox>, epoch: u64, frame_max: u32) -> Self {
        Self {
            outbox,
            epoch,
            frame_max,
            ended: CancellationToken::new(),
        }
    }

    /// Queues one method frame (never held back by publishes).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the method does not encode (a
    /// shortstr over 255 bytes); nothing is queued then.
    pub(crate) fn send_method(&self, channel: u16, method: Method) -> Result<Append> {
        let frame = Frame::Method { channel, method };
        let codec = FrameCodec::new(self.frame_max);
        self.outbox.append(false, |buf| {
            codec
                .encode_frame(&frame, buf)
                .map_err(|e| Error::InvalidArgument(e.to_string()))
        })
    }
}

/// A live TCP connection: the link to its writer, and what stops both tasks.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) link: Link,
    pub(crate) stop: CancellationToken,
    /// Why the writer stopped, if it failed first.
    pub(crate) failure: Arc<Mutex<Option<Error>>>,
}

/// Ticks every `period`, or never when there is no period.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn heartbeat_interval(period: Duration) -> Option<Interval> {
    (!period.is_zero()).then(|| {
        let mut i = interval(period);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    })
}

/// Where the frame that octet `at` of `frames` (whole frames, back to back)
/// falls in ends: `at` itself when a frame starts there.
fn frame_end(frames: &[u8], at: usize) -> usize {
    let mut end = 0;
    while end < at {
        let size = frames
            .get(end + 3..end + 7)
            .and_then(|size| <[u8; 4]>::try_from(size).ok())
            .map_or(0, u32::from_be_bytes);
        end += FRAME_OVERHEAD + size as usize;
    }
    end.min(frames.len())
}

/// The writer's last write: `rest` (what is left of the frame it was writing,
/// or what was queued), then the connection's last frame if it owes one (see
/// [`Outbox::finish`]). Bounded: a broker that stopped reading must not keep
/// the task and its socket.
async fn last_write(socket: &mut OwnedWriteHalf, rest: &[u8], last: Option<Method>) -> Result<()> {
    let mut last_frame = BytesMut::new();
    if let Some(method) = last {
        let frame = Frame::Method { channel: 0, method };
        FrameCodec::new(0).encode_frame(&frame, &mut last_frame)?;
    }
    let write = async {
        socket.write_all(rest).await?;
        socket.write_all(&last_frame).await
    };
    match tokio::time::timeout(CLOSE_TIMEOUT, write).await {
        Ok(written) => Ok(written?),
        Err(_) => {
            debug!("the broker did not read the connection's last frames");
            Ok(())
        }
    }
}

/// The writer task: takes whatever the channels appended, writes it, and
/// sends heartbeats when idle.
pub(crate) async fn run_writer(
    mut socket: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    heartbeat: Duration,
    session: Session,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Send a heartbeat when nothing was written for half the interval.
    let mut ticker = heartbeat_interval(heartbeat / 2);
    let mut wrote = true;
    let stop = session.stop.cancelled();
    tokio::pin!(stop);
    let result: Result<()> = async {
        loop {
            if session.stop.is_cancelled() {
                // Write what is already queued, or the connection's last
                // frame, then stop. Closed first: should the peer not read it,
                // publishers waiting for room must not wait on this write.
                outbox.take(&mut buf);
                let last = outbox.close();
                return last_write(&mut socket, &buf, last).await;
            }
            outbox.take(&mut buf);
            if buf.is_empty() {
                tokio::select! {
                    biased;
                    () = &mut stop => continue,
                    () = outbox.ready() => continue,
                    () = tick(&mut ticker) => {
                        if !wrote {
                            trace!("sending heartbeat");
                            FrameCodec::new(0).encode_frame(&Frame::Heartbeat, &mut buf)?;
                        }
                        wrote = false;
                        if buf.is_empty() {
                            continue;
                        }
                    }
                }
            }
            // Raced against the session's end: a peer that stopped reading
            // (declared dead by the reader, or the application closed) would
            // hold this write, and the publishers waiting for room, for as long
            // as TCP keeps retrying. When the connection ends with a last frame
            // (a close-ok, our close), the frame in progress is completed and
            // that frame follows.
            let mut unsent = &buf[..];
            tokio::select! {
                written = socket.write_all_buf(&mut unsent) => written?,
                () = &mut stop => {
                    if let Some(last) = outbox.close() {
                        let at = buf.len() - unsent.len();
                        let rest = &buf[at..frame_end(&buf, at)];
                        return last_write(&mut socket, rest, Some(last)).await;
                    }
                    return Ok(());
                }
            }
            buf.clear();
            if buf.capacity() > WRITE_BUF_KEEP {
                buf = BytesMut::with_capacity(64 * 1024);
            }
            wrote = true;
        }
    }
    .await;
    outbox.close();
    if let Err(e) = result {
        debug!(error = %e, "writer stopped");
        if let Ok(mut failure) = session.failure.lock() {
            failure.get_or_insert(e);
        }
    }
    session.stop.cancel();
}

/// A content-bearing method whose header and body are still arriving.
struct Assembly {
    method: Announced,
    header: Option<ContentHeader>,
    body: Body,
}

/// The method that announced a content.
enum Announced {
    /// A delivery, its names shared with the channel's previous ones.
    Deliver(Deliver),
    /// `basic.return`, `basic.get-ok` (or anything else, dropped).
    Other(Method),
}

/// `basic.deliver`'s arguments, as a [`Delivery`] holds them.
struct Deliver {
    consumer_tag: Arc<str>,
    delivery_tag: u64,
    redelivered: bool,
    exchange: Arc<str>,
    routing_key: Arc<str>,
}

/// The names of a channel's last delivery. A consumer's deliveries share
/// its tag, and usually their exchange and routing key: each is allocated
/// once and shared by every delivery that repeats it.
struct Names {
    consumer_tag: Arc<str>,
    exchange: Arc<str>,
    routing_key: Arc<str>,
}

impl Default for Names {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        Self {
            consumer_tag: empty.clone(),
            exchange: empty.clone(),
            routing_key: empty,
        }
    }
}

impl Names {
    fn deliver(&mut self, d: &DeliverRef<'_>) -> Deliver {
        Deliver {
            consumer_tag: share(&mut self.consumer_tag, d.consumer_tag),
            delivery_tag: d.delivery_tag,
            redelivered: d.redelivered,
            exchange: share(&mut self.exchange, d.exchange),
            routing_key: share(&mut self.routing_key, d.routing_key),
        }
    }

    /// [`Names::deliver`] for names as octets: `None` when one is not UTF-8 (the frame
    /// decoder repairs those).
    fn deliver_octets(&mut self, d: &DeliverOctets<'_>) -> Option<Deliver> {
        Some(Deliver {
            consumer_tag: share_octets(&mut self.consumer_tag, d.consumer_tag)?,
            delivery_tag: d.delivery_tag,
            redelivered: d.redelivered,
            exchange: share_octets(&mut self.exchange, d.exchange)?,
            routing_key: share_octets(&mut self.routing_key, d.routing_key)?,
        })
    }
}

/// `name`, shared with `last` when it is the same.
fn share(last: &mut Arc<str>, name: &str) -> Arc<str> {
    if **last != *name {
        *last = Arc::from(name);
    }
    last.clone()
}

/// [`share`] for a name as octets. Octets equal to `last` are UTF-8 already, so only a new
/// name is checked; `None` when it is not UTF-8.
#[inline]
fn share_octets(last: &mut Arc<str>, name: &[u8]) -> Option<Arc<str>> {
    if last.as_bytes() != name {
        *last = new_name(name)?;
    }
    Some(last.clone())
}

#[cold]
fn new_name(name: &[u8]) -> Option<Arc<str>> {
    std::str::from_utf8(name).ok().map(Arc::from)
}

/// Hands a complete delivery to its consumer; collects the consumer's waker.
fn deliver(
    ch: &Arc<ChannelInner>,
    epoch: u64,
    wakers: &mut Vec<Waker>,
    d: Deliver,
    header: ContentHeader,
    body: Bytes,
) {
    let consumer_tag = d.consumer_tag.clone();
    let delivery = |holder| Delivery {
        consumer_tag: d.consumer_tag,
        delivery_tag: d.delivery_tag,
        redelivered: d.redelivered,
        exchange: d.exchange,
        routing_key: d.routing_key,
        properties: Properties::new(header),
        body,
        acker: Acker { holder, epoch },
    };
    match ch.on_delivery(&consumer_tag, delivery) {
        Delivered::Queued(Some(waker)) => wakers.push(waker),
        Delivered::Queued(None) | Delivered::Dropped => {}
        Delivered::Unclaimed { delivery, requeue } => {
            if requeue {
                delivery.requeue_unseen();
            }
        }
    }
}

/// Takes the content being assembled on channel `id` out of `assemblies`.
fn take_assembly(assemblies: &mut Vec<(u16, Assembly)>, id: u16) -> Option<Assembly> {
    let at = assemblies.iter().position(|(ch, _)| *ch == id)?;
    Some(assemblies.swap_remove(at).1)
}

/// A channel the reader has seen.
struct Slot {
    channel: Arc<ChannelInner>,
    names: Names,
}

/// Body frames received so far: one frame is kept as is (no copy).
enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(b) => b.len(),
            Body::Many(b) => b.len(),
        }
    }

    fn push(&mut self, payload: Bytes) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(payload),
            Body::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + payload.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&payload);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&payload);
                Body::Many(all)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        }
    }
}

/// The reader's buffer: reads fill it up to this much at a time. Bodies are
/// slices of it (never copied), so a chunk is freed once the last delivery
/// read from it is dropped.
const READ_CHUNK: usize = 64 * 1024;
/// Reserve a fresh chunk when less than this is free.
const READ_MIN_FREE: usize = 4 * 1024;

/// A frame that needs a reply and more: the reply is queued before anything
/// after it in the stream is handled, so that (for example)
/// channel.close-ok reaches the writer before the channel's number can be
/// reused.
enum Deferred {
    ConnectionClose(CloseReason),
    Cancel {
        channel: Arc<ChannelInner>,
        id: u16,
        cancel: basic::Cancel,
    },
    ChannelClose {
        channel: Arc<ChannelInner>,
        id: u16,
        reason: CloseReason,
    },
    Flow {
        channel: Arc<ChannelInner>,
        id: u16,
        active: bool,
    },
}

/// State of the reader task.
struct Reader {
    conn: Arc<ConnInner>,
    link: Link,
    epoch: u64,
    /// Consumers to wake once the current read is dispatched.
    wakers: Vec<Waker>,
    /// Channels seen by this reader, indexed by number, so that the
    /// connection's map is locked only on a miss. It grows only to numbers
    /// the connection has opened (at most channel_max).
    channels: Vec<Option<Slot>>,
    /// Content being assembled, per channel: rarely more than one or two
    /// channels at once, so a short list beats a map.
    assemblies: Vec<(u16, Assembly)>,
}

/// The reader task: decodes frames and dispatches them until the socket ends.
///
/// It reads into one buffer and dispatches every complete frame in it before
/// reading again (the stop token and heartbeat timer are polled once per
/// read, not once per frame).
pub(crate) async fn run_reader(
    conn: Arc<ConnInner>,
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    heartbeat: Duration,
    session: Session,
) {
    // Should the task be dropped (its runtime shut down) before it ends the
    // session, the calls waiting for the session's end still return.
    let _ended = session.link.ended.clone().drop_guard();
    let FramedParts {
        io: mut socket,
        read_buf: mut buf,
        mut codec,
        ..
    } = frames.into_parts();
    let mut reader = Reader {
        conn,
        link: session.link.clone(),
        epoch: session.link.epoch,
        wakers: Vec::new(),
        channels: Vec::new(),
        assemblies: Vec::new(),
    };
    let mut ticker = heartbeat_interval(heartbeat);
    let mut seen = true;
    let mut missed = 0;
    let stop = session.stop.cancelled();
    tokio::pin!(stop);
    let error = loop {
        // The handshake may have left frames in the buffer: dispatch first.
        if let Err(e) = reader.dispatch(&mut codec, &mut buf) {
            if let Some(close) = protocol_violation(&e) {
                // As lapin, and RabbitMQ's reader for a client: the broker is
                // told why before the socket goes. Its close-ok is not awaited:
                // the stream may have lost sync.
                warn!(
                    code = close.reply_code,
                    text = %close.reply_text,
                    "closing the connection: the broker broke the protocol"
                );
                reader.link.outbox.finish(Method::ConnectionClose(close));
            }
            break e;
        }
        if buf.capacity() - buf.len() < READ_MIN_FREE {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            () = &mut stop => {
                let failure = session.failure.lock().ok().and_then(|mut f| f.take());
                break failure.unwrap_or(Error::ClientClosed);
            }
            read = socket.read_buf(&mut buf) => match read {
                Ok(0) => {
                    break Error::from(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the broker closed the socket",
                    ))
                }
                Ok(_) => seen = true,
                Err(e) => break Error::from(e),
            },
            () = tick(&mut ticker) => {
                // The broker must send something at least every interval; two
                // silent intervals mean it is gone (the spec's rule).
                missed = if seen { 0 } else { missed + 1 };
                seen = false;
                if missed >= 2 {
                    break Error::HeartbeatTimeout;
                }
            }
        }
    };
    end(&reader.conn, &session, error);
}

/// The `connection.close` that tells the broker how it broke the protocol, when
/// `error` says it did: a frame that does not decode gets the reply code a
/// broker would answer it with (501 FRAME_ERROR mostly: an oversized frame,
/// arguments that do not decode; see [`WireError::reply_code`]), and one that
/// decodes but comes out of order (content without its method, a body longer
/// than announced, a channel-only method on channel 0) gets 505
/// UNEXPECTED_FRAME. None for a bad frame-end octet or an unknown frame type:
/// for those the spec (4.2.3) says to close "without sending any further data".
fn protocol_violation(error: &Error) -> Option<connection::Close> {
    let (reply_code, mut reply_text, (class_id, method_id)) = match error {
        Error::Protocol(e)
            if matches!(
                **e,
                WireError::BadFrameEnd { .. } | WireError::UnknownFrameType { .. }
            ) =>
        {
            return None
        }
        Error::Protocol(e) => (
            e.reply_code(),
            e.to_string(),
            e.method_ids().unwrap_or((0, 0)),
        ),
        Error::UnexpectedFrame(what) => (reply_code::UNEXPECTED_FRAME, what.clone(), (0, 0)),
        _ => return None,
    };
    if reply_text.len() > MAX_SHORTSTR {
        let mut end = MAX_SHORTSTR;
        while !reply_text.is_char_boundary(end) {
            end -= 1;
        }
        reply_text.truncate(end);
    }
    Some(connection::Close {
        reply_code,
        reply_text,
        class_id,
        method_id,
    })
}

/// Ends a session whose reader stopped: stops the writer, has the connection
/// fail or suspend the channels with `error`, then wakes the calls that found
/// the outbox closed meanwhile, to report what the connection recorded.
fn end(conn: &Arc<ConnInner>, session: &Session, error: Error) {
    session.stop.cancel();
    conn.session_ended(session.link.epoch, error);
    session.link.ended.cancel();
}

/// The reader's slot for channel `id`, made on first use (and anew once the
/// connection has forgotten its channel: the number may be another channel's
/// by now); `None` for a channel the connection does not know.
fn slot<'a>(
    channels: &'a mut Vec<Option<Slot>>,
    conn: &ConnInner,
    id: u16,
) -> Option<&'a mut Slot> {
    let at = usize::from(id);
    if !matches!(channels.get(at), Some(Some(slot)) if !slot.channel.is_forgotten()) {
        let channel = conn.channel(id)?;
        if channels.len() <= at {
            channels.resize_with(at + 1, || None);
        }
        channels[at] = Some(Slot {
            channel,
            names: Names::default(),
        });
    }
    channels.get_mut(at).and_then(Option::as_mut)
}

impl Reader {
    fn slot(&mut self, id: u16) -> Option<&mut Slot> {
        slot(&mut self.channels, &self.conn, id)
    }

    fn channel(&mut self, id: u16) -> Option<Arc<ChannelInner>> {
        self.slot(id).map(|slot| slot.channel.clone())
    }

    /// Starts assembling a content announced by `method` on channel `id`.
    fn announce(&mut self, id: u16, method: Announced) {
        let assembly = Assembly {
            method,
            header: None,
            body: Body::Empty,
        };
        match self.assembly(id) {
            Some(old) => *old = assembly,
            None => self.assemblies.push((id, assembly)),
        }
    }

    /// A `basic.deliver` decoded in place (see [`FrameCodec::peek_deliver`]).
    fn on_deliver(&mut self, id: u16, deliver: &DeliverRef<'_>) {
        let Some(slot) = self.slot(id) else {
            debug!(channel = id, "delivery for an unknown channel dropped");
            return;
        };
        let deliver = slot.names.deliver(deliver);
        self.announce(id, Announced::Deliver(deliver));
    }

    /// Takes a delivery whose frames are all in `buf` (see [`FrameCodec::decode_delivery`])
    /// and does what its three frames do one by one: the method replaces any content in
    /// progress on the channel, the body completes it. False when there is none, or it is
    /// left to the frame by frame path: an unknown channel, or a name that is not UTF-8.
    fn take_delivery(&mut self, codec: &FrameCodec, buf: &mut BytesMut) -> bool {
        let Reader {
            conn,
            channels,
            assemblies,
            wakers,
            epoch,
            ..
        } = self;
        // The channel is lent from its slot: no clone beyond the one the delivery keeps.
        let taken = codec.decode_delivery(buf, |id, d| {
            let Slot { channel, names } = slot(channels, conn, id)?;
            Some((&*channel, names.deliver_octets(d)?))
        });
        let Some(((channel, d), frames)) = taken else {
            return false;
        };
        if !assemblies.is_empty() {
            take_assembly(assemblies, frames.channel);
        }
        deliver(channel, *epoch, wakers, d, frames.header, frames.body);
        true
    }

    fn assembly(&mut self, id: u16) -> Option<&mut Assembly> {
        self.assemblies
            .iter_mut()
            .find(|(ch, _)| *ch == id)
            .map(|(_, a)| a)
    }

    /// Queues a reply. When the writer has stopped it is dropped: the reader
    /// goes on with what it read (a channel's close keeps its reason) and
    /// learns why the socket ended at its next wait.
    fn send(&self, channel: u16, method: Method) -> Result<()> {
        self.link.send_method(channel, method).map(drop)
    }

    /// Handles every complete frame in `buf`, then wakes the consumers that
    /// received deliveries.
    fn dispatch(&mut self, codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<()> {
        let result = self.dispatch_frames(codec, buf);
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
        result
    }

    fn dispatch_frames(&mut self, codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<()> {
        loop {
            // Deliveries, the bulk of what a consumer reads, are taken whole
            // when their frames are all there, and otherwise decoded in
            // place: no method value, and their names are shared.
            if self.take_delivery(codec, buf) {
                continue;
            }
            if let Some((id, deliver, len)) = codec.peek_deliver(buf) {
                self.on_deliver(id, &deliver);
                buf.advance(len);
                continue;
            }
            let Some(frame) = codec.decode(buf)? else {
                return Ok(());
            };
            if let Some(deferred) = self.on_frame(frame)? {
                self.on_deferred(deferred)?;
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Option<Deferred>> {
        match frame {
            Frame::Heartbeat => Ok(None),
            Frame::Method { channel: 0, method } => self.on_connection_method(method),
            Frame::Method { channel, method } => self.on_channel_method(channel, method),
            Frame::Header { channel, header } => {
                let assembly = self.assembly(channel).ok_or_else(|| {
                    Error::UnexpectedFrame(format!("content header on channel {channel}"))
                })?;
                if assembly.header.is_some() {
                    return Err(Error::UnexpectedFrame(format!(
                        "second content header on channel {channel}"
                    )));
                }
                let done = header.body_size == 0;
                assembly.header = Some(header);
                if done {
                    self.complete(channel);
                }
                Ok(None)
            }
            Frame::Body { channel, payload } => {
                let assembly = self
                    .assembly(channel)
                    .filter(|a| a.header.is_some())
                    .ok_or_else(|| {
                        Error::UnexpectedFrame(format!("content body on channel {channel}"))
                    })?;
                assembly.body.push(payload);
                let expected = assembly.header.as_ref().map_or(0, |h| h.body_size);
                let have = assembly.body.len() as u64;
                if have > expected {
                    return Err(Error::UnexpectedFrame(format!(
                        "content body longer than announced on channel {channel}"
                    )));
                }
                if have == expected {
                    self.complete(channel);
                }
                Ok(None)
            }
        }
    }

    /// Sends the reply a deferred frame needs, then does what follows it.
    fn on_deferred(&mut self, deferred: Deferred) -> Result<()> {
        match deferred {
            Deferred::ConnectionClose(reason) => {
                // The writer's last frame, after the one it may be writing.
                self.link
                    .outbox
                    .finish(Method::ConnectionCloseOk(connection::CloseOk {}));
                Err(Error::ConnectionClosed(reason))
            }
            Deferred::Cancel {
                channel,
                id,
                cancel,
            } => {
                channel.on_cancelled(&cancel.consumer_tag);
                self.conn.forget_consumer(&cancel.consumer_tag);
                if !cancel.nowait {
                    self.send(
                        id,
                        Method::BasicCancelOk(basic::CancelOk {
                            consumer_tag: cancel.consumer_tag,
                        }),
                    )?;
                }
                Ok(())
            }
            Deferred::ChannelClose {
                channel,
                id,
                reason,
            } => {
                self.send(id, Method::ChannelCloseOk(channel::CloseOk {}))?;
                self.forget(id);
                self.conn
                    .channel_closed(&channel, Error::ChannelClosed(reason));
                Ok(())
            }
            Deferred::Flow {
                channel: ch,
                id,
                active,
            } => {
                // Paused before flow-ok, so that no publish follows it; resumed
                // after it, so that the broker reads flow-ok first.
                if !active {
                    ch.set_flow(false);
                }
                self.send(id, Method::ChannelFlowOk(channel::FlowOk { active }))?;
                if active {
                    ch.set_flow(true);
                }
                Ok(())
            }
        }
    }

    fn on_connection_method(&mut self, method: Method) -> Result<Option<Deferred>> {
        match method {
            Method::ConnectionClose(close) => {
                let reason = crate::connection::close_reason(close);
                info!(code = reason.code, text = %reason.text, "broker closed the connection");
                Ok(Some(Deferred::ConnectionClose(reason)))
            }
            Method::ConnectionCloseOk(_) => Err(Error::ClientClosed),
            Method::ConnectionBlocked(b) => {
                info!(reason = %b.reason, "broker blocked publishing on this connection");
                self.conn.blocked.send_replace(Some(b.reason.to_string()));
                Ok(None)
            }
            Method::ConnectionUnblocked(_) => {
                info!("broker unblocked the connection");
                self.conn.blocked.send_replace(None);
                Ok(None)
            }
            other => Err(Error::UnexpectedFrame(format!(
                "{} on channel 0",
                other.name()
            ))),
        }
    }

    fn on_channel_method(&mut self, id: u16, method: Method) -> Result<Option<Deferred>> {
        let Some(slot) = self.slot(id) else {
            debug!(
                channel = id,
                method = method.name(),
                "frame for an unknown channel dropped"
            );
            return Ok(None);
        };
        if method.has_content() {
            let announced = match method {
                // Not UTF-8 (replaced by the decoder), or otherwise not
                // decodable in place.
                Method::BasicDeliver(d) => Announced::Deliver(slot.names.deliver(&DeliverRef {
                    consumer_tag: &d.consumer_tag,
                    delivery_tag: d.delivery_tag,
                    redelivered: d.redelivered,
                    exchange: &d.exchange,
                    routing_key: &d.routing_key,
                })),
                other => Announced::Other(other),
            };
            self.announce(id, announced);
            return Ok(None);
        }
        let ch = slot.channel.clone();
        match method {
            Method::BasicAck(ack) => ch.on_confirm(ack.delivery_tag, ack.multiple, true),
            Method::BasicNack(nack) => ch.on_confirm(nack.delivery_tag, nack.multiple, false),
            Method::BasicCancel(cancel) => {
                info!(channel = id, consumer_tag = %cancel.consumer_tag, "broker cancelled consumer");
                return Ok(Some(Deferred::Cancel {
                    channel: ch,
                    id,
                    cancel,
                }));
            }
            Method::ChannelClose(close) => {
                let reason = CloseReason {
                    code: close.reply_code,
                    text: close.reply_text,
                    class_id: close.class_id,
                    method_id: close.method_id,
                };
                debug!(channel = id, code = reason.code, text = %reason.text, "broker closed channel");
                return Ok(Some(Deferred::ChannelClose {
                    channel: ch,
                    id,
                    reason,
                }));
            }
            Method::ChannelCloseOk(_) => {
                ch.on_reply(Reply {
                    method,
                    content: None,
                });
                self.forget(id);
                self.conn.channel_closed(&ch, Error::ClientClosed);
            }
            Method::ChannelFlow(flow) => {
                return Ok(Some(Deferred::Flow {
                    channel: ch,
                    id,
                    active: flow.active,
                }));
            }
            Method::BasicCancelOk(ref ok) => {
                ch.on_cancelled(&ok.consumer_tag);
                ch.on_reply(Reply {
                    method,
                    content: None,
                });
            }
            other => ch.on_reply(Reply {
                method: other,
                content: None,
            }),
        }
        Ok(None)
    }

    fn forget(&mut self, id: u16) {
        if let Some(slot) = self.channels.get_mut(usize::from(id)) {
            *slot = None;
        }
        take_assembly(&mut self.assemblies, id);
    }

    /// Hands a complete content-bearing method to its channel.
    fn complete(&mut self, id: u16) {
        let Some(assembly) = take_assembly(&mut self.assemblies, id) else {
            return;
        };
        let (Some(header), Some(ch)) = (assembly.header, self.channel(id)) else {
            return;
        };
        let body = assembly.body.into_bytes();
        match assembly.method {
            Announced::Deliver(d) => {
                deliver(&ch, self.epoch, &mut self.wakers, d, header, body);
            }
            Announced::Other(Method::BasicReturn(r)) => ch.on_return(ReturnedMessage {
                reply_code: r.reply_code,
                reply_text: r.reply_text,
                exchange: r.exchange,
                routing_key: r.routing_key,
                properties: header.into_properties(),
                body,
            }),
            Announced::Other(method @ Method::BasicGetOk(_)) => ch.on_reply(Reply {
                method,
                content: Some(Content { header, body }),
            }),
            Announced::Other(other) => warn!(
                method = other.name(),
                "unexpected content-bearing method dropped"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Status;
    use crate::options::PublishOptions;
    use crate::uri::ConnectionOptions;
    use lockgate_wire::BasicProperties;

    /// A session of `conn` with no socket behind it (the test plays its
    /// reader's part), with channel 1 open on it.
    fn session(conn: &Arc<ConnInner>) -> (Session, Reader, Arc<ChannelInner>) {
        let session = Session {
            link: Link::new(Arc::new(Outbox::default()), 1, 0),
            stop: CancellationToken::new(),
            failure: Arc::default(),
        };
        let ch = Arc::new(ChannelInner::new(1, conn.clone(), session.link.clone()));
        {
            let mut st = conn.lock_state();
            st.session = Some(session.clone());
            st.channels.insert(1, ch.clone());
        }
        let reader = Reader {
            conn: conn.clone(),
            link: session.link.clone(),
            epoch: session.link.epoch,
            wakers: Vec::new(),
            channels: Vec::new(),
            assemblies: Vec::new(),
        };
        (session, reader, ch)
    }

    /// Has `reader` read `method` on `channel`.
    fn read(reader: &mut Reader, channel: u16, method: Method) -> Result<()> {
        let mut codec = FrameCodec::new(0);
        let mut buf = BytesMut::new();
        codec
            .encode_frame(&Frame::Method { channel, method }, &mut buf)
            .expect("encodes");
        reader.dispatch(&mut codec, &mut buf)
    }

    /// A connection (with channel 1) whose reader has just read the broker's
    /// `connection.close` 320 and closed the outbox (only the close-ok owed is
    /// written), but has yet to end the session (see [`end`]): the channel does
    /// not know why yet. Returns the error that ends the session.
    fn closed_by_the_broker() -> (Arc<ConnInner>, Session, Arc<ChannelInner>, Error) {
        let conn = ConnInner::new(ConnectionOptions::default());
        let (session, mut reader, ch) = session(&conn);
        let close = Method::ConnectionClose(connection::Close {
            reply_code: 320,
            reply_text: "CONNECTION_FORCED - shutdown".into(),
            class_id: 0,
            method_id: 0,
        });
        let closed = read(&mut reader, 0, close).expect_err("ends the session");
        (conn, session, ch, closed)
    }

    #[test]
    fn a_channel_close_read_after_the_writer_stopped_keeps_its_reason() {
        let conn = ConnInner::new(ConnectionOptions::default());
        let (session, mut reader, ch) = session(&conn);
        // The writer failed: its close-ok cannot be sent, and the reader learns
        // why the socket ended at its next wait.
        session.link.outbox.close();
        let close = Method::ChannelClose(channel::Close {
            reply_code: 406,
            reply_text: "PRECONDITION_FAILED - unknown delivery tag 7".into(),
            class_id: 60,
            method_id: 80,
        });
        let dispatched = read(&mut reader, 1, close);
        assert!(dispatched.is_ok(), "{dispatched:?}");
        let error = ch.link().expect_err("closed");
        assert!(
            matches!(&error, Error::ChannelClosed(r) if r.code == 406),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn calls_racing_the_brokers_close_report_it() {
        let (conn, session, ch, closed) = closed_by_the_broker();
        let properties = BasicProperties::default();
        let mut publish =
            Box::pin(ch.publish("", "q", PublishOptions::default(), &properties, b"m"));
        let mut call = Box::pin(ch.qos(1, false, None));
        let ack = Method::BasicAck(basic::Ack {
            delivery_tag: 1,
            multiple: false,
        });
        let mut settle = Box::pin(ch.send(ack, None));
        assert!(futures::poll!(&mut publish).is_pending());
        assert!(futures::poll!(&mut call).is_pending());
        assert!(futures::poll!(&mut settle).is_pending());
        end(&conn, &session, closed);
        let errors = [publish.await.map(drop), call.await, settle.await];
        assert!(
            errors
                .iter()
                .all(|e| matches!(e, Err(Error::ConnectionClosed(r)) if r.code == 320)),
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn closing_while_the_broker_closes_reports_the_brokers_close() {
        let (conn, session, _ch, closed) = closed_by_the_broker();
        let mut close = Box::pin(conn.close());
        assert!(futures::poll!(&mut close).is_pending());
        end(&conn, &session, closed);
        let error = close.await.expect_err("closed by the broker");
        assert_eq!(error.reply_code(), Some(320), "{error:?}");
        // And so for everyone else: not taken for a close by the application.
        let status = conn.lock_state().status.clone();
        assert!(
            matches!(&status, Status::Closed(Error::ConnectionClosed(r)) if r.code == 320),
            "{status:?}"
        );
    }
}
