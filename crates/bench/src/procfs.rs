//! Samples a process's resident memory and CPU time from /proc (the broker
//! given by `--broker-pid`, and the bench itself).

use std::fs;
use std::time::Instant;

use serde::Serialize;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Resident set size in KiB.
    pub rss_kib: u64,
    /// User + system CPU time in seconds.
    pub cpu_s: f64,
    at: Instant,
}

/// Reads `/proc/<pid>` (or `/proc/self` for `None`); `None` when the process
/// is gone or /proc is unreadable.
pub fn sample(pid: Option<u32>) -> Option<Sample> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let status = fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    Some(Sample {
        rss_kib,
        cpu_s: cpu_seconds(&stat)?,
        at: Instant::now(),
    })
}

/// utime + stime from a /proc/PID/stat line, in seconds. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from the
/// last ')'.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Resource use of a process over a window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// RSS at the start of the window, MiB.
    pub rss_start_mib: f64,
    /// RSS at the end of the window, MiB.
    pub rss_mib: f64,
    /// Highest RSS seen during the window, MiB.
    pub rss_max_mib: f64,
    /// CPU use over the window, percent of one core.
    pub cpu_pct: f64,
}

/// Tracks one process from a starting sample, keeping the peak RSS.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pid: Option<u32>,
    start: Sample,
    peak_kib: u64,
}

impl Window {
    /// Starts a window now; `None` when the process cannot be read.
    pub fn start(pid: Option<u32>) -> Option<Self> {
        let start = sample(pid)?;
        Some(Self {
            pid,
            start,
            peak_kib: start.rss_kib,
        })
    }

    /// Takes an intermediate sample for the peak.
    pub fn poll(&mut self) {
        if let Some(s) = sample(self.pid) {
            self.peak_kib = self.peak_kib.max(s.rss_kib);
        }
    }

    /// Ends the window.
    pub fn finish(mut self) -> Option<Usage> {
        let end = sample(self.pid)?;
        self.peak_kib = self.peak_kib.max(end.rss_kib);
        let secs = end.at.duration_since(self.start.at).as_secs_f64();
        Some(Usage {
            rss_start_mib: self.start.rss_kib as f64 / 1024.0,
            rss_mib: end.rss_kib as f64 / 1024.0,
            rss_max_mib: self.peak_kib as f64 / 1024.0,
            cpu_pct: if secs > 0.0 {
                100.0 * (end.cpu_s - self.start.cpu_s) / secs
            } else {
                0.0
            },
        })
    }
}

/// Raises this process's open-file limit to its hard limit and returns the
/// new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let wanted = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            lim = wanted;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 0";
        let cpu = cpu_seconds(stat).expect("parses");
        assert!((cpu - 300.0 / clock_ticks()).abs() < 1e-9);
    }

    #[test]
    fn samples_itself() {
        let s = sample(None).expect("/proc/self readable");
        assert!(s.rss_kib > 0);
    }
}
