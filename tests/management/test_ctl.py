"""lockgatectl against a running broker: every command, its output and its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lockgate_harness import lockgate_binary, unique
from test_definitions import RABBITMQ_EXPORT


def ctl_binary() -> Path:
    env = os.environ.get("LOCKGATECTL_BIN")
    path = Path(env) if env else lockgate_binary().parent / "lockgatectl"
    if not path.is_file():
        pytest.skip(f"lockgatectl not built at {path} (cargo build -p lockgate-ctl)")
    return path


@pytest.fixture(scope="module")
def ctl(proc):
    binary = ctl_binary()

    def run(*args: str, user: str = "guest", password: str = "guest", url: str | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, LOCKGATE_URL=url or proc.http, LOCKGATE_USER=user,
                   LOCKGATE_PASSWORD=password)
        return subprocess.run([str(binary), *args], env=env, input=stdin, capture_output=True,
                              text=True, timeout=30, check=False)
    return run


def test_status(ctl):
    r = ctl("status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("lockgate ")
    assert "alarms: none" in r.stdout and "connections" in r.stdout
    r = ctl("status", "--format", "json")
    doc = json.loads(r.stdout)
    assert doc["overview"]["product_name"] == "lockgate" and doc["alarms"]["status"] == "ok"


def test_declare_list_purge_delete_queue(ctl, api):
    name = unique("cq")
    r = ctl("declare", "queue", name, "--durable", "false", "--arguments", '{"x-max-length": 5}')
    assert (r.returncode, r.stdout.strip()) == (0, f"declared: queue '{name}'"), r.stderr
    assert ctl("declare", "queue", name, "--durable", "false",
               "--arguments", '{"x-max-length": 5}').stdout.startswith("exists:")
    r = ctl("declare", "queue", name, "--durable", "true")
    assert r.returncode == 1 and "inequivalent arg 'durable'" in r.stderr
    assert r.stderr.startswith("lockgatectl: error:")

    api.post("/api/exchanges/%2F/amq.default/publish",
             {"routing_key": name, "payload": "x", "properties": {}})
    r = ctl("list", "queues")
    assert r.returncode == 0
    header, *rows = r.stdout.splitlines()
    assert header.split()[:5] == ["vhost", "name", "ready", "unacked", "consumers"]
    row = next(x for x in rows if x.split()[1] == name).split()
    assert row[2:5] == ["1", "0", "0"]
    listed = json.loads(ctl("list", "queues", "--format", "json").stdout)
    assert [x["messages_ready"] for x in listed if x["name"] == name] == [1]

    assert ctl("purge", name).returncode == 0
    assert api.get(f"/api/queues/%2F/{name}")["messages_ready"] == 0
    assert ctl("delete", "queue", name).returncode == 0
    r = ctl("delete", "queue", name)
    assert r.returncode == 5 and "404" in r.stderr
    assert ctl("purge", name).returncode == 5


def test_exchanges_and_bindings(ctl, api):
    x, name = unique("cx"), unique("cq")
    assert ctl("declare", "exchange", x, "--type", "topic", "--durable", "false").returncode == 0
    assert ctl("declare", "queue", name, "--durable", "false").returncode == 0
    r = ctl("declare", "binding", "--source", x, "--destination", name, "--routing-key", "a.#")
    assert r.returncode == 0, r.stderr
    rows = ctl("list", "bindings").stdout.splitlines()
    assert any(row.split()[:5] == ["/", x, name, "queue", "a.#"] for row in rows), rows
    assert any(row.split()[1:3] == [x, "topic"] for row in ctl("list", "exchanges").stdout.splitlines())
    r = ctl("delete", "binding", "--source", x, "--destination", name, "--routing-key", "a.#")
    assert r.returncode == 0, r.stderr
    assert api.get(f"/api/bindings/%2F/e/{x}/q/{name}") == []
    r = ctl("delete", "binding", "--source", x, "--destination", name, "--routing-key", "a.#")
    assert r.returncode == 5
    assert ctl("delete", "exchange", x).returncode == 0
    assert ctl("delete", "queue", name, "--if-empty").returncode == 0


def test_connections_consumers_and_close(ctl, api, broker):
    name = unique("cq")
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(name, auto_delete=True)
    ch.basic_qos(prefetch_count=3)
    ch.basic_consume(name, lambda *a: None, consumer_tag="ctl-tag")
    conn.process_data_events(time_limit=0.2)
    try:
        rows = ctl("list", "consumers").stdout.splitlines()
        assert any(r.split()[:2] == [name, "ctl-tag"] for r in rows), rows
        conns = json.loads(ctl("list", "connections", "--format", "json").stdout)
        assert conns and all(c["user"] == "guest" for c in conns)
        assert ctl("list", "channels").returncode == 0
        target = [c for c in conns if c["channels"] == 1][-1]["name"]
        r = ctl("close", "connection", target, "--reason", "bye from ctl")
        assert r.returncode == 0, r.stderr
        import pika
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(50):
                conn.process_data_events(time_limit=0.1)
        assert "bye from ctl" in closed.value.reply_text
    finally:
        if conn.is_open:
            conn.close()
    assert ctl("close", "connection", "nope").returncode == 5


def test_export_and_import_migrate_a_rabbitmq_file(ctl, api, tmp_path):
    src = tmp_path / "rabbit.json"
    src.write_text(json.dumps(RABBITMQ_EXPORT))
    r = ctl("import", str(src))
    assert r.returncode == 0, r.stderr
    assert "imported:" in r.stdout and "skipped: user 'orders'" in r.stdout
    assert api.get("/api/queues/shop/orders.created")["durable"] is True

    out = tmp_path / "export.json"
    assert ctl("export", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    assert any(q["name"] == "orders.created" for q in doc["queues"])
    assert json.loads(ctl("export").stdout)["queues"] == doc["queues"]
    r = ctl("import", "-", "--format", "json", stdin=out.read_text())
    assert r.returncode == 0 and json.loads(r.stdout)["imported"]["queues"] >= 1
    assert ctl("import", str(tmp_path / "missing.json")).returncode == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = ctl("import", str(bad))
    assert r.returncode == 1 and "not valid JSON" in r.stderr


def test_vhost_flag_and_global_lists(ctl, api):
    api.put("/api/vhosts/ctl-vh")
    assert ctl("declare", "queue", "inside", "--vhost", "ctl-vh").returncode == 0
    rows = ctl("list", "queues", "--vhost", "ctl-vh").stdout.splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["ctl-vh", "inside"]]
    assert "inside" in ctl("list", "queues", "--all-vhosts").stdout
    assert "ctl-vh" in ctl("list", "vhosts").stdout
    assert "administrator" in ctl("list", "users").stdout


def test_exit_codes_for_auth_unreachable_and_usage(ctl):
    r = ctl("list", "queues", password="wrong")
    assert r.returncode == 4 and "401" in r.stderr
    r = ctl("declare", "queue", unique("w"), user="watcher", password="w")
    assert r.returncode == 4 and "403" in r.stderr
    r = ctl("status", url="http://127.0.0.1:9")
    assert r.returncode == 3 and "cannot reach" in r.stderr
    assert ctl("frobnicate").returncode == 2
    assert ctl("declare", "queue", "q", "--arguments", "{").returncode == 1
