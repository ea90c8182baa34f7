//! Startup time with a large persisted backlog. Run with
//! `cargo test -p lockgate-store --release --test startup -- --ignored --nocapture`
//! (`LOCKGATE_STORE_STARTUP_N` sets the message count, default 1,000,000).

mod common;

use std::time::Instant;

use bytes::Bytes;
use lockgate_store::{Store, StoreConfig};

fn open(dir: &std::path::Path) -> (Store, lockgate_store::Recovery) {
    let mut config = StoreConfig::default();
    if let Some(mib) = std::env::var("LOCKGATE_STORE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.cache_capacity = mib << 20;
    }
    Store::open(dir, &config).expect("open store")
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb >> 10)
}

#[test]
#[ignore = "benchmark: prints the startup scan time for N persisted messages"]
fn bench_startup_with_a_large_backlog() {
    let n: u64 = std::env::var("LOCKGATE_STORE_STARTUP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let queues = 10u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    {
        let (store, _) = open(dir.path());
        let ids: Vec<_> = (0..queues)
            .map(|q| store.put_queue(format!("q{q}").as_bytes(), b"").0)
            .collect();
        let header = Bytes::from_static(b"exchange routing-key properties");
        let body = Bytes::from(vec![b'x'; 100]);
        for chunk in 0..n / 10_000 {
            let mut last = None;
            for i in 0..10_000 {
                let seq = chunk * 10_000 + i;
                let queue = ids[(seq % queues) as usize];
                last = Some(
                    store
                        .publish(header.clone(), body.clone(), &[(queue, seq / queues)])
                        .1,
                );
            }
            if let Some(c) = last {
                c.wait_blocking().expect("commit");
            }
        }
        store.close().expect("close");
    }
    let write_secs = started.elapsed().as_secs_f64();
    let write_rss = peak_rss_mib();
    let size = common::dir_size(dir.path());

    let t = Instant::now();
    let (store, recovery) = open(dir.path());
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;

    // What the broker does at startup: counts come with the recovery, bodies of the head
    // of each queue are paged in, the rest stays on disk.
    let t = Instant::now();
    let mut paged = 0usize;
    for q in &recovery.queues {
        paged += store.page_in(q.id, 0, 1000).expect("page in").len();
    }
    let page_ms = t.elapsed().as_secs_f64() * 1000.0;
    let counted: u64 = recovery.queues.iter().map(|q| q.messages).sum();

    let t = Instant::now();
    let mut indexed = 0u64;
    for q in &recovery.queues {
        for entry in store.queue_index(q.id) {
            entry.expect("entry");
            indexed += 1;
        }
    }
    let index_ms = t.elapsed().as_secs_f64() * 1000.0;

    let t = Instant::now();
    let mut bodies = 0u64;
    for q in &recovery.queues {
        let mut from = 0;
        loop {
            let page = store.page_in(q.id, from, 4096).expect("page in");
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            bodies += page.len() as u64;
        }
    }
    let full_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(indexed, n / 10_000 * 10_000);
    assert_eq!(counted, indexed);
    assert_eq!(bodies, indexed);
    println!(
        "startup with {indexed} persisted messages (100 B bodies, {queues} queues, store {} MiB, \
         written in {write_secs:.1}s): open + recovery (counts included) {open_ms:.0} ms, \
         paging in the first {paged} bodies {page_ms:.0} ms; then walking every queue index \
         {index_ms:.0} ms, reading every body {full_ms:.0} ms; peak RSS {write_rss} MiB while \
         writing, {} MiB at the end",
        size >> 20,
        peak_rss_mib()
    );
}
