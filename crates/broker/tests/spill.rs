//! Spilling: a queue holding many times the memory budget keeps its order and contents, the
//! broker's counted memory stays near the budget, and spilled persistent messages recover.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{Broker, BrokerConfig, VHost};
use lockgate_store::{Store, StoreConfig};
use lockgate_wire::BasicProperties;

const BUDGET: u64 = 1 << 20;

fn body_of(i: usize) -> String {
    format!("{i:08}:{}", "x".repeat(1000))
}

async fn settle_below(broker: &Broker, limit: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.memory_used() > limit {
        assert!(
            Instant::now() < deadline,
            "memory stayed at {}",
            broker.memory_used()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn publish(v: &VHost, queue: &str, i: usize, persistent: bool) {
    let props = BasicProperties {
        delivery_mode: persistent.then_some(2),
        ..BasicProperties::default()
    };
    v.publish(false, message_with("", queue, &body_of(i), props))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_ten_times_the_budget_keeps_order_and_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spilling_broker(dir.path(), BUDGET);
    let v = broker.vhost("/").unwrap();
    queue(&v, "q");
    const N: usize = 12_000; // ~12 MB of bodies through a 1 MiB budget
    let mut peak = 0;
    for i in 0..N {
        publish(&v, "q", i, false);
        if i % 500 == 499 {
            settle_below(&broker, BUDGET).await;
        }
        peak = peak.max(broker.memory_used());
    }
    settle_below(&broker, BUDGET / 2).await;
    assert_eq!(v.queue("q").unwrap().message_count(), N as u32);
    assert!(peak < 2 * BUDGET, "peak {peak}");
    // A consumer drains it: every message, intact and in order, paged in ahead of it.
    let (mut ch, sink) = channel(&v, 1);
    ch.qos(100, false);
    consume(&mut ch, "q", "c", false);
    let mut got = Vec::with_capacity(N);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < N {
        assert!(Instant::now() < deadline, "stuck at {}", got.len());
        let batch = sink.take();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for d in &batch {
            got.push(body(&d.message));
        }
        let last = batch.last().unwrap().delivery_tag;
        ch.ack(last, true).unwrap();
        peak = peak.max(broker.memory_used());
    }
    let want: Vec<String> = (0..N).map(body_of).collect();
    assert!(got == want, "order or content differs");
    assert!(peak < 2 * BUDGET, "peak {peak}");
    assert_eq!(v.queue("q").unwrap().message_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_persistent_messages_recover_and_spilled_transient_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = spilling_broker(dir.path(), BUDGET);
        let v = broker.vhost("/").unwrap();
        durable_queue(&v, "q");
        for i in 0..6000 {
            publish(&v, "q", i, i % 2 == 0);
            if i % 500 == 499 {
                settle_below(&broker, BUDGET).await;
            }
        }
        settle_below(&broker, BUDGET / 2).await;
        assert!(v.queue("q").unwrap().message_count() == 6000);
        broker.store().unwrap().close_async().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let broker = spilling_broker(dir.path(), BUDGET);
    let v = broker.vhost("/").unwrap();
    assert_eq!(v.queue("q").unwrap().message_count(), 3000);
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count() < 3000 {
        assert!(Instant::now() < deadline, "stuck at {}", sink.count());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let want: Vec<String> = (0..6000).step_by(2).map(body_of).collect();
    assert!(sink.bodies() == want, "order or content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_delete_of_a_spilled_queue_drop_everything() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spilling_broker(dir.path(), BUDGET);
    let v = broker.vhost("/").unwrap();
    queue(&v, "q");
    for i in 0..4000 {
        publish(&v, "q", i, false);
        if i % 500 == 499 {
            settle_below(&broker, BUDGET).await;
        }
    }
    settle_below(&broker, BUDGET / 2).await;
    assert_eq!(v.purge_queue(CONN, "q").unwrap(), 4000);
    assert_eq!(v.queue("q").unwrap().message_count(), 0);
    for i in 0..3000 {
        publish(&v, "q", i, false);
    }
    settle_below(&broker, BUDGET).await;
    let (mut ch, _sink) = channel(&v, 1);
    let first = ch.get("q", true).unwrap().unwrap();
    assert_eq!(body(&first.message), body_of(0));
    assert_eq!(v.delete_queue(CONN, "q", false, false).unwrap(), 2999);
    assert!(broker.memory_used() < BUDGET / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_racing_the_purge_of_a_spilled_queue_keeps_its_stored_copy() {
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let count = {
            let broker = spilling_broker(dir.path(), BUDGET);
            let v = broker.vhost("/").unwrap();
            durable_queue(&v, "q");
            for i in 0..1500 {
                publish(&v, "q", i, true);
                if i % 500 == 499 {
                    settle_below(&broker, BUDGET).await;
                }
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while v.queue("q").unwrap().snapshot().spilled == 0 {
                assert!(Instant::now() < deadline, "the queue never spilled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // A publisher keeps going while the queue (with its disk tail) is purged.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let publisher = std::thread::spawn({
                let (v, stop) = (Arc::clone(&v), Arc::clone(&stop));
                move || {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        publish(&v, "q", i, true);
                        i += 1;
                    }
                }
            });
            std::thread::sleep(Duration::from_micros(200));
            v.purge_queue(CONN, "q").unwrap();
            std::thread::sleep(Duration::from_micros(200));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            publisher.join().unwrap();
            let count = v.queue("q").unwrap().message_count();
            broker.store().unwrap().close_async().await.unwrap();
            count
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let broker = spilling_broker(dir.path(), BUDGET);
        let recovered = broker
            .vhost("/")
            .unwrap()
            .queue("q")
            .unwrap()
            .message_count();
        assert_eq!(
            recovered, count,
            "round {round}: messages kept by the purge were lost"
        );
        broker.store().unwrap().close_async().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_takes_messages_from_the_disk_tail() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = spilling_broker(dir.path(), BUDGET);
        let v = broker.vhost("/").unwrap();
        durable_queue(&v, "q");
        for i in 0..N {
            publish(&v, "q", i, true);
        }
        broker.store().unwrap().close_async().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Recovered with a disk tail beyond its first 1,024 messages, and no spill task to page
    // it in: get pages in by itself.
    let (store, recovery) = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    let broker = Broker::with_store(BrokerConfig::default(), store);
    broker.recover(&recovery).unwrap();
    let v = broker.vhost("/").unwrap();
    assert_eq!(v.queue("q").unwrap().message_count(), N as u32);
    let (mut ch, _sink) = channel(&v, 1);
    for i in 0..N {
        let got = ch.get("q", true).unwrap();
        let got = got.unwrap_or_else(|| panic!("get {i} found the queue empty"));
        assert_eq!(body(&got.message), body_of(i));
        assert_eq!(got.message_count, (N - i - 1) as u32);
    }
    assert!(ch.get("q", true).unwrap().is_none());
}
