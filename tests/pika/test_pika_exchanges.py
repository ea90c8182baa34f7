"""Exchanges: types and routing, declare/delete rules and their errors, exchange bindings."""

import pika
import pika.exceptions as pe
import pytest

from lockgate_harness import drain


def bind_queues(ch, exchange, bindings):
    """bindings: {suffix: [routing keys or header tables]} -> {suffix: queue name}."""
    queues = {}
    for suffix, keys in bindings.items():
        q = ch.queue_declare("", exclusive=True).method.queue
        for key in keys:
            if isinstance(key, dict):
                ch.queue_bind(q, exchange, arguments=key)
            else:
                ch.queue_bind(q, exchange, routing_key=key)
        queues[suffix] = q
    return queues


def test_default_exchange_routes_by_queue_name(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"hello")
    assert drain(ch, q) == [b"hello"]


def test_default_exchange_refuses_bind(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_bind(q, "", routing_key="x")
    assert info.value.reply_code == 403
    assert "ACCESS_REFUSED" in info.value.reply_text


@pytest.mark.parametrize("exchange,kind", [
    ("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
    ("amq.headers", "headers"), ("amq.match", "headers"),
])
def test_amq_exchanges_are_predeclared(ch, exchange, kind):
    ch.exchange_declare(exchange, passive=True)
    ch.exchange_declare(exchange, exchange_type=kind, durable=True)


def test_declaring_amq_prefix_is_refused_with_403(ch, name):
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare("amq." + name("x"), exchange_type="direct")
    assert info.value.reply_code == 403
    assert "contains reserved prefix 'amq.*'" in info.value.reply_text


def test_direct_routes_on_exact_key(ch, name):
    ex = name("direct")
    ch.exchange_declare(ex, exchange_type="direct", auto_delete=True)
    qs = bind_queues(ch, ex, {"a": ["red"], "b": ["green", "blue"], "c": ["red"]})
    for key in ("red", "green", "blue", "black", "Red"):
        ch.basic_publish(ex, key, key.encode())
    assert drain(ch, qs["a"]) == [b"red"]
    assert drain(ch, qs["b"]) == [b"green", b"blue"]
    assert drain(ch, qs["c"]) == [b"red"]


def test_fanout_copies_to_every_bound_queue(ch, name):
    ex = name("fanout")
    ch.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    qs = bind_queues(ch, ex, {"a": ["ignored"], "b": [""], "c": ["x"]})
    for i in range(5):
        ch.basic_publish(ex, f"key{i}", f"m{i}".encode())
    expected = [f"m{i}".encode() for i in range(5)]
    for q in qs.values():
        assert drain(ch, q) == expected


def test_topic_star_and_hash(ch, name):
    ex = name("topic")
    ch.exchange_declare(ex, exchange_type="topic", auto_delete=True)
    qs = bind_queues(ch, ex, {
        "orange": ["*.orange.*"],
        "rabbit_lazy": ["*.*.rabbit", "lazy.#"],
        "all": ["#"],
        "exact": ["a.b"],
        "mid_hash": ["a.#.z"],
    })
    keys = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox",
            "lazy.brown.fox", "lazy.pink.rabbit", "quick.brown.fox", "orange",
            "quick.orange.male.rabbit", "lazy.orange.male.rabbit", "lazy", "a.b", "a.z",
            "a.x.y.z", "a.b.c", ""]
    for key in keys:
        ch.basic_publish(ex, key, key.encode())
    got = {k: [b.decode() for b in drain(ch, q)] for k, q in qs.items()}
    assert got["orange"] == ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"]
    # A message matching two bindings of one queue arrives once.
    assert got["rabbit_lazy"] == ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox",
                                  "lazy.pink.rabbit", "lazy.orange.male.rabbit", "lazy"]
    assert got["all"] == keys
    assert got["exact"] == ["a.b"]
    assert got["mid_hash"] == ["a.z", "a.x.y.z"]


def test_headers_all_and_any(ch, name):
    ex = name("headers")
    ch.exchange_declare(ex, exchange_type="headers", auto_delete=True)
    qs = bind_queues(ch, ex, {
        "all": [{"x-match": "all", "format": "pdf", "type": "report"}],
        "any": [{"x-match": "any", "format": "zip", "type": "log"}],
        "default_all": [{"format": "pdf", "type": "report"}],
    })
    msgs = [
        ("pdf-report", {"format": "pdf", "type": "report"}),
        ("pdf-report-extra", {"format": "pdf", "type": "report", "size": 7}),
        ("pdf-only", {"format": "pdf"}),
        ("zip", {"format": "zip"}),
        ("log", {"type": "log", "other": True}),
        ("none", None),
    ]
    for body, headers in msgs:
        ch.basic_publish(ex, "ignored", body.encode(), pika.BasicProperties(headers=headers))
    got = {k: [b.decode() for b in drain(ch, q)] for k, q in qs.items()}
    assert got["all"] == ["pdf-report", "pdf-report-extra"]
    assert got["default_all"] == ["pdf-report", "pdf-report-extra"]
    assert got["any"] == ["zip", "log"]


def test_headers_match_on_value_type_and_ignores_x_headers(ch, name):
    ex = name("headers")
    ch.exchange_declare(ex, exchange_type="headers", auto_delete=True)
    qs = bind_queues(ch, ex, {"n": [{"x-match": "all", "n": 1}],
                              "present": [{"x-match": "any", "x-foo": "bar", "k": "v"}]})
    ch.basic_publish(ex, "", b"int", pika.BasicProperties(headers={"n": 1}))
    ch.basic_publish(ex, "", b"str", pika.BasicProperties(headers={"n": "1"}))
    ch.basic_publish(ex, "", b"xfoo", pika.BasicProperties(headers={"x-foo": "bar"}))
    ch.basic_publish(ex, "", b"k", pika.BasicProperties(headers={"k": "v"}))
    assert drain(ch, qs["n"]) == [b"int"]
    # x- keys in the binding do not take part in matching.
    assert drain(ch, qs["present"]) == [b"k"]


def test_passive_declare_of_missing_exchange_is_404(conn, name):
    ch = conn.channel()
    ex = name("missing")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare(ex, passive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no exchange '{ex}' in vhost '/'"
    assert conn.is_open


def test_redeclare_with_another_type_is_406_and_connection_survives(conn, name):
    ch = conn.channel()
    ex = name("ex")
    ch.exchange_declare(ex, exchange_type="direct", auto_delete=True)
    ch.exchange_declare(ex, exchange_type="direct", auto_delete=True)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{ex}' in vhost '/': "
        "received 'fanout' but current is 'direct'")
    assert ch.is_closed
    assert conn.is_open
    ch2 = conn.channel()
    ch2.exchange_declare(ex, passive=True)
    ch2.exchange_delete(ex)


def test_redeclare_with_other_durability_is_406(conn, name):
    ch = conn.channel()
    ex = name("ex")
    ch.exchange_declare(ex, exchange_type="topic", durable=False, auto_delete=True)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare(ex, exchange_type="topic", durable=True, auto_delete=True)
    assert info.value.reply_code == 406
    assert "inequivalent arg 'durable'" in info.value.reply_text
    conn.channel().exchange_delete(ex)


def test_durable_exchange_declare_and_delete(ch, name):
    ex = name("durable")
    ch.exchange_declare(ex, exchange_type="direct", durable=True)
    ch.exchange_declare(ex, passive=True)
    ch.exchange_delete(ex)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare(ex, passive=True)
    assert info.value.reply_code == 404


def test_unknown_exchange_type_is_refused(conn, name):
    ch = conn.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as info:
        ch.exchange_declare(name("ex"), exchange_type="no-such-type")
    # RabbitMQ treats an unknown type as a connection error: 503 COMMAND_INVALID.
    assert info.value.reply_code == 503
    assert info.value.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"


def test_auto_delete_exchange_goes_when_last_binding_goes(ch, name):
    ex = name("ad")
    ch.exchange_declare(ex, exchange_type="direct", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, routing_key="a")
    ch.queue_bind(q, ex, routing_key="b")
    ch.queue_unbind(q, ex, routing_key="a")
    ch.exchange_declare(ex, passive=True)
    ch.queue_unbind(q, ex, routing_key="b")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare(ex, passive=True)
    assert info.value.reply_code == 404


def test_delete_if_unused(conn, name):
    ch = conn.channel()
    ex = name("ex")
    ch.exchange_declare(ex, exchange_type="fanout")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_delete(ex, if_unused=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == f"PRECONDITION_FAILED - exchange '{ex}' in vhost '/' in use"
    ch = conn.channel()
    ch.queue_unbind(q, ex)
    ch.exchange_delete(ex, if_unused=True)
    with pytest.raises(pe.ChannelClosedByBroker):
        ch.exchange_declare(ex, passive=True)


def test_delete_of_missing_exchange_is_ok(ch, name):
    # RabbitMQ made exchange.delete idempotent.
    ch.exchange_delete(name("never-declared"))
    assert ch.is_open


def test_delete_removes_bindings(ch, name):
    ex = name("ex")
    ch.exchange_declare(ex, exchange_type="fanout")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex)
    ch.exchange_delete(ex)
    ch.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    ch.basic_publish(ex, "", b"after re-declare")
    assert drain(ch, q) == []


def test_internal_exchange_refuses_publish_but_routes_via_binding(conn, name):
    ch = conn.channel()
    front = name("front")
    internal = name("internal")
    ch.exchange_declare(front, exchange_type="fanout", auto_delete=True)
    ch.exchange_declare(internal, exchange_type="fanout", internal=True, auto_delete=True)
    ch.exchange_bind(destination=internal, source=front)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, internal)
    ch.basic_publish(front, "", b"via front")
    assert drain(ch, q) == [b"via front"]
    ch.basic_publish(internal, "", b"direct to internal")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.basic_get(q)
    assert info.value.reply_code == 403
    assert info.value.reply_text == (
        f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'")


def test_publish_to_missing_exchange_is_404(conn, name):
    ch = conn.channel()
    ex = name("nope")
    ch.basic_publish(ex, "k", b"x")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare("", exclusive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no exchange '{ex}' in vhost '/'"
    assert conn.is_open


def test_exchange_to_exchange_bindings(ch, name):
    src = name("src")
    mid = name("mid")
    ch.exchange_declare(src, exchange_type="topic", auto_delete=True)
    ch.exchange_declare(mid, exchange_type="direct", auto_delete=True)
    ch.exchange_bind(destination=mid, source=src, routing_key="orders.*")
    q_direct = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_direct, mid, routing_key="orders.placed")
    q_src = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_src, src, routing_key="#")
    ch.basic_publish(src, "orders.placed", b"1")
    ch.basic_publish(src, "orders.shipped", b"2")
    ch.basic_publish(src, "users.new", b"3")
    assert drain(ch, q_direct) == [b"1"]
    assert drain(ch, q_src) == [b"1", b"2", b"3"]
    ch.exchange_unbind(destination=mid, source=src, routing_key="orders.*")
    ch.basic_publish(src, "orders.placed", b"4")
    assert drain(ch, q_direct) == []
    assert drain(ch, q_src) == [b"4"]


def test_exchange_binding_cycle_delivers_once(ch, name):
    a = name("a")
    b = name("b")
    ch.exchange_declare(a, exchange_type="fanout", auto_delete=True)
    ch.exchange_declare(b, exchange_type="fanout", auto_delete=True)
    ch.exchange_bind(destination=b, source=a)
    ch.exchange_bind(destination=a, source=b)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, a)
    ch.queue_bind(q, b)
    ch.basic_publish(a, "", b"once")
    assert drain(ch, q) == [b"once"]


def test_exchange_bind_to_missing_exchange_is_404(conn, name):
    ch = conn.channel()
    src = name("src")
    ch.exchange_declare(src, exchange_type="fanout", auto_delete=True)
    missing = name("missing")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_bind(destination=missing, source=src)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no exchange '{missing}' in vhost '/'"
