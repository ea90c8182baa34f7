"""x-single-active-consumer (docs/semantics/ordering.md).

Except where marked `lockgate_only`, these pass against RabbitMQ 3.10 too."""

import pika
import pytest

from lockgate_harness import Collector, holding_consumer, pump, settle

SAC = {"x-single-active-consumer": True}


def test_only_the_first_consumer_gets_messages(conn, ch, name):
    q = name("sac")
    ch.queue_declare(q, arguments=SAC)
    first, second = Collector(ack=True), Collector(ack=True)
    ch.basic_consume(q, first)
    ch2 = conn.channel()
    ch2.basic_consume(q, second)
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())
    pump(conn, lambda: len(first) == 5, message="5 deliveries to the first consumer")
    settle(conn)
    assert second.bodies == []
    # Both consumers count (the waiting one too).
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2


def test_the_next_consumer_takes_over_when_the_active_one_cancels(conn, ch, name):
    q = name("sac-cancel")
    ch.queue_declare(q, arguments=SAC)
    first, second = Collector(ack=True), Collector(ack=True)
    tag = ch.basic_consume(q, first)
    ch2 = conn.channel()
    ch2.basic_consume(q, second)
    ch.basic_publish("", q, b"before1")
    ch.basic_publish("", q, b"before2")
    pump(conn, lambda: len(first) == 2, message="both to the active consumer")
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"after1")
    ch.basic_publish("", q, b"after2")
    pump(conn, lambda: len(second) == 2, message="deliveries to the second consumer")
    assert first.bodies == [b"before1", b"before2"]
    assert second.bodies == [b"after1", b"after2"]


def test_unacked_messages_of_a_lost_consumer_go_first_to_the_next(connections, name):
    producer = connections()
    pch = producer.channel()
    q = name("sac-lost")
    pch.queue_declare(q, arguments=SAC)
    lost = connections()
    lch = lost.channel()
    lch.basic_qos(prefetch_count=2)
    held = Collector(ack=False)
    lch.basic_consume(q, held)
    survivor = connections()
    sch = survivor.channel()
    got = Collector(ack=True)
    sch.basic_consume(q, got)
    for i in range(5):
        pch.basic_publish("", q, f"m{i}".encode())
    pump(lost, lambda: len(held) == 2, message="2 unacked on the active consumer")
    lost.close()
    pump(survivor, lambda: len(got) == 5, message="5 deliveries to the survivor")
    assert got.bodies == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [m[0].redelivered for m in got.messages] == [True, True, False, False, False]


def test_exclusive_consume_is_refused(conn, ch, name):
    q = name("sac-exclusive")
    ch.queue_declare(q, arguments=SAC)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.basic_consume(q, Collector(), exclusive=True)
    assert err.value.reply_code == 403
    assert "in exclusive use" in err.value.reply_text


@pytest.mark.lockgate_only
def test_a_cancelled_active_consumer_holds_the_next_until_its_messages_settle(conn, ch, name):
    # RabbitMQ activates the next consumer at once; lockgate waits until the cancelled one's
    # deliveries are acked or requeued, so a requeued message still goes first.
    q = name("sac-hold")
    ch.queue_declare(q, arguments=SAC)
    held = Collector(ack=False)
    tag = ch.basic_consume(q, held)
    ch2 = conn.channel()
    got = Collector(ack=True)
    ch2.basic_consume(q, got)
    ch.basic_publish("", q, b"m0")
    pump(conn, lambda: len(held) == 1, message="m0 to the active consumer")
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"m1")
    settle(conn)
    assert got.bodies == []
    ch.basic_nack(held.messages[0][0].delivery_tag, requeue=True)
    pump(conn, lambda: len(got) == 2, message="both to the next consumer")
    assert got.bodies == [b"m0", b"m1"]


@pytest.mark.lockgate_only
def test_a_timed_out_active_consumer_hands_over_to_the_next(connections, name):
    # x-consumer-timeout with the default action (requeue): the next consumer becomes active
    # and gets the timed-out message first (RabbitMQ closes the channel instead).
    hung_conn, good_conn = connections(), connections()
    hung, good = hung_conn.channel(), good_conn.channel()
    q = name("sac-timeout")
    hung.queue_declare(q, arguments={**SAC, "x-consumer-timeout": 200})
    hung.basic_qos(prefetch_count=1)
    held = Collector(ack=False)
    hung.basic_consume(q, held)
    got = Collector(ack=True)
    good.basic_consume(q, got)
    hung.basic_publish("", q, b"m0")
    hung.basic_publish("", q, b"m1")
    pump([hung_conn, good_conn], lambda: len(got) == 2, message="the next consumer took over")
    assert got.bodies == [b"m0", b"m1"]
    assert got.messages[0][0].redelivered
    assert held.bodies == [b"m0"]


def test_unacked_messages_of_a_crashed_consumer_go_first_to_the_next(broker, connections,
                                                                     name):
    # The active consumer's process is killed (SIGKILL): its socket drops without
    # connection.close.
    conn = connections()
    ch = conn.channel()
    q = name("sac-crash")
    ch.queue_declare(q, arguments=SAC)
    crashing = holding_consumer(broker, q, prefetch=2)
    try:
        got = Collector(ack=True)
        ch.basic_consume(q, got)
        for i in range(4):
            ch.basic_publish("", q, f"m{i}".encode())
        assert [crashing.stdout.readline().strip() for _ in range(2)] == ["m0", "m1"]
        settle(conn)
        assert got.bodies == []
    finally:
        crashing.kill()
        crashing.wait()
    pump(conn, lambda: len(got) == 4, message="all to the next consumer")
    assert got.bodies == [b"m0", b"m1", b"m2", b"m3"]
    assert [m[0].redelivered for m in got.messages] == [True, True, False, False]
