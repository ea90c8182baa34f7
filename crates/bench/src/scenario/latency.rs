//! Latency at fixed publish rates: 1 publisher → 1 queue → 1 consumer, the
//! send time in the body, percentiles of (received − send time). The
//! publisher is paced to the microsecond on a thread of its own
//! (`crate::pacing`); a message carries its actual send time, or its
//! intended one while the broker holds the publisher back (see `Stamps` in
//! `flow.rs`). `send_lag_p99_us` reports how late messages left their
//! schedule: the bench's own error, to be small next to the latencies.
//!
//! To see where a tail comes from, set `LOCKGATE_BENCH_LATENCY_DUMP=<prefix>`:
//! every message's times are written per case (`crate::latency::Trace`), on a
//! clock that lines up with `perf sched record -k CLOCK_MONOTONIC` or ftrace's
//! `mono` trace clock.

use anyhow::Context as _;
use lockgate_client::{FieldTable, QueueDeclareOptions};

use super::flow;
use super::throughput::Tuning;
use super::{Ctx, Declared};
use crate::report::{Metric, Record};

/// One case per rate (msg/s).
///
/// # Errors
///
/// A connection or protocol failure.
pub async fn run(
    ctx: &Ctx,
    rates: &[u64],
    size: usize,
    tuning: &Tuning,
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for &rate in rates {
        let case = format!("{rate}/s");
        let mut declared = Declared::default();
        let result = async {
            let conn = ctx.connect("setup").await?;
            let ch = conn.open_channel().await?;
            let q = ctx.name(&format!("latency-{rate}"));
            ch.queue_declare(&q, QueueDeclareOptions::default(), FieldTable::default())
                .await
                .context("declaring the latency queue")?;
            declared.queues.push(q.clone());
            let _ = conn.close().await;
            let mut flow = tuning.one_queue_flow(size, q);
            flow.rate = Some(rate.max(1));
            flow.record_latency = true;
            flow::run_timed(ctx, &format!("latency {case}"), &flow).await
        }
        .await;
        declared.clean_up(ctx).await;
        let m = result?;
        let s = m.latency.summary();
        let mut metrics = vec![
            Metric::lower("p50_us", s.p50_us as f64, "us"),
            Metric::lower("p99_us", s.p99_us as f64, "us"),
            Metric::lower("p999_us", s.p999_us as f64, "us"),
            Metric::lower("max_us", s.max_us as f64, "us"),
            Metric::higher("delivered_per_s", m.delivered_per_s, "msg/s"),
        ];
        if let Some(lag) = &m.send_lag {
            // The bench's own error: how late messages left their schedule.
            metrics.push(Metric::lower(
                "send_lag_p99_us",
                lag.summary().p99_us as f64,
                "us",
            ));
        }
        records.push(
            Record {
                scenario: "latency",
                case,
                label: ctx.label.clone(),
                metrics,
                verification: Some(m.verification),
                failures: 0,
                broker: m.broker,
                bench: m.bench,
                ok: false,
            }
            .settle(),
        );
    }
    Ok(records)
}
