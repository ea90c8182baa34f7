"""AMQPS: pika over TLS with a throwaway CA and certificates generated here, client-certificate
verification (a good certificate is accepted, none or one from another CA is refused), a
new certificate picked up on SIGHUP by the next connection, and the management API over HTTPS
(`[management.tls]`)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import re
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pika
import pika.exceptions as pe
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lockgate_harness import eventually, lockgate_binary, unique

pytestmark = pytest.mark.lockgate_only


class Pki:
    """A CA and the certificates it signs, written as PEM files under `root`."""

    def __init__(self, root: Path, name: str):
        self.root = root
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.write(f"{name}-ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def issue(self, name: str, server: bool) -> tuple[Path, Path, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH if server
                 else x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self.write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_file = self.write(f"{name}-key.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert_file, key_file, cert


@pytest.fixture
def pki(tmp_path):
    ca = Pki(tmp_path, "test")
    server_cert, server_key, _ = ca.issue("server", server=True)
    client_cert, client_key, _ = ca.issue("client", server=False)
    rogue = Pki(tmp_path, "rogue")
    rogue_cert, rogue_key, _ = rogue.issue("rogue-client", server=False)
    return dict(ca=ca, server=(server_cert, server_key), client=(client_cert, client_key),
                rogue=(rogue_cert, rogue_key))


def tls_config(pki, verify: bool) -> str:
    cert, key = pki["server"]
    config = f"""
[tls]
listen = "127.0.0.1:0"
certfile = "{cert}"
keyfile = "{key}"
"""
    if verify:
        config += f"""cacertfile = "{pki['ca'].ca_file}"
verify = "verify_peer"
fail_if_no_peer_cert = true
"""
    return config


def amqps_port(broker) -> int:
    line = broker.process.wait_for_log(r"serving AMQPS")
    m = re.search(r"amqps_addr=[0-9.]+:([0-9]+)", line)
    assert m, line
    return int(m.group(1))


def connect(broker, port, pki, client=None) -> pika.BlockingConnection:
    context = ssl.create_default_context(cafile=str(pki["ca"].ca_file))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return broker.connect(port=port, ssl_options=pika.SSLOptions(context, "localhost"))


def round_trip(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    body = b"over tls " + unique().encode()
    ch.basic_publish("", q, body)
    _, _, got = ch.basic_get(q, auto_ack=True)
    assert got == body


def test_amqps_without_client_certificates(lockgate, pki):
    broker = lockgate(tls_config(pki, verify=False))
    port = amqps_port(broker)
    conn = connect(broker, port, pki)
    try:
        round_trip(conn)
    finally:
        conn.close()
    # The plain listener keeps working beside it.
    plain = broker.connect()
    plain.close()


def test_client_certificate_verification(lockgate, pki):
    broker = lockgate(tls_config(pki, verify=True))
    port = amqps_port(broker)
    conn = connect(broker, port, pki, client=pki["client"])
    try:
        round_trip(conn)
    finally:
        conn.close()
    with pytest.raises(pe.AMQPConnectionError):
        connect(broker, port, pki)
    with pytest.raises(pe.AMQPConnectionError):
        connect(broker, port, pki, client=pki["rogue"])
    broker.process.wait_for_log(r"TLS handshake failed")
    # Refused handshakes leave the listener serving.
    connect(broker, port, pki, client=pki["client"]).close()


def served_certificate(port: int, pki) -> bytes:
    context = ssl.create_default_context(cafile=str(pki["ca"].ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def test_sighup_reloads_the_certificate(lockgate, pki):
    broker = lockgate(tls_config(pki, verify=False))
    port = amqps_port(broker)
    cert_file, key_file = pki["server"]
    old = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert served_certificate(port, pki) == old.public_bytes(serialization.Encoding.DER)
    open_before = connect(broker, port, pki)

    new_cert, new_key, new = pki["ca"].issue("server-renewed", server=True)
    cert_file.write_bytes(new_cert.read_bytes())
    key_file.write_bytes(new_key.read_bytes())
    mark = broker.process.log_mark()
    broker.process.signal(signal.SIGHUP)
    broker.process.wait_for_log(r"TLS certificate reloaded", since=mark)

    assert served_certificate(port, pki) == new.public_bytes(serialization.Encoding.DER)
    conn = connect(broker, port, pki)
    try:
        round_trip(conn)
        # The connection made before the reload keeps working.
        round_trip(open_before)
    finally:
        conn.close()
        open_before.close()


def test_failed_reload_keeps_the_previous_certificate(lockgate, pki):
    broker = lockgate(tls_config(pki, verify=False))
    port = amqps_port(broker)
    cert_file, _ = pki["server"]
    before = served_certificate(port, pki)
    cert_file.write_text("not a certificate")
    mark = broker.process.log_mark()
    broker.process.signal(signal.SIGHUP)
    broker.process.wait_for_log(r"TLS certificate reload failed", since=mark)
    assert eventually(lambda: served_certificate(port, pki)) == before


def test_bad_tls_config_fails_at_startup(tmp_path):
    config = tmp_path / "lockgate.toml"
    config.write_text(f'[tls]\nlisten = "127.0.0.1:0"\ncertfile = "{tmp_path}/none.pem"\n'
                      f'keyfile = "{tmp_path}/none-key.pem"\n')
    result = subprocess.run(
        [str(lockgate_binary()), "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
         "--config", str(config)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "tls.certfile" in result.stderr and "none.pem" in result.stderr, result.stderr


def test_sighup_without_tls_keeps_the_broker_running(lockgate):
    broker = lockgate()
    mark = broker.process.log_mark()
    broker.process.signal(signal.SIGHUP)
    broker.process.wait_for_log(r"SIGHUP: no TLS certificate to reload", since=mark)
    assert broker.process.alive()
    broker.connect().close()


def management_tls_config(pki) -> str:
    cert, key = pki["server"]
    return tls_config(pki, verify=False) + f"""
[metrics]
enabled = false
[management]
listen = "127.0.0.1:0"
[management.tls]
certfile = "{cert}"
keyfile = "{key}"
"""


def test_management_over_https(lockgate, pki):
    broker = lockgate(management_tls_config(pki))
    line = broker.process.wait_for_log(r"management API serving")
    m = re.search(r"http=[0-9.]+:([0-9]+)", line)
    assert m and "tls=true" in line, line
    base = f"https://127.0.0.1:{m.group(1)}"
    context = ssl.create_default_context(cafile=str(pki["ca"].ca_file))
    auth = "Basic " + base64.b64encode(b"guest:guest").decode()

    def get(path: str):
        request = urllib.request.Request(base + path, headers={"authorization": auth})
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert response.status == 200
            return json.loads(response.read())

    assert get("/api/overview")["listeners"], "overview without listeners"

    # Plain HTTP on that port gets no HTTP answer: the handshake fails and the socket closes.
    with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5) as raw:
        raw.sendall(b"GET /api/overview HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert not answer.startswith(b"HTTP/"), answer
    # A client that does not trust the test CA refuses the certificate.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/api/overview", context=ssl.create_default_context(),
                               timeout=10)

    # `"ssl"` in /api/connections: true for AMQPS, false for plain AMQP; `host`/`port` and the
    # name's local half are the address of the listener the connection came in on.
    name = "amqps-" + unique()
    tls_port = amqps_port(broker)
    tls_conn = broker.connect(port=tls_port, client_properties={"connection_name": name},
                              ssl_options=pika.SSLOptions(context, "localhost"))
    plain = broker.connect(client_properties={"connection_name": name + "-plain"})
    try:
        def by_name():
            found = {c["client_properties"].get("connection_name"): c
                     for c in get("/api/connections")}
            return found if {name, name + "-plain"} <= found.keys() else None
        found = eventually(by_name)
        assert found[name]["ssl"] is True
        assert found[name + "-plain"]["ssl"] is False
        assert found[name]["port"] == tls_port, found[name]
        assert found[name]["name"].endswith(f"-> 127.0.0.1:{tls_port}"), found[name]
        assert found[name + "-plain"]["port"] == broker.process.port, found[name + "-plain"]
        assert found[name + "-plain"]["name"].endswith(f"-> 127.0.0.1:{broker.process.port}")
        assert found[name]["host"] == found[name + "-plain"]["host"] == "127.0.0.1"
    finally:
        tls_conn.close()
        plain.close()

    # One SIGHUP reloads the management listener's certificate too: one line per listener.
    cert_file, key_file = pki["server"]
    new_cert, new_key, new = pki["ca"].issue("server-renewed", server=True)
    cert_file.write_bytes(new_cert.read_bytes())
    key_file.write_bytes(new_key.read_bytes())
    mark = broker.process.log_mark()
    broker.process.signal(signal.SIGHUP)
    renewed = new.public_bytes(serialization.Encoding.DER)
    eventually(lambda: served_certificate(int(m.group(1)), pki) == renewed)
    assert get("/api/overview")["listeners"]
    broker.process.wait_for_log(r"listener=\"?management\"?.*TLS certificate reloaded|"
                                r"TLS certificate reloaded.*listener=\"?management", since=mark)
    log = broker.process.log(since=mark)
    assert len(re.findall(r"TLS certificate reloaded", log)) == 2, log
    assert "no TLS certificate to reload" not in log, log


def test_sighup_with_only_management_tls(lockgate, pki):
    cert, key = pki["server"]
    broker = lockgate(f"""
[metrics]
enabled = false
[management]
listen = "127.0.0.1:0"
[management.tls]
certfile = "{cert}"
keyfile = "{key}"
""")
    broker.process.wait_for_log(r"management API serving")
    mark = broker.process.log_mark()
    # Two SIGHUPs, the second a barrier: once both reloads are logged, whatever any handler
    # logs for the first signal is in the log too.
    broker.process.signal(signal.SIGHUP)
    broker.process.wait_for_log(r"TLS certificate reloaded", since=mark)
    broker.process.signal(signal.SIGHUP)

    def both_reloads_logged():
        text = broker.process.log(since=mark)
        return text if len(re.findall(r"TLS certificate reloaded", text)) >= 2 else None

    log = eventually(both_reloads_logged, message="a reload line per SIGHUP")
    assert broker.process.alive()
    assert len(re.findall(r"TLS certificate reloaded", log)) == 2, log
    assert "no TLS certificate to reload" not in log, log
