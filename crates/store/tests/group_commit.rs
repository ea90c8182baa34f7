//! Group commit: concurrent writes share one flush, and every waiter completes only once
//! its write is flushed.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{body, header, open};

#[test]
fn concurrent_writes_share_flushes_and_every_waiter_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    let before = store.metrics();
    let threads = 8u64;
    let per_thread = 50u64;
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                for i in 0..per_thread {
                    let seq = t * per_thread + i;
                    let (_, commit) = store.publish(header(seq), body(seq, 1024), &[(queue, seq)]);
                    let ticket = commit.ticket().expect("open store");
                    commit.wait_blocking().expect("commit");
                    assert!(
                        store.durable_ticket() >= ticket,
                        "completed before its flush"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("publisher");
    }
    let after = store.metrics();
    let ops = after.ops - before.ops;
    let batches = after.batches - before.batches;
    assert_eq!(ops, threads * per_thread);
    assert!(
        batches < ops,
        "{ops} writes took {batches} flushes: no grouping"
    );
    assert!(after.max_batch_ops > 1);
    assert!(after.commit_time_total > Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_waiters_complete_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait().await.expect("commit");
    let commits: Vec<_> = (0..200)
        .map(|seq| {
            store
                .publish(header(seq), body(seq, 100), &[(queue, seq)])
                .1
        })
        .collect();
    let last = commits.last().and_then(|c| c.ticket()).expect("ticket");
    let waits: Vec<_> = commits
        .into_iter()
        .map(|c| tokio::spawn(c.wait()))
        .collect();
    for w in waits {
        w.await.expect("task").expect("commit");
    }
    assert!(store.durable_ticket() >= last);
    store.wait_durable(last).await.expect("durable");
    assert!(store.metrics().batches < 200);
    store.close_async().await.expect("close");
}

/// Throughput of confirmed 1 KiB persistent publishes with 64 publishers each waiting for
/// its confirm before the next publish. Run with
/// `cargo test -p lockgate-store --release --test group_commit -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: prints confirmed writes per second"]
fn bench_group_commit_confirmed_1k_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let publishers = 64u64;
    let run_for = Duration::from_secs(5);
    let queues: Vec<_> = (0..publishers)
        .map(|p| store.put_queue(format!("q{p}").as_bytes(), b"").0)
        .collect();
    store.sync().wait_blocking().expect("sync");
    let payload = body(0, 1024);
    let started = Instant::now();
    let handles: Vec<_> = queues
        .into_iter()
        .map(|queue| {
            let store = store.clone();
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while started.elapsed() < run_for {
                    let (_, c) = store.publish(header(seq), payload.clone(), &[(queue, seq)]);
                    c.wait_blocking().expect("commit");
                    seq += 1;
                }
                seq
            })
        })
        .collect();
    let total: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("publisher"))
        .sum();
    let secs = started.elapsed().as_secs_f64();
    let m = store.metrics();
    println!(
        "group commit: {total} confirmed 1 KiB writes in {secs:.2}s = {:.0}/s, {} flushes, \
         mean batch {:.1}, max batch {}, mean commit {:.2} ms, max commit {:.2} ms",
        total as f64 / secs,
        m.batches,
        m.ops as f64 / m.batches.max(1) as f64,
        m.max_batch_ops,
        m.commit_time_total.as_secs_f64() * 1000.0 / m.batches.max(1) as f64,
        m.max_commit_time.as_secs_f64() * 1000.0,
    );
}
