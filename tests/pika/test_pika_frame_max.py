"""A consumer whose frame_max is smaller than a message's header frame still gets the message:
as RabbitMQ, the header frame goes out whole (only bodies are split at frame_max)."""

import pika
from lockgate_harness import Collector, pump

HEADER = {"big": "h" * 6000}


def test_a_header_frame_over_the_consumers_frame_max_is_sent_whole(broker, conn, name):
    ch = conn.channel()
    q = name("bighdr")
    ch.queue_declare(q, auto_delete=False)
    body = b"b" * 10_000
    for _ in range(2):
        ch.basic_publish("", q, body, pika.BasicProperties(headers=HEADER))
    small = broker.connect(frame_max=4096)
    try:
        sch = small.channel()
        _, props, got = sch.basic_get(q, auto_ack=True)
        assert (props.headers, got) == (HEADER, body)
        col = Collector()
        sch.basic_consume(q, col, auto_ack=True)
        pump(small, lambda: len(col) == 1)
        assert col.bodies == [body]
        assert small.is_open
    finally:
        if small.is_open:
            small.close()
        ch.queue_delete(q)
