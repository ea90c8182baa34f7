"""Definitions and persistent messages across restarts of the real binary (pika).

Each test owns its lockgate process and data directory and restarts it on that directory:
durable exchanges, queues and bindings come back, transient and exclusive ones do not;
persistent messages in durable queues come back in order, transient ones do not.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pika
import pytest

from lockgate_harness import LockgateProcess, drain

pytestmark = pytest.mark.lockgate_only

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def start(data_dir: Path) -> LockgateProcess:
    process = LockgateProcess(data_dir=data_dir, log_level="info")
    assert process.addr is not None, process.log()
    return process


def restart(process: LockgateProcess, kill: bool) -> LockgateProcess:
    if kill:
        process.signal(signal.SIGKILL)
        process.wait(10)
    else:
        assert process.stop() == 0, process.log()
    return start(process.data_dir)


@pytest.mark.parametrize("kill", [False, True], ids=["clean", "sigkill"])
def test_durable_definitions_survive_transient_and_exclusive_do_not(tmp_path, kill):
    p = start(tmp_path / "data")
    try:
        conn = p.broker().connect()
        ch = conn.channel()
        ch.exchange_declare("d.x", "topic", durable=True)
        ch.exchange_declare("t.x", "fanout", durable=False)
        ch.queue_declare("d.q", durable=True)
        ch.queue_declare("t.q", durable=False)
        ch.queue_declare("x.q", durable=True, exclusive=True)
        ch.queue_bind("d.q", "d.x", "orders.#")
        ch.queue_bind("d.q", "amq.direct", "k")
        ch.queue_bind("t.q", "d.x", "t")
        ch.queue_bind("d.q", "t.x")
        ch.exchange_bind("d.x", "amq.fanout")
        # Every declare-ok above was sent after the store flushed it: a kill now loses nothing.
        p = restart(p, kill)
        conn = p.broker().connect()
        ch = conn.channel()
        ch.exchange_declare("d.x", "topic", durable=True, passive=True)
        ch.queue_declare("d.q", durable=True, passive=True)
        for missing_queue in ["t.q", "x.q"]:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.queue_declare(missing_queue, passive=True)
            assert e.value.reply_code == 404
            ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_declare("t.x", passive=True)
        assert e.value.reply_code == 404
        ch = conn.channel()
        # The durable bindings route; the ones to or from transient things are gone.
        ch.basic_publish("d.x", "orders.new", b"1")
        ch.basic_publish("amq.direct", "k", b"2")
        ch.basic_publish("amq.fanout", "orders.x", b"3")
        assert drain(ch, "d.q") == [b"1", b"2", b"3"]
        conn.close()
    finally:
        p.stop()


@pytest.mark.parametrize("kill", [False, True], ids=["clean", "sigkill"])
def test_persistent_messages_survive_in_order_transient_ones_do_not(tmp_path, kill):
    p = start(tmp_path / "data")
    try:
        conn = p.broker().connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", durable=True)
        ch.queue_declare("t", durable=False)
        for i in range(200):
            ch.basic_publish("", "q", b"p%d" % i, PERSISTENT)
            ch.basic_publish("", "q", b"transient%d" % i)
            ch.basic_publish("", "t", b"p%d" % i, PERSISTENT)
        p = restart(p, kill)
        conn = p.broker().connect()
        ch = conn.channel()
        assert drain(ch, "q") == [b"p%d" % i for i in range(200)]
        conn.close()
    finally:
        p.stop()


def test_unacked_come_back_redelivered_and_acked_never_come_back(tmp_path):
    p = start(tmp_path / "data")
    try:
        conn = p.broker().connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", durable=True)
        for i in range(10):
            ch.basic_publish("", "q", b"%d" % i, PERSISTENT)
        got = [ch.basic_get("q", auto_ack=False) for _ in range(4)]
        assert [body for _, _, body in got] == [b"0", b"1", b"2", b"3"]
        ch.basic_ack(got[0][0].delivery_tag)
        ch.basic_ack(got[2][0].delivery_tag)
        # A confirmed publish after the acks: its flush covers them (and the delivered mark).
        ch.queue_declare("sync", durable=True)
        ch.basic_publish("", "sync", b"s", PERSISTENT)
        p = restart(p, kill=True)
        conn = p.broker().connect()
        ch = conn.channel()
        seen = []
        while True:
            method, _, body = ch.basic_get("q", auto_ack=True)
            if method is None:
                break
            seen.append((body, method.redelivered))
        assert seen == [(b"1", True), (b"3", True)] + [(b"%d" % i, False) for i in range(4, 10)]
        conn.close()
        # Consumed with auto-ack before this clean stop: nothing comes back.
        p = restart(p, kill=False)
        conn = p.broker().connect()
        ch = conn.channel()
        assert drain(ch, "q") == []
        conn.close()
    finally:
        p.stop()
