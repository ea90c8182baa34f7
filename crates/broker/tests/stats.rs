//! Queue counters and the management snapshots: counts, bytes, ages, consumers, channels,
//! bindings.

mod common;

use common::*;
use lockgate_broker::{ChannelId, DeliveryTag};
use lockgate_wire::FieldTable;

#[test]
fn queue_snapshot_counts_publish_deliver_ack_and_redeliver() {
    let vhost = vhost();
    queue(&vhost, "q");
    for i in 0..5 {
        send(&vhost, "q", &format!("m{i}"));
    }
    let q = vhost.queue("q").unwrap();
    let s = q.snapshot();
    assert_eq!((s.ready, s.unacked, s.consumers, s.published), (5, 0, 0, 5));
    // Each message is 2 body bytes plus its encoded header.
    assert!(s.ready_bytes >= 10 && s.ready_bytes % 5 == 0, "{s:?}");
    assert!(s.oldest_ready_age.is_some());

    let (mut ch, sink) = channel(&vhost, 1);
    ch.qos(2, false);
    consume(&mut ch, "q", "c1", false);
    assert_eq!(sink.count(), 2);
    let s = q.snapshot();
    assert_eq!((s.ready, s.unacked, s.consumers, s.delivered), (3, 2, 1, 2));

    ch.ack(DeliveryTag(1), false).unwrap();
    ch.nack(DeliveryTag(2), false, true).unwrap();
    let s = q.snapshot();
    assert_eq!(s.acked, 1);
    // The nacked one came back and went out again, redelivered, with two more.
    assert!(s.redelivered >= 1, "{s:?}");
    assert_eq!(s.delivered, 4);
    assert_eq!(s.unacked, 2);

    vhost.purge_queue(CONN, "q").unwrap();
    let s = q.snapshot();
    assert_eq!((s.ready, s.ready_bytes), (0, 0));
    assert!(s.oldest_ready_age.is_none());
}

#[test]
fn consumers_channels_and_unacked_ages_are_listed() {
    let vhost = vhost();
    queue(&vhost, "q");
    for i in 0..3 {
        send(&vhost, "q", &format!("m{i}"));
    }
    let (mut ch, _sink) = channel(&vhost, 7);
    ch.qos(2, false);
    consume(&mut ch, "q", "tag-a", false);
    let consumers = vhost.consumers();
    assert_eq!(consumers.len(), 1);
    let c = &consumers[0];
    assert_eq!((c.tag.as_str(), c.queue.as_str()), ("tag-a", "q"));
    assert_eq!((c.connection, c.channel), (CONN, ChannelId(7)));
    assert_eq!((c.prefetch, c.unacked, c.no_ack), (2, 2, false));
    assert!(c.oldest_unacked_age.is_some());

    let channels = vhost.channels();
    assert_eq!(channels.len(), 1);
    assert_eq!((channels[0].consumers, channels[0].unacked), (1, 2));
    assert!(channels[0].active && channels[0].oldest_unacked_age.is_some());
    assert!(vhost.oldest_unacked_by_queue().contains_key("q"));

    ch.close();
    assert!(vhost.channels().is_empty());
    assert!(vhost.consumers().is_empty());
    assert!(vhost.oldest_unacked_by_queue().is_empty());
}

#[test]
fn bindings_are_listed_by_source_and_destination() {
    let vhost = vhost();
    queue(&vhost, "q");
    vhost
        .bind_queue(CONN, "q", "amq.topic", "a.#", FieldTable::default())
        .unwrap();
    vhost
        .bind_exchange("amq.fanout", "amq.direct", "k", FieldTable::default())
        .unwrap();
    let bindings = vhost.bindings();
    assert_eq!(bindings.len(), 2);
    assert!(bindings.iter().any(|b| b.source == "amq.topic"
        && b.destination == "q"
        && b.destination_is_queue
        && b.routing_key == "a.#"));
    assert!(bindings.iter().any(|b| b.source == "amq.direct"
        && b.destination == "amq.fanout"
        && !b.destination_is_queue));
}
