"""/api/consumers lists a consumer's `x-priority` under `arguments`, as RabbitMQ does."""

from __future__ import annotations

import pytest

from lockgate_harness import unique

pytestmark = pytest.mark.lockgate_only


def test_a_consumer_priority_is_listed_in_its_arguments(api, broker):
    name = unique("prio")
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(name, exclusive=True)
        ch.basic_consume(name, lambda *a: None, consumer_tag="high",
                         arguments={"x-priority": 10})
        ch.basic_consume(name, lambda *a: None, consumer_tag="low",
                         arguments={"x-priority": -3})
        ch.basic_consume(name, lambda *a: None, consumer_tag="default")
        listed = {c["consumer_tag"]: c["arguments"] for c in api.get("/api/consumers")
                  if c["queue"]["name"] == name}
        assert listed == {"high": {"x-priority": 10}, "low": {"x-priority": -3}, "default": {}}
    finally:
        conn.close()


def test_a_consumer_lists_its_arguments_as_it_sent_them(api, broker):
    # RabbitMQ 3.10.8 echoes basic.consume's arguments as given: an explicit x-priority 0,
    # x-cancel-on-ha-failover and arguments it does not know.
    name = unique("args")
    sent = {
        "zero": {"x-priority": 0},
        "ha": {"x-cancel-on-ha-failover": True},
        "custom": {"custom": "v", "n": 5, "t": {"a": 1}, "l": [1, "x"]},
        "mixed": {"x-priority": -2, "x-other": "y"},
    }
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(name, exclusive=True)
        for tag, arguments in sent.items():
            ch.basic_consume(name, lambda *a: None, consumer_tag=tag, arguments=arguments)
        listed = {c["consumer_tag"]: c["arguments"] for c in api.get("/api/consumers")
                  if c["queue"]["name"] == name}
        assert listed == sent
    finally:
        conn.close()
