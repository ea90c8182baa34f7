"""kill -9 at random moments while a publisher with confirms and an acking consumer run.

Every cycle: a publisher thread sends numbered persistent messages with publisher confirms
(recording each confirmed number); the main thread takes messages, acks most and leaves some
delivered but unacked; after a random delay the broker gets SIGKILL and is restarted on the
same data directory. Then every confirmed message that was not acked must be in the queue, in
publish order, without duplicates; no message whose ack is known flushed may come back; and
the unacked ones known flushed as delivered come back with redelivered=True.

An ack has no reply, so the consumer learns that its acks are on disk from a confirmed
persistent publish on the same connection ("marker"): the reader processes a connection's
frames in order and the store writes in submission order, so that confirm covers them.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pika
import pytest

from lockgate_harness import LockgateProcess

pytestmark = pytest.mark.lockgate_only

PERSISTENT = pika.BasicProperties(delivery_mode=2)


class Publisher(threading.Thread):
    """Publishes numbers from `start` with confirms until the connection dies."""

    def __init__(self, process: LockgateProcess, start: int):
        super().__init__(daemon=True)
        self.conn = process.broker().connect()
        self.next = start
        self.confirmed: list[int] = []

    def run(self) -> None:
        try:
            ch = self.conn.channel()
            ch.confirm_delivery()
            while True:
                ch.basic_publish("", "crash", str(self.next).encode(), PERSISTENT)
                self.confirmed.append(self.next)
                self.next += 1
        except Exception:  # noqa: BLE001 - the broker is killed under it
            return


def test_confirmed_messages_survive_repeated_sigkill(tmp_path):
    rng = random.Random(20261122)
    data = tmp_path / "data"
    p = LockgateProcess(data_dir=data, log_level="info")
    conn = p.broker().connect()
    conn.channel().queue_declare("crash", durable=True)
    conn.close()
    confirmed: set[int] = set()
    acked_flushed: set[int] = set()
    acked_maybe: set[int] = set()
    next_number = 0
    total_confirmed = 0
    try:
        for cycle in range(4):
            publisher = Publisher(p, next_number)
            publisher.start()
            consumer = p.broker().connect()
            ch = consumer.channel()
            marker = consumer.channel()
            marker.confirm_delivery()
            marker.queue_declare("marker", durable=True)
            pending_acks: list[int] = []
            unacked: list[int] = []
            delivered_flushed: set[int] = set()
            deadline = time.monotonic() + rng.uniform(0.3, 1.5)
            taken = 0
            # Until a random moment, and on a slow machine until the cycle had some confirms.
            while time.monotonic() < deadline or (len(publisher.confirmed) < 15
                                                  and publisher.is_alive()):
                method, _, body = ch.basic_get("crash", auto_ack=False)
                if method is None:
                    time.sleep(0.005)
                    continue
                taken += 1
                n = int(body)
                if rng.random() < 0.7:
                    ch.basic_ack(method.delivery_tag)
                    pending_acks.append(n)
                else:
                    unacked.append(n)
                if taken % 10 == 0:
                    marker.basic_publish("", "marker", b"m", PERSISTENT)
                    acked_flushed.update(pending_acks)
                    pending_acks.clear()
                    delivered_flushed.update(unacked)
            p.signal(signal.SIGKILL)
            p.wait(10)
            publisher.join(10)
            assert not publisher.is_alive()
            confirmed.update(publisher.confirmed)
            total_confirmed += len(publisher.confirmed)
            acked_maybe.update(pending_acks)
            next_number = publisher.next + 1

            p = LockgateProcess(data_dir=data, log_level="info")
            assert p.addr is not None, p.log()
            check = p.broker().connect()
            ch = check.channel()
            count = ch.queue_declare("crash", durable=True, passive=True).method.message_count
            remaining: list[int] = []
            redelivered: dict[int, bool] = {}
            for _ in range(count):
                method, _, body = ch.basic_get("crash", auto_ack=False)
                assert method is not None
                remaining.append(int(body))
                redelivered[int(body)] = method.redelivered
            # Closing without acks requeues them: the queue is unchanged for the next cycle.
            check.close()
            left = set(remaining)
            assert remaining == sorted(remaining), f"cycle {cycle}: out of publish order"
            assert len(left) == len(remaining), f"cycle {cycle}: duplicates"
            back = left & acked_flushed
            assert not back, f"cycle {cycle}: acked messages came back: {sorted(back)[:20]}"
            lost = confirmed - acked_flushed - acked_maybe - left
            assert not lost, f"cycle {cycle}: confirmed messages lost: {sorted(lost)[:20]}"
            not_flagged = [n for n in delivered_flushed if n in left and not redelivered[n]]
            assert not not_flagged, f"cycle {cycle}: delivered, not redelivered: {not_flagged}"
        assert total_confirmed > 50, "the publisher got too few confirms to test anything"
    finally:
        p.stop()
