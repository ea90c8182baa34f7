//! The engine under the message scenarios: one publisher round-robin over
//! some targets, one consumer per queue, counters, phases, backpressure and
//! verification.
//!
//! Backpressure: the publisher stays at most `max_ahead` messages (times the
//! copies each one makes) ahead of what the consumers have received. That
//! keeps a transient run measuring the broker's steady throughput rather
//! than how fast it can fill memory; the client's bounded output buffer and
//! the broker's own flow control (RabbitMQ's `connection.blocked`, lockgate's
//! memory watermark) still apply on top. Consumers ack with `multiple` every
//! `ack_every` deliveries. Each consumer adds what it received to the shared
//! count whenever it has caught up with its stream (once per batch the
//! client hands it, not once per message). A publisher at its limit waits
//! until a quarter of its window has drained, and only the consumer whose
//! count gets there wakes it: one wake-up per quarter window rather than
//! one per ack, no polling, and no stall on a queue that receives fewer than
//! `ack_every` messages.
//!
//! Paced runs (a fixed `rate`) publish from a thread of their own, paced to
//! the microsecond (see `crate::pacing`), with the publisher connection on
//! that thread's own runtime; unpaced runs publish from a tokio task. Both
//! send through the same [`Publisher`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt};
use lockgate_client::{
    BasicProperties, Channel, Confirmation, Connection, ConsumeOptions, Consumer, Delivery, Error,
    FieldTable, PublishOptions, QosOptions,
};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::latency::{Recorder, Side, Trace};
use crate::pacing::Pacer;
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
    /// The delivered count the waiting publisher needs (`u64::MAX`: it is
    /// not waiting).
    wake_at: AtomicU64,
    /// Where the consumer that reaches `wake_at` wakes the publisher.
    progress: Notify,
    /// Set (before `consumers_cancelled`) when the consumers are told to
    /// stop: read for every delivery, without the token's lock.
    consumers_stopped: AtomicBool,
    /// Cancelled when the consumers are told to stop: wakes one waiting for
    /// a delivery.
    consumers_cancelled: CancellationToken,
}

impl Shared {
    /// Fresh counters, in the warm-up phase.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            counters: Arc::default(),
            phase: AtomicU8::new(WARMUP),
            wake_at: AtomicU64::new(u64::MAX),
            progress: Notify::new(),
            consumers_stopped: AtomicBool::new(false),
            consumers_cancelled: CancellationToken::new(),
        })
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    /// Starts the measured window (latency is recorded from now on).
    pub fn begin_steady(&self) {
        self.phase.store(STEADY, Ordering::Relaxed);
    }

    /// Adds `n` deliveries to the shared count; wakes the publisher if it
    /// waits for that many.
    fn count_delivered(&self, n: u64) {
        // SeqCst here and in `Publisher::hold_back` (store `wake_at`, then
        // load `delivered`): one of the two sides sees the other's write, so
        // the publisher is never left waiting for a count already reached.
        let total = self.counters.delivered.fetch_add(n, Ordering::SeqCst) + n;
        if total >= self.wake_at.load(Ordering::SeqCst) {
            self.progress.notify_one();
        }
    }

    /// Tells the consumers to stop.
    fn stop_consumers(&self) {
        self.consumers_stopped.store(true, Ordering::Relaxed);
        self.consumers_cancelled.cancel();
    }

    /// Tells the publisher to stop.
    pub fn stop_publishing(&self) {
        self.phase.store(STOP, Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    /// Waits until `target` messages were delivered or the publisher is told
    /// to stop.
    async fn delivered_or_stopped(&self, target: u64) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            // Registered before the checks: `stop_publishing`'s
            // `notify_waiters` wakes only registered waiters, so a stop after
            // the phase check is not missed; a consumer that reaches `target`
            // after the check wakes it too.
            notified.as_mut().enable();
            self.wake_at.store(target, Ordering::SeqCst);
            if self.counters.delivered.load(Ordering::SeqCst) >= target || self.phase() == STOP {
                break;
            }
            notified.await;
        }
        self.wake_at.store(u64::MAX, Ordering::SeqCst);
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
    /// Paced runs: how late each message left, against its schedule.
    pub send_lag: Option<Recorder>,
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
    // Off unless LOCKGATE_BENCH_LATENCY_DUMP is set (crate::latency::Trace).
    let mut trace = Trace::from_env(Side::Recv);
    let mut unacked: Option<Delivery> = None;
    let mut pending = 0u64;
    // Received but not yet added to the shared count, which is updated once
    // per batch: a shared counter written per message would bounce its cache
    // line between this core and the publisher's.
    let mut uncounted = 0u64;
    // Created once: a fresh `cancelled()` future per delivery would register
    // with (and leave) the token's waiter list every time.
    let stop = shared.consumers_cancelled.cancelled();
    tokio::pin!(stop);
    loop {
        if shared.consumers_stopped.load(Ordering::Relaxed) {
            break;
        }
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                // Caught up with what the client has received.
                shared.count_delivered(uncounted);
                uncounted = 0;
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    next = consumer.next() => next,
                }
            }
        };
        // Kept where the final ack finds it, without moving it again.
        let delivery = match next {
            Some(Ok(delivery)) => unacked.insert(delivery),
            Some(Err(e)) => return Err(e).context("consumer stream"),
            None => break,
        };
        let decoded = check.check(&delivery.body, delivery.redelivered);
        if record_latency && shared.phase() == STEADY {
            if let Some(sent) = decoded.and_then(|d| d.sent_ns) {
                let now = ctx.now_ns();
                latency.record_us(now.saturating_sub(sent) / 1000);
                trace.push(sent, now);
            }
        }
        uncounted += 1;
        pending += 1;
        if pending >= ack_every {
            delivery.ack_multiple().await.context("ack")?;
            pending = 0;
            unacked = None;
        }
    }
    shared.count_delivered(uncounted);
    trace.finish(ctx.now_ns());
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
        shared.stop_consumers();
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
/// `limit` messages or when [`Shared::stop_publishing`] is called. Paced
/// flows publish from a thread of their own (see `publish_paced`).
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
    let Some(rate) = flow.rate else {
        let (conn, ch) = open_publisher(ctx, flow).await?;
        let publisher = Publisher::new(ctx.clone(), ch, flow.clone(), Arc::clone(shared), limit);
        return Ok((conn, tokio::spawn(publish(publisher))));
    };
    let (opened, connection) = oneshot::channel();
    let (ctx, flow, shared) = (ctx.clone(), flow.clone(), Arc::clone(shared));
    let task = tokio::task::spawn_blocking(move || {
        // The thread's own runtime also runs the publisher connection's
        // tasks: a publish then reaches the socket on this thread, without
        // waking a worker of the main runtime for every message.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the paced publisher's runtime")?;
        runtime.block_on(async move {
            let (conn, ch) = match open_publisher(&ctx, &flow).await {
                Ok(open) => open,
                Err(e) => {
                    let _ = opened.send(Err(e));
                    anyhow::bail!("the publisher connection failed");
                }
            };
            let _ = opened.send(Ok(conn.clone()));
            let publisher = Publisher::new(ctx, ch, flow, shared, limit);
            let outcome = publish_paced(publisher, rate).await;
            // Closed here, while this runtime still runs its tasks.
            let _ = conn.close().await;
            outcome
        })
    });
    let conn = connection
        .await
        .context("the paced publisher's thread ended")??;
    Ok((conn, task))
}

async fn open_publisher(ctx: &Ctx, flow: &Flow) -> anyhow::Result<(Connection, Channel)> {
    let conn = ctx.connect("publisher").await?;
    let ch = conn.open_channel().await?;
    if flow.confirm_window.is_some() {
        ch.confirm_select().await?;
    }
    Ok((conn, ch))
}

/// The publishing side of a flow: what goes into each message and where,
/// backpressure, confirms, and the counts for verification.
struct Publisher {
    ctx: Ctx,
    ch: Channel,
    flow: Flow,
    shared: Arc<Shared>,
    limit: Option<u64>,
    codec: Codec,
    /// One body buffer, rewritten for every message.
    body: Vec<u8>,
    properties: BasicProperties,
    copies: u64,
    max_ahead: u64,
    window: usize,
    in_flight: FuturesUnordered<Confirmation>,
    outcome: PublisherOutcome,
    /// Messages published so far.
    n: u64,
    /// The target of the next message (`n` modulo the number of targets,
    /// without a division per message).
    stream: usize,
}

impl Publisher {
    fn new(ctx: Ctx, ch: Channel, flow: Flow, shared: Arc<Shared>, limit: Option<u64>) -> Self {
        let codec = Codec::new(ctx.seed(), flow.size);
        let copies = flow.copies();
        Self {
            body: codec.body(),
            codec,
            properties: BasicProperties {
                delivery_mode: Some(if flow.persistent { 2 } else { 1 }),
                ..BasicProperties::default()
            },
            copies,
            max_ahead: flow.max_ahead.saturating_mul(copies).max(1),
            window: flow.confirm_window.unwrap_or(0),
            in_flight: FuturesUnordered::new(),
            outcome: PublisherOutcome {
                published: vec![0; flow.targets.len()],
                nacked: 0,
                send_lag: None,
            },
            n: 0,
            stream: 0,
            ctx,
            ch,
            flow,
            shared,
            limit,
        }
    }

    /// Whether to publish another message.
    fn more(&self) -> bool {
        self.shared.phase() != STOP && self.limit.is_none_or(|l| self.n < l)
    }

    /// Waits while the publisher is `max_ahead` ahead of the consumers
    /// (then until a quarter of that window has drained); returns whether it
    /// had to.
    async fn hold_back(&self) -> bool {
        let shared = &*self.shared;
        let sent = self.n * self.copies;
        if sent.saturating_sub(get(&shared.counters.delivered)) < self.max_ahead {
            return false;
        }
        let resume_lead = self.max_ahead - (self.max_ahead / 4).max(1);
        shared.delivered_or_stopped(sent - resume_lead).await;
        true
    }

    /// Publishes the next message, stamped `sent_ns`.
    async fn send(&mut self, sent_ns: u64) -> anyhow::Result<()> {
        let stream = self.stream;
        let target = &self.flow.targets[stream];
        let seq = self.outcome.published[stream];
        self.codec
            .encode(stream as u32, seq, sent_ns, &mut self.body);
        let confirmation = self
            .ch
            .basic_publish(
                &target.exchange,
                &target.routing_key,
                PublishOptions::default(),
                &self.properties,
                &self.body[..],
            )
            .await
            .context("basic.publish")?;
        self.outcome.published[stream] += 1;
        self.n += 1;
        self.stream = if stream + 1 == self.flow.targets.len() {
            0
        } else {
            stream + 1
        };
        // Only this publisher writes it: a store, not a read-modify-write.
        self.shared
            .counters
            .published
            .store(self.n, Ordering::Relaxed);
        if self.window > 0 {
            self.in_flight.push(confirmation);
            while self.in_flight.len() >= self.window {
                settle(
                    self.in_flight.next().await,
                    &self.shared.counters,
                    &mut self.outcome,
                )?;
            }
        }
        Ok(())
    }

    /// Waits for the outstanding confirms.
    async fn finish(mut self) -> anyhow::Result<PublisherOutcome> {
        while let Some(result) = self.in_flight.next().await {
            settle(Some(result), &self.shared.counters, &mut self.outcome)?;
        }
        Ok(self.outcome)
    }
}

/// Publishes as fast as backpressure allows, stamping the actual send time.
async fn publish(mut p: Publisher) -> anyhow::Result<PublisherOutcome> {
    while p.more() {
        p.hold_back().await;
        if !p.more() {
            break;
        }
        // Bodies too small for a stamp need no clock read.
        let sent_ns = if p.codec.stamps() { p.ctx.now_ns() } else { 0 };
        p.send(sent_ns).await?;
    }
    p.finish().await
}

/// Publishes at `rate` msg/s on the calling thread, which it blocks while it
/// sleeps and spins between messages: run it on a thread (and runtime) of
/// its own.
async fn publish_paced(mut p: Publisher, rate: u64) -> anyhow::Result<PublisherOutcome> {
    let mut pacer = Pacer::start(rate);
    let mut stamps = Stamps::default();
    let mut trace = Trace::from_env(Side::Send);
    while p.more() {
        let due = pacer.due(p.n);
        if pacer.wait_until(due) {
            stamps.on_schedule();
        }
        if p.hold_back().await {
            stamps.held();
        }
        if !p.more() {
            break;
        }
        let now = Instant::now();
        pacer.record_lag(due, now);
        let sent_ns = p.ctx.ns_at(stamps.stamp(due, now));
        p.send(sent_ns).await?;
        trace.push(p.ctx.ns_at(due), sent_ns);
        if now.elapsed() > SCHEDULE_SLACK {
            // The publish waited for room in the client's output buffer.
            stamps.held();
        }
        // Let the writer task put it on the socket now, before sleeping.
        tokio::task::yield_now().await;
    }
    trace.finish(p.ctx.now_ns());
    let mut outcome = p.finish().await?;
    outcome.send_lag = Some(pacer.into_lag());
    Ok(outcome)
}

/// A publish that takes longer than this waited for room in the client's
/// output buffer (queueing a message takes microseconds).
const SCHEDULE_SLACK: Duration = Duration::from_millis(1);

/// Chooses the time stamped into paced messages (no coordinated omission).
///
/// A message carries its actual send time unless the broker has held the
/// publisher back (the `max_ahead` window, or a full client buffer) and it
/// has not caught up with its schedule since: then it carries its
/// *intended* send time, so that the stall counts as latency for every
/// message it delayed. The pacer's own wake-up error (a late OS wake-up, the
/// thread descheduled) is never counted: such a message is stamped when it
/// actually leaves, and the lateness is reported as the send lag.
#[derive(Debug, Default)]
struct Stamps {
    behind: bool,
}

impl Stamps {
    /// The pacer had to wait for the next message: back on schedule.
    fn on_schedule(&mut self) {
        self.behind = false;
    }

    /// The broker held the publisher back.
    fn held(&mut self) {
        self.behind = true;
    }

    /// The stamp of a message due at `due`, sent `now`.
    fn stamp(&self, due: Instant, now: Instant) -> Instant {
        if self.behind {
            due
        } else {
            now
        }
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
    /// Paced runs: how late messages left against their schedule (the
    /// bench's own timing error).
    pub send_lag: Option<Recorder>,
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
                send_lag: None,
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
        send_lag: published.send_lag,
        broker,
        bench,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_publisher_wakes_when_told_to_stop_without_deliveries() {
        let shared = Shared::new();
        let mut held = std::pin::pin!(shared.delivered_or_stopped(10));
        assert_eq!(held.as_mut().now_or_never(), None);
        shared.stop_publishing();
        assert_eq!(held.now_or_never(), Some(()), "stop missed");
    }

    #[test]
    fn a_held_publisher_wakes_once_the_consumers_reach_its_target() {
        let shared = Shared::new();
        let mut held = std::pin::pin!(shared.delivered_or_stopped(10));
        assert_eq!(held.as_mut().now_or_never(), None);
        shared.count_delivered(9);
        assert_eq!(held.as_mut().now_or_never(), None);
        shared.count_delivered(1);
        assert_eq!(held.now_or_never(), Some(()), "progress missed");
        assert_eq!(shared.wake_at.load(Ordering::SeqCst), u64::MAX);
    }

    #[test]
    fn a_publisher_stopped_before_it_waits_does_not_wait() {
        let shared = Shared::new();
        shared.stop_publishing();
        assert_eq!(shared.delivered_or_stopped(10).now_or_never(), Some(()));
    }

    #[test]
    fn stamps_actual_time_on_schedule_and_intended_time_while_held_back() {
        let due = Instant::now();
        let late_wake = due + Duration::from_micros(80);
        let stalled = due + Duration::from_millis(50);
        let mut stamps = Stamps::default();
        // The pacer woke late or the thread was descheduled: not counted.
        assert_eq!(stamps.stamp(due, late_wake), late_wake);
        assert_eq!(stamps.stamp(due, stalled), stalled);
        // Held back by the broker: counted until the publisher is on
        // schedule again.
        stamps.held();
        assert_eq!(stamps.stamp(due, stalled), due);
        assert_eq!(stamps.stamp(due, late_wake), due);
        stamps.on_schedule();
        assert_eq!(stamps.stamp(due, late_wake), late_wake);
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
