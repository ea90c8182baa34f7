//! The management HTTP API and dashboard (`[management] listen`, default 127.0.0.1:15672).
//!
//! Paths and JSON shapes follow RabbitMQ's management plugin where lockgate has the same
//! thing, so existing scripts, `rabbitmqadmin`-style tools and the `lockgate ctl` CLI work
//! against it. Layout:
//! - [`registry`]: open AMQP connections (registered after the handshake, closable from here);
//! - `auth.rs`: HTTP basic auth against the configured users (tags administrator/monitoring);
//! - `body.rs`: request bodies, refused in RabbitMQ's 400 shape when they cannot be read;
//! - `read.rs`: the GET endpoints (overview, connections, channels, consumers, exchanges,
//!   queues, bindings, vhosts, users, permissions, policies, health);
//! - `actions.rs`: declare, delete, bind, purge, publish, get, close connection;
//! - `definitions.rs`: export and import in RabbitMQ's definitions format;
//! - `access.rs`: users, permissions and policies (PUT/DELETE, stored in the store);
//! - `rates.rs`: a sampler turning the broker's monotonic counters into rates every 5 s;
//! - `tls.rs`: `[management.tls]`, HTTPS with the acceptor AMQPS uses (reloaded on SIGHUP);
//! - `json.rs`: field tables and message properties as JSON;
//! - `listing.rs`: RabbitMQ's list parameters (sort, columns, name filter, pagination);
//! - `openapi.json` and `dashboard.html`, embedded (no build step).
//!
//! It runs on the server's tokio runtime but shares nothing with the AMQP path except the
//! broker's read-only snapshots (short locks, never per message).

mod access;
mod actions;
mod auth;
mod body;
mod definitions;
pub(crate) mod json;
mod listing;
mod rates;
mod read;
pub mod registry;
mod tls;

pub(crate) use read::node_name;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use self::registry::{ConnectionEntry, Registration, Registry};
pub use self::tls::ManagementTlsConfig;
use crate::connection::ServerContext;
use crate::tls::Acceptor;

/// `[management]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Serve the API and dashboard at all.
    pub enabled: bool,
    /// Where (RabbitMQ's management plugin uses port 15672).
    pub listen: SocketAddr,
    /// `[management.tls]`: HTTPS instead of HTTP when a certificate is set.
    pub tls: ManagementTlsConfig,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 15672)),
            tls: ManagementTlsConfig::default(),
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
struct Api {
    ctx: Arc<ServerContext>,
    rates: Arc<rates::Rates>,
    /// The AMQP listener's address, for `/api/overview` listeners.
    amqp: SocketAddr,
    /// The management listener's own address.
    http: SocketAddr,
    /// When the API started (the node's uptime, near enough).
    started: std::time::Instant,
}

/// Starts the management listener when `[management] enabled`. A bind failure is logged and
/// the broker keeps serving AMQP: the API is an operator convenience, not the service.
/// Returns the HTTPS listener's certificate, for the SIGHUP handler.
pub async fn start(ctx: Arc<ServerContext>, amqp: SocketAddr) -> Option<Arc<Acceptor>> {
    let config = &ctx.config.management;
    if !config.enabled {
        return None;
    }
    // Loaded before binding: a certificate that cannot be loaded never leaves plain HTTP up.
    let acceptor = if config.tls.enabled() {
        match config.tls.acceptor() {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "cannot load the management listener's certificate; \
                     the management API is not available"
                );
                return None;
            }
        }
    } else {
        None
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(addr = %config.listen, error = %e,
                "cannot bind the management listener (config key `management.listen`); \
                 the management API is not available");
            return None;
        }
    };
    let http = listener.local_addr().unwrap_or(config.listen);
    // Not the wording of the AMQP listener's line, which harnesses match.
    info!(%http, tls = acceptor.is_some(), "management API serving");
    let rates = Arc::new(rates::Rates::default());
    tokio::spawn(rates::sample(Arc::clone(&ctx), Arc::clone(&rates)));
    let api = Api {
        ctx: Arc::clone(&ctx),
        rates,
        amqp,
        http,
        started: std::time::Instant::now(),
    };
    let app = router(api.clone());
    let shutdown = ctx.shutdown.clone();
    match acceptor {
        None => {
            tokio::spawn(serve(listener, app, shutdown));
            None
        }
        Some(acceptor) => match tls::listener(listener, Arc::clone(&acceptor)) {
            Ok(listener) => {
                tokio::spawn(serve(listener, app, shutdown));
                Some(acceptor)
            }
            Err(e) => {
                error!(error = %e, "management API not started");
                None
            }
        },
    }
}

/// Serves `app` on `listener` (plain TCP or [`tls::listener`]) until shutdown.
async fn serve<L>(listener: L, app: Router, shutdown: CancellationToken)
where
    L: Listener,
    L::Addr: std::fmt::Debug,
    for<'a> SocketAddr: Connected<IncomingStream<'a, L>>,
{
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await;
    if let Err(e) = served {
        error!(error = %e, "management API stopped");
    }
}

/// The largest definitions import, RabbitMQ's limit for definition uploads: an export of
/// about 200,000 queues. Every other body keeps axum's default of 2 MiB.
const DEFINITIONS_BODY_LIMIT: usize = 20 << 20;

fn router(api: Api) -> Router {
    let apis = Router::new()
        .route("/overview", get(read::overview))
        .route("/nodes", get(read::nodes))
        .route("/nodes/{name}", get(read::node))
        .route("/whoami", get(auth::whoami))
        .route("/connections", get(read::connections))
        .route(
            "/connections/{name}",
            get(read::connection).delete(actions::close_connection),
        )
        .route(
            "/connections/{name}/channels",
            get(read::connection_channels),
        )
        .route("/vhosts/{vhost}/connections", get(read::vhost_connections))
        .route("/channels", get(read::channels))
        .route("/vhosts/{vhost}/channels", get(read::vhost_channels))
        .route("/consumers", get(read::consumers))
        .route("/consumers/{vhost}", get(read::vhost_consumers))
        .route("/exchanges", get(read::exchanges))
        .route("/exchanges/{vhost}", get(read::vhost_exchanges))
        .route(
            "/exchanges/{vhost}/{name}",
            get(read::exchange)
                .put(actions::declare_exchange)
                .delete(actions::delete_exchange),
        )
        .route(
            "/exchanges/{vhost}/{name}/bindings/source",
            get(read::exchange_bindings_source),
        )
        .route(
            "/exchanges/{vhost}/{name}/bindings/destination",
            get(read::exchange_bindings_destination),
        )
        .route("/exchanges/{vhost}/{name}/publish", post(actions::publish))
        .route("/queues", get(read::queues))
        .route("/queues/{vhost}", get(read::vhost_queues))
        .route(
            "/queues/{vhost}/{name}",
            get(read::queue)
                .put(actions::declare_queue)
                .delete(actions::delete_queue),
        )
        .route(
            "/queues/{vhost}/{name}/contents",
            delete(actions::purge_queue),
        )
        .route("/queues/{vhost}/{name}/get", post(actions::get_messages))
        .route("/queues/{vhost}/{name}/bindings", get(read::queue_bindings))
        .route("/bindings", get(read::bindings))
        .route("/bindings/{vhost}", get(read::vhost_bindings))
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(read::bindings_between).post(actions::bind),
        )
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(read::binding).delete(actions::unbind),
        )
        .route("/vhosts", get(read::vhosts))
        .route(
            "/vhosts/{vhost}",
            get(read::vhost).put(actions::create_vhost),
        )
        .route("/users", get(read::users))
        .route(
            "/users/{name}",
            get(read::user)
                .put(access::put_user)
                .delete(access::delete_user),
        )
        .route("/permissions", get(read::permissions))
        .route("/vhosts/{vhost}/permissions", get(read::vhost_permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(access::permission)
                .put(access::put_permission)
                .delete(access::delete_permission),
        )
        .route("/policies", get(read::policies))
        .route("/policies/{vhost}", get(read::vhost_policies))
        .route(
            "/policies/{vhost}/{name}",
            get(access::policy)
                .put(access::put_policy)
                .delete(access::delete_policy),
        )
        .route(
            "/definitions",
            get(definitions::export)
                .post(definitions::import)
                .layer(DefaultBodyLimit::max(DEFINITIONS_BODY_LIMIT)),
        )
        .route(
            "/definitions/{vhost}",
            get(definitions::export_vhost)
                .post(definitions::import_vhost)
                .layer(DefaultBodyLimit::max(DEFINITIONS_BODY_LIMIT)),
        )
        .route("/health/checks/alarms", get(read::health_alarms))
        .route("/health/checks/local-alarms", get(read::health_alarms))
        .route("/health/checks/ready", get(read::health_ready))
        .route("/health/checks/virtual-hosts", get(read::health_vhosts))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(middleware::from_fn(listing::apply))
        .layer(middleware::from_fn_with_state(api.clone(), auth::require));
    Router::new()
        .nest("/api", apis)
        .route("/", get(dashboard))
        .route("/index.html", get(dashboard))
        .route("/api/health/checks/ping", get(ping))
        .with_state(api)
        .layer(middleware::from_fn(no_cache))
}

async fn no_cache(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("dashboard.html"),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// An unauthenticated liveness probe (the process serves HTTP).
async fn ping(State(_): State<Api>) -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// An error answer in RabbitMQ's shape: `{"error": "...", "reason": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    reason: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &str, reason: impl Into<String>) -> Self {
        Self {
            status,
            error: error.to_owned(),
            reason: reason.into(),
        }
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
}

impl From<lockgate_broker::BrokerError> for ApiError {
    fn from(e: lockgate_broker::BrokerError) -> Self {
        let status = match e.reply_code() {
            404 => StatusCode::NOT_FOUND,
            403 => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        // RabbitMQ: {"error":"bad_request","reason":"inequivalent arg ..."}; for 404s the
        // reason carries the AMQP text too.
        let error = if status == StatusCode::NOT_FOUND {
            "not_found"
        } else {
            "bad_request"
        };
        Self::new(status, error, e.text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "reason": self.reason})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn management_section_and_user_tags_are_read() {
        let config = Config::parse(
            "[management]\nenabled = false\nlisten = \"127.0.0.1:1\"\n\
             [[users]]\nname = \"w\"\npassword = \"p\"\ntags = [\"monitoring\"]",
        )
        .unwrap();
        assert!(!config.management.enabled);
        assert_eq!(config.management.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(config.users[0].tags, vec!["monitoring"]);
        let defaults = Config::default();
        assert!(defaults.management.enabled);
        assert_eq!(
            defaults.management.listen,
            "127.0.0.1:15672".parse().unwrap()
        );
        assert_eq!(defaults.users[0].tags, vec!["administrator"]);
        assert!(Config::parse("[management]\nbogus = 1").is_err());
    }
}
