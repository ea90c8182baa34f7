//! One client connection: the protocol header, the handshake on channel 0, then the read loop
//! that dispatches frames to channels, sends heartbeats, watches the memory alarm and the
//! shutdown signal.
//!
//! The reader task owns all connection and channel state (no locks); the writer task
//! ([`crate::writer`]) owns the write half. Errors are values ([`AmqpError`]): soft ones close
//! a channel, hard ones send connection.close and end the connection after close-ok.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use lockgate_broker::{Broker, ConnectionId, VHost};
use lockgate_wire::{
    channel as ch, connection as conn, reply_code, Frame, FrameCodec, Method, PublishFrames,
    WireError, PROTOCOL_HEADER,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{self, Instant};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn, Instrument};

mod handshake;
mod liveness;
mod read_size;
#[cfg(test)]
mod tests;

use self::handshake::{bad_header_hint, is_supported_header};
use self::liveness::Liveness;
use self::read_size::{ReadSize, QUIET_TICK, READ_START};
use crate::channel::{not_a_method, Channel, ChannelEvent, ChannelInit};
use crate::config::Config;
use crate::error::{code_name, AmqpError};
use crate::limits::{ConnectionSlot, LimitTable};
use crate::metrics::GlobalCounters;
use crate::permissions::{Access, Permissions, VHostPermissions};
use crate::tune::{self, Tuning};
use crate::writer::{self, Outbound};

/// The error for a content frame on channel 0 (RabbitMQ prints the frame's octets instead).
const CONTENT_ON_CHANNEL_0: &str = "content frame on channel 0";

/// How long a client has from TCP accept to connection.open-ok (RabbitMQ's default).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for connection.close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for the writer to flush, and the peer to close its side, at the end.
const LINGER: Duration = Duration::from_secs(2);
/// A connection whose socket never runs dry (a publisher's burst) goes back to the runtime
/// after this long: the read loop's fast path skips the runtime, and on a busy worker other
/// connections' reads and writes would otherwise wait for the whole burst.
const YIELD_AFTER: Duration = Duration::from_micros(200);

/// What every connection shares: config, broker, shutdown signal, counters.
pub struct ServerContext {
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// The broker.
    pub broker: Arc<Broker>,
    /// Cancelled on SIGINT/SIGTERM.
    pub shutdown: CancellationToken,
    /// Connections that passed the protocol header and have not ended.
    pub open_connections: AtomicUsize,
    /// True while free disk space is below `disk.free_limit`.
    pub disk_alarm: watch::Receiver<bool>,
    /// The data directory's disk figures, which the disk alarm and `/metrics` read.
    pub disk: Arc<crate::disk::DiskProbe>,
    /// Open connections, for the management API.
    pub connections: Arc<crate::management::Registry>,
    /// Permissions per user and vhost.
    pub permissions: Permissions,
    /// Connection and queue limits per vhost and user.
    pub limits: LimitTable,
    /// RabbitMQ's global message counters, for `/metrics`.
    pub counters: Arc<GlobalCounters>,
    next_connection_id: AtomicU64,
}

impl ServerContext {
    /// Context for a server with the given config and broker.
    pub fn new(
        config: Arc<Config>,
        broker: Arc<Broker>,
        shutdown: CancellationToken,
        disk_alarm: watch::Receiver<bool>,
    ) -> Self {
        // Config::validate compiled these already; an error here could only come from a
        // config built without it, and an empty table refuses everyone (fails closed).
        let permissions = Permissions::from_config(&config).unwrap_or_default();
        let limits = LimitTable::from_config(&config);
        let disk = crate::disk::DiskProbe::new(config.data_dir.clone(), broker.store().cloned());
        Self {
            config,
            broker,
            shutdown,
            open_connections: AtomicUsize::new(0),
            disk_alarm,
            disk,
            connections: Arc::default(),
            permissions,
            limits,
            counters: Arc::new(GlobalCounters::default()),
            next_connection_id: AtomicU64::new(1),
        }
    }

    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Keeps [`ServerContext::open_connections`] right however the connection ends.
struct CountGuard<'a>(&'a AtomicUsize);

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Deletes the connection's exclusive queues if its task ends without
/// [`Connection::finish`], which does it on every normal end: a panic unwinding the task
/// would otherwise leave them held (405 to everyone) by a connection that is gone, until a
/// restart. Made before the [`Connection`], so that its channels are dropped (closed) first.
struct ReleaseOnUnwind<'a> {
    broker: &'a Broker,
    id: ConnectionId,
    finished: bool,
}

impl Drop for ReleaseOnUnwind<'_> {
    fn drop(&mut self) {
        if !self.finished {
            error!("connection task ended abnormally: deleting its exclusive queues");
            self.broker.connection_closed(self.id);
        }
    }
}

/// Capabilities the client announced in connection.start-ok.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientCapabilities {
    /// Wants connection.blocked / unblocked.
    pub connection_blocked: bool,
    /// Wants basic.cancel when the broker cancels a consumer.
    pub consumer_cancel_notify: bool,
}

/// How the read loop stopped, which decides how the socket is closed.
enum End {
    /// We received close-ok, the peer closed the socket, or the stream broke: the socket is
    /// ours to close.
    Done,
    /// We sent close-ok: as the spec says (and RabbitMQ does), the client closes the socket,
    /// and we wait for that, bounded, before closing our side.
    PeerCloses,
    /// The peer is gone or unreachable: do not wait for it.
    Abort,
}

/// How many publishes of one pass over the read buffer share a clock reading.
const ARRIVALS_PER_CLOCK_READ: u32 = 16;

/// When the fast-path publishes of one pass over the read buffer arrived (their TTL starts
/// there): the clock is read for the first and then every [`ARRIVALS_PER_CLOCK_READ`]
/// publishes, and again after any frame the general path handled, so that a reading is never
/// older than the handling of that many consecutive publishes, however long the pass takes
/// (publishes routed to many queues). A clock reading per publish showed in profiles.
#[derive(Default)]
struct ArrivalClock {
    reading: Option<std::time::Instant>,
    uses: u32,
}

impl ArrivalClock {
    fn now(&mut self) -> std::time::Instant {
        match self.reading {
            Some(reading) if self.uses < ARRIVALS_PER_CLOCK_READ => {
                self.uses += 1;
                reading
            }
            _ => {
                let reading = std::time::Instant::now();
                self.reading = Some(reading);
                self.uses = 1;
                reading
            }
        }
    }
}

/// One channel number's state.
enum Slot {
    Open(Box<OpenChannel>),
    /// We sent channel.close and ignore everything until channel.close-ok.
    Closing,
    /// Both sides sent channel.close and we answered theirs. The client may still answer ours
    /// (pika does) or may reuse the number straight away: either ends the slot.
    Crossed,
}

/// An open channel and its tracing span, entered while the channel handles a frame so its
/// events carry the channel number (kept apart so entering it borrows only the span).
struct OpenChannel {
    channel: Channel,
    span: tracing::Span,
    serial: u64,
}

/// The open channels by number. Every frame looks its channel up here, and SipHash showed in
/// profiles; a multiplicative hash of the number is enough, as the keys are the client's own
/// (a client choosing colliding numbers only slows its own connection, bounded by channel_max).
type Channels = HashMap<u16, Slot, BuildHasherDefault<ChannelHasher>>;

/// Fibonacci hashing of a channel number (see [`Channels`]).
#[derive(Default)]
struct ChannelHasher(u64);

impl Hasher for ChannelHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u16(u16::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The socket's read side: a TCP half, or one side of a TLS stream.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The socket's write side.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;
type Framed = FramedRead<ReadHalf, FrameCodec>;

/// Serves one accepted TCP connection to the end. Never panics on peer input.
pub async fn serve(ctx: Arc<ServerContext>, stream: TcpStream, peer: SocketAddr, id: u64) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(e) => {
            debug!(error = %e, "connection gone before it was served");
            return;
        }
    };
    let (read_half, write_half) = stream.into_split();
    serve_halves(
        ctx,
        Box::new(read_half),
        Box::new(write_half),
        peer,
        local,
        id,
        false,
    )
    .await;
}

/// Serves one AMQPS connection (TLS handshake done) to the end; `local` is the accepted
/// socket's local address.
pub async fn serve_tls(
    ctx: Arc<ServerContext>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    id: u64,
) {
    let (read_half, write_half) = tokio::io::split(stream);
    serve_halves(
        ctx,
        Box::new(read_half),
        Box::new(write_half),
        peer,
        local,
        id,
        true,
    )
    .await;
}

async fn serve_halves(
    ctx: Arc<ServerContext>,
    mut read_half: ReadHalf,
    mut write_half: WriteHalf,
    peer: SocketAddr,
    local: SocketAddr,
    id: u64,
    tls: bool,
) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;

    let mut header = [0u8; 8];
    let read = tokio::select! {
        () = ctx.shutdown.cancelled() => return,
        read = time::timeout_at(deadline, read_half.read_exact(&mut header)) => read,
    };
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "connection closed before the protocol header");
            return;
        }
        Err(_) => {
            info!("handshake timeout: no protocol header");
            return;
        }
    }
    if !is_supported_header(&header) {
        // As the spec says: answer with the header we speak and close.
        info!(
            header = ?Bytes::copy_from_slice(&header),
            hint = bad_header_hint(&header),
            "client did not start with the AMQP 0-9-1 protocol header, closing"
        );
        let _ = write_half.write_all(&PROTOCOL_HEADER).await;
        let _ = write_half.shutdown().await;
        return;
    }

    ctx.open_connections.fetch_add(1, Ordering::Relaxed);
    let _count = CountGuard(&ctx.open_connections);
    info!("connection accepted");

    let frame_max = ctx.config.limits.frame_max;
    let (out, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer::run(write_half, rx, frame_max).in_current_span());
    // Until tune-ok, frames are held to the spec's minimum frame_max, as RabbitMQ does: a peer
    // that has not logged in cannot make us reserve the configured frame_max (or, with 0,
    // more) for a frame it declares.
    let framed = FramedRead::with_capacity(read_half, FrameCodec::default(), READ_START);

    let mut release = ReleaseOnUnwind {
        broker: &ctx.broker,
        id: ConnectionId(id),
        finished: false,
    };
    let mut connection = Connection::new(
        ctx.clone(),
        ConnectionId(id),
        peer,
        local,
        tls,
        framed,
        out,
        writer,
    );
    let end = match connection.handshake(deadline).await {
        Ok(()) => connection.run().await,
        Err(end) => end,
    };
    connection.finish(end).await;
    release.finished = true;
}

struct Connection {
    ctx: Arc<ServerContext>,
    id: ConnectionId,
    peer: SocketAddr,
    /// The accepted socket's local address (the "LOCAL" of the connection's name).
    local: SocketAddr,
    /// Accepted on the AMQPS listener.
    tls: bool,
    out: UnboundedSender<Outbound>,
    framed: Framed,
    /// Whether the read buffer is the quiet or the busy size.
    read_size: ReadSize,
    writer: JoinHandle<std::io::Result<WriteHalf>>,
    tuning: Tuning,
    capabilities: ClientCapabilities,
    vhost: Option<Arc<VHost>>,
    user: Arc<str>,
    channels: Channels,
    /// Set once we sent connection.close: the deadline for close-ok.
    closing: Option<Instant>,
    /// Publishers are not read: the memory or the disk alarm is on.
    memory_blocked: bool,
    memory_alarm: bool,
    disk_alarm: bool,
    blocked_sent: bool,
    /// A frame that publishes (see [`publishes`]), read while an alarm is on, processed once it
    /// clears.
    held: Option<Frame>,
    /// A queue with overflow `block` this connection's last publish filled: nothing more
    /// is read until it has room (the receiver turns true).
    room_wait: Option<watch::Receiver<bool>>,
    /// Requests from the broker side of this connection's channels (consumer timeouts).
    /// Made with the first channel: a connection without channels has no consumer to time out,
    /// and the queue's first block of slots is allocated with it.
    events: Option<(
        UnboundedSender<ChannelEvent>,
        mpsc::UnboundedReceiver<ChannelEvent>,
    )>,
    /// Serial of the next channel opened, so that a late event for a closed channel does
    /// not hit a new one with the same number.
    next_serial: u64,
    /// Channels with publisher confirms not sent yet (flushed when the read buffer runs dry).
    confirms_dirty: Vec<u16>,
    /// The oldest store commit ticket a confirm waits for: the read loop also wakes when the
    /// store's flushes reach it, without ever blocking the reading of frames.
    confirm_wait: Option<u64>,
    /// The user's permissions in the vhost, set at connection.open.
    permissions: Option<Arc<VHostPermissions>>,
    /// Slots under the vhost's and user's connection limits, freed when the connection ends.
    _limits_slot: Option<ConnectionSlot>,
    /// Listed by the management API from open-ok on; closable from there.
    registration: Option<crate::management::Registration>,
}

impl Connection {
    /// A connection before its handshake: no vhost, no user, no channels yet.
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: Arc<ServerContext>,
        id: ConnectionId,
        peer: SocketAddr,
        local: SocketAddr,
        tls: bool,
        framed: Framed,
        out: UnboundedSender<Outbound>,
        writer: JoinHandle<std::io::Result<WriteHalf>>,
    ) -> Self {
        Self {
            tuning: tune::proposal(&ctx.config.limits),
            ctx,
            id,
            peer,
            local,
            tls,
            out,
            framed,
            read_size: ReadSize::default(),
            writer,
            capabilities: ClientCapabilities::default(),
            vhost: None,
            user: Arc::from(""),
            channels: Channels::default(),
            closing: None,
            memory_blocked: false,
            memory_alarm: false,
            disk_alarm: false,
            blocked_sent: false,
            held: None,
            room_wait: None,
            events: None,
            next_serial: 0,
            confirms_dirty: Vec::new(),
            confirm_wait: None,
            permissions: None,
            _limits_slot: None,
            registration: None,
        }
    }
}

impl Connection {
    fn send(&self, msg: Outbound) {
        // A send fails only once the writer has stopped; the read loop notices that itself.
        let _ = self.out.send(msg);
    }

    fn send_method(&self, channel: u16, method: impl Into<Method>) {
        self.send(Outbound::method(channel, method));
    }

    /// Sends connection.close and enters the closing state.
    fn close_with(&mut self, error: AmqpError) -> End {
        // Client-caused (or shutdown): info, not warn or error; nothing for an operator to do.
        info!(code = error.code, text = %error.text, "closing connection");
        self.send_method(
            0,
            conn::Close {
                reply_code: error.code,
                reply_text: error.text,
                class_id: error.class_id,
                method_id: error.method_id,
            },
        );
        self.closing = Some(Instant::now() + CLOSE_TIMEOUT);
        End::Done
    }

    fn close_on_wire_error(&mut self, error: &WireError) -> End {
        if let WireError::Io(error) = error {
            // The socket failed, or the client closed it mid-frame: nobody is left to tell why.
            info!(%error, "client connection lost");
            return End::Done;
        }
        let code = error.reply_code();
        let mut close = AmqpError::new(code, format!("{} - {error}", code_name(code)));
        if let Some((class_id, method_id)) = error.method_ids() {
            close = close.on(class_id, method_id);
        }
        self.close_all_channels();
        self.close_with(close);
        // The stream is out of sync: nothing more can be decoded, so do not wait for close-ok.
        self.closing = None;
        End::Done
    }

    /// The main loop after the handshake.
    async fn run(&mut self) -> End {
        let heartbeat = Duration::from_secs(u64::from(self.tuning.heartbeat));
        // With heartbeats off the ticker only shrinks a large read buffer, and runs only while
        // there is one (see `read_size`). With them on it sends ours every half interval, as
        // RabbitMQ does: clients allow little slack past the interval (pika 5 s).
        let period = if heartbeat.is_zero() {
            QUIET_TICK
        } else {
            heartbeat / 2
        };
        let mut ticker = time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        // Heartbeats off: whether the ticker runs, i.e. the read buffer was large when the
        // loop last ran dry.
        let mut quiet_tick = false;
        let mut liveness = Liveness::default();
        let mut memory: watch::Receiver<bool> = self.ctx.broker.memory_watch();
        let mut memory_open = true;
        let mut disk = self.ctx.disk_alarm.clone();
        let mut disk_open = true;
        let store = self.ctx.broker.store().cloned();
        // The connection's own token: cancelled on shutdown or by the management API.
        let shutdown = self
            .registration
            .as_ref()
            .map_or_else(|| self.ctx.shutdown.clone(), |r| r.close_token());
        let mut shutdown_sent = false;
        self.memory_alarm = *memory.borrow_and_update();
        self.disk_alarm = *disk.borrow_and_update();
        self.memory_blocked = self.memory_alarm || self.disk_alarm;
        // Start of the current run of fast-path reads: reset whenever the loop gets to the
        // select below (see [`YIELD_AFTER`]).
        let mut busy_since = Instant::now();

        loop {
            if let Some(deadline) = self.closing {
                if Instant::now() >= deadline {
                    debug!("no connection.close-ok before the timeout");
                    return End::Done;
                }
            }
            if !shutdown_sent && shutdown.is_cancelled() {
                shutdown_sent = true;
                self.force_close();
            }
            if memory_open && memory.has_changed().unwrap_or(false) {
                self.memory_alarm = *memory.borrow_and_update();
                self.on_alarm();
            }
            if self.closing.is_some() {
                // Only close-ok matters now: a publish held by the alarm would be ignored
                // anyway, and holding it would stop us reading the close-ok. The same for a
                // full queue's backpressure.
                self.held = None;
                self.room_wait = None;
            }
            if let Some(frame) = self.held.take_if(|_| !self.memory_blocked) {
                if let Err(end) = self.on_frame(frame) {
                    return end;
                }
                continue;
            }
            // Fast path: handle every frame already read, then whatever is readable now,
            // without going through select.
            if self.held.is_none() && self.room_wait.is_none() {
                match self.on_buffered(&mut liveness, memory_open.then_some(&memory)) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(end) => return end,
                }
                if let Some(next) = self.framed.next().now_or_never() {
                    liveness.received();
                    match self.on_read(next) {
                        Ok(()) => {
                            // The peer keeps the socket full (a publisher's burst): after
                            // [`YIELD_AFTER`] without a break, let this worker poll the
                            // socket events and run the other connections' tasks (a
                            // consumer's acks, its writer) instead of only this one for
                            // milliseconds.
                            if busy_since.elapsed() < YIELD_AFTER {
                                continue;
                            }
                            tokio::task::yield_now().await;
                            // On to the confirms, heartbeats and channel events below: a
                            // socket that never runs dry must not hold them back.
                        }
                        Err(end) => return end,
                    }
                }
            }
            // Nothing more to read right now, or reading for YIELD_AFTER: confirm everything
            // published so far in one go.
            self.flush_confirms();
            busy_since = Instant::now();

            let tick = if heartbeat.is_zero() {
                let large = self.read_size.is_large(self.framed.read_buffer());
                if large && !quiet_tick {
                    // A whole period from now: the deadline it had passed long ago if the
                    // connection was quiet, and a burst read in one go would be shrunk as
                    // soon as it is handled.
                    ticker.reset();
                }
                quiet_tick = large;
                large
            } else {
                true
            };
            let closing_deadline = self.closing.unwrap_or_else(|| Instant::now() + period);
            let read_enabled = self.held.is_none() && self.room_wait.is_none();
            let confirm_wait = self.confirm_wait;
            let room_wait = &mut self.room_wait;
            let room = async {
                match room_wait {
                    Some(rx) => {
                        let _ = rx.wait_for(|room| *room).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let durable = async {
                match (&store, confirm_wait) {
                    (Some(store), Some(ticket)) => store.wait_durable(ticket).await,
                    _ => std::future::pending().await,
                }
            };
            let events = &mut self.events;
            let event = async {
                match events {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !shutdown_sent => {
                    shutdown_sent = true;
                    self.force_close();
                }
                result = &mut self.writer => {
                    match result {
                        Ok(Err(e)) => debug!(error = %e, "write failed, connection lost"),
                        Ok(Ok(_)) => debug!("writer stopped"),
                        Err(e) => warn!(error = %e, "writer task failed"),
                    }
                    return End::Abort;
                }
                changed = memory.changed(), if memory_open => {
                    if changed.is_ok() {
                        self.memory_alarm = *memory.borrow_and_update();
                        self.on_alarm();
                    } else {
                        memory_open = false;
                    }
                }
                changed = disk.changed(), if disk_open => {
                    if changed.is_ok() {
                        self.disk_alarm = *disk.borrow_and_update();
                        self.on_alarm();
                    } else {
                        disk_open = false;
                    }
                }
                flushed = durable, if confirm_wait.is_some() => {
                    if let Err(e) = flushed {
                        error!(error = %e, "store failed: nacking unconfirmed publishes");
                        self.nack_unconfirmed();
                        return self.close_with(AmqpError::internal_error(
                            "INTERNAL_ERROR - the message store failed",
                        ));
                    }
                }
                _ = ticker.tick(), if tick => {
                    if !heartbeat.is_zero() {
                        if self.held.is_some() || self.room_wait.is_some() {
                            // We are not reading, so the peer's heartbeats sit unread: as
                            // RabbitMQ pauses its heartbeat monitor while a connection is
                            // blocked.
                            liveness.received();
                        }
                        if liveness.tick(self.framed.read_buffer().len()) {
                            let timeout_secs = heartbeat.as_secs() * 2;
                            info!(timeout_secs, "missed heartbeats from client, closing");
                            return End::Abort;
                        }
                        self.send(Outbound::Frame(Box::new(Frame::Heartbeat)));
                    }
                    self.read_size.on_tick(self.framed.read_buffer_mut());
                }
                () = time::sleep_until(closing_deadline), if self.closing.is_some() => {}
                () = room => self.on_queue_room(),
                Some(event) = event => self.on_channel_event(event),
                next = self.framed.next(), if read_enabled => {
                    liveness.received();
                    if let Err(end) = self.on_read(next) {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles the complete frames already in the read buffer, in a plain loop. Stops after
    /// a frame that changes what the loop's checks decide (a publish held by an alarm, a
    /// publish that filled a queue with overflow `block`, a close) and when the memory alarm
    /// changes, so that no frame after it is handled before those checks. Returns whether
    /// it handled a frame.
    fn on_buffered(
        &mut self,
        liveness: &mut Liveness,
        memory: Option<&watch::Receiver<bool>>,
    ) -> Result<bool, End> {
        let mut buffer = std::mem::take(self.framed.read_buffer_mut());
        let result = self.on_frames_in(&mut buffer, liveness, memory);
        *self.framed.read_buffer_mut() = buffer;
        result
    }

    fn on_frames_in(
        &mut self,
        buffer: &mut BytesMut,
        liveness: &mut Liveness,
        memory: Option<&watch::Receiver<bool>>,
    ) -> Result<bool, End> {
        let closing = self.closing.is_some();
        let mut handled = false;
        let mut arrivals = ArrivalClock::default();
        loop {
            if !self.on_publish_frames(buffer, &mut arrivals) {
                let next = match self.framed.decoder_mut().decode(buffer) {
                    Ok(None) => {
                        self.read_size.on_incomplete_frame(buffer);
                        return Ok(handled);
                    }
                    Ok(Some(frame)) => Ok(frame),
                    Err(e) => Err(e),
                };
                self.on_read(Some(next))?;
                // The general path may take long (a purge, an ack of many): publishes after
                // it read the clock again.
                arrivals = ArrivalClock::default();
            }
            handled = true;
            liveness.received();
            if self.held.is_some()
                || self.room_wait.is_some()
                || self.closing.is_some() != closing
                || memory.is_some_and(|m| m.has_changed().unwrap_or(false))
            {
                return Ok(true);
            }
        }
    }

    /// The read loop's fast path: a basic.publish with its header and whole body at the head
    /// of `buffer`, for an open channel, handled in one step (see
    /// [`FrameCodec::decode_publish`] and [`Channel::on_publish_frames`]) with the outcome the
    /// three frames have one by one. Returns false, having taken nothing, for anything else:
    /// while publishers are blocked by an alarm or the connection is closing, when the frames
    /// are not all there or not such a publish, or when the channel is not open.
    fn on_publish_frames(&mut self, buffer: &mut BytesMut, arrivals: &mut ArrivalClock) -> bool {
        if self.memory_blocked || self.closing.is_some() {
            return false;
        }
        // Channel 0 is never among `channels`: its frames go to the connection.
        let channels = &mut self.channels;
        let Some((open, frames)) = self.framed.decoder().decode_publish(buffer, |number| {
            match channels.get_mut(&number) {
                Some(Slot::Open(open)) => Some(open),
                _ => None,
            }
        }) else {
            return false;
        };
        let PublishFrames {
            channel: number,
            head,
            body,
        } = frames;
        let received_at = arrivals.now();
        trace!(
            channel = number,
            exchange = %head.exchange(),
            routing_key = %head.routing_key(),
            mandatory = head.mandatory(),
            size = body.len(),
            "recv publish"
        );
        let OpenChannel { channel, span, .. } = &mut **open;
        let (result, pending_confirms, blocked) = {
            // As for the publish's frames one by one (see `on_channel_frame`).
            let _entered = tracing::enabled!(tracing::Level::DEBUG).then(|| span.enter());
            let result = channel.on_publish_frames(&head, body, received_at);
            (
                result,
                channel.has_pending_confirms(),
                channel.take_blocked(),
            )
        };
        match result {
            // The usual outcome, with nothing for `after_channel` to do.
            Ok(()) if !pending_confirms && blocked.is_none() => {}
            result => {
                if let Err(error) =
                    self.after_channel(number, Some(result), pending_confirms, blocked)
                {
                    self.close_all_channels();
                    self.close_with(error);
                }
            }
        }
        true
    }

    fn on_read(&mut self, next: Option<Result<Frame, WireError>>) -> Result<(), End> {
        match next {
            None => {
                if self.closing.is_some() {
                    debug!("client closed the socket after connection.close");
                } else {
                    info!("client closed the TCP connection unexpectedly");
                }
                Err(End::Done)
            }
            Some(Err(e)) => {
                if self.closing.is_some() {
                    return Err(End::Done);
                }
                match e {
                    // A whole header frame was read: the stream is still in step, and the
                    // error depends on what its channel expected.
                    WireError::BadContentClass { channel, class_id } => {
                        self.on_bad_header(channel, Some(class_id));
                        Ok(())
                    }
                    WireError::BadContentWeight { channel, .. } => {
                        self.on_bad_header(channel, None);
                        Ok(())
                    }
                    e => Err(self.close_on_wire_error(&e)),
                }
            }
            Some(Ok(frame)) => {
                if self.memory_blocked && self.closing.is_none() && publishes(&frame) {
                    self.block_publisher(frame);
                    return Ok(());
                }
                self.on_frame(frame)
            }
        }
    }

    /// The memory or disk alarm changed. As RabbitMQ (`rabbit_reader:publish_received`),
    /// nothing is sent when one goes on: a connection is blocked, and told so, only once it
    /// publishes; it is unblocked when both are off.
    fn on_alarm(&mut self) {
        let blocked = self.memory_alarm || self.disk_alarm;
        self.memory_blocked = blocked;
        if !blocked && self.blocked_sent && self.room_wait.is_none() {
            self.blocked_sent = false;
            if self.closing.is_none() {
                self.send_method(0, conn::Unblocked {});
            }
        }
    }

    /// The full queue (overflow `block`) has room again: resume reading, and tell the
    /// client unless an alarm still blocks it.
    fn on_queue_room(&mut self) {
        debug!("queue has room: resuming publisher");
        self.room_wait = None;
        if !self.memory_blocked && self.blocked_sent {
            self.blocked_sent = false;
            if self.closing.is_none() {
                self.send_method(0, conn::Unblocked {});
            }
        }
    }

    /// A publish filled a queue with overflow `block`: stop reading from this client until
    /// it has room, telling clients that understand connection.blocked.
    fn block_on_queue(&mut self, queue: &lockgate_broker::Queue) {
        let room = queue.room();
        if *room.borrow() {
            return;
        }
        debug!(
            queue = queue.name(),
            "queue full (overflow block): blocking publisher"
        );
        self.room_wait = Some(room);
        if self.capabilities.connection_blocked && !self.blocked_sent {
            self.blocked_sent = true;
            self.send_method(
                0,
                conn::Blocked {
                    reason: format!("queue '{}' is full", queue.name()),
                },
            );
        }
    }

    fn on_channel_event(&mut self, event: ChannelEvent) {
        match event {
            ChannelEvent::ConsumerTimeout {
                number,
                serial,
                text,
            } => {
                let current = matches!(
                    self.channels.get(&number),
                    Some(Slot::Open(open)) if open.serial == serial
                );
                if current && self.closing.is_none() {
                    self.close_channel(number, AmqpError::precondition_failed(text));
                }
            }
        }
    }

    /// Holds a frame that publishes (see [`publishes`]) read while the alarm is on: nothing more
    /// is read until it clears.
    fn block_publisher(&mut self, frame: Frame) {
        debug!(
            memory = self.memory_alarm,
            disk = self.disk_alarm,
            "alarm: blocking publisher"
        );
        self.held = Some(frame);
        if self.capabilities.connection_blocked && !self.blocked_sent {
            self.blocked_sent = true;
            self.send_method(
                0,
                conn::Blocked {
                    reason: if self.memory_alarm {
                        "low on memory"
                    } else {
                        "low on disk"
                    }
                    .to_owned(),
                },
            );
        }
    }

    /// SIGINT/SIGTERM: RabbitMQ's wording for a node shutting down.
    fn force_close(&mut self) {
        if self.closing.is_none() {
            self.close_all_channels();
            let text = match self.registration.as_ref().and_then(|r| r.close_reason()) {
                Some(reason) => format!("CONNECTION_FORCED - {reason}"),
                None => {
                    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                        .to_owned()
                }
            };
            self.close_with(AmqpError::new(reply_code::CONNECTION_FORCED, text));
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        trace!(?frame, "recv");
        if self.closing.is_some() {
            return match frame {
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_),
                } => Err(End::Done),
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_),
                } => {
                    self.send_method(0, conn::CloseOk {});
                    Err(End::PeerCloses)
                }
                _ => Ok(()),
            };
        }
        let result = match frame {
            Frame::Heartbeat => Ok(()),
            Frame::Method {
                channel: 0,
                method: Method::ConnectionClose(close),
            } => {
                info!(
                    code = close.reply_code,
                    text = %close.reply_text,
                    "client closed the connection"
                );
                // As rabbit_reader: channels closed and exclusive queues deleted before
                // close-ok, so a client that reconnects finds them gone.
                self.release_broker_state();
                self.send_method(0, conn::CloseOk {});
                return Err(End::PeerCloses);
            }
            Frame::Method { channel: 0, method } => self.on_connection_method(method),
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => {
                Err(AmqpError::unexpected_frame(CONTENT_ON_CHANNEL_0))
            }
            frame => self.on_channel_frame(frame),
        };
        if let Err(error) = result {
            // A hard error: close every channel now, then wait for close-ok.
            self.close_all_channels();
            self.close_with(error);
        }
        Ok(())
    }

    /// A header frame the decoder refused for its class (`Some`) or weight (`None`) on
    /// channel `number`: a hard error, in the words of what the channel expected (those of
    /// a header a channel never opened or channel 0 gets, otherwise the channel's own).
    fn on_bad_header(&mut self, number: u16, class_id: Option<u16>) {
        let error = match self.channels.get(&number) {
            _ if number == 0 => AmqpError::unexpected_frame(CONTENT_ON_CHANNEL_0),
            None => not_a_method(),
            // What a closing channel gets is dropped, as any frame to it.
            Some(Slot::Closing | Slot::Crossed) => return,
            Some(Slot::Open(open)) => open.channel.on_bad_header(class_id),
        };
        self.close_all_channels();
        self.close_with(error);
    }

    fn on_connection_method(&mut self, method: Method) -> Result<(), AmqpError> {
        match method {
            Method::ConnectionUpdateSecret(update) => {
                debug!(reason = %update.reason, "update-secret");
                self.send_method(0, conn::UpdateSecretOk {});
                Ok(())
            }
            Method::ConnectionCloseOk(_) => Ok(()),
            other => Err(
                AmqpError::channel_error("unexpected method in connection state running")
                    .on(other.class_id(), other.method_id()),
            ),
        }
    }

    fn on_channel_frame(&mut self, frame: Frame) -> Result<(), AmqpError> {
        let number = match &frame {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => return Ok(()),
        };
        match self.channels.get_mut(&number) {
            None => match frame {
                Frame::Method {
                    method: Method::ChannelOpen(_),
                    ..
                } => self.open_channel(number),
                Frame::Method { method, .. } => {
                    Err(AmqpError::channel_error("expected 'channel.open'")
                        .on(method.class_id(), method.method_id()))
                }
                // RabbitMQ's words: a channel never opened expects a method.
                _ => Err(not_a_method()),
            },
            Some(slot @ (Slot::Closing | Slot::Crossed)) => {
                if let Frame::Method { method, .. } = frame {
                    match method {
                        Method::ChannelCloseOk(_) => {
                            self.channels.remove(&number);
                        }
                        Method::ChannelClose(_) => {
                            // Our close crossed theirs: their close-ok to ours may follow,
                            // and must not find the number unknown (a 504 for the whole
                            // connection), as in RabbitMQ.
                            *slot = Slot::Crossed;
                            self.send_method(number, ch::CloseOk {});
                        }
                        Method::ChannelOpen(_) if matches!(slot, Slot::Crossed) => {
                            self.channels.remove(&number);
                            return self.open_channel(number);
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Some(Slot::Open(open)) => {
                let OpenChannel { channel, span, .. } = &mut **open;
                // Entering the span for each publish and ack costs more than handling it, and
                // their own events are debug or trace: it is entered for them when those show.
                let hot = matches!(
                    frame,
                    Frame::Header { .. }
                        | Frame::Body { .. }
                        | Frame::Method {
                            method: Method::BasicPublish(_) | Method::BasicAck(_),
                            ..
                        }
                );
                let (result, pending_confirms, blocked) = {
                    let _entered =
                        (!hot || tracing::enabled!(tracing::Level::DEBUG)).then(|| span.enter());
                    let result = match frame {
                        Frame::Method {
                            method: Method::ChannelOpen(_),
                            ..
                        } => Some(Err(
                            AmqpError::channel_error("second 'channel.open' seen").on(20, 10)
                        )),
                        Frame::Method {
                            method: Method::ChannelClose(close),
                            ..
                        } => {
                            debug!(
                                code = close.reply_code,
                                text = %close.reply_text,
                                "client closed the channel"
                            );
                            channel.flush_confirms();
                            channel.close();
                            None
                        }
                        Frame::Method {
                            method: Method::ChannelCloseOk(_),
                            ..
                        }
                        | Frame::Heartbeat => Some(Ok(())),
                        Frame::Method { method, .. } => Some(channel.on_method(method)),
                        Frame::Header { header, .. } => Some(channel.on_header(header)),
                        Frame::Body { payload, .. } => Some(channel.on_body(payload)),
                    };
                    (
                        result,
                        channel.has_pending_confirms(),
                        channel.take_blocked(),
                    )
                };
                self.after_channel(number, result, pending_confirms, blocked)
            }
        }
    }

    /// What follows a frame an open channel handled: `result` is `None` when the client
    /// closed the channel, and a soft error closes it; a hard error is returned.
    fn after_channel(
        &mut self,
        number: u16,
        result: Option<Result<(), AmqpError>>,
        pending_confirms: bool,
        blocked: Option<Arc<lockgate_broker::Queue>>,
    ) -> Result<(), AmqpError> {
        if let Some(queue) = blocked {
            self.block_on_queue(&queue);
        }
        let Some(result) = result else {
            self.channels.remove(&number);
            self.send_method(number, ch::CloseOk {});
            return Ok(());
        };
        if pending_confirms && !self.confirms_dirty.contains(&number) {
            self.confirms_dirty.push(number);
        }
        match result {
            Err(error) if !error.is_hard() => {
                self.close_channel(number, error);
                Ok(())
            }
            other => other,
        }
    }

    fn open_channel(&mut self, number: u16) -> Result<(), AmqpError> {
        if number > self.tuning.channel_max {
            return Err(AmqpError::not_allowed(format!(
                "channel {number} exceeds the negotiated channel_max ({})",
                self.tuning.channel_max
            ))
            .on(20, 10));
        }
        let (Some(vhost), Some(permissions)) = (self.vhost.clone(), self.permissions.clone())
        else {
            return Err(AmqpError::internal_error("no vhost"));
        };
        let access = Access::new(
            Arc::clone(&self.user),
            vhost.name().to_owned(),
            permissions,
            self.ctx.limits.queue_limits(&self.user, vhost.name()),
        );
        let channel = Channel::new(ChannelInit {
            number,
            connection: self.id,
            vhost,
            out: self.out.clone(),
            capabilities: self.capabilities,
            max_message_size: self.ctx.config.limits.max_message_size,
            user: Arc::clone(&self.user),
            store: self.ctx.broker.store().cloned(),
            access,
            counters: Arc::clone(&self.ctx.counters),
            events: self
                .events
                .get_or_insert_with(mpsc::unbounded_channel)
                .0
                .clone(),
            serial: self.next_serial,
        });
        let serial = self.next_serial;
        self.next_serial += 1;
        let span = tracing::info_span!("channel", channel = number);
        self.channels.insert(
            number,
            Slot::Open(Box::new(OpenChannel {
                channel,
                span,
                serial,
            })),
        );
        self.send_method(
            number,
            ch::OpenOk {
                channel_id: Bytes::new(),
            },
        );
        debug!(channel = number, "channel opened");
        Ok(())
    }

    /// A soft error: channel.close to the client, the channel's broker state released now.
    fn close_channel(&mut self, number: u16, error: AmqpError) {
        debug!(channel = number, code = error.code, text = %error.text, "closing channel on error");
        if let Some(Slot::Open(mut open)) = self.channels.insert(number, Slot::Closing) {
            open.channel.flush_confirms();
            open.channel.close();
        }
        self.send_method(
            number,
            ch::Close {
                reply_code: error.code,
                reply_text: error.text,
                class_id: error.class_id,
                method_id: error.method_id,
            },
        );
    }

    /// Closes every channel. What they have published and can confirm now is confirmed first,
    /// as RabbitMQ's channels do before its connection.close or close-ok goes out. All stop
    /// taking deliveries before any requeues its unacked ones.
    fn close_all_channels(&mut self) {
        for slot in self.channels.values() {
            if let Slot::Open(open) = slot {
                open.channel.stop_deliveries();
            }
        }
        for (_, slot) in self.channels.drain() {
            if let Slot::Open(mut open) = slot {
                open.channel.flush_confirms();
                open.channel.close();
            }
        }
        self.confirms_dirty.clear();
        self.confirm_wait = None;
    }

    /// Sends the confirms that can go now; channels still waiting for a store flush stay
    /// dirty, and the oldest ticket they wait for is what the read loop wakes on.
    fn flush_confirms(&mut self) {
        let mut wait: Option<u64> = None;
        let channels = &mut self.channels;
        self.confirms_dirty.retain(|number| {
            let Some(Slot::Open(open)) = channels.get_mut(number) else {
                return false;
            };
            open.channel.flush_confirms();
            match open.channel.waiting_ticket() {
                Some(ticket) => {
                    wait = Some(wait.map_or(ticket, |w| w.min(ticket)));
                    true
                }
                None => false,
            }
        });
        self.confirm_wait = wait;
    }

    fn nack_unconfirmed(&mut self) {
        for number in self.confirms_dirty.drain(..) {
            if let Some(Slot::Open(open)) = self.channels.get_mut(&number) {
                open.channel.nack_unconfirmed();
            }
        }
        self.confirm_wait = None;
    }

    /// Closes every channel (requeueing their unacked deliveries) and deletes the
    /// connection's exclusive queues, once.
    fn release_broker_state(&mut self) {
        self.close_all_channels();
        if let Some(vhost) = self.vhost.take() {
            vhost.connection_closed(self.id);
        }
    }

    /// Releases broker state, lets the writer flush, then closes the socket as `end` says.
    async fn finish(mut self, end: End) {
        self.release_broker_state();
        self.send(Outbound::Shutdown);
        let write_half = match end {
            // The writer already stopped (its result was taken) or the peer is gone.
            End::Abort => None,
            End::Done | End::PeerCloses => match time::timeout(LINGER, &mut self.writer).await {
                Ok(Ok(Ok(write_half))) => Some(write_half),
                Ok(Ok(Err(e))) => {
                    debug!(error = %e, "final write failed");
                    None
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "writer task failed");
                    None
                }
                Err(_) => None,
            },
        };
        self.writer.abort();
        if let Some(mut write_half) = write_half {
            if matches!(end, End::Done) {
                let _ = write_half.shutdown().await;
            }
            // Read until the peer closes: after our close-ok that is the client's move, and
            // after our FIN it keeps unread input from turning the close into a reset that
            // could destroy the close frame in flight.
            // `copy` reads into a buffer it allocates: one inside this future would be part of
            // the connection's task for its whole life.
            let mut read_half = self.framed.into_inner();
            let mut sink = tokio::io::sink();
            let drain = tokio::io::copy(&mut read_half, &mut sink);
            let _ = time::timeout(LINGER, drain).await;
        }
        info!("connection closed");
    }
}

/// Whether an alarm holds `frame`: a basic.publish, and the content frames of a publish already
/// started. As RabbitMQ (`rabbit_reader:post_process_frame`): otherwise a publisher that
/// announced large bodies on many channels (up to max_message_size on each) would go on
/// filling memory, past the alarm, until they are complete.
fn publishes(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Method {
            method: Method::BasicPublish(_),
            ..
        } | Frame::Header { .. }
            | Frame::Body { .. }
    )
}
