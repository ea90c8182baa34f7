"""A queued message must not keep the connection's read buffer alive beyond a small multiple of
what the memory monitor charges for it.

A busy connection reads into 64 KiB chunks, and a body that stays a slice of its chunk keeps the
whole chunk allocated while the message is queued. The case that hurts: most messages of a chunk
leave at once (here: unroutable, dropped) and one stays behind in a queue nobody consumes, as in
a fan-out to one slow service. The broker's resident memory must then grow with the queued bytes,
not with the bytes read: otherwise the memory alarm, which counts bodies and properties, never
fires before the OS runs out of memory.
"""

import pytest

import amqp_raw as raw
from lockgate_harness import eventually

# What a busy connection reads into at once (READ_CHUNK in crates/server/src/connection).
READ_CHUNK = 64 * 1024
# Bodies below this are copied out of the read buffer (SHARED_BODY_MIN in
# crates/broker/src/message.rs); a larger one may keep at most its chunk alive.
SHARED_BODY_MIN = 16 * 1024
# Resident memory allowed per queued octet: what a body in a chunk of its own would pin at worst,
# plus one for the body's own share.
MAX_GROWTH_PER_QUEUED_OCTET = READ_CHUNK // SHARED_BODY_MIN + 1
# Allowance for the allocator and the runtime, independent of the backlog.
SLACK = 16 << 20


def rss(broker) -> int:
    with open(f"/proc/{broker.process.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def publish(routing_key: str, body: bytes) -> bytes:
    return (raw.basic_publish(1, "", routing_key) + raw.content_header(1, len(body))
            + raw.body_frame(1, body))


@pytest.mark.lockgate_only
@pytest.mark.parametrize("size, batches", [
    # Just over what was copied before (256 octets): ~200 messages per chunk.
    (300, 1500),
    (1000, 2000),
    # Just over the copy limit: such a body stays shared, and pins at most its chunk.
    (SHARED_BODY_MIN + 1, 600),
])
def test_a_queued_body_does_not_pin_its_read_chunk(lockgate, size, batches):
    b = lockgate()
    body = b"x" * size
    kept, dropped = publish("slow", body), publish("nowhere", body)
    # One message per chunk stays queued; the rest of the chunk is unroutable and dropped.
    batch = kept + dropped * max(1, READ_CHUNK // len(kept) - 1)
    with raw.RawConnection(b.host, b.port) as c:
        c.handshake()
        c.open_channel(1)
        c.send(raw.queue_declare(1, "slow"))
        c.read_method((50, 11))
        # Warm up: the read buffer busy, the allocator's pools in use, nothing queued.
        for _ in range(200):
            c.send(dropped * (len(batch) // len(dropped)))
        # A round trip on the same connection: the warm-up is read before `before` is taken.
        c.send(raw.queue_declare(1, "slow"))
        c.read_method((50, 11))
        conn = b.connect()
        ch = conn.channel()
        assert ch.queue_declare("slow", passive=True).method.message_count == 0
        before = rss(b)
        for _ in range(batches):
            c.send(batch)
        eventually(lambda: ch.queue_declare("slow", passive=True).method.message_count == batches,
                   timeout=30, message=f"{batches} messages queued")
        grown = rss(b) - before
        conn.close()
    queued = batches * size
    assert grown <= MAX_GROWTH_PER_QUEUED_OCTET * queued + SLACK, (
        f"{batches} queued bodies of {size} octets ({queued >> 10} KiB) grew the broker's "
        f"resident memory by {grown >> 10} KiB")
