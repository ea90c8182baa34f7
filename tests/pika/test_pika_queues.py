"""Queues: declare (passive, server-named, exclusive, auto-delete), bind/unbind, purge, delete."""

import pika.exceptions as pe
import pytest

from lockgate_harness import drain, eventually, queue_count, queue_exists


def test_passive_declare_of_missing_queue_is_404(conn, name):
    ch = conn.channel()
    q = name("missing")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare(q, passive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
    assert conn.is_open
    assert conn.channel().is_open


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-")
    assert ok.message_count == 0
    assert ok.consumer_count == 0
    other = ch.queue_declare("", exclusive=True).method.queue
    assert other != ok.queue


def test_declare_ok_counts_messages_and_consumers(ch, name):
    q = name("q")
    ch.queue_declare(q, auto_delete=True)
    for _i in range(3):
        ch.basic_publish("", q, b"x")
    # Publishing is asynchronous; the count catches up.
    ok = eventually(lambda: (m := ch.queue_declare(q, passive=True).method).message_count == 3
                    and m)
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 3, 0)
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda *a: None)
    ok = eventually(lambda: (m := ch.queue_declare(q, passive=True).method).message_count == 2
                    and m)
    assert ok.consumer_count == 1


def test_redeclare_same_is_ok_and_different_is_406(conn, name):
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q, durable=False, auto_delete=True)
    ch.queue_declare(q, durable=False, auto_delete=True)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare(q, durable=True, auto_delete=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': "
        "received 'true' but current is 'false'")
    conn.channel().queue_delete(q)


def test_amq_prefix_queue_name_is_403(conn, name):
    ch = conn.channel()
    q = "amq." + name("q")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare(q)
    assert info.value.reply_code == 403
    assert info.value.reply_text == (
        f"ACCESS_REFUSED - queue name '{q}' contains reserved prefix 'amq.*'")


def test_exclusive_queue_is_locked_to_its_connection(connections, name):
    owner = connections()
    other = connections()
    q = name("excl")
    owner.channel().queue_declare(q, exclusive=True)
    text = (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'."
            " It could be originally declared on another connection or the exclusive property"
            " value does not match that of the original declaration.")
    for attempt in (lambda ch: ch.queue_declare(q, passive=True),
                    lambda ch: ch.queue_declare(q, exclusive=True),
                    lambda ch: ch.basic_consume(q, lambda *a: None),
                    lambda ch: ch.basic_get(q)):
        ch = other.channel()
        with pytest.raises(pe.ChannelClosedByBroker) as info:
            attempt(ch)
        assert info.value.reply_code == 405
        if "declare" in repr(attempt.__code__.co_names):
            assert info.value.reply_text == text
    assert other.is_open
    # The owner uses it freely.
    och = owner.channel()
    och.basic_publish("", q, b"mine")
    assert drain(och, q) == [b"mine"]


def test_exclusive_queue_is_deleted_with_its_connection(connections, name):
    owner = connections()
    observer = connections()
    q = name("excl")
    owner.channel().queue_declare(q, exclusive=True)
    owner.close()

    eventually(lambda: not queue_exists(observer, q), message="exclusive queue deleted")


def test_auto_delete_queue_goes_when_last_consumer_cancels(conn, name):
    ch = conn.channel()
    q = name("ad")
    ch.queue_declare(q, auto_delete=True)
    # Never consumed: it stays.
    ch.queue_declare(q, passive=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    ch2 = conn.channel()

    eventually(lambda: not queue_exists(conn, q), message="auto-delete queue deleted")
    assert ch2.is_open


def test_bind_and_unbind(ch, name):
    ex = name("ex")
    ch.exchange_declare(ex, exchange_type="direct", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    keep = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(keep, ex, routing_key="k")
    ch.queue_bind(q, ex, routing_key="k")
    ch.queue_bind(q, ex, routing_key="k")  # idempotent
    ch.basic_publish(ex, "k", b"1")
    assert drain(ch, q) == [b"1"]
    ch.queue_unbind(q, ex, routing_key="k")
    ch.basic_publish(ex, "k", b"2")
    assert drain(ch, q) == []
    assert drain(ch, keep) == [b"1", b"2"]
    # Unbinding what is not bound is fine, as in RabbitMQ.
    ch.queue_unbind(q, ex, routing_key="never")


def test_bind_errors_are_404(conn, name):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ex = name("missing-ex")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_bind(q, ex, routing_key="k")
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no exchange '{ex}' in vhost '/'"
    ch = conn.channel()
    mq = name("missing-q")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_bind(mq, "amq.direct", routing_key="k")
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{mq}' in vhost '/'"


def test_purge_returns_count(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    for _ in range(7):
        ch.basic_publish("", q, b"x")
    eventually(lambda: queue_count(ch.connection, q) == 7)
    assert ch.queue_purge(q).method.message_count == 7
    assert ch.queue_purge(q).method.message_count == 0
    assert drain(ch, q) == []


def test_purge_keeps_unacked_messages(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    method, _, body = ch.basic_get(q)
    assert body == b"0"
    assert ch.queue_purge(q).method.message_count == 2
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"0", True)


def test_delete_returns_count(conn, name):
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q)
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    eventually(lambda: queue_count(conn, q) == 4)
    assert ch.queue_delete(q).method.message_count == 4
    with pytest.raises(pe.ChannelClosedByBroker):
        ch.queue_declare(q, passive=True)


def test_delete_of_missing_queue_is_ok(ch, name):
    # RabbitMQ answers delete-ok with a count of 0.
    assert ch.queue_delete(name("never")).method.message_count == 0


def test_delete_if_empty(conn, name):
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q, auto_delete=False)
    ch.basic_publish("", q, b"x")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_delete(q, if_empty=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"
    ch = conn.channel()
    assert queue_count(conn, q) == 1
    drain(ch, q)
    assert ch.queue_delete(q, if_empty=True).method.message_count == 0


def test_delete_if_unused(conn, name):
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    ch.basic_publish("", q, b"y")
    consumer_ch = conn.channel()
    consumer_ch.basic_qos(prefetch_count=1)
    tag = consumer_ch.basic_consume(q, lambda *a: None)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_delete(q, if_unused=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"
    consumer_ch.basic_cancel(tag)
    ch = conn.channel()
    ch.queue_delete(q, if_unused=True)
    with pytest.raises(pe.ChannelClosedByBroker):
        ch.queue_declare(q, passive=True)


def test_publish_to_deleted_queue_via_default_exchange_is_dropped(ch, name):
    q = name("q")
    ch.queue_declare(q)
    ch.queue_delete(q)
    ch.basic_publish("", q, b"lost")
    ch.queue_declare(q, auto_delete=True)
    assert drain(ch, q) == []
