//! The GET endpoints, in RabbitMQ's JSON shapes. lockgate's additions to a shape are named
//! `oldest_*_age_seconds` (queues, consumers, channels) and `memory` (overview).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lockgate_broker::{BindingSnapshot, ChannelSnapshot, ConsumerSnapshot, Exchange, Queue, VHost};
use serde_json::{json, Value};

use super::actions::exchange_name;
use super::json::table_to_json;
use super::rates::QueueRates;
use super::registry::ConnectionEntry;
use super::{Api, ApiError, ApiResult};

/// The RabbitMQ management API version whose shapes lockgate follows.
pub const RABBITMQ_COMPAT_VERSION: &str = "3.13.0";

/// This node's name, RabbitMQ style: `lockgate@HOST`.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("lockgate@{host}")
}

fn seconds(age: Option<Duration>) -> Value {
    age.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

fn rate(r: f64) -> Value {
    json!({ "rate": (r * 10.0).round() / 10.0 })
}

fn message_stats(counts: [u64; 4], rates: QueueRates) -> Value {
    json!({
        "publish": counts[0],
        "publish_details": rate(rates.publish),
        "deliver_get": counts[1],
        "deliver_get_details": rate(rates.deliver_get),
        "ack": counts[2],
        "ack_details": rate(rates.ack),
        "redeliver": counts[3],
        "redeliver_details": rate(rates.redeliver),
    })
}

impl Api {
    /// Every vhost, or the one named (404 when it does not exist), sorted by name.
    pub(super) fn vhosts(&self, name: Option<&str>) -> ApiResult<Vec<Arc<VHost>>> {
        if let Some(name) = name {
            return self
                .ctx
                .broker
                .vhost(name)
                .map(|v| vec![v])
                .ok_or_else(ApiError::not_found);
        }
        let mut names = self.ctx.broker.vhost_names();
        names.sort();
        Ok(names
            .iter()
            .filter_map(|n| self.ctx.broker.vhost(n))
            .collect())
    }

    pub(super) fn vhost(&self, name: &str) -> ApiResult<Arc<VHost>> {
        self.ctx.broker.vhost(name).ok_or_else(ApiError::not_found)
    }

    fn queue_json(&self, vhost: &VHost, queue: &Queue, oldest_unacked: Option<Instant>) -> Value {
        let s = queue.snapshot();
        let rates = self.rates.queue(vhost.name(), queue.name());
        let owner = queue
            .exclusive_owner()
            .and_then(|id| self.ctx.connections.by_id(id.0));
        json!({
            "name": queue.name(),
            "vhost": vhost.name(),
            "durable": queue.durable(),
            "auto_delete": queue.auto_delete(),
            "exclusive": queue.exclusive_owner().is_some(),
            "owner_pid_details": owner.map(|c| json!({
                "name": c.name, "peer_host": c.peer.ip().to_string(), "peer_port": c.peer.port(),
            })),
            "arguments": table_to_json(queue.raw_arguments()),
            "node": node_name(),
            "state": "running",
            "type": "classic",
            "policy": queue.policy_name(),
            "effective_policy_definition": queue
                .policy_name()
                .and_then(|name| vhost.policy(&name))
                .map_or_else(|| json!({}), |p| table_to_json(&p.definition)),
            "messages": s.ready + s.unacked,
            "messages_details": rate(rates.messages),
            "messages_ready": s.ready,
            "messages_ready_details": rate(0.0),
            "messages_unacknowledged": s.unacked,
            "messages_unacknowledged_details": rate(0.0),
            "messages_ram": (s.ready + s.unacked).saturating_sub(s.spilled),
            "messages_ready_ram": s.ready.saturating_sub(s.spilled),
            "messages_paged_out": s.spilled,
            "message_bytes": s.ready_bytes + s.spilled_bytes,
            "message_bytes_ready": s.ready_bytes + s.spilled_bytes,
            "message_bytes_unacknowledged": 0,
            "message_bytes_ram": s.ready_bytes,
            "message_bytes_paged_out": s.spilled_bytes,
            "consumers": s.consumers,
            "head_message_timestamp": Value::Null,
            "message_stats": message_stats([s.published, s.delivered, s.acked, s.redelivered], rates),
            "oldest_ready_age_seconds": seconds(s.oldest_ready_age),
            "oldest_unacked_age_seconds": seconds(oldest_unacked.map(|t| t.elapsed())),
            // Not in RabbitMQ's queue object (lockgate's own; the metrics have the same).
            "messages_expired": s.expired,
            "messages_dead_lettered": s.dead_lettered,
            "messages_dropped_overflow": s.dropped_overflow,
            "messages_rejected_overflow": s.rejected_overflow,
            "ack_timeout_redeliveries": s.timeout_redelivered,
            "messages_delivery_limit": s.delivery_limit_dropped,
            "messages_deduplicated": s.dedup_dropped,
        })
    }

    fn queues_json(&self, vhost: Option<&str>) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for v in self.vhosts(vhost)? {
            let oldest = v.oldest_unacked_by_queue();
            let mut names = v.queue_names();
            names.sort();
            for name in names {
                if let Some(q) = v.queue(&name) {
                    out.push(self.queue_json(&v, &q, oldest.get(&name).copied()));
                }
            }
        }
        Ok(out)
    }

    fn exchanges_json(&self, vhost: Option<&str>) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for v in self.vhosts(vhost)? {
            let mut names = v.exchange_names();
            names.sort();
            for name in names {
                if let Some(x) = v.exchange(&name) {
                    out.push(exchange_json(&v, &x));
                }
            }
        }
        Ok(out)
    }

    /// Bindings of the vhosts, with the default exchange's implicit one per queue first, as
    /// RabbitMQ lists them.
    pub(super) fn bindings_json(&self, vhost: Option<&str>) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for v in self.vhosts(vhost)? {
            let mut names = v.queue_names();
            names.sort();
            for q in names {
                out.push(binding_json(
                    v.name(),
                    &BindingSnapshot {
                        source: String::new(),
                        destination: q.clone(),
                        destination_is_queue: true,
                        routing_key: q,
                        arguments: lockgate_wire::FieldTable::default(),
                    },
                ));
            }
            out.extend(v.bindings().iter().map(|b| binding_json(v.name(), b)));
        }
        Ok(out)
    }

    fn connection_json(&self, c: &ConnectionEntry, channels: usize) -> Value {
        json!({
            "name": c.name,
            "node": node_name(),
            "vhost": c.vhost,
            "user": c.user,
            "state": "running",
            "type": "network",
            "protocol": "AMQP 0-9-1",
            "auth_mechanism": c.auth_mechanism,
            "ssl": c.tls,
            "host": c.local.ip().to_string(),
            "port": c.local.port(),
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "channels": channels,
            "channel_max": c.channel_max,
            "frame_max": c.frame_max,
            "timeout": c.heartbeat,
            "connected_at": c.connected_at,
            "client_properties": table_to_json(&c.client_properties()),
        })
    }

    /// Channels of every vhost, with their connection's entry when it is still registered.
    fn all_channels(&self) -> Vec<ChannelSnapshot> {
        self.ctx
            .broker
            .vhost_names()
            .iter()
            .filter_map(|n| self.ctx.broker.vhost(n))
            .flat_map(|v| v.channels())
            .filter(|c| c.connection.0 != 0)
            .collect()
    }

    pub(super) fn connections_json(&self, vhost: Option<&str>) -> Vec<Value> {
        let mut per_connection: HashMap<u64, usize> = HashMap::new();
        for c in self.all_channels() {
            *per_connection.entry(c.connection.0).or_default() += 1;
        }
        self.ctx
            .connections
            .list()
            .iter()
            .filter(|c| vhost.is_none_or(|v| v == c.vhost))
            .map(|c| self.connection_json(c, per_connection.get(&c.id).copied().unwrap_or(0)))
            .collect()
    }

    fn channels_json(&self, filter: impl Fn(&ConnectionEntry) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        for s in self.all_channels() {
            let Some(c) = self.ctx.connections.by_id(s.connection.0) else {
                continue;
            };
            if filter(&c) {
                out.push(channel_json(&s, &c));
            }
        }
        out
    }

    pub(super) fn consumers_json(&self, vhost: Option<&str>) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for v in self.vhosts(vhost)? {
            for s in v.consumers() {
                let c = self.ctx.connections.by_id(s.connection.0);
                out.push(consumer_json(v.name(), &s, c.as_deref()));
            }
        }
        Ok(out)
    }
}

fn exchange_json(vhost: &VHost, x: &Exchange) -> Value {
    json!({
        "name": x.name(),
        "vhost": vhost.name(),
        "type": x.kind().as_str(),
        "durable": x.durable(),
        "auto_delete": x.auto_delete(),
        "internal": x.internal(),
        "arguments": table_to_json(x.arguments()),
        "policy": Value::Null,
        "user_who_performed_action": "rmq-internal",
    })
}

/// RabbitMQ's `properties_key`: "~" for an empty key, else the key with `%` escapes; a
/// binding with arguments adds "~" and a hash of them.
pub fn properties_key(b: &BindingSnapshot) -> String {
    let key = if b.routing_key.is_empty() {
        "~".to_owned()
    } else {
        percent_escape(&b.routing_key)
    };
    if b.arguments.is_empty() {
        key
    } else {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        table_to_json(&b.arguments).to_string().hash(&mut hasher);
        format!("{key}~{:x}", hasher.finish())
    }
}

fn percent_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!*'()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn binding_json(vhost: &str, b: &BindingSnapshot) -> Value {
    json!({
        "source": b.source,
        "vhost": vhost,
        "destination": b.destination,
        "destination_type": if b.destination_is_queue { "queue" } else { "exchange" },
        "routing_key": b.routing_key,
        "arguments": table_to_json(&b.arguments),
        "properties_key": properties_key(b),
    })
}

fn channel_name(c: &ConnectionEntry, number: u16) -> String {
    format!("{} ({number})", c.name)
}

fn channel_json(s: &ChannelSnapshot, c: &ConnectionEntry) -> Value {
    json!({
        "name": channel_name(c, s.channel.0),
        "number": s.channel.0,
        "node": node_name(),
        "vhost": c.vhost,
        "user": c.user,
        "state": if s.active { "running" } else { "flow" },
        "connection_details": {
            "name": c.name, "peer_host": c.peer.ip().to_string(), "peer_port": c.peer.port(),
        },
        "consumer_count": s.consumers,
        "messages_unacknowledged": s.unacked,
        "global_prefetch_count": s.global_prefetch,
        "oldest_unacked_age_seconds": seconds(s.oldest_unacked_age),
    })
}

fn consumer_json(vhost: &str, s: &ConsumerSnapshot, c: Option<&ConnectionEntry>) -> Value {
    json!({
        "consumer_tag": s.tag.as_str(),
        "queue": {"name": s.queue, "vhost": vhost},
        "channel_details": c.map(|c| json!({
            "name": channel_name(c, s.channel.0),
            "number": s.channel.0,
            "connection_name": c.name,
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "user": c.user,
            "node": node_name(),
        })),
        "ack_required": !s.no_ack,
        "exclusive": s.exclusive,
        "prefetch_count": s.prefetch,
        "arguments": table_to_json(&s.arguments),
        "active": true,
        "activity_status": "up",
        "messages_unacknowledged": s.unacked,
        "oldest_unacked_age_seconds": seconds(s.oldest_unacked_age),
    })
}

/// `GET /api/overview`.
pub async fn overview(State(api): State<Api>) -> ApiResult<Json<Value>> {
    let (mut ready, mut unacked, mut queues, mut exchanges, mut consumers) = (0, 0, 0, 0, 0);
    let mut counts = [0u64; 4];
    for v in api.vhosts(None)? {
        exchanges += v.exchange_names().len();
        for name in v.queue_names() {
            if let Some(q) = v.queue(&name) {
                let s = q.snapshot();
                queues += 1;
                ready += s.ready;
                unacked += s.unacked;
                consumers += s.consumers;
                counts[0] += s.published;
                counts[1] += s.delivered;
                counts[2] += s.acked;
                counts[3] += s.redelivered;
            }
        }
    }
    let broker = &api.ctx.broker;
    let node = node_name();
    Ok(Json(json!({
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "product_name": "lockgate",
        "product_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": node,
        "node": node,
        "message_stats": message_stats(counts, api.rates.total(None)),
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": rate(api.rates.total(None).messages),
            "messages_ready": ready,
            "messages_ready_details": rate(0.0),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": rate(0.0),
        },
        "object_totals": {
            "connections": api.ctx.connections.list().len(),
            "channels": api.all_channels().len(),
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "listeners": [
            {"node": node, "protocol": "amqp", "ip_address": api.amqp.ip().to_string(),
             "port": api.amqp.port()},
            {"node": node, "protocol": "http", "ip_address": api.http.ip().to_string(),
             "port": api.http.port()},
        ],
        "memory": {
            "used": broker.memory_used(),
            "high_watermark": broker.config().memory_high_watermark,
            "alarm": broker.memory_blocked(),
        },
        "disk_free_alarm": *api.ctx.disk_alarm.borrow(),
    })))
}

fn node_json(api: &Api) -> Value {
    let broker = &api.ctx.broker;
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "mem_used": broker.memory_used(),
        "mem_limit": broker.config().memory_high_watermark,
        "mem_alarm": broker.memory_blocked(),
        "disk_free_alarm": *api.ctx.disk_alarm.borrow(),
        "uptime": api.started.elapsed().as_millis(),
    })
}

/// `GET /api/nodes`: the one node, with the fields monitoring scripts read (alarms, memory).
pub async fn nodes(State(api): State<Api>) -> Json<Vec<Value>> {
    Json(vec![node_json(&api)])
}

/// `GET /api/nodes/{name}`.
pub async fn node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    if name != node_name() {
        return Err(ApiError::not_found());
    }
    Ok(Json(node_json(&api)))
}

/// `GET /api/connections`.
pub async fn connections(State(api): State<Api>) -> Json<Vec<Value>> {
    Json(api.connections_json(None))
}

/// `GET /api/vhosts/{vhost}/connections`.
pub async fn vhost_connections(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    api.vhost(&vhost)?;
    Ok(Json(api.connections_json(Some(&vhost))))
}

/// `GET /api/connections/{name}`.
pub async fn connection(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = api
        .ctx
        .connections
        .by_name(&name)
        .ok_or_else(ApiError::not_found)?;
    let channels = api
        .all_channels()
        .iter()
        .filter(|s| s.connection.0 == c.id)
        .count();
    Ok(Json(api.connection_json(&c, channels)))
}

/// `GET /api/connections/{name}/channels`.
pub async fn connection_channels(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    api.ctx
        .connections
        .by_name(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(api.channels_json(|c| c.name == name)))
}

/// `GET /api/channels`.
pub async fn channels(State(api): State<Api>) -> Json<Vec<Value>> {
    Json(api.channels_json(|_| true))
}

/// `GET /api/vhosts/{vhost}/channels`.
pub async fn vhost_channels(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    api.vhost(&vhost)?;
    Ok(Json(api.channels_json(|c| c.vhost == vhost)))
}

/// `GET /api/consumers`.
pub async fn consumers(State(api): State<Api>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.consumers_json(None)?))
}

/// `GET /api/consumers/{vhost}`.
pub async fn vhost_consumers(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.consumers_json(Some(&vhost))?))
}

/// `GET /api/exchanges`.
pub async fn exchanges(State(api): State<Api>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.exchanges_json(None)?))
}

/// `GET /api/exchanges/{vhost}`.
pub async fn vhost_exchanges(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.exchanges_json(Some(&vhost))?))
}

/// `GET /api/exchanges/{vhost}/{name}`.
pub async fn exchange(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = api.vhost(&vhost)?;
    let x = v
        .exchange(exchange_name(&name))
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(exchange_json(&v, &x)))
}

fn filter_bindings(list: Vec<Value>, field: &str, name: &str, kind: Option<&str>) -> Vec<Value> {
    list.into_iter()
        .filter(|b| b[field] == name && kind.is_none_or(|k| b["destination_type"] == k))
        .collect()
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/source`.
pub async fn exchange_bindings_source(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Value>>> {
    let name = exchange_name(&name);
    api.vhost(&vhost)?
        .exchange(name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(filter_bindings(
        api.bindings_json(Some(&vhost))?,
        "source",
        name,
        None,
    )))
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/destination`.
pub async fn exchange_bindings_destination(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Value>>> {
    api.vhost(&vhost)?
        .exchange(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(filter_bindings(
        api.bindings_json(Some(&vhost))?,
        "destination",
        &name,
        Some("exchange"),
    )))
}

/// `GET /api/queues`.
pub async fn queues(State(api): State<Api>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.queues_json(None)?))
}

/// `GET /api/queues/{vhost}`.
pub async fn vhost_queues(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.queues_json(Some(&vhost))?))
}

/// `GET /api/queues/{vhost}/{name}`: the queue, with its consumers as `consumer_details`.
pub async fn queue(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = api.vhost(&vhost)?;
    let q = v.queue(&name).ok_or_else(ApiError::not_found)?;
    let oldest = v.oldest_unacked_by_queue().get(&name).copied();
    let mut value = api.queue_json(&v, &q, oldest);
    let consumers: Vec<Value> = api
        .consumers_json(Some(&vhost))?
        .into_iter()
        .filter(|c| c["queue"]["name"] == name.as_str())
        .collect();
    value["consumer_details"] = Value::Array(consumers);
    Ok(Json(value))
}

/// `GET /api/queues/{vhost}/{name}/bindings`.
pub async fn queue_bindings(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Value>>> {
    api.vhost(&vhost)?
        .queue(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(filter_bindings(
        api.bindings_json(Some(&vhost))?,
        "destination",
        &name,
        Some("queue"),
    )))
}

/// `GET /api/bindings`.
pub async fn bindings(State(api): State<Api>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.bindings_json(None)?))
}

/// `GET /api/bindings/{vhost}`.
pub async fn vhost_bindings(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(api.bindings_json(Some(&vhost))?))
}

/// `q` or `e` in a bindings path, as the destination type.
pub(super) fn destination_type(kind: &str) -> ApiResult<&'static str> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
pub async fn bindings_between(
    State(api): State<Api>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Vec<Value>>> {
    let kind = destination_type(&kind)?;
    let source = exchange_name(&source);
    let list = api.bindings_json(Some(&vhost))?;
    Ok(Json(
        list.into_iter()
            .filter(|b| {
                b["source"] == source
                    && b["destination"] == destination.as_str()
                    && b["destination_type"] == kind
            })
            .collect(),
    ))
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub async fn binding(
    State(api): State<Api>,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let Json(list) = bindings_between(State(api), Path((vhost, source, kind, destination))).await?;
    list.into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

fn vhost_json(api: &Api, v: &VHost) -> Value {
    let (mut ready, mut unacked) = (0, 0);
    for name in v.queue_names() {
        if let Some(q) = v.queue(&name) {
            let s = q.snapshot();
            ready += s.ready;
            unacked += s.unacked;
        }
    }
    json!({
        "name": v.name(),
        "description": "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "tracing": false,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_stats": message_stats([0; 4], api.rates.total(Some(v.name()))),
        "cluster_state": {node_name(): "running"},
    })
}

/// `GET /api/vhosts`.
pub async fn vhosts(State(api): State<Api>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(
        api.vhosts(None)?
            .iter()
            .map(|v| vhost_json(&api, v))
            .collect(),
    ))
}

/// `GET /api/vhosts/{vhost}`.
pub async fn vhost(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let v = api.vhost(&name)?;
    Ok(Json(vhost_json(&api, &v)))
}

/// The users, as RabbitMQ lists them (with a RabbitMQ-compatible password hash).
pub(super) fn users_json(api: &Api) -> Vec<Value> {
    super::access::users_json(api)
}

/// `GET /api/users`.
pub async fn users(State(api): State<Api>) -> Json<Vec<Value>> {
    Json(users_json(&api))
}

/// `GET /api/users/{name}`.
pub async fn user(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    users_json(&api)
        .into_iter()
        .find(|u| u["name"] == name.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

/// Effective permissions: `[[permissions]]` entries, and full access on each vhost a user
/// lists without an entry.
pub(super) fn permissions_json(api: &Api) -> Vec<Value> {
    super::access::permissions_json(api)
}

/// `GET /api/permissions`.
pub async fn permissions(State(api): State<Api>) -> Json<Vec<Value>> {
    Json(permissions_json(&api))
}

/// `GET /api/vhosts/{vhost}/permissions`.
pub async fn vhost_permissions(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    api.vhost(&vhost)?;
    Ok(Json(
        permissions_json(&api)
            .into_iter()
            .filter(|p| p["vhost"] == vhost.as_str())
            .collect(),
    ))
}

/// `GET /api/policies[/{vhost}]`: lockgate has no policies (queue behaviour comes from
/// `x-` arguments), so the list is empty.
pub async fn policies(State(api): State<Api>) -> Json<Vec<Value>> {
    Json(super::access::policies_json(&api, None))
}

/// `GET /api/policies/{vhost}`.
pub async fn vhost_policies(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    api.vhost(&vhost)?;
    Ok(Json(super::access::policies_json(&api, Some(&vhost))))
}

fn health(ok: bool, reason: &str, extra: Value) -> Response {
    if ok {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        let mut body = json!({"status": "failed", "reason": reason});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `GET /api/health/checks/alarms` (and `local-alarms`): 503 while the memory or disk alarm
/// is on.
pub async fn health_alarms(State(api): State<Api>) -> Response {
    let node = node_name();
    let mut alarms = Vec::new();
    if api.ctx.broker.memory_blocked() {
        alarms.push(json!({"node": node, "resource": "memory"}));
    }
    if *api.ctx.disk_alarm.borrow() {
        alarms.push(json!({"node": node, "resource": "disk"}));
    }
    health(
        alarms.is_empty(),
        "resource alarm(s) in effect in the cluster",
        json!({ "alarms": alarms }),
    )
}

/// `GET /api/health/checks/ready`: 200 while the broker accepts connections and no alarm
/// blocks publishers; 503 during shutdown or an alarm (for load-balancer readiness probes).
pub async fn health_ready(State(api): State<Api>) -> Response {
    if api.ctx.shutdown.is_cancelled() {
        return health(false, "shutting down", json!({}));
    }
    health_alarms(State(api)).await
}

/// `GET /api/health/checks/virtual-hosts`: every vhost is up while the broker runs.
pub async fn health_vhosts() -> Response {
    health(true, "", json!({}))
}

#[cfg(test)]
mod tests {
    use lockgate_wire::{FieldTable, FieldValue};

    use super::*;

    fn binding(key: &str, arguments: FieldTable) -> BindingSnapshot {
        BindingSnapshot {
            source: "x".into(),
            destination: "q".into(),
            destination_is_queue: true,
            routing_key: key.into(),
            arguments,
        }
    }

    #[test]
    fn properties_key_follows_rabbitmq() {
        assert_eq!(properties_key(&binding("", FieldTable::default())), "~");
        assert_eq!(
            properties_key(&binding("a.*", FieldTable::default())),
            "a.*"
        );
        assert_eq!(
            properties_key(&binding("a b/c", FieldTable::default())),
            "a%20b%2Fc"
        );
        let args: FieldTable = [("x-match".to_owned(), FieldValue::I64(1))]
            .into_iter()
            .collect();
        let with_args = properties_key(&binding("k", args));
        assert!(
            with_args.starts_with("k~") && with_args.len() > 2,
            "{with_args}"
        );
    }
}
