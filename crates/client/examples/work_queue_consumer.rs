//! A worker sharing the durable `tasks` queue with other workers: one
//! unacknowledged message at a time (qos 1), acknowledged once processed, so a
//! crashed worker's message goes to another one.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example work_queue_consumer
//! ```

use futures::StreamExt;
use lockgate_client::{
    Connection, ConnectionOptions, ConsumeOptions, FieldTable, QosOptions, QueueDeclareOptions,
    RecoveryConfig,
};

#[tokio::main]
async fn main() -> lockgate_client::Result<()> {
    let uri = std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    // A long-running worker survives broker restarts with automatic recovery.
    let options = ConnectionOptions::from_uri(&uri)?.with_recovery(RecoveryConfig::default());
    let conn = Connection::connect_with(options).await?;
    let channel = conn.open_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("tasks", durable, FieldTable::default())
        .await?;
    channel.basic_qos(1, QosOptions::default()).await?;

    let mut consumer = channel
        .basic_consume(
            "tasks",
            "",
            ConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("waiting for tasks (consumer {})", consumer.tag());
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let task = String::from_utf8_lossy(&delivery.body);
        println!(
            "working on {task:?} (redelivered: {})",
            delivery.redelivered
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        // While the connection is being recovered an ack cannot be sent; the
        // broker requeues the unacknowledged message and delivers it again.
        if let Err(e) = delivery.ack().await {
            eprintln!("ack failed ({e}); the message will be redelivered");
        }
    }
    Ok(())
}
