//! Helpers shared by the broker tests: a sink that collects deliveries, message builders.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lockgate_broker::{
    Broker, BrokerConfig, Channel, ChannelId, ConnectionId, ConsumerTag, Delivery, DeliverySink,
    Message, QueueFlags, SinkClosed, VHost,
};
use lockgate_store::{Store, StoreConfig};
use lockgate_wire::{BasicProperties, ContentHeader, FieldTable};

/// Collects deliveries and broker-initiated cancels; can be switched to "connection gone".
#[derive(Default)]
pub struct TestSink {
    pub deliveries: Mutex<Vec<Delivery>>,
    pub cancelled: Mutex<Vec<ConsumerTag>>,
    pub closed: AtomicBool,
}

impl TestSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes every delivery received so far.
    pub fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock().unwrap())
    }

    pub fn count(&self) -> usize {
        self.deliveries.lock().unwrap().len()
    }

    pub fn bodies(&self) -> Vec<String> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|d| body(&d.message))
            .collect()
    }
}

impl DeliverySink for TestSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SinkClosed(delivery));
        }
        self.deliveries.lock().unwrap().push(delivery);
        Ok(())
    }

    fn consumer_cancelled(&self, consumer_tag: &ConsumerTag) {
        self.cancelled.lock().unwrap().push(consumer_tag.clone());
    }
}

pub fn broker() -> Arc<Broker> {
    Broker::new(BrokerConfig::default())
}

pub fn vhost() -> Arc<VHost> {
    broker().vhost("/").unwrap()
}

pub const CONN: ConnectionId = ConnectionId(1);
pub const OTHER_CONN: ConnectionId = ConnectionId(2);

pub fn message_with(
    exchange: &str,
    routing_key: &str,
    body: &str,
    properties: BasicProperties,
) -> Message {
    let header = ContentHeader::new(60, body.len() as u64, properties).unwrap();
    Message::new(
        exchange.to_owned(),
        routing_key.to_owned(),
        header,
        Bytes::from(body.to_owned()),
    )
}

pub fn message(exchange: &str, routing_key: &str, body: &str) -> Message {
    message_with(exchange, routing_key, body, BasicProperties::default())
}

pub fn body(message: &Message) -> String {
    String::from_utf8(message.body().to_vec()).unwrap()
}

/// Declares a plain queue.
pub fn queue(vhost: &VHost, name: &str) {
    vhost
        .declare_queue(CONN, name, QueueFlags::default(), FieldTable::default())
        .unwrap();
}

/// Declares a durable queue.
pub fn durable_queue(vhost: &VHost, name: &str) {
    let flags = QueueFlags {
        durable: true,
        ..QueueFlags::default()
    };
    vhost
        .declare_queue(CONN, name, flags, FieldTable::default())
        .unwrap();
}

/// Publishes `body` to the default exchange, routed to queue `name`.
pub fn send(vhost: &VHost, name: &str, body: &str) {
    vhost.publish(false, message("", name, body)).unwrap();
}

pub fn channel(vhost: &Arc<VHost>, id: u16) -> (Channel, Arc<TestSink>) {
    channel_on(vhost, CONN, id)
}

pub fn channel_on(vhost: &Arc<VHost>, conn: ConnectionId, id: u16) -> (Channel, Arc<TestSink>) {
    let sink = TestSink::new();
    let ch = Channel::new(Arc::clone(vhost), conn, ChannelId(id), sink.clone());
    (ch, sink)
}

/// Starts a consumer with the given tag.
pub fn consume(ch: &mut Channel, queue: &str, tag: &str, no_ack: bool) -> ConsumerTag {
    ch.consume(queue, tag, no_ack, false, &FieldTable::default(), |_| {})
        .unwrap()
}

/// A broker on a store in `dir`, with a memory budget of `budget` bytes and its spill task
/// running: past half the budget, long queues move their backlog to disk.
pub fn spilling_broker(dir: &Path, budget: u64) -> Arc<Broker> {
    let (store, recovery) = Store::open(dir, &StoreConfig::default()).unwrap();
    let config = BrokerConfig {
        memory_high_watermark: budget,
        ..BrokerConfig::default()
    };
    let broker = Broker::with_store(config, store);
    broker.recover(&recovery).unwrap();
    broker.spawn_spill_task().unwrap();
    broker
}
