"""Deduplication (`x-deduplication-window`, a lockgate extension): a message whose message-id was
already enqueued in the queue within the window (a count of ids and/or a time) is confirmed to its
publisher but not enqueued again. Messages without a message-id are never deduplicated."""

import time

import pika
import pytest

from lockgate_harness import Collector, drain, eventually, pump, queue_count

pytestmark = pytest.mark.lockgate_only


def dedup_queue(ch, window):
    return ch.queue_declare("", exclusive=True,
                            arguments={"x-deduplication-window": window}).method.queue


def publish(ch, q, body, message_id=None):
    ch.basic_publish("", q, body, pika.BasicProperties(message_id=message_id))


def test_a_republished_message_id_is_confirmed_but_not_enqueued_twice(ch):
    q = dedup_queue(ch, 100)
    ch.confirm_delivery()
    # With confirms on, pika raises if the broker nacks; every publish here is acked.
    publish(ch, q, b"first", "m1")
    publish(ch, q, b"retry", "m1")
    publish(ch, q, b"other", "m2")
    publish(ch, q, b"retry again", "m1")
    assert drain(ch, q) == [b"first", b"other"]


def test_an_id_pushed_out_of_the_count_window_is_enqueued_again(ch):
    q = dedup_queue(ch, 2)
    for mid in ("a", "b", "c"):
        publish(ch, q, mid.encode(), mid)
    publish(ch, q, b"a again", "a")  # "a" is no longer among the last 2 ids
    publish(ch, q, b"c again", "c")  # "c" still is
    assert drain(ch, q) == [b"a", b"b", b"c", b"a again"]


def test_messages_without_a_message_id_are_never_deduplicated(ch):
    q = dedup_queue(ch, 100)
    publish(ch, q, b"one")
    publish(ch, q, b"two")
    assert drain(ch, q) == [b"one", b"two"]


def test_an_id_stays_remembered_after_its_message_was_consumed(conn, ch):
    q = dedup_queue(ch, "100")
    got = Collector(ack=True)
    ch.basic_consume(q, got)
    publish(ch, q, b"once", "job-1")
    pump(conn, lambda: len(got) == 1)
    publish(ch, q, b"retried after a lost confirm", "job-1")
    publish(ch, q, b"next", "job-2")
    pump(conn, lambda: len(got) == 2)
    # "next" was published after the retry: had the retry been enqueued, it would be second.
    assert got.bodies == [b"once", b"next"]


def test_a_time_window_forgets_ids_once_it_has_passed(conn, ch):
    q = dedup_queue(ch, "300ms")
    start = time.monotonic()
    publish(ch, q, b"a", "a")

    def republish_enqueued():
        publish(ch, q, b"a", "a")
        return queue_count(conn, q) == 2

    eventually(republish_enqueued)
    # Deduplicated for the window, enqueued once it had passed.
    assert time.monotonic() - start >= 0.25
    assert queue_count(conn, q) == 2


def test_the_window_is_per_queue(ch, name):
    ex = name("fan")
    ch.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    with_window = dedup_queue(ch, 10)
    without = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(with_window, ex)
    ch.queue_bind(without, ex)
    for _ in range(2):
        ch.basic_publish(ex, "", b"m", pika.BasicProperties(message_id="same"))
    assert drain(ch, with_window) == [b"m"]
    assert drain(ch, without) == [b"m", b"m"]


def test_count_and_time_together(ch):
    q = dedup_queue(ch, "1,60s")
    publish(ch, q, b"a", "a")
    publish(ch, q, b"a dup", "a")
    publish(ch, q, b"b", "b")
    publish(ch, q, b"a back", "a")  # out of the count of 1, though within 60s
    assert drain(ch, q) == [b"a", b"b", b"a back"]
