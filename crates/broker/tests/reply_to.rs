//! Direct reply-to: a reply published to the default exchange with a reply consumer's address
//! reaches that channel with no queue; the `reply_to` rewrite; what happens once it is gone.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use lockgate_broker::{
    Channel, ChannelId, ConsumerTag, DeliveryTag, PublishOutcome, QueueFlags, ReplyConsumer,
    REPLY_TO_QUEUE,
};
use lockgate_wire::{BasicProperties, FieldTable};

fn with_reply_to(reply_to: &str) -> BasicProperties {
    BasicProperties {
        reply_to: Some(reply_to.to_owned()),
        correlation_id: Some("c1".to_owned()),
        ..BasicProperties::default()
    }
}

#[test]
fn a_reply_reaches_the_consumer_no_ack_with_the_channels_next_tag() {
    let v = vhost();
    let sink = TestSink::new();
    let mut ch = Channel::new(Arc::clone(&v), CONN, ChannelId(1), sink.clone());
    v.declare_queue(CONN, "work", QueueFlags::default(), FieldTable::default())
        .unwrap();
    ch.consume("work", "w", false, false, &FieldTable::default(), |_| {})
        .unwrap();
    let reply = ch.consume_reply_to("r");
    v.publish(false, message("", "work", "job")).unwrap();
    let outcome = v
        .publish(false, message("", reply.address(), "answer"))
        .unwrap();
    assert!(matches!(outcome, PublishOutcome::Routed(1)), "{outcome:?}");
    v.publish(false, message("", "work", "job2")).unwrap();
    let got = sink.take();
    let seen: Vec<_> = got
        .iter()
        .map(|d| {
            (
                d.consumer_tag.as_str(),
                d.delivery_tag,
                d.no_ack,
                body(&d.message),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("w", DeliveryTag(1), false, "job".to_owned()),
            ("r", DeliveryTag(2), true, "answer".to_owned()),
            ("w", DeliveryTag(3), false, "job2".to_owned()),
        ]
    );
    assert_eq!(got[1].message.routing_key(), reply.address());
    // Nothing to acknowledge for the reply: acking the queue's deliveries is all there is.
    ch.ack(DeliveryTag(3), true).unwrap();
    assert_eq!(ch.unacked_count(), 0);
}

#[test]
fn reply_to_is_rewritten_to_the_channels_address_only_when_it_names_the_pseudo_queue() {
    let v = vhost();
    let ch = Channel::new(Arc::clone(&v), CONN, ChannelId(1), TestSink::new());
    let reply = ch.consume_reply_to("");
    assert!(reply.tag().as_str().starts_with("amq.ctag-"));
    assert!(reply.address().starts_with("amq.rabbitmq.reply-to."));

    let mut m = message_with("", "q", "b", with_reply_to(REPLY_TO_QUEUE));
    ReplyConsumer::set_reply_to(Some(&reply), &mut m).unwrap();
    let props = m.properties();
    assert_eq!(props.reply_to.as_deref(), Some(reply.address()));
    assert_eq!(props.correlation_id.as_deref(), Some("c1"));
    assert_eq!(body(&m), "b");

    for other in ["my-queue", "amq.rabbitmq.reply-to.x"] {
        let mut m = message_with("", "q", "b", with_reply_to(other));
        ReplyConsumer::set_reply_to(None, &mut m).unwrap();
        assert_eq!(m.properties().reply_to.as_deref(), Some(other));
    }
    let mut m = message("", "q", "b");
    ReplyConsumer::set_reply_to(None, &mut m).unwrap();

    let mut m = message_with("", "q", "b", with_reply_to(REPLY_TO_QUEUE));
    let e = ReplyConsumer::set_reply_to(None, &mut m).unwrap_err();
    assert_eq!(
        (e.reply_code(), e.text()),
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist"
        )
    );
}

#[test]
fn a_reply_to_a_consumer_that_is_gone_is_unroutable() {
    let v = vhost();
    let sink = TestSink::new();
    let ch = Channel::new(Arc::clone(&v), CONN, ChannelId(1), sink.clone());

    // Cancelled (its registration dropped).
    let address = ch.consume_reply_to("r").address().to_owned();
    let outcome = v.publish(true, message("", &address, "late")).unwrap();
    assert!(
        matches!(outcome, PublishOutcome::Unroutable(_)),
        "{outcome:?}"
    );
    let outcome = v.publish(false, message("", &address, "late")).unwrap();
    assert!(matches!(outcome, PublishOutcome::Dropped), "{outcome:?}");

    // Its connection gone: the sink refuses, the message comes back whole.
    let reply = ch.consume_reply_to("r");
    assert_ne!(reply.address(), address);
    sink.closed.store(true, Ordering::SeqCst);
    match v
        .publish(true, message("", reply.address(), "late"))
        .unwrap()
    {
        PublishOutcome::Unroutable(m) => assert_eq!(body(&m), "late"),
        other => panic!("{other:?}"),
    }

    // Its channel closed while the registration lives on (a slot not dropped yet).
    sink.closed.store(false, Ordering::SeqCst);
    let mut ch2 = Channel::new(Arc::clone(&v), CONN, ChannelId(2), sink.clone());
    let reply2 = ch2.consume_reply_to("r2");
    ch2.close();
    let outcome = v
        .publish(true, message("", reply2.address(), "late"))
        .unwrap();
    assert!(
        matches!(outcome, PublishOutcome::Unroutable(_)),
        "{outcome:?}"
    );
    assert_eq!(sink.count(), 0);
}

#[test]
fn only_the_default_exchange_has_reply_addresses() {
    let v = vhost();
    let sink = TestSink::new();
    let ch = Channel::new(Arc::clone(&v), CONN, ChannelId(1), sink.clone());
    let reply = ch.consume_reply_to("r");
    let outcome = v
        .publish(true, message("amq.direct", reply.address(), "x"))
        .unwrap();
    assert!(
        matches!(outcome, PublishOutcome::Unroutable(_)),
        "{outcome:?}"
    );
    // A reply from another connection's channel arrives all the same.
    let _other = Channel::new(Arc::clone(&v), OTHER_CONN, ChannelId(1), TestSink::new());
    v.publish(false, message("", reply.address(), "y")).unwrap();
    assert_eq!(sink.bodies(), ["y"]);
    assert_eq!(sink.take()[0].consumer_tag, ConsumerTag::from("r"));
}

#[test]
fn the_pseudo_queue_and_live_addresses_declare_and_dead_ones_do_not() {
    let v = vhost();
    assert!(ReplyConsumer::declare(&v, "amq.rabbitmq.reply").is_none());
    assert!(ReplyConsumer::declare(&v, "work").is_none());
    assert!(matches!(
        ReplyConsumer::declare(&v, REPLY_TO_QUEUE),
        Some(Ok(()))
    ));
    let ch = Channel::new(Arc::clone(&v), CONN, ChannelId(1), TestSink::new());
    let reply = ch.consume_reply_to("r");
    let address = reply.address().to_owned();
    assert!(matches!(ReplyConsumer::declare(&v, &address), Some(Ok(()))));
    drop(reply);
    for name in [address.as_str(), "amq.rabbitmq.reply-tox"] {
        let e = ReplyConsumer::declare(&v, name).unwrap().unwrap_err();
        assert_eq!(
            (e.reply_code(), e.text()),
            (
                404,
                format!("NOT_FOUND - no queue '{name}' in vhost '/'").as_str()
            )
        );
    }
}
