//! A delivery the consumer timeout takes back goes to another consumer first, also when
//! `x-retry-delay` holds it aside before it is deliverable again.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{Channel, QueueFlags, VHost};
use lockgate_wire::{FieldTable, FieldValue};

/// A channel with per-consumer `prefetch` and a consumer of `priority` on "q".
fn consumer(vh: &Arc<VHost>, id: u16, prefetch: u16, priority: i32) -> (Channel, Arc<TestSink>) {
    let (mut ch, sink) = channel(vh, id);
    ch.qos(prefetch, false);
    let arguments: FieldTable = [("x-priority".to_owned(), FieldValue::I32(priority))]
        .into_iter()
        .collect();
    ch.consume("q", &format!("c{id}"), false, false, &arguments, |_| {})
        .unwrap();
    (ch, sink)
}

#[test]
fn a_delivery_back_from_its_retry_delay_goes_to_another_consumer_first() {
    let vh = vhost();
    let arguments: FieldTable = [
        ("x-consumer-timeout".to_owned(), FieldValue::I32(50)),
        ("x-retry-delay".to_owned(), FieldValue::I32(50)),
    ]
    .into_iter()
    .collect();
    vh.declare_queue(CONN, "q", QueueFlags::default(), arguments)
        .unwrap();
    // The higher priority does not ack; once the delay has passed it has credit again.
    let (_high, high_sink) = consumer(&vh, 1, 1, 5);
    let (_low, low_sink) = consumer(&vh, 2, 0, 0);
    send(&vh, "q", "0");
    assert_eq!(high_sink.bodies(), ["0"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while low_sink.count() + high_sink.count() < 2 {
        assert!(Instant::now() < deadline, "taken back within 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(low_sink.bodies(), ["0"]);
    assert_eq!(high_sink.count(), 1);
    // New messages go to the higher priority again.
    send(&vh, "q", "1");
    assert_eq!(high_sink.bodies(), ["0", "1"]);
}
