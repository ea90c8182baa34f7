"""Direct reply-to (https://www.rabbitmq.com/direct-reply-to.html) as RabbitMQ 3.10 runs it: an
RPC client consumes the pseudo-queue `amq.rabbitmq.reply-to` (no-ack) and publishes requests with
that as reply_to; the broker rewrites it to the channel's own address, and a reply published to
the default exchange with that address reaches the client without a queue."""

import pika
import pika.exceptions as pe
import pytest
from lockgate_harness import Collector, pump, settle

PSEUDO = "amq.rabbitmq.reply-to"


def reply_consumer(ch) -> Collector:
    replies = Collector()
    ch.basic_consume(PSEUDO, replies, auto_ack=True)
    return replies


def address_of(connections, client_ch, name) -> str:
    """The address the broker gives `client_ch` (which consumes the pseudo-queue): what a
    request's reply_to is rewritten to, as the server of an RPC sees it."""
    server = connections()
    sch = server.channel()
    q = name("rpc")
    sch.queue_declare(q, exclusive=True)
    client_ch.basic_publish("", q, b"request", pika.BasicProperties(reply_to=PSEUDO))
    requests = Collector()
    sch.basic_consume(q, requests, auto_ack=True)
    pump([client_ch.connection, server], lambda: len(requests) == 1)
    address = requests.messages[0][1].reply_to
    server.close()
    return address


def test_rpc_round_trip_through_the_pseudo_queue(connections, name):
    client = connections()
    cch = client.channel()
    replies = reply_consumer(cch)
    server = connections()
    sch = server.channel()
    q = name("rpc")
    sch.queue_declare(q, exclusive=True)

    def serve(ch, method, props, body):
        ch.basic_publish("", props.reply_to, b"re: " + body,
                         pika.BasicProperties(correlation_id=props.correlation_id))

    requests = Collector()
    sch.basic_consume(q, lambda *a: (requests(*a), serve(*a)), auto_ack=True)
    for i in range(3):
        cch.basic_publish("", q, f"q{i}".encode(),
                          pika.BasicProperties(reply_to=PSEUDO, correlation_id=str(i)))
    pump([client, server], lambda: len(replies) == 3)

    address = requests.messages[0][1].reply_to
    assert address.startswith(PSEUDO + ".") and len(address) > len(PSEUDO) + 8
    assert {m[1].reply_to for m in requests.messages} == {address}
    assert replies.bodies == [b"re: q0", b"re: q1", b"re: q2"]
    assert [m[1].correlation_id for m in replies.messages] == ["0", "1", "2"]
    method = replies.messages[0][0]
    assert (method.exchange, method.routing_key, method.redelivered) == ("", address, False)
    # No-ack: nothing is waiting for an acknowledgement, and nothing more arrives.
    settle([client, server])
    assert len(replies) == 3


def test_each_channel_gets_its_own_address_and_its_own_replies(connections, name):
    client = connections()
    a, b = client.channel(), client.channel()
    got_a, got_b = reply_consumer(a), reply_consumer(b)
    addr_a, addr_b = address_of(connections, a, name), address_of(connections, b, name)
    assert addr_a != addr_b
    other = connections().channel()
    other.basic_publish("", addr_b, b"for b")
    other.basic_publish("", addr_a, b"for a")
    pump(client, lambda: len(got_a) == 1 and len(got_b) == 1)
    assert (got_a.bodies, got_b.bodies) == ([b"for a"], [b"for b"])


def test_consuming_the_pseudo_queue_with_acks_is_406(ch):
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_consume(PSEUDO, Collector(), auto_ack=False)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_a_second_reply_consumer_on_a_channel_is_406(ch):
    reply_consumer(ch)
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_consume(PSEUDO, Collector(), auto_ack=True)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer already set")


def test_the_consumer_tag_is_the_clients_or_generated(ch):
    assert ch.basic_consume(PSEUDO, Collector(), auto_ack=True, consumer_tag="mine") == "mine"
    ch.basic_cancel("mine")
    generated = ch.basic_consume(PSEUDO, Collector(), auto_ack=True)
    assert generated.startswith("ctag") or generated.startswith("amq.ctag")


def test_publishing_with_the_pseudo_reply_to_without_consuming_it_is_406(conn, name):
    ch = conn.channel()
    q = name("rpc")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"request", pika.BasicProperties(reply_to=PSEUDO))
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    # Nothing was enqueued.
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 0


def test_other_reply_to_values_are_left_alone(connections, name):
    ch = connections().channel()
    q = name("rpc")
    ch.queue_declare(q, exclusive=True)
    for reply_to in ("my-reply-queue", PSEUDO + ".x", PSEUDO + "x"):
        ch.basic_publish("", q, b"r", pika.BasicProperties(reply_to=reply_to))
        _, props, _ = ch.basic_get(q, auto_ack=True)
        assert props.reply_to == reply_to


def test_a_reply_after_the_client_channel_closed_is_dropped_or_returned(connections, name):
    client = connections()
    cch = client.channel()
    replies = reply_consumer(cch)
    address = address_of(connections, cch, name)
    cch.close()
    sch = connections().channel()
    sch.confirm_delivery()
    # Not mandatory: confirmed, and dropped.
    sch.basic_publish("", address, b"late")
    # Mandatory: comes back as unroutable.
    with pytest.raises(pe.UnroutableError) as e:
        sch.basic_publish("", address, b"late", mandatory=True)
    returned = e.value.messages[0]
    assert (returned.method.reply_code, returned.method.routing_key) == (312, address)
    assert returned.body == b"late"
    settle(client)
    assert len(replies) == 0


def test_a_reply_after_the_reply_consumer_was_cancelled_is_dropped(connections, name):
    client = connections()
    cch = client.channel()
    replies = Collector()
    tag = cch.basic_consume(PSEUDO, replies, auto_ack=True)
    address = address_of(connections, cch, name)
    cch.basic_cancel(tag)
    sch = connections().channel()
    sch.confirm_delivery()
    with pytest.raises(pe.UnroutableError):
        sch.basic_publish("", address, b"late", mandatory=True)
    settle(client)
    assert len(replies) == 0
    # A new reply consumer on the same channel has a new address.
    reply_consumer(cch)
    assert address_of(connections, cch, name) != address


def test_a_reply_after_the_client_connection_closed_is_returned(connections, name):
    client = connections()
    cch = client.channel()
    reply_consumer(cch)
    address = address_of(connections, cch, name)
    client.close()
    sch = connections().channel()
    sch.confirm_delivery()
    with pytest.raises(pe.UnroutableError):
        sch.basic_publish("", address, b"late", mandatory=True)


def test_an_unknown_address_is_unroutable(connections):
    sch = connections().channel()
    sch.confirm_delivery()
    for address in (PSEUDO + ".nobody", PSEUDO + "."):
        with pytest.raises(pe.UnroutableError):
            sch.basic_publish("", address, b"x", mandatory=True)


@pytest.mark.lockgate_only
def test_a_delivered_mandatory_reply_is_routed_not_returned(connections, name):
    # RabbitMQ 3.10 returns a mandatory reply even when it delivered it (the reply address is
    # "not a queue"); lockgate counts it as routed to the consumer it reached.
    client = connections()
    cch = client.channel()
    replies = reply_consumer(cch)
    address = address_of(connections, cch, name)
    sch = connections().channel()
    sch.confirm_delivery()
    sch.basic_publish("", address, b"reply", mandatory=True)
    pump(client, lambda: len(replies) == 1)


def test_passive_declare_of_the_pseudo_queue_and_of_addresses(connections, name):
    client = connections()
    cch = client.channel()
    ok = cch.queue_declare(PSEUDO, passive=True).method
    assert (ok.queue, ok.message_count) == (PSEUDO, 0)
    reply_consumer(cch)
    address = address_of(connections, cch, name)
    other = connections().channel()
    ok = other.queue_declare(address, passive=True).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (address, 0, 1)
    cch.close()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        other.queue_declare(address, passive=True)
    assert (e.value.reply_code, e.value.reply_text) == (
        404, f"NOT_FOUND - no queue '{address}' in vhost '/'")


@pytest.mark.lockgate_only
def test_reply_delivery_tags_continue_the_channels_sequence(connections, name):
    # RabbitMQ 3.10 gives a reply the channel's next tag without advancing it; lockgate
    # advances it, so tags stay strictly increasing across the channel's consumers.
    client = connections()
    cch = client.channel()
    replies = reply_consumer(cch)
    q = name("work")
    cch.queue_declare(q, exclusive=True)
    work = Collector()
    cch.basic_consume(q, work, auto_ack=True)
    address = address_of(connections, cch, name)
    other = connections().channel()
    for i in range(4):
        other.basic_publish("", q if i % 2 else address, b"m")
    pump(client, lambda: len(replies) + len(work) == 4)
    tags = sorted(m[0].delivery_tag for m in replies.messages + work.messages)
    assert tags == [1, 2, 3, 4]
