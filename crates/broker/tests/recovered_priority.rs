//! A durable priority queue recovered with more messages than recovery loads: the rest stays
//! on disk as one tail of every priority. New messages wait behind it (FIFO within a
//! priority holds), and a purge removes each stored copy once, so a message shared with
//! another durable queue keeps its record there.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use lockgate_broker::{Broker, BrokerConfig, ExchangeFlags, QueueFlags, VHost};
use lockgate_store::{Store, StoreConfig, StoredRef};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

/// More than recovery loads into memory (1,024), so a tail stays on disk.
const OLD: usize = 3000;

fn open(dir: &Path) -> Arc<Broker> {
    let (store, recovery) = Store::open(dir, &StoreConfig::default()).unwrap();
    let broker = Broker::with_store(BrokerConfig::default(), store);
    broker.recover(&recovery).unwrap();
    broker
}

fn durable() -> QueueFlags {
    QueueFlags {
        durable: true,
        ..QueueFlags::default()
    }
}

fn priority_queue(v: &VHost, name: &str) {
    let mut args = FieldTable::default();
    args.insert("x-max-priority", FieldValue::U8(2));
    v.declare_queue(CONN, name, durable(), args).unwrap();
}

/// Publishes a persistent message through `exchange` and waits until it is stored.
fn publish(v: &VHost, exchange: &str, routing_key: &str, body: &str, priority: u8) {
    let props = BasicProperties {
        delivery_mode: Some(2),
        priority: Some(priority),
        ..BasicProperties::default()
    };
    let x = v.exchange(exchange).unwrap();
    let (_, commit) = v
        .publish_with_commit(&x, false, message_with(exchange, routing_key, body, props))
        .unwrap();
    if let Some(commit) = commit {
        commit.wait_blocking().unwrap();
    }
}

fn get_all(v: &Arc<VHost>, queue: &str) -> Vec<String> {
    let (mut ch, _sink) = channel(v, 1);
    std::iter::from_fn(|| ch.get(queue, true).unwrap().map(|ok| body(&ok.message))).collect()
}

#[test]
fn a_new_message_waits_behind_older_ones_of_its_priority_still_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = open(dir.path());
        let v = broker.vhost("/").unwrap();
        priority_queue(&v, "pq");
        for i in 0..OLD {
            publish(&v, "", "pq", &format!("old{i:05}"), 1);
        }
        broker.store().unwrap().close().unwrap();
    }
    let broker = open(dir.path());
    let v = broker.vhost("/").unwrap();
    publish(&v, "", "pq", "new", 1);
    let got = get_all(&v, "pq");
    let mut expected: Vec<String> = (0..OLD).map(|i| format!("old{i:05}")).collect();
    expected.push("new".into());
    assert_eq!(got, expected, "FIFO within priority 1");
}

#[test]
fn purge_of_a_recovered_priority_queue_keeps_the_copies_another_queue_holds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = open(dir.path());
        let v = broker.vhost("/").unwrap();
        let xflags = ExchangeFlags {
            durable: true,
            ..ExchangeFlags::default()
        };
        v.declare_exchange("fx", "fanout", xflags, FieldTable::default())
            .unwrap();
        priority_queue(&v, "pq");
        v.declare_queue(CONN, "other", durable(), FieldTable::default())
            .unwrap();
        for q in ["pq", "other"] {
            v.bind_queue(CONN, q, "fx", "", FieldTable::default())
                .unwrap();
        }
        for i in 0..OLD {
            publish(&v, "fx", "", &format!("old{i:05}"), 1);
        }
        broker.store().unwrap().close().unwrap();
    }
    {
        let broker = open(dir.path());
        let v = broker.vhost("/").unwrap();
        publish(&v, "fx", "", "new", 2);
        assert_eq!(v.purge_queue(CONN, "pq").unwrap(), OLD as u32 + 1);
        let store = broker.store().unwrap();
        store.sync().wait_blocking().unwrap();
        store.close().unwrap();
    }
    let (store, recovery) = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    for q in &recovery.queues {
        for entry in store.queue_index(q.id) {
            let e = entry.unwrap();
            let stored = StoredRef {
                queue: q.id,
                seq: e.seq,
                message: e.message,
            };
            store.read_message(stored).unwrap();
        }
    }
    let broker = Broker::with_store(BrokerConfig::default(), store);
    broker.recover(&recovery).unwrap();
    let v = broker.vhost("/").unwrap();
    assert!(get_all(&v, "pq").is_empty());
    let got = get_all(&v, "other");
    let mut expected: Vec<String> = (0..OLD).map(|i| format!("old{i:05}")).collect();
    expected.push("new".into());
    assert_eq!(got, expected, "queue other keeps every message");
}
