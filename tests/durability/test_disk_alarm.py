"""disk.free_limit: below it publishers are blocked (connection.blocked "low on disk"), the
broker keeps running and consumers keep going."""

from __future__ import annotations

import pika
import pytest

from lockgate_harness import LockgateProcess, eventually

pytestmark = pytest.mark.lockgate_only


def test_publishers_are_blocked_below_the_free_disk_limit(tmp_path):
    # No disk has a petabyte free: the alarm is on from the first check.
    p = LockgateProcess(config='[disk]\nfree_limit = "1000TB"\n', log_level="info",
                        data_dir=tmp_path / "data")
    try:
        p.wait_for_log("disk alarm")
        conn = p.broker().connect()
        blocked = []
        conn.add_on_connection_blocked_callback(lambda _c, frame: blocked.append(frame))
        ch = conn.channel()
        ch.queue_declare("q")
        ch.basic_publish("", "q", b"held")
        eventually(lambda: conn.process_data_events(0.05) or blocked,
                   message="connection.blocked")
        assert blocked[0].method.reason == "low on disk"
        # Another connection still consumes and declares: only publishing is held.
        other = p.broker().connect()
        och = other.channel()
        assert och.queue_declare("q", passive=True).method.message_count == 0
        other.close()
        assert p.alive()
    finally:
        p.stop()
