//! The TCP listener: accepts connections, spawns one task each, and runs the shutdown sequence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::connection::{self, ServerContext};

/// How long connections get to finish their close handshake at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Binds the listener.
///
/// # Errors
/// The address cannot be bound; the error names it.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the AMQP listener on {addr} (config key `listen`)"))
}

/// Accepts connections until shutdown is signalled, then waits (bounded) for them to close.
pub async fn run(ctx: Arc<ServerContext>, listener: TcpListener) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let id = ctx.next_id();
                let span = info_span!("connection", id, %peer);
                tracker.spawn(connection::serve(ctx.clone(), stream, peer, id).instrument(span));
            }
            Err(e) => {
                // Usually EMFILE or a connection reset before accept: keep serving the others.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    info!(
        connections = tracker.len(),
        "shutting down: closing connections"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tracker.len(),
            "connections still open after the shutdown grace period"
        );
    }
}
