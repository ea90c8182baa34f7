"""TTL: x-message-ttl, the expiration property, x-expires (docs/semantics/reliability.md).

Except where marked `lockgate_only`, these pass against RabbitMQ 3.10 too."""

import pika
import pytest

from lockgate_harness import Collector, drain, eventually, pump, queue_count, queue_exists, settle


def test_queue_ttl_removes_messages_nobody_consumed(conn, ch, name):
    q = name("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 200})
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    assert queue_count(conn, q) == 3
    eventually(lambda: queue_count(conn, q) == 0, message="messages expired")
    assert drain(ch, q) == []


def test_per_message_expiration_property(conn, ch, name):
    q = name("exp")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="150"))
    eventually(lambda: queue_count(conn, q) == 0, message="message expired")
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    assert drain(ch, q) == [b"long"]


@pytest.mark.lockgate_only
def test_expired_message_is_removed_wherever_it_stands(conn, ch, name):
    # RabbitMQ removes per-message-TTL messages only once they reach the head of the queue;
    # lockgate removes them when they expire, behind a head that does not expire.
    q = name("exp-middle")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"head")
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="150"))
    ch.basic_publish("", q, b"tail")
    eventually(lambda: queue_count(conn, q) == 2, message="middle message expired")
    assert drain(ch, q) == [b"head", b"tail"]


def test_expired_messages_are_dead_lettered_with_x_death(conn, ch, name):
    q, dlq = name("ttl-src"), name("ttl-dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={
        "x-message-ttl": 100,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    })
    ch.basic_publish("", q, b"late", pika.BasicProperties(expiration="60000",
                                                          headers={"app": "x"}))
    eventually(lambda: queue_count(conn, dlq) == 1, message="dead-lettered")
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"late"
    assert method.routing_key == dlq
    assert props.expiration is None
    assert props.headers["app"] == "x"
    death = props.headers["x-death"]
    assert len(death) == 1
    entry = death[0]
    assert entry["reason"] == "expired"
    assert entry["queue"] == q
    assert entry["count"] == 1
    assert entry["exchange"] == ""
    assert entry["routing-keys"] == [q]
    assert entry["original-expiration"] == "60000"
    assert "time" in entry
    assert props.headers["x-first-death-reason"] == "expired"
    assert props.headers["x-first-death-queue"] == q
    assert props.headers["x-first-death-exchange"] == ""


def test_expired_message_never_reaches_a_consumer(connections, name):
    # m1 expires while it waits behind m0, which the consumer (prefetch 1) holds unacked:
    # once m0 is acked, m1 must not be delivered.
    conn = connections()
    ch = conn.channel()
    q = name("ttl-consumer")
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=1)
    got = Collector()
    ch.basic_consume(q, got)
    ch.basic_publish("", q, b"m0")
    pump(conn, lambda: len(got) == 1, message="m0 delivered")
    ch.basic_publish("", q, b"m1", pika.BasicProperties(expiration="100"))
    # Well past m1's expiry, even if the broker reads the publish late.
    settle(conn, 1.0)
    ch.basic_ack(got.messages[0][0].delivery_tag)
    settle(conn, 0.3)
    assert got.bodies == [b"m0"]
    assert queue_count(conn, q) == 0


def test_x_expires_deletes_a_queue_once_unused(connections, name):
    conn = connections()
    ch = conn.channel()
    q = name("expires")
    ch.queue_declare(q, arguments={"x-expires": 300})
    # Well past x-expires, it still exists while a consumer is there.
    tag = ch.basic_consume(q, Collector(ack=True))
    settle(conn, 0.6)
    assert conn.channel().queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(tag)

    # A declaration, even passive, is a use that restarts the clock: probe less often.
    eventually(lambda: not queue_exists(conn, q), interval=0.5,
               message="queue deleted by x-expires")
