//! The read loop's publish fast path against the same frames handled one by one: a byte
//! stream fed whole, split at every octet, and one octet at a time (where no publish is
//! ever complete in the buffer, so every frame takes the general path) has one outcome.

use std::fmt::Write as _;

use lockgate_broker::BrokerConfig;
use lockgate_wire::{
    basic, confirm, queue, tx, BasicProperties, ContentHeader, FieldValue, FRAME_END, FRAME_METHOD,
};

use super::*;
use crate::permissions::PermissionConfig;

const MAX_MESSAGE_SIZE: u64 = 64;

fn connection(permissions: VHostPermissions) -> (Connection, mpsc::UnboundedReceiver<Outbound>) {
    let mut config = Config::default();
    config.limits.max_message_size = MAX_MESSAGE_SIZE;
    let broker = Broker::new(BrokerConfig {
        max_message_size: MAX_MESSAGE_SIZE,
        ..BrokerConfig::default()
    });
    let vhost = broker.vhost("/").expect("default vhost");
    let ctx = Arc::new(ServerContext::new(
        Arc::new(config),
        broker,
        CancellationToken::new(),
        watch::channel(false).1,
    ));
    let (out, rx) = mpsc::unbounded_channel();
    let read_half: ReadHalf = Box::new(tokio::io::empty());
    let framed = FramedRead::new(read_half, FrameCodec::new(ctx.config.limits.frame_max));
    let mut connection = Connection::new(
        ctx,
        ConnectionId(1),
        SocketAddr::from(([127, 0, 0, 1], 1)),
        SocketAddr::from(([127, 0, 0, 1], 5672)),
        false,
        framed,
        out,
        tokio::spawn(std::future::pending()),
    );
    connection.vhost = Some(vhost);
    connection.user = Arc::from("guest");
    connection.permissions = Some(Arc::new(permissions));
    (connection, rx)
}

fn frame(dst: &mut Vec<u8>, channel: u16, method: impl Into<Method>) {
    let mut buf = BytesMut::new();
    FrameCodec::new(0)
        .encode_frame(
            &Frame::Method {
                channel,
                method: method.into(),
            },
            &mut buf,
        )
        .expect("encode");
    dst.extend_from_slice(&buf);
}

/// A basic.publish written octet by octet (names need not be UTF-8), its header, and the
/// body in frames of the given sizes.
struct Publish<'a> {
    channel: u16,
    exchange: &'a [u8],
    routing_key: &'a [u8],
    bits: u8,
    properties: BasicProperties,
    body: &'a [u8],
    /// Body frame sizes; empty: one frame (none for an empty body).
    split: &'a [usize],
}

impl Default for Publish<'_> {
    fn default() -> Self {
        Publish {
            channel: 1,
            exchange: b"",
            routing_key: b"q",
            bits: 0,
            properties: BasicProperties::default(),
            body: b"hello",
            split: &[],
        }
    }
}

impl Publish<'_> {
    fn write(&self, dst: &mut Vec<u8>) {
        self.write_method(dst);
        let header =
            ContentHeader::new(60, self.body.len() as u64, self.properties.clone()).unwrap();
        let mut buf = BytesMut::new();
        FrameCodec::new(0)
            .encode_frame(
                &Frame::Header {
                    channel: self.channel,
                    header,
                },
                &mut buf,
            )
            .unwrap();
        let mut rest = self.body;
        for &size in self.split {
            let (part, tail) = rest.split_at(size);
            body_frame(&mut buf, self.channel, part);
            rest = tail;
        }
        body_frame(&mut buf, self.channel, rest);
        dst.extend_from_slice(&buf);
    }

    fn write_method(&self, dst: &mut Vec<u8>) {
        let mut payload = vec![0, 60, 0, 40, 0, 0];
        for name in [self.exchange, self.routing_key] {
            payload.push(name.len() as u8);
            payload.extend_from_slice(name);
        }
        payload.push(self.bits);
        dst.push(FRAME_METHOD);
        dst.extend_from_slice(&self.channel.to_be_bytes());
        dst.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        dst.extend_from_slice(&payload);
        dst.push(FRAME_END);
    }
}

/// channel.open on 1 and 2, queue.declare "q" on 1.
fn setup() -> Vec<u8> {
    let mut s = Vec::new();
    frame(&mut s, 1, ch::Open::default());
    frame(&mut s, 2, ch::Open::default());
    frame(
        &mut s,
        1,
        queue::Declare {
            queue: "q".into(),
            ..Default::default()
        },
    );
    s
}

/// basic.get (no-ack) on `channel` from "q", `n` times.
fn gets(s: &mut Vec<u8>, channel: u16, n: usize) {
    for _ in 0..n {
        frame(
            s,
            channel,
            basic::Get {
                queue: "q".into(),
                no_ack: true,
            },
        );
    }
}

/// Everything the connection did with `chunks` read one after the other, as the run loop
/// drives it: what it sent (encoded), how it ended, and its state.
fn outcome(
    chunks: &[&[u8]],
    permissions: impl Fn() -> VHostPermissions,
    memory_blocked: bool,
) -> String {
    let (mut connection, mut rx) = connection(permissions());
    connection.memory_blocked = memory_blocked;
    let mut liveness = Liveness::default();
    let mut buffer = BytesMut::new();
    let mut end = "open";
    'read: for chunk in chunks {
        buffer.extend_from_slice(chunk);
        while connection.held.is_none() && connection.room_wait.is_none() {
            match connection.on_frames_in(&mut buffer, &mut liveness, None) {
                Ok(true) => {}
                Ok(false) => break,
                Err(End::Done) => {
                    end = "done";
                    break 'read;
                }
                Err(End::PeerCloses) => {
                    end = "peer closes";
                    break 'read;
                }
                Err(End::Abort) => {
                    end = "abort";
                    break 'read;
                }
            }
        }
    }
    connection.flush_confirms();
    let codec = FrameCodec::new(0);
    let mut sent = BytesMut::new();
    let mut closes = String::new();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Outbound::Frame(frame) => {
                match &*frame {
                    Frame::Method {
                        channel,
                        method: Method::ChannelClose(close),
                    } => write!(closes, ", channel.close {channel} {}", close.reply_code),
                    Frame::Method {
                        method: Method::ConnectionClose(close),
                        ..
                    } => write!(closes, ", connection.close {}", close.reply_code),
                    _ => Ok(()),
                }
                .unwrap();
                codec.encode_frame(&frame, &mut sent).unwrap();
            }
            Outbound::Content {
                channel,
                method,
                message,
            } => codec
                .encode_content(
                    &mut sent,
                    channel,
                    &method,
                    message.header_ref(),
                    message.body(),
                )
                .unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut state = format!(
        "end {end}, closing {}, held {}, unread {}{closes}, sent {:?}",
        connection.closing.is_some(),
        connection.held.is_some(),
        buffer.len(),
        sent
    );
    let mut numbers: Vec<_> = connection.channels.keys().copied().collect();
    numbers.sort_unstable();
    for number in numbers {
        let open = matches!(connection.channels.get(&number), Some(Slot::Open(_)));
        write!(state, ", channel {number} open {open}").unwrap();
    }
    let vhost = connection.vhost.as_ref().expect("vhost");
    if let Some(queue) = vhost.queue("q") {
        write!(state, ", q holds {}", queue.message_count()).unwrap();
    }
    state
}

/// The outcome of `stream` is the same however it is split into reads.
fn same_outcome_split_anywhere(
    stream: &[u8],
    permissions: impl Fn() -> VHostPermissions,
    memory_blocked: bool,
) -> String {
    let whole = outcome(&[stream], &permissions, memory_blocked);
    let octets: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(
        outcome(&octets, &permissions, memory_blocked),
        whole,
        "one octet at a time"
    );
    for at in 1..stream.len() {
        let (a, b) = stream.split_at(at);
        assert_eq!(
            outcome(&[a, b], &permissions, memory_blocked),
            whole,
            "split at {at}"
        );
    }
    whole
}

/// How many messages `queue` holds in the connection's vhost.
fn messages_in(connection: &Connection, queue: &str) -> Option<u32> {
    connection
        .vhost
        .as_ref()
        .and_then(|vhost| vhost.queue(queue))
        .map(|q| q.message_count())
}

fn full() -> VHostPermissions {
    VHostPermissions::full()
}

#[tokio::test]
async fn publishes_have_one_outcome_however_they_are_read() {
    let mut s = setup();
    Publish::default().write(&mut s);
    Publish {
        body: b"",
        ..Publish::default()
    }
    .write(&mut s);
    Publish {
        body: b"split body",
        split: &[4, 3],
        ..Publish::default()
    }
    .write(&mut s);
    Publish {
        properties: BasicProperties {
            delivery_mode: Some(2),
            headers: Some([("k".to_owned(), FieldValue::I32(7))].into_iter().collect()),
            user_id: Some("guest".into()),
            ..BasicProperties::default()
        },
        body: b"rich",
        ..Publish::default()
    }
    .write(&mut s);
    // Mandatory to no queue: returned, its invalid UTF-8 routing key read as U+FFFD.
    Publish {
        routing_key: b"no\xffqueue",
        bits: 1,
        ..Publish::default()
    }
    .write(&mut s);
    Publish {
        channel: 2,
        exchange: b"amq.direct",
        routing_key: b"q",
        ..Publish::default()
    }
    .write(&mut s);
    gets(&mut s, 1, 5);
    let whole = same_outcome_split_anywhere(&s, full, false);
    assert!(whole.contains("q holds 0"), "{whole}");
    assert!(whole.contains("no\\xef\\xbf\\xbdqueue"), "{whole}");
}

#[tokio::test]
async fn confirms_and_transactions_have_one_outcome_however_they_are_read() {
    let mut s = setup();
    frame(&mut s, 1, confirm::Select { nowait: false });
    frame(&mut s, 2, tx::Select {});
    for channel in [1, 2, 1, 2] {
        Publish {
            channel,
            ..Publish::default()
        }
        .write(&mut s);
    }
    frame(&mut s, 2, tx::Commit {});
    gets(&mut s, 1, 1);
    let whole = same_outcome_split_anywhere(&s, full, false);
    assert!(whole.contains("q holds 3"), "{whole}");
}

#[tokio::test]
async fn refused_publishes_have_one_outcome_however_they_are_read() {
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("body over max_message_size", "channel.close 1 406", {
            let mut s = Vec::new();
            Publish {
                body: &[1; MAX_MESSAGE_SIZE as usize + 1],
                ..Publish::default()
            }
            .write(&mut s);
            Publish::default().write(&mut s);
            s
        }),
        ("user-id of another user", "channel.close 1 406", {
            let mut s = Vec::new();
            Publish {
                properties: BasicProperties {
                    user_id: Some("admin".into()),
                    ..BasicProperties::default()
                },
                ..Publish::default()
            }
            .write(&mut s);
            s
        }),
        ("negative expiration", "channel.close 1 406", {
            let mut s = Vec::new();
            Publish {
                properties: BasicProperties {
                    expiration: Some("-1".into()),
                    ..BasicProperties::default()
                },
                ..Publish::default()
            }
            .write(&mut s);
            s
        }),
        ("missing exchange", "channel.close 1 404", {
            let mut s = Vec::new();
            Publish {
                exchange: b"nowhere",
                ..Publish::default()
            }
            .write(&mut s);
            s
        }),
        ("immediate", "connection.close 540", {
            let mut s = Vec::new();
            Publish {
                bits: 2,
                ..Publish::default()
            }
            .write(&mut s);
            s
        }),
        ("channel not open", "connection.close 504", {
            let mut s = Vec::new();
            Publish {
                channel: 7,
                ..Publish::default()
            }
            .write(&mut s);
            s
        }),
        ("channel 0", "connection.close 504", {
            let mut s = Vec::new();
            Publish {
                channel: 0,
                ..Publish::default()
            }
            .write(&mut s);
            s
        }),
        ("header first", "connection.close 505", {
            let mut s = Vec::new();
            let mut publish = Vec::new();
            Publish::default().write_method(&mut publish);
            let method_len = publish.len();
            Publish::default().write(&mut publish);
            s.extend_from_slice(&publish[2 * method_len..]);
            s.extend_from_slice(&publish);
            s
        }),
        ("publish twice", "connection.close 505", {
            let mut s = Vec::new();
            Publish::default().write_method(&mut s);
            Publish::default().write(&mut s);
            s
        }),
        ("body longer than announced", "connection.close 501", {
            let mut s = Vec::new();
            Publish::default().write(&mut s);
            // The body frame says 6 octets where the header announced 5.
            s.truncate(s.len() - (8 + 5));
            encode_body_vec(&mut s, 1, b"hello!");
            s
        }),
    ];
    for (case, close, publishes) in cases {
        let mut s = setup();
        s.extend_from_slice(&publishes);
        let whole = same_outcome_split_anywhere(&s, full, false);
        assert!(whole.contains(close), "{case}: {whole}");
        assert!(whole.contains("q holds 0"), "{case}: {whole}");
    }
}

fn encode_body_vec(dst: &mut Vec<u8>, channel: u16, body: &[u8]) {
    let mut buf = BytesMut::new();
    body_frame(&mut buf, channel, body);
    dst.extend_from_slice(&buf);
}

/// `part` as one body frame; nothing for an empty part, as a publisher sends it.
fn body_frame(buf: &mut BytesMut, channel: u16, part: &[u8]) {
    if !part.is_empty() {
        let payload = Bytes::copy_from_slice(part);
        FrameCodec::new(0)
            .encode_frame(&Frame::Body { channel, payload }, buf)
            .unwrap();
    }
}

#[tokio::test]
async fn a_publish_refused_by_permissions_has_one_outcome_however_it_is_read() {
    let direct_only = || {
        VHostPermissions::compile(&PermissionConfig {
            user: "guest".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: "^amq\\.direct$".into(),
            read: ".*".into(),
        })
        .unwrap()
    };
    let mut s = setup();
    Publish {
        channel: 2,
        exchange: b"amq.direct",
        ..Publish::default()
    }
    .write(&mut s);
    Publish::default().write(&mut s);
    gets(&mut s, 2, 1);
    let whole = same_outcome_split_anywhere(&s, direct_only, false);
    assert!(
        whole.contains("channel 1 open false, channel 2 open true"),
        "{whole}"
    );
}

#[tokio::test]
async fn a_blocked_publisher_is_held_however_it_is_read() {
    let mut s = setup();
    Publish::default().write(&mut s);
    let whole = same_outcome_split_anywhere(&s, full, true);
    assert!(whole.contains("held true"), "{whole}");
}

#[tokio::test]
async fn an_alarm_holds_the_content_of_a_publish_already_started() {
    let (mut connection, _rx) = connection(full());
    let mut liveness = Liveness::default();
    let publish = Publish {
        split: &[2],
        ..Publish::default()
    };
    let mut started = setup();
    publish.write_method(&mut started);
    let mut whole = Vec::new();
    publish.write(&mut whole);
    let mut method = Vec::new();
    publish.write_method(&mut method);
    let content = &whole[method.len()..];

    let mut buffer = BytesMut::from(&started[..]);
    while let Ok(true) = connection.on_frames_in(&mut buffer, &mut liveness, None) {}
    assert!(buffer.is_empty() && connection.held.is_none());
    connection.memory_blocked = true;
    buffer.extend_from_slice(content);
    assert!(matches!(
        connection.on_frames_in(&mut buffer, &mut liveness, None),
        Ok(true)
    ));
    assert!(
        matches!(connection.held, Some(Frame::Header { .. })),
        "the header is held"
    );
    assert!(!buffer.is_empty(), "the body frames are left unread");
    assert_eq!(messages_in(&connection, "q"), Some(0));
}

#[tokio::test]
async fn a_whole_publish_takes_the_fast_path_and_a_partial_one_is_left() {
    let (mut connection, _rx) = connection(full());
    let mut liveness = Liveness::default();
    let mut buffer = BytesMut::from(&setup()[..]);
    assert!(matches!(
        connection.on_frames_in(&mut buffer, &mut liveness, None),
        Ok(true)
    ));
    let mut s = Vec::new();
    Publish::default().write(&mut s);
    let first = s.len();
    Publish {
        body: b"",
        ..Publish::default()
    }
    .write(&mut s);
    let mut buffer = BytesMut::from(&s[..s.len() - 1]);
    let mut arrivals = ArrivalClock::default();
    assert!(connection.on_publish_frames(&mut buffer, &mut arrivals));
    assert_eq!(&buffer[..], &s[first..s.len() - 1]);
    assert!(
        !connection.on_publish_frames(&mut buffer, &mut arrivals),
        "incomplete"
    );
    assert_eq!(&buffer[..], &s[first..s.len() - 1], "left as it was");
    buffer.extend_from_slice(&s[s.len() - 1..]);
    assert!(connection.on_publish_frames(&mut buffer, &mut arrivals));
    assert!(buffer.is_empty());
    assert_eq!(messages_in(&connection, "q"), Some(2));
}

#[test]
fn the_arrival_clock_is_read_again_after_a_few_publishes() {
    let mut arrivals = ArrivalClock::default();
    let first = arrivals.now();
    for _ in 1..ARRIVALS_PER_CLOCK_READ {
        assert_eq!(arrivals.now(), first);
    }
    std::thread::sleep(Duration::from_millis(1));
    assert!(arrivals.now() > first);
}

#[tokio::test]
async fn a_publish_after_a_frame_on_the_general_path_reads_the_clock_again() {
    let (mut connection, mut rx) = connection(full());
    let mut liveness = Liveness::default();
    let mut s = setup();
    Publish::default().write(&mut s);
    Publish::default().write(&mut s);
    // A frame for the general path between the publishes (a purge, an ack of many could
    // take long): the third publish's TTL must not start before it.
    frame(
        &mut s,
        2,
        queue::Declare {
            queue: "r".into(),
            ..Default::default()
        },
    );
    Publish::default().write(&mut s);
    gets(&mut s, 2, 3);
    let mut buffer = BytesMut::from(&s[..]);
    while let Ok(true) = connection.on_frames_in(&mut buffer, &mut liveness, None) {}
    let mut arrivals = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let Outbound::Content { message, .. } = msg {
            arrivals.push(message.received_at());
        }
    }
    assert_eq!(arrivals.len(), 3, "three get-ok");
    assert_eq!(
        arrivals[0], arrivals[1],
        "one reading for consecutive publishes"
    );
    assert!(arrivals[2] > arrivals[1], "read again after the purge");
}

/// Every connection's task holds its future for as long as it lives: a buffer or a large
/// future in it (4 KiB of drain scratch once took two thirds of it) costs that much per
/// connection, idle or not.
#[tokio::test]
async fn a_connection_task_stays_small() {
    let (connection, _rx) = connection(full());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stream = TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let task = serve(Arc::clone(&connection.ctx), stream, peer, 1);
    assert!(
        size_of_val(&task) <= 3 * 1024,
        "{} octets",
        size_of_val(&task)
    );
}

#[tokio::test]
async fn a_publish_cut_short_makes_the_quiet_buffer_busy_and_arrives_whole() {
    let (mut connection, _rx) = connection(full());
    let mut liveness = Liveness::default();
    let mut buffer = BytesMut::with_capacity(READ_START);
    buffer.extend_from_slice(&setup());
    assert!(matches!(
        connection.on_frames_in(&mut buffer, &mut liveness, None),
        Ok(true)
    ));
    assert!(buffer.capacity() <= READ_START, "quiet after the setup");
    let body = [5u8; MAX_MESSAGE_SIZE as usize];
    let mut s = Vec::new();
    Publish {
        body: &body,
        ..Publish::default()
    }
    .write(&mut s);
    // What a read that filled the quiet buffer leaves: a publish cut short.
    let cut = s.len() - 10;
    buffer.extend_from_slice(&s[..cut]);
    let _ = connection.on_frames_in(&mut buffer, &mut liveness, None);
    assert!(buffer.capacity() >= read_size::READ_CHUNK, "busy");
    buffer.extend_from_slice(&s[cut..]);
    while let Ok(true) = connection.on_frames_in(&mut buffer, &mut liveness, None) {}
    assert!(buffer.is_empty());
    assert_eq!(messages_in(&connection, "q"), Some(1));
    // Empty at a heartbeat tick: quiet again.
    connection.read_size.on_tick(&mut buffer);
    assert_eq!(buffer.capacity(), READ_START);
}

/// A connection without heartbeats, quiet for a long time, then sent `publishes` in one go
/// (more than [`READ_START`] octets: the first read ends mid-frame) and nothing for
/// `quiet_for`, as the run loop handles it. Returns the read buffer's capacity.
async fn read_buffer_without_heartbeats(publishes: usize, quiet_for: Duration) -> usize {
    let (mut connection, _rx) = connection(full());
    connection.tuning.heartbeat = 0;
    let (mut peer, read_half) = tokio::io::duplex(read_size::READ_CHUNK);
    let read_half: ReadHalf = Box::new(read_half);
    connection.framed = FramedRead::with_capacity(
        read_half,
        FrameCodec::new(connection.ctx.config.limits.frame_max),
        READ_START,
    );
    let mut burst = Vec::new();
    for _ in 0..publishes {
        Publish::default().write(&mut burst);
    }
    assert!(burst.len() > READ_START);
    let peer_side = async {
        peer.write_all(&setup()).await.expect("write");
        // Long enough for the ticker's first deadline to pass while it is off.
        time::sleep(3 * read_size::QUIET_TICK).await;
        peer.write_all(&burst).await.expect("write");
        time::sleep(quiet_for).await;
    };
    tokio::select! {
        _ = connection.run() => panic!("the connection ended"),
        () = peer_side => {}
    }
    assert_eq!(messages_in(&connection, "q"), Some(publishes as u32));
    connection.framed.read_buffer().capacity()
}

#[tokio::test(start_paused = true)]
async fn without_heartbeats_a_busy_buffer_shrinks_back_after_a_quiet_tick() {
    let publishes = READ_START / 32;
    let busy = read_buffer_without_heartbeats(publishes, read_size::QUIET_TICK / 2).await;
    assert!(busy > READ_START, "kept for a tick: {busy}");
    let quiet =
        read_buffer_without_heartbeats(publishes, read_size::QUIET_TICK + Duration::from_secs(1))
            .await;
    assert_eq!(quiet, READ_START);
}

/// A connection task that panics (a bug) must not leave its exclusive queues held by a
/// connection that is gone: [`ReleaseOnUnwind`] deletes them as the task unwinds.
#[tokio::test]
async fn a_connection_task_that_panics_leaves_no_exclusive_queue() {
    let (mut connection, _rx) = connection(full());
    let mut s = Vec::new();
    frame(&mut s, 1, ch::Open::default());
    frame(
        &mut s,
        1,
        queue::Declare {
            queue: "mine".into(),
            exclusive: true,
            ..Default::default()
        },
    );
    let mut buffer = BytesMut::from(&s[..]);
    while connection
        .on_frames_in(&mut buffer, &mut Liveness::default(), None)
        .is_ok_and(|handled| handled)
    {}
    let ctx = Arc::clone(&connection.ctx);
    let vhost = connection.vhost.clone().expect("vhost");
    assert!(vhost.queue("mine").is_some());

    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _release = ReleaseOnUnwind {
            broker: &ctx.broker,
            id: connection.id,
            finished: false,
        };
        let _connection = connection;
        panic!("a bug in the connection task");
    }));
    assert!(unwound.is_err());
    assert!(vhost.queue("mine").is_none());
}
