"""x-consistent-hash exchanges (RabbitMQ's rabbitmq_consistent_hash_exchange plugin): the binding
key is a weight, a message goes to one queue chosen by a hash of its routing key (or of the
header named by `hash-header`, or the property named by `hash-property`)."""

import uuid

import pika
import pika.exceptions as pe
import pytest

from lockgate_harness import drain, eventually, queue_count


def ring(ch, name, weights, arguments=None):
    """Declares a consistent-hash exchange and binds one exclusive queue per weight."""
    ex = name("chx")
    ch.exchange_declare(ex, exchange_type="x-consistent-hash", auto_delete=True,
                        arguments=arguments)
    queues = []
    for weight in weights:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, ex, routing_key=str(weight))
        queues.append(q)
    return ex, queues


def where(ch, queues):
    """{body: queue} for every message in `queues` (drains them)."""
    found = {}
    for q in queues:
        for body in drain(ch, q):
            found.setdefault(body, set()).add(q)
    return found


def test_a_key_always_lands_in_the_same_queue(ch, name):
    ex, queues = ring(ch, name, [1, 1, 1])
    keys = [f"order-{i}" for i in range(60)]
    for _ in range(4):
        for key in keys:
            ch.basic_publish(ex, key, key.encode())
    placed = {}
    for q in queues:
        for body in drain(ch, q):
            placed.setdefault(body.decode(), []).append(q)
    assert sorted(placed) == sorted(keys)
    for key, qs in placed.items():
        assert len(qs) == 4 and len(set(qs)) == 1, f"{key} went to {qs}"
    # The keys spread over the ring: every queue got some of them.
    assert {q for qs in placed.values() for q in qs} == set(queues)


def test_weights_shape_the_split(conn, ch, name):
    ex, (light, heavy) = ring(ch, name, [1, 3])
    total = 2000
    for i in range(total):
        ch.basic_publish(ex, uuid.uuid4().hex, b"x")
    eventually(lambda: queue_count(conn, light) + queue_count(conn, heavy) == total)
    share = queue_count(conn, heavy) / total
    # Expected 0.75; loose bounds.
    assert 0.6 < share < 0.9, share


def test_hash_header_routes_by_that_header(ch, name):
    ex, queues = ring(ch, name, [1, 1, 1], arguments={"hash-header": "customer"})
    customers = [f"c{i}" for i in range(12)]
    for n in range(5):
        for c in customers:
            # A different routing key every time: only the header keeps a customer together.
            ch.basic_publish(ex, uuid.uuid4().hex, f"{c}:{n}".encode(),
                             pika.BasicProperties(headers={"customer": c}))
    per_customer = {}
    for q in queues:
        for body in drain(ch, q):
            per_customer.setdefault(body.decode().split(":")[0], set()).add(q)
    assert sorted(per_customer) == sorted(customers)
    for c, qs in per_customer.items():
        assert len(qs) == 1, f"{c} spread over {qs}"
    assert len({q for qs in per_customer.values() for q in qs}) > 1


def test_hash_property_message_id(ch, name):
    ex, queues = ring(ch, name, [1, 1, 1], arguments={"hash-property": "message_id"})
    ids = [f"id-{i}" for i in range(12)]
    for n in range(4):
        for mid in ids:
            ch.basic_publish(ex, uuid.uuid4().hex, f"{mid}:{n}".encode(),
                             pika.BasicProperties(message_id=mid))
    per_id = {}
    for q in queues:
        for body in drain(ch, q):
            per_id.setdefault(body.decode().split(":")[0], set()).add(q)
    assert sorted(per_id) == sorted(ids)
    assert all(len(qs) == 1 for qs in per_id.values()), per_id


def test_adding_a_queue_moves_only_some_keys(ch, name):
    ex, queues = ring(ch, name, [1, 1, 1])
    keys = [f"k{i}" for i in range(300)]
    for key in keys:
        ch.basic_publish(ex, key, key.encode())
    before = {b.decode(): qs.pop() for b, qs in where(ch, queues).items()}
    extra = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(extra, ex, routing_key="1")
    for key in keys:
        ch.basic_publish(ex, key, key.encode())
    after = {b.decode(): qs.pop() for b, qs in where(ch, queues + [extra]).items()}
    moved = [k for k in keys if after[k] != before[k]]
    # About a quarter moves, all of it to the new queue.
    assert all(after[k] == extra for k in moved)
    assert 0.1 * len(keys) < len(moved) < 0.45 * len(keys)


def test_keys_land_where_rabbitmq_puts_them(ch, name):
    # Buckets as the plugin computes them (erlang:phash2 + jump hash seeded exs1024): three
    # bindings of weight 1 own buckets 0, 1, 2 in binding order.
    ex, queues = ring(ch, name, [1, 1, 1])
    expected = {"0": 1, "7919": 0, "15838": 2, "23757": 1, "31676": 0, "47514": 2,
                "abc": 1, "order-1": 0}
    for key in expected:
        ch.basic_publish(ex, key, key.encode())
    placed = {b.decode(): queues.index(next(iter(qs))) for b, qs in where(ch, queues).items()}
    assert placed == expected


def test_hash_header_buckets_match_rabbitmq(ch, name):
    ex, queues = ring(ch, name, [1, 1, 1, 1, 1], arguments={"hash-header": "k"})
    expected = {"0": 0, "1": 2, "2": 2, "3": 4}
    for value in expected:
        ch.basic_publish(ex, "", value.encode(), pika.BasicProperties(headers={"k": value}))
    placed = {b.decode(): queues.index(next(iter(qs))) for b, qs in where(ch, queues).items()}
    assert placed == expected


@pytest.mark.parametrize("key", ["abc", "0", "-3"])
def test_binding_key_must_be_a_positive_integer(ch, name, key):
    ex = name("chx")
    ch.exchange_declare(ex, exchange_type="x-consistent-hash", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_bind(q, ex, routing_key=key)
    assert info.value.reply_code == 406


def test_hash_header_and_property_are_exclusive(ch, name):
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.exchange_declare(name("chx"), exchange_type="x-consistent-hash",
                            arguments={"hash-header": "a", "hash-property": "message_id"})
    assert info.value.reply_code == 406
