//! Publishers and consumers on several threads: every message is acked exactly once, and
//! nothing deadlocks.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const PUBLISHERS: usize = 3;
const CONSUMERS: u16 = 3;
const PER_PUBLISHER: usize = 2000;
const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;

#[test]
fn concurrent_publish_consume_ack_loses_and_duplicates_nothing() {
    let vh = vhost();
    queue(&vh, "q");
    let acked = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let deadline = Instant::now() + Duration::from_secs(60);

    let consumers: Vec<_> = (1..=CONSUMERS)
        .map(|id| {
            let vh = Arc::clone(&vh);
            let acked = Arc::clone(&acked);
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                let (mut ch, sink) = channel(&vh, id);
                ch.qos(10, false);
                consume(&mut ch, "q", &format!("c{id}"), false);
                let mut n = 0u64;
                while acked.load(Ordering::SeqCst) < TOTAL {
                    assert!(Instant::now() < deadline, "stalled");
                    let batch = sink.take();
                    if batch.is_empty() {
                        thread::yield_now();
                        continue;
                    }
                    for d in batch {
                        n += 1;
                        // Requeue some first deliveries, ack everything else.
                        if !d.redelivered && n % 7 == 0 {
                            ch.nack(d.delivery_tag, false, true).unwrap();
                        } else {
                            assert!(seen.lock().unwrap().insert(body(&d.message)), "acked twice");
                            ch.ack(d.delivery_tag, false).unwrap();
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let vh = Arc::clone(&vh);
            thread::spawn(move || {
                for i in 0..PER_PUBLISHER {
                    send(&vh, "q", &format!("{p}-{i}"));
                }
            })
        })
        .collect();

    for t in publishers.into_iter().chain(consumers) {
        t.join().unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), TOTAL);
    let q = vh.queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (0, 0));
}

#[test]
fn consumers_that_close_mid_stream_lose_nothing() {
    let vh = vhost();
    queue(&vh, "q");
    let acked = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let deadline = Instant::now() + Duration::from_secs(60);

    let consumers: Vec<_> = (1..=CONSUMERS)
        .map(|id| {
            let vh = Arc::clone(&vh);
            let acked = Arc::clone(&acked);
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                let mut generation = 0u16;
                let id = id * 1000;
                let mut n = 0u64;
                while acked.load(Ordering::SeqCst) < TOTAL {
                    generation += 1;
                    let (mut ch, sink) = channel(&vh, id.wrapping_add(generation));
                    ch.qos(20, false);
                    consume(&mut ch, "q", "c", false);
                    // Ack a few hundred, then walk away with whatever is unacked.
                    let mut budget = 300;
                    let mut idle = 0;
                    while budget > 0 && acked.load(Ordering::SeqCst) < TOTAL {
                        assert!(Instant::now() < deadline, "stalled");
                        let batch = sink.take();
                        if batch.is_empty() {
                            idle += 1;
                            if idle > 1000 {
                                break; // what it holds unacked only comes back on close
                            }
                            thread::yield_now();
                            continue;
                        }
                        idle = 0;
                        for d in batch {
                            n += 1;
                            if n % 11 == 0 {
                                continue; // left unacked: redelivered after the close
                            }
                            assert!(seen.lock().unwrap().insert(body(&d.message)), "acked twice");
                            ch.ack(d.delivery_tag, false).unwrap();
                            acked.fetch_add(1, Ordering::SeqCst);
                            budget -= 1;
                        }
                        if ch.unacked_count() >= 20 {
                            break; // no credit left: this channel would starve
                        }
                    }
                }
            })
        })
        .collect();

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let vh = Arc::clone(&vh);
            thread::spawn(move || {
                for i in 0..PER_PUBLISHER {
                    send(&vh, "q", &format!("{p}-{i}"));
                }
            })
        })
        .collect();

    for t in publishers.into_iter().chain(consumers) {
        t.join().unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), TOTAL);
    let q = vh.queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (0, 0));
}
