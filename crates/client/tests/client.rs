//! End-to-end tests of the client against lockgate (or `LOCKGATE_TEST_URI`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{unique, within};
use futures::StreamExt;
use lockgate_client::{
    BasicProperties, Channel, Connection, ConnectionOptions, ConsumeOptions, Error,
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeKind, FieldTable, FieldValue,
    GetOptions, PublishOptions, QosOptions, QueueDeclareOptions, QueueDeleteOptions,
    RecoveryConfig,
};

fn no_args() -> FieldTable {
    FieldTable::default()
}

async fn declare_queue(ch: &Channel, name: &str) {
    ch.queue_declare(name, QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str) {
    ch.basic_publish(
        exchange,
        key,
        PublishOptions::default(),
        BasicProperties::default(),
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn message_count(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.open_channel().await.unwrap();
    let info = ch
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap();
    ch.close().await.unwrap();
    info.message_count
}

/// Polls `check` until it holds (brokers count asynchronously).
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never held");
}

#[test]
fn uri_parts_are_percent_decoded_with_defaults() {
    let o: ConnectionOptions =
        "amqp://app%3Auser:s%40cret@10.0.0.7:5673/prod%2Forders?heartbeat=15&frame_max=65536"
            .parse()
            .unwrap();
    assert_eq!(o.username, "app:user");
    assert_eq!(o.password, "s@cret");
    assert_eq!((o.host.as_str(), o.port), ("10.0.0.7", 5673));
    assert_eq!(o.vhost, "prod/orders");
    assert_eq!((o.heartbeat, o.frame_max), (15, 65536));
    let d = ConnectionOptions::from_uri("amqp://broker").unwrap();
    assert_eq!(
        (d.username.as_str(), d.password.as_str()),
        ("guest", "guest")
    );
    assert_eq!((d.port, d.vhost.as_str()), (5672, "/"));
    assert!(d.recovery.is_none());
    assert!(matches!(
        ConnectionOptions::from_uri("amqps://broker"),
        Err(Error::InvalidUri(_))
    ));
}

#[tokio::test]
async fn connect_negotiates_and_closes_cleanly() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&format!("{}?heartbeat=5", broker.uri()))
            .await
            .unwrap();
        assert!(conn.is_open());
        assert_eq!(conn.heartbeat(), 5);
        assert!(conn.frame_max() >= 4096);
        assert!(conn.channel_max() > 0);
        assert!(conn.server_properties().get("product").is_some());
        let ch = conn.open_channel().await.unwrap();
        assert!(ch.is_open());
        conn.close().await.unwrap();
        assert!(!conn.is_open());
        assert!(!ch.is_open());
        assert!(matches!(conn.close_error(), Some(Error::ClientClosed)));
        assert!(matches!(
            conn.open_channel().await,
            Err(Error::ClientClosed)
        ));
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_403() {
    let broker = common::TestBroker::start();
    within(async {
        let mut options = ConnectionOptions::from_uri(&broker.uri()).unwrap();
        options.password = "not-the-password".into();
        let err = Connection::connect_with(options).await.unwrap_err();
        assert_eq!(err.reply_code(), Some(403), "{err}");
    })
    .await;
}

#[tokio::test]
async fn unknown_vhost_is_refused() {
    let broker = common::TestBroker::start();
    within(async {
        let mut options = ConnectionOptions::from_uri(&broker.uri()).unwrap();
        options.vhost = unique("no-such-vhost");
        let err = Connection::connect_with(options).await.unwrap_err();
        // RabbitMQ answers 530 NOT_ALLOWED (older versions 402 INVALID_PATH).
        assert!(matches!(err.reply_code(), Some(530 | 402)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn connection_refused_is_an_io_error() {
    within(async {
        // Bound but not listening: the port stays ours (a dropped listener's port can go to
        // another test's broker meanwhile), and a connect to it is refused.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        let err = Connection::connect(&format!("amqp://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn declare_bind_purge_unbind_delete() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let exchange = unique("ex");
        let queue = unique("q");
        ch.exchange_declare(
            &exchange,
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
        let info = ch
            .queue_declare(&queue, QueueDeclareOptions::default(), no_args())
            .await
            .unwrap();
        assert_eq!(
            (info.name.as_str(), info.message_count, info.consumer_count),
            (queue.as_str(), 0, 0)
        );
        ch.queue_bind(&queue, &exchange, "key", no_args())
            .await
            .unwrap();
        for i in 0..3 {
            publish(&ch, &exchange, "key", &format!("m{i}")).await;
        }
        let c = conn.clone();
        let q = queue.clone();
        eventually(|| {
            let (c, q) = (c.clone(), q.clone());
            async move { message_count(&c, &q).await == 3 }
        })
        .await;
        assert_eq!(ch.queue_purge(&queue).await.unwrap(), 3);
        assert_eq!(message_count(&conn, &queue).await, 0);

        ch.queue_unbind(&queue, &exchange, "key", no_args())
            .await
            .unwrap();
        publish(&ch, &exchange, "key", "unrouted").await;
        // A round trip on the same channel orders after the publish.
        assert_eq!(ch.queue_purge(&queue).await.unwrap(), 0);

        assert_eq!(
            ch.queue_delete(&queue, QueueDeleteOptions::default())
                .await
                .unwrap(),
            0
        );
        ch.exchange_delete(&exchange, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        let err = ch
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.reply_code(), Some(404), "{err}");
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let (source, dest, queue) = (unique("src"), unique("dst"), unique("q"));
        for (name, kind) in [
            (&source, ExchangeKind::Fanout),
            (&dest, ExchangeKind::Topic),
        ] {
            ch.exchange_declare(name, kind, ExchangeDeclareOptions::default(), no_args())
                .await
                .unwrap();
        }
        declare_queue(&ch, &queue).await;
        ch.queue_bind(&queue, &dest, "a.*", no_args())
            .await
            .unwrap();
        ch.exchange_bind(&dest, &source, "", no_args())
            .await
            .unwrap();
        publish(&ch, &source, "a.b", "via two exchanges").await;
        let get = within(async {
            loop {
                if let Some(m) = ch
                    .basic_get(&queue, GetOptions { no_ack: true })
                    .await
                    .unwrap()
                {
                    break m;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(&get.delivery.body[..], b"via two exchanges");
        assert_eq!(&*get.delivery.exchange, source);
        ch.exchange_unbind(&dest, &source, "", no_args())
            .await
            .unwrap();
        ch.exchange_delete(&source, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        ch.exchange_delete(&dest, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn publish_consume_ack_keeps_properties_and_body() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        assert!(!consumer.tag().is_empty());
        let headers: FieldTable = [
            ("x-number".to_string(), FieldValue::I32(42)),
            ("x-text".to_string(), FieldValue::from("hello")),
        ]
        .into_iter()
        .collect();
        let properties = BasicProperties {
            content_type: Some("text/plain".into()),
            correlation_id: Some("corr-1".into()),
            reply_to: Some("replies".into()),
            delivery_mode: Some(2),
            headers: Some(headers.clone()),
            ..Default::default()
        };
        // Bigger than frame_max: split into several body frames and reassembled.
        let body: Bytes = (0..300_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        ch.basic_publish(
            "",
            &queue,
            PublishOptions::default(),
            properties.clone(),
            body.clone(),
        )
        .await
        .unwrap();
        let delivery = consumer.next().await.unwrap().unwrap();
        assert_eq!(delivery.body, body);
        assert_eq!(
            delivery.properties.content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(
            delivery.properties.correlation_id.as_deref(),
            Some("corr-1")
        );
        assert_eq!(delivery.properties.reply_to.as_deref(), Some("replies"));
        assert_eq!(delivery.properties.delivery_mode, Some(2));
        assert_eq!(delivery.properties.headers.as_ref(), Some(&headers));
        assert_eq!(&*delivery.routing_key, queue);
        assert_eq!(&*delivery.exchange, "");
        assert_eq!(&*delivery.consumer_tag, consumer.tag());
        assert!(!delivery.redelivered);
        delivery.ack().await.unwrap();
        consumer.cancel().await.unwrap();
        assert!(consumer.next().await.is_none());
        assert_eq!(message_count(&conn, &queue).await, 0);
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn nack_with_requeue_redelivers_and_reject_drops() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        let mut consumer = ch
            .basic_consume(&queue, "my-consumer", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        assert_eq!(consumer.tag(), "my-consumer");
        publish(&ch, "", &queue, "again").await;
        let first = consumer.next().await.unwrap().unwrap();
        assert!(!first.redelivered);
        first.nack(true).await.unwrap();
        let second = consumer.next().await.unwrap().unwrap();
        assert!(second.redelivered);
        assert_eq!(&second.body[..], b"again");
        second.reject(false).await.unwrap();
        publish(&ch, "", &queue, "next").await;
        let third = consumer.next().await.unwrap().unwrap();
        assert_eq!(&third.body[..], b"next");
        third.ack().await.unwrap();
        consumer.cancel().await.unwrap();
        assert_eq!(message_count(&conn, &queue).await, 0);
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn multiple_ack_and_nack_settle_ranges() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        for i in 0..6 {
            publish(&ch, "", &queue, &format!("m{i}")).await;
        }
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(consumer.next().await.unwrap().unwrap());
        }
        got[2].ack_multiple().await.unwrap();
        got[5].nack_multiple(false).await.unwrap();
        consumer.cancel().await.unwrap();
        assert_eq!(message_count(&conn, &queue).await, 0);
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn many_confirms_in_flight_all_resolve() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        ch.confirm_select().await.unwrap();
        let mut pending = Vec::new();
        for i in 0..2000u32 {
            let confirmation = ch
                .basic_publish(
                    "",
                    &queue,
                    PublishOptions::default(),
                    BasicProperties::default(),
                    i.to_be_bytes().to_vec(),
                )
                .await
                .unwrap();
            assert!(confirmation.is_requested());
            pending.push(confirmation);
        }
        for result in futures::future::join_all(pending).await {
            result.unwrap();
        }
        assert_eq!(message_count(&conn, &queue).await, 2000);
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn confirm_of_publish_to_missing_exchange_fails_with_404() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        ch.confirm_select().await.unwrap();
        let confirmation = ch
            .basic_publish(
                &unique("missing"),
                "",
                PublishOptions::default(),
                BasicProperties::default(),
                "lost",
            )
            .await
            .unwrap();
        let err = confirmation.await.unwrap_err();
        assert_eq!(err.reply_code(), Some(404), "{err}");
        assert!(matches!(err, Error::ChannelClosed(_)));
        assert!(!ch.is_open());
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let mut returns = ch.returns();
        ch.confirm_select().await.unwrap();
        let key = unique("nobody");
        let confirmation = ch
            .basic_publish(
                "",
                &key,
                PublishOptions { mandatory: true },
                BasicProperties {
                    message_id: Some("m-1".into()),
                    ..Default::default()
                },
                "nowhere",
            )
            .await
            .unwrap();
        let returned = returns.next().await.unwrap();
        assert_eq!(returned.reply_code, 312);
        assert_eq!(returned.reply_text, "NO_ROUTE");
        assert_eq!(returned.routing_key, key);
        assert_eq!(returned.properties.message_id.as_deref(), Some("m-1"));
        assert_eq!(&returned.body[..], b"nowhere");
        // RabbitMQ acks an unroutable message after returning it.
        confirmation.await.unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn basic_get_fetches_one_message_at_a_time() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        assert!(ch
            .basic_get(&queue, GetOptions::default())
            .await
            .unwrap()
            .is_none());
        publish(&ch, "", &queue, "one").await;
        publish(&ch, "", &queue, "two").await;
        let c = conn.clone();
        let q = queue.clone();
        eventually(|| {
            let (c, q) = (c.clone(), q.clone());
            async move { message_count(&c, &q).await == 2 }
        })
        .await;
        let first = ch
            .basic_get(&queue, GetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first.delivery.body[..], b"one");
        assert_eq!(first.message_count, 1);
        first.delivery.ack().await.unwrap();
        let second = ch
            .basic_get(&queue, GetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&second.delivery.body[..], b"two");
        assert_eq!(second.message_count, 0);
        assert!(ch
            .basic_get(&queue, GetOptions::default())
            .await
            .unwrap()
            .is_none());
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn qos_limits_unacknowledged_deliveries() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        for i in 0..5 {
            publish(&ch, "", &queue, &format!("m{i}")).await;
        }
        ch.basic_qos(2, QosOptions::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        let a = consumer.next().await.unwrap().unwrap();
        let b = consumer.next().await.unwrap().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), consumer.next())
                .await
                .is_err(),
            "a third delivery arrived despite prefetch 2"
        );
        a.ack().await.unwrap();
        let c = consumer.next().await.unwrap().unwrap();
        assert_eq!(&c.body[..], b"m2");
        b.ack().await.unwrap();
        c.ack().await.unwrap();
        consumer.cancel().await.unwrap();
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn cancel_ends_the_stream_and_broker_cancel_too() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        consumer.cancel().await.unwrap();
        assert!(consumer.next().await.is_none());

        // Deleting the queue from another channel: the broker cancels the consumer.
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        let other = conn.open_channel().await.unwrap();
        other
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        assert!(consumer.next().await.is_none());
        // The channel itself is still usable.
        declare_queue(&ch, &queue).await;
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn broker_errors_are_typed_and_the_connection_survives() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let missing = unique("missing");
        let err = ch
            .queue_declare(
                &missing,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            )
            .await
            .unwrap_err();
        let Error::ChannelClosed(reason) = &err else {
            panic!("expected a channel error, got {err}");
        };
        assert_eq!(reason.code, 404);
        assert!(reason.text.starts_with("NOT_FOUND"), "{}", reason.text);
        assert!(!ch.is_open());
        // The closed channel reports the same error to later calls.
        let again = ch.queue_purge(&missing).await.unwrap_err();
        assert_eq!(again.reply_code(), Some(404));

        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        let err = ch
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                no_args(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.reply_code(), Some(406), "{err}");
        assert!(err.reply_text().unwrap().starts_with("PRECONDITION_FAILED"));

        // Unknown delivery tag: 406 as well.
        let ch = conn.open_channel().await.unwrap();
        publish(&ch, "", &queue, "x").await;
        let got = loop {
            if let Some(m) = ch
                .basic_get(&queue, GetOptions { no_ack: true })
                .await
                .unwrap()
            {
                break m;
            }
        };
        got.delivery.ack().await.unwrap();
        let err = ch.queue_purge(&queue).await.unwrap_err();
        assert_eq!(err.reply_code(), Some(406), "{err}");

        assert!(conn.is_open());
        let ch = conn.open_channel().await.unwrap();
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn closing_ends_consumers_and_fails_later_calls() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        ch.queue_declare(
            &queue,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        ch.close().await.unwrap();
        assert!(consumer.next().await.is_none());
        assert!(matches!(
            ch.queue_purge(&queue).await,
            Err(Error::ClientClosed)
        ));
        ch.close().await.unwrap();

        let ch = conn.open_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        conn.close().await.unwrap();
        assert!(consumer.next().await.is_none());
        assert!(matches!(
            ch.basic_publish(
                "",
                &queue,
                PublishOptions::default(),
                BasicProperties::default(),
                "x"
            )
            .await,
            Err(Error::ClientClosed)
        ));
    })
    .await;
}

#[tokio::test]
async fn lost_connection_fails_pending_work_instead_of_hanging() {
    let mut broker = common::TestBroker::start();
    broker.relay().await;
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        ch.queue_declare(
            &queue,
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        broker.down().await;
        let item = consumer.next().await.expect("an error before the end");
        assert!(item.is_err());
        assert!(consumer.next().await.is_none());
        assert!(!conn.is_open());
        assert!(conn.close_error().is_some());
        assert!(ch.queue_purge(&queue).await.is_err());
        assert!(ch
            .basic_publish(
                "",
                &queue,
                PublishOptions::default(),
                BasicProperties::default(),
                "x"
            )
            .await
            .is_err());
        assert!(conn.open_channel().await.is_err());
        // Closing a dead connection reports why it died, at once.
        assert!(conn.close().await.is_err());
    })
    .await;
}

/// The harness keeps a broker's port while the broker is down, so that it comes back where its
/// clients reconnect: tests run in parallel, and a freed port can go to another test's broker
/// (or be a connect's own local port) before the restart binds it.
#[tokio::test]
async fn a_broker_that_is_down_keeps_its_port_for_its_restart() {
    let mut broker = common::TestBroker::start();
    broker.relay().await;
    within(async {
        let options = ConnectionOptions::from_uri(&broker.uri()).unwrap();
        let addr: std::net::SocketAddr = format!("{}:{}", options.host, options.port)
            .parse()
            .unwrap();
        broker.down().await;
        let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        // A socket that sets no SO_REUSEADDR stands for any other socket the kernel hands a
        // port to: it cannot have this one.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        assert!(other.bind(addr).is_err(), "{addr} was free while down");
        broker.up().await;
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn recovery_restores_topology_and_consumers_after_a_restart() {
    let mut broker = common::TestBroker::start();
    broker.relay().await;
    within(async {
        let options = ConnectionOptions::from_uri(&broker.uri())
            .unwrap()
            .with_recovery(RecoveryConfig {
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(500),
                max_attempts: None,
            });
        let conn = Connection::connect_with(options).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let exchange = unique("ex");
        ch.exchange_declare(
            &exchange,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
        // A server-named exclusive queue: it comes back under a new name.
        let queue = ch
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                no_args(),
            )
            .await
            .unwrap()
            .name;
        ch.queue_bind(&queue, &exchange, "", no_args())
            .await
            .unwrap();
        ch.basic_qos(10, QosOptions::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        let publisher = conn.open_channel().await.unwrap();
        publisher.confirm_select().await.unwrap();
        publisher
            .basic_publish(
                &exchange,
                "",
                PublishOptions::default(),
                BasicProperties::default(),
                "before",
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let before = consumer.next().await.unwrap().unwrap();
        assert_eq!(&before.body[..], b"before");
        before.ack().await.unwrap();

        broker.down().await;
        let c = conn.clone();
        eventually(|| {
            let c = c.clone();
            async move { !c.is_open() }
        })
        .await;
        assert!(matches!(
            publisher
                .basic_publish(
                    &exchange,
                    "",
                    PublishOptions::default(),
                    BasicProperties::default(),
                    "lost"
                )
                .await,
            Err(Error::Disconnected)
        ));
        broker.up().await;

        // Publish until the recovered publisher channel accepts and confirms.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never recovered");
            if let Ok(confirmation) = publisher
                .basic_publish(
                    &exchange,
                    "",
                    PublishOptions::default(),
                    BasicProperties::default(),
                    "after",
                )
                .await
            {
                if confirmation.await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(conn.is_open());
        // The same stream receives it: exchange, queue, binding and consumer were restored.
        let after = loop {
            let d = consumer.next().await.unwrap().unwrap();
            if &d.body[..] == b"after" {
                break d;
            }
        };
        after.ack().await.unwrap();
        conn.close().await.unwrap();
        assert!(consumer.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn unsendable_arguments_fail_the_call_not_the_connection() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let long = "x".repeat(300);
        let err = ch
            .queue_declare(&long, QueueDeclareOptions::default(), no_args())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        ch.confirm_select().await.unwrap();
        let err = ch
            .basic_publish(
                "",
                &long,
                PublishOptions::default(),
                BasicProperties::default(),
                "x",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        // Nothing was sent: the channel and its confirm numbering are intact.
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        publish(&ch, "", &queue, "fine").await;
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn concurrent_publishers_on_shared_and_separate_channels_all_confirm() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let setup = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&setup, &queue).await;
        let shared = conn.open_channel().await.unwrap();
        shared.confirm_select().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            // Half the tasks share one channel, half have their own.
            let ch = if i % 2 == 0 {
                shared.clone()
            } else {
                let ch = conn.open_channel().await.unwrap();
                ch.confirm_select().await.unwrap();
                ch
            };
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let mut pending = Vec::new();
                for n in 0..250u32 {
                    pending.push(
                        ch.basic_publish(
                            "",
                            &queue,
                            PublishOptions::default(),
                            BasicProperties::default(),
                            n.to_be_bytes().to_vec(),
                        )
                        .await
                        .unwrap(),
                    );
                }
                for result in futures::future::join_all(pending).await {
                    result.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(message_count(&conn, &queue).await, 2000);
        setup
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

/// The body size of message `n` in `multi_frame_publishes_on_many_channels_keep_order_and_bytes`:
/// around the frame and inline limits, at least the 8 octets of (channel, n).
fn interleaved_body_size(n: u32) -> usize {
    [0usize, 62, 256, 257, 4088, 4089, 10_000][(n % 7) as usize].max(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_frame_publishes_on_many_channels_keep_order_and_bytes() {
    const PER_CHANNEL: u32 = 3000;
    const CHANNELS: u32 = 4;
    let broker = common::TestBroker::start();
    within(async {
        // Bodies above 4 KiB take several frames; publishes of four channels and the
        // consumer's acks share the connection, so their frames interleave on the socket.
        let uri = format!("{}?frame_max=4096", broker.uri());
        let conn = Connection::connect(&uri).await.unwrap();
        let setup = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&setup, &queue).await;
        let consuming = conn.open_channel().await.unwrap();
        let mut consumer = consuming
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for c in 0..CHANNELS {
            let ch = conn.open_channel().await.unwrap();
            ch.confirm_select().await.unwrap();
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let mut pending = Vec::new();
                for n in 0..PER_CHANNEL {
                    let mut body = vec![(c * 31 + n) as u8; interleaved_body_size(n)];
                    body[..4].copy_from_slice(&c.to_be_bytes());
                    body[4..8].copy_from_slice(&n.to_be_bytes());
                    let mut headers = FieldTable::default();
                    headers.insert("n", FieldValue::I64(i64::from(n)));
                    let properties = BasicProperties {
                        headers: Some(headers),
                        priority: Some(1),
                        ..BasicProperties::default()
                    };
                    let confirm = ch
                        .basic_publish(
                            "",
                            &queue,
                            PublishOptions::default(),
                            &properties,
                            &body[..],
                        )
                        .await
                        .unwrap();
                    pending.push(confirm);
                }
                for confirmed in futures::future::join_all(pending).await {
                    confirmed.unwrap();
                }
            }));
        }
        let mut next = vec![0u32; CHANNELS as usize];
        for _ in 0..PER_CHANNEL * CHANNELS {
            let d = consumer.next().await.unwrap().unwrap();
            let c = u32::from_be_bytes(d.body[..4].try_into().unwrap());
            let n = u32::from_be_bytes(d.body[4..8].try_into().unwrap());
            assert_eq!(n, next[c as usize], "order on channel {c}");
            next[c as usize] += 1;
            assert_eq!(d.body.len(), interleaved_body_size(n));
            assert!(d.body[8..].iter().all(|&b| b == (c * 31 + n) as u8));
            assert_eq!(
                d.properties.headers.as_ref().unwrap().get("n"),
                Some(&FieldValue::I64(i64::from(n)))
            );
            assert_eq!(&*d.routing_key, queue.as_str());
            d.ack().await.unwrap();
        }
        for task in tasks {
            task.await.unwrap();
        }
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_header_frame_larger_than_the_consumers_frame_max_is_received() {
    let broker = common::TestBroker::start();
    within(async {
        // The publisher's frame_max allows a 20 KiB header; the broker sends a header frame
        // whole (as RabbitMQ does), so the consumer's 8 KiB frame_max does not bound it.
        let publisher = Connection::connect(&broker.uri()).await.unwrap();
        let uri = format!("{}?frame_max=8192", broker.uri());
        let consuming = Connection::connect(&uri).await.unwrap();
        let ch = consuming.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        let mut consumer = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        let mut headers = FieldTable::default();
        headers.insert("big", FieldValue::LongString(vec![b'h'; 20_000].into()));
        let properties = BasicProperties {
            headers: Some(headers.clone()),
            ..BasicProperties::default()
        };
        let pch = publisher.open_channel().await.unwrap();
        pch.basic_publish(
            "",
            &queue,
            PublishOptions::default(),
            &properties,
            &b"body"[..],
        )
        .await
        .unwrap();
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.properties.headers.as_ref(), Some(&headers));
        assert_eq!(&d.body[..], b"body");
        d.ack().await.unwrap();
        assert!(consuming.is_open());
        consuming.close().await.unwrap();
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_dropped_consumers_unread_deliveries_go_to_the_next_consumer() {
    let broker = common::TestBroker::start();
    within(async {
        let conn = Connection::connect(&broker.uri()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let queue = unique("q");
        declare_queue(&ch, &queue).await;
        for n in 1..=5 {
            publish(&ch, "", &queue, &n.to_string()).await;
        }
        let mut first = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        let kept = first.next().await.unwrap().unwrap();
        // The channel stays open (and so do the deliveries it holds unacked).
        drop(first);
        let mut second = ch
            .basic_consume(&queue, "", ConsumeOptions::default(), no_args())
            .await
            .unwrap();
        let mut bodies = Vec::new();
        for _ in 0..4 {
            let d = second.next().await.unwrap().unwrap();
            bodies.push(String::from_utf8(d.body.to_vec()).unwrap());
            d.ack().await.unwrap();
        }
        bodies.push(String::from_utf8(kept.body.to_vec()).unwrap());
        bodies.sort();
        assert_eq!(bodies, ["1", "2", "3", "4", "5"]);
        kept.ack().await.unwrap();
        conn.close().await.unwrap();
    })
    .await;
}
