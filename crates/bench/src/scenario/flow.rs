//! The engine under the message scenarios: one publisher round-robin over
//! some targets, one consumer per queue, counters, phases, backpressure and
//! verification.
//!
//! Backpressure: the publisher stays at most `max_ahead` messages (times the
//! copies each one makes) ahead of what the consumers have received. That
//! keeps a transient run measuring the broker's steady throughput rather
//! than how fast it can fill memory; the client's bounded writer queue and
//! the broker's own flow control (RabbitMQ's `connection.blocked`, lockgate's
//! memory watermark) still apply on top. Consumers ack with `multiple` every
//! `ack_every` deliveries and wake the publisher at each ack; the publisher
//! also re-checks every millisecond, so a queue that receives fewer than
//! `ack_every` messages cannot stall it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lockgate_client::{
    BasicProperties, Channel, Connection, ConsumeOptions, Consumer, Delivery, Error, FieldTable,
    PublishOptions, QosOptions,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::latency::Recorder;
use crate::payload::Codec;
use crate::report::{get, Counters, Progress};
use crate::verify::{QueueCheck, Verification};

/// Where the publisher sends stream `i` (its index in [`Flow::targets`]).
#[derive(Clone, Debug)]
pub struct Target {
    /// Exchange ("" = default).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
}

/// A consumed queue and the streams that must reach it.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Stream ids routed to it.
    pub streams: Vec<u32>,
}

/// How a scenario moves messages.
#[derive(Clone, Debug)]
pub struct Flow {
    /// Body size in bytes.
    pub size: usize,
    /// Publisher targets, used round-robin.
    pub targets: Vec<Target>,
    /// Queues with one consumer each.
    pub queues: Vec<QueueSpec>,
    /// delivery_mode 2.
    pub persistent: bool,
    /// Publisher confirms with at most this many in flight.
    pub confirm_window: Option<usize>,
    /// Fixed publish rate (msg/s); `None` = as fast as backpressure allows.
    pub rate: Option<u64>,
    /// Consumer prefetch (per consumer).
    pub prefetch: u16,
    /// Ack with `multiple` every this many deliveries.
    pub ack_every: u64,
    /// Publisher lead over consumers, in messages.
    pub max_ahead: u64,
    /// Connections the consumers are spread over.
    pub consumer_connections: usize,
    /// Record delivery latency during the steady window.
    pub record_latency: bool,
}

impl Flow {
    /// Deliveries one publish makes on average (fan-out copies).
    fn copies(&self) -> u64 {
        let routes: usize = self.queues.iter().map(|q| q.streams.len()).sum();
        (routes / self.targets.len().max(1)).max(1) as u64
    }
}

const WARMUP: u8 = 0;
const STEADY: u8 = 1;
const STOP: u8 = 2;

/// State shared by the tasks of one flow.
pub struct Shared {
    /// Message counters.
    pub counters: Arc<Counters>,
    phase: AtomicU8,
    acked: Notify,
    stop_consumers: CancellationToken,
}

impl Shared {
    /// Fresh counters, in the warm-up phase.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            counters: Arc::default(),
            phase: AtomicU8::new(WARMUP),
            acked: Notify::new(),
            stop_consumers: CancellationToken::new(),
        })
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    /// Starts the measured window (latency is recorded from now on).
    pub fn begin_steady(&self) {
        self.phase.store(STEADY, Ordering::Relaxed);
    }

    /// Tells the publisher to stop.
    pub fn stop_publishing(&self) {
        self.phase.store(STOP, Ordering::Relaxed);
        self.acked.notify_waiters();
    }
}

/// What one consumer found.
pub struct ConsumerOutcome {
    check: QueueCheck,
    latency: Recorder,
}

/// What the publisher sent.
pub struct PublisherOutcome {
    /// Messages published per stream.
    pub published: Vec<u64>,
    /// Messages the broker nacked.
    pub nacked: u64,
}

/// The consumer side of a flow: connections and tasks.
pub struct Consumers {
    conns: Vec<Connection>,
    tasks: Vec<JoinHandle<anyhow::Result<ConsumerOutcome>>>,
}

/// Opens the consumer connections and starts one consumer per queue.
///
/// # Errors
///
/// When a connection, channel or `basic.consume` fails.
pub async fn start_consumers(
    ctx: &Ctx,
    flow: &Flow,
    shared: &Arc<Shared>,
) -> anyhow::Result<Consumers> {
    let mut conns = Vec::new();
    for i in 0..flow.consumer_connections.clamp(1, flow.queues.len().max(1)) {
        conns.push(ctx.connect(&format!("consumer-{i}")).await?);
    }
    let codec = Codec::new(ctx.seed(), flow.size);
    let mut tasks = Vec::new();
    for (i, q) in flow.queues.iter().enumerate() {
        let ch = conns[i % conns.len()].open_channel().await?;
        ch.basic_qos(flow.prefetch, QosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                &q.name,
                "",
                ConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {}", q.name))?;
        let check = QueueCheck::new(codec.clone(), q.streams.clone());
        tasks.push(tokio::spawn(consume(
            ctx.clone(),
            consumer,
            check,
            Arc::clone(shared),
            flow.ack_every.max(1),
            flow.record_latency,
        )));
    }
    Ok(Consumers { conns, tasks })
}

async fn consume(
    ctx: Ctx,
    mut consumer: Consumer,
    mut check: QueueCheck,
    shared: Arc<Shared>,
    ack_every: u64,
    record_latency: bool,
) -> anyhow::Result<ConsumerOutcome> {
    let mut latency = Recorder::default();
    let mut unacked: Option<Delivery> = None;
    let mut pending = 0u64;
    // Created once: a fresh `cancelled()` future per delivery would register
    // with (and leave) the token's waiter list every time.
    let stop = shared.stop_consumers.cancelled();
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut stop => break,
            next = consumer.next() => next,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery.context("consumer stream")?;
        let decoded = check.check(&delivery.body, delivery.redelivered);
        if record_latency && shared.phase() == STEADY {
            if let Some(sent) = decoded.and_then(|d| d.sent_ns) {
                latency.record_us(ctx.now_ns().saturating_sub(sent) / 1000);
            }
        }
        shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
        pending += 1;
        if pending >= ack_every {
            delivery.ack_multiple().await.context("ack")?;
            pending = 0;
            unacked = None;
            shared.acked.notify_one();
        } else {
            unacked = Some(delivery);
        }
    }
    if let Some(d) = unacked {
        // Best effort: the connection may already be closing.
        let _ = d.ack_multiple().await;
    }
    Ok(ConsumerOutcome { check, latency })
}

impl Consumers {
    /// Stops every consumer, closes the connections and returns the
    /// verification (given what was published) and merged latencies.
    ///
    /// # Errors
    ///
    /// The first consumer failure (a closed channel or connection).
    pub async fn finish(
        self,
        shared: &Shared,
        publisher: &PublisherOutcome,
    ) -> anyhow::Result<(Verification, Recorder)> {
        shared.stop_consumers.cancel();
        let mut verification = Verification {
            nacked: publisher.nacked,
            ..Verification::default()
        };
        let mut latency = Recorder::default();
        let mut first_error = None;
        for task in self.tasks {
            match task.await.context("consumer task panicked")? {
                Ok(outcome) => {
                    outcome
                        .check
                        .finish(&publisher.published, &mut verification);
                    latency.merge(&outcome.latency);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for conn in self.conns {
            let _ = conn.close().await;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((verification, latency)),
        }
    }
}

/// Opens the publisher connection and starts publishing; stops after
/// `limit` messages or when [`Shared::stop_publishing`] is called.
///
/// # Errors
///
/// When the connection or channel cannot be opened.
pub async fn start_publisher(
    ctx: &Ctx,
    flow: &Flow,
    shared: &Arc<Shared>,
    limit: Option<u64>,
) -> anyhow::Result<(Connection, JoinHandle<anyhow::Result<PublisherOutcome>>)> {
    let conn = ctx.connect("publisher").await?;
    let ch = conn.open_channel().await?;
    if flow.confirm_window.is_some() {
        ch.confirm_select().await?;
    }
    let task = tokio::spawn(publish(
        ctx.clone(),
        ch,
        flow.clone(),
        Arc::clone(shared),
        limit,
    ));
    Ok((conn, task))
}

async fn publish(
    ctx: Ctx,
    ch: Channel,
    flow: Flow,
    shared: Arc<Shared>,
    limit: Option<u64>,
) -> anyhow::Result<PublisherOutcome> {
    let codec = Codec::new(ctx.seed(), flow.size);
    let properties = BasicProperties {
        delivery_mode: Some(if flow.persistent { 2 } else { 1 }),
        ..BasicProperties::default()
    };
    let copies = flow.copies();
    let max_ahead = flow.max_ahead.saturating_mul(copies);
    let counters = Arc::clone(&shared.counters);
    let mut outcome = PublisherOutcome {
        published: vec![0; flow.targets.len()],
        nacked: 0,
    };
    let mut in_flight = FuturesUnordered::new();
    let window = flow.confirm_window.unwrap_or(0);
    let started = Instant::now();
    let mut n = 0u64;
    while shared.phase() != STOP && limit.is_none_or(|l| n < l) {
        let due = flow
            .rate
            .map(|rate| started + Duration::from_secs_f64(n as f64 / rate as f64));
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        while (get(&counters.published) * copies).saturating_sub(get(&counters.delivered))
            >= max_ahead
            && shared.phase() != STOP
        {
            let _ = tokio::time::timeout(Duration::from_millis(1), shared.acked.notified()).await;
        }
        let sent_ns = ctx.ns_at(send_stamp(due, Instant::now()));
        let stream = (n % flow.targets.len() as u64) as usize;
        let target = &flow.targets[stream];
        let seq = outcome.published[stream];
        let body: Bytes = codec.encode(stream as u32, seq, sent_ns);
        let confirmation = ch
            .basic_publish(
                &target.exchange,
                &target.routing_key,
                PublishOptions::default(),
                properties.clone(),
                body,
            )
            .await
            .context("basic.publish")?;
        outcome.published[stream] += 1;
        counters.published.fetch_add(1, Ordering::Relaxed);
        n += 1;
        if window > 0 {
            in_flight.push(confirmation);
            while in_flight.len() >= window {
                settle(in_flight.next().await, &counters, &mut outcome)?;
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        settle(Some(result), &counters, &mut outcome)?;
    }
    Ok(outcome)
}

/// How far behind schedule the paced publisher may be before the intended
/// send time is used instead of the actual one. The tokio timer wakes up to
/// a millisecond late and a paced publisher sends in small bursts: that
/// lateness is the bench's, not the broker's.
const SCHEDULE_SLACK: Duration = Duration::from_millis(2);

/// The time stamped into a body sent `now` that was `due` (paced runs).
/// Within [`SCHEDULE_SLACK`] of schedule it is the actual send time; further
/// behind (the broker or the window held the publisher back) it is the
/// intended time, so that the stall counts as latency for every message it
/// delayed (no coordinated omission).
fn send_stamp(due: Option<Instant>, now: Instant) -> Instant {
    match due {
        Some(due) if now.saturating_duration_since(due) > SCHEDULE_SLACK => due,
        _ => now,
    }
}

fn settle(
    result: Option<lockgate_client::Result<()>>,
    counters: &Counters,
    outcome: &mut PublisherOutcome,
) -> anyhow::Result<()> {
    match result {
        Some(Ok(())) => {
            counters.confirmed.fetch_add(1, Ordering::Relaxed);
        }
        Some(Err(Error::Nacked)) => outcome.nacked += 1,
        Some(Err(e)) => return Err(e).context("publisher confirm"),
        None => {}
    }
    Ok(())
}

/// Waits until consumers received `expected` deliveries, or nothing arrived
/// for `timeout`. Returns when the last delivery arrived.
pub async fn wait_drained(shared: &Shared, expected: u64, timeout: Duration) -> Instant {
    let mut last = get(&shared.counters.delivered);
    let mut last_at = Instant::now();
    while last < expected && last_at.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = get(&shared.counters.delivered);
        if now != last {
            last = now;
            last_at = Instant::now();
        }
    }
    last_at
}

/// Deliveries `published` (per stream) should produce over `queues`.
pub fn expected_deliveries(queues: &[QueueSpec], published: &[u64]) -> u64 {
    queues
        .iter()
        .flat_map(|q| &q.streams)
        .filter_map(|&s| published.get(s as usize))
        .sum()
}

/// Figures from a timed run.
pub struct Measured {
    /// Publishes per second in the steady window.
    pub published_per_s: f64,
    /// Confirms per second in the steady window.
    pub confirmed_per_s: f64,
    /// Deliveries per second in the steady window.
    pub delivered_per_s: f64,
    /// Every message accounted for.
    pub verification: Verification,
    /// Latency during the steady window.
    pub latency: Recorder,
    /// Broker resource use during the steady window.
    pub broker: Option<crate::procfs::Usage>,
    /// Bench resource use during the steady window.
    pub bench: Option<crate::procfs::Usage>,
}

/// Runs a flow for warm-up + steady window (or, with [`Ctx::messages`], for
/// exactly that many messages), then drains and verifies.
///
/// # Errors
///
/// When a connection fails mid-run.
pub async fn run_timed(ctx: &Ctx, what: &str, flow: &Flow) -> anyhow::Result<Measured> {
    let shared = Shared::new();
    let _progress = Progress::start(
        format!("{} {what}", ctx.label),
        Arc::clone(&shared.counters),
    );
    let consumers = start_consumers(ctx, flow, &shared).await?;
    let (pub_conn, mut publisher) = start_publisher(ctx, flow, &shared, ctx.messages).await?;

    let c = &shared.counters;
    let counts = || (get(&c.published), get(&c.confirmed), get(&c.delivered));
    let mut published_at = None;
    if ctx.messages.is_none() {
        tokio::time::sleep(ctx.warmup).await;
    }
    let before = counts();
    let mut usage = ctx.usage_windows();
    let started = Instant::now();
    shared.begin_steady();
    let mut window_usage = None;
    let published = match ctx.messages {
        None => {
            ctx.sleep_sampling(ctx.duration, &mut usage).await;
            window_usage = Some(usage.finish());
            shared.stop_publishing();
            None
        }
        Some(_) => {
            let done = loop {
                tokio::select! {
                    done = &mut publisher => break done,
                    () = tokio::time::sleep(Duration::from_millis(250)) => usage.poll(),
                }
            };
            published_at = Some(started.elapsed());
            Some(done)
        }
    };
    let mut after = counts();
    let mut secs = started.elapsed().as_secs_f64();

    let published = match published {
        Some(done) => done,
        None => publisher.await,
    }
    .context("publisher task panicked")?;
    let _ = pub_conn.close().await;
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            // Stop and close the consumers too; the publisher's error is
            // the one worth reporting.
            let none = PublisherOutcome {
                published: Vec::new(),
                nacked: 0,
            };
            let _ = consumers.finish(&shared, &none).await;
            return Err(e);
        }
    };
    let expected = expected_deliveries(&flow.queues, &published.published);
    let drained = wait_drained(&shared, expected, ctx.drain_timeout).await;
    let mut publish_secs = secs;
    if let Some(at) = published_at {
        // A counted run is measured from its first message to its last
        // delivery; publishing, to the publisher's end.
        after = counts();
        secs = drained.duration_since(started).as_secs_f64();
        publish_secs = at.as_secs_f64();
    }
    let (broker, bench) = window_usage.unwrap_or_else(|| usage.finish());
    let (verification, latency) = consumers.finish(&shared, &published).await?;
    Ok(Measured {
        published_per_s: (after.0 - before.0) as f64 / publish_secs,
        confirmed_per_s: (after.1 - before.1) as f64 / secs,
        delivered_per_s: (after.2 - before.2) as f64 / secs,
        verification,
        latency,
        broker,
        bench,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_actual_time_within_slack_and_intended_time_beyond() {
        let due = Instant::now();
        let slightly_late = due + Duration::from_millis(1);
        let stalled = due + Duration::from_millis(50);
        assert_eq!(send_stamp(Some(due), slightly_late), slightly_late);
        assert_eq!(send_stamp(Some(due), stalled), due);
        assert_eq!(send_stamp(None, stalled), stalled);
    }

    #[test]
    fn copies_count_fan_out_routes_per_target() {
        let spec = |streams: Vec<u32>| QueueSpec {
            name: String::new(),
            streams,
        };
        let target = || Target {
            exchange: String::new(),
            routing_key: String::new(),
        };
        let mut flow = Flow {
            size: 16,
            targets: vec![target()],
            queues: (0..4).map(|_| spec(vec![0])).collect(),
            persistent: false,
            confirm_window: None,
            rate: None,
            prefetch: 1000,
            ack_every: 100,
            max_ahead: 10,
            consumer_connections: 1,
            record_latency: false,
        };
        assert_eq!(flow.copies(), 4);
        flow.targets = (0..3).map(|_| target()).collect();
        flow.queues = (0..3).map(|i| spec(vec![i])).collect();
        assert_eq!(flow.copies(), 1);
        assert_eq!(expected_deliveries(&flow.queues, &[5, 6, 7]), 18);
    }
}
