//! Reliability settings in the broker core: consumer timeouts (100,000 outstanding
//! deliveries), TTL anywhere in the queue, length limits, delivery limits, and
//! dead-lettering of persistent messages across a restart.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{Broker, BrokerConfig, DeliveryTag, QueueFlags, VHost};
use lockgate_store::{Store, StoreConfig};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

fn declare(vhost: &VHost, name: &str, durable: bool, args: &[(&str, FieldValue)]) {
    let arguments: FieldTable = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let flags = QueueFlags {
        durable,
        ..QueueFlags::default()
    };
    vhost.declare_queue(CONN, name, flags, arguments).unwrap();
}

fn text(s: &str) -> FieldValue {
    FieldValue::LongString(s.to_owned().into())
}

/// Polls `cond` every millisecond until it holds (panics after 30 s).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_hundred_thousand_outstanding_deliveries_time_out_in_one_pass() {
    const N: u64 = 100_000;
    let v = vhost();
    // Far longer than delivering and acking 100,000 take (up to 0.5 s here under load), so
    // that none times out before the consumer goes.
    declare(
        &v,
        "q",
        false,
        &[("x-consumer-timeout", FieldValue::I64(5_000))],
    );
    for i in 0..N {
        send(&v, "q", &i.to_string());
    }
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", false);
    assert_eq!(sink.count() as u64, N);
    // Half are acked in time; the consumer then goes, leaving the other half outstanding.
    for tag in (2..=N).step_by(2) {
        ch.ack(DeliveryTag(tag), false).unwrap();
    }
    assert!(ch.cancel("c"));
    let q = v.queue("q").unwrap();
    assert_eq!(q.message_count(), 0);
    wait_until("the timeout", || q.message_count() as u64 == N / 2);
    let snapshot = q.snapshot();
    assert_eq!(snapshot.timeout_redelivered, N / 2);
    assert_eq!(snapshot.unacked, 0);
    assert_eq!(ch.unacked_count(), 0);
    // Late acks of deliveries taken back are ignored, not errors, for the 4096 taken back
    // last: older ones are forgotten (the channel's memory of them stays bounded) and are
    // unknown tags again, as is a tag never delivered.
    assert!(ch.ack(DeliveryTag(1), false).is_err());
    ch.ack(DeliveryTag(N - 3), false).unwrap();
    ch.ack(DeliveryTag(N - 1), true).unwrap();
    assert!(ch.ack(DeliveryTag(N + 10), false).is_err());
    // They come back in their original order, redelivered, with x-delivery-count 1.
    let (mut ch2, sink2) = channel(&v, 2);
    consume(&mut ch2, "q", "c2", true);
    let again = sink2.take();
    assert_eq!(again.len() as u64, N / 2);
    assert!(again.iter().all(|d| d.redelivered));
    let bodies: Vec<u64> = again
        .iter()
        .map(|d| body(&d.message).parse().unwrap())
        .collect();
    assert_eq!(bodies, (0..N).step_by(2).collect::<Vec<_>>());
    let headers = again[0].message.headers().unwrap();
    assert_eq!(headers.get("x-delivery-count"), Some(&FieldValue::I64(1)));
}

#[test]
fn a_message_expires_in_the_middle_of_the_queue() {
    let v = vhost();
    declare(&v, "q", false, &[]);
    send(&v, "q", "head");
    let short = BasicProperties {
        expiration: Some("30".into()),
        ..BasicProperties::default()
    };
    v.publish(false, message_with("", "q", "short", short))
        .unwrap();
    send(&v, "q", "tail");
    let q = v.queue("q").unwrap();
    wait_until("the expiry", || q.message_count() == 2);
    assert_eq!(q.snapshot().expired, 1);
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", true);
    assert_eq!(sink.bodies(), ["head", "tail"]);
}

#[test]
fn drop_head_and_reject_publish_count_what_they_do() {
    let v = vhost();
    declare(&v, "drop", false, &[("x-max-length", FieldValue::I64(2))]);
    declare(
        &v,
        "reject",
        false,
        &[
            ("x-max-length", FieldValue::I64(2)),
            ("x-overflow", text("reject-publish")),
        ],
    );
    let x = v.exchange("").unwrap();
    let mut refused = 0;
    for i in 0..5 {
        send(&v, "drop", &i.to_string());
        let published = v
            .publish_checked(&x, false, message("", "reject", &i.to_string()))
            .unwrap();
        refused += usize::from(published.refused);
    }
    assert_eq!(refused, 3);
    assert_eq!(v.queue("drop").unwrap().snapshot().dropped_overflow, 3);
    assert_eq!(v.queue("reject").unwrap().snapshot().rejected_overflow, 3);
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "drop", "d", true);
    consume(&mut ch, "reject", "r", true);
    assert_eq!(sink.bodies(), ["3", "4", "0", "1"]);
}

#[test]
fn block_reports_a_full_queue_until_it_has_room() {
    let v = vhost();
    declare(
        &v,
        "q",
        false,
        &[
            ("x-max-length", FieldValue::I64(1)),
            ("x-overflow", text("block")),
        ],
    );
    let x = v.exchange("").unwrap();
    let first = v.publish_checked(&x, false, message("", "q", "a")).unwrap();
    let full = first.blocked.expect("full after the first message");
    let room = full.room();
    assert!(!*room.borrow());
    let second = v.publish_checked(&x, false, message("", "q", "b")).unwrap();
    assert!(second.blocked.is_some() && !second.refused);
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", true);
    assert_eq!(sink.bodies(), ["a", "b"]);
    assert!(*room.borrow());
}

#[test]
fn delivery_limit_drops_without_a_dead_letter_exchange() {
    let v = vhost();
    declare(&v, "q", false, &[("x-delivery-limit", FieldValue::I64(1))]);
    send(&v, "q", "poison");
    let (mut ch, _sink) = channel(&v, 1);
    for round in 0..2 {
        let got = ch.get("q", false).unwrap().expect("delivered");
        assert_eq!(got.redelivered, round > 0);
        ch.nack(got.delivery_tag, false, true).unwrap();
    }
    let q = v.queue("q").unwrap();
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.snapshot().delivery_limit_dropped, 1);
}

#[test]
fn dead_lettered_counts_only_what_the_dead_letter_exchange_routed() {
    let v = vhost();
    declare(&v, "dlq", false, &[]);
    declare(
        &v,
        "to-nowhere",
        false,
        &[("x-dead-letter-exchange", text("missing"))],
    );
    declare(
        &v,
        "to-dlq",
        false,
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("dlq")),
        ],
    );
    let (mut ch, _sink) = channel(&v, 1);
    for name in ["to-nowhere", "to-dlq"] {
        send(&v, name, "bad");
        let got = ch.get(name, false).unwrap().expect("delivered");
        ch.reject(got.delivery_tag, false).unwrap();
    }
    assert_eq!(v.queue("to-nowhere").unwrap().snapshot().dead_lettered, 0);
    assert_eq!(v.queue("to-dlq").unwrap().snapshot().dead_lettered, 1);
    assert_eq!(v.queue("dlq").unwrap().message_count(), 1);
}

fn open(dir: &Path) -> Arc<Broker> {
    let (store, recovery) = Store::open(dir, &StoreConfig::default()).unwrap();
    let broker = Broker::with_store(BrokerConfig::default(), store);
    broker.recover(&recovery).unwrap();
    broker
}

#[test]
fn a_dead_lettered_persistent_message_moves_queues_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = open(dir.path());
        let v = broker.vhost("/").unwrap();
        declare(&v, "dlq", true, &[]);
        declare(
            &v,
            "src",
            true,
            &[
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("dlq")),
            ],
        );
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        let x = v.exchange("").unwrap();
        let (_, commit) = v
            .publish_with_commit(&x, false, message_with("", "src", "keep me", props))
            .unwrap();
        commit.unwrap().wait_blocking().unwrap();
        let (mut ch, _sink) = channel(&v, 1);
        let got = ch.get("src", false).unwrap().unwrap();
        ch.reject(got.delivery_tag, false).unwrap();
        assert_eq!(v.queue("dlq").unwrap().message_count(), 1);
        drop(ch);
        broker.store().unwrap().close().unwrap();
    }
    let broker = open(dir.path());
    let v = broker.vhost("/").unwrap();
    assert_eq!(v.queue("src").unwrap().message_count(), 0);
    let dlq = v.queue("dlq").unwrap();
    assert_eq!(dlq.message_count(), 1);
    let (mut ch, _sink) = channel(&v, 1);
    let got = ch.get("dlq", true).unwrap().unwrap();
    assert_eq!(body(&got.message), "keep me");
    let death = got.message.headers().unwrap();
    assert!(death.get("x-death").is_some());
}

#[test]
fn a_persistent_message_expires_after_a_restart_and_its_stored_copy_goes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = open(dir.path());
        let v = broker.vhost("/").unwrap();
        // Long enough to be counted after the restart before it expires, on a loaded machine.
        declare(&v, "q", true, &[("x-message-ttl", FieldValue::I64(1_000))]);
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        let x = v.exchange("").unwrap();
        let (_, commit) = v
            .publish_with_commit(&x, false, message_with("", "q", "old", props))
            .unwrap();
        commit.unwrap().wait_blocking().unwrap();
        broker.store().unwrap().close().unwrap();
    }
    {
        let broker = open(dir.path());
        let q = broker.vhost("/").unwrap().queue("q").unwrap();
        assert_eq!(q.message_count(), 1, "recovered, its TTL counting again");
        wait_until("the expiry", || q.message_count() == 0);
        broker.store().unwrap().sync().wait_blocking().unwrap();
        broker.store().unwrap().close().unwrap();
    }
    let broker = open(dir.path());
    assert_eq!(
        broker
            .vhost("/")
            .unwrap()
            .queue("q")
            .unwrap()
            .message_count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_messages_expire_too() {
    const BUDGET: u64 = 1 << 20;
    const N: usize = 4_000; // ~4 MB of bodies through a 1 MiB budget
    let dir = tempfile::tempdir().unwrap();
    let broker = spilling_broker(dir.path(), BUDGET);
    let v = broker.vhost("/").unwrap();
    declare(&v, "q", false, &[("x-message-ttl", FieldValue::I64(1_000))]);
    let q = v.queue("q").unwrap();
    let body = "x".repeat(1000);
    let mut spilled = 0;
    for _ in 0..N {
        send(&v, "q", &body);
        spilled = spilled.max(q.snapshot().spilled);
        tokio::task::yield_now().await;
    }
    let published = Instant::now();
    while spilled == 0 && published.elapsed() < Duration::from_millis(900) {
        spilled = q.snapshot().spilled;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(spilled > 0, "nothing was spilled");
    while q.message_count() != 0 {
        assert!(
            published.elapsed() < Duration::from_secs(20),
            "{} left",
            q.message_count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Their arrival time survived the trip to disk: they expired one TTL after they were
    // published, not one TTL after they were read back.
    let took = published.elapsed();
    // (Loose: the machine may be loaded; a page-in TTL would take far longer than 5 s.)
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(q.snapshot().expired, N as u64);
    assert_eq!(q.snapshot().spilled, 0);
}

#[test]
fn refused_and_dropped_persistent_messages_do_not_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let props = BasicProperties {
        delivery_mode: Some(2),
        ..BasicProperties::default()
    };
    {
        let broker = open(dir.path());
        let v = broker.vhost("/").unwrap();
        let limit = [("x-max-length", FieldValue::I64(2))];
        declare(&v, "dropping", true, &limit);
        let reject = [
            ("x-max-length", FieldValue::I64(2)),
            ("x-overflow", text("reject-publish")),
        ];
        declare(&v, "rejecting", true, &reject);
        let x = v.exchange("").unwrap();
        for queue in ["dropping", "rejecting"] {
            for i in 0..4 {
                let m = message_with("", queue, &i.to_string(), props.clone());
                let published = v.publish_checked(&x, false, m).unwrap();
                published.commit.unwrap().wait_blocking().unwrap();
            }
        }
        broker.store().unwrap().sync().wait_blocking().unwrap();
        broker.store().unwrap().close().unwrap();
    }
    let broker = open(dir.path());
    let v = broker.vhost("/").unwrap();
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "dropping", "d", true);
    consume(&mut ch, "rejecting", "r", true);
    assert_eq!(sink.bodies(), ["2", "3", "0", "1"]);
}
