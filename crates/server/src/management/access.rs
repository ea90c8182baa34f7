//! Users, permissions and policies through the API, in RabbitMQ's paths and shapes:
//! `PUT/DELETE /api/users/{name}`, `GET/PUT/DELETE /api/permissions/{vhost}/{user}`,
//! `GET/PUT/DELETE /api/policies/{vhost}/{name}`, and the lists the GET endpoints and the
//! definitions export show.
//!
//! What these create is stored (`stored.rs`) and survives a restart. The config file wins
//! for what it names: a user, permission or policy the file defines cannot be changed or
//! deleted here (409, "defined in the config file"); edit the file and send SIGHUP.
//! Passwords are hashed before they are kept (RabbitMQ's `password_hash`); a body may give
//! `password` or `password_hash` (+ `hashing_algorithm`), as RabbitMQ's API takes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lockgate_store::Commit;
use serde_json::{json, Value};

use super::body::JsonBody;
use super::{Api, ApiError, ApiResult};
use crate::permissions::DefinedInConfig;
use crate::stored;

/// Every user, as RabbitMQ lists them.
pub(super) fn users_json(api: &Api) -> Vec<Value> {
    api.ctx
        .permissions
        .users()
        .iter()
        .map(stored::user_json)
        .collect()
}

/// Every permission entry.
pub(super) fn permissions_json(api: &Api) -> Vec<Value> {
    api.ctx
        .permissions
        .permissions()
        .iter()
        .map(stored::permission_json)
        .collect()
}

/// The policies of `vhost`, or of every vhost.
pub(super) fn policies_json(api: &Api, vhost: Option<&str>) -> Vec<Value> {
    api.ctx
        .permissions
        .all_policies()
        .iter()
        .filter(|(v, _)| vhost.is_none_or(|wanted| wanted == v.as_str()))
        .flat_map(|(v, policies)| policies.iter().map(|p| stored::policy_json(v, p)))
        .collect()
}

fn conflict(e: DefinedInConfig) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "{} is defined in the config file, which wins: change it there and send SIGHUP",
            e.0
        ),
    )
}

async fn persist(commit: Option<Commit>) -> ApiResult<()> {
    if let Some(commit) = commit {
        commit.wait().await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("store write failed: {e}"),
            )
        })?;
    }
    Ok(())
}

fn created(existed: bool) -> Response {
    if existed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::CREATED.into_response()
    }
}

/// `PUT /api/users/{name}`: `{"password": "..."}` or `{"password_hash": "...",
/// "hashing_algorithm": "..."}`, and `"tags"` (a list or a comma-separated string).
pub async fn put_user(
    State(api): State<Api>,
    Path(name): Path<String>,
    JsonBody(mut body): JsonBody<Value>,
) -> ApiResult<Response> {
    body["name"] = json!(name);
    let user = stored::user_from_json(&body).map_err(ApiError::bad_request)?;
    let entry = user.clone();
    let existed = api
        .ctx
        .permissions
        .change_stored(
            |config| {
                config
                    .users
                    .contains_key(&name)
                    .then(|| format!("user '{name}'"))
            },
            move |layer| layer.users.insert(entry.name.clone(), entry).is_some(),
        )
        .map_err(conflict)?;
    persist(
        api.ctx
            .broker
            .store()
            .map(|store| stored::put_user(store, &user)),
    )
    .await?;
    Ok(created(existed))
}

/// `DELETE /api/users/{name}`: the user and its stored permissions.
pub async fn delete_user(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let removed = api
        .ctx
        .permissions
        .change_stored(
            |config| {
                config
                    .users
                    .contains_key(&name)
                    .then(|| format!("user '{name}'"))
            },
            |layer| {
                let user = layer.users.remove(&name);
                let vhosts: Vec<String> = layer
                    .permissions
                    .keys()
                    .filter(|(u, _)| *u == name)
                    .map(|(_, v)| v.clone())
                    .collect();
                for vhost in &vhosts {
                    layer.permissions.remove(&(name.clone(), vhost.clone()));
                }
                user.map(|_| vhosts)
            },
        )
        .map_err(conflict)?;
    let Some(vhosts) = removed else {
        return Err(ApiError::not_found());
    };
    if let Some(store) = api.ctx.broker.store() {
        for vhost in &vhosts {
            drop(stored::remove_permission(store, vhost, &name));
        }
        persist(Some(stored::remove_user(store, &name))).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/permissions/{vhost}/{user}`.
pub async fn permission(
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    api.ctx
        .permissions
        .permissions()
        .iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .map(|p| Json(stored::permission_json(p)))
        .ok_or_else(ApiError::not_found)
}

/// `PUT /api/permissions/{vhost}/{user}`: `{"configure": "...", "write": "...", "read":
/// "..."}`.
pub async fn put_permission(
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
    JsonBody(mut body): JsonBody<Value>,
) -> ApiResult<Response> {
    api.vhost(&vhost)?;
    if api.ctx.permissions.user(&user).is_none() {
        return Err(ApiError::bad_request(format!("no such user '{user}'")));
    }
    body["user"] = json!(user);
    body["vhost"] = json!(vhost);
    let entry = stored::permission_from_json(&body).map_err(ApiError::bad_request)?;
    let kept = entry.clone();
    let existed = api
        .ctx
        .permissions
        .change_stored(
            |config| {
                config
                    .permissions
                    .contains_key(&(user.clone(), vhost.clone()))
                    .then(|| format!("the permissions of user '{user}' in vhost '{vhost}'"))
            },
            move |layer| {
                layer
                    .permissions
                    .insert((kept.user.clone(), kept.vhost.clone()), kept)
                    .is_some()
            },
        )
        .map_err(conflict)?;
    persist(
        api.ctx
            .broker
            .store()
            .map(|store| stored::put_permission(store, &entry)),
    )
    .await?;
    Ok(created(existed))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub async fn delete_permission(
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let key = (user.clone(), vhost.clone());
    let removed = api
        .ctx
        .permissions
        .change_stored(
            |config| {
                config
                    .permissions
                    .contains_key(&key)
                    .then(|| format!("the permissions of user '{user}' in vhost '{vhost}'"))
            },
            |layer| layer.permissions.remove(&key).is_some(),
        )
        .map_err(conflict)?;
    if !removed {
        return Err(ApiError::not_found());
    }
    persist(
        api.ctx
            .broker
            .store()
            .map(|store| stored::remove_permission(store, &vhost, &user)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/policies/{vhost}/{name}`.
pub async fn policy(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    api.ctx
        .permissions
        .policies(&vhost)
        .iter()
        .find(|p| p.name == name)
        .map(|p| Json(stored::policy_json(&vhost, p)))
        .ok_or_else(ApiError::not_found)
}

/// `PUT /api/policies/{vhost}/{name}`: `{"pattern": "^orders", "definition": {"max-length":
/// 1000}, "priority": 0, "apply-to": "queues"}`. Applies to existing queues at once.
pub async fn put_policy(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    api.vhost(&vhost)?;
    let policy = stored::policy_from_json(&vhost, &name, &body).map_err(ApiError::bad_request)?;
    let kept = policy.clone();
    let key = (vhost.clone(), name.clone());
    let existed = api
        .ctx
        .permissions
        .change_stored(
            |config| {
                config
                    .policies
                    .contains_key(&key)
                    .then(|| format!("policy '{name}' in vhost '{vhost}'"))
            },
            |layer| layer.policies.insert(key.clone(), kept).is_some(),
        )
        .map_err(conflict)?;
    api.ctx.permissions.push_policies(&api.ctx.broker);
    persist(
        api.ctx
            .broker
            .store()
            .map(|store| stored::put_policy(store, &vhost, &policy)),
    )
    .await?;
    Ok(created(existed))
}

/// `DELETE /api/policies/{vhost}/{name}`.
pub async fn delete_policy(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let key = (vhost.clone(), name.clone());
    let removed = api
        .ctx
        .permissions
        .change_stored(
            |config| {
                config
                    .policies
                    .contains_key(&key)
                    .then(|| format!("policy '{name}' in vhost '{vhost}'"))
            },
            |layer| layer.policies.remove(&key).is_some(),
        )
        .map_err(conflict)?;
    if !removed {
        return Err(ApiError::not_found());
    }
    api.ctx.permissions.push_policies(&api.ctx.broker);
    persist(
        api.ctx
            .broker
            .store()
            .map(|store| stored::remove_policy(store, &vhost, &name)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
