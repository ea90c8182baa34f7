"""Consumers that churn while messages flow: several pika consumers on one queue, each at random
acking, nacking or rejecting with requeue, holding deliveries unacked, cancelling, closing its
channel or its connection and coming back with another prefetch. However they interleave,
every published message is acked exactly once, and one delivered before comes again marked
redelivered."""

from __future__ import annotations

import random
import threading
import time

import pika
import pika.exceptions as pe

MESSAGES = 3000
CONSUMERS = 3
DEADLINE = 120.0


class Ledger:
    """What the consumers saw, shared between their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: set[int] = set()
        self.delivered: set[int] = set()
        self.errors: list[str] = []
        self.done = threading.Event()

    def delivery(self, n: int, redelivered: bool) -> None:
        with self.lock:
            if n in self.acked:
                self.errors.append(f"message {n} delivered again after its ack")
            elif n in self.delivered and not redelivered:
                self.errors.append(f"message {n} delivered again without redelivered")
            self.delivered.add(n)

    def ack(self, ns: list[int]) -> None:
        with self.lock:
            for n in ns:
                if n in self.acked:
                    self.errors.append(f"message {n} acked twice")
                self.acked.add(n)
            if len(self.acked) == MESSAGES:
                self.done.set()


def consumer(broker, queue: str, ledger: Ledger, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    while not ledger.done.is_set() and time.monotonic() < deadline:
        conn = broker.connect()
        try:
            session(conn, queue, ledger, rng, deadline)
        except (pe.AMQPError, OSError) as e:  # noqa: PERF203 - a session may end any way
            with ledger.lock:
                ledger.errors.append(f"consumer {seed}: {e!r}")
            return
        finally:
            if conn.is_open:
                conn.close()


def session(conn, queue: str, ledger: Ledger, rng: random.Random, deadline: float) -> None:
    """One connection's life: channels come and go until the connection is closed."""
    while not ledger.done.is_set() and time.monotonic() < deadline:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=rng.choice([1, 2, 10, 64, 300]))
        held: list[tuple[int, int]] = []
        for method, _, body in ch.consume(queue, inactivity_timeout=0.2):
            if ledger.done.is_set() or time.monotonic() > deadline:
                break
            if method is None:
                # Idle: the prefetch may be full of held deliveries. Settle them.
                if held and rng.random() < 0.5:
                    ch.basic_ack(held[-1][0], multiple=True)
                    ledger.ack([m for _, m in held])
                elif held:
                    ch.basic_nack(held[-1][0], multiple=True, requeue=True)
                held.clear()
                continue
            n = int(body)
            ledger.delivery(n, method.redelivered)
            r = rng.random()
            if r < 0.70:
                ch.basic_ack(method.delivery_tag)
                ledger.ack([n])
            elif r < 0.75 and held:
                # Everything held and this one, in one ack.
                ch.basic_ack(method.delivery_tag, multiple=True)
                ledger.ack([m for _, m in held] + [n])
                held.clear()
            elif r < 0.80:
                ch.basic_nack(method.delivery_tag, requeue=True)
            elif r < 0.83:
                ch.basic_reject(method.delivery_tag, requeue=True)
            elif r < 0.95:
                held.append((method.delivery_tag, n))
            elif r < 0.97:
                ch.cancel()
                break
            elif r < 0.99:
                ch.close()
                break
            else:
                conn.close()
                return
        if ch.is_open:
            ch.close()


def test_churning_consumers_ack_every_message_exactly_once(broker, connections, name):
    queue = name("churn")
    setup = connections().channel()
    setup.queue_declare(queue, auto_delete=False)
    ledger = Ledger()
    deadline = time.monotonic() + DEADLINE
    threads = [threading.Thread(target=consumer, args=(broker, queue, ledger, seed, deadline))
               for seed in range(CONSUMERS)]
    for t in threads:
        t.start()
    publisher = connections().channel()
    publisher.confirm_delivery()
    for n in range(MESSAGES):
        publisher.basic_publish("", queue, str(n).encode())
    for t in threads:
        t.join()
    assert ledger.errors == []
    assert ledger.acked == set(range(MESSAGES))
    assert setup.queue_declare(queue, passive=True).method.message_count == 0
    setup.queue_delete(queue)
