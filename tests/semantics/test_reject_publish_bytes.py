"""x-overflow reject-publish with x-max-length-bytes refuses a message that would take the queue
past the limit (RabbitMQ's will_overflow), not only once the queue is already at it. These pass
against RabbitMQ 3.10 too."""

import pika
import pytest

from lockgate_harness import drain, queue_count


def test_a_message_that_would_overflow_the_byte_limit_is_nacked(conn, ch, name):
    q = name("bytes")
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"x" * 20)
    assert queue_count(conn, q) == 0
    ch.basic_publish("", q, b"a" * 6)
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"b" * 6)
    # Exactly up to the limit fits.
    ch.basic_publish("", q, b"c" * 4)
    assert drain(ch, q) == [b"a" * 6, b"c" * 4]


def test_reject_publish_dlx_dead_letters_what_would_overflow(conn, ch, name):
    q, dlq = name("bytes-dlx"), name("bytes-dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish-dlx",
                                   "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"a" * 6)
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"b" * 6)
    assert drain(ch, q) == [b"a" * 6]
    _, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"b" * 6
    assert props.headers["x-death"][0]["reason"] == "maxlen"
