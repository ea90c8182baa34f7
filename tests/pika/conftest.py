"""Fixtures of the raw-socket tests: a pika witness that must keep working after each case,
and raw AMQP connections closed at the end of the test."""

import pytest

import amqp_raw as raw
from lockgate_harness import drain


@pytest.fixture
def witness(conn):
    """A pika channel with a queue: after each raw case it must still work."""
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue

    def check():
        assert conn.is_open and ch.is_open
        ch.basic_publish("", q, b"still here")
        assert drain(ch, q) == [b"still here"]

    check()
    return check


@pytest.fixture
def rawconn(broker):
    """connect(handshake=True, timeout=10.0, **handshake_arguments) -> a RawConnection."""
    conns = []

    def connect(handshake=True, timeout=10.0, **kwargs):
        c = raw.RawConnection(broker.host, broker.port, timeout=timeout)
        conns.append(c)
        if handshake:
            c.handshake(vhost=broker.vhost, user=broker.user, password=broker.password,
                        **kwargs)
        return c

    yield connect
    for c in conns:
        c.close()
