"""What the differential runner (scripts/differential/) found lockgate doing differently from
RabbitMQ 3.10, each asserted as RabbitMQ answers it: which check a request fails first when it
breaks several rules, and the exact reply texts that clients match on."""

import pika
import pika.exceptions as pe
import pytest

VHOST_SUFFIX = "in vhost '/'"


def closed_by(ch, call):
    """Runs `call`, expects the broker to close the channel, returns (code, text)."""
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        call()
    return info.value.reply_code, info.value.reply_text


def publish_then_sync(ch, exchange, properties):
    """A publish (no reply) and a method with a reply, which raises the publish's error."""
    ch.basic_publish(exchange, "k", b"m", properties=properties)
    ch.exchange_declare("amq.direct", passive=True)


BAD_PROPERTIES = {
    "expiration": pika.BasicProperties(expiration="abc"),
    "user_id": pika.BasicProperties(user_id="someone-else"),
    "delivery_mode": pika.BasicProperties(delivery_mode=3),
}


@pytest.mark.parametrize("prop", sorted(BAD_PROPERTIES))
def test_publish_to_missing_exchange_is_404_before_properties_are_checked(ch, name, prop):
    missing = name("missing")
    assert closed_by(ch, lambda: publish_then_sync(ch, missing, BAD_PROPERTIES[prop])) == (
        404, f"NOT_FOUND - no exchange '{missing}' {VHOST_SUFFIX}")


@pytest.mark.parametrize("prop", sorted(BAD_PROPERTIES))
def test_publish_to_internal_exchange_is_403_before_properties_are_checked(conn, ch, name,
                                                                             prop):
    internal = name("internal")
    ch.exchange_declare(internal, "fanout", internal=True, auto_delete=True)
    try:
        assert closed_by(ch, lambda: publish_then_sync(ch, internal, BAD_PROPERTIES[prop])) == (
            403, f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' "
                 f"{VHOST_SUFFIX}")
    finally:
        conn.channel().exchange_delete(internal)


def test_publish_to_default_exchange_reports_the_bad_property(ch):
    assert closed_by(ch, lambda: publish_then_sync(ch, "", BAD_PROPERTIES["expiration"])) == (
        406, "PRECONDITION_FAILED - invalid expiration 'abc': no_integer")


@pytest.mark.parametrize("mode", [0, 3])
def test_delivery_mode_other_than_1_or_2_is_refused(ch, mode):
    assert closed_by(ch, lambda: publish_then_sync(
        ch, "amq.direct", pika.BasicProperties(delivery_mode=mode))) == (
        406, f"PRECONDITION_FAILED - invalid message: {{delivery_mode_unknown,{mode}}}")


def test_reserved_exchange_name_is_refused_before_its_alternate_exchange_type(ch, name):
    reserved = "amq." + name("x")
    assert closed_by(ch, lambda: ch.exchange_declare(
        reserved, "direct", arguments={"alternate-exchange": 1})) == (
        403, f"ACCESS_REFUSED - exchange name '{reserved}' contains reserved prefix 'amq.*'")


def test_redeclare_compares_an_alternate_exchange_of_the_wrong_type(conn, ch, name):
    x = name("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    try:
        assert closed_by(ch, lambda: ch.exchange_declare(
            x, "direct", auto_delete=True, arguments={"alternate-exchange": 1})) == (
            406, f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange "
                 f"'{x}' {VHOST_SUFFIX}: received the value '1' of type 'signedint' but current "
                 f"is none")
    finally:
        conn.channel().exchange_delete(x)


def test_redeclare_of_another_type_is_inequivalent_whatever_its_alternate_exchange(conn, ch,
                                                                                   name):
    x = name("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    try:
        assert closed_by(ch, lambda: ch.exchange_declare(
            x, "fanout", auto_delete=True, arguments={"alternate-exchange": 1})) == (
            406, f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' "
                 f"{VHOST_SUFFIX}: received 'fanout' but current is 'direct'")
    finally:
        conn.channel().exchange_delete(x)


def test_headers_binding_with_integer_x_match_names_the_value(ch, name):
    q = ch.queue_declare("", exclusive=True).method.queue
    assert closed_by(ch, lambda: ch.queue_bind(q, "amq.headers", arguments={"x-match": 1})) == (
        406, "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); "
             "expected longstr")


@pytest.mark.parametrize("arguments,key,why", [
    ({"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": 2},
     "x-dead-letter-routing-key", "{unacceptable_type,signedint}"),
    ({"x-queue-mode": "bogus"}, "x-queue-mode", "\"unsupported queue mode 'bogus'\""),
    ({"x-queue-type": "bogus"}, "x-queue-type", "\"unsupported queue type 'bogus'\""),
    # Two bad arguments: RabbitMQ reports the one it checks first.
    ({"x-message-ttl": "abc", "x-dead-letter-routing-key": 2}, "x-message-ttl",
     "\"expected integer, got longstr\""),
    ({"x-queue-mode": "bogus", "x-queue-type": 1}, "x-queue-type",
     "{unacceptable_type,signedint}"),
    ({"x-single-active-consumer": "yes", "x-max-length": -1}, "x-max-length",
     "{value_negative,-1}"),
], ids=["dlrk-type", "queue-mode", "queue-type", "ttl-before-dlrk", "type-before-mode",
        "max-length-before-sac"])
def test_queue_argument_errors_as_rabbitmq(ch, name, arguments, key, why):
    q = name("q")
    assert closed_by(ch, lambda: ch.queue_declare(q, arguments=arguments)) == (
        406, f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' {VHOST_SUFFIX}: {why}")


def test_redeclare_reports_single_active_consumer_before_queue_type(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    try:
        assert closed_by(ch, lambda: ch.queue_declare(
            q, arguments={"x-single-active-consumer": False, "x-queue-type": 1})) == (
            406, f"PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue "
                 f"'{q}' {VHOST_SUFFIX}: received 'false' but current is 'true'")
    finally:
        conn.channel().queue_delete(q)
