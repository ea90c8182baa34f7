"""Run one operation sequence against one broker over raw sockets and record what it answers.

A `Session` holds a few connections with a few channels each. `run(op)` sends the operation's
frames, waits for its reply (or a close of its channel or connection), then keeps reading until
no frame arrives for a quiet interval, so that deliveries, returns and confirms it caused are
read too. Every frame read becomes an event: a line of text naming its connection and channel.

Events are "replies" (the answers to a client's methods, closes, content read with get) or
"async" (deliveries, returns, confirms, server-sent cancels and flows). Timing decides only when
an async event is read, so the comparison (see run.py) keeps the two kinds in separate streams.
"""

from __future__ import annotations

import hashlib
import selectors
import struct
import time
from dataclasses import dataclass, field
from amqp_raw import FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, RawConnection
from wire import METHODS, decode_args, decode_properties, method

ASYNC = {"basic.deliver", "basic.return", "basic.ack", "basic.nack", "basic.cancel",
         "channel.flow", "connection.blocked", "connection.unblocked"}
REPLY_TIMEOUT = 5.0


@dataclass
class Event:
    op: int
    conn: str
    channel: int
    kind: str  # "reply" or "async"
    text: str


@dataclass
class ChannelState:
    open: bool = True
    tags: list[int] = field(default_factory=list)  # delivery tags received, in order


class Conn:
    def __init__(self, name: str, host: str, port: int):
        self.name = name
        self.raw = RawConnection(host, port)
        self.raw.handshake()
        self.raw.sock.setblocking(False)
        self.alive = True
        self.channels: dict[int, ChannelState] = {}
        self.content: dict[int, list] = {}  # channel -> [method text, kind, props, size, body]

    def send(self, data: bytes) -> None:
        self.raw.sock.setblocking(True)
        try:
            self.raw.sock.sendall(data)
        except OSError:
            self.alive = False
        finally:
            self.raw.sock.setblocking(False)


def comparable(props: dict) -> dict:
    """Properties without lockgate's deliberate `x-delivery-count` header (top-level README,
    "Reliability"); an empty headers table counts as none, as the header's removal may leave
    one."""
    headers = {k: v for k, v in props.get("headers", {}).items() if k != "x-delivery-count"}
    out = {k: v for k, v in props.items() if k != "headers"}
    if headers:
        out["headers"] = headers
    return out


def render(value) -> str:
    """Field values and tables as stable text (a table's fields sorted by name); bytes as text
    when they decode."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={render(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return f"{value[0]}:{render(value[1])}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, bytes):
        if len(value) > 1000:
            # Compared as exactly, in a line that stays readable.
            return f"<{len(value)} octets, sha256 {hashlib.sha256(value).hexdigest()[:16]}>"
        try:
            return repr(value.decode())
        except UnicodeDecodeError:
            return repr(value)
    return repr(value)


class Session:
    def __init__(self, host: str, port: int, quiet: float):
        self.host, self.port, self.quiet = host, port, quiet
        self.conns: dict[str, Conn] = {}
        self.events: list[Event] = []
        self.op = 0
        self.recording = True
        self.generated: list[str] = []  # server-generated queue names, in order
        # Direct reply-to addresses seen in delivered messages' reply_to, in order.
        self.reply_addresses: list[str] = []
        self.selector = selectors.DefaultSelector()

    # --- connections and channels

    def conn(self, name: str) -> Conn:
        c = self.conns.get(name)
        if c is None or not c.alive:
            if c is not None:
                self.drop(c)
            c = Conn(name, self.host, self.port)
            self.conns[name] = c
            self.selector.register(c.raw.sock, selectors.EVENT_READ, c)
            self.record(c, 0, "reply", "(connected)")
        return c

    def drop(self, c: Conn) -> None:
        c.alive = False
        if c.raw.sock.fileno() >= 0:
            self.selector.unregister(c.raw.sock)
            c.raw.close()

    def channel(self, conn_name: str, ch: int) -> Conn:
        """The connection, with channel `ch` open (reopened if the broker closed it)."""
        c = self.conn(conn_name)
        state = c.channels.get(ch)
        if state is None or not state.open:
            # Forget the closed state first: the open waits for its own answer.
            c.channels.pop(ch, None)
            self.call(c, ch, method(ch, "channel.open", ""), {"channel.open-ok"})
        return c

    def close_all(self) -> None:
        for c in self.conns.values():
            if c.alive:
                c.send(method(0, "connection.close", 200, "bye", 0, 0))
                self.wait(lambda: not c.alive, REPLY_TIMEOUT)
            self.drop(c)
        self.selector.close()

    # --- recording

    def record(self, c: Conn, ch: int, kind: str, text: str) -> None:
        if self.recording:
            self.events.append(Event(self.op, c.name, ch, kind, text))

    def on_method(self, c: Conn, ch: int, name: str, args: list) -> None:
        if name == "connection.close":
            self.record(c, ch, "reply", f"connection.close {args[0]} {args[1]!r} "
                                        f"class={args[2]} method={args[3]}")
            c.send(method(0, "connection.close-ok"))
            c.alive = False
            return
        if name == "connection.close-ok":
            c.alive = False
            return
        if name == "channel.close":
            c.send(method(ch, "channel.close-ok"))
            text = f"channel.close {args[0]} {args[1]!r} class={args[2]} method={args[3]}"
            c.channels[ch] = ChannelState(open=False)
        else:
            text = name + ("" if not args else " " + " ".join(render(a) for a in args))
        if name == "channel.open-ok":
            c.channels[ch] = ChannelState()
        elif name == "channel.close-ok":
            c.channels[ch] = ChannelState(open=False)
        elif name == "queue.declare-ok" and args[0].startswith("amq.gen-"):
            if args[0] not in self.generated:
                self.generated.append(args[0])
        if name in ("basic.deliver", "basic.get-ok", "basic.return"):
            if name != "basic.return":
                tag = args[0] if name == "basic.get-ok" else args[1]
                c.channels.setdefault(ch, ChannelState()).tags.append(tag)
            c.content[ch] = [text, "async" if name in ASYNC else "reply", None, 0, b""]
            return
        self.record(c, ch, "async" if name in ASYNC else "reply", text)

    def on_frame(self, c: Conn, kind: int, ch: int, payload: bytes) -> None:
        if kind == FRAME_HEARTBEAT:
            return
        if kind == FRAME_METHOD:
            ids = struct.unpack(">HH", payload[:4])
            name, types = METHODS.get(ids, (f"unknown{ids}", ""))
            self.on_method(c, ch, name, decode_args(types, payload[4:]))
            return
        pending = c.content.get(ch)
        if pending is None:
            self.record(c, ch, "reply", f"(unexpected frame type {kind})")
            return
        if kind == FRAME_HEADER:
            pending[2] = decode_properties(payload)
            pending[3] = struct.unpack(">Q", payload[4:12])[0]
            reply_to = pending[2].get("reply_to", "")
            if reply_to.startswith("amq.rabbitmq.reply-to."):
                self.reply_addresses.append(reply_to)
        elif kind == FRAME_BODY:
            pending[4] += payload
        if pending[2] is not None and len(pending[4]) >= pending[3]:
            del c.content[ch]
            self.record(c, ch, pending[1], f"{pending[0]} props={render(comparable(pending[2]))} "
                                           f"body={render(pending[4])}")

    # --- reading

    def read_some(self, timeout: float) -> bool:
        """Reads what is there within `timeout`; False if nothing came."""
        got = False
        for key, _ in self.selector.select(timeout):
            c: Conn = key.data
            try:
                chunk = c.raw.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                if c.alive:
                    self.record(c, 0, "reply", "(socket closed)")
                self.drop(c)
                continue
            got = True
            c.raw.buf += chunk
            while len(c.raw.buf) >= 7:
                kind, ch, size = struct.unpack(">BHI", c.raw.buf[:7])
                if len(c.raw.buf) < size + 8:
                    break
                payload, c.raw.buf = c.raw.buf[7:7 + size], c.raw.buf[size + 8:]
                self.on_frame(c, kind, ch, payload)
        return got

    def wait(self, done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.get_map():
                return done()
            self.read_some(left)
        return True

    def settle(self) -> None:
        """Reads until nothing arrives for the quiet interval."""
        while self.selector.get_map() and self.read_some(self.quiet):
            pass

    def call(self, c: Conn, ch: int, frames: bytes, replies: set[str]) -> None:
        """Sends `frames` on `ch` and waits for one of `replies` there, or a close."""
        start = len(self.events)

        def answered() -> bool:
            if not c.alive:
                return True
            if ch in c.channels and not c.channels[ch].open:
                return True
            return any(e.conn == c.name and e.channel == ch and e.kind == "reply"
                       and e.text.split(" ", 1)[0] in replies for e in self.events[start:])

        c.send(frames)
        if replies and not self.wait(answered, REPLY_TIMEOUT):
            self.record(c, ch, "reply", f"(no reply within {REPLY_TIMEOUT}s: "
                                        f"expected {'/'.join(sorted(replies))})")

    def tags(self, c: Conn, ch: int) -> list[int]:
        return c.channels.get(ch, ChannelState()).tags

