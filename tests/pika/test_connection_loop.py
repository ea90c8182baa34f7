"""The connection's own loop: a channel.close that crosses the server's, and what a client gets
from the server while it keeps the socket full (confirms, heartbeats), or while it is idle."""

from __future__ import annotations

import struct
import threading
import time

import pika
import pytest

import amqp_raw as raw
from lockgate_harness import drain

CHANNEL_CLOSE_OK = (20, 41)
QUEUE_DECLARE_OK = (50, 11)
CONFIRM_SELECT_OK = (85, 11)
BASIC_ACK = (60, 80)


def channel_close(channel: int) -> bytes:
    return raw.method_frame(channel, 20, 40, struct.pack(">H", 200) + raw.shortstr("bye")
                            + struct.pack(">HH", 0, 0))


def declare(c: raw.RawConnection, queue: str, arguments: dict) -> None:
    c.send(raw.method_frame(1, 50, 10, struct.pack(">H", 0) + raw.shortstr(queue)
                            + struct.pack(">B", 0b1000) + raw.table(arguments)))
    c.read_method(QUEUE_DECLARE_OK)


def test_a_close_crossing_the_servers_keeps_the_connection(conn, name):
    """pika's publish-then-close: the publish fails on the server (404), whose channel.close
    crosses pika's own, and pika answers it with close-ok. That close-ok used to find the channel
    gone: a 504 for the whole connection."""
    for _ in range(10):
        ch = conn.channel()
        ch.basic_publish(name("no-such-exchange"), "k", b"x")
        # pika reports the server's close, as with RabbitMQ.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            ch.close()
        assert closed.value.reply_code == 404
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"after")
    assert drain(ch, q) == [b"after"]
    assert conn.is_open


@pytest.mark.parametrize("answers_ours", [
    True,
    # RabbitMQ closes the connection here (504, second 'channel.open'); lockgate takes the open.
    pytest.param(False, marks=pytest.mark.lockgate_only),
], ids=["close-ok-then-open", "open"])
def test_after_crossed_closes_the_number_can_be_opened_again(broker, answers_ours):
    """Whether or not the client answers the server's close, the number is free afterwards."""
    with raw.RawConnection(broker.host, broker.port) as c:
        c.handshake(vhost=broker.vhost, user=broker.user, password=broker.password)
        c.open_channel(1)
        c.send(raw.basic_get(1, "no-such-queue") + channel_close(1))
        assert c.expect_channel_close().reply_code == 404
        c.read_method(CHANNEL_CLOSE_OK)
        if answers_ours:
            c.send(raw.method_frame(1, *CHANNEL_CLOSE_OK))
        c.open_channel(1)
        declare(c, "", {})


def test_a_publisher_that_never_pauses_gets_confirms_and_heartbeats(broker, name):
    """A confirm-mode publisher keeping the socket full used to get no basic.ack and no
    heartbeat until it paused: unbounded confirm latency, and a client that drops the broker
    for missed heartbeats."""
    c = raw.RawConnection(broker.host, broker.port, timeout=30)
    c.handshake(vhost=broker.vhost, user=broker.user, password=broker.password, heartbeat=1)
    c.open_channel(1)
    q = name("stream")
    # Bounded, so the broker's memory (and alarm) stay out of it.
    declare(c, q, {"x-max-length": ("I", 1000)})
    c.send(raw.method_frame(1, 85, 10, b"\x00"))
    c.read_method(CONFIRM_SELECT_OK)

    publish = (raw.basic_publish(1, "", q) + raw.content_header(1, 200)
               + raw.body_frame(1, b"x" * 200))
    per_write = 4000
    chunk = publish * per_write
    seen: list[tuple[float, str, int]] = []
    total = 0
    done = threading.Event()

    def read() -> None:
        while not done.is_set() or not seen or seen[-1][2] < total:
            f = c.read_frame()
            if f is None:
                return
            now = time.monotonic()
            if f.kind == raw.FRAME_HEARTBEAT:
                seen.append((now, "heartbeat", 0))
            elif f.kind == raw.FRAME_METHOD and f.method == BASIC_ACK:
                tag, = struct.unpack(">Q", f.args[:8])
                seen.append((now, "ack", tag))
            else:
                raise AssertionError(f"unexpected frame {f}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    # One write after another: the broker never finds the socket empty for long.
    while time.monotonic() - start < 2.5:
        c.sock.sendall(chunk)
        total += per_write
    sent = time.monotonic()
    done.set()
    reader.join(timeout=30)
    c.close()

    assert not reader.is_alive(), "the last confirm never came"
    acks = [tag for t, kind, tag in seen if kind == "ack"]
    assert acks and acks[-1] == total and acks == sorted(acks)
    while_sending = [kind for t, kind, _ in seen if t < sent]
    assert while_sending.count("ack") >= 2, seen[:5]
    assert while_sending.count("heartbeat") >= 1, seen[:5]


def test_heartbeats_come_every_half_interval(broker):
    """As RabbitMQ: pika drops a broker after its heartbeat timeout plus 5 s without a byte, so a
    heartbeat only once per timeout left little room for a late tick."""
    c = raw.RawConnection(broker.host, broker.port, timeout=5)
    with c:
        c.handshake(vhost=broker.vhost, user=broker.user, password=broker.password, heartbeat=2)
        start = time.monotonic()
        heartbeats = 0
        # Once per timeout would be one heartbeat (at 2 s) in this window; half that is three.
        while (left := 3.5 - (time.monotonic() - start)) > 0:
            c.sock.settimeout(left)
            try:
                f = c.read_frame()
            except TimeoutError:
                break
            assert f is not None and f.kind == raw.FRAME_HEARTBEAT, f
            heartbeats += 1
        assert heartbeats >= 2
