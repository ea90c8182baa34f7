"""Failed logins (same answer for an unknown user and a wrong password, logged, delayed) and
the per-vhost and per-user limits, refused with RabbitMQ's texts."""

import threading
import time

import pika
import pika.exceptions as pe
import pytest

from lockgate_harness import eventually, unique

pytestmark = pytest.mark.lockgate_only


def failed_login(broker, user, password):
    started = time.monotonic()
    with pytest.raises(pe.ProbableAuthenticationError) as info:
        broker.connect(credentials=pika.PlainCredentials(user, password))
    return str(info.value), time.monotonic() - started


def test_failed_login_is_delayed_logged_and_does_not_reveal_the_user(lockgate):
    broker = lockgate()
    mark = broker.process.log_mark()
    unknown, unknown_took = failed_login(broker, "no-such-user", "guest")
    wrong, wrong_took = failed_login(broker, "guest", "wrong-password")
    assert unknown == wrong
    assert "403" in wrong and "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in wrong
    assert unknown_took >= 0.9 and wrong_took >= 0.9, (unknown_took, wrong_took)
    broker.process.wait_for_log(r"login refused: invalid credentials.*no-such-user", since=mark)
    broker.process.wait_for_log(r"login refused: invalid credentials.*user=guest", since=mark)
    # The broker stays usable for everyone else.
    conn = broker.connect()
    conn.close()


def test_failed_logins_do_not_delay_other_clients(lockgate):
    broker = lockgate()
    threads = [threading.Thread(target=lambda: failed_login(broker, "x", "y")) for _ in range(3)]
    for t in threads:
        t.start()
    started = time.monotonic()
    conn = broker.connect()
    assert time.monotonic() - started < 0.9
    conn.close()
    for t in threads:
        t.join()


VHOST_LIMITS = """
[[vhosts]]
name = "/"
max_connections = 2
max_queues = 2
[[users]]
name = "guest"
password = "guest"
loopback_only = true
[[users]]
name = "app"
password = "pw"
max_connections = 1
"""

USER_QUEUES = """
[[users]]
name = "guest"
password = "guest"
loopback_only = true
[[users]]
name = "few"
password = "pw"
max_queues = 1
"""


def test_vhost_connection_limit(lockgate):
    broker = lockgate(VHOST_LIMITS)
    first, second = broker.connect(), broker.connect()
    with pytest.raises(pe.ProbableAccessDeniedError) as info:
        broker.connect()
    assert "530" in str(info.value)
    assert ("NOT_ALLOWED - access to vhost '/' refused for user 'guest': "
            "connection limit (2) is reached") in str(info.value)
    first.close()
    third = eventually(broker.connect, message="a freed slot")
    second.close()
    third.close()


def test_user_connection_limit(lockgate):
    broker = lockgate(VHOST_LIMITS)
    app = pika.PlainCredentials("app", "pw")
    first = broker.connect(credentials=app)
    with pytest.raises(pe.ProbableAccessDeniedError) as info:
        broker.connect(credentials=app)
    assert ("NOT_ALLOWED - connection refused for user 'app': "
            "user connection limit (1) is reached") in str(info.value)
    # Another user still gets in (the refused attempt gave its vhost slot back).
    guest = broker.connect()
    guest.close()
    first.close()
    eventually(lambda: broker.connect(credentials=app), message="the user's slot freed").close()


def test_vhost_queue_limit(lockgate):
    broker = lockgate(VHOST_LIMITS)
    conn = broker.connect()
    try:
        ch = conn.channel()
        a, b, c = unique("a"), unique("b"), unique("c")
        ch.queue_declare(a)
        ch.queue_declare(b)
        ch.queue_declare(a)  # redeclaring an existing queue creates nothing
        ch.queue_declare(a, passive=True)
        with pytest.raises(pe.ChannelClosedByBroker) as info:
            ch.queue_declare(c)
        assert info.value.reply_code == 406
        assert info.value.reply_text == (
            f"PRECONDITION_FAILED - cannot declare queue '{c}': "
            "queue limit in vhost '/' (2) is reached")
        ch = conn.channel()
        ch.queue_delete(b)
        ch.queue_declare(c)
    finally:
        conn.close()


def test_user_queue_limit(lockgate):
    broker = lockgate(USER_QUEUES)
    few = broker.connect(credentials=pika.PlainCredentials("few", "pw"))
    admin = broker.connect()
    try:
        theirs = unique("theirs")
        admin.channel().queue_declare(theirs)
        ch = few.channel()
        mine, more = unique("mine"), unique("more")
        ch.queue_declare(mine)
        ch.queue_declare(theirs)  # someone else's queue: creates nothing, counts nothing
        with pytest.raises(pe.ChannelClosedByBroker) as info:
            ch.queue_declare(more)
        assert info.value.reply_code == 406
        assert info.value.reply_text == (
            f"PRECONDITION_FAILED - cannot declare queue '{more}': "
            "queue limit for user 'few' (1) is reached")
        ch = few.channel()
        ch.queue_delete(mine)
        ch.queue_declare(more)
    finally:
        few.close()
        admin.close()
