//! Routing cost: topic matching against 10,000 bindings, and headers
//! matching, through `VHost::publish_to`. Bindings point at empty fanout
//! exchanges (exchange-to-exchange), so every routed message is dropped
//! after matching and no queue grows while criterion iterates.
//! Run with `cargo bench -p lockgate-broker --bench routing`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lockgate_broker::{Broker, BrokerConfig, ExchangeFlags, Message, PublishOutcome, VHost};
use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, FieldValue, BASIC_CLASS_ID};

const BINDINGS: usize = 10_000;
const SINKS: usize = 100;

fn message(exchange: &str, routing_key: &str, headers: Option<FieldTable>) -> Message {
    let properties = BasicProperties {
        headers,
        ..BasicProperties::default()
    };
    let header = ContentHeader::new(BASIC_CLASS_ID, 16, properties).expect("valid header");
    Message::new(
        exchange.into(),
        routing_key.into(),
        header,
        Bytes::from_static(&[0; 16]),
    )
}

/// A vhost with `SINKS` empty fanout exchanges to bind to.
fn vhost() -> std::sync::Arc<VHost> {
    let broker = Broker::new(BrokerConfig::default());
    let vhost = broker.vhost("/").expect("default vhost");
    for i in 0..SINKS {
        vhost
            .declare_exchange(
                &format!("sink-{i}"),
                "fanout",
                ExchangeFlags::default(),
                FieldTable::default(),
            )
            .expect("declare sink");
    }
    vhost
}

fn topic(c: &mut Criterion) {
    let vhost = vhost();
    let exchange = vhost
        .declare_exchange(
            "events",
            "topic",
            ExchangeFlags::default(),
            FieldTable::default(),
        )
        .expect("declare topic");
    // 10,000 distinct patterns in the shapes services use: exact keys, `*`
    // and `#` wildcards, over 100 services × 100 event kinds.
    for i in 0..BINDINGS {
        let (service, event) = (i / 100, i % 100);
        let pattern = match i % 4 {
            0 => format!("svc{service}.ev{event}.created"),
            1 => format!("svc{service}.*.ev{event}"),
            2 => format!("svc{service}.ev{event}.#"),
            _ => format!("*.ev{event}.svc{service}.#"),
        };
        vhost
            .bind_exchange(
                &format!("sink-{}", i % SINKS),
                "events",
                &pattern,
                FieldTable::default(),
            )
            .expect("bind");
    }
    let mut group = c.benchmark_group("topic-10k-bindings");
    group.throughput(Throughput::Elements(1));
    for (name, key) in [
        ("exact-hit", "svc42.ev4.created"),
        ("hash-hit", "svc42.ev6.a.b.c"),
        ("miss", "nobody.listens.here"),
    ] {
        let template = message("events", key, None);
        group.bench_function(name, |b| {
            b.iter(|| {
                let outcome = vhost
                    .publish_to(&exchange, false, template.clone())
                    .expect("publish");
                matches!(outcome, PublishOutcome::Dropped)
            });
        });
    }
    group.finish();
}

fn headers(c: &mut Criterion) {
    let vhost = vhost();
    let exchange = vhost
        .declare_exchange(
            "by-headers",
            "headers",
            ExchangeFlags::default(),
            FieldTable::default(),
        )
        .expect("declare headers");
    for i in 0..1000usize {
        let mut args: FieldTable = [
            (
                "region".to_owned(),
                FieldValue::LongString(format!("r{}", i % 10).into()),
            ),
            (
                "kind".to_owned(),
                FieldValue::LongString(format!("k{}", i % 100).into()),
            ),
            ("version".to_owned(), FieldValue::I32((i % 3) as i32)),
        ]
        .into_iter()
        .collect();
        let mode = if i % 2 == 0 { "all" } else { "any" };
        args.insert("x-match", FieldValue::LongString(mode.into()));
        vhost
            .bind_exchange(&format!("sink-{}", i % SINKS), "by-headers", "", args)
            .expect("bind");
    }
    let mut group = c.benchmark_group("headers-1k-bindings");
    group.throughput(Throughput::Elements(1));
    let matching: FieldTable = [
        ("region".to_owned(), FieldValue::LongString("r3".into())),
        ("kind".to_owned(), FieldValue::LongString("k13".into())),
        ("version".to_owned(), FieldValue::I32(1)),
        ("trace".to_owned(), FieldValue::LongString("abc".into())),
    ]
    .into_iter()
    .collect();
    let other: FieldTable = [("unrelated".to_owned(), FieldValue::Bool(true))]
        .into_iter()
        .collect();
    for (name, table) in [("match", matching), ("no-match", other)] {
        let template = message("by-headers", "", Some(table));
        group.bench_function(name, |b| {
            b.iter(|| {
                vhost
                    .publish_to(&exchange, false, template.clone())
                    .expect("publish")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, topic, headers);
criterion_main!(benches);
