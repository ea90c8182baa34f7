"""Definitions export and import in RabbitMQ's format."""

from __future__ import annotations

from mgmt_helpers import Api, start

# The shape `rabbitmqctl export_definitions` writes (RabbitMQ 3.12/3.13), trimmed.
RABBITMQ_EXPORT = {
    "rabbit_version": "3.13.7",
    "rabbitmq_version": "3.13.7",
    "product_name": "RabbitMQ",
    "product_version": "3.13.7",
    "users": [
        {"name": "guest", "password_hash": "xxxx", "hashing_algorithm":
         "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}},
        {"name": "orders", "password_hash": "yyyy", "hashing_algorithm":
         "rabbit_password_hashing_sha256", "tags": [], "limits": {}},
    ],
    "vhosts": [{"name": "/", "limits": [], "metadata": {"description": "", "tags": []}},
               {"name": "shop", "limits": [], "metadata": {"description": "x", "tags": []}}],
    "permissions": [{"user": "orders", "vhost": "shop", "configure": ".*", "write": ".*",
                     "read": ".*"}],
    "topic_permissions": [],
    "parameters": [],
    "global_parameters": [{"name": "cluster_name", "value": "rabbit@x"}],
    "policies": [{"vhost": "shop", "name": "ttl", "pattern": ".*", "apply-to": "queues",
                  "definition": {"message-ttl": 1000}, "priority": 0}],
    "queues": [
        {"name": "orders.created", "vhost": "shop", "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "quorum"}},
        {"name": "orders.audit", "vhost": "shop", "durable": True, "auto_delete": False,
         "arguments": {"x-max-length": 1000, "x-overflow": "reject-publish"}},
        {"name": "events", "vhost": "shop", "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "stream"}},
        {"name": "plain", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}},
    ],
    "exchanges": [
        {"name": "orders", "vhost": "shop", "type": "topic", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}},
        {"name": "orders.fan", "vhost": "shop", "type": "fanout", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}},
    ],
    "bindings": [
        {"source": "orders", "vhost": "shop", "destination": "orders.created",
         "destination_type": "queue", "routing_key": "order.created", "arguments": {}},
        {"source": "orders", "vhost": "shop", "destination": "orders.fan",
         "destination_type": "exchange", "routing_key": "#", "arguments": {}},
        {"source": "orders.fan", "vhost": "shop", "destination": "orders.audit",
         "destination_type": "queue", "routing_key": "", "arguments": {}},
        {"source": "orders", "vhost": "shop", "destination": "events",
         "destination_type": "queue", "routing_key": "e", "arguments": {}},
    ],
}


def topology(api: Api, vhost: str) -> tuple:
    queues = sorted((q["name"], q["durable"]) for q in api.get(f"/api/queues/{vhost}"))
    exchanges = sorted((x["name"], x["type"]) for x in api.get(f"/api/exchanges/{vhost}")
                       if x["name"] and not x["name"].startswith("amq."))
    bindings = sorted((b["source"], b["destination"], b["destination_type"], b["routing_key"])
                      for b in api.get(f"/api/bindings/{vhost}") if b["source"])
    return queues, exchanges, bindings


def test_rabbitmq_export_imports_and_round_trips(api):
    status, report = api.post("/api/definitions", RABBITMQ_EXPORT)
    assert status == 200, report
    assert report["imported"] == {"users": 0, "permissions": 0, "policies": 1, "vhosts": 1,
                                  "exchanges": 2, "queues": 3, "bindings": 3}
    skipped = "\n".join(report["skipped"])
    assert "user 'orders'" in skipped and "stream" in skipped
    assert "user 'guest'" in skipped

    queues, exchanges, bindings = topology(api, "shop")
    assert queues == [("orders.audit", True), ("orders.created", True)]
    assert exchanges == [("orders", "topic"), ("orders.fan", "fanout")]
    assert ("orders", "orders.fan", "exchange", "#") in bindings
    audit = api.get("/api/queues/shop/orders.audit")
    assert audit["arguments"]["x-max-length"] == 1000

    # Routing works through the imported topology.
    status, body = api.post("/api/exchanges/shop/orders/publish",
                            {"routing_key": "order.created", "payload": "o1", "properties": {}})
    assert body == {"routed": True}
    assert api.get("/api/queues/shop/orders.created")["messages_ready"] == 1
    assert api.get("/api/queues/shop/orders.audit")["messages_ready"] == 1

    export = api.get("/api/definitions")
    for key in ("rabbit_version", "users", "vhosts", "permissions", "policies", "queues",
                "exchanges", "bindings", "parameters", "global_parameters"):
        assert key in export, key
    assert {"name": "orders", "vhost": "shop", "type": "topic", "durable": True,
            "auto_delete": False, "internal": False, "arguments": {}} in export["exchanges"]
    assert not [x for x in export["exchanges"] if x["name"].startswith("amq.") or not x["name"]]
    assert not [b for b in export["bindings"] if b["source"] == ""]
    assert "shop" in [v["name"] for v in export["vhosts"]]

    # Importing the export into a fresh broker gives the same topology; importing it twice is
    # harmless (declarations are idempotent).
    other = start()
    try:
        api2 = Api(other.http)
        for _ in range(2):
            status, report = api2.post("/api/definitions", export)
            assert status == 200, report
        assert topology(api2, "shop") == topology(api, "shop")
        assert topology(api2, "%2F") == topology(api, "%2F")
    finally:
        other.stop()


def test_vhost_scoped_export_and_import(api):
    api.put("/api/vhosts/scoped-a")
    api.put("/api/vhosts/scoped-b")
    api.put("/api/exchanges/scoped-a/x", {"type": "direct"})
    api.put("/api/queues/scoped-a/q", {"durable": True})
    api.request("POST", "/api/bindings/scoped-a/e/x/q/q", {"routing_key": "k"})
    doc = api.get("/api/definitions/scoped-a")
    assert "vhost" not in doc["queues"][0]
    assert [q["name"] for q in doc["queues"]] == ["q"]
    status, report = api.post("/api/definitions/scoped-b", doc)
    assert status == 200 and report["imported"]["bindings"] == 1
    assert topology(api, "scoped-b") == topology(api, "scoped-a")


def test_invalid_definitions_are_a_400(api):
    status, body = api.post("/api/definitions", {"queues": [{"vhost": "/"}]})
    assert status == 400 and "name" in body["reason"]
    status, body = api.post("/api/definitions", {"queues": [
        {"name": "bad-args", "vhost": "/", "durable": True, "arguments": {"x-max-length": "x"}}]})
    assert status == 400 and "x-max-length" in body["reason"]
    status, body = api.post("/api/definitions", {"queues": [
        {"name": "q", "vhost": "no-such-vhost", "durable": True}]})
    assert status == 404


def test_imported_durable_definitions_survive_a_restart():
    from lockgate_harness import LockgateProcess  # noqa: F401
    p = start()
    data_dir = p.data_dir
    try:
        status, _ = Api(p.http).post("/api/definitions", RABBITMQ_EXPORT)
        assert status == 200
    finally:
        # Keep the data directory: stop the process only.
        p.proc.terminate()
        p.proc.wait(timeout=10)
    from lockgate_harness import LockgateProcess as LP
    from mgmt_helpers import BASE_CONFIG, MGMT_LINE, USERS
    p2 = LP(config=BASE_CONFIG + USERS, log_level="info", data_dir=data_dir)
    try:
        m = MGMT_LINE.search(p2.wait_for_log("management API serving", timeout=10))
        api2 = Api(f"http://{m.group(1)}:{m.group(2)}")
        queues, exchanges, _ = topology(api2, "shop")
        assert ("orders.created", True) in queues
        assert ("orders", "topic") in exchanges
    finally:
        p2.stop()
        p._tmp.cleanup()
