//! Transactional publishes: routed at basic.publish ([`VHost::route_held`]), enqueued at
//! tx.commit ([`VHost::publish_held`]) on the queues found then, as RabbitMQ 3.10 does.

mod common;

use common::*;
use lockgate_broker::{PublishOutcome, VHost};

/// Routes a transactional publish (mandatory) to queue "q", deletes "q", runs `meanwhile`
/// and commits the publish: its outcome.
fn commit_after_deleting_its_queue(vh: &VHost, meanwhile: impl FnOnce()) -> PublishOutcome {
    queue(vh, "q");
    let exchange = vh.exchange("").unwrap();
    let mut held = message("", "q", "m");
    let queues = vh.route_held(&exchange, &mut held).unwrap().unwrap();
    vh.delete_queue(CONN, "q", false, false).unwrap();
    meanwhile();
    vh.publish_held(&exchange, true, held, queues).outcome
}

#[test]
fn a_held_publish_goes_to_a_queue_declared_again_under_its_name() {
    // RabbitMQ keeps the names of the queues a transactional publish was routed to and looks
    // them up at commit: a queue deleted and declared again meanwhile takes the message.
    let vh = vhost();
    let outcome = commit_after_deleting_its_queue(&vh, || queue(&vh, "q"));
    assert!(matches!(outcome, PublishOutcome::Routed(1)));
    assert_eq!(vh.queue("q").unwrap().message_count(), 1);
}

#[test]
fn a_held_publish_whose_queue_is_gone_reaches_nothing_and_is_returned() {
    let vh = vhost();
    let outcome = commit_after_deleting_its_queue(&vh, || {});
    assert!(matches!(outcome, PublishOutcome::Unroutable(_)));
}
