//! A policy that changes a queue's shape (`max-priority`, `group-header`) while deliveries are
//! in flight: once part of the queue is spilled, those deliveries still come back before the
//! disk tail, so the queue keeps its order. A queue re-filing its disk tail into the new
//! shape keeps delivering meanwhile, in the order `assert_re_filing_order` checks.
//!
//! Each test runs on one thread: between two awaits neither the spill task nor a page-in can
//! run, so the queue's state is exactly what the test made it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{ApplyTo, DeliveryTag, Policy, QueueFlags};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

const BUDGET: u64 = 1 << 20;
const BODY: usize = 1000;
/// Delivered before the reshape.
const DELIVERED: usize = 300;
/// Of those, requeued before the reshape: the head of the queue afterwards, more than the
/// spill task keeps in memory (64 KiB at this budget).
const REQUEUED: usize = 200;
/// Published after the reshape: enough to cross the spill threshold (half the budget).
const LATER: usize = 600;

fn body_of(i: usize) -> String {
    format!("{i:08}:{}", "x".repeat(BODY))
}

fn index_of(body: &str) -> usize {
    body[..8].parse().unwrap()
}

fn policy(definition: &[(&str, FieldValue)]) -> Policy {
    let definition = definition
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Policy::new("/", "shape", "^q$", ApplyTo::Queues, 0, definition).unwrap()
}

/// Waits for `done`, polling (each sleep lets the spill task run).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The messages `sink` receives (their indexes) until it has `n` and `q` has none ready.
async fn received(sink: &TestSink, q: &lockgate_broker::Queue, n: usize) -> Vec<usize> {
    let mut got = Vec::new();
    until("every message", || {
        got.extend(sink.take().iter().map(|d| index_of(&body(&d.message))));
        got.len() >= n && q.snapshot().ready == 0
    })
    .await;
    got
}

/// Declares `q` with `arguments` under the policies `before`, delivers the first messages
/// and requeues the older part of them, applies `after` with the rest still unacked, spills,
/// then requeues the rest: a new consumer must get every message in publish order.
async fn requeued_deliveries_keep_their_place(
    arguments: FieldTable,
    before: Vec<Policy>,
    after: Vec<Policy>,
) {
    let dir = tempfile::tempdir().unwrap();
    let broker = spilling_broker(dir.path(), BUDGET);
    let v = broker.vhost("/").unwrap();
    v.set_policies(before);
    v.declare_queue(CONN, "q", QueueFlags::default(), arguments)
        .unwrap();
    let q = v.queue("q").unwrap();
    for i in 0..DELIVERED {
        send(&v, "q", &body_of(i));
    }
    let (mut first, first_sink) = channel(&v, 1);
    first.qos(u16::try_from(DELIVERED).unwrap(), false);
    consume(&mut first, "q", "first", false);
    assert_eq!(first_sink.count(), DELIVERED);
    first.cancel("first");
    // The older part comes back; the newer stays in flight.
    first
        .nack(DeliveryTag(u64::try_from(REQUEUED).unwrap()), true, true)
        .unwrap();
    assert_eq!(q.snapshot().ready, REQUEUED as u64);

    v.set_policies(after);
    for i in DELIVERED..DELIVERED + LATER {
        send(&v, "q", &body_of(i));
    }
    until("a spill below the threshold", || {
        q.snapshot().spilled > 0 && broker.memory_used() <= BUDGET / 2
    })
    .await;

    // The deliveries in flight come back, then a consumer takes everything.
    first
        .nack(DeliveryTag(u64::try_from(DELIVERED).unwrap()), true, true)
        .unwrap();
    let (mut second, second_sink) = channel(&v, 2);
    consume(&mut second, "q", "second", true);
    let mut got = Vec::new();
    until("every message", || {
        got.extend(
            second_sink
                .take()
                .iter()
                .map(|d| index_of(&body(&d.message))),
        );
        got.len() >= DELIVERED + LATER
    })
    .await;
    let misplaced: Vec<(usize, usize)> = got
        .iter()
        .copied()
        .enumerate()
        .filter(|&(at, i)| at != i)
        .take(5)
        .collect();
    assert!(
        misplaced.is_empty() && got.len() == DELIVERED + LATER,
        "{} messages, first misplaced (position, message): {misplaced:?}",
        got.len()
    );
}

#[tokio::test]
async fn a_queue_made_a_priority_queue_by_policy_keeps_requeues_before_its_disk_tail() {
    requeued_deliveries_keep_their_place(
        FieldTable::default(),
        Vec::new(),
        vec![policy(&[("max-priority", FieldValue::I64(1))])],
    )
    .await;
}

#[tokio::test]
async fn a_priority_queue_given_more_levels_by_policy_keeps_requeues_before_its_disk_tail() {
    requeued_deliveries_keep_their_place(
        FieldTable::default(),
        vec![policy(&[("max-priority", FieldValue::I64(1))])],
        vec![policy(&[("max-priority", FieldValue::I64(3))])],
    )
    .await;
}

#[tokio::test]
async fn a_grouped_queue_whose_group_policy_goes_keeps_requeues_before_its_disk_tail() {
    let arguments = [("x-max-priority".to_owned(), FieldValue::I64(1))]
        .into_iter()
        .collect();
    requeued_deliveries_keep_their_place(
        arguments,
        vec![policy(&[(
            "group-header",
            FieldValue::LongString("k".into()),
        )])],
        Vec::new(),
    )
    .await;
}

/// Publishes message `i` with priority `i % PRIORITIES` (`None` for 0), persistent and
/// waited for when `persistent`.
/// Declares "q" (durable when `persistent`), publishes the backlog and waits until part of
/// it is on disk and memory is back below the spill threshold.
async fn spilled_backlog(
    broker: &lockgate_broker::Broker,
    persistent: bool,
) -> Arc<lockgate_broker::Queue> {
    let v = broker.vhost("/").unwrap();
    if persistent {
        durable_queue(&v, "q");
    } else {
        queue(&v, "q");
    }
    let q = v.queue("q").unwrap();
    for i in 0..BACKLOG {
        send_prioritised(&v, i, persistent);
    }
    until("a spill below the threshold", || {
        q.snapshot().spilled > 0 && broker.memory_used() <= BUDGET / 2
    })
    .await;
    q
}

fn send_prioritised(v: &lockgate_broker::VHost, i: usize, persistent: bool) {
    let priority = u8::try_from(i % PRIORITIES).unwrap();
    let properties = BasicProperties {
        priority: (priority > 0).then_some(priority),
        delivery_mode: persistent.then_some(2),
        ..BasicProperties::default()
    };
    let x = v.exchange("").unwrap();
    let (_, commit) = v
        .publish_with_commit(&x, false, message_with("", "q", &body_of(i), properties))
        .unwrap();
    if let Some(commit) = commit {
        commit.wait_blocking().unwrap();
    }
}

/// Message priorities published: 0 to 4.
const PRIORITIES: usize = 5;
/// Published before the reshape: well past the spill threshold, so every level spills.
const BACKLOG: usize = 1500;
/// Published after the reshape.
const AFTER: usize = 200;

/// The capped priority of message `i` on a queue of `max` priority levels (`None`: FIFO).
fn level(i: usize, max: Option<usize>) -> usize {
    max.map_or(0, |max| (i % PRIORITIES).min(max))
}

/// Checks the order `got` in which a queue of `max` priority levels (`None`: FIFO) delivered
/// messages `0..n` while it re-filed part of them: every message once, publish order within
/// a priority, and no message before a higher-priority one published before it (a message
/// not re-filed yet may come after lower-priority ones published before it).
fn assert_re_filing_order(got: &[usize], n: usize, max: Option<usize>) {
    let mut seen = got.to_vec();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        (got.len(), seen.len()),
        (n, n),
        "every message exactly once"
    );
    let levels = max.map_or(1, |max| max.min(PRIORITIES - 1) + 1);
    // Per level: its messages in publish order, and how many of them were delivered.
    let of_level: Vec<Vec<usize>> = (0..levels)
        .map(|l| (0..n).filter(|&i| level(i, max) == l).collect())
        .collect();
    let mut delivered = vec![0; levels];
    for (at, &i) in got.iter().enumerate() {
        let l = level(i, max);
        assert_eq!(
            of_level[l][delivered[l]], i,
            "position {at}: message {i} out of publish order within its priority"
        );
        delivered[l] += 1;
        for higher in l + 1..levels {
            let before = of_level[higher].partition_point(|&j| j < i);
            assert!(
                delivered[higher] >= before,
                "position {at}: message {i} before message {} of a higher priority published before it",
                of_level[higher][delivered[higher]]
            );
        }
    }
}

/// Fills `q` (declared under `before`) past the spill threshold with messages of every
/// priority, applies `after` (max priority `max` afterwards) with part of the queue on
/// disk, publishes more, then consumes everything while the re-filing runs: every message
/// once, in the order [`assert_re_filing_order`] checks.
async fn spilled_messages_keep_their_order_across_a_reshape(
    before: Vec<Policy>,
    after: Vec<Policy>,
    max: Option<usize>,
    persistent: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let broker = spilling_broker(dir.path(), BUDGET);
    let v = broker.vhost("/").unwrap();
    v.set_policies(before);
    let q = spilled_backlog(&broker, persistent).await;
    v.set_policies(after);
    for i in BACKLOG..BACKLOG + AFTER {
        send_prioritised(&v, i, persistent);
    }
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", true);
    let got = received(&sink, &q, BACKLOG + AFTER).await;
    assert_re_filing_order(&got, BACKLOG + AFTER, max);
}

fn max_priority(n: i64) -> Vec<Policy> {
    vec![policy(&[("max-priority", FieldValue::I64(n))])]
}

#[tokio::test]
async fn a_spilled_fifo_queue_made_a_priority_queue_delivers_in_priority_order() {
    spilled_messages_keep_their_order_across_a_reshape(Vec::new(), max_priority(4), Some(4), false)
        .await;
}

#[tokio::test]
async fn a_spilled_priority_queue_given_more_levels_delivers_in_priority_order() {
    spilled_messages_keep_their_order_across_a_reshape(
        max_priority(2),
        max_priority(4),
        Some(4),
        false,
    )
    .await;
}

#[tokio::test]
async fn a_spilled_priority_queue_given_fewer_levels_delivers_in_priority_order() {
    spilled_messages_keep_their_order_across_a_reshape(
        max_priority(4),
        max_priority(1),
        Some(1),
        false,
    )
    .await;
}

#[tokio::test]
async fn a_spilled_priority_queue_made_fifo_delivers_in_publish_order() {
    spilled_messages_keep_their_order_across_a_reshape(max_priority(3), Vec::new(), None, false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_durable_fifo_queue_made_a_priority_queue_delivers_in_priority_order() {
    spilled_messages_keep_their_order_across_a_reshape(Vec::new(), max_priority(4), Some(4), true)
        .await;
}

/// Publishes messages `range` in chunks of 250, each once memory is back below the spill
/// threshold.
async fn fill(broker: &lockgate_broker::Broker, range: std::ops::Range<usize>) {
    let v = broker.vhost("/").unwrap();
    for i in range {
        send_prioritised(&v, i, false);
        if i % 250 == 249 {
            until("a spill below the threshold", || {
                broker.memory_used() <= BUDGET / 2
            })
            .await;
        }
    }
}

/// A spilling broker in `dir` whose queue "q" holds messages `0..n` (`n` well past the
/// budget: most of them on disk), and its memory alarm, watched from now on.
async fn long_backlog(
    dir: &std::path::Path,
    n: usize,
) -> (
    Arc<lockgate_broker::Broker>,
    Arc<lockgate_broker::VHost>,
    Arc<lockgate_broker::Queue>,
    tokio::sync::watch::Receiver<bool>,
) {
    let broker = spilling_broker(dir, BUDGET);
    let v = broker.vhost("/").unwrap();
    queue(&v, "q");
    let q = v.queue("q").unwrap();
    fill(&broker, 0..n).await;
    assert!(q.snapshot().spilled as usize > n / 2);
    let mut alarm = broker.memory_watch();
    alarm.mark_unchanged();
    (broker, v, q, alarm)
}

/// A backlog many times the memory budget, reshaped while all but its head is on disk: the
/// re-filing reads it back a page at a time and the new levels spill again, so memory never
/// reaches the watermark (the memory alarm is never raised), and the order holds.
#[tokio::test]
async fn re_filing_a_long_disk_tail_stays_within_the_memory_budget() {
    const LONG: usize = 8000;
    let dir = tempfile::tempdir().unwrap();
    let (broker, v, q, alarm) = long_backlog(dir.path(), LONG).await;
    // Many levels: the spill task pages a queue once per level and pass.
    v.set_policies(max_priority(255));
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", true);
    let mut got = Vec::new();
    let mut peak = 0;
    until("every message", || {
        peak = peak.max(broker.memory_used());
        got.extend(sink.take().iter().map(|d| index_of(&body(&d.message))));
        got.len() >= LONG && q.snapshot().ready == 0
    })
    .await;
    assert!(
        !alarm.has_changed().unwrap(),
        "the memory alarm was raised (peak seen {peak} of {BUDGET})"
    );
    assert_re_filing_order(&got, LONG, Some(255));
}

/// A durable queue reshaped by policy with part of it on disk, then restarted: recovery
/// loads its head and leaves the rest on disk, and the policy, applied again after
/// recovery (as the server does at startup), re-files that tail: the order is the same as
/// before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshaped_durable_queue_keeps_its_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = spilling_broker(dir.path(), BUDGET);
        let v = broker.vhost("/").unwrap();
        spilled_backlog(&broker, true).await;
        v.set_policies(max_priority(4));
        for i in BACKLOG..BACKLOG + AFTER {
            send_prioritised(&v, i, true);
        }
        broker.store().unwrap().close().unwrap();
    }
    let broker = spilling_broker(dir.path(), BUDGET);
    let v = broker.vhost("/").unwrap();
    let q = v.queue("q").unwrap();
    assert!(q.snapshot().spilled > 0, "recovery left a disk tail");
    v.set_policies(max_priority(4));
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", true);
    let got = received(&sink, &q, BACKLOG + AFTER).await;
    assert_re_filing_order(&got, BACKLOG + AFTER, Some(4));
}

/// Messages published while a long disk tail is re-filed spill like any others rather than
/// wait in memory for the re-filing to end, and the queue keeps delivering meanwhile: with
/// chunks published as fast as the spill task gets memory back below the spill threshold
/// (a publisher held at the memory budget), the consumer keeps pace with the publisher
/// while most of the backlog is still on disk, the memory alarm is never raised, and the
/// order holds.
#[tokio::test]
async fn a_priority_queue_keeps_delivering_while_it_re_files_under_sustained_publishing() {
    const LONG: usize = 16_000;
    /// Published during the re-filing: twice the budget.
    const DURING: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let (broker, v, q, alarm) = long_backlog(dir.path(), LONG).await;
    // Two levels: the re-filing reads a page or two per spill pass.
    v.set_policies(max_priority(1));
    // A prefetch bounds what the consumer holds (charged to memory until acked), as a
    // client's does: without one, whatever the queue delivers between two polls of this
    // test would count against the threshold it waits for.
    let (mut ch, sink) = channel(&v, 1);
    ch.qos(200, false);
    consume(&mut ch, "q", "c", false);
    let mut got = Vec::new();
    for chunk in (LONG..LONG + DURING).step_by(100) {
        for i in chunk..chunk + 100 {
            send_prioritised(&v, i, false);
        }
        until("memory below the spill threshold", || {
            let deliveries = sink.take();
            got.extend(deliveries.iter().map(|d| index_of(&body(&d.message))));
            if let Some(last) = deliveries.last() {
                ch.ack(last.delivery_tag, true).unwrap();
            }
            broker.memory_used() <= BUDGET / 2
        })
        .await;
    }
    // The rest without a limit.
    ch.cancel("c");
    consume(&mut ch, "q", "rest", true);
    assert!(
        got.len() >= DURING / 2,
        "only {} delivered while {DURING} were published",
        got.len()
    );
    got.extend(received(&sink, &q, LONG + DURING - got.len()).await);
    assert!(!alarm.has_changed().unwrap(), "the memory alarm was raised");
    assert_re_filing_order(&got, LONG + DURING, Some(1));
}

/// A policy that takes a queue's groups away lets a consumer that waited for another
/// consumer's group take its messages: they are delivered when the policy changes, not at
/// the next publish or ack.
#[tokio::test]
async fn a_consumer_waiting_behind_another_ones_group_gets_its_messages_when_the_groups_go() {
    let v = vhost();
    v.set_policies(vec![policy(&[(
        "group-header",
        FieldValue::LongString("k".into()),
    )])]);
    queue(&v, "q");
    let (mut a, a_sink) = channel(&v, 1);
    let (mut b, b_sink) = channel(&v, 2);
    for (ch, tag) in [(&mut a, "a"), (&mut b, "b")] {
        ch.qos(1, false);
        consume(ch, "q", tag, false);
    }
    let headers: FieldTable = [("k".to_owned(), FieldValue::LongString("one".into()))]
        .into_iter()
        .collect();
    let properties = BasicProperties {
        headers: Some(headers),
        ..BasicProperties::default()
    };
    for i in 0..3 {
        v.publish(
            false,
            message_with("", "q", &i.to_string(), properties.clone()),
        )
        .unwrap();
    }
    assert_eq!(
        a_sink.count() + b_sink.count(),
        1,
        "one group: one consumer, prefetch 1"
    );
    v.set_policies(Vec::new());
    let mut got = a_sink.bodies();
    got.extend(b_sink.bodies());
    got.sort();
    assert_eq!(got, ["0", "1"], "the other consumer takes the next one");
}
