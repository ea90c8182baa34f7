//! The plugin exchange types: `x-consistent-hash` (binding key = weight, one queue per
//! message by hash) and `x-delayed-message` (routed as `x-delayed-type` once `x-delay` ms
//! have passed), through the vhost API.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lockgate_broker::{ExchangeFlags, PublishOutcome, VHost};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

fn text(s: &str) -> FieldValue {
    FieldValue::LongString(s.as_bytes().to_vec().into())
}

fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn declare(vhost: &VHost, name: &str, kind: &str, arguments: FieldTable) {
    vhost
        .declare_exchange(name, kind, ExchangeFlags::default(), arguments)
        .unwrap();
}

fn bind(vhost: &VHost, queue: &str, exchange: &str, key: &str) {
    vhost
        .bind_queue(CONN, queue, exchange, key, FieldTable::default())
        .unwrap();
}

fn ready(vhost: &VHost, queue: &str) -> u32 {
    vhost.queue(queue).unwrap().message_count()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within 20 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn with_headers(headers: &[(&str, FieldValue)]) -> BasicProperties {
    BasicProperties {
        headers: Some(args(headers)),
        ..BasicProperties::default()
    }
}

#[test]
fn consistent_hash_sends_each_key_to_one_queue_in_proportion_to_weights() {
    let v = vhost();
    declare(&v, "chx", "x-consistent-hash", FieldTable::default());
    queue(&v, "light");
    queue(&v, "heavy");
    bind(&v, "light", "chx", "1");
    bind(&v, "heavy", "chx", "3");
    for i in 0..2_000 {
        let outcome = v.publish(false, message("chx", &format!("key-{i}"), "m"));
        assert!(matches!(outcome.unwrap(), PublishOutcome::Routed(1)));
    }
    let heavy = ready(&v, "heavy");
    assert_eq!(ready(&v, "light") + heavy, 2_000);
    assert!((1_300..1_700).contains(&heavy), "heavy got {heavy}");
    // The same key again goes where it went before.
    let before = (ready(&v, "light"), ready(&v, "heavy"));
    for _ in 0..10 {
        v.publish(false, message("chx", "key-7", "m")).unwrap();
    }
    let after = (ready(&v, "light"), ready(&v, "heavy"));
    assert!(after == (before.0 + 10, before.1) || after == (before.0, before.1 + 10));
}

#[test]
fn consistent_hash_on_a_header_ignores_the_routing_key() {
    let v = vhost();
    declare(
        &v,
        "chx",
        "x-consistent-hash",
        args(&[("hash-header", text("user"))]),
    );
    for q in ["a", "b", "c", "d"] {
        queue(&v, q);
        bind(&v, q, "chx", "1");
    }
    for i in 0..40 {
        let props = with_headers(&[("user", text("alice"))]);
        v.publish(false, message_with("chx", &format!("rk-{i}"), "m", props))
            .unwrap();
    }
    let counts: Vec<u32> = ["a", "b", "c", "d"].iter().map(|q| ready(&v, q)).collect();
    assert_eq!(counts.iter().filter(|c| **c == 40).count(), 1, "{counts:?}");
}

#[test]
fn consistent_hash_rejects_bad_weights_and_arguments() {
    let v = vhost();
    declare(&v, "chx", "x-consistent-hash", FieldTable::default());
    queue(&v, "q");
    for key in ["", "x", "0", "-1"] {
        let err = v
            .bind_queue(CONN, "q", "chx", key, FieldTable::default())
            .unwrap_err();
        assert_eq!(err.reply_code(), 406, "{key:?}: {}", err.text());
    }
    let err = v
        .declare_exchange(
            "bad",
            "x-consistent-hash",
            ExchangeFlags::default(),
            args(&[("hash-property", text("app_id"))]),
        )
        .unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert!(v.exchange("bad").is_none());
}

#[test]
fn unbinding_from_a_consistent_hash_exchange_reroutes_its_keys() {
    let v = vhost();
    declare(&v, "chx", "x-consistent-hash", FieldTable::default());
    queue(&v, "a");
    queue(&v, "b");
    bind(&v, "a", "chx", "1");
    bind(&v, "b", "chx", "1");
    v.unbind_queue(CONN, "a", "chx", "1", &FieldTable::default())
        .unwrap();
    for i in 0..50 {
        v.publish(false, message("chx", &format!("k{i}"), "m"))
            .unwrap();
    }
    assert_eq!((ready(&v, "a"), ready(&v, "b")), (0, 50));
}

fn delayed(vhost: &VHost, name: &str, kind: &str) {
    declare(
        vhost,
        name,
        "x-delayed-message",
        args(&[("x-delayed-type", text(kind))]),
    );
}

fn after_ms(ms: i64) -> BasicProperties {
    with_headers(&[("x-delay", FieldValue::I64(ms))])
}

#[test]
fn a_delayed_message_is_enqueued_when_due_and_not_before() {
    let v = vhost();
    delayed(&v, "later", "direct");
    queue(&v, "q");
    bind(&v, "q", "later", "k");
    let start = Instant::now();
    // Long enough that it is still held when checked below, however loaded the machine.
    let outcome = v
        .publish(true, message_with("later", "k", "m", after_ms(1_000)))
        .unwrap();
    // Held: accepted (confirmable), not returned although mandatory.
    assert!(matches!(outcome, PublishOutcome::Routed(_)));
    assert_eq!(ready(&v, "q"), 0);
    assert_eq!(v.exchange("later").unwrap().delayed_count(), 1);
    wait_until("the delayed message is enqueued", || ready(&v, "q") == 1);
    assert!(start.elapsed() >= Duration::from_millis(1_000));
    assert_eq!(v.exchange("later").unwrap().delayed_count(), 0);
    // As the plugin: the delivered message's x-delay is negated.
    let (mut ch, _) = channel(&v, 3);
    let got = ch.get("q", true).unwrap().unwrap();
    let headers = got.message.headers().unwrap();
    assert_eq!(headers.get("x-delay"), Some(&FieldValue::I64(-1_000)));
}

#[test]
fn shorter_delays_published_later_overtake_and_no_delay_routes_at_once() {
    let v = vhost();
    delayed(&v, "later", "fanout");
    queue(&v, "q");
    bind(&v, "q", "later", "");
    let (mut ch, sink) = channel(&v, 1);
    consume(&mut ch, "q", "c", true);
    // Far enough apart for a loaded machine: "fast" is still held at the check below (due in
    // 0.5 s) and falls due 1 s before "slow".
    v.publish(false, message_with("later", "", "slow", after_ms(1_500)))
        .unwrap();
    v.publish(false, message_with("later", "", "fast", after_ms(500)))
        .unwrap();
    v.publish(false, message_with("later", "", "zero", after_ms(0)))
        .unwrap();
    v.publish(false, message("later", "", "plain")).unwrap();
    assert_eq!(sink.bodies(), ["zero", "plain"]);
    wait_until("all four delivered", || sink.count() == 4);
    assert_eq!(sink.bodies(), ["zero", "plain", "fast", "slow"]);
}

#[test]
fn a_delayed_exchange_routes_as_its_delayed_type() {
    let v = vhost();
    delayed(&v, "later", "topic");
    queue(&v, "orders");
    queue(&v, "other");
    bind(&v, "orders", "later", "orders.#");
    bind(&v, "other", "later", "payments.*");
    v.publish(
        false,
        message_with("later", "orders.eu.created", "m", after_ms(30)),
    )
    .unwrap();
    wait_until("routed by topic", || ready(&v, "orders") == 1);
    assert_eq!(ready(&v, "other"), 0);
}

#[test]
fn a_delayed_exchange_needs_a_known_delayed_type() {
    let v = vhost();
    for arguments in [
        FieldTable::default(),
        args(&[("x-delayed-type", text("nope"))]),
        args(&[("x-delayed-type", text("x-delayed-message"))]),
    ] {
        let err = v
            .declare_exchange(
                "later",
                "x-delayed-message",
                ExchangeFlags::default(),
                arguments,
            )
            .unwrap_err();
        assert_eq!(err.reply_code(), 406);
        assert!(err.text().contains("x-delayed-type"), "{}", err.text());
    }
}

#[test]
fn deleting_a_delayed_exchange_drops_what_it_holds() {
    let v = vhost();
    delayed(&v, "later", "direct");
    queue(&v, "q");
    bind(&v, "q", "later", "k");
    // Due well after the delete below; the probe falls due later still.
    v.publish(false, message_with("later", "k", "m", after_ms(1_000)))
        .unwrap();
    let exchange = v.exchange("later").unwrap();
    v.delete_exchange("later", false).unwrap();
    assert_eq!(exchange.delayed_count(), 0);
    // Declared again with the same name: nothing held comes back.
    delayed(&v, "later", "direct");
    bind(&v, "q", "later", "k");
    let probe = Instant::now();
    v.publish(false, message_with("later", "k", "probe", after_ms(1_500)))
        .unwrap();
    wait_until("the probe is enqueued", || ready(&v, "q") >= 1);
    assert!(probe.elapsed() >= Duration::from_millis(1_500));
    assert_eq!(ready(&v, "q"), 1);
}
