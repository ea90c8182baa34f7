//! The socket side of a connection: one writer task and one reader task per
//! TCP connection ("session").
//!
//! The writer owns the write half. Channels hand it [`Outgoing`] items over a
//! bounded mpsc (the bound is the publishers' backpressure); it encodes every
//! item that is already queued into one buffer and writes it with one syscall,
//! and sends heartbeats when it has been idle. Publishes arrive already
//! encoded (the publisher's task pays for its own frames, and the item stays
//! small).
//!
//! The reader owns the read half and the frame decoder. It reads 64 KiB at a
//! time and dispatches every complete frame in the buffer before it waits
//! again: replies resolve the channel's pending call,
//! deliveries go to the consumer's mpsc, confirms resolve publishers'
//! [`Confirmation`](crate::Confirmation)s. It never awaits a user, so one slow
//! consumer cannot stall the others. When the socket ends, for whatever reason,
//! it tells the connection, which fails or suspends every pending call.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lockgate_wire::{
    basic, channel, connection, encode_body, ContentHeader, Frame, FrameCodec, Method,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{interval, Interval, MissedTickBehavior};
use tokio_util::codec::{Decoder, FramedParts, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::channel_inner::{ChannelInner, Content, Reply};
use crate::connection::ConnInner;
use crate::error::{CloseReason, Error, Result};
use crate::message::{Acker, Delivery, ReturnedMessage};

/// The writer writes once its buffer holds this much, even if more is queued.
const WRITE_BATCH: usize = 256 * 1024;
/// Capacity of the channel-to-writer queue, in items (one item per message).
pub(crate) const WRITER_QUEUE: usize = 4096;

/// One item for the writer task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A method without content.
    Method { channel: u16, method: Method },
    /// A `basic.publish`: its method and header frames, already encoded by
    /// the publisher (with a small body's frames too), and the body when it
    /// was left for the writer to frame. Encoding in the publisher keeps this
    /// item small and lets it borrow the exchange, routing key and
    /// properties instead of copying them into a method and a header.
    /// `frames` stays a `BytesMut`: freezing a buffer with spare capacity
    /// would allocate a shared header just to hand it over.
    Publish {
        channel: u16,
        frames: BytesMut,
        body: Option<Bytes>,
    },
}

/// The writer's side of a session, as held by channels.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) writer: mpsc::Sender<Outgoing>,
    /// Which session this is; deliveries remember it so that acks for a
    /// previous session's delivery tags are dropped after recovery.
    pub(crate) epoch: u64,
    /// The session's negotiated frame_max (0 = none): publishers encode
    /// their frames against it.
    pub(crate) frame_max: u32,
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

/// Encodes one item into `buf`; bodies are split at the codec's frame_max.
pub(crate) fn encode(codec: &FrameCodec, item: Outgoing, buf: &mut BytesMut) -> Result<()> {
    match item {
        Outgoing::Method { channel, method } => {
            codec.encode_frame(&Frame::Method { channel, method }, buf)?;
        }
        Outgoing::Publish {
            channel,
            frames,
            body,
        } => {
            buf.extend_from_slice(&frames);
            if let Some(body) = body {
                encode_body(buf, channel, &body, codec.frame_max())?;
            }
        }
    }
    Ok(())
}

/// The writer task: batches whatever is queued, writes it, flushes once.
pub(crate) async fn run_writer(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    frame_max: u32,
    heartbeat: Duration,
    session: Session,
) {
    let codec = FrameCodec::new(frame_max);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Send a heartbeat when nothing was written for half the interval.
    let mut ticker = heartbeat_interval(heartbeat / 2);
    let mut wrote = true;
    let stop = session.stop.cancelled();
    tokio::pin!(stop);
    let result: Result<()> = async {
        loop {
            tokio::select! {
                biased;
                () = &mut stop => {
                    // Write what is already queued (a close-ok, typically), then stop.
                    while let Ok(item) = queue.try_recv() {
                        encode(&codec, item, &mut buf)?;
                    }
                    if !buf.is_empty() {
                        socket.write_all(&buf).await?;
                    }
                    return Ok(());
                }
                item = queue.recv() => match item {
                    Some(item) => encode(&codec, item, &mut buf)?,
                    None => return Ok(()),
                },
                () = tick(&mut ticker) => {
                    if !wrote {
                        trace!("sending heartbeat");
                        codec.encode_frame(&Frame::Heartbeat, &mut buf)?;
                    }
                    wrote = false;
                    if buf.is_empty() {
                        continue;
                    }
                }
            }
            while buf.len() < WRITE_BATCH {
                match queue.try_recv() {
                    Ok(item) => encode(&codec, item, &mut buf)?,
                    Err(_) => break,
                }
            }
            socket.write_all(&buf).await?;
            buf.clear();
            wrote = true;
        }
    }
    .await;
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
    method: Method,
    header: Option<ContentHeader>,
    body: Body,
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

/// A frame whose handling has to wait for the writer queue: the reply is
/// queued before anything after it in the stream is handled, so that (for
/// example) channel.close-ok reaches the writer before the channel's number
/// can be reused.
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
        id: u16,
        active: bool,
    },
}

/// State of the reader task.
struct Reader {
    conn: Arc<ConnInner>,
    writer: mpsc::Sender<Outgoing>,
    epoch: u64,
    /// Channels seen by this reader, indexed by number, so that the
    /// connection's map is locked only on a miss. It grows only to numbers
    /// the connection has opened (at most channel_max).
    channels: Vec<Option<Arc<ChannelInner>>>,
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
    let FramedParts {
        io: mut socket,
        read_buf: mut buf,
        mut codec,
        ..
    } = frames.into_parts();
    let mut reader = Reader {
        conn,
        writer: session.link.writer.clone(),
        epoch: session.link.epoch,
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
        if let Err(e) = reader.dispatch(&mut codec, &mut buf).await {
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
    session.stop.cancel();
    reader.conn.session_ended(reader.epoch, error);
}

impl Reader {
    fn channel(&mut self, id: u16) -> Option<Arc<ChannelInner>> {
        let at = usize::from(id);
        if let Some(Some(ch)) = self.channels.get(at) {
            return Some(ch.clone());
        }
        let ch = self.conn.channel(id)?;
        if self.channels.len() <= at {
            self.channels.resize(at + 1, None);
        }
        self.channels[at] = Some(ch.clone());
        Some(ch)
    }

    fn assembly(&mut self, id: u16) -> Option<&mut Assembly> {
        self.assemblies
            .iter_mut()
            .find(|(ch, _)| *ch == id)
            .map(|(_, a)| a)
    }

    fn take_assembly(&mut self, id: u16) -> Option<Assembly> {
        let at = self.assemblies.iter().position(|(ch, _)| *ch == id)?;
        Some(self.assemblies.swap_remove(at).1)
    }

    async fn send(&self, channel: u16, method: Method) -> Result<()> {
        self.writer
            .send(Outgoing::Method { channel, method })
            .await
            .map_err(|_| Error::ClientClosed)
    }

    /// Handles every complete frame in `buf`.
    async fn dispatch(&mut self, codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<()> {
        while let Some(frame) = codec.decode(buf)? {
            if let Some(deferred) = self.on_frame(frame)? {
                self.on_deferred(deferred).await?;
            }
        }
        Ok(())
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
    async fn on_deferred(&mut self, deferred: Deferred) -> Result<()> {
        match deferred {
            Deferred::ConnectionClose(reason) => {
                // Best effort: the writer drains this before it stops.
                let _ = self
                    .send(0, Method::ConnectionCloseOk(connection::CloseOk {}))
                    .await;
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
                    )
                    .await?;
                }
                Ok(())
            }
            Deferred::ChannelClose {
                channel,
                id,
                reason,
            } => {
                self.send(id, Method::ChannelCloseOk(channel::CloseOk {}))
                    .await?;
                self.forget(id);
                self.conn
                    .channel_closed(&channel, Error::ChannelClosed(reason));
                Ok(())
            }
            Deferred::Flow { id, active } => {
                self.send(id, Method::ChannelFlowOk(channel::FlowOk { active }))
                    .await
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
                Ok(None)
            }
            Method::ConnectionUnblocked(_) => {
                info!("broker unblocked the connection");
                Ok(None)
            }
            other => Err(Error::UnexpectedFrame(format!(
                "{} on channel 0",
                other.name()
            ))),
        }
    }

    fn on_channel_method(&mut self, id: u16, method: Method) -> Result<Option<Deferred>> {
        let Some(ch) = self.channel(id) else {
            debug!(
                channel = id,
                method = method.name(),
                "frame for an unknown channel dropped"
            );
            return Ok(None);
        };
        if method.has_content() {
            let assembly = Assembly {
                method,
                header: None,
                body: Body::Empty,
            };
            match self.assembly(id) {
                Some(old) => *old = assembly,
                None => self.assemblies.push((id, assembly)),
            }
            return Ok(None);
        }
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
        self.take_assembly(id);
    }

    /// Hands a complete content-bearing method to its channel.
    fn complete(&mut self, id: u16) {
        let Some(assembly) = self.take_assembly(id) else {
            return;
        };
        let (Some(header), Some(ch)) = (assembly.header, self.channel(id)) else {
            return;
        };
        let body = assembly.body.into_bytes();
        match assembly.method {
            Method::BasicDeliver(d) => {
                let delivery = Delivery {
                    consumer_tag: d.consumer_tag,
                    delivery_tag: d.delivery_tag,
                    redelivered: d.redelivered,
                    exchange: d.exchange,
                    routing_key: d.routing_key,
                    properties: header.properties,
                    body,
                    acker: Acker {
                        channel: ch.clone(),
                        epoch: self.epoch,
                    },
                };
                ch.on_delivery(delivery);
            }
            Method::BasicReturn(r) => ch.on_return(ReturnedMessage {
                reply_code: r.reply_code,
                reply_text: r.reply_text,
                exchange: r.exchange,
                routing_key: r.routing_key,
                properties: header.properties,
                body,
            }),
            method @ Method::BasicGetOk(_) => ch.on_reply(Reply {
                method,
                content: Some(Content { header, body }),
            }),
            other => warn!(
                method = other.name(),
                "unexpected content-bearing method dropped"
            ),
        }
    }
}
