//! The Prometheus text exposition format (version 0.0.4) of everything `/metrics` shows.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use lockgate_store::Store;

use crate::connection::ServerContext;
use crate::disk::DiskReading;
use crate::metrics::counters::Counter;

/// Writes metric families: `# HELP`, `# TYPE`, then samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                escape_label(&mut self.out, val);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One queue's figures, read once per scrape.
struct QueueRow {
    vhost: String,
    name: String,
    ready: u64,
    unacked: u64,
    consumers: u64,
    ready_bytes: u64,
    spilled: u64,
    spilled_bytes: u64,
    oldest_age: f64,
    published: u64,
    delivered: u64,
    redelivered: u64,
    acked: u64,
    expired: u64,
    dead_lettered: u64,
    dropped_overflow: u64,
    rejected_overflow: u64,
    timeout_redelivered: u64,
    delivery_limit_dropped: u64,
    dedup_dropped: u64,
}

fn queue_rows(ctx: &ServerContext) -> Vec<QueueRow> {
    let mut rows = Vec::new();
    for vhost_name in ctx.broker.vhost_names() {
        let Some(vhost) = ctx.broker.vhost(&vhost_name) else {
            continue;
        };
        for queue_name in vhost.queue_names() {
            let Some(queue) = vhost.queue(&queue_name) else {
                continue;
            };
            let s = queue.snapshot();
            rows.push(QueueRow {
                vhost: vhost_name.clone(),
                name: queue_name,
                ready: s.ready,
                unacked: s.unacked,
                consumers: s.consumers,
                ready_bytes: s.ready_bytes,
                spilled: s.spilled,
                spilled_bytes: s.spilled_bytes,
                oldest_age: s.oldest_ready_age.map_or(0.0, |d| d.as_secs_f64()),
                published: s.published,
                delivered: s.delivered,
                redelivered: s.redelivered,
                acked: s.acked,
                expired: s.expired,
                dead_lettered: s.dead_lettered,
                dropped_overflow: s.dropped_overflow,
                rejected_overflow: s.rejected_overflow,
                timeout_redelivered: s.timeout_redelivered,
                delivery_limit_dropped: s.delivery_limit_dropped,
                dedup_dropped: s.dedup_dropped,
            });
        }
    }
    rows
}

/// Resident set size from `/proc/self/status` (Linux), in bytes.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open file descriptors of this process (Linux).
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Renders every metric; the figures that ask the file system come from `disk`.
pub(super) fn render(ctx: &ServerContext, disk: &DiskReading) -> String {
    let mut e = Exposition {
        out: String::with_capacity(8192),
    };
    e.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    // The node as the management API names it: dashboards join the two on it.
    let node = crate::management::node_name();
    e.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", node.as_str()),
            ("rabbitmq_cluster", "lockgate"),
            ("rabbitmq_endpoint", "per-object"),
        ],
        1,
    );
    e.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    e.sample(
        "rabbitmq_build_info",
        &[
            ("rabbitmq_version", env!("CARGO_PKG_VERSION")),
            ("product", "lockgate"),
        ],
        1,
    );

    let rows = queue_rows(ctx);
    e.single(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        ctx.open_connections.load(Ordering::Relaxed),
    );
    let channels: Vec<_> = ctx
        .broker
        .vhost_names()
        .iter()
        .filter_map(|name| ctx.broker.vhost(name))
        .flat_map(|vhost| vhost.channels())
        .collect();
    e.single(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels.len(),
    );
    e.single(
        "rabbitmq_channel_consumers",
        "gauge",
        "Consumers on a channel",
        channels.iter().map(|c| u64::from(c.consumers)).sum::<u64>(),
    );
    e.single(
        "rabbitmq_channel_messages_unacked",
        "gauge",
        "Delivered but not yet acknowledged messages",
        channels.iter().map(|c| c.unacked).sum::<u64>(),
    );
    e.single("rabbitmq_queues", "gauge", "Queues available", rows.len());
    e.single(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        rows.iter().map(|r| r.consumers).sum::<u64>(),
    );

    type Column = fn(&QueueRow) -> String;
    let per_queue: [(&str, &str, &str, Column); 18] = [
        (
            "rabbitmq_queue_messages_ready",
            "gauge",
            "Messages ready to be delivered to consumers",
            |r| r.ready.to_string(),
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged",
            |r| r.unacked.to_string(),
        ),
        (
            "rabbitmq_queue_messages",
            "gauge",
            "Sum of ready and unacknowledged messages - total queue depth",
            |r| (r.ready + r.unacked).to_string(),
        ),
        (
            "rabbitmq_queue_consumers",
            "gauge",
            "Consumers on a queue",
            |r| r.consumers.to_string(),
        ),
        (
            "rabbitmq_queue_messages_ready_bytes",
            "gauge",
            "Size in bytes of ready messages",
            |r| r.ready_bytes.to_string(),
        ),
        (
            "rabbitmq_queue_messages_paged_out",
            "gauge",
            "Ready messages whose bodies are on disk (spilled), not in memory",
            |r| r.spilled.to_string(),
        ),
        (
            "rabbitmq_queue_messages_paged_out_bytes",
            "gauge",
            "Size in bytes of the ready messages spilled to disk",
            |r| r.spilled_bytes.to_string(),
        ),
        (
            "rabbitmq_queue_messages_published_total",
            "counter",
            "Total number of messages published to queues",
            |r| r.published.to_string(),
        ),
        (
            "lockgate_queue_messages_delivered_total",
            "counter",
            "Deliveries from the queue, by basic.consume or basic.get",
            |r| r.delivered.to_string(),
        ),
        (
            "lockgate_queue_messages_redelivered_total",
            "counter",
            "Deliveries from the queue of messages delivered before",
            |r| r.redelivered.to_string(),
        ),
        (
            "lockgate_queue_messages_acknowledged_total",
            "counter",
            "Deliveries from the queue settled without requeue",
            |r| r.acked.to_string(),
        ),
        (
            "lockgate_queue_messages_expired_total",
            "counter",
            "Messages removed from the queue because their TTL passed (dead-lettered or dropped)",
            |r| r.expired.to_string(),
        ),
        (
            "lockgate_queue_messages_dead_lettered_total",
            "counter",
            "Messages the queue's dead-letter exchange routed to a queue, for any reason",
            |r| r.dead_lettered.to_string(),
        ),
        (
            "lockgate_queue_messages_dropped_overflow_total",
            "counter",
            "Messages dropped from the head by x-max-length / x-max-length-bytes (drop-head)",
            |r| r.dropped_overflow.to_string(),
        ),
        (
            "lockgate_queue_messages_rejected_overflow_total",
            "counter",
            "Publishes refused because the queue was full (reject-publish, reject-publish-dlx)",
            |r| r.rejected_overflow.to_string(),
        ),
        (
            "lockgate_queue_ack_timeout_redeliveries_total",
            "counter",
            "Deliveries taken back because the consumer did not acknowledge within x-consumer-timeout",
            |r| r.timeout_redelivered.to_string(),
        ),
        (
            "lockgate_queue_messages_delivery_limit_total",
            "counter",
            "Messages dead-lettered or dropped for passing x-delivery-limit",
            |r| r.delivery_limit_dropped.to_string(),
        ),
        (
            "lockgate_queue_messages_deduplicated_total",
            "counter",
            "Publishes not enqueued because their message-id was already in the deduplication window",
            |r| r.dedup_dropped.to_string(),
        ),
    ];
    for (name, kind, help, column) in per_queue {
        e.family(name, kind, help);
        for r in &rows {
            e.sample(name, &[("vhost", &r.vhost), ("queue", &r.name)], column(r));
        }
    }
    e.family(
        "lockgate_queue_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest ready message in the queue (0 when empty)",
    );
    for r in &rows {
        e.sample(
            "lockgate_queue_oldest_message_age_seconds",
            &[("vhost", &r.vhost), ("queue", &r.name)],
            format!("{:.3}", r.oldest_age),
        );
    }

    let counters = &ctx.counters;
    let protocol = [("protocol", "amqp091")];
    for counter in Counter::ALL {
        let name = format!("rabbitmq_global_{}", counter.name());
        e.family(&name, "counter", counter.help());
        e.sample(&name, &protocol, counters.get(counter));
    }
    e.family(
        "rabbitmq_global_messages_delivered_total",
        "counter",
        "Total number of messages delivered to consumers",
    );
    e.sample(
        "rabbitmq_global_messages_delivered_total",
        &protocol,
        counters.delivered_total(),
    );
    e.single(
        "lockgate_ack_timeout_redeliveries_total",
        "counter",
        "Deliveries taken back because the consumer did not acknowledge in time (queues that exist)",
        rows.iter().map(|r| r.timeout_redelivered).sum::<u64>(),
    );

    if let Some(rss) = resident_memory() {
        e.single(
            "rabbitmq_process_resident_memory_bytes",
            "gauge",
            "Memory used in bytes",
            rss,
        );
    }
    if let Some(fds) = open_fds() {
        e.single(
            "rabbitmq_process_open_fds",
            "gauge",
            "Open file descriptors",
            fds,
        );
    }
    e.single(
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
        ctx.broker.config().memory_high_watermark,
    );
    e.single(
        "lockgate_messages_memory_bytes",
        "gauge",
        "Bytes of messages held by the broker (the memory alarm's measure)",
        ctx.broker.memory_used(),
    );
    e.single(
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "is 1 if VM memory watermark alarm is in effect",
        u8::from(ctx.broker.memory_blocked()),
    );
    e.single(
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "is 1 if free disk space watermark alarm is in effect",
        u8::from(*ctx.disk_alarm.borrow()),
    );
    disk_figures(&mut e, disk);

    if let Some(store) = ctx.broker.store() {
        let m = store.metrics();
        e.single(
            "lockgate_store_commit_batches_total",
            "counter",
            "Group commits (batches written and fsynced)",
            m.batches,
        );
        e.single(
            "lockgate_store_commit_ops_total",
            "counter",
            "Writes in all group commits (ops / batches = mean batch size)",
            m.ops,
        );
        e.single(
            "lockgate_store_message_bytes_written_total",
            "counter",
            "Bytes of message records written to the store",
            m.message_bytes,
        );
        e.single(
            "lockgate_store_last_batch_ops",
            "gauge",
            "Writes in the latest group commit",
            m.last_batch_ops,
        );
        e.single(
            "lockgate_store_max_batch_ops",
            "gauge",
            "Writes in the largest group commit",
            m.max_batch_ops,
        );
        e.single(
            "lockgate_store_commit_seconds_total",
            "counter",
            "Time spent applying and flushing group commits",
            m.commit_time_total.as_secs_f64(),
        );
        e.single(
            "lockgate_store_last_commit_seconds",
            "gauge",
            "Apply + flush time of the latest group commit",
            m.last_commit_time.as_secs_f64(),
        );
        e.single(
            "lockgate_store_max_commit_seconds",
            "gauge",
            "Longest apply + flush time of a group commit",
            m.max_commit_time.as_secs_f64(),
        );
        e.single(
            "lockgate_store_backpressure_waits_total",
            "counter",
            "Publishes that waited because the store writer had 64 MiB of records queued",
            m.backpressure_waits,
        );
        store_waits(&mut e, store);
    }
    e.out
}

/// The figures the disk probe measured on the file system (see `disk.rs`), with how old they are
/// and whether the latest probe has not returned: on a volume that stopped answering they
/// are the last ones measured.
fn disk_figures(e: &mut Exposition, disk: &DiskReading) {
    e.single(
        "lockgate_disk_probe_stale",
        "gauge",
        "1 when the latest probe of the data directory (free space, store size) has not \
         returned in time (a hung or overloaded disk): the disk figures shown are older",
        u8::from(disk.stale),
    );
    let Some(figures) = disk.figures else {
        return;
    };
    e.single(
        "lockgate_disk_probe_age_seconds",
        "gauge",
        "Age of the disk figures shown (free space, store size): since their probe returned",
        format!("{:.3}", figures.measured.elapsed().as_secs_f64()),
    );
    if let Some(free) = figures.free {
        e.single(
            "rabbitmq_disk_space_available_bytes",
            "gauge",
            "Disk space available in bytes",
            free,
        );
    }
    if let Some(size) = figures.store_size {
        e.single(
            "lockgate_store_size_bytes",
            "gauge",
            "Size of the store on disk",
            size,
        );
    }
}

/// How long the oldest store write not done yet has waited, per kind of write.
fn store_waits(e: &mut Exposition, store: &Store) {
    // One series per kind of write: a stall of each stops different clients (confirms
    // and durable declarations; memory relief and consumers of spilled queues), and the
    // spill calls bypass the writer, so a broker with transient traffic only shows a
    // hung disk in the second series alone.
    let name = "lockgate_store_oldest_write_seconds";
    e.family(
        name,
        "gauge",
        "How long the oldest store write not done yet has waited (0 when none waits): \
         writes=\"durable\" through the group-commit writer, writes=\"spill\" spilling \
         messages to and from disk",
    );
    let seconds = |wait: Option<std::time::Duration>| wait.map_or(0.0, |w| w.as_secs_f64());
    e.sample(
        name,
        &[("writes", "durable")],
        seconds(store.oldest_write_wait()),
    );
    e.sample(
        name,
        &[("writes", "spill")],
        seconds(store.oldest_spill_wait()),
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use lockgate_store::{failpoints, StoreConfig};

    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut e = Exposition { out: String::new() };
        e.sample("m", &[("queue", "a\"b\\c\nd"), ("vhost", "/")], 1);
        assert_eq!(e.out, "m{queue=\"a\\\"b\\\\c\\nd\",vhost=\"/\"} 1\n");
    }

    /// A spill call that hangs shows in its own series, which grows, while the writer's stays
    /// 0: the spill calls bypass the writer.
    #[test]
    fn a_held_spill_call_shows_in_the_spill_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &StoreConfig::default()).expect("store");
        let sample = |writes: &str| -> f64 {
            let mut e = Exposition { out: String::new() };
            store_waits(&mut e, &store);
            let prefix = format!("lockgate_store_oldest_write_seconds{{writes=\"{writes}\"}} ");
            let line = e.out.lines().find_map(|l| l.strip_prefix(&prefix));
            line.expect("a sample").parse().expect("a number")
        };
        assert_eq!((sample("durable"), sample("spill")), (0.0, 0.0));
        failpoints::arm(failpoints::SPILL_STALL, dir.path());
        let held = {
            let store = store.clone();
            let queue = store.transient_queue_id();
            std::thread::spawn(move || store.discard_spilled(queue, 0..u64::MAX))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !failpoints::held(failpoints::SPILL_STALL, dir.path()) {
            assert!(Instant::now() < deadline, "the spill call was not held");
            std::thread::sleep(Duration::from_millis(1));
        }
        let first = sample("spill");
        while sample("spill") <= first {
            assert!(Instant::now() < deadline, "the spill wait did not grow");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sample("durable"), 0.0);
        failpoints::disarm(failpoints::SPILL_STALL, dir.path());
        held.join().expect("discard").expect("discarded");
        assert_eq!(sample("spill"), 0.0);
    }
}
