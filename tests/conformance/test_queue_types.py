"""What a queue declaration may ask for of its queue type, as RabbitMQ 3.10 answers it: a
quorum queue is durable, neither exclusive nor auto-delete and never server-named, and each
type refuses the arguments RabbitMQ knows for the other types only. The order of the checks
is RabbitMQ's: the values of the arguments the type supports, then arguments it does not
support, then the flags. Each refusal closes the channel (406), not the connection."""

import pika.exceptions as pe
import pytest

VHOST_SUFFIX = "in vhost '/'"
QUORUM = {"x-queue-type": "quorum"}


def refused(conn, q, **declare):
    """Declares queue `q` on a channel of its own and returns the channel's close, after
    checking that the connection stays open and that no queue was made."""
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare(q, **declare)
    assert conn.is_open
    with pytest.raises(pe.ChannelClosedByBroker) as missing:
        conn.channel().queue_declare(q, passive=True)
    assert missing.value.reply_code == 404
    return info.value.reply_code, info.value.reply_text


def refused_redeclare(conn, q, **declare):
    """As `refused`, for a queue that exists."""
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare(q, **declare)
    return info.value.reply_code, info.value.reply_text


def invalid_property(prop, q):
    return 406, f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{q}' {VHOST_SUFFIX}"


def unsupported(key, q, module="rabbit_quorum_queue"):
    return 406, (f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' {VHOST_SUFFIX} "
                 f"of queue type {module}")


def invalid_arg(key, q, why):
    return 406, f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' {VHOST_SUFFIX}: {why}"


@pytest.mark.parametrize("flags,prop", [
    (dict(durable=False), "non-durable"),
    (dict(durable=True, exclusive=True), "exclusive-owner"),
    (dict(durable=True, auto_delete=True), "auto-delete"),
    # Auto-delete is checked first, then exclusive; an exclusive queue is never durable.
    (dict(durable=False, exclusive=True, auto_delete=True), "auto-delete"),
    (dict(durable=True, exclusive=True, auto_delete=True), "auto-delete"),
    (dict(durable=False, auto_delete=True), "auto-delete"),
    (dict(durable=False, exclusive=True), "exclusive-owner"),
], ids=["non-durable", "exclusive", "auto-delete", "all-three", "exclusive-auto-delete",
        "non-durable-auto-delete", "non-durable-exclusive"])
def test_a_quorum_queue_must_be_durable_and_neither_exclusive_nor_auto_delete(conn, name,
                                                                              flags, prop):
    q = name("qq")
    assert refused(conn, q, arguments=QUORUM, **flags) == invalid_property(prop, q)


@pytest.mark.parametrize("durable", [True, False])
def test_a_quorum_queue_cannot_be_server_named(conn, durable):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        ch.queue_declare("", durable=durable, arguments=QUORUM)
    assert (info.value.reply_code, info.value.reply_text) == (
        406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type "
             "rabbit_quorum_queue")
    assert conn.is_open


@pytest.mark.parametrize("key,value", [
    ("x-max-priority", 5),
    # The value of an argument the type does not support is not checked first.
    ("x-max-priority", "x"),
    ("x-queue-mode", "lazy"),
    ("x-queue-mode", "bogus"),
    ("x-queue-version", 2),
    ("x-queue-master-locator", "min-masters"),
    ("x-max-age", "1D"),
    ("x-stream-max-segment-size-bytes", 1),
    ("x-initial-cluster-size", 1),
])
def test_a_quorum_queue_refuses_the_arguments_of_other_queue_types(conn, name, key, value):
    q = name("qq")
    assert refused(conn, q, durable=True, arguments={**QUORUM, key: value}) == \
        unsupported(key, q)


@pytest.mark.parametrize("key,value", [
    ("x-dead-letter-strategy", "at-least-once"),
    ("x-quorum-initial-group-size", 1),
    ("x-max-in-memory-length", 3),
    ("x-max-in-memory-bytes", 3),
    ("x-queue-leader-locator", "balanced"),
    ("x-max-age", "1D"),
    ("x-stream-max-segment-size-bytes", 1),
    ("x-initial-cluster-size", 1),
])
@pytest.mark.parametrize("queue_type", [None, "classic"])
def test_a_classic_queue_refuses_the_arguments_of_other_queue_types(conn, name, key, value,
                                                                    queue_type):
    q = name("cq")
    arguments = {key: value} if queue_type is None else {"x-queue-type": queue_type, key: value}
    assert refused(conn, q, auto_delete=True, arguments=arguments) == \
        unsupported(key, q, "rabbit_classic_queue")


def test_the_values_of_supported_arguments_are_checked_before_unsupported_ones(conn, name):
    q = name("qq")
    assert refused(conn, q, durable=True, arguments={
        **QUORUM, "x-max-priority": 5, "x-max-length": "x"}) == invalid_arg(
        "x-max-length", q, '"expected integer, got longstr"')


def test_arguments_are_checked_before_the_flags(conn, name):
    q = name("qq")
    assert refused(conn, q, durable=False, auto_delete=True, arguments={
        **QUORUM, "x-max-priority": 5}) == unsupported("x-max-priority", q)
    assert refused(conn, q, durable=False, arguments={
        **QUORUM, "x-message-ttl": -1}) == invalid_arg("x-message-ttl", q, "{value_negative,-1}")


def test_the_dead_letter_exchange_type_is_checked_before_the_queue_type(conn, name):
    q = name("qq")
    assert refused(conn, q, durable=False, arguments={
        **QUORUM, "x-max-priority": 5, "x-dead-letter-exchange": 1}) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' "
             f"in queue '{q}' {VHOST_SUFFIX}")


@pytest.mark.parametrize("queue_type,key,value,why", [
    ("quorum", "x-dead-letter-strategy", "bogus", "invalid_dlx_strategy"),
    ("quorum", "x-dead-letter-strategy", 1, "{unacceptable_type,signedint}"),
    ("quorum", "x-quorum-initial-group-size", 0, "{value_zero,0}"),
    ("quorum", "x-quorum-initial-group-size", -1, "{value_negative,-1}"),
    ("quorum", "x-quorum-initial-group-size", "x", '"expected integer, got longstr"'),
    ("quorum", "x-max-in-memory-length", -1, "{value_negative,-1}"),
    ("quorum", "x-max-in-memory-bytes", "x", '"expected integer, got longstr"'),
    ("quorum", "x-queue-leader-locator", "bogus", "invalid_queue_locator_arg"),
    ("quorum", "x-queue-leader-locator", 1, "{unacceptable_type,signedint}"),
    ("classic", "x-queue-version", 3, "\"unsupported queue version '3'\""),
    ("classic", "x-queue-version", 0, "\"unsupported queue version '0'\""),
    ("classic", "x-queue-version", "x", '"expected integer, got longstr"'),
])
def test_a_type_checks_the_values_of_the_arguments_it_supports(conn, name, queue_type, key,
                                                               value, why):
    q = name("q")
    assert refused(conn, q, durable=True, arguments={"x-queue-type": queue_type, key: value}) \
        == invalid_arg(key, q, why)


@pytest.mark.parametrize("arguments", [
    {},
    {"x-dead-letter-strategy": "at-most-once", "x-quorum-initial-group-size": 1,
     "x-max-in-memory-length": 3, "x-max-in-memory-bytes": 100,
     "x-queue-leader-locator": "client-local", "x-overflow": "reject-publish-dlx",
     "x-single-active-consumer": True, "x-delivery-limit": 3, "x-unknown": "v"},
], ids=["plain", "supported-arguments"])
def test_a_durable_quorum_queue_is_declared_and_redeclared(conn, ch, name, arguments):
    q = name("qq")
    ch.queue_declare(q, durable=True, arguments={**QUORUM, **arguments})
    try:
        assert ch.queue_declare(q, passive=True).method.queue == q
        ch.queue_declare(q, durable=True, arguments={**QUORUM, **arguments})
    finally:
        conn.channel().queue_delete(q)


@pytest.mark.parametrize("version", [1, 2])
def test_a_classic_queue_takes_queue_version_1_or_2(conn, ch, name, version):
    q = name("cq")
    ch.queue_declare(q, auto_delete=True, arguments={"x-queue-version": version})
    conn.channel().queue_delete(q)


def test_a_redeclaration_is_compared_before_the_quorum_checks(conn, ch, name):
    """An existing queue is compared with the redeclaration; the new-queue checks of its
    type do not apply."""
    q = name("qq")
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    try:
        assert refused_redeclare(conn, q, durable=False, arguments=QUORUM) == (
            406, f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' "
                 f"{VHOST_SUFFIX}: received 'false' but current is 'true'")
    finally:
        conn.channel().queue_delete(q)



@pytest.mark.parametrize("queue_type,declared,redeclared,key,why", [
    ("quorum", {"x-message-ttl": 1000}, {"x-message-ttl": 2000, "x-max-length": 2},
     "x-max-length", "received the value '2' of type 'signedint' but current is none"),
    ("quorum", {}, {"x-quorum-initial-group-size": 1, "x-delivery-limit": 2},
     "x-quorum-initial-group-size",
     "received the value '1' of type 'signedint' but current is none"),
    ("quorum", {}, {"x-dead-letter-strategy": "at-most-once"}, "x-dead-letter-strategy",
     "received the value 'at-most-once' of type 'longstr' but current is none"),
    ("quorum", {}, {"x-queue-leader-locator": "balanced"}, "x-queue-leader-locator",
     "received the value 'balanced' of type 'longstr' but current is none"),
    ("classic", {"x-queue-version": 1}, {"x-queue-version": 2, "x-single-active-consumer": True},
     "x-queue-version", "received '2' but current is '1'"),
    ("classic", {}, {"x-queue-master-locator": "min-masters"}, "x-queue-master-locator",
     "received the value 'min-masters' of type 'longstr' but current is none"),
], ids=["quorum-length-before-ttl", "quorum-group-size-before-delivery-limit",
        "quorum-dead-letter-strategy", "quorum-leader-locator", "classic-version-before-sac",
        "classic-master-locator"])
def test_a_redeclaration_is_compared_in_the_order_of_its_queue_type(conn, ch, name, queue_type,
                                                                    declared, redeclared, key,
                                                                    why):
    q = name("q")
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": queue_type, **declared})
    try:
        assert refused_redeclare(conn, q, durable=True, arguments={
            "x-queue-type": queue_type, **redeclared}) == (
            406, f"PRECONDITION_FAILED - inequivalent arg '{key}' for queue '{q}' "
                 f"{VHOST_SUFFIX}: {why}")
    finally:
        conn.channel().queue_delete(q)


def test_a_quorum_queue_with_a_single_active_consumer_refuses_basic_get(conn, ch, name):
    q = name("qq")
    ch.queue_declare(q, durable=True, arguments={**QUORUM, "x-single-active-consumer": True})
    try:
        get = conn.channel()
        with pytest.raises(pe.ChannelClosedByBroker) as info:
            get.basic_get(q)
        assert (info.value.reply_code, info.value.reply_text) == (
            405, f"RESOURCE_LOCKED - cannot obtain access to locked queue '{q}' {VHOST_SUFFIX}. "
                 "basic.get operations are not supported by quorum queues with single active "
                 "consumer")
        assert conn.is_open
    finally:
        conn.channel().queue_delete(q)


@pytest.mark.parametrize("arguments,durable", [
    (QUORUM, True),
    ({"x-single-active-consumer": True}, False),
], ids=["quorum", "classic-single-active-consumer"])
def test_basic_get_serves_other_queues(conn, ch, name, arguments, durable):
    q = name("q")
    ch.queue_declare(q, durable=durable, arguments=arguments)
    try:
        # Confirmed first: a quorum queue of RabbitMQ's may not have taken it yet otherwise.
        ch.confirm_delivery()
        ch.basic_publish("", q, b"m")
        _, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"m"
    finally:
        conn.channel().queue_delete(q)


@pytest.mark.parametrize("prefetch,global_qos,refused", [
    (5, True, True),
    (0, True, False),
    (5, False, False),
], ids=["global-5", "global-0", "per-consumer-5"])
def test_a_quorum_queue_refuses_a_consumer_under_a_global_prefetch_limit(
        connections, name, prefetch, global_qos, refused):
    q = name("qq")
    owner = connections()
    owner.channel().queue_declare(q, durable=True, arguments=QUORUM)
    try:
        conn = connections()
        ch = conn.channel()
        ch.basic_qos(prefetch_count=prefetch, global_qos=global_qos)
        if not refused:
            ch.basic_consume(q, lambda *_: None)
            return
        with pytest.raises(pe.ConnectionClosedByBroker) as info:
            ch.basic_consume(q, lambda *_: None)
        assert (info.value.reply_code, info.value.reply_text) == (
            540, f"NOT_IMPLEMENTED - queue '{q}' {VHOST_SUFFIX} does not support global qos")
    finally:
        owner.channel().queue_delete(q)
