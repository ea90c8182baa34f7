//! Latency percentiles from an HDR histogram of microseconds.

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
}
