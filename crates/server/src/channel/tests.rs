//! The channel state machine against a real broker, without sockets.

use lockgate_broker::{Broker, BrokerConfig, Delivery};
use lockgate_wire::{BasicProperties, Frame};
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::*;

fn channel(max_message_size: u64) -> (Channel, UnboundedReceiver<Outbound>) {
    channel_of(&Broker::new(BrokerConfig::default()), max_message_size)
}

fn channel_of(broker: &Broker, max_message_size: u64) -> (Channel, UnboundedReceiver<Outbound>) {
    let (out, rx) = mpsc::unbounded_channel();
    let channel = Channel::new(ChannelInit {
        number: 1,
        connection: ConnectionId(1),
        vhost: broker.vhost("/").expect("default vhost"),
        out,
        capabilities: ClientCapabilities::default(),
        max_message_size,
        user: Arc::from("guest"),
        store: None,
        access: crate::permissions::Access::new(
            Arc::from("guest"),
            "/".to_owned(),
            Arc::new(crate::permissions::VHostPermissions::full()),
            crate::limits::QueueLimits::default(),
        ),
        counters: Arc::default(),
        events: mpsc::unbounded_channel().0,
        serial: 0,
    });
    (channel, rx)
}

fn declare(channel: &mut Channel, rx: &mut UnboundedReceiver<Outbound>, name: &str) {
    channel
        .on_method(Method::QueueDeclare(queue::Declare {
            queue: name.into(),
            ..Default::default()
        }))
        .expect("declare");
    assert!(matches!(next_method(rx), Method::QueueDeclareOk(_)));
}

fn next_method(rx: &mut UnboundedReceiver<Outbound>) -> Method {
    match rx.try_recv().expect("a reply") {
        Outbound::Frame(frame) => match *frame {
            Frame::Method { method, .. } => method,
            other => panic!("expected a method, got {other:?}"),
        },
        other => panic!("expected a method frame, got {other:?}"),
    }
}

fn get(channel: &mut Channel, rx: &mut UnboundedReceiver<Outbound>, queue: &str) -> Bytes {
    channel
        .on_method(Method::BasicGet(basic::Get {
            queue: queue.into(),
            no_ack: true,
        }))
        .expect("get");
    match rx.try_recv().expect("get reply") {
        Outbound::Content { message, .. } => message.body_bytes(),
        other => panic!("expected get-ok, got {other:?}"),
    }
}

fn publish_header(channel: &mut Channel, queue: &str, size: u64) -> Result<(), AmqpError> {
    channel.on_method(Method::BasicPublish(basic::Publish {
        routing_key: queue.into(),
        ..Default::default()
    }))?;
    let header = ContentHeader::new(60, size, BasicProperties::default()).expect("header");
    channel.on_header(header)
}

fn publish(channel: &mut Channel, queue: &str, body: &'static [u8], mandatory: bool) {
    channel
        .on_method(Method::BasicPublish(basic::Publish {
            routing_key: queue.into(),
            mandatory,
            ..Default::default()
        }))
        .expect("publish");
    let header = ContentHeader::new(60, body.len() as u64, BasicProperties::default()).unwrap();
    channel.on_header(header).expect("header");
    channel.on_body(Bytes::from_static(body)).expect("body");
}

#[test]
fn a_queue_deleted_and_declared_again_gets_the_next_publish() {
    let (mut channel, mut rx) = channel(1024);
    declare(&mut channel, &mut rx, "q");
    publish(&mut channel, "q", b"one", false);
    assert_eq!(get(&mut channel, &mut rx, "q"), Bytes::from_static(b"one"));
    channel
        .on_method(Method::QueueDelete(queue::Delete {
            queue: "q".into(),
            ..Default::default()
        }))
        .expect("delete");
    assert!(matches!(next_method(&mut rx), Method::QueueDeleteOk(_)));
    declare(&mut channel, &mut rx, "q");
    publish(&mut channel, "q", b"two", false);
    assert_eq!(get(&mut channel, &mut rx, "q"), Bytes::from_static(b"two"));
}

#[test]
fn an_exchange_deleted_and_declared_again_routes_the_next_publish_by_its_new_bindings() {
    let (mut channel, mut rx) = channel(1024);
    let vhost = Arc::clone(&channel.vhost);
    let to_x = |channel: &mut Channel, body: &'static [u8]| {
        channel
            .on_method(Method::BasicPublish(basic::Publish {
                exchange: "x".into(),
                routing_key: "k".into(),
                ..Default::default()
            }))
            .expect("publish");
        let header = ContentHeader::new(60, body.len() as u64, BasicProperties::default());
        channel.on_header(header.expect("header")).expect("header");
        channel.on_body(Bytes::from_static(body)).expect("body");
    };
    let bound = |queue: &str| {
        vhost
            .declare_exchange("x", "direct", ExchangeFlags::default(), Default::default())
            .expect("declare x");
        vhost
            .bind_queue(ConnectionId(1), queue, "x", "k", Default::default())
            .expect("bind");
    };
    declare(&mut channel, &mut rx, "old");
    declare(&mut channel, &mut rx, "new");
    bound("old");
    to_x(&mut channel, b"one");
    vhost.delete_exchange("x", false).expect("delete x");
    bound("new");
    to_x(&mut channel, b"two");
    let (old, new) = (vhost.queue("old").unwrap(), vhost.queue("new").unwrap());
    assert_eq!((old.message_count(), new.message_count()), (1, 1));
    assert_eq!(
        get(&mut channel, &mut rx, "new"),
        Bytes::from_static(b"two")
    );
}

#[test]
fn a_publish_to_an_exclusive_queue_gone_with_its_owner_is_returned() {
    let (mut channel, mut rx) = channel(1024);
    let vhost = Arc::clone(&channel.vhost);
    vhost
        .declare_queue(
            ConnectionId(2),
            "owned",
            lockgate_broker::QueueFlags {
                exclusive: true,
                ..Default::default()
            },
            lockgate_wire::FieldTable::default(),
        )
        .expect("declare");
    let owned = vhost.queue("owned").expect("declared");
    publish(&mut channel, "owned", b"one", true);
    assert_eq!(owned.message_count(), 1);
    vhost.connection_closed(ConnectionId(2));
    publish(&mut channel, "owned", b"two", true);
    match rx.try_recv().expect("basic.return") {
        Outbound::Content {
            method, message, ..
        } => {
            assert!(matches!(*method, Method::BasicReturn(_)));
            assert_eq!(message.body(), b"two");
        }
        other => panic!("expected basic.return, got {other:?}"),
    }
}

#[test]
fn a_single_body_frame_is_routed_without_copying() {
    // Large enough to be shared however small bodies are copied (see `lockgate_broker::Message`).
    const SIZE: usize = 128 * 1024;
    let (mut channel, mut rx) = channel(SIZE as u64);
    declare(&mut channel, &mut rx, "q");
    publish_header(&mut channel, "q", SIZE as u64).unwrap();
    let payload = Bytes::from(vec![7u8; SIZE]);
    channel.on_body(payload.clone()).unwrap();
    let body = get(&mut channel, &mut rx, "q");
    assert_eq!(body, payload);
    assert_eq!(body.as_ptr(), payload.as_ptr(), "the body was copied");
}

#[test]
fn a_small_body_is_copied_out_of_the_read_buffer() {
    let (mut channel, mut rx) = channel(1024);
    declare(&mut channel, &mut rx, "q");
    publish_header(&mut channel, "q", 5).unwrap();
    let payload = Bytes::from_static(b"hello");
    channel.on_body(payload.clone()).unwrap();
    let body = get(&mut channel, &mut rx, "q");
    assert_eq!(body, payload);
    assert_ne!(
        body.as_ptr(),
        payload.as_ptr(),
        "the body still points into the buffer"
    );
}

#[test]
fn body_frames_are_assembled_up_to_the_announced_size() {
    let (mut channel, mut rx) = channel(1024);
    declare(&mut channel, &mut rx, "q");
    publish_header(&mut channel, "q", 6).unwrap();
    channel.on_body(Bytes::from_static(b"ab")).unwrap();
    channel.on_body(Bytes::from_static(b"cd")).unwrap();
    channel.on_body(Bytes::from_static(b"ef")).unwrap();
    assert_eq!(
        get(&mut channel, &mut rx, "q"),
        Bytes::from_static(b"abcdef")
    );
}

#[test]
fn a_body_in_several_frames_is_charged_as_it_arrives_and_once_queued() {
    let broker = Broker::new(BrokerConfig::default());
    let (mut channel, mut rx) = channel_of(&broker, 1024);
    declare(&mut channel, &mut rx, "q");
    publish_header(&mut channel, "q", 300).unwrap();
    channel.on_body(Bytes::from_static(&[1; 100])).unwrap();
    assert_eq!(broker.memory_used(), 100);
    channel.on_body(Bytes::from_static(&[2; 100])).unwrap();
    assert_eq!(broker.memory_used(), 200);
    channel.on_body(Bytes::from_static(&[3; 100])).unwrap();
    let queue = broker.vhost("/").unwrap().queue("q").unwrap();
    let queued = queue.snapshot().ready_bytes;
    assert!(queued >= 300, "queued {queued}");
    assert_eq!(
        broker.memory_used(),
        queued,
        "the message is charged, its parts no more"
    );
    // A body left unfinished goes with its channel.
    publish_header(&mut channel, "q", 300).unwrap();
    channel.on_body(Bytes::from_static(&[4; 100])).unwrap();
    channel.on_body(Bytes::from_static(&[5; 100])).unwrap();
    assert_eq!(broker.memory_used(), queued + 200);
    channel.close();
    drop(channel);
    assert_eq!(broker.memory_used(), queued);
}

#[test]
fn a_body_in_several_frames_holds_no_more_than_twice_its_charge() {
    // Tiny frames of a large announced body: the buffer they are copied into is not sized by
    // the announcement, which would hold a large buffer charged for a few octets.
    let broker = Broker::new(BrokerConfig::default());
    let (mut channel, mut rx) = channel_of(&broker, 64 << 20);
    declare(&mut channel, &mut rx, "q");
    publish_header(&mut channel, "q", 32 << 20).unwrap();
    channel.on_body(Bytes::from_static(&[1])).unwrap();
    channel.on_body(Bytes::from_static(&[2])).unwrap();
    let Content::Body {
        body: Body::Many(buffer, _),
        ..
    } = &channel.content
    else {
        panic!("a body in several frames is buffered");
    };
    assert_eq!(broker.memory_used(), 2);
    assert!(buffer.capacity() <= 4, "{} octets held", buffer.capacity());
    channel.close();
    drop(channel);
    assert_eq!(broker.memory_used(), 0);
}

#[test]
fn a_body_in_several_frames_keeps_no_read_buffer_alive() {
    let broker = Broker::new(BrokerConfig::default());
    let (mut channel, mut rx) = channel_of(&broker, 64 << 20);
    declare(&mut channel, &mut rx, "q");
    publish_header(&mut channel, "q", 32 << 20).unwrap();
    // A frame of one octet, split off a 64 KiB read buffer: the rest of that buffer is the
    // connection's to reuse, not pinned by a partial body charged one octet.
    let read = Bytes::from(vec![7; 64 * 1024]);
    channel.on_body(read.slice(..1)).unwrap();
    assert!(read.is_unique(), "the partial body holds the read buffer");
    assert_eq!(broker.memory_used(), 1);
}

#[test]
fn an_empty_body_is_published_at_the_header() {
    let (mut channel, mut rx) = channel(1024);
    declare(&mut channel, &mut rx, "q");
    publish_header(&mut channel, "q", 0).unwrap();
    assert_eq!(get(&mut channel, &mut rx, "q"), Bytes::new());
}

#[test]
fn content_frames_out_of_order_are_connection_errors() {
    let (mut channel, _rx) = channel(1024);
    let header = ContentHeader::new(60, 1, BasicProperties::default()).unwrap();
    let e = channel.on_header(header).unwrap_err();
    assert_eq!(e.code, reply_code::UNEXPECTED_FRAME);
    let e = channel.on_body(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(e.code, reply_code::UNEXPECTED_FRAME);

    publish_header(&mut channel, "q", 4).unwrap();
    let e = channel
        .on_method(Method::BasicQos(basic::Qos::default()))
        .unwrap_err();
    assert_eq!(e.code, reply_code::UNEXPECTED_FRAME);
    assert!(e.is_hard());
}

#[test]
fn a_body_past_the_announced_size_is_a_frame_error() {
    let (mut channel, _rx) = channel(1024);
    publish_header(&mut channel, "q", 2).unwrap();
    let e = channel.on_body(Bytes::from_static(b"abc")).unwrap_err();
    assert_eq!(e.code, reply_code::FRAME_ERROR);
    assert_eq!((e.class_id, e.method_id), (60, 40));
}

#[test]
fn a_message_over_the_limit_is_refused_at_the_header() {
    let (mut channel, _rx) = channel(10);
    let e = publish_header(&mut channel, "q", 11).unwrap_err();
    assert_eq!(e.code, reply_code::PRECONDITION_FAILED);
    assert_eq!(
        e.text,
        "PRECONDITION_FAILED - message size 11 is larger than configured max size 10"
    );
    assert!(!e.is_hard());
}

#[test]
fn confirms_are_batched_into_one_multiple_ack() {
    let (mut channel, mut rx) = channel(1024);
    declare(&mut channel, &mut rx, "q");
    channel
        .on_method(Method::ConfirmSelect(confirm::Select { nowait: false }))
        .unwrap();
    assert!(matches!(next_method(&mut rx), Method::ConfirmSelectOk(_)));
    for _ in 0..3 {
        publish_header(&mut channel, "q", 0).unwrap();
    }
    assert!(channel.has_pending_confirms());
    assert!(rx.try_recv().is_err(), "confirms wait for the flush");
    channel.flush_confirms();
    let Method::BasicAck(ack) = next_method(&mut rx) else {
        panic!("expected basic.ack");
    };
    assert_eq!((ack.delivery_tag, ack.multiple), (3, true));
    assert!(!channel.has_pending_confirms());
    publish_header(&mut channel, "q", 0).unwrap();
    channel.flush_confirms();
    let Method::BasicAck(ack) = next_method(&mut rx) else {
        panic!("expected basic.ack");
    };
    assert_eq!((ack.delivery_tag, ack.multiple), (4, false));
}

#[test]
fn publishes_refused_by_a_full_queue_are_nacked_between_acks() {
    let (mut channel, mut rx) = channel(1024);
    let arguments: lockgate_wire::FieldTable = [
        ("x-max-length".to_owned(), lockgate_wire::FieldValue::I64(2)),
        (
            "x-overflow".to_owned(),
            lockgate_wire::FieldValue::LongString("reject-publish".into()),
        ),
    ]
    .into_iter()
    .collect();
    channel
        .on_method(Method::QueueDeclare(queue::Declare {
            queue: "full".into(),
            arguments,
            ..Default::default()
        }))
        .unwrap();
    assert!(matches!(next_method(&mut rx), Method::QueueDeclareOk(_)));
    channel
        .on_method(Method::ConfirmSelect(confirm::Select { nowait: false }))
        .unwrap();
    assert!(matches!(next_method(&mut rx), Method::ConfirmSelectOk(_)));
    for _ in 0..4 {
        publish_header(&mut channel, "full", 0).unwrap();
    }
    publish_header(&mut channel, "nowhere", 0).unwrap();
    channel.flush_confirms();
    let mut confirms = Vec::new();
    while let Ok(Outbound::Frame(frame)) = rx.try_recv() {
        if let Frame::Method { method, .. } = *frame {
            confirms.push(match method {
                Method::BasicAck(a) => ("ack", a.delivery_tag, a.multiple),
                Method::BasicNack(n) => ("nack", n.delivery_tag, n.multiple),
                other => panic!("unexpected {other:?}"),
            });
        }
    }
    assert_eq!(
        confirms,
        [
            ("ack", 2, true),
            ("nack", 3, false),
            ("nack", 4, false),
            ("ack", 5, false)
        ]
    );
}

#[test]
fn tx_select_on_a_confirm_channel_is_refused() {
    let (mut channel, mut rx) = channel(1024);
    channel
        .on_method(Method::ConfirmSelect(confirm::Select { nowait: true }))
        .unwrap();
    assert!(rx.try_recv().is_err(), "nowait has no reply");
    let e = channel.on_method(Method::TxSelect(tx::Select)).unwrap_err();
    assert_eq!(
        e.text,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
    );
    assert_eq!((e.class_id, e.method_id), (90, 10));
}

#[test]
fn prefetch_size_is_not_implemented() {
    let (mut channel, _rx) = channel(1024);
    let e = channel
        .on_method(Method::BasicQos(basic::Qos {
            prefetch_size: 10,
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(e.code, reply_code::NOT_IMPLEMENTED);
    assert_eq!(e.text, "NOT_IMPLEMENTED - prefetch_size!=0 (10)");
}

/// The next deliveries the writer was handed, and whether they came as one message.
fn deliveries(rx: &mut UnboundedReceiver<Outbound>) -> (Vec<(u64, Bytes)>, bool) {
    let entry = |d: &Delivery| (d.delivery_tag.0, d.message.body_bytes());
    match rx.try_recv().expect("deliveries") {
        Outbound::Deliver {
            channel: 1,
            delivery,
        } => (vec![entry(&delivery)], false),
        Outbound::Deliveries {
            channel: 1,
            deliveries,
        } => (deliveries.iter().map(entry).collect(), true),
        other => panic!("expected deliveries, got {other:?}"),
    }
}

#[test]
fn a_drain_to_one_consumer_reaches_the_writer_as_one_message_in_order() {
    let (mut channel, mut rx) = channel(1024);
    declare(&mut channel, &mut rx, "q");
    for body in [b"0", b"1", b"2", b"3", b"4", b"5"] {
        publish(&mut channel, "q", body, false);
    }
    channel
        .on_method(Method::BasicQos(basic::Qos {
            prefetch_count: 2,
            ..Default::default()
        }))
        .expect("qos");
    assert!(matches!(next_method(&mut rx), Method::BasicQosOk(_)));
    channel
        .on_method(Method::BasicConsume(basic::Consume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        }))
        .expect("consume");
    assert!(matches!(next_method(&mut rx), Method::BasicConsumeOk(_)));
    let b = |s: &'static [u8]| Bytes::from_static(s);
    assert_eq!(
        deliveries(&mut rx),
        (vec![(1, b(b"0")), (2, b(b"1"))], true)
    );
    let ack = |channel: &mut Channel, delivery_tag, multiple| {
        channel
            .on_method(Method::BasicAck(basic::Ack {
                delivery_tag,
                multiple,
            }))
            .expect("ack");
    };
    ack(&mut channel, 2, true);
    assert_eq!(
        deliveries(&mut rx),
        (vec![(3, b(b"2")), (4, b(b"3"))], true)
    );
    // One freed credit: one delivery, without a batch.
    ack(&mut channel, 3, false);
    assert_eq!(deliveries(&mut rx), (vec![(5, b(b"4"))], false));
    assert!(rx.try_recv().is_err());
}

/// The delivery tags of what `out` carries for basic.deliver and basic.get-ok, in order.
fn tags_sent(out: Outbound) -> Vec<u64> {
    match out {
        Outbound::Deliver { delivery, .. } => vec![delivery.delivery_tag.0],
        Outbound::Deliveries { deliveries, .. } => {
            deliveries.iter().map(|d| d.delivery_tag.0).collect()
        }
        Outbound::Content { method, .. } => match *method {
            Method::BasicGetOk(ok) => vec![ok.delivery_tag],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[test]
fn get_oks_and_deliveries_reach_the_writer_in_delivery_tag_order() {
    const GETS: usize = 20_000;
    let (mut channel, mut rx) = channel(1024);
    declare(&mut channel, &mut rx, "consumed");
    declare(&mut channel, &mut rx, "got");
    for _ in 0..GETS {
        publish(&mut channel, "got", b"g", false);
    }
    channel
        .on_method(Method::BasicConsume(basic::Consume {
            queue: "consumed".into(),
            no_ack: true,
            ..Default::default()
        }))
        .expect("consume");
    assert!(matches!(next_method(&mut rx), Method::BasicConsumeOk(_)));
    // Another connection publishes to the consumed queue all along: its deliveries to this
    // channel take tags on that thread while this one takes messages with basic.get.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (vhost, stop) = (Arc::clone(&channel.vhost), Arc::clone(&stop));
        std::thread::spawn(move || {
            let header = ContentHeader::new(60, 1, BasicProperties::default()).expect("header");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let message =
                    Message::from_parts("", "consumed", &header, Bytes::from_static(b"c"));
                vhost.publish(false, message).expect("publish");
            }
        })
    };
    let mut last = 0;
    let mut out_of_order = None;
    'gets: for _ in 0..GETS {
        channel
            .on_method(Method::BasicGet(basic::Get {
                queue: "got".into(),
                no_ack: true,
            }))
            .expect("get");
        while let Ok(out) = rx.try_recv() {
            for tag in tags_sent(out) {
                if tag <= last {
                    out_of_order = Some((last, tag));
                    break 'gets;
                }
                last = tag;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().expect("publisher");
    assert_eq!(out_of_order, None, "(tag sent, then a lower tag)");
}
