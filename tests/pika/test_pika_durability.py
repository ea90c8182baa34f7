"""Durability across a restart on the same data directory. The expected outcome is RabbitMQ's
(checked with scripts/rabbitmq.sh restart): durable exchanges, queues and bindings come back,
and so do persistent messages on durable queues, in order, a message that was delivered but not
acked marked redelivered; transient messages and non-durable queues are gone."""

import pika
import pika.exceptions as pe
import pytest


@pytest.mark.lockgate_only
def test_durable_definitions_and_persistent_messages_survive_restart(lockgate, tmp_path):
    data = tmp_path / "data"
    first = lockgate(data_dir=data)
    conn = first.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("dx", exchange_type="direct", durable=True)
    ch.queue_declare("dq", durable=True)
    ch.queue_declare("tq", durable=False)
    ch.queue_bind("dq", "dx", "k")
    persistent = pika.BasicProperties(delivery_mode=2, message_id="p1", headers={"n": 1})
    ch.basic_publish("dx", "k", b"persistent", persistent)
    ch.basic_publish("dx", "k", b"transient", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("dx", "k", b"persistent-2", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "tq", b"in a transient queue", pika.BasicProperties(delivery_mode=2))
    method, _, body = ch.basic_get("dq")
    assert body == b"persistent"
    conn.close()  # the unacked delivery goes back to the queue, redelivered
    assert first.process.stop() == 0

    second = lockgate(data_dir=data)
    conn = second.connect()
    ch = conn.channel()
    ch.exchange_declare("dx", passive=True)
    with pytest.raises(pe.ChannelClosedByBroker) as info:
        conn.channel().queue_declare("tq", passive=True)
    assert info.value.reply_code == 404
    ch.basic_publish("dx", "k", b"after restart")  # the binding survived
    got = []
    while True:
        method, props, body = ch.basic_get("dq", auto_ack=True)
        if method is None:
            break
        got.append((body, method.redelivered))
        if body == b"persistent":
            assert props.message_id == "p1"
            assert props.headers == {"n": 1}
            assert props.delivery_mode == 2
    assert got == [(b"persistent", True), (b"persistent-2", False), (b"after restart", False)]
    conn.close()


@pytest.mark.lockgate_only
def test_deleted_durable_queue_stays_deleted_after_restart(lockgate, tmp_path):
    data = tmp_path / "data"
    first = lockgate(data_dir=data)
    conn = first.connect()
    ch = conn.channel()
    ch.queue_declare("gone", durable=True)
    ch.basic_publish("", "gone", b"x", pika.BasicProperties(delivery_mode=2))
    ch.queue_delete("gone")
    ch.queue_declare("kept", durable=True)
    ch.basic_publish("", "kept", b"a", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "kept", b"b", pika.BasicProperties(delivery_mode=2))
    method, _, _ = ch.basic_get("kept")
    ch.basic_ack(method.delivery_tag)  # acked: must not come back
    conn.close()
    assert first.process.stop() == 0

    second = lockgate(data_dir=data)
    conn = second.connect()
    with pytest.raises(pe.ChannelClosedByBroker):
        conn.channel().queue_declare("gone", passive=True)
    ch = conn.channel()
    assert ch.queue_declare("kept", passive=True).method.message_count == 1
    assert ch.basic_get("kept", auto_ack=True)[2] == b"b"
    conn.close()
