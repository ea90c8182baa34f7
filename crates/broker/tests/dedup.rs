//! `x-deduplication-window`: a message whose message-id the queue enqueued within the window
//! is accepted but not enqueued again; messages without an id are never deduplicated.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use lockgate_broker::{Broker, BrokerConfig, PublishOutcome, QueueFlags, VHost};
use lockgate_store::{Store, StoreConfig};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

fn dedup_queue(vhost: &VHost, name: &str, window: FieldValue, durable: bool) {
    let arguments: FieldTable = [("x-deduplication-window".to_owned(), window)]
        .into_iter()
        .collect();
    let flags = QueueFlags {
        durable,
        ..QueueFlags::default()
    };
    vhost.declare_queue(CONN, name, flags, arguments).unwrap();
}

fn with_id(queue: &str, id: &str, body: &str, persistent: bool) -> lockgate_broker::Message {
    let props = BasicProperties {
        message_id: Some(id.to_owned()),
        delivery_mode: persistent.then_some(2),
        ..BasicProperties::default()
    };
    message_with("", queue, body, props)
}

fn drain(vhost: &Arc<VHost>, queue: &str) -> Vec<String> {
    let (mut ch, _) = channel(vhost, 9);
    let mut out = Vec::new();
    while let Some(got) = ch.get(queue, true).unwrap() {
        out.push(body(&got.message));
    }
    out
}

#[test]
fn a_repeated_message_id_is_accepted_but_enqueued_once() {
    let v = vhost();
    dedup_queue(&v, "q", FieldValue::I32(10), false);
    for body in ["first", "retry"] {
        let outcome = v.publish(false, with_id("q", "m-1", body, false)).unwrap();
        // Routed: a confirming publisher gets basic.ack for the retry too.
        assert!(matches!(outcome, PublishOutcome::Routed(1)));
    }
    v.publish(false, message("", "q", "no id")).unwrap();
    v.publish(false, message("", "q", "no id")).unwrap();
    assert_eq!(drain(&v, "q"), ["first", "no id", "no id"]);
    assert_eq!(v.queue("q").unwrap().snapshot().dedup_dropped, 1);
}

#[test]
fn the_count_window_forgets_the_oldest_ids() {
    let v = vhost();
    dedup_queue(&v, "q", FieldValue::LongString("2".into()), false);
    for id in ["a", "b", "c", "a", "c"] {
        v.publish(false, with_id("q", id, id, false)).unwrap();
    }
    assert_eq!(drain(&v, "q"), ["a", "b", "c", "a"]);
}

#[test]
fn queues_without_a_window_keep_duplicates() {
    let v = vhost();
    queue(&v, "q");
    for _ in 0..2 {
        v.publish(false, with_id("q", "same", "m", false)).unwrap();
    }
    assert_eq!(drain(&v, "q"), ["m", "m"]);
}

fn open(dir: &Path) -> Arc<Broker> {
    let (store, recovery) = Store::open(dir, &StoreConfig::default()).unwrap();
    let broker = Broker::with_store(BrokerConfig::default(), store);
    broker.recover(&recovery).unwrap();
    broker
}

#[test]
fn a_persistent_duplicate_leaves_no_stored_copy_behind() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    let v = broker.vhost("/").unwrap();
    dedup_queue(&v, "q", FieldValue::I32(10), true);
    let x = v.exchange("").unwrap();
    for body in ["first", "retry"] {
        let (_, commit) = v
            .publish_with_commit(&x, false, with_id("q", "p-1", body, true))
            .unwrap();
        commit.unwrap().wait_blocking().unwrap();
    }
    assert_eq!(v.queue("q").unwrap().message_count(), 1);
    broker.store().unwrap().close().unwrap();
    drop((v, x, broker));
    let broker = open(dir.path());
    let v = broker.vhost("/").unwrap();
    assert_eq!(drain(&v, "q"), ["first"]);
}
