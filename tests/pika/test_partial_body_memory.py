"""A message body arriving over several frames counts against the memory watermark while it
arrives, not only once it is complete: otherwise a client could hold up to max_message_size on
every channel of every connection without the memory alarm ever seeing it. The charge goes with
the connection, and a completed message is counted once."""

import pytest

import amqp_raw as raw
from lockgate_harness import eventually, messages_memory, pump, queue_count

pytestmark = pytest.mark.lockgate_only

WATERMARK = 1024 * 1024
METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'
CHANNELS = 3
# Announced per channel, never sent in full.
ANNOUNCED = 8 * 1024 * 1024


def start_bodies(r: raw.RawConnection, per_channel: int) -> int:
    """Opens CHANNELS channels, each with a publish announcing ANNOUNCED octets, then sends
    `per_channel` octets of each body in full frames. Returns the octets sent. Once on, the alarm
    holds a connection at its next publish or content frame: sized as the tests size them, the
    octets cross the watermark only with the last frame, so every frame is read."""
    chunk = r.frame_max - 8
    for channel in range(1, CHANNELS + 1):
        r.open_channel(channel)
        r.send(raw.basic_publish(channel, "", "nowhere") + raw.content_header(channel, ANNOUNCED))
    for channel in range(1, CHANNELS + 1):
        for _ in range(per_channel // chunk):
            r.send(raw.body_frame(channel, b"b" * chunk))
    return CHANNELS * (per_channel // chunk) * chunk


@pytest.mark.parametrize("ending", ["socket closed", "protocol error"])
def test_unfinished_bodies_raise_the_memory_alarm_until_their_connection_goes(lockgate, ending):
    b = lockgate(f"[memory]\nhigh_watermark = {WATERMARK}\n{METRICS}")
    r = raw.RawConnection(b.host, b.port)
    r.handshake()
    sent = start_bodies(r, WATERMARK // CHANNELS + r.frame_max)
    assert sent >= WATERMARK
    eventually(lambda: messages_memory(b) == sent, timeout=10,
               message=f"the {sent} octets of unfinished bodies counted")
    # Another publisher is blocked by the alarm, and told so.
    probe = b.connect()
    blocked = []
    probe.add_on_connection_blocked_callback(lambda *_: blocked.append(True))
    probe.add_on_connection_unblocked_callback(lambda *_: blocked.append(False))
    probe.channel().basic_publish("", "nowhere", b"p")
    pump(probe, lambda: blocked, timeout=10, message="connection.blocked")
    if ending == "socket closed":
        r.close()
    else:
        # A method where body frames are expected: the broker closes the connection (505).
        r.send(raw.queue_declare(1, "q"))
        assert r.expect_connection_close().reply_code == 505
        r.close()
    pump(probe, lambda: blocked[-1] is False, timeout=10, message="connection.unblocked")
    eventually(lambda: messages_memory(b) == 0, timeout=10, message="the charge released")
    probe.close()


def test_a_body_completed_is_counted_once_and_released_with_its_message(lockgate):
    b = lockgate(METRICS)
    conn = b.connect()
    ch = conn.channel()
    ch.queue_declare("q")
    with raw.RawConnection(b.host, b.port) as r:
        r.handshake()
        r.open_channel(1)
        chunk = r.frame_max - 8
        size = 8 * chunk + 100
        body = bytes(i % 251 for i in range(size))
        r.send(raw.basic_publish(1, "", "q") + raw.content_header(1, size))
        half = 4 * chunk
        for at in range(0, half, chunk):
            r.send(raw.body_frame(1, body[at:at + chunk]))
        eventually(lambda: messages_memory(b) == half, timeout=10, message="half the body counted")
        for at in range(half, size, chunk):
            r.send(raw.body_frame(1, body[at:at + chunk]))
        eventually(lambda: queue_count(conn, "q") == 1, timeout=10, message="the message queued")
        # The message's own charge (body and properties), not the parts as well.
        used = messages_memory(b)
        assert size <= used < size + 64, f"{used} octets counted for a {size}-octet message"
        _, _, got = ch.basic_get("q", auto_ack=True)
        assert got == body
        eventually(lambda: messages_memory(b) == 0, timeout=10, message="the charge released")
    conn.close()
