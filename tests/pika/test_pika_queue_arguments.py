"""Queue arguments (x-...): validated at declare and compared on redeclare, with RabbitMQ's
texts. What the arguments do (TTL, limits, dead-lettering) is not covered here yet."""

import pika.exceptions as pe
import pytest

INVALID = [
    ({"x-message-ttl": "abc"}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': "
                               '"expected integer, got longstr"'),
    ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': "
                            "{{value_negative,-1}}"),
    ({"x-max-length": -5}, "invalid arg 'x-max-length' for queue '{q}' in vhost '/': "
                           "{{value_negative,-5}}"),
    ({"x-expires": 0}, "invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}"),
    ({"x-overflow": "foo"}, "invalid arg 'x-overflow' for queue '{q}' in vhost '/': "
                            "invalid_overflow"),
    ({"x-max-priority": 300}, "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': "
                              "{{max_value_exceeded,300}}"),
    ({"x-dead-letter-exchange": 5}, "invalid type 'signedint' for arg 'x-dead-letter-exchange' "
                                    "in queue '{q}' in vhost '/'"),
    ({"x-dead-letter-routing-key": "k"}, "invalid arg 'x-dead-letter-routing-key' for queue "
                                         "'{q}' in vhost '/': routing_key_but_no_dlx_defined"),
    ({"x-single-active-consumer": "yes"}, "invalid arg 'x-single-active-consumer' for queue "
                                          "'{q}' in vhost '/': {{unacceptable_type,longstr}}"),
]


@pytest.mark.parametrize("arguments,text", INVALID, ids=[next(iter(a)) + "=" + repr(
    next(iter(a.values())))[:12] for a, _ in INVALID])
def test_invalid_queue_argument_is_406(conn, name, arguments, text):
    ch = conn.channel()
    q = name("args")
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare(q, arguments=arguments, auto_delete=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - " + text.format(q=q)
    assert conn.is_open
    # Nothing was declared.
    with pytest.raises(pe.ChannelClosedByBroker):
        conn.channel().queue_declare(q, passive=True)


# A dead-lettered message goes out in basic.deliver with these as shortstrs: a longer one could
# never be delivered, and broke the connection of every consumer it was delivered to. lockgate's
# own check: RabbitMQ has none.
TOO_LONG = [
    ({"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "k" * 256},
     "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': "
     "{{value_too_long,256}}"),
    ({"x-dead-letter-exchange": "é" * 128}, "invalid arg 'x-dead-letter-exchange' for queue "
                                           "'{q}' in vhost '/': {{value_too_long,256}}"),
]


@pytest.mark.lockgate_only
@pytest.mark.parametrize("arguments,text", TOO_LONG, ids=["routing-key", "exchange"])
def test_dead_letter_names_over_255_octets_are_406(conn, name, arguments, text):
    test_invalid_queue_argument_is_406(conn, name, arguments, text)


@pytest.mark.parametrize("arguments", [
    {"x-message-ttl": 1000}, {"x-overflow": "reject-publish"}, {"x-overflow": "drop-head"},
    {"x-max-length": 10, "x-max-length-bytes": 1000}, {"x-expires": 60000},
    {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead"},
    {"x-max-priority": 10}, {"x-single-active-consumer": True}, {"x-unknown-arg": 1},
], ids=lambda a: ",".join(a))
def test_valid_queue_arguments_are_accepted(ch, name, arguments):
    q = name("args")
    ok = ch.queue_declare(q, arguments=arguments, auto_delete=True).method
    assert ok.queue == q
    # The same arguments again: equivalent, fine.
    ch.queue_declare(q, arguments=arguments, auto_delete=True)
    ch.queue_delete(q)


@pytest.mark.parametrize("again,text", [
    ({"x-message-ttl": 2000},
     "inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
     "received '2000' but current is '1000'"),
    ({}, "inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
         "received none but current is the value '1000' of type 'signedint'"),
    ({"x-message-ttl": 1000, "x-max-length": 5},
     "inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': "
     "received the value '5' of type 'signedint' but current is none"),
], ids=["other-value", "missing", "added"])
def test_redeclare_with_other_arguments_is_406(conn, name, again, text):
    ch = conn.channel()
    q = name("args")
    ch.queue_declare(q, arguments={"x-message-ttl": 1000}, auto_delete=True)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare(q, arguments=again, auto_delete=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - " + text.format(q=q)
    ch = conn.channel()
    # A passive declare does not compare arguments.
    ch.queue_declare(q, passive=True)
    ch.queue_delete(q)
