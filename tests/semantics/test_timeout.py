"""Consumer timeouts: x-consumer-timeout, x-consumer-timeout-action, x-delivery-count and
x-delivery-limit (docs/semantics/reliability.md). lockgate's own behaviour: RabbitMQ 3.10
has only the close-channel action, set broker-wide."""

import signal
import time
from pathlib import Path

import pika
import pytest

from lockgate_harness import Collector, eventually, pump, queue_count

pytestmark = pytest.mark.lockgate_only


def test_unacked_delivery_is_requeued_for_the_next_consumer(connections, name):
    slow_conn, fast_conn = connections(), connections()
    slow = slow_conn.channel()
    q = name("timeout")
    # Long enough for the next consumer to subscribe before the timeout, on a loaded machine.
    slow.queue_declare(q, arguments={"x-consumer-timeout": 1000})
    slow.basic_qos(prefetch_count=1)
    hung = Collector()  # never acks
    slow.basic_consume(q, hung)
    published = time.monotonic()
    slow.basic_publish("", q, b"job")
    pump(slow_conn, lambda: len(hung) == 1, message="first delivery")
    assert hung.messages[0][0].redelivered is False

    fast = fast_conn.channel()
    got = Collector(ack=True)
    fast.basic_consume(q, got)
    pump([slow_conn, fast_conn], lambda: len(got) == 1, message="redelivered to the next consumer")
    assert time.monotonic() - published >= 0.95
    assert len(hung) == 1
    method, props, body = got.messages[0]
    assert body == b"job"
    assert method.redelivered is True
    assert props.headers["x-delivery-count"] == 1

    # The slow consumer's channel stays open; its late ack is ignored, not an error.
    slow.basic_ack(hung.messages[0][0].delivery_tag)
    assert slow.queue_declare(q, passive=True).method.message_count == 0
    assert slow.is_open


def test_timeout_frees_the_slow_consumers_credit(connections, name):
    conn = connections()
    ch = conn.channel()
    q = name("timeout-credit")
    ch.queue_declare(q, arguments={"x-consumer-timeout": 150})
    ch.basic_qos(prefetch_count=1)
    got = Collector()  # never acks: every delivery times out and comes back
    ch.basic_consume(q, got)
    ch.basic_publish("", q, b"a")
    pump(conn, lambda: len(got) >= 3, message="delivered again after each timeout")
    assert [m[0].redelivered for m in got.messages[:3]] == [False, True, True]
    assert [(m[1].headers or {}).get("x-delivery-count") for m in got.messages[:3]] == [None, 1, 2]


def test_close_channel_action_closes_with_406(connections, name):
    conn = connections()
    ch = conn.channel()
    q = name("timeout-close")
    ch.queue_declare(q, arguments={"x-consumer-timeout": 150,
                                   "x-consumer-timeout-action": "close-channel"})
    ch.basic_consume(q, Collector())
    ch.basic_publish("", q, b"x")

    def closed_by_broker():
        # Only synchronous calls process frames here, so the close arrives inside one.
        try:
            ch.basic_qos(prefetch_count=0)
        except pika.exceptions.ChannelClosedByBroker as e:
            return e
        return None

    reason = eventually(closed_by_broker, message="channel closed by the broker")
    assert reason.reply_code == 406
    assert reason.reply_text.startswith(
        f"PRECONDITION_FAILED - delivery acknowledgement on channel {ch.channel_number} "
        "timed out. Timeout value used: 150 ms.")
    # Closing requeued the delivery.
    assert eventually(lambda: queue_count(conn, q) == 1, message="requeued")


def test_delivery_limit_dead_letters_after_n_redeliveries(connections, name):
    conn = connections()
    ch = conn.channel()
    q, dlq = name("limit"), name("limit-dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-delivery-limit": 2, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": dlq})
    seen = []

    def refuse(channel, method, props, body):
        seen.append((method.redelivered, (props.headers or {}).get("x-delivery-count")))
        channel.basic_nack(method.delivery_tag, requeue=True)

    ch.basic_consume(q, refuse)
    ch.basic_publish("", q, b"poison")
    pump(conn, lambda: queue_count(conn, dlq) == 1, message="dead-lettered after the limit")
    assert seen == [(False, None), (True, 1), (True, 2)]
    _, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert queue_count(conn, q) == 0


def test_delivery_limit_without_dlx_drops(conn, ch, name):
    q = name("limit-drop")
    ch.queue_declare(q, arguments={"x-delivery-limit": 0})
    ch.basic_publish("", q, b"once")
    method, _, _ = ch.basic_get(q)
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert queue_count(conn, q) == 0


def test_broker_wide_consumer_timeout_from_the_config(lockgate, name):
    b = lockgate("consumer_timeout = 200\n")
    conn = b.connect()
    try:
        ch = conn.channel()
        q = name("default-timeout")
        ch.queue_declare(q)
        ch.basic_qos(prefetch_count=1)
        got = Collector()  # never acks
        ch.basic_consume(q, got)
        ch.basic_publish("", q, b"x")
        pump(conn, lambda: len(got) == 2, message="redelivered after the broker-wide timeout")
        assert got.messages[1][0].redelivered is True
        # A queue's own argument wins over the broker-wide default.
        q2 = name("own-timeout")
        ch.queue_declare(q2, arguments={"x-consumer-timeout": 60_000})
        ch2 = conn.channel()
        got2 = Collector()
        ch2.basic_consume(q2, got2)
        ch2.basic_publish("", q2, b"y")
        pump(conn, lambda: len(got2) == 1, message="delivered")
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert len(got2) == 1
    finally:
        conn.close()


POLICY_HEAD = """
[[policies]]
name = "deadline"
pattern = '^pol\\.'
definition = { consumer-timeout = 200 }
"""


def hung_consumer_is_timed_out(conn, q):
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    got = Collector()  # never acks
    ch.basic_consume(q, got)
    ch.basic_publish("", q, b"x")
    pump(conn, lambda: len(got) == 2, message=f"redelivered after the timeout on {q}")
    assert got.messages[1][0].redelivered is True


def test_consumer_timeout_from_a_policy(lockgate):
    b = lockgate(POLICY_HEAD)
    conn = b.connect()
    try:
        conn.channel().queue_declare("pol.q")
        hung_consumer_is_timed_out(conn, "pol.q")
    finally:
        conn.close()


def test_a_policy_change_applies_to_an_existing_queue(lockgate):
    b = lockgate("")
    conn = b.connect()
    try:
        ch = conn.channel()
        ch.queue_declare("pol.live")
        mark = b.process.log_mark()
        config = Path(b.process.args[b.process.args.index("--config") + 1])
        config.write_text(POLICY_HEAD)
        b.process.signal(signal.SIGHUP)
        b.process.wait_for_log(r"SIGHUP: config file reloaded", since=mark, timeout=10)
        hung_consumer_is_timed_out(conn, "pol.live")
    finally:
        conn.close()
