//! Consumer priorities (`x-priority` on `basic.consume`), as RabbitMQ 3.10: a consumer gets
//! messages before the consumers of a lower priority on its queue whenever it has credit,
//! consumers of one priority share round-robin, and with single active consumer the priority
//! only orders the consumers waiting to become active.

mod common;

use std::sync::Arc;

use common::*;
use lockgate_broker::{Channel, DeliveryTag, QueueFlags, VHost};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};
use proptest::prelude::*;

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

/// Declares "q" with `arguments` (a 50 ms consumer timeout among them), subscribes a
/// consumer of priority 5 with prefetch 1 that never acks and one of no priority, publishes
/// "0" (the first gets it) and waits until the timeout has taken it back and delivered it
/// again. Returns the consumers (priority 5, none) with their sinks.
fn delivered_again_after_a_timeout(
    vh: &Arc<VHost>,
    arguments: &[(&str, FieldValue)],
) -> [(Channel, Arc<TestSink>); 2] {
    declare(vh, arguments);
    let (high, high_sink) = consumer(vh, 1, 1, Some(FieldValue::I32(5)));
    let (low, low_sink) = consumer(vh, 2, 0, None);
    publish(vh, 0..1);
    assert_eq!(high_sink.bodies(), ["0"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while low_sink.count() + high_sink.count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "taken back within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    [(high, high_sink), (low, low_sink)]
}

#[test]
fn a_delivery_that_timed_out_goes_to_a_lower_priority_consumer_first() {
    // The consumer timeout takes a delivery back from a consumer that does not ack (it may
    // hang for good) for another consumer: a lower priority one too, or the message would
    // bounce on the one that does not ack for as long as it stays subscribed.
    let vh = vhost();
    let timeout = [("x-consumer-timeout", FieldValue::I32(50))];
    let [(_high, high_sink), (_low, low_sink)] = delivered_again_after_a_timeout(&vh, &timeout);
    assert_eq!(low_sink.bodies(), ["0"]);
    assert_eq!(high_sink.count(), 1);
    // New messages go to the higher priority again.
    publish(&vh, 1..2);
    assert_eq!(high_sink.bodies(), ["0", "1"]);
}

#[test]
fn a_loose_delivery_that_timed_out_goes_to_a_lower_priority_consumer_first() {
    // As above, on a grouped queue: a message without the group header.
    let vh = vhost();
    let arguments = [
        ("x-consumer-timeout", FieldValue::I32(50)),
        ("x-group-header", FieldValue::LongString("key".into())),
    ];
    let [(_high, high_sink), (_low, low_sink)] = delivered_again_after_a_timeout(&vh, &arguments);
    assert_eq!(low_sink.bodies(), ["0"]);
    assert_eq!(high_sink.count(), 1);
}

/// One step of [`priorities_match_the_model`].
#[derive(Clone, Debug)]
enum Op {
    Publish(u32),
    /// Channel, priority, per-consumer prefetch (1..=3).
    Subscribe(usize, i64, u16),
    Cancel(usize),
    Close(usize),
    /// Settles the channel's oldest outstanding delivery: ack, or nack with requeue.
    Settle(usize, bool),
    Flow(usize, bool),
    /// Channel-wide prefetch (0 = none), as basic.qos global=true.
    Global(usize, u16),
    /// Acks the channel's oldest outstanding delivery inside a transaction.
    Hold(usize),
    /// tx.commit (true) or tx.rollback of what the channel holds.
    Commit(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let ch = 0..4usize;
    prop_oneof![
        3 => (1..6u32).prop_map(Op::Publish),
        2 => (ch.clone(), -1..3i64, 1..4u16).prop_map(|(c, p, n)| Op::Subscribe(c, p, n)),
        1 => ch.clone().prop_map(Op::Cancel),
        1 => ch.clone().prop_map(Op::Close),
        4 => (ch.clone(), any::<bool>()).prop_map(|(c, a)| Op::Settle(c, a)),
        1 => (ch.clone(), any::<bool>()).prop_map(|(c, a)| Op::Flow(c, a)),
        1 => (ch.clone(), 0..3u16).prop_map(|(c, n)| Op::Global(c, n)),
        2 => ch.clone().prop_map(Op::Hold),
        1 => (ch, any::<bool>()).prop_map(|(c, commit)| Op::Commit(c, commit)),
    ]
}

/// A channel of the model: its consumer (priority, prefetch), if subscribed, the tags of its
/// deliveries not settled yet, oldest first, and of those an open transaction acked.
struct Model {
    ch: Channel,
    sink: Arc<TestSink>,
    consumer: Option<(i64, u16)>,
    outstanding: Vec<u64>,
    held: Vec<u64>,
    flowing: bool,
    global: u16,
}

impl Model {
    /// Whether its consumer could take one more delivery.
    fn has_credit(&self) -> bool {
        let Some((_, prefetch)) = self.consumer else {
            return false;
        };
        // An ack not committed gives no credit back.
        let held = self.outstanding.len() + self.held.len();
        self.flowing
            && held < usize::from(prefetch)
            && (self.global == 0 || held < usize::from(self.global))
    }
}

/// The queue [`run`] drives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Plain,
    /// `x-group-header`: messages keyed a, b or none, in turn.
    Grouped,
    SingleActive,
}

fn run(kind: Kind, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let broker = broker();
    let vh = broker.vhost("/").unwrap();
    match kind {
        Kind::Plain => declare(&vh, &[]),
        Kind::Grouped => declare(
            &vh,
            &[("x-group-header", FieldValue::LongString("key".into()))],
        ),
        Kind::SingleActive => sac(&vh),
    }
    let q = vh.queue("q").unwrap();
    let mut channels: Vec<Option<Model>> = (0..4).map(|_| None).collect();
    let mut next_id = 1u16;
    let mut published = 0u32;
    let mut acked = 0usize;
    for op in ops {
        match op {
            Op::Publish(n) => {
                for i in published..published + n {
                    let headers: FieldTable = ["a", "b"]
                        .get(i as usize % 3)
                        .map(|key| ("key".to_owned(), FieldValue::LongString((*key).into())))
                        .into_iter()
                        .collect();
                    let properties = BasicProperties {
                        headers: Some(headers),
                        ..BasicProperties::default()
                    };
                    vh.publish(false, message_with("", "q", &i.to_string(), properties))
                        .unwrap();
                }
                published += n;
            }
            Op::Subscribe(c, priority, prefetch) => {
                let slot = channels[c].get_or_insert_with(|| {
                    let (ch, sink) = channel(&vh, next_id);
                    next_id += 1;
                    Model {
                        ch,
                        sink,
                        consumer: None,
                        outstanding: Vec::new(),
                        held: Vec::new(),
                        flowing: true,
                        global: 0,
                    }
                });
                if slot.consumer.is_none() {
                    slot.ch.qos(prefetch, false);
                    let arguments: FieldTable =
                        [("x-priority".to_owned(), FieldValue::I64(priority))]
                            .into_iter()
                            .collect();
                    slot.ch
                        .consume("q", "c", false, false, &arguments, |_| {})
                        .unwrap();
                    slot.consumer = Some((priority, prefetch));
                }
            }
            Op::Cancel(c) => {
                if let Some(m) = channels[c].as_mut() {
                    if m.consumer.take().is_some() {
                        assert!(m.ch.cancel("c"));
                    }
                }
            }
            Op::Close(c) => drop(channels[c].take()),
            Op::Settle(c, ack) => {
                if let Some(m) = channels[c].as_mut().filter(|m| !m.outstanding.is_empty()) {
                    let tag = DeliveryTag(m.outstanding.remove(0));
                    if ack {
                        m.ch.ack(tag, false).unwrap();
                        acked += 1;
                    } else {
                        m.ch.nack(tag, false, true).unwrap();
                    }
                }
            }
            Op::Flow(c, active) => {
                if let Some(m) = channels[c].as_mut() {
                    m.ch.flow(active);
                    m.flowing = active;
                }
            }
            Op::Global(c, n) => {
                if let Some(m) = channels[c].as_mut() {
                    m.ch.qos(n, true);
                    m.global = n;
                }
            }
            Op::Hold(c) => {
                if let Some(m) = channels[c].as_mut().filter(|m| !m.outstanding.is_empty()) {
                    let tag = m.outstanding.remove(0);
                    m.ch.hold_ack(DeliveryTag(tag), false).unwrap();
                    m.held.push(tag);
                }
            }
            Op::Commit(c, commit) => {
                if let Some(m) = channels[c].as_mut() {
                    if commit {
                        acked += m.ch.commit_held();
                        m.held.clear();
                    } else {
                        m.ch.rollback_held();
                        m.outstanding.append(&mut m.held);
                        m.outstanding.sort_unstable();
                    }
                }
            }
        }
        // Who got what during this step.
        let mut lowest_served = None;
        for m in channels.iter_mut().flatten() {
            let got = m.sink.take();
            if let (false, Some((priority, _))) = (got.is_empty(), m.consumer) {
                lowest_served = Some(lowest_served.map_or(priority, |p: i64| p.min(priority)));
            }
            m.outstanding.extend(got.iter().map(|d| d.delivery_tag.0));
        }
        if kind != Kind::Plain {
            // Groups stick to their consumer, and only the active consumer takes messages.
            continue;
        }
        // A waiting message means nobody can take one; a message that went to a priority
        // means every consumer above it is full.
        let waiting = q.message_count() > 0;
        for m in channels.iter().flatten() {
            let Some((priority, _)) = m.consumer else {
                continue;
            };
            prop_assert!(
                !(m.has_credit() && (waiting || lowest_served.is_some_and(|p| priority > p))),
                "priority {} consumer with credit left idle (waiting: {}, served down to {:?})",
                priority,
                waiting,
                lowest_served
            );
        }
    }
    // Nothing is stuck: with every channel flowing and acking all it gets, the consumers
    // left (or a new one) take every message.
    let mut models: Vec<Model> = channels.into_iter().flatten().collect();
    if !models.iter().any(|m| m.consumer.is_some()) {
        let (mut ch, sink) = channel(&vh, next_id);
        ch.consume("q", "c", false, false, &FieldTable::default(), |_| {})
            .unwrap();
        models.push(Model {
            ch,
            sink,
            consumer: Some((0, 0)),
            outstanding: Vec::new(),
            held: Vec::new(),
            flowing: true,
            global: 0,
        });
    }
    for m in &mut models {
        m.ch.flow(true);
        acked += m.ch.commit_held();
        m.held.clear();
    }
    for round in 0.. {
        for m in &mut models {
            m.outstanding
                .extend(m.sink.take().iter().map(|d| d.delivery_tag.0));
        }
        if q.message_count() == 0 && models.iter().all(|m| m.outstanding.is_empty()) {
            break;
        }
        prop_assert!(round < 1000, "{} messages stuck", q.message_count());
        for m in &mut models {
            if let Some(&last) = m.outstanding.last() {
                acked += m.ch.ack(DeliveryTag(last), true).unwrap();
                m.outstanding.clear();
            }
        }
    }
    prop_assert_eq!(acked, published as usize);
    drop(models);
    vh.purge_queue(CONN, "q").unwrap();
    prop_assert_eq!(broker.memory_used(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn priorities_match_the_model(ops in prop::collection::vec(op(), 1..80)) {
        run(Kind::Plain, ops)?;
    }

    #[test]
    fn no_message_is_stuck_on_a_grouped_queue(ops in prop::collection::vec(op(), 1..80)) {
        run(Kind::Grouped, ops)?;
    }

    #[test]
    fn no_message_is_stuck_with_single_active_consumer(
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(Kind::SingleActive, ops)?;
    }
}
