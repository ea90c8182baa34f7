//! Bad input from one client ends that client's connection (or channel) with the reply code
//! RabbitMQ would send, and never disturbs another connection.

mod common;

use bytes::Bytes;
use common::{Client, Server};
use lockgate_wire::{
    basic, channel, connection, queue, BasicProperties, ContentHeader, FieldTable, Frame, Method,
    PROTOCOL_HEADER,
};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn wrong_protocol_header_gets_ours_back_and_a_close() {
    let server = Server::start();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"HTTP/1.1 GET /\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, PROTOCOL_HEADER);
}

#[tokio::test]
async fn garbage_frame_closes_with_frame_error_and_others_keep_working() {
    let server = Server::start();
    let mut bad = Client::open(server.addr).await;
    let mut good = Client::open(server.addr).await;
    bad.send_raw(b"\x09 this is not an AMQP frame \xce").await;
    let close = bad.expect_connection_close().await;
    assert_eq!(close.reply_code, 501, "{close:?}");
    assert!(close.reply_text.starts_with("FRAME_ERROR - "), "{close:?}");
    bad.expect_eof().await;
    good.round_trip(1).await;
}

#[tokio::test]
async fn oversized_frame_is_a_frame_error() {
    let server = Server::start();
    let mut bad = Client::open(server.addr).await;
    let mut good = Client::open(server.addr).await;
    // A method frame announcing 1 MiB of payload, above the negotiated 128 KiB frame_max.
    let mut frame = vec![1u8, 0, 1];
    frame.extend_from_slice(&(1u32 << 20).to_be_bytes());
    frame.extend_from_slice(&[0u8; 64]);
    bad.send_raw(&frame).await;
    let close = bad.expect_connection_close().await;
    assert_eq!(close.reply_code, 501, "{close:?}");
    good.round_trip(1).await;
}

#[tokio::test]
async fn unknown_method_closes_the_connection() {
    let server = Server::start();
    let mut bad = Client::open(server.addr).await;
    let mut good = Client::open(server.addr).await;
    bad.open_channel(1).await;
    // class 60 (basic), method 999: not in the spec.
    let payload = [0u8, 60, 0x03, 0xe7];
    let mut frame = vec![1u8, 0, 1, 0, 0, 0, 4];
    frame.extend_from_slice(&payload);
    frame.push(0xce);
    bad.send_raw(&frame).await;
    let close = bad.expect_connection_close().await;
    assert_eq!(close.reply_code, 540, "{close:?}");
    good.round_trip(1).await;
}

#[tokio::test]
async fn body_before_header_is_unexpected_frame() {
    let server = Server::start();
    let mut bad = Client::open(server.addr).await;
    let mut good = Client::open(server.addr).await;
    bad.open_channel(1).await;
    bad.send(Frame::Body {
        channel: 1,
        payload: Bytes::from_static(b"orphan"),
    })
    .await;
    let close = bad.expect_connection_close().await;
    assert_eq!(close.reply_code, 505, "{close:?}");
    assert!(
        close.reply_text.starts_with("UNEXPECTED_FRAME - "),
        "{close:?}"
    );
    good.round_trip(1).await;
}

#[tokio::test]
async fn header_without_publish_is_unexpected_frame() {
    let server = Server::start();
    let mut bad = Client::open(server.addr).await;
    bad.open_channel(1).await;
    bad.send(Frame::Header {
        channel: 1,
        header: ContentHeader::new(60, 3, BasicProperties::default()).expect("header"),
    })
    .await;
    assert_eq!(bad.expect_connection_close().await.reply_code, 505);
}

#[tokio::test]
async fn body_longer_than_announced_is_a_frame_error() {
    let server = Server::start();
    let mut bad = Client::open(server.addr).await;
    bad.open_channel(1).await;
    bad.send_method(1, basic::Publish::default()).await;
    bad.send(Frame::Header {
        channel: 1,
        header: ContentHeader::new(60, 2, BasicProperties::default()).expect("header"),
    })
    .await;
    bad.send(Frame::Body {
        channel: 1,
        payload: Bytes::from_static(b"too long"),
    })
    .await;
    let close = bad.expect_connection_close().await;
    assert_eq!(close.reply_code, 501, "{close:?}");
    assert_eq!(
        close.reply_text,
        "FRAME_ERROR - content body frame exceeds remaining content size"
    );
    assert_eq!((close.class_id, close.method_id), (60, 40));
}

#[tokio::test]
async fn method_on_unopened_channel_is_channel_error() {
    let server = Server::start();
    let mut bad = Client::open(server.addr).await;
    let mut good = Client::open(server.addr).await;
    bad.send_method(
        5,
        basic::Qos {
            prefetch_count: 1,
            ..Default::default()
        },
    )
    .await;
    let close = bad.expect_connection_close().await;
    assert_eq!(close.reply_code, 504, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (60, 10));
    good.round_trip(1).await;
}

#[tokio::test]
async fn soft_error_closes_only_the_channel() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    client
        .send_method(
            1,
            queue::Declare {
                queue: "does-not-exist".into(),
                passive: true,
                ..Default::default()
            },
        )
        .await;
    let close = client.expect_channel_close(1).await;
    assert_eq!(close.reply_code, 404, "{close:?}");
    assert_eq!(
        close.reply_text,
        "NOT_FOUND - no queue 'does-not-exist' in vhost '/'"
    );
    assert_eq!((close.class_id, close.method_id), (50, 10));
    client.round_trip(2).await;
    // The closed channel number can be opened again.
    client.round_trip(1).await;
}

#[tokio::test]
async fn message_above_max_size_is_precondition_failed() {
    let server = Server::start_with_config("[limits]\nmax_message_size = 4\n");
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    client.publish(1, "anywhere", b"12345").await;
    let close = client.expect_channel_close(1).await;
    assert_eq!(close.reply_code, 406, "{close:?}");
    assert_eq!(
        close.reply_text,
        "PRECONDITION_FAILED - message size 5 is larger than configured max size 4"
    );
    client.open_channel(2).await;
    let queue = client.declare_queue(2, "").await;
    client.publish(2, &queue, b"1234").await;
    assert_eq!(client.get(2, &queue).await.as_deref(), Some(&b"1234"[..]));
}

#[tokio::test]
async fn bad_password_is_access_refused() {
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
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0guest\0wrong"),
                locale: "en_US".into(),
            },
        )
        .await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, 403);
    assert_eq!(
        close.reply_text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details \
         see the broker logfile."
    );
}

#[tokio::test]
async fn peer_stalled_in_handshake_is_dropped_and_others_keep_working() {
    let server = Server::start();
    // Protocol header, then half a frame, then nothing.
    let mut stalled = Client::connect_raw(server.addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[1u8, 0, 0, 0, 0, 0, 50, 0, 10])
        .await
        .unwrap();
    let mut good = Client::open(server.addr).await;
    good.round_trip(1).await;
    // The server sent connection.start, then gives up after its handshake timeout.
    let mut sink = Vec::new();
    tokio::time::timeout(common::WAIT, stalled.read_to_end(&mut sink))
        .await
        .expect("stalled peer was not dropped")
        .ok();
    good.round_trip(2).await;
}

#[tokio::test]
async fn peer_silent_for_two_heartbeats_is_dropped() {
    let server = Server::start();
    let mut silent = Client::open_with_heartbeat(server.addr, 1).await;
    silent.open_channel(1).await;
    // Half a frame, then silence: the server must not wait for the rest forever.
    silent.send_raw(&[1u8, 0, 1, 0, 0]).await;
    let mut good = Client::open(server.addr).await;
    good.round_trip(1).await;
    silent.expect_eof().await;
    good.round_trip(2).await;
}

#[tokio::test]
async fn channel_close_handshake_and_reopen() {
    let server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(3).await;
    client
        .send_method(
            3,
            channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                ..Default::default()
            },
        )
        .await;
    let Method::ChannelCloseOk(_) = client.recv_method(3).await else {
        panic!("expected channel.close-ok");
    };
    client.round_trip(3).await;
}

#[tokio::test]
async fn sigterm_sends_connection_forced_and_exits_zero() {
    let mut server = Server::start();
    let mut client = Client::open(server.addr).await;
    client.open_channel(1).await;
    server.terminate();
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, 320, "{close:?}");
    assert_eq!(
        close.reply_text,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit();
        (status, server)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[tokio::test]
async fn random_frames_never_take_the_server_down() {
    let server = Server::start();
    let mut good = Client::open(server.addr).await;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for round in 0..40 {
        let mut bad = Client::open(server.addr).await;
        bad.open_channel(1).await;
        // A plausible frame header (method, header, body or heartbeat type on channel 1) with
        // random payload, sometimes with a correct end octet, then pure noise.
        let frame_type = [1u8, 2, 3, 8][round % 4];
        let payload = noise.bytes(1 + round * 3);
        let mut frame = vec![frame_type, 0, 1];
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(if round % 2 == 0 { 0xce } else { 0x00 });
        let len = usize::try_from(noise.next() % 64).unwrap();
        frame.extend_from_slice(&noise.bytes(len));
        bad.send_raw(&frame).await;
        let close = bad.expect_connection_close().await;
        assert!(
            [501, 502, 503, 504, 505, 540].contains(&close.reply_code),
            "round {round}: {close:?}"
        );
    }
    good.round_trip(1).await;
}
