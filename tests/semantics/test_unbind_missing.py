"""queue.unbind and exchange.unbind are idempotent, as RabbitMQ 3.10: unbinding from or to a
queue or exchange that does not exist (deleted, auto-deleted) answers unbind-ok, like a missing
binding. These pass against RabbitMQ 3.10 too."""


def test_unbind_of_missing_queues_and_exchanges_is_ok(conn, name):
    ch = conn.channel()
    q, x = name("q"), name("x")
    ch.queue_declare(q)
    ch.exchange_declare(x, "fanout")
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    ch.queue_unbind(q, x)
    ch.queue_unbind(name("never-declared"), "amq.direct", "k")
    ch.exchange_declare(q, "fanout")
    ch.exchange_delete(x)
    ch.exchange_unbind(q, x)
    ch.exchange_unbind(x, q)
    # The channel is still open and usable.
    assert ch.is_open
    ch.exchange_delete(q)
    assert ch.queue_declare(name("after"), exclusive=True).method.message_count == 0
