"""lockgate's log on a stderr that is not read: the broker keeps serving, and once the reader
is back every line arrives, in order."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile

import pytest

import amqp_raw as raw
from lockgate_harness import LISTENING, lockgate_binary

OPENED = re.compile(r"channel opened channel=(\d+)")
CHANNELS = 1500  # two debug lines each: several times what a pipe holds (64 KiB)


@pytest.mark.lockgate_only
def test_a_stderr_nobody_reads_does_not_stall_the_broker():
    """A log collector that stops reading fills the pipe; log writes from the broker's
    workers would then block, and with them every connection (a channel.open went
    unanswered for as long as the pipe was not read)."""
    read_end, write_end = os.pipe()
    with tempfile.TemporaryDirectory(prefix="lockgate-test-") as data:
        proc = subprocess.Popen([str(lockgate_binary()), "--listen", "127.0.0.1:0",
                                 "--data-dir", data, "--log-level", "debug"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=write_end, env=dict(os.environ, NO_COLOR="1"))
        os.close(write_end)
        log = os.fdopen(read_end, "rb")
        try:
            port = None
            while port is None:
                line = log.readline().decode()
                assert line, "lockgate ended before it listened"
                m = LISTENING.search(line)
                port = m and int(m.group(2))
            # From here on nobody reads the log until every channel has been opened.
            c = raw.RawConnection("127.0.0.1", port, timeout=10.0)
            c.handshake()
            close = struct.pack(">H", 200) + raw.shortstr("bye") + struct.pack(">HH", 0, 0)
            for number in range(1, CHANNELS + 1):
                c.open_channel(number)  # times out if the broker is stuck in a log write
                c.send(raw.method_frame(number, 20, 40, close))
                c.read_method((20, 41))
            c.close()
            opened = []
            while len(opened) < CHANNELS:
                line = log.readline().decode()
                assert line, f"the log ended after {len(opened)} channel openings"
                m = OPENED.search(line)
                if m:
                    opened.append(int(m.group(1)))
            assert opened == list(range(1, CHANNELS + 1))
        finally:
            log.close()  # first: a broker stuck writing to the pipe gets EPIPE and goes on
            proc.terminate()
            proc.wait(timeout=30)
