"""A durable x-delayed-message exchange keeps its persistent held messages across a restart of
the real binary (as the plugin does for durable exchanges); transient ones are lost."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pika
import pytest

from lockgate_harness import LockgateProcess, pump

pytestmark = pytest.mark.lockgate_only


def start(data_dir: Path) -> LockgateProcess:
    return LockgateProcess(data_dir=data_dir, log_level="info")


@pytest.mark.parametrize("kill", [False, True], ids=["clean", "sigkill"])
def test_persistent_held_messages_survive_a_restart(tmp_path, kill):
    p = start(tmp_path / "data")
    try:
        conn = p.broker().connect()
        ch = conn.channel()
        ch.exchange_declare("later", "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "direct"})
        ch.queue_declare("q", durable=True)
        ch.queue_bind("q", "later", "k")
        ch.confirm_delivery()
        sent = time.monotonic()
        # Confirmed means stored: it must survive even a SIGKILL.
        ch.basic_publish("later", "k", b"persistent",
                         pika.BasicProperties(delivery_mode=2, headers={"x-delay": 2500}))
        ch.basic_publish("later", "k", b"transient",
                         pika.BasicProperties(delivery_mode=1, headers={"x-delay": 2500}))
        assert ch.queue_declare("q", passive=True).method.message_count == 0
        conn.close()
        if kill:
            p.signal(signal.SIGKILL)
            p.wait(10)
        else:
            assert p.stop() == 0, p.log()
        p = start(p.data_dir)
        conn = p.broker().connect()
        ch = conn.channel()
        got = []
        ch.basic_consume("q", lambda c, m, props, body: got.append((body, time.monotonic())),
                         auto_ack=True)
        pump(conn, lambda: got, timeout=10, message="the held message after the restart")
        body, at = got[0]
        assert body == b"persistent"
        assert at - sent >= 2.4, at - sent
        # The transient one was due at the same time: it would have come with it.
        ch.queue_declare("q", passive=True)
        conn.process_data_events(time_limit=0)
        assert [b for b, _ in got] == [b"persistent"]
        conn.close()
    finally:
        p.stop()
