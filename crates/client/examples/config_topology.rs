//! A client's view of a policy from the config file (docs/configuration.md, "Policies").
//!
//! With a policy such as
//!
//! ```toml
//! [[policies]]
//! name = "orders-limits"
//! pattern = '^orders\.'
//! definition = { max-length = 1000, overflow = "drop-head" }
//! ```
//!
//! a queue declared without arguments (`orders.eu`) gets the policy's max-length 1000, and a
//! queue declared with its own `x-max-length` (`orders.us`) keeps it: the client's argument
//! wins over the policy, key by key, as in RabbitMQ. The management API shows both queues'
//! `policy` and `effective_policy_definition`.
//!
//! ```text
//! AMQP_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p lockgate-client --example config_topology
//! ```

use lockgate_client::{Connection, FieldTable, FieldValue, QueueDeclareOptions};

#[tokio::main]
async fn main() -> lockgate_client::Result<()> {
    let uri = std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&uri).await?;
    let ch = conn.open_channel().await?;

    // Gets max-length 1000 from the policy.
    ch.queue_declare(
        "orders.eu",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    // Its own max-length wins over the policy's.
    let mut args = FieldTable::default();
    args.insert("x-max-length", FieldValue::I64(10));
    ch.queue_declare("orders.us", QueueDeclareOptions::default(), args)
        .await?;

    println!("declared orders.eu (policy's max-length) and orders.us (its own x-max-length 10)");
    conn.close().await
}
