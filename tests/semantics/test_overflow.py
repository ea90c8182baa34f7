"""Length limits and overflow: x-max-length, x-max-length-bytes, x-overflow drop-head,
reject-publish, reject-publish-dlx, block (docs/semantics/reliability.md).

Except where marked `lockgate_only`, these pass against RabbitMQ 3.10 too."""

import pika
import pytest

from lockgate_harness import Collector, drain, eventually, pump, queue_count


def test_drop_head_keeps_the_newest(conn, ch, name):
    q = name("maxlen")
    ch.queue_declare(q, arguments={"x-max-length": 2})
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())
    assert queue_count(conn, q) == 2
    assert drain(ch, q) == [b"m3", b"m4"]


def test_max_length_bytes_counts_bodies(conn, ch, name):
    q = name("maxbytes")
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaaa", b"bbbbb", b"ccccc"):
        ch.basic_publish("", q, body, pika.BasicProperties(headers={"h": "x" * 50}))
    assert drain(ch, q) == [b"bbbbb", b"ccccc"]


def test_unacked_messages_do_not_count(conn, ch, name):
    q = name("maxlen-unacked")
    ch.queue_declare(q, arguments={"x-max-length": 1})
    ch.basic_publish("", q, b"taken")
    method, _, _ = ch.basic_get(q)
    ch.basic_publish("", q, b"ready1")
    ch.basic_publish("", q, b"ready2")
    assert queue_count(conn, q) == 1
    ch.basic_ack(method.delivery_tag)
    assert drain(ch, q) == [b"ready2"]


def test_reject_publish_nacks_confirming_publishers(conn, name):
    ch = conn.channel()
    q = name("reject")
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"second")
    ch.basic_publish("", "no-such-queue-" + q, b"unroutable is still acked")
    assert queue_count(conn, q) == 1
    assert drain(ch, q) == [b"first"]
    ch.basic_publish("", q, b"room again")
    assert drain(ch, q) == [b"room again"]


def test_reject_publish_drops_without_confirms(conn, ch, name):
    q = name("reject-plain")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())
    assert drain(ch, q) == [b"m0", b"m1"]


def test_reject_publish_dlx_nacks_and_dead_letters(conn, name):
    ch = conn.channel()
    q, dlq = name("reject-dlx"), name("reject-dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                   "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")
    eventually(lambda: queue_count(conn, dlq) == 1, message="refused message dead-lettered")
    _, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"refused"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert drain(ch, q) == [b"kept"]


def test_each_queue_applies_its_own_limit_to_a_fanout_publish(conn, ch, name):
    x, small, big = name("x"), name("small"), name("big")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.queue_declare(small, arguments={"x-max-length": 1})
    ch.queue_declare(big, arguments={"x-max-length": 3})
    ch.queue_bind(small, x)
    ch.queue_bind(big, x)
    for i in range(4):
        ch.basic_publish(x, "", f"m{i}".encode())
    assert drain(ch, small) == [b"m3"]
    assert drain(ch, big) == [b"m1", b"m2", b"m3"]


@pytest.mark.lockgate_only
def test_block_pauses_publishers_until_the_queue_has_room(connections, name):
    q = name("block")
    pub_conn = connections()
    events = []
    pub_conn.add_on_connection_blocked_callback(lambda _c, f: events.append(f.method.NAME))
    pub_conn.add_on_connection_unblocked_callback(lambda _c, f: events.append(f.method.NAME))
    pub = pub_conn.channel()
    pub.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "block"})
    for i in range(10):
        pub.basic_publish("", q, f"m{i}".encode())
    pump(pub_conn, lambda: events, message="connection.blocked")
    assert events == ["Connection.Blocked"]

    observer = connections()
    # Reading stopped once the queue was full: at most the limit plus the publish that
    # filled it are in the queue, nothing was dropped.
    assert queue_count(observer, q) <= 3

    got = Collector(ack=True)
    cons = observer.channel()
    cons.basic_qos(prefetch_count=1)
    cons.basic_consume(q, got)
    pump([observer, pub_conn], lambda: len(got) == 10, message="all 10 delivered")
    assert got.bodies == [f"m{i}".encode() for i in range(10)]
    pump(pub_conn, lambda: "Connection.Unblocked" in events, message="connection.unblocked")


@pytest.mark.lockgate_only
def test_policy_settings_apply_to_declared_queues(lockgate):
    b = lockgate(
        "[[policies]]\n"
        'name = "bounded"\n'
        "pattern = '^bounded\\.'\n"
        'definition = { max-length = 2, message-ttl = 60000, dead-letter-exchange = "",'
        ' dead-letter-routing-key = "bounded-dlq" }\n'
    )
    conn = b.connect()
    try:
        ch = conn.channel()
        ch.queue_declare("bounded-dlq")
        ch.queue_declare("bounded.q")
        for i in range(3):
            ch.basic_publish("", "bounded.q", f"m{i}".encode())
        assert drain(ch, "bounded.q") == [b"m1", b"m2"]
        _, props, body = ch.basic_get("bounded-dlq", auto_ack=True)
        assert body == b"m0"
        assert props.headers["x-death"][0]["reason"] == "maxlen"
        # The client's own argument wins over the policy's.
        ch.queue_declare("bounded.own", arguments={"x-max-length": 3})
        for i in range(4):
            ch.basic_publish("", "bounded.own", f"m{i}".encode())
        assert drain(ch, "bounded.own") == [b"m1", b"m2", b"m3"]
    finally:
        conn.close()
