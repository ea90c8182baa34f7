//! Declaring, redeclaring and deleting exchanges and queues, with RabbitMQ's reply texts.

mod common;

use common::*;
use lockgate_broker::{BrokerError, ExchangeFlags, QueueFlags};
use lockgate_wire::{FieldTable, FieldValue};

fn text(result: Result<impl std::fmt::Debug, BrokerError>) -> String {
    result.unwrap_err().to_string()
}

fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[test]
fn exchange_redeclare_with_other_type_or_flags_is_inequivalent() {
    let vh = vhost();
    let flags = ExchangeFlags::default();
    vh.declare_exchange("x", "direct", flags, FieldTable::default())
        .unwrap();
    vh.declare_exchange("x", "direct", flags, FieldTable::default())
        .unwrap();
    assert_eq!(
        text(vh.declare_exchange("x", "fanout", flags, FieldTable::default())),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'"
    );
    let durable = ExchangeFlags {
        durable: true,
        ..flags
    };
    assert_eq!(
        text(vh.declare_exchange("x", "direct", durable, FieldTable::default())),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'"
    );
    let ae = args(&[("alternate-exchange", FieldValue::from("ae"))]);
    assert_eq!(
        text(vh.declare_exchange("x", "direct", flags, ae)),
        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': received the value 'ae' of type 'longstr' but current is none"
    );
}

#[test]
fn exchange_declare_errors() {
    let vh = vhost();
    let flags = ExchangeFlags::default();
    let err = vh
        .declare_exchange("x", "nope", flags, FieldTable::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "COMMAND_INVALID - unknown exchange type 'nope'"
    );
    assert_eq!(err.reply_code(), 503);
    assert!(err.is_connection_error());
    assert_eq!(
        text(vh.declare_exchange("", "direct", flags, FieldTable::default())),
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
    assert_eq!(
        text(vh.declare_exchange("amq.mine", "direct", flags, FieldTable::default())),
        "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'"
    );
    // Redeclaring a pre-declared exchange with its own flags is fine.
    let durable = ExchangeFlags {
        durable: true,
        ..flags
    };
    vh.declare_exchange("amq.topic", "topic", durable, FieldTable::default())
        .unwrap();
    let passive = ExchangeFlags {
        passive: true,
        ..flags
    };
    assert_eq!(
        text(vh.declare_exchange("missing", "ignored", passive, FieldTable::default())),
        "NOT_FOUND - no exchange 'missing' in vhost '/'"
    );
    assert_eq!(
        vh.declare_exchange("amq.match", "", passive, FieldTable::default())
            .unwrap()
            .kind(),
        lockgate_broker::ExchangeKind::Headers
    );
}

#[test]
fn exchange_delete_rules() {
    let vh = vhost();
    assert_eq!(
        text(vh.delete_exchange("", false)),
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
    assert_eq!(
        text(vh.delete_exchange("amq.direct", false)),
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    );
    vh.delete_exchange("missing", true).unwrap();
    vh.declare_exchange(
        "x",
        "fanout",
        ExchangeFlags::default(),
        FieldTable::default(),
    )
    .unwrap();
    queue(&vh, "q");
    vh.bind_queue(CONN, "q", "x", "", FieldTable::default())
        .unwrap();
    assert_eq!(
        text(vh.delete_exchange("x", true)),
        "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use"
    );
    vh.delete_exchange("x", false).unwrap();
    assert!(vh.exchange("x").is_none());
}

#[test]
fn default_exchange_cannot_be_bound() {
    let vh = vhost();
    queue(&vh, "q");
    let err = vh
        .bind_queue(CONN, "q", "", "q", FieldTable::default())
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    assert_eq!(
        err.to_string(),
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
    let err = vh
        .unbind_queue(CONN, "q", "", "q", &FieldTable::default())
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
}

#[test]
fn binding_missing_things_is_not_found() {
    let vh = vhost();
    queue(&vh, "q");
    assert_eq!(
        text(vh.bind_queue(CONN, "nope", "amq.direct", "", FieldTable::default())),
        "NOT_FOUND - no queue 'nope' in vhost '/'"
    );
    assert_eq!(
        text(vh.bind_queue(CONN, "q", "nope", "", FieldTable::default())),
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    assert_eq!(
        text(vh.bind_exchange("amq.direct", "nope", "", FieldTable::default())),
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
}

#[test]
fn auto_delete_exchange_goes_with_its_last_binding() {
    let vh = vhost();
    let flags = ExchangeFlags {
        auto_delete: true,
        ..ExchangeFlags::default()
    };
    vh.declare_exchange("ad", "direct", flags, FieldTable::default())
        .unwrap();
    queue(&vh, "q1");
    queue(&vh, "q2");
    vh.bind_queue(CONN, "q1", "ad", "k", FieldTable::default())
        .unwrap();
    vh.bind_queue(CONN, "q2", "ad", "k", FieldTable::default())
        .unwrap();
    vh.unbind_queue(CONN, "q1", "ad", "k", &FieldTable::default())
        .unwrap();
    assert!(vh.exchange("ad").is_some());
    // The last binding goes with its queue.
    vh.delete_queue(CONN, "q2", false, false).unwrap();
    assert!(vh.exchange("ad").is_none());
}

#[test]
fn deleting_an_exchange_removes_exchange_bindings_both_ways() {
    let vh = vhost();
    let flags = ExchangeFlags::default();
    for x in ["a", "b", "c"] {
        vh.declare_exchange(x, "fanout", flags, FieldTable::default())
            .unwrap();
    }
    vh.bind_exchange("b", "a", "", FieldTable::default())
        .unwrap();
    vh.bind_exchange("c", "b", "", FieldTable::default())
        .unwrap();
    vh.delete_exchange("b", false).unwrap();
    assert_eq!(vh.exchange("a").unwrap().binding_count(), 0);
    // Re-creating "b" starts without bindings.
    vh.declare_exchange("b", "fanout", flags, FieldTable::default())
        .unwrap();
    assert_eq!(vh.exchange("b").unwrap().binding_count(), 0);
}

#[test]
fn queue_declare_returns_counts_and_generates_names() {
    let vh = vhost();
    let ok = vh
        .declare_queue(CONN, "", QueueFlags::default(), FieldTable::default())
        .unwrap();
    assert!(ok.queue.starts_with("amq.gen-"), "{}", ok.queue);
    assert_eq!(ok.queue.len(), "amq.gen-".len() + 22);
    queue(&vh, "q");
    send(&vh, "q", "1");
    send(&vh, "q", "2");
    let (mut ch, _sink) = channel(&vh, 1);
    consume(&mut ch, "q", "c", false);
    send(&vh, "q", "3");
    let ok = vh
        .declare_queue(CONN, "q", QueueFlags::default(), FieldTable::default())
        .unwrap();
    // With unlimited prefetch the consumer holds all three, unacked: none is ready.
    assert_eq!((ok.message_count, ok.consumer_count), (0, 1));
    let passive = QueueFlags {
        passive: true,
        ..QueueFlags::default()
    };
    let ok = vh
        .declare_queue(OTHER_CONN, "q", passive, FieldTable::default())
        .unwrap();
    assert_eq!(ok.consumer_count, 1);
}

#[test]
fn queue_declare_errors_match_rabbitmq() {
    let vh = vhost();
    let plain = QueueFlags::default();
    let passive = QueueFlags {
        passive: true,
        ..plain
    };
    assert_eq!(
        text(vh.declare_queue(CONN, "missing", passive, FieldTable::default())),
        "NOT_FOUND - no queue 'missing' in vhost '/'"
    );
    assert_eq!(
        text(vh.declare_queue(CONN, "amq.q", plain, FieldTable::default())),
        "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'"
    );
    queue(&vh, "q");
    let durable = QueueFlags {
        durable: true,
        ..plain
    };
    assert_eq!(
        text(vh.declare_queue(CONN, "q", durable, FieldTable::default())),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );
    let auto_delete = QueueFlags {
        auto_delete: true,
        ..plain
    };
    assert_eq!(
        text(vh.declare_queue(CONN, "q", auto_delete, FieldTable::default())),
        "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );
    assert_eq!(
        text(vh.declare_queue(CONN, "q", plain, args(&[("x-max-length", FieldValue::I64(10))]))),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received the value '10' of type 'long' but current is none"
    );
    // Arguments RabbitMQ does not compare are ignored; "classic" equals no type.
    vh.declare_queue(
        CONN,
        "q",
        plain,
        args(&[("x-whatever", FieldValue::I32(1))]),
    )
    .unwrap();
    vh.declare_queue(
        CONN,
        "q",
        plain,
        args(&[("x-queue-type", FieldValue::from("classic"))]),
    )
    .unwrap();
}

#[test]
fn queue_arguments_are_compared_by_type_class_and_value() {
    let vh = vhost();
    let plain = QueueFlags::default();
    let ttl = |v: FieldValue| args(&[("x-message-ttl", v)]);
    vh.declare_queue(CONN, "q", plain, ttl(FieldValue::I32(1000)))
        .unwrap();
    // Any integer width with the same value is equivalent, as in RabbitMQ.
    vh.declare_queue(CONN, "q", plain, ttl(FieldValue::I64(1000)))
        .unwrap();
    assert_eq!(
        text(vh.declare_queue(CONN, "q", plain, ttl(FieldValue::I32(5)))),
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '5' but current is '1000'"
    );
    assert_eq!(vh.queue("q").unwrap().arguments().message_ttl, Some(1000));
}

#[test]
fn invalid_queue_arguments_are_refused() {
    let vh = vhost();
    let plain = QueueFlags::default();
    assert_eq!(
        text(vh.declare_queue(CONN, "q", plain, args(&[("x-max-length", FieldValue::I32(-1))]))),
        "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}"
    );
    assert_eq!(
        text(vh.declare_queue(CONN, "q", plain, args(&[("x-expires", FieldValue::I32(0))]))),
        "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
    );
    assert_eq!(
        text(vh.declare_queue(CONN, "q", plain, args(&[("x-message-ttl", FieldValue::from("1"))]))),
        "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""
    );
    let parsed = {
        let table = args(&[
            ("x-max-priority", FieldValue::U8(10)),
            ("x-overflow", FieldValue::from("reject-publish")),
            ("x-dead-letter-exchange", FieldValue::from("dlx")),
            ("x-dead-letter-routing-key", FieldValue::from("dead")),
        ]);
        vh.declare_queue(CONN, "typed", plain, table).unwrap();
        vh.queue("typed").unwrap().arguments().clone()
    };
    assert_eq!(parsed.max_priority, Some(10));
    assert_eq!(
        parsed.overflow,
        Some(lockgate_broker::Overflow::RejectPublish)
    );
    assert_eq!(parsed.dead_letter_exchange.as_deref(), Some("dlx"));
    assert_eq!(parsed.dead_letter_routing_key.as_deref(), Some("dead"));
}

#[test]
fn lockgate_queue_arguments_are_parsed_and_validated() {
    let vh = vhost();
    let plain = QueueFlags::default();
    let table = args(&[
        ("x-consumer-timeout", FieldValue::I32(500)),
        (
            "x-consumer-timeout-action",
            FieldValue::from("close-channel"),
        ),
        ("x-delivery-limit", FieldValue::I16(3)),
        ("x-retry-delay", FieldValue::I32(100)),
        ("x-retry-delay-max", FieldValue::I32(1600)),
        ("x-overflow", FieldValue::from("block")),
        ("x-group-header", FieldValue::from("customer")),
        ("x-deduplication-window", FieldValue::from("10000, 5m")),
    ]);
    vh.declare_queue(CONN, "typed", plain, table).unwrap();
    let parsed = vh.queue("typed").unwrap().arguments().clone();
    assert_eq!(parsed.consumer_timeout, Some(500));
    assert_eq!(
        parsed.consumer_timeout_action,
        lockgate_broker::TimeoutAction::CloseChannel
    );
    assert_eq!(parsed.delivery_limit, Some(3));
    assert_eq!(
        (parsed.retry_delay, parsed.retry_delay_max),
        (Some(100), Some(1600))
    );
    assert_eq!(parsed.overflow, Some(lockgate_broker::Overflow::Block));
    assert_eq!(parsed.group_header.as_deref(), Some("customer"));
    assert_eq!(
        parsed.dedup,
        Some(lockgate_broker::DedupWindow {
            count: Some(10_000),
            time_ms: Some(300_000)
        })
    );

    let count_only = args(&[("x-deduplication-window", FieldValue::I64(50))]);
    vh.declare_queue(CONN, "counted", plain, count_only)
        .unwrap();
    let dedup = vh.queue("counted").unwrap().arguments().dedup;
    assert_eq!(dedup.and_then(|d| d.count), Some(50));

    for (key, value, why) in [
        ("x-consumer-timeout", FieldValue::I32(0), "{value_zero,0}"),
        (
            "x-consumer-timeout-action",
            FieldValue::from("ignore"),
            "expected \"requeue\" or \"close-channel\", got \"ignore\"",
        ),
        (
            "x-deduplication-window",
            FieldValue::from("a while"),
            "\"a while\" is neither a count nor a duration such as 60s",
        ),
        (
            "x-deduplication-window",
            FieldValue::I32(0),
            "the window must hold a count or a duration above zero",
        ),
    ] {
        assert_eq!(
            text(vh.declare_queue(CONN, "bad", plain, args(&[(key, value)]))),
            format!(
                "PRECONDITION_FAILED - invalid arg '{key}' for queue 'bad' in vhost '/': {why}"
            )
        );
    }
    let backwards = args(&[
        ("x-retry-delay", FieldValue::I32(500)),
        ("x-retry-delay-max", FieldValue::I32(100)),
    ]);
    assert_eq!(
        text(vh.declare_queue(CONN, "bad", plain, backwards)),
        "PRECONDITION_FAILED - invalid arg 'x-retry-delay-max' for queue 'bad' in vhost '/': 100 is below x-retry-delay 500"
    );
    assert_eq!(
        lockgate_broker::QueueArguments::from_policy_key("delivery-limit"),
        Some("x-delivery-limit")
    );
    assert_eq!(
        lockgate_broker::QueueArguments::from_policy_key("ha-mode"),
        None
    );
}

#[test]
fn exclusive_queues_belong_to_one_connection() {
    let vh = vhost();
    let exclusive = QueueFlags {
        exclusive: true,
        ..QueueFlags::default()
    };
    vh.declare_queue(CONN, "mine", exclusive, FieldTable::default())
        .unwrap();
    vh.declare_queue(CONN, "mine", exclusive, FieldTable::default())
        .unwrap();
    let locked = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    assert_eq!(
        text(vh.declare_queue(OTHER_CONN, "mine", exclusive, FieldTable::default())),
        locked
    );
    assert_eq!(
        text(vh.declare_queue(CONN, "mine", QueueFlags::default(), FieldTable::default())),
        locked
    );
    assert_eq!(
        text(vh.bind_queue(OTHER_CONN, "mine", "amq.direct", "", FieldTable::default())),
        locked
    );
    assert_eq!(text(vh.purge_queue(OTHER_CONN, "mine")), locked);
    assert_eq!(
        text(vh.delete_queue(OTHER_CONN, "mine", false, false)),
        locked
    );
    let (mut other, _sink) = channel_on(&vh, OTHER_CONN, 1);
    assert_eq!(text(other.get("mine", false)), locked);
    let err = other
        .consume("mine", "", false, false, &FieldTable::default(), |_| {})
        .unwrap_err();
    assert_eq!(err.reply_code(), 405);
    // Anyone may publish to it.
    send(&vh, "mine", "m");
    assert_eq!(vh.queue("mine").unwrap().message_count(), 1);
}

#[test]
fn exclusive_queues_are_dropped_when_their_connection_closes() {
    let broker = broker();
    let vh = broker.vhost("/").unwrap();
    let exclusive = QueueFlags {
        exclusive: true,
        ..QueueFlags::default()
    };
    vh.declare_queue(CONN, "mine", exclusive, FieldTable::default())
        .unwrap();
    vh.declare_queue(OTHER_CONN, "theirs", exclusive, FieldTable::default())
        .unwrap();
    vh.bind_queue(CONN, "mine", "amq.fanout", "", FieldTable::default())
        .unwrap();
    broker.connection_closed(CONN);
    assert!(vh.queue("mine").is_none());
    assert!(vh.queue("theirs").is_some());
    assert_eq!(vh.exchange("amq.fanout").unwrap().binding_count(), 0);
}

#[test]
fn purge_and_delete_report_ready_messages() {
    let vh = vhost();
    queue(&vh, "q");
    for i in 0..3 {
        send(&vh, "q", &i.to_string());
    }
    let (mut ch, _sink) = channel(&vh, 1);
    let got = ch.get("q", false).unwrap().unwrap();
    assert_eq!(got.message_count, 2);
    assert_eq!(vh.purge_queue(CONN, "q").unwrap(), 2);
    // The unacked message survives a purge.
    assert_eq!(vh.queue("q").unwrap().unacked_count(), 1);
    ch.reject(got.delivery_tag, true).unwrap();
    assert_eq!(
        text(vh.delete_queue(CONN, "q", false, true)),
        "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty"
    );
    consume(&mut ch, "q", "c", false);
    assert_eq!(
        text(vh.delete_queue(CONN, "q", true, false)),
        "PRECONDITION_FAILED - queue 'q' in vhost '/' in use"
    );
    send(&vh, "q", "late");
    assert_eq!(vh.delete_queue(CONN, "q", false, false).unwrap(), 0);
    assert_eq!(vh.delete_queue(CONN, "q", false, false).unwrap(), 0);
    assert_eq!(
        text(vh.purge_queue(CONN, "q")),
        "NOT_FOUND - no queue 'q' in vhost '/'"
    );
}

#[test]
fn a_queue_is_found_by_the_octets_of_its_name() {
    let vh = vhost();
    vh.declare_queue(
        CONN,
        "événements",
        QueueFlags::default(),
        FieldTable::default(),
    )
    .unwrap();
    let found = vh.queue_by_octets("événements".as_bytes()).unwrap();
    assert_eq!(found.name(), "événements");
    assert!(vh.queue_by_octets(b"\xc3\xa9v").is_none());
    vh.delete_queue(CONN, "événements", false, false).unwrap();
    assert!(vh.queue_by_octets("événements".as_bytes()).is_none());
}
