"""Transactional publishes as RabbitMQ 3.10 runs them: routed at basic.publish, enqueued at
tx.commit on the queues of those names that exist then."""

from lockgate_harness import drain, pump


def test_a_queue_declared_again_before_the_commit_takes_the_message(conn, name):
    ch, admin = conn.channel(), conn.channel()
    q = name("txagain")
    ch.queue_declare(q, auto_delete=False)
    ch.tx_select()
    ch.basic_publish("", q, b"m")
    admin.queue_delete(q)
    admin.queue_declare(q, auto_delete=False)
    ch.tx_commit()
    assert admin.queue_declare(q, passive=True).method.message_count == 1
    admin.queue_delete(q)


def test_an_unroutable_mandatory_publish_is_returned_at_commit_not_on_rollback(conn, name):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda _ch, method, _props, body: returned.append(body))
    ch.tx_select()
    ch.basic_publish("", name("nowhere"), b"rolled back", mandatory=True)
    ch.tx_rollback()
    ch.basic_publish("", name("nowhere"), b"committed", mandatory=True)
    ch.tx_commit()
    pump(conn, lambda: returned, message="basic.return")
    assert returned == [b"committed"]


def test_a_queue_purged_before_the_commit_still_takes_the_message(conn, name):
    ch, admin = conn.channel(), conn.channel()
    q = name("txpurge")
    admin.queue_declare(q, auto_delete=False)
    admin.basic_publish("", q, b"old")
    ch.tx_select()
    ch.basic_publish("", q, b"new")
    admin.queue_purge(q)
    ch.tx_commit()
    assert drain(admin, q) == [b"new"]
    admin.queue_delete(q)


def test_the_alternate_exchange_is_followed_at_basic_publish(conn, name):
    ch, admin = conn.channel(), conn.channel()
    ae, x, early, late = name("txae"), name("txx"), name("early"), name("late")
    admin.exchange_declare(ae, "fanout", auto_delete=False)
    admin.exchange_declare(x, "direct", auto_delete=False,
                           arguments={"alternate-exchange": ae})
    for q in (early, late):
        admin.queue_declare(q, auto_delete=False)
    admin.queue_bind(early, ae)
    ch.tx_select()
    ch.basic_publish(x, "unbound", b"m")
    admin.queue_bind(late, ae)
    ch.tx_commit()
    assert [drain(admin, q) for q in (early, late)] == [[b"m"], []]
    for q in (early, late):
        admin.queue_delete(q)
    for e in (x, ae):
        admin.exchange_delete(e)
