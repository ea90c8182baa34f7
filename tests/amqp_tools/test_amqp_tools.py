"""The rabbitmq-c command-line tools (Debian's amqp-tools) against the broker, via subprocess."""

import shutil
import subprocess
import textwrap

import pika.exceptions as pe
import pytest

from lockgate_harness import drain, eventually, queue_count

TOOLS = ["amqp-declare-queue", "amqp-publish", "amqp-get", "amqp-consume", "amqp-delete-queue"]


@pytest.fixture(scope="module", autouse=True)
def tools_installed():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: install Debian's amqp-tools (scripts/test.sh does)")


@pytest.fixture
def tool(broker):
    def run(name, *args, stdin=None, timeout=15):
        return subprocess.run([name, "--url", broker.url, *args], input=stdin,
                              capture_output=True, timeout=timeout)

    return run


@pytest.fixture
def script(tmp_path):
    def make(body):
        path = tmp_path / f"cmd{len(list(tmp_path.iterdir()))}.sh"
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return str(path)

    return make


@pytest.fixture
def queue(tool, name, conn):
    q = name("tools")
    result = tool("amqp-declare-queue", "-q", q)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == q
    yield q
    ch = conn.channel()
    ch.queue_delete(q)


def test_declare_server_named_queue(tool, conn):
    result = tool("amqp-declare-queue", "-q", "")
    assert result.returncode == 0, result.stderr
    q = result.stdout.decode().strip()
    assert q.startswith("amq.gen-")
    assert queue_count(conn, q) == 0
    conn.channel().queue_delete(q)


def test_declare_durable_queue(tool, name, conn):
    q = name("durable")
    assert tool("amqp-declare-queue", "-d", "-q", q).returncode == 0
    ch = conn.channel()
    ch.queue_declare(q, durable=True, passive=False)  # equivalent: no 406
    ch.queue_delete(q)


def test_publish_and_get(tool, queue, conn):
    assert tool("amqp-publish", "-r", queue, "-b", "hello from amqp-publish").returncode == 0
    eventually(lambda: queue_count(conn, queue) == 1)
    result = tool("amqp-get", "-q", queue)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from amqp-publish"
    assert queue_count(conn, queue) == 0


def test_get_on_empty_queue_exits_2(tool, queue):
    result = tool("amqp-get", "-q", queue)
    assert result.returncode == 2
    assert result.stdout == b""


def test_get_on_missing_queue_is_404(tool, name):
    q = name("missing")
    result = tool("amqp-get", "-q", q)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "404" in err
    assert f"NOT_FOUND - no queue '{q}' in vhost '/'" in err


def test_publish_with_exchange_and_properties(tool, conn, name):
    ch = conn.channel()
    ex = name("tools-ex")
    ch.exchange_declare(ex, exchange_type="topic", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, routing_key="orders.*")
    result = tool("amqp-publish", "-e", ex, "-r", "orders.placed", "-b", '{"id": 1}',
                  "-C", "application/json", "-E", "utf-8", "-p", "-t", "replies",
                  "-H", "source: checkout", "-H", "tenant: acme")
    assert result.returncode == 0, result.stderr
    assert tool("amqp-publish", "-e", ex, "-r", "users.new", "-b", "x").returncode == 0
    method, props, body = eventually(lambda: (r := ch.basic_get(q, auto_ack=True))[0] and r)
    assert body == b'{"id": 1}'
    assert (method.exchange, method.routing_key) == (ex, "orders.placed")
    assert props.content_type == "application/json"
    assert props.content_encoding == "utf-8"
    assert props.delivery_mode == 2
    assert props.reply_to == "replies"
    assert props.headers == {"source": "checkout", "tenant": "acme"}
    assert drain(ch, q) == []


def test_publish_line_buffered_from_stdin(tool, queue, conn):
    result = tool("amqp-publish", "-r", queue, "-l", stdin=b"one\ntwo\nthree\n")
    assert result.returncode == 0, result.stderr
    ch = conn.channel()
    eventually(lambda: queue_count(conn, queue) == 3)
    assert [b.strip() for b in drain(ch, queue)] == [b"one", b"two", b"three"]


def test_publish_body_from_stdin(tool, queue, conn):
    payload = bytes(range(256)) * 4096
    result = tool("amqp-publish", "-r", queue, stdin=payload)
    assert result.returncode == 0, result.stderr
    ch = conn.channel()
    method, _, body = eventually(lambda: (r := ch.basic_get(queue, auto_ack=True))[0] and r)
    assert body == payload


def test_publish_to_missing_exchange_fails_with_404(tool, name):
    ex = name("nope")
    result = tool("amqp-publish", "-e", ex, "-r", "k", "-b", "x")
    assert result.returncode != 0
    assert f"NOT_FOUND - no exchange '{ex}' in vhost '/'" in result.stderr.decode()


def test_consume_count_acks_after_the_command_succeeds(tool, queue, conn):
    ch = conn.channel()
    for i in range(3):
        ch.basic_publish("", queue, f"m{i}\n".encode())
    eventually(lambda: queue_count(conn, queue) == 3)
    result = tool("amqp-consume", "-q", queue, "-c", "2", "cat")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"m0\nm1\n"
    # Both were acked; the third stays.
    assert eventually(lambda: queue_count(conn, queue) == 1)
    assert drain(ch, queue) == [b"m2\n"]


def test_consume_does_not_ack_when_the_command_fails(tool, queue, conn, script):
    ch = conn.channel()
    ch.basic_publish("", queue, b"first")
    ch.basic_publish("", queue, b"second")
    failing = script("cat\nexit 3\n")
    result = tool("amqp-consume", "-q", queue, "-c", "1", "-p", "1", failing)
    assert result.stdout == b"first"
    # Not acked: it is back at the head of the queue, redelivered.
    eventually(lambda: queue_count(conn, queue) == 2)
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"first", True)


def test_consume_killed_mid_message_is_redelivered(tool, queue, conn, script):
    ch = conn.channel()
    ch.basic_publish("", queue, b"precious")
    killer = script("cat\nkill -9 $PPID\n")
    result = tool("amqp-consume", "-q", queue, "-c", "1", "-p", "1", killer)
    assert result.returncode == -9
    assert result.stdout == b"precious"
    eventually(lambda: queue_count(conn, queue) == 1, message="unacked message requeued")
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"precious", True)


def test_consume_no_ack(tool, queue, conn, script):
    ch = conn.channel()
    ch.basic_publish("", queue, b"gone")
    failing = script("cat\nexit 1\n")
    result = tool("amqp-consume", "-q", queue, "-c", "1", "-A", failing)
    assert result.stdout == b"gone"
    # In no-ack mode the message is gone whatever the command did.
    assert queue_count(conn, queue) == 0


def test_consume_with_exchange_binding(broker, conn, name):
    ex = name("tools-fanout")
    ch = conn.channel()
    ch.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    q = name("tools-bound")
    # amqp-consume declares the queue itself (auto-delete) and binds it to the exchange.
    # (amqp-tools 0.11 crashes when -e is given without -r.)
    consumer = subprocess.Popen(
        ["amqp-consume", "--url", broker.url, "-q", q, "-e", ex,
         "-r", "any", "-c", "2", "cat"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        eventually(lambda: consumer_count(conn, q) == 1)
        ch.basic_publish(ex, "", b"a;")
        ch.basic_publish(ex, "", b"b;")
        out, err = consumer.communicate(timeout=10)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    assert consumer.returncode == 0, err
    assert out == b"a;b;"


def consumer_count(conn, q):
    ch = conn.channel()
    try:
        return ch.queue_declare(q, passive=True).method.consumer_count
    except pe.ChannelClosedByBroker:
        return 0
    finally:
        if ch.is_open:
            ch.close()


def test_delete_queue_reports_count(tool, name, conn):
    q = name("tools-del")
    conn.channel().queue_declare(q)
    ch = conn.channel()
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    eventually(lambda: queue_count(conn, q) == 3)
    result = tool("amqp-delete-queue", "-q", q)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "3"


def test_delete_queue_if_empty_fails_on_full_queue(tool, queue, conn):
    conn.channel().basic_publish("", queue, b"x")
    eventually(lambda: queue_count(conn, queue) == 1)
    result = tool("amqp-delete-queue", "-q", queue, "--if-empty")
    assert result.returncode != 0
    assert f"PRECONDITION_FAILED - queue '{queue}' in vhost '/' not empty" in result.stderr.decode()
    assert queue_count(conn, queue) == 1


def test_bad_credentials_fail(broker, queue):
    url = f"amqp://guest:wrong@{broker.host}:{broker.port}/%2F"
    result = subprocess.run(["amqp-get", "--url", url, "-q", queue], capture_output=True,
                            timeout=15)
    assert result.returncode != 0
    assert b"ACCESS_REFUSED" in result.stderr or b"403" in result.stderr or b"login" in \
        result.stderr.lower()
