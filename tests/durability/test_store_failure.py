"""A store write that fails closes the connection with 541 INTERNAL_ERROR (as RabbitMQ does for
a broker-side failure), instead of dropping the socket.

The failure is real: the broker's file-size limit (RLIMIT_FSIZE) is lowered to one byte while
it runs, so every write sled makes to its files fails with EFBIG. The broker is started through
a shell that ignores SIGXFSZ (otherwise the kernel kills a process writing past the limit);
the ignored disposition survives `exec`.
"""

from __future__ import annotations

import os
import resource
import stat

import pika
import pytest

from lockgate_harness import LockgateProcess, lockgate_binary

pytestmark = pytest.mark.lockgate_only


@pytest.fixture
def failing_broker(tmp_path, monkeypatch):
    wrapper = tmp_path / "lockgate-ignoring-sigxfsz"
    wrapper.write_text(f"#!/bin/sh\ntrap '' XFSZ\nexec '{lockgate_binary()}' \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("LOCKGATE_BIN", str(wrapper))
    p = LockgateProcess(log_level="info")
    try:
        yield p
    finally:
        p.stop()


def break_store(p: LockgateProcess) -> None:
    resource.prlimit(p.proc.pid, resource.RLIMIT_FSIZE, (1, 1))


def test_a_durable_declaration_whose_store_write_fails_closes_with_541(failing_broker):
    p = failing_broker
    conn = p.broker().connect()
    ch = conn.channel()
    ch.queue_declare("before", durable=True)
    break_store(p)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        ch.queue_declare("after", durable=True)
    assert closed.value.reply_code == 541
    assert closed.value.reply_text.startswith("INTERNAL_ERROR")
    # The broker keeps running and still accepts connections (transient work needs no store).
    assert p.alive()
    other = p.broker().connect()
    och = other.channel()
    och.queue_declare("transient", durable=False)
    och.basic_publish("", "transient", b"x")
    method, _, body = och.basic_get("transient", auto_ack=True)
    assert method is not None and body == b"x"
    other.close()


def test_a_durable_binding_whose_store_write_fails_closes_with_541(failing_broker):
    p = failing_broker
    conn = p.broker().connect()
    ch = conn.channel()
    ch.exchange_declare("x", "direct", durable=True)
    ch.queue_declare("q", durable=True)
    break_store(p)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        ch.queue_bind("q", "x", "k")
    assert closed.value.reply_code == 541
    assert p.alive()


def test_the_lowered_limit_is_what_fails_the_store(failing_broker):
    """Guards the test method: without the lowered limit the same declarations succeed."""
    p = failing_broker
    conn = p.broker().connect()
    ch = conn.channel()
    ch.queue_declare("after", durable=True)
    ch.exchange_declare("x", "direct", durable=True)
    ch.queue_bind("after", "x", "k")
    conn.close()
    assert os.path.isdir(p.data_dir / "store")
