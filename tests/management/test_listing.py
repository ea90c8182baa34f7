"""RabbitMQ's list parameters on the management API: page, page_size, name, use_regex, sort,
sort_reverse and columns (the same on /api/queues, /api/exchanges, /api/connections, ...)."""

from __future__ import annotations

import pytest
from mgmt_helpers import q

from lockgate_harness import unique

pytestmark = pytest.mark.lockgate_only


@pytest.fixture(scope="module")
def listed(api, broker):
    """Five queues `<prefix>-0..4` holding 0..4 messages."""
    prefix = unique("list")
    conn = broker.connect()
    ch = conn.channel()
    for i in range(5):
        ch.queue_declare(f"{prefix}-{i}")
        for _ in range(i):
            ch.basic_publish("", f"{prefix}-{i}", b"m")
    conn.close()
    return prefix


def names(items):
    return [item["name"] for item in items]


def test_pages_of_a_filtered_list(api, listed):
    page = api.get(f"/api/queues?page=2&page_size=2&name={listed}")
    assert page["filtered_count"] == 5
    assert page["item_count"] == 2
    assert page["page"] == 2 and page["page_size"] == 2 and page["page_count"] == 3
    assert page["total_count"] >= 5
    assert names(page["items"]) == [f"{listed}-2", f"{listed}-3"]
    last = api.get(f"/api/queues/{q('/')}?page=3&page_size=2&name={listed}")
    assert names(last["items"]) == [f"{listed}-4"] and last["item_count"] == 1
    # Default page size 100.
    assert api.get(f"/api/queues?page=1&name={listed}")["page_size"] == 100


def test_regex_name_filter(api, listed):
    page = api.get(f"/api/queues?page=1&name={q('^' + listed.upper() + '-[13]$')}"
                   "&use_regex=true")
    assert names(page["items"]) == [f"{listed}-1", f"{listed}-3"]


def test_sort_sort_reverse_and_columns(api, listed):
    items = api.get(f"/api/queues?name={listed}&sort=messages&sort_reverse=true"
                    "&columns=name,messages,message_stats.publish")
    assert names(items) == [f"{listed}-{i}" for i in (4, 3, 2, 1, 0)]
    assert set(items[0]) == {"name", "messages", "message_stats"}
    assert items[0]["messages"] == 4
    assert set(items[0]["message_stats"]) == {"publish"}
    assert items[0]["message_stats"]["publish"] == 4
    # A queue with no publishes yet still has the field.
    assert items[-1]["message_stats"]["publish"] == 0
    # Columns on a single object.
    one = api.get(f"/api/queues/{q('/')}/{q(listed + '-2')}?columns=name,messages_ready")
    assert one == {"name": f"{listed}-2", "messages_ready": 2}


def test_other_lists_take_the_same_parameters(api, broker, listed):
    exchanges = api.get("/api/exchanges?page=1&page_size=3&sort=name&columns=name,type")
    assert exchanges["item_count"] == 3 and exchanges["total_count"] >= 6
    assert all(set(x) <= {"name", "type"} for x in exchanges["items"])
    assert names(exchanges["items"]) == sorted(names(exchanges["items"]), key=str.lower)
    conn = broker.connect()
    try:
        connections = api.get("/api/connections?page=1&page_size=1&columns=name,user")
        assert connections["item_count"] == 1
        assert set(connections["items"][0]) == {"name", "user"}
    finally:
        conn.close()


@pytest.mark.parametrize("query", [
    "page=0", "page=abc", "page=1&page_size=501", "page=1&page_size=0",
    "page=1&name=(&use_regex=true", "page=99&page_size=100",
])
def test_bad_parameters_are_400(api, listed, query):
    status, body, _ = api.request("GET", f"/api/queues?{query}")
    assert status == 400, (query, body)
    assert body["error"] == "bad_request"


def test_without_parameters_lists_stay_plain(api, listed):
    assert isinstance(api.get("/api/queues"), list)
