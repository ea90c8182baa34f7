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

/// Rendered on the blocking pool: it asks the file system for the data directory's free space
/// and the store's size, and on a volume that stopped answering those calls never return. On
/// an async worker each scrape would then take a worker away from the connections for good.
async fn metrics(State(ctx): State<Arc<ServerContext>>) -> Response {
    match tokio::task::spawn_blocking(move || render::render(&ctx)).await {
        Ok(body) => text(StatusCode::OK, body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the metrics failed: {e}\n"),
        ),
    }
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
