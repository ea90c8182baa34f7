"""The management HTTP API against the running binary: every endpoint and action."""

from __future__ import annotations

import time

import pika
import pytest
from lockgate_harness import eventually, unique
from mgmt_helpers import Api, q, start


def only_if(value, condition):
    """`value` when `condition(value)` holds, else None (for `eventually`)."""
    return value if condition(value) else None


def test_auth_requires_a_management_user(proc, api):
    assert Api(proc.http, user=None).request("GET", "/api/overview")[0] == 401
    status, body, headers = Api(proc.http, "guest", "wrong").request("GET", "/api/overview")
    assert status == 401 and body["error"] == "not_authorised"
    assert "Basic" in headers.get("WWW-Authenticate", headers.get("www-authenticate", ""))
    # No administrator/monitoring tag: no API access (as RabbitMQ).
    assert Api(proc.http, "app", "a").request("GET", "/api/overview")[0] == 401
    watcher = Api(proc.http, "watcher", "w")
    assert watcher.request("GET", "/api/queues")[0] == 200
    assert watcher.put(f"/api/queues/%2F/{unique('w')}") == 403
    assert api.get("/api/whoami") == {"name": "guest", "tags": ["administrator"]}


def test_overview_shapes_and_listeners(proc, api):
    o = api.get("/api/overview")
    assert o["product_name"] == "lockgate"
    for key in ("rabbitmq_version", "management_version", "node", "cluster_name"):
        assert isinstance(o[key], str)
    assert {"publish", "publish_details", "deliver_get", "ack", "redeliver"} <= set(o["message_stats"])
    assert set(o["object_totals"]) == {"connections", "channels", "exchanges", "queues", "consumers"}
    assert {"messages", "messages_ready", "messages_unacknowledged"} <= set(o["queue_totals"])
    amqp = [x for x in o["listeners"] if x["protocol"] == "amqp"]
    assert amqp[0]["port"] == proc.port
    http = [x for x in o["listeners"] if x["protocol"] == "http"]
    assert proc.http.endswith(f":{http[0]['port']}")
    nodes = api.get("/api/nodes")
    assert len(nodes) == 1 and nodes[0]["name"] == o["node"]
    assert nodes[0]["mem_alarm"] is False and nodes[0]["disk_free_alarm"] is False
    assert nodes[0]["mem_limit"] == o["memory"]["high_watermark"]
    assert api.get(f"/api/nodes/{q(o['node'])}")["running"] is True
    assert api.request("GET", "/api/nodes/nope@nowhere")[0] == 404


def test_queue_declare_publish_get_purge_delete(api):
    name = unique("mq")
    path = f"/api/queues/%2F/{q(name)}"
    assert api.put(path, {"durable": False, "arguments": {"x-max-length": 100}}) == 201
    assert api.put(path, {"durable": False, "arguments": {"x-max-length": 100}}) == 204
    status, err, _ = api.request("PUT", path, {"durable": True})
    assert status == 400 and "inequivalent arg 'durable'" in err["reason"]
    info = api.get(path)
    assert info["name"] == name and info["vhost"] == "/" and info["durable"] is False
    assert info["arguments"]["x-max-length"] == 100
    assert info["messages"] == 0 and info["consumers"] == 0

    for i in range(3):
        status, body = api.post("/api/exchanges/%2F/amq.default/publish", {
            "routing_key": name, "payload": f"m{i}", "payload_encoding": "string",
            "properties": {"delivery_mode": 1, "headers": {"k": "v"}, "content_type": "text/plain"}})
        assert (status, body) == (200, {"routed": True})
    status, body = api.post("/api/exchanges/%2F/amq.default/publish",
                            {"routing_key": unique("nowhere"), "payload": "x", "properties": {}})
    assert body == {"routed": False}

    info = api.get(path)
    assert info["messages_ready"] == 3 and info["messages"] == 3
    assert info["message_bytes_ready"] >= 6
    assert info["oldest_ready_age_seconds"] >= 0
    assert info["message_stats"]["publish"] == 3

    status, got = api.post(f"{path}/get", {"count": 2, "ackmode": "ack_requeue_true",
                                           "encoding": "auto"})
    assert status == 200 and [m["payload"] for m in got] == ["m0", "m1"]
    assert got[0]["properties"]["headers"] == {"k": "v"}
    assert got[0]["routing_key"] == name and got[0]["payload_encoding"] == "string"
    assert got[1]["message_count"] == 1
    status, got = api.post(f"{path}/get", {"count": 1, "ackmode": "ack_requeue_false",
                                           "encoding": "base64"})
    assert got[0]["redelivered"] is True and got[0]["payload"] == "bTA="
    assert api.get(path)["messages_ready"] == 2
    assert api.post(f"{path}/get", {"count": 1, "ackmode": "bogus"})[0] == 400

    assert api.delete(f"{path}/contents") == 204
    assert api.get(path)["messages_ready"] == 0
    assert api.delete(path) == 204
    assert api.request("GET", path)[0] == 404
    assert api.delete(path) == 404


def test_delete_queue_if_empty_and_if_unused(api):
    name = unique("mq")
    path = f"/api/queues/%2F/{q(name)}"
    api.put(path, {"durable": False})
    api.post("/api/exchanges/%2F/amq.default/publish",
             {"routing_key": name, "payload": "x", "properties": {}})
    status, err, _ = api.request("DELETE", f"{path}?if-empty=true")
    assert status == 400 and "not empty" in err["reason"]
    assert api.delete(f"{path}?if-unused=true") == 204


def test_exchanges_bindings_and_unbind(api):
    x, x2, name = unique("mx"), unique("mx"), unique("mq")
    assert api.put(f"/api/exchanges/%2F/{x}", {"type": "topic", "durable": False}) == 201
    assert api.put(f"/api/exchanges/%2F/{x2}", {"type": "fanout", "durable": False}) == 201
    api.put(f"/api/queues/%2F/{name}", {"durable": False})
    info = api.get(f"/api/exchanges/%2F/{x}")
    assert info["type"] == "topic" and info["durable"] is False and info["internal"] is False
    assert x in [e["name"] for e in api.get("/api/exchanges/%2F")]
    assert "" in [e["name"] for e in api.get("/api/exchanges")]
    assert api.get("/api/exchanges/%2F/amq.default")["type"] == "direct"

    status, _, headers = api.request("POST", f"/api/bindings/%2F/e/{x}/q/{name}",
                                     {"routing_key": "a.*", "arguments": {}})
    assert status == 201 and headers.get("Location", headers.get("location")) == "a.*"
    status, _, _ = api.request("POST", f"/api/bindings/%2F/e/{x}/e/{x2}",
                               {"routing_key": "", "arguments": {}})
    assert status == 201

    between = api.get(f"/api/bindings/%2F/e/{x}/q/{name}")
    assert [(b["routing_key"], b["properties_key"]) for b in between] == [("a.*", "a.*")]
    source = api.get(f"/api/exchanges/%2F/{x}/bindings/source")
    assert {(b["destination"], b["destination_type"]) for b in source} == {
        (name, "queue"), (x2, "exchange")}
    dest = api.get(f"/api/exchanges/%2F/{x2}/bindings/destination")
    assert [b["source"] for b in dest] == [x]
    qb = api.get(f"/api/queues/%2F/{name}/bindings")
    assert {b["source"] for b in qb} == {"", x}
    allb = api.get("/api/bindings/%2F")
    assert {"source": x, "vhost": "/", "destination": name, "destination_type": "queue",
            "routing_key": "a.*", "arguments": {}, "properties_key": "a.*"} in allb
    assert api.get(f"/api/bindings/%2F/e/{x}/q/{name}/a.*")["routing_key"] == "a.*"

    status, body = api.post(f"/api/exchanges/%2F/{x}/publish",
                            {"routing_key": "a.b", "payload": "t", "properties": {}})
    assert body == {"routed": True}
    assert api.get(f"/api/queues/%2F/{name}")["messages_ready"] == 1

    assert api.delete(f"/api/bindings/%2F/e/{x}/q/{name}/a.*") == 204
    assert api.get(f"/api/bindings/%2F/e/{x}/q/{name}") == []
    assert api.delete(f"/api/bindings/%2F/e/{x}/e/{x2}/~") == 204
    assert api.delete(f"/api/bindings/%2F/e/{x}/q/{name}/a.*") == 404

    status, err, _ = api.request("DELETE", f"/api/exchanges/%2F/{x2}")
    assert status == 204
    assert api.delete(f"/api/exchanges/%2F/{x}") == 204
    assert api.request("GET", f"/api/exchanges/%2F/{x}")[0] == 404
    status, err, _ = api.request("PUT", "/api/exchanges/%2F/amq.custom", {"type": "direct"})
    assert status == 403 and "amq.custom" in err["reason"]


def test_connections_channels_consumers_and_ages(api, broker):
    name = unique("mq")
    conn = broker.connect(client_properties={"connection_name": "mgmt-test"})
    try:
        ch = conn.channel()
        ch.queue_declare(name, auto_delete=False)
        for i in range(10):
            ch.basic_publish("", name, f"m{i}".encode())
        ch2 = conn.channel()
        ch2.basic_qos(prefetch_count=4)
        ch2.basic_consume(name, lambda *a: None, consumer_tag="ctag-1")
        conn.process_data_events(time_limit=0.3)

        def consumer():
            cs = [c for c in api.get("/api/consumers") if c["queue"]["name"] == name]
            return cs if cs and cs[0]["messages_unacknowledged"] == 4 else None

        c = eventually(consumer)[0]
        assert c["consumer_tag"] == "ctag-1" and c["prefetch_count"] == 4
        assert c["ack_required"] is True and c["exclusive"] is False
        assert c["oldest_unacked_age_seconds"] >= 0
        assert c["channel_details"]["number"] == 2
        assert [x["consumer_tag"] for x in api.get("/api/consumers/%2F")] == \
            [x["consumer_tag"] for x in api.get("/api/consumers")]

        conns = [x for x in api.get("/api/connections")
                 if x["client_properties"].get("connection_name") == "mgmt-test"]
        assert len(conns) == 1
        cinfo = conns[0]
        assert cinfo["user"] == "guest" and cinfo["vhost"] == "/" and cinfo["channels"] == 2
        assert cinfo["protocol"] == "AMQP 0-9-1" and cinfo["peer_host"] == "127.0.0.1"
        assert cinfo["client_properties"]["product"] == "Pika Python Client Library"
        assert cinfo["port"] == broker.port
        assert api.get(f"/api/connections/{q(cinfo['name'])}")["name"] == cinfo["name"]
        assert len(api.get("/api/vhosts/%2F/connections")) >= 1

        chans = api.get(f"/api/connections/{q(cinfo['name'])}/channels")
        assert sorted(x["number"] for x in chans) == [1, 2]
        consuming = next(x for x in chans if x["number"] == 2)
        assert consuming["consumer_count"] == 1 and consuming["messages_unacknowledged"] == 4
        assert consuming["connection_details"]["name"] == cinfo["name"]
        assert any(x["name"] == consuming["name"] for x in api.get("/api/channels"))
        assert any(x["name"] == consuming["name"] for x in api.get("/api/vhosts/%2F/channels"))

        time.sleep(0.2)
        qinfo = api.get(f"/api/queues/%2F/{name}")
        assert qinfo["messages_ready"] == 6 and qinfo["messages_unacknowledged"] == 4
        assert qinfo["consumers"] == 1 and qinfo["oldest_unacked_age_seconds"] >= 0.2
        assert qinfo["oldest_ready_age_seconds"] >= 0.2
        assert qinfo["consumer_details"][0]["consumer_tag"] == "ctag-1"

        o = api.get("/api/overview")["object_totals"]
        assert o["connections"] >= 1 and o["channels"] >= 2 and o["consumers"] >= 1

        # Close from the API: the client gets 320 with the reason.
        assert api.delete(f"/api/connections/{q(cinfo['name'])}",
                          headers={"X-Reason": "maintenance"}) == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(50):
                conn.process_data_events(time_limit=0.1)
        assert closed.value.reply_code == 320
        assert "maintenance" in closed.value.reply_text
        eventually(lambda: not [x for x in api.get("/api/connections")
                                if x["name"] == cinfo["name"]])
        # The unacked deliveries went back to the queue.
        eventually(lambda: api.get(f"/api/queues/%2F/{name}")["messages_ready"] == 10)
    finally:
        if conn.is_open:
            conn.close()
    assert api.delete(f"/api/connections/{q('1.2.3.4:5 -> nowhere')}") == 404


def test_message_rates(api, broker):
    name = unique("mq")
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(name, auto_delete=False)

        def traffic_and_rates():
            for i in range(50):
                ch.basic_publish("", name, b"x")
            while True:
                method, _, _ = ch.basic_get(name)
                if method is None:
                    break
                ch.basic_ack(method.delivery_tag)
            stats = api.get(f"/api/queues/%2F/{name}")["message_stats"]
            return stats if stats["publish_details"]["rate"] > 0 else None

        # Rates need two samples of the 5 s sampler after the queue appears: ~10 s.
        stats = eventually(traffic_and_rates, timeout=30, interval=0.5)
        assert stats["deliver_get_details"]["rate"] > 0 and stats["ack_details"]["rate"] > 0
        assert stats["publish"] >= 50 and stats["ack"] == stats["deliver_get"]
        assert api.get("/api/overview")["message_stats"]["publish_details"]["rate"] > 0
    finally:
        conn.close()


def test_vhosts_users_permissions_policies(api):
    names = [v["name"] for v in api.get("/api/vhosts")]
    assert "/" in names
    assert api.get("/api/vhosts/%2F")["name"] == "/"
    vh = unique("vh")
    assert api.put(f"/api/vhosts/{vh}") == 201
    assert api.put(f"/api/vhosts/{vh}") == 204
    assert api.put(f"/api/queues/{vh}/q1", {"durable": False}) == 201
    assert [x["name"] for x in api.get(f"/api/queues/{vh}")] == ["q1"]
    assert api.request("GET", "/api/vhosts/nope")[0] == 404
    assert api.request("GET", "/api/queues/nope")[0] == 404

    users = {u["name"]: u for u in api.get("/api/users")}
    assert users["guest"]["tags"] == ["administrator"]
    assert users["watcher"]["tags"] == ["monitoring"]
    assert users["guest"]["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert api.get("/api/users/app")["tags"] == []
    assert api.request("GET", "/api/users/nobody")[0] == 404
    perms = api.get("/api/permissions")
    assert {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} in perms
    assert all(p["vhost"] == "/" for p in api.get("/api/vhosts/%2F/permissions"))
    assert api.get("/api/policies") == [] and api.get("/api/policies/%2F") == []


def test_health_checks(proc, api):
    assert api.request("GET", "/api/health/checks/alarms")[:2] == (200, {"status": "ok"})
    assert api.request("GET", "/api/health/checks/local-alarms")[0] == 200
    assert api.request("GET", "/api/health/checks/ready")[:2] == (200, {"status": "ok"})
    assert api.request("GET", "/api/health/checks/virtual-hosts")[0] == 200
    assert Api(proc.http, user=None).request("GET", "/api/health/checks/ping")[0] == 200


def test_memory_alarm_fails_the_alarm_and_ready_checks():
    p = start(extra="[memory]\nhigh_watermark = 4096\n")
    try:
        api = Api(p.http)
        conn = p.broker().connect()
        ch = conn.channel()
        name = unique("mq")
        ch.queue_declare(name)
        ch.basic_publish("", name, b"x" * 10000)
        _, body, _ = eventually(
            lambda: only_if(api.request("GET", "/api/health/checks/alarms"),
                            lambda r: r[0] == 503))
        assert body["status"] == "failed" and body["alarms"][0]["resource"] == "memory"
        assert api.request("GET", "/api/health/checks/ready")[0] == 503
        assert api.get("/api/overview")["memory"]["alarm"] is True
        conn.close()
    finally:
        p.stop()


def test_names_and_routing_keys_over_255_octets_are_a_400(api):
    """AMQP carries them as shortstrs. Before, a 300-octet exchange name was accepted, and a
    message published to it broke the connection of every consumer it was delivered to."""
    long = "é" * 128
    assert api.put(f"/api/queues/%2F/{q('é' * 127 + 'x')}", {"durable": False}) == 201
    assert api.delete(f"/api/queues/%2F/{q('é' * 127 + 'x')}") == 204
    for path, body in [(f"/api/queues/%2F/{q(long)}", {}),
                       (f"/api/exchanges/%2F/{q(long)}", {"type": "fanout"}),
                       (f"/api/vhosts/{q(long)}", None)]:
        status, err, _ = api.request("PUT", path, body)
        assert status == 400 and "256 octets" in err["reason"], (path, status, err)
        assert api.request("GET", path)[0] == 404
    status, err = api.post("/api/exchanges/%2F/amq.default/publish",
                           {"routing_key": long, "payload": "x", "properties": {}})
    assert status == 400 and "routing key" in err["reason"]
    status, err = api.post("/api/bindings/%2F/e/amq.direct/q/nowhere", {"routing_key": long})
    assert status == 400 and "routing key" in err["reason"]
    status, err = api.post("/api/definitions", {"queues": [
        {"name": long, "vhost": "/", "durable": True, "arguments": {}}]})
    assert status == 400 and "queue name" in err["reason"]


def test_unknown_paths_and_openapi(proc, api):
    status, body, _ = api.request("GET", "/api/nothing-here")
    assert status == 404 and body["error"]
    doc = api.get("/api/openapi.json")
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for p in ("/overview", "/nodes", "/queues/{vhost}/{name}", "/definitions", "/connections/{name}",
              "/bindings/{vhost}/e/{source}/q/{destination}", "/health/checks/alarms"):
        assert p in paths, p


def test_disabled_management_does_not_listen():
    from lockgate_harness import LockgateProcess
    p = LockgateProcess(config="[management]\nenabled = false\n[metrics]\nenabled = false\n",
                        log_level="info")
    try:
        assert "management API serving" not in p.log()
        conn = p.broker().connect()
        conn.close()
    finally:
        p.stop()


def test_spilled_bytes_are_reported():
    p = start(extra='[memory]\nhigh_watermark = "8MiB"\n')
    try:
        api = Api(p.http)
        conn = p.broker().connect()
        ch = conn.channel()
        name = unique("spill")
        ch.queue_declare(name)
        for _ in range(600):
            ch.basic_publish("", name, b"x" * 10_000)
        # While a batch is being written it is briefly in neither list: wait for a settled view.
        info = eventually(lambda: only_if(
            api.get(f"/api/queues/%2F/{name}"),
            lambda i: i["messages_paged_out"] > 0 and i["messages_ready"] == 600))
        assert info["message_bytes_paged_out"] > 0
        assert info["message_bytes_ram"] < info["message_bytes"]
        assert info["messages_ready_ram"] + info["messages_paged_out"] == 600
        conn.close()
    finally:
        p.stop()


def test_every_documented_parameterless_get_is_served(api):
    doc = api.get("/api/openapi.json")
    for path, ops in doc["paths"].items():
        if "{" in path or "get" not in ops:
            continue
        status, _, _ = api.request("GET", "/api" + path)
        assert status in (200, 503), (path, status)


def test_exclusive_queue_is_listed_purged_and_deleted_by_an_operator(api, broker):
    conn = broker.connect()
    try:
        ch = conn.channel()
        name = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", name, b"x")
        info = eventually(lambda: only_if(api.get(f"/api/queues/%2F/{q(name)}"),
                                          lambda i: i["messages_ready"] == 1))
        assert info["exclusive"] is True and info["owner_pid_details"]["peer_host"] == "127.0.0.1"
        assert api.delete(f"/api/queues/%2F/{q(name)}/contents") == 204
        assert api.get(f"/api/queues/%2F/{q(name)}")["messages_ready"] == 0
        export = api.get("/api/definitions")
        assert name not in [x["name"] for x in export["queues"]]
        assert api.delete(f"/api/queues/%2F/{q(name)}") == 204
        assert api.request("GET", f"/api/queues/%2F/{q(name)}")[0] == 404
    finally:
        conn.close()


def test_depth_rate_follows_a_growing_queue(api, broker):
    name = unique("mq")
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(name)

        def growing():
            for _ in range(20):
                ch.basic_publish("", name, b"x")
            info = api.get(f"/api/queues/%2F/{name}")
            return info if info["messages_details"]["rate"] > 0 else None

        # Two samples of the 5 s sampler after the queue appears: ~10 s.
        info = eventually(growing, timeout=30, interval=0.5)
        assert info["messages"] >= 20
        assert api.get("/api/overview")["queue_totals"]["messages_details"]["rate"] != 0
    finally:
        conn.close()
