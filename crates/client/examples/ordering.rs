//! Ordering with lockgate's queue arguments (docs/semantics/ordering.md):
//!
//! - `jobs`, a priority queue (`x-max-priority` = 10): a message's `priority` property
//!   (0 when absent, 10 when above 10) decides its place; higher first, FIFO within a
//!   priority.
//! - `ledger`, a single-active-consumer queue: one consumer at a time gets every message;
//!   when it goes away the next registered consumer takes over, its unacked messages first.
//! - `payments`, a queue with message groups (`x-group-header` = "account"): every message of
//!   one account goes to the same consumer while it is subscribed, so each account's
//!   payments keep their order while the queue is shared by several consumers.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example ordering
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

    // Priorities: x-max-priority on the queue, the priority property on each message.
    channel
        .queue_declare(
            "jobs",
            durable,
            table(&[("x-max-priority", FieldValue::U8(10))]),
        )
        .await?;
    let urgent = BasicProperties {
        priority: Some(9),
        ..Default::default()
    };
    channel
        .basic_publish("", "jobs", PublishOptions::default(), urgent, "urgent job")
        .await?;

    // Single active consumer: every worker subscribes, one at a time receives.
    channel
        .queue_declare(
            "ledger",
            durable,
            table(&[("x-single-active-consumer", FieldValue::Bool(true))]),
        )
        .await?;

    // Message groups: the value of the `account` header keeps an account on one consumer.
    channel
        .queue_declare(
            "payments",
            durable,
            table(&[("x-group-header", text("account"))]),
        )
        .await?;
    for (account, amount) in [("acct-1", "10"), ("acct-2", "25"), ("acct-1", "-5")] {
        let payment = BasicProperties {
            headers: Some(table(&[("account", text(account))])),
            ..Default::default()
        };
        channel
            .basic_publish("", "payments", PublishOptions::default(), payment, amount)
            .await?;
    }

    // A worker: prefetch as usual; the groups it owns arrive in order.
    channel.basic_qos(10, QosOptions::default()).await?;
    let mut payments = channel
        .basic_consume(
            "payments",
            "",
            ConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..3 {
        let Some(delivery) = payments.next().await else {
            break;
        };
        let delivery = delivery?;
        println!(
            "payment {:?} (redelivered: {})",
            String::from_utf8_lossy(&delivery.body),
            delivery.redelivered
        );
        delivery.ack().await?;
    }
    conn.close().await
}
