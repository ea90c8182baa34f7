//! A queue with one active consumer hands what it drains to the channel together
//! (`DeliverySink::deliver_all`): order, tags, credit, refusals by a closed connection, cancel
//! and close keep their meaning.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{
    Channel, ChannelId, ConsumerTag, Delivery, DeliverySink, DeliveryTag, SinkClosed,
    SinkClosedAll, VHost,
};

/// Records each hand-over as one batch; takes all or nothing, as the server's writer queue
/// does. After `limit` deliveries (in total) it refuses everything: the connection is gone.
struct Batches {
    batches: Mutex<Vec<Vec<Delivery>>>,
    /// Deliveries in `batches`, readable without taking its lock (a test polling the sum of
    /// the batches under the lock would hold up the deliveries it waits for).
    delivered: AtomicUsize,
    cancelled: Mutex<Vec<ConsumerTag>>,
    limit: AtomicUsize,
}

impl Batches {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            batches: Mutex::new(Vec::new()),
            delivered: AtomicUsize::new(0),
            cancelled: Mutex::new(Vec::new()),
            limit: AtomicUsize::new(limit),
        })
    }

    fn take(&self, n: usize) -> Result<(), ()> {
        self.limit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .map(drop)
            .map_err(drop)
    }

    fn sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().iter().map(Vec::len).collect()
    }

    fn all(&self) -> Vec<Delivery> {
        self.batches.lock().unwrap().concat()
    }
}

impl DeliverySink for Batches {
    fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
        if self.take(1).is_err() {
            return Err(SinkClosed(delivery));
        }
        self.batches.lock().unwrap().push(vec![delivery]);
        self.delivered.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn deliver_all(&self, deliveries: Vec<Delivery>) -> Result<(), SinkClosedAll> {
        if self.take(deliveries.len()).is_err() {
            return Err(SinkClosedAll(deliveries));
        }
        let n = deliveries.len();
        self.batches.lock().unwrap().push(deliveries);
        self.delivered.fetch_add(n, Ordering::SeqCst);
        Ok(())
    }

    fn consumer_cancelled(&self, consumer_tag: &ConsumerTag) {
        self.cancelled.lock().unwrap().push(consumer_tag.clone());
    }
}

fn batch_channel(vh: &Arc<VHost>, id: u16, limit: usize) -> (Channel, Arc<Batches>) {
    let sink = Batches::new(limit);
    let ch = Channel::new(Arc::clone(vh), CONN, ChannelId(id), sink.clone());
    (ch, sink)
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| body(&d.message)).collect()
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// What `basic.get` finds in `queue`, in order, with the redelivered flag.
/// Publishes "0", "1", ... `total - 1` to "q".
fn send_numbered(vh: &VHost, total: usize) {
    for i in 0..total {
        send(vh, "q", &i.to_string());
    }
}

/// [`send_numbered`] on a thread of its own.
fn publish_numbered(vh: &Arc<VHost>, total: usize) -> thread::JoinHandle<()> {
    let vh = Arc::clone(vh);
    thread::spawn(move || send_numbered(&vh, total))
}

fn remaining(vh: &Arc<VHost>, queue: &str) -> Vec<(String, bool)> {
    let (mut ch, _) = channel(vh, 99);
    std::iter::from_fn(|| ch.get(queue, true).unwrap())
        .map(|got| (body(&got.message), got.redelivered))
        .collect()
}

#[test]
fn an_ack_hands_the_freed_credit_over_as_one_batch_in_order() {
    let vh = vhost();
    queue(&vh, "q");
    send_numbered(&vh, 300);
    let (mut ch, sink) = batch_channel(&vh, 1, usize::MAX);
    ch.qos(100, false);
    consume(&mut ch, "q", "c", false);
    ch.ack(DeliveryTag(100), true).unwrap();
    ch.ack(DeliveryTag(150), true).unwrap();
    assert_eq!(sink.sizes(), [100, 100, 50]);
    let all = sink.all();
    assert_eq!(bodies(&all), numbered(0..250));
    let tags: Vec<u64> = all.iter().map(|d| d.delivery_tag.0).collect();
    assert_eq!(tags, (1..=250).collect::<Vec<_>>());
    let q = vh.queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (50, 100));
    assert_eq!(ch.unacked_count(), 100);
}

#[test]
fn a_long_drain_is_handed_over_in_bounded_runs() {
    let vh = vhost();
    queue(&vh, "q");
    send_numbered(&vh, 2500);
    let (mut ch, sink) = batch_channel(&vh, 1, usize::MAX);
    consume(&mut ch, "q", "c", true);
    assert_eq!(sink.sizes(), [1024, 1024, 452]);
    assert_eq!(bodies(&sink.all()), numbered(0..2500));
    assert_eq!(vh.queue("q").unwrap().message_count(), 0);
}

#[test]
fn a_batch_refused_by_a_closed_connection_keeps_its_place() {
    let vh = vhost();
    queue(&vh, "q");
    send_numbered(&vh, 10);
    // Takes the first 4 (one batch), then the connection is gone.
    let (mut ch, sink) = batch_channel(&vh, 1, 4);
    ch.qos(4, false);
    consume(&mut ch, "q", "c", false);
    ch.ack(DeliveryTag(4), true).unwrap();
    assert_eq!(bodies(&sink.all()), numbered(0..4));
    let q = vh.queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (6, 0));
    assert_eq!(q.snapshot().delivered, 4);
    drop(ch);
    // Another consumer gets the rest, first-time deliveries, in order.
    let (mut other, sink) = batch_channel(&vh, 2, usize::MAX);
    consume(&mut other, "q", "d", false);
    let rest = sink.all();
    assert_eq!(bodies(&rest), numbered(4..10));
    assert!(rest.iter().all(|d| !d.redelivered));
    assert_eq!(rest[0].delivery_tag, DeliveryTag(1));
}

#[test]
fn a_lone_delivery_refused_by_a_closed_connection_keeps_its_place() {
    let vh = vhost();
    queue(&vh, "q");
    send_numbered(&vh, 3);
    // Prefetch 1: every drain takes one. The second is refused: the connection is gone.
    let (mut ch, sink) = batch_channel(&vh, 1, 1);
    ch.qos(1, false);
    consume(&mut ch, "q", "c", false);
    ch.ack(DeliveryTag(1), false).unwrap();
    assert_eq!(sink.sizes(), [1]);
    let q = vh.queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (2, 0));
    assert_eq!(q.snapshot().delivered, 1);
    drop(ch);
    assert_eq!(
        remaining(&vh, "q"),
        [("1".to_string(), false), ("2".to_string(), false)]
    );
}

/// [`Batches`] without its own `deliver_all`: the default hands over one by one, so a
/// connection gone mid-batch takes the first ones and refuses the rest.
struct OneByOne(Arc<Batches>);

impl DeliverySink for OneByOne {
    fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
        self.0.deliver(delivery)
    }

    fn consumer_cancelled(&self, consumer_tag: &ConsumerTag) {
        self.0.consumer_cancelled(consumer_tag);
    }
}

#[test]
fn a_connection_gone_mid_batch_requeues_everything_in_the_original_order() {
    let vh = vhost();
    queue(&vh, "q");
    send_numbered(&vh, 10);
    let sink = Batches::new(4);
    let mut ch = Channel::new(
        Arc::clone(&vh),
        CONN,
        ChannelId(1),
        Arc::new(OneByOne(Arc::clone(&sink))),
    );
    consume(&mut ch, "q", "c", false);
    let taken = sink.all();
    assert_eq!(bodies(&taken), numbered(0..4));
    assert_eq!(taken.last().unwrap().delivery_tag, DeliveryTag(4));
    let q = vh.queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (6, 4));
    assert_eq!(ch.unacked_count(), 4);
    drop(ch);
    let expected: Vec<(String, bool)> = (0..10).map(|i| (i.to_string(), i < 4)).collect();
    assert_eq!(remaining(&vh, "q"), expected);
    assert_eq!(q.unacked_count(), 0);
}

#[test]
fn deliveries_across_threads_keep_the_queue_order_and_consecutive_tags() {
    const TOTAL: usize = 20_000;
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = batch_channel(&vh, 1, usize::MAX);
    ch.qos(1000, false);
    consume(&mut ch, "q", "c", false);
    let publisher = publish_numbered(&vh, TOTAL);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = 0;
    while acked < TOTAL {
        assert!(Instant::now() < deadline, "stalled at {acked}");
        let delivered = sink.delivered.load(Ordering::SeqCst);
        if delivered >= acked + 100 || (delivered == TOTAL && delivered > acked) {
            let through = if delivered == TOTAL {
                TOTAL
            } else {
                acked + 100
            };
            ch.ack(DeliveryTag(through as u64), true).unwrap();
            acked = through;
        } else {
            thread::yield_now();
        }
    }
    publisher.join().unwrap();
    let all = sink.all();
    assert_eq!(bodies(&all), numbered(0..TOTAL));
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, d)| d.delivery_tag.0 == i as u64 + 1));
}

#[test]
fn nothing_is_delivered_to_a_consumer_after_its_cancel_returns() {
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = batch_channel(&vh, 1, usize::MAX);
    consume(&mut ch, "q", "c", true);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (vh, stop) = (Arc::clone(&vh), Arc::clone(&stop));
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                send(&vh, "q", &i.to_string());
                i += 1;
            }
            i
        })
    };
    while sink.sizes().len() < 50 {
        thread::yield_now();
    }
    assert!(ch.cancel("c"));
    let at_cancel = sink.all().len();
    thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::SeqCst);
    let published = publisher.join().unwrap();
    let delivered = sink.all();
    assert_eq!(delivered.len(), at_cancel, "delivered after cancel-ok");
    // Everything else waits in the queue, in order after what was delivered.
    let rest: Vec<String> = remaining(&vh, "q").into_iter().map(|(b, _)| b).collect();
    assert_eq!(
        bodies(&delivered)
            .into_iter()
            .chain(rest)
            .collect::<Vec<_>>(),
        numbered(0..published)
    );
}

#[test]
fn closing_mid_stream_requeues_every_unacked_delivery_once_in_order() {
    const TOTAL: usize = 5000;
    let vh = vhost();
    queue(&vh, "q");
    let (mut ch, sink) = batch_channel(&vh, 1, usize::MAX);
    ch.qos(500, false);
    consume(&mut ch, "q", "c", false);
    let publisher = publish_numbered(&vh, TOTAL);
    // Ack the first 200, then close with the rest of the prefetch in flight.
    while sink.all().len() < 300 {
        thread::yield_now();
    }
    ch.ack(DeliveryTag(200), true).unwrap();
    drop(ch);
    publisher.join().unwrap();
    let q = vh.queue("q").unwrap();
    assert_eq!(q.unacked_count(), 0);
    let rest = remaining(&vh, "q");
    let delivered = sink.all().len();
    let expected: Vec<(String, bool)> = (200..TOTAL)
        .map(|i| (i.to_string(), i < delivered))
        .collect();
    assert_eq!(rest, expected);
}
