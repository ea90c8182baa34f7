"""AMQP 0-9-1 method codec for the differential runner: every method a client sends or receives
in the classes it exercises, encoded from and decoded to plain Python values.

Field tables are encoded with explicit type tags (tests/amqp_raw.py) and decoded to
{name: (tag, value)}, so that a broker changing a value's type shows up in a transcript.
"""

from __future__ import annotations

import struct

from amqp_raw import SCALARS, longstr, method_frame, shortstr, table

# (class, method) -> (name, argument types). Types: o octet, s short, l long, L longlong,
# S shortstr, X longstr, b bit, T table.
METHODS: dict[tuple[int, int], tuple[str, str]] = {
    (10, 10): ("connection.start", "ooTXX"),
    (10, 11): ("connection.start-ok", "TSXS"),
    (10, 30): ("connection.tune", "sls"),
    (10, 31): ("connection.tune-ok", "sls"),
    (10, 40): ("connection.open", "SSb"),
    (10, 41): ("connection.open-ok", "S"),
    (10, 50): ("connection.close", "sSss"),
    (10, 51): ("connection.close-ok", ""),
    (10, 60): ("connection.blocked", "S"),
    (10, 61): ("connection.unblocked", ""),
    (20, 10): ("channel.open", "S"),
    (20, 11): ("channel.open-ok", "X"),
    (20, 20): ("channel.flow", "b"),
    (20, 21): ("channel.flow-ok", "b"),
    (20, 40): ("channel.close", "sSss"),
    (20, 41): ("channel.close-ok", ""),
    (40, 10): ("exchange.declare", "sSSbbbbbT"),
    (40, 11): ("exchange.declare-ok", ""),
    (40, 20): ("exchange.delete", "sSbb"),
    (40, 21): ("exchange.delete-ok", ""),
    (40, 30): ("exchange.bind", "sSSSbT"),
    (40, 31): ("exchange.bind-ok", ""),
    (40, 40): ("exchange.unbind", "sSSSbT"),
    (40, 51): ("exchange.unbind-ok", ""),
    (50, 10): ("queue.declare", "sSbbbbbT"),
    (50, 11): ("queue.declare-ok", "Sll"),
    (50, 20): ("queue.bind", "sSSSbT"),
    (50, 21): ("queue.bind-ok", ""),
    (50, 30): ("queue.purge", "sSb"),
    (50, 31): ("queue.purge-ok", "l"),
    (50, 40): ("queue.delete", "sSbbb"),
    (50, 41): ("queue.delete-ok", "l"),
    (50, 50): ("queue.unbind", "sSSST"),
    (50, 51): ("queue.unbind-ok", ""),
    (60, 10): ("basic.qos", "lsb"),
    (60, 11): ("basic.qos-ok", ""),
    (60, 20): ("basic.consume", "sSSbbbbT"),
    (60, 21): ("basic.consume-ok", "S"),
    (60, 30): ("basic.cancel", "Sb"),
    (60, 31): ("basic.cancel-ok", "S"),
    (60, 40): ("basic.publish", "sSSbb"),
    (60, 50): ("basic.return", "sSSS"),
    (60, 60): ("basic.deliver", "SLbSS"),
    (60, 70): ("basic.get", "sSb"),
    (60, 71): ("basic.get-ok", "LbSSl"),
    (60, 72): ("basic.get-empty", "S"),
    (60, 80): ("basic.ack", "Lb"),
    (60, 90): ("basic.reject", "Lb"),
    (60, 100): ("basic.recover-async", "b"),
    (60, 110): ("basic.recover", "b"),
    (60, 111): ("basic.recover-ok", ""),
    (60, 120): ("basic.nack", "Lbb"),
    (85, 10): ("confirm.select", "b"),
    (85, 11): ("confirm.select-ok", ""),
    (90, 10): ("tx.select", ""),
    (90, 11): ("tx.select-ok", ""),
    (90, 20): ("tx.commit", ""),
    (90, 21): ("tx.commit-ok", ""),
    (90, 30): ("tx.rollback", ""),
    (90, 31): ("tx.rollback-ok", ""),
}
BY_NAME = {name: (ids, types) for ids, (name, types) in METHODS.items()}

# Basic properties in flag order (bit 15 first): name and type.
PROPERTIES = [("content_type", "S"), ("content_encoding", "S"), ("headers", "T"),
              ("delivery_mode", "o"), ("priority", "o"), ("correlation_id", "S"),
              ("reply_to", "S"), ("expiration", "S"), ("message_id", "S"), ("timestamp", "L"),
              ("type", "S"), ("user_id", "S"), ("app_id", "S"), ("cluster_id", "S")]


def encode_args(types: str, args: list) -> bytes:
    """Arguments in order; a table argument is {name: (tag, value)}."""
    out, bits, nbits = b"", 0, 0
    for t, v in zip(types, args, strict=True):
        if t == "b":
            bits |= (1 if v else 0) << nbits
            nbits += 1
            continue
        if nbits:
            out += struct.pack(">B", bits)
            bits, nbits = 0, 0
        if t == "o":
            out += struct.pack(">B", v)
        elif t == "s":
            out += struct.pack(">H", v)
        elif t == "l":
            out += struct.pack(">I", v)
        elif t == "L":
            out += struct.pack(">Q", v)
        elif t == "S":
            out += shortstr(v)
        elif t == "X":
            out += longstr(v)
        elif t == "T":
            out += table(v)
    if nbits:
        out += struct.pack(">B", bits)
    return out


def method(channel: int, name: str, *args) -> bytes:
    (class_id, method_id), types = BY_NAME[name]
    return method_frame(channel, class_id, method_id, encode_args(types, list(args)))


def encode_properties(props: dict) -> bytes:
    flags, out = 0, b""
    for i, (name, t) in enumerate(PROPERTIES):
        if name in props:
            flags |= 1 << (15 - i)
            out += encode_args(t, [props[name]])
    return struct.pack(">H", flags) + out


class Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ValueError("truncated")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def shortstr(self) -> str:
        return self.take(self.unpack(">B")).decode("utf-8", "replace")

    def longstr(self) -> bytes:
        return self.take(self.unpack(">I"))

    def field(self, t: str):
        """One method argument or property of type `t` (not a bit)."""
        if t == "S":
            return self.shortstr()
        if t == "X":
            return self.longstr()
        if t == "T":
            return self.table()
        return self.unpack({"o": ">B", "s": ">H", "l": ">I", "L": ">Q"}[t])

    def value(self):
        tag = chr(self.unpack(">B"))
        if tag in SCALARS:
            return tag, self.unpack(SCALARS[tag])
        if tag == "t":
            return tag, bool(self.unpack(">B"))
        if tag == "D":
            return tag, (self.unpack(">B"), self.unpack(">I"))
        if tag in "Sx":
            return tag, self.longstr()
        if tag == "A":
            inner = Reader(self.longstr())
            items = []
            while inner.pos < len(inner.buf):
                items.append(inner.value())
            return tag, items
        if tag == "F":
            return tag, self.table()
        if tag == "V":
            return tag, None
        raise ValueError(f"unknown field type {tag!r}")

    def table(self) -> dict:
        inner = Reader(self.longstr())
        out = {}
        while inner.pos < len(inner.buf):
            key = inner.shortstr()
            out[key] = inner.value()
        return out


def decode_args(types: str, payload: bytes) -> list:
    r, out, bits, nbits = Reader(payload), [], 0, 8
    for t in types:
        if t == "b":
            if nbits == 8:
                bits, nbits = r.unpack(">B"), 0
            out.append(bool(bits >> nbits & 1))
            nbits += 1
        else:
            nbits = 8
            out.append(r.field(t))
    return out


def decode_properties(payload: bytes) -> dict:
    """A content header's payload (class, weight, size, flags, properties) -> properties."""
    r = Reader(payload)
    r.take(12)
    flags = r.unpack(">H")
    return {name: r.field(t) for i, (name, t) in enumerate(PROPERTIES)
            if flags & (1 << (15 - i))}
