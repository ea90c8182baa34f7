"""Message groups: x-group-header (docs/semantics/ordering.md). lockgate only: RabbitMQ has no
message groups."""

import pika
import pytest

from lockgate_harness import Collector, holding_consumer, pump, settle

pytestmark = pytest.mark.lockgate_only

GROUPS = {"x-group-header": "account"}


def publish(ch, q, body, key=None):
    headers = {"account": key} if key is not None else None
    ch.basic_publish("", q, body, pika.BasicProperties(headers=headers))


def keys(collector):
    return {m[1].headers["account"] for m in collector.messages if m[1].headers}


def test_each_key_sticks_to_one_consumer_and_keys_spread(connections, name):
    conns = [connections() for _ in range(3)]
    chans = [c.channel() for c in conns]
    q = name("groups")
    chans[0].queue_declare(q, arguments=GROUPS)
    got = [Collector(ack=True) for _ in conns]
    for chan, collector in zip(chans, got):
        chan.basic_consume(q, collector)
    for key in "abcdef":
        for n in range(4):
            publish(chans[0], q, f"{key}{n}".encode(), key)
    pump(conns, lambda: sum(len(c) for c in got) == 24, message="24 deliveries")
    seen = [keys(c) for c in got]
    assert [len(s) for s in seen] == [2, 2, 2]
    assert set().union(*seen) == set("abcdef")
    for collector in got:
        for key in keys(collector):
            mine = [b for (_, p, b) in collector.messages if p.headers["account"] == key]
            assert mine == [f"{key}{n}".encode() for n in range(4)]


def test_a_busy_group_does_not_block_other_groups(connections, name):
    slow_conn, fast_conn = connections(), connections()
    slow, fast = slow_conn.channel(), fast_conn.channel()
    q = name("groups-busy")
    slow.queue_declare(q, arguments=GROUPS)
    slow.basic_qos(prefetch_count=1)
    held = Collector(ack=False)
    slow.basic_consume(q, held)
    for n in range(3):
        publish(slow, q, f"x{n}".encode(), "x")
    pump(slow_conn, lambda: len(held) == 1, message="x0 held")
    got = Collector(ack=True)
    fast.basic_consume(q, got)
    publish(slow, q, b"y0", "y")
    publish(slow, q, b"plain")
    publish(slow, q, b"y1", "y")
    pump([slow_conn, fast_conn], lambda: len(got) == 3, message="y0, plain, y1 past x1, x2")
    assert got.bodies == [b"y0", b"plain", b"y1"]
    assert held.bodies == [b"x0"]


def test_a_lost_consumers_unacked_messages_go_first_to_the_groups_new_consumer(connections,
                                                                               name):
    lost, survivor = connections(), connections()
    lch, sch = lost.channel(), survivor.channel()
    q = name("groups-lost")
    lch.queue_declare(q, arguments=GROUPS)
    lch.basic_qos(prefetch_count=2)
    held = Collector(ack=False)
    lch.basic_consume(q, held)
    for n in range(3):
        publish(lch, q, f"x{n}".encode(), "x")
    pump(lost, lambda: len(held) == 2, message="x0, x1 held")
    got = Collector(ack=True)
    sch.basic_consume(q, got)
    publish(sch, q, b"x3", "x")
    settle(survivor)
    assert got.bodies == [], "x stays with its consumer while it has messages in flight"
    lost.close()
    pump(survivor, lambda: len(got) == 4, message="all of x to the survivor")
    assert got.bodies == [b"x0", b"x1", b"x2", b"x3"]
    assert [m[0].redelivered for m in got.messages] == [True, True, False, False]


def test_idle_groups_move_to_a_joining_consumer(connections, name):
    first_conn, second_conn = connections(), connections()
    first, second = first_conn.channel(), second_conn.channel()
    q = name("groups-join")
    first.queue_declare(q, arguments=GROUPS)
    a = Collector(ack=True)
    first.basic_consume(q, a)
    for key in "abcd":
        publish(first, q, f"{key}0".encode(), key)
    pump(first_conn, lambda: len(a) == 4, message="all groups on the only consumer")
    # A round trip on the same connection: the broker has processed the acks before it.
    first.queue_declare(q, passive=True)
    b = Collector(ack=True)
    second.basic_consume(q, b)
    for key in "abcd":
        for n in (1, 2):
            publish(first, q, f"{key}{n}".encode(), key)
    pump([first_conn, second_conn], lambda: len(a) + len(b) == 12, message="12 deliveries")
    later = {m[1].headers["account"] for m in a.messages[4:]}
    assert len(keys(b)) == 2 and len(later) == 2
    assert keys(b).isdisjoint(later)


def test_a_group_leaves_a_consumer_that_times_out(connections, name):
    # A consumer that hangs must not keep its groups: after x-consumer-timeout the group
    # moves to another consumer, which gets the timed-out message first.
    hung_conn, good_conn = connections(), connections()
    hung, good = hung_conn.channel(), good_conn.channel()
    q = name("groups-timeout")
    hung.queue_declare(q, arguments={**GROUPS, "x-consumer-timeout": 200})
    hung.basic_qos(prefetch_count=1)
    held = Collector(ack=False)
    hung.basic_consume(q, held)
    got = Collector(ack=True)
    good.basic_consume(q, got)
    publish(hung, q, b"x0", "x")
    publish(hung, q, b"x1", "x")
    pump([hung_conn, good_conn], lambda: len(got) == 2, message="x moved to the good consumer")
    assert got.bodies == [b"x0", b"x1"]
    assert got.messages[0][0].redelivered
    assert held.bodies == [b"x0"]


def test_per_key_order_holds_across_a_consumer_crash(broker, connections, name):
    # The consumer's process is killed (SIGKILL): its socket drops without connection.close.
    conn = connections()
    ch = conn.channel()
    q = name("groups-crash")
    ch.queue_declare(q, arguments=GROUPS)
    crashing = holding_consumer(broker, q, prefetch=2)
    try:
        for n in range(3):
            publish(ch, q, f"x{n}".encode(), "x")
        assert [crashing.stdout.readline().strip() for _ in range(2)] == ["x0", "x1"]
        got = Collector(ack=True)
        ch.basic_consume(q, got)
        publish(ch, q, b"x3", "x")
        settle(conn)
        assert got.bodies == [], "x stays with its consumer while it has messages in flight"
    finally:
        crashing.kill()
        crashing.wait()
    pump(conn, lambda: len(got) == 4, message="all of x to the surviving consumer")
    assert got.bodies == [b"x0", b"x1", b"x2", b"x3"]
    assert [m[0].redelivered for m in got.messages] == [True, True, False, False]
