"""A minimal AMQP 0-9-1 client over a raw socket, for the tests that must send bad input.

Only what the tests need: frames, a handful of methods, field tables with explicit type tags.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Optional

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"

CONNECTION_START = (10, 10)
CONNECTION_TUNE = (10, 30)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)


def shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">B", len(b)) + b


def longstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


# The struct format of each fixed-size field value type, by its RabbitMQ type tag.
SCALARS = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
           "l": ">q", "f": ">f", "d": ">d", "T": ">Q"}


def value(tag: str, v) -> bytes:
    """Encode one field value with an explicit RabbitMQ type tag."""
    t = tag.encode()
    if tag == "t":
        return t + struct.pack(">B", 1 if v else 0)
    if tag in SCALARS:
        return t + struct.pack(SCALARS[tag], v)
    if tag == "D":
        scale, unscaled = v
        return t + struct.pack(">BI", scale, unscaled)
    if tag in ("S", "x"):
        return t + longstr(v)
    if tag == "A":
        items = b"".join(value(it, iv) for it, iv in v)
        return t + struct.pack(">I", len(items)) + items
    if tag == "F":
        return t + table(v)
    if tag == "V":
        return t
    raise ValueError(tag)


def table(entries: dict) -> bytes:
    """entries: {name: (tag, value)}; order is kept as given."""
    body = b"".join(shortstr(k) + value(tag, v) for k, (tag, v) in entries.items())
    return struct.pack(">I", len(body)) + body


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def method_frame(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", class_id, method_id) + args)


def content_header(channel: int, body_size: int, properties: bytes = b"\x00\x00") -> bytes:
    """properties: the raw property flags + property list (b"\\x00\\x00" = none)."""
    return frame(FRAME_HEADER, channel, struct.pack(">HHQ", 60, 0, body_size) + properties)


def body_frame(channel: int, body: bytes) -> bytes:
    return frame(FRAME_BODY, channel, body)


def basic_publish(channel: int, exchange: str, routing_key: str, mandatory=False) -> bytes:
    bits = 1 if mandatory else 0
    return method_frame(channel, 60, 40,
                        struct.pack(">H", 0) + shortstr(exchange) + shortstr(routing_key)
                        + struct.pack(">B", bits))


def basic_get(channel: int, queue: str, no_ack=True) -> bytes:
    return method_frame(channel, 60, 70, struct.pack(">H", 0) + shortstr(queue)
                        + struct.pack(">B", 1 if no_ack else 0))


def basic_consume(channel: int, queue: str, tag: str = "", no_ack=True) -> bytes:
    bits = 0b10 if no_ack else 0
    return method_frame(channel, 60, 20, struct.pack(">H", 0) + shortstr(queue) + shortstr(tag)
                        + struct.pack(">B", bits) + table({}))


def queue_declare(channel: int, queue: str, exclusive=False, auto_delete=False) -> bytes:
    bits = (0b100 if exclusive else 0) | (0b1000 if auto_delete else 0)
    return method_frame(channel, 50, 10, struct.pack(">H", 0) + shortstr(queue)
                        + struct.pack(">B", bits) + table({}))


@dataclass
class Frame:
    kind: int
    channel: int
    payload: bytes

    @property
    def method(self) -> tuple[int, int]:
        assert self.kind == FRAME_METHOD, self
        return struct.unpack(">HH", self.payload[:4])

    @property
    def args(self) -> bytes:
        return self.payload[4:]


@dataclass
class Close:
    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


def parse_close(args: bytes) -> Close:
    code, n = struct.unpack(">HB", args[:3])
    text = args[3:3 + n].decode()
    class_id, method_id = struct.unpack(">HH", args[3 + n:7 + n])
    return Close(code, text, class_id, method_id)


def read_shortstr(buf: bytes, pos: int) -> tuple[str, int]:
    n = buf[pos]
    return buf[pos + 1:pos + 1 + n].decode(), pos + 1 + n


class RawConnection:
    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        # Frames go out as written: the handshake's small writes would otherwise wait on Nagle.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.frame_max = 131072
        self.channel_max = 2047

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> Optional[bytes]:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_raw(self, n: int) -> Optional[bytes]:
        return self.recv_exact(n)

    def read_frame(self) -> Optional[Frame]:
        head = self.recv_exact(7)
        if head is None:
            return None
        kind, channel, size = struct.unpack(">BHI", head)
        payload = self.recv_exact(size + 1)
        if payload is None:
            return None
        assert payload[-1:] == FRAME_END, f"bad frame end {payload[-1:]!r}"
        return Frame(kind, channel, payload[:-1])

    def read_method(self, expect: Optional[tuple[int, int]] = None) -> Frame:
        """Next method frame (heartbeats skipped)."""
        while True:
            f = self.read_frame()
            assert f is not None, "connection closed while waiting for a method"
            if f.kind == FRAME_HEARTBEAT:
                continue
            assert f.kind == FRAME_METHOD, f"expected a method frame, got {f}"
            if expect is not None:
                assert f.method == expect, f"expected {expect}, got {f.method}: {f.payload!r}"
            return f

    def handshake(self, vhost: str = "/", user: str = "guest", password: str = "guest",
                  heartbeat: int = 0, frame_max: Optional[int] = None) -> None:
        self.send(PROTOCOL_HEADER)
        self.read_method(CONNECTION_START)
        props = table({"product": ("S", "lockgate-tests"),
                       "capabilities": ("F", {"consumer_cancel_notify": ("t", True)})})
        self.send(method_frame(0, 10, 11, props + shortstr("PLAIN")
                               + longstr(b"\x00" + user.encode() + b"\x00" + password.encode())
                               + shortstr("en_US")))
        tune = self.read_method(CONNECTION_TUNE)
        channel_max, server_frame_max, _ = struct.unpack(">HIH", tune.args[:8])
        self.channel_max = channel_max
        self.frame_max = frame_max or server_frame_max
        self.send(method_frame(0, 10, 31, struct.pack(">HIH", channel_max, self.frame_max,
                                                      heartbeat)))
        self.send(method_frame(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        self.read_method(CONNECTION_OPEN_OK)

    def open_channel(self, channel: int = 1) -> None:
        self.send(method_frame(channel, 20, 10, shortstr("")))
        self.read_method(CHANNEL_OPEN_OK)

    def expect_connection_close(self) -> Close:
        """Read until connection.close, answer close-ok, and return the close reason."""
        while True:
            f = self.read_frame()
            assert f is not None, "socket closed without connection.close"
            if f.kind == FRAME_METHOD and f.method == CONNECTION_CLOSE:
                close = parse_close(f.args)
                try:
                    self.send(method_frame(0, 10, 51))
                except OSError:
                    pass
                return close

    def expect_channel_close(self) -> Close:
        while True:
            f = self.read_frame()
            assert f is not None, "socket closed without channel.close"
            if f.kind == FRAME_METHOD and f.method == CHANNEL_CLOSE:
                return parse_close(f.args)
            assert not (f.kind == FRAME_METHOD and f.method == CONNECTION_CLOSE), \
                f"connection closed instead: {parse_close(f.args)}"

    def expect_eof(self, timeout: float = 5.0) -> None:
        """The server closes the socket (after anything it still had to send)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
