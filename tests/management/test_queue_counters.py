"""The queue semantics counters (TTL expiry, dead-lettering, overflow, consumer timeout,
delivery limit, deduplication) in /api/queues and /metrics, each moved by the feature it counts.

Names: /api/queues has `messages_expired`, `messages_dead_lettered`,
`messages_dropped_overflow`, `messages_rejected_overflow`, `ack_timeout_redeliveries`,
`messages_delivery_limit`, `messages_deduplicated` (RabbitMQ's queue object has none of them);
/metrics has the lockgate_queue_..._total counter per queue (RabbitMQ's Prometheus plugin has no
per-queue equivalent) plus lockgate_ack_timeout_redeliveries_total over all queues.
"""

from __future__ import annotations

import re
import urllib.request

import pika
import pytest
from mgmt_helpers import MGMT_LINE, USERS, Api, q
from prometheus_client.parser import text_string_to_metric_families

from lockgate_harness import LockgateProcess, eventually, unique

pytestmark = pytest.mark.lockgate_only

CONFIG = """
[management]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
"""


class Server:
    def __init__(self):
        self.proc = LockgateProcess(config=CONFIG + USERS, log_level="info")
        m = MGMT_LINE.search(self.proc.wait_for_log(r"management API serving", timeout=10))
        assert m
        self.api = Api(f"http://{m.group(1)}:{m.group(2)}")
        line = self.proc.wait_for_log(r"serving Prometheus metrics", timeout=10)
        m = re.search(r"metrics_addr=([0-9.]+:[0-9]+)", line)
        assert m, line
        self.metrics_url = f"http://{m.group(1)}/metrics"

    def queue(self, name: str) -> dict:
        return self.api.get(f"/api/queues/{q('/')}/{q(name)}")

    def metric(self, name: str, queue: str | None = None) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and (queue is None or s.labels.get("queue") == queue):
                    return s.value
        raise AssertionError(f"no sample {name} for queue {queue}")


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.proc.stop()


@pytest.fixture
def ch(server):
    conn = server.proc.broker().connect()
    yield conn.channel()
    conn.close()


def counted(server: Server, queue: str, field: str, metric: str, expected: int) -> None:
    """Both the API field and the metric reach `expected` (and stay exact)."""
    eventually(lambda: server.queue(queue)[field] == expected,
               message=f"{field} == {expected} (got {server.queue(queue)[field]})")
    assert server.metric(metric, queue) == expected


def test_expired_and_dead_lettered(server, ch):
    name, dlq = unique("ttl"), unique("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(name, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": dlq})
    for i in range(3):
        ch.basic_publish("", name, b"%d" % i)
    eventually(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 3,
               message="3 messages dead-lettered")
    counted(server, name, "messages_expired", "lockgate_queue_messages_expired_total", 3)
    counted(server, name, "messages_dead_lettered",
            "lockgate_queue_messages_dead_lettered_total", 3)
    assert server.queue(dlq)["messages_expired"] == 0


def test_dropped_and_rejected_overflow(server, ch):
    head, refuse = unique("drop-head"), unique("reject")
    ch.queue_declare(head, arguments={"x-max-length": 2})
    ch.queue_declare(refuse, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    for i in range(5):
        ch.basic_publish("", head, b"%d" % i)
        ch.basic_publish("", refuse, b"%d" % i)
    counted(server, head, "messages_dropped_overflow",
            "lockgate_queue_messages_dropped_overflow_total", 3)
    counted(server, refuse, "messages_rejected_overflow",
            "lockgate_queue_messages_rejected_overflow_total", 4)
    assert server.queue(head)["messages_rejected_overflow"] == 0


def test_ack_timeout_redeliveries(server, ch):
    name = unique("timeout")
    ch.queue_declare(name, arguments={"x-consumer-timeout": 200})
    ch.basic_publish("", name, b"slow")
    deliveries = []
    ch.basic_consume(name, lambda c, m, p, b: deliveries.append(m.redelivered))
    # Never acked: taken back after 200 ms and delivered again (redelivered=true).
    eventually(lambda: ch.connection.process_data_events(0.05) or len(deliveries) >= 2,
               message="a redelivery after the consumer timeout")
    assert deliveries[:2] == [False, True]
    eventually(lambda: server.queue(name)["ack_timeout_redeliveries"] >= 1,
               message="ack_timeout_redeliveries counted")
    assert server.metric("lockgate_queue_ack_timeout_redeliveries_total", name) >= 1
    assert server.metric("lockgate_ack_timeout_redeliveries_total") >= 1


def test_delivery_limit(server, ch):
    name = unique("limit")
    ch.queue_declare(name, arguments={"x-delivery-limit": 1})
    ch.basic_publish("", name, b"poison")
    for _ in range(2):
        method, _, _ = ch.basic_get(name)
        assert method is not None
        ch.basic_nack(method.delivery_tag, requeue=True)
    # Delivered twice (the limit allows one redelivery): the second requeue drops it.
    counted(server, name, "messages_delivery_limit",
            "lockgate_queue_messages_delivery_limit_total", 1)
    assert ch.basic_get(name)[0] is None


def test_deduplicated(server, ch):
    name = unique("dedup")
    ch.queue_declare(name, arguments={"x-deduplication-window": 100})
    props = pika.BasicProperties(message_id="same")
    for _ in range(3):
        ch.basic_publish("", name, b"once", props)
    counted(server, name, "messages_deduplicated",
            "lockgate_queue_messages_deduplicated_total", 2)
    assert ch.queue_declare(name, passive=True).method.message_count == 1
