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
