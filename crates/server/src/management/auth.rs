//! HTTP basic auth against the configured users. As in RabbitMQ, only users tagged
//! `administrator` or `monitoring` may use the API; `monitoring` users may only read; a
//! `loopback_only` user (the default guest) is refused from other addresses.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde_json::{json, Value};

use super::{Api, ApiError};

/// The authenticated API user, put in the request's extensions.
#[derive(Clone, Debug)]
pub struct ApiUser {
    /// Login name.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Tags that may use the management API.
const ADMIN: &str = "administrator";
const MONITORING: &str = "monitoring";

/// Whether `request` would change something and comes from another site's page. A form, or
/// a `fetch` in no-cors mode, needs no CORS preflight, and the browser adds the basic-auth
/// login it holds for the API: without this check any page its user visits could declare,
/// bind, publish or create users. Browsers say where a request comes from in `Sec-Fetch-Site`
/// (`same-origin` for the dashboard, `none` for an address typed in); older ones only send
/// `Origin`, which must then be the API's own. Programs (curl, rabbitmqadmin, the client
/// libraries) send neither and pass.
fn cross_site(request: &Request) -> bool {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return false;
    }
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let authority = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, authority)| authority);
    authority.is_none() || authority != headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

/// Middleware: authenticates the request or answers 401 / 403.
pub async fn require(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    if cross_site(&request) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "not_authorised",
            "a request from another site's page may only read",
        )
        .into_response();
    }
    let Some((name, password)) = credentials(&request) else {
        return unauthorised("Not_Authorized");
    };
    let credentials = crate::auth::Credentials {
        username: name,
        password,
    };
    let user = match api.ctx.permissions.authenticate(&credentials, peer.ip()) {
        Ok(user) => user,
        Err(crate::auth::AuthError::LoopbackOnly(_)) => {
            return unauthorised("User can only log in via localhost")
        }
        Err(_) => return unauthorised("Login failed"),
    };
    let admin = user.tags.iter().any(|t| t == ADMIN);
    let monitoring = user.tags.iter().any(|t| t == MONITORING);
    if !admin && !monitoring {
        return unauthorised("Not management user");
    }
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if !admin && !read_only {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "not_authorised",
            "Not administrator user",
        )
        .into_response();
    }
    request.extensions_mut().insert(ApiUser {
        name: user.name.clone(),
        tags: user.tags.clone(),
    });
    next.run(request).await
}

fn credentials(request: &Request) -> Option<(String, String)> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

fn unauthorised(reason: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    response
}

/// `GET /api/whoami`.
pub async fn whoami(Extension(user): Extension<ApiUser>) -> Json<Value> {
    Json(json!({"name": user.name, "tags": user.tags}))
}
