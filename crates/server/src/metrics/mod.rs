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
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

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

/// Serves `/metrics` until shutdown.
pub async fn serve(ctx: Arc<ServerContext>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        // Not the word the AMQP listener's line uses: harnesses match that one.
        info!(metrics_addr = %addr, "serving Prometheus metrics");
    }
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, std::convert::Infallible>(respond(&ctx, &request)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, %peer, "metrics connection ended with an error");
            }
        });
    }
}

fn respond(ctx: &ServerContext, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, body) = match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/metrics" | "/metrics/per-object") => {
            (StatusCode::OK, render::render(ctx))
        }
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    response
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
