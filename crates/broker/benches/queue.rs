//! Queue operations in batches of 1,000 messages: push (publish to a queue
//! without consumers, then purge), push + deliver + ack (one consumer, one
//! multiple ack per batch), and requeue (deliver, nack with requeue, which
//! redelivers at once, then ack). Reported per message.
//! Run with `cargo bench -p lockgate-broker --bench queue`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lockgate_broker::{
    Broker, BrokerConfig, Channel, ChannelId, ConnectionId, ConsumerTag, Delivery, DeliverySink,
    DeliveryTag, Exchange, Message, QueueFlags, SinkClosed, VHost,
};
use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, BASIC_CLASS_ID};

const BATCH: u64 = 1000;
const CONN: ConnectionId = ConnectionId(1);

/// Keeps the last delivery tag, as a connection writer would after writing.
#[derive(Default)]
struct LastTag(AtomicU64);

impl DeliverySink for LastTag {
    fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
        self.0.store(delivery.delivery_tag.0, Ordering::Relaxed);
        Ok(())
    }

    fn consumer_cancelled(&self, _consumer_tag: &ConsumerTag) {}
}

struct Fixture {
    vhost: Arc<VHost>,
    default_exchange: Arc<Exchange>,
    template: Message,
}

impl Fixture {
    fn new(queue: &str) -> Self {
        let broker = Broker::new(BrokerConfig::default());
        let vhost = broker.vhost("/").expect("default vhost");
        vhost
            .declare_queue(CONN, queue, QueueFlags::default(), FieldTable::default())
            .expect("declare queue");
        let default_exchange = vhost.exchange("").expect("default exchange");
        let header = ContentHeader::new(BASIC_CLASS_ID, 16, BasicProperties::default())
            .expect("valid header");
        let template = Message::new(
            String::new(),
            queue.into(),
            header,
            Bytes::from_static(&[0; 16]),
        );
        Self {
            vhost,
            default_exchange,
            template,
        }
    }

    fn push_batch(&self) {
        for _ in 0..BATCH {
            self.vhost
                .publish_to(&self.default_exchange, false, self.template.clone())
                .expect("publish");
        }
    }

    fn consumer(&self, queue: &str) -> (Channel, Arc<LastTag>) {
        let sink = Arc::new(LastTag::default());
        let mut channel = Channel::new(Arc::clone(&self.vhost), CONN, ChannelId(1), sink.clone());
        channel
            .consume(queue, "", false, false, &FieldTable::default(), |_| {})
            .expect("consume");
        (channel, sink)
    }
}

fn queue_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(BATCH));

    let push = Fixture::new("push");
    group.bench_function("push+purge", |b| {
        b.iter(|| {
            push.push_batch();
            push.vhost.purge_queue(CONN, "push").expect("purge")
        });
    });

    let work = Fixture::new("work");
    let (mut channel, last) = work.consumer("work");
    group.bench_function("push+deliver+ack", |b| {
        b.iter(|| {
            work.push_batch();
            let tag = DeliveryTag(last.0.load(Ordering::Relaxed));
            channel.ack(tag, true).expect("ack");
        });
    });

    let retry = Fixture::new("retry");
    let (mut channel, last) = retry.consumer("retry");
    group.bench_function("push+deliver+requeue+ack", |b| {
        b.iter(|| {
            retry.push_batch();
            let tag = DeliveryTag(last.0.load(Ordering::Relaxed));
            channel.nack(tag, true, true).expect("nack");
            let tag = DeliveryTag(last.0.load(Ordering::Relaxed));
            channel.ack(tag, true).expect("ack");
        });
    });
    group.finish();
}

criterion_group!(benches, queue_ops);
criterion_main!(benches);
