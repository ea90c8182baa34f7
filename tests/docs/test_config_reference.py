"""The config reference in docs/configuration.md ("Every key") checked against the binary.

The table's keys are read from the document, so a key documented later is checked without
editing this file: the "every key at once" example under the table must hold exactly the
documented keys and be accepted (by `--check-config` and by a starting broker), each
documented default must be the one the broker uses, an unknown key in any documented table is
refused, the shipped config/lockgate.toml loads, equals the defaults and uses no undocumented
key, and every TOML example in the README and docs/configuration.md is a valid config file.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lockgate_harness import REPO_ROOT, LockgateProcess, lockgate_binary

pytestmark = pytest.mark.lockgate_only

CONFIG_DOC = REPO_ROOT / "docs" / "configuration.md"
DOCS_WITH_TOML = [REPO_ROOT / "README.md", CONFIG_DOC]
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)


def reference_section() -> str:
    text = CONFIG_DOC.read_text()
    start = text.index("\n## Every key\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def documented_keys() -> dict[str, object]:
    """Every key of the reference table, with its default where the table gives one as a TOML
    value (`None` for "unset", "none", "required" and the like)."""
    keys: dict[str, object] = {}
    for line in reference_section().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        default = None
        literal = re.fullmatch(r"`([^`]+)`", cells[2])
        if literal:
            default = tomllib.loads(f"v = {literal.group(1)}")["v"]
        for key in re.findall(r"`([^`]+)`", cells[0]):
            keys[key] = default
    return keys


KEYS = documented_keys()
TABLES = sorted({key.rpartition(".")[0] for key in KEYS})


def full_example() -> dict:
    """The "every key at once" example: the TOML block in the reference section."""
    blocks = TOML_BLOCK.findall(reference_section())
    assert len(blocks) == 1, "the Every key section should hold one TOML example"
    return tomllib.loads(blocks[0])


def flatten(table: dict, prefix: str = "") -> set[str]:
    """Key paths of a parsed config, `users[].name` for keys of array entries; a documented
    key whose value is a table (`queues[].arguments`) is one key."""
    out = set()
    for key, value in table.items():
        path = prefix + key
        if isinstance(value, dict) and path not in KEYS:
            out |= flatten(value, path + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for entry in value:
                out |= flatten(entry, path + "[].")
        else:
            out.add(path)
    return out


def entries(config: dict, table: str) -> list[dict]:
    """The tables a key path's parent names: one for `limits`, every entry for `users[]`."""
    found = [config]
    for part in [p for p in table.split(".") if p]:
        if part.endswith("[]"):
            found = [entry for t in found for entry in t.get(part[:-2], [])]
        else:
            found = [t.setdefault(part, {}) for t in found]
    return found


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are valid in TOML basic strings.
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def to_toml(table: dict, prefix: str = "") -> str:
    """A config dict as TOML: plain keys, then sub-tables, then arrays of tables. Documented
    table-valued keys (arguments, definition) are written inline."""
    def is_section(key, value):
        return isinstance(value, dict) and prefix + key not in KEYS

    def is_array_of_tables(value):
        return isinstance(value, list) and value and all(isinstance(v, dict) for v in value)

    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()
             if not is_section(k, v) and not is_array_of_tables(v)]
    for key, value in table.items():
        if is_section(key, value):
            lines += ["", f"[{prefix}{key}]", to_toml(value, f"{prefix}{key}.")]
    for key, value in table.items():
        if is_array_of_tables(value):
            for entry in value:
                lines += ["", f"[[{prefix}{key}]]", to_toml(entry, f"{prefix}{key}[].")]
    return "\n".join(lines)


def check_config(path: Path, current: Path | None = None) -> subprocess.CompletedProcess:
    args = [str(lockgate_binary()), "--check-config", str(path)]
    if current is not None:
        args += ["--config", str(current)]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def test_the_reference_table_is_read():
    # Guards the parsing: a reference that stopped parsing would make the other tests vacuous.
    assert {"listen", "limits.frame_max", "users[].password_hash", "policies[].definition",
            "management.tls.verify"} <= set(KEYS)
    assert KEYS["limits.frame_max"] == 131072
    assert KEYS["users[].password_hash"] is None


def test_the_full_example_holds_exactly_the_documented_keys():
    example = flatten(full_example())
    assert sorted(set(KEYS) - example) == [], "documented keys missing from the example"
    assert sorted(example - set(KEYS)) == [], "keys in the example that the table lacks"


def test_the_full_example_is_a_valid_config(tmp_path):
    path = tmp_path / "every-key.toml"
    path.write_text(to_toml(full_example()))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for localhost and its key: the listeners' certificate, and their CA for
    client certificates (only loading them is tested here; tests/security checks TLS itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_a_broker_starts_with_every_key(tmp_path):
    config = full_example()
    cert, key = self_signed(tmp_path)
    for table in (config, config["tls"], config["management"], config["metrics"]):
        table["listen"] = "127.0.0.1:0"
    for tls in (config["tls"], config["management"]["tls"]):
        tls.update(certfile=str(cert), keyfile=str(key), cacertfile=str(cert))
    admin = next(u for u in config["users"] if "administrator" in u.get("tags", []))
    vhost = config["queues"][0]["vhost"]
    assert vhost in admin["vhosts"]
    proc = LockgateProcess(config=to_toml(config), log_level="info")
    try:
        # The example's hashes are of "s3cret", as the document says.
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=proc.port, virtual_host=vhost,
            credentials=pika.PlainCredentials(admin["name"], "s3cret"), connection_attempts=1))
        try:
            conn.channel().queue_declare(config["queues"][0]["name"], passive=True)
        finally:
            conn.close()
        # The example asks for JSON logs; each listener logs its start.
        events = {e["fields"]["message"]: e["fields"]
                  for e in map(json.loads, proc.log().splitlines())}
        assert "serving AMQPS" in events and "serving Prometheus metrics" in events
        assert events["management API serving"]["tls"] is True
    finally:
        assert proc.stop() == 0, proc.log()


def test_documented_defaults_are_the_brokers(tmp_path):
    """The example with every defaulted key set to its documented default, compared with the
    example without those keys: a wrong default shows up as a change or a restart-only key."""
    with_defaults, without = full_example(), full_example()
    # check-config compares hashing_algorithm as written, so spelling out its default counts
    # as a password change; it stays as the example has it on both sides.
    defaulted = {k: v for k, v in KEYS.items()
                 if v is not None and k != "users[].hashing_algorithm"}
    for path, value in defaulted.items():
        table, _, key = path.rpartition(".")
        for entry in entries(with_defaults, table):
            entry[key] = copy.deepcopy(value)
        for entry in entries(without, table):
            entry.pop(key, None)
    assert len(defaulted) > 30
    new, current = tmp_path / "defaults.toml", tmp_path / "omitted.toml"
    new.write_text(to_toml(with_defaults))
    current.write_text(to_toml(without))
    result = check_config(new, current)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["no changes"], result.stdout


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t or "top-level")
def test_an_unknown_key_is_refused(tmp_path, table):
    config = full_example()
    for entry in entries(config, table):
        entry["bogus_key"] = 1
    path = tmp_path / "unknown.toml"
    path.write_text(to_toml(config))
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    where = (table.replace("[]", "[0]") + ".bogus_key").lstrip(".")
    assert f"key {where}: unknown field `bogus_key`" in result.stderr


def shipped_keys() -> set[str]:
    """Keys of config/lockgate.toml, including the commented-out examples (`# certfile = ...`,
    `# [[permissions]]`)."""
    assignment = re.compile(r"#?\s*([A-Za-z_-]+)\s*=")
    header = re.compile(r"#?\s*(\[\[?)([a-z_.]+)\]\]?\s*$")
    keys, table = set(), ""
    for line in (REPO_ROOT / "config" / "lockgate.toml").read_text().splitlines():
        if m := header.fullmatch(line):
            table = m.group(2) + ("[]" if m.group(1) == "[[" else "")
        elif m := assignment.match(line):
            keys.add(f"{table}.{m.group(1)}".lstrip("."))
    return keys


def test_the_shipped_config_loads_and_is_the_defaults():
    result = check_config(REPO_ROOT / "config" / "lockgate.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["no changes"], result.stdout


def test_the_shipped_config_uses_only_documented_keys():
    keys = shipped_keys()
    assert {"listen", "tls.cacertfile", "permissions[].read", "policies[].definition"} <= keys
    assert sorted(keys - set(KEYS)) == []


@pytest.mark.parametrize("doc,index", [
    (doc, i) for doc in DOCS_WITH_TOML for i in range(len(TOML_BLOCK.findall(doc.read_text())))
], ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_every_toml_example_in_the_docs_is_accepted(tmp_path, doc, index):
    path = tmp_path / "example.toml"
    path.write_text(TOML_BLOCK.findall(doc.read_text())[index])
    result = check_config(path)
    assert result.returncode == 0, f"{doc.name} TOML example #{index}:\n{result.stderr}"
