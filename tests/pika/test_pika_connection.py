"""Connection-level behaviour with pika: login, vhosts, negotiation, limits, shutdown."""

import contextlib
import signal
import subprocess
import time

import pika
import pika.exceptions as pe
import pytest

from amqp_raw import RawConnection
from lockgate_harness import eventually, lockgate_binary


def test_connect_with_guest_and_advertise_capabilities(conn):
    assert conn.is_open
    caps = conn._impl.server_properties["capabilities"]
    for cap in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                "consumer_cancel_notify", "connection.blocked", "authentication_failure_close"):
        assert caps.get(cap) is True, cap
    ch = conn.channel()
    assert ch.is_open


def test_bad_password_is_refused_with_403(broker):
    with pytest.raises(pe.ProbableAuthenticationError) as info:
        broker.connect(credentials=pika.PlainCredentials(broker.user, "wrong-password"))
    assert "403" in str(info.value)
    assert "ACCESS_REFUSED" in str(info.value)


def test_unknown_user_is_refused_with_403(broker):
    with pytest.raises(pe.ProbableAuthenticationError) as info:
        broker.connect(credentials=pika.PlainCredentials("nobody", "guest"))
    assert "403" in str(info.value)


def test_unknown_vhost_is_refused_with_530(broker):
    with pytest.raises(pe.ProbableAccessDeniedError) as info:
        broker.connect(virtual_host="no-such-vhost")
    assert "530" in str(info.value)
    assert "NOT_ALLOWED - vhost no-such-vhost not found" in str(info.value)


def test_failed_logins_leave_the_broker_usable(broker):
    for _ in range(5):
        with pytest.raises(pe.AMQPConnectionError):
            broker.connect(credentials=pika.PlainCredentials(broker.user, "wrong"))
    conn = broker.connect()
    try:
        assert conn.channel().queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()


def test_heartbeat_client_asks_lower_than_server(connections):
    conn = connections(heartbeat=5)
    assert conn._impl.params.heartbeat == 5


def test_heartbeat_zero_from_client_disables(connections):
    conn = connections(heartbeat=0)
    assert conn._impl.params.heartbeat == 0


def test_channel_max_and_frame_max_defaults(conn):
    # Default config: channel_max 2047 and frame_max 131072, as RabbitMQ.
    assert conn._impl.params.channel_max == 2047
    assert conn._impl.params.frame_max == 131072


def test_many_channels_on_one_connection(conn):
    channels = [conn.channel() for _ in range(50)]
    queues = []
    for i, ch in enumerate(channels):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, f"m{i}".encode())
        queues.append(q)
    for i, (ch, q) in enumerate(zip(channels, queues, strict=False)):
        _, _, body = ch.basic_get(q, auto_ack=True)
        assert body == f"m{i}".encode()
    for ch in channels:
        ch.close()
    assert conn.is_open


def test_connection_close_is_clean(broker):
    conn = broker.connect()
    conn.channel()
    conn.close()
    assert conn.is_closed


# --- lockgate-only: configs and process lifecycle -------------------------------------------

@pytest.mark.lockgate_only
def test_heartbeat_from_config_is_proposed(lockgate):
    b = lockgate("[limits]\nheartbeat = 2\n")
    conn = b.connect(heartbeat=None)
    try:
        assert conn._impl.params.heartbeat == 2
        # pika answers heartbeats while sleeping: the connection must survive several intervals.
        conn.sleep(5)
        assert conn.is_open
        conn.channel().queue_declare("", exclusive=True)
    finally:
        conn.close()


@pytest.mark.lockgate_only
def test_frame_max_from_config_is_negotiated_and_large_bodies_still_arrive(lockgate):
    b = lockgate("[limits]\nframe_max = 4096\n")
    conn = b.connect()
    try:
        assert conn._impl.params.frame_max == 4096
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        body = bytes(range(256)) * 1000
        ch.basic_publish("", q, body)
        method, _, got = ch.basic_get(q, auto_ack=True)
        assert got == body
    finally:
        conn.close()


@pytest.mark.lockgate_only
def test_channel_max_from_config_is_negotiated(lockgate):
    b = lockgate("[limits]\nchannel_max = 5\n")
    conn = b.connect()
    try:
        assert conn._impl.params.channel_max == 5
        chans = [conn.channel() for _ in range(5)]
        assert all(c.is_open for c in chans)
        with pytest.raises(pe.NoFreeChannels):
            conn.channel()
    finally:
        conn.close()


@pytest.mark.lockgate_only
def test_max_connections_from_config(lockgate):
    b = lockgate("[limits]\nmax_connections = 2\n")
    first = b.connect()
    second = b.connect()
    try:
        with pytest.raises(pe.AMQPConnectionError):
            b.connect()
        # The two admitted connections keep working.
        for c in (first, second):
            c.channel().queue_declare("", exclusive=True)
        first.close()

        def third_admitted():
            try:
                conn = b.connect()
            except pe.AMQPConnectionError:
                return None
            conn.close()
            return True

        eventually(third_admitted, message="a connection admitted after one closed")
    finally:
        for c in (first, second):
            if c.is_open:
                c.close()


@pytest.mark.lockgate_only
def test_users_and_vhosts_from_config(lockgate):
    b = lockgate(
        '[[vhosts]]\nname = "/"\n[[vhosts]]\nname = "orders"\n'
        '[[users]]\nname = "svc"\npassword = "s3cret"\nloopback_only = false\nvhosts = ["orders"]\n'
    )
    conn = b.connect(credentials=pika.PlainCredentials("svc", "s3cret"), virtual_host="orders")
    try:
        conn.channel().queue_declare("", exclusive=True)
    finally:
        conn.close()
    # guest is replaced when [[users]] is given.
    with pytest.raises(pe.ProbableAuthenticationError):
        b.connect()
    # svc may not open "/".
    with pytest.raises(pe.AMQPConnectionError) as info:
        b.connect(credentials=pika.PlainCredentials("svc", "s3cret"), virtual_host="/")
    assert "530" in str(info.value) or "403" in str(info.value)


@pytest.mark.lockgate_only
def test_vhosts_are_isolated(lockgate):
    b = lockgate('[[vhosts]]\nname = "/"\n[[vhosts]]\nname = "other"\n'
                 '[[users]]\nname = "guest"\npassword = "guest"\nvhosts = ["/", "other"]\n')
    root = b.connect()
    other = b.connect(virtual_host="other")
    try:
        rch, och = root.channel(), other.channel()
        for ch in (rch, och):
            ch.queue_declare("same-name")
        rch.basic_publish("", "same-name", b"in root")
        och.basic_publish("", "same-name", b"in other")
        assert rch.basic_get("same-name", auto_ack=True)[2] == b"in root"
        assert och.basic_get("same-name", auto_ack=True)[2] == b"in other"
        assert rch.basic_get("same-name")[0] is None
        och.exchange_declare("only-in-other", exchange_type="fanout")
        with pytest.raises(pe.ChannelClosedByBroker) as info:
            rch.exchange_declare("only-in-other", passive=True)
        assert info.value.reply_text == "NOT_FOUND - no exchange 'only-in-other' in vhost '/'"
    finally:
        root.close()
        other.close()


@pytest.mark.lockgate_only
def test_invalid_config_is_refused_at_startup(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nno_such_key = 1\n")
    result = subprocess.run([str(lockgate_binary()), "--config", str(config),
                             "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
                            capture_output=True, timeout=15)
    assert result.returncode != 0
    assert b"no_such_key" in result.stderr


@pytest.mark.lockgate_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_broker_exits_zero_on_signal(lockgate, sig):
    process = lockgate().process
    process.signal(sig)
    assert process.wait(timeout=10) == 0


@pytest.mark.lockgate_only
def test_sigterm_closes_clients_with_320_and_exits_zero(lockgate):
    b = lockgate()
    process = b.process
    conn = b.connect()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, lambda *a: None)
    process.signal(signal.SIGTERM)
    with pytest.raises(pe.ConnectionClosedByBroker) as info:
        ch.start_consuming()
    assert info.value.reply_code == 320
    assert "CONNECTION_FORCED" in info.value.reply_text
    assert process.wait(timeout=15) == 0


@contextlib.contextmanager
def shutdown_held_by_a_silent_client(lockgate, sig, logged, then=None):
    """A broker shutting down on `sig` (and at once `then`, if given; once it logged `logged`)
    that waits for a client that never answers connection.close (up to 3 s). Yields the
    process and the log mark."""
    b = lockgate()
    process = b.process
    with RawConnection(b.host, b.port) as silent:
        silent.handshake()
        mark = process.log_mark()
        process.signal(sig)
        if then is not None:
            process.signal(then)
        process.wait_for_log(logged, since=mark)
        yield process, mark


@pytest.mark.lockgate_only
def test_a_second_signal_ends_a_shutdown_that_waits(lockgate):
    """A second signal, a second or more after the first, ends the process at once with
    status 1."""
    with shutdown_held_by_a_silent_client(lockgate, signal.SIGTERM,
                                          "shutting down: closing connections") as (process, mark):
        # A signal within a second of the first is the same request (the next test).
        time.sleep(1.2)
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 1
    assert "second signal: exiting without waiting" in process.log(mark)


@pytest.mark.lockgate_only
def test_a_signal_passed_on_right_after_the_first_is_the_same_request(lockgate):
    """Ctrl-C in a script reaches the broker and the script, whose trap sends SIGTERM on: the
    shutdown goes on and ends cleanly (status 0, the store closed)."""
    # Sent back to back, as the trap does: waiting for the first one's log line first could
    # take longer than the second's window on a loaded machine.
    with shutdown_held_by_a_silent_client(lockgate, signal.SIGINT, "shutdown requested",
                                          then=signal.SIGTERM) as (process, mark):
        assert process.wait(timeout=15) == 0
    log = process.log(mark)
    assert "the same shutdown request" in log and "store closed" in log


@pytest.mark.lockgate_only
def test_a_broker_whose_stderr_reader_is_gone_keeps_serving_and_stops_on_sigterm(tmp_path):
    """A log collector that goes away breaks the broker's stderr pipe. Before, every log line
    then panicked the task that wrote it: new connections died, and SIGTERM was ignored."""
    proc = subprocess.Popen(
        [str(lockgate_binary()), "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
         "--log-level", "debug"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            if "listening" in line:
                port = int(line.rsplit(":", 1)[1].split()[0].strip('"'))
                break
        assert port, "no listening line"
        proc.stderr.close()
        for _ in range(3):
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
            ch = conn.channel()
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", q, b"logged to nobody")
            assert ch.basic_get(q, auto_ack=True)[2] == b"logged to nobody"
            conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.lockgate_only
def test_json_log_format_has_listening_line(lockgate):
    b = lockgate('[log]\nformat = "json"\n')
    line = b.process.wait_for_log(r'"listening"')
    assert str(b.port) in line


@pytest.mark.lockgate_only
def test_max_message_size_from_config(lockgate):
    b = lockgate("[limits]\nmax_message_size = 1000\n")
    conn = b.connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x" * 1000)
        ch.basic_publish("", q, b"x" * 2000)
        with pytest.raises(pe.ChannelClosedByBroker) as info:
            ch.queue_declare("", exclusive=True)
        # RabbitMQ's words (checked with max_message_size = 1000 in rabbitmq.conf).
        assert info.value.reply_code == 406
        assert info.value.reply_text == (
            "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1000")
        ch = conn.channel()
        assert ch.queue_declare(q, passive=True).method.message_count == 1
    finally:
        conn.close()
