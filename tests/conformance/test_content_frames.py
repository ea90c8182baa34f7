"""Content header frames a client gets wrong, answered as RabbitMQ 3.10 answers them: the
reply (505, its text, and the basic.publish's ids when the frame broke a publish's content)
depends on what the channel expected (rabbit_command_assembler). A header with a non-zero
weight is no content header to RabbitMQ; one of another class is named by its class."""

import struct

import pytest

import amqp_raw as raw

NOT_A_METHOD = "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
NOT_A_HEADER = ("UNEXPECTED_FRAME - expected content header for class 60, got non content "
                "header frame instead")
NOT_A_BODY = "UNEXPECTED_FRAME - expected content body, got non content body frame instead"


def header(channel, class_id, weight, body_size):
    return raw.frame(raw.FRAME_HEADER, channel,
                     struct.pack(">HHQ", class_id, weight, body_size) + b"\x00\x00")


def publish(channel=1):
    return raw.basic_publish(channel, "amq.direct", "nowhere")


@pytest.mark.parametrize("frames,text,ids", [
    (lambda: publish() + header(1, 50, 0, 1),
     "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
     (60, 40)),
    (lambda: publish() + header(1, 0, 0, 0),
     "UNEXPECTED_FRAME - expected content header for class 60, got one for class 0 instead",
     (60, 40)),
    (lambda: publish() + header(1, 9999, 0, 0),
     "UNEXPECTED_FRAME - expected content header for class 60, got one for class 9999 instead",
     (60, 40)),
    (lambda: publish() + header(1, 60, 1, 1), NOT_A_HEADER, (60, 40)),
    # The weight is checked before the class.
    (lambda: publish() + header(1, 50, 1, 1), NOT_A_HEADER, (60, 40)),
    (lambda: header(1, 50, 0, 1), NOT_A_METHOD, (0, 0)),
    (lambda: header(1, 60, 1, 1), NOT_A_METHOD, (0, 0)),
    (lambda: publish() + header(1, 60, 0, 3) + header(1, 50, 0, 1), NOT_A_BODY, (60, 40)),
    (lambda: publish() + header(1, 60, 0, 3) + header(1, 60, 1, 1), NOT_A_BODY, (60, 40)),
    # On a channel never opened.
    (lambda: header(5, 50, 0, 1), NOT_A_METHOD, (0, 0)),
    (lambda: header(5, 60, 0, 1), NOT_A_METHOD, (0, 0)),
], ids=["class-50", "class-0", "class-9999", "weight-1", "class-50-weight-1",
        "class-50-without-publish", "weight-1-without-publish", "class-50-in-body",
        "weight-1-in-body", "class-50-on-unopened-channel", "header-on-unopened-channel"])
def test_a_bad_content_header_closes_the_connection_as_rabbitmq(broker, frames, text, ids):
    c = raw.RawConnection(broker.host, broker.port)
    try:
        c.handshake(vhost=broker.vhost, user=broker.user, password=broker.password)
        c.open_channel(1)
        c.send(frames())
        close = c.expect_connection_close()
        assert (close.reply_code, close.reply_text, (close.class_id, close.method_id)) == (
            505, text, ids)
        c.expect_eof()
    finally:
        c.close()
