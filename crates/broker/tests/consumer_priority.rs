//! Consumer priorities (`x-priority` on `basic.consume`), as RabbitMQ 3.10: a consumer gets
//! messages before the consumers of a lower priority on its queue whenever it has credit,
//! consumers of one priority share round-robin, and with single active consumer the priority
//! only orders the consumers waiting to become active.

mod common;

use std::sync::Arc;

use common::*;
use lockgate_broker::{Channel, DeliveryTag, QueueFlags, VHost};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

fn declare(vh: &VHost, arguments: &[(&str, FieldValue)]) {
    let table: FieldTable = arguments
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    vh.declare_queue(CONN, "q", QueueFlags::default(), table)
        .unwrap();
}

/// A channel with per-consumer `prefetch` (0: unlimited) and a consumer of `priority` on
/// "q" (`None`: no `x-priority` argument), tagged "c<id>".
fn consumer(
    vh: &Arc<VHost>,
    id: u16,
    prefetch: u16,
    priority: Option<FieldValue>,
) -> (Channel, Arc<TestSink>) {
    let (mut ch, sink) = channel(vh, id);
    ch.qos(prefetch, false);
    let arguments: FieldTable = priority
        .map(|p| ("x-priority".to_owned(), p))
        .into_iter()
        .collect();
    ch.consume("q", &format!("c{id}"), false, false, &arguments, |_| {})
        .unwrap();
    (ch, sink)
}

fn publish(vh: &VHost, range: std::ops::Range<u32>) {
    for i in range {
        send(vh, "q", &i.to_string());
    }
}

fn bodies(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

#[test]
fn the_higher_priority_gets_messages_until_its_prefetch_is_reached() {
    let vh = vhost();
    declare(&vh, &[]);
    // The low one subscribes first: arrival order does not matter.
    let (_low, low_sink) = consumer(&vh, 1, 0, Some(FieldValue::I32(0)));
    let (_high, high_sink) = consumer(&vh, 2, 5, Some(FieldValue::I32(10)));
    publish(&vh, 0..20);
    assert_eq!(high_sink.bodies(), bodies(0..5));
    assert_eq!(low_sink.bodies(), bodies(5..20));
}

#[test]
fn credit_freed_goes_to_the_highest_priority_that_can_take_it() {
    let vh = vhost();
    declare(&vh, &[]);
    let (mut high, high_sink) = consumer(&vh, 1, 2, Some(FieldValue::I32(10)));
    let (mut low, low_sink) = consumer(&vh, 2, 2, Some(FieldValue::I32(1)));
    publish(&vh, 0..6);
    assert_eq!(high_sink.take().len(), 2);
    assert_eq!(low_sink.take().len(), 2);
    // The high one is still at its limit: the low one's freed credit is used.
    low.ack(DeliveryTag(1), false).unwrap();
    assert_eq!(low_sink.bodies(), ["4"]);
    assert!(high_sink.bodies().is_empty());
    // Both could take the last one now that the high one has credit again: it goes there.
    high.ack(DeliveryTag(1), false).unwrap();
    assert_eq!(high_sink.bodies(), ["5"]);
    assert_eq!(vh.queue("q").unwrap().message_count(), 0);
}

#[test]
fn consumers_of_one_priority_share_round_robin_above_the_lower_ones() {
    let vh = vhost();
    declare(&vh, &[]);
    let (_low, low_sink) = consumer(&vh, 1, 0, None);
    let (_a, a_sink) = consumer(&vh, 2, 0, Some(FieldValue::I8(5)));
    let (_b, b_sink) = consumer(&vh, 3, 0, Some(FieldValue::I64(5)));
    publish(&vh, 0..6);
    assert_eq!(a_sink.bodies(), ["0", "2", "4"]);
    assert_eq!(b_sink.bodies(), ["1", "3", "5"]);
    assert!(low_sink.bodies().is_empty());
}

#[test]
fn levels_fill_from_the_highest_and_a_negative_priority_is_below_the_default() {
    let vh = vhost();
    declare(&vh, &[]);
    let (_neg, neg_sink) = consumer(&vh, 1, 0, Some(FieldValue::I16(-1)));
    let (_default, default_sink) = consumer(&vh, 2, 2, None);
    let (_mid, mid_sink) = consumer(&vh, 3, 1, Some(FieldValue::U8(3)));
    let (_top, top_sink) = consumer(&vh, 4, 1, Some(FieldValue::U32(7)));
    publish(&vh, 0..7);
    assert_eq!(top_sink.bodies(), ["0"]);
    assert_eq!(mid_sink.bodies(), ["1"]);
    assert_eq!(default_sink.bodies(), ["2", "3"]);
    assert_eq!(neg_sink.bodies(), ["4", "5", "6"]);
}

#[test]
fn a_higher_priority_consumer_joining_takes_over_and_leaving_hands_back() {
    let vh = vhost();
    declare(&vh, &[]);
    let (_low, low_sink) = consumer(&vh, 1, 0, None);
    publish(&vh, 0..2);
    let (mut high, high_sink) = consumer(&vh, 2, 0, Some(FieldValue::I32(1)));
    publish(&vh, 2..4);
    assert!(high.cancel("c2"));
    publish(&vh, 4..6);
    assert_eq!(low_sink.bodies(), ["0", "1", "4", "5"]);
    assert_eq!(high_sink.bodies(), ["2", "3"]);
}

#[test]
fn ready_messages_go_to_a_higher_priority_consumer_that_subscribes() {
    let vh = vhost();
    declare(&vh, &[]);
    let (_low, low_sink) = consumer(&vh, 1, 1, None);
    publish(&vh, 0..4);
    assert_eq!(low_sink.bodies(), ["0"]);
    let (_high, high_sink) = consumer(&vh, 2, 0, Some(FieldValue::I32(1)));
    assert_eq!(high_sink.bodies(), bodies(1..4));
}

#[test]
fn a_channel_that_is_paused_lets_the_lower_priority_take_the_messages() {
    let vh = vhost();
    declare(&vh, &[]);
    let (mut high, high_sink) = consumer(&vh, 1, 0, Some(FieldValue::I32(1)));
    let (_low, low_sink) = consumer(&vh, 2, 0, None);
    high.flow(false);
    publish(&vh, 0..2);
    high.flow(true);
    publish(&vh, 2..4);
    assert_eq!(low_sink.bodies(), ["0", "1"]);
    assert_eq!(high_sink.bodies(), ["2", "3"]);
}

fn sac(vh: &VHost) {
    declare(vh, &[("x-single-active-consumer", FieldValue::Bool(true))]);
}

#[test]
fn single_active_consumer_keeps_the_first_and_then_activates_the_highest_waiting() {
    let vh = vhost();
    sac(&vh);
    let (mut first, first_sink) = consumer(&vh, 1, 0, None);
    let (mid, mid_sink) = consumer(&vh, 2, 0, Some(FieldValue::I32(1)));
    let (top, top_sink) = consumer(&vh, 3, 0, Some(FieldValue::I32(5)));
    let (_last, last_sink) = consumer(&vh, 4, 0, Some(FieldValue::I32(1)));
    // As RabbitMQ 3.10: a higher priority does not take over from the active consumer.
    publish(&vh, 0..2);
    assert_eq!(first_sink.bodies(), ["0", "1"]);
    first.ack(DeliveryTag(2), true).unwrap();
    assert!(first.cancel("c1"));
    publish(&vh, 2..4);
    assert_eq!(top_sink.bodies(), ["2", "3"]);
    assert!(mid_sink.bodies().is_empty() && last_sink.bodies().is_empty());
    // Equal priorities wait in arrival order; a closed channel's deliveries come back first.
    drop(top);
    publish(&vh, 4..5);
    assert_eq!(mid_sink.bodies(), ["2", "3", "4"]);
    assert!(last_sink.bodies().is_empty());
    drop(mid);
    publish(&vh, 5..6);
    assert_eq!(last_sink.bodies(), bodies(2..6));
}

#[test]
fn loose_messages_of_a_grouped_queue_go_to_the_higher_priority_first() {
    let vh = vhost();
    declare(
        &vh,
        &[("x-group-header", FieldValue::LongString("key".into()))],
    );
    let (_low, low_sink) = consumer(&vh, 1, 0, None);
    let (mut high, high_sink) = consumer(&vh, 2, 2, Some(FieldValue::I32(3)));
    publish(&vh, 0..5);
    assert_eq!(high_sink.bodies(), ["0", "1"]);
    assert_eq!(low_sink.bodies(), ["2", "3", "4"]);
    high.ack(DeliveryTag(2), true).unwrap();
    publish(&vh, 5..7);
    assert_eq!(high_sink.take().len(), 4);
    assert_eq!(low_sink.take().len(), 3);
    // Groups are still spread by load, whatever the priorities, and stick to their
    // consumer: one key each.
    for (n, key) in ["a", "b", "a", "b"].into_iter().enumerate() {
        let headers: FieldTable = [(
            "key".to_owned(),
            FieldValue::LongString(key.to_owned().into()),
        )]
        .into_iter()
        .collect();
        let properties = BasicProperties {
            headers: Some(headers),
            ..BasicProperties::default()
        };
        vh.publish(
            false,
            message_with("", "q", &format!("{key}{n}"), properties),
        )
        .unwrap();
    }
    // The high one (tags 3 and 4 outstanding) may have a group waiting for its credit.
    high.ack(DeliveryTag(4), true).unwrap();
    let (mut on_low, mut on_high) = (low_sink.bodies(), high_sink.bodies());
    on_low.sort();
    on_high.sort();
    let split = [on_low, on_high];
    assert!(
        split == [["a0", "a2"], ["b1", "b3"]] || split == [["b1", "b3"], ["a0", "a2"]],
        "{split:?}"
    );
}
