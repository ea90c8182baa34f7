"""x-max-priority with the priority property (docs/semantics/ordering.md).

These pass against RabbitMQ 3.10 too (classic queues)."""

import pika

from lockgate_harness import Collector, drain, pump, queue_count


def publish(ch, q, body, priority=None):
    ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))


def test_higher_priority_first_fifo_within_a_priority(conn, ch, name):
    q = name("prio")
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    for body, priority in [(b"none-a", None), (b"p3-a", 3), (b"p5", 5), (b"p9-counts-as-5", 9),
                           (b"p0", 0), (b"p3-b", 3), (b"none-b", None)]:
        publish(ch, q, body, priority)
    assert queue_count(conn, q) == 7
    assert drain(ch, q) == [b"p5", b"p9-counts-as-5", b"p3-a", b"p3-b",
                            b"none-a", b"p0", b"none-b"]
    # Without x-max-priority the property is ignored.
    plain = name("no-prio")
    ch.queue_declare(plain)
    publish(ch, plain, b"low", 0)
    publish(ch, plain, b"high", 9)
    assert drain(ch, plain) == [b"low", b"high"]


def test_consumer_gets_the_backlog_by_priority(conn, ch, name):
    q = name("prio-consume")
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    for i in range(3):
        publish(ch, q, f"low{i}".encode(), 1)
    publish(ch, q, b"urgent", 10)
    got = Collector(ack=True)
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, got)
    pump(conn, lambda: len(got) == 4, message="4 deliveries")
    assert got.bodies == [b"urgent", b"low0", b"low1", b"low2"]


def test_requeued_message_goes_back_to_its_place_in_its_priority(conn, ch, name):
    q = name("prio-requeue")
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    publish(ch, q, b"a1", 1)
    publish(ch, q, b"a2", 1)
    method, _, body = ch.basic_get(q)
    assert body == b"a1"
    publish(ch, q, b"b", 7)
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert drain(ch, q) == [b"b", b"a1", b"a2"]
