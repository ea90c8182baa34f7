//! Definitions export and import in RabbitMQ's format (`rabbitmqctl export_definitions`,
//! `GET /api/definitions`), so that a RabbitMQ deployment's file imports as is.
//!
//! Export lists vhosts, users (with their RabbitMQ password hash), permissions, policies,
//! exchanges (not the predeclared ones), queues (not exclusive ones) and bindings (not the
//! default exchange's implicit ones). Import creates vhosts, users (a `password_hash` is kept
//! as is, so the users log in with their RabbitMQ passwords), permissions, policies,
//! exchanges, queues and bindings; users, permissions and policies are stored and survive a
//! restart. What the config file defines is left as the file says and reported as skipped,
//! as are parameters and stream queues, which lockgate does not have. One command:
//! `lockgatectl import definitions.json` (or `curl -u admin -X POST -H 'content-type:
//! application/json' --data @definitions.json http://localhost:15672/api/definitions`).

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{permissions_json, policies_json, users_json};
use super::actions::{
    arguments, bind_in, declare_exchange_in, declare_queue_in, shortstr, sync, ExchangeBody,
    QueueBody,
};
use super::body::JsonBody;
use super::read::RABBITMQ_COMPAT_VERSION;
use super::{Api, ApiError, ApiResult};
use crate::stored;

fn is_predeclared(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

fn header() -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    map.insert("rabbit_version".into(), json!(RABBITMQ_COMPAT_VERSION));
    map.insert("rabbitmq_version".into(), json!(RABBITMQ_COMPAT_VERSION));
    map.insert("product_name".into(), json!("lockgate"));
    map.insert("product_version".into(), json!(env!("CARGO_PKG_VERSION")));
    map
}

/// (queues, exchanges, bindings) of the vhosts, each with its `vhost` field when `with_vhost`.
fn topology(api: &Api, vhost: Option<&str>, with_vhost: bool) -> ApiResult<[Vec<Value>; 3]> {
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    let tag = |mut v: Value, vhost: &str| {
        if with_vhost {
            v["vhost"] = json!(vhost);
        }
        v
    };
    for v in api.vhosts(vhost)? {
        let mut names = v.queue_names();
        names.sort();
        for name in names {
            let Some(q) = v.queue(&name) else { continue };
            if q.exclusive_owner().is_some() {
                continue;
            }
            queues.push(tag(
                json!({
                    "name": name, "durable": q.durable(), "auto_delete": q.auto_delete(),
                    "arguments": super::json::table_to_json(q.raw_arguments()),
                }),
                v.name(),
            ));
        }
        let mut names = v.exchange_names();
        names.sort();
        for name in names.iter().filter(|n| !is_predeclared(n)) {
            let Some(x) = v.exchange(name) else { continue };
            exchanges.push(tag(
                json!({
                    "name": name, "type": x.kind().as_str(), "durable": x.durable(),
                    "auto_delete": x.auto_delete(), "internal": x.internal(),
                    "arguments": super::json::table_to_json(x.arguments()),
                }),
                v.name(),
            ));
        }
        for b in v.bindings() {
            let exclusive = b.destination_is_queue
                && v.queue(&b.destination)
                    .is_some_and(|q| q.exclusive_owner().is_some());
            if exclusive {
                continue;
            }
            bindings.push(tag(
                json!({
                    "source": b.source, "destination": b.destination,
                    "destination_type": if b.destination_is_queue { "queue" } else { "exchange" },
                    "routing_key": b.routing_key,
                    "arguments": super::json::table_to_json(&b.arguments),
                }),
                v.name(),
            ));
        }
    }
    Ok([queues, exchanges, bindings])
}

/// `GET /api/definitions`.
pub async fn export(State(api): State<Api>) -> ApiResult<Json<Value>> {
    let [queues, exchanges, bindings] = topology(&api, None, true)?;
    let mut doc = header();
    doc.insert("users".into(), json!(users_json(&api)));
    doc.insert(
        "vhosts".into(),
        json!(api
            .vhosts(None)?
            .iter()
            .map(|v| json!({"name": v.name(), "limits": [], "metadata": {"description": "", "tags": []}}))
            .collect::<Vec<_>>()),
    );
    doc.insert("permissions".into(), json!(permissions_json(&api)));
    doc.insert("topic_permissions".into(), json!([]));
    doc.insert("parameters".into(), json!([]));
    doc.insert("global_parameters".into(), json!([]));
    doc.insert("policies".into(), json!(policies_json(&api, None)));
    doc.insert("queues".into(), json!(queues));
    doc.insert("exchanges".into(), json!(exchanges));
    doc.insert("bindings".into(), json!(bindings));
    Ok(Json(Value::Object(doc)))
}

/// `GET /api/definitions/{vhost}`: one vhost's topology, without `vhost` fields.
pub async fn export_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let [queues, exchanges, bindings] = topology(&api, Some(&vhost), false)?;
    let mut doc = header();
    doc.insert("parameters".into(), json!([]));
    let mut policies = policies_json(&api, Some(&vhost));
    for p in &mut policies {
        if let Value::Object(map) = p {
            map.remove("vhost");
        }
    }
    doc.insert("policies".into(), json!(policies));
    doc.insert("queues".into(), json!(queues));
    doc.insert("exchanges".into(), json!(exchanges));
    doc.insert("bindings".into(), json!(bindings));
    Ok(Json(Value::Object(doc)))
}

/// A definitions document; unknown keys are ignored, as RabbitMQ does.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Definitions {
    vhosts: Vec<Value>,
    users: Vec<Value>,
    permissions: Vec<Value>,
    topic_permissions: Vec<Value>,
    parameters: Vec<Value>,
    global_parameters: Vec<Value>,
    policies: Vec<Value>,
    queues: Vec<Value>,
    exchanges: Vec<Value>,
    bindings: Vec<Value>,
}

fn text<'a>(item: &'a Value, key: &str) -> ApiResult<&'a str> {
    item[key].as_str().ok_or_else(|| {
        ApiError::bad_request(format!("definition without a string '{key}': {item}"))
    })
}

/// What an import did.
#[derive(Default)]
struct Report {
    users: usize,
    permissions: usize,
    policies: usize,
    vhosts: usize,
    exchanges: usize,
    queues: usize,
    bindings: usize,
    skipped: Vec<String>,
}

fn apply(api: &Api, defs: &Definitions, only_vhost: Option<&str>) -> ApiResult<Report> {
    let mut report = Report::default();
    let vhost_of = |item: &Value| -> ApiResult<String> {
        match only_vhost {
            Some(v) => Ok(v.to_owned()),
            None => text(item, "vhost").map(str::to_owned),
        }
    };
    if only_vhost.is_none() {
        for item in &defs.vhosts {
            let name = text(item, "name")?;
            shortstr("vhost name", name)?;
            if api.ctx.broker.vhost(name).is_none() {
                // The commit is awaited at the end with everything else.
                drop(api.ctx.broker.create_vhost(name));
                report.vhosts += 1;
            }
        }
    }
    import_access(api, defs, only_vhost, &mut report);
    if !defs.topic_permissions.is_empty() {
        report.skipped.push(format!(
            "{} topic permission(s): not supported",
            defs.topic_permissions.len()
        ));
    }
    if !defs.parameters.is_empty() || !defs.global_parameters.is_empty() {
        report.skipped.push(format!(
            "{} parameter(s): not supported",
            defs.parameters.len() + defs.global_parameters.len()
        ));
    }
    for item in &defs.exchanges {
        let name = text(item, "name")?;
        if is_predeclared(name) {
            continue;
        }
        let vhost = api.vhost(&vhost_of(item)?)?;
        let body: ExchangeBody = serde_json::from_value(item.clone())
            .map_err(|e| ApiError::bad_request(format!("exchange '{name}': {e}")))?;
        // RabbitMQ's exports always say; a hand-written entry that does not is meant to last.
        declare_exchange_in(&vhost, name, &body, true)?;
        report.exchanges += 1;
    }
    for item in &defs.queues {
        let name = text(item, "name")?;
        let vhost = api.vhost(&vhost_of(item)?)?;
        if item["arguments"]["x-queue-type"] == "stream" || item["type"].as_str() == Some("stream")
        {
            report
                .skipped
                .push(format!("queue '{name}': stream queues are not supported"));
            continue;
        }
        let body: QueueBody = serde_json::from_value(item.clone())
            .map_err(|e| ApiError::bad_request(format!("queue '{name}': {e}")))?;
        declare_queue_in(&vhost, name, &body, true)?;
        report.queues += 1;
    }
    for item in &defs.bindings {
        let vhost = api.vhost(&vhost_of(item)?)?;
        let source = text(item, "source")?;
        let destination = text(item, "destination")?;
        let to_queue = match text(item, "destination_type")? {
            "queue" => true,
            "exchange" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "binding destination_type must be queue or exchange, got {other}"
                )))
            }
        };
        if source.is_empty() {
            continue;
        }
        if to_queue && vhost.queue(destination).is_none() {
            report.skipped.push(format!(
                "binding {source} -> {destination}: queue not imported"
            ));
            continue;
        }
        let routing_key = item["routing_key"].as_str().unwrap_or("");
        bind_in(
            &vhost,
            source,
            to_queue,
            destination,
            routing_key,
            arguments(&item["arguments"])?,
        )?;
        report.bindings += 1;
    }
    Ok(report)
}

/// Users, permissions and policies, stored. Entries the config file defines, and entries
/// that do not validate, are skipped with the reason.
fn import_access(api: &Api, defs: &Definitions, only_vhost: Option<&str>, report: &mut Report) {
    // An entry that does not validate (a hash lockgate cannot read, a bad pattern) is
    // skipped with its reason; the rest of the file still imports.
    fn keep<T>(skipped: &mut Vec<String>, result: Result<T, String>) -> Option<T> {
        result.map_err(|reason| skipped.push(reason)).ok()
    }
    let users: Vec<_> = defs
        .users
        .iter()
        .filter_map(|u| keep(&mut report.skipped, stored::user_from_json(u)))
        .collect();
    let permissions: Vec<_> = defs
        .permissions
        .iter()
        .filter_map(|p| {
            let mut p = p.clone();
            if let (Some(v), Value::Object(map)) = (only_vhost, &mut p) {
                map.insert("vhost".into(), json!(v));
            }
            keep(&mut report.skipped, stored::permission_from_json(&p))
        })
        .collect();
    let policies: Vec<_> = defs
        .policies
        .iter()
        .filter_map(|p| {
            let vhost = only_vhost.or_else(|| p["vhost"].as_str()).unwrap_or("/");
            let name = p["name"].as_str().unwrap_or_default();
            keep(
                &mut report.skipped,
                stored::policy_from_json(vhost, name, p).map(|policy| (vhost.to_owned(), policy)),
            )
        })
        .collect();
    let store = api.ctx.broker.store();
    let access = &api.ctx.permissions;
    for user in users {
        let name = user.name.clone();
        let kept = user.clone();
        match access.change_stored(
            |c| {
                c.users
                    .contains_key(&name)
                    .then(|| format!("user '{name}'"))
            },
            |layer| layer.users.insert(kept.name.clone(), kept),
        ) {
            Ok(_) => {
                report.users += 1;
                if let Some(store) = store {
                    drop(stored::put_user(store, &user));
                }
            }
            Err(e) => report
                .skipped
                .push(format!("{}: defined in the config file", e.0)),
        }
    }
    for p in permissions {
        if access.user(&p.user).is_none() {
            report.skipped.push(format!(
                "permissions of '{}' in vhost '{}': no such user",
                p.user, p.vhost
            ));
            continue;
        }
        let key = (p.user.clone(), p.vhost.clone());
        let kept = p.clone();
        match access.change_stored(
            |c| {
                c.permissions
                    .contains_key(&key)
                    .then(|| format!("permissions of '{}' in vhost '{}'", key.0, key.1))
            },
            |layer| layer.permissions.insert(key.clone(), kept),
        ) {
            Ok(_) => {
                report.permissions += 1;
                if let Some(store) = store {
                    drop(stored::put_permission(store, &p));
                }
            }
            Err(e) => report
                .skipped
                .push(format!("{}: defined in the config file", e.0)),
        }
    }
    for (vhost, policy) in policies {
        let key = (vhost.clone(), policy.name.clone());
        let kept = policy.clone();
        match access.change_stored(
            |c| {
                c.policies
                    .contains_key(&key)
                    .then(|| format!("policy '{}' in vhost '{}'", key.1, key.0))
            },
            |layer| layer.policies.insert(key.clone(), kept),
        ) {
            Ok(_) => {
                report.policies += 1;
                let ignored = policy.ignored_keys();
                if !ignored.is_empty() {
                    report.skipped.push(format!(
                        "policy '{}': key(s) {} accepted but without effect in lockgate",
                        policy.name,
                        ignored.join(", ")
                    ));
                }
                if let Some(store) = store {
                    drop(stored::put_policy(store, &vhost, &policy));
                }
            }
            Err(e) => report
                .skipped
                .push(format!("{}: defined in the config file", e.0)),
        }
    }
}

async fn import_into(api: &Api, defs: Definitions, vhost: Option<&str>) -> ApiResult<Json<Value>> {
    let report = apply(api, &defs, vhost)?;
    // Policies apply to the queues just declared and to those that existed.
    api.ctx.permissions.push_policies(&api.ctx.broker);
    for v in api.vhosts(vhost)? {
        sync(&v).await?;
    }
    if let Some(commit) = api.ctx.broker.sync() {
        commit.wait().await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("store write failed: {e}"),
            )
        })?;
    }
    Ok(Json(json!({
        "imported": {
            "users": report.users, "permissions": report.permissions,
            "policies": report.policies,
            "vhosts": report.vhosts, "exchanges": report.exchanges,
            "queues": report.queues, "bindings": report.bindings,
        },
        "skipped": report.skipped,
    })))
}

/// `POST /api/definitions`: imports a whole definitions document. Answers 200 with what was
/// imported and skipped (RabbitMQ answers 204; both are success to a script).
pub async fn import(
    State(api): State<Api>,
    JsonBody(defs): JsonBody<Definitions>,
) -> ApiResult<Json<Value>> {
    import_into(&api, defs, None).await
}

/// `POST /api/definitions/{vhost}`: imports a vhost-scoped document into `vhost`.
pub async fn import_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    JsonBody(defs): JsonBody<Definitions>,
) -> ApiResult<Json<Value>> {
    api.vhost(&vhost)?;
    import_into(&api, defs, Some(&vhost)).await
}
