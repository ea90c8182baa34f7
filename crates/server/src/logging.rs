//! tracing setup: text or JSON lines on stderr, filtered by `log.level`.
//!
//! A thread of its own writes the lines, in order, from a queue: a runtime worker that logs
//! never waits for stderr. When whoever reads stderr stops reading (a log collector that
//! stalls, a pipe nobody drains), a write blocks once the pipe is full; written from the
//! workers, it would stop every one that logs, and with them the broker. While the reader
//! keeps up nothing is lost; lines that find [`QUEUE_BYTES`] already queued are dropped, and
//! once the writer gets through again it logs how many (as RabbitMQ's logger drops under
//! overload and says so).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// How many octets of lines may wait for a stderr that is not read.
const QUEUE_BYTES: usize = 8 << 20;

/// How long [`LogGuard`]'s drop waits for the queued lines to be written.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// The writer thread's queue, for [`flush`].
static QUEUE: OnceLock<Sender<Entry>> = OnceLock::new();

/// Installs the global tracing subscriber. Keep the guard until the process ends: its drop
/// writes the lines still queued (waiting at most [`EXIT_WAIT`] for a stderr nobody reads).
///
/// # Errors
/// The level is not a valid filter, or a subscriber is already installed.
pub fn init(config: &LogConfig) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(&config.level)
        .with_context(|| format!("log.level: invalid filter {:?}", config.level))?;
    let queue = LogQueue::start(io::stderr(), QUEUE_BYTES)?;
    let entries = queue.entries.clone();
    // A line that cannot be written (stderr is a pipe nobody reads any more: a log collector
    // gone) is dropped. By default the subscriber reports that with eprintln!, which panics on
    // the same broken pipe: every task that logged would die, the signal handler's included.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(queue)
        .log_internal_errors(false);
    let result = match config.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    result
        .map_err(|e| anyhow::anyhow!(e))
        .context("installing the log subscriber")?;
    // Installed once: try_init above fails for a second subscriber.
    let _ = QUEUE.set(entries);
    Ok(LogGuard(()))
}

/// Writes the lines queued so far, waiting at most [`EXIT_WAIT`]. [`LogGuard`] does this when
/// it drops; call it before `std::process::exit`, which runs no destructor.
pub fn flush() {
    let Some(entries) = QUEUE.get() else {
        return;
    };
    let (done, written) = mpsc::channel();
    if entries.send(Entry::Flush(done)).is_ok() {
        let _ = written.recv_timeout(EXIT_WAIT);
    }
}

enum Entry {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(Sender<()>),
}

/// The subscriber's writer: each event's output goes to the writer thread as one line.
struct LogQueue {
    entries: Sender<Entry>,
    state: Arc<QueueState>,
}

struct QueueState {
    /// Octets queued and not written yet.
    queued: AtomicUsize,
    limit: usize,
    /// Lines refused since the last report.
    dropped: AtomicU64,
}

impl LogQueue {
    /// Starts the thread that writes the queued lines to `out`.
    fn start(out: impl Write + Send + 'static, limit: usize) -> anyhow::Result<Self> {
        let (entries, queue) = mpsc::channel();
        let state = Arc::new(QueueState {
            queued: AtomicUsize::new(0),
            limit,
            dropped: AtomicU64::new(0),
        });
        let writer_state = Arc::clone(&state);
        thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&queue, out, &writer_state))
            .context("starting the log writer thread")?;
        Ok(Self { entries, state })
    }
}

/// Writes the queued lines in order, for as long as the process lives. After a line, when
/// some were dropped meanwhile, logs how many (through the queue, in the configured format).
fn write_lines(queue: &Receiver<Entry>, mut out: impl Write, state: &QueueState) {
    for entry in queue {
        match entry {
            Entry::Line(line) => {
                // Nobody to tell when stderr itself fails.
                drop(out.write_all(&line));
                state.queued.fetch_sub(line.len(), Ordering::AcqRel);
                let dropped = state.dropped.swap(0, Ordering::AcqRel);
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "dropped {dropped} log lines: stderr was not read fast enough"
                    );
                }
            }
            Entry::Flush(done) => {
                drop(out.flush());
                let _ = done.send(());
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine {
            queue: self,
            line: Vec::new(),
        }
    }
}

/// One event's output, queued whole when the subscriber is done with it.
struct QueuedLine<'a> {
    queue: &'a LogQueue,
    line: Vec<u8>,
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine<'_> {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let state = &self.queue.state;
        let len = self.line.len();
        let room = state
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + len <= state.limit).then_some(queued + len)
            })
            .is_ok();
        if !room {
            state.dropped.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let line = std::mem::take(&mut self.line);
        if self.queue.entries.send(Entry::Line(line)).is_err() {
            state.queued.fetch_sub(len, Ordering::AcqRel);
        }
    }
}

/// Held until the process ends; see [`init`].
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Output that takes nothing until `open` is answered, then keeps what it is given.
    struct Held {
        open: Option<Receiver<()>>,
        kept: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(open) = self.open.take() {
                let _ = open.recv();
            }
            self.kept.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(queue: &LogQueue, line: &str) {
        queue
            .make_writer()
            .write_all(line.as_bytes())
            .expect("a queued line is always taken");
    }

    fn flushed(queue: &LogQueue) {
        let (done, written) = mpsc::channel();
        queue.entries.send(Entry::Flush(done)).unwrap();
        written.recv().unwrap();
    }

    #[test]
    fn lines_wait_in_order_while_the_output_is_stuck_and_those_past_the_limit_are_counted() {
        let (open, opened) = mpsc::channel();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let held = Held {
            open: Some(opened),
            kept: Arc::clone(&kept),
        };
        // Room for the line the writer holds and three more: the fifth and sixth are dropped.
        let queue = LogQueue::start(held, 8).unwrap();
        for line in ["a\n", "b\n", "c\n", "d\n", "e\n", "f\n"] {
            log(&queue, line);
        }
        assert_eq!(queue.state.dropped.load(Ordering::Acquire), 2);
        open.send(()).unwrap();
        flushed(&queue);
        assert_eq!(&kept.lock().unwrap()[..], b"a\nb\nc\nd\n");
        // The next line goes out: nothing is queued any more, and the count starts over.
        log(&queue, "g\n");
        flushed(&queue);
        assert_eq!(&kept.lock().unwrap()[..], b"a\nb\nc\nd\ng\n");
        assert_eq!(queue.state.queued.load(Ordering::Acquire), 0);
    }
}
