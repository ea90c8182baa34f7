//! Message groups (`x-group-header`): fixed cases, and a model test of per-key order under
//! random consumers joining, leaving (cancel or close), acking and nacking.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use common::*;
use lockgate_broker::{Channel, DeliveryTag, QueueFlags, VHost};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};
use proptest::prelude::*;

fn declare(vh: &VHost) {
    let table: FieldTable = [(
        "x-group-header".to_owned(),
        FieldValue::LongString("key".into()),
    )]
    .into_iter()
    .collect();
    vh.declare_queue(CONN, "q", QueueFlags::default(), table)
        .unwrap();
}

/// Publishes `body` with header key = `key` (none: no header).
fn send_key(vh: &VHost, key: Option<&str>, body: &str) {
    let headers = key.map(|k| {
        [(
            "key".to_owned(),
            FieldValue::LongString(k.to_owned().into()),
        )]
        .into_iter()
        .collect::<FieldTable>()
    });
    let properties = BasicProperties {
        headers,
        ..BasicProperties::default()
    };
    vh.publish(false, message_with("", "q", body, properties))
        .unwrap();
}

fn open(vh: &Arc<VHost>, id: u16, prefetch: u16) -> (Channel, Arc<TestSink>) {
    let (mut ch, sink) = channel(vh, id);
    ch.qos(prefetch, false);
    consume(&mut ch, "q", &format!("c{id}"), false);
    (ch, sink)
}

/// The key of a body "k<key>-<n>".
fn key_of(body: &str) -> &str {
    body.split('-').next().unwrap_or(body)
}

#[test]
fn a_key_sticks_to_one_consumer_and_keys_spread_evenly() {
    let vh = vhost();
    declare(&vh);
    let consumers: Vec<_> = (1..=3).map(|id| open(&vh, id, 0)).collect();
    for key in ["a", "b", "c", "d", "e", "f"] {
        for n in 0..5 {
            send_key(&vh, Some(key), &format!("{key}-{n}"));
        }
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, (_, sink)) in consumers.iter().enumerate() {
        let bodies = sink.bodies();
        let keys: HashSet<&str> = bodies.iter().map(|b| key_of(b)).collect();
        assert_eq!(keys.len(), 2, "consumer {i} got keys {keys:?}");
        for key in keys {
            assert!(
                owner.insert(key.to_owned(), i).is_none(),
                "{key} on two consumers"
            );
            let own: Vec<&String> = bodies.iter().filter(|b| key_of(b) == key).collect();
            let expected: Vec<String> = (0..5).map(|n| format!("{key}-{n}")).collect();
            assert_eq!(own, expected.iter().collect::<Vec<_>>());
        }
    }
    assert_eq!(owner.len(), 6);
}

#[test]
fn a_busy_group_does_not_block_the_groups_behind_it() {
    let vh = vhost();
    declare(&vh);
    let (_a, sa) = open(&vh, 1, 1);
    for n in 0..3 {
        send_key(&vh, Some("x"), &format!("x-{n}"));
    }
    let (_b, sb) = open(&vh, 2, 0);
    // x is busy on a (prefetch 1, x-0 unacked); y and loose messages flow to b past x-1, x-2.
    send_key(&vh, Some("y"), "y-0");
    send_key(&vh, None, "loose-0");
    send_key(&vh, Some("y"), "y-1");
    assert_eq!(sa.bodies(), ["x-0"]);
    assert_eq!(sb.bodies(), ["y-0", "loose-0", "y-1"]);
    assert_eq!(vh.queue("q").unwrap().message_count(), 2);
}

#[test]
fn a_departed_consumers_unacked_messages_go_first_to_the_groups_new_consumer() {
    let vh = vhost();
    declare(&vh);
    let (mut a, sa) = open(&vh, 1, 2);
    for n in 0..4 {
        send_key(&vh, Some("x"), &format!("x-{n}"));
    }
    assert_eq!(sa.bodies(), ["x-0", "x-1"]);
    let (_b, sb) = open(&vh, 2, 0);
    // x has deliveries in flight on a: it stays there.
    send_key(&vh, Some("x"), "x-4");
    assert!(sb.bodies().is_empty());
    a.close();
    let seen: Vec<(String, bool)> = sb
        .take()
        .iter()
        .map(|d| (body(&d.message), d.redelivered))
        .collect();
    let expected: Vec<(String, bool)> = (0..5).map(|n| (format!("x-{n}"), n < 2)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_cancelled_consumer_keeps_its_busy_groups_until_they_settle() {
    let vh = vhost();
    declare(&vh);
    let (mut a, sa) = open(&vh, 1, 0);
    let (_b, sb) = open(&vh, 2, 0);
    send_key(&vh, Some("x"), "x-0");
    send_key(&vh, Some("y"), "y-0");
    assert_eq!(sa.bodies(), ["x-0"]);
    assert_eq!(sb.bodies(), ["y-0"]);
    assert!(a.cancel("c1"));
    send_key(&vh, Some("x"), "x-1");
    assert_eq!(sb.bodies(), ["y-0"], "x-0 may still come back");
    a.nack(DeliveryTag(1), false, true).unwrap();
    let seen: Vec<(String, bool)> = sb
        .take()
        .iter()
        .map(|d| (body(&d.message), d.redelivered))
        .collect();
    assert_eq!(
        seen,
        [
            ("y-0".to_owned(), false),
            ("x-0".to_owned(), true),
            ("x-1".to_owned(), false)
        ]
    );
}

#[test]
fn idle_groups_move_to_a_joining_consumer() {
    let vh = vhost();
    declare(&vh);
    let (mut a, sa) = open(&vh, 1, 0);
    for key in ["a", "b", "c", "d"] {
        send_key(&vh, Some(key), &format!("{key}-0"));
    }
    assert_eq!(sa.count(), 4);
    // Nothing in flight any more, but the groups are remembered while messages wait.
    a.flow(false);
    for key in ["a", "b", "c", "d"] {
        send_key(&vh, Some(key), &format!("{key}-1"));
    }
    a.ack(DeliveryTag(0), true).unwrap();
    let (_b, sb) = open(&vh, 2, 0);
    let moved: HashSet<String> = sb.bodies().iter().map(|b| key_of(b).to_owned()).collect();
    assert_eq!(moved.len(), 2, "b takes its share: {moved:?}");
    a.flow(true);
    let stayed: HashSet<String> = sa
        .bodies()
        .iter()
        .skip(4)
        .map(|b| key_of(b).to_owned())
        .collect();
    assert_eq!(stayed.len(), 2);
    assert!(stayed.is_disjoint(&moved));
}

#[test]
fn a_group_leaves_a_consumer_that_times_out() {
    let vh = vhost();
    let table: FieldTable = [
        (
            "x-group-header".to_owned(),
            FieldValue::LongString("key".into()),
        ),
        ("x-consumer-timeout".to_owned(), FieldValue::I32(100)),
    ]
    .into_iter()
    .collect();
    vh.declare_queue(CONN, "q", QueueFlags::default(), table)
        .unwrap();
    let (_hung, sh) = open(&vh, 1, 1);
    let (_b, sb) = open(&vh, 2, 0);
    send_key(&vh, Some("x"), "x-0");
    send_key(&vh, Some("x"), "x-1");
    assert_eq!(sh.bodies(), ["x-0"]);
    // The hung consumer never acks: after its timeout the group moves to b, x-0 first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sb.count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "x moved to b within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let seen: Vec<(String, bool)> = sb
        .take()
        .iter()
        .map(|d| (body(&d.message), d.redelivered))
        .collect();
    assert_eq!(seen, [("x-0".to_owned(), true), ("x-1".to_owned(), false)]);
    assert_eq!(sh.bodies(), ["x-0"]);
}

#[derive(Clone, Debug)]
enum Op {
    Publish {
        key: Option<u8>,
    },
    Join {
        prefetch: u16,
    },
    /// Cancel the consumer at `index % len` (its unacked deliveries stay on its channel).
    Cancel {
        index: usize,
    },
    /// Close the channel at `index % len` (requeues its unacked deliveries).
    Close {
        index: usize,
    },
    Ack {
        index: usize,
    },
    Nack {
        index: usize,
        requeue: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::option::weighted(0.85, 0u8..5).prop_map(|key| Op::Publish { key }),
        2 => (0u16..4).prop_map(|prefetch| Op::Join { prefetch }),
        1 => any::<usize>().prop_map(|index| Op::Cancel { index }),
        1 => any::<usize>().prop_map(|index| Op::Close { index }),
        4 => any::<usize>().prop_map(|index| Op::Ack { index }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(index, requeue)| Op::Nack { index, requeue }),
    ]
}

struct Member {
    channel: Channel,
    sink: Arc<TestSink>,
    /// Deliveries already accounted for.
    seen: usize,
    subscribed: bool,
}

/// An outstanding delivery: (channel index, tag, key, message number).
type Outstanding = (usize, u64, Option<u8>, u64);

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let vh = vhost();
    declare(&vh);
    let mut members: Vec<Member> = Vec::new();
    let mut outstanding: Vec<Outstanding> = Vec::new();
    let mut next = 0u64;
    // Per key: every message number published, and those acked or dropped.
    let mut published: BTreeMap<Option<u8>, Vec<u64>> = BTreeMap::new();
    let mut done: HashSet<u64> = HashSet::new();
    // Per key: the highest message number delivered for the first time.
    let mut first_high: HashMap<Option<u8>, u64> = HashMap::new();
    let mut delivered_once: HashSet<u64> = HashSet::new();
    for op in ops {
        match op {
            Op::Publish { key } => {
                let name = key.map(|k| k.to_string());
                let label = name.clone().unwrap_or_else(|| "none".to_owned());
                send_key(&vh, name.as_deref(), &format!("{label}:{next}"));
                published.entry(key).or_default().push(next);
                next += 1;
            }
            Op::Join { prefetch } => {
                let id = u16::try_from(members.len() + 1).unwrap();
                let (channel, sink) = open(&vh, id, prefetch);
                members.push(Member {
                    channel,
                    sink,
                    seen: 0,
                    subscribed: true,
                });
            }
            Op::Cancel { index } => {
                let live: Vec<usize> = (0..members.len())
                    .filter(|&i| members[i].subscribed)
                    .collect();
                if !live.is_empty() {
                    let i = live[index % live.len()];
                    let tag = format!("c{}", i + 1);
                    members[i].channel.cancel(&tag);
                    members[i].subscribed = false;
                }
            }
            Op::Close { index } => {
                if !members.is_empty() {
                    let i = index % members.len();
                    members[i].channel.close();
                    members[i].subscribed = false;
                    outstanding.retain(|o| o.0 != i);
                }
            }
            Op::Ack { index } => {
                if !outstanding.is_empty() {
                    let (ch, tag, _, n) = outstanding.remove(index % outstanding.len());
                    members[ch].channel.ack(DeliveryTag(tag), false).unwrap();
                    done.insert(n);
                }
            }
            Op::Nack { index, requeue } => {
                if !outstanding.is_empty() {
                    let (ch, tag, _, n) = outstanding.remove(index % outstanding.len());
                    members[ch]
                        .channel
                        .nack(DeliveryTag(tag), false, requeue)
                        .unwrap();
                    if !requeue {
                        done.insert(n);
                    }
                }
            }
        }
        // Collect new deliveries.
        for (i, m) in members.iter_mut().enumerate() {
            let all = m.sink.deliveries.lock().unwrap();
            for d in &all[m.seen..] {
                let text = body(&d.message);
                let (k, n) = text.split_once(':').unwrap();
                let key = k.parse::<u8>().ok();
                let n: u64 = n.parse().unwrap();
                prop_assert!(
                    !done.contains(&n),
                    "{} delivered after it was settled",
                    text
                );
                // A message delivered for the first time is the next of its key: every
                // earlier message of the key was delivered before it.
                if key.is_some() && delivered_once.insert(n) {
                    let high = first_high.entry(key).or_insert(0);
                    prop_assert!(n >= *high, "{} after {} of its key", text, high);
                    *high = n;
                    prop_assert!(!d.redelivered);
                }
                outstanding.push((i, d.delivery_tag.0, key, n));
            }
            m.seen = all.len();
        }
        // At any time a key's deliveries in flight are all on one channel.
        let mut holder: HashMap<u8, usize> = HashMap::new();
        for &(ch, _, key, _) in &outstanding {
            if let Some(k) = key {
                let h = *holder.entry(k).or_insert(ch);
                prop_assert_eq!(h, ch, "key {} in flight on two channels", k);
            }
        }
    }
    // Liveness: with a fresh consumer and everything acked, every message is delivered.
    for m in &mut members {
        m.channel.close();
    }
    let (mut last, sink) = open(&vh, 999, 0);
    let got: HashSet<u64> = sink
        .bodies()
        .iter()
        .map(|b| b.split_once(':').unwrap().1.parse().unwrap())
        .collect();
    let expected: HashSet<u64> = published
        .values()
        .flatten()
        .copied()
        .filter(|n| !done.contains(n))
        .collect();
    prop_assert_eq!(got, expected);
    last.ack(DeliveryTag(0), true).unwrap();
    prop_assert_eq!(vh.queue("q").unwrap().message_count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn groups_keep_per_key_order(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
