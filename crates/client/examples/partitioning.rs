//! Partitioning, delayed delivery and deduplication with lockgate's exchange types and queue
//! arguments (docs/semantics/exchanges.md):
//!
//! - `orders`, an `x-consistent-hash` exchange hashing the `customer` header, over four
//!   queues `orders.0` .. `orders.3` (binding key = weight): one customer's orders always
//!   land in the same queue, so one consumer per queue keeps each customer's order.
//! - `reminders`, an `x-delayed-message` exchange routing as `direct`: a message with the
//!   `x-delay` header (ms) reaches the `reminders` queue only once its delay has passed.
//! - `payments`, a queue with `x-deduplication-window`: a retried publish with the same
//!   `message-id` is confirmed but not enqueued twice.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example partitioning
//! ```

use lockgate_client::{
    BasicProperties, Connection, ExchangeDeclareOptions, ExchangeKind, FieldTable, FieldValue,
    PublishOptions, QueueDeclareOptions,
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

    // Consistent hashing: four partitions of equal weight, keyed by the `customer` header.
    channel
        .exchange_declare(
            "orders",
            ExchangeKind::Custom("x-consistent-hash".into()),
            ExchangeDeclareOptions::default(),
            table(&[("hash-header", text("customer"))]),
        )
        .await?;
    for partition in 0..4 {
        let queue = format!("orders.{partition}");
        channel
            .queue_declare(&queue, durable, FieldTable::default())
            .await?;
        // The binding key is the weight: the number of points this queue has on the ring.
        channel
            .queue_bind(&queue, "orders", "1", FieldTable::default())
            .await?;
    }
    let order = BasicProperties {
        headers: Some(table(&[("customer", text("customer-42"))])),
        ..Default::default()
    };
    channel
        .basic_publish(
            "orders",
            "",
            PublishOptions::default(),
            order,
            "order placed",
        )
        .await?;

    // Delayed delivery: routed as `direct` once `x-delay` milliseconds have passed.
    channel
        .exchange_declare(
            "reminders",
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            table(&[("x-delayed-type", text("direct"))]),
        )
        .await?;
    channel
        .queue_declare("reminders", durable, FieldTable::default())
        .await?;
    channel
        .queue_bind("reminders", "reminders", "reminders", FieldTable::default())
        .await?;
    let in_five_seconds = BasicProperties {
        headers: Some(table(&[("x-delay", FieldValue::I32(5_000))])),
        ..Default::default()
    };
    channel
        .basic_publish(
            "reminders",
            "reminders",
            PublishOptions::default(),
            in_five_seconds,
            "pay your invoice",
        )
        .await?;

    // Deduplication: remember the last 10,000 message ids, for at most 10 minutes.
    channel
        .queue_declare(
            "payments",
            durable,
            table(&[("x-deduplication-window", text("10000,10m"))]),
        )
        .await?;
    channel.confirm_select().await?;
    let payment = BasicProperties {
        message_id: Some("payment-7781".into()),
        ..Default::default()
    };
    for _attempt in 0..2 {
        // The retry is confirmed too, but the queue holds the payment once.
        channel
            .basic_publish(
                "",
                "payments",
                PublishOptions::default(),
                payment.clone(),
                "charge 10 EUR",
            )
            .await?
            .await?;
    }
    println!("published an order, a reminder due in 5 s, and one payment (sent twice)");
    conn.close().await
}
