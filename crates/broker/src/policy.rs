//! Policies, as RabbitMQ has them: a named set of queue settings (`definition`, keys without
//! the `x-` prefix: "max-length", "message-ttl", ...) applied to every queue whose name matches
//! a regular expression (`pattern`, unanchored). Of the policies matching a queue the one with
//! the highest `priority` applies (ties: the first name in byte order, so the choice never
//! depends on the order they were set in); arguments the client gave at declare win over it
//! ([`effective`]). Exchanges are matched the same way, among the policies that apply to
//! them; their one key is `alternate-exchange` ([`matching_exchange`]).
//!
//! A vhost holds its policies ([`crate::VHost::set_policies`], `vhost/policies.rs`); a queue's
//! effective arguments are recomputed when it is declared and whenever the policies change.
//! Where policies come from (the config file, the management API, a definitions import) is
//! the server's business.

use std::fmt;

use lockgate_wire::{FieldTable, FieldValue};
use regex::Regex;

use crate::error::Resource;
use crate::queue::arguments::QueueArguments;

/// RabbitMQ policy keys that lockgate accepts (so that a RabbitMQ definitions export imports
/// as is) but that have no effect: mirroring, federation, queue modes and versions, stream
/// settings.
const IGNORED_KEYS: &[&str] = &[
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "queue-mode",
    "queue-version",
    "queue-master-locator",
    "queue-leader-locator",
    "federation-upstream",
    "federation-upstream-set",
    "max-age",
    "stream-max-segment-size-bytes",
    "initial-cluster-size",
    "delivery-limit-action",
];

/// The exchange policy key: where an exchange sends what it routes nowhere, unless its own
/// `alternate-exchange` argument says otherwise.
const ALTERNATE_EXCHANGE: &str = "alternate-exchange";

/// What a policy applies to (RabbitMQ's `apply-to`). The only key exchanges read is
/// `alternate-exchange`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApplyTo {
    /// Queues and exchanges (RabbitMQ's default).
    #[default]
    All,
    /// Queues only (also RabbitMQ's `classic_queues` and `quorum_queues`).
    Queues,
    /// Exchanges only.
    Exchanges,
}

impl ApplyTo {
    /// Parses RabbitMQ's names: "all", "queues", "exchanges", "classic_queues",
    /// "quorum_queues".
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "all" => Some(Self::All),
            "queues" | "classic_queues" | "quorum_queues" => Some(Self::Queues),
            "exchanges" => Some(Self::Exchanges),
            _ => None,
        }
    }

    /// RabbitMQ's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Queues => "queues",
            Self::Exchanges => "exchanges",
        }
    }

    fn applies_to_queues(self) -> bool {
        matches!(self, Self::All | Self::Queues)
    }

    fn applies_to_exchanges(self) -> bool {
        matches!(self, Self::All | Self::Exchanges)
    }
}

/// A policy: which queues, how important, and what it sets.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Its name, unique in its vhost.
    pub name: String,
    /// The queue-name pattern (unanchored, as RabbitMQ).
    pub pattern: Regex,
    /// What it applies to.
    pub apply_to: ApplyTo,
    /// Higher wins when several match.
    pub priority: i64,
    /// The settings, under policy keys ("max-length", no `x-`).
    pub definition: FieldTable,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.pattern.as_str() == other.pattern.as_str()
            && self.apply_to == other.apply_to
            && self.priority == other.priority
            && self.definition == other.definition
    }
}

/// Why a policy was refused; the text names the policy and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// A validated policy for `vhost`: the pattern compiles, every key is a known policy key,
    /// and the values pass the same checks as the matching `x-` queue arguments.
    ///
    /// # Errors
    /// [`PolicyError`] naming the policy and the offending key.
    pub fn new(
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        definition: FieldTable,
    ) -> Result<Self, PolicyError> {
        if name.is_empty() {
            return Err(PolicyError("a policy needs a name".to_owned()));
        }
        let pattern = Regex::new(pattern).map_err(|e| {
            PolicyError(format!("policy '{name}': invalid pattern {pattern:?}: {e}"))
        })?;
        if definition.is_empty() {
            return Err(PolicyError(format!(
                "policy '{name}': the definition is empty"
            )));
        }
        for (key, value) in definition.iter() {
            if key == ALTERNATE_EXCHANGE {
                // RabbitMQ's rabbit_policies validation.
                if value.as_str().is_none() {
                    return Err(PolicyError(format!(
                        "policy '{name}': {value:?} is not a valid alternate exchange name"
                    )));
                }
                continue;
            }
            if QueueArguments::from_policy_key(key).is_none()
                && !IGNORED_KEYS.contains(&key.as_str())
            {
                let mut known: Vec<_> = QueueArguments::policy_keys().collect();
                known.push(ALTERNATE_EXCHANGE);
                return Err(PolicyError(format!(
                    "policy '{name}': unknown key '{key}' in the definition (known keys: {})",
                    known.join(", ")
                )));
            }
        }
        let policy = Self {
            name: name.to_owned(),
            pattern,
            apply_to,
            priority,
            definition,
        };
        let resource = Resource {
            kind: "policy",
            name,
            vhost,
        };
        QueueArguments::parse(&policy.arguments(), &resource).map_err(|e| {
            let text = e.text();
            PolicyError(
                text.strip_prefix("PRECONDITION_FAILED - ")
                    .unwrap_or(text)
                    .to_owned(),
            )
        })?;
        Ok(policy)
    }

    /// Whether it applies to a queue called `queue`.
    pub fn matches_queue(&self, queue: &str) -> bool {
        self.apply_to.applies_to_queues() && self.pattern.is_match(queue)
    }

    /// Whether it applies to an exchange called `exchange`.
    pub fn matches_exchange(&self, exchange: &str) -> bool {
        self.apply_to.applies_to_exchanges() && self.pattern.is_match(exchange)
    }

    /// Its `alternate-exchange` key.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.definition
            .get(ALTERNATE_EXCHANGE)
            .and_then(FieldValue::as_str)
    }

    /// The definition as `x-` queue arguments (keys lockgate ignores are left out).
    pub fn arguments(&self) -> FieldTable {
        self.definition
            .iter()
            .filter_map(|(key, value)| {
                QueueArguments::from_policy_key(key).map(|arg| (arg.to_owned(), value.clone()))
            })
            .collect()
    }

    /// The definition keys that lockgate accepts but ignores.
    pub fn ignored_keys(&self) -> Vec<&str> {
        self.definition
            .iter()
            .map(|(key, _)| key.as_str())
            .filter(|key| IGNORED_KEYS.contains(key))
            .collect()
    }
}

/// The policy that applies to `queue`: the highest priority among those matching, ties going
/// to the first name in byte order.
pub fn matching<'a>(policies: &'a [Policy], queue: &str) -> Option<&'a Policy> {
    highest(policies.iter().filter(|p| p.matches_queue(queue)))
}

/// The policy that applies to `exchange`, chosen as [`matching`] chooses a queue's: only
/// that one's keys count, as in RabbitMQ.
pub fn matching_exchange<'a>(policies: &'a [Policy], exchange: &str) -> Option<&'a Policy> {
    highest(policies.iter().filter(|p| p.matches_exchange(exchange)))
}

fn highest<'a>(candidates: impl Iterator<Item = &'a Policy>) -> Option<&'a Policy> {
    candidates.max_by(|a, b| a.priority.cmp(&b.priority).then(b.name.cmp(&a.name)))
}

/// A queue's effective arguments: what the client declared, plus every setting of `policy`
/// the client did not give itself (client arguments win, as in RabbitMQ), and the name of
/// the policy when one applies.
pub fn effective(client: &FieldTable, policy: Option<&Policy>) -> (FieldTable, Option<String>) {
    let Some(policy) = policy else {
        return (client.clone(), None);
    };
    let mut table = client.clone();
    for (key, value) in policy.arguments().iter() {
        if client.get(key).is_none() {
            table.insert(key.clone(), value.clone());
        }
    }
    (table, Some(policy.name.clone()))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lockgate_wire::FieldValue;

    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn text(s: &str) -> FieldValue {
        FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn policy(name: &str, pattern: &str, priority: i64, def: &[(&str, FieldValue)]) -> Policy {
        Policy::new("/", name, pattern, ApplyTo::Queues, priority, table(def)).unwrap()
    }

    #[test]
    fn highest_priority_matching_policy_applies() {
        let policies = vec![
            policy("low", "^orders", 1, &[("max-length", FieldValue::I64(10))]),
            policy(
                "high",
                "^orders\\.",
                5,
                &[("max-length", FieldValue::I64(20))],
            ),
            policy(
                "other",
                "billing",
                9,
                &[("max-length", FieldValue::I64(30))],
            ),
        ];
        assert_eq!(matching(&policies, "orders.eu").unwrap().name, "high");
        assert_eq!(matching(&policies, "orders").unwrap().name, "low");
        assert!(matching(&policies, "audit").is_none());
        // Unanchored, as RabbitMQ.
        assert_eq!(matching(&policies, "x-billing").unwrap().name, "other");
    }

    #[test]
    fn equal_priorities_pick_the_first_name() {
        let policies = vec![
            policy("b", ".*", 0, &[("max-length", FieldValue::I64(2))]),
            policy("a", ".*", 0, &[("max-length", FieldValue::I64(1))]),
        ];
        assert_eq!(matching(&policies, "q").unwrap().name, "a");
    }

    #[test]
    fn client_arguments_win_over_the_policy() {
        let p = policy(
            "p",
            ".*",
            0,
            &[
                ("max-length", FieldValue::I64(10)),
                ("message-ttl", FieldValue::I64(500)),
                ("ha-mode", text("all")),
            ],
        );
        let client = table(&[("x-max-length", FieldValue::I32(3))]);
        let (table, name) = effective(&client, Some(&p));
        assert_eq!(name.as_deref(), Some("p"));
        assert_eq!(table.get("x-max-length"), Some(&FieldValue::I32(3)));
        assert_eq!(table.get("x-message-ttl"), Some(&FieldValue::I64(500)));
        assert!(table.get("x-ha-mode").is_none());
        assert_eq!(p.ignored_keys(), vec!["ha-mode"]);
        assert_eq!(effective(&client, None), (client.clone(), None));
    }

    #[test]
    fn exchange_policies_do_not_apply_to_queues() {
        let p = Policy::new(
            "/",
            "p",
            ".*",
            ApplyTo::Exchanges,
            0,
            table(&[("alternate-exchange", text("ae"))]),
        )
        .unwrap();
        assert!(!p.matches_queue("q"));
        assert!(p.matches_exchange("q"));
        assert_eq!(p.alternate_exchange(), Some("ae"));
        assert!(p.ignored_keys().is_empty());
        let queues_only = policy("queues", ".*", 9, &[("max-length", FieldValue::I64(1))]);
        let both = [p, queues_only];
        assert_eq!(matching_exchange(&both, "x").unwrap().name, "p");
        assert_eq!(matching(&both, "x").unwrap().name, "queues");
        assert_eq!(ApplyTo::parse("classic_queues"), Some(ApplyTo::Queues));
        assert_eq!(ApplyTo::parse("bogus"), None);
    }

    #[test]
    fn bad_policies_name_the_key() {
        let err = |pattern: &str, def: &[(&str, FieldValue)]| {
            Policy::new("/", "p", pattern, ApplyTo::All, 0, table(def))
                .unwrap_err()
                .0
        };
        assert!(err("(", &[("max-length", FieldValue::I64(1))]).contains("invalid pattern"));
        let unknown = err(".*", &[("max-lenght", FieldValue::I64(1))]);
        assert!(unknown.contains("unknown key 'max-lenght'"), "{unknown}");
        let negative = err(".*", &[("max-length", FieldValue::I64(-1))]);
        assert_eq!(
            negative,
            "invalid arg 'x-max-length' for policy 'p' in vhost '/': {value_negative,-1}"
        );
        let overflow = err(".*", &[("overflow", text("sometimes"))]);
        assert!(overflow.contains("x-overflow"), "{overflow}");
        assert!(err(".*", &[]).contains("empty"));
        let ae = err(".*", &[("alternate-exchange", FieldValue::I64(1))]);
        assert!(ae.contains("not a valid alternate exchange name"), "{ae}");
    }
}
