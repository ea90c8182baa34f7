"""Malformed and edge-case input over a raw socket, beyond test_raw_socket.py: frames on the wrong
channel, content out of step with its header, arguments that do not decode, out-of-range tune
values, handshakes out of order, slow and pipelined clients. Each case checks the answer (reply
code, connection or channel scope, the close sent before the socket closes) and that a pika
connection to the same broker keeps working.

Checked against RabbitMQ 3.10 (LOCKGATE_TEST_URL). Where RabbitMQ answers a broken handshake it
closes the socket without a word, after a 3 s delay; lockgate says why first, so those tests
accept either. The `lockgate_only` cases say why lockgate differs."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

import amqp_raw as raw
from lockgate_harness import drain, eventually, messages_memory, queue_exists, unique

TUNE_OK = (10, 31)
OPEN_OK = (10, 41)


def replies(c: raw.RawConnection) -> list[raw.Frame]:
    """Every frame until the broker ends the connection (heartbeats left out); a
    connection.close is answered with close-ok, as a client does."""
    frames = []
    while True:
        try:
            f = c.read_frame()
        except ConnectionResetError:
            return frames
        if f is None:
            return frames
        if f.kind == raw.FRAME_HEARTBEAT:
            continue
        frames.append(f)
        if f.kind == raw.FRAME_METHOD and f.method == raw.CONNECTION_CLOSE:
            try:
                c.send(raw.method_frame(0, 10, 51))
            except OSError:
                pass


def methods(frames: list[raw.Frame]) -> list[tuple[int, int]]:
    return [f.method for f in frames if f.kind == raw.FRAME_METHOD]


def closes(frames: list[raw.Frame]) -> list[raw.Close]:
    return [raw.parse_close(f.args) for f in frames
            if f.kind == raw.FRAME_METHOD and f.method == raw.CONNECTION_CLOSE]


def start_ok(user="guest", password="guest", properties=None) -> bytes:
    props = raw.table(properties or {"product": ("S", "lockgate-tests")})
    return raw.method_frame(0, 10, 11, props + raw.shortstr("PLAIN")
                            + raw.longstr(b"\x00" + user.encode() + b"\x00" + password.encode())
                            + raw.shortstr("en_US"))


def tune_ok(channel_max=0, frame_max=0, heartbeat=0) -> bytes:
    return raw.method_frame(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, heartbeat))


def connection_open(vhost="/") -> bytes:
    return raw.method_frame(0, 10, 40, raw.shortstr(vhost) + raw.shortstr("") + b"\x00")


def channel_close(channel: int) -> bytes:
    return raw.method_frame(channel, 20, 40, struct.pack(">H", 200) + raw.shortstr("")
                            + struct.pack(">HH", 0, 0))


def declare_args(channel: int, queue: str, arguments: bytes) -> bytes:
    """queue.declare (exclusive) with `arguments` as the raw octets of its table."""
    return raw.method_frame(channel, 50, 10, struct.pack(">H", 0) + raw.shortstr(queue)
                            + struct.pack(">B", 0b100) + arguments)


def assert_refused_in_handshake(frames: list[raw.Frame], codes: set[int]) -> None:
    """The handshake did not complete; if the broker said why (lockgate does, RabbitMQ closes
    without a word), it was with one of `codes`."""
    assert OPEN_OK not in methods(frames), frames
    for close in closes(frames):
        assert close.reply_code in codes, close


# --- frames on the wrong channel -----------------------------------------------------------


@pytest.mark.parametrize("frame,code,ids", [
    (lambda: raw.queue_declare(0, "x"), 504, (50, 10)),
    (lambda: raw.method_frame(0, 20, 10, raw.shortstr("")), 504, (20, 10)),
    (lambda: raw.content_header(0, 1), 505, (0, 0)),
    (lambda: raw.body_frame(0, b"x"), 505, (0, 0)),
], ids=["queue.declare", "channel.open", "header", "body"])
def test_channel_frames_on_channel_0_close_the_connection(rawconn, witness, frame, code, ids):
    c = rawconn()
    c.send(frame())
    close = c.expect_connection_close()
    assert (close.reply_code, (close.class_id, close.method_id)) == (code, ids), close
    c.expect_eof()
    witness()


@pytest.mark.parametrize("class_id,method_id,args", [
    (10, 50, struct.pack(">H", 200) + raw.shortstr("x") + struct.pack(">HH", 0, 0)),
    (10, 40, raw.shortstr("/") + raw.shortstr("") + b"\x00"),
    (20, 11, raw.longstr("")),
], ids=["connection.close", "connection.open", "channel.open-ok"])
def test_connection_and_server_methods_on_a_channel_are_503(rawconn, witness, class_id,
                                                             method_id, args):
    c = rawconn()
    c.open_channel(1)
    c.send(raw.method_frame(1, class_id, method_id, args))
    close = c.expect_connection_close()
    assert close.reply_code == 503
    assert (close.class_id, close.method_id) == (class_id, method_id)
    c.expect_eof()
    witness()


@pytest.mark.parametrize("frame", [lambda: raw.content_header(5, 1), lambda: raw.body_frame(5, b"x")],
                         ids=["header", "body"])
def test_content_on_a_channel_never_opened_is_505(rawconn, witness, frame):
    c = rawconn()
    c.send(frame())
    assert c.expect_connection_close().reply_code == 505
    witness()


# --- content out of step with its header -----------------------------------------------------


def assert_empty_then_delete(conn, q: str) -> None:
    """Nothing was routed to `q` (a message broken off half way is dropped); deletes it."""
    ch = conn.channel()
    assert drain(ch, q) == []
    ch.queue_delete(q)


def test_a_method_before_the_announced_body_is_complete_is_505(rawconn, witness, conn, name):
    q = name("partial")
    conn.channel().queue_declare(q)
    c = rawconn()
    c.open_channel(1)
    c.send(raw.basic_publish(1, "", q) + raw.content_header(1, 10) + raw.body_frame(1, b"hello")
           + raw.queue_declare(1, ""))
    close = c.expect_connection_close()
    # Named after the publish whose content the frame broke, as RabbitMQ names it.
    assert (close.reply_code, close.class_id, close.method_id) == (505, 60, 40)
    assert close.reply_text.startswith("UNEXPECTED_FRAME")
    c.expect_eof()
    assert_empty_then_delete(conn, q)
    witness()


@pytest.mark.lockgate_only
def test_a_body_longer_than_announced_is_501(rawconn, witness, conn, name):
    """RabbitMQ 3.10 keeps waiting with a negative remaining size (its assembler subtracts
    without a check); lockgate answers as the spec's frame error, naming basic.publish."""
    q = name("long")
    conn.channel().queue_declare(q)
    c = rawconn()
    c.open_channel(1)
    c.send(raw.basic_publish(1, "", q) + raw.content_header(1, 3) + raw.body_frame(1, b"hello"))
    close = c.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (501, 60, 40)
    c.expect_eof()
    assert_empty_then_delete(conn, q)
    witness()


@pytest.mark.lockgate_only
@pytest.mark.parametrize("size", [2 ** 63, 2 ** 64 - 1])
def test_a_header_announcing_a_huge_body_closes_the_channel_at_once(rawconn, witness, size):
    """lockgate checks max_message_size at the header, before buffering anything, and closes
    the channel (406) as RabbitMQ does once it has the whole body; RabbitMQ 3.10 waits for a
    body that could never fit. The body frames that follow are dropped with the channel."""
    c = rawconn()
    c.open_channel(1)
    c.send(raw.basic_publish(1, "", "nowhere") + raw.content_header(1, size)
           + raw.body_frame(1, b"x" * 1000))
    close = c.expect_channel_close()
    assert (close.reply_code, close.class_id, close.method_id) == (406, 60, 40)
    c.send(raw.method_frame(1, 20, 41))
    c.open_channel(1)
    witness()


@pytest.mark.lockgate_only
def test_channel_close_in_the_middle_of_content_drops_the_partial_message(rawconn, witness,
                                                                           conn, name):
    """The spec lets a sender abort content with any non-content frame; lockgate takes a
    channel.close there as a plain close (the partial message is dropped), where RabbitMQ 3.10
    closes the whole connection with 505."""
    q = name("aborted")
    conn.channel().queue_declare(q)
    c = rawconn()
    c.open_channel(1)
    c.send(raw.basic_publish(1, "", q) + raw.content_header(1, 5) + raw.body_frame(1, b"ab")
           + channel_close(1))
    c.read_method((20, 41))
    c.open_channel(1)
    assert_empty_then_delete(conn, q)
    witness()


# --- method arguments that do not decode ------------------------------------------------------


@pytest.mark.parametrize("arguments", [
    b"\x00\x00\x05ab",
    struct.pack(">H", 0) + raw.shortstr("tq") + b"\x08" + raw.table({}) + b"junk",
    struct.pack(">H", 0) + b"\xffab",
    struct.pack(">H", 0) + raw.shortstr("tq") + b"\x08" + struct.pack(">I", 0xFFFFFFFF) + b"\x01k",
], ids=["truncated", "trailing-octets", "shortstr-past-the-frame", "table-length-4GiB"])
def test_arguments_that_do_not_decode_are_501_naming_the_method(rawconn, witness, arguments):
    """As RabbitMQ: FRAME_ERROR, and the connection.close names the method it could not
    decode (lockgate named none before)."""
    c = rawconn()
    c.open_channel(1)
    c.send(raw.method_frame(1, 50, 10, arguments))
    close = c.expect_connection_close()
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR - cannot decode")
    assert (close.class_id, close.method_id) == (50, 10)
    c.expect_eof()
    witness()


def nested_tables(depth: int) -> dict:
    t = {"x": ("t", True)}
    for _ in range(depth):
        t = {"n": ("F", t)}
    return t


@pytest.mark.lockgate_only
def test_tables_nested_deeper_than_64_are_501(rawconn, witness):
    """RabbitMQ (Erlang) decodes any depth; lockgate bounds nesting at 64 (MAX_NESTING) so that
    a peer cannot make its recursive decoder, and every later walk over the value, run out
    of stack. 64 levels is far beyond any real header or argument table."""
    c = rawconn()
    c.open_channel(1)
    c.send(declare_args(1, "", raw.table(nested_tables(100))))
    close = c.expect_connection_close()
    assert close.reply_code == 501
    assert "nested deeper than 64" in close.reply_text
    assert (close.class_id, close.method_id) == (50, 10)
    witness()


# --- frame sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [raw.FRAME_METHOD, raw.FRAME_BODY])
def test_a_frame_declaring_4_gib_is_refused_before_it_is_read(rawconn, witness, kind):
    c = rawconn()
    c.open_channel(1)
    c.send(struct.pack(">BHI", kind, 1, 0xFFFFFFFF) + b"abc")
    close = c.expect_connection_close()
    assert close.reply_code == 501
    c.expect_eof()
    witness()


def test_frame_max_is_what_the_client_tuned_with_rabbitmqs_8_octets_of_slack(rawconn, witness,
                                                                              conn, name):
    q = name("fm")
    conn.channel().queue_declare(q)
    c = rawconn(frame_max=4096)
    c.open_channel(1)
    # A whole frame of frame_max + 8 octets passes (clients that count frame_max as payload).
    body = b"x" * 4096
    c.send(raw.basic_publish(1, "", q) + raw.content_header(1, len(body))
           + raw.body_frame(1, body))
    ch = conn.channel()
    eventually(lambda: ch.queue_declare(q, passive=True).method.message_count == 1)
    # One octet more is a frame error.
    c.send(raw.basic_publish(1, "", q) + raw.content_header(1, len(body) + 1)
           + raw.body_frame(1, body + b"x"))
    close = c.expect_connection_close()
    assert close.reply_code == 501
    assert drain(ch, q) == [body]
    ch.queue_delete(q)
    witness()


# --- the handshake ----------------------------------------------------------------------------


def test_a_start_ok_over_the_minimum_frame_max_is_refused(rawconn, witness):
    """Until tune-ok, frames are held to 4096 octets (the spec's minimum frame_max), as in
    RabbitMQ: a client that has not logged in cannot make the broker buffer the configured
    frame_max (lockgate accepted it before)."""
    c = rawconn(handshake=False)
    c.send(raw.PROTOCOL_HEADER)
    c.read_method(raw.CONNECTION_START)
    c.send(start_ok(properties={"product": ("S", "big"), "padding": ("S", "p" * 6000)}))
    frames = replies(c)
    assert raw.CONNECTION_TUNE not in methods(frames)
    assert_refused_in_handshake(frames, {501})
    witness()


@pytest.mark.parametrize("values,text", [
    (dict(frame_max=1000), "lower than the minimum"),
    (dict(frame_max=1 << 30), "higher than the maximum"),
    (dict(channel_max=65535), "higher than the maximum"),
], ids=["frame_max-below-4096", "frame_max-above-proposal", "channel_max-above-proposal"])
def test_tune_ok_out_of_range_is_refused(rawconn, witness, broker, values, text):
    c = rawconn(handshake=False)
    c.send(raw.PROTOCOL_HEADER)
    c.read_method(raw.CONNECTION_START)
    c.send(start_ok(broker.user, broker.password))
    c.read_method(raw.CONNECTION_TUNE)
    c.send(tune_ok(**{"channel_max": 10, "frame_max": 4096, **values})
           + connection_open(broker.vhost))
    frames = replies(c)
    assert_refused_in_handshake(frames, {530})
    for close in closes(frames):
        assert text in close.reply_text
        assert (close.class_id, close.method_id) == TUNE_OK
    witness()


@pytest.mark.parametrize("frames", [
    lambda b: start_ok(b.user, b.password) + start_ok(b.user, b.password),
    lambda b: connection_open(b.vhost),
    lambda b: start_ok(b.user, b.password) + raw.method_frame(1, 20, 10, raw.shortstr("")),
    lambda b: raw.frame(raw.FRAME_HEARTBEAT, 1, b""),
    lambda b: raw.content_header(0, 0),
], ids=["second-start-ok", "open-before-start-ok", "channel-open-before-tune-ok",
        "heartbeat-on-channel-1", "content-header"])
def test_a_handshake_out_of_order_ends_the_connection(rawconn, witness, broker, frames):
    c = rawconn(handshake=False)
    c.send(raw.PROTOCOL_HEADER)
    c.read_method(raw.CONNECTION_START)
    c.send(frames(broker))
    got = replies(c)
    assert_refused_in_handshake(got, {504, 505})
    witness()


@pytest.mark.lockgate_only
def test_a_channel_above_channel_max_is_530(rawconn, witness, broker):
    """channel-max is "the highest channel number that the server permits" (spec); RabbitMQ
    3.10 only counts open channels and opens channel 11 with channel_max 10."""
    c = rawconn(handshake=False)
    c.send(raw.PROTOCOL_HEADER)
    c.read_method(raw.CONNECTION_START)
    c.send(start_ok(broker.user, broker.password))
    c.read_method(raw.CONNECTION_TUNE)
    c.send(tune_ok(channel_max=10, frame_max=4096) + connection_open(broker.vhost))
    c.read_method(OPEN_OK)
    c.open_channel(10)
    c.send(raw.method_frame(11, 20, 10, raw.shortstr("")))
    close = c.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (530, 20, 10)
    witness()


def test_a_client_trickling_its_handshake_is_cut_at_the_handshake_timeout(rawconn, witness,
                                                                         broker):
    """Slowloris: one octet a second never completes a handshake (which takes over a
    minute at that pace) and does not hold the connection past the 10 s handshake
    timeout (both brokers)."""
    c = rawconn(handshake=False, timeout=60.0)
    data = (raw.PROTOCOL_HEADER + start_ok(broker.user, broker.password) + tune_ok()
            + connection_open(broker.vhost))
    closed = threading.Event()

    def trickle():
        for octet in data:
            if closed.is_set():
                return
            try:
                c.send(bytes([octet]))
            except OSError:
                return
            time.sleep(1.0)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        frames = replies(c)
    finally:
        closed.set()
    assert OPEN_OK not in methods(frames)
    assert sender.is_alive(), "the connection ended only after the whole handshake was sent"
    witness()


# --- heartbeats -------------------------------------------------------------------------------


def test_octets_of_a_frame_sent_slowly_count_as_heartbeat_traffic(rawconn, witness, conn, name):
    """A client sending one large frame over a slow link sends no heartbeat frame meanwhile;
    the octets arriving are traffic (the spec: "no incoming traffic (i.e. received octets)"),
    as RabbitMQ counts them. lockgate counted whole frames and dropped such a client."""
    q = name("slow")
    conn.channel().queue_declare(q)
    c = rawconn(heartbeat=2)
    c.open_channel(1)
    body = bytes(i % 251 for i in range(60_000))
    data = raw.basic_publish(1, "", q) + raw.content_header(1, len(body)) + raw.body_frame(1, body)
    # Over 8 s, twice the 4 s the broker waits for traffic, in steps of 0.1 s.
    steps = 80
    step = len(data) // steps + 1
    for at in range(0, len(data), step):
        c.send(data[at:at + step])
        time.sleep(0.1)
    c.send(raw.basic_get(1, q))
    c.read_method((60, 71))
    content = []
    while sum(len(f.payload) for f in content[1:]) < len(body):
        f = c.read_frame()
        if f.kind != raw.FRAME_HEARTBEAT:
            content.append(f)
    assert [f.kind for f in content[:2]] == [raw.FRAME_HEADER, raw.FRAME_BODY]
    assert b"".join(f.payload for f in content[1:]) == body
    conn.channel().queue_delete(q)
    witness()


# --- pipelining and churn ---------------------------------------------------------------------


def test_frames_pipelined_after_connection_close_are_not_executed(rawconn, witness, conn, name):
    q = name("after-close")
    c = rawconn()
    c.open_channel(1)
    c.send(raw.method_frame(0, 10, 50, struct.pack(">H", 200) + raw.shortstr("bye")
                            + struct.pack(">HH", 0, 0))
           + raw.queue_declare(1, q) + raw.method_frame(2, 20, 10, raw.shortstr("")))
    c.read_method(raw.CONNECTION_CLOSE_OK)
    c.close()
    assert not queue_exists(conn, q)
    witness()


def test_frames_pipelined_after_a_channel_error_are_dropped_until_close_ok(rawconn, witness,
                                                                            conn, name):
    q = name("after-error")
    conn.channel().queue_declare(q)
    c = rawconn()
    c.open_channel(1)
    c.send(raw.basic_get(1, unique("missing"))
           + raw.basic_publish(1, "", q) + raw.content_header(1, 7) + raw.body_frame(1, b"dropped")
           + raw.method_frame(1, 20, 41)
           + raw.method_frame(1, 20, 10, raw.shortstr(""))
           + raw.basic_publish(1, "", q) + raw.content_header(1, 4) + raw.body_frame(1, b"kept"))
    close = c.expect_channel_close()
    assert close.reply_code == 404
    c.read_method(raw.CHANNEL_OPEN_OK)
    ch = conn.channel()
    eventually(lambda: ch.queue_declare(q, passive=True).method.message_count == 1)
    assert drain(ch, q) == [b"kept"]
    ch.queue_delete(q)
    witness()


def test_channels_opened_and_closed_by_the_thousand(rawconn, witness):
    c = rawconn(timeout=60.0)
    rounds = 3
    numbers = range(1, min(c.channel_max, 2047) + 1)
    batch = b"".join(raw.method_frame(n, 20, 10, raw.shortstr("")) + channel_close(n)
                     for n in numbers)
    seen = {n: [] for n in numbers}
    for _ in range(rounds):
        # A number is reused only after its close-ok: RabbitMQ closes channels asynchronously
        # (a pipelined reopen there is 504 "second 'channel.open' seen").
        sender = threading.Thread(target=c.send, args=(batch,), daemon=True)
        sender.start()
        # Per channel, open-ok then close-ok (RabbitMQ may interleave channels).
        for _ in range(2 * len(numbers)):
            f = c.read_method()
            seen[f.channel].append(f.method)
        sender.join()
    assert all(got == [raw.CHANNEL_OPEN_OK, (20, 41)] * rounds for got in seen.values())
    # The connection still works, and every number is free again.
    c.send(raw.queue_declare(numbers[-1], ""))
    close = c.expect_connection_close()
    assert close.reply_code == 504
    witness()


# --- the memory alarm -------------------------------------------------------------------------


WATERMARK = 1024 * 1024
METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'


@pytest.mark.lockgate_only
def test_the_memory_alarm_stops_reading_bodies_already_announced(lockgate):
    """Publishes announced on many channels, then their bodies: once the alarm is on, the
    connection is not read past its next content frame (as RabbitMQ blocks at any content
    frame), so partial bodies stop at about the watermark. Before, only a basic.publish was
    held and one connection could fill memory with channel_max x max_message_size. Needs its
    own broker with a small watermark."""
    b = lockgate(f"[memory]\nhigh_watermark = {WATERMARK}\n{METRICS}")
    witness = b.connect()
    wch = witness.channel()
    wq = wch.queue_declare("", exclusive=True).method.queue
    c = raw.RawConnection(b.host, b.port, timeout=5.0)
    try:
        # A blocked connection is not read: with heartbeats on, the broker's own heartbeats
        # fail once the client is gone, which ends it (without them, it waits for the alarm,
        # as in RabbitMQ).
        c.handshake(heartbeat=3)
        channels = 8
        for channel in range(1, channels + 1):
            c.open_channel(channel)
            c.send(raw.basic_publish(channel, "", "nowhere")
                   + raw.content_header(channel, 64 * 1024 * 1024))
        chunk = c.frame_max - 8
        total = 16 * WATERMARK
        frames = b"".join(raw.body_frame(channel, b"b" * chunk)
                          for channel in range(1, channels + 1))
        sent = 0
        try:
            while sent < total:
                # Blocks, then times out, once the broker stops reading.
                c.send(frames)
                sent += len(frames)
        except (TimeoutError, socket.timeout):
            pass
        eventually(lambda: messages_memory(b) >= WATERMARK, message="the alarm's watermark reached")
        used = messages_memory(b)
        assert used < 2 * WATERMARK, f"{used} octets of partial bodies read past the alarm"
        # Other connections are served meanwhile (their publishes wait for the alarm).
        assert wch.queue_declare(wq, passive=True).method.message_count == 0
    finally:
        c.close()
    eventually(lambda: messages_memory(b) == 0, message="the partial bodies released")
    witness.close()
    assert b.process.alive()
