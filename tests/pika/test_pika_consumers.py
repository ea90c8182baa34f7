"""Consumers: load balancing, fan-out, prefetch, consume flags, cancels, get, acks, redelivery."""

import socket
import struct

import pika
import pika.exceptions as pe
import pytest

from lockgate_harness import Collector, drain, eventually, pump, queue_count, settle


def publish_n(ch, exchange, key, n, prefix="m"):
    for i in range(n):
        ch.basic_publish(exchange, key, f"{prefix}{i}".encode())


def test_load_balancing_round_robin(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    a, b = Collector(ack=True), Collector(ack=True)
    ch_a, ch_b = conn.channel(), conn.channel()
    ch_a.basic_consume(q, a)
    ch_b.basic_consume(q, b)
    publish_n(ch, "", q, 10)
    pump(conn, lambda: len(a) + len(b) == 10)
    assert a.bodies == [b"m0", b"m2", b"m4", b"m6", b"m8"]
    assert b.bodies == [b"m1", b"m3", b"m5", b"m7", b"m9"]


def test_load_balancing_within_prefetch(connections):
    pub = connections().channel()
    q = pub.queue_declare("", auto_delete=True).method.queue
    conn_a, conn_b = connections(), connections()
    ch_a, ch_b = conn_a.channel(), conn_b.channel()
    a, b = Collector(), Collector()
    for ch, col in ((ch_a, a), (ch_b, b)):
        ch.basic_qos(prefetch_count=5)
        ch.basic_consume(q, col)
    publish_n(pub, "", q, 20)
    pump([conn_a, conn_b], lambda: len(a) == 5 and len(b) == 5)
    assert queue_count(pub.connection, q) == 10
    settle([conn_a, conn_b])
    assert (len(a), len(b)) == (5, 5)
    # Acking frees credit: the rest flows, and nothing is delivered twice.
    for ch, col in ((ch_a, a), (ch_b, b)):
        ch.basic_ack(col.messages[-1][0].delivery_tag, multiple=True)
    col_acked = {id(a): 5, id(b): 5}

    def ack_new():
        for ch, col in ((ch_a, a), (ch_b, b)):
            done = col_acked[id(col)]
            if len(col) > done:
                ch.basic_ack(col.messages[-1][0].delivery_tag, multiple=True)
                col_acked[id(col)] = len(col)
        return len(a) + len(b) == 20

    pump([conn_a, conn_b], ack_new)
    got = a.bodies + b.bodies
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(20))
    assert len(a) >= 5 and len(b) >= 5


def test_fan_out_and_load_balancing_at_once(conn, name):
    """Three services each get every message; the two workers of a service share them."""
    ex = name("orders")
    pub = conn.channel()
    pub.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    services = {}
    for svc in ("billing", "shipping", "audit"):
        q = pub.queue_declare(name(svc), exclusive=True).method.queue
        pub.queue_bind(q, ex)
        workers = []
        for _ in range(2):
            ch = conn.channel()
            # Each worker may hold half of the messages: the prefetch forces a 15/15 split.
            ch.basic_qos(prefetch_count=15)
            col = Collector()
            ch.basic_consume(q, col)
            workers.append((ch, col))
        services[q] = workers
    publish_n(pub, ex, "order.placed", 30, prefix="order-")
    expected = sorted(f"order-{i}".encode() for i in range(30))
    pump(conn, lambda: all(sum(len(c) for _, c in ws) == 30 for ws in services.values()))
    for q, ((ch1, w1), (ch2, w2)) in services.items():
        assert sorted(w1.bodies + w2.bodies) == expected, q
        assert len(w1) == 15 and len(w2) == 15, q
        for ch, w in ((ch1, w1), (ch2, w2)):
            ch.basic_ack(w.messages[-1][0].delivery_tag, multiple=True)
    for q in services:
        assert queue_count(conn, q) == 0
    settle(conn)
    assert all(len(c) == 15 for ws in services.values() for _, c in ws)


def test_prefetch_is_never_exceeded(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 10)
    cons_ch = conn.channel()
    cons_ch.basic_qos(prefetch_count=3)
    col = Collector()
    cons_ch.basic_consume(q, col)
    pump(conn, lambda: len(col) == 3)
    assert eventually(lambda: queue_count(conn, q) == 7)
    settle(conn)
    assert len(col) == 3
    cons_ch.basic_ack(col.messages[0][0].delivery_tag)
    pump(conn, lambda: len(col) == 4)
    settle(conn)
    assert len(col) == 4
    cons_ch.basic_ack(col.messages[-1][0].delivery_tag, multiple=True)
    pump(conn, lambda: len(col) == 7)
    settle(conn)
    assert len(col) == 7
    assert col.bodies == [f"m{i}".encode() for i in range(7)]


def test_global_prefetch_is_shared_by_the_channel(conn):
    ch = conn.channel()
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q1, 5)
    publish_n(ch, "", q2, 5)
    cons = conn.channel()
    cons.basic_qos(prefetch_count=2, global_qos=True)
    col = Collector()
    cons.basic_consume(q1, col)
    cons.basic_consume(q2, col)
    pump(conn, lambda: len(col) == 2)
    settle(conn)
    assert len(col) == 2


def test_no_ack_consumer_takes_messages_for_good(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 5)
    cons = conn.channel()
    col = Collector()
    cons.basic_consume(q, col, auto_ack=True)
    pump(conn, lambda: len(col) == 5)
    cons.close()
    assert queue_count(conn, q) == 0
    assert all(not m.redelivered for m, _, _ in col.messages)


def test_client_consumer_tag_is_used(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    col = Collector(ack=True)
    assert ch.basic_consume(q, col, consumer_tag="my-tag") == "my-tag"
    pump(ch.connection, lambda: len(col) == 1)
    assert col.messages[0][0].consumer_tag == "my-tag"


def test_reusing_a_consumer_tag_is_530(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, lambda *a: None, consumer_tag="dup")
    # pika refuses a duplicate tag itself, so go below its BlockingChannel bookkeeping.
    ch._impl._send_method(pika.spec.Basic.Consume(queue=q, consumer_tag="dup"))
    with pytest.raises(pe.ConnectionClosedByBroker) as info:
        pump(conn, lambda: False)
    assert info.value.reply_code == 530
    assert info.value.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"


def test_exclusive_consumer(connections):
    ch = connections().channel()
    q = ch.queue_declare("", exclusive=False, auto_delete=True).method.queue
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = connections()
    och = other.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        och.basic_consume(q, lambda *a: None)
    assert info.value.reply_code == 403
    assert info.value.reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"
    assert other.is_open


def test_exclusive_consume_refused_when_queue_has_consumers(connections):
    ch = connections().channel()
    q = ch.queue_declare("", auto_delete=True).method.queue
    ch.basic_consume(q, lambda *a: None)
    och = connections().channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        och.basic_consume(q, lambda *a: None, exclusive=True)
    assert info.value.reply_code == 403
    assert info.value.reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


def test_consume_from_missing_queue_is_404(conn, name):
    ch = conn.channel()
    q = name("missing")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.basic_consume(q, lambda *a: None)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"


def test_cancel_stops_deliveries_and_keeps_unacked(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 2)
    cons = conn.channel()
    cons.basic_qos(prefetch_count=1)
    col = Collector()
    tag = cons.basic_consume(q, col)
    pump(conn, lambda: len(col) == 1)
    cons.basic_cancel(tag)
    assert queue_count(conn, q) == 1
    # The unacked delivery can still be acked after the cancel.
    cons.basic_ack(col.messages[0][0].delivery_tag)
    publish_n(ch, "", q, 1, prefix="late")
    settle(conn)
    assert len(col) == 1
    assert eventually(lambda: queue_count(conn, q) == 2)
    assert cons.is_open


def test_broker_cancels_consumer_when_queue_deleted(conn, name):
    q = name("doomed")
    admin = conn.channel()
    admin.queue_declare(q)
    cons = conn.channel()
    cancelled = []
    cons.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = cons.basic_consume(q, lambda *a: None)
    admin.queue_delete(q)
    pump(conn, lambda: cancelled)
    assert cancelled[0].consumer_tag == tag
    assert cons.is_open


def test_mandatory_unroutable_is_returned_312(conn, name):
    ch = conn.channel()
    ex = name("lonely")
    ch.exchange_declare(ex, exchange_type="direct", auto_delete=True)
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    ch.basic_publish(ex, "nowhere", b"back to sender", pika.BasicProperties(message_id="r1"),
                     mandatory=True)
    # Not mandatory: dropped silently.
    ch.basic_publish(ex, "nowhere", b"dropped")
    ch.basic_publish("", name("no-queue"), b"to missing queue", mandatory=True)
    pump(conn, lambda: len(returned) == 2)
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == (ex, "nowhere")
    assert body == b"back to sender"
    assert props.message_id == "r1"
    assert returned[1][2] == b"to missing queue"
    settle(conn)
    assert len(returned) == 2


def test_mandatory_routed_is_not_returned(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish("", q, b"x", mandatory=True)
    assert drain(ch, q) == [b"x"]
    settle(ch.connection)
    assert returned == []


def test_mandatory_unroutable_with_confirms_raises_unroutable(ch, name):
    ex = name("lonely")
    ch.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    ch.confirm_delivery()
    with pytest.raises(pe.UnroutableError):
        ch.basic_publish(ex, "", b"x", mandatory=True)


def test_get_and_get_empty_with_counts(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    method, props, body = ch.basic_get(q)
    assert (method, props, body) == (None, None, None)
    publish_n(ch, "", q, 3)
    eventually(lambda: queue_count(ch.connection, q) == 3)
    for i, remaining in enumerate((2, 1, 0)):
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == f"m{i}".encode()
        assert method.message_count == remaining
        assert method.redelivered is False
        assert method.exchange == "" and method.routing_key == q
    assert ch.basic_get(q)[0] is None


def test_ack_multiple(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 5)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(5)]
    assert tags == [1, 2, 3, 4, 5]
    ch.basic_ack(3, multiple=True)
    ch.close()
    ch = conn.channel()
    assert drain(ch, q) == [b"m3", b"m4"]


def test_ack_zero_multiple_acks_everything(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 4)
    for _ in range(4):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert queue_count(conn, q) == 0


def test_nack_multiple_requeue_keeps_original_order(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 6)
    for _ in range(5):
        ch.basic_get(q)
    ch.basic_nack(4, multiple=True, requeue=True)
    ch.basic_ack(5)
    got = []
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            break
        got.append((body, method.redelivered))
    assert got == [(b"m0", True), (b"m1", True), (b"m2", True), (b"m3", True), (b"m5", False)]


def test_nack_without_requeue_drops(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 3)
    for _ in range(2):
        ch.basic_get(q)
    ch.basic_nack(2, multiple=True, requeue=False)
    assert drain(ch, q) == [b"m2"]


def test_reject_requeue_and_drop(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 2)
    m0 = ch.basic_get(q)[0]
    ch.basic_reject(m0.delivery_tag, requeue=True)
    again, _, body = ch.basic_get(q)
    assert (body, again.redelivered) == (b"m0", True)
    ch.basic_reject(again.delivery_tag, requeue=False)
    assert drain(ch, q) == [b"m1"]


def test_consumer_nack_requeue_redelivers_to_consumer(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"retry me")
    seen = []

    def on_message(c, method, props, body):
        seen.append(method.redelivered)
        if method.redelivered:
            c.basic_ack(method.delivery_tag)
        else:
            c.basic_nack(method.delivery_tag, requeue=True)

    ch.basic_consume(q, on_message)
    pump(conn, lambda: len(seen) == 2)
    assert seen == [False, True]
    assert queue_count(conn, q) == 0


@pytest.mark.parametrize("op", ["ack", "nack", "reject", "double_ack"])
def test_unknown_delivery_tag_is_406_on_the_channel_only(conn, op):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    tag = 42
    if op == "ack":
        ch.basic_ack(tag)
    elif op == "nack":
        ch.basic_nack(tag)
    elif op == "reject":
        ch.basic_reject(tag)
    else:
        ch.basic_publish("", q, b"x")
        method = eventually(lambda: ch.basic_get(q)[0])
        tag = method.delivery_tag
        ch.basic_ack(tag)
        ch.basic_ack(tag)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare("", exclusive=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {tag}"
    assert conn.is_open
    conn.channel().queue_declare("", exclusive=True)


def test_recover_requeues_unacked(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 3)
    col = Collector()
    ch.basic_consume(q, col)
    pump(conn, lambda: len(col) == 3)
    ch.basic_recover(requeue=True)
    pump(conn, lambda: len(col) == 6)
    assert col.bodies == [b"m0", b"m1", b"m2", b"m0", b"m1", b"m2"]
    assert [m.redelivered for m, _, _ in col.messages] == [False] * 3 + [True] * 3
    # The old delivery tags are void; the new ones are acked.
    ch.basic_ack(col.messages[-1][0].delivery_tag, multiple=True)
    assert queue_count(conn, q) == 0


def test_channel_close_requeues_in_original_order(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 10)
    cons = conn.channel()
    cons.basic_qos(prefetch_count=5)
    col = Collector()
    cons.basic_consume(q, col)
    pump(conn, lambda: len(col) == 5)
    cons.basic_ack(col.messages[1][0].delivery_tag)  # m1 is done, m5 takes its credit
    pump(conn, lambda: len(col) == 6)
    cons.close()
    got = []
    ch2 = conn.channel()
    for _ in range(9):
        method, _, body = eventually(lambda: (r := ch2.basic_get(q, auto_ack=True))[0] and r)
        got.append((body.decode(), method.redelivered))
    assert got == [("m0", True), ("m2", True), ("m3", True), ("m4", True), ("m5", True)] + [
        (f"m{i}", False) for i in range(6, 10)]


def kill_socket(conn: pika.BlockingConnection) -> None:
    """Drop the TCP connection under pika, without an AMQP connection.close."""
    sock = conn._impl._transport._sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("how", ["connection.close", "socket killed"])
def test_disconnect_requeues_in_original_order(broker, how):
    admin = broker.connect()
    victim = broker.connect()
    try:
        ch = admin.channel()
        q = ch.queue_declare("", auto_delete=False).method.queue
        publish_n(ch, "", q, 6)
        vch = victim.channel()
        vch.basic_qos(prefetch_count=4)
        col = Collector()
        vch.basic_consume(q, col)
        pump(victim, lambda: len(col) == 4)
        if how == "connection.close":
            victim.close()
        else:
            kill_socket(victim)
        eventually(lambda: queue_count(admin, q) == 6, message="unacked messages requeued")
        got = []
        for _ in range(6):
            method, _, body = ch.basic_get(q, auto_ack=True)
            got.append((body.decode(), method.redelivered))
        assert got == [("m0", True), ("m1", True), ("m2", True), ("m3", True),
                       ("m4", False), ("m5", False)]
        ch.queue_delete(q)
    finally:
        admin.close()


def test_publisher_confirms(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(500):
        ch.basic_publish("", q, f"c{i}".encode())
    assert queue_count(ch.connection, q) == 500
    assert drain(ch, q) == [f"c{i}".encode() for i in range(500)]


def test_publisher_confirms_multiple_acks_cover_every_tag(conn):
    """Async channel: many publishes in flight, every delivery tag gets acked exactly once."""
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    acked = set()
    nacked = []
    impl = ch._impl

    def on_confirm(frame):
        m = frame.method
        if isinstance(m, pika.spec.Basic.Nack):
            nacked.append(m.delivery_tag)
            return
        if m.multiple:
            acked.update(t for t in range(1, m.delivery_tag + 1))
        else:
            assert m.delivery_tag not in acked
            acked.add(m.delivery_tag)

    selected = []
    impl.confirm_delivery(on_confirm, callback=lambda _f: selected.append(True))
    pump(conn, lambda: selected)
    for i in range(2000):
        impl.basic_publish("", q, f"{i}".encode())
    pump(conn, lambda: len(acked) == 2000, timeout=15)
    assert acked == set(range(1, 2001))
    assert nacked == []


def test_transactions_commit_and_rollback(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.tx_select()
    publish_n(ch, "", q, 3, prefix="rolled-back-")
    ch.tx_rollback()
    assert queue_count(conn, q) == 0
    publish_n(ch, "", q, 2, prefix="committed-")
    assert queue_count(conn, q) == 0
    ch.tx_commit()
    assert queue_count(conn, q) == 2
    reader = conn.channel()
    assert drain(reader, q) == [b"committed-0", b"committed-1"]


def test_transactional_acks(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, "", q, 2)
    ch.tx_select()
    first = ch.basic_get(q)[0]
    ch.basic_ack(first.delivery_tag)
    ch.tx_rollback()
    second = ch.basic_get(q)[0]
    ch.basic_ack(second.delivery_tag)
    ch.tx_commit()
    ch.close()
    # The rolled-back ack never happened: m0 comes back; m1's ack was committed.
    reader = conn.channel()
    method, _, body = reader.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"m0", True)
    assert reader.basic_get(q)[0] is None


def test_tx_commit_without_select_is_406(conn):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.tx_commit()
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - channel is not transactional"


def test_confirm_on_tx_channel_is_406(conn):
    ch = conn.channel()
    ch.tx_select()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.confirm_delivery()
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - cannot switch from tx to confirm mode"


def test_channel_flow(conn):
    ch = conn.channel()
    assert ch.flow(True) is True
    q = ch.queue_declare("", exclusive=True).method.queue
    col = Collector(ack=True)
    ch.basic_consume(q, col)
    try:
        active = ch.flow(False)
    except pe.ConnectionClosedByBroker as exc:
        # RabbitMQ does not implement flow(active=false) from a client.
        assert exc.reply_code == 540
        assert exc.reply_text == "NOT_IMPLEMENTED - active=false"
        return
    # Otherwise the server must honour it: no deliveries until flow(True).
    assert active is False
    ch.basic_publish("", q, b"held")
    settle(conn)
    assert len(col) == 0
    assert ch.flow(True) is True
    pump(conn, lambda: len(col) == 1)


def test_consumer_priority_must_be_an_integer(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.basic_consume(q, lambda *a: None, arguments={"x-priority": "high"})
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': "
        '"expected integer, got longstr"')


def test_prefetch_size_is_not_implemented_540(conn):
    ch = conn.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as info:
        ch.basic_qos(prefetch_size=10)
    assert info.value.reply_code == 540
    assert info.value.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (10)"


def test_recover_without_requeue_is_not_implemented_540(conn):
    ch = conn.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as info:
        ch.basic_recover(requeue=False)
    assert info.value.reply_code == 540
    assert info.value.reply_text == "NOT_IMPLEMENTED - requeue=false"
