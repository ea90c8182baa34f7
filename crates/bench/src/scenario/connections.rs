//! Connections: many idle connections with heartbeats (broker memory per
//! connection), and connection churn (open + close per second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lockgate_client::{Connection, ConnectionOptions};

use super::Ctx;
use crate::procfs;
use crate::report::{Metric, Record};

/// Settings of the connections scenario.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Idle connections to hold open.
    pub count: usize,
    /// Heartbeat interval requested, seconds.
    pub heartbeat: u16,
    /// How long to hold them (at least two heartbeats to prove they live).
    pub hold: Duration,
    /// Connections opened at once.
    pub concurrency: usize,
    /// Length of the churn phase.
    pub churn: Duration,
}

/// Runs the idle and churn cases.
///
/// # Errors
///
/// When the URI is invalid (connection failures are counted, not errors).
pub async fn run(ctx: &Ctx, settings: &Settings) -> anyhow::Result<Vec<Record>> {
    let mut records = vec![idle(ctx, settings).await?];
    if !settings.churn.is_zero() {
        records.push(churn(ctx, settings).await?);
    }
    Ok(records)
}

async fn idle(ctx: &Ctx, s: &Settings) -> anyhow::Result<Record> {
    // Each connection takes one descriptor here (and one in the broker).
    let limit = procfs::raise_fd_limit();
    let room = usize::try_from(limit.saturating_sub(128)).unwrap_or(usize::MAX);
    let count = if s.count > room {
        eprintln!(
            "lockgate-bench: open-file limit {limit} allows {room} connections, not {}",
            s.count
        );
        room
    } else {
        s.count
    };
    let mut options = ctx.options("idle")?;
    options.heartbeat = s.heartbeat;

    // Memory per connection is the marginal cost of the second half: the
    // first half absorbs whatever the broker's allocator kept from earlier
    // scenarios (freed but not returned to the OS), which would otherwise
    // hide part of the cost or, after a garbage collection, make it negative.
    let mut usage = ctx.usage_windows();
    let started = Instant::now();
    let first = count / 2;
    let (mut conns, mut failures) = open_many(&options, first, s.concurrency).await;
    let mut opening = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mid = ctx.broker_pid.and_then(|pid| procfs::sample(Some(pid)));
    let second_started = Instant::now();
    let (more, more_failures) = open_many(&options, count - first, s.concurrency).await;
    opening += second_started.elapsed();
    let open_secs = opening.as_secs_f64();
    let second = more.len();
    conns.extend(more);
    failures += more_failures;
    ctx.sleep_sampling(s.hold, &mut usage).await;
    let (broker, bench) = usage.finish();
    let dropped = conns.iter().filter(|c| !c.is_open()).count() as u64;
    if dropped > 0 {
        eprintln!("lockgate-bench: {dropped} idle connections closed while held");
    }
    let opened = conns.len();
    futures::stream::iter(conns)
        .for_each_concurrent(s.concurrency.max(1), |c| async move {
            let _ = c.close().await;
        })
        .await;

    let mut metrics = vec![Metric::higher(
        "open_per_s",
        opened as f64 / open_secs,
        "conn/s",
    )];
    if let (Some(b), Some(mid)) = (broker, mid) {
        metrics.push(Metric::lower(
            "broker_kib_per_conn",
            (b.rss_mib * 1024.0 - mid.rss_kib as f64) / second.max(1) as f64,
            "KiB",
        ));
        metrics.push(Metric::lower("broker_rss_mib", b.rss_mib, "MiB"));
    }
    Ok(Record {
        scenario: "connections",
        case: format!("idle-{count}"),
        label: ctx.label.clone(),
        metrics,
        verification: None,
        failures: failures + dropped,
        broker,
        bench,
        ok: false,
    }
    .settle())
}

/// Opens `n` connections, `concurrency` at a time; returns those that
/// opened and how many failed.
async fn open_many(
    options: &ConnectionOptions,
    n: usize,
    concurrency: usize,
) -> (Vec<Connection>, u64) {
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|_| Connection::connect_with(options.clone()))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut failures = 0u64;
    let mut conns = Vec::with_capacity(n);
    for r in results {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                if failures == 0 {
                    eprintln!("lockgate-bench: connection failed: {e}");
                }
                failures += 1;
            }
        }
    }
    (conns, failures)
}

async fn churn(ctx: &Ctx, s: &Settings) -> anyhow::Result<Record> {
    let options = ctx.options("churn")?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut usage = ctx.usage_windows();
    let started = Instant::now();
    let deadline = started + s.churn;
    let workers: Vec<_> = (0..s.concurrency.clamp(1, 64))
        .map(|_| {
            let options = options.clone();
            let done = Arc::clone(&done);
            let failed = Arc::clone(&failed);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let ok = match Connection::connect_with(options.clone()).await {
                        Ok(c) => c.close().await.is_ok(),
                        Err(_) => false,
                    };
                    let counter = if ok { &done } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    usage.poll();
    let (broker, bench) = usage.finish();
    Ok(Record {
        scenario: "connections",
        case: "churn".into(),
        label: ctx.label.clone(),
        metrics: vec![Metric::higher(
            "churn_per_s",
            done.load(Ordering::Relaxed) as f64 / secs,
            "conn/s",
        )],
        verification: None,
        failures: failed.load(Ordering::Relaxed),
        broker,
        bench,
        ok: false,
    }
    .settle())
}
