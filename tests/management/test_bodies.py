"""Request bodies the API cannot read: every endpoint that takes a body answers 400 with
RabbitMQ's {"error": "bad_request", "reason": ...} and changes nothing.

These tests were run by hand against RabbitMQ 3.10 with the management plugin (the harness
starts lockgate for them). RabbitMQ refuses a body that is not a JSON object with 400 (reason
`not_json` or, for definitions, `failed_to_parse_json`), except for bindings (500), and a flag
that is not a boolean or a count that is not an integer with 400; other wrong types it takes or
answers 500. Both read a body whatever its content type. The cases where RabbitMQ does not
answer 400 are lockgate_only, as is lockgate's refusal of requests from another site's page
(crates/server/src/management/auth.rs).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
from lockgate_harness import unique
from mgmt_helpers import Api, q


@dataclass
class Endpoint:
    """One endpoint taking a body, for a fresh `name`."""

    id: str
    method: str
    path: Callable[[str], str]
    # A body it accepts.
    valid: Callable[[str], dict]
    # Whether the request left things as they were.
    untouched: Callable[[Api, str], bool]
    # A body with a value of the wrong type, when lockgate refuses one there.
    wrong: Optional[Callable[[str], dict]] = None
    # Whether RabbitMQ also answers `wrong`, and a body that is not JSON, with 400.
    rabbitmq_refuses_wrong: bool = True
    rabbitmq_refuses_not_json: bool = True
    setup: Callable[[Api, str], None] = field(default=lambda api, name: None)


def absent(path: Callable[[str], str]) -> Callable[[Api, str], bool]:
    return lambda api, name: api.request("GET", path(name))[0] == 404


def with_queue(api: Api, name: str) -> None:
    assert api.put(f"/api/queues/%2F/{q(name)}") == 201


def with_message(api: Api, name: str) -> None:
    with_queue(api, name)
    status, body = api.post("/api/exchanges/%2F/amq.default/publish", publish(name))
    assert (status, body) == (200, {"routed": True})


def with_user(api: Api, name: str) -> None:
    assert api.put(f"/api/users/{q(name)}", {"password": "p", "tags": ""}) == 201


def publish(name: str) -> dict:
    return {"routing_key": name, "payload": "x", "payload_encoding": "string",
            "properties": {}}


def take(api: Api, name: str) -> list:
    status, got = api.post(f"/api/queues/%2F/{q(name)}/get",
                           {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert status == 200, got
    return got


def bound(api: Api, name: str) -> bool:
    return any(b["source"] == "amq.direct" for b in api.get(f"/api/queues/%2F/{q(name)}/bindings"))


ENDPOINTS = [
    Endpoint(
        "queue", "PUT", lambda n: f"/api/queues/%2F/{q(n)}",
        valid=lambda n: {"durable": False},
        untouched=absent(lambda n: f"/api/queues/%2F/{q(n)}"),
        wrong=lambda n: {"durable": "yes"},
    ),
    Endpoint(
        "exchange", "PUT", lambda n: f"/api/exchanges/%2F/{q(n)}",
        valid=lambda n: {"type": "fanout"},
        untouched=absent(lambda n: f"/api/exchanges/%2F/{q(n)}"),
        wrong=lambda n: {"type": "direct", "auto_delete": 3},
    ),
    Endpoint(
        "binding", "POST", lambda n: f"/api/bindings/%2F/e/amq.direct/q/{q(n)}",
        valid=lambda n: {"routing_key": "k"},
        untouched=lambda api, n: not bound(api, n),
        wrong=lambda n: {"routing_key": 5},
        rabbitmq_refuses_wrong=False,
        rabbitmq_refuses_not_json=False,
        setup=with_queue,
    ),
    Endpoint(
        "publish", "POST", lambda n: "/api/exchanges/%2F/amq.default/publish",
        valid=publish,
        untouched=lambda api, n: take(api, n) == [],
        wrong=lambda n: dict(publish(n), payload=5),
        setup=with_queue,
    ),
    Endpoint(
        "get", "POST", lambda n: f"/api/queues/%2F/{q(n)}/get",
        valid=lambda n: {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"},
        untouched=lambda api, n: len(take(api, n)) == 1,
        wrong=lambda n: {"count": "x", "ackmode": "ack_requeue_false", "encoding": "auto"},
        setup=with_message,
    ),
    Endpoint(
        "vhost", "PUT", lambda n: f"/api/vhosts/{q(n)}",
        valid=lambda n: {"description": "d"},
        untouched=absent(lambda n: f"/api/vhosts/{q(n)}"),
    ),
    Endpoint(
        "user", "PUT", lambda n: f"/api/users/{q(n)}",
        valid=lambda n: {"password": "p", "tags": ""},
        untouched=absent(lambda n: f"/api/users/{q(n)}"),
        # Before, this silently created a user without a password.
        wrong=lambda n: {"password": 5, "tags": ""},
        rabbitmq_refuses_wrong=False,
    ),
    Endpoint(
        "permission", "PUT", lambda n: f"/api/permissions/%2F/{q(n)}",
        valid=lambda n: {"configure": ".*", "write": ".*", "read": ".*"},
        untouched=absent(lambda n: f"/api/permissions/%2F/{q(n)}"),
        wrong=lambda n: {"configure": 7, "write": ".*", "read": ".*"},
        rabbitmq_refuses_wrong=False,
        setup=with_user,
    ),
    Endpoint(
        "policy", "PUT", lambda n: f"/api/policies/%2F/{q(n)}",
        valid=lambda n: {"pattern": "^x", "definition": {"max-length": 1}},
        untouched=absent(lambda n: f"/api/policies/%2F/{q(n)}"),
        wrong=lambda n: {"pattern": 5, "definition": {}},
    ),
    Endpoint(
        "definitions", "POST", lambda n: "/api/definitions",
        valid=lambda n: {"vhosts": [{"name": n}]},
        untouched=absent(lambda n: f"/api/vhosts/{q(n)}"),
        wrong=lambda n: {"vhosts": [{"name": n}], "queues": 5},
        rabbitmq_refuses_wrong=False,
    ),
    Endpoint(
        "vhost definitions", "POST", lambda n: "/api/definitions/%2F",
        valid=lambda n: {"queues": [{"name": n, "durable": True, "auto_delete": False,
                                     "arguments": {}}]},
        untouched=absent(lambda n: f"/api/queues/%2F/{q(n)}"),
        wrong=lambda n: {"queues": [{"name": n, "durable": True, "auto_delete": False,
                                     "arguments": {}}],
                         "exchanges": {"name": "x"}},
        rabbitmq_refuses_wrong=False,
    ),
]


def by_id(endpoints: list[Endpoint], marks=lambda e: ()) -> list:
    return [pytest.param(e, id=e.id, marks=marks(e)) for e in endpoints]


def refused(status: int, body) -> str:
    assert status == 400, (status, body)
    assert isinstance(body, dict) and body["error"] == "bad_request", body
    # RabbitMQ's reason is sometimes a list (["not_boolean", "yes"]), lockgate's a string.
    assert body["reason"], body
    return body["reason"]


def prepared(api: Api, endpoint: Endpoint) -> str:
    name = unique(f"body-{endpoint.id.replace(' ', '-')}")
    endpoint.setup(api, name)
    return name


@pytest.mark.parametrize("endpoint", by_id(
    ENDPOINTS,
    marks=lambda e: () if e.rabbitmq_refuses_not_json else pytest.mark.lockgate_only))
@pytest.mark.parametrize("data", [b"not json", b'{"durable": true,', b"[1, 2]", b'"text"'],
                         ids=["text", "cut-short", "array", "string"])
def test_a_body_that_is_not_a_json_object_is_refused(api, endpoint, data):
    name = prepared(api, endpoint)
    status, body = api.send(endpoint.method, endpoint.path(name), data, "application/json")
    refused(status, body)
    assert endpoint.untouched(api, name)


@pytest.mark.parametrize("endpoint", by_id(
    [e for e in ENDPOINTS if e.wrong],
    marks=lambda e: () if e.rabbitmq_refuses_wrong else pytest.mark.lockgate_only))
def test_a_value_of_the_wrong_type_is_refused(api, endpoint):
    name = prepared(api, endpoint)
    status, body, _ = api.request(endpoint.method, endpoint.path(name), endpoint.wrong(name))
    refused(status, body)
    assert endpoint.untouched(api, name)


@pytest.mark.parametrize("endpoint", by_id(ENDPOINTS))
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          None], ids=["text", "form", "none"])
def test_a_body_is_read_whatever_its_content_type(api, endpoint, content_type):
    """As in RabbitMQ: `curl -d` without `-H` sends a form type."""
    name = prepared(api, endpoint)
    data = json.dumps(endpoint.valid(name)).encode()
    status, body = api.send(endpoint.method, endpoint.path(name), data, content_type)
    assert status in (200, 201, 204), (status, body)
    assert not endpoint.untouched(api, name)


@pytest.mark.lockgate_only
@pytest.mark.parametrize("endpoint", by_id(ENDPOINTS))
@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "cross-site"},
                                     {"Sec-Fetch-Site": "same-site"},
                                     {"Origin": "http://evil.example"},
                                     {"Origin": "null"}],
                         ids=["cross-site", "same-site", "foreign-origin", "null-origin"])
def test_another_sites_page_cannot_change_anything(api, endpoint, headers):
    """A form or a no-cors fetch from another site needs no CORS preflight, and the browser
    adds the basic-auth login it holds for the API; lockgate refuses such a request."""
    name = prepared(api, endpoint)
    data = json.dumps(endpoint.valid(name)).encode()
    status, body = api.send(endpoint.method, endpoint.path(name), data, "text/plain", headers)
    assert status == 403, (status, body)
    assert body["error"] == "not_authorised", body
    assert endpoint.untouched(api, name)


@pytest.mark.lockgate_only
def test_an_empty_cross_site_post_binds_nothing(api):
    """An empty body is `{}`: a cross-site POST with none would bind with routing key ''."""
    name = unique("body-csrf")
    with_queue(api, name)
    path = f"/api/bindings/%2F/e/amq.fanout/q/{q(name)}"
    status, _ = api.send("POST", path, b"", None, {"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    bindings = api.get(f"/api/queues/%2F/{q(name)}/bindings")
    assert [b["source"] for b in bindings] == [""], bindings


@pytest.mark.lockgate_only
def test_the_apis_own_pages_and_reads_from_anywhere_pass(api):
    own = urllib.parse.urlsplit(api.base)
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    {"Origin": f"{own.scheme}://{own.netloc}"}):
        name = unique("body-same-origin")
        status, body = api.send("PUT", f"/api/queues/%2F/{q(name)}", b"{}", None, headers)
        assert status == 201, (headers, status, body)
    status, _ = api.send("GET", "/api/overview", b"", None, {"Sec-Fetch-Site": "cross-site"})
    assert status == 200


@pytest.mark.parametrize("endpoint", by_id(ENDPOINTS))
def test_the_same_body_as_json_is_taken(api, endpoint):
    """The refusals above are about the body alone: as JSON, each body works."""
    name = prepared(api, endpoint)
    data = json.dumps(endpoint.valid(name)).encode()
    status, body = api.send(endpoint.method, endpoint.path(name), data,
                            "application/json; charset=utf-8")
    # RabbitMQ answers an import with 204, lockgate with 200 and what it imported.
    assert status in (200, 201, 204), (status, body)
    assert not endpoint.untouched(api, name)


TAKES_ARGUMENTS = [e for e in ENDPOINTS if e.id in ("queue", "exchange", "binding")]


@pytest.mark.lockgate_only
@pytest.mark.parametrize("endpoint", by_id(TAKES_ARGUMENTS))
@pytest.mark.parametrize("arguments", ["x-max-length=1", 5, True, [1]],
                         ids=["string", "number", "boolean", "list"])
def test_arguments_that_are_not_an_object_are_refused(api, endpoint, arguments):
    """Before, any of these declared the entity with no arguments at all: a queue without the
    limit the request asked for."""
    name = prepared(api, endpoint)
    status, body, _ = api.request(endpoint.method, endpoint.path(name),
                                  dict(endpoint.valid(name), arguments=arguments))
    assert "arguments" in refused(status, body)
    assert endpoint.untouched(api, name)


@pytest.mark.parametrize("endpoint", by_id(TAKES_ARGUMENTS))
@pytest.mark.parametrize("arguments", [None, []], ids=["null", "empty-list"])
def test_null_or_an_empty_list_is_no_arguments(api, endpoint, arguments):
    """Older RabbitMQ exports write an empty table as `[]`."""
    name = prepared(api, endpoint)
    status, body, _ = api.request(endpoint.method, endpoint.path(name),
                                  dict(endpoint.valid(name), arguments=arguments))
    assert status in (201, 204), (status, body)
    assert not endpoint.untouched(api, name)


@pytest.mark.lockgate_only
@pytest.mark.parametrize("properties", ["x", {"headers": "x"}, {"headers": 5}],
                         ids=["properties", "headers", "headers-number"])
def test_a_publish_with_properties_that_are_not_objects_is_refused(api, properties):
    name = unique("body-publish-properties")
    with_queue(api, name)
    status, body, _ = api.request("POST", "/api/exchanges/%2F/amq.default/publish",
                                  dict(publish(name), properties=properties))
    refused(status, body)
    assert take(api, name) == []


@pytest.mark.lockgate_only
def test_a_definitions_binding_with_arguments_that_are_not_an_object_is_refused(api):
    name = unique("body-import-binding")
    with_queue(api, name)
    status, body = api.post("/api/definitions", {"bindings": [
        {"vhost": "/", "source": "amq.direct", "destination": name, "destination_type": "queue",
         "routing_key": "k", "arguments": "x"}]})
    assert "arguments" in refused(status, body)
    assert not bound(api, name)


def test_an_empty_body_without_a_content_type_declares_with_the_defaults(api):
    name = unique("body-empty")
    assert api.send("PUT", f"/api/queues/%2F/{q(name)}", b"", None)[0] == 201
    info = api.get(f"/api/queues/%2F/{q(name)}")
    # queue.declare's defaults, as RabbitMQ reads an empty body.
    assert info["durable"] is False and info["auto_delete"] is False
    assert api.send("PUT", f"/api/exchanges/%2F/{q(name)}", b"", None)[0] == 201
    assert api.get(f"/api/exchanges/%2F/{q(name)}")["durable"] is False


@pytest.mark.lockgate_only
def test_a_body_over_the_limit_is_refused_in_the_same_shape(api):
    name = unique("body-large")
    data = json.dumps({"durable": True, "pad": "x" * (3 << 20)}).encode()
    status, body = api.send("PUT", f"/api/queues/%2F/{q(name)}", data, "application/json")
    assert status == 413, (status, body)
    assert isinstance(body, dict) and body["error"] == "payload_too_large", body
    assert api.request("GET", f"/api/queues/%2F/{q(name)}")[0] == 404


@pytest.mark.lockgate_only
def test_a_definitions_import_may_be_as_large_as_rabbitmqs_limit(api):
    """RabbitMQ takes definition uploads of up to 20 MiB (an export of ~200,000 queues);
    other bodies stay under 2 MiB."""
    name = unique("body-import")
    definitions = {"vhosts": [{"name": name}], "pad": "x" * (19 << 20)}
    status, body = api.post("/api/definitions", definitions)
    assert status in (200, 204), (status, body)
    assert api.request("GET", f"/api/vhosts/{q(name)}")[0] == 200
    over = unique("body-import")
    data = json.dumps({"vhosts": [{"name": over}], "pad": "x" * (21 << 20)}).encode()
    status, body = api.send("POST", "/api/definitions", data, "application/json")
    assert status == 413, (status, body)
    assert isinstance(body, dict) and body["error"] == "payload_too_large", body
    assert api.request("GET", f"/api/vhosts/{q(over)}")[0] == 404
