"""Spill: a queue takes ten times the memory budget while a slow consumer reads it.

The broker runs with a 16 MiB budget (`memory.high_watermark`). A publisher pushes 160 MB of
4 KiB (and, separately, 16 KiB) transient messages (at 12 MB/s) through one queue while a slow
consumer reads; the
broker's resident memory (VmRSS) is sampled throughout. Expected: RSS stays under its idle
size + the budget + the documented fixed overhead (docs/durability.md: the store engine's
caches and write buffers), the publisher is never blocked for memory, and every message
arrives intact and in order.
"""

from __future__ import annotations

import threading
import time

import pytest

from lockgate_harness import LockgateProcess

pytestmark = pytest.mark.lockgate_only

BUDGET = 16 << 20
# docs/durability.md, "Memory": fixed overhead beyond the budget with spilling active.
OVERHEAD = 96 << 20
SIZE = 4096
TOTAL = 160_000_000  # ten times the budget
RATE = 12e6  # bytes per second


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def body(i: int, size: int = SIZE) -> bytes:
    return (b"%08d" % i) * (size // 8)


@pytest.mark.parametrize("size", [SIZE, 16384], ids=["4KiB", "16KiB"])
def test_queue_ten_times_the_budget_stays_within_rss_bound_in_order(tmp_path, size):
    count = TOTAL // size
    p = LockgateProcess(config=f"[memory]\nhigh_watermark = {BUDGET}\n", log_level="info",
                        data_dir=tmp_path / "data")
    try:
        pid = p.proc.pid
        idle = rss(pid)
        peak = idle
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        publisher = p.broker().connect()
        blocked: list[object] = []
        publisher.add_on_connection_blocked_callback(lambda *a: blocked.append(a))
        pch = publisher.channel()
        pch.queue_declare("spill")

        received: list[bytes] = []
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                conn = p.broker().connect()
                ch = conn.channel()
                ch.basic_qos(prefetch_count=50)
                for method, _, data in ch.consume("spill", inactivity_timeout=30):
                    if method is None:
                        break
                    received.append(data)
                    ch.basic_ack(method.delivery_tag)
                    if not published.is_set():
                        # A quarter of the publish rate while the publisher floods: the backlog
                        # grows to several times the budget whatever the message size.
                        time.sleep(size / (RATE / 4))
                    if len(received) == count:
                        break
                conn.close()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        published = threading.Event()
        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        # Paced at RATE (the debug build's spill writes sustain about four times that, less on
        # a loaded machine): the point is that spilling, not blocking, keeps memory bounded.
        started = time.monotonic()
        for i in range(count):
            pch.basic_publish("", "spill", body(i, size))
            if i % 256 == 255:
                ahead = (i + 1) * size / RATE - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        publisher.process_data_events(0)
        published.set()
        consumer.join(90)
        sampling = False
        sampler.join(5)
        publisher.close()
        assert not errors, errors
        assert len(received) == count, len(received)
        bad = next((i for i, b in enumerate(received) if b != body(i, size)), None)
        assert bad is None, f"message {bad} out of order or damaged"
        assert not blocked, "the publisher was blocked for memory while spilling worked"
        bound = idle + BUDGET + OVERHEAD
        assert peak <= bound, f"peak RSS {peak >> 20} MiB > {bound >> 20} MiB (idle {idle >> 20} MiB)"
        print(f"{size} B messages: idle {idle >> 20} MiB, peak {peak >> 20} MiB, bound {bound >> 20} MiB")
    finally:
        p.stop()
