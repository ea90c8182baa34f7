"""The config file applied to the real binary: topology and policies at start and on SIGHUP,
bad reloads, `--check-config`, hashed passwords, and users/permissions/policies from the
management API and a RabbitMQ definitions import surviving a restart."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pika
import pytest

from lockgate_harness import LockgateProcess, eventually, lockgate_binary, queue_exists

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "management"))
from mgmt_helpers import MGMT_LINE, Api  # noqa: E402

pytestmark = pytest.mark.lockgate_only

HEAD = """
[management]
listen = "127.0.0.1:0"
[metrics]
enabled = false
[[vhosts]]
name = "/"
[[vhosts]]
name = "shop"
[[users]]
name = "guest"
password = "guest"
loopback_only = true
vhosts = ["/", "shop"]
tags = ["administrator"]
"""

TOPOLOGY = """
[[exchanges]]
vhost = "shop"
name = "events"
type = "topic"

[[queues]]
vhost = "shop"
name = "orders"
arguments = { "x-max-priority" = 5 }

[[bindings]]
vhost = "shop"
source = "events"
destination = "orders"
routing_key = "order.*"

[[policy]]
vhost = "shop"
name = "short-ttl"
pattern = "^ttl\\\\."
priority = 1
apply-to = "queues"
definition = { message-ttl = 200 }
"""


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line of `text` that starts with `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def rabbit_hash(password: str, salt: bytes = b"\x01\x02\x03\x04") -> str:
    """RabbitMQ's rabbit_password_hashing_sha256, computed independently of lockgate."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class Broker:
    """A lockgate process started with a config file the test can rewrite."""

    def __init__(self, config: str, data_dir: Path | None = None):
        self.proc = LockgateProcess(config=config, log_level="info", data_dir=data_dir)
        self.config_path = Path(self.proc.args[self.proc.args.index("--config") + 1])
        m = MGMT_LINE.search(self.proc.wait_for_log(r"management API serving", timeout=10))
        assert m
        self.api = Api(f"http://{m.group(1)}:{m.group(2)}")

    def connect(self, user: str = "guest", password: str = "guest", vhost: str = "/"):
        return pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=self.proc.port, virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password), connection_attempts=1))

    def reload(self, text: str) -> int:
        """Writes the new file, sends SIGHUP, returns the log mark before it."""
        mark = self.proc.log_mark()
        self.config_path.write_text(text)
        self.proc.signal(signal.SIGHUP)
        return mark

    def stop(self):
        return self.proc.stop()


@pytest.fixture
def started():
    brokers: list[Broker] = []

    def start(config: str, data_dir: Path | None = None) -> Broker:
        b = Broker(config, data_dir)
        brokers.append(b)
        return b
    yield start
    for b in brokers:
        b.stop()


def run_lockgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(lockgate_binary()), *args], input=stdin, capture_output=True,
                          text=True, timeout=30, check=False)


def test_topology_and_policy_from_the_file_exist_at_start(started):
    b = started(HEAD + TOPOLOGY)
    conn = b.connect(vhost="shop")
    ch = conn.channel()
    ch.basic_publish("events", "order.created", b"o1")
    # Routed through the declared exchange and binding into the declared queue.
    got = eventually(lambda: ch.basic_get("orders", auto_ack=True)[2],
                     message="message routed events -> orders")
    assert got == b"o1"
    # The queue has the file's arguments: redeclaring with others is refused.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("orders", durable=True, arguments={"x-max-priority": 9})
    assert e.value.reply_code == 406
    conn.close()
    policy = b.api.get("/api/policies/shop/short-ttl")
    assert policy["pattern"] == "^ttl\\." and policy["definition"] == {"message-ttl": 200}
    assert policy["apply-to"] == "queues" and policy["priority"] == 1


def test_policy_applies_and_a_client_argument_wins(started):
    b = started(HEAD + TOPOLOGY)
    conn = b.connect(vhost="shop")
    ch = conn.channel()
    ch.queue_declare("ttl.policy")                                   # gets the policy's 200 ms
    ch.queue_declare("ttl.own", arguments={"x-message-ttl": 60000})  # its own TTL wins
    ch.queue_declare("other")                                        # pattern does not match
    for name in ("ttl.policy", "ttl.own", "other"):
        ch.basic_publish("", name, b"m")
    eventually(lambda: ch.queue_declare("ttl.policy", passive=True).method.message_count == 0,
               message="message expired by the policy's message-ttl")
    assert ch.queue_declare("ttl.own", passive=True).method.message_count == 1
    assert ch.queue_declare("other", passive=True).method.message_count == 1
    conn.close()


def test_sighup_applies_a_changed_file(started):
    b = started(HEAD + TOPOLOGY)
    conn = b.connect(vhost="shop")
    conn.channel().queue_declare("client-made")
    conn.close()
    hashed = rabbit_hash("n3w-secret")
    changed = HEAD + TOPOLOGY.replace("message-ttl = 200", "message-ttl = 150") + f"""
[[queues]]
vhost = "shop"
name = "added-by-reload"

[[users]]
name = "newcomer"
password_hash = "{hashed}"
vhosts = ["shop"]
"""
    mark = b.reload(changed)
    b.proc.wait_for_log(r"SIGHUP: config file reloaded", since=mark, timeout=10)
    assert re.search(r"queue 'added-by-reload'", b.proc.log(mark))
    conn = b.connect("newcomer", "n3w-secret", vhost="shop")
    assert queue_exists(conn, "added-by-reload")
    assert queue_exists(conn, "client-made"), "a queue a client declared is never removed by a reload"
    conn.close()
    assert b.api.get("/api/policies/shop/short-ttl")["definition"] == {"message-ttl": 150}
    # Applying the same file again changes nothing.
    mark = b.reload(changed)
    line = b.proc.wait_for_log(r"SIGHUP: config file reloaded", since=mark, timeout=10)
    assert "changes=0" in line, line


def test_a_policy_ttl_changed_by_a_reload_expires_messages_already_queued(started):
    # The file's policy starts with a 10-minute TTL for ^ttl\. queues.
    b = started(HEAD + TOPOLOGY.replace("message-ttl = 200", "message-ttl = 600000"))
    conn = b.connect(vhost="shop")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("ttl.existing")
    ch.queue_declare("kept.existing")  # no policy matches it
    ch.basic_publish("", "ttl.existing", b"queued before the reload")
    ch.basic_publish("", "kept.existing", b"queued before the reload")
    assert ch.queue_declare("ttl.existing", passive=True).method.message_count == 1
    # SIGHUP lowers the policy's TTL to 200 ms: the message already queued expires under it.
    mark = b.reload(HEAD + TOPOLOGY)
    b.proc.wait_for_log(r"SIGHUP: config file reloaded", since=mark, timeout=10)
    eventually(lambda: ch.queue_declare("ttl.existing", passive=True).method.message_count == 0,
               message="the message queued before the reload expired by the new TTL")
    assert ch.basic_get("ttl.existing", auto_ack=True)[2] is None
    assert ch.queue_declare("kept.existing", passive=True).method.message_count == 1
    conn.close()
    queue = b.api.get("/api/queues/shop/ttl.existing")
    assert queue["policy"] == "short-ttl"
    assert queue["effective_policy_definition"] == {"message-ttl": 200}


def test_a_bad_reload_keeps_the_old_settings_and_the_broker_serving(started):
    b = started(HEAD + TOPOLOGY)
    broken = HEAD + TOPOLOGY + """
[[queues]]
vhost = "shop"
name = "never-created"

[[policy]]
vhost = "shop"
name = "typo"
pattern = ".*"
definition = { max-lenght = 10 }
"""
    mark = b.reload(broken)
    line = b.proc.wait_for_log(r"config file not applied", since=mark, timeout=10)
    typo_line = line_of(broken, "definition = { max-lenght")
    assert f"config file {b.config_path}, line {typo_line}," in line, line
    assert "policies[1].definition" in line and "max-lenght" in line, line
    assert b.proc.alive()
    conn = b.connect(vhost="shop")
    assert not queue_exists(conn, "never-created")
    assert queue_exists(conn, "orders")
    ch = conn.channel()
    ch.queue_declare("still-serving")
    ch.basic_publish("", "still-serving", b"x")
    assert ch.basic_get("still-serving", auto_ack=True)[2] == b"x"
    conn.close()
    assert b.api.request("GET", "/api/policies/shop/typo")[0] == 404
    # An unparseable file is refused the same way.
    unparseable = HEAD + "[limits]\nframe_max = \"big\"\n"
    mark = b.reload(unparseable)
    line = b.proc.wait_for_log(r"config file not applied", since=mark, timeout=10)
    assert f"line {line_of(unparseable, 'frame_max')}, key limits.frame_max" in line, line
    assert queue_exists(b.connect(vhost="shop"), "orders")


def test_check_config_prints_the_changes_and_uses_exit_codes(tmp_path):
    current = tmp_path / "current.toml"
    current.write_text(HEAD + TOPOLOGY)
    new = tmp_path / "new.toml"
    new.write_text(HEAD + TOPOLOGY.replace("priority = 1", "priority = 2") + """
[[queues]]
vhost = "shop"
name = "audit"
""")
    r = run_lockgate("--check-config", str(new), "--config", str(current))
    assert r.returncode == 0, r.stderr
    assert "is valid" in r.stdout and "compared with" in r.stdout
    assert "+ queue 'audit' in vhost 'shop'" in r.stdout
    assert "~ policy 'short-ttl' in vhost 'shop'" in r.stdout
    assert "orders" not in r.stdout, "unchanged entries are not listed"

    r = run_lockgate("--check-config", str(current))
    assert r.returncode == 0 and "compared with the defaults" in r.stdout
    assert "+ exchange 'events' in vhost 'shop'" in r.stdout
    # HEAD's guest has a plain-text `password`: warned about, as at start; still valid.
    assert (f"lockgate: warning: config file {current}: users[0].password is plain text in the "
            "config file") in r.stderr, r.stderr

    r = run_lockgate("--check-config", str(current), "--config", str(current))
    assert r.returncode == 0 and "no changes" in r.stdout

    conflict = tmp_path / "conflict.toml"
    text = HEAD + TOPOLOGY.replace('"x-max-priority" = 5', '"x-max-priority" = 7')
    conflict.write_text(text)
    r = run_lockgate("--check-config", str(conflict), "--config", str(current))
    assert r.returncode == 1
    where = f"config file {conflict}, line {line_of(text, '[[queues]]')}, key queues[0]"
    assert where in r.stderr, r.stderr
    assert "exists with other settings" in r.stderr

    bad_arg = tmp_path / "bad_arg.toml"
    text = HEAD + TOPOLOGY.replace('"x-max-priority" = 5',
                                   '"x-max-priority" = 5, "x-overflow" = "blok"')
    bad_arg.write_text(text)
    r = run_lockgate("--check-config", str(bad_arg))
    assert r.returncode == 1
    arg_line = line_of(text, 'arguments = { "x-max-priority"')
    where = f"config file {bad_arg}, line {arg_line}, key queues[0].arguments.x-overflow: "
    assert where in r.stderr and "invalid arg 'x-overflow'" in r.stderr, r.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("[log]\nlevel = \"info\"\nformatt = \"json\"\n")
    r = run_lockgate("--check-config", str(bad))
    assert r.returncode == 1
    assert f"config file {bad}, line 3, key log.formatt" in r.stderr, r.stderr
    assert r.stdout == ""

    r = run_lockgate("--check-config")
    assert r.returncode == 2, "a usage error is exit status 2"


def test_startup_error_names_the_file_line_and_key(tmp_path):
    path = tmp_path / "broken.toml"
    text = HEAD + '[[users]]\nname = "app"\npassword_hash = "not base64!"\n'
    path.write_text(text)
    r = subprocess.run([str(lockgate_binary()), "--config", str(path), "--listen", "127.0.0.1:0",
                        "--data-dir", str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1
    where = f"config file {path}, line {line_of(text, 'password_hash')}, key users[1].password_hash"
    assert where in r.stderr, r.stderr
    # A bad queue argument is located at its own line and key, not at the [[queues]] entry.
    text = HEAD + ('[[queues]]\nvhost = "shop"\nname = "orders"\n'
                   'arguments = { "x-max-length" = 10, "x-overflow" = "blok" }\n')
    path.write_text(text)
    r = subprocess.run([str(lockgate_binary()), "--config", str(path), "--listen", "127.0.0.1:0",
                        "--data-dir", str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1
    where = (f"config file {path}, line {line_of(text, 'arguments =')}, "
             "key queues[0].arguments.x-overflow: ")
    assert where in r.stderr and "invalid arg 'x-overflow'" in r.stderr, r.stderr


def test_hashed_passwords_log_in_and_no_plain_password_reaches_the_data_dir(started, tmp_path):
    produced = run_lockgate("hash-password", stdin="from-stdin\n")
    assert produced.returncode == 0
    config = HEAD + f"""
[[users]]
name = "hashed"
password_hash = "{rabbit_hash('rabbit-made')}"
hashing_algorithm = "rabbit_password_hashing_sha256"
[[users]]
name = "cli"
password_hash = "{produced.stdout.strip()}"
"""
    data = tmp_path / "data"
    b = started(config, data)
    b.connect("hashed", "rabbit-made").close()
    b.connect("cli", "from-stdin").close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        b.connect("hashed", "wrong")
    # A user created through the API is stored with its hash only.
    status, _, _ = b.api.request("PUT", "/api/users/apiuser",
                                 {"password": "Plain-Text-Marker-42", "tags": ""})
    assert status == 201
    status, _, _ = b.api.request("PUT", "/api/permissions/%2F/apiuser",
                                 {"configure": ".*", "write": ".*", "read": ".*"})
    assert status == 201
    b.connect("apiuser", "Plain-Text-Marker-42").close()
    user = next(u for u in b.api.get("/api/definitions")["users"] if u["name"] == "apiuser")
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    raw = base64.b64decode(user["password_hash"])
    assert hashlib.sha256(raw[:4] + b"Plain-Text-Marker-42").digest() == raw[4:]
    # A user created through the API with the administrator tag may use the API.
    status, _, _ = b.api.request("PUT", "/api/users/ops",
                                 {"password": "ops-pass", "tags": "administrator"})
    assert status == 201
    assert Api(b.api.base, "ops", "ops-pass").get("/api/whoami")["tags"] == ["administrator"]
    assert Api(b.api.base, "ops", "wrong").request("GET", "/api/whoami")[0] == 401
    # The config file wins for what it names.
    status, body, _ = b.api.request("PUT", "/api/users/hashed", {"password": "x", "tags": ""})
    assert status == 409 and "config file" in body["reason"]
    b.stop()
    for f in data.rglob("*"):
        if f.is_file():
            assert b"Plain-Text-Marker-42" not in f.read_bytes(), f
            assert b"rabbit-made" not in f.read_bytes(), f


def test_a_rabbitmq_definitions_file_imports_with_one_command_and_survives_a_restart(
        started, tmp_path):
    ctl = Path(os.environ.get("LOCKGATECTL_BIN", lockgate_binary().parent / "lockgatectl"))
    if not ctl.is_file():
        pytest.skip(f"lockgatectl not built at {ctl} (cargo build -p lockgate-ctl)")
    export = {
        "rabbit_version": "3.12.0", "rabbitmq_version": "3.12.0",
        "users": [{"name": "orders-svc", "password_hash": rabbit_hash("svc-pass", b"\xaa\xbb\xcc\xdd"),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [],
                   "limits": {}}],
        "vhosts": [{"name": "shop"}],
        "permissions": [{"user": "orders-svc", "vhost": "shop", "configure": "^svc-",
                         "write": ".*", "read": ".*"}],
        "topic_permissions": [], "parameters": [], "global_parameters": [],
        "policies": [{"vhost": "shop", "name": "svc-ttl", "pattern": "^svc-", "apply-to": "queues",
                      "definition": {"message-ttl": 200, "ha-mode": "all"}, "priority": 0}],
        "queues": [], "exchanges": [], "bindings": [],
    }
    src = tmp_path / "rabbit.json"
    src.write_text(json.dumps(export))
    data = tmp_path / "data"
    b = started(HEAD, data)
    r = subprocess.run([str(ctl), "import", str(src)], capture_output=True, text=True,
                       timeout=30, check=False,
                       env=dict(os.environ, LOCKGATE_URL=b.api.base, LOCKGATE_USER="guest",
                                LOCKGATE_PASSWORD="guest"))
    assert r.returncode == 0, r.stderr
    assert b.stop() == 0

    b = started(HEAD, data)
    conn = b.connect("orders-svc", "svc-pass", vhost="shop")
    ch = conn.channel()
    ch.queue_declare("svc-work")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("not-mine")
    assert e.value.reply_code == 403
    ch.basic_publish("", "svc-work", b"expires")
    eventually(lambda: ch.queue_declare("svc-work", passive=True).method.message_count == 0,
               message="the imported policy's message-ttl applies after the restart")
    conn.close()
    assert b.api.get("/api/policies/shop/svc-ttl")["definition"]["message-ttl"] == 200
    assert b.api.get("/api/permissions/shop/orders-svc")["configure"] == "^svc-"
    # DELETE through the API is stored too.
    assert b.api.request("DELETE", "/api/policies/shop/svc-ttl")[0] == 204
    assert b.api.request("DELETE", "/api/users/orders-svc")[0] == 204
    assert b.stop() == 0
    b = started(HEAD, data)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        b.connect("orders-svc", "svc-pass", vhost="shop")
    assert b.api.request("GET", "/api/policies/shop/svc-ttl")[0] == 404


def test_the_management_api_shows_each_queues_policy(started):
    b = started(HEAD + TOPOLOGY)
    conn = b.connect(vhost="shop")
    ch = conn.channel()
    ch.queue_declare("ttl.shown")
    ch.queue_declare("ttl.own", arguments={"x-message-ttl": 60000})
    ch.queue_declare("unmatched")
    conn.close()
    shown = b.api.get("/api/queues/shop/ttl.shown")
    assert shown["policy"] == "short-ttl"
    assert shown["effective_policy_definition"] == {"message-ttl": 200}
    # The client's own argument stays in "arguments" and wins over the policy's.
    own = b.api.get("/api/queues/shop/ttl.own")
    assert own["policy"] == "short-ttl" and own["arguments"]["x-message-ttl"] == 60000
    assert b.api.get("/api/queues/shop/unmatched")["policy"] is None
    assert [p["name"] for p in b.api.get("/api/policies/shop")] == ["short-ttl"]
    assert any(p["name"] == "short-ttl" for p in b.api.get("/api/policies"))
    # A policy set through the API applies to the queue that exists.
    status, _, _ = b.api.request("PUT", "/api/policies/shop/catch-all", {
        "pattern": "^unmatched$", "definition": {"max-length": 3}, "priority": 5,
        "apply-to": "queues"})
    assert status == 201
    unmatched = b.api.get("/api/queues/shop/unmatched")
    assert unmatched["policy"] == "catch-all"
    assert unmatched["effective_policy_definition"] == {"max-length": 3}
    users = {u["name"] for u in b.api.get("/api/users")}
    assert "guest" in users


def test_sighup_applies_changed_limits(started):
    user = '\n[[users]]\nname = "capped"\npassword = "c"\nmax_connections = {n}\n'
    b = started(HEAD + user.format(n=3))
    first = b.connect("capped", "c")
    second = b.connect("capped", "c")
    mark = b.reload(HEAD + user.format(n=2))
    b.proc.wait_for_log(r"SIGHUP: config file reloaded", since=mark, timeout=10)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        b.connect("capped", "c")
    assert "(530)" in str(e.value) and "user connection limit (2)" in str(e.value)
    first.close()
    b.connect("capped", "c").close()
    second.close()


def test_a_policy_added_by_a_reload_applies_to_existing_queues(started):
    b = started(HEAD + TOPOLOGY)
    conn = b.connect(vhost="shop")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("buf.a")
    ch.queue_declare("buf.own", arguments={"x-max-length": 4})
    for i in range(6):
        ch.basic_publish("", "buf.a", f"m{i}".encode())
        ch.basic_publish("", "buf.own", f"m{i}".encode())
    assert ch.queue_declare("buf.a", passive=True).method.message_count == 6
    mark = b.reload(HEAD + TOPOLOGY + """
[[policy]]
vhost = "shop"
name = "cap-buffers"
pattern = "^buf\\\\."
definition = { max-length = 2 }
""")
    b.proc.wait_for_log(r"SIGHUP: config file reloaded", since=mark, timeout=10)
    # The policy is applied (and buf.a trimmed) before the reload is logged: no polling.
    # drop-head: the oldest go; the queue's own x-max-length (4) wins over the policy's 2.
    count = ch.queue_declare("buf.a", passive=True).method.message_count
    assert count == 2, f"buf.a holds {count} after the reload; log since:\n{b.proc.log(mark)}"
    assert ch.queue_declare("buf.own", passive=True).method.message_count == 4
    assert [ch.basic_get("buf.a", auto_ack=True)[2] for _ in range(2)] == [b"m4", b"m5"]
    conn.close()
    assert b.api.get("/api/queues/shop/buf.a")["policy"] == "cap-buffers"
