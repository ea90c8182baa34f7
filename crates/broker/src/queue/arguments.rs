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

/// Every queue argument RabbitMQ 3.10 knows (`rabbit_queue_type:arguments(queue_arguments)`,
/// all queue types together). One that the declared queue type does not support is refused
/// at declare ([`QueueType::supports`]); arguments RabbitMQ does not know are ignored there
/// and kept in the table here, or are lockgate's own ([`OWN`]).
const KNOWN: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-expires",
    "x-initial-cluster-size",
    "x-max-age",
    "x-max-in-memory-bytes",
    "x-max-in-memory-length",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-leader-locator",
    "x-queue-master-locator",
    "x-queue-mode",
    "x-queue-type",
    "x-queue-version",
    "x-quorum-initial-group-size",
    "x-single-active-consumer",
    "x-stream-max-segment-size-bytes",
];

/// What a classic queue supports of [`KNOWN`], in RabbitMQ 3.10's order
/// (`rabbit_queue_type:arguments(queue_arguments, rabbit_classic_queue)`): a redeclaration
/// is compared in it, and the first argument that differs is the one reported.
const CLASSIC: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
];

/// What a quorum queue supports of [`KNOWN`], in RabbitMQ 3.10's order (as [`CLASSIC`]).
const QUORUM: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// lockgate's own settings, which every queue type takes, compared after the type's own
/// arguments. `x-delivery-limit` is among them because lockgate honours it on classic queues
/// too (RabbitMQ 3.10 only in quorum queues, which compare it in their place).
const OWN: &[&str] = &[
    "x-consumer-timeout",
    "x-consumer-timeout-action",
    "x-delivery-limit",
    "x-retry-delay",
    "x-retry-delay-max",
    "x-group-header",
    "x-deduplication-window",
];

/// The queue type a declaration asks for with `x-queue-type`. Both make the same lockgate
/// queue; the type decides what a declaration may ask for, and the order in which a
/// redeclaration is compared, as in RabbitMQ 3.10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueType {
    /// `classic`, or no `x-queue-type`.
    Classic,
    /// `quorum`: durable, neither exclusive nor auto-delete, never server-named.
    Quorum,
}

impl QueueType {
    /// The type `table` declares (classic unless `x-queue-type` is "quorum").
    pub(crate) fn of(table: &FieldTable) -> Self {
        match table.get("x-queue-type") {
            Some(FieldValue::LongString(name)) if &name[..] == b"quorum" => Self::Quorum,
            _ => Self::Classic,
        }
    }

    /// RabbitMQ's module name for the type, as its reply texts show it.
    pub(crate) fn module(self) -> &'static str {
        match self {
            Self::Classic => "rabbit_classic_queue",
            Self::Quorum => "rabbit_quorum_queue",
        }
    }

    /// The arguments of [`KNOWN`] the type supports, in RabbitMQ's order.
    fn arguments(self) -> &'static [&'static str] {
        match self {
            Self::Classic => CLASSIC,
            Self::Quorum => QUORUM,
        }
    }

    /// Whether a declaration of this type may carry `key`: any argument outside [`KNOWN`],
    /// those of [`KNOWN`] the type supports, and lockgate's own.
    fn supports(self, key: &str) -> bool {
        !KNOWN.contains(&key) || self.arguments().contains(&key) || OWN.contains(&key)
    }

    /// The arguments a redeclaration is compared in, in order: the type's, then lockgate's
    /// own.
    fn compared(self) -> impl Iterator<Item = &'static str> {
        let arguments = self.arguments();
        arguments
            .iter()
            .chain(OWN.iter().filter(move |key| !arguments.contains(key)))
            .copied()
    }

    /// RabbitMQ 3.10's refusal of a new quorum queue's flags (`rabbit_quorum_queue:declare`),
    /// checked after its arguments: auto-delete first, then exclusive, then non-durable (an
    /// exclusive queue is never durable).
    ///
    /// # Errors
    /// `PreconditionFailed` "invalid property 'auto-delete' for queue 'q' in vhost '/'".
    pub(crate) fn check_flags(
        self,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        queue: &Resource<'_>,
    ) -> Result<(), BrokerError> {
        if self == Self::Classic {
            return Ok(());
        }
        let refused = if auto_delete {
            "auto-delete"
        } else if exclusive {
            "exclusive-owner"
        } else if !durable {
            "non-durable"
        } else {
            return Ok(());
        };
        Err(BrokerError::precondition_failed(format_args!(
            "invalid property '{refused}' for {queue}"
        )))
    }
}

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

    /// Validates and parses a table of arguments: a stored queue's, or a client's with a
    /// policy's over them. Unknown arguments are kept in the raw table and ignored, as
    /// RabbitMQ does.
    ///
    /// # Errors
    /// `PreconditionFailed` "invalid arg 'x-max-length' for queue 'q' in vhost '/': ..." for a
    /// wrong type or value.
    pub(crate) fn parse(table: &FieldTable, queue: &Resource<'_>) -> Result<Self, BrokerError> {
        Self::parse_as(table, queue, None)
    }

    /// Validates and parses a client's declaration as RabbitMQ 3.10 does for the queue type
    /// it asks for: besides [`QueueArguments::parse`]'s checks, the values of the arguments
    /// the type supports that lockgate otherwise ignores (`x-queue-version`,
    /// `x-dead-letter-strategy`, ...), and then a refusal of any argument RabbitMQ knows but
    /// the type does not support. The values of those are not checked first (RabbitMQ's
    /// `rabbit_amqqueue:check_declare_arguments`).
    ///
    /// # Errors
    /// As [`QueueArguments::parse`]; "invalid arg 'x-max-priority' for queue 'q' in vhost
    /// '/' of queue type rabbit_quorum_queue" for an argument the type does not support.
    pub(crate) fn parse_declared(
        table: &FieldTable,
        queue: &Resource<'_>,
    ) -> Result<Self, BrokerError> {
        Self::parse_as(table, queue, Some(QueueType::of(table)))
    }

    /// `declared`: the type of a client's declaration (see [`QueueArguments::parse_declared`]).
    fn parse_as(
        table: &FieldTable,
        queue: &Resource<'_>,
        declared: Option<QueueType>,
    ) -> Result<Self, BrokerError> {
        // Values checked only in a declaration of a type that supports them, and skipped in
        // one of a type that refuses them.
        let checked = |key: &str| declared.is_some_and(|t| t.supports(key));
        let skipped = |key: &str| declared.is_some_and(|t| !t.supports(key));
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
        if checked("x-dead-letter-strategy") {
            match string("x-dead-letter-strategy")?.as_deref() {
                None | Some("at-most-once" | "at-least-once") => {}
                Some(_) => {
                    return Err(invalid(
                        "x-dead-letter-strategy",
                        "invalid_dlx_strategy".to_owned(),
                    ))
                }
            }
        }
        let max_length = non_negative("x-max-length")?;
        let max_length_bytes = non_negative("x-max-length-bytes")?;
        for key in ["x-max-in-memory-length", "x-max-in-memory-bytes"] {
            if checked(key) {
                non_negative(key)?;
            }
        }
        let max_priority = if skipped("x-max-priority") {
            None
        } else {
            match non_negative("x-max-priority")? {
                None => None,
                Some(v) => Some(u8::try_from(v).map_err(|_| {
                    invalid("x-max-priority", format!("{{max_value_exceeded,{v}}}"))
                })?),
            }
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
        if !skipped("x-queue-mode") {
            match string("x-queue-mode")?.as_deref() {
                None | Some("default" | "lazy") => {}
                Some(other) => {
                    return Err(invalid(
                        "x-queue-mode",
                        format!("\"unsupported queue mode '{other}'\""),
                    ))
                }
            }
        }
        if checked("x-queue-version") {
            if let Some(value) = table.get("x-queue-version") {
                match integer(value) {
                    Some(1 | 2) => {}
                    Some(v) => {
                        return Err(invalid(
                            "x-queue-version",
                            format!("\"unsupported queue version '{v}'\""),
                        ))
                    }
                    None => {
                        return Err(invalid(
                            "x-queue-version",
                            format!("\"expected integer, got {}\"", type_name(value)),
                        ))
                    }
                }
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
        if checked("x-quorum-initial-group-size")
            && non_negative("x-quorum-initial-group-size")? == Some(0)
        {
            return Err(invalid(
                "x-quorum-initial-group-size",
                "{value_zero,0}".to_owned(),
            ));
        }
        if checked("x-queue-leader-locator") {
            match string("x-queue-leader-locator")?.as_deref() {
                None | Some("client-local" | "random" | "least-leaders" | "balanced") => {}
                Some(_) => {
                    return Err(invalid(
                        "x-queue-leader-locator",
                        "invalid_queue_locator_arg".to_owned(),
                    ))
                }
            }
        }
        if let Some(declared) = declared {
            // In the table's order (RabbitMQ's is the client's; a FieldTable sorts by name).
            if let Some(key) = table.0.keys().find(|key| !declared.supports(key)) {
                return Err(BrokerError::precondition_failed(format_args!(
                    "invalid arg '{key}' for {queue} of queue type {}",
                    declared.module()
                )));
            }
        }
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

/// Whether a queue declared with `table` refuses basic.get, as RabbitMQ 3.10 does: a quorum
/// queue with a single active consumer (`x-single-active-consumer` set by the client; RabbitMQ
/// applies no such policy to quorum queues).
pub(crate) fn refuses_get(table: &FieldTable) -> bool {
    QueueType::of(table) == QueueType::Quorum
        && matches!(
            table.get("x-single-active-consumer"),
            Some(FieldValue::Bool(true))
        )
}

/// RabbitMQ's redeclaration check of a queue declared with `current`, over the arguments
/// its type compares, in their order ([`QueueType::compared`]).
///
/// # Errors
/// `PreconditionFailed` "inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received
/// the value '10' of type 'long' but current is none".
pub(crate) fn assert_equivalent(
    current: &FieldTable,
    received: &FieldTable,
    resource: &Resource<'_>,
) -> Result<(), BrokerError> {
    let keys: Vec<&str> = QueueType::of(current).compared().collect();
    assert_equivalent_args(current, received, resource, &keys)
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
