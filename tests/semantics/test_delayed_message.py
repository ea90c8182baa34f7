"""x-delayed-message exchanges (RabbitMQ's rabbitmq_delayed_message_exchange plugin): a message
with an `x-delay` header (ms) above zero is routed when its delay has elapsed, by the exchange's
`x-delayed-type` routing; without it (or with x-delay <= 0) it is routed at once."""

import time

import pika
import pika.exceptions as pe
import pytest

from lockgate_harness import Collector, drain, pump


def delayed_exchange(ch, name, kind="direct"):
    ex = name("delayed")
    ch.exchange_declare(ex, exchange_type="x-delayed-message", auto_delete=True,
                        arguments={"x-delayed-type": kind})
    return ex


def bound_queue(ch, ex, key=""):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, routing_key=key)
    return q


def delay(ms):
    return pika.BasicProperties(headers={"x-delay": ms})


def arrivals(conn, ch, q, count):
    """Consumes `count` messages from `q`; returns [(body, monotonic arrival time)]."""
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, time.monotonic())), auto_ack=True)
    pump(conn, lambda: len(got) >= count, message=f"{count} deliveries from {q}")
    return got


def test_message_is_delivered_after_its_delay_not_before(conn, ch, name):
    ex = delayed_exchange(ch, name)
    q = bound_queue(ch, ex, "k")
    sent = time.monotonic()
    ch.basic_publish(ex, "k", b"later", delay(400))
    [(body, at)] = arrivals(conn, ch, q, 1)
    assert body == b"later"
    elapsed = at - sent
    # Not before its delay; the upper bound only rules out a message that waits for something
    # else (a loaded machine may deliver it seconds late).
    assert 0.35 <= elapsed < 10.0, elapsed


def test_a_delayed_message_carries_a_negated_x_delay(conn, ch, name):
    # As the plugin: a consumer can tell a message was delayed by x-delay < 0.
    ex = delayed_exchange(ch, name)
    q = bound_queue(ch, ex, "k")
    ch.basic_publish(ex, "k", b"later", delay(120))
    got = []
    ch.basic_consume(q, lambda c, m, props, body: got.append(props), auto_ack=True)
    pump(conn, lambda: got)
    assert got[0].headers["x-delay"] == -120


def test_a_later_shorter_delay_overtakes(conn, ch, name):
    ex = delayed_exchange(ch, name)
    q = bound_queue(ch, ex, "k")
    ch.basic_publish(ex, "k", b"slow", delay(700))
    ch.basic_publish(ex, "k", b"fast", delay(150))
    ch.basic_publish(ex, "k", b"now")
    got = arrivals(conn, ch, q, 3)
    assert [b for b, _ in got] == [b"now", b"fast", b"slow"]


def test_no_delay_or_a_non_positive_delay_routes_at_once(ch, name):
    ex = delayed_exchange(ch, name)
    q = bound_queue(ch, ex, "k")
    ch.basic_publish(ex, "k", b"plain")
    ch.basic_publish(ex, "k", b"zero", delay(0))
    ch.basic_publish(ex, "k", b"negative", delay(-5))
    # Same channel: the publishes are routed before the gets are answered.
    assert drain(ch, q) == [b"plain", b"zero", b"negative"]


def test_a_held_message_is_not_in_the_queue_yet(conn, ch, name):
    ex = delayed_exchange(ch, name)
    q = bound_queue(ch, ex, "k")
    ch.basic_publish(ex, "k", b"held", delay(1500))
    ch.basic_publish(ex, "k", b"marker")
    assert drain(ch, q) == [b"marker"]
    assert [b for b, _ in arrivals(conn, ch, q, 1)] == [b"held"]


@pytest.mark.parametrize("kind,bindings,key,expected", [
    ("topic", {"a": "orders.*", "b": "payments.#"}, "orders.created", {"a"}),
    ("fanout", {"a": "", "b": ""}, "anything", {"a", "b"}),
    ("direct", {"a": "x", "b": "y"}, "y", {"b"}),
])
def test_routing_follows_x_delayed_type(conn, ch, name, kind, bindings, key, expected):
    ex = delayed_exchange(ch, name, kind)
    queues = {label: bound_queue(ch, ex, bkey) for label, bkey in bindings.items()}
    collectors = {}
    for label, q in queues.items():
        collectors[label] = Collector()
        ch.basic_consume(q, collectors[label], auto_ack=True)
    ch.basic_publish(ex, key, b"m", delay(100))
    pump(conn, lambda: all(len(collectors[label]) == 1 for label in expected))
    # A round trip after the due message was routed: any other delivery of it came before.
    ch.queue_declare(next(iter(queues.values())), passive=True)
    conn.process_data_events(time_limit=0)
    assert {label for label, c in collectors.items() if len(c)} == expected


def test_headers_delayed_type(conn, ch, name):
    ex = delayed_exchange(ch, name, "headers")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, arguments={"x-match": "all", "kind": "invoice"})
    ch.basic_publish(ex, "", b"invoice",
                     pika.BasicProperties(headers={"x-delay": 100, "kind": "invoice"}))
    ch.basic_publish(ex, "", b"other",
                     pika.BasicProperties(headers={"x-delay": 50, "kind": "other"}))
    assert [b for b, _ in arrivals(conn, ch, q, 1)] == [b"invoice"]


def test_x_delayed_type_is_required(ch, name):
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare(name("delayed"), exchange_type="x-delayed-message")
    assert info.value.reply_code == 406
    assert "x-delayed-type" in info.value.reply_text


@pytest.mark.lockgate_only
def test_a_held_mandatory_message_is_confirmed_not_returned(conn, ch, name):
    # The plugin returns every delayed mandatory message at once (it cannot know where it will
    # route); lockgate accepts it and confirms it.
    ex = delayed_exchange(ch, name)
    q = bound_queue(ch, ex, "k")
    ch.confirm_delivery()
    ch.basic_publish(ex, "k", b"held", delay(200), mandatory=True)
    assert [b for b, _ in arrivals(conn, ch, q, 1)] == [b"held"]
