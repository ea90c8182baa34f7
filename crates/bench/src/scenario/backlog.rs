//! Backlog: publish `count` messages to a queue nobody consumes (publish
//! rate, broker RSS holding them), then drain it with one consumer (drain
//! rate). Publishing uses confirms, so the publish rate counts messages the
//! broker has taken, not messages sitting in socket buffers.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use lockgate_client::{FieldTable, QueueDeclareOptions};

use super::flow::{self, Shared};
use super::throughput::{size_name, Tuning};
use super::{Ctx, Declared};
use crate::report::{Metric, Progress, Record};

/// Runs the backlog scenario.
///
/// # Errors
///
/// A connection or protocol failure.
pub async fn run(
    ctx: &Ctx,
    count: u64,
    size: usize,
    confirm_window: usize,
    tuning: &Tuning,
) -> anyhow::Result<Vec<Record>> {
    let mut declared = Declared::default();
    let result = run_declared(ctx, count, size, confirm_window, tuning, &mut declared).await;
    declared.clean_up(ctx).await;
    result
}

async fn run_declared(
    ctx: &Ctx,
    count: u64,
    size: usize,
    confirm_window: usize,
    tuning: &Tuning,
    declared: &mut Declared,
) -> anyhow::Result<Vec<Record>> {
    let conn = ctx.connect("setup").await?;
    let ch = conn.open_channel().await?;
    let q = ctx.name("backlog");
    ch.queue_declare(&q, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .context("declaring the backlog queue")?;
    declared.queues.push(q.clone());
    let _ = conn.close().await;

    let mut flow = tuning.one_queue_flow(size, q);
    flow.confirm_window = Some(confirm_window.max(1));
    // Nobody consumes while the backlog builds.
    flow.max_ahead = u64::MAX;
    let shared = Shared::new();
    let _progress = Progress::start(
        format!("{} backlog", ctx.label),
        Arc::clone(&shared.counters),
    );

    let mut fill_usage = ctx.usage_windows();
    let started = Instant::now();
    let (pub_conn, publisher) = flow::start_publisher(ctx, &flow, &shared, Some(count)).await?;
    let mut publisher = publisher;
    let published = loop {
        tokio::select! {
            done = &mut publisher => break done.context("publisher task panicked")??,
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => fill_usage.poll(),
        }
    };
    let publish_secs = started.elapsed().as_secs_f64();
    let (fill_broker, fill_bench) = fill_usage.finish();
    let _ = pub_conn.close().await;

    let mut drain_usage = ctx.usage_windows();
    let drain_started = Instant::now();
    let consumers = flow::start_consumers(ctx, &flow, &shared).await?;
    let expected = flow::expected_deliveries(&flow.queues, &published.published);
    let last = flow::wait_drained(&shared, expected, ctx.drain_timeout).await;
    let drain_secs = last.duration_since(drain_started).as_secs_f64();
    let (drain_broker, _) = drain_usage.finish();
    let (verification, _) = consumers.finish(&shared, &published).await?;

    let total: u64 = published.published.iter().sum();
    let mut metrics = vec![
        Metric::higher("publish_per_s", total as f64 / publish_secs, "msg/s"),
        Metric::higher(
            "drain_per_s",
            verification.delivered as f64 / drain_secs.max(1e-9),
            "msg/s",
        ),
    ];
    if let Some(b) = fill_broker {
        metrics.push(Metric::lower("broker_rss_full_mib", b.rss_mib, "MiB"));
        metrics.push(Metric::lower(
            "broker_bytes_per_msg",
            (b.rss_mib - b.rss_start_mib).max(0.0) * 1024.0 * 1024.0 / total.max(1) as f64,
            "B",
        ));
    }
    if let Some(b) = drain_broker {
        metrics.push(Metric::lower("broker_rss_drained_mib", b.rss_mib, "MiB"));
    }
    // A broker may keep growing after the last confirm while it absorbs the backlog (RabbitMQ
    // does, by gigabytes at 1M messages): the peak over filling and draining is the memory the
    // backlog really needed.
    if let (Some(fill), Some(drain)) = (fill_broker, drain_broker) {
        metrics.push(Metric::lower(
            "broker_rss_peak_mib",
            fill.rss_max_mib.max(drain.rss_max_mib),
            "MiB",
        ));
    }
    Ok(vec![Record {
        scenario: "backlog",
        case: format!("{count}x{}", size_name(size)),
        label: ctx.label.clone(),
        metrics,
        verification: Some(verification),
        failures: 0,
        broker: fill_broker,
        bench: fill_bench,
        ok: false,
    }
    .settle()])
}
