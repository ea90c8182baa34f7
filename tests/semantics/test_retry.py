"""Retry delays: x-retry-delay and x-retry-delay-max (docs/semantics/reliability.md).
lockgate's own behaviour."""

import itertools
import time

import pytest

from lockgate_harness import pump, queue_count, settle

pytestmark = pytest.mark.lockgate_only


def test_nacked_message_waits_without_blocking_the_next(connections, name):
    conn = connections()
    ch = conn.channel()
    q = name("retry")
    ch.queue_declare(q, arguments={"x-retry-delay": 300, "x-retry-delay-max": 5000})
    arrivals = []

    def consume(channel, method, props, body):
        arrivals.append((body, time.monotonic(), (props.headers or {}).get("x-delivery-count")))
        if body == b"flaky" and len([a for a in arrivals if a[0] == b"flaky"]) <= 2:
            channel.basic_nack(method.delivery_tag, requeue=True)
        else:
            channel.basic_ack(method.delivery_tag)

    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, consume)
    ch.basic_publish("", q, b"flaky")
    ch.basic_publish("", q, b"next")
    pump(conn, lambda: len(arrivals) == 4, timeout=10, message="flaky delivered three times")
    bodies = [a[0] for a in arrivals]
    # The message behind the nacked one is not held up by its delay.
    assert bodies == [b"flaky", b"next", b"flaky", b"flaky"]
    flaky = [a for a in arrivals if a[0] == b"flaky"]
    first_gap = flaky[1][1] - flaky[0][1]
    second_gap = flaky[2][1] - flaky[1][1]
    assert first_gap >= 0.25
    # Doubled on the second return.
    assert second_gap >= 0.55
    assert [a[2] for a in flaky] == [None, 1, 2]


def test_delay_is_capped_by_retry_delay_max(connections, name):
    conn = connections()
    ch = conn.channel()
    q = name("retry-max")
    ch.queue_declare(q, arguments={"x-retry-delay": 100, "x-retry-delay-max": 150})
    times = []

    def consume(channel, method, props, body):
        times.append(time.monotonic())
        channel.basic_nack(method.delivery_tag, requeue=True)

    ch.basic_consume(q, consume)
    ch.basic_publish("", q, b"again")
    pump(conn, lambda: len(times) >= 7, message="seven deliveries")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 100, then 150 (capped): 0.85 s in all, instead of 100 + 200 + ... + 3200 = 6.3 s. The
    # bound leaves room for six round trips on a loaded machine.
    assert sum(gaps[:6]) < 4.0
    assert all(g >= 0.08 for g in gaps[:6])


def test_queue_count_includes_delayed_messages(connections, name):
    conn = connections()
    ch = conn.channel()
    q = name("retry-count")
    ch.queue_declare(q, arguments={"x-retry-delay": 60_000})
    ch.basic_publish("", q, b"later")
    method, _, _ = ch.basic_get(q)
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    method, _, _ = ch.basic_get(q)
    assert method is None


def test_a_delayed_message_still_expires(connections, name):
    # A message held aside by its retry delay keeps its TTL: it expires at ~1 s, well before
    # the 6 s delay ends, and never comes back to a consumer.
    conn = connections()
    ch = conn.channel()
    q = name("retry-ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 1000, "x-retry-delay": 6000})
    published = time.monotonic()
    ch.basic_publish("", q, b"short-lived")
    got = []

    def consume(channel, method, props, body):
        got.append(body)
        if len(got) == 1:
            channel.basic_nack(method.delivery_tag, requeue=True)
        else:
            channel.basic_ack(method.delivery_tag)

    ch.basic_consume(q, consume)
    pump(conn, lambda: len(got) == 1, message="first delivery")
    # Gone while the delay still runs (the count includes delayed messages).
    pump(conn, lambda: queue_count(conn, q) == 0, message="expired")
    assert time.monotonic() - published < 5.0, "expired only when the delay ended"
    # Past the end of the delay: it did not come back.
    settle(conn, max(0.0, published + 6.5 - time.monotonic()))
    assert got == [b"short-lived"]


def test_a_delivery_taken_back_by_the_consumer_timeout_waits_its_retry_delay(connections, name):
    conn = connections()
    ch = conn.channel()
    q = name("retry-timeout")
    ch.queue_declare(q, arguments={"x-consumer-timeout": 200, "x-retry-delay": 600})
    ch.basic_qos(prefetch_count=1)
    times = []

    def consume(channel, method, props, body):
        times.append(time.monotonic())  # never acked: times out

    ch.basic_consume(q, consume)
    published = time.monotonic()
    ch.basic_publish("", q, b"slow")
    pump(conn, lambda: len(times) == 2, message="redelivered after timeout + delay")
    # 200 ms timeout from the first delivery, then the 600 ms retry delay (without the delay:
    # ~200 ms). Counted from the publish: the first delivery's arrival may come late here.
    assert times[1] - published >= 0.75
