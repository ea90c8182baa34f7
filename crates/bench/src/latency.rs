//! Latency percentiles from an HDR histogram of microseconds, and an optional
//! per-message dump ([`Trace`]) for finding where the tail comes from.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly (60 s); above it values are clamped.
const MAX_US: u64 = 60_000_000;

/// A histogram of one consumer's latencies, in microseconds.
#[derive(Clone, Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            // 3 significant digits: 0.1% resolution at every magnitude.
            hist: Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| {
                unreachable!("constant bounds 1..=60 s with 3 digits are valid")
            }),
        }
    }
}

impl Recorder {
    /// Records one latency (clamped to 1 µs ..= 60 s).
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds another recorder's values.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// The summary the reports print.
    pub fn summary(&self) -> Summary {
        let h = &self.hist;
        Summary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Percentiles of a latency distribution, in microseconds (within 0.1%).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Number of values.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest value.
    pub max_us: u64,
}

/// Names a file prefix: when set, every paced run writes its per-message times
/// (see [`Trace`]). Unset (the default), nothing is kept.
pub const DUMP_ENV: &str = "LOCKGATE_BENCH_LATENCY_DUMP";

/// Numbers the dumps of one kind within a process (one per case, in order).
static RECV_DUMPS: AtomicU32 = AtomicU32::new(0);
static SEND_DUMPS: AtomicU32 = AtomicU32::new(0);

/// Per-message times of a latency run, kept only when [`DUMP_ENV`] is set, for
/// lining the tail up with scheduler traces (`perf sched record -k
/// CLOCK_MONOTONIC`, or ftrace with `trace_clock` `mono`).
///
/// Case `n` (from 0, in the order the cases run) writes `<prefix>.recv.<n>`
/// (the consumer: `stamp received` per measured message) and `<prefix>.send.<n>`
/// (the paced publisher: `due stamp` per message), in ns on the run's clock.
/// The first line, `# mono_ns_at_origin N`, gives that clock's zero in
/// CLOCK_MONOTONIC ns. Latency is `received - stamp`; the pacer's lateness
/// is `stamp - due`.
#[derive(Debug, Default)]
pub struct Trace {
    file: Option<PathBuf>,
    pairs: Vec<(u64, u64)>,
}

/// Which side of the run a [`Trace`] records.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// The consumer: stamp and receive time.
    Recv,
    /// The paced publisher: due time and stamp.
    Send,
}

impl Trace {
    /// A trace that keeps samples if [`DUMP_ENV`] is set, and is a no-op otherwise.
    pub fn from_env(side: Side) -> Self {
        let Some(prefix) = std::env::var_os(DUMP_ENV) else {
            return Self::default();
        };
        let (kind, counter) = match side {
            Side::Recv => ("recv", &RECV_DUMPS),
            Side::Send => ("send", &SEND_DUMPS),
        };
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let mut file = PathBuf::from(prefix).into_os_string();
        file.push(format!(".{kind}.{n}"));
        Self {
            file: Some(file.into()),
            pairs: Vec::with_capacity(1 << 16),
        }
    }

    /// Records one message's two times (ns on the run's clock).
    pub fn push(&mut self, a: u64, b: u64) {
        if self.file.is_some() {
            self.pairs.push((a, b));
        }
    }

    /// Writes the file, if kept; `now_ns` is the run's clock now. A failure
    /// is reported on stderr: the run's results stand without the dump.
    pub fn finish(self, now_ns: u64) {
        let Some(path) = self.file else {
            return;
        };
        let origin = monotonic_ns().saturating_sub(now_ns);
        let write = || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
            writeln!(out, "# mono_ns_at_origin {origin}")?;
            for (a, b) in &self.pairs {
                writeln!(out, "{a} {b}")?;
            }
            out.flush()
        };
        if let Err(e) = write() {
            eprintln!("lockgate-bench: writing {}: {e}", path.display());
        }
    }
}

/// CLOCK_MONOTONIC now, in ns (the clock `Instant` reads on Linux).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(actual: u64, expected: u64) -> bool {
        actual.abs_diff(expected) * 1000 <= expected
    }

    #[test]
    fn uniform_distribution_percentiles() {
        let mut r = Recorder::default();
        (1..=10_000).for_each(|us| r.record_us(us));
        let s = r.summary();
        assert_eq!(s.count, 10_000);
        assert!(within(s.p50_us, 5_000), "{s:?}");
        assert!(within(s.p99_us, 9_900), "{s:?}");
        assert!(within(s.p999_us, 9_990), "{s:?}");
        assert!(within(s.max_us, 10_000), "{s:?}");
    }

    #[test]
    fn a_single_outlier_shows_in_max_and_p999_only() {
        let mut r = Recorder::default();
        (0..999).for_each(|_| r.record_us(100));
        r.record_us(50_000);
        let s = r.summary();
        assert_eq!((s.p50_us, s.p99_us), (100, 100));
        assert!(within(s.max_us, 50_000));
        assert_eq!(s.p999_us, 100);
        r.record_us(50_000);
        assert!(within(r.summary().p999_us, 50_000));
    }

    #[test]
    fn merge_combines_and_clamps() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record_us(0);
        b.record_us(u64::MAX);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 2);
        assert!(within(s.max_us, MAX_US));
    }

    #[test]
    fn a_trace_without_the_variable_keeps_nothing() {
        let mut t = Trace::default();
        t.push(1, 2);
        assert!(t.pairs.is_empty());
        t.finish(0);
    }

    #[test]
    fn a_trace_writes_its_pairs_after_the_clock_origin() {
        let dir = std::env::temp_dir().join(format!("lgb-trace-{}", std::process::id()));
        let mut t = Trace {
            file: Some(dir.clone()),
            pairs: Vec::new(),
        };
        t.push(10, 25);
        t.push(30, 41);
        t.finish(1_000);
        let text = std::fs::read_to_string(&dir).expect("dump written");
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("# mono_ns_at_origin "), "{text}");
        assert_eq!(&lines[1..], ["10 25", "30 41"]);
    }
}
