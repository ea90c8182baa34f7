"""Consumer priorities: `x-priority` on basic.consume (docs/semantics/ordering.md).

A consumer gets messages before the lower-priority consumers of its queue whenever it can take
them (prefetch credit left); consumers of one priority share round-robin. Every test waits for
conditions, never for time, and asserts outcomes that do not depend on timing: the consumers
are registered (consume-ok) before anything is published, and the prefetch limits decide who
can take what. These pass against RabbitMQ 3.10 too."""

import pika
import pytest

from lockgate_harness import Collector, pump


def consumer(conn, q, prefetch=0, priority=None, ack=True, auto_ack=False):
    """A consumer on a channel of its own: (channel, collector)."""
    ch = conn.channel()
    if prefetch:
        ch.basic_qos(prefetch_count=prefetch)
    got = Collector(ack=ack and not auto_ack)
    arguments = {} if priority is None else {"x-priority": priority}
    ch.basic_consume(q, got, auto_ack=auto_ack, arguments=arguments)
    return ch, got


def bodies(start, stop):
    return [f"m{i}".encode() for i in range(start, stop)]


def publish(ch, q, start, stop):
    for body in bodies(start, stop):
        ch.basic_publish("", q, body)


def test_the_higher_priority_gets_messages_until_its_prefetch_is_reached(conn, ch, name):
    q = name("cprio")
    ch.queue_declare(q)
    # The low one subscribes first: arrival order does not matter.
    _, low = consumer(conn, q, priority=0)
    _, high = consumer(conn, q, prefetch=5, priority=10, ack=False)
    publish(ch, q, 0, 20)
    pump(conn, lambda: len(high) + len(low) == 20, message="20 deliveries")
    assert high.bodies == bodies(0, 5)
    assert low.bodies == bodies(5, 20)


def test_levels_fill_from_the_highest_and_a_negative_priority_is_below_the_default(
        conn, ch, name):
    q = name("cprio-levels")
    ch.queue_declare(q)
    _, negative = consumer(conn, q, priority=-5, auto_ack=True)
    _, default = consumer(conn, q, prefetch=3, ack=False)
    _, top = consumer(conn, q, prefetch=2, priority=7, ack=False)
    publish(ch, q, 0, 10)
    pump(conn, lambda: len(top) + len(default) + len(negative) == 10,
         message="10 deliveries")
    assert top.bodies == bodies(0, 2)
    assert default.bodies == bodies(2, 5)
    assert negative.bodies == bodies(5, 10)


def test_consumers_of_one_priority_share_round_robin(conn, ch, name):
    q = name("cprio-rr")
    ch.queue_declare(q)
    _, low = consumer(conn, q, auto_ack=True)
    _, a = consumer(conn, q, priority=5, auto_ack=True)
    _, b = consumer(conn, q, priority=5, auto_ack=True)
    publish(ch, q, 0, 10)
    pump(conn, lambda: len(a) + len(b) + len(low) == 10, message="10 deliveries")
    assert low.bodies == []
    evens, odds = bodies(0, 10)[0::2], bodies(0, 10)[1::2]
    assert sorted([a.bodies, b.bodies]) == sorted([evens, odds])


def test_the_higher_priority_takes_messages_again_once_it_acks(conn, ch, name):
    q = name("cprio-ack")
    ch.queue_declare(q)
    _, low = consumer(conn, q)
    high_ch, high = consumer(conn, q, prefetch=2, priority=1, ack=False)
    publish(ch, q, 0, 4)
    pump(conn, lambda: len(high) + len(low) == 4, message="4 deliveries")
    assert high.bodies == bodies(0, 2)
    assert low.bodies == bodies(2, 4)
    # The ack and the next publishes go on one channel, so the queue sees them in order.
    high_ch.basic_ack(high.messages[-1][0].delivery_tag, multiple=True)
    publish(high_ch, q, 4, 6)
    pump(conn, lambda: len(high) + len(low) == 6, message="6 deliveries")
    assert high.bodies == bodies(0, 2) + bodies(4, 6)
    assert low.bodies == bodies(2, 4)


def test_a_cancelled_higher_priority_consumer_hands_back_to_the_lower(conn, ch, name):
    q = name("cprio-cancel")
    ch.queue_declare(q)
    _, low = consumer(conn, q, auto_ack=True)
    high_ch, high = consumer(conn, q, priority=3, auto_ack=True)
    publish(ch, q, 0, 2)
    pump(conn, lambda: len(high) == 2, message="2 deliveries to the high one")
    high_ch.basic_cancel(high_ch.consumer_tags[0])
    publish(ch, q, 2, 4)
    pump(conn, lambda: len(low) == 2, message="2 deliveries to the low one")
    assert high.bodies == bodies(0, 2)
    assert low.bodies == bodies(2, 4)


def test_single_active_consumer_activates_the_highest_priority_waiting_one(conn, ch, name):
    # As RabbitMQ 3.10 (classic queues): the first consumer stays active whatever the others'
    # priorities; when it goes, the waiting one of the highest priority takes over.
    q = name("cprio-sac")
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    first_ch, first = consumer(conn, q, auto_ack=True)
    _, mid = consumer(conn, q, priority=1, auto_ack=True)
    _, top = consumer(conn, q, priority=5, auto_ack=True)
    publish(ch, q, 0, 2)
    pump(conn, lambda: len(first) == 2, message="2 deliveries to the first consumer")
    first_ch.basic_cancel(first_ch.consumer_tags[0])
    publish(ch, q, 2, 4)
    pump(conn, lambda: len(top) == 2, message="2 deliveries to the top consumer")
    assert first.bodies == bodies(0, 2)
    assert top.bodies == bodies(2, 4)
    assert mid.bodies == []


def test_a_priority_that_is_not_an_integer_is_refused(conn, ch, name):
    q = name("cprio-invalid")
    ch.queue_declare(q)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.basic_consume(q, Collector(), arguments={"x-priority": "high"})
    assert err.value.reply_code == 406
    assert "invalid arg 'x-priority'" in err.value.reply_text


@pytest.mark.lockgate_only
def test_a_delivery_the_consumer_timeout_takes_back_goes_to_a_lower_priority_first(
        conn, ch, name):
    # lockgate's consumer timeout requeues (RabbitMQ closes the channel): the message goes to
    # another consumer first, whatever the priorities, not back to the one that did not ack.
    q = name("cprio-timeout")
    ch.queue_declare(q, arguments={"x-consumer-timeout": 200})
    _, high = consumer(conn, q, prefetch=1, priority=5, ack=False)
    _, low = consumer(conn, q, auto_ack=True)
    ch.basic_publish("", q, b"m")
    pump(conn, lambda: len(low) == 1, message="taken back and delivered to the lower priority")
    assert high.bodies == [b"m"]
    assert low.bodies == [b"m"]
