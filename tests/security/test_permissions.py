"""Permissions per user and vhost, as RabbitMQ maps AMQP operations to configure/write/read.

User `lim` may configure names starting with "lim-", write to "lim-*" and the default
exchange, read "lim-*" and amq.direct. Every refusal is a channel-level 403 with RabbitMQ's
text; the same operation on an allowed name succeeds.
"""

import pika
import pika.exceptions as pe
import pytest

from lockgate_harness import LockgateProcess, unique

pytestmark = pytest.mark.lockgate_only

CONFIG = r"""
[[vhosts]]
name = "/"
[[vhosts]]
name = "other"
[[users]]
name = "guest"
password = "guest"
loopback_only = true
vhosts = ["/", "other"]
[[users]]
name = "lim"
password = "pw"
vhosts = []
[[permissions]]
user = "lim"
vhost = "/"
configure = '^lim-'
write = '^(lim-.*|amq\.default)$'
read = '^(lim-.*|amq\.direct)$'
"""


@pytest.fixture(scope="module")
def server():
    process = LockgateProcess(config=CONFIG)
    yield process.broker()
    process.stop()


@pytest.fixture
def admin(server):
    conn = server.connect()
    yield conn.channel()
    conn.close()


@pytest.fixture
def lim(server):
    conn = server.connect(credentials=pika.PlainCredentials("lim", "pw"))
    yield conn
    if conn.is_open:
        conn.close()


def refused(conn, action, kind, name):
    """Runs `action(channel)` on a fresh channel and checks RabbitMQ's 403 text."""
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        action(ch)
    assert info.value.reply_code == 403
    assert info.value.reply_text == (
        f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user 'lim'")
    assert conn.is_open, "a permission refusal closes the channel, not the connection"


def test_queue_declare_needs_configure(lim):
    q = unique("other")
    refused(lim, lambda ch: ch.queue_declare(q), "queue", q)
    ok = unique("lim-q")
    assert lim.channel().queue_declare(ok).method.queue == ok


def test_server_named_queue_is_checked_as_amq_gen(lim):
    refused(lim, lambda ch: ch.queue_declare("", exclusive=True), "queue", "amq.gen-")


def test_passive_declare_needs_no_permission(lim, admin):
    q = unique("other")
    admin.queue_declare(q)
    assert lim.channel().queue_declare(q, passive=True).method.queue == q


def test_exchange_declare_and_delete_need_configure(lim, admin):
    x = unique("other-x")
    refused(lim, lambda ch: ch.exchange_declare(x, "direct"), "exchange", x)
    ok = unique("lim-x")
    ch = lim.channel()
    ch.exchange_declare(ok, "fanout")
    admin.exchange_declare(x, "direct")
    refused(lim, lambda ch: ch.exchange_delete(x), "exchange", x)
    ch.exchange_delete(ok)


def test_queue_delete_needs_configure(lim, admin):
    q = unique("other")
    admin.queue_declare(q)
    refused(lim, lambda ch: ch.queue_delete(q), "queue", q)
    ok = unique("lim-q")
    ch = lim.channel()
    ch.queue_declare(ok)
    ch.queue_delete(ok)


def test_dead_letter_exchange_needs_write_on_it(lim):
    q = unique("lim-q")
    refused(lim, lambda ch: ch.queue_declare(q, arguments={"x-dead-letter-exchange": "amq.fanout"}),
            "exchange", "amq.fanout")
    lim.channel().queue_declare(q, arguments={"x-dead-letter-exchange": ""})


def test_publish_needs_write_on_the_exchange(lim, admin):
    def publish(exchange):
        def action(ch):
            ch.confirm_delivery()
            ch.basic_publish(exchange, "rk", b"body")
            # The refusal may land after the publish: a round trip makes sure it is seen.
            ch.queue_declare("lim-probe")
        return action

    refused(lim, publish("amq.topic"), "exchange", "amq.topic")
    q = unique("lim-q")
    ch = lim.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"to the default exchange")
    method, _, body = admin.basic_get(q, auto_ack=True)
    assert body == b"to the default exchange"


def test_consume_get_and_purge_need_read(lim, admin):
    q = unique("other")
    admin.queue_declare(q)
    refused(lim, lambda ch: ch.basic_consume(q, lambda *a: None), "queue", q)
    refused(lim, lambda ch: ch.basic_get(q), "queue", q)
    refused(lim, lambda ch: ch.queue_purge(q), "queue", q)
    ok = unique("lim-q")
    ch = lim.channel()
    ch.queue_declare(ok)
    ch.basic_publish("", ok, b"m")
    ch.queue_declare("lim-sync")
    method, _, body = ch.basic_get(ok, auto_ack=True)
    assert body == b"m"
    ch.queue_purge(ok)
    assert ch.basic_consume(ok, lambda *a: None)


def test_queue_bind_needs_write_on_queue_and_read_on_exchange(lim, admin):
    q = unique("lim-q")
    other = unique("other")
    admin.queue_declare(other)
    ch = lim.channel()
    ch.queue_declare(q)
    refused(lim, lambda c: c.queue_bind(q, "amq.topic", "k"), "exchange", "amq.topic")
    refused(lim, lambda c: c.queue_bind(other, "amq.direct", "k"), "queue", other)
    ch.queue_bind(q, "amq.direct", "k")
    refused(lim, lambda c: c.queue_unbind(q, "amq.topic", "k"), "exchange", "amq.topic")
    ch.queue_unbind(q, "amq.direct", "k")


def test_exchange_bind_needs_write_on_destination_and_read_on_source(lim, admin):
    dest = unique("lim-x")
    other = unique("other-x")
    admin.exchange_declare(other, "fanout")
    ch = lim.channel()
    ch.exchange_declare(dest, "fanout")
    refused(lim, lambda c: c.exchange_bind(other, "amq.direct", "k"), "exchange", other)
    refused(lim, lambda c: c.exchange_bind(dest, "amq.topic", "k"), "exchange", "amq.topic")
    ch.exchange_bind(dest, "amq.direct", "k")
    ch.exchange_unbind(dest, "amq.direct", "k")


def test_vhost_without_permissions_is_refused(server):
    with pytest.raises(pe.ProbableAccessDeniedError) as info:
        server.connect(credentials=pika.PlainCredentials("lim", "pw"), virtual_host="other")
    assert "530" in str(info.value)
    assert "NOT_ALLOWED - access to vhost 'other' refused for user 'lim'" in str(info.value)


def test_default_guest_has_full_access(lockgate):
    broker = lockgate()
    conn = broker.connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.exchange_declare(unique("x"), "topic")
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "k", b"x")
        ch.queue_bind(q, "amq.topic", "k")
        ch.basic_get(q)
    finally:
        conn.close()
