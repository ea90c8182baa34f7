//! Consumers, credit, acknowledgements and redelivery, with sinks that collect deliveries.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use lockgate_broker::{Broker, BrokerConfig, DeliveryTag, QueueFlags};
use lockgate_wire::FieldTable;

fn tags(deliveries: &[lockgate_broker::Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.delivery_tag.0).collect()
}

#[test]
fn consumers_share_a_queue_round_robin() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch1, s1) = channel(&vh, 1);
    let (mut ch2, s2) = channel(&vh, 2);
    let (mut ch3, s3) = channel(&vh, 3);
    consume(&mut ch1, "q", "a", true);
    consume(&mut ch2, "q", "b", true);
    consume(&mut ch3, "q", "c", true);
    for i in 0..9 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(s1.bodies(), ["0", "3", "6"]);
    assert_eq!(s2.bodies(), ["1", "4", "7"]);
    assert_eq!(s3.bodies(), ["2", "5", "8"]);
}

#[test]
fn prefetch_limits_unacked_deliveries_per_consumer() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    ch.qos(2, false);
    consume(&mut ch, "q", "c", false);
    for i in 0..5 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sink.bodies(), ["0", "1"]);
    assert_eq!(vh.queue("q").unwrap().message_count(), 3);
    ch.ack(DeliveryTag(1), false).unwrap();
    assert_eq!(sink.bodies(), ["0", "1", "2"]);
    ch.ack(DeliveryTag(3), true).unwrap();
    assert_eq!(sink.bodies(), ["0", "1", "2", "3", "4"]);
    assert_eq!(tags(&sink.take()), [1, 2, 3, 4, 5]);
}

#[test]
fn round_robin_with_prefetch_is_fair_and_skips_full_consumers() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut fast, fast_sink) = channel(&vh, 1);
    let (mut slow, slow_sink) = channel(&vh, 2);
    fast.qos(1, false);
    slow.qos(1, false);
    consume(&mut fast, "q", "fast", false);
    consume(&mut slow, "q", "slow", false);
    for i in 0..10 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(fast_sink.count(), 1);
    assert_eq!(slow_sink.count(), 1);
    // The fast consumer acks each delivery; the slow one never does.
    for _ in 0..8 {
        let d = fast_sink.take().pop().unwrap();
        fast.ack(d.delivery_tag, false).unwrap();
    }
    assert_eq!(slow_sink.count(), 1);
    assert_eq!(vh.queue("q").unwrap().message_count(), 0);
    // Equal credit: alternate strictly.
    let vh = vhost();
    queue(&vh, "q");
    let (mut a, sa) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    a.qos(3, false);
    b.qos(3, false);
    consume(&mut a, "q", "a", false);
    consume(&mut b, "q", "b", false);
    for i in 0..10 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sa.bodies(), ["0", "2", "4"]);
    assert_eq!(sb.bodies(), ["1", "3", "5"]);
}

#[test]
fn qos_global_limits_the_whole_channel() {
    let vh = vhost();
    queue(&vh, "q1");
    queue(&vh, "q2");
    let (mut ch, sink) = channel(&vh, 1);
    ch.qos(3, true);
    consume(&mut ch, "q1", "c1", false);
    consume(&mut ch, "q2", "c2", false);
    for i in 0..3 {
        send(&vh, "q1", &format!("a{i}"));
        send(&vh, "q2", &format!("b{i}"));
    }
    assert_eq!(sink.count(), 3);
    // Acking a q1 message lets q2 deliver: channel-wide credit.
    let first_q1 = sink
        .take()
        .into_iter()
        .find(|d| d.message.routing_key() == "q1")
        .unwrap();
    ch.ack(first_q1.delivery_tag, false).unwrap();
    assert_eq!(sink.count(), 1);
    assert_eq!(ch.unacked_count(), 3);
}

#[test]
fn global_and_per_consumer_prefetch_combine() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    ch.qos(1, false);
    ch.qos(5, true);
    consume(&mut ch, "q", "c", false);
    for i in 0..3 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sink.count(), 1);
}

#[test]
fn prefetch_applies_to_consumers_created_afterwards() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "unlimited", false);
    ch.qos(1, false);
    for i in 0..4 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sink.count(), 4);
}

#[test]
fn ack_nack_reject_and_unknown_tags() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", false);
    for i in 0..6 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(tags(&sink.take()), [1, 2, 3, 4, 5, 6]);
    ch.ack(DeliveryTag(2), false).unwrap();
    let err = ch.ack(DeliveryTag(2), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - unknown delivery tag 2"
    );
    assert_eq!(err.reply_code(), 406);
    assert!(!err.is_connection_error());
    assert_eq!(
        ch.ack(DeliveryTag(99), false).unwrap_err().to_string(),
        "PRECONDITION_FAILED - unknown delivery tag 99"
    );
    // multiple up to 3 settles 1 and 3 (2 is gone already).
    ch.ack(DeliveryTag(3), true).unwrap();
    assert_eq!(ch.unacked_count(), 3);
    // multiple up to an already settled tag is unknown, as RabbitMQ.
    assert!(ch.ack(DeliveryTag(3), true).is_err());
    ch.nack(DeliveryTag(4), false, false).unwrap();
    ch.reject(DeliveryTag(5), false).unwrap();
    assert_eq!(ch.unacked_count(), 1);
    ch.ack(DeliveryTag(0), true).unwrap();
    assert_eq!(ch.unacked_count(), 0);
    assert_eq!(vh.queue("q").unwrap().unacked_count(), 0);
    assert_eq!(vh.queue("q").unwrap().message_count(), 0);
    ch.ack(DeliveryTag(0), true).unwrap();
    assert!(ch.ack(DeliveryTag(0), false).is_err());
}

#[test]
fn nack_with_requeue_sets_redelivered_and_keeps_the_position() {
    let vh = vhost();
    queue(&vh, "q");
    for i in 0..5 {
        send(&vh, "q", &i.to_string());
    }
    let (mut ch, _sink) = channel(&vh, 1);
    let first = ch.get("q", false).unwrap().unwrap();
    let second = ch.get("q", false).unwrap().unwrap();
    assert!(!first.redelivered);
    // Requeue the second, then the first: each goes back to its original place.
    ch.nack(second.delivery_tag, false, true).unwrap();
    ch.reject(first.delivery_tag, true).unwrap();
    let mut seen = Vec::new();
    while let Some(got) = ch.get("q", true).unwrap() {
        seen.push((body(&got.message), got.redelivered));
    }
    assert_eq!(
        seen,
        [
            ("0".to_owned(), true),
            ("1".to_owned(), true),
            ("2".to_owned(), false),
            ("3".to_owned(), false),
            ("4".to_owned(), false)
        ]
    );
}

#[test]
fn nack_multiple_requeues_everything_up_to_the_tag() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    ch.qos(3, false);
    consume(&mut ch, "q", "c", false);
    for i in 0..4 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sink.bodies(), ["0", "1", "2"]);
    sink.take();
    ch.nack(DeliveryTag(2), true, true).unwrap();
    // 0 and 1 come back first, in order, redelivered; then 3.
    let again = sink.take();
    let seen: Vec<_> = again
        .iter()
        .map(|d| (body(&d.message), d.redelivered, d.delivery_tag.0))
        .collect();
    assert_eq!(seen, [("0".to_owned(), true, 4), ("1".to_owned(), true, 5)]);
}

#[test]
fn closing_a_channel_requeues_unacked_at_their_original_positions() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    ch.qos(2, false);
    consume(&mut ch, "q", "c", false);
    for i in 0..5 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sink.bodies(), ["0", "1"]);
    ch.ack(DeliveryTag(1), false).unwrap(); // "2" is delivered now
    drop(ch); // closes: "1" and "2" go back in front of "3" and "4"
    assert_eq!(vh.queue("q").unwrap().consumer_count(), 0);
    let (mut other, _s) = channel(&vh, 2);
    let mut seen = Vec::new();
    while let Some(got) = other.get("q", true).unwrap() {
        seen.push((body(&got.message), got.redelivered));
    }
    assert_eq!(
        seen,
        [
            ("1".to_owned(), true),
            ("2".to_owned(), true),
            ("3".to_owned(), false),
            ("4".to_owned(), false)
        ]
    );
}

#[test]
fn requeued_messages_go_to_other_consumers_after_close() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut a, sa) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    a.qos(1, false);
    b.qos(1, false);
    consume(&mut a, "q", "a", false);
    consume(&mut b, "q", "b", false);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    assert_eq!(sa.bodies(), ["0"]);
    a.close();
    // "0" waits for b's credit, ahead of nothing else.
    let d = sb.take().pop().unwrap();
    b.ack(d.delivery_tag, false).unwrap();
    let d = sb.take().pop().unwrap();
    assert_eq!((body(&d.message), d.redelivered), ("0".to_owned(), true));
}

#[test]
fn recover_requeues_all_unacked() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", false);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    sink.take();
    ch.recover(true).unwrap();
    let again = sink.take();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|d| d.redelivered));
    assert_eq!(tags(&again), [3, 4]);
    let err = ch.recover(false).unwrap_err();
    assert_eq!(err.to_string(), "NOT_IMPLEMENTED - requeue=false");
    assert!(err.is_connection_error());
}

#[test]
fn basic_get_counts_and_acks() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, _sink) = channel(&vh, 1);
    assert!(ch.get("q", false).unwrap().is_none());
    send(&vh, "q", "a");
    send(&vh, "q", "b");
    let got = ch.get("q", false).unwrap().unwrap();
    assert_eq!((got.delivery_tag.0, got.message_count), (1, 1));
    assert_eq!(vh.queue("q").unwrap().unacked_count(), 1);
    ch.ack(got.delivery_tag, false).unwrap();
    let got = ch.get("q", true).unwrap().unwrap();
    assert_eq!((got.delivery_tag.0, got.message_count), (2, 0));
    assert_eq!(ch.unacked_count(), 0);
    assert_eq!(
        ch.get("nope", true).unwrap_err().to_string(),
        "NOT_FOUND - no queue 'nope' in vhost '/'"
    );
}

#[test]
fn consume_errors() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, _sink) = channel(&vh, 1);
    let none = FieldTable::default();
    consume(&mut ch, "q", "tag", false);
    let err = ch
        .consume("q", "tag", false, false, &none, |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "NOT_ALLOWED - attempt to reuse consumer tag 'tag'"
    );
    assert_eq!(err.reply_code(), 530);
    assert!(err.is_connection_error());
    let in_use = "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use";
    let err = ch
        .consume("q", "x", false, true, &none, |_| {})
        .unwrap_err();
    assert_eq!(err.to_string(), in_use);
    queue(&vh, "solo");
    ch.consume("solo", "excl", false, true, &none, |_| {})
        .unwrap();
    let (mut other, _s) = channel(&vh, 2);
    let err = other
        .consume("solo", "y", false, false, &none, |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ACCESS_REFUSED - queue 'solo' in vhost '/' in exclusive use"
    );
    assert!(ch.cancel("excl"));
    other
        .consume("solo", "y", false, false, &none, |_| {})
        .unwrap();
    let err = ch
        .consume("nope", "", false, false, &none, |_| {})
        .unwrap_err();
    assert_eq!(err.to_string(), "NOT_FOUND - no queue 'nope' in vhost '/'");
    let bad = [(
        "x-priority".to_owned(),
        lockgate_wire::FieldValue::from("high"),
    )]
    .into_iter()
    .collect();
    let err = ch
        .consume("q", "p", false, false, &bad, |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': \"expected integer, got longstr\""
    );
    // A failed consume does not keep its tag.
    queue(&vh, "later");
    ch.consume("later", "x", false, false, &none, |_| {})
        .unwrap();
}

#[test]
fn generated_consumer_tags_and_registration_hook_order() {
    let vh = vhost();
    queue(&vh, "q");
    send(&vh, "q", "waiting");
    let (mut ch, sink) = channel(&vh, 1);
    let mut seen_before_delivery = None;
    let tag = ch
        .consume("q", "", true, false, &FieldTable::default(), |tag| {
            seen_before_delivery = Some((tag.clone(), sink.count()));
        })
        .unwrap();
    assert!(tag.as_str().starts_with("amq.ctag-"));
    assert_eq!(seen_before_delivery, Some((tag, 0)));
    assert_eq!(sink.count(), 1);
}

#[test]
fn cancel_stops_deliveries_and_keeps_unacked() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", false);
    send(&vh, "q", "0");
    assert!(ch.cancel("c"));
    assert!(!ch.cancel("c"));
    send(&vh, "q", "1");
    assert_eq!(sink.count(), 1);
    assert_eq!(vh.queue("q").unwrap().message_count(), 1);
    ch.ack(DeliveryTag(1), false).unwrap();
}

#[test]
fn auto_delete_queue_goes_with_its_last_consumer() {
    let vh = vhost();
    let flags = QueueFlags {
        auto_delete: true,
        ..QueueFlags::default()
    };
    vh.declare_queue(CONN, "ad", flags, FieldTable::default())
        .unwrap();
    let (mut ch, _sink) = channel(&vh, 1);
    // Never consumed: stays.
    consume(&mut ch, "ad", "a", false);
    consume(&mut ch, "ad", "b", false);
    ch.cancel("a");
    assert!(vh.queue("ad").is_some());
    ch.cancel("b");
    assert!(vh.queue("ad").is_none());
    // Closing the channel counts as cancelling.
    vh.declare_queue(CONN, "ad2", flags, FieldTable::default())
        .unwrap();
    consume(&mut ch, "ad2", "c", false);
    ch.close();
    assert!(vh.queue("ad2").is_none());
}

#[test]
fn deleting_a_queue_cancels_its_consumers() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", false);
    send(&vh, "q", "m");
    vh.delete_queue(CONN, "q", false, false).unwrap();
    assert_eq!(sink.cancelled.lock().unwrap().len(), 1);
    assert_eq!(sink.cancelled.lock().unwrap()[0].as_str(), "c");
    assert_eq!(ch.consumer_count(), 0);
    // Its unacked delivery can still be acked; the tag can be reused.
    ch.ack(DeliveryTag(1), false).unwrap();
    queue(&vh, "q");
    consume(&mut ch, "q", "c", false);
}

#[test]
fn channel_flow_pauses_deliveries() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", true);
    ch.flow(false);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    assert_eq!(sink.count(), 0);
    ch.flow(true);
    assert_eq!(sink.bodies(), ["0", "1"]);
}

#[test]
fn a_closed_sink_puts_the_message_back() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut dead, dead_sink) = channel(&vh, 1);
    let (mut live, live_sink) = channel(&vh, 2);
    consume(&mut dead, "q", "dead", false);
    consume(&mut live, "q", "live", false);
    dead_sink.closed.store(true, Ordering::SeqCst);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    assert_eq!(live_sink.bodies(), ["0", "1"]);
    assert_eq!(dead_sink.count(), 0);
}

#[test]
fn memory_watermark_blocks_and_unblocks() {
    let broker = Broker::new(BrokerConfig {
        memory_high_watermark: 1000,
        ..BrokerConfig::default()
    });
    let vh = broker.vhost("/").unwrap();
    let mut watch = broker.memory_watch();
    queue(&vh, "q");
    queue(&vh, "r");
    vh.bind_queue(CONN, "q", "amq.fanout", "", FieldTable::default())
        .unwrap();
    vh.bind_queue(CONN, "r", "amq.fanout", "", FieldTable::default())
        .unwrap();
    let body = "x".repeat(400);
    vh.publish(false, message("amq.fanout", "", &body)).unwrap();
    // Routed to two queues, counted once.
    let one = broker.memory_used();
    assert!((400..500).contains(&one), "{one}");
    assert!(!broker.memory_blocked());
    vh.publish(false, message("amq.fanout", "", &body)).unwrap();
    vh.publish(false, message("amq.fanout", "", &body)).unwrap();
    assert!(broker.memory_blocked());
    assert!(watch.has_changed().unwrap());
    assert!(*watch.borrow_and_update());
    // Unacked messages still count; acked ones are released.
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", false);
    drop(sink.take()); // the writer is done with them; they are still unacked
    assert!(broker.memory_blocked());
    vh.purge_queue(CONN, "r").unwrap();
    ch.ack(DeliveryTag(3), true).unwrap();
    assert!(!broker.memory_blocked());
    assert!(!*watch.borrow_and_update());
    assert_eq!(broker.memory_used(), 0);
}

#[test]
fn no_ack_deliveries_stay_counted_until_the_writer_drops_them() {
    let broker = Broker::new(BrokerConfig {
        memory_high_watermark: 1000,
        ..BrokerConfig::default()
    });
    let vh = broker.vhost("/").unwrap();
    queue(&vh, "q");
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", true);
    for _ in 0..3 {
        send(&vh, "q", &"x".repeat(400));
    }
    assert_eq!(vh.queue("q").unwrap().message_count(), 0);
    assert!(broker.memory_blocked());
    drop(sink.take());
    assert!(!broker.memory_blocked());
}

#[test]
fn exclusive_queue_consumers_go_with_the_connection() {
    let broker = broker();
    let vh = broker.vhost("/").unwrap();
    let exclusive = QueueFlags {
        exclusive: true,
        ..QueueFlags::default()
    };
    vh.declare_queue(CONN, "mine", exclusive, FieldTable::default())
        .unwrap();
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "mine", "c", false);
    send(&vh, "mine", "m");
    ch.close();
    broker.connection_closed(CONN);
    assert!(vh.queue("mine").is_none());
    // The channel was closed first: no cancel notification for it.
    assert!(sink.cancelled.lock().unwrap().is_empty());
}
