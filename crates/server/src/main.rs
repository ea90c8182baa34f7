//! `lockgate`: an AMQP 0-9-1 message broker that speaks the protocol as RabbitMQ does.
//!
//! Layout, one concept per file:
//! - [`cli`] and [`config`]: flags and the TOML config (the reference is `config/lockgate.toml`,
//!   docs/configuration.md); [`apply`] applies the file's vhosts, users, permissions, policies
//!   and topology at start and on SIGHUP (and plans it for `--check-config`); [`stored`] keeps
//!   the users, permissions and policies created through the management API in the store;
//! - [`logging`]: tracing setup (text or JSON on stderr, one span per connection and channel);
//! - [`server`]: the listener, one task per connection, the shutdown sequence;
//! - [`connection`]: the read loop of one connection (frame dispatch, heartbeats, memory-alarm
//!   blocking, close handshakes); `connection/handshake.rs` the protocol header and
//!   start/tune/open, using [`auth`] (PLAIN, AMQPLAIN, users) and [`tune`] (negotiation);
//! - [`channel`]: one AMQP channel, turning methods into broker calls (confirms, transactions);
//!   `channel/content.rs` assembles published content, `channel/sink.rs` is the broker's way
//!   back to the client;
//! - [`writer`]: the task that owns the socket's write half and batches frames into one write;
//! - [`disk`]: the disk alarm (free space under `disk.free_limit` blocks publishers);
//! - [`store_watch`]: logs when store writes or spill calls have waited for 30 s (disk or
//!   engine stuck);
//! - [`heap`]: gives the heap glibc keeps after a burst back to the OS (`malloc_trim`);
//! - [`permissions`] (configure/write/read patterns per user and vhost) and [`limits`]
//!   (connections and queues per vhost and user), checked at connection.open and before
//!   every channel method;
//! - [`tls`]: AMQPS with rustls, client certificates, reload on SIGHUP;
//! - [`metrics`]: Prometheus `/metrics` with RabbitMQ's metric names;
//! - [`management`]: the RabbitMQ-compatible management HTTP API and dashboard
//!   (`[management] listen`, default 127.0.0.1:15672);
//! - [`error`]: protocol errors as values with reply codes and their scope.
//!
//! Where lockgate follows RabbitMQ rather than the letter of the spec, the code says so.

mod apply;
mod auth;
mod channel;
mod cli;
mod config;
mod connection;
mod disk;
mod error;
mod heap;
mod limits;
mod logging;
mod management;
mod metrics;
mod permissions;
mod server;
mod store_watch;
mod stored;
mod tls;
mod tune;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lockgate_store::{Store, StoreConfig};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::connection::ServerContext;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Some(command) = &cli.command {
        return command.run();
    }
    if let Some(file) = &cli.check_config {
        return apply::check_config(file, cli.config.as_deref());
    }
    let result = cli.load_config().and_then(|config| {
        // Dropped last in here: the lines still queued are written before the process ends.
        let _log = logging::init(&config.log)?;
        if !heap::configure() {
            warn!("glibc refused the fastbin size: frees from other threads take its arena lock");
        }
        let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        let result = runtime.block_on(run(config, cli.config.clone(), cli.overrides()));
        stop_runtime(runtime, BLOCKING_WAIT);
        result
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockgate: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The store's page cache: a quarter of the memory budget, at least 8 MiB (the store uses at
/// most 32 MiB of it). It is part of the broker's fixed overhead beyond the budget for queued
/// bodies (docs/durability.md).
fn store_cache_bytes(memory_budget: u64) -> u64 {
    (memory_budget / 4).max(8 << 20)
}

async fn run(
    config: Config,
    path: Option<std::path::PathBuf>,
    overrides: cli::Overrides,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let total_memory = config::total_memory();
    // The store is opened and recovered before listening: clients never see a half-rebuilt
    // broker. Errors name the file and say what to do; nothing is deleted or recreated.
    let store_dir = config.data_dir.join("store");
    let store_config = StoreConfig {
        cache_capacity: store_cache_bytes(config.high_watermark_bytes(total_memory)),
        ..StoreConfig::default()
    };
    let (store, recovery) = Store::open_async(store_dir.clone(), store_config)
        .await
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let fresh = recovery.definitions.is_empty() && recovery.queues.is_empty();
    if recovery.clean_shutdown || fresh {
        info!(path = %store_dir.display(), "store opened");
    } else {
        warn!(path = %store_dir.display(), "store was not closed cleanly: recovering after a crash");
    }
    if recovery.orphans_removed > 0 || recovery.spilled_discarded > 0 {
        info!(
            orphans_removed = recovery.orphans_removed,
            spilled_discarded = recovery.spilled_discarded,
            "store cleanup"
        );
    }
    let broker = lockgate_broker::Broker::with_store(
        lockgate_broker::BrokerConfig {
            vhosts: config.vhosts.iter().map(|v| v.name.clone()).collect(),
            memory_high_watermark: config.high_watermark_bytes(total_memory),
            max_message_size: config.limits.max_message_size,
            consumer_timeout: config.consumer_timeout,
        },
        store.clone(),
    );
    store_watch::spawn(store.clone());
    let started = std::time::Instant::now();
    // Users, permissions and policies created through the API (the broker skips them).
    let stored_access = stored::load(&recovery.definitions);
    let recovering = Arc::clone(&broker);
    tokio::task::spawn_blocking(move || recovering.recover(&recovery))
        .await
        .context("recovering from the store")?
        .context("recovering from the store")?;
    info!(took_ms = started.elapsed().as_millis(), "recovery done");
    // Spilling long backlogs to disk and paging them (and recovered disk tails) back in.
    broker.spawn_spill_task();
    let (disk_alarm_tx, disk_alarm) = tokio::sync::watch::channel(false);
    let listener = server::bind(config.listen).await?;
    let addr = listener
        .local_addr()
        .context("reading the listener's local address")?;
    // Signal handlers exist before `listening` is logged: a harness may signal right after it.
    let signals = Signals::install()?;
    // SIGHUP is caught from here on (its default action would end the process); the one
    // handler reloading every TLS certificate starts once the listeners have loaded theirs.
    let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
    let ctx = Arc::new(ServerContext::new(
        Arc::clone(&config),
        Arc::clone(&broker),
        shutdown,
        disk_alarm,
    ));
    disk::spawn_monitor(
        Arc::clone(&ctx.disk),
        config.disk_free_limit_bytes(total_memory),
        disk_alarm_tx,
    );
    // Freed heap goes back to the OS after bursts (connections closed, backlogs drained).
    heap::spawn(Arc::clone(&ctx));
    // Users, permissions and policies created through the API, then the config file over
    // them; before any client is accepted.
    ctx.permissions.set_stored(stored_access);
    apply::at_start(&config, path.as_deref(), &broker, &ctx.permissions).await?;
    // AMQPS and metrics are up before `listening` is logged, so a harness can use them at once.
    let amqps = tls::start(&ctx).await?;
    if let Err(e) = metrics::start(&ctx).await {
        // Not fatal: the broker is useful without its metrics (e.g. the port is taken).
        error!(error = format!("{e:#}"), "metrics endpoint not started");
    }
    let management = management::start(Arc::clone(&ctx), addr).await;
    let amqps_acceptor = amqps.as_ref().map(|amqps| Arc::clone(&amqps.acceptor));
    apply::reload_on_sighup(
        hangup,
        path,
        Config::clone(&config),
        overrides,
        Arc::clone(&ctx),
        sighup_certificates(amqps_acceptor, management),
    );
    info!(%addr, "listening");

    server::run(ctx, listener).await;
    if let Some(amqps) = amqps {
        // It stops accepting at the same signal and waits, bounded, for its connections.
        let _ = amqps.task.await;
    }
    // Every connection is gone: write what is queued, flush, mark the shutdown clean.
    close_store(&store, STORE_CLOSE_WAIT).await;
    info!("stopped");
    Ok(())
}

/// How long shutdown waits for the store to write what is queued, flush and close.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(30);

/// How long the runtime waits at exit for blocking calls still running.
const BLOCKING_WAIT: Duration = Duration::from_secs(5);

/// Closes the store, waiting at most `wait`; false when it did not finish by then. On a disk
/// that stopped answering it never does: the broker then exits without the clean-shutdown
/// mark, and the next start recovers as after a crash, with nothing confirmed lost (confirms
/// follow the flush).
async fn close_store(store: &Store, wait: Duration) -> bool {
    match tokio::time::timeout(wait, store.close_async()).await {
        Ok(Ok(())) => info!("store closed"),
        Ok(Err(e)) => error!(error = %e, "closing the store failed"),
        Err(_) => {
            error!(
                waited_s = wait.as_secs(),
                oldest_write_s = store.oldest_write_wait().map(|d| d.as_secs()),
                oldest_spill_call_s = store.oldest_spill_wait().map(|d| d.as_secs()),
                "closing the store did not finish (a disk that stopped answering?): exiting \
                 without it; the next start recovers as after a crash"
            );
            return false;
        }
    }
    true
}

/// Shuts the runtime down, waiting at most `wait` for its blocking threads; true when some
/// were still running then and were abandoned. Calls to a volume that stopped answering (a
/// store call, the disk alarm's or the metrics' free-space check) never return, and dropping
/// the runtime would wait for them forever.
fn stop_runtime(runtime: tokio::runtime::Runtime, wait: Duration) -> bool {
    let started = std::time::Instant::now();
    runtime.shutdown_timeout(wait);
    let abandoned = started.elapsed() >= wait;
    if abandoned {
        warn!(
            waited_s = wait.as_secs(),
            "blocking calls still running at exit were abandoned (calls to a disk that stopped \
             answering: see the warnings above)"
        );
    }
    abandoned
}

/// What SIGHUP reloads: the certificate of each TLS listener the broker started, named for
/// the log (generic over the acceptor type only so the choice is testable without files).
fn sighup_certificates<A>(amqps: Option<A>, management: Option<A>) -> Vec<(&'static str, A)> {
    let amqps = amqps.map(|acceptor| ("amqps", acceptor));
    amqps
        .into_iter()
        .chain(management.map(|acceptor| ("management", acceptor)))
        .collect()
}

/// How soon after the first SIGINT or SIGTERM another one still counts as the same request.
const SAME_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// SIGINT and SIGTERM, registered up front.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Cancels `shutdown` on the first SIGINT or SIGTERM. A second one ends the process at once
    /// with status 1, for a shutdown that waits on what does not come (clients that do not
    /// close, a store that does not answer): the store then recovers at the next start as
    /// after a crash, with nothing confirmed lost. A signal within [`SAME_REQUEST`] of the
    /// first is the same request told twice (Ctrl-C in a script reaches the broker and the
    /// script, whose trap passes it on), not an operator insisting.
    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        let first = self.next().await;
        let requested = std::time::Instant::now();
        info!(signal = first, "shutdown requested");
        shutdown.cancel();
        loop {
            let again = self.next().await;
            if requested.elapsed() >= SAME_REQUEST {
                warn!(
                    signal = again,
                    "second signal: exiting without waiting for the shutdown to finish"
                );
                logging::flush();
                std::process::exit(1);
            }
            info!(
                signal = again,
                "signal right after the first: the same shutdown request"
            );
        }
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use lockgate_store::{failpoints, StoreConfig};

    use super::*;

    /// A close held by a writer that does not finish (a hung disk) is given up after the
    /// wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_close_that_does_not_finish_is_given_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        failpoints::arm(failpoints::STALL, dir.path());
        // A barrier wakes the writer, which then stalls before taking anything more.
        drop(store.sync());
        while !failpoints::held(failpoints::STALL, dir.path()) {
            tokio::task::yield_now().await;
        }
        let closed = tokio::time::timeout(
            Duration::from_secs(30),
            close_store(&store, Duration::from_millis(100)),
        )
        .await;
        failpoints::disarm(failpoints::STALL, dir.path());
        assert_eq!(closed, Ok(false), "the close was waited for");
    }

    /// A blocking call that never returns is abandoned when the runtime stops.
    #[test]
    fn stopping_the_runtime_abandons_a_hung_blocking_call() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (release, hung) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel();
        runtime.spawn_blocking(move || {
            started.send(()).expect("test");
            // Returns when the test ends (`release` dropped).
            let _ = hung.recv();
        });
        running.recv().expect("the blocking call runs");
        let (done, stopped) = mpsc::channel();
        std::thread::spawn(move || done.send(stop_runtime(runtime, Duration::from_millis(100))));
        let abandoned = stopped.recv_timeout(Duration::from_secs(30));
        drop(release);
        assert_eq!(abandoned, Ok(true), "the runtime waited for the hung call");
    }

    #[test]
    fn one_sighup_handler_reloads_every_tls_listener() {
        assert!(sighup_certificates::<u8>(None, None).is_empty());
        assert_eq!(sighup_certificates(Some(1), None), vec![("amqps", 1)]);
        assert_eq!(sighup_certificates(None, Some(2)), vec![("management", 2)]);
        assert_eq!(
            sighup_certificates(Some(1), Some(2)),
            vec![("amqps", 1), ("management", 2)]
        );
    }
}
