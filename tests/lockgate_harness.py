"""Start the real lockgate binary for end-to-end tests, and small helpers shared by the tests.

A `LockgateProcess` runs `lockgate --listen 127.0.0.1:0 --data-dir DIR [--config FILE]`, reads
its stderr until the `listening ... addr=HOST:PORT` line, and keeps draining stderr into a log
buffer so that the broker never blocks on a full pipe and a failing test can show what it said.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pika

REPO_ROOT = Path(__file__).resolve().parent.parent
# Text form `listening addr=127.0.0.1:PORT`; JSON form `"message":"listening",...,"addr":"..."`.
LISTENING = re.compile(r'listening.*addr"?[=:]\s*"?([0-9.]+):([0-9]+)')
ANSI = re.compile(r"\x1b\[[0-9;]*m")

T = TypeVar("T")


# How long a condition expected within milliseconds may take on a loaded machine before a test
# fails: generous, since it costs nothing while the condition comes on time.
WAIT = 20.0


def eventually(cond: Callable[[], T], timeout: float = WAIT, interval: float = 0.02,
               message: str = "condition") -> T:
    """Poll `cond` until it returns a truthy value, and return that value.

    Raises AssertionError (with the last exception, if `cond` raised) after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except AssertionError as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {timeout}s"
                                 + (f": {last_exc}" if last_exc else ""))
        time.sleep(interval)


def parse_seeds(text: str) -> list[int]:
    """Seeds given as "1-200", "7" or "1-5,9": the outside-CI hunters' --seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += range(int(lo), int(hi or lo) + 1)
    return seeds


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Broker:
    """Where a test's broker listens, and how to connect to it with pika."""

    host: str
    port: int
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    process: Optional["LockgateProcess"] = None

    @property
    def url(self) -> str:
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/{vhost}"

    def params(self, **overrides) -> pika.ConnectionParameters:
        kwargs = dict(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
            connection_attempts=1,
            socket_timeout=5,
            blocked_connection_timeout=None,
        )
        kwargs.update(overrides)
        return pika.ConnectionParameters(**kwargs)

    def connect(self, **overrides) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**overrides))


def lockgate_binary() -> Path:
    env = os.environ.get("LOCKGATE_BIN")
    path = Path(env) if env else REPO_ROOT / "target" / "debug" / "lockgate"
    if not path.is_file():
        raise FileNotFoundError(
            f"lockgate binary not found at {path}: "
            "run `cargo build -p lockgate` or set LOCKGATE_BIN")
    return path


class LockgateProcess:
    """One lockgate process on 127.0.0.1:<free port> with its own data directory."""

    def __init__(self, config: Optional[str] = None, log_level: Optional[str] = None,
                 extra_args: Optional[list[str]] = None, data_dir: Optional[Path] = None):
        """`data_dir` defaults to a fresh temporary directory; pass one to restart on old data."""
        self._tmp = tempfile.TemporaryDirectory(prefix="lockgate-test-")
        tmp = Path(self._tmp.name)
        self.data_dir = data_dir or tmp / "data"
        args = [str(lockgate_binary()), "--listen", "127.0.0.1:0",
                "--data-dir", str(self.data_dir),
                "--log-level", log_level or os.environ.get("LOCKGATE_TEST_LOG_LEVEL", "debug")]
        if config is not None:
            config_path = tmp / "lockgate.toml"
            config_path.write_text(config)
            args += ["--config", str(config_path)]
        args += extra_args or []
        self.args = args
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.addr: Optional[tuple[str, int]] = None
        env = dict(os.environ, NO_COLOR="1")
        env.pop("RUST_LOG", None)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._listening.wait(timeout=15):
            self.stop()
            raise RuntimeError("lockgate did not log a `listening addr=` line within 15s; "
                               f"args {args}\n{self.log()}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = ANSI.sub("", raw.decode("utf-8", "replace"))
            with self._lock:
                self._lines.append(line)
            if self.addr is None:
                m = LISTENING.search(line)
                if m:
                    self.addr = (m.group(1), int(m.group(2)))
                    self._listening.set()
        self._listening.set()

    @property
    def port(self) -> int:
        assert self.addr is not None
        return self.addr[1]

    def log_mark(self) -> int:
        with self._lock:
            return len(self._lines)

    def log(self, since: int = 0) -> str:
        with self._lock:
            return "".join(self._lines[since:])

    def wait_for_log(self, pattern: str, timeout: float = WAIT, since: int = 0) -> str:
        rx = re.compile(pattern)

        def find():
            with self._lock:
                for line in self._lines[since:]:
                    if rx.search(line):
                        return line
            return None

        return eventually(find, timeout, message=f"log line matching {pattern!r}")

    def broker(self) -> Broker:
        assert self.addr is not None
        return Broker(host=self.addr[0], port=self.addr[1], process=self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit and for its log to hold everything it wrote."""
        status = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return status

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL after 10s. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self._tmp.cleanup()
        return self.proc.returncode


def drain(ch, queue: str, limit: int = 10_000) -> list[bytes]:
    """basic.get (auto-ack) until the queue is empty; return the bodies in order."""
    bodies = []
    for _ in range(limit):
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)
    raise AssertionError(f"queue {queue} did not drain within {limit} messages")


def messages_memory(broker) -> int:
    """The broker's counted message memory, what the memory alarm compares with the watermark,
    read from its Prometheus endpoint (the broker needs `[metrics] listen = "127.0.0.1:0"`)."""
    line = broker.process.wait_for_log(r"serving Prometheus metrics")
    addr = re.search(r"metrics_addr=([0-9.]+:[0-9]+)", line)
    assert addr, line
    with urllib.request.urlopen(f"http://{addr.group(1)}/metrics", timeout=5) as response:
        text = response.read().decode()
    used = re.search(r"^lockgate_messages_memory_bytes (\S+)$", text, re.MULTILINE)
    assert used, text
    return int(float(used.group(1)))


def queue_exists(conn: pika.BlockingConnection, queue: str) -> bool:
    """Whether a passive queue.declare on a fresh channel finds `queue` (a 404 says it does not)."""
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        return False
    ch.close()
    return True


def queue_count(conn: pika.BlockingConnection, queue: str) -> int:
    """Message count from a passive queue.declare on a fresh channel."""
    ch = conn.channel()
    try:
        return ch.queue_declare(queue, passive=True).method.message_count
    finally:
        if ch.is_open:
            ch.close()


class Collector:
    """A basic_consume callback that records (method, properties, body) per delivery."""

    def __init__(self, ack: bool = False):
        self.ack = ack
        self.messages: list = []

    def __call__(self, ch, method, properties, body):
        self.messages.append((method, properties, body))
        if self.ack:
            ch.basic_ack(method.delivery_tag)

    @property
    def bodies(self) -> list[bytes]:
        return [m[2] for m in self.messages]

    def __len__(self) -> int:
        return len(self.messages)


def pump(conns, cond: Callable[[], T], timeout: float = WAIT, message: str = "condition") -> T:
    """Run the I/O loop of every connection in `conns` until `cond()` is truthy."""
    if not isinstance(conns, (list, tuple)):
        conns = [conns]

    def step():
        for c in conns:
            c.process_data_events(time_limit=0.005)
        return cond()

    return eventually(step, timeout, interval=0, message=message)


def settle(conns, duration: float = 0.3) -> None:
    """Keep the I/O loops running for `duration`: used only to assert that nothing more arrives."""
    if not isinstance(conns, (list, tuple)):
        conns = [conns]
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.01)


_HOLDING_CONSUMER = r"""
import sys, pika
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = conn.channel()
ch.basic_qos(prefetch_count=int(sys.argv[3]))
held = []
def on_message(channel, method, properties, body):
    held.append(body)
    print(body.decode(), flush=True)
ch.basic_consume(sys.argv[2], on_message)
print("consuming", flush=True)
ch.start_consuming()
"""


def holding_consumer(broker: Broker, queue: str, prefetch: int) -> subprocess.Popen:
    """A consumer in a process of its own that never acks and prints each body it gets (after
    a first line "consuming"): kill it with SIGKILL to crash a consumer (its socket drops
    without connection.close)."""
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _HOLDING_CONSUMER, broker.url, queue,
                             str(prefetch)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "consuming"
    return proc
