//! `lockgate-bench`: a load generator for AMQP 0-9-1 brokers, built on
//! `lockgate-client`, so that lockgate and RabbitMQ are measured the same way.
//!
//! Every scenario checks every message (sequence number, stream and checksum
//! in the body) and exits non-zero when one is lost, duplicated, corrupt or
//! misrouted without an explanation: a fast run that loses messages is a
//! failure, not a result.
//!
//! Layout:
//! - `payload.rs`: the body format (sequence, stream, checksum, timestamp).
//! - `verify.rs`: per-stream sequence tracking and the verdict.
//! - `latency.rs`: HDR histogram percentiles.
//! - `pacing.rs`: microsecond-precise pacing of fixed-rate publishers.
//! - `procfs.rs`: broker and bench RSS/CPU from /proc, fd limit.
//! - `report.rs`: records, JSON lines, the table, the progress line.
//! - `scenario/`: the run context and one module per family of scenarios,
//!   over the publisher/consumer engine in `scenario/flow.rs`.

mod latency;
mod pacing;
mod payload;
mod procfs;
mod report;
mod scenario;
mod verify;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scenario::connections::Settings;
use crate::scenario::throughput::Tuning;
use crate::scenario::Ctx;

#[derive(Parser, Debug)]
#[command(
    name = "lockgate-bench",
    version,
    about = "Benchmark an AMQP 0-9-1 broker, verifying every message"
)]
struct Cli {
    /// Broker URI.
    #[arg(
        long,
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    uri: String,
    /// Print one JSON object per result on stdout instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Name of the broker under test, copied into every result.
    #[arg(long, global = true, default_value = "broker")]
    label: String,
    /// PID of the broker process, to sample its RSS and CPU from /proc.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Warm-up before each measured window, seconds.
    #[arg(long, global = true, default_value_t = 2.0)]
    warmup: f64,
    /// Measured window of each case, seconds.
    #[arg(long, global = true, default_value_t = 5.0)]
    duration: f64,
    /// After publishing stops, give up waiting for deliveries once none has
    /// arrived for this long, seconds.
    #[arg(long, global = true, default_value_t = 5.0)]
    drain_timeout: f64,
    /// Publish exactly this many messages per case of the throughput
    /// scenarios (transient, persistent, fanout, many-queues) instead of a
    /// timed window; `--warmup` and `--duration` are then ignored and rates
    /// cover the whole run. A fixed count makes the CPU work per message
    /// comparable between builds (`perf stat` on the broker and the bench).
    #[arg(long, global = true)]
    messages: Option<u64>,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug)]
struct TuningArgs {
    /// Consumer prefetch (basic.qos, per consumer).
    #[arg(long, global = true, default_value_t = 1000)]
    prefetch: u16,
    /// Consumers ack with `multiple` every this many deliveries.
    #[arg(long, global = true, default_value_t = 100)]
    ack_every: u64,
    /// The publisher stays at most this many messages ahead of the consumers.
    #[arg(long, global = true, default_value_t = 20_000)]
    max_ahead: u64,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// 1 publisher → 1 queue → 1 consumer, transient messages.
    Transient {
        /// Body sizes in bytes, one case each (at least 16).
        #[arg(long, value_delimiter = ',', default_value = "16,1024")]
        sizes: Vec<usize>,
    },
    /// Persistent messages to a durable queue with publisher confirms.
    Persistent {
        /// Body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Confirms in flight at most.
        #[arg(long, default_value_t = 1000)]
        confirm_window: usize,
    },
    /// One publisher, a fanout exchange, N queues each with a consumer.
    Fanout {
        /// Number of queues.
        #[arg(long, default_value_t = 4)]
        queues: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// Latency percentiles at fixed publish rates.
    Latency {
        /// Rates in msg/s, one case each.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        rates: Vec<u64>,
        /// Body size in bytes (at least 24: it carries a timestamp).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Publish a backlog with no consumer, then drain it.
    Backlog {
        /// Messages in the backlog.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Body size in bytes.
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Confirms in flight at most while publishing.
        #[arg(long, default_value_t = 1000)]
        confirm_window: usize,
    },
    /// Many queues, each with its own consumer; the publisher round-robins.
    ManyQueues {
        /// Number of queues.
        #[arg(long, default_value_t = 1000)]
        queues: usize,
        /// Connections the consumers are spread over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// Idle connections with heartbeats (broker memory each), then churn.
    Connections {
        /// Idle connections to open (lowered to what the fd limit allows).
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Heartbeat interval to request, seconds.
        #[arg(long, default_value_t = 2)]
        heartbeat: u16,
        /// How long to hold the idle connections, seconds.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// Connections opened concurrently.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Length of the churn phase, seconds (0 skips it).
        #[arg(long, default_value_t = 5.0)]
        churn: f64,
    },
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--{name} {s}: not a duration"))
}

fn check_size(size: usize, min: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(
        size >= min,
        "body size {size} is below the minimum of {min} bytes"
    );
    Ok(size)
}

async fn run(cli: Cli) -> anyhow::Result<Vec<report::Record>> {
    let ctx = Ctx::new(
        cli.uri,
        cli.label,
        cli.broker_pid,
        seconds("warmup", cli.warmup)?,
        seconds("duration", cli.duration)?,
        seconds("drain-timeout", cli.drain_timeout)?,
    )
    .with_messages(cli.messages);
    let tuning = Tuning {
        prefetch: cli.tuning.prefetch,
        ack_every: cli.tuning.ack_every,
        max_ahead: cli.tuning.max_ahead,
    };
    use scenario::{backlog, connections, latency, throughput};
    match cli.scenario {
        Scenario::Transient { sizes } => {
            for &s in &sizes {
                check_size(s, payload::MIN_SIZE)?;
            }
            throughput::transient(&ctx, &sizes, &tuning).await
        }
        Scenario::Persistent {
            size,
            confirm_window,
        } => {
            let size = check_size(size, payload::MIN_SIZE)?;
            throughput::persistent(&ctx, size, confirm_window, &tuning).await
        }
        Scenario::Fanout { queues, size } => {
            let size = check_size(size, payload::MIN_SIZE)?;
            throughput::fanout(&ctx, queues.max(1), size, &tuning).await
        }
        Scenario::Latency { rates, size } => {
            let size = check_size(size, payload::MIN_TIMED_SIZE)?;
            latency::run(&ctx, &rates, size, &tuning).await
        }
        Scenario::Backlog {
            count,
            size,
            confirm_window,
        } => {
            let size = check_size(size, payload::MIN_SIZE)?;
            backlog::run(&ctx, count, size, confirm_window, &tuning).await
        }
        Scenario::ManyQueues {
            queues,
            connections,
            size,
        } => {
            let size = check_size(size, payload::MIN_SIZE)?;
            throughput::many_queues(&ctx, queues.max(1), connections.max(1), size, &tuning).await
        }
        Scenario::Connections {
            count,
            heartbeat,
            hold,
            concurrency,
            churn,
        } => {
            let settings = Settings {
                count,
                heartbeat,
                hold: seconds("hold", hold)?,
                concurrency,
                churn: seconds("churn", churn)?,
            };
            connections::run(&ctx, &settings).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockgate-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(records) => {
            if json {
                report::print_json(&records);
            } else {
                print!("{}", report::table(&records));
            }
            if records.iter().all(|r| r.ok) {
                ExitCode::SUCCESS
            } else {
                eprintln!("lockgate-bench: verification FAILED (see the verdict column)");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("lockgate-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
