"""An empty queue name means the queue last declared on the channel (the spec's queue-name
domain; RabbitMQ's expand_queue_name_shortcut), in queue.bind/unbind/purge/delete, basic.get and
basic.consume; queue.bind/unbind with an empty routing key too use that name as the key."""

import pika.exceptions as pe
import pytest
from lockgate_harness import Collector, pump


def test_an_empty_queue_name_is_the_queue_last_declared_on_the_channel(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    # Bound with the queue's name as the routing key (both empty).
    ch.queue_bind("", "amq.direct", routing_key="")
    ch.basic_publish("amq.direct", q, b"one")
    assert ch.basic_get("", auto_ack=True)[2] == b"one"
    ch.basic_publish("amq.direct", q, b"two")
    assert ch.queue_purge("").method.message_count == 1
    ch.queue_unbind("", "amq.direct", routing_key="")
    ch.basic_publish("amq.direct", q, b"unbound")
    ch.basic_publish("", q, b"three")
    col = Collector()
    ch.basic_consume("", col, auto_ack=True)
    pump(conn, lambda: len(col) == 1)
    assert col.bodies == [b"three"]
    assert ch.queue_delete("").method.message_count == 0
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        conn.channel().queue_declare(q, passive=True)
    assert info.value.reply_code == 404


def test_a_passive_declare_counts_as_declared(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    other = conn.channel()
    other.queue_declare(q, passive=True)
    ch.basic_publish("", q, b"m")
    assert other.basic_get("", auto_ack=True)[2] == b"m"


@pytest.mark.parametrize("call", [
    lambda ch: ch.basic_get("", auto_ack=True),
    lambda ch: ch.queue_purge(""),
    lambda ch: ch.queue_delete(""),
    lambda ch: ch.queue_bind("", "amq.fanout", routing_key=""),
    lambda ch: ch.basic_consume("", lambda *_: None),
], ids=["get", "purge", "delete", "bind", "consume"])
def test_an_empty_queue_name_before_any_declare_is_404(conn, call):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        call(ch)
    assert (info.value.reply_code, info.value.reply_text) == (
        404, "NOT_FOUND - no previously declared queue")
