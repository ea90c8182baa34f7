//! Broker features as the wire shows them: confirms, returns, transactions, consumer cancel
//! notification, memory-alarm blocking, the connection limit.

mod common;

use common::{Client, Server};
use lockgate_wire::{basic, confirm, connection, queue, tx, Frame, Method};

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_its_confirm() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    client.send_method(1, confirm::Select::default()).await;
    let Method::ConfirmSelectOk(_) = client.recv_method(1).await else {
        panic!("expected confirm.select-ok");
    };
    client
        .publish_with(
            1,
            basic::Publish {
                routing_key: "nowhere".into(),
                mandatory: true,
                ..Default::default()
            },
            b"lost",
        )
        .await;
    let Method::BasicReturn(ret) = client.recv_method(1).await else {
        panic!("expected basic.return");
    };
    assert_eq!((ret.reply_code, ret.reply_text.as_str()), (312, "NO_ROUTE"));
    assert_eq!(ret.routing_key, "nowhere");
    let Frame::Header { header, .. } = client.recv().await else {
        panic!("expected the returned header");
    };
    assert_eq!(header.body_size, 4);
    let Frame::Body { payload, .. } = client.recv().await else {
        panic!("expected the returned body");
    };
    assert_eq!(&payload[..], b"lost");
    let Method::BasicAck(ack) = client.recv_method(1).await else {
        panic!("expected basic.ack");
    };
    assert_eq!((ack.delivery_tag, ack.multiple), (1, false));
}

#[tokio::test]
async fn confirms_cover_every_publish_in_order() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    let queue = client.declare_queue(1, "").await;
    client.send_method(1, confirm::Select::default()).await;
    let Method::ConfirmSelectOk(_) = client.recv_method(1).await else {
        panic!("expected confirm.select-ok");
    };
    for _ in 0..10 {
        client.publish(1, &queue, b"m").await;
    }
    let mut confirmed = 0;
    while confirmed < 10 {
        let Method::BasicAck(ack) = client.recv_method(1).await else {
            panic!("expected basic.ack");
        };
        assert!(ack.delivery_tag > confirmed, "{ack:?}");
        assert!(ack.multiple || ack.delivery_tag == confirmed + 1, "{ack:?}");
        confirmed = ack.delivery_tag;
    }
    assert_eq!(confirmed, 10);
}

#[tokio::test]
async fn transactions_buffer_publishes_until_commit() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    let queue = client.declare_queue(1, "").await;
    client.send_method(1, tx::Select).await;
    let Method::TxSelectOk(_) = client.recv_method(1).await else {
        panic!("expected tx.select-ok");
    };
    client.publish(1, &queue, b"rolled back").await;
    client.send_method(1, tx::Rollback).await;
    let Method::TxRollbackOk(_) = client.recv_method(1).await else {
        panic!("expected tx.rollback-ok");
    };
    client.publish(1, &queue, b"committed").await;
    assert_eq!(client.get(1, &queue).await, None);
    client.send_method(1, tx::Commit).await;
    let Method::TxCommitOk(_) = client.recv_method(1).await else {
        panic!("expected tx.commit-ok");
    };
    assert_eq!(
        client.get(1, &queue).await.as_deref(),
        Some(&b"committed"[..])
    );
    assert_eq!(client.get(1, &queue).await, None);
}

#[tokio::test]
async fn confirm_on_a_transactional_channel_is_precondition_failed() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    client.send_method(1, tx::Select).await;
    let Method::TxSelectOk(_) = client.recv_method(1).await else {
        panic!("expected tx.select-ok");
    };
    client.send_method(1, confirm::Select::default()).await;
    let close = client.expect_channel_close(1).await;
    assert_eq!(close.reply_code, 406);
    assert_eq!(
        close.reply_text,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
    );
    assert_eq!((close.class_id, close.method_id), (85, 10));
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let server = Server::start();
    let mut client = Client::open_with_capabilities(server.addr, &["consumer_cancel_notify"]).await;
    client.open_channel(1).await;
    let queue = client.declare_queue(1, "doomed").await;
    client
        .send_method(
            1,
            basic::Consume {
                queue: queue.clone(),
                consumer_tag: "c1".into(),
                ..Default::default()
            },
        )
        .await;
    let Method::BasicConsumeOk(ok) = client.recv_method(1).await else {
        panic!("expected basic.consume-ok");
    };
    assert_eq!(ok.consumer_tag, "c1");
    client.open_channel(2).await;
    client
        .send_method(
            2,
            queue::Delete {
                queue,
                ..Default::default()
            },
        )
        .await;
    let mut cancelled = false;
    let mut deleted = false;
    while !(cancelled && deleted) {
        match client.recv().await {
            Frame::Method {
                channel: 1,
                method: Method::BasicCancel(cancel),
            } => {
                assert_eq!(cancel.consumer_tag, "c1");
                cancelled = true;
            }
            Frame::Method {
                channel: 2,
                method: Method::QueueDeleteOk(_),
            } => deleted = true,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_until_memory_falls() {
    let server = Server::start_with_config("[memory]\nhigh_watermark = 100\n");
    let mut publisher = Client::open_with_capabilities(server.addr, &["connection.blocked"]).await;
    publisher.open_channel(1).await;
    let queue = publisher.declare_queue(1, "big").await;
    const BIG: &[u8] = &[b'x'; 200];
    // This one raises the alarm; the declare after it makes sure it was processed.
    publisher.publish(1, &queue, BIG).await;
    assert_eq!(publisher.declare_queue(1, &queue).await, queue);
    // A connection that only consumes is neither blocked nor told anything.
    let mut other = Client::open_with_capabilities(server.addr, &["connection.blocked"]).await;
    other.open_channel(1).await;
    other
        .send_method(
            1,
            queue::Declare {
                queue: queue.clone(),
                passive: true,
                ..Default::default()
            },
        )
        .await;
    let Method::QueueDeclareOk(ok) = other.recv_method(1).await else {
        panic!("expected queue.declare-ok");
    };
    assert_eq!(ok.message_count, 1);

    // The next publish is held and the publisher told why; what follows it is not read.
    publisher.publish(1, &queue, BIG).await;
    let Method::ConnectionBlocked(blocked) = publisher.recv_method(0).await else {
        panic!("expected connection.blocked");
    };
    assert_eq!(blocked.reason, "low on memory");
    publisher
        .send_method(
            1,
            queue::Declare {
                queue: queue.clone(),
                passive: true,
                ..Default::default()
            },
        )
        .await;

    // Consuming frees the memory: the publisher resumes.
    assert_eq!(other.get(1, &queue).await.as_deref(), Some(BIG));
    let Method::ConnectionUnblocked(_) = publisher.recv_method(0).await else {
        panic!("expected connection.unblocked");
    };
    let Method::QueueDeclareOk(ok) = publisher.recv_method(1).await else {
        panic!("expected queue.declare-ok");
    };
    assert_eq!(ok.message_count, 1, "the held publish went through");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused() {
    let server = Server::start_with_config("[limits]\nmax_connections = 1\n");
    let mut first = Client::open(server.addr).await;
    let stream = Client::connect_raw(server.addr).await;
    let mut second = Client {
        framed: tokio_util::codec::Framed::new(stream, lockgate_wire::FrameCodec::new(131_072)),
    };
    let Method::ConnectionStart(_) = second.recv_method(0).await else {
        panic!("expected connection.start");
    };
    second
        .send_method(
            0,
            connection::StartOk {
                mechanism: "AMQPLAIN".into(),
                response: bytes::Bytes::from_static(
                    b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest",
                ),
                ..Default::default()
            },
        )
        .await;
    let Method::ConnectionTune(tune) = second.recv_method(0).await else {
        panic!("expected connection.tune");
    };
    second
        .send_method(
            0,
            connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            },
        )
        .await;
    second
        .send_method(
            0,
            connection::Open {
                virtual_host: "/".into(),
                ..Default::default()
            },
        )
        .await;
    let close = second.expect_connection_close().await;
    assert_eq!(close.reply_code, 530);
    assert_eq!(
        close.reply_text,
        "NOT_ALLOWED - connection refused: node connection limit (1) is reached"
    );
    first.round_trip(1).await;
}

#[tokio::test]
async fn unknown_vhost_is_not_allowed() {
    let server = Server::start();
    let stream = Client::connect_raw(server.addr).await;
    let mut client = Client {
        framed: tokio_util::codec::Framed::new(stream, lockgate_wire::FrameCodec::new(131_072)),
    };
    let Method::ConnectionStart(_) = client.recv_method(0).await else {
        panic!("expected connection.start");
    };
    client
        .send_method(
            0,
            connection::StartOk {
                mechanism: "PLAIN".into(),
                response: bytes::Bytes::from_static(b"\0guest\0guest"),
                ..Default::default()
            },
        )
        .await;
    let Method::ConnectionTune(_) = client.recv_method(0).await else {
        panic!("expected connection.tune");
    };
    client
        .send_method(
            0,
            connection::TuneOk {
                channel_max: 0,
                frame_max: 0,
                heartbeat: 0,
            },
        )
        .await;
    client
        .send_method(
            0,
            connection::Open {
                virtual_host: "x".into(),
                ..Default::default()
            },
        )
        .await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, 530);
    assert_eq!(close.reply_text, "NOT_ALLOWED - vhost x not found");
}

#[tokio::test]
async fn unknown_exchange_type_is_command_invalid() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    client
        .send_method(
            1,
            lockgate_wire::exchange::Declare {
                exchange: "x".into(),
                kind: "no-such-type".into(),
                ..Default::default()
            },
        )
        .await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, 503);
    assert_eq!(
        close.reply_text,
        "COMMAND_INVALID - unknown exchange type 'no-such-type'"
    );
    assert_eq!((close.class_id, close.method_id), (40, 10));
}

#[tokio::test]
async fn user_id_must_be_the_authenticated_user() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    client.send_method(1, basic::Publish::default()).await;
    let properties = lockgate_wire::BasicProperties {
        user_id: Some("mallory".into()),
        ..Default::default()
    };
    client
        .send(Frame::Header {
            channel: 1,
            header: lockgate_wire::ContentHeader::new(60, 1, properties).expect("header"),
        })
        .await;
    client
        .send(Frame::Body {
            channel: 1,
            payload: bytes::Bytes::from_static(b"x"),
        })
        .await;
    let close = client.expect_channel_close(1).await;
    assert_eq!(close.reply_code, 406);
    assert_eq!(
        close.reply_text,
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'"
    );
    client.round_trip(2).await;
}

#[tokio::test]
async fn server_sends_heartbeats_at_the_negotiated_interval() {
    let server = Server::start();
    let mut client = Client::open_with_heartbeat(server.addr, 1).await;
    let frame = tokio::time::timeout(common::WAIT, futures::StreamExt::next(&mut client.framed))
        .await
        .expect("no heartbeat")
        .expect("closed")
        .expect("decode");
    assert!(matches!(frame, Frame::Heartbeat), "{frame:?}");
}

#[tokio::test]
async fn after_close_ok_the_client_closes_the_socket() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client
        .send_method(
            0,
            connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                ..Default::default()
            },
        )
        .await;
    let Method::ConnectionCloseOk(_) = client.recv_method(0).await else {
        panic!("expected connection.close-ok");
    };
    // Nothing more, not even EOF, while the client keeps its end open (lapin relies on it).
    let next = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        futures::StreamExt::next(&mut client.framed),
    )
    .await;
    assert!(next.is_err(), "server closed first: {next:?}");
}

#[tokio::test]
async fn a_dropped_connection_requeues_its_unacked_deliveries() {
    let server = Server::start();
    let mut consumer = Client::open(server.addr).await;
    consumer.open_channel(1).await;
    let queue = consumer.declare_queue(1, "work").await;
    consumer.publish(1, &queue, b"job").await;
    consumer
        .send_method(
            1,
            basic::Consume {
                queue: queue.clone(),
                ..Default::default()
            },
        )
        .await;
    let Method::BasicConsumeOk(_) = consumer.recv_method(1).await else {
        panic!("expected basic.consume-ok");
    };
    let Method::BasicDeliver(deliver) = consumer.recv_method(1).await else {
        panic!("expected basic.deliver");
    };
    assert!(!deliver.redelivered);
    // Vanish without a close handshake and without acking.
    drop(consumer);

    let mut other = Client::open(server.addr).await;
    other.open_channel(1).await;
    // The broker requeues once the server has noticed the drop: poll until it has.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        other
            .send_method(
                1,
                basic::Get {
                    queue: queue.clone(),
                    no_ack: true,
                },
            )
            .await;
        match other.recv_method(1).await {
            Method::BasicGetOk(ok) => {
                assert!(ok.redelivered, "{ok:?}");
                break;
            }
            Method::BasicGetEmpty(_) => {
                assert!(tokio::time::Instant::now() < deadline, "never requeued");
                tokio::task::yield_now().await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn exclusive_queues_go_with_their_connection() {
    let server = Server::start();
    let mut owner = Client::open(server.addr).await;
    owner.open_channel(1).await;
    owner
        .send_method(
            1,
            queue::Declare {
                queue: "mine".into(),
                exclusive: true,
                ..Default::default()
            },
        )
        .await;
    let Method::QueueDeclareOk(_) = owner.recv_method(1).await else {
        panic!("expected queue.declare-ok");
    };
    let mut other = Client::open(server.addr).await;
    other.open_channel(1).await;
    other
        .send_method(
            1,
            queue::Declare {
                queue: "mine".into(),
                passive: true,
                ..Default::default()
            },
        )
        .await;
    let close = other.expect_channel_close(1).await;
    assert_eq!(close.reply_code, 405, "{close:?}");

    owner
        .send_method(
            0,
            connection::Close {
                reply_code: 200,
                ..Default::default()
            },
        )
        .await;
    let Method::ConnectionCloseOk(_) = owner.recv_method(0).await else {
        panic!("expected connection.close-ok");
    };
    drop(owner);
    // As RabbitMQ: the queue was deleted before close-ok was sent.
    other.open_channel(2).await;
    other
        .send_method(
            2,
            queue::Declare {
                queue: "mine".into(),
                passive: true,
                ..Default::default()
            },
        )
        .await;
    let close = other.expect_channel_close(2).await;
    assert_eq!(close.reply_code, 404, "{close:?}");
}
