//! Consumer timeouts across a transaction: deliveries a transaction acked and then rolled
//! back are unacked again with the deadline each got at delivery, not one counted again
//! from the queue's current timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{ApplyTo, DeliveryTag, Policy, QueueFlags, VHost};
use lockgate_wire::{FieldTable, FieldValue};

/// A policy on "q" setting its consumer timeout to `ms`.
fn timeout_policy(vh: &VHost, ms: i64) {
    let definition: FieldTable = [("consumer-timeout".to_owned(), FieldValue::I64(ms))]
        .into_iter()
        .collect();
    let policy = Policy::new("/", "timeout", "^q$", ApplyTo::Queues, 0, definition).unwrap();
    vh.set_policies(vec![policy]);
}

#[test]
fn a_rollback_keeps_each_restored_delivery_deadline() {
    // Enough held deliveries that settling them compacts the channel's deadlines.
    const HELD: u64 = 1100;
    let vh = vhost();
    timeout_policy(&vh, 1_800_000);
    vh.declare_queue(CONN, "q", QueueFlags::default(), FieldTable::default())
        .unwrap();
    for i in 0..=HELD {
        send(&vh, "q", &i.to_string());
    }
    let (mut ch, _sink) = channel(&vh, 1);
    for tag in 1..=HELD {
        assert_eq!(
            ch.get("q", false).unwrap().unwrap().delivery_tag,
            DeliveryTag(tag)
        );
    }
    ch.hold_ack(DeliveryTag(0), true).unwrap();
    // The timeout drops to 100 ms: it applies to later deliveries only.
    timeout_policy(&vh, 100);
    ch.rollback_held();
    assert_eq!(ch.unacked_count() as u64, HELD);
    // A delivery under the new timeout, on the same channel: its deadline comes long
    // before the restored ones' 30 minutes (a restored deadline counted from delivery
    // with the new timeout would come before it).
    assert!(ch.get("q", false).unwrap().is_some());
    let q = vh.queue("q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while q.snapshot().timeout_redelivered == 0 {
        assert!(
            Instant::now() < deadline,
            "the last delivery timed out within 30 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(q.snapshot().timeout_redelivered, 1);
    assert_eq!(ch.unacked_count() as u64, HELD);
}
