//! Applying the config file to the broker: at start, on SIGHUP, and as a dry run for
//! `lockgate --check-config`.
//!
//! What the file declares exists afterwards, with the declared settings: vhosts, users,
//! permissions and policies (the config layer of [`Permissions`], replaced as a whole), and
//! exchanges, queues and bindings (declared unless they exist). Nothing else is removed: a
//! queue a client declared stays, and so does one the file declared and no longer lists. The
//! file removes something only when an entry says `delete = true`. Users, permissions and
//! policies the file stops listing are gone with it (they were never stored: the file is
//! their source), while those created through the management API are stored and stay.
//!
//! A reload is planned in full before anything changes ([`plan`]): a file that does not
//! parse, or declares a queue or exchange that exists with other settings, is refused as a
//! whole, logged, and the broker keeps running with the settings it had.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use lockgate_broker::{
    ApplyTo, Broker, BrokerConfig, ConnectionId, ExchangeFlags, Policy, QueueFlags, VHost,
};
use lockgate_wire::{FieldTable, FieldValue};
use tokio::signal::unix::Signal;
use tracing::{error, info, warn};

use crate::auth::HashingAlgorithm;
use crate::config::{BindingConfig, Config, ExchangeConfig, PolicyConfig, QueueConfig, UserConfig};
use crate::permissions::{Layer, Permissions};
use crate::tls::Reloadable;

/// The connection id the config file declares with (no client has it: ids start at 1).
const CONFIG_CONNECTION: ConnectionId = ConnectionId(0);

/// A TOML table as an AMQP field table: integers are `long`, strings `longstr`.
pub fn toml_table(table: &toml::Table) -> FieldTable {
    table
        .iter()
        .map(|(k, v)| (k.clone(), toml_value(v)))
        .collect()
}

fn toml_value(value: &toml::Value) -> FieldValue {
    match value {
        toml::Value::String(s) => FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        toml::Value::Integer(i) => FieldValue::I64(*i),
        toml::Value::Float(f) => FieldValue::F64(*f),
        toml::Value::Boolean(b) => FieldValue::Bool(*b),
        toml::Value::Datetime(d) => FieldValue::LongString(Bytes::from(d.to_string())),
        toml::Value::Array(items) => FieldValue::Array(items.iter().map(toml_value).collect()),
        toml::Value::Table(t) => FieldValue::Table(toml_table(t)),
    }
}

/// A `[[policies]]` entry as a broker policy.
///
/// # Errors
/// An unknown `apply_to`, an invalid pattern or definition; the text names the key.
pub fn policy_from_config(entry: &PolicyConfig) -> anyhow::Result<Policy> {
    let apply_to = ApplyTo::parse(&entry.apply_to).with_context(|| {
        format!(
            "apply_to: {:?} is not one of queues, exchanges, all",
            entry.apply_to
        )
    })?;
    Policy::new(
        &entry.vhost,
        &entry.name,
        &entry.pattern,
        apply_to,
        entry.priority,
        toml_table(&entry.definition),
    )
    .map_err(|e| {
        if e.0.contains("pattern") {
            anyhow::anyhow!("pattern: {e}")
        } else {
            match named_argument(&entry.definition, &e.0) {
                Some(key) => anyhow::anyhow!("definition.{key}: {e}"),
                None => anyhow::anyhow!("definition: {e}"),
            }
        }
    })
}

/// The key of `arguments` that a broker error text names, so that a config error points at
/// that key rather than at the whole entry: quoted (`invalid arg 'x-overflow' ...`, or
/// `'x-message-ttl'` for a policy's `message-ttl`) or else as a word (`hash-header and
/// hash-property are mutually exclusive`). Keys that a key path cannot spell are skipped.
fn named_argument<'a>(arguments: &'a toml::Table, text: &str) -> Option<&'a str> {
    let spellable = |key: &&String| {
        key.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let keys = || arguments.keys().filter(spellable);
    let quoted = || {
        keys()
            .find(|key| text.contains(&format!("'{key}'")))
            .or_else(|| keys().find(|key| text.contains(&format!("'x-{key}'"))))
    };
    let word = || {
        keys()
            .filter_map(|key| {
                text.match_indices(key.as_str())
                    .find(|(at, _)| {
                        let spelled = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
                        !text[..*at].ends_with(spelled)
                            && !text[at + key.len()..].starts_with(spelled)
                    })
                    .map(|(at, _)| (at, key))
            })
            .min()
            .map(|(_, key)| key)
    };
    quoted().or_else(word).map(String::as_str)
}

/// A declaration's error under its entry's key path (`queues[0]`), or under
/// `queues[0].arguments.x-overflow` when the text names one of the entry's arguments.
fn entry_error(error: &anyhow::Error, entry: &str, arguments: &toml::Table) -> anyhow::Error {
    let text = format!("{error:#}");
    match named_argument(arguments, &text) {
        Some(key) => anyhow::anyhow!("{entry}.arguments.{key}: {text}"),
        None => anyhow::anyhow!("{entry}: {text}"),
    }
}

/// Checks what the types alone do not: every entry's vhost is declared, policies compile,
/// and the topology declares cleanly (on a scratch in-memory broker, so the errors are
/// RabbitMQ's own texts).
///
/// # Errors
/// The first bad entry, as `queues[2]: ...`.
pub fn validate(config: &Config) -> anyhow::Result<()> {
    let declared = |vhost: &str| config.vhosts.iter().any(|v| v.name == vhost);
    let check_vhost = |key: String, vhost: &str| -> anyhow::Result<()> {
        if declared(vhost) {
            Ok(())
        } else {
            bail!("{key}.vhost: vhost {vhost:?} is not declared in [[vhosts]]")
        }
    };
    for (i, p) in config.policies.iter().enumerate() {
        check_vhost(format!("policies[{i}]"), &p.vhost)?;
    }
    let scratch = Broker::new(BrokerConfig {
        vhosts: config.vhosts.iter().map(|v| v.name.clone()).collect(),
        ..BrokerConfig::default()
    });
    for (i, x) in config.exchanges.iter().enumerate() {
        check_vhost(format!("exchanges[{i}]"), &x.vhost)?;
        if !x.delete {
            declare_exchange(&scratch, x)
                .map_err(|e| entry_error(&e, &format!("exchanges[{i}]"), &x.arguments))?;
        }
    }
    for (i, q) in config.queues.iter().enumerate() {
        check_vhost(format!("queues[{i}]"), &q.vhost)?;
        if !q.delete {
            declare_queue(&scratch, q)
                .map_err(|e| entry_error(&e, &format!("queues[{i}]"), &q.arguments))?;
        }
    }
    for (i, b) in config.bindings.iter().enumerate() {
        check_vhost(format!("bindings[{i}]"), &b.vhost)?;
        if !matches!(b.destination_type.as_str(), "queue" | "exchange") {
            bail!(
                "bindings[{i}].destination_type: {:?} is not queue or exchange",
                b.destination_type
            );
        }
        // Ends the file does not declare may exist in the running broker: checked there.
        let ends_declared = config
            .exchanges
            .iter()
            .any(|x| x.name == b.source && x.vhost == b.vhost && !x.delete)
            && if b.destination_type == "queue" {
                config
                    .queues
                    .iter()
                    .any(|q| q.name == b.destination && q.vhost == b.vhost && !q.delete)
            } else {
                config
                    .exchanges
                    .iter()
                    .any(|x| x.name == b.destination && x.vhost == b.vhost && !x.delete)
            };
        if ends_declared && !b.delete {
            bind(&scratch, b)
                .map_err(|e| entry_error(&e, &format!("bindings[{i}]"), &b.arguments))?;
        }
    }
    Ok(())
}

fn vhost_of(broker: &Broker, name: &str) -> anyhow::Result<Arc<VHost>> {
    broker
        .vhost(name)
        .with_context(|| format!("vhost: vhost {name:?} does not exist"))
}

fn declare_exchange(broker: &Broker, x: &ExchangeConfig) -> anyhow::Result<()> {
    let flags = ExchangeFlags {
        passive: false,
        durable: x.durable,
        auto_delete: x.auto_delete,
        internal: x.internal,
    };
    vhost_of(broker, &x.vhost)?
        .declare_exchange(&x.name, &x.kind, flags, toml_table(&x.arguments))
        .map_err(|e| anyhow::anyhow!("{}", e.text()))?;
    Ok(())
}

fn declare_queue(broker: &Broker, q: &QueueConfig) -> anyhow::Result<()> {
    let flags = QueueFlags {
        passive: false,
        durable: q.durable,
        exclusive: false,
        auto_delete: q.auto_delete,
    };
    vhost_of(broker, &q.vhost)?
        .declare_queue(CONFIG_CONNECTION, &q.name, flags, toml_table(&q.arguments))
        .map_err(|e| anyhow::anyhow!("{}", e.text()))?;
    Ok(())
}

fn bind(broker: &Broker, b: &BindingConfig) -> anyhow::Result<()> {
    let vhost = vhost_of(broker, &b.vhost)?;
    let arguments = toml_table(&b.arguments);
    let result = if b.destination_type == "queue" {
        vhost.bind_queue(
            CONFIG_CONNECTION,
            &b.destination,
            &b.source,
            &b.routing_key,
            arguments,
        )
    } else {
        vhost.bind_exchange(&b.destination, &b.source, &b.routing_key, arguments)
    };
    result.map_err(|e| anyhow::anyhow!("{}", e.text()))
}

fn unbind(broker: &Broker, b: &BindingConfig) -> anyhow::Result<()> {
    let vhost = vhost_of(broker, &b.vhost)?;
    let arguments = toml_table(&b.arguments);
    let result = if b.destination_type == "queue" {
        vhost.unbind_queue(
            CONFIG_CONNECTION,
            &b.destination,
            &b.source,
            &b.routing_key,
            &arguments,
        )
    } else {
        vhost.unbind_exchange(&b.destination, &b.source, &b.routing_key, &arguments)
    };
    result.map_err(|e| anyhow::anyhow!("{}", e.text()))
}

/// Integers of any width compare by value, as RabbitMQ's argument equivalence does;
/// `x-queue-type`, which the broker fills in, is left out.
fn same_arguments(a: &FieldTable, b: &FieldTable) -> bool {
    let keys: BTreeSet<&String> = a
        .iter()
        .chain(b.iter())
        .map(|(k, _)| k)
        .filter(|k| k.as_str() != "x-queue-type")
        .collect();
    keys.into_iter().all(|k| match (a.get(k), b.get(k)) {
        (Some(x), Some(y)) => match (integer(x), integer(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (None, None) => true,
        _ => false,
    })
}

fn integer(value: &FieldValue) -> Option<i128> {
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

/// One change to the broker.
#[derive(Clone, Debug)]
enum Action {
    AddVHost(String),
    DeclareExchange(ExchangeConfig),
    DeleteExchange(ExchangeConfig),
    DeclareQueue(QueueConfig),
    DeleteQueue(QueueConfig),
    Bind(BindingConfig),
    Unbind(BindingConfig),
}

/// What applying a config file changes: readable lines, the broker actions, and the keys
/// whose new value takes a restart.
#[derive(Debug, Default)]
pub struct Plan {
    /// One line per change (`+ queue 'orders' in vhost '/'`).
    pub changes: Vec<String>,
    /// Keys changed that only a restart applies.
    pub restart: Vec<String>,
    actions: Vec<Action>,
    /// The access definitions changed (users, permissions, policies).
    access_changed: bool,
}

fn args_text(table: &toml::Table) -> String {
    if table.is_empty() {
        String::new()
    } else {
        format!(", arguments {}", toml::Value::Table(table.clone()))
    }
}

/// Plans applying `new` to `broker`, whose config-file definitions came from `old`.
///
/// # Errors
/// A declared exchange or queue exists with other settings (`queues[2]: ...`); nothing may
/// be applied then.
pub fn plan(new: &Config, old: &Config, broker: &Broker) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for v in &new.vhosts {
        if broker.vhost(&v.name).is_none() {
            plan.changes.push(format!("+ vhost '{}'", v.name));
            plan.actions.push(Action::AddVHost(v.name.clone()));
        } else if old.vhosts.iter().any(|o| {
            o.name == v.name
                && (o.max_connections, o.max_queues) != (v.max_connections, v.max_queues)
        }) {
            plan.changes
                .push(format!("~ vhost '{}': limits changed", v.name));
        }
    }
    plan_access(new, old, &mut plan);
    for (i, x) in new.exchanges.iter().enumerate() {
        let existing = broker.vhost(&x.vhost).and_then(|v| v.exchange(&x.name));
        let what = format!("exchange '{}' in vhost '{}'", x.name, x.vhost);
        match (existing, x.delete) {
            (None, false) => {
                plan.changes.push(format!(
                    "+ {what} (type {}, durable {}{})",
                    x.kind,
                    x.durable,
                    args_text(&x.arguments)
                ));
                plan.actions.push(Action::DeclareExchange(x.clone()));
            }
            (Some(e), false) => {
                let same = e.kind().as_str() == x.kind
                    && e.durable() == x.durable
                    && e.auto_delete() == x.auto_delete
                    && e.internal() == x.internal
                    && same_arguments(e.arguments(), &toml_table(&x.arguments));
                if !same {
                    bail!(
                        "exchanges[{i}]: {what} exists with other settings (type {}, durable \
                         {}, auto_delete {}, internal {}); delete it first or change the file",
                        e.kind().as_str(),
                        e.durable(),
                        e.auto_delete(),
                        e.internal()
                    );
                }
            }
            (Some(_), true) => {
                plan.changes.push(format!("- {what} (delete = true)"));
                plan.actions.push(Action::DeleteExchange(x.clone()));
            }
            (None, true) => {}
        }
    }
    for (i, q) in new.queues.iter().enumerate() {
        let existing = broker.vhost(&q.vhost).and_then(|v| v.queue(&q.name));
        let what = format!("queue '{}' in vhost '{}'", q.name, q.vhost);
        match (existing, q.delete) {
            (None, false) => {
                plan.changes.push(format!(
                    "+ {what} (durable {}{})",
                    q.durable,
                    args_text(&q.arguments)
                ));
                plan.actions.push(Action::DeclareQueue(q.clone()));
            }
            (Some(e), false) => {
                let same = e.durable() == q.durable
                    && e.auto_delete() == q.auto_delete
                    && e.exclusive_owner().is_none()
                    && same_arguments(e.raw_arguments(), &toml_table(&q.arguments));
                if !same {
                    bail!(
                        "queues[{i}]: {what} exists with other settings (durable {}, \
                         auto_delete {}, exclusive {}, arguments {}); queue arguments cannot \
                         change in place: use a [[policies]] entry, or delete the queue first",
                        e.durable(),
                        e.auto_delete(),
                        e.exclusive_owner().is_some(),
                        crate::management::json::table_to_json(e.raw_arguments())
                    );
                }
            }
            (Some(e), true) => {
                plan.changes.push(format!(
                    "- {what} (delete = true; {} message(s) dropped)",
                    e.message_count()
                ));
                plan.actions.push(Action::DeleteQueue(q.clone()));
            }
            (None, true) => {}
        }
    }
    for b in &new.bindings {
        let exists = broker.vhost(&b.vhost).is_some_and(|v| {
            let arguments = toml_table(&b.arguments);
            v.bindings().iter().any(|s| {
                s.source == b.source
                    && s.destination == b.destination
                    && s.destination_is_queue == (b.destination_type == "queue")
                    && s.routing_key == b.routing_key
                    && same_arguments(&s.arguments, &arguments)
            })
        });
        let what = format!(
            "binding '{}' -> {} '{}' (routing key '{}') in vhost '{}'",
            b.source, b.destination_type, b.destination, b.routing_key, b.vhost
        );
        match (exists, b.delete) {
            (false, false) => {
                plan.changes.push(format!("+ {what}"));
                plan.actions.push(Action::Bind(b.clone()));
            }
            (true, true) => {
                plan.changes.push(format!("- {what} (delete = true)"));
                plan.actions.push(Action::Unbind(b.clone()));
            }
            _ => {}
        }
    }
    plan.restart = restart_keys(new, old);
    Ok(plan)
}

/// The user's hashing algorithm with the default filled in: a file that spells out
/// `rabbit_password_hashing_sha256` says the same as one that leaves it out.
fn hashing_algorithm(user: &UserConfig) -> Option<HashingAlgorithm> {
    user.hashing_algorithm
        .as_deref()
        .map_or(Some(HashingAlgorithm::default()), HashingAlgorithm::parse)
}

fn plan_access(new: &Config, old: &Config, plan: &mut Plan) {
    let before = plan.changes.len();
    for u in &new.users {
        match old.users.iter().find(|o| o.name == u.name) {
            None => plan
                .changes
                .push(format!("+ user '{}' (tags {:?})", u.name, u.tags)),
            Some(o) => {
                let mut what = Vec::new();
                if o.password != u.password
                    || o.password_hash != u.password_hash
                    || hashing_algorithm(o) != hashing_algorithm(u)
                {
                    what.push("password");
                }
                if o.tags != u.tags {
                    what.push("tags");
                }
                if o.loopback_only != u.loopback_only {
                    what.push("loopback_only");
                }
                if o.vhosts != u.vhosts {
                    what.push("vhosts");
                }
                if o.max_connections != u.max_connections || o.max_queues != u.max_queues {
                    what.push("limits");
                }
                if !what.is_empty() {
                    plan.changes
                        .push(format!("~ user '{}': {} changed", u.name, what.join(", ")));
                }
            }
        }
    }
    for o in &old.users {
        if !new.users.iter().any(|u| u.name == o.name) {
            plan.changes.push(format!(
                "- user '{}' (no longer in the file; users created through the API stay)",
                o.name
            ));
        }
    }
    for p in &new.permissions {
        let old_entry = old
            .permissions
            .iter()
            .find(|o| o.user == p.user && o.vhost == p.vhost);
        if old_entry != Some(p) {
            plan.changes.push(format!(
                "{} permissions of '{}' in vhost '{}': configure '{}' write '{}' read '{}'",
                if old_entry.is_some() { "~" } else { "+" },
                p.user,
                p.vhost,
                p.configure,
                p.write,
                p.read
            ));
        }
    }
    for o in &old.permissions {
        if !new
            .permissions
            .iter()
            .any(|p| p.user == o.user && p.vhost == o.vhost)
        {
            plan.changes.push(format!(
                "- permissions of '{}' in vhost '{}'",
                o.user, o.vhost
            ));
        }
    }
    for p in &new.policies {
        let old_entry = old
            .policies
            .iter()
            .find(|o| o.name == p.name && o.vhost == p.vhost);
        if old_entry != Some(p) {
            plan.changes.push(format!(
                "{} policy '{}' in vhost '{}' (pattern '{}', priority {}, apply_to {}): {}",
                if old_entry.is_some() { "~" } else { "+" },
                p.name,
                p.vhost,
                p.pattern,
                p.priority,
                p.apply_to,
                toml::Value::Table(p.definition.clone())
            ));
        }
    }
    for o in &old.policies {
        if !new
            .policies
            .iter()
            .any(|p| p.name == o.name && p.vhost == o.vhost)
        {
            plan.changes
                .push(format!("- policy '{}' in vhost '{}'", o.name, o.vhost));
        }
    }
    plan.access_changed = plan.changes.len() > before;
}

/// Keys read only at startup whose value differs.
fn restart_keys(new: &Config, old: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_owned());
        }
    };
    check("listen", new.listen != old.listen);
    check("data_dir", new.data_dir != old.data_dir);
    check("limits", new.limits != old.limits);
    check("memory", new.memory != old.memory);
    check("disk", new.disk != old.disk);
    check("log", new.log != old.log);
    check("tls", new.tls != old.tls);
    check("metrics", new.metrics != old.metrics);
    check("management", new.management != old.management);
    check(
        "consumer_timeout",
        new.consumer_timeout != old.consumer_timeout,
    );
    keys
}

impl Plan {
    /// The plan as text, for `--check-config` and the log.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if self.changes.is_empty() {
            out.push_str("no changes\n");
        }
        for line in &self.changes {
            let _ = writeln!(out, "  {line}");
        }
        if !self.restart.is_empty() {
            let _ = writeln!(
                out,
                "  ! needs a restart to take effect: {}",
                self.restart.join(", ")
            );
        }
        out
    }

    /// Applies the plan: vhosts, the config layer of users, permissions and policies, then
    /// the topology. Returns the errors of actions that failed (a client changed something
    /// between planning and applying); the others are applied.
    pub async fn apply(
        &self,
        new: &Config,
        broker: &Broker,
        permissions: &Permissions,
    ) -> anyhow::Result<Vec<String>> {
        for action in &self.actions {
            if let Action::AddVHost(name) = action {
                broker.add_vhost(name);
            }
        }
        if self.access_changed
            || self
                .actions
                .iter()
                .any(|a| matches!(a, Action::AddVHost(_)))
        {
            permissions.set_config(Layer::from_config(new)?);
        }
        let mut errors = Vec::new();
        let mut run = |what: String, result: anyhow::Result<()>| {
            if let Err(e) = result {
                errors.push(format!("{what}: {e:#}"));
            }
        };
        // Declarations first (exchanges, queues, then bindings between them), removals after.
        for action in &self.actions {
            match action {
                Action::DeclareExchange(x) => run(
                    format!("exchange '{}'", x.name),
                    declare_exchange(broker, x),
                ),
                Action::DeclareQueue(q) => {
                    run(format!("queue '{}'", q.name), declare_queue(broker, q));
                }
                _ => {}
            }
        }
        for action in &self.actions {
            match action {
                Action::Bind(b) => run(format!("binding '{}'", b.source), bind(broker, b)),
                Action::Unbind(b) => run(format!("binding '{}'", b.source), unbind(broker, b)),
                _ => {}
            }
        }
        for action in &self.actions {
            match action {
                Action::DeleteQueue(q) => run(
                    format!("queue '{}'", q.name),
                    vhost_of(broker, &q.vhost).and_then(|v| {
                        v.delete_queue(CONFIG_CONNECTION, &q.name, false, false)
                            .map(drop)
                            .map_err(|e| anyhow::anyhow!("{}", e.text()))
                    }),
                ),
                Action::DeleteExchange(x) => run(
                    format!("exchange '{}'", x.name),
                    vhost_of(broker, &x.vhost).and_then(|v| {
                        v.delete_exchange(&x.name, false)
                            .map_err(|e| anyhow::anyhow!("{}", e.text()))
                    }),
                ),
                _ => {}
            }
        }
        // Policies last: queues declared above get them at declare, existing ones now.
        permissions.push_policies(broker);
        if let Some(commit) = broker.sync() {
            commit
                .wait()
                .await
                .map_err(|e| anyhow::anyhow!("writing the declared definitions: {e}"))?;
        }
        Ok(errors)
    }
}

/// The plan's error with the file, line and key, as a config error reads.
fn located(path: Option<&Path>, error: &anyhow::Error) -> String {
    let full = format!("{error:#}");
    let Some(path) = path else { return full };
    let (key, message) = crate::config::split_key(&full);
    let line = std::fs::read_to_string(path).map_or(1, |text| crate::config::locate(&text, &key));
    format!(
        "config file {}, line {line}, key {key}: {message}",
        path.display()
    )
}

/// The plain-text passwords the file still has: (user name, warning naming the key).
fn plain_passwords(config: &Config) -> impl Iterator<Item = (&str, String)> {
    config
        .users
        .iter()
        .enumerate()
        .filter(|(_, user)| user.password.0.is_some())
        .map(|(i, user)| {
            (
                user.name.as_str(),
                format!(
                    "users[{i}].password is plain text in the config file: replace it with \
                     password_hash (`lockgate hash-password`)"
                ),
            )
        })
}

/// Logs the plain-text passwords the file still has.
pub fn warn_plain_passwords(config: &Config) {
    for (user, warning) in plain_passwords(config) {
        warn!(user = %user, "{warning}");
    }
}

/// At startup, after the store's recovery: applies the config file to the broker. Errors are
/// fatal (the broker does not start half-configured).
///
/// # Errors
/// A declared exchange or queue exists with other settings, or a declaration failed.
pub async fn at_start(
    config: &Config,
    path: Option<&Path>,
    broker: &Broker,
    permissions: &Permissions,
) -> anyhow::Result<()> {
    warn_plain_passwords(config);
    // The config layer is already in place (built with the context); `old` = `new` so only
    // the topology and vhosts are planned.
    let plan = plan(config, config, broker).map_err(|e| anyhow::anyhow!(located(path, &e)))?;
    let errors = plan.apply(config, broker, permissions).await?;
    if let Some(first) = errors.first() {
        bail!("applying the config file: {first}");
    }
    if !plan.changes.is_empty() {
        info!(changes = plan.changes.len(), "config file applied");
    }
    Ok(())
}

/// The one SIGHUP handler: re-reads the config file (when the broker was started with one)
/// and applies it, then reloads every TLS certificate. A file that does not load or plan is
/// logged with its file, line and key, and nothing changes.
pub fn reload_on_sighup(
    mut hangup: Signal,
    path: Option<PathBuf>,
    started_with: Config,
    overrides: crate::cli::Overrides,
    ctx: Arc<crate::connection::ServerContext>,
    certificates: Vec<Reloadable>,
) {
    tokio::spawn(async move {
        let mut current = started_with;
        while hangup.recv().await.is_some() {
            if let Some(path) = &path {
                match reload(path, &current, &overrides, &ctx).await {
                    Ok(new) => current = new,
                    Err(e) => error!(
                        error = %e,
                        "SIGHUP: config file not applied, keeping the previous settings"
                    ),
                }
            }
            crate::tls::reload_certificates(&certificates);
        }
    });
}

async fn reload(
    path: &Path,
    current: &Config,
    overrides: &crate::cli::Overrides,
    ctx: &crate::connection::ServerContext,
) -> anyhow::Result<Config> {
    let mut new = Config::load(path)?;
    overrides.apply(&mut new);
    let plan =
        plan(&new, current, &ctx.broker).map_err(|e| anyhow::anyhow!(located(Some(path), &e)))?;
    let errors = plan.apply(&new, &ctx.broker, &ctx.permissions).await?;
    ctx.limits.reconfigure(&new);
    warn_plain_passwords(&new);
    for line in &plan.changes {
        info!(change = %line, "SIGHUP: config change applied");
    }
    for e in &errors {
        error!(error = %e, "SIGHUP: a declaration from the config file failed");
    }
    if !plan.restart.is_empty() {
        warn!(
            keys = %plan.restart.join(", "),
            "SIGHUP: these settings changed in the config file and take effect after a restart"
        );
    }
    info!(
        path = %path.display(),
        changes = plan.changes.len(),
        "SIGHUP: config file reloaded"
    );
    Ok(new)
}

/// `lockgate --check-config FILE [--config CURRENT]`: validates FILE and prints what applying
/// it would change compared with CURRENT (the file the broker runs with), or with the
/// embedded defaults. Plain-text passwords in FILE are warned about on stderr, as at start.
/// Exit codes: 0 valid, 1 invalid (or a reload would be refused).
pub fn check_config(file: &Path, current: Option<&Path>) -> std::process::ExitCode {
    let new = match Config::load(file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lockgate: error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    for (_, warning) in plain_passwords(&new) {
        eprintln!(
            "lockgate: warning: config file {}: {warning}",
            file.display()
        );
    }
    let (old, against) = match current {
        Some(path) => match Config::load(path) {
            Ok(config) => (config, path.display().to_string()),
            Err(e) => {
                eprintln!("lockgate: error: the current config: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => (Config::default(), "the defaults".to_owned()),
    };
    // What the broker holds from the current file: a scratch broker with it applied.
    let scratch = Broker::new(BrokerConfig {
        vhosts: old.vhosts.iter().map(|v| v.name.clone()).collect(),
        ..BrokerConfig::default()
    });
    if let Ok(old_plan) = plan(&old, &old, &scratch) {
        let permissions = Permissions::default();
        let runtime = tokio::runtime::Builder::new_current_thread().build();
        if let Ok(runtime) = runtime {
            let _ = runtime.block_on(old_plan.apply(&old, &scratch, &permissions));
        }
    }
    match plan(&new, &old, &scratch) {
        Ok(plan) => {
            println!(
                "config file {} is valid; applying it (at start or on SIGHUP) compared with {against}:",
                file.display()
            );
            print!("{}", plan.describe());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lockgate: error: {}", located(Some(file), &e));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GUEST_PASSWORD_HASH;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    const TOPOLOGY: &str = r#"
        [[exchanges]]
        name = "events"
        type = "topic"
        [[queues]]
        name = "orders"
        arguments = { "x-max-length" = 10 }
        [[bindings]]
        source = "events"
        destination = "orders"
        routing_key = "order.*"
        [[policies]]
        name = "cap"
        pattern = "^orders"
        definition = { max-length = 5, message-ttl = 60000 }
    "#;

    #[tokio::test]
    async fn applying_twice_changes_nothing_the_second_time() {
        let new = config(TOPOLOGY);
        let old = Config::default();
        let broker = Broker::new(BrokerConfig::default());
        let permissions = Permissions::from_config(&old).unwrap();
        let first = plan(&new, &old, &broker).unwrap();
        assert_eq!(first.changes.len(), 4, "{:?}", first.changes);
        assert!(first
            .apply(&new, &broker, &permissions)
            .await
            .unwrap()
            .is_empty());
        let vhost = broker.vhost("/").unwrap();
        let queue = vhost.queue("orders").unwrap();
        // The client argument (here: the file's x-max-length) wins over the policy.
        assert_eq!(queue.arguments().max_length, Some(10));
        assert_eq!(queue.arguments().message_ttl, Some(60_000));
        assert_eq!(queue.policy_name().as_deref(), Some("cap"));
        let second = plan(&new, &new, &broker).unwrap();
        assert!(second.changes.is_empty(), "{:?}", second.changes);
    }

    #[tokio::test]
    async fn a_queue_with_other_arguments_is_a_conflict_and_delete_removes() {
        let broker = Broker::new(BrokerConfig::default());
        let old = Config::default();
        let permissions = Permissions::from_config(&old).unwrap();
        let first = config(TOPOLOGY);
        plan(&first, &old, &broker)
            .unwrap()
            .apply(&first, &broker, &permissions)
            .await
            .unwrap();
        let changed = config(&TOPOLOGY.replace("= 10", "= 20"));
        let e = format!("{:#}", plan(&changed, &first, &broker).unwrap_err());
        assert!(e.starts_with("queues[0]: queue 'orders'"), "{e}");
        let delete = config("[[queues]]\nname = \"orders\"\ndelete = true");
        let p = plan(&delete, &first, &broker).unwrap();
        assert!(p.changes.iter().any(|c| c.starts_with("- queue 'orders'")));
        assert!(p.changes.iter().any(|c| c.starts_with("- policy 'cap'")));
        p.apply(&delete, &broker, &permissions).await.unwrap();
        assert!(broker.vhost("/").unwrap().queue("orders").is_none());
        // Exchanges and bindings the file no longer lists are left alone.
        assert!(broker.vhost("/").unwrap().exchange("events").is_some());
    }

    #[test]
    fn bad_topology_names_the_entry() {
        assert!(
            err("[[queues]]\nname = \"q\"\narguments = { \"x-max-length\" = -1 }")
                .contains("queues[0]")
        );
        assert!(err("[[exchanges]]\nname = \"x\"\ntype = \"nope\"").contains("exchanges[0]"));
        assert!(err("[[queues]]\nvhost = \"nope\"\nname = \"q\"").contains("queues[0].vhost"));
        let e = err("[[policy]]\nname = \"p\"\npattern = \".*\"\ndefinition = { max-lenght = 1 }");
        assert!(e.contains("key policies[0].definition.max-lenght:"), "{e}");
        let e = err("[[policy]]\nname = \"p\"\npattern = \".*\"\ndefinition = { max-length = -1 }");
        assert!(e.contains("key policies[0].definition.max-length:"), "{e}");
        let e = err("[[queues]]\nname = \"q\"\narguments = { \"x-overflow\" = \"blok\" }");
        assert!(
            e.starts_with("line 3, key queues[0].arguments.x-overflow: "),
            "{e}"
        );
        // The exact name wins over a key that is the same name without `x-`.
        let e = err(
            "[[queues]]\nname = \"q\"\narguments = { overflow = 1, \"x-overflow\" = \"blok\" }",
        );
        assert!(e.contains("key queues[0].arguments.x-overflow:"), "{e}");
        let e = err(
            "[[exchanges]]\nname = \"h\"\ntype = \"x-delayed-message\"\n\
                     arguments = { \"x-delayed-type\" = \"nope\" }",
        );
        assert!(
            e.contains("key exchanges[0].arguments.x-delayed-type:"),
            "{e}"
        );
        let e = err("[[bindings]]\nsource = \"a\"\ndestination = \"b\"\ndestination_type = \"x\"");
        assert!(e.contains("bindings[0].destination_type"), "{e}");
    }

    #[test]
    fn spelling_out_the_default_hashing_algorithm_changes_nothing() {
        let user = format!("[[users]]\nname = \"a\"\npassword_hash = \"{GUEST_PASSWORD_HASH}\"\n");
        let implicit = config(&user);
        let explicit = config(&format!(
            "{user}hashing_algorithm = \"rabbit_password_hashing_sha256\"\n"
        ));
        let other = config("[[users]]\nname = \"a\"\npassword = \"other\"\n");
        let broker = Broker::new(BrokerConfig::default());
        assert!(plan(&explicit, &implicit, &broker)
            .unwrap()
            .changes
            .is_empty());
        assert!(plan(&implicit, &explicit, &broker)
            .unwrap()
            .changes
            .is_empty());
        let p = plan(&other, &explicit, &broker).unwrap();
        assert_eq!(p.changes, vec!["~ user 'a': password changed"]);
    }

    #[test]
    fn restart_only_keys_are_reported() {
        let new = config("listen = \"127.0.0.1:1\"\nconsumer_timeout = 5000");
        let broker = Broker::new(BrokerConfig::default());
        let p = plan(&new, &Config::default(), &broker).unwrap();
        assert_eq!(p.restart, vec!["listen", "consumer_timeout"]);
        assert!(p.describe().contains("needs a restart"));
    }
}
