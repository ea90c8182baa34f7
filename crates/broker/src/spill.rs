//! The broker's spill task: keeps queued message bodies within the memory budget by moving
//! the backlog of long queues to the store, and pages it back before consumers run dry.
//!
//! One task per broker (started by [`Broker::spawn_spill_task`]). It wakes when a queue's
//! in-memory head runs low (queues notify it) and every few milliseconds while any queue has
//! a disk tail, otherwise every 50 ms. Each pass:
//!
//! 1. pages in the queues whose head is below `PAGE_LOW` (one page each, in seq order);
//! 2. when the bytes of held messages exceed the spill threshold (half the memory high
//!    watermark, RabbitMQ's default paging ratio), takes batches from the queues with the
//!    longest in-memory backlog (everything beyond a head of `HEAD_COUNT` messages /
//!    `head_bytes`) and writes them, until usage is below 80 % of the threshold.
//!
//! Queue locks are held only to move messages between lists; every store call runs here,
//! through the store's `spawn_blocking` variants, never under a queue lock. Transient bodies
//! are written to the store's spill tree (no fsync); persistent ones are already in the store,
//! so spilling them only waits for their publish to be flushed. The memory alarm (publishers
//! blocked) stays the last resort when spilling cannot keep up or the disk write fails.

use std::cmp::Reverse;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lockgate_store::{PagedMessage, SpillRecord, Store, StoredRef};
use tokio::sync::Notify;
use tracing::{error, trace, warn};

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

impl Broker {
    /// Starts the spill task on the current tokio runtime; `None` without a store. Needed
    /// for spilling and for paging in the disk tail of queues recovered at startup. The task
    /// ends when the broker is dropped.
    pub fn spawn_spill_task(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let store = self.store()?.clone();
        let wake = Arc::clone(self.spill_wake());
        Some(tokio::spawn(run(Arc::downgrade(self), store, wake)))
    }
}

async fn run(broker: Weak<Broker>, store: Store, wake: Arc<Notify>) {
    let mut failing = false;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let active = pass(&b, &store, &mut failing).await;
        drop(b);
        let idle = if active {
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

/// One pass over every queue; true when some queue has a disk tail (poll again soon).
async fn pass(b: &Broker, store: &Store, failing: &mut bool) -> bool {
    let queues: Vec<(Arc<VHost>, Arc<Queue>)> = b
        .vhost_names()
        .into_iter()
        .filter_map(|name| b.vhost(&name))
        .flat_map(|v| {
            v.queue_handles()
                .into_iter()
                .map(move |q| (Arc::clone(&v), q))
        })
        .collect();
    let mut active = false;
    for (vhost, queue) in &queues {
        if let Some(request) = queue.page_request(PAGE) {
            let paged = page_in(vhost, &request).await;
            queue.finish_page(&request, paged);
        }
        active |= queue.has_disk_tail();
    }
    let threshold = b.config().memory_high_watermark / 2;
    if threshold == 0 || b.memory_used() <= threshold {
        return active;
    }
    let target = threshold / 5 * 4;
    let head_bytes = (threshold / 16).clamp(64 << 10, 4 << 20);
    // Messages being written still count: small batches keep that in-flight share low.
    let batch_bytes = (threshold / 16).clamp(64 << 10, 4 << 20);
    let mut order: Vec<(usize, &Arc<Queue>)> = queues
        .iter()
        .map(|(_, q)| (q.spillable(), q))
        .filter(|(n, _)| *n > 0)
        .collect();
    order.sort_by_key(|&(n, _)| Reverse(n));
    for (_, queue) in order {
        while b.memory_used() > target {
            let batch = queue.take_spill(store, HEAD_COUNT, head_bytes, SPILL_BATCH, batch_bytes);
            let Some(batch) = batch else {
                break;
            };
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
                // Purged or deleted while writing: drop what was written for it.
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || store.discard_spilled(id, range)).await;
            }
            if !ok {
                return true;
            }
        }
    }
    true
}

/// Writes a batch: transient bodies to the spill tree; persistent ones are in the store
/// already and only need their publish flushed (the store reads them back by index).
async fn write(store: &Store, batch: &SpillBatch) -> Result<(), lockgate_store::StoreError> {
    let mut records = Vec::with_capacity(WRITE_CHUNK);
    let mut bytes = 0;
    let mut persistent = false;
    for item in &batch.items {
        if item.stored.is_some() {
            persistent = true;
            continue;
        }
        let m = &item.message;
        records.push(SpillRecord {
            seq: item.seq,
            header: durable::message_header(&m.exchange, &m.routing_key, &m.header),
            body: m.body.clone(),
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
    let size = message.size();
    message.set_charge(vhost.memory().charge(size));
    Some(Ready {
        seq: p.seq,
        size,
        message: Arc::new(message),
        redelivered: p.redelivered,
        stored: p.message.map(|message| StoredRef {
            queue: request.id,
            seq: p.seq,
            message,
        }),
    })
}
