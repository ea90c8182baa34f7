"""Bad input at the socket level, checked with a raw socket, while a pika connection to the same
broker keeps working. Also a few things pika cannot send (every field-table tag, empty consumer
tags) and a client that stops answering heartbeats."""

import socket
import struct
import time

import pytest

import amqp_raw as raw


@pytest.mark.parametrize("greeting", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"AMQP\x00\x00\x09\x00",
    b"AMQP\x03\x01\x00\x00",
], ids=["http", "amqp-0-9", "amqp-1-0"])
def test_wrong_protocol_header_gets_ours_and_a_close(rawconn, witness, greeting):
    c = rawconn(handshake=False)
    c.send(greeting)
    assert c.read_raw(8) == raw.PROTOCOL_HEADER
    c.expect_eof()
    witness()


def test_frame_over_frame_max_is_501(rawconn, witness):
    c = rawconn()
    c.send(struct.pack(">BHI", raw.FRAME_METHOD, 0, 200_000))
    close = c.expect_connection_close()
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    c.expect_eof()
    witness()


def test_bad_frame_end_is_501(rawconn, witness):
    c = rawconn()
    c.send(struct.pack(">BHI", raw.FRAME_METHOD, 0, 4) + struct.pack(">HH", 20, 10) + b"\x00")
    close = c.expect_connection_close()
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    witness()


def test_unknown_frame_type_is_501(rawconn, witness):
    c = rawconn()
    c.send(raw.frame(9, 0, b""))
    close = c.expect_connection_close()
    assert close.reply_code == 501
    witness()


@pytest.mark.parametrize("class_id,method_id", [(999, 10), (60, 999)])
def test_unknown_class_or_method_ends_the_connection(rawconn, witness, class_id, method_id):
    c = rawconn()
    c.open_channel(1)
    c.send(raw.method_frame(1, class_id, method_id))
    # RabbitMQ drops the socket; lockgate says why first (540 NOT_IMPLEMENTED).
    try:
        f = c.read_frame()
    except ConnectionResetError:
        f = None
    if f is not None:
        assert f.method == raw.CONNECTION_CLOSE
        close = raw.parse_close(f.args)
        assert close.reply_code in (503, 540), close
    c.expect_eof()
    witness()


@pytest.mark.parametrize("frames,text_start", [
    (lambda: raw.body_frame(1, b"x"), "UNEXPECTED_FRAME"),
    (lambda: raw.content_header(1, 1), "UNEXPECTED_FRAME"),
    (lambda: raw.basic_publish(1, "", "x") + raw.queue_declare(1, ""), "UNEXPECTED_FRAME"),
    (lambda: raw.basic_publish(1, "", "x") + raw.body_frame(1, b"x"), "UNEXPECTED_FRAME"),
], ids=["body-first", "header-first", "method-instead-of-header", "body-instead-of-header"])
def test_content_frames_out_of_order_are_505(rawconn, witness, frames, text_start):
    c = rawconn()
    c.open_channel(1)
    c.send(frames())
    close = c.expect_connection_close()
    assert close.reply_code == 505
    assert close.reply_text.startswith(text_start)
    witness()


def test_heartbeat_on_a_channel_is_505(rawconn, witness):
    c = rawconn()
    c.open_channel(1)
    c.send(raw.frame(raw.FRAME_HEARTBEAT, 1, b""))
    assert c.expect_connection_close().reply_code == 505
    witness()


def test_method_on_unopened_channel_is_504(rawconn, witness):
    c = rawconn()
    c.send(raw.queue_declare(3, ""))
    close = c.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text == "CHANNEL_ERROR - expected 'channel.open'"
    assert (close.class_id, close.method_id) == (50, 10)
    witness()


def test_second_channel_open_is_504(rawconn, witness):
    c = rawconn()
    c.open_channel(1)
    c.send(raw.method_frame(1, 20, 10, raw.shortstr("")))
    close = c.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text == "CHANNEL_ERROR - second 'channel.open' seen"
    witness()


def test_immediate_flag_is_540(rawconn, witness):
    c = rawconn()
    c.open_channel(1)
    c.send(raw.method_frame(1, 60, 40, struct.pack(">H", 0) + raw.shortstr("")
                            + raw.shortstr("x") + struct.pack(">B", 0b10))
           + raw.content_header(1, 0))
    close = c.expect_connection_close()
    assert close.reply_code == 540
    assert close.reply_text == "NOT_IMPLEMENTED - immediate=true"
    witness()


def test_stall_mid_frame_does_not_block_others(rawconn, witness, conn):
    stalled = rawconn()
    stalled.open_channel(1)
    whole = raw.basic_publish(1, "", "nowhere")
    stalled.send(whole[: len(whole) // 2])
    half_header = rawconn(handshake=False)
    half_header.send(raw.PROTOCOL_HEADER[:5])
    # Meanwhile everyone else is served, repeatedly.
    for _ in range(5):
        witness()
        conn.channel().close()
    # The stalled frame can even be finished later.
    stalled.send(whole[len(whole) // 2:] + raw.content_header(1, 0))
    stalled.send(raw.queue_declare(1, "", exclusive=True))
    f = stalled.read_method((50, 11))
    assert raw.read_shortstr(f.args, 0)[0].startswith("amq.gen-")


def test_client_gone_mid_frame_gets_no_close(rawconn, witness):
    """EOF inside a frame is a lost connection, as in RabbitMQ: nobody is left to read a
    connection.close (before, lockgate sent 541 INTERNAL_ERROR, blaming itself)."""
    c = rawconn()
    c.open_channel(1)
    c.send(raw.basic_publish(1, "", "x")[:5])
    c.sock.shutdown(socket.SHUT_WR)
    assert c.read_frame() is None
    witness()


def test_server_generated_consumer_tag(rawconn, witness):
    c = rawconn()
    c.open_channel(1)
    c.send(raw.queue_declare(1, "", exclusive=True))
    q = raw.read_shortstr(c.read_method((50, 11)).args, 0)[0]
    c.send(raw.basic_consume(1, q, ""))
    t1 = raw.read_shortstr(c.read_method((60, 21)).args, 0)[0]
    c.send(raw.basic_consume(1, q, ""))
    t2 = raw.read_shortstr(c.read_method((60, 21)).args, 0)[0]
    assert t1.startswith("amq.ctag-") and t2.startswith("amq.ctag-")
    assert t1 != t2
    witness()


ALL_TAGS = {
    "bool": ("t", True), "i8": ("b", -8), "u8": ("B", 200), "i16": ("s", -1600),
    "u16": ("u", 60000), "i32": ("I", -320000), "u32": ("i", 4000000000),
    "i64": ("l", -(2 ** 60)), "f32": ("f", 1.5), "f64": ("d", -2.25),
    "dec": ("D", (2, 31415)), "str": ("S", "t\u00e9xt"), "bytes": ("x", b"\x00\xff"),
    "ts": ("T", 1700000000), "void": ("V", None),
    "arr": ("A", [("I", 1), ("S", "two"), ("A", [("t", False)]), ("F", {"k": ("b", 1)})]),
    "tbl": ("F", {"nested": ("F", {"deep": ("d", 0.5)}), "empty": ("F", {})}),
}


def test_every_field_table_tag_round_trips_byte_for_byte(rawconn, witness):
    c = rawconn()
    c.open_channel(1)
    c.send(raw.queue_declare(1, "", exclusive=True))
    q = raw.read_shortstr(c.read_method((50, 11)).args, 0)[0]
    # Property flags: content-type (bit 15) + headers (bit 13) + delivery-mode (bit 12).
    props = (struct.pack(">H", 0b1011_0000_0000_0000) + raw.shortstr("text/plain")
             + raw.table(ALL_TAGS) + struct.pack(">B", 1))
    body = b"tagged"
    c.send(raw.basic_publish(1, "", q) + raw.content_header(1, len(body), props)
           + raw.body_frame(1, body))
    c.send(raw.basic_get(1, q))
    c.read_method((60, 71))
    header = c.read_frame()
    assert header.kind == raw.FRAME_HEADER
    assert header.payload[:12] == struct.pack(">HHQ", 60, 0, len(body))
    assert header.payload[12:] == props
    got = c.read_frame()
    assert (got.kind, got.payload) == (raw.FRAME_BODY, body)
    witness()


def test_client_that_stops_heartbeating_is_disconnected(broker, witness):
    c = raw.RawConnection(broker.host, broker.port, timeout=10)
    try:
        c.handshake(vhost=broker.vhost, user=broker.user, password=broker.password, heartbeat=1)
        c.open_channel(1)
        start = time.monotonic()
        heartbeats = 0
        # Read (and never answer) until the server gives up on us.
        while True:
            try:
                f = c.read_frame()
            except (ConnectionResetError, TimeoutError):
                f = None
            if f is None:
                break
            assert f.kind in (raw.FRAME_HEARTBEAT, raw.FRAME_METHOD)
            heartbeats += f.kind == raw.FRAME_HEARTBEAT
        elapsed = time.monotonic() - start
        assert 1.0 <= elapsed <= 8.0, elapsed
        # The server heartbeats on its side too.
        assert heartbeats >= 1
    finally:
        c.close()
    witness()


def test_client_closes_the_socket_after_close_ok(rawconn, witness):
    """After connection.close-ok the server leaves the TCP close to the client, as RabbitMQ
    does; a server that hangs up first makes lapin report ConnectionAborted on close()."""
    c = rawconn()
    c.send(raw.method_frame(0, 10, 50, struct.pack(">H", 200) + raw.shortstr("bye")
                            + struct.pack(">HH", 0, 0)))
    c.read_method(raw.CONNECTION_CLOSE_OK)
    c.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        # Nothing more, not even EOF, while the client has not closed its end.
        c.sock.recv(1)
    witness()


@pytest.mark.lockgate_only
def test_long_multibyte_name_in_a_reply_text_is_cut_on_a_character(rawconn):
    """A 404 quotes the queue name, here 255 octets: the reply text is cut to fit a shortstr, as
    RabbitMQ cuts it (252 octets and "..."), but not inside a character: clients decode it as
    UTF-8. Before, the channel.close could not be encoded and the connection was dropped."""
    c = rawconn()
    c.open_channel(1)
    name = "x" + "é" * 127
    c.send(raw.basic_get(1, name))
    close = c.expect_channel_close()
    assert close.reply_code == 404
    assert close.reply_text.endswith("...")
    assert f"NOT_FOUND - no queue '{name}".startswith(close.reply_text[:-3])
