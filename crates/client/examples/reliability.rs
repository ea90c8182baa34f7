//! Reliability with lockgate's queue arguments (docs/semantics/reliability.md):
//!
//! - `orders`, a work queue whose consumers must ack within 30 s (`x-consumer-timeout`):
//!   a delivery not acked in time goes back to the queue for the next consumer. A message
//!   that keeps failing is retried after 1 s, 2 s, 4 s ... up to 60 s (`x-retry-delay`,
//!   `x-retry-delay-max`) and dead-lettered after 5 redeliveries (`x-delivery-limit`), with
//!   the rest of the queue flowing meanwhile.
//! - `orders.dead`, where `orders` dead-letters (`x-dead-letter-exchange` = "" and
//!   `x-dead-letter-routing-key`): every message there carries an `x-death` header.
//! - `quotes`, a bounded queue of short-lived messages: `x-message-ttl` 10 s, at most 1000
//!   messages (`x-max-length`), the oldest dropped first (`x-overflow` = "drop-head").
//! - `payments`: RabbitMQ's consumer timeout, closing the channel (`x-consumer-timeout-action`
//!   = "close-channel").
//! - `events`, bounded by body bytes (`x-max-length-bytes`), refusing publishes beyond it
//!   (`x-overflow` = "reject-publish"); `audit` also dead-letters what it refuses
//!   ("reject-publish-dlx").
//! - `uploads`, a bounded queue that pushes back: at 10,000 messages (`x-overflow` =
//!   "block") publishers are paused until consumers catch up; `x-expires` deletes it after
//!   a day without consumers.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example reliability
//! ```

use futures::StreamExt;
use lockgate_client::{
    BasicProperties, Connection, ConsumeOptions, FieldTable, FieldValue, PublishOptions,
    QosOptions, QueueDeclareOptions,
};

fn text(value: &str) -> FieldValue {
    FieldValue::LongString(value.as_bytes().to_vec().into())
}

fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
    entries
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect()
}

#[tokio::main]
async fn main() -> lockgate_client::Result<()> {
    let uri = std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&uri).await?;
    let channel = conn.open_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };

    // Dead letters land here.
    channel
        .queue_declare("orders.dead", durable, FieldTable::default())
        .await?;

    // Ack timeout, retry delays, delivery limit, dead-lettering.
    channel
        .queue_declare(
            "orders",
            durable,
            table(&[
                ("x-consumer-timeout", FieldValue::I64(30_000)),
                ("x-retry-delay", FieldValue::I64(1_000)),
                ("x-retry-delay-max", FieldValue::I64(60_000)),
                ("x-delivery-limit", FieldValue::I64(5)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("orders.dead")),
            ]),
        )
        .await?;

    // TTL and a length limit that drops the oldest.
    channel
        .queue_declare(
            "quotes",
            QueueDeclareOptions::default(),
            table(&[
                ("x-message-ttl", FieldValue::I64(10_000)),
                ("x-max-length", FieldValue::I64(1_000)),
                ("x-overflow", text("drop-head")),
            ]),
        )
        .await?;
    let expiring = BasicProperties {
        expiration: Some("2000".into()),
        ..Default::default()
    };
    channel
        .basic_publish(
            "",
            "quotes",
            PublishOptions::default(),
            expiring,
            "EURUSD 1.08",
        )
        .await?;

    // Backpressure: publishers wait while the queue is full.
    channel
        .queue_declare(
            "uploads",
            durable,
            table(&[
                ("x-max-length", FieldValue::I64(10_000)),
                ("x-overflow", text("block")),
                ("x-expires", FieldValue::I64(86_400_000)),
            ]),
        )
        .await?;

    // RabbitMQ's consumer timeout: a delivery not acked within 30 s closes the channel
    // (406), which requeues everything it had unacked.
    channel
        .queue_declare(
            "payments",
            durable,
            table(&[
                ("x-consumer-timeout", FieldValue::I64(30_000)),
                ("x-consumer-timeout-action", text("close-channel")),
            ]),
        )
        .await?;

    // At most 64 MiB of bodies; a publish beyond it is refused (basic.nack with confirms).
    channel
        .queue_declare(
            "events",
            QueueDeclareOptions::default(),
            table(&[
                ("x-max-length-bytes", FieldValue::I64(64 << 20)),
                ("x-overflow", text("reject-publish")),
            ]),
        )
        .await?;

    // Refused publishes are also dead-lettered (reason maxlen) into orders.dead.
    channel
        .queue_declare(
            "audit",
            durable,
            table(&[
                ("x-max-length", FieldValue::I64(100_000)),
                ("x-overflow", text("reject-publish-dlx")),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("orders.dead")),
            ]),
        )
        .await?;

    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    channel
        .basic_publish(
            "",
            "orders",
            PublishOptions::default(),
            persistent,
            "order 1",
        )
        .await?;

    // A worker that fails once: the nacked order comes back after the retry delay, with
    // x-delivery-count = 1.
    channel.basic_qos(10, QosOptions::default()).await?;
    let mut orders = channel
        .basic_consume(
            "orders",
            "",
            ConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..2 {
        let Some(delivery) = orders.next().await else {
            break;
        };
        let delivery = delivery?;
        let count = delivery
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-delivery-count"))
            .and_then(FieldValue::as_i64)
            .unwrap_or(0);
        println!(
            "order {:?}, delivery count {count}",
            String::from_utf8_lossy(&delivery.body)
        );
        if count == 0 {
            delivery.nack(true).await?;
        } else {
            delivery.ack().await?;
        }
    }
    conn.close().await
}
