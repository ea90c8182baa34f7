//! A subscriber that gets its own copy of everything published to the
//! `events` fanout exchange: an exclusive, server-named queue bound to it.
//! Run several to see each one receive every message; publish with e.g.
//! `amqp-publish -e events -b hello`.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example fanout_subscriber
//! ```

use futures::StreamExt;
use lockgate_client::{
    Connection, ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, FieldTable,
    QueueDeclareOptions,
};

#[tokio::main]
async fn main() -> lockgate_client::Result<()> {
    let uri = std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&uri).await?;
    let channel = conn.open_channel().await?;
    channel
        .exchange_declare(
            "events",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name;
    channel
        .queue_bind(&queue, "events", "", FieldTable::default())
        .await?;

    let no_ack = ConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut events = channel
        .basic_consume(&queue, "", no_ack, FieldTable::default())
        .await?;
    println!("subscribed to 'events' through {queue}");
    while let Some(event) = events.next().await {
        let event = event?;
        println!("event: {}", String::from_utf8_lossy(&event.body));
    }
    Ok(())
}
