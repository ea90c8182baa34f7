"""Sender-selected distribution (https://www.rabbitmq.com/sender-selected.html): every long
string in the `CC` and `BCC` array headers is a routing key too, each queue gets one copy, and
`BCC` is removed from the message before anyone receives it. Except where marked
`lockgate_only`, these pass against RabbitMQ 3.10 too."""

import pika
import pytest

from lockgate_harness import drain


def bound_queues(ch, name, exchange, *keys):
    """A queue per key, bound to `exchange` with that key; returns {key: queue}."""
    queues = {}
    for key in keys:
        queues[key] = name(key)
        ch.queue_declare(queues[key])
        ch.queue_bind(queues[key], exchange, key)
    return queues


def test_cc_and_bcc_keys_route_and_bcc_is_never_delivered(ch, name):
    x = name("direct")
    ch.exchange_declare(x, "direct")
    q = bound_queues(ch, name, x, "main", "audit", "secret", "other")
    headers = {"CC": ["audit", 7, "main"], "BCC": ["secret"], "app": "kept"}
    ch.confirm_delivery()
    ch.basic_publish(x, "main", b"m", pika.BasicProperties(headers=headers), mandatory=True)
    for key in ("main", "audit", "secret"):
        # One copy each, although "main" is both the routing key and a CC key.
        got = [ch.basic_get(q[key], auto_ack=True) for _ in range(2)]
        assert got[1][0] is None, key
        method, props, body = got[0]
        assert body == b"m"
        assert method.routing_key == "main"
        assert props.headers == {"CC": ["audit", 7, "main"], "app": "kept"}
    assert drain(ch, q["other"]) == []


def test_cc_keys_alone_make_a_message_routed(ch, name):
    x = name("topic")
    ch.exchange_declare(x, "topic")
    q = bound_queues(ch, name, x, "a.*", "b.#")
    ch.confirm_delivery()
    # The routing key matches nothing; the BCC key does, so it is not returned.
    ch.basic_publish(x, "none", b"t", pika.BasicProperties(headers={"BCC": ["b.x.y", "a.z"]}),
                     mandatory=True)
    for key in ("a.*", "b.#"):
        _, props, body = ch.basic_get(q[key], auto_ack=True)
        assert body == b"t"
        assert props.headers == {}


def test_the_default_exchange_routes_cc_keys_to_queues_by_name(ch, name):
    first, second = name("first"), name("second")
    ch.queue_declare(first)
    ch.queue_declare(second)
    ch.basic_publish("", first, b"d", pika.BasicProperties(headers={"CC": [second, first]}))
    assert drain(ch, first) == [b"d"]
    assert drain(ch, second) == [b"d"]


def test_a_cc_or_bcc_header_that_is_not_an_array_is_406(conn, name):
    q = name("bad-cc")
    conn.channel().queue_declare(q)
    conn.channel().queue_bind(q, "amq.direct", q)
    # Through an exchange's bindings, and to the queue the default exchange names.
    for exchange, header in (("amq.direct", "CC"), ("", "BCC")):
        ch = conn.channel()
        ch.basic_publish(exchange, q, b"bad", pika.BasicProperties(headers={header: q}))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(q, passive=True)
        assert e.value.reply_code == 406
        assert e.value.reply_text == (
            "PRECONDITION_FAILED - invalid message: "
            f'{{unacceptable_type_in_header,"{header}",longstr}}'
        )
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 0


@pytest.mark.lockgate_only  # the delayed exchange is a plugin the test node does not run
@pytest.mark.parametrize("tx", [False, True], ids=["plain", "transaction"])
def test_a_delayed_publish_with_a_cc_that_is_not_an_array_is_406_at_basic_publish(
        conn, name, tx):
    x = name("delayed-cc")
    admin = conn.channel()
    admin.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    q = name("delayed-cc-q")
    admin.queue_declare(q)
    admin.queue_bind(q, x, "k")
    ch = conn.channel()
    if tx:
        ch.tx_select()
    headers = {"x-delay": 60_000, "CC": q}
    ch.basic_publish(x, "k", b"bad", pika.BasicProperties(headers=headers))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, 'PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"CC",longstr}')
    admin.queue_delete(q)
    admin.exchange_delete(x)
