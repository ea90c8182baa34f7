"""Prometheus `/metrics`: the text parses with the reference parser, names follow RabbitMQ's
Prometheus plugin, and the counters move with traffic."""

import re
import socket
import urllib.error
import urllib.request

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockgate_harness import eventually, unique

pytestmark = pytest.mark.lockgate_only

CONFIG = """
[metrics]
listen = "127.0.0.1:0"
"""


def metrics_url(broker) -> str:
    line = broker.process.wait_for_log(r"serving Prometheus metrics")
    m = re.search(r"metrics_addr=([0-9.]+:[0-9]+)", line)
    assert m, line
    return f"http://{m.group(1)}/metrics"


def scrape(url):
    """{(name, frozenset(labels)): value} of every sample, and the families' types."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def glob(samples, name):
    return value(samples, f"rabbitmq_global_{name}", protocol="amqp091")


@pytest.fixture
def server(lockgate):
    broker = lockgate(CONFIG)
    return broker, metrics_url(broker)


def test_rabbitmq_names_are_exposed(server):
    _, url = server
    samples, types = scrape(url)
    names = {name for name, _ in samples}
    for name in ("rabbitmq_identity_info", "rabbitmq_connections", "rabbitmq_channels",
                 "rabbitmq_queues", "rabbitmq_consumers",
                 "rabbitmq_global_messages_received_total",
                 "rabbitmq_global_messages_delivered_total",
                 "rabbitmq_global_messages_acknowledged_total",
                 "rabbitmq_global_messages_confirmed_total",
                 "rabbitmq_global_messages_redelivered_total",
                 "rabbitmq_process_resident_memory_bytes",
                 "lockgate_ack_timeout_redeliveries_total"):
        assert name in names, name
    assert value(samples, "rabbitmq_process_resident_memory_bytes") > 1_000_000
    # The management API's node name (lockgate@HOST): RabbitMQ's dashboards join on it.
    node = {dict(labels)["rabbitmq_node"] for name, labels in samples
            if name == "rabbitmq_identity_info"}
    assert node == {f"lockgate@{socket.gethostname()}"}
    # The reference parser strips `_total` from counter family names.
    assert types["rabbitmq_global_messages_received"] == "counter"
    assert types["rabbitmq_connections"] == "gauge"


def test_counters_and_gauges_move_with_traffic(server):
    broker, url = server
    before, _ = scrape(url)
    conn = broker.connect()
    ch = conn.channel()
    q = unique("q")
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    ch.basic_publish("", unique("nowhere"), b"dropped")
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", unique("nowhere"), b"returned", mandatory=True)

    after, _ = scrape(url)
    assert value(after, "rabbitmq_connections") == 1
    assert value(after, "rabbitmq_channels") == 1
    assert value(after, "rabbitmq_queue_messages_ready", vhost="/", queue=q) == 5
    assert value(after, "rabbitmq_queue_messages_published_total", vhost="/", queue=q) == 5
    assert value(after, "lockgate_queue_oldest_message_age_seconds", vhost="/", queue=q) >= 0
    assert value(after, "rabbitmq_queue_messages_paged_out", vhost="/", queue=q) == 0
    assert value(after, "rabbitmq_queue_messages_ready_bytes", vhost="/", queue=q) > 0
    assert glob(after, "messages_received_total") - glob(before, "messages_received_total") == 7
    assert glob(after, "messages_received_confirm_total") == 7
    assert glob(after, "messages_routed_total") == 5
    assert glob(after, "messages_unroutable_dropped_total") == 1
    assert glob(after, "messages_unroutable_returned_total") == 1
    assert glob(after, "messages_confirmed_total") == 7

    # Two by basic.get (one auto-ack, one manual, then nacked back), three by a consumer.
    method, _, _ = ch.basic_get(q, auto_ack=True)
    method, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=True)
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append(m))
    eventually(lambda: (conn.process_data_events(0.01), len(seen) >= 4)[1], message="deliveries")
    mid, _ = scrape(url)
    assert value(mid, "rabbitmq_queue_messages_unacked", vhost="/", queue=q) == 4
    assert value(mid, "rabbitmq_queue_consumers", vhost="/", queue=q) == 1
    assert value(mid, "rabbitmq_consumers") == 1
    assert value(mid, "rabbitmq_channel_consumers") == 1
    assert value(mid, "rabbitmq_channel_messages_unacked") == 4
    ch.basic_ack(seen[-1].delivery_tag, multiple=True)
    conn.process_data_events(0.05)
    assert ch.basic_get(q)[0] is None

    final, _ = scrape(url)
    assert glob(final, "messages_delivered_get_auto_ack_total") == 1
    assert glob(final, "messages_delivered_get_manual_ack_total") == 1
    assert glob(final, "messages_delivered_consume_manual_ack_total") == 4
    assert glob(final, "messages_delivered_consume_auto_ack_total") == 0
    assert glob(final, "messages_delivered_total") == 6
    assert glob(final, "messages_redelivered_total") == 1
    assert glob(final, "messages_acknowledged_total") == 4
    assert glob(final, "messages_get_empty_total") == 1
    assert value(final, "rabbitmq_queue_messages_unacked", vhost="/", queue=q) == 0
    assert value(final, "rabbitmq_queue_messages_ready", vhost="/", queue=q) == 0
    conn.close()
    closed = eventually(lambda: (lambda s: s if value(s, "rabbitmq_connections") == 0 else None)(
        scrape(url)[0]), message="connection gauge back to 0")
    assert value(closed, "rabbitmq_channels") == 0


def test_store_group_commit_metrics(server):
    broker, url = server
    conn = broker.connect()
    try:
        ch = conn.channel()
        q = unique("durable")
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish("", q, b"persistent", pika.BasicProperties(delivery_mode=2))
        samples, _ = scrape(url)
        assert value(samples, "lockgate_store_commit_batches_total") >= 1
        assert value(samples, "lockgate_store_commit_ops_total") >= 3
        assert value(samples, "lockgate_store_max_batch_ops") >= 1
        assert value(samples, "lockgate_store_commit_seconds_total") > 0
        assert value(samples, "lockgate_store_backpressure_waits_total") == 0
        # Every publish was confirmed: no write waits on the store any more.
        eventually(lambda: value(scrape(url)[0], "lockgate_store_oldest_write_seconds",
                                 writes="durable") == 0,
                   message="no store write waiting")
        ch.queue_delete(q)
    finally:
        conn.close()


def test_disk_figures_come_from_a_probe_that_answered(server):
    # Free space and the store's size ask the file system, so a probe measures them off the
    # request path; on a healthy disk it answers within the scrape. (A hung one is tested in
    # the server's unit tests, holding the probe with a store failpoint: the scrape answers
    # with the last figures and lockgate_disk_probe_stale 1.)
    _, url = server
    samples, types = scrape(url)
    assert types["lockgate_disk_probe_stale"] == "gauge"
    assert value(samples, "lockgate_disk_probe_stale") == 0
    assert 0 <= value(samples, "lockgate_disk_probe_age_seconds") < 60
    assert value(samples, "rabbitmq_disk_space_available_bytes") > 0
    assert value(samples, "lockgate_store_size_bytes") > 0


def test_unknown_path_is_404(server):
    _, url = server
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=5)
    assert info.value.code == 404


def test_metrics_can_be_disabled(lockgate):
    broker = lockgate("[metrics]\nenabled = false\n")
    broker.connect().close()
    assert "serving Prometheus metrics" not in broker.process.log()


def test_spilled_messages_are_reported(lockgate):
    broker = lockgate("[memory]\nhigh_watermark = 4194304\n" + CONFIG)
    url = metrics_url(broker)
    conn = broker.connect(blocked_connection_timeout=20)
    try:
        ch = conn.channel()
        q = unique("spill")
        ch.queue_declare(q)
        body = b"x" * 4096
        for _ in range(1500):  # 6 MB: beyond the 2 MiB paging threshold (half the watermark)
            ch.basic_publish("", q, body)
        # A round trip on the same channel: every publish before it has been enqueued.
        assert ch.queue_declare(q, passive=True).method.message_count == 1500

        def paged_out():
            samples, _ = scrape(url)
            return value(samples, "rabbitmq_queue_messages_paged_out_bytes", vhost="/", queue=q)

        assert eventually(paged_out, timeout=15, message="spilled bytes reported") > 0
        samples, types = scrape(url)
        assert value(samples, "rabbitmq_queue_messages_paged_out", vhost="/", queue=q) > 0
        assert value(samples, "rabbitmq_queue_messages_ready", vhost="/", queue=q) == 1500
        # Spill calls bypass the store's writer and have their own series (a hung one is
        # tested in the store and in the watchdog's unit tests, with a failpoint): the spill
        # task is idle once under the threshold, so none is running.
        assert types["lockgate_store_oldest_write_seconds"] == "gauge"
        eventually(lambda: value(scrape(url)[0], "lockgate_store_oldest_write_seconds",
                                 writes="spill") == 0,
                   message="no spill call running")
        ch.queue_delete(q)
    finally:
        conn.close()


def test_multiple_acks_count_every_message_while_deliveries_refill(server):
    broker, url = server
    conn = broker.connect()
    try:
        ch = conn.channel()
        q = unique("acks")
        ch.queue_declare(q)
        ch.confirm_delivery()
        for i in range(100):
            ch.basic_publish("", q, b"%d" % i)
        before = glob(scrape(url)[0], "messages_acknowledged_total")
        ch.basic_qos(prefetch_count=10)
        seen = []

        def on_message(c, m, p, b):
            seen.append(m.delivery_tag)
            if len(seen) % 5 == 0:  # each multiple ack frees credit that is refilled at once
                c.basic_ack(m.delivery_tag, multiple=True)

        ch.basic_consume(q, on_message)
        eventually(lambda: (conn.process_data_events(0.01), len(seen) == 100)[1],
                   message="all deliveries")
        # A round trip on the channel: the broker has handled its last acks before it answers
        # (a pause instead left the last ones unread on a loaded machine: 90 of 100 counted).
        ch.queue_declare(q, passive=True)
        after = scrape(url)[0]
        assert glob(after, "messages_acknowledged_total") - before == 100
        assert value(after, "rabbitmq_queue_messages_unacked", vhost="/", queue=q) == 0
    finally:
        conn.close()


def test_head_and_other_methods(server):
    """Served by axum, the management API's HTTP stack: HEAD answers like GET without a body,
    other methods get 405."""
    _, url = server
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert r.read() == b""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5)
    assert info.value.code == 405
    samples, _ = scrape(url.replace("/metrics", "/metrics/per-object"))
    assert ("rabbitmq_queues", frozenset()) in samples
