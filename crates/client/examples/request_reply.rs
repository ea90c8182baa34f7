//! Request/reply (RPC) over AMQP: a server task answers requests from the
//! `rpc` queue on each request's `reply_to` queue, echoing its
//! `correlation_id`; the client sends requests and matches the answers.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example request_reply
//! ```

use futures::StreamExt;
use lockgate_client::{
    BasicProperties, Channel, Connection, ConsumeOptions, FieldTable, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};

const RPC_QUEUE: &str = "rpc";

/// Answers each request with its body upper-cased.
async fn serve(channel: Channel) -> lockgate_client::Result<()> {
    let mut requests = channel
        .basic_consume(
            RPC_QUEUE,
            "",
            ConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(request) = requests.next().await {
        let request = request?;
        if let Some(reply_to) = &request.properties.reply_to {
            let reply = BasicProperties {
                correlation_id: request.properties.correlation_id.clone(),
                ..Default::default()
            };
            let body = String::from_utf8_lossy(&request.body).to_uppercase();
            channel
                .basic_publish("", reply_to, PublishOptions::default(), reply, body)
                .await?;
        }
        request.ack().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> lockgate_client::Result<()> {
    let uri = std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&uri).await?;

    let server = conn.open_channel().await?;
    server
        .queue_declare(
            RPC_QUEUE,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let server_task = tokio::spawn(serve(server.clone()));

    // The client's private reply queue.
    let client = conn.open_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let reply_queue = client
        .queue_declare("", exclusive, FieldTable::default())
        .await?
        .name;
    let no_ack = ConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut replies = client
        .basic_consume(&reply_queue, "", no_ack, FieldTable::default())
        .await?;

    for (i, word) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        let correlation_id = format!("request-{i}");
        let properties = BasicProperties {
            reply_to: Some(reply_queue.clone()),
            correlation_id: Some(correlation_id.clone()),
            ..Default::default()
        };
        client
            .basic_publish("", RPC_QUEUE, PublishOptions::default(), properties, word)
            .await?;
        while let Some(reply) = replies.next().await {
            let reply = reply?;
            if reply.properties.correlation_id.as_deref() == Some(correlation_id.as_str()) {
                println!("{word} -> {}", String::from_utf8_lossy(&reply.body));
                break;
            }
        }
    }

    server
        .queue_delete(RPC_QUEUE, QueueDeleteOptions::default())
        .await?;
    // Deleting the queue cancelled the server's consumer, which ends its loop.
    if let Ok(result) = server_task.await {
        result?;
    }
    conn.close().await
}
