"""Spill: a queue takes ten times the memory budget while slow consumers read it.

The broker runs with a 16 MiB budget (`memory.high_watermark`). A publisher pushes 160 MB of
4 KiB (and, for a plain queue, 16 KiB) transient messages (at 12 MB/s) through one queue while
slow consumers read; the broker's resident memory (VmRSS) is sampled throughout. Expected: RSS
stays under its idle size + the budget + the documented fixed overhead (docs/durability.md:
the store engine's caches and write buffers, the allocator's retained heap), the publisher is
blocked for memory only when spilling cannot keep up (the alarm is the last resort when the
spill writes fall behind, as a loaded machine's debug build's do: see `check_block`), and
every message arrives intact and in the queue's order:

- a plain queue: publish order;
- a priority queue (`x-max-priority`): higher priorities first, FIFO within a priority, as
  without spill: a message is never delivered after one published later with a priority at
  or below its own;
- a grouped queue (`x-group-header`, two consumers subscribed before the publisher starts):
  each key on one consumer, in publish order.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable

import pika
import pytest

from lockgate_harness import LockgateProcess, eventually

BUDGET = 16 << 20
# docs/durability.md, "Memory": fixed overhead beyond the budget with spilling active.
OVERHEAD = 96 << 20
SIZE = 4096
# Ten times the budget; LOCKGATE_SPILL_SCALE=8 pushes eight times that (docs/durability.md
# measures how the overhead depends on the bytes on disk that way).
SCALE = float(os.environ.get("LOCKGATE_SPILL_SCALE", "1"))
TOTAL = int(160_000_000 * SCALE)
# Longer than the suite's default timeout: a run takes about 50 s on an idle 2-core machine,
# over 120 s at load 20 (two CPU hogs beside other builds), and a scaled run eight times that.
pytestmark = [pytest.mark.lockgate_only, pytest.mark.timeout(240 * SCALE + 60)]
RATE = 12e6  # bytes per second
MAX_PRIORITY = 3
KEYS = 8


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def body(i: int, size: int = SIZE) -> bytes:
    return (b"%08d" % i) * (size // 8)


def index(data: bytes) -> int:
    return int(data[:8])


def figures(url: str) -> dict[str, int]:
    """From one scrape of the Prometheus endpoint: "on_disk", the bytes of queue "spill" on
    disk; "in_memory", the bytes of its ready messages in memory; "charged", the bytes of
    messages the broker holds (the memory alarm's measure)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()

    def gauge(pattern: str) -> int:
        m = re.search(rf"^{pattern} (\d+)", text, re.MULTILINE)
        return int(m.group(1)) if m else 0

    spill = r'\{[^}]*queue="spill"[^}]*\}'
    return {"on_disk": gauge(r"rabbitmq_queue_messages_paged_out_bytes" + spill),
            "in_memory": gauge(r"rabbitmq_queue_messages_ready_bytes" + spill),
            "charged": gauge(r"lockgate_messages_memory_bytes")}


def spilled_bytes(url: str) -> int:
    """Bytes of queue "spill" on disk, from the Prometheus endpoint."""
    return figures(url)["on_disk"]


def check_block(seen_on_disk: int, now: dict[str, int]) -> str | None:
    """Why a connection.blocked was not the last resort it should be, or None.

    `now` is a scrape made from the blocked callback, while the publisher (whose thread runs
    the callback) is held; `seen_on_disk` the most bytes seen on disk until then. A block is
    the alarm doing its job when spilling was under way and the memory the alarm counts was
    held by messages in memory: the spill writes had fallen behind. How much was on disk by
    then depends on the machine's speed and says nothing (a loaded machine's debug build is
    blocked with 10-16 MB on disk), so it is not checked. Spilling that does not work is:
    - nothing on disk: spilling never started (`seen_on_disk` is 0);
    - bytes on disk still charged: the charged bytes beyond those of the ready messages in
      memory are then bytes on disk. Otherwise that difference is small at any time:
      delivered unacked messages (prefetch 50 per consumer, at most 0.8 MB here), a spill
      batch being written and a page being read (512 KiB each). Between the scrape's two
      readings a page-in adds no more than the acks it follows freed, plus one page, and the
      held publisher only what it had sent already. Half the budget bounds it with room to
      spare; spilled bytes still charged exceed it once half the budget is on disk (at a
      block, with spilling going on since the threshold, nearly all the charged bytes)."""
    if seen_on_disk == 0:
        return "nothing on disk: spilling had not started"
    if now["charged"] - now["in_memory"] > BUDGET // 2:
        return ("charged for more than the ready messages in memory by over half the budget: "
                "spilled bytes still charged")
    return None


def queue_state(url: str) -> str:
    """What /metrics says about queue "spill" and the broker's alarms and spill calls: for the
    report of a consumer that stopped receiving."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as e:
        return f"/metrics failed: {e}"
    wanted = re.compile(r'^(rabbitmq_queue_\w+\{[^}]*queue="spill"[^}]*\}|'
                        r'rabbitmq_alarms_\w+|lockgate_messages_memory_bytes|'
                        r'lockgate_store_oldest_write_seconds\{[^}]*\}) ')
    return "; ".join(line for line in text.splitlines() if wanted.match(line))


def priority(i: int) -> int:
    # 0..3 and one above the maximum (counts as 3), in a pattern that keeps every level busy.
    return [0, 1, 3, 2, 9][i % 5]


def run(tmp_path, size: int, arguments: dict | None,
        properties: Callable[[int], pika.BasicProperties | None],
        consumers: int = 1) -> list[list[int]]:
    """Pushes TOTAL bytes of `size`-byte messages through queue "spill" while `consumers`
    slow consumers (subscribed before the first publish) read it at a quarter of the publish
    rate together until the publisher is done, then at full speed. Checks the RSS bound, that
    the publisher was not blocked before spilling took over and every message arrived once and
    intact; returns the indices each consumer received, in delivery order."""
    count = TOTAL // size
    p = LockgateProcess(config=f"[memory]\nhigh_watermark = {BUDGET}\n"
                               "[metrics]\nlisten = \"127.0.0.1:0\"\n",
                        log_level="info", data_dir=tmp_path / "data")
    try:
        pid = p.proc.pid
        line = p.wait_for_log(r"serving Prometheus metrics")
        metrics = re.search(r"metrics_addr=([0-9.]+:[0-9]+)", line)
        assert metrics, line
        url = f"http://{metrics.group(1)}/metrics"
        idle = rss(pid)
        peak = idle
        on_disk = 0
        sampling = True
        errors: list[BaseException] = []

        def sample() -> None:
            nonlocal peak, on_disk
            n = 0
            while sampling:
                peak = max(peak, rss(pid))
                if n % 50 == 0:
                    try:
                        on_disk = max(on_disk, spilled_bytes(url))
                    except OSError as e:
                        errors.append(e)
                n += 1
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        publisher = p.broker().connect()
        # When (seconds into the run) the alarm came, with the most bytes seen on disk until
        # then and a scrape made then; and the blocks `check_block` finds wrong, with why.
        blocked: list[tuple[float, int, dict[str, int]]] = []
        wrong: list[str] = []
        t0 = time.monotonic()

        def on_blocked(*_) -> None:
            nonlocal on_disk
            try:
                now = figures(url)
            except OSError as e:
                errors.append(e)
                return
            on_disk = max(on_disk, now["on_disk"])
            blocked.append((round(time.monotonic() - t0, 1), on_disk, now))
            why = check_block(on_disk, now)
            if why:
                wrong.append(f"{why}: {blocked[-1]}")

        publisher.add_on_connection_blocked_callback(on_blocked)
        pch = publisher.channel()
        pch.queue_declare("spill", arguments=arguments)

        received: list[list[int]] = [[] for _ in range(consumers)]
        damaged: list[int] = []
        published = threading.Event()
        total = [0]
        lock = threading.Lock()
        done = threading.Event()
        gave_up: list[str] = []

        def consume(n: int) -> None:
            try:
                conn = p.broker().connect()
                ch = conn.channel()
                ch.basic_qos(prefetch_count=50)
                quiet = 0
                for method, _, data in ch.consume("spill", inactivity_timeout=1):
                    if done.is_set():
                        break
                    if method is None:
                        quiet += 1
                        if quiet == 30:
                            with lock:
                                gave_up.append(f"consumer {n}: nothing for 30 s at {total[0]}, "
                                               f"broker: {queue_state(url)}")
                            break
                        continue
                    quiet = 0
                    i = index(data)
                    if data != body(i, size):
                        damaged.append(i)
                    received[n].append(i)
                    ch.basic_ack(method.delivery_tag)
                    if not published.is_set():
                        # Together a quarter of the publish rate while the publisher floods:
                        # the backlog grows to several times the budget.
                        time.sleep(consumers * size / (RATE / 4))
                    with lock:
                        total[0] += 1
                        if total[0] == count:
                            done.set()
                else:
                    # pika ends the iteration when the broker cancels the consumer.
                    with lock:
                        gave_up.append(f"consumer {n}: cancelled by the broker at {total[0]}")
                conn.close()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=consume, args=(n,), daemon=True)
                   for n in range(consumers)]
        for t in threads:
            t.start()
        eventually(lambda: pch.queue_declare("spill", passive=True).method.consumer_count
                   == consumers, timeout=10, message=f"{consumers} consumers subscribed")
        # Paced at RATE at most (the debug build's spill writes sustain about four times that,
        # less on a loaded machine): the point is that spilling, not blocking, keeps memory
        # bounded. A publisher that fell behind (a busy machine) does not catch up in a burst.
        due = time.monotonic()
        for i in range(count):
            if wrong:
                break
            pch.basic_publish("", "spill", body(i, size), properties(i))
            if i % 256 == 255:
                # Runs the blocked callback when connection.blocked arrives, not at the end.
                publisher.process_data_events(0)
                due += 256 * size / RATE
                ahead = due - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                else:
                    due -= ahead
        # At once: a blocked publisher cannot close its connection.
        assert not wrong, f"blocked for memory while spilling did not work: {wrong[:3]}"
        publisher.process_data_events(0)
        published.set()
        # Until every message is in, or every consumer has given up (the asserts say why).
        while not done.wait(0.5) and any(t.is_alive() for t in threads):
            pass
        for t in threads:
            t.join(40)
        sampling = False
        sampler.join(5)
        publisher.close()
        bound = idle + BUDGET + OVERHEAD
        print(f"{size} B messages, {arguments}: idle {idle >> 20} MiB, peak {peak >> 20} MiB, "
              f"bound {bound >> 20} MiB, at most {on_disk // 1_000_000} MB on disk, "
              f"blocked {blocked[:3]}")
        assert not errors, errors
        assert not damaged, f"damaged messages: {damaged[:10]}"
        got = sorted(i for r in received for i in r)
        if gave_up:
            warnings = [line for line in p.log().splitlines() if " WARN " in line
                        or " ERROR " in line or "panicked" in line]
            gave_up.append(f"broker warnings: {warnings[-20:]}")
        assert got == list(range(count)), \
            f"{len(got)} of {count} messages, or duplicates; {gave_up}"
        assert peak <= bound, f"peak RSS {peak >> 20} MiB > {bound >> 20} MiB (idle {idle >> 20} MiB)"
        return received
    finally:
        p.stop()


@pytest.mark.parametrize("size", [SIZE, 16384], ids=["4KiB", "16KiB"])
def test_queue_ten_times_the_budget_stays_within_rss_bound_in_order(tmp_path, size):
    [received] = run(tmp_path, size, None, lambda i: None)
    assert received == list(range(len(received))), "out of publish order"


def test_priority_queue_spills_and_keeps_priority_order(tmp_path):
    [received] = run(tmp_path, SIZE, {"x-max-priority": MAX_PRIORITY},
                     lambda i: pika.BasicProperties(priority=priority(i)))
    # `latest[p]`: the highest index delivered so far at priority p. A message must not come
    # after a later-published one of its priority or a lower one: it was in the queue when
    # that one was chosen, and it goes first.
    latest = [-1] * (MAX_PRIORITY + 1)
    for i in received:
        level = min(priority(i), MAX_PRIORITY)
        after = max(latest[: level + 1])
        assert after < i, f"message {i} (priority {level}) delivered after {after}"
        latest[level] = i
    assert received != sorted(received), "priorities changed the order"


def test_grouped_queue_spills_and_keeps_per_key_order_and_consumer(tmp_path):
    received = run(tmp_path, SIZE, {"x-group-header": "key"},
                   lambda i: pika.BasicProperties(headers={"key": f"k{i % KEYS}"}),
                   consumers=2)
    owner: dict[int, int] = {}
    for n, got in enumerate(received):
        last: dict[int, int] = {}
        for i in got:
            key = i % KEYS
            assert owner.setdefault(key, n) == n, f"key {key} on two consumers"
            assert last.get(key, -1) < i, f"key {key}: {i} after {last[key]}"
            last[key] = i
    assert len(set(owner.values())) == 2, "the keys are spread over both consumers"


def test_spilled_durable_priority_queue_recovers_after_kill_in_order_per_level(tmp_path):
    """A durable priority queue holding persistent messages well beyond the budget, spilled
    per level, killed (SIGKILL) and restarted: every confirmed message comes back once and
    intact, FIFO within each priority; messages published after the restart come last of
    their priority (they wait behind the recovered disk tail, docs/durability.md)."""
    count = 8000
    data = tmp_path / "data"
    config = f"[memory]\nhigh_watermark = {BUDGET}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
    p = LockgateProcess(config=config, log_level="info", data_dir=data)
    try:
        line = p.wait_for_log(r"serving Prometheus metrics")
        metrics = re.search(r"metrics_addr=([0-9.]+:[0-9]+)", line)
        assert metrics, line
        url = f"http://{metrics.group(1)}/metrics"
        ch = p.broker().connect().channel()
        ch.queue_declare("spill", durable=True, arguments={"x-max-priority": MAX_PRIORITY})
        ch.confirm_delivery()
        for i in range(count):
            ch.basic_publish("", "spill", body(i),
                             pika.BasicProperties(delivery_mode=2, priority=priority(i)))
        eventually(lambda: spilled_bytes(url) > count * SIZE // 2, timeout=30,
                   message="half the messages spilled")
    finally:
        p.signal(signal.SIGKILL)
        p.wait(10)
        p.stop()

    p = LockgateProcess(config=config, log_level="info", data_dir=data)
    try:
        ch = p.broker().connect().channel()
        ch.confirm_delivery()
        new = list(range(count, count + MAX_PRIORITY + 1))
        for i in new:
            ch.basic_publish("", "spill", body(i),
                             pika.BasicProperties(delivery_mode=2, priority=i - count))
        left = ch.queue_declare("spill", passive=True).method.message_count
        assert left == count + len(new)

        def get() -> bytes | None:
            method, _, data_ = ch.basic_get("spill", auto_ack=True)
            return data_ if method else None

        got: list[int] = []
        for _ in range(left):
            # basic.get may answer empty while the spill task pages in (it waits 2 s at most).
            data_ = eventually(get, timeout=10, message="the next message")
            i = index(data_)
            assert data_ == body(i), f"message {i} damaged"
            got.append(i)
        assert sorted(got) == list(range(count + len(new))), "every message once"
        last: dict[int, int] = {}
        for i in got:
            level = i - count if i >= count else min(priority(i), MAX_PRIORITY)
            assert last.get(level, -1) < i, f"priority {level}: {i} after {last[level]}"
            last[level] = i
        assert [last[level] for level in range(MAX_PRIORITY + 1)] == new, \
            "messages published after the restart come last of their priority"
    finally:
        p.stop()
