"""x-expires: every basic.get is a use of the queue, an empty one too, as RabbitMQ ("no
basic.get for the expiration period"). These pass against RabbitMQ 3.10 too."""

import time

from lockgate_harness import eventually, queue_exists


def test_a_queue_polled_with_basic_get_does_not_expire_while_polled(conn, name):
    ch = conn.channel()
    q = name("polled")
    ch.queue_declare(q, arguments={"x-expires": 1000})
    # Polled every 100 ms for 2.5 s, more than twice x-expires, always empty (x-expires leaves
    # room for a poll that comes late on a loaded machine).
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        method, _, _ = ch.basic_get(q, auto_ack=True)
        assert method is None
        time.sleep(0.1)

    # Unused once the polling stops: it goes (a passive declare is a use, so probe slowly).
    eventually(lambda: not queue_exists(conn, q), interval=1.5,
               message="queue deleted by x-expires")
