//! The scenarios, one module each, and what they share: the run context
//! ([`Ctx`]: broker URI, unique names, timing) and clean-up of what a run
//! declared.

pub mod backlog;
pub mod connections;
pub mod flow;
pub mod latency;
pub mod throughput;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use lockgate_client::{Connection, ConnectionOptions, ExchangeDeleteOptions, QueueDeleteOptions};

use crate::procfs::{self, Usage};

/// Settings every scenario shares.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Broker URI.
    pub uri: String,
    /// Names the broker in records.
    pub label: String,
    /// Broker process to sample.
    pub broker_pid: Option<u32>,
    /// Unmeasured time before each steady window.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// How long to wait for the last deliveries once nothing arrives.
    pub drain_timeout: Duration,
    /// A fixed message count per throughput case instead of timed windows.
    pub messages: Option<u64>,
    /// Unique per run: prefixes every name and seeds every checksum.
    run_id: String,
    seed: u32,
    origin: Instant,
}

impl Ctx {
    /// A context with a fresh run id.
    pub fn new(
        uri: String,
        label: String,
        broker_pid: Option<u32>,
        warmup: Duration,
        duration: Duration,
        drain_timeout: Duration,
    ) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // Truncation intended: a short, practically unique tag.
        let seed = (nanos as u32) ^ std::process::id().rotate_left(16);
        Self {
            uri,
            label,
            broker_pid,
            warmup,
            duration,
            drain_timeout,
            messages: None,
            run_id: format!("{seed:08x}"),
            seed,
            origin: Instant::now(),
        }
    }

    /// Publishes exactly `messages` per throughput case (when `Some`)
    /// instead of running timed windows.
    #[must_use]
    pub fn with_messages(mut self, messages: Option<u64>) -> Self {
        self.messages = messages;
        self
    }

    /// A broker-side name unique to this run: `lgb-<run>-<what>`.
    pub fn name(&self, what: &str) -> String {
        format!("lgb-{}-{what}", self.run_id)
    }

    /// The checksum seed of this run's messages.
    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// Nanoseconds since the run started: the clock of body timestamps
    /// (publisher and consumer share this process, so one monotonic clock).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The same clock at a given instant.
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Connection options from the URI, with a connection name.
    ///
    /// # Errors
    ///
    /// When the URI is invalid.
    pub fn options(&self, role: &str) -> anyhow::Result<ConnectionOptions> {
        let mut options = ConnectionOptions::from_uri(&self.uri)
            .with_context(|| format!("invalid --uri {}", self.uri))?;
        options.connection_name = Some(format!("lockgate-bench {} {role}", self.run_id));
        Ok(options)
    }

    /// Opens a connection for `role`.
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached or refuses the connection.
    pub async fn connect(&self, role: &str) -> anyhow::Result<Connection> {
        Connection::connect_with(self.options(role)?)
            .await
            .with_context(|| format!("connecting to {} ({role})", self.uri))
    }

    /// Starts sampling the broker (when `--broker-pid` is given) and the
    /// bench itself.
    pub fn usage_windows(&self) -> UsageWindows {
        UsageWindows {
            broker: self
                .broker_pid
                .and_then(|pid| procfs::Window::start(Some(pid))),
            bench: procfs::Window::start(None),
        }
    }

    /// Sleeps for `total`, sampling `usage` for peaks meanwhile.
    pub async fn sleep_sampling(&self, total: Duration, usage: &mut UsageWindows) {
        let end = tokio::time::Instant::now() + total;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                return;
            }
            tokio::time::sleep((end - now).min(Duration::from_millis(250))).await;
            usage.poll();
        }
    }
}

/// Broker and bench resource sampling over one window.
pub struct UsageWindows {
    broker: Option<procfs::Window>,
    bench: Option<procfs::Window>,
}

impl UsageWindows {
    /// Samples for peak RSS.
    pub fn poll(&mut self) {
        if let Some(w) = &mut self.broker {
            w.poll();
        }
    }

    /// Ends the window: (broker, bench). A second call returns nothing.
    pub fn finish(&mut self) -> (Option<Usage>, Option<Usage>) {
        (
            self.broker.take().and_then(procfs::Window::finish),
            self.bench.take().and_then(procfs::Window::finish),
        )
    }
}

/// What a scenario declared, deleted at the end whatever happened.
#[derive(Debug, Default)]
pub struct Declared {
    /// Queue names.
    pub queues: Vec<String>,
    /// Exchange names.
    pub exchanges: Vec<String>,
}

impl Declared {
    /// Deletes every queue and exchange on a fresh connection. Failures are
    /// reported on stderr and do not change the run's verdict.
    pub async fn clean_up(&self, ctx: &Ctx) {
        if self.queues.is_empty() && self.exchanges.is_empty() {
            return;
        }
        if let Err(e) = self.try_clean_up(ctx).await {
            eprintln!("lockgate-bench: clean-up incomplete: {e:#}");
        }
    }

    async fn try_clean_up(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let conn = ctx.connect("clean-up").await?;
        let ch = conn.open_channel().await?;
        for q in &self.queues {
            ch.queue_delete(q, QueueDeleteOptions::default())
                .await
                .with_context(|| format!("deleting queue {q}"))?;
        }
        for x in &self.exchanges {
            ch.exchange_delete(x, ExchangeDeleteOptions::default())
                .await
                .with_context(|| format!("deleting exchange {x}"))?;
        }
        conn.close().await?;
        Ok(())
    }
}
