"""Alternate exchanges: the `alternate-exchange` exchange argument and policy key.

A message that an exchange routes to no queue and no exchange goes to that exchange's
alternate exchange, recursively (each exchange once, a missing one skipped); if that reaches a
queue the message counts as routed: it is confirmed and not returned as mandatory. This holds
for an exchange reached through an exchange-to-exchange binding too (RabbitMQ's
rabbit_exchange:route/3). Except where marked `lockgate_only`, these pass against RabbitMQ 3.10
too."""

import pika
import pytest

from lockgate_harness import drain, queue_count


def catch_all(ch, name, prefix):
    """A fanout exchange bound to a queue of the same name; returns the name."""
    ae = name(prefix)
    ch.exchange_declare(ae, "fanout")
    ch.queue_declare(ae)
    ch.queue_bind(ae, ae)
    return ae


def test_an_unroutable_message_goes_to_the_alternate_exchange_and_counts_as_routed(ch, name):
    ae = catch_all(ch, name, "ae")
    x, bound = name("x"), name("bound")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    ch.queue_declare(bound)
    ch.queue_bind(bound, x, "known")
    ch.confirm_delivery()
    # Mandatory and confirmed: neither returned (pika raises UnroutableError) nor nacked.
    ch.basic_publish(x, "nomatch", b"lost", mandatory=True)
    ch.basic_publish(x, "known", b"routed", mandatory=True)
    assert drain(ch, ae) == [b"lost"]
    # A message the exchange routes itself does not go to the alternate exchange.
    assert drain(ch, bound) == [b"routed"]


def test_alternate_exchanges_chain_each_once_and_skip_a_missing_one(conn, ch, name):
    last = catch_all(ch, name, "last")
    a, b = name("a"), name("b")
    ch.exchange_declare(b, "direct", arguments={"alternate-exchange": last})
    ch.exchange_declare(a, "topic", arguments={"alternate-exchange": b})
    ch.confirm_delivery()
    ch.basic_publish(a, "k", b"chained", mandatory=True)
    assert drain(ch, last) == [b"chained"]

    # A cycle of alternate exchanges that reaches no queue ends: the message is returned.
    p, r = name("p"), name("r")
    ch.exchange_declare(p, "direct", arguments={"alternate-exchange": r})
    ch.exchange_declare(r, "direct", arguments={"alternate-exchange": p})
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(p, "k", b"cycle", mandatory=True)

    # A missing alternate exchange is skipped, as if there were none.
    m = name("m")
    ch.exchange_declare(m, "direct", arguments={"alternate-exchange": name("missing")})
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(m, "k", b"nowhere", mandatory=True)

    # Deleting the alternate exchange takes the fallback away; declaring it again restores it.
    ch.exchange_delete(last)
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(a, "k", b"gone", mandatory=True)
    ch.exchange_declare(last, "fanout")
    ch.queue_bind(last, last)
    ch.basic_publish(a, "k", b"back", mandatory=True)
    assert drain(ch, last) == [b"back"]
    assert queue_count(conn, last) == 0


def test_the_alternate_exchange_of_an_exchange_reached_through_a_binding_applies(ch, name):
    ae = catch_all(ch, name, "inner-ae")
    outer, inner, direct_q = name("outer"), name("inner"), name("direct")
    ch.exchange_declare(outer, "fanout")
    ch.exchange_declare(inner, "direct", arguments={"alternate-exchange": ae})
    ch.exchange_bind(inner, outer)
    ch.queue_declare(direct_q)
    ch.queue_bind(direct_q, outer)
    ch.confirm_delivery()
    ch.basic_publish(outer, "k", b"m", mandatory=True)
    # `outer` reached a queue of its own, and `inner` (which matched nothing) its alternate.
    assert drain(ch, direct_q) == [b"m"]
    assert drain(ch, ae) == [b"m"]


def test_dead_lettered_messages_follow_the_alternate_exchange(conn, ch, name):
    ae = catch_all(ch, name, "dlx-ae")
    dlx, q = name("dlx"), name("src")
    ch.exchange_declare(dlx, "direct", arguments={"alternate-exchange": ae})
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"dead")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    _, props, body = ch.basic_get(ae, auto_ack=True)
    assert body == b"dead"
    assert props.headers["x-death"][0]["reason"] == "rejected"


def test_an_alternate_exchange_argument_that_is_not_a_string_is_406(conn, name):
    x = name("bad-ae")
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare(x, "direct", arguments={"alternate-exchange": 5})
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in "
        f"exchange '{x}' in vhost '/'"
    )


@pytest.mark.lockgate_only
def test_the_alternate_exchange_policy_key_applies_and_the_argument_wins(lockgate):
    b = lockgate(
        "[[policies]]\n"
        'name = "catch"\n'
        "pattern = '^pol\\.'\n"
        'apply_to = "exchanges"\n'
        'definition = { alternate-exchange = "pol-ae" }\n'
    )
    conn = b.connect()
    try:
        ch = conn.channel()
        for ae in ("pol-ae", "own-ae"):
            ch.exchange_declare(ae, "fanout")
            ch.queue_declare(ae)
            ch.queue_bind(ae, ae)
        ch.exchange_declare("pol.x", "direct")
        ch.exchange_declare("pol.own", "direct", arguments={"alternate-exchange": "own-ae"})
        ch.confirm_delivery()
        ch.basic_publish("pol.x", "k", b"by-policy", mandatory=True)
        ch.basic_publish("pol.own", "k", b"by-argument", mandatory=True)
        assert drain(ch, "pol-ae") == [b"by-policy"]
        assert drain(ch, "own-ae") == [b"by-argument"]
    finally:
        conn.close()
