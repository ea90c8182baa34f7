"""Disk space: acked persistent messages give their space back, and the disk alarm lets
publishers resume once space returns.

Reclamation: sled (the store engine) is log-structured with 512 KiB segments. A removed record
leaves a dead copy in its segment; a segment whose live data falls to half is drained (its
live pages are rewritten by later writes), a drained segment is reused once a flush covers it,
and free segments at the end of the file are truncated. The group commit flushes every batch,
so a durable queue turned over by confirmed publishes and acks keeps its files proportional to
the live backlog, not to the history.
"""

from __future__ import annotations

import os
from pathlib import Path

import pika
import pytest

from lockgate_harness import LockgateProcess, eventually

pytestmark = pytest.mark.lockgate_only

SEGMENT = 512 << 10  # sled's segment size
BODY = 32 << 10
TOTAL = 200 * SEGMENT  # 100 MiB of persistent messages through the queue
BATCH = 32  # the backlog never exceeds one batch (1 MiB)
# Files may hold the live backlog plus dead copies of up to half of each segment, the segments
# being drained and the engine's own records: a few MiB (5 MiB measured). 16 MiB is far below
# the 100 MiB moved.
BOUND = 16 << 20


def allocated(path: Path) -> int:
    """Bytes the files under `path` occupy on disk (allocated blocks, so sparse holes count 0)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass  # a blob or snapshot removed while walking
    return total


def body(i: int) -> bytes:
    return (b"%08d" % i) * (BODY // 8)


# Each of its thousands of publishes waits for a disk sync: 49 s on a loaded machine, so the
# suite's 60 s default is too close.
@pytest.mark.timeout(180)
def test_acked_persistent_messages_give_their_disk_space_back(tmp_path):
    p = LockgateProcess(log_level="info", data_dir=tmp_path / "data")
    try:
        store = p.data_dir / "store"
        conn = p.broker().connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("churn", durable=True)
        persistent = pika.BasicProperties(delivery_mode=2)
        sizes = []
        n = 0
        while n * BODY < TOTAL:
            for _ in range(BATCH):
                ch.basic_publish("", "churn", body(n), persistent)  # returns once confirmed
                n += 1
            for i in range(n - BATCH, n):
                method, _, data = ch.basic_get("churn")
                assert method is not None and data == body(i), f"message {i}"
                ch.basic_ack(method.delivery_tag)
            sizes.append(allocated(store))
        # One more confirmed publish + ack: its commit also covers the last acks.
        ch.basic_publish("", "churn", b"last", persistent)
        method, _, _ = ch.basic_get("churn")
        ch.basic_ack(method.delivery_tag)
        conn.close()
        print([s >> 20 for s in sizes[::5]])
        peak = max(sizes)
        print(f"moved {n * BODY >> 20} MiB; store size: peak {peak >> 20} MiB, "
              f"last {sizes[-1] >> 20} MiB")
        assert peak <= BOUND, f"store grew to {peak >> 20} MiB after moving {n * BODY >> 20} MiB"
        # Not just small from the start: the second half of the run did not grow it further.
        half = len(sizes) // 2
        assert max(sizes[half:]) <= max(sizes[:half]) + 4 * SEGMENT, sizes
        # Nothing acked comes back after a restart.
        p.stop()
        p = LockgateProcess(log_level="info", data_dir=tmp_path / "data")
        conn = p.broker().connect()
        ch = conn.channel()
        assert ch.queue_declare("churn", durable=True).method.message_count == 0
        conn.close()
    finally:
        p.stop()


def free_space(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_publishers_resume_when_disk_space_returns_and_nothing_is_lost(tmp_path):
    """The alarm is tripped for real: a file filling the data directory's file system."""
    margin = 1 << 30
    # Below the current free space by `margin`: filling 2 * margin trips it, removing the file
    # clears it, with room for what other processes write meanwhile.
    free = free_space(tmp_path)
    if free < 3 * margin:
        pytest.skip("not enough free disk space for this test (the filler takes 2 GiB)")
    limit = free - margin
    p = LockgateProcess(config=f"[disk]\nfree_limit = {limit}\n", log_level="info",
                        data_dir=tmp_path / "data")
    filler = tmp_path / "filler"
    try:
        conn = p.broker().connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("held", durable=True)
        persistent = pika.BasicProperties(delivery_mode=2)
        ch.basic_publish("", "held", b"0", persistent)  # confirmed: no alarm yet

        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 2 * margin)
        p.wait_for_log("disk alarm: free space below", timeout=10)

        # Publishes now are held: connection.blocked arrives and they are not routed.
        publisher = p.broker().connect()
        blocked, unblocked = [], []
        publisher.add_on_connection_blocked_callback(lambda _c, f: blocked.append(f))
        publisher.add_on_connection_unblocked_callback(lambda _c, f: unblocked.append(f))
        pch = publisher.channel()
        for i in range(1, 6):
            pch.basic_publish("", "held", b"%d" % i, persistent)
        eventually(lambda: publisher.process_data_events(0.05) or blocked, timeout=10,
                   message="connection.blocked")
        assert blocked[0].method.reason == "low on disk"
        publisher.process_data_events(0.3)
        # Consumers and declarations keep working during the alarm; the held publishes wait.
        assert ch.queue_declare("held", passive=True).method.message_count == 1

        filler.unlink()
        p.wait_for_log("disk alarm cleared", timeout=10)
        eventually(lambda: publisher.process_data_events(0.05) or unblocked, timeout=10,
                   message="connection.unblocked")
        eventually(lambda: ch.queue_declare("held", passive=True).method.message_count == 6,
                   timeout=10, message="the held publishes routed")
        got = []
        for _ in range(6):
            method, _, data = ch.basic_get("held", auto_ack=True)
            assert method is not None
            got.append(data)
        assert got == [b"0", b"1", b"2", b"3", b"4", b"5"]
        assert ch.basic_get("held", auto_ack=True)[0] is None
        # The publishing connection works as before.
        pch.confirm_delivery()
        pch.basic_publish("", "held", b"after", persistent)
        publisher.close()
        conn.close()
        assert p.alive()
    finally:
        if filler.exists():
            filler.unlink()
        p.stop()
