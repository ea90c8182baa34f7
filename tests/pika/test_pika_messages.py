"""Message content: every property and header field type, large and empty bodies.

pika sends the table types S, x, t, I, l, D, T, F, A and V; the raw-socket tests cover the
other RabbitMQ tags (b, B, s, u, i, f, d) byte for byte."""

import datetime
import decimal

import pika
import pika.exceptions as pe
import pytest

from lockgate_harness import Collector, drain, pump

HEADERS = {
    "str": "plain text",
    "unicode": "h\u00e9llo \u2713",
    "empty": "",
    "int": 7,
    "negative": -5,
    "int64": 2 ** 40,
    "neg_int64": -(2 ** 40),
    "true": True,
    "false": False,
    "void": None,
    "decimal": decimal.Decimal("3.14"),
    "neg_decimal": decimal.Decimal("-12.345"),
    "timestamp": datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "bytes": b"\x00\x01\xfe\xff",
    "array": [1, "two", decimal.Decimal("3.0"), True, None, [4, [5]], {"k": "v"}],
    "empty_array": [],
    "table": {"a": {"b": {"c": [1, 2, {"d": "deep"}]}}},
    "empty_table": {},
}


def full_properties(user_id: str) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=HEADERS,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="amq.gen-reply",
        expiration="600000",
        message_id="msg-1",
        timestamp=1700000000,
        type="order.placed",
        user_id=user_id,
        app_id="checkout",
        cluster_id="c1",
    )


def assert_same_properties(got: pika.BasicProperties, sent: pika.BasicProperties):
    for field in ("content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id", "cluster_id"):
        assert getattr(got, field) == getattr(sent, field), field
    assert got.headers == sent.headers


def test_every_property_and_header_type_arrives_unchanged_via_get(broker, ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    props = full_properties(broker.user)
    ch.basic_publish("", q, b"{}", props)
    method, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b"{}"
    assert_same_properties(got, props)


def test_every_property_and_header_type_arrives_unchanged_via_consume(broker, conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    props = full_properties(broker.user)
    col = Collector(ack=True)
    ch.basic_consume(q, col)
    ch.basic_publish("", q, b"payload", props)
    pump(conn, lambda: len(col) == 1)
    _, got, body = col.messages[0]
    assert body == b"payload"
    assert_same_properties(got, props)


def test_no_properties_arrive_as_none(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"bare")
    _, got, _ = ch.basic_get(q, auto_ack=True)
    for field in ("content_type", "headers", "delivery_mode", "priority", "message_id",
                  "timestamp", "user_id"):
        assert getattr(got, field) is None, field


def test_wrong_user_id_is_406(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare("", exclusive=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was "
        "'guest'")


@pytest.mark.parametrize("expiration,why", [
    ("abc", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("5s", '{leftover_string,"s"}'),
    ("315360000001", "{value_too_large,315360000001}"),
])
def test_invalid_expiration_is_406_and_nothing_is_queued(conn, expiration, why):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=False, auto_delete=False).method.queue
    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare("", exclusive=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - invalid expiration '{expiration}': {why}")
    ch = conn.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.confirm_delivery()
    ch.basic_publish("", q, b"y", pika.BasicProperties(expiration="60000"))
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ch.queue_delete(q)


@pytest.mark.parametrize("expiration", ["4294967296", "5184000000", "315360000000"])
def test_expirations_past_2_to_the_32_ms_up_to_ten_years_are_accepted(conn, expiration):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    # Confirmed: RabbitMQ counts a message only once its queue has taken it.
    ch.confirm_delivery()
    ch.basic_publish("", q, b"later", pika.BasicProperties(expiration=expiration))
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert (body, props.expiration) == (b"later", expiration)


@pytest.mark.parametrize("size", [0, 1, 131064, 131065, 1_000_003, 5 * 1024 * 1024])
def test_bodies_around_and_above_frame_max_arrive_intact(conn, size):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    body = bytes((i * 7 + 3) % 251 for i in range(size))
    ch.basic_publish("", q, body)
    col = Collector(ack=True)
    ch.basic_consume(q, col)
    pump(conn, lambda: len(col) == 1, timeout=15)
    assert col.bodies[0] == body


def test_many_messages_arrive_in_order(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(2000):
        ch.basic_publish("", q, i.to_bytes(4, "big"))
    col = Collector()
    ch.basic_consume(q, col, auto_ack=True)
    pump(ch.connection, lambda: len(col) == 2000, timeout=15)
    assert [int.from_bytes(b, "big") for b in col.bodies] == list(range(2000))
    assert drain(ch, q) == []
