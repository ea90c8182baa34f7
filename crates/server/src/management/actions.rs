//! The endpoints that change things: declare and delete exchanges and queues, bind and
//! unbind, purge, publish and get (for debugging), create vhosts, close connections.
//!
//! They run as a pseudo-connection with id 0 (real connections start at 1), so they are
//! subject to the broker's rules (exclusive queues, `amq.` names) like any client, and wait
//! for the store where a client's declare-ok would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use bytes::Bytes;
use lockgate_broker::{
    BrokerError, Channel, ChannelId, ConnectionId, ConsumerTag, Delivery, DeliverySink,
    ExchangeFlags, Message, PublishOutcome, QueueFlags, SinkClosed, VHost,
};
use lockgate_store::Commit;
use lockgate_wire::{ContentHeader, FieldTable, HeaderRef, MAX_SHORTSTR};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::ApiUser;
use super::body::JsonBody;
use super::json::{properties_from_json, properties_to_json, table_from_json};
use super::read::destination_type;
use super::{Api, ApiError, ApiResult};
use crate::channel::check_content;
use crate::error::AmqpError;

/// A request's `arguments` as a table: an object, or null or `[]` for none.
pub(super) fn arguments(value: &Value) -> ApiResult<FieldTable> {
    table_from_json("arguments", value).map_err(ApiError::bad_request)
}

/// Refuses a name or routing key that AMQP could not carry: they are shortstrs, and one over
/// 255 octets in a basic.deliver could not be encoded (the consumer's connection would fail on
/// every delivery of such a message).
pub(super) fn shortstr(what: &str, value: &str) -> ApiResult<()> {
    if value.len() > MAX_SHORTSTR {
        return Err(ApiError::bad_request(format!(
            "{what} is {} octets, over AMQP's {MAX_SHORTSTR}",
            value.len()
        )));
    }
    Ok(())
}

/// The connection id the management API acts as.
pub const MANAGEMENT_CONNECTION: ConnectionId = ConnectionId(0);

/// RabbitMQ's name for the default exchange in API paths.
pub fn exchange_name(path: &str) -> &str {
    if path == "amq.default" {
        ""
    } else {
        path
    }
}

/// Waits until the store has every definition change made so far.
pub(super) async fn sync(vhost: &VHost) -> ApiResult<()> {
    wait_for(vhost.sync()).await
}

/// Waits for a store write, if there is one; a failed write is a 500.
async fn wait_for(commit: Option<Commit>) -> ApiResult<()> {
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

fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true")
}

/// The body of `PUT /api/exchanges/{vhost}/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ExchangeBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    durable: Option<bool>,
    auto_delete: bool,
    internal: bool,
    arguments: Value,
}

/// Declares an exchange in `vhost`; true when it already existed. A body without `durable`
/// gets `durable_default`.
pub(super) fn declare_exchange_in(
    vhost: &VHost,
    name: &str,
    body: &ExchangeBody,
    durable_default: bool,
) -> ApiResult<bool> {
    shortstr("exchange name", name)?;
    let arguments = arguments(&body.arguments)?;
    let existed = vhost.exchange(name).is_some();
    vhost.declare_exchange(
        name,
        body.kind.as_deref().unwrap_or("direct"),
        ExchangeFlags {
            passive: false,
            durable: body.durable.unwrap_or(durable_default),
            auto_delete: body.auto_delete,
            internal: body.internal,
        },
        arguments,
    )?;
    Ok(existed)
}

/// `PUT /api/exchanges/{vhost}/{name}`: 201 created, 204 when it existed (equivalent). Not
/// durable unless the body says so, as RabbitMQ (its exchange.declare's default).
pub async fn declare_exchange(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<ExchangeBody>,
) -> ApiResult<Response> {
    let v = api.vhost(&vhost)?;
    let existed = declare_exchange_in(&v, exchange_name(&name), &body, false)?;
    sync(&v).await?;
    Ok(created(existed))
}

/// `DELETE /api/exchanges/{vhost}/{name}[?if-unused=true]`.
pub async fn delete_exchange(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let v = api.vhost(&vhost)?;
    let name = exchange_name(&name);
    v.exchange(name).ok_or_else(ApiError::not_found)?;
    v.delete_exchange(name, flag(&query, "if-unused"))?;
    sync(&v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `PUT /api/queues/{vhost}/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QueueBody {
    durable: Option<bool>,
    auto_delete: bool,
    arguments: Value,
}

/// Declares a queue in `vhost`; true when it already existed. A body without `durable` gets
/// `durable_default`.
pub(super) fn declare_queue_in(
    vhost: &VHost,
    name: &str,
    body: &QueueBody,
    durable_default: bool,
) -> ApiResult<bool> {
    if name.is_empty() {
        return Err(ApiError::bad_request("queue name must not be empty"));
    }
    shortstr("queue name", name)?;
    let arguments = arguments(&body.arguments)?;
    let existed = vhost.queue(name).is_some();
    vhost.declare_queue(
        MANAGEMENT_CONNECTION,
        name,
        QueueFlags {
            passive: false,
            durable: body.durable.unwrap_or(durable_default),
            exclusive: false,
            auto_delete: body.auto_delete,
        },
        arguments,
    )?;
    Ok(existed)
}

/// `PUT /api/queues/{vhost}/{name}`: 201 created, 204 when it existed (equivalent). Not
/// durable unless the body says so, as RabbitMQ (its queue.declare's default).
pub async fn declare_queue(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<QueueBody>,
) -> ApiResult<Response> {
    let v = api.vhost(&vhost)?;
    let existed = declare_queue_in(&v, &name, &body, false)?;
    sync(&v).await?;
    Ok(created(existed))
}

/// `DELETE /api/queues/{vhost}/{name}[?if-unused=true&if-empty=true]`.
pub async fn delete_queue(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let v = api.vhost(&vhost)?;
    let queue = v.queue(&name).ok_or_else(ApiError::not_found)?;
    // As RabbitMQ's management API, an operator may delete another connection's exclusive
    // queue: act as its owner.
    v.delete_queue(
        queue.exclusive_owner().unwrap_or(MANAGEMENT_CONNECTION),
        &name,
        flag(&query, "if-unused"),
        flag(&query, "if-empty"),
    )?;
    sync(&v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purge.
pub async fn purge_queue(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let v = api.vhost(&vhost)?;
    let queue = v.queue(&name).ok_or_else(ApiError::not_found)?;
    v.purge_queue(
        queue.exclusive_owner().unwrap_or(MANAGEMENT_CONNECTION),
        &name,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a bind request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BindBody {
    routing_key: String,
    arguments: Value,
}

/// Binds `destination` (a queue when `to_queue`) to `source` in `vhost`.
pub(super) fn bind_in(
    vhost: &VHost,
    source: &str,
    to_queue: bool,
    destination: &str,
    routing_key: &str,
    arguments: FieldTable,
) -> ApiResult<()> {
    shortstr("routing key", routing_key)?;
    if to_queue {
        vhost.bind_queue(
            MANAGEMENT_CONNECTION,
            destination,
            source,
            routing_key,
            arguments,
        )?;
    } else {
        vhost.bind_exchange(destination, source, routing_key, arguments)?;
    }
    Ok(())
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`: 201 with the new binding's
/// path in `Location`, as RabbitMQ.
pub async fn bind(
    State(api): State<Api>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    JsonBody(body): JsonBody<BindBody>,
) -> ApiResult<Response> {
    let to_queue = destination_type(&kind)? == "queue";
    let v = api.vhost(&vhost)?;
    let source = exchange_name(&source);
    let arguments = arguments(&body.arguments)?;
    bind_in(
        &v,
        source,
        to_queue,
        &destination,
        &body.routing_key,
        arguments.clone(),
    )?;
    sync(&v).await?;
    let props = super::read::properties_key(&lockgate_broker::BindingSnapshot {
        source: source.to_owned(),
        destination: destination.clone(),
        destination_is_queue: to_queue,
        routing_key: body.routing_key.clone(),
        arguments,
    });
    Ok((StatusCode::CREATED, [(header::LOCATION, props)]).into_response())
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub async fn unbind(
    State(api): State<Api>,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let to_queue = destination_type(&kind)? == "queue";
    let v = api.vhost(&vhost)?;
    let source = exchange_name(&source);
    let binding = v
        .bindings()
        .into_iter()
        .find(|b| {
            b.source == source
                && b.destination == destination
                && b.destination_is_queue == to_queue
                && super::read::properties_key(b) == props
        })
        .ok_or_else(ApiError::not_found)?;
    if to_queue {
        v.unbind_queue(
            MANAGEMENT_CONNECTION,
            &destination,
            source,
            &binding.routing_key,
            &binding.arguments,
        )?;
    } else {
        v.unbind_exchange(
            &destination,
            source,
            &binding.routing_key,
            &binding.arguments,
        )?;
    }
    sync(&v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/vhosts/{vhost}`: creates a vhost (stored, so it survives a restart). The body's
/// fields (`description`, `tags`, `default_queue_type`) are not kept, but a body that is not a
/// JSON object is refused, as RabbitMQ refuses it.
pub async fn create_vhost(
    State(api): State<Api>,
    Path(name): Path<String>,
    JsonBody(_): JsonBody<IgnoredAny>,
) -> ApiResult<Response> {
    if name.is_empty() {
        return Err(ApiError::bad_request("vhost name must not be empty"));
    }
    shortstr("vhost name", &name)?;
    let existed = api.ctx.broker.vhost(&name).is_some();
    let (_, commit) = api.ctx.broker.create_vhost(&name);
    wait_for(commit).await?;
    Ok(created(existed))
}

/// `DELETE /api/connections/{name}`: connection.close 320 CONNECTION_FORCED with the
/// `X-Reason` header's text (RabbitMQ's default "Closed via management plugin").
pub async fn close_connection(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let c = api
        .ctx
        .connections
        .by_name(&name)
        .ok_or_else(ApiError::not_found)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    c.close(reason);
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a publish request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishBody {
    properties: Value,
    routing_key: String,
    payload: String,
    payload_encoding: Option<String>,
}

/// `POST /api/exchanges/{vhost}/{name}/publish`: `{"routed": bool}`.
///
/// RabbitMQ's API publishes through a channel: what basic.publish refuses is a 400 whose
/// reason is the channel's close, "406 PRECONDITION_FAILED - ...", and the same checks run
/// here ([`check_content`], then the exchange's and the queues'). A queue that refuses the
/// message (overflow reject-publish) is RabbitMQ's nack.
pub async fn publish(
    State(api): State<Api>,
    Extension(user): Extension<ApiUser>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Json<Value>> {
    let v = api.vhost(&vhost)?;
    let exchange = exchange_name(&name);
    let payload = match body.payload_encoding.as_deref().unwrap_or("string") {
        "string" => Bytes::from(body.payload.into_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(body.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, got {other}"
            )))
        }
    };
    shortstr("routing key", &body.routing_key)?;
    let properties = properties_from_json(&body.properties).map_err(ApiError::bad_request)?;
    let header = ContentHeader::new(60, payload.len() as u64, properties)
        .map_err(|e| ApiError::bad_request(format!("invalid properties: {e}")))?;
    let refused = |e: AmqpError| ApiError::bad_request(e.to_string());
    check_content(
        &v,
        &user.name,
        api.ctx.config.limits.max_message_size,
        exchange,
        HeaderRef::from(&header),
    )
    .map_err(refused)?;
    let broker_refused = |e: BrokerError| refused(AmqpError::new(e.reply_code(), e.text()));
    let target = v.publishable_exchange(exchange).map_err(broker_refused)?;
    let message = Message::new(exchange.to_owned(), body.routing_key, header, payload);
    let published = v
        .publish_checked(&target, false, message)
        .map_err(broker_refused)?;
    if published.refused {
        return Err(ApiError::bad_request(
            "rejected Unable to publish message. Check queue limits.",
        ));
    }
    let routed = matches!(published.outcome, PublishOutcome::Routed(n) if n > 0);
    Ok(Json(json!({ "routed": routed })))
}

/// A sink for the management API's short-lived channel: it never consumes, so nothing is
/// ever delivered to it.
struct NoConsumers;

impl DeliverySink for NoConsumers {
    fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
        Err(SinkClosed(delivery))
    }

    fn consumer_cancelled(&self, _consumer_tag: &ConsumerTag) {}
}

/// Channel numbers for the management API's `get` channels (they only need to be distinct
/// while they exist).
static NEXT_CHANNEL: AtomicU16 = AtomicU16::new(1);

/// The body of `POST /api/queues/{vhost}/{name}/get`.
#[derive(Debug, Deserialize)]
pub struct GetBody {
    count: usize,
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    #[serde(default)]
    truncate: Option<usize>,
}

fn auto() -> String {
    "auto".to_owned()
}

/// `POST /api/queues/{vhost}/{name}/get`: takes up to `count` messages and acks them
/// (`ack_requeue_false`, `reject_requeue_false`) or requeues them (`ack_requeue_true`,
/// `reject_requeue_true`: they come back redelivered), as RabbitMQ.
pub async fn get_messages(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<GetBody>,
) -> ApiResult<Json<Vec<Value>>> {
    let requeue = match body.ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => true,
        "ack_requeue_false" | "reject_requeue_false" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true or \
                 reject_requeue_false, got {other}"
            )))
        }
    };
    if !matches!(body.encoding.as_str(), "auto" | "base64") {
        return Err(ApiError::bad_request("encoding must be auto or base64"));
    }
    let v = api.vhost(&vhost)?;
    let id = ChannelId(NEXT_CHANNEL.fetch_add(1, Ordering::Relaxed));
    let mut channel = Channel::new(
        Arc::clone(&v),
        MANAGEMENT_CONNECTION,
        id,
        Arc::new(NoConsumers),
    );
    let mut out = Vec::new();
    let mut tags = Vec::new();
    for _ in 0..body.count {
        let Some(got) = channel.get(&name, false)? else {
            break;
        };
        tags.push(got.delivery_tag);
        let message = &got.message;
        let mut payload = message.body_bytes();
        let payload_bytes = payload.len();
        if let Some(limit) = body.truncate {
            payload.truncate(limit);
        }
        let (text, encoding) = match (body.encoding.as_str(), std::str::from_utf8(&payload)) {
            ("auto", Ok(text)) => (text.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(&payload),
                "base64",
            ),
        };
        out.push(json!({
            "payload_bytes": payload_bytes,
            "redelivered": got.redelivered,
            "exchange": message.exchange(),
            "routing_key": message.routing_key(),
            "message_count": got.message_count,
            "properties": properties_to_json(&message.properties()),
            "payload": text,
            "payload_encoding": encoding,
        }));
    }
    if !requeue {
        for tag in tags {
            channel.ack(tag, false)?;
        }
    }
    // Closing requeues whatever is left unacked, marked redelivered.
    channel.close();
    Ok(Json(out))
}
