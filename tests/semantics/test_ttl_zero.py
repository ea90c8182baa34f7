"""TTL 0 (RabbitMQ's replacement for the `immediate` flag): a message whose TTL is 0, from the
queue's `x-message-ttl` or its own `expiration`, expires on reaching the queue unless a
consumer can take it right away. These pass against RabbitMQ 3.10 too."""

import pika

from lockgate_harness import Collector, pump, queue_count, settle


def test_queue_ttl_zero_delivers_to_a_waiting_consumer_and_drops_the_rest(connections, name):
    conn, pub_conn = connections(), connections()
    q, dlq = name("ttl0"), name("ttl0-dlq")
    pub = pub_conn.channel()
    pub.queue_declare(dlq)
    pub.queue_declare(q, arguments={"x-message-ttl": 0, "x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": dlq})
    # Nobody consumes: it expires on arrival (dead-lettered).
    pub.basic_publish("", q, b"early")
    assert queue_count(pub_conn, q) == 0
    ch = conn.channel()
    got = Collector()
    ch.basic_consume(q, got, auto_ack=True)
    for i in range(10):
        pub.basic_publish("", q, f"m{i}".encode())
    pump(conn, lambda: len(got) == 10, message="ten delivered")
    assert got.bodies == [f"m{i}".encode() for i in range(10)]
    _, props, body = pub.basic_get(dlq, auto_ack=True)
    assert body == b"early"
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert pub.basic_get(dlq, auto_ack=True)[0] is None


def test_expiration_zero_is_delivered_only_to_a_consumer_with_credit(connections, name):
    conn, pub_conn = connections(), connections()
    q = name("exp0")
    pub = pub_conn.channel()
    pub.queue_declare(q)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    got = Collector()
    ch.basic_consume(q, got)
    zero = pika.BasicProperties(expiration="0")
    pub.basic_publish("", q, b"first", zero)
    pump(conn, lambda: len(got) == 1, message="first delivered")
    # The consumer's one credit is taken: this one expires at once and never arrives.
    pub.basic_publish("", q, b"second", zero)
    assert queue_count(pub_conn, q) == 0
    ch.basic_ack(got.messages[0][0].delivery_tag)
    # On the consumer's connection, after the ack: the ack has been handled.
    assert queue_count(conn, q) == 0
    pub.basic_publish("", q, b"third", zero)
    pump(conn, lambda: len(got) == 2, message="third delivered")
    settle(conn, 0.2)
    assert got.bodies == [b"first", b"third"]
