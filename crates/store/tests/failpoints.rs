//! Fault injection (feature `failpoints`): a failed batch or flush fails its commits and every
//! later one, nothing is confirmed that is not durable, and the store reopens afterwards.

#![cfg(feature = "failpoints")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{body, header, open, publish_all, seqs};
use lockgate_store::{failpoints, QueueId, SpillRecord, Store, StoreError};

/// Holds the store's writer with the [`failpoints::STALL`] failpoint: returns once it waits,
/// having taken nothing queued from here on (until `failpoints::disarm`).
fn hold_writer(store: &Store, dir: &Path) {
    failpoints::arm(failpoints::STALL, dir);
    // A barrier wakes the writer, which then stalls before taking anything more.
    drop(store.sync());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !failpoints::held(failpoints::STALL, dir) {
        assert!(Instant::now() < deadline, "the writer did not stall");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The writer stopped: its failure is reported, and no write is left waiting for the disk.
fn assert_failed_with_nothing_waiting(store: &Store) {
    assert!(store.failure().is_some());
    assert_eq!(
        store.oldest_write_wait(),
        None,
        "nothing waits on a failed writer"
    );
}

#[test]
fn failed_flush_fails_the_commit_and_stops_later_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, c) = store.put_queue(b"q", b"");
        c.wait_blocking().expect("commit");
        publish_all(&store, queue, 0..10);
        failpoints::arm(failpoints::FLUSH, dir.path());
        let (_, c) = store.publish(header(10), body(10, 10), &[(queue, 10)]);
        let err = c.wait_blocking().expect_err("flush failed");
        assert!(matches!(err, StoreError::Failed { .. }), "{err}");
        failpoints::disarm(failpoints::FLUSH, dir.path());
        // The writer stays stopped: nothing later may be confirmed out of order.
        let (_, c) = store.publish(header(11), body(11, 10), &[(queue, 11)]);
        assert!(c.wait_blocking().is_err());
        assert_failed_with_nothing_waiting(&store);
        assert!(store.close().is_err());
        queue
    };
    let (store, recovery) = open(dir.path());
    assert!(!recovery.clean_shutdown);
    let got = seqs(&store, queue);
    assert_eq!(
        got[..10],
        (0..10).collect::<Vec<_>>()[..],
        "confirmed ones are there"
    );
    assert!(!got.contains(&11), "never submitted to the engine");
}

#[test]
fn failed_apply_writes_nothing_of_the_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, c) = store.put_queue(b"q", b"");
        c.wait_blocking().expect("commit");
        publish_all(&store, queue, 0..3);
        failpoints::arm(failpoints::APPLY, dir.path());
        let (_, c) = store.publish(header(3), body(3, 10), &[(queue, 3)]);
        assert!(c.wait_blocking().is_err());
        failpoints::disarm(failpoints::APPLY, dir.path());
        queue
    };
    let (store, _) = open(dir.path());
    assert_eq!(seqs(&store, queue), vec![0, 1, 2]);
}

/// Backpressure: with the writer held, publishes queue up to `max_pending_bytes` of records
/// and the next one waits (blocking its thread); removes and barriers do not. Releasing the
/// writer lets the waiting publish through, and every message is stored in order.
#[test]
fn publishes_wait_while_the_writer_is_behind() {
    use std::sync::mpsc;

    use lockgate_store::StoreConfig;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        max_pending_bytes: 64 << 10,
        ..StoreConfig::default()
    };
    let (store, _) = Store::open(dir.path(), &config).expect("open");
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    hold_writer(&store, dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    // 20 records of 4 KiB overflow the 64 KiB allowance; they are published from another
    // thread, which must wait.
    let (done, finished) = mpsc::channel();
    let publisher = {
        let store = store.clone();
        std::thread::spawn(move || {
            let commits: Vec<_> = (0..20)
                .map(|seq| {
                    store
                        .publish(header(seq), body(seq, 4096), &[(queue, seq)])
                        .1
                })
                .collect();
            done.send(()).expect("send");
            commits
        })
    };
    while store.metrics().backpressure_waits == 0 {
        assert!(
            Instant::now() < deadline,
            "no publish waited for the writer"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        finished.try_recv().is_err(),
        "the publisher finished while the writer was stalled"
    );
    // Barriers are not held back by the backpressure (they are just not durable yet).
    let barrier = store.sync();
    failpoints::disarm(failpoints::STALL, dir.path());
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("released once the writer took the queue");
    for c in publisher.join().expect("thread") {
        c.wait_blocking().expect("commit");
    }
    barrier.wait_blocking().expect("barrier");
    assert_eq!(seqs(&store, queue), (0..20).collect::<Vec<_>>());
}

/// The age of the oldest write that is not durable: none while the writer keeps up, growing
/// while it is held, none again once the writes are durable.
#[test]
fn oldest_write_wait_grows_while_the_writer_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    assert_eq!(store.oldest_write_wait(), None);
    hold_writer(&store, dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    let (_, c) = store.publish(header(0), body(0, 10), &[(queue, 0)]);
    let first = store.oldest_write_wait().expect("a publish waits");
    while store.oldest_write_wait().expect("still waiting") <= first {
        assert!(Instant::now() < deadline, "the wait did not grow");
        std::thread::sleep(Duration::from_millis(1));
    }
    failpoints::disarm(failpoints::STALL, dir.path());
    c.wait_blocking().expect("commit");
    assert_eq!(store.oldest_write_wait(), None);
}

/// A spill call run while held: returns the messages it handled.
type SpillCall = fn(&Store, QueueId) -> usize;

fn spill_record(seq: u64) -> SpillRecord {
    SpillRecord {
        seq,
        header: header(seq),
        body: body(seq, 100),
    }
}

/// Spill calls go to the engine on the caller's thread, not through the writer: one that hangs
/// (held by a failpoint here) shows in the spill wait, which grows while the writer's wait
/// stays empty, and is gone once the call returns. Each kind of spill call in turn.
#[test]
fn oldest_spill_wait_grows_while_a_spill_call_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let queue = store.transient_queue_id();
    store.spill(queue, &[spill_record(0)]).expect("spill");
    assert_eq!(store.oldest_spill_wait(), None);
    // Each returns the messages it handled: one (seq 1 spilled, then seq 0 paged in, then
    // seq 1 discarded).
    let calls: [(&str, SpillCall); 3] = [
        ("spill", |s, q| {
            s.spill(q, &[spill_record(1)]).expect("spill");
            1
        }),
        ("page in", |s, q| s.page_in(q, 0, 1).expect("page in").len()),
        ("discard", |s, q| {
            let n = s.discard_spilled(q, 0..u64::MAX).expect("discard");
            usize::try_from(n).expect("a count")
        }),
    ];
    for (name, call) in calls {
        failpoints::arm(failpoints::SPILL_STALL, dir.path());
        let held = {
            let store = store.clone();
            std::thread::spawn(move || call(&store, queue))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !failpoints::held(failpoints::SPILL_STALL, dir.path()) {
            assert!(Instant::now() < deadline, "{name} was not held");
            std::thread::sleep(Duration::from_millis(1));
        }
        let first = store.oldest_spill_wait().expect("a spill call runs");
        while store.oldest_spill_wait().expect("still running") <= first {
            assert!(Instant::now() < deadline, "{name}: the wait did not grow");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            store.oldest_write_wait(),
            None,
            "{name}: the writer waits on nothing"
        );
        failpoints::disarm(failpoints::SPILL_STALL, dir.path());
        assert_eq!(
            held.join().expect(name),
            1,
            "{name} did its work once let go"
        );
        assert_eq!(store.oldest_spill_wait(), None, "{name} returned");
    }
}

/// A copy published and acked within one group (the writer was busy meanwhile) is never
/// written, nor is its removal; a shared message acked in one of its queues within the group
/// is stored for the others only. Nothing of it comes back after a restart.
#[test]
fn copies_acked_before_their_group_was_written_are_never_written() {
    use lockgate_store::StoredRef;

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (a, c) = store.put_queue(b"a", b"");
    c.wait_blocking().expect("commit");
    let (b, c) = store.put_queue(b"b", b"");
    c.wait_blocking().expect("commit");
    hold_writer(&store, dir.path());
    // 0..100 to `a` only, acked; 100..110 to `a` and `b`, acked in `a`; 110 to `a`, kept.
    let mut acked = Vec::new();
    let mut shared = Vec::new();
    for seq in 0..110 {
        let targets: &[_] = if seq < 100 {
            &[(a, seq)]
        } else {
            &[(a, seq), (b, seq)]
        };
        let (message, _) = store.publish(header(seq), body(seq, 5000), targets);
        acked.push(StoredRef {
            queue: a,
            seq,
            message,
        });
        if seq >= 100 {
            shared.push(StoredRef {
                queue: b,
                seq,
                message,
            });
        }
    }
    let (kept, _) = store.publish(header(110), body(110, 10), &[(a, 110)]);
    let removed = store.remove_many(acked.iter().copied());
    failpoints::disarm(failpoints::STALL, dir.path());
    removed.wait_blocking().expect("commit");
    assert_eq!(store.metrics().acked_unwritten, 110);
    assert_eq!(seqs(&store, a), vec![110]);
    assert_eq!(seqs(&store, b), (100..110).collect::<Vec<_>>());
    for r in &shared {
        let record = store.read_message(*r).expect("read").expect("kept for b");
        assert_eq!(record.body, body(r.seq, 5000));
    }
    store.close().expect("close");
    drop(store);
    // Only the parts of the records `b` holds (each stored with its one index entry).
    let left: Vec<_> = common::stored_record_ids(dir.path()).into_iter().collect();
    let expected: Vec<_> = shared.iter().map(|r| r.message).collect();
    assert_eq!(left, expected);
    let (store, recovery) = open(dir.path());
    let counts: Vec<_> = recovery.queues.iter().map(|q| q.messages).collect();
    assert_eq!(counts, vec![1, 10]);
    let page = store.page_in(a, 0, 10).expect("page in");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].message, Some(kept));
}

/// A writer that panics fails what was queued, like one whose write failed: nothing is left
/// waiting for the disk.
#[test]
fn a_panicked_writer_leaves_no_write_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    failpoints::arm(failpoints::PANIC, dir.path());
    let (_, c) = store.publish(header(0), body(0, 10), &[(queue, 0)]);
    assert!(c.wait_blocking().is_err());
    assert_failed_with_nothing_waiting(&store);
    failpoints::disarm(failpoints::PANIC, dir.path());
}

/// A discard that fails (the spilled records of a queue purged while they were written) is
/// owed, not forgotten: the next spill call, of another queue here, drops the records before
/// doing its own work, so they leave the disk during the run.
#[test]
fn a_failed_discard_is_retried_by_the_next_spill_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let purged = store.transient_queue_id();
    let other = store.transient_queue_id();
    let records: Vec<_> = (0..10).map(spill_record).collect();
    store.spill(purged, &records).expect("spill");
    failpoints::arm(failpoints::DISCARD, dir.path());
    assert!(store.discard_spilled(purged, 0..10).is_err());
    // Still failing: the retry fails too, and the call does its own work regardless.
    store.spill(other, &[spill_record(0)]).expect("spill");
    failpoints::disarm(failpoints::DISCARD, dir.path());
    store.spill(other, &[spill_record(1)]).expect("spill");
    store.close().expect("close");
    drop(store);
    let (_, recovery) = open(dir.path());
    assert_eq!(
        recovery.spilled_discarded, 2,
        "only the other queue's records were left on disk"
    );
}

/// A discard still owed at a restart: the purged messages do not come back, the spill tree is
/// cleared at startup.
#[test]
fn a_discard_owed_at_a_restart_brings_nothing_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (durable, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    let records: Vec<_> = (0..10).map(spill_record).collect();
    store.spill(durable, &records).expect("spill");
    failpoints::arm(failpoints::DISCARD, dir.path());
    assert!(store.discard_spilled(durable, 0..10).is_err());
    failpoints::disarm(failpoints::DISCARD, dir.path());
    store.close().expect("close");
    drop(store);
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.spilled_discarded, 10);
    assert_eq!(store.page_in(durable, 0, 100).expect("page in"), []);
}
