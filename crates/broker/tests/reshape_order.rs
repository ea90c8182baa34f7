//! A policy that changes a queue's shape (`max-priority`, `group-header`) while deliveries are
//! in flight: once part of the queue is spilled, those deliveries still come back before the
//! disk tail, so the queue keeps its order.
//!
//! Each test runs on one thread: between two awaits neither the spill task nor a page-in can
//! run, so the queue's state is exactly what the test made it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{ApplyTo, DeliveryTag, Policy, QueueFlags};
use lockgate_wire::{FieldTable, FieldValue};

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
