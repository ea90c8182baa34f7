//! Results: one [`Record`] per scenario case, printed as JSON lines
//! (`--json`) or a table, and the live progress line on stderr.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::procfs::Usage;
use crate::verify::Verification;

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Metric {
    /// Machine name, e.g. `delivered_per_s`.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
    /// Unit, e.g. `msg/s`, `us`, `MiB`.
    pub unit: &'static str,
    /// Whether a larger value is better (for ratios and charts).
    pub higher_is_better: bool,
}

impl Metric {
    /// A rate or count where more is better.
    pub fn higher(name: &'static str, value: f64, unit: &'static str) -> Self {
        Self {
            name,
            value,
            unit,
            higher_is_better: true,
        }
    }

    /// A latency or a size where less is better.
    pub fn lower(name: &'static str, value: f64, unit: &'static str) -> Self {
        Self {
            name,
            value,
            unit,
            higher_is_better: false,
        }
    }
}

/// The result of one scenario case against one broker.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Scenario (subcommand) name.
    pub scenario: &'static str,
    /// Case within it, e.g. `16B` or `10000/s`.
    pub case: String,
    /// `--label`, naming the broker under test.
    pub label: String,
    /// The figures.
    pub metrics: Vec<Metric>,
    /// Per-message verification, for scenarios that send messages.
    pub verification: Option<Verification>,
    /// Connections or operations that failed (connection scenarios).
    pub failures: u64,
    /// Broker RSS/CPU over the steady window (with `--broker-pid`).
    pub broker: Option<Usage>,
    /// The bench's own RSS/CPU over the same window.
    pub bench: Option<Usage>,
    /// No unexplained failure.
    pub ok: bool,
}

impl Record {
    /// Sets `ok` from the verification and failure counts.
    pub fn settle(mut self) -> Self {
        self.ok = self.failures == 0 && self.verification.as_ref().is_none_or(Verification::ok);
        self
    }
}

/// Prints records as JSON lines on stdout.
pub fn print_json(records: &[Record]) {
    for r in records {
        match serde_json::to_string(r) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("lockgate-bench: cannot encode a record: {e}"),
        }
    }
}

/// Renders records as a table for people.
pub fn table(records: &[Record]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<14} {:<26} {:>14}  {:<6} {:>9} {:>8} {:>8}  verdict",
        "scenario", "case", "metric", "value", "unit", "brk MiB", "brk CPU", "own CPU"
    );
    for r in records {
        for (i, m) in r.metrics.iter().enumerate() {
            let (rss, cpu, own) = if i == 0 {
                (
                    r.broker
                        .map_or("-".into(), |u| format!("{:.0}", u.rss_max_mib)),
                    r.broker
                        .map_or("-".into(), |u| format!("{:.0}%", u.cpu_pct)),
                    r.bench.map_or("-".into(), |u| format!("{:.0}%", u.cpu_pct)),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            let verdict = if i == 0 { verdict(r) } else { String::new() };
            let _ = writeln!(
                out,
                "{:<12} {:<14} {:<26} {:>14}  {:<6} {:>9} {:>8} {:>8}  {}",
                r.scenario,
                r.case,
                m.name,
                format_value(m.value),
                m.unit,
                rss,
                cpu,
                own,
                verdict
            );
        }
    }
    out
}

fn verdict(r: &Record) -> String {
    let mut s = String::from(if r.ok { "ok" } else { "FAILED" });
    if let Some(v) = &r.verification {
        let _ = write!(
            s,
            " ({} of {} delivered; lost {}, dup {}, corrupt {}, misrouted {}",
            v.delivered, v.expected, v.lost, v.duplicated, v.corrupt, v.misrouted
        );
        if v.nacked > 0 || v.redelivered_duplicates > 0 {
            let _ = write!(
                s,
                "; explained: nacked {}, redelivered {}",
                v.nacked, v.redelivered_duplicates
            );
        }
        s.push(')');
    }
    if r.failures > 0 {
        let _ = write!(s, " ({} failures)", r.failures);
    }
    s
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Message counters shared by publishers, consumers and the progress line.
///
/// Each counter has a cache line of its own: the publisher and the consumers
/// run on different cores, and counters sharing a line would make every
/// update of one invalidate the other core's copy of the rest.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages handed to the client.
    pub published: Counter,
    /// Messages the broker confirmed (confirm mode).
    pub confirmed: Counter,
    /// Deliveries received by all consumers.
    pub delivered: Counter,
}

/// An atomic counter alone on its cache line (128 bytes: adjacent-line
/// prefetchers fetch lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Counter(AtomicU64);

impl std::ops::Deref for Counter {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Prints a one-line progress display on stderr every second, when stderr
/// is a terminal; dropping it stops the display and clears the line.
pub struct Progress {
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `what` with the rates of `counters`.
    pub fn start(what: String, counters: Arc<Counters>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { task: None };
        }
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (0, 0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = (
                    get(&counters.published),
                    get(&counters.confirmed),
                    get(&counters.delivered),
                );
                eprint!(
                    "\r\x1b[2K{what} {:>4}s  published {:>9}/s  confirmed {:>9}/s  delivered {:>9}/s",
                    started.elapsed().as_secs(),
                    now.0 - last.0,
                    now.1 - last.1,
                    now.2 - last.2
                );
                last = now;
            }
        });
        Self { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(verification: Option<Verification>, failures: u64) -> Record {
        Record {
            scenario: "transient",
            case: "16B".into(),
            label: "x".into(),
            metrics: vec![Metric::higher("delivered_per_s", 12345.6, "msg/s")],
            verification,
            failures,
            broker: None,
            bench: None,
            ok: false,
        }
        .settle()
    }

    #[test]
    fn settle_fails_on_unexplained_loss_or_failures() {
        assert!(record(Some(Verification::default()), 0).ok);
        assert!(record(None, 0).ok);
        assert!(!record(None, 1).ok);
        let lost = Verification {
            expected: 1,
            lost: 1,
            ..Verification::default()
        };
        assert!(!record(Some(lost), 0).ok);
    }

    #[test]
    fn table_shows_metric_and_verdict() {
        let t = table(&[record(Some(Verification::default()), 0)]);
        assert!(t.contains("delivered_per_s"));
        assert!(t.contains("12346"));
        assert!(t.contains("ok (0 of 0 delivered"));
    }
}
