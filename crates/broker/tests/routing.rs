//! Routing through every exchange type, exchange-to-exchange bindings and publish outcomes.

mod common;

use common::*;
use lockgate_broker::{BrokerError, ExchangeFlags, PublishOutcome, VHost};
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};

fn exchange(vhost: &VHost, name: &str, kind: &str) {
    vhost
        .declare_exchange(name, kind, ExchangeFlags::default(), FieldTable::default())
        .unwrap();
}

fn bind(vhost: &VHost, queue: &str, exchange: &str, key: &str) {
    vhost
        .bind_queue(CONN, queue, exchange, key, FieldTable::default())
        .unwrap();
}

fn routed(outcome: PublishOutcome) -> usize {
    match outcome {
        PublishOutcome::Routed(n) => n,
        PublishOutcome::Dropped | PublishOutcome::Unroutable(_) => 0,
    }
}

fn publish(vhost: &VHost, exchange: &str, key: &str) -> usize {
    routed(vhost.publish(false, message(exchange, key, "m")).unwrap())
}

fn counts(vhost: &VHost, queues: &[&str]) -> Vec<u32> {
    queues
        .iter()
        .map(|q| vhost.queue(q).unwrap().message_count())
        .collect()
}

#[test]
fn default_exchange_routes_to_the_queue_named_by_the_key() {
    let vh = vhost();
    queue(&vh, "q");
    assert_eq!(publish(&vh, "", "q"), 1);
    assert_eq!(publish(&vh, "", "nope"), 0);
    assert_eq!(counts(&vh, &["q"]), [1]);
}

#[test]
fn direct_exchange_matches_the_exact_key() {
    let vh = vhost();
    queue(&vh, "a");
    queue(&vh, "b");
    bind(&vh, "a", "amq.direct", "k1");
    bind(&vh, "b", "amq.direct", "k1");
    bind(&vh, "b", "amq.direct", "k2");
    assert_eq!(publish(&vh, "amq.direct", "k1"), 2);
    assert_eq!(publish(&vh, "amq.direct", "k2"), 1);
    assert_eq!(publish(&vh, "amq.direct", "k3"), 0);
    assert_eq!(counts(&vh, &["a", "b"]), [1, 2]);
}

#[test]
fn binding_twice_is_idempotent_and_unbind_removes_it() {
    let vh = vhost();
    queue(&vh, "a");
    bind(&vh, "a", "amq.direct", "k");
    bind(&vh, "a", "amq.direct", "k");
    assert_eq!(vh.exchange("amq.direct").unwrap().binding_count(), 1);
    vh.unbind_queue(CONN, "a", "amq.direct", "k", &FieldTable::default())
        .unwrap();
    assert_eq!(publish(&vh, "amq.direct", "k"), 0);
    // Unbinding what is not bound succeeds, as RabbitMQ.
    vh.unbind_queue(CONN, "a", "amq.direct", "k", &FieldTable::default())
        .unwrap();
}

#[test]
fn fanout_exchange_ignores_the_key() {
    let vh = vhost();
    for q in ["a", "b", "c"] {
        queue(&vh, q);
        bind(&vh, q, "amq.fanout", q);
    }
    assert_eq!(publish(&vh, "amq.fanout", "whatever"), 3);
    assert_eq!(counts(&vh, &["a", "b", "c"]), [1, 1, 1]);
}

/// Binds one queue per pattern, publishes `key`, returns the patterns that matched.
fn topic_matches(patterns: &[&str], key: &str) -> Vec<String> {
    let vh = vhost();
    for (i, pattern) in patterns.iter().enumerate() {
        let q = format!("q{i}");
        queue(&vh, &q);
        bind(&vh, &q, "amq.topic", pattern);
    }
    publish(&vh, "amq.topic", key);
    patterns
        .iter()
        .enumerate()
        .filter(|(i, _)| vh.queue(&format!("q{i}")).unwrap().message_count() == 1)
        .map(|(_, p)| (*p).to_owned())
        .collect()
}

const PATTERNS: &[&str] = &[
    "#", "*", "*.*", "a", "a.b", "a.*", "a.#", "a.#.b", "#.b", "*.b", "a.*.b", "#.#", "", "a..b",
    "a.*.*", "#.a.#",
];

#[test]
fn topic_hash_and_star_follow_rabbitmq() {
    let cases: &[(&str, &[&str])] = &[
        (
            "a.b",
            &[
                "#", "*.*", "a.b", "a.*", "a.#", "a.#.b", "#.b", "*.b", "#.#", "#.a.#",
            ],
        ),
        ("a", &["#", "*", "a", "a.#", "#.#", "#.a.#"]),
        ("", &["#", "#.#", ""]),
        (
            "a.x.b",
            &["#", "a.#", "a.#.b", "#.b", "a.*.b", "#.#", "a.*.*", "#.a.#"],
        ),
        ("a.x.y.b", &["#", "a.#", "a.#.b", "#.b", "#.#", "#.a.#"]),
        (
            "a..b",
            &[
                "#", "a.#", "a.#.b", "#.b", "a.*.b", "#.#", "a..b", "a.*.*", "#.a.#",
            ],
        ),
        ("b", &["#", "*", "#.b", "#.#"]),
        ("x.a.y", &["#", "#.#", "#.a.#"]),
        ("a.", &["#", "*.*", "a.*", "a.#", "#.#", "#.a.#"]),
    ];
    for (key, expected) in cases {
        let mut got = topic_matches(PATTERNS, key);
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "routing key {key:?}");
    }
}

/// What a topic pattern matches, by the definition: `*` is one word, `#` zero or more.
fn reference_match(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| reference_match(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && reference_match(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && reference_match(rest, &key[1..]),
    }
}

/// Every sequence of 1..=`max` items of `alphabet`.
fn sequences<'a>(alphabet: &[&'a str], max: usize) -> Vec<Vec<&'a str>> {
    let mut all: Vec<Vec<&str>> = vec![vec![]];
    let mut last = all.clone();
    for _ in 0..max {
        last = last
            .iter()
            .flat_map(|s| alphabet.iter().map(move |w| [s.as_slice(), &[*w]].concat()))
            .collect();
        all.extend(last.iter().cloned());
    }
    all.remove(0);
    all
}

#[test]
fn topic_matching_agrees_with_the_definition_for_every_small_pattern() {
    let patterns: Vec<String> = sequences(&["a", "b", "*", "#"], 4)
        .iter()
        .map(|p| p.join("."))
        .collect();
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let mut keys = sequences(&["a", "b"], 5);
    keys.push(vec![]);
    for key in keys {
        let mut got = topic_matches(&patterns, &key.join("."));
        let mut want: Vec<String> = patterns
            .iter()
            .filter(|p| reference_match(&p.split('.').collect::<Vec<_>>(), &key))
            .map(|p| (*p).to_owned())
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "routing key {key:?}");
    }
}

#[test]
fn many_hashes_in_a_binding_key_cost_polynomial_time() {
    // Each `#` may take any number of the words; trying every split took exponential time (a
    // binding of 8 `#`s against 40 words held a broker worker for 11 s). 120 words here.
    let words = vec!["a"; 120].join(".");
    for pattern in [
        format!("{}x", "#.".repeat(20)),
        format!("{}x", "#.a.".repeat(15)),
    ] {
        assert!(topic_matches(&[&pattern], &words).is_empty(), "{pattern}");
        assert_eq!(topic_matches(&[&pattern], &format!("{words}.x")), [pattern]);
    }
}

#[test]
fn topic_unbind_prunes_and_keeps_siblings() {
    let vh = vhost();
    queue(&vh, "q");
    bind(&vh, "q", "amq.topic", "a.#.b");
    bind(&vh, "q", "amq.topic", "a.*");
    vh.unbind_queue(CONN, "q", "amq.topic", "a.#.b", &FieldTable::default())
        .unwrap();
    assert_eq!(publish(&vh, "amq.topic", "a.x.b"), 0);
    assert_eq!(publish(&vh, "amq.topic", "a.x"), 1);
}

#[test]
fn a_queue_matched_by_several_bindings_gets_one_copy() {
    let vh = vhost();
    queue(&vh, "q");
    bind(&vh, "q", "amq.topic", "#");
    bind(&vh, "q", "amq.topic", "a.*");
    bind(&vh, "q", "amq.topic", "#.#");
    assert_eq!(publish(&vh, "amq.topic", "a.b"), 1);
    assert_eq!(counts(&vh, &["q"]), [1]);
}

fn headers_table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn publish_headers(vh: &VHost, headers: &[(&str, FieldValue)]) -> usize {
    let props = BasicProperties {
        headers: Some(headers_table(headers)),
        ..BasicProperties::default()
    };
    routed(
        vh.publish(false, message_with("amq.headers", "", "m", props))
            .unwrap(),
    )
}

fn s(v: &str) -> FieldValue {
    FieldValue::from(v)
}

#[test]
fn headers_all_and_any() {
    let vh = vhost();
    for (q, args) in [
        (
            "all",
            vec![("x-match", s("all")), ("a", s("1")), ("b", s("2"))],
        ),
        (
            "any",
            vec![("x-match", s("any")), ("a", s("1")), ("b", s("2"))],
        ),
        ("default", vec![("a", s("1"))]),
        ("void", vec![("c", FieldValue::Void)]),
        ("int", vec![("n", FieldValue::I32(5))]),
    ] {
        queue(&vh, q);
        vh.bind_queue(CONN, q, "amq.headers", "", headers_table(&args))
            .unwrap();
    }
    let got = |headers: &[(&str, FieldValue)]| {
        let before = counts(&vh, &["all", "any", "default", "void", "int"]);
        publish_headers(&vh, headers);
        let after = counts(&vh, &["all", "any", "default", "void", "int"]);
        ["all", "any", "default", "void", "int"]
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| a > *b)
            .map(|(q, _)| *q)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        got(&[("a", s("1")), ("b", s("2"))]),
        ["all", "any", "default"]
    );
    assert_eq!(got(&[("a", s("1"))]), ["any", "default"]);
    assert_eq!(got(&[("b", s("2"))]), ["any"]);
    assert_eq!(got(&[("a", s("x"))]), Vec::<&str>::new());
    assert_eq!(got(&[("c", FieldValue::I64(9))]), ["void"]);
    // Integers compare by value whatever their width.
    assert_eq!(got(&[("n", FieldValue::I64(5))]), ["int"]);
    assert_eq!(got(&[("n", FieldValue::I64(6))]), Vec::<&str>::new());
}

#[test]
fn headers_x_arguments_count_only_with_x() {
    let vh = vhost();
    for (q, mode) in [
        ("plain", "all"),
        ("withx", "all-with-x"),
        ("anyx", "any-with-x"),
    ] {
        queue(&vh, q);
        let args = headers_table(&[("x-match", s(mode)), ("x-k", s("v"))]);
        vh.bind_queue(CONN, q, "amq.match", "", args).unwrap();
    }
    let props = |headers: &[(&str, FieldValue)]| BasicProperties {
        headers: Some(headers_table(headers)),
        ..BasicProperties::default()
    };
    // "all" with only x- arguments has nothing to compare: it matches everything.
    vh.publish(false, message_with("amq.match", "", "m", props(&[])))
        .unwrap();
    assert_eq!(counts(&vh, &["plain", "withx", "anyx"]), [1, 0, 0]);
    vh.publish(
        false,
        message_with("amq.match", "", "m", props(&[("x-k", s("v"))])),
    )
    .unwrap();
    assert_eq!(counts(&vh, &["plain", "withx", "anyx"]), [2, 1, 1]);
}

#[test]
fn headers_binding_with_bad_x_match_is_refused() {
    let vh = vhost();
    queue(&vh, "q");
    let err = vh
        .bind_queue(
            CONN,
            "q",
            "amq.headers",
            "",
            headers_table(&[("x-match", s("some"))]),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x"
    );
}

#[test]
fn exchange_to_exchange_routing_follows_bindings_and_stops_on_cycles() {
    let vh = vhost();
    exchange(&vh, "x1", "fanout");
    exchange(&vh, "x2", "fanout");
    exchange(&vh, "x3", "direct");
    let none = FieldTable::default;
    vh.bind_exchange("x2", "x1", "", none()).unwrap();
    vh.bind_exchange("x1", "x2", "", none()).unwrap(); // cycle x1 <-> x2
    vh.bind_exchange("x3", "x2", "", none()).unwrap();
    vh.bind_exchange("x1", "x1", "", none()).unwrap(); // self-loop
    queue(&vh, "q");
    queue(&vh, "r");
    bind(&vh, "q", "x3", "k");
    bind(&vh, "q", "x1", ""); // a second path to q
    bind(&vh, "r", "x2", "");
    assert_eq!(publish(&vh, "x1", "k"), 2);
    assert_eq!(counts(&vh, &["q", "r"]), [1, 1]);
    assert_eq!(publish(&vh, "x2", "other"), 2);
    assert_eq!(counts(&vh, &["q", "r"]), [2, 2]);
    vh.unbind_exchange("x3", "x2", "", &none()).unwrap();
    vh.unbind_queue(CONN, "q", "x1", "", &none()).unwrap();
    assert_eq!(publish(&vh, "x1", "k"), 1);
}

#[test]
fn mandatory_unroutable_message_comes_back() {
    let vh = vhost();
    match vh
        .publish(true, message("amq.direct", "nowhere", "hello"))
        .unwrap()
    {
        PublishOutcome::Unroutable(m) => assert_eq!(body(&m), "hello"),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    assert!(matches!(
        vh.publish(false, message("amq.direct", "nowhere", "x"))
            .unwrap(),
        PublishOutcome::Dropped
    ));
}

#[test]
fn publishing_to_missing_or_internal_exchanges_fails() {
    let vh = vhost();
    let err = vh.publish(false, message("nope", "k", "m")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    assert_eq!(err.reply_code(), 404);
    let flags = ExchangeFlags {
        internal: true,
        ..ExchangeFlags::default()
    };
    vh.declare_exchange("inner", "fanout", flags, FieldTable::default())
        .unwrap();
    let err = vh.publish(false, message("inner", "k", "m")).unwrap_err();
    assert_eq!(
        err,
        BrokerError::AccessRefused(
            "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'".into()
        )
    );
    // Reachable through an exchange binding.
    exchange(&vh, "outer", "fanout");
    vh.bind_exchange("inner", "outer", "", FieldTable::default())
        .unwrap();
    queue(&vh, "q");
    bind(&vh, "q", "inner", "");
    assert_eq!(publish(&vh, "outer", ""), 1);
}

#[test]
fn a_cached_handle_goes_stale_when_its_exchange_is_deleted() {
    let vh = vhost();
    exchange(&vh, "x", "fanout");
    let handle = vh.exchange("x").unwrap();
    vh.delete_exchange("x", false).unwrap();
    assert!(handle.is_deleted());
    let err = vh
        .publish_to(&handle, false, message("x", "", "m"))
        .unwrap_err();
    assert_eq!(err.reply_code(), 404);
}

#[test]
fn fanout_is_one_shared_message() {
    let vh = vhost();
    for q in ["a", "b"] {
        queue(&vh, q);
        bind(&vh, q, "amq.fanout", "");
    }
    publish(&vh, "amq.fanout", "");
    let (mut ch, _sink) = channel(&vh, 1);
    let a = ch.get("a", true).unwrap().unwrap();
    let b = ch.get("b", true).unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&a.message, &b.message));
}
