"""What a transaction holds (routed at basic.publish, enqueued at tx.commit) is charged to the
memory watermark while it holds it, and every way a transaction ends gives the charge back: the
broker's counted message memory is back to zero once the messages are gone."""

import pika
import pika.exceptions as pe
import pytest

import amqp_raw as raw
from lockgate_harness import drain, eventually, messages_memory, pump

pytestmark = pytest.mark.lockgate_only

METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'
BODY = b"t" * 10_000


def back_to_zero(b, what):
    eventually(lambda: messages_memory(b) == 0, timeout=10, message=f"memory back to 0 ({what})")


def test_every_end_of_a_transaction_gives_its_memory_back(lockgate):
    b = lockgate(METRICS)
    conn = b.connect()
    ch, admin = conn.channel(), conn.channel()
    q = admin.queue_declare("txm", auto_delete=False).method.queue
    x = "txm-delayed"
    admin.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    admin.queue_bind(q, x, "k")
    ch.tx_select()

    ch.basic_publish("", q, BODY)
    ch.basic_publish(x, "k", BODY, pika.BasicProperties(headers={"x-delay": 60_000}))
    # basic.publish has no reply: the broker reads the two when it gets to them.
    eventually(lambda: messages_memory(b) >= 2 * len(BODY), timeout=10,
               message="the held messages charged")
    ch.tx_rollback()
    back_to_zero(b, "rollback")

    # Its queue deleted before the commit: the message goes nowhere, and neither does its
    # charge; the mandatory one comes back and goes with the return.
    returned = []
    ch.add_on_return_callback(lambda *args: returned.append(args[-1]))
    ch.basic_publish("", q, BODY)
    ch.basic_publish("", q, BODY, mandatory=True)
    admin.queue_delete(q)
    ch.tx_commit()
    pump(conn, lambda: returned, message="basic.return")
    back_to_zero(b, "commit to a deleted queue")

    # Committed, then consumed.
    admin.queue_declare(q, auto_delete=False)
    ch.basic_publish("", q, BODY)
    ch.tx_commit()
    assert drain(admin, q) == [BODY]
    back_to_zero(b, "commit, then consumed")

    # The channel closes with the transaction open.
    ch.basic_publish("", q, BODY)
    ch.close()
    back_to_zero(b, "channel closed")

    # A publish refused at basic.publish (a CC header that is not an array) closes the
    # channel: neither it nor those held before it stay charged.
    ch = conn.channel()
    ch.tx_select()
    ch.basic_publish("", q, BODY)
    with pytest.raises(pe.ChannelClosedByBroker) as err:
        ch.basic_publish("", q, BODY, pika.BasicProperties(headers={"CC": "not-an-array"}))
        ch.tx_commit()
    assert err.value.reply_code == 406
    back_to_zero(b, "channel closed by a refused publish")

    # The connection goes with the transaction open.
    other = b.connect()
    och = other.channel()
    och.tx_select()
    och.basic_publish("", q, BODY)
    other.close()
    back_to_zero(b, "connection closed")

    admin.queue_delete(q)
    admin.exchange_delete(x)
    conn.close()


def test_a_body_in_several_frames_held_by_a_transaction_is_charged_once(lockgate):
    b = lockgate(METRICS)
    conn = b.connect()
    admin = conn.channel()
    q = admin.queue_declare("txm-frames", auto_delete=False).method.queue
    with raw.RawConnection(b.host, b.port) as r:
        r.handshake()
        r.open_channel(1)
        r.send(raw.method_frame(1, 90, 10))
        r.read_method((90, 11))
        chunk = r.frame_max - 8
        size = 3 * chunk + 10
        r.send(raw.basic_publish(1, "", q) + raw.content_header(1, size))
        for at in range(0, size, chunk):
            r.send(raw.body_frame(1, b"f" * min(chunk, size - at)))
        eventually(lambda: size <= messages_memory(b) < 2 * size, timeout=10,
                   message="the held message charged once")
        r.send(raw.method_frame(1, 90, 30))
        r.read_method((90, 31))
        back_to_zero(b, "rollback of a body in several frames")
    admin.queue_delete(q)
    conn.close()
