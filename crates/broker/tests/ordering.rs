//! Ordering: `x-max-priority` and `x-single-active-consumer` (message groups are in
//! `groups.rs`).

mod common;

use std::sync::Arc;

use common::*;
use lockgate_broker::{DeliveryTag, QueueFlags, VHost};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

fn declare(vh: &VHost, name: &str, args: &[(&str, FieldValue)]) {
    let table: FieldTable = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    vh.declare_queue(CONN, name, QueueFlags::default(), table)
        .unwrap();
}

fn send_priority(vh: &VHost, queue: &str, body: &str, priority: Option<u8>) {
    let properties = BasicProperties {
        priority,
        ..BasicProperties::default()
    };
    vh.publish(false, message_with("", queue, body, properties))
        .unwrap();
}

fn drain_get(ch: &mut lockgate_broker::Channel, queue: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(got) = ch.get(queue, true).unwrap() {
        seen.push(body(&got.message));
    }
    seen
}

#[test]
fn higher_priorities_go_first_and_fifo_within_a_priority() {
    let vh = vhost();
    declare(&vh, "q", &[("x-max-priority", FieldValue::U8(5))]);
    for (body, priority) in [
        ("none-a", None),
        ("p3-a", Some(3)),
        ("p5-a", Some(5)),
        ("p9-as-5", Some(9)),
        ("p0", Some(0)),
        ("p3-b", Some(3)),
        ("none-b", None),
    ] {
        send_priority(&vh, "q", body, priority);
    }
    assert_eq!(vh.queue("q").unwrap().message_count(), 7);
    let (mut ch, sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", true);
    assert_eq!(
        sink.bodies(),
        ["p5-a", "p9-as-5", "p3-a", "p3-b", "none-a", "p0", "none-b"]
    );
    // A queue without x-max-priority ignores the property.
    queue(&vh, "plain");
    send_priority(&vh, "plain", "low", Some(0));
    send_priority(&vh, "plain", "high", Some(9));
    assert_eq!(drain_get(&mut ch, "plain"), ["low", "high"]);
}

#[test]
fn requeued_messages_return_to_their_place_within_their_priority() {
    let vh = vhost();
    declare(&vh, "q", &[("x-max-priority", FieldValue::I32(10))]);
    let (mut ch, sink) = channel(&vh, 1);
    ch.qos(2, false);
    consume(&mut ch, "q", "c", false);
    send_priority(&vh, "q", "a1", Some(1));
    send_priority(&vh, "q", "a2", Some(1));
    assert_eq!(sink.bodies(), ["a1", "a2"]);
    send_priority(&vh, "q", "a3", Some(1));
    send_priority(&vh, "q", "b", Some(7));
    // Both back: a1 and a2 go before a3 (same priority) but after b (higher).
    ch.nack(DeliveryTag(2), true, true).unwrap();
    let seen: Vec<(String, bool)> = sink
        .take()
        .iter()
        .skip(2)
        .map(|d| (body(&d.message), d.redelivered))
        .collect();
    assert_eq!(seen, [("b".to_owned(), false), ("a1".to_owned(), true)]);
    ch.ack(DeliveryTag(0), true).unwrap();
    let rest: Vec<String> = sink.take().iter().map(|d| body(&d.message)).collect();
    assert_eq!(rest, ["a2", "a3"]);
}

#[test]
fn basic_get_and_purge_respect_priorities() {
    let vh = vhost();
    declare(&vh, "q", &[("x-max-priority", FieldValue::U8(2))]);
    send_priority(&vh, "q", "low", None);
    send_priority(&vh, "q", "high", Some(2));
    let (mut ch, _sink) = channel(&vh, 1);
    let got = ch.get("q", true).unwrap().unwrap();
    assert_eq!(
        (body(&got.message), got.message_count),
        ("high".to_owned(), 1)
    );
    assert_eq!(vh.purge_queue(CONN, "q").unwrap(), 1);
    // Still a priority queue after the purge.
    send_priority(&vh, "q", "low", Some(1));
    send_priority(&vh, "q", "high", Some(2));
    assert_eq!(drain_get(&mut ch, "q"), ["high", "low"]);
}

fn sac(vh: &Arc<VHost>) {
    declare(
        vh,
        "q",
        &[("x-single-active-consumer", FieldValue::Bool(true))],
    );
}

#[test]
fn single_active_consumer_delivers_to_the_first_consumer_only() {
    let vh = vhost();
    sac(&vh);
    let (mut a, sa) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    consume(&mut a, "q", "a", true);
    consume(&mut b, "q", "b", true);
    for i in 0..4 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sa.bodies(), ["0", "1", "2", "3"]);
    assert!(sb.bodies().is_empty());
    // Every consumer is counted, the waiting ones too (as RabbitMQ).
    assert_eq!(vh.queue("q").unwrap().consumer_count(), 2);
}

#[test]
fn single_active_consumer_waits_for_credit_rather_than_using_the_next() {
    let vh = vhost();
    sac(&vh);
    let (mut a, sa) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    a.qos(1, false);
    consume(&mut a, "q", "a", false);
    consume(&mut b, "q", "b", false);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    assert_eq!(sa.bodies(), ["0"]);
    assert!(sb.bodies().is_empty());
    assert_eq!(vh.queue("q").unwrap().message_count(), 1);
}

#[test]
fn the_next_consumer_takes_over_on_cancel() {
    let vh = vhost();
    sac(&vh);
    let (mut a, sa) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    let (mut c, sc) = channel(&vh, 3);
    consume(&mut a, "q", "a", true);
    consume(&mut b, "q", "b", true);
    consume(&mut c, "q", "c", true);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    assert!(a.cancel("a"));
    send(&vh, "q", "2");
    send(&vh, "q", "3");
    assert!(b.cancel("b"));
    send(&vh, "q", "4");
    assert_eq!(sa.bodies(), ["0", "1"]);
    assert_eq!(sb.bodies(), ["2", "3"]);
    assert_eq!(sc.bodies(), ["4"]);
}

#[test]
fn unacked_messages_of_a_closed_active_consumer_go_first_to_the_next() {
    let vh = vhost();
    sac(&vh);
    let (mut a, sa) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    a.qos(2, false);
    consume(&mut a, "q", "a", false);
    consume(&mut b, "q", "b", false);
    for i in 0..5 {
        send(&vh, "q", &i.to_string());
    }
    assert_eq!(sa.bodies(), ["0", "1"]);
    a.close();
    let seen: Vec<(String, bool)> = sb
        .take()
        .iter()
        .map(|d| (body(&d.message), d.redelivered))
        .collect();
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
fn a_cancelled_active_consumer_holds_the_next_until_its_deliveries_settle() {
    let vh = vhost();
    sac(&vh);
    let (mut a, sa) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    consume(&mut a, "q", "a", false);
    consume(&mut b, "q", "b", false);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    assert_eq!(sa.bodies(), ["0", "1"]);
    assert!(a.cancel("a"));
    send(&vh, "q", "2");
    // "0" and "1" may still come back: "2" waits for them.
    assert!(sb.bodies().is_empty());
    a.ack(DeliveryTag(1), false).unwrap();
    assert!(sb.bodies().is_empty());
    a.nack(DeliveryTag(2), false, true).unwrap();
    let seen: Vec<(String, bool)> = sb
        .take()
        .iter()
        .map(|d| (body(&d.message), d.redelivered))
        .collect();
    assert_eq!(seen, [("1".to_owned(), true), ("2".to_owned(), false)]);
}

#[test]
fn exclusive_consume_is_refused_on_a_single_active_consumer_queue() {
    let vh = vhost();
    sac(&vh);
    let (mut a, _sa) = channel(&vh, 1);
    let err = a
        .consume("q", "x", false, true, &FieldTable::default(), |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"
    );
    consume(&mut a, "q", "a", false);
}

#[test]
fn a_policy_setting_max_priority_refiles_the_waiting_messages() {
    let vh = vhost();
    queue(&vh, "q");
    send_priority(&vh, "q", "low", Some(1));
    send_priority(&vh, "q", "high", Some(4));
    let q = vh.queue("q").unwrap();
    let arguments = lockgate_broker::QueueArguments {
        max_priority: Some(4),
        ..lockgate_broker::QueueArguments::default()
    };
    q.set_arguments(arguments, Some("prio".to_owned()));
    send_priority(&vh, "q", "mid", Some(2));
    let (mut ch, _sink) = channel(&vh, 1);
    assert_eq!(drain_get(&mut ch, "q"), ["high", "mid", "low"]);
}

#[test]
fn a_timed_out_active_consumer_hands_over_to_the_next() {
    let vh = vhost();
    declare(
        &vh,
        "q",
        &[
            ("x-single-active-consumer", FieldValue::Bool(true)),
            ("x-consumer-timeout", FieldValue::I32(100)),
        ],
    );
    let (mut hung, sh) = channel(&vh, 1);
    let (mut b, sb) = channel(&vh, 2);
    hung.qos(1, false);
    consume(&mut hung, "q", "hung", false);
    consume(&mut b, "q", "b", false);
    send(&vh, "q", "0");
    send(&vh, "q", "1");
    assert_eq!(sh.bodies(), ["0"]);
    // The active consumer never acks: after its timeout b is active, "0" first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sb.count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "b took over within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let seen: Vec<(String, bool)> = sb
        .take()
        .iter()
        .map(|d| (body(&d.message), d.redelivered))
        .collect();
    assert_eq!(seen, [("0".to_owned(), true), ("1".to_owned(), false)]);
    assert_eq!(sh.bodies(), ["0"]);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Publish(Option<u8>),
        Get,
        /// Requeue (or, with `ack`, acknowledge) the outstanding get at `index % len`.
        Settle {
            index: usize,
            ack: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::option::of(0u8..8).prop_map(Op::Publish),
            3 => Just(Op::Get),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(index, ack)| Op::Settle { index, ack }),
        ]
    }

    /// Ready messages as (effective priority, seq); gets take the highest priority, then the
    /// lowest seq; a requeue puts the message back with its own priority and seq.
    fn run(max: u8, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let vh = vhost();
        declare(&vh, "q", &[("x-max-priority", FieldValue::U8(max))]);
        let (mut ch, _sink) = channel(&vh, 1);
        let mut ready: Vec<(u8, u64)> = Vec::new();
        let mut out: Vec<(u64, (u8, u64))> = Vec::new();
        let mut seq = 0;
        for op in ops {
            match op {
                Op::Publish(priority) => {
                    send_priority(&vh, "q", &seq.to_string(), priority);
                    ready.push((priority.unwrap_or(0).min(max), seq));
                    seq += 1;
                }
                Op::Get => {
                    let got = ch.get("q", false).unwrap();
                    let best = ready
                        .iter()
                        .enumerate()
                        .max_by_key(|(_, &(p, s))| (p, std::cmp::Reverse(s)))
                        .map(|(i, _)| i);
                    match best {
                        None => prop_assert!(got.is_none()),
                        Some(i) => {
                            let expected = ready.remove(i);
                            let got = got.expect("a ready message");
                            prop_assert_eq!(body(&got.message), expected.1.to_string());
                            out.push((got.delivery_tag.0, expected));
                        }
                    }
                }
                Op::Settle { index, ack } => {
                    if !out.is_empty() {
                        let (tag, item) = out.remove(index % out.len());
                        if ack {
                            ch.ack(DeliveryTag(tag), false).unwrap();
                        } else {
                            ch.nack(DeliveryTag(tag), false, true).unwrap();
                            ready.push(item);
                        }
                    }
                }
            }
            prop_assert_eq!(vh.queue("q").unwrap().message_count() as usize, ready.len());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn priority_queue_matches_the_model(max in 1u8..6, ops in prop::collection::vec(op(), 1..80)) {
            run(max, ops)?;
        }
    }
}
