"""The dashboard in a real headless chromium, against a broker with traffic: the numbers the
page shows must match the API, and they must update live."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "management"))

from cdp import Browser, chromium_binary
from lockgate_harness import eventually, unique
from mgmt_helpers import Api, start

ROWS_JS = """
(() => {
  const out = {};
  for (const tr of document.querySelectorAll('#%s tbody tr[data-key]')) {
    const row = {};
    for (const td of tr.querySelectorAll('td[data-field]')) {
      row[td.dataset.field] = td.dataset.value === undefined ? td.textContent : td.dataset.value;
    }
    out[tr.dataset.key] = row;
  }
  return out;
})()
"""

CARDS_JS = """
(() => Object.fromEntries([...document.querySelectorAll('#overview [data-field]')]
    .map((e) => [e.dataset.field, e.textContent])))()
"""


@pytest.fixture(scope="module")
def env():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    proc = start()
    browser = Browser(binary)
    yield proc, Api(proc.http), browser
    browser.close()
    proc.stop()


def rows(browser, table):
    return browser.eval(ROWS_JS % table)


def test_dashboard_shows_what_the_api_says_and_updates_live(env):
    proc, api, browser = env
    qname, idle = unique("dash"), unique("idle")
    conn = proc.broker().connect(client_properties={"connection_name": "dashboard-test"})
    try:
        ch = conn.channel()
        ch.queue_declare(qname)
        ch.queue_declare(idle)
        for i in range(7):
            ch.basic_publish("", qname, f"m{i}".encode())
        ch.basic_publish("", idle, b"old")
        consumer_ch = conn.channel()
        consumer_ch.basic_qos(prefetch_count=3)
        consumer_ch.basic_consume(qname, lambda *a: None, consumer_tag="dash-consumer")
        conn.process_data_events(time_limit=0.3)

        browser.open(f"{proc.http}/#user=guest&password=guest")
        browser.wait_for("Number(document.getElementById('refreshes').dataset.count) >= 1")
        key = f"/|{qname}"
        shown = browser.wait_for(
            f"(() => {{ const r = {ROWS_JS % 'queues'}; return r['{key}'] && "
            f"r['{key}'].messages_unacknowledged === '3' ? r : null; }})()")
        api_queue = api.get(f"/api/queues/%2F/{qname}")
        row = shown[key]
        assert row["name"] == qname and row["vhost"] == "/"
        assert int(row["messages_ready"]) == api_queue["messages_ready"] == 4
        assert int(row["messages_unacknowledged"]) == api_queue["messages_unacknowledged"] == 3
        assert int(row["consumers"]) == api_queue["consumers"] == 1
        assert int(row["message_bytes"]) == api_queue["message_bytes"]
        assert float(row["oldest_ready_age"]) >= 0 and float(row["oldest_unacked_age"]) >= 0
        assert shown[f"/|{idle}"]["messages_ready"] == "1"

        conns = rows(browser, "connections")
        api_conns = {c["name"]: c for c in api.get("/api/connections")}
        assert set(conns) == set(api_conns)
        (name, crow), = conns.items()
        assert crow["user"] == "guest" and int(crow["channels"]) == api_conns[name]["channels"] == 2
        assert "Pika" in crow["client"]

        consumers = rows(browser, "consumers")
        ckey = f"/|{qname}|dash-consumer"
        assert consumers[ckey]["prefetch_count"] == "3"
        assert consumers[ckey]["messages_unacknowledged"] == "3"
        assert consumers[ckey]["channel"].endswith("(2)")

        cards = browser.eval(CARDS_JS)
        totals = api.get("/api/overview")
        assert int(cards["messages_ready"]) == totals["queue_totals"]["messages_ready"]
        assert int(cards["queues"]) == totals["object_totals"]["queues"] == 2
        assert int(cards["connections"]) == 1 and int(cards["consumers"]) == 1

        # Live: more traffic shows up without reloading the page, rates included.
        for i in range(40):
            ch.basic_publish("", idle, b"more")
        browser.wait_for(f"(() => {{ const r = {ROWS_JS % 'queues'}; "
                         f"return r['/|{idle}'] && r['/|{idle}'].messages_ready === '41'; }})()")

        def rate_shown():
            ch.basic_publish("", idle, b"tick")
            conn.process_data_events(time_limit=0.1)
            value = float(browser.eval(CARDS_JS)["publish_rate"])
            return value if value > 0 else None

        # Two samples of the 5 s rate sampler, then a page refresh.
        eventually(rate_shown, timeout=30, interval=0.5, message="publish rate on the page")
        api_rate = api.get("/api/overview")["message_stats"]["publish_details"]["rate"]
        assert api_rate > 0
        polyline = browser.eval("document.getElementById('line-publish').getAttribute('points')")
        assert len(polyline.split()) >= 2
    finally:
        if conn.is_open:
            conn.close()

    # The closed connection disappears from the page.
    browser.wait_for("document.querySelector('#connections tbody tr.empty') !== null")


def test_dashboard_asks_for_login_without_credentials(env):
    proc, _, browser = env
    browser.open(f"{proc.http}/")
    browser.wait_for("document.readyState === 'complete'")
    browser.send("Runtime.evaluate", {"expression": "sessionStorage.clear()"})
    browser.send("Page.reload")
    browser.wait_for("getComputedStyle(document.getElementById('login')).display === 'flex'")
    assert browser.eval("document.getElementById('refreshes').dataset.count") == "0"


def test_queue_counters_shown_match_the_api(env):
    """Expired, dead-lettered and ack-timeout counts per queue (lockgate's own counters)."""
    proc, api, browser = env
    source, target = unique("expiring"), unique("dead")
    conn = proc.broker().connect()
    try:
        ch = conn.channel()
        ch.queue_declare(target)
        ch.queue_declare(source, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": target})
        for i in range(2):
            ch.basic_publish("", source, b"%d" % i)
        eventually(lambda: api.get(f"/api/queues/%2F/{source}")["messages_dead_lettered"] == 2,
                   timeout=10, message="two messages expired and dead-lettered")
        # The earlier tests' tabs keep polling the broker: close them, then open a fresh one.
        for tab in browser.send("Target.getTargets", session=False)["targetInfos"]:
            if tab["type"] == "page":
                browser.send("Target.closeTarget", {"targetId": tab["targetId"]}, session=False)
        browser.open(f"{proc.http}/#user=guest&password=guest")
        key = f"/|{source}"
        shown = browser.wait_for(
            f"(() => {{ const r = {ROWS_JS % 'queues'}; return r['{key}'] && "
            f"r['{key}'].messages_dead_lettered === '2' ? r : null; }})()")
        api_queue = api.get(f"/api/queues/%2F/{source}")
        row = shown[key]
        assert int(row["messages_expired"]) == api_queue["messages_expired"] == 2
        assert int(row["messages_dead_lettered"]) == api_queue["messages_dead_lettered"] == 2
        assert int(row["ack_timeout_redeliveries"]) == api_queue["ack_timeout_redeliveries"] == 0
        assert shown[f"/|{target}"]["messages_ready"] == "2"
        assert shown[f"/|{target}"]["messages_expired"] == "0"
    finally:
        conn.close()
