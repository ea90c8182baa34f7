"""Transactions (tx.select / commit / rollback) as RabbitMQ 3.10 runs them: a publish or an
ack that cannot succeed fails at that method, so a commit never enqueues half a transaction;
and what a transaction or a slow reader makes the broker hold counts against the memory
watermark."""

import socket
import struct

import amqp_raw as raw
import pika.exceptions as pe
import pytest
from lockgate_harness import pump, queue_count

TX_SELECT = (90, 10)
TX_COMMIT = (90, 20)
BASIC_PUBLISH = (60, 40)
BASIC_ACK = (60, 80)

WATERMARK = 1024 * 1024
BODY = b"x" * (64 * 1024)


def publish(c: raw.RawConnection, exchange: str, routing_key: str, body: bytes = b"m") -> None:
    c.send(raw.basic_publish(1, exchange, routing_key) + raw.content_header(1, len(body))
           + raw.body_frame(1, body))


def tx_select(c: raw.RawConnection) -> None:
    c.send(raw.method_frame(1, *TX_SELECT))
    c.read_method((90, 11))


@pytest.mark.parametrize("exchange,code,text", [
    ("no-such-exchange", 404, "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"),
    ("internal", 403, "ACCESS_REFUSED - cannot publish to internal exchange '{}' in vhost '/'"),
], ids=["missing", "internal"])
def test_a_publish_that_cannot_route_fails_at_basic_publish_and_nothing_is_committed(
        rawconn, ch, name, exchange, code, text):
    q = name("txq")
    ch.queue_declare(q, auto_delete=False)
    if exchange == "internal":
        exchange = name("internal")
        text = text.format(exchange)
        ch.exchange_declare(exchange, "fanout", internal=True, auto_delete=False)
        ch.queue_bind(q, exchange)
    try:
        c = rawconn()
        c.open_channel(1)
        tx_select(c)
        publish(c, "", q)
        publish(c, exchange, q)
        publish(c, "", q)
        c.send(raw.method_frame(1, *TX_COMMIT))
        close = c.expect_channel_close()
        assert queue_count(ch.connection, q) == 0
        assert (close.reply_code, close.reply_text) == (code, text)
        assert (close.class_id, close.method_id) == BASIC_PUBLISH
    finally:
        ch.queue_delete(q)
        if exchange.startswith("internal"):
            ch.exchange_delete(exchange)


def test_an_ack_of_an_unknown_tag_fails_at_basic_ack_and_nothing_is_committed(
        rawconn, ch, name):
    q = name("txq")
    ch.queue_declare(q, auto_delete=False)
    try:
        c = rawconn()
        c.open_channel(1)
        tx_select(c)
        publish(c, "", q)
        c.send(raw.method_frame(1, *BASIC_ACK, struct.pack(">QB", 99, 0)))
        c.send(raw.method_frame(1, *TX_COMMIT))
        close = c.expect_channel_close()
        assert queue_count(ch.connection, q) == 0
        assert (close.reply_code, close.reply_text) == (
            406, "PRECONDITION_FAILED - unknown delivery tag 99")
        assert (close.class_id, close.method_id) == BASIC_ACK
    finally:
        ch.queue_delete(q)


def gets(ch, q: str, n: int) -> list[int]:
    tags = []
    for _ in range(n):
        method, _, _ = ch.basic_get(q)
        tags.append(method.delivery_tag)
    return tags


def test_a_tag_settled_in_a_transaction_is_settled_once_and_back_after_rollback(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.tx_select()
    assert gets(ch, q, 3) == [1, 2, 3]
    ch.basic_ack(2, multiple=True)
    ch.tx_rollback()
    # Unacked again under their tags: settled for good this time, each its own way.
    ch.basic_ack(2)
    ch.basic_nack(3, requeue=True)
    ch.tx_commit()
    ch.basic_ack(1)
    ch.basic_ack(1)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.tx_commit()
    assert (info.value.reply_code, info.value.reply_text) == (
        406, "PRECONDITION_FAILED - unknown delivery tag 1")
    # Channel closed: m0's ack was never committed, and m2 was requeued at commit.
    reader = conn.channel()
    got = [reader.basic_get(q, auto_ack=True) for _ in range(3)]
    assert sorted((body, m.redelivered) for m, _, body in got if m) == [
        (b"m0", True), (b"m2", True)]


@pytest.mark.parametrize("change", ["rebind", "delete exchange"])
def test_a_publish_is_routed_at_basic_publish_and_enqueued_at_commit(conn, name, change):
    """As RabbitMQ: what the bindings became before tx.commit does not redirect a publish."""
    ch, admin = conn.channel(), conn.channel()
    x, before, after, gone = name("txx"), name("before"), name("after"), name("gone")
    ch.exchange_declare(x, "direct", auto_delete=False)
    for q in (before, after, gone):
        ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(before, x, "k")
    ch.queue_bind(gone, x, "k")
    ch.tx_select()
    ch.basic_publish(x, "k", b"m")
    admin.queue_delete(gone)
    if change == "rebind":
        admin.queue_unbind(before, x, "k")
        admin.queue_bind(after, x, "k")
    else:
        admin.exchange_delete(x)
    ch.tx_commit()
    counts = [admin.queue_declare(q, passive=True).method.message_count for q in (before, after)]
    assert counts == [1, 0]
    for q in (before, after):
        admin.queue_delete(q)
    admin.exchange_delete(x)


def test_a_mandatory_publish_whose_queue_went_before_the_commit_is_returned_then(conn, name):
    ch, admin = conn.channel(), conn.channel()
    q = name("txgone")
    ch.queue_declare(q, auto_delete=False)
    returned = []
    ch.add_on_return_callback(lambda _ch, method, _props, body: returned.append(
        (method.reply_code, body)))
    ch.tx_select()
    ch.basic_publish("", q, b"m", mandatory=True)
    admin.queue_delete(q)
    ch.tx_commit()
    pump(conn, lambda: returned, message="basic.return")
    assert returned == [(312, b"m")]


def test_deliveries_acked_in_an_open_transaction_are_requeued_when_the_channel_closes(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    col = []
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda c, m, p, body: col.append(m.delivery_tag))
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    pump(conn, lambda: col == [1])
    ch.tx_select()
    ch.basic_ack(1)
    ch.close()
    # "a" is back, and "b" was never delivered: an ack not committed gives no credit back.
    reader = conn.channel()
    got = [reader.basic_get(q, auto_ack=True) for _ in range(2)]
    assert [(body, m.redelivered) for m, _, body in got] == [(b"a", True), (b"b", False)]


def give_up_blocked(conn) -> None:
    """A connection the alarm blocks for good is not read any more: like a client with a
    blocked-connection timeout, drop it (so the broker's shutdown need not wait for it)."""
    with pytest.raises(pe.ConnectionBlockedTimeout):
        pump(conn, lambda: False)


@pytest.mark.lockgate_only
def test_uncommitted_publishes_raise_the_memory_alarm(lockgate):
    b = lockgate(f"[memory]\nhigh_watermark = {WATERMARK}\n")
    conn = b.connect(blocked_connection_timeout=1)
    blocked = []
    conn.add_on_connection_blocked_callback(lambda *_: blocked.append(True))
    ch = conn.channel()
    q = ch.queue_declare("held", auto_delete=False).method.queue
    ch.tx_select()
    sent = 0
    while not blocked:
        ch.basic_publish("", q, BODY)
        sent += 1
        conn.process_data_events(time_limit=0)
        if not blocked and sent * len(BODY) >= 2 * WATERMARK:
            pump(conn, lambda: blocked, message="connection.blocked")
    assert sent * len(BODY) >= WATERMARK
    # Its own uncommitted publishes hold the alarm on: as with RabbitMQ, it stays blocked.
    give_up_blocked(conn)


@pytest.mark.lockgate_only
def test_a_transaction_gives_its_memory_back_on_rollback_commit_and_close(lockgate):
    b = lockgate(f"[memory]\nhigh_watermark = {WATERMARK}\n")
    # Blocked for 2 s, pika gives up on the connection: the test fails if the alarm goes on.
    conn = b.connect(blocked_connection_timeout=2)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.tx_select()
    # Each round holds three quarters of the watermark: a charge left behind by the round
    # before would raise the alarm.
    per_round = 3 * WATERMARK // 4 // len(BODY)
    for _ in range(3):
        for _ in range(per_round):
            ch.basic_publish("", q, BODY)
        ch.tx_rollback()
    for _ in range(3):
        for _ in range(per_round):
            ch.basic_publish("", q, BODY)
        ch.tx_commit()
        for _ in range(per_round):
            assert ch.basic_get(q, auto_ack=True)[2] == BODY
    for _ in range(3):
        ch.close()
        ch = conn.channel()
        ch.tx_select()
        for _ in range(per_round):
            ch.basic_publish("", q, BODY)
    ch.tx_rollback()
    assert queue_count(conn, q) == 0
    conn.close()


@pytest.mark.lockgate_only
def test_returns_a_client_does_not_read_raise_the_memory_alarm(lockgate):
    b = lockgate(f"[memory]\nhigh_watermark = {WATERMARK}\n")
    r = raw.RawConnection(b.host, b.port)
    # A small receive buffer: the returns stay in the broker once the socket buffers are full.
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    r.handshake()
    r.open_channel(1)
    body = b"r" * 100_000
    one = (raw.basic_publish(1, "", "no-such-queue", mandatory=True)
           + raw.content_header(1, len(body)) + raw.body_frame(1, body))
    # Far more than the socket buffers take: unless the alarm stops it, the broker reads it
    # all and holds the returns.
    r.sock.settimeout(2)
    try:
        for _ in range(400):
            r.send(one)
    except TimeoutError:
        pass
    probe = b.connect()
    blocked = []
    probe.add_on_connection_blocked_callback(lambda *_: blocked.append(True))
    probe.add_on_connection_unblocked_callback(lambda *_: blocked.append(False))
    probe.channel().basic_publish("", "nowhere", b"p")
    pump(probe, lambda: blocked, message="connection.blocked")
    # The client gone, its returns go with its writer: the alarm clears.
    r.close()
    pump(probe, lambda: blocked[-1] is False, message="connection.unblocked")
    probe.close()
