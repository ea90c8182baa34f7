//! Test harness: starts the real `lockgate` binary on 127.0.0.1:0 and speaks raw frames to it.
//!
//! The server's stderr is collected and printed only when a test fails (on drop while
//! panicking). Every wait is on a condition (a frame arriving, the socket closing, the process
//! exiting) with a generous upper bound, never a fixed sleep.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use lockgate_wire::{
    basic, channel, connection, queue, BasicProperties, ContentHeader, FieldTable, FieldValue,
    Frame, FrameCodec, Method, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running server process.
pub struct Server {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server with default settings.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Starts the server with the given TOML config text.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("lockgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockgate"))
            .arg("--config")
            .arg(&config_path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "debug",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockgate");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = addr_tx.take_if(|_| line.contains("listening")) {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    let _ = tx.send(addr);
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(WAIT)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "server did not log its address: {:?}",
                    logs.lock().expect("logs")
                );
            });
        Self {
            child,
            addr,
            logs,
            _dir: dir,
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .any(|l| l.contains(needle))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- lockgate server log ----");
            for line in self.logs.lock().expect("logs").iter() {
                eprintln!("{line}");
            }
        }
    }
}

/// A raw AMQP client.
pub struct Client {
    /// The framed socket.
    pub framed: Framed<TcpStream, FrameCodec>,
}

impl Client {
    /// TCP connect and send the protocol header.
    pub async fn connect_raw(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(&PROTOCOL_HEADER).await.expect("header");
        stream
    }

    /// Full handshake as guest with the given heartbeat.
    pub async fn open_with_heartbeat(addr: SocketAddr, heartbeat: u16) -> Self {
        Self::open_with(addr, heartbeat, &[]).await
    }

    /// Full handshake as guest announcing the given client capabilities.
    pub async fn open_with_capabilities(addr: SocketAddr, capabilities: &[&str]) -> Self {
        Self::open_with(addr, 0, capabilities).await
    }

    /// Full handshake as guest.
    pub async fn open_with(addr: SocketAddr, heartbeat: u16, capabilities: &[&str]) -> Self {
        let caps: FieldTable = capabilities
            .iter()
            .map(|c| ((*c).to_owned(), FieldValue::Bool(true)))
            .collect();
        let client_properties: FieldTable = [("capabilities".to_owned(), FieldValue::Table(caps))]
            .into_iter()
            .collect();
        let stream = Self::connect_raw(addr).await;
        let mut client = Self {
            framed: Framed::new(stream, FrameCodec::new(131_072)),
        };
        let Method::ConnectionStart(start) = client.recv_method(0).await else {
            panic!("expected connection.start");
        };
        assert!(String::from_utf8_lossy(&start.mechanisms).contains("PLAIN"));
        client
            .send_method(
                0,
                connection::StartOk {
                    client_properties,
                    mechanism: "PLAIN".into(),
                    response: Bytes::from_static(b"\0guest\0guest"),
                    locale: "en_US".into(),
                },
            )
            .await;
        let Method::ConnectionTune(tune) = client.recv_method(0).await else {
            panic!("expected connection.tune");
        };
        client
            .send_method(
                0,
                connection::TuneOk {
                    channel_max: tune.channel_max,
                    frame_max: tune.frame_max,
                    heartbeat,
                },
            )
            .await;
        client
            .send_method(
                0,
                connection::Open {
                    virtual_host: "/".into(),
                    ..Default::default()
                },
            )
            .await;
        let Method::ConnectionOpenOk(_) = client.recv_method(0).await else {
            panic!("expected connection.open-ok");
        };
        client
    }

    /// Full handshake as guest without heartbeats.
    pub async fn open(addr: SocketAddr) -> Self {
        Self::open_with_heartbeat(addr, 0).await
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: Frame) {
        self.framed.send(frame).await.expect("send frame");
    }

    /// Sends a method frame.
    pub async fn send_method(&mut self, channel: u16, method: impl Into<Method>) {
        self.send(Frame::Method {
            channel,
            method: method.into(),
        })
        .await;
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.framed.get_mut();
        stream.write_all(bytes).await.expect("send raw");
    }

    /// The next frame other than a heartbeat; panics on timeout or EOF.
    pub async fn recv(&mut self) -> Frame {
        loop {
            let frame = tokio::time::timeout(WAIT, self.framed.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection closed")
                .expect("decode");
            if !matches!(frame, Frame::Heartbeat) {
                return frame;
            }
        }
    }

    /// The next method, which must be on `channel`.
    pub async fn recv_method(&mut self, channel: u16) -> Method {
        match self.recv().await {
            Frame::Method { channel: c, method } if c == channel => method,
            other => panic!("expected a method on channel {channel}, got {other:?}"),
        }
    }

    /// Reads until connection.close, answers close-ok, returns it.
    pub async fn expect_connection_close(&mut self) -> connection::Close {
        loop {
            if let Frame::Method {
                channel: 0,
                method: Method::ConnectionClose(close),
            } = self.recv().await
            {
                self.send_method(0, connection::CloseOk).await;
                return close;
            }
        }
    }

    /// Reads until channel.close on `channel`, answers close-ok, returns it.
    pub async fn expect_channel_close(&mut self, number: u16) -> channel::Close {
        loop {
            if let Frame::Method {
                channel: c,
                method: Method::ChannelClose(close),
            } = self.recv().await
            {
                assert_eq!(c, number, "channel.close on the wrong channel");
                self.send_method(number, channel::CloseOk).await;
                return close;
            }
        }
    }

    /// Waits for the server to close the socket; panics on timeout.
    pub async fn expect_eof(self) {
        let mut stream = self.framed.into_inner();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(WAIT, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("server did not close the connection");
    }

    /// Opens a channel.
    pub async fn open_channel(&mut self, number: u16) {
        self.send_method(number, channel::Open::default()).await;
        let Method::ChannelOpenOk(_) = self.recv_method(number).await else {
            panic!("expected channel.open-ok");
        };
    }

    /// Declares a queue and returns its name.
    pub async fn declare_queue(&mut self, number: u16, name: &str) -> String {
        self.send_method(
            number,
            queue::Declare {
                queue: name.into(),
                ..Default::default()
            },
        )
        .await;
        let Method::QueueDeclareOk(ok) = self.recv_method(number).await else {
            panic!("expected queue.declare-ok");
        };
        ok.queue
    }

    /// Publishes `body` to the default exchange with `routing_key`.
    pub async fn publish(&mut self, number: u16, routing_key: &str, body: &'static [u8]) {
        self.publish_with(
            number,
            basic::Publish {
                routing_key: routing_key.into(),
                ..Default::default()
            },
            body,
        )
        .await;
    }

    /// Sends `publish` with `body` as its content.
    pub async fn publish_with(
        &mut self,
        number: u16,
        publish: basic::Publish,
        body: &'static [u8],
    ) {
        self.send_method(number, publish).await;
        self.send(Frame::Header {
            channel: number,
            header: ContentHeader::new(60, body.len() as u64, BasicProperties::default())
                .expect("header"),
        })
        .await;
        self.send(Frame::Body {
            channel: number,
            payload: Bytes::from_static(body),
        })
        .await;
    }

    /// basic.get on `queue`; returns the body.
    pub async fn get(&mut self, number: u16, queue: &str) -> Option<Bytes> {
        self.send_method(
            number,
            basic::Get {
                queue: queue.into(),
                no_ack: true,
            },
        )
        .await;
        match self.recv_method(number).await {
            Method::BasicGetEmpty(_) => None,
            Method::BasicGetOk(_) => {
                let Frame::Header { header, .. } = self.recv().await else {
                    panic!("expected a content header");
                };
                let mut body = Vec::new();
                while (body.len() as u64) < header.body_size {
                    let Frame::Body { payload, .. } = self.recv().await else {
                        panic!("expected a body frame");
                    };
                    body.extend_from_slice(&payload);
                }
                Some(Bytes::from(body))
            }
            other => panic!("expected basic.get-ok or get-empty, got {other:?}"),
        }
    }

    /// A full round trip on a fresh channel: declare, publish, get.
    pub async fn round_trip(&mut self, number: u16) {
        self.open_channel(number).await;
        let queue = self.declare_queue(number, "").await;
        self.publish(number, &queue, b"still alive").await;
        // The publish has no reply: basic.get is answered after it, in order.
        assert_eq!(
            self.get(number, &queue).await.as_deref(),
            Some(&b"still alive"[..])
        );
    }
}
