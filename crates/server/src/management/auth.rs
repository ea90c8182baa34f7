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

/// Middleware: authenticates the request or answers 401 / 403.
pub async fn require(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
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
