//! Queue arguments (`x-...`): parsed into [`QueueArguments`] at declare, and compared on
//! redeclaration the way RabbitMQ compares them.
//!
//! RabbitMQ's arguments (TTL, length limits, dead-lettering, priorities, single active
//! consumer) are validated and compared on redeclaration the way RabbitMQ does
//! (`rabbit_amqqueue:declare_args/0`, `rabbit_misc:assert_args_equivalence/4`); lockgate's
//! own (consumer timeouts, delivery limits, retry delays, message groups, deduplication) follow
//! the same rules. A policy sets the same settings under keys without the `x-` prefix
//! ([`QueueArguments::from_policy_key`]).

use lockgate_wire::{FieldTable, FieldValue, MAX_SHORTSTR};

use crate::error::{BrokerError, Resource};

/// What happens when a queue reaches `x-max-length` / `x-max-length-bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest messages (the default).
    DropHead,
    /// Refuse new messages (nack with confirms).
    RejectPublish,
    /// Refuse new messages and dead-letter them.
    RejectPublishDlx,
    /// Pause the publishers whose messages route to the full queue until it has room.
    Block,
}

/// What happens to a delivery that is not acknowledged within `x-consumer-timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Take the delivery back and requeue it for the next consumer; the channel stays open.
    #[default]
    Requeue,
    /// Close the channel with 406, as RabbitMQ does.
    CloseChannel,
}

/// `x-deduplication-window`: how many message ids, and for how long, a queue remembers.
/// At least one of the two is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupWindow {
    /// The last `count` message ids enqueued.
    pub count: Option<u64>,
    /// Message ids enqueued in the last `time_ms` milliseconds.
    pub time_ms: Option<u64>,
}

/// Typed queue arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueArguments {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds (never 0).
    pub expires: Option<u64>,
    /// `x-max-length`, ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`, body bytes of ready messages.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Option<Overflow>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key` (requires `x-dead-letter-exchange`).
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`, 0..=255.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-consumer-timeout`, milliseconds.
    pub consumer_timeout: Option<u64>,
    /// `x-consumer-timeout-action`.
    pub consumer_timeout_action: TimeoutAction,
    /// `x-delivery-limit`: redeliveries before the message is dead-lettered (or dropped).
    pub delivery_limit: Option<u64>,
    /// `x-retry-delay`, milliseconds: first delay before a requeued message is deliverable.
    pub retry_delay: Option<u64>,
    /// `x-retry-delay-max`, milliseconds: the doubling delay stops growing here.
    pub retry_delay_max: Option<u64>,
    /// `x-group-header`: the header whose value keeps a message group on one consumer.
    pub group_header: Option<String>,
    /// `x-deduplication-window`.
    pub dedup: Option<DedupWindow>,
}

/// The arguments RabbitMQ compares when a classic queue is redeclared, in its order (the first
/// that differs is the one reported).
const COMPARED: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-version",
    "x-queue-type",
    "x-consumer-timeout",
    "x-consumer-timeout-action",
    "x-delivery-limit",
    "x-retry-delay",
    "x-retry-delay-max",
    "x-group-header",
    "x-deduplication-window",
];

/// Policy keys and the queue arguments they set (RabbitMQ's policy names where it has one).
const POLICY_KEYS: &[(&str, &str)] = &[
    ("message-ttl", "x-message-ttl"),
    ("expires", "x-expires"),
    ("max-length", "x-max-length"),
    ("max-length-bytes", "x-max-length-bytes"),
    ("overflow", "x-overflow"),
    ("dead-letter-exchange", "x-dead-letter-exchange"),
    ("dead-letter-routing-key", "x-dead-letter-routing-key"),
    ("max-priority", "x-max-priority"),
    ("consumer-timeout", "x-consumer-timeout"),
    ("consumer-timeout-action", "x-consumer-timeout-action"),
    ("delivery-limit", "x-delivery-limit"),
    ("retry-delay", "x-retry-delay"),
    ("retry-delay-max", "x-retry-delay-max"),
    ("group-header", "x-group-header"),
    ("deduplication-window", "x-deduplication-window"),
];

/// RabbitMQ's upper bound for `x-message-ttl` / `x-expires` (`rabbit_misc:check_expiry`).
const MAX_EXPIRY_MS: i128 = 315_360_000_000;

impl QueueArguments {
    /// The queue argument a policy key sets ("max-length" -> "x-max-length"); `None` for a
    /// key that is not a queue setting.
    pub fn from_policy_key(key: &str) -> Option<&'static str> {
        POLICY_KEYS
            .iter()
            .find(|(policy, _)| *policy == key)
            .map(|(_, argument)| *argument)
    }

    /// Every policy key, for validation messages.
    pub fn policy_keys() -> impl Iterator<Item = &'static str> {
        POLICY_KEYS.iter().map(|(policy, _)| *policy)
    }

    /// Validates and parses a declaration's arguments. Unknown arguments are kept in the raw
    /// table and ignored, as RabbitMQ does.
    ///
    /// # Errors
    /// `PreconditionFailed` "invalid arg 'x-max-length' for queue 'q' in vhost '/': ..." for a
    /// wrong type or value.
    pub(crate) fn parse(table: &FieldTable, queue: &Resource<'_>) -> Result<Self, BrokerError> {
        let invalid = |key: &str, why: String| {
            BrokerError::precondition_failed(format_args!("invalid arg '{key}' for {queue}: {why}"))
        };
        let non_negative = |key: &str| -> Result<Option<u64>, BrokerError> {
            match table.get(key) {
                None => Ok(None),
                Some(value) => match integer(value) {
                    Some(v) if v >= 0 => u64::try_from(v)
                        .map(Some)
                        .map_err(|_| invalid(key, format!("{{value_too_large,{v}}}"))),
                    Some(v) => Err(invalid(key, format!("{{value_negative,{v}}}"))),
                    None => Err(invalid(
                        key,
                        format!("\"expected integer, got {}\"", type_name(value)),
                    )),
                },
            }
        };
        let expiry = |key: &str, zero_allowed: bool| -> Result<Option<u64>, BrokerError> {
            let Some(v) = non_negative(key)? else {
                return Ok(None);
            };
            if v == 0 && !zero_allowed {
                return Err(invalid(key, "{value_zero,0}".to_owned()));
            }
            if i128::from(v) > MAX_EXPIRY_MS {
                return Err(invalid(key, format!("{{value_too_large,{v}}}")));
            }
            Ok(Some(v))
        };
        let string = |key: &str| -> Result<Option<String>, BrokerError> {
            match table.get(key) {
                None => Ok(None),
                Some(FieldValue::LongString(bytes)) => {
                    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
                }
                Some(other) => Err(invalid(
                    key,
                    format!("{{unacceptable_type,{}}}", type_name(other)),
                )),
            }
        };

        // The checks go in RabbitMQ 3.10's order, so that a declaration with several bad
        // arguments is refused for the same one. First the dead-letter exchange's type, with
        // other wording: RabbitMQ's channel checks it before the queue's arguments.
        let dead_letter_exchange = match table.get("x-dead-letter-exchange") {
            None | Some(FieldValue::LongString(_)) => string("x-dead-letter-exchange")?,
            Some(other) => {
                return Err(BrokerError::precondition_failed(format_args!(
                    "invalid type '{}' for arg 'x-dead-letter-exchange' in {queue}",
                    type_name(other)
                )))
            }
        };
        match string("x-queue-type")?.as_deref() {
            None | Some("classic" | "quorum") => {}
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("\"unsupported queue type '{other}'\""),
                ))
            }
        }
        let expires = expiry("x-expires", false)?;
        let message_ttl = expiry("x-message-ttl", true)?;
        let dead_letter_routing_key = string("x-dead-letter-routing-key")?;
        // Both go out in basic.deliver as shortstrs: a longer one could never be delivered.
        for (key, name) in [
            ("x-dead-letter-exchange", &dead_letter_exchange),
            ("x-dead-letter-routing-key", &dead_letter_routing_key),
        ] {
            if let Some(name) = name.as_deref().filter(|n| n.len() > MAX_SHORTSTR) {
                return Err(invalid(key, format!("{{value_too_long,{}}}", name.len())));
            }
        }
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".to_owned(),
            ));
        }
        let max_length = non_negative("x-max-length")?;
        let max_length_bytes = non_negative("x-max-length-bytes")?;
        let max_priority =
            match non_negative("x-max-priority")? {
                None => None,
                Some(v) => Some(u8::try_from(v).map_err(|_| {
                    invalid("x-max-priority", format!("{{max_value_exceeded,{v}}}"))
                })?),
            };
        let overflow = match string("x-overflow")?.as_deref() {
            None => None,
            Some("drop-head") => Some(Overflow::DropHead),
            Some("reject-publish") => Some(Overflow::RejectPublish),
            Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
            Some("block") => Some(Overflow::Block),
            Some(_) => {
                // RabbitMQ 3.10 reports the bare atom here, without the value.
                return Err(invalid("x-overflow", "invalid_overflow".to_owned()));
            }
        };
        match string("x-queue-mode")?.as_deref() {
            None | Some("default" | "lazy") => {}
            Some(other) => {
                return Err(invalid(
                    "x-queue-mode",
                    format!("\"unsupported queue mode '{other}'\""),
                ))
            }
        }
        let single_active_consumer = match table.get("x-single-active-consumer") {
            None => false,
            Some(FieldValue::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(
                    "x-single-active-consumer",
                    format!("{{unacceptable_type,{}}}", type_name(other)),
                ))
            }
        };
        let consumer_timeout_action = match string("x-consumer-timeout-action")?.as_deref() {
            None | Some("requeue") => TimeoutAction::Requeue,
            Some("close-channel") => TimeoutAction::CloseChannel,
            Some(other) => {
                return Err(invalid(
                    "x-consumer-timeout-action",
                    format!("expected \"requeue\" or \"close-channel\", got \"{other}\""),
                ))
            }
        };
        let retry_delay = expiry("x-retry-delay", true)?;
        let retry_delay_max = expiry("x-retry-delay-max", true)?;
        if let (Some(delay), Some(max)) = (retry_delay, retry_delay_max) {
            if max < delay {
                return Err(invalid(
                    "x-retry-delay-max",
                    format!("{max} is below x-retry-delay {delay}"),
                ));
            }
        }
        let dedup = match table.get("x-deduplication-window") {
            None => None,
            Some(value) => Some(
                DedupWindow::parse(value).map_err(|why| invalid("x-deduplication-window", why))?,
            ),
        };
        Ok(Self {
            consumer_timeout: expiry("x-consumer-timeout", false)?,
            consumer_timeout_action,
            delivery_limit: non_negative("x-delivery-limit")?,
            retry_delay,
            retry_delay_max,
            group_header: string("x-group-header")?.filter(|h| !h.is_empty()),
            dedup,
            message_ttl,
            expires,
            max_length,
            max_length_bytes,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            single_active_consumer,
        })
    }
}

impl DedupWindow {
    /// An integer is a count; a string is comma-separated parts, each a count ("10000") or a
    /// duration with its unit ("500ms", "60s", "5m", "1h").
    fn parse(value: &FieldValue) -> Result<Self, String> {
        let mut window = Self::default();
        match value {
            FieldValue::LongString(text) => {
                let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_owned())?;
                for part in text.split(',').map(str::trim) {
                    if let Ok(count) = part.parse::<u64>() {
                        window.count = Some(count);
                    } else {
                        window.time_ms = Some(parse_duration_ms(part).ok_or_else(|| {
                            format!("\"{part}\" is neither a count nor a duration such as 60s")
                        })?);
                    }
                }
            }
            other => match integer(other) {
                Some(count) => {
                    window.count = Some(
                        u64::try_from(count).map_err(|_| format!("{{value_negative,{count}}}"))?,
                    );
                }
                None => return Err(format!("{{unacceptable_type,{}}}", type_name(other))),
            },
        }
        match window {
            Self {
                count: None | Some(0),
                time_ms: None | Some(0),
            } => Err("the window must hold a count or a duration above zero".to_owned()),
            window => Ok(window),
        }
    }
}

/// "500ms", "60s", "5m", "1h" in milliseconds.
fn parse_duration_ms(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// The consumer priority a `basic.consume` asks for: `x-priority`, any integer, 0 when
/// absent. RabbitMQ validates the type only (no range).
///
/// # Errors
/// `PreconditionFailed` "invalid arg 'x-priority' for queue 'q' in vhost '/': ...".
pub(crate) fn consume_priority(
    table: &FieldTable,
    queue: &Resource<'_>,
) -> Result<i64, BrokerError> {
    let Some(value) = table.get("x-priority") else {
        return Ok(0);
    };
    match integer(value) {
        // Saturating, though every integer field type fits an i64.
        Some(p) => Ok(i64::try_from(p).unwrap_or(if p < 0 { i64::MIN } else { i64::MAX })),
        None => Err(BrokerError::precondition_failed(format_args!(
            "invalid arg 'x-priority' for {queue}: \"expected integer, got {}\"",
            type_name(value)
        ))),
    }
}

/// RabbitMQ's redeclaration check over the compared argument names.
///
/// # Errors
/// `PreconditionFailed` "inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received
/// the value '10' of type 'long' but current is none".
pub(crate) fn assert_equivalent(
    current: &FieldTable,
    received: &FieldTable,
    resource: &Resource<'_>,
) -> Result<(), BrokerError> {
    assert_equivalent_args(current, received, resource, COMPARED)
}

/// RabbitMQ's `rabbit_misc:assert_args_equivalence` over `keys`, in their order (an
/// exchange's redeclaration compares only `alternate-exchange`).
///
/// # Errors
/// As [`assert_equivalent`].
pub(crate) fn assert_equivalent_args(
    current: &FieldTable,
    received: &FieldTable,
    resource: &Resource<'_>,
    keys: &[&str],
) -> Result<(), BrokerError> {
    for key in keys {
        let (cur, rec) = (current.get(key), received.get(key));
        let equivalent = match (cur, rec) {
            (None, None) => true,
            (Some(a), Some(b)) => same_class_and_value(a, b),
            (None, Some(v)) | (Some(v), None) => {
                // A classic queue may or may not carry x-queue-type.
                *key == "x-queue-type"
                    && matches!(v, FieldValue::LongString(s) if &s[..] == b"classic")
            }
        };
        if !equivalent {
            // Both present: RabbitMQ shows the bare values; one missing: `val/1` forms.
            let (received, current) = match (rec, cur) {
                (Some(r), Some(c)) => (
                    format!("'{}'", display_value(r)),
                    format!("'{}'", display_value(c)),
                ),
                _ => (describe(rec), describe(cur)),
            };
            return Err(BrokerError::inequivalent(
                key, resource, &received, &current,
            ));
        }
    }
    Ok(())
}

fn same_class_and_value(a: &FieldValue, b: &FieldValue) -> bool {
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => match (a, b) {
            (FieldValue::F32(x), FieldValue::F64(y)) | (FieldValue::F64(y), FieldValue::F32(x)) => {
                f64::from(*x) == *y
            }
            _ => a == b,
        },
        _ => false,
    }
}

/// RabbitMQ's `val/1`: "the value '10' of type 'long'" or "none".
fn describe(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".to_owned(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            display_value(v),
            type_name(v)
        ),
    }
}

/// A field's value as RabbitMQ's reply texts show it (strings without quotes).
pub(crate) fn display_value(value: &FieldValue) -> String {
    match value {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::F32(f) => f.to_string(),
        FieldValue::F64(f) => f.to_string(),
        other => match integer(other) {
            Some(i) => i.to_string(),
            None => format!("{other:?}"),
        },
    }
}

/// The integer value of any integer-typed field (RabbitMQ's `type_class` `int`).
pub(crate) fn integer(value: &FieldValue) -> Option<i128> {
    Some(match value {
        FieldValue::I8(v) => i128::from(*v),
        FieldValue::U8(v) => i128::from(*v),
        FieldValue::I16(v) => i128::from(*v),
        FieldValue::U16(v) => i128::from(*v),
        FieldValue::I32(v) => i128::from(*v),
        FieldValue::U32(v) => i128::from(*v),
        FieldValue::I64(v) => i128::from(*v),
        _ => return None,
    })
}

/// RabbitMQ's name for a field type ("longstr", "signedint", ...).
pub(crate) fn type_name(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal(_) => "decimal",
        FieldValue::LongString(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
        FieldValue::ByteArray(_) => "binary",
    }
}
