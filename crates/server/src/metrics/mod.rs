//! Prometheus metrics at `/metrics` (`[metrics] listen`, default 127.0.0.1:15692).
//!
//! Names follow RabbitMQ's Prometheus plugin where the same metric exists, so its Grafana
//! dashboards work: `rabbitmq_identity_info` (which the dashboards join on),
//! `rabbitmq_connections`, `rabbitmq_channels`, `rabbitmq_queues`, `rabbitmq_consumers`,
//! per-queue `rabbitmq_queue_messages{_ready,_unacked}`, `rabbitmq_queue_consumers` and
//! `rabbitmq_queue_messages_paged_out{,_bytes}` (what the broker spilled to disk)
//! (labelled `vhost`, `queue`, as the plugin's per-object endpoint), the
//! `rabbitmq_global_messages_*_total` counters ([`counters`]), process and alarm gauges.
//! lockgate's own metrics start with `lockgate_`: oldest message age per queue, ack-timeout
//! redeliveries, and the store's group-commit figures.
//!
//! Cheap by construction: the hot path only bumps sharded atomics ([`GlobalCounters`]);
//! everything else is read when Prometheus scrapes.
//!
//! A scrape answers when the data volume does not: everything it reads is in memory, except
//! the free disk space and the store's size, which the disk probe the disk alarm reads too
//! measures off the request path ([`crate::disk`]); when the probe hangs, the last figures are
//! shown with `lockgate_disk_probe_stale 1`.

mod config;
pub mod counters;
mod render;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::{error, info};

pub use self::config::MetricsConfig;
pub use self::counters::{Counter, GlobalCounters};
use crate::connection::ServerContext;
use crate::disk::PROBE_WAIT;

/// The exposition format's content type.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the metrics listener when `[metrics] enabled`.
///
/// # Errors
/// The address cannot be bound; the error names the config key.
pub async fn bind(config: &MetricsConfig) -> anyhow::Result<Option<TcpListener>> {
    if !config.enabled {
        return Ok(None);
    }
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "binding the metrics listener on {} (config key `metrics.listen`)",
            config.listen
        )
    })?;
    Ok(Some(listener))
}

/// Serves `/metrics` until shutdown, with the HTTP stack the management API uses (axum).
pub async fn serve(ctx: Arc<ServerContext>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        // Not the word the AMQP listener's line uses: harnesses match that one.
        info!(metrics_addr = %addr, "serving Prometheus metrics");
    }
    let shutdown = ctx.shutdown.clone();
    let served = axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        error!(error = %e, "metrics listener stopped");
    }
}

/// `GET` (and `HEAD`) `/metrics` and `/metrics/per-object` (the same: every metric is per
/// object already); 404 elsewhere, 405 for other methods.
fn router(ctx: Arc<ServerContext>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(metrics))
        .fallback(not_found)
        .with_state(ctx)
}

/// Waits for the disk figures at most [`PROBE_WAIT`], then renders on this worker: nothing
/// else it reads touches the data volume (the queues' figures are behind short locks that no
/// store call is made under, the store's behind the writer's).
async fn metrics(State(ctx): State<Arc<ServerContext>>) -> Response {
    let disk = ctx.disk.read(PROBE_WAIT).await;
    text(StatusCode::OK, render::render(&ctx, &disk))
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n".to_owned())
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE_TEXT)], body).into_response()
}

/// Starts serving when enabled: binds first so a bad address fails at startup.
///
/// # Errors
/// See [`bind`].
pub async fn start(ctx: &Arc<ServerContext>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(listener) = bind(&ctx.config.metrics).await? else {
        return Ok(None);
    };
    let addr = listener.local_addr().ok();
    tokio::spawn(serve(Arc::clone(ctx), listener));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use lockgate_broker::{Broker, BrokerConfig};
    use lockgate_store::{failpoints, Store, StoreConfig};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::Config;
    use crate::disk::tests::Stall;

    /// Far beyond [`PROBE_WAIT`]: a scrape that takes this long never answers.
    const NEVER: Duration = Duration::from_secs(30);

    async fn scrape(state: &Arc<ServerContext>) -> String {
        let response = tokio::time::timeout(NEVER, metrics(State(Arc::clone(state))))
            .await
            .expect("the scrape answered");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        String::from_utf8(body.to_vec()).expect("text")
    }

    /// The unlabelled sample `name`, if present.
    fn sample(body: &str, name: &str) -> Option<f64> {
        let prefix = format!("{name} ");
        let line = body.lines().find_map(|l| l.strip_prefix(&prefix))?;
        Some(line.parse().expect("a number"))
    }

    /// A scrape answers while the data volume stops answering (the store's size measurement
    /// held by a failpoint, as on a hung disk): with the disk figures last measured, flagged
    /// stale and ageing, and fresh ones again once the disk answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_answers_with_the_last_disk_figures_while_the_disk_hangs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let broker = Broker::with_store(BrokerConfig::default(), store);
        let state = Arc::new(ServerContext::new(
            Arc::new(config),
            broker,
            CancellationToken::new(),
            watch::channel(false).1,
        ));
        let healthy = scrape(&state).await;
        assert_eq!(sample(&healthy, "lockgate_disk_probe_stale"), Some(0.0));
        let size = sample(&healthy, "lockgate_store_size_bytes").expect("the store size");
        let free = sample(&healthy, "rabbitmq_disk_space_available_bytes").expect("free space");

        let healthy_at = Instant::now();
        let stall = Stall::arm(dir.path());
        let hung = scrape(&state).await;
        assert_eq!(sample(&hung, "lockgate_disk_probe_stale"), Some(1.0));
        assert_eq!(sample(&hung, "lockgate_store_size_bytes"), Some(size));
        assert_eq!(
            sample(&hung, "rabbitmq_disk_space_available_bytes"),
            Some(free)
        );
        assert!(
            sample(&hung, "rabbitmq_connections").is_some(),
            "the rest is there"
        );
        let deadline = Instant::now() + NEVER;
        while !failpoints::held(failpoints::SIZE_STALL, dir.path()) {
            assert!(Instant::now() < deadline, "the probe was not held");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The figures measured before the hang, at least as old as it (to the millisecond
        // shown).
        let hang = healthy_at.elapsed().as_secs_f64();
        let again = scrape(&state).await;
        assert_eq!(sample(&again, "lockgate_disk_probe_stale"), Some(1.0));
        let age = sample(&again, "lockgate_disk_probe_age_seconds").expect("an age");
        assert!(
            age + 0.001 >= hang,
            "figures {age} s old, the hang {hang} s"
        );

        drop(stall);
        while sample(&scrape(&state).await, "lockgate_disk_probe_stale") != Some(0.0) {
            assert!(Instant::now() < deadline, "the figures stayed stale");
        }
    }
}
