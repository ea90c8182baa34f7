"""Backpressure: above memory.high_watermark publishers get connection.blocked and are no longer
read; when consumers drain the queues they get connection.unblocked and carry on."""

import pytest

from lockgate_harness import Collector, pump

WATERMARK = 1024 * 1024
BODY = b"x" * (64 * 1024)


def publish_until_blocked(conn, ch, queue, events) -> int:
    """Publish numbered BODY-sized messages until connection.blocked arrives; return the count.

    Once twice the watermark is out, the broker must block us: wait for it rather than keep
    filling socket buffers (a blocked connection is not read, so a publish could hang)."""
    sent = 0
    while not events:
        ch.basic_publish("", queue, sent.to_bytes(4, "big") + BODY)
        sent += 1
        conn.process_data_events(time_limit=0)
        if not events and sent * len(BODY) >= 2 * WATERMARK:
            pump(conn, lambda: events, message="connection.blocked")
    return sent


@pytest.mark.lockgate_only
def test_publisher_blocked_above_watermark_and_unblocked_after_drain(lockgate):
    b = lockgate(f"[memory]\nhigh_watermark = {WATERMARK}\n")
    pub_conn = b.connect()
    events = []
    pub_conn.add_on_connection_blocked_callback(lambda _c, frame: events.append(frame.method))
    pub_conn.add_on_connection_unblocked_callback(lambda _c, frame: events.append(frame.method))
    pub = pub_conn.channel()
    q = pub.queue_declare("backlog", auto_delete=False).method.queue

    sent = publish_until_blocked(pub_conn, pub, q, events)
    assert events[0].NAME == "Connection.Blocked"
    assert sent * len(BODY) >= WATERMARK

    cons_conn = b.connect()
    try:
        cons = cons_conn.channel()
        col = Collector()
        cons.basic_consume(q, col, auto_ack=True)
        # Draining may unblock and re-block a few times while the held publishes go through;
        # it ends unblocked once everything sent has been consumed.
        pump([cons_conn, pub_conn],
             lambda: len(col) == sent and events[-1].NAME == "Connection.Unblocked",
             timeout=10, message="all consumed and connection.unblocked")
        names = [e.NAME for e in events]
        assert names == ["Connection.Blocked", "Connection.Unblocked"] * (len(names) // 2)
        # Every message published before the block arrives, in order, and publishing resumes.
        pub.basic_publish("", q, sent.to_bytes(4, "big") + b"after")
        pump(cons_conn, lambda: len(col) == sent + 1, timeout=10)
        assert [int.from_bytes(body[:4], "big") for body in col.bodies] == list(range(sent + 1))
        assert col.bodies[-1][4:] == b"after"
    finally:
        cons_conn.close()
        pub_conn.close()


@pytest.mark.lockgate_only
def test_blocked_publisher_does_not_block_consumers_or_other_work(lockgate):
    b = lockgate(f"[memory]\nhigh_watermark = {WATERMARK}\n")
    pub_conn = b.connect()
    blocked = []
    pub_conn.add_on_connection_blocked_callback(lambda *_: blocked.append(True))
    pub_conn.add_on_connection_unblocked_callback(lambda *_: blocked.append(False))
    pub = pub_conn.channel()
    q = pub.queue_declare("full", auto_delete=False).method.queue
    publish_until_blocked(pub_conn, pub, q, blocked)
    other = b.connect()
    try:
        ch = other.channel()
        # Declares, gets and acks go on while the publisher waits.
        side = ch.queue_declare("", exclusive=True).method.queue
        method, _, body = ch.basic_get(q)
        assert body[4:] == BODY
        ch.basic_ack(method.delivery_tag)
        assert ch.queue_declare(side, passive=True).method.message_count == 0
        # Deleting the backlog frees the memory, so the publisher can close cleanly.
        ch.queue_delete(q)
        pump(pub_conn, lambda: blocked[-1] is False, message="connection.unblocked")
    finally:
        other.close()
        pub_conn.close()
