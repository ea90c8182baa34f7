//! Test harness: a broker to talk to, and ways to break the connection to it.
//!
//! Without `LOCKGATE_TEST_URI`, each test starts its own lockgate binary on a
//! port of 127.0.0.1 the harness reserves for the broker's life (from
//! `$LOCKGATE_BIN`, else `<target>/debug/lockgate`) and reads its address from
//! the `listening ... addr=` log line; the broker's log
//! is printed only if the test fails. With `LOCKGATE_TEST_URI`, every test
//! uses that broker (e.g. a RabbitMQ node) and names its queues uniquely.
//! When neither is available the tests fail: `scripts/test.sh` builds the binary
//! first, and a test that cannot reach a broker has tested nothing.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Fails the test instead of hanging when `fut` takes longer than 30 s.
pub async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("timed out")
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{nanos:x}-{}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn lockgate_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("LOCKGATE_BIN") {
        return Some(PathBuf::from(bin));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug/lockgate"));
    }
    candidates.push(manifest.join("../../target/debug/lockgate"));
    candidates.into_iter().find(|p| p.is_file())
}

/// A port of the test's own for a broker or relay that goes down and comes back: a socket bound
/// to it with SO_REUSEADDR, not listening. While it is held, a connect to the port is refused when
/// nothing listens, and the kernel gives the port to no other socket (a bind to port 0 and a
/// connect's local port skip a bound port), so another test's broker cannot take it while ours is
/// down; a listener that sets SO_REUSEADDR as well (lockgate's and tokio's do) can still bind it.
fn reserve_port() -> (TcpSocket, u16) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// Removes ANSI colour sequences (`ESC [ ... letter`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `listening ... addr=127.0.0.1:PORT` → `127.0.0.1:PORT`.
fn listening_addr(line: &str) -> Option<String> {
    let line = strip_ansi(line);
    let at = line.find("listening")?;
    let rest = &line[at..];
    let addr = &rest[rest.find("addr=")? + 5..];
    let addr: String = addr
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.contains(':').then_some(addr)
}

/// A lockgate process with its log.
struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(bin: &PathBuf, listen: &str, data_dir: &PathBuf) -> (Process, String) {
        let mut child = Command::new(bin)
            .args(["--listen", listen, "--log-format", "text", "--data-dir"])
            .arg(data_dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => (Process { child, log }, addr),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "lockgate did not report its address; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay in front of an external broker, so tests can cut connections.
struct Proxy {
    port: u16,
    /// Holds `port` while the relay is stopped.
    _reserved: TcpSocket,
    target: String,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let (reserved, port) = reserve_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let mut proxy = Proxy {
            port,
            _reserved: reserved,
            target,
            task: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every relay.
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                relays.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Kind {
    Lockgate {
        bin: PathBuf,
        process: Option<Process>,
        addr: String,
        /// Holds `addr`'s port while the broker is down.
        _reserved: TcpSocket,
        data_dir: PathBuf,
        old_logs: Vec<String>,
    },
    External {
        uri: String,
        proxy: Option<Proxy>,
    },
}

/// The broker a test talks to.
pub struct TestBroker {
    kind: Kind,
}

impl TestBroker {
    /// Starts lockgate, or points at `LOCKGATE_TEST_URI`; `None` if neither is possible.
    ///
    /// # Panics
    /// When there is neither a lockgate binary nor `LOCKGATE_TEST_URI`.
    pub fn start() -> TestBroker {
        if let Ok(uri) = std::env::var("LOCKGATE_TEST_URI") {
            return TestBroker {
                kind: Kind::External { uri, proxy: None },
            };
        }
        let bin = lockgate_bin().expect(
            "no broker: build the lockgate binary (cargo build -p lockgate) or set LOCKGATE_TEST_URI",
        );
        let data_dir = std::env::temp_dir().join(unique("lockgate-client-test"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let (reserved, port) = reserve_port();
        let (process, addr) = Process::spawn(&bin, &format!("127.0.0.1:{port}"), &data_dir);
        TestBroker {
            kind: Kind::Lockgate {
                bin,
                process: Some(process),
                addr,
                _reserved: reserved,
                data_dir,
                old_logs: Vec::new(),
            },
        }
    }

    /// The URI to connect to (through the relay once [`TestBroker::relay`] ran).
    pub fn uri(&self) -> String {
        match &self.kind {
            Kind::Lockgate { addr, .. } => format!("amqp://guest:guest@{addr}/%2f"),
            Kind::External {
                proxy: Some(proxy),
                uri,
            } => {
                let mut options = lockgate_client::ConnectionOptions::from_uri(uri).unwrap();
                options.host = "127.0.0.1".into();
                options.port = proxy.port;
                format!(
                    "amqp://{}:{}@127.0.0.1:{}/{}",
                    options.username,
                    options.password,
                    proxy.port,
                    options.vhost.replace('%', "%25").replace('/', "%2f")
                )
            }
            Kind::External { uri, .. } => uri.clone(),
        }
    }

    /// Makes later connections breakable: for an external broker, puts a
    /// relay in front of it (lockgate itself is killed instead).
    pub async fn relay(&mut self) {
        if let Kind::External { uri, proxy } = &mut self.kind {
            let options = lockgate_client::ConnectionOptions::from_uri(uri).unwrap();
            *proxy = Some(Proxy::start(format!("{}:{}", options.host, options.port)).await);
        }
    }

    /// Cuts every connection and refuses new ones: kills lockgate (SIGKILL),
    /// or stops the relay.
    pub async fn down(&mut self) {
        match &mut self.kind {
            Kind::Lockgate {
                process, old_logs, ..
            } => {
                if let Some(mut p) = process.take() {
                    p.kill();
                    old_logs.extend(p.log.lock().unwrap().drain(..));
                }
            }
            Kind::External { proxy, .. } => {
                proxy.as_mut().expect("relay() first").stop();
            }
        }
    }

    /// Brings the broker (or relay) back on the same port.
    pub async fn up(&mut self) {
        match &mut self.kind {
            Kind::Lockgate {
                bin,
                process,
                addr,
                data_dir,
                ..
            } => {
                let (p, new_addr) = Process::spawn(bin, addr, data_dir);
                assert_eq!(&new_addr, addr);
                *process = Some(p);
            }
            Kind::External { proxy, .. } => {
                proxy.as_mut().expect("relay() first").restart().await;
            }
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Kind::Lockgate {
            process,
            data_dir,
            old_logs,
            ..
        } = &mut self.kind
        {
            if let Some(p) = process.as_mut() {
                p.kill();
                old_logs.extend(p.log.lock().unwrap().drain(..));
            }
            if std::thread::panicking() {
                eprintln!("---- lockgate log ----\n{}", old_logs.join("\n"));
            }
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_is_parsed() {
        let line = "2026-11-22T00:00:00Z  INFO lockgate: listening addr=127.0.0.1:40123";
        assert_eq!(listening_addr(line).as_deref(), Some("127.0.0.1:40123"));
        let colored = "\u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5672";
        assert_eq!(listening_addr(colored).as_deref(), Some("127.0.0.1:5672"));
        assert_eq!(listening_addr("connection accepted addr=1.2.3.4:5"), None);
    }
}
