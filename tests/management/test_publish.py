"""The API's publish refuses what basic.publish refuses, with RabbitMQ's answer.

RabbitMQ's API publishes through a channel, so a message that basic.publish would refuse is a
400 whose reason is that channel's close. Every expected answer here was measured on RabbitMQ
3.10.8 with the management plugin (the harness starts lockgate for these tests).
"""

from __future__ import annotations

import pytest
from lockgate_harness import unique
from mgmt_helpers import Api, q, start

MAX_MESSAGE_SIZE = 1000


@pytest.fixture(scope="module")
def proc():
    p = start(f"[limits]\nmax_message_size = {MAX_MESSAGE_SIZE}\n")
    yield p
    p.stop()


def publish(api: Api, exchange: str, routing_key: str, properties: dict,
            payload: str = "m") -> tuple[int, dict]:
    return api.post(f"/api/exchanges/%2F/{q(exchange)}/publish", {
        "routing_key": routing_key, "payload": payload, "payload_encoding": "string",
        "properties": properties})


def queue(api: Api, arguments: dict | None = None) -> str:
    name = unique("mpub")
    assert api.put(f"/api/queues/%2F/{q(name)}",
                   {"durable": False, "arguments": arguments or {}}) == 201
    return name


def ready(api: Api, name: str) -> int:
    status, got = api.post(f"/api/queues/%2F/{q(name)}/get",
                           {"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert status == 200, got
    return len(got)


def bad_request(reason: str) -> tuple[int, dict]:
    return 400, {"error": "bad_request", "reason": reason}


@pytest.mark.parametrize("properties, reason", [
    ({"delivery_mode": 3}, "406 PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,3}"),
    ({"delivery_mode": 0}, "406 PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,0}"),
    ({"expiration": "abc"}, "406 PRECONDITION_FAILED - invalid expiration 'abc': no_integer"),
    ({"expiration": "-1"},
     "406 PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}"),
    ({"user_id": "bob"}, "406 PRECONDITION_FAILED - user_id property set to 'bob' but "
                         "authenticated user was 'guest'"),
    # The first refused property is the one reported, in RabbitMQ's order.
    ({"delivery_mode": 3, "expiration": "x", "user_id": "bob"},
     "406 PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was "
     "'guest'"),
    ({"delivery_mode": 3, "expiration": "x"},
     "406 PRECONDITION_FAILED - invalid expiration 'x': no_integer"),
], ids=["mode-3", "mode-0", "expiration-text", "expiration-negative", "user-id",
        "user-id-first", "expiration-before-mode"])
def test_properties_that_basic_publish_refuses_are_a_400_and_nothing_is_enqueued(
        api, properties, reason):
    name = queue(api)
    assert publish(api, "amq.default", name, properties) == bad_request(reason)
    assert ready(api, name) == 0


def test_accepted_properties_still_route(api):
    name = queue(api)
    for properties in ({"delivery_mode": 1}, {"delivery_mode": 2}, {"expiration": "60000"},
                       {"user_id": "guest"}):
        assert publish(api, "amq.default", name, properties) == (200, {"routed": True})
    assert ready(api, name) == 4


def test_a_message_over_max_message_size_gets_the_channels_406(api):
    name = queue(api)
    too_big = "x" * (MAX_MESSAGE_SIZE + 1)
    reason = (f"406 PRECONDITION_FAILED - message size {MAX_MESSAGE_SIZE + 1} is larger than "
              f"configured max size {MAX_MESSAGE_SIZE}")
    assert publish(api, "amq.default", name, {}, too_big) == bad_request(reason)
    # As on a channel, the size is checked before the exchange is looked up.
    assert publish(api, unique("nowhere"), name, {}, too_big) == bad_request(reason)
    assert publish(api, "amq.default", name, {}, too_big[1:]) == (200, {"routed": True})


def test_a_missing_or_internal_exchange_is_the_channels_404_or_403(api):
    missing = unique("mpub-missing")
    expected = bad_request(f"404 NOT_FOUND - no exchange '{missing}' in vhost '/'")
    assert publish(api, missing, "k", {}) == expected
    # The exchange's error comes before a refused property's, as on a channel.
    assert publish(api, missing, "k", {"delivery_mode": 3}) == expected

    internal = unique("mpub-internal")
    assert api.put(f"/api/exchanges/%2F/{q(internal)}",
                   {"type": "fanout", "durable": False, "internal": True}) == 201
    expected = bad_request(
        f"403 ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'")
    assert publish(api, internal, "k", {}) == expected
    assert publish(api, internal, "k", {"delivery_mode": 3}) == expected


def test_a_cc_header_that_is_not_an_array_is_refused(api):
    name = queue(api)
    assert publish(api, "amq.default", name, {"headers": {"CC": "notarray"}}) == bad_request(
        '406 PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"CC",longstr}')
    assert ready(api, name) == 0


def test_a_queue_that_rejects_the_publish_is_rabbitmqs_nack_answer(api):
    name = queue(api, {"x-max-length": 0, "x-overflow": "reject-publish"})
    assert publish(api, "amq.default", name, {}) == bad_request(
        "rejected Unable to publish message. Check queue limits.")
