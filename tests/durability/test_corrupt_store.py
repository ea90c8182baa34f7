"""A damaged or foreign store stops the broker at startup with an error naming the file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pika
import pytest

from lockgate_harness import LockgateProcess, lockgate_binary

pytestmark = pytest.mark.lockgate_only


def fill(data_dir: Path) -> None:
    p = LockgateProcess(data_dir=data_dir, log_level="info")
    try:
        conn = p.broker().connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", durable=True)
        for _ in range(100):
            ch.basic_publish("", "q", b"x" * 8192, pika.BasicProperties(delivery_mode=2))
        conn.close()
    finally:
        assert p.stop() == 0


def start_fails(data_dir: Path) -> str:
    run = subprocess.run(
        [str(lockgate_binary()), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
        env=dict(os.environ, NO_COLOR="1"))
    err = run.stderr.decode("utf-8", "replace")
    assert run.returncode != 0, err
    assert "listening" not in err, err
    return err


def test_truncated_database_is_refused_naming_the_file(tmp_path):
    data = tmp_path / "data"
    fill(data)
    db = data / "store" / "db"
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 3)
    err = start_fails(data)
    assert str(db) in err, err
    assert "corrupt" in err, err


def test_store_of_another_format_version_is_refused(tmp_path):
    data = tmp_path / "data"
    fill(data)
    version = data / "store" / "lockgate-store.version"
    text = version.read_text()
    # Whatever format this build writes, a store claiming 99 is refused.
    assert re.search(r"format \d+", text), text
    version.write_text(re.sub(r"format \d+", "format 99", text, count=1))
    err = start_fails(data)
    assert "format version 99" in err, err
    assert str(data / "store") in err, err


def test_garbage_database_file_is_refused(tmp_path):
    data = tmp_path / "data"
    fill(data)
    db = data / "store" / "db"
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(0)
        f.write(os.urandom(min(size, 1 << 20)))
    err = start_fails(data)
    assert "store" in err and "corrupt" in err, err


def test_a_second_broker_on_the_same_data_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    p = LockgateProcess(data_dir=data, log_level="info")
    try:
        err = start_fails(data)
        assert "locked by another process" in err, err
    finally:
        p.signal(signal.SIGTERM)
        assert p.wait(10) == 0
        p.stop()
