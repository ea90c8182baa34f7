//! Protocol-level tests against a scripted fake broker: the cases a real
//! broker does not produce on demand (silence, multiple acks, nacks, a forced
//! close in the middle of a call). No external broker needed.

use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use lockgate_client::{
    BasicProperties, Channel, Confirmation, Connection, ConsumeOptions, Consumer, Delivery, Error,
    FieldTable, PublishOptions, QueueDeclareOptions,
};
use lockgate_wire::{
    basic, channel, confirm, connection, encode_delivery, ContentHeader, DeliverRef, Frame,
    FrameCodec, Method, BASIC_CLASS_ID, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("timed out")
}

/// The broker side of one connection.
struct Fake {
    frames: Framed<TcpStream, FrameCodec>,
    heartbeats: usize,
}

impl Fake {
    /// Accepts a client and runs the handshake, offering `heartbeat` seconds.
    async fn accept(listener: &TcpListener, heartbeat: u16) -> Fake {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header, PROTOCOL_HEADER);
        let mut fake = Fake {
            frames: Framed::new(stream, FrameCodec::new(131_072)),
            heartbeats: 0,
        };
        fake.send(
            0,
            Method::ConnectionStart(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::default(),
                mechanisms: Bytes::from_static(b"AMQPLAIN PLAIN"),
                locales: Bytes::from_static(b"en_US"),
            }),
        )
        .await;
        let Method::ConnectionStartOk(start_ok) = fake.recv().await.1 else {
            panic!("expected start-ok");
        };
        assert_eq!(start_ok.mechanism, "PLAIN");
        assert_eq!(&start_ok.response[..], b"\0guest\0guest");
        fake.send(
            0,
            Method::ConnectionTune(connection::Tune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat,
            }),
        )
        .await;
        assert!(matches!(fake.recv().await.1, Method::ConnectionTuneOk(_)));
        let Method::ConnectionOpen(open) = fake.recv().await.1 else {
            panic!("expected connection.open");
        };
        assert_eq!(open.virtual_host, "/");
        fake.send(0, Method::ConnectionOpenOk(connection::OpenOk::default()))
            .await;
        fake
    }

    async fn send(&mut self, channel: u16, method: Method) {
        self.frames
            .send(Frame::Method { channel, method })
            .await
            .unwrap();
    }

    /// The next method frame (counting heartbeats on the way); content frames are skipped.
    async fn recv(&mut self) -> (u16, Method) {
        loop {
            match self.frames.next().await.unwrap().unwrap() {
                Frame::Method { channel, method } => return (channel, method),
                Frame::Heartbeat => self.heartbeats += 1,
                Frame::Header { .. } | Frame::Body { .. } => {}
            }
        }
    }

    /// The broker side of [`consume`] up to its first delivery: accepts the client, answers
    /// its `channel.open` and `basic.consume`; returns the channel.
    async fn consuming(listener: &TcpListener) -> (Fake, u16) {
        let mut fake = Fake::accept(listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::BasicConsume(_)));
        fake.consume_ok(ch, "ctag").await;
        (fake, ch)
    }

    /// Sends `channel.flow` and reads its flow-ok.
    async fn flow(&mut self, ch: u16, active: bool) {
        self.send(ch, Method::ChannelFlow(channel::Flow { active }))
            .await;
        let (at, flow_ok) = self.recv().await;
        assert!(
            at == ch && matches!(&flow_ok, Method::ChannelFlowOk(ok) if ok.active == active),
            "{flow_ok:?} on {at}"
        );
    }

    /// Accepts the client again after it lost its connection, and answers its
    /// re-opening of channel `ch`.
    async fn reconnected(listener: &TcpListener, ch: u16) -> Fake {
        let mut fake = Fake::accept(listener, 0).await;
        assert_eq!(fake.open_channel().await, ch);
        fake
    }

    /// [`Fake::reconnected`], then answers the opening of recovery's own channel
    /// (for the topology), whose number it returns.
    async fn recovering(listener: &TcpListener, ch: u16) -> (Fake, u16) {
        let mut fake = Fake::reconnected(listener, ch).await;
        let tmp = fake.open_channel().await;
        (fake, tmp)
    }

    /// The broker side of [`declared_q`] up to recovery's re-declaration of
    /// queue "q" (not answered): answers the declaration, drops the connection,
    /// then as [`Fake::recovering`]. Returns the application's channel and
    /// recovery's.
    async fn redeclaring_q(listener: &TcpListener) -> (Fake, u16, u16) {
        let mut fake = Fake::accept(listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::QueueDeclare(_)));
        fake.send(ch, declare_ok("q")).await;
        drop(fake);
        let (mut fake, tmp) = Fake::recovering(listener, ch).await;
        let (at, declare) = fake.recv().await;
        assert!(
            at == tmp && matches!(declare, Method::QueueDeclare(_)),
            "{declare:?} on {at}"
        );
        (fake, ch, tmp)
    }

    /// The broker side of a call that the lost connection leaves unanswered:
    /// answers `channel.open`, reads the call, drops the connection, then as
    /// [`Fake::reconnected`]. Returns the channel and the call.
    async fn lost_during_a_call(listener: &TcpListener) -> (Fake, u16, Method) {
        let mut fake = Fake::accept(listener, 0).await;
        let ch = fake.open_channel().await;
        let (_, call) = fake.recv().await;
        drop(fake);
        (Fake::reconnected(listener, ch).await, ch, call)
    }

    /// Answers the client's `connection.close`.
    async fn closed(&mut self) {
        let (_, close) = self.recv().await;
        assert!(matches!(close, Method::ConnectionClose(_)));
        self.send(0, Method::ConnectionCloseOk(connection::CloseOk {}))
            .await;
    }

    /// Answers the client's `basic.consume` on channel `ch` with consumer tag `tag`.
    async fn consume_ok(&mut self, ch: u16, tag: &str) {
        self.send(
            ch,
            Method::BasicConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.into(),
            }),
        )
        .await;
    }

    /// Answers the client's `channel.close` 200 of channel `ch`.
    async fn close_channel(&mut self, ch: u16) {
        let (at, close) = self.recv().await;
        assert!(
            at == ch && matches!(&close, Method::ChannelClose(c) if c.reply_code == 200),
            "{close:?} on {at}"
        );
        self.send(ch, Method::ChannelCloseOk(channel::CloseOk {}))
            .await;
    }

    /// Answers the client's `channel.open`.
    async fn open_channel(&mut self) -> u16 {
        let (ch, method) = self.recv().await;
        assert!(matches!(method, Method::ChannelOpen(_)), "{method:?}");
        self.send(ch, Method::ChannelOpenOk(channel::OpenOk::default()))
            .await;
        ch
    }
}

/// Connects with automatic recovery (default settings) and opens a channel.
async fn recovering_channel(uri: &str) -> (Connection, Channel) {
    let options = lockgate_client::ConnectionOptions::from_uri(uri)
        .unwrap()
        .with_recovery(lockgate_client::RecoveryConfig::default());
    let conn = Connection::connect_with(options).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    (conn, ch)
}

/// Publishes `body` to queue "q" (through the default exchange).
async fn publish(ch: &Channel, body: &[u8]) -> lockgate_client::Result<Confirmation> {
    ch.basic_publish(
        "",
        "q",
        PublishOptions::default(),
        BasicProperties::default(),
        body,
    )
    .await
}

/// A client with recovery that declared queue "q" on its channel (see
/// [`Fake::redeclaring_q`]).
async fn declared_q(uri: &str) -> (Connection, Channel) {
    let (conn, ch) = recovering_channel(uri).await;
    ch.queue_declare("q", QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    (conn, ch)
}

/// `queue.declare-ok` for `queue`, empty.
fn declare_ok(queue: &str) -> Method {
    Method::QueueDeclareOk(lockgate_wire::queue::DeclareOk {
        queue: queue.into(),
        message_count: 0,
        consumer_count: 0,
    })
}

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("amqp://127.0.0.1:{}", listener.local_addr().unwrap().port());
    (listener, uri)
}

/// Consumes queue "q" as "ctag" on `ch`: the consumer [`Fake::consuming`] expects.
async fn consume_q(ch: &Channel) -> lockgate_client::Result<Consumer> {
    ch.basic_consume(
        "q",
        "ctag",
        ConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// A client that consumes queue "q" as "ctag" on a new channel, keeps what `keep` takes of
/// its first `n` deliveries, then closes the connection (see [`Fake::consuming`]).
fn consume<T: Send + 'static>(
    uri: String,
    n: usize,
    keep: fn(Delivery) -> T,
) -> tokio::task::JoinHandle<Vec<T>> {
    tokio::spawn(async move {
        let conn = Connection::connect(&uri).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let mut consumer = consume_q(&ch).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(keep(consumer.next().await.unwrap().unwrap()));
        }
        conn.close().await.unwrap();
        got
    })
}

#[tokio::test]
async fn silent_broker_is_detected_by_missed_heartbeats() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            assert_eq!(conn.heartbeat(), 1);
            let ch = conn.open_channel().await.unwrap();
            // The broker never answers: the call must fail, not hang.
            let err = ch
                .queue_declare("q", QueueDeclareOptions::default(), FieldTable::default())
                .await
                .unwrap_err();
            assert!(matches!(err, Error::HeartbeatTimeout), "{err}");
            assert!(matches!(conn.close_error(), Some(Error::HeartbeatTimeout)));
        });
        let mut fake = Fake::accept(&listener, 1).await;
        fake.open_channel().await;
        // Keep reading (the client's heartbeats) but never write.
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = fake.frames.next().await {
                if matches!(frame, Frame::Heartbeat) {
                    fake.heartbeats += 1;
                }
            }
            fake.heartbeats
        });
        client.await.unwrap();
        assert!(reader.await.unwrap() >= 1, "the client sent no heartbeat");
    })
    .await;
}

#[tokio::test]
async fn multiple_ack_resolves_a_range_and_nack_is_an_error() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            ch.confirm_select().await.unwrap();
            let mut confirmations = Vec::new();
            for i in 0..5u8 {
                let c = publish(&ch, &[i]).await.unwrap();
                confirmations.push(c);
            }
            let results = futures::future::join_all(confirmations).await;
            assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
            assert!(matches!(results[3], Err(Error::Nacked)));
            assert!(results[4].is_ok());
            conn.close().await.unwrap();
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::ConfirmSelect(_)));
        fake.send(ch, Method::ConfirmSelectOk(confirm::SelectOk {}))
            .await;
        for _ in 0..5 {
            assert!(matches!(fake.recv().await.1, Method::BasicPublish(_)));
        }
        let ack = |delivery_tag, multiple| {
            Method::BasicAck(basic::Ack {
                delivery_tag,
                multiple,
            })
        };
        fake.send(ch, ack(3, true)).await;
        fake.send(
            ch,
            Method::BasicNack(basic::Nack {
                delivery_tag: 4,
                multiple: false,
                requeue: false,
            }),
        )
        .await;
        fake.send(ch, ack(5, false)).await;
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn forced_close_fails_the_pending_call_with_its_code() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let err = ch
                .queue_declare("q", QueueDeclareOptions::default(), FieldTable::default())
                .await
                .unwrap_err();
            assert_eq!(err.reply_code(), Some(320), "{err}");
            assert!(matches!(err, Error::ConnectionClosed(_)));
            assert_eq!(conn.close_error().and_then(|e| e.reply_code()), Some(320));
        });
        let mut fake = Fake::accept(&listener, 0).await;
        fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::QueueDeclare(_)));
        fake.send(
            0,
            Method::ConnectionClose(connection::Close {
                reply_code: 320,
                reply_text:
                    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                        .into(),
                class_id: 0,
                method_id: 0,
            }),
        )
        .await;
        // The client answers close-ok before it lets go of the socket.
        assert!(matches!(fake.recv().await.1, Method::ConnectionCloseOk(_)));
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_abandoned_call_does_not_steal_the_next_reply() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let declare = ch.queue_declare(
                "slow",
                QueueDeclareOptions::default(),
                FieldTable::default(),
            );
            assert!(tokio::time::timeout(Duration::from_millis(100), declare)
                .await
                .is_err());
            // The late declare-ok must go nowhere; the purge gets its purge-ok.
            assert_eq!(ch.queue_purge("slow").await.unwrap(), 7);
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::QueueDeclare(_)));
        assert!(matches!(fake.recv().await.1, Method::QueuePurge(_)));
        fake.send(ch, declare_ok("slow")).await;
        fake.send(
            ch,
            Method::QueuePurgeOk(lockgate_wire::queue::PurgeOk { message_count: 7 }),
        )
        .await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_delivery_with_non_utf8_names_is_replaced_and_later_names_are_exact() {
    within(async {
        let (listener, uri) = listener().await;
        let client = consume(uri, 3, |d| {
            (
                d.delivery_tag,
                d.consumer_tag.to_string(),
                d.routing_key.to_string(),
                d.body.clone(),
            )
        });
        let (mut fake, ch) = Fake::consuming(&listener).await;
        let header = ContentHeader::new(BASIC_CLASS_ID, 1, BasicProperties::default()).unwrap();
        let mut raw = bytes::BytesMut::new();
        for (delivery_tag, routing_key, body) in [(1, "k?", b"a"), (2, "k1", b"b"), (3, "k2", b"c")]
        {
            let deliver = DeliverRef {
                consumer_tag: "ctag",
                delivery_tag,
                redelivered: false,
                exchange: "",
                routing_key,
            };
            let at = raw.len();
            encode_delivery(&mut raw, ch, &deliver, &header, body, 131_072).unwrap();
            if delivery_tag == 1 {
                // The method's last octet, the routing key's last, made invalid UTF-8.
                let size = u32::from_be_bytes(raw[at + 3..at + 7].try_into().unwrap());
                raw[at + 7 + usize::try_from(size).unwrap() - 1] = 0xff;
            }
        }
        fake.frames.get_mut().write_all(&raw).await.unwrap();
        fake.closed().await;
        let got = client.await.unwrap();
        let expected = [(1, "k\u{fffd}", b"a"), (2, "k1", b"b"), (3, "k2", b"c")];
        assert_eq!(got.len(), expected.len());
        for ((tag, ctag, key, body), (want_tag, want_key, want_body)) in got.iter().zip(expected) {
            assert_eq!(
                (*tag, ctag.as_str(), key.as_str(), &body[..]),
                (want_tag, "ctag", want_key, &want_body[..])
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_publisher_waiting_for_room_fails_once_a_silent_broker_is_declared_dead() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let body = vec![0u8; 64 * 1024];
            // The broker neither reads nor writes: the socket buffers fill, then the
            // client's buffer, then a publish waits for room until missed heartbeats end
            // the session.
            let error = loop {
                if let Err(e) = publish(&ch, &body[..]).await {
                    break e;
                }
            };
            (error, conn.close_error())
        });
        let mut fake = Fake::accept(&listener, 1).await;
        fake.open_channel().await;
        let (error, close_error) = client.await.unwrap();
        assert!(
            matches!(close_error, Some(Error::HeartbeatTimeout)),
            "{error:?}, {close_error:?}"
        );
        drop(fake);
    })
    .await;
}

/// What a test checks of a delivery.
type Received = (u64, bool, String, String, String, BasicProperties, Vec<u8>);

#[tokio::test]
async fn deliveries_read_whole_or_octet_by_octet_are_the_same() {
    within(async {
        let (listener, uri) = listener().await;
        let client = consume(uri, 10, |d| -> Received {
            (
                d.delivery_tag,
                d.redelivered,
                d.consumer_tag.to_string(),
                d.exchange.to_string(),
                d.routing_key.to_string(),
                d.properties.clone().into_inner(),
                d.body.to_vec(),
            )
        });
        let (mut fake, ch) = Fake::consuming(&listener).await;
        let rich = BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(
                [("k".to_owned(), lockgate_wire::FieldValue::I32(7))]
                    .into_iter()
                    .collect(),
            ),
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        let big = vec![3u8; 200_000];
        let messages: [(&str, &str, &BasicProperties, &[u8]); 5] = [
            ("", "q", &BasicProperties::default(), b"0123456789abcdef"),
            ("", "q", &BasicProperties::default(), b"second"),
            ("amq.direct", "q", &rich, b""),
            ("amq.direct", "other", &rich, &big),
            ("", "q", &BasicProperties::default(), b"last"),
        ];
        let mut expected: Vec<Received> = Vec::new();
        let mut wire = Vec::new();
        for (round, octet_by_octet) in [false, true].into_iter().enumerate() {
            let mut raw = bytes::BytesMut::new();
            for (i, (exchange, routing_key, properties, body)) in messages.iter().enumerate() {
                let delivery_tag = (round * messages.len() + i + 1) as u64;
                let deliver = DeliverRef {
                    consumer_tag: "ctag",
                    delivery_tag,
                    redelivered: i % 2 == 1,
                    exchange,
                    routing_key,
                };
                let header =
                    ContentHeader::new(BASIC_CLASS_ID, body.len() as u64, (*properties).clone())
                        .unwrap();
                encode_delivery(&mut raw, ch, &deliver, &header, body, 131_072).unwrap();
                expected.push((
                    delivery_tag,
                    i % 2 == 1,
                    "ctag".into(),
                    exchange.to_string(),
                    routing_key.to_string(),
                    (*properties).clone(),
                    body.to_vec(),
                ));
            }
            wire.push((raw, octet_by_octet));
        }
        let socket = fake.frames.get_mut();
        for (raw, octet_by_octet) in wire {
            if octet_by_octet {
                // The small messages one octet per write, the large one in 1 KiB parts.
                for part in raw.chunks(1).take(400).chain(raw[400..].chunks(1024)) {
                    socket.write_all(part).await.unwrap();
                    socket.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_micros(50)).await;
                }
            } else {
                socket.write_all(&raw).await.unwrap();
            }
        }
        fake.closed().await;
        assert_eq!(client.await.unwrap(), expected);
    })
    .await;
}

#[tokio::test]
async fn a_publish_made_while_confirm_select_is_pending_is_confirmed() {
    within(async {
        let (listener, uri) = listener().await;
        let (selecting, selected) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let select = tokio::spawn({
                let ch = ch.clone();
                async move { ch.confirm_select().await }
            });
            // confirm.select is on the wire: the broker numbers this publish 1.
            selected.await.unwrap();
            let confirmation = publish(&ch, b"m").await.unwrap();
            assert!(confirmation.is_requested());
            select.await.unwrap().unwrap();
            confirmation.await.unwrap();
            conn.close().await.unwrap();
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::ConfirmSelect(_)));
        selecting.send(()).unwrap();
        assert!(matches!(fake.recv().await.1, Method::BasicPublish(_)));
        fake.send(ch, Method::ConfirmSelectOk(confirm::SelectOk {}))
            .await;
        fake.send(
            ch,
            Method::BasicAck(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            }),
        )
        .await;
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            drop(conn);
            // A channel keeps its connection open.
            ch.queue_declare("q", QueueDeclareOptions::default(), FieldTable::default())
                .await
                .unwrap();
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::QueueDeclare(_)));
        fake.send(ch, declare_ok("q")).await;
        client.await.unwrap();
        // The channel's last handle went first.
        assert!(matches!(fake.recv().await, (id, Method::ChannelClose(_)) if id == ch));
        fake.closed().await;
        // The client lets go of the socket: its reader and writer are gone.
        assert!(matches!(fake.frames.next().await, None | Some(Err(_))));
    })
    .await;
}

#[tokio::test]
async fn dropping_the_last_handle_of_a_channel_closes_it() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let mut consumer = consume_q(&ch).await.unwrap();
            // Its consumer, then its delivery, keep the channel open.
            drop(ch);
            let delivery = consumer.next().await.unwrap().unwrap();
            drop(consumer);
            delivery.ack().await.unwrap();
            drop(delivery);
            conn.close().await.unwrap();
        });
        let (mut fake, ch) = Fake::consuming(&listener).await;
        fake.frames
            .get_mut()
            .write_all(&delivery_frames(ch, 1))
            .await
            .unwrap();
        // Dropping the consumer cancels it; its delivery is still the application's.
        assert!(matches!(fake.recv().await, (id, Method::BasicCancel(_)) if id == ch));
        assert!(matches!(fake.recv().await, (id, Method::BasicAck(_)) if id == ch));
        let (id, close) = fake.recv().await;
        assert_eq!(id, ch);
        assert!(
            matches!(&close, Method::ChannelClose(c) if c.reply_code == 200),
            "{close:?}"
        );
        fake.send(
            ch,
            Method::BasicCancelOk(basic::CancelOk {
                consumer_tag: "ctag".into(),
            }),
        )
        .await;
        fake.send(ch, Method::ChannelCloseOk(channel::CloseOk {}))
            .await;
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_abandoned_channel_open_closes_the_channel() {
    within(async {
        let (listener, uri) = listener().await;
        let (opening, opened) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let open = tokio::spawn({
                let conn = conn.clone();
                async move { conn.open_channel().await }
            });
            // channel.open is on the wire; give up waiting for open-ok.
            opened.await.unwrap();
            open.abort();
            assert!(open.await.unwrap_err().is_cancelled());
            conn.close().await.unwrap();
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let (ch, open) = fake.recv().await;
        assert!(matches!(open, Method::ChannelOpen(_)), "{open:?}");
        opening.send(()).unwrap();
        let (id, close) = fake.recv().await;
        assert!(
            matches!(&close, Method::ChannelClose(c) if c.reply_code == 200 && id == ch),
            "{close:?} on {id}"
        );
        fake.send(ch, Method::ChannelOpenOk(channel::OpenOk::default()))
            .await;
        fake.send(ch, Method::ChannelCloseOk(channel::CloseOk {}))
            .await;
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_channel_dropped_before_the_connection_is_lost_is_not_recovered() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let (conn, ch) = recovering_channel(&uri).await;
            drop(ch);
            conn
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let dropped = fake.open_channel().await;
        assert!(matches!(fake.recv().await, (id, Method::ChannelClose(_)) if id == dropped));
        let conn = client.await.unwrap();
        // The connection is lost before the channel's close-ok.
        drop(fake);
        let mut fake = Fake::accept(&listener, 0).await;
        // Recovery opens its own channel for the topology, and not the dropped one.
        let (id, open) = fake.recv().await;
        assert!(matches!(open, Method::ChannelOpen(_)), "{open:?}");
        assert_ne!(id, dropped);
        fake.send(id, Method::ChannelOpenOk(channel::OpenOk::default()))
            .await;
        fake.close_channel(id).await;
        drop(conn);
    })
    .await;
}

/// Frames of a one-octet delivery of `delivery_tag` to "ctag" on channel `ch`.
fn delivery_frames(ch: u16, delivery_tag: u64) -> bytes::BytesMut {
    let header = ContentHeader::new(BASIC_CLASS_ID, 1, BasicProperties::default()).unwrap();
    let deliver = DeliverRef {
        consumer_tag: "ctag",
        delivery_tag,
        redelivered: false,
        exchange: "",
        routing_key: "q",
    };
    let mut raw = bytes::BytesMut::new();
    encode_delivery(&mut raw, ch, &deliver, &header, b"m", 131_072).unwrap();
    raw
}

#[tokio::test]
async fn dropping_a_consumer_cancels_it_and_gives_back_what_it_did_not_yield() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let mut consumer = consume_q(&ch).await.unwrap();
            let first = consumer.next().await.unwrap().unwrap();
            first.ack().await.unwrap();
            // Its qos-ok follows delivery 2 on the socket: delivery 2 is in the stream now.
            ch.basic_qos(0, lockgate_client::QosOptions::default())
                .await
                .unwrap();
            drop(consumer);
            // Answered after delivery 3 and the cancel-ok.
            ch.basic_qos(0, lockgate_client::QosOptions::default())
                .await
                .unwrap();
            conn.close().await.unwrap();
        });
        let (mut fake, ch) = Fake::consuming(&listener).await;
        let mut both = delivery_frames(ch, 1);
        both.extend_from_slice(&delivery_frames(ch, 2));
        fake.frames.get_mut().write_all(&both).await.unwrap();
        assert!(matches!(fake.recv().await.1, Method::BasicAck(a) if a.delivery_tag == 1));
        assert!(matches!(fake.recv().await.1, Method::BasicQos(_)));
        fake.send(ch, Method::BasicQosOk(basic::QosOk {})).await;
        let (_, cancel) = fake.recv().await;
        assert!(
            matches!(&cancel, Method::BasicCancel(c) if c.consumer_tag == "ctag" && !c.nowait),
            "{cancel:?}"
        );
        let requeued = |m: &Method, tag| {
            matches!(m, Method::BasicReject(r) if r.delivery_tag == tag && r.requeue)
        };
        let (_, reject) = fake.recv().await;
        assert!(requeued(&reject, 2), "{reject:?}");
        assert!(matches!(fake.recv().await.1, Method::BasicQos(_)));
        // A delivery sent before the broker took the cancel goes back too.
        fake.frames
            .get_mut()
            .write_all(&delivery_frames(ch, 3))
            .await
            .unwrap();
        fake.send(
            ch,
            Method::BasicCancelOk(basic::CancelOk {
                consumer_tag: "ctag".into(),
            }),
        )
        .await;
        fake.send(ch, Method::BasicQosOk(basic::QosOk {})).await;
        let (_, reject) = fake.recv().await;
        assert!(requeued(&reject, 3), "{reject:?}");
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_abandoned_consume_is_cancelled_before_its_delivery_goes_back() {
    within(async {
        let (listener, uri) = listener().await;
        let (consuming, consumed) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let consume = tokio::spawn({
                let ch = ch.clone();
                async move { consume_q(&ch).await }
            });
            // basic.consume is on the wire; give up waiting for consume-ok.
            consumed.await.unwrap();
            consume.abort();
            assert!(consume.await.unwrap_err().is_cancelled());
            // Answered after the consume-ok and its delivery.
            ch.basic_qos(0, lockgate_client::QosOptions::default())
                .await
                .unwrap();
            conn.close().await.unwrap();
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::BasicConsume(_)));
        consuming.send(()).unwrap();
        assert!(matches!(fake.recv().await.1, Method::BasicQos(_)));
        fake.consume_ok(ch, "ctag").await;
        fake.frames
            .get_mut()
            .write_all(&delivery_frames(ch, 1))
            .await
            .unwrap();
        fake.send(ch, Method::BasicQosOk(basic::QosOk {})).await;
        let (_, cancel) = fake.recv().await;
        assert!(
            matches!(&cancel, Method::BasicCancel(c) if c.consumer_tag == "ctag"),
            "{cancel:?}"
        );
        let (_, reject) = fake.recv().await;
        assert!(
            matches!(&reject, Method::BasicReject(r) if r.delivery_tag == 1 && r.requeue),
            "{reject:?}"
        );
        fake.send(
            ch,
            Method::BasicCancelOk(basic::CancelOk {
                consumer_tag: "ctag".into(),
            }),
        )
        .await;
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn connection_blocked_and_unblocked_reach_the_application() {
    within(async {
        let (listener, uri) = listener().await;
        let (unblock, unblocked) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            assert_eq!(conn.blocked(), None);
            // The broker sends connection.blocked before open-ok: read by the time it opens.
            let _ch = conn.open_channel().await.unwrap();
            assert_eq!(conn.blocked().as_deref(), Some("low on memory"));
            assert!(conn.unblocked().now_or_never().is_none());
            unblock.send(()).unwrap();
            conn.unblocked().await.unwrap();
            assert_eq!(conn.blocked(), None);
            conn.close().await.unwrap();
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let (ch, open) = fake.recv().await;
        assert!(matches!(open, Method::ChannelOpen(_)), "{open:?}");
        fake.send(
            0,
            Method::ConnectionBlocked(connection::Blocked {
                reason: "low on memory".into(),
            }),
        )
        .await;
        fake.send(ch, Method::ChannelOpenOk(channel::OpenOk::default()))
            .await;
        unblocked.await.unwrap();
        fake.send(0, Method::ConnectionUnblocked(connection::Unblocked {}))
            .await;
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn close_ok_follows_the_frame_being_written_when_the_broker_closes() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            // More than the socket buffers on both sides hold: the writer is still
            // writing it when the broker's close arrives.
            let body = vec![7u8; 32 << 20];
            publish(&ch, &body[..]).await.unwrap();
            // Queued behind the message, and never answered.
            ch.basic_qos(1, lockgate_client::QosOptions::default())
                .await
                .unwrap_err()
        });
        let mut fake = Fake::accept(&listener, 0).await;
        fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::BasicPublish(_)));
        fake.send(
            0,
            Method::ConnectionClose(connection::Close {
                reply_code: 320,
                reply_text: "CONNECTION_FORCED - shutdown".into(),
                class_id: 0,
                method_id: 0,
            }),
        )
        .await;
        // Whole frames (the body frame in progress completed), then close-ok, then
        // the end of the stream.
        let mut body_frames = 0;
        loop {
            match fake.frames.next().await {
                Some(Ok(Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_),
                })) => break,
                Some(Ok(Frame::Header { .. } | Frame::Body { .. })) => body_frames += 1,
                other => panic!("{other:?} after {body_frames} content frames"),
            }
        }
        assert!(body_frames < (32 << 20) / 131_072, "{body_frames}");
        assert!(matches!(fake.frames.next().await, None | Some(Err(_))));
        let error = client.await.unwrap();
        assert_eq!(error.reply_code(), Some(320), "{error}");
        assert!(matches!(error, Error::ConnectionClosed(_)), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_recovered_channel_is_usable_only_once_its_topology_is_back() {
    within(async {
        let (listener, uri) = listener().await;
        let (declaring, declared) = tokio::sync::oneshot::channel();
        let (publishing, published) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let (conn, ch) = declared_q(&uri).await;
            // Recovery is re-declaring the queue: a message published now would
            // reach no queue (and be confirmed all the same).
            declared.await.unwrap();
            let published = publish(&ch, b"m").await;
            publishing.send(()).unwrap();
            (conn, ch, published)
        });
        // The application's channel is re-opened, then the topology re-declared on
        // recovery's own channel.
        let (mut fake, _, tmp) = Fake::redeclaring_q(&listener).await;
        declaring.send(()).unwrap();
        published.await.unwrap();
        fake.send(tmp, declare_ok("q")).await;
        fake.close_channel(tmp).await;
        let (conn, ch, published) = client.await.unwrap();
        assert!(
            matches!(published, Err(Error::Disconnected)),
            "{published:?}"
        );
        drop((ch, conn));
    })
    .await;
}

#[tokio::test]
async fn deliveries_left_from_a_lost_connection_are_not_yielded_after_recovery() {
    within(async {
        let (listener, uri) = listener().await;
        let (recovered_tx, recovered) = tokio::sync::oneshot::channel();
        let (took_tx, took) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let (conn, ch) = recovering_channel(&uri).await;
            let mut consumer = consume_q(&ch).await.unwrap();
            let first = consumer.next().await.unwrap().unwrap();
            assert_eq!((first.delivery_tag, first.redelivered), (1, false));
            took_tx.send(()).unwrap();
            recovered.await.unwrap();
            // Delivery 2 of the lost connection is the broker's again (it redelivers it):
            // yielded, it would be processed twice, its ack ignored.
            let next = consumer.next().await.unwrap().unwrap();
            let seen = (next.delivery_tag, next.redelivered);
            next.ack().await.unwrap();
            (conn, ch, consumer, seen)
        });
        let (mut fake, ch) = Fake::consuming(&listener).await;
        let mut both = delivery_frames(ch, 1);
        both.extend_from_slice(&delivery_frames(ch, 2));
        fake.frames.get_mut().write_all(&both).await.unwrap();
        took.await.unwrap();
        drop(fake);
        let (mut fake, tmp) = Fake::recovering(&listener, ch).await;
        // Nothing was declared.
        fake.close_channel(tmp).await;
        assert!(matches!(fake.recv().await, (at, Method::BasicConsume(_)) if at == ch));
        fake.consume_ok(ch, "ctag").await;
        let mut again = delivery_frames(ch, 1);
        // Redelivered: the redelivered flag is the octet after the delivery tag.
        let consumer_tag_end = 7 + 4 + 1 + "ctag".len();
        again[consumer_tag_end + 8] = 1;
        fake.frames.get_mut().write_all(&again).await.unwrap();
        recovered_tx.send(()).unwrap();
        let (conn, ch, consumer, seen) = client.await.unwrap();
        assert_eq!(seen, (1, true));
        let (_, ack) = fake.recv().await;
        assert!(
            matches!(&ack, Method::BasicAck(a) if a.delivery_tag == 1),
            "{ack:?}"
        );
        drop((consumer, ch, conn));
    })
    .await;
}

#[tokio::test]
async fn confirm_mode_selected_before_a_lost_connection_is_recovered() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let (conn, ch) = recovering_channel(&uri).await;
            // Lost before select-ok: the broker may or may not have taken it, and
            // the channel numbers its publishes from here on.
            assert!(ch.confirm_select().await.is_err());
            (conn, ch)
        });
        let (mut fake, ch, select) = Fake::lost_during_a_call(&listener).await;
        assert!(matches!(select, Method::ConfirmSelect(_)), "{select:?}");
        let (conn, channel) = client.await.unwrap();
        // Re-selected: otherwise its numbered publishes would never be confirmed.
        let (at, select) = fake.recv().await;
        assert!(
            at == ch && matches!(select, Method::ConfirmSelect(_)),
            "{select:?} on {at}"
        );
        drop((channel, conn));
    })
    .await;
}

#[tokio::test]
async fn a_prefetch_set_before_a_lost_connection_is_recovered() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let (conn, ch) = recovering_channel(&uri).await;
            // Lost before qos-ok: the broker may have applied it.
            assert!(ch
                .basic_qos(10, lockgate_client::QosOptions::default())
                .await
                .is_err());
            (conn, ch)
        });
        let (mut fake, ch, qos) = Fake::lost_during_a_call(&listener).await;
        assert!(matches!(qos, Method::BasicQos(_)), "{qos:?}");
        let (conn, channel) = client.await.unwrap();
        // Re-applied: without it the recovered consumers get every message at once.
        let (at, qos) = fake.recv().await;
        assert!(
            at == ch && matches!(&qos, Method::BasicQos(q) if q.prefetch_count == 10 && !q.global),
            "{qos:?} on {at}"
        );
        drop((channel, conn));
    })
    .await;
}

#[tokio::test]
async fn a_channel_closed_while_the_connection_recovers_stays_closed() {
    within(async {
        let (listener, uri) = listener().await;
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let (conn, ch) = recovering_channel(&uri).await;
            let _consumer = consume_q(&ch).await.unwrap();
            // Never answered: it fails when the connection is lost.
            assert!(ch
                .queue_declare("q", QueueDeclareOptions::default(), FieldTable::default())
                .await
                .is_err());
            // Its broker side went with the socket: closed, it is not recovered.
            let close = ch.close().await;
            closed_tx.send(()).unwrap();
            (conn, ch, close)
        });
        let (mut fake, ch) = Fake::consuming(&listener).await;
        assert!(matches!(fake.recv().await.1, Method::QueueDeclare(_)));
        drop(fake);
        closed.await.unwrap();
        let mut fake = Fake::accept(&listener, 0).await;
        // Only recovery's own channel is opened, and no consumer restarted.
        let tmp = fake.open_channel().await;
        assert_ne!(tmp, ch);
        fake.close_channel(tmp).await;
        let (conn, channel, close) = client.await.unwrap();
        assert!(close.is_ok(), "{close:?}");
        assert!(!channel.is_open());
        drop((channel, conn));
        // Then the connection's close (or the end of the socket), not a basic.consume.
        let next = fake.frames.next().await;
        assert!(
            matches!(
                next,
                None | Some(Err(_))
                    | Some(Ok(Frame::Method {
                        method: Method::ConnectionClose(_),
                        ..
                    }))
            ),
            "{next:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_channel_closed_while_recovery_restores_the_topology_is_closed_on_the_broker() {
    within(async {
        let (listener, uri) = listener().await;
        let (declaring, declared) = tokio::sync::oneshot::channel();
        let (closing, closed) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let (conn, ch) = declared_q(&uri).await;
            // Recovery has re-opened the channel and is re-declaring the queue.
            declared.await.unwrap();
            let close = ch.close().await;
            closing.send(()).unwrap();
            (conn, ch, close)
        });
        let (mut fake, ch, tmp) = Fake::redeclaring_q(&listener).await;
        declaring.send(()).unwrap();
        closed.await.unwrap();
        fake.send(tmp, declare_ok("q")).await;
        fake.close_channel(tmp).await;
        // The channel re-opened on the broker is closed there too.
        fake.close_channel(ch).await;
        let (conn, channel, close) = client.await.unwrap();
        assert!(close.is_ok(), "{close:?}");
        drop((channel, conn));
    })
    .await;
}

#[tokio::test]
async fn a_consumer_dropped_while_the_connection_recovers_is_not_restarted() {
    within(async {
        let (listener, uri) = listener().await;
        let (drop_tx, drop_rx) = tokio::sync::oneshot::channel();
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let (conn, ch) = recovering_channel(&uri).await;
            let first = consume_q(&ch).await.unwrap();
            let second = ch
                .basic_consume(
                    "q",
                    "kept",
                    ConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            drop_rx.await.unwrap();
            drop(first);
            dropped_tx.send(()).unwrap();
            (conn, ch, second)
        });
        let (mut fake, ch) = Fake::consuming(&listener).await;
        assert!(matches!(fake.recv().await.1, Method::BasicConsume(_)));
        fake.consume_ok(ch, "kept").await;
        drop(fake);
        let (mut fake, tmp) = Fake::recovering(&listener, ch).await;
        assert!(matches!(fake.recv().await, (at, Method::ChannelClose(_)) if at == tmp));
        // While the connection recovers, the application drops its first consumer.
        drop_tx.send(()).unwrap();
        dropped.await.unwrap();
        fake.send(tmp, Method::ChannelCloseOk(channel::CloseOk {}))
            .await;
        // Only the consumer it kept is restarted: the other would take messages that
        // no one reads, and hold them unacknowledged.
        let (at, consume) = fake.recv().await;
        assert!(
            at == ch && matches!(&consume, Method::BasicConsume(c) if c.consumer_tag == "kept"),
            "{consume:?} on {at}"
        );
        fake.consume_ok(ch, "kept").await;
        let (conn, channel, kept) = client.await.unwrap();
        drop((kept, channel, conn));
    })
    .await;
}

#[tokio::test]
async fn a_channel_open_answered_with_another_method_leaves_its_number_usable() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            // One channel number: the second open takes the first one's.
            let conn = Connection::connect(&format!("{uri}?channel_max=1"))
                .await
                .unwrap();
            let error = conn.open_channel().await.unwrap_err();
            assert!(matches!(error, Error::UnexpectedFrame(_)), "{error}");
            let ch = conn.open_channel().await.unwrap();
            ch.queue_declare("q", QueueDeclareOptions::default(), FieldTable::default())
                .await
                .unwrap();
            conn.close().await.unwrap();
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let (ch, open) = fake.recv().await;
        assert!(matches!(open, Method::ChannelOpen(_)), "{open:?}");
        fake.send(ch, Method::BasicQosOk(basic::QosOk {})).await;
        // The replies on that number reach the new channel, not the failed one.
        assert_eq!(fake.open_channel().await, ch);
        assert!(matches!(fake.recv().await.1, Method::QueueDeclare(_)));
        fake.send(ch, declare_ok("q")).await;
        fake.closed().await;
        client.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn channel_flow_holds_publishes_until_the_broker_resumes_it() {
    within(async {
        let (listener, uri) = listener().await;
        let (pause, paused) = tokio::sync::oneshot::channel();
        let (pause_again, paused_again) = tokio::sync::oneshot::channel();
        let (holding, held) = tokio::sync::oneshot::channel();
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            paused.await.unwrap();
            let mut held_publish = Box::pin(publish(&ch, b"m"));
            assert!((&mut held_publish).now_or_never().is_none());
            // The channel's other methods are not held.
            ch.basic_qos(1, lockgate_client::QosOptions::default())
                .await
                .unwrap();
            held_publish.await.unwrap();
            paused_again.await.unwrap();
            // A held publish ends with the connection.
            let mut held_publish = Box::pin(publish(&ch, b"m"));
            assert!((&mut held_publish).now_or_never().is_none());
            holding.send(()).unwrap();
            held_publish.await.unwrap_err()
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let ch = fake.open_channel().await;
        fake.flow(ch, false).await;
        pause.send(()).unwrap();
        assert!(matches!(fake.recv().await.1, Method::BasicQos(_)));
        fake.send(ch, Method::BasicQosOk(basic::QosOk {})).await;
        fake.flow(ch, true).await;
        assert!(matches!(fake.recv().await.1, Method::BasicPublish(_)));
        fake.flow(ch, false).await;
        pause_again.send(()).unwrap();
        held.await.unwrap();
        fake.send(
            0,
            Method::ConnectionClose(connection::Close {
                reply_code: 320,
                reply_text: "CONNECTION_FORCED - shutdown".into(),
                class_id: 0,
                method_id: 0,
            }),
        )
        .await;
        assert!(matches!(fake.recv().await.1, Method::ConnectionCloseOk(_)));
        let error = client.await.unwrap();
        assert_eq!(error.reply_code(), Some(320), "{error}");
    })
    .await;
}

/// A frame as octets: type, channel, `payload` and a frame-end octet `end`.
fn raw_frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(end);
    frame
}

/// A client whose `queue.declare` the broker answers with the octets `answer` makes for the
/// channel. Returns the methods the broker reads after them, up to the end of the stream, and
/// the call's error.
async fn answered_with(answer: fn(u16) -> Vec<u8>) -> (Vec<Method>, Error) {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move {
            let conn = Connection::connect(&uri).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let error = ch
                .queue_declare("q", QueueDeclareOptions::default(), FieldTable::default())
                .await
                .unwrap_err();
            // The connection ends with the same error.
            assert_eq!(
                conn.close_error().map(|e| e.to_string()),
                Some(error.to_string())
            );
            error
        });
        let mut fake = Fake::accept(&listener, 0).await;
        let ch = fake.open_channel().await;
        assert!(matches!(fake.recv().await.1, Method::QueueDeclare(_)));
        fake.frames.get_mut().write_all(&answer(ch)).await.unwrap();
        let mut read = Vec::new();
        while let Some(Ok(frame)) = fake.frames.next().await {
            if let Frame::Method { method, .. } = frame {
                read.push(method);
            }
        }
        (read, client.await.unwrap())
    })
    .await
}

/// The one `connection.close` in `read`: (code, class id, method id).
fn closed_with(read: &[Method]) -> (u16, u16, u16) {
    match read {
        [Method::ConnectionClose(close)] => (close.reply_code, close.class_id, close.method_id),
        other => panic!("expected one connection.close, read {other:?}"),
    }
}

#[tokio::test]
async fn a_method_that_does_not_decode_is_answered_with_connection_close_501() {
    // queue.declare-ok (50, 11) whose counts are missing.
    let (read, error) = answered_with(|ch| raw_frame(1, ch, b"\0\x32\0\x0b\x01q", 0xce)).await;
    assert_eq!(closed_with(&read), (501, 50, 11));
    assert!(matches!(error, Error::Protocol(_)), "{error}");
}

#[tokio::test]
async fn content_without_its_method_is_answered_with_connection_close_505() {
    let (read, error) = answered_with(|ch| {
        let header = ContentHeader::new(BASIC_CLASS_ID, 1, BasicProperties::default()).unwrap();
        let mut frame = bytes::BytesMut::new();
        FrameCodec::new(0)
            .encode_frame(
                &Frame::Header {
                    channel: ch,
                    header,
                },
                &mut frame,
            )
            .unwrap();
        frame.to_vec()
    })
    .await;
    assert_eq!(closed_with(&read), (505, 0, 0));
    assert!(matches!(error, Error::UnexpectedFrame(_)), "{error}");
}

#[tokio::test]
async fn a_bad_frame_end_or_frame_type_ends_the_connection_without_a_word() {
    // The spec (4.2.3): "close the connection without sending any further data on it".
    for answer in [
        (|ch| raw_frame(1, ch, b"\0\x32\0\x0b\x01q\0\0\0\0\0\0\0\0", 0)) as fn(u16) -> Vec<u8>,
        |ch| raw_frame(9, ch, b"", 0xce),
    ] {
        let (read, error) = answered_with(answer).await;
        assert!(read.is_empty(), "{read:?}");
        assert!(matches!(error, Error::Protocol(_)), "{error}");
    }
}

#[tokio::test]
async fn a_broker_answering_with_another_protocol_header_is_named_as_such() {
    within(async {
        let (listener, uri) = listener().await;
        let client = tokio::spawn(async move { Connection::connect(&uri).await.unwrap_err() });
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.unwrap();
        // What an AMQP 1.0 broker answers.
        stream.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
        let error = client.await.unwrap();
        assert!(
            matches!(&error, Error::Negotiation(why) if why.contains("AMQP 0-9-1") && why.ends_with("0 1 0 0")),
            "{error}"
        );
    })
    .await;
}
