"""Dead-lettering: x-dead-letter-exchange / -routing-key, x-death, cycles
(docs/semantics/reliability.md). These pass against RabbitMQ 3.10 too."""

import pika
import pytest

from lockgate_harness import Collector, eventually, pump, queue_count, settle


def dead_letter_setup(ch, name, **extra):
    """A source queue dead-lettering through a fanout exchange into a dead-letter queue."""
    src, dlx, dlq = name("dl-src"), name("dlx"), name("dl-q")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": dlx, **extra})
    return src, dlx, dlq


def test_rejected_message_is_dead_lettered_with_x_death(conn, ch, name):
    src, dlx, dlq = dead_letter_setup(ch, name)
    ch.basic_publish("", src, b"bad", pika.BasicProperties(delivery_mode=2))
    method, _, _ = ch.basic_get(src)
    ch.basic_nack(method.delivery_tag, requeue=True)  # requeued: not dead-lettered
    assert queue_count(conn, dlq) == 0
    method, _, _ = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    eventually(lambda: queue_count(conn, dlq) == 1, message="dead-lettered")
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"bad"
    assert method.exchange == dlx
    assert method.routing_key == src  # no x-dead-letter-routing-key: its own
    (entry,) = props.headers["x-death"]
    assert entry["reason"] == "rejected"
    assert entry["queue"] == src
    assert entry["count"] == 1
    assert entry["exchange"] == ""
    assert entry["routing-keys"] == [src]
    assert "original-expiration" not in entry
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.delivery_mode == 2
    assert queue_count(conn, src) == 0


def test_nack_multiple_without_requeue_dead_letters_each(conn, ch, name):
    src, _, dlq = dead_letter_setup(ch, name)
    for i in range(3):
        ch.basic_publish("", src, f"m{i}".encode())
    tags = [ch.basic_get(src)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    eventually(lambda: queue_count(conn, dlq) == 3, message="3 dead-lettered")


def test_dead_letter_routing_key_replaces_the_routing_key(conn, ch, name):
    src, dlq = name("dl-src"), name("dl-q")
    ch.queue_declare(dlq)
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": dlq})
    ch.basic_publish("", src, b"x")
    method, _, _ = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    eventually(lambda: queue_count(conn, dlq) == 1, message="dead-lettered")


def test_repeated_deaths_count_in_one_entry(conn, ch, name):
    # src rejects into dlq; dlq expires back into src (a cycle with a rejection in it,
    # which RabbitMQ lets through): the second rejection bumps the count of the same entry.
    src, dlq = name("dl-src"), name("dl-back")
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": dlq})
    ch.queue_declare(dlq, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": src})
    ch.basic_publish("", src, b"loop")

    def got():
        method, props, body = ch.basic_get(src)
        return (method, props, body) if method else None

    for _ in range(2):
        method, _, _ = eventually(got, message="back in src")
        ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, _ = eventually(got, message="back in src a third time")
    deaths = {(d["queue"], d["reason"]): d["count"] for d in props.headers["x-death"]}
    assert deaths == {(src, "rejected"): 2, (dlq, "expired"): 2}
    assert props.headers["x-death"][0]["queue"] == dlq  # most recent first
    assert props.headers["x-first-death-queue"] == src
    ch.basic_ack(method.delivery_tag)


def test_dead_letter_cycle_without_rejection_is_dropped(connections, name):
    # A queue whose expired messages dead-letter back into itself: without RabbitMQ's cycle
    # rule the message would loop forever; with it, it is dropped after its first death.
    conn = connections()
    ch = conn.channel()
    q = name("dl-cycle")
    ch.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": q})
    ch.basic_publish("", q, b"cycle")
    eventually(lambda: queue_count(conn, q) == 0, message="expired")
    got = Collector(ack=True)
    ch.basic_consume(q, got)
    settle(conn, 0.4)
    assert queue_count(conn, q) == 0
    assert got.bodies == []


def test_maxlen_drop_head_dead_letters_with_reason_maxlen(conn, ch, name):
    src, _, dlq = dead_letter_setup(ch, name, **{"x-max-length": 1})
    ch.basic_publish("", src, b"first")
    ch.basic_publish("", src, b"second")
    eventually(lambda: queue_count(conn, dlq) == 1, message="dead-lettered")
    _, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"first"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert ch.basic_get(src, auto_ack=True)[2] == b"second"


def test_consumer_sees_dead_lettered_message(connections, name):
    conn = connections()
    ch = conn.channel()
    src, _, dlq = dead_letter_setup(ch, name)
    got = Collector(ack=True)
    ch.basic_consume(dlq, got)
    ch.basic_publish("", src, b"to-dlq")
    method, _, _ = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    pump(conn, lambda: len(got) == 1, message="dead-letter delivered")
    assert got.messages[0][1].headers["x-death"][0]["reason"] == "rejected"


@pytest.mark.lockgate_only  # RabbitMQ's count is an Erlang bignum: it goes past 2**63 - 1
def test_a_publisher_supplied_x_death_count_at_its_maximum_does_not_break_the_broker(
        conn, ch, name):
    # The x-death header comes from the publisher: bumping a count already at i64::MAX must
    # not crash the connection (it stays at the maximum).
    src, _, dlq = dead_letter_setup(ch, name)
    top = 2**63 - 1
    headers = {"x-death": [{"queue": src, "reason": "rejected", "count": top}]}
    ch.basic_publish("", src, b"big", pika.BasicProperties(headers=headers))
    method, _, _ = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    eventually(lambda: queue_count(conn, dlq) == 1, message="dead-lettered")
    _, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"big"
    (entry,) = props.headers["x-death"]
    assert entry["count"] == top
