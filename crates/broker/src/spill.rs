//! The broker's spill task: keeps queued message bodies within the memory budget by moving
//! the backlog of long queues to the store, and pages it back before consumers run dry.
//!
//! One task per broker (started by [`Broker::spawn_spill_task`]). It wakes when a queue's
//! in-memory head runs low (queues notify it) and every few milliseconds while any queue has
//! a disk tail, otherwise every 50 ms. Each pass:
//!
//! 1. pages in the queues whose head is below `PAGE_LOW` (one page each, in seq order),
//!    looking only at the queues known to have a disk tail ([`Tails`]), not at every queue:
//!    a queue gets a disk tail only from this task or from recovery (found by one walk when
//!    the task starts);
//! 2. when the bytes of held messages exceed the spill threshold (half the memory high
//!    watermark, RabbitMQ's default paging ratio), ranks every queue by its in-memory
//!    backlog, takes batches from the longest (everything beyond a head of `HEAD_COUNT`
//!    messages / `head_bytes`) and writes them, until usage is below 80 % of the threshold.
//!    After each batch it pages in again (step 1): while publishers outpace the disk, memory
//!    stays above the target and the spilling goes on for as long as they publish, and the
//!    consumers of spilled queues must not wait for it to end.
//!
//! So a broker with thousands of idle queues and memory below the threshold does no work
//! per queue at all; with some queues spilled, a pass costs one check per spilled queue.
//!
//! Queue locks are held only to move messages between lists; every store call runs here,
//! through the store's `spawn_blocking` variants, never under a queue lock. Transient bodies
//! are written to the store's spill tree (no fsync); persistent ones are already in the store,
//! so spilling them only waits for their publish to be flushed. The memory alarm (publishers
//! blocked) stays the last resort when spilling cannot keep up or the disk write fails.
//! A store call that never returns (a hung disk) holds this task, and with it spilling and
//! paging for every queue, without failing anything: the store times its spill calls
//! ([`Store::oldest_spill_wait`]), which the server's watchdog logs and /metrics shows.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use lockgate_store::{PagedMessage, SpillRecord, Store, StoredRef};
use tokio::sync::Notify;
use tracing::{error, info, trace, warn};

use crate::broker::Broker;
use crate::durable;
use crate::message::Message;
use crate::queue::spill::{PageRequest, SpillBatch};
use crate::queue::{Queue, Ready};
use crate::vhost::VHost;

/// Messages kept in memory at the head of a spilled queue (at most).
const HEAD_COUNT: usize = 1024;
/// Messages per spill batch (one queue lock, a few store writes).
const SPILL_BATCH: usize = 2048;
/// Records and bytes per store write: sled's memory use grows steeply with the size of one
/// batch.
const WRITE_CHUNK: usize = 256;
const WRITE_CHUNK_BYTES: u64 = 256 << 10;
/// Messages per page-in.
const PAGE: usize = 512;
/// How often the spill task retries the discards the store owes, at most.
const RETRY_OWED_EVERY: Duration = Duration::from_secs(1);

impl Broker {
    /// Starts the spill task on the current tokio runtime; `None` without a store. Needed
    /// for spilling and for paging in the disk tail of queues recovered at startup (start it
    /// after [`Broker::recover`]: it looks for recovered disk tails once, when it starts).
    /// The task ends when the broker is dropped.
    pub fn spawn_spill_task(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let store = self.store()?.clone();
        let wake = Arc::clone(self.spill_wake());
        Some(tokio::spawn(run(Arc::downgrade(self), store, wake)))
    }
}

/// The queues with a disk tail, keyed by address (weak: a deleted queue drops out).
#[derive(Default)]
struct Tails {
    queues: HashMap<usize, (Weak<VHost>, Weak<Queue>)>,
}

impl Tails {
    fn add(&mut self, vhost: &Arc<VHost>, queue: &Arc<Queue>) {
        self.queues
            .entry(Arc::as_ptr(queue) as usize)
            .or_insert_with(|| (Arc::downgrade(vhost), Arc::downgrade(queue)));
    }
}

/// What one pass did (for tests and tracing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PassReport {
    /// Queues looked at for paging in.
    examined: usize,
    /// Queues ranked for spilling (every queue, but only when over the threshold).
    ranked: usize,
    /// Some queue still has a disk tail: poll again soon.
    active: bool,
}

async fn run(broker: Weak<Broker>, store: Store, wake: Arc<Notify>) {
    let mut failing = false;
    let mut tails = Tails::default();
    let mut owed_retried: Option<Instant> = None;
    if let Some(b) = broker.upgrade() {
        for (vhost, queue) in all_queues(&b) {
            if queue.has_disk_tail() {
                tails.add(&vhost, &queue);
            }
        }
    }
    loop {
        let Some(b) = broker.upgrade() else { return };
        let report = pass(&b, &store, &mut tails, &mut failing).await;
        drop(b);
        trace!(
            examined = report.examined,
            ranked = report.ranked,
            active = report.active,
            "spill pass"
        );
        retry_owed_discards(&store, &mut owed_retried).await;
        let idle = if report.active {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(50)
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(idle) => {}
        }
    }
}

/// Retries the discards the store owes (spilled records of a queue purged or deleted while
/// they were written, whose removal failed), at most every [`RETRY_OWED_EVERY`]: every spill
/// call retries them too, but an idle broker makes none, and their records would stay on
/// disk until the next restart.
async fn retry_owed_discards(store: &Store, retried: &mut Option<Instant>) {
    if store.owed_discards() == 0 || retried.is_some_and(|at| at.elapsed() < RETRY_OWED_EVERY) {
        return;
    }
    *retried = Some(Instant::now());
    match store.retry_owed_discards_async().await {
        Ok(0) => info!(
            "discarding the spilled messages of purged or deleted queues succeeded on a retry"
        ),
        Ok(owed) => trace!(owed, "owed discards of spilled messages failed again"),
        Err(e) => warn!(error = %e, "retrying owed discards of spilled messages failed"),
    }
}

fn all_queues(b: &Broker) -> Vec<(Arc<VHost>, Arc<Queue>)> {
    b.vhost_names()
        .into_iter()
        .filter_map(|name| b.vhost(&name))
        .flat_map(|v| {
            v.queue_handles()
                .into_iter()
                .map(move |q| (Arc::clone(&v), q))
        })
        .collect()
}

/// One pass: page in the queues with a disk tail, then spill if over the threshold.
async fn pass(b: &Broker, store: &Store, tails: &mut Tails, failing: &mut bool) -> PassReport {
    let mut report = PassReport::default();
    page_ins(tails, &mut report).await;
    report.active = !tails.queues.is_empty();
    let threshold = b.config().memory_high_watermark / 2;
    if threshold == 0 || b.memory_used() <= threshold {
        return report;
    }
    report.active = true;
    let queues = all_queues(b);
    report.ranked = queues.len();
    let target = threshold / 5 * 4;
    let head_bytes = (threshold / 16).clamp(64 << 10, 4 << 20);
    // Messages being written still count: small batches keep that in-flight share low.
    let batch_bytes = (threshold / 16).clamp(64 << 10, 4 << 20);
    let mut order: Vec<(usize, &Arc<VHost>, &Arc<Queue>)> = queues
        .iter()
        .map(|(v, q)| (q.spillable(), v, q))
        .filter(|(n, _, _)| *n > 0)
        .collect();
    order.sort_by_key(|&(n, _, _)| Reverse(n));
    for (_, vhost, queue) in order {
        while b.memory_used() > target {
            let batch = queue.take_spill(store, HEAD_COUNT, head_bytes, SPILL_BATCH, batch_bytes);
            let Some(batch) = batch else {
                break;
            };
            tails.add(vhost, queue);
            let started = std::time::Instant::now();
            let written = write(store, &batch).await;
            trace!(
                queue = queue.name(),
                messages = batch.items.len(),
                took_us = started.elapsed().as_micros(),
                used = b.memory_used(),
                "spilled"
            );
            match (&written, *failing) {
                (Err(e), false) => {
                    error!(error = %e, "spilling messages to disk failed: keeping them in memory");
                    *failing = true;
                }
                (Ok(()), true) => {
                    warn!("spilling to disk works again");
                    *failing = false;
                }
                _ => {}
            }
            let (id, ok) = (batch.id, written.is_ok());
            if let Some(range) = queue.finish_spill(batch, ok) {
                // Purged or deleted while writing: drop what was written for it. A discard
                // that fails stays owed by the store, which retries it with its next spill
                // call (and clears its spill tree at the next start).
                if let Err(e) = store.discard_spilled_async(id, range).await {
                    warn!(error = %e, queue = queue.name(), "discarding the spilled messages of a purged or deleted queue failed: retried with the next spill");
                }
            }
            if !ok {
                return report;
            }
            page_ins(tails, &mut report).await;
        }
    }
    report
}

/// Step 1 of a pass: pages in the queues with a disk tail whose head runs low (one page per
/// lane at most), and forgets those whose tail is gone.
async fn page_ins(tails: &mut Tails, report: &mut PassReport) {
    let known: Vec<(usize, Arc<VHost>, Arc<Queue>)> = tails
        .queues
        .iter()
        .filter_map(|(&key, (v, q))| Some((key, v.upgrade()?, q.upgrade()?)))
        .collect();
    tails
        .queues
        .retain(|key, _| known.iter().any(|(k, _, _)| k == key));
    for (key, vhost, queue) in &known {
        report.examined += 1;
        // One page per lane at most (a priority queue has a tail per level).
        for _ in 0..queue.lanes() {
            let Some(request) = queue.page_request(PAGE) else {
                break;
            };
            let paged = page_in(vhost, &request).await;
            queue.finish_page(&request, paged);
        }
        if !queue.has_disk_tail() {
            tails.queues.remove(key);
        }
    }
}

/// Writes a batch: transient bodies to the spill tree; persistent ones are in the store
/// already and only need their publish flushed (the store reads them back by index), unless
/// their lane is not read by the queue's index (a priority level): then they are written
/// too.
async fn write(store: &Store, batch: &SpillBatch) -> Result<(), lockgate_store::StoreError> {
    let mut records = Vec::with_capacity(WRITE_CHUNK);
    let mut bytes = 0;
    let mut persistent = false;
    for item in &batch.items {
        if item.stored().is_some() && !batch.copy_persistent {
            persistent = true;
            continue;
        }
        let m = &item.message;
        records.push(SpillRecord {
            seq: item.seq,
            header: durable::message_header(m),
            body: m.body_bytes(),
        });
        bytes += m.size();
        if records.len() == WRITE_CHUNK || bytes >= WRITE_CHUNK_BYTES {
            bytes = 0;
            batch
                .store
                .spill_async(batch.id, std::mem::take(&mut records))
                .await?;
        }
    }
    if !records.is_empty() {
        batch.store.spill_async(batch.id, records).await?;
    }
    if persistent {
        store.sync().wait().await?;
    }
    Ok(())
}

/// Reads one page of a disk tail and rebuilds its messages; `None` when the read failed.
async fn page_in(vhost: &VHost, request: &PageRequest) -> Option<Vec<Ready>> {
    let paged = request
        .store
        .page_in_async(request.id, request.from_seq, request.max)
        .await;
    rebuild_page(vhost, request, paged)
}

/// [`page_in`] on the calling thread (it blocks on the store): for `basic.get`.
pub(crate) fn page_in_blocking(vhost: &VHost, request: &PageRequest) -> Option<Vec<Ready>> {
    let paged = request
        .store
        .page_in(request.id, request.from_seq, request.max);
    rebuild_page(vhost, request, paged)
}

fn rebuild_page(
    vhost: &VHost,
    request: &PageRequest,
    paged: Result<Vec<PagedMessage>, lockgate_store::StoreError>,
) -> Option<Vec<Ready>> {
    let paged = match paged {
        Ok(paged) => paged,
        Err(e) => {
            error!(error = %e, "paging messages in from disk failed");
            return None;
        }
    };
    let mut out = Vec::with_capacity(paged.len());
    for p in paged.into_iter().take_while(|p| p.seq < request.end_seq) {
        match rebuild(vhost, request, p) {
            Some(ready) => out.push(ready),
            None => return None,
        }
    }
    Some(out)
}

fn rebuild(vhost: &VHost, request: &PageRequest, p: PagedMessage) -> Option<Ready> {
    let (exchange, routing_key, header) = match durable::decode_message_header(&p.record.header) {
        Ok(parts) => parts,
        Err(e) => {
            error!(error = %e, seq = p.seq, "a message read back from disk is malformed");
            return None;
        }
    };
    let mut message = Message::new(exchange, routing_key, header, p.record.body);
    message.charge_to(vhost.memory());
    let stored = p.message.map(|message| StoredRef {
        queue: request.id,
        seq: p.seq,
        message,
    });
    Some(Ready::new(p.seq, Arc::new(message), p.redelivered, stored))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;
    use lockgate_store::StoreConfig;
    use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, FieldValue};

    use super::*;
    use crate::broker::BrokerConfig;
    use crate::channel::Channel;
    use crate::ids::{ChannelId, ConnectionId, ConsumerTag};
    use crate::sink::{Delivery, DeliverySink, SinkClosed};
    use crate::vhost::QueueFlags;

    struct NoConsumers;

    impl DeliverySink for NoConsumers {
        fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
            Err(SinkClosed(delivery))
        }

        fn consumer_cancelled(&self, _: &ConsumerTag) {}
    }

    const BUDGET: u64 = 1 << 20;

    fn publish(vhost: &VHost, queue: &str, i: usize) {
        let body = format!("{i:08}:{}", "x".repeat(1000));
        let header =
            ContentHeader::new(60, body.len() as u64, BasicProperties::default()).expect("header");
        let message = Message::new(String::new(), queue.to_owned(), header, Bytes::from(body));
        vhost.publish(false, message).expect("publish");
    }

    /// 3,000 idle queues and one long one: passes below the threshold look at no queue, a
    /// pass over it ranks them all once, and from then on only the spilled queue is
    /// examined, until its disk tail is paged back in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_look_only_at_queues_with_a_disk_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let config = BrokerConfig {
            memory_high_watermark: BUDGET,
            ..BrokerConfig::default()
        };
        let broker = Broker::with_store(config, store.clone());
        let vhost = broker.vhost("/").expect("vhost");
        let declare = |name: &str| {
            vhost
                .declare_queue(
                    ConnectionId(1),
                    name,
                    QueueFlags::default(),
                    FieldTable::default(),
                )
                .expect("declare");
        };
        for i in 0..3000 {
            declare(&format!("idle-{i}"));
        }
        declare("long");
        let mut tails = Tails::default();
        let mut failing = false;
        let idle = pass(&broker, &store, &mut tails, &mut failing).await;
        assert_eq!(idle, PassReport::default());

        for i in 0..2000 {
            publish(&vhost, "long", i);
        }
        let spilling = pass(&broker, &store, &mut tails, &mut failing).await;
        assert_eq!(spilling.ranked, 3001);
        assert!(spilling.active);
        let long = vhost.queue("long").expect("queue");
        assert!(long.has_disk_tail());
        assert!(broker.memory_used() <= BUDGET / 2);

        let next = pass(&broker, &store, &mut tails, &mut failing).await;
        assert_eq!((next.examined, next.ranked), (1, 0));
        assert!(next.active);

        // Drained by basic.get (which reads the disk tail itself): every message, in order;
        // then passes are idle again.
        let mut channel = Channel::new(
            Arc::clone(&vhost),
            ConnectionId(1),
            ChannelId(1),
            Arc::new(NoConsumers),
        );
        for i in 0..2000 {
            let ok = channel.get("long", true).expect("get").expect("a message");
            assert_eq!(&ok.message.body()[..8], format!("{i:08}").as_bytes());
        }
        assert!(channel.get("long", true).expect("get").is_none());
        let after = pass(&broker, &store, &mut tails, &mut failing).await;
        assert_eq!(
            after,
            PassReport {
                examined: 1,
                ranked: 0,
                active: false
            }
        );
        let idle = pass(&broker, &store, &mut tails, &mut failing).await;
        assert_eq!(idle, PassReport::default());
    }

    /// A broker with a store and a 1 MiB budget, and queue `q` declared with `arguments`.
    fn setup(
        arguments: &[(&str, FieldValue)],
        durable: bool,
    ) -> (tempfile::TempDir, Store, Arc<Broker>, Arc<VHost>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let config = BrokerConfig {
            memory_high_watermark: BUDGET,
            ..BrokerConfig::default()
        };
        let broker = Broker::with_store(config, store.clone());
        let vhost = broker.vhost("/").expect("vhost");
        let table: FieldTable = arguments
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let flags = QueueFlags {
            durable,
            ..QueueFlags::default()
        };
        vhost
            .declare_queue(ConnectionId(1), "q", flags, table)
            .expect("declare");
        (dir, store, broker, vhost)
    }

    fn publish_with(vhost: &VHost, i: usize, properties: BasicProperties) {
        let body = format!("{i:08}:{}", "x".repeat(1000));
        let header = ContentHeader::new(60, body.len() as u64, properties).expect("header");
        let message = Message::new(String::new(), "q".to_owned(), header, Bytes::from(body));
        vhost.publish(false, message).expect("publish");
    }

    fn index_of(message: &Message) -> usize {
        std::str::from_utf8(&message.body()[..8])
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("an indexed body")
    }

    /// Spills and pages in priority levels while messages of every priority arrive and are
    /// taken by `basic.get`: every get returns what a priority queue without spill returns
    /// (highest priority first, FIFO within a priority). `persistent`: a durable queue, whose
    /// levels write persistent messages to the spill tree and get their stored copies back.
    async fn priority_spill_keeps_the_order(persistent: bool) {
        let (_dir, store, broker, vhost) =
            setup(&[("x-max-priority", FieldValue::U8(3))], persistent);
        let queue = vhost.queue("q").expect("queue");
        let mut model = std::collections::BTreeSet::new();
        let mut next = 0;
        let mut publish = |n: usize, model: &mut std::collections::BTreeSet<_>| {
            for _ in 0..n {
                let priority = [None, Some(1), Some(3), Some(2), Some(9)][next % 5];
                let properties = BasicProperties {
                    priority,
                    delivery_mode: persistent.then_some(2),
                    ..BasicProperties::default()
                };
                publish_with(&vhost, next, properties);
                model.insert((Reverse(priority.unwrap_or(0).min(3)), next));
                next += 1;
            }
        };
        let mut channel = Channel::new(
            Arc::clone(&vhost),
            ConnectionId(1),
            ChannelId(1),
            Arc::new(NoConsumers),
        );
        let mut tails = Tails::default();
        let mut failing = false;
        publish(3000, &mut model);
        store.sync().wait().await.expect("flushed");
        pass(&broker, &store, &mut tails, &mut failing).await;
        assert!(broker.memory_used() <= BUDGET / 2);
        let spilled = queue.snapshot().spilled;
        assert!(spilled > 2000, "{spilled} spilled");
        for round in 0..40 {
            if round % 4 == 0 {
                publish(300, &mut model);
                store.sync().wait().await.expect("flushed");
            }
            pass(&broker, &store, &mut tails, &mut failing).await;
            for _ in 0..150 {
                let ok = channel.get("q", true).expect("get").expect("a message");
                let expected = model.pop_first().expect("the model has it").1;
                assert_eq!(index_of(&ok.message), expected);
            }
        }
        while let Some(ok) = channel.get("q", true).expect("get") {
            let expected = model.pop_first().expect("the model has it").1;
            assert_eq!(index_of(&ok.message), expected);
        }
        assert!(model.is_empty(), "{} messages never came", model.len());
        assert!(!queue.has_disk_tail());
        if let Some(qs) = queue.store() {
            store.sync().wait().await.expect("flushed");
            assert_eq!(
                store.queue_index(qs.id).count(),
                0,
                "every stored copy was removed by its no-ack get"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_priority_queue_spills_per_level_and_keeps_its_order() {
        priority_spill_keeps_the_order(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_priority_queue_spills_persistent_messages_and_keeps_its_order() {
        priority_spill_keeps_the_order(true).await;
    }

    /// Collects its deliveries, in order, with their consumer.
    #[derive(Default)]
    struct Collect(parking_lot::Mutex<Vec<(ConsumerTag, Arc<Message>)>>);

    impl DeliverySink for Collect {
        fn deliver(&self, delivery: Delivery) -> Result<(), SinkClosed> {
            self.0
                .lock()
                .push((delivery.consumer_tag, delivery.message));
            Ok(())
        }

        fn consumer_cancelled(&self, _: &ConsumerTag) {}
    }

    /// A pass spilling a long backlog (publishers outpacing the disk keep it going for as
    /// long as they publish) pages in between its batches: a consumer of a spilled queue
    /// keeps getting messages during the pass, not one page at its start. (Before, the
    /// consumer of test_spill.py's queue got nothing while the publisher ran, and gave up
    /// after 30 s on a loaded machine.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_spill_pages_in_between_its_batches() {
        let (_dir, store, broker, vhost) = setup(&[], false);
        vhost
            .declare_queue(
                ConnectionId(1),
                "backlog",
                QueueFlags::default(),
                FieldTable::default(),
            )
            .expect("declare");
        for i in 0..3000 {
            publish_with(&vhost, i, BasicProperties::default());
        }
        let mut tails = Tails::default();
        let mut failing = false;
        pass(&broker, &store, &mut tails, &mut failing).await;
        assert!(vhost.queue("q").expect("q").has_disk_tail());
        for i in 0..3000 {
            publish(&vhost, "backlog", i);
        }
        let sink = Arc::new(Collect::default());
        let mut channel = Channel::new(
            Arc::clone(&vhost),
            ConnectionId(1),
            ChannelId(1),
            Arc::clone(&sink) as Arc<dyn DeliverySink>,
        );
        channel
            .consume("q", "c", true, false, &FieldTable::default(), |_| {})
            .expect("consume");
        let head = sink.0.lock().len();
        assert!(head > 0, "the head is delivered at once");
        pass(&broker, &store, &mut tails, &mut failing).await;
        let during = sink.0.lock().len() - head;
        assert!(
            during > 4 * head,
            "{during} messages paged in during the pass, the head was {head}"
        );
    }

    /// Closes the store and starts a broker on it again, recovered, with the test budget.
    fn restart(dir: &Path, store: Store, broker: Arc<Broker>) -> (Store, Arc<Broker>, Arc<VHost>) {
        drop(broker);
        store.close().expect("close");
        drop(store);
        let (store, recovery) = Store::open(dir, &StoreConfig::default()).expect("reopen");
        let config = BrokerConfig {
            memory_high_watermark: BUDGET,
            ..BrokerConfig::default()
        };
        let broker = Broker::with_store(config, store.clone());
        broker.recover(&recovery).expect("recover");
        let vhost = broker.vhost("/").expect("vhost");
        (store, broker, vhost)
    }

    /// Gets queue `q` empty with `basic.get`, 100 at a time with a spill pass between, and
    /// returns the indexes of the messages in the order they came.
    async fn get_all(
        broker: &Broker,
        store: &Store,
        vhost: &Arc<VHost>,
        tails: &mut Tails,
        failing: &mut bool,
    ) -> Vec<usize> {
        let mut channel = Channel::new(
            Arc::clone(vhost),
            ConnectionId(1),
            ChannelId(1),
            Arc::new(NoConsumers),
        );
        let mut got = Vec::new();
        loop {
            pass(broker, store, tails, failing).await;
            let before = got.len();
            for _ in 0..100 {
                if let Some(ok) = channel.get("q", true).expect("get") {
                    got.push(index_of(&ok.message));
                }
            }
            if got.len() == before {
                return got;
            }
        }
    }

    /// A grouped queue spills the newest messages of all groups and pages them back into
    /// their groups: with two consumers, each key is delivered in publish order and moves at
    /// most once (when the second consumer joins and takes its share of the idle groups),
    /// and every message arrives once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grouped_queue_spills_and_keeps_per_key_order() {
        let (_dir, store, broker, vhost) = setup(
            &[("x-group-header", FieldValue::LongString("k".into()))],
            false,
        );
        let queue = vhost.queue("q").expect("queue");
        let publish = |from: usize, to: usize| {
            for i in from..to {
                let headers: FieldTable = [(
                    "k".to_owned(),
                    FieldValue::LongString(Bytes::from(format!("k{}", i % 5))),
                )]
                .into_iter()
                .collect();
                let properties = BasicProperties {
                    headers: Some(headers),
                    ..BasicProperties::default()
                };
                publish_with(&vhost, i, properties);
            }
        };
        let mut tails = Tails::default();
        let mut failing = false;
        publish(0, 3000);
        pass(&broker, &store, &mut tails, &mut failing).await;
        assert!(queue.has_disk_tail());
        assert!(broker.memory_used() <= BUDGET / 2);
        let sink = Arc::new(Collect::default());
        let mut channels: Vec<Channel> = (1..=2)
            .map(|id| {
                let sink: Arc<dyn DeliverySink> = Arc::clone(&sink) as Arc<dyn DeliverySink>;
                Channel::new(Arc::clone(&vhost), ConnectionId(1), ChannelId(id), sink)
            })
            .collect();
        for (n, channel) in channels.iter_mut().enumerate() {
            channel
                .consume(
                    "q",
                    &format!("c{n}"),
                    true,
                    false,
                    &FieldTable::default(),
                    |_| {},
                )
                .expect("consume");
        }
        publish(3000, 4000);
        while queue.has_disk_tail() {
            pass(&broker, &store, &mut tails, &mut failing).await;
        }
        let mut seen = vec![false; 4000];
        let mut last = std::collections::HashMap::new();
        let mut moves = std::collections::HashMap::new();
        for (tag, message) in sink.0.lock().iter() {
            let i = index_of(message);
            assert!(!std::mem::replace(&mut seen[i], true), "{i} twice");
            let key = i % 5;
            if let Some((before, owner)) = last.insert(key, (i, tag.clone())) {
                assert!(before < i, "key {key}: {i} after {before}");
                *moves.entry(key).or_insert(0) += usize::from(owner != *tag);
            }
        }
        assert!(seen.iter().all(|&s| s), "every message arrived");
        assert!(moves.values().all(|&m| m <= 1), "keys moved: {moves:?}");
        let consumers: std::collections::HashSet<_> = last.values().map(|(_, t)| t).collect();
        assert_eq!(consumers.len(), 2, "the keys are spread");
    }
    /// A spilled durable priority queue, restarted: recovery loads the first 1,024 messages
    /// and leaves the rest, of every priority, as one disk tail. New messages of every
    /// priority wait behind it, no level spills while it exists, it pages in only when the
    /// whole ready list runs low, and every message comes back once, FIFO within its
    /// priority, the new ones last of their priority.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recovered_priority_queue_keeps_fifo_within_each_level() {
        let (dir, store, broker, vhost) = setup(&[("x-max-priority", FieldValue::U8(3))], true);
        let persistent = |priority: Option<u8>| BasicProperties {
            priority,
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        let level = |i: usize| [0u8, 1, 3, 2, 3][i % 5];
        for i in 0..3000 {
            publish_with(
                &vhost,
                i,
                persistent([None, Some(1), Some(3), Some(2), Some(9)][i % 5]),
            );
        }
        store.sync().wait().await.expect("flushed");
        let mut tails = Tails::default();
        let mut failing = false;
        pass(&broker, &store, &mut tails, &mut failing).await;
        assert!(vhost.queue("q").expect("q").snapshot().spilled > 2000);
        drop(vhost);
        let (store, broker, vhost) = restart(dir.path(), store, broker);
        let queue = vhost.queue("q").expect("q");
        assert_eq!(queue.snapshot().spilled, 3000 - 1024);
        // Published after the restart, one per priority: each waits behind the tail.
        let new: Vec<usize> = (3000..3004).collect();
        for (&i, priority) in new.iter().zip(0u8..) {
            publish_with(&vhost, i, persistent(Some(priority)));
        }
        store.sync().wait().await.expect("flushed");
        let mut tails = Tails::default();
        for _ in 0..3 {
            pass(&broker, &store, &mut tails, &mut failing).await;
        }
        let snapshot = queue.snapshot();
        assert_eq!(
            (snapshot.ready, snapshot.spilled),
            (3004, 3000 - 1024),
            "with 1,024 messages in memory the tail neither grows nor pages in"
        );

        let got = get_all(&broker, &store, &vhost, &mut tails, &mut failing).await;
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..3004).collect::<Vec<_>>(), "every message once");
        for priority in 0..=3u8 {
            let of_level: Vec<usize> = got
                .iter()
                .copied()
                .filter(|&i| match i.checked_sub(3000) {
                    Some(n) => n == usize::from(priority),
                    None => level(i) == priority,
                })
                .collect();
            assert!(
                of_level.windows(2).all(|w| w[0] < w[1]),
                "priority {priority} out of publish order: {of_level:?}"
            );
            assert_eq!(of_level.last(), Some(&(3000 + usize::from(priority))));
        }
        store.sync().wait().await.expect("flushed");
        let qs = queue.store().expect("durable").id;
        assert_eq!(
            store.queue_index(qs).count(),
            0,
            "every stored copy removed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recovered_fifo_queue_spills_what_arrives_behind_its_tail() {
        let (dir, store, broker, vhost) = setup(&[], true);
        let persistent = BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        for i in 0..3000 {
            publish_with(&vhost, i, persistent.clone());
        }
        store.sync().wait().await.expect("flushed");
        drop(vhost);
        let (store, broker, vhost) = restart(dir.path(), store, broker);
        let queue = vhost.queue("q").expect("q");
        assert_eq!(queue.snapshot().spilled, 3000 - 1024);
        // Transient messages published after the restart wait behind the recovered tail:
        // the spill task writes them onto it instead of keeping them in memory.
        for i in 3000..5000 {
            publish_with(&vhost, i, BasicProperties::default());
        }
        let mut tails = Tails::default();
        let mut failing = false;
        for _ in 0..3 {
            pass(&broker, &store, &mut tails, &mut failing).await;
        }
        let snapshot = queue.snapshot();
        assert_eq!(snapshot.ready, 5000);
        assert!(
            snapshot.spilled > 3000 - 1024 + 1500,
            "what arrived behind the recovered tail stayed in memory: {} on disk",
            snapshot.spilled
        );

        let got = get_all(&broker, &store, &vhost, &mut tails, &mut failing).await;
        assert_eq!(
            got,
            (0..5000).collect::<Vec<_>>(),
            "every message once, in order"
        );
    }

    /// A discard the store owes (its removal failed) is retried on the spill task's own
    /// tick: an idle broker makes no spill call that would retry it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spill_task_retries_owed_discards_on_its_tick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let broker = Broker::with_store(BrokerConfig::default(), store.clone());
        let queue = store.transient_queue_id();
        let records: Vec<_> = (0..10)
            .map(|seq| SpillRecord {
                seq,
                header: Bytes::from_static(b"header"),
                body: Bytes::from_static(b"body"),
            })
            .collect();
        store.spill(queue, &records).expect("spill");
        lockgate_store::failpoints::arm(lockgate_store::failpoints::DISCARD, dir.path());
        let failed = store.discard_spilled(queue, 0..10);
        lockgate_store::failpoints::disarm(lockgate_store::failpoints::DISCARD, dir.path());
        assert!(failed.is_err());
        assert_eq!(store.owed_discards(), 1);
        let _task = broker.spawn_spill_task();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.owed_discards() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the discard is still owed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.page_in(queue, 0, 100).expect("page in"), []);
    }
}
