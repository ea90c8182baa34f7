//! [`Connection`]: connecting, negotiating, opening channels, closing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lockgate_wire::{
    channel, connection, FieldTable, FieldValue, Frame, FrameCodec, Method, PROTOCOL_HEADER,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::channel::Channel;
use crate::channel_inner::ChannelInner;
use crate::error::{CloseReason, Error, Result};
use crate::io::{self, Link, Session};
use crate::outbox::{Append, Outbox};
use crate::recovery::{self, Topology};
use crate::uri::ConnectionOptions;

/// Frame size limit before `connection.tune` (the spec's minimum is 4096;
/// RabbitMQ's default is accepted so a large `connection.start` still decodes).
const INITIAL_FRAME_MAX: u32 = 131_072;
/// How long [`Connection::close`] waits for the broker's `close-ok`.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An AMQP connection: one TCP socket, served by a reader and a writer task.
///
/// `Connection` is a cheap handle (clone it freely). Open [`Channel`]s on it to
/// do anything useful; close it with [`Connection::close`]. Dropping the
/// handles does not close the socket while channels or consumers are alive;
/// once the last of them goes, the connection closes (`connection.close`
/// 200) without waiting for the broker's answer.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> lockgate_client::Result<()> {
/// use lockgate_client::Connection;
///
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30").await?;
/// let channel = conn.open_channel().await?;
/// // ... use the channel ...
/// channel.close().await?;
/// conn.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Connection {
    inner: Arc<ConnInner>,
    holder: Arc<Holder>,
}

/// The application's hold on a connection, shared by its [`Connection`] and
/// [`Channel`] handles (and so by its consumers). The reader, writer and
/// recovery tasks hold the connection's state but not this: when the last
/// handle goes, the connection is closed rather than left running with no
/// one to use it.
#[derive(Debug)]
pub(crate) struct Holder {
    inner: Arc<ConnInner>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let closing = self.inner.start_close();
        // Without a runtime the connection's tasks are gone already.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        match closing {
            // Bound the wait for close-ok as `close` does.
            Ok(Closing::Sent(session)) => {
                runtime.spawn(async move {
                    let ended = session.stop.cancelled();
                    if tokio::time::timeout(CLOSE_TIMEOUT, ended).await.is_err() {
                        session.stop.cancel();
                    }
                });
            }
            // Once it has ended, a connection no one holds is not recovered.
            Ok(Closing::Ending(link)) => {
                let inner = self.inner.clone();
                runtime.spawn(async move {
                    link.ended.cancelled().await;
                    let _ = inner.start_close();
                });
            }
            Ok(Closing::Done) | Err(_) => {}
        }
    }
}

/// What [`ConnInner::start_close`] did.
enum Closing {
    /// Sent `connection.close`: the session waits for close-ok.
    Sent(Session),
    /// Nothing: the session is ending on its own (its writer stopped), and the
    /// connection has yet to record why.
    Ending(Link),
    /// Nothing more to do: closed, or closing already.
    Done,
}

/// Values agreed in `connection.tune`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tune {
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) heartbeat: u16,
}

/// Where the connection is in its life.
#[derive(Clone, Debug)]
pub(crate) enum Status {
    Open,
    /// Lost; automatic recovery is reconnecting.
    Recovering,
    /// The application asked to close; waiting for `close-ok`.
    Closing,
    /// Final: why it ended.
    Closed(Error),
}

pub(crate) struct ConnState {
    pub(crate) status: Status,
    pub(crate) session: Option<Session>,
    pub(crate) channels: HashMap<u16, Arc<ChannelInner>>,
    pub(crate) tune: Tune,
    pub(crate) server_properties: FieldTable,
    next_channel: u16,
}

/// Shared state of one connection, held by its handles, channels and tasks.
pub(crate) struct ConnInner {
    pub(crate) options: ConnectionOptions,
    pub(crate) state: Mutex<ConnState>,
    pub(crate) topology: Mutex<Topology>,
    next_epoch: AtomicU64,
    closed: watch::Sender<bool>,
    /// The reason of the broker's `connection.blocked`, until `connection.unblocked` or a new
    /// session.
    pub(crate) blocked: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for ConnInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInner")
            .field("host", &self.options.host)
            .field("port", &self.options.port)
            .field("vhost", &self.options.vhost)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the broker named by an `amqp://` URI (see
    /// [`ConnectionOptions::from_uri`]) and opens its virtual host.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUri`], [`Error::Io`] when the socket cannot be opened,
    /// [`Error::ConnectionClosed`] when the broker refuses the login (403) or
    /// the vhost (530), [`Error::Negotiation`] for other handshake failures (among them a
    /// broker that answers with another protocol's header, such as AMQP 1.0).
    pub async fn connect(uri: &str) -> Result<Connection> {
        Self::connect_with(ConnectionOptions::from_uri(uri)?).await
    }

    /// Connects with explicit options.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`], without the URI errors.
    pub async fn connect_with(options: ConnectionOptions) -> Result<Connection> {
        let established = handshake(&options).await?;
        let inner = ConnInner::new(options);
        inner.start_session(established);
        let holder = Arc::new(Holder {
            inner: inner.clone(),
        });
        Ok(Connection { inner, holder })
    }

    /// Opens a new channel.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelsExhausted`] when every channel id is in use; the
    /// connection's error when it is closed; [`Error::Disconnected`] while it
    /// is recovering.
    pub async fn open_channel(&self) -> Result<Channel> {
        let ch = {
            let mut st = self.inner.lock_state();
            st.check_open()?;
            let link = st
                .session
                .as_ref()
                .map(|s| s.link.clone())
                .ok_or(Error::Disconnected)?;
            let id = st.allocate_channel()?;
            let ch = Arc::new(ChannelInner::new(id, self.inner.clone(), link));
            st.channels.insert(id, ch.clone());
            ch
        };
        // Made before open-ok arrives: if this future is dropped meanwhile, the
        // channel's drop closes it rather than leaving it open with no handle.
        let channel = Channel::from_inner(ch.clone(), Some(self.holder.clone()));
        if let Err(e) = ch.open(None).await {
            self.inner.channel_closed(&ch, e.clone());
            return Err(e);
        }
        debug!(channel = ch.id, "channel opened");
        Ok(channel)
    }

    /// Closes the connection cleanly (`connection.close` 200, then waits for
    /// `close-ok`). Every channel, pending call and consumer stream ends with
    /// [`Error::ClientClosed`]. Closing a closed connection is a no-op.
    ///
    /// # Errors
    ///
    /// The connection's error if the broker had already closed it.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    /// Whether the connection is open (not closed, closing or recovering).
    pub fn is_open(&self) -> bool {
        matches!(self.inner.lock_state().status, Status::Open)
    }

    /// Why the connection ended, once it has.
    pub fn close_error(&self) -> Option<Error> {
        match &self.inner.lock_state().status {
            Status::Closed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Why the broker has blocked publishing on this connection, or `None`: the reason of its
    /// `connection.blocked` (sent while one of its resource alarms is on, e.g. `"low on
    /// memory"`), until `connection.unblocked`. Publishes are not refused meanwhile: they wait,
    /// and with them every call on the connection.
    pub fn blocked(&self) -> Option<String> {
        self.inner.blocked.borrow().clone()
    }

    /// Waits until the broker does not block this connection (at once when it does not).
    ///
    /// # Errors
    ///
    /// The connection's error when it closes first.
    pub async fn unblocked(&self) -> Result<()> {
        let mut blocked = self.inner.blocked.subscribe();
        let mut closed = self.inner.closed.subscribe();
        tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => Err(self.close_error().unwrap_or(Error::ClientClosed)),
            _ = blocked.wait_for(Option::is_none) => Ok(()),
        }
    }

    /// The broker's `server-properties` (product, version, capabilities).
    pub fn server_properties(&self) -> FieldTable {
        self.inner.lock_state().server_properties.clone()
    }

    /// Negotiated maximum frame size in bytes.
    pub fn frame_max(&self) -> u32 {
        self.inner.lock_state().tune.frame_max
    }

    /// Negotiated maximum channel number.
    pub fn channel_max(&self) -> u16 {
        self.inner.lock_state().tune.channel_max
    }

    /// Negotiated heartbeat interval in seconds (0: disabled).
    pub fn heartbeat(&self) -> u16 {
        self.inner.lock_state().tune.heartbeat
    }
}

impl ConnState {
    fn check_open(&self) -> Result<()> {
        match &self.status {
            Status::Open => Ok(()),
            Status::Recovering => Err(Error::Disconnected),
            Status::Closing => Err(Error::ClientClosed),
            Status::Closed(e) => Err(e.clone()),
        }
    }

    /// Picks a free channel id, round robin so that ids are not reused at once.
    pub(crate) fn allocate_channel(&mut self) -> Result<u16> {
        let max = if self.tune.channel_max == 0 {
            u16::MAX
        } else {
            self.tune.channel_max
        };
        for _ in 0..max {
            let id = self.next_channel;
            self.next_channel = if id >= max { 1 } else { id + 1 };
            if !self.channels.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(Error::ChannelsExhausted)
    }
}

impl ConnInner {
    /// An open connection without a session yet.
    pub(crate) fn new(options: ConnectionOptions) -> Arc<Self> {
        let (closed, _) = watch::channel(false);
        let (blocked, _) = watch::channel(None);
        Arc::new(ConnInner {
            options,
            state: Mutex::new(ConnState {
                status: Status::Open,
                session: None,
                channels: HashMap::new(),
                tune: Tune::default(),
                server_properties: FieldTable::default(),
                next_channel: 1,
            }),
            topology: Mutex::new(Topology::default()),
            next_epoch: AtomicU64::new(1),
            closed,
            blocked,
        })
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, ConnState> {
        // A poisoned lock means a panic elsewhere; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_topology(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether declarations must be recorded for recovery.
    pub(crate) fn records_topology(&self) -> bool {
        self.options.recovery.is_some()
    }

    /// [`Connection::close`].
    pub(crate) async fn close(&self) -> Result<()> {
        let mut closed = self.closed.subscribe();
        loop {
            match self.start_close()? {
                Closing::Sent(session) => {
                    if tokio::time::timeout(CLOSE_TIMEOUT, closed.wait_for(|c| *c))
                        .await
                        .is_err()
                    {
                        session.stop.cancel();
                    }
                    break;
                }
                // Then the connection's error is known (or it is recovering).
                Closing::Ending(link) => link.ended.cancelled().await,
                Closing::Done => break,
            }
        }
        // Ignore the result: it fails only if the state is gone, i.e. closed.
        let _ = closed.wait_for(|c| *c).await;
        Ok(())
    }

    /// Starts closing on the application's behalf: sends `connection.close`
    /// 200 when open, ends a recovery, and does nothing when closing or closed
    /// already.
    ///
    /// # Errors
    ///
    /// The connection's error if something else closed it.
    fn start_close(&self) -> Result<Closing> {
        let mut st = self.lock_state();
        match &st.status {
            Status::Closed(Error::ClientClosed) | Status::Closing => return Ok(Closing::Done),
            Status::Closed(e) => return Err(e.clone()),
            Status::Recovering => {
                drop(st);
                self.finish(Error::ClientClosed);
                return Ok(Closing::Done);
            }
            Status::Open => {}
        }
        let Some(session) = st.session.clone() else {
            st.status = Status::Closing;
            return Ok(Closing::Done);
        };
        let close = Method::ConnectionClose(connection::Close {
            reply_code: 200,
            reply_text: "OK".into(),
            class_id: 0,
            method_id: 0,
        });
        // Sent under the state lock: the session cannot end (and be taken for
        // one the application closed) between the send and the status.
        match session.link.send_method(0, close) {
            Ok(Append::Done | Append::Full) => {
                st.status = Status::Closing;
                Ok(Closing::Sent(session))
            }
            // The broker's close, or a socket error, ends it: that is its error.
            Ok(Append::Closed) => Ok(Closing::Ending(session.link)),
            Err(_) => {
                st.status = Status::Closing;
                drop(st);
                session.stop.cancel();
                Ok(Closing::Done)
            }
        }
    }

    pub(crate) fn channel(&self, id: u16) -> Option<Arc<ChannelInner>> {
        self.lock_state().channels.get(&id).cloned()
    }

    /// Spawns the writer and reader tasks of a freshly negotiated socket.
    pub(crate) fn start_session(self: &Arc<Self>, established: Established) -> Session {
        let Established {
            frames,
            write,
            tune,
            server_properties,
        } = established;
        let outbox = Arc::new(Outbox::default());
        let session = Session {
            link: Link::new(
                outbox.clone(),
                self.next_epoch.fetch_add(1, Ordering::Relaxed),
                tune.frame_max,
            ),
            stop: CancellationToken::new(),
            failure: Arc::default(),
        };
        let heartbeat = Duration::from_secs(tune.heartbeat.into());
        {
            let mut st = self.lock_state();
            st.session = Some(session.clone());
            st.tune = tune;
            st.server_properties = server_properties;
        }
        // A new socket starts unblocked: the broker sends connection.blocked again if an alarm
        // is still on when this session publishes.
        self.blocked.send_replace(None);
        // One span per socket, so the tasks' events carry the peer and session.
        let span = info_span!(
            "amqp_connection",
            host = %self.options.host,
            port = self.options.port,
            session = session.link.epoch
        );
        tokio::spawn(
            io::run_writer(write, outbox, heartbeat, session.clone()).instrument(span.clone()),
        );
        tokio::spawn(
            io::run_reader(self.clone(), frames, heartbeat, session.clone()).instrument(span),
        );
        session
    }

    /// Called by the reader when its socket is done.
    pub(crate) fn session_ended(self: &Arc<Self>, epoch: u64, error: Error) {
        let mut st = self.lock_state();
        if st.session.as_ref().map(|s| s.link.epoch) != Some(epoch) {
            return;
        }
        st.session = None;
        match st.status {
            Status::Open
                if self.options.recovery.is_some() && !matches!(error, Error::ClientClosed) =>
            {
                info!(error = %error, "connection lost; starting automatic recovery");
                st.status = Status::Recovering;
                let channels: Vec<_> = st.channels.values().cloned().collect();
                drop(st);
                for ch in channels {
                    ch.suspend(&error);
                }
                recovery::spawn(self.clone());
            }
            Status::Recovering => {
                let channels: Vec<_> = st.channels.values().cloned().collect();
                drop(st);
                for ch in channels {
                    ch.suspend(&error);
                }
            }
            Status::Closing => {
                drop(st);
                self.finish(Error::ClientClosed);
            }
            Status::Open | Status::Closed(_) => {
                debug!(error = %error, "connection ended");
                drop(st);
                self.finish(error);
            }
        }
    }

    /// Ends the connection for good: every channel fails with `error`.
    pub(crate) fn finish(&self, error: Error) {
        let (channels, session) = {
            let mut st = self.lock_state();
            if !matches!(st.status, Status::Closed(_)) {
                st.status = Status::Closed(error.clone());
            }
            let channels: Vec<_> = st.channels.drain().map(|(_, ch)| ch).collect();
            (channels, st.session.take())
        };
        if let Some(session) = session {
            session.stop.cancel();
        }
        for ch in channels {
            ch.finish(error.clone());
        }
        self.closed.send_replace(true);
    }

    /// Forgets a channel closed by either side, failing its pending calls.
    pub(crate) fn channel_closed(&self, ch: &Arc<ChannelInner>, error: Error) {
        {
            let mut st = self.lock_state();
            if st.channels.get(&ch.id).is_some_and(|c| Arc::ptr_eq(c, ch)) {
                st.channels.remove(&ch.id);
            }
        }
        ch.forget();
        self.lock_topology().forget_channel(ch.id);
        ch.finish(error);
    }

    /// Forgets a consumer the broker cancelled.
    pub(crate) fn forget_consumer(&self, tag: &str) {
        self.lock_topology().forget_consumer(tag);
    }

    /// Status check for recovery: `false` once the application closed the connection.
    pub(crate) fn is_recovering(&self) -> bool {
        matches!(self.lock_state().status, Status::Recovering)
    }
}

/// A negotiated socket, ready for its tasks.
pub(crate) struct Established {
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    write: OwnedWriteHalf,
    tune: Tune,
    server_properties: FieldTable,
}

/// Opens a socket and runs the AMQP handshake: protocol header, start/start-ok
/// (PLAIN), tune/tune-ok, open/open-ok.
pub(crate) async fn handshake(options: &ConnectionOptions) -> Result<Established> {
    tokio::time::timeout(options.connect_timeout, negotiate(options))
        .await
        .map_err(|_| Error::Negotiation("timed out".into()))?
}

fn string(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

fn client_properties(options: &ConnectionOptions) -> FieldTable {
    let capabilities: FieldTable = [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ]
    .into_iter()
    .map(|c| (c.to_string(), FieldValue::Bool(true)))
    .collect();
    let mut props = vec![
        ("product".to_string(), string("lockgate-client")),
        ("version".to_string(), string(env!("CARGO_PKG_VERSION"))),
        ("platform".to_string(), string("Rust")),
        ("capabilities".to_string(), FieldValue::Table(capabilities)),
    ];
    if let Some(name) = &options.connection_name {
        props.push(("connection_name".to_string(), string(name)));
    }
    props.into_iter().collect()
}

/// The smaller non-zero value, or the other one when either is 0 (the Java client's rule).
fn negotiated<T: Ord + Default + Copy>(client: T, server: T) -> T {
    if client == T::default() || server == T::default() {
        client.max(server)
    } else {
        client.min(server)
    }
}

pub(crate) fn close_reason(close: connection::Close) -> CloseReason {
    CloseReason {
        code: close.reply_code,
        text: close.reply_text,
        class_id: close.class_id,
        method_id: close.method_id,
    }
}

async fn next_method(frames: &mut FramedRead<OwnedReadHalf, FrameCodec>) -> Result<Method> {
    loop {
        match frames.next().await {
            Some(Ok(Frame::Heartbeat)) => continue,
            Some(Ok(Frame::Method { channel: 0, method })) => return Ok(method),
            Some(Ok(other)) => {
                return Err(Error::UnexpectedFrame(format!(
                    "{other:?} during the handshake"
                )))
            }
            Some(Err(e)) => {
                return Err(answered_header(frames.read_buffer()).unwrap_or_else(|| e.into()))
            }
            None => {
                return Err(Error::Negotiation(
                    "the broker closed the socket during the handshake".into(),
                ))
            }
        }
    }
}

/// A broker that does not speak AMQP 0-9-1 answers our protocol header with the one it
/// speaks (the spec's 4.2.2: "AMQP", then protocol id and version), which does not decode as a
/// frame: that error, named as such, when `read` starts with one.
fn answered_header(read: &[u8]) -> Option<Error> {
    let version = read.strip_prefix(b"AMQP")?;
    let version: Vec<String> = version.iter().take(4).map(u8::to_string).collect();
    Some(Error::Negotiation(format!(
        "the broker does not speak AMQP 0-9-1: it answered with the protocol header \
         \"AMQP\" {}",
        version.join(" ")
    )))
}

async fn send(write: &mut OwnedWriteHalf, codec: &FrameCodec, method: Method) -> Result<()> {
    let mut buf = bytes::BytesMut::new();
    codec.encode_frame(&Frame::Method { channel: 0, method }, &mut buf)?;
    write.write_all(&buf).await?;
    Ok(())
}

async fn negotiate(options: &ConnectionOptions) -> Result<Established> {
    let stream = TcpStream::connect((options.host.as_str(), options.port)).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::new(INITIAL_FRAME_MAX));
    let codec = FrameCodec::new(INITIAL_FRAME_MAX);
    write.write_all(&PROTOCOL_HEADER).await?;

    let start = match next_method(&mut frames).await? {
        Method::ConnectionStart(start) => start,
        other => {
            return Err(Error::UnexpectedFrame(format!(
                "{} instead of connection.start",
                other.name()
            )))
        }
    };
    let mechanisms = String::from_utf8_lossy(&start.mechanisms);
    if !mechanisms.split(' ').any(|m| m == "PLAIN") {
        return Err(Error::Negotiation(format!(
            "the broker does not offer PLAIN (offers {mechanisms:?})"
        )));
    }
    let response = format!("\0{}\0{}", options.username, options.password);
    let start_ok = connection::StartOk {
        client_properties: client_properties(options),
        mechanism: "PLAIN".into(),
        response: Bytes::from(response.into_bytes()),
        locale: "en_US".into(),
    };
    send(&mut write, &codec, Method::ConnectionStartOk(start_ok)).await?;

    let tune = match next_method(&mut frames).await? {
        Method::ConnectionTune(tune) => tune,
        Method::ConnectionClose(close) => return Err(Error::ConnectionClosed(close_reason(close))),
        other => {
            return Err(Error::UnexpectedFrame(format!(
                "{} instead of connection.tune",
                other.name()
            )))
        }
    };
    let tune = Tune {
        channel_max: negotiated(options.channel_max, tune.channel_max),
        frame_max: negotiated(options.frame_max, tune.frame_max),
        heartbeat: negotiated(options.heartbeat, tune.heartbeat),
    };
    let tune_ok = connection::TuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: tune.heartbeat,
    };
    send(&mut write, &codec, Method::ConnectionTuneOk(tune_ok)).await?;
    let open = connection::Open {
        virtual_host: options.vhost.clone(),
        capabilities: String::new(),
        insist: false,
    };
    send(&mut write, &codec, Method::ConnectionOpen(open)).await?;
    // The broker's frames are not held to frame_max: RabbitMQ (and lockgate) send
    // a content header whole however large it is (a publisher with a larger
    // frame_max, headers the broker added), and refusing it would cost the
    // connection at every redelivery. The decoder still reserves only a bounded
    // amount ahead of the octets that arrive.
    frames.decoder_mut().set_frame_max(0);
    match next_method(&mut frames).await? {
        Method::ConnectionOpenOk(_) => {}
        Method::ConnectionClose(close) => {
            // Answer politely; the socket is dropped right after anyway.
            let _ = send(
                &mut write,
                &codec,
                Method::ConnectionCloseOk(connection::CloseOk {}),
            )
            .await;
            return Err(Error::ConnectionClosed(close_reason(close)));
        }
        other => {
            return Err(Error::UnexpectedFrame(format!(
                "{} instead of connection.open-ok",
                other.name()
            )))
        }
    }
    debug!(host = %options.host, port = options.port, vhost = %options.vhost, ?tune, "connected");
    Ok(Established {
        frames,
        write,
        tune,
        server_properties: start.server_properties,
    })
}

/// `channel.open`, used when opening and when recovering a channel.
pub(crate) fn channel_open() -> Method {
    Method::ChannelOpen(channel::Open {
        out_of_band: String::new(),
    })
}

/// `channel.close` 200, as the application closes a channel.
pub(crate) fn channel_close() -> Method {
    Method::ChannelClose(channel::Close {
        reply_code: 200,
        reply_text: "OK".into(),
        class_id: 0,
        method_id: 0,
    })
}
