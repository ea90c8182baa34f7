//! Throughput scenarios: transient point-to-point, persistent with
//! confirms, fan-out, and many queues.

use anyhow::Context as _;
use lockgate_client::{
    Channel, ExchangeDeclareOptions, ExchangeKind, FieldTable, QueueDeclareOptions,
};

use super::flow::{self, Flow, QueueSpec, Target};
use super::{Ctx, Declared};
use crate::report::{Metric, Record};

/// Settings common to the throughput scenarios.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Consumer prefetch.
    pub prefetch: u16,
    /// Ack (multiple) every this many deliveries.
    pub ack_every: u64,
    /// Publisher lead over consumers, in messages.
    pub max_ahead: u64,
}

impl Tuning {
    fn flow(&self, size: usize, targets: Vec<Target>, queues: Vec<QueueSpec>) -> Flow {
        Flow {
            size,
            targets,
            queues,
            persistent: false,
            confirm_window: None,
            rate: None,
            prefetch: self.prefetch,
            ack_every: self.ack_every,
            max_ahead: self.max_ahead,
            consumer_connections: 1,
            record_latency: false,
        }
    }

    /// A flow through the default exchange to the one queue `queue`, as stream 0.
    pub(super) fn one_queue_flow(&self, size: usize, queue: String) -> Flow {
        self.flow(
            size,
            vec![Target {
                exchange: String::new(),
                routing_key: queue.clone(),
            }],
            vec![QueueSpec {
                name: queue,
                streams: vec![0],
            }],
        )
    }
}

/// Human name of a body size: `16B`, `1KiB`.
pub fn size_name(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

async fn declare_queue(
    ch: &Channel,
    declared: &mut Declared,
    name: String,
    durable: bool,
) -> anyhow::Result<String> {
    ch.queue_declare(
        &name,
        QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declaring queue {name}"))?;
    declared.queues.push(name.clone());
    Ok(name)
}

/// Declares what `setup` needs on its own connection, runs the flow it
/// returns, and always cleans up.
async fn with_declared<F>(ctx: &Ctx, what: &str, setup: F) -> anyhow::Result<flow::Measured>
where
    F: AsyncFnOnce(&Channel, &mut Declared) -> anyhow::Result<Flow>,
{
    let mut declared = Declared::default();
    let result = async {
        let conn = ctx.connect("setup").await?;
        let ch = conn.open_channel().await?;
        let flow = setup(&ch, &mut declared).await;
        let _ = conn.close().await;
        flow::run_timed(ctx, what, &flow?).await
    }
    .await;
    declared.clean_up(ctx).await;
    result
}

fn record(
    ctx: &Ctx,
    scenario: &'static str,
    case: String,
    m: flow::Measured,
    metrics: Vec<Metric>,
) -> Record {
    Record {
        scenario,
        case,
        label: ctx.label.clone(),
        metrics,
        verification: Some(m.verification),
        failures: 0,
        broker: m.broker,
        bench: m.bench,
        ok: false,
    }
    .settle()
}

/// 1 publisher → 1 queue → 1 consumer, transient, one case per body size.
///
/// # Errors
///
/// A connection or protocol failure.
pub async fn transient(ctx: &Ctx, sizes: &[usize], tuning: &Tuning) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for &size in sizes {
        let case = size_name(size);
        let m = with_declared(ctx, &format!("transient {case}"), async |ch, declared| {
            let q =
                declare_queue(ch, declared, ctx.name(&format!("transient-{case}")), false).await?;
            Ok(tuning.one_queue_flow(size, q))
        })
        .await?;
        let metrics = vec![
            Metric::higher("published_per_s", m.published_per_s, "msg/s"),
            Metric::higher("delivered_per_s", m.delivered_per_s, "msg/s"),
        ];
        records.push(record(ctx, "transient", case, m, metrics));
    }
    Ok(records)
}

/// Persistent messages to a durable queue with publisher confirms.
///
/// # Errors
///
/// A connection or protocol failure.
pub async fn persistent(
    ctx: &Ctx,
    size: usize,
    confirm_window: usize,
    tuning: &Tuning,
) -> anyhow::Result<Vec<Record>> {
    let case = size_name(size);
    let m = with_declared(ctx, &format!("persistent {case}"), async |ch, declared| {
        let q = declare_queue(ch, declared, ctx.name("persistent"), true).await?;
        let mut flow = tuning.one_queue_flow(size, q);
        flow.persistent = true;
        flow.confirm_window = Some(confirm_window.max(1));
        Ok(flow)
    })
    .await?;
    let metrics = vec![
        Metric::higher("confirmed_per_s", m.confirmed_per_s, "msg/s"),
        Metric::higher("delivered_per_s", m.delivered_per_s, "msg/s"),
    ];
    Ok(vec![record(ctx, "persistent", case, m, metrics)])
}

/// One publisher, a fanout exchange, `queues` queues each with a consumer.
///
/// # Errors
///
/// A connection or protocol failure.
pub async fn fanout(
    ctx: &Ctx,
    queues: usize,
    size: usize,
    tuning: &Tuning,
) -> anyhow::Result<Vec<Record>> {
    let case = format!("{queues}q-{}", size_name(size));
    let m = with_declared(ctx, &format!("fanout {case}"), async |ch, declared| {
        let exchange = ctx.name("fanout");
        ch.exchange_declare(
            &exchange,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("declaring the fanout exchange")?;
        declared.exchanges.push(exchange.clone());
        let mut specs = Vec::new();
        for i in 0..queues {
            let q = declare_queue(ch, declared, ctx.name(&format!("fanout-{i}")), false).await?;
            ch.queue_bind(&q, &exchange, "", FieldTable::default())
                .await
                .context("binding a fanout queue")?;
            specs.push(QueueSpec {
                name: q,
                streams: vec![0],
            });
        }
        let mut flow = tuning.flow(
            size,
            vec![Target {
                exchange,
                routing_key: String::new(),
            }],
            specs,
        );
        flow.consumer_connections = queues;
        Ok(flow)
    })
    .await?;
    let metrics = vec![
        Metric::higher("delivered_per_s", m.delivered_per_s, "msg/s"),
        Metric::higher("published_per_s", m.published_per_s, "msg/s"),
    ];
    Ok(vec![record(ctx, "fanout", case, m, metrics)])
}

/// `queues` queues, each with its own consumer, spread over `connections`
/// connections; the publisher sends to each in turn.
///
/// # Errors
///
/// A connection or protocol failure.
pub async fn many_queues(
    ctx: &Ctx,
    queues: usize,
    connections: usize,
    size: usize,
    tuning: &Tuning,
) -> anyhow::Result<Vec<Record>> {
    let case = format!("{queues}q-{connections}c");
    let m = with_declared(ctx, &format!("many-queues {case}"), async |ch, declared| {
        let mut targets = Vec::new();
        let mut specs = Vec::new();
        for i in 0..queues {
            let q = declare_queue(ch, declared, ctx.name(&format!("mq-{i}")), false).await?;
            targets.push(Target {
                exchange: String::new(),
                routing_key: q.clone(),
            });
            specs.push(QueueSpec {
                name: q,
                streams: vec![u32::try_from(i).context("too many queues")?],
            });
        }
        let mut flow = tuning.flow(size, targets, specs);
        flow.consumer_connections = connections;
        Ok(flow)
    })
    .await?;
    let metrics = vec![
        Metric::higher("delivered_per_s", m.delivered_per_s, "msg/s"),
        Metric::higher("published_per_s", m.published_per_s, "msg/s"),
    ];
    Ok(vec![record(ctx, "many-queues", case, m, metrics)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_names() {
        assert_eq!(size_name(16), "16B");
        assert_eq!(size_name(1024), "1KiB");
        assert_eq!(size_name(1500), "1500B");
    }
}
