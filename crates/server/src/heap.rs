//! Gives freed heap memory back to the operating system, and sets glibc up for messages that
//! are freed on another thread than the one that allocated them.
//!
//! A message is allocated by the publisher's connection task and usually freed by the ack on
//! the consumer's, which often runs on the other worker thread. glibc frees a chunk of up to
//! `M_MXFAST` octets (128 by default on 64-bit) into its arena's fastbin with one
//! compare-and-swap; a larger one takes the arena's lock, which the allocating thread holds
//! whenever its thread cache runs empty. A queued message's `Arc` takes a 144-octet chunk, so
//! at the default every ack contended for the publisher's arena (0.03 futex calls per message
//! at 1M msg/s, two thirds of them for this lock). [`configure`] raises `M_MXFAST` to glibc's
//! maximum, 160: chunks up to that size are freed lock-free from any thread. Fastbin chunks
//! are not coalesced until a large allocation or a trim consolidates them, which the trim
//! below does first.
//!
//! glibc keeps what the process frees in its arenas for reuse and returns only the free space
//! at the top of each arena. After a burst (a thousand connections closing, a long backlog
//! drained) tens of MiB can stay resident that way, counted in the broker's RSS long after the
//! load is gone. `malloc_trim(0)` releases every free page of every arena, but it walks every
//! free chunk under the arenas' locks: tens of ms on a fragmented heap (a million small chunks,
//! half of them freed), as does `mallinfo2`, the allocator's only figure for the heap in use.
//! So neither runs on a schedule.
//!
//! Four times a second a task reads two figures that cost no heap walk: the resident size
//! (`/proc/self/statm`, one small read) and the broker's [`Load`]: the message bytes it
//! accounts (one atomic) plus a fixed estimate per open connection (one atomic). The resident
//! size beyond the load is the *overhead*: code, stacks, caches and free heap pages. It trims
//! only when all of these hold:
//! - the load fell by at least [`LOAD_DROP`] since the last trim (memory was freed: connections
//!   closed, messages consumed or purged) and is no longer falling (the burst is over);
//! - the overhead exceeds its floor (its smallest value seen, or its value right after the last
//!   trim) by more than [`TRIM_SLACK`]: the freed memory is still resident;
//! - the last trim was at least [`TRIM_GAP`] ago, so a backlog that fills and drains every few
//!   seconds costs at most one trim per gap.
//!
//! The trim runs on the blocking pool, so a slow one never stalls an async worker; threads
//! allocating from an arena it holds still wait for it. An idle broker's load does not fall,
//! so it never trims; a steady one reuses what it frees and its overhead stays at the floor.
//! Each check costs one `statm` read and two atomic loads, whatever the heap holds; a trim
//! follows the end of a burst within about half a second.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::connection::ServerContext;

/// Resident memory beyond the load (and the fixed overhead) kept without a trim.
pub const TRIM_SLACK: usize = 8 << 20;
/// How far the load must fall before a trim is considered.
pub const LOAD_DROP: usize = 512 << 10;
/// The shortest time between two trims.
pub const TRIM_GAP: Duration = Duration::from_secs(5);
/// Heap counted per open connection in the [`Load`]: a little below what an idle connection
/// costs (about 9 KiB: a quiet read buffer, the two tasks, the writer's queue), so the load does
/// not overstate what is in use.
const CONNECTION_BYTES: usize = 8 << 10;
/// How often the resident size and the load are read: often enough that a trim follows a
/// burst within a second, and cheap at any rate.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// What the broker holds and frees on its own, in bytes: an estimate of its heap in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Message bytes the broker accounts (ready, unacked, in writers).
    pub message_bytes: usize,
    /// Open connections.
    pub connections: usize,
}

impl Load {
    /// The current load of the server behind `ctx`.
    #[must_use]
    pub fn of(ctx: &ServerContext) -> Self {
        Self {
            message_bytes: usize::try_from(ctx.broker.memory_used()).unwrap_or(usize::MAX),
            connections: ctx.open_connections.load(Ordering::Relaxed),
        }
    }

    /// The estimated heap in use for this load.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.message_bytes
            .saturating_add(self.connections.saturating_mul(CONNECTION_BYTES))
    }
}

/// Decides when to trim from the resident size and the load alone.
#[derive(Debug)]
pub struct Trimmer {
    /// The smallest overhead seen, or the overhead right after the last trim.
    floor: usize,
    /// The highest load since the last trim.
    peak: usize,
    /// The load at the previous check.
    previous: usize,
    last_trim: Option<Instant>,
}

impl Trimmer {
    /// A trimmer starting from the resident size `rss` under `load`.
    #[must_use]
    pub fn new(rss: usize, load: Load) -> Self {
        let load = load.bytes();
        Self {
            floor: rss.saturating_sub(load),
            peak: load,
            previous: load,
            last_trim: None,
        }
    }

    /// Records the figures read at `now` and says whether to trim now.
    pub fn check(&mut self, now: Instant, rss: usize, load: Load) -> bool {
        let load = load.bytes();
        let overhead = rss.saturating_sub(load);
        let falling = load < self.previous;
        self.previous = load;
        self.peak = self.peak.max(load);
        if overhead <= self.floor.saturating_add(TRIM_SLACK) {
            self.floor = self.floor.min(overhead);
            return false;
        }
        let dropped = self.peak.saturating_sub(load) >= LOAD_DROP;
        let rested = self
            .last_trim
            .is_none_or(|at| now.saturating_duration_since(at) >= TRIM_GAP);
        dropped && !falling && rested
    }

    /// Records a trim started at `at`, after which the resident size was `rss` under `load`.
    /// The floor follows the overhead, up or down: a trim that could not bring it near the
    /// floor (memory outside the heap grew: threads, mappings) raises it, so the same trim is
    /// not repeated at the next drop.
    pub fn trimmed(&mut self, at: Instant, rss: usize, load: Load) {
        let load = load.bytes();
        self.floor = rss.saturating_sub(load);
        self.peak = load;
        self.previous = load;
        self.last_trim = Some(at);
    }
}

/// Sets the allocator up for messages freed on another thread (see the module doc). Call it
/// once at start, before the runtime's threads exist. Returns false when glibc refused the
/// setting (true for other allocators, which have nothing to set).
pub fn configure() -> bool {
    imp::configure()
}

/// Reads the resident size and the load four times a second until `ctx.shutdown`, trimming on the
/// blocking pool when it is worth it.
pub fn spawn(ctx: Arc<ServerContext>) {
    let Some(rss) = imp::rss() else {
        return;
    };
    let mut trimmer = Trimmer::new(rss, Load::of(&ctx));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(CHECK_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let Some(before) = imp::rss() else {
                return;
            };
            let now = Instant::now();
            if !trimmer.check(now, before, Load::of(&ctx)) {
                continue;
            }
            if tokio::task::spawn_blocking(imp::trim).await.is_err() {
                return;
            }
            let Some(after) = imp::rss() else {
                return;
            };
            let load = Load::of(&ctx);
            trimmer.trimmed(now, after, load);
            debug!(
                rss_before = before,
                rss_after = after,
                load = load.bytes(),
                "returned freed heap memory to the OS"
            );
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub(super) fn rss() -> Option<usize> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages.saturating_mul(usize::try_from(page).ok()?))
    }

    pub(super) fn trim() {
        // SAFETY: malloc_trim takes the arenas' locks itself; 0 keeps no padding at the top.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// The largest chunk (octets, header included) glibc frees without its arena's lock: its
    /// maximum, `80 * size_of::<usize>() / 4`.
    pub(super) const FAST_MAX: libc::c_int = 160;

    pub(super) fn configure() -> bool {
        // SAFETY: mallopt sets one of the allocator's parameters under its own lock.
        unsafe { libc::mallopt(libc::M_MXFAST, FAST_MAX) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn rss() -> Option<usize> {
        None
    }

    pub(super) fn trim() {}

    pub(super) fn configure() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn load(mib: usize, connections: usize) -> Load {
        Load {
            message_bytes: mib * MIB,
            connections,
        }
    }

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn trims_once_after_connections_close_and_not_while_idle() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(10 * MIB, load(0, 0));
        // A thousand connections open: the resident size grows with the load.
        assert!(!trimmer.check(secs(t0, 1), 30 * MIB, load(0, 1000)));
        // They close over two seconds: no trim while the load is still falling.
        assert!(!trimmer.check(secs(t0, 2), 31 * MIB, load(0, 500)));
        assert!(!trimmer.check(secs(t0, 3), 31 * MIB, load(0, 0)));
        // The load settled and the freed memory is still resident: trim.
        assert!(trimmer.check(secs(t0, 4), 31 * MIB, load(0, 0)));
        trimmer.trimmed(secs(t0, 4), 16 * MIB, load(0, 0));
        // Idle from here on: the load never falls again, so no trim, however long.
        for s in 5..100 {
            assert!(
                !trimmer.check(secs(t0, s), 16 * MIB, load(0, 0)),
                "second {s}"
            );
        }
    }

    #[test]
    fn a_steady_load_and_a_flat_heap_never_trim() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(10 * MIB, load(0, 0));
        // Messages come and go by tens of MiB, the freed memory is reused: the resident size
        // follows the load, the overhead stays at the floor.
        for s in 1..100 {
            let held = if s % 2 == 0 { 40 } else { 10 };
            assert!(
                !trimmer.check(secs(t0, s), (10 + held) * MIB, load(held, 10)),
                "second {s}"
            );
        }
    }

    #[test]
    fn a_trim_that_releases_nothing_is_not_repeated() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(10 * MIB, load(0, 0));
        assert!(!trimmer.check(secs(t0, 1), 60 * MIB, load(40, 0)));
        assert!(!trimmer.check(secs(t0, 2), 60 * MIB, load(0, 0)));
        assert!(trimmer.check(secs(t0, 3), 60 * MIB, load(0, 0)));
        // Memory outside the heap grew (threads, mappings): the trim gave nothing back, and
        // the floor rises to it.
        trimmer.trimmed(secs(t0, 3), 60 * MIB, load(0, 0));
        for s in 4..100 {
            assert!(
                !trimmer.check(secs(t0, s), 60 * MIB, load(0, 0)),
                "second {s}"
            );
        }
    }

    #[test]
    fn a_backlog_filled_and_drained_again_and_again_trims_at_most_once_per_gap() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(10 * MIB, load(0, 0));
        let mut trims = Vec::new();
        for s in 1..=60 {
            // Fills for two seconds, drains in one, rests for one; each message costs the heap
            // far more than its accounted bytes, so the resident size stays up after a drain.
            let (rss, held) = match s % 4 {
                1 => (40, 2),
                2 => (70, 4),
                _ => (70, 0),
            };
            let now = secs(t0, s);
            if trimmer.check(now, rss * MIB, load(held, 0)) {
                trims.push(s);
                trimmer.trimmed(now, 12 * MIB, load(0, 0));
            }
        }
        assert!(!trims.is_empty());
        for pair in trims.windows(2) {
            assert!(pair[1] - pair[0] >= TRIM_GAP.as_secs(), "{trims:?}");
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_queued_message_fits_a_fastbin() {
        assert!(configure(), "glibc refused M_MXFAST = {}", imp::FAST_MAX);
        // An `Arc<Message>`: two counts, then the message; glibc's chunk adds one word and
        // rounds up to 16 octets.
        let arc = 2 * size_of::<usize>() + size_of::<lockgate_broker::Message>();
        let chunk = (arc + size_of::<usize>()).next_multiple_of(16);
        assert!(
            i64::try_from(chunk).unwrap() <= i64::from(imp::FAST_MAX),
            "{chunk}-octet chunk"
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_freed_small_allocations_to_the_os() {
        const CHUNKS: usize = 16 * 1024;
        // 64 MiB in 4 KiB pieces, each touched: below the mmap threshold, so they live in an
        // arena and stay resident when freed, as a drained backlog's messages do.
        let mut chunks: Vec<Box<[u8]>> = (0..CHUNKS)
            .map(|i| vec![u8::try_from(i % 251).unwrap_or(1) | 1; 4096].into_boxed_slice())
            .collect();
        // Keep the last one, so the freed ones are not all at the arena's top (which glibc
        // would return on its own).
        let keep = chunks.pop();
        drop(chunks);
        let before = imp::rss().expect("rss");
        imp::trim();
        let after = imp::rss().expect("rss");
        assert!(
            before.saturating_sub(after) >= 32 * MIB,
            "{before} -> {after}"
        );
        drop(keep);
    }
}
