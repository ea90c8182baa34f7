//! Publishes persistent messages to a durable queue with publisher confirms,
//! keeping many in flight and waiting for every confirmation at the end.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example producer_confirms -- 1000
//! ```

use lockgate_client::{
    BasicProperties, Connection, FieldTable, PublishOptions, QueueDeclareOptions,
};

#[tokio::main]
async fn main() -> lockgate_client::Result<()> {
    let uri = std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let count: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);

    let conn = Connection::connect(&uri).await?;
    let channel = conn.open_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("tasks", durable, FieldTable::default())
        .await?;
    channel.confirm_select().await?;

    let persistent = BasicProperties {
        delivery_mode: Some(2),
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    let mut confirmations = Vec::with_capacity(count as usize);
    for i in 0..count {
        let body = format!("task {i}");
        let confirmation = channel
            .basic_publish(
                "",
                "tasks",
                PublishOptions::default(),
                persistent.clone(),
                body,
            )
            .await?;
        confirmations.push(confirmation);
    }
    // Every confirmation resolves when the broker acks that message; a nack
    // is `Err(Error::Nacked)`.
    for result in futures::future::join_all(confirmations).await {
        result?;
    }
    println!("{count} messages confirmed");
    conn.close().await
}
