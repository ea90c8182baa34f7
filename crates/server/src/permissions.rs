//! Permissions per user and vhost, as RabbitMQ has them: three regular expressions
//! (configure, write, read) matched against the names of exchanges and queues, and the
//! mapping of AMQP operations to them (RabbitMQ's access-control guide):
//!
//! | operation | configure | write | read |
//! |---|---|---|---|
//! | exchange.declare (not passive), exchange.delete | exchange | | |
//! | queue.declare (not passive), queue.delete | queue | | |
//! | queue.declare with `x-dead-letter-exchange` | queue | exchange (DLX) | queue |
//! | queue.bind / unbind | | queue | exchange |
//! | exchange.bind / unbind | | destination | source |
//! | basic.publish | | exchange | |
//! | basic.get, basic.consume, queue.purge | | | queue |
//!
//! Passive declarations need no permission. As in RabbitMQ the patterns are unanchored, an
//! empty pattern means `^$`, and the default exchange is checked under the name
//! `amq.default`.
//!
//! Where they come from: a user's `vhosts = [...]` grants `".*" ".*" ".*"` on each listed vhost
//! (so the default guest user has full access to "/"); a `[[permissions]]` entry for a
//! (user, vhost) pair replaces that grant with its own patterns and also opens the vhost to
//! the user.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use anyhow::{bail, Context};
use lockgate_broker::{ExchangeKind, VHost};
use lockgate_wire::{FieldTable, FieldValue, Method};
use regex::Regex;
use serde::Deserialize;

use crate::config::Config;
use crate::error::AmqpError;
use crate::limits::QueueLimits;

/// One `[[permissions]]` entry: RabbitMQ's `set_permissions -p VHOST USER CONF WRITE READ`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    /// The user (must be a `[[users]]` entry).
    pub user: String,
    /// The vhost (must be a `[[vhosts]]` entry).
    pub vhost: String,
    /// Names of resources the user may declare and delete.
    pub configure: String,
    /// Names of resources the user may publish to (exchanges) or bind (destinations).
    pub write: String,
    /// Names of resources the user may consume from (queues) or bind from (exchanges).
    pub read: String,
}

/// What an operation needs on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Declare, delete.
    Configure,
    /// Publish to, bind a destination.
    Write,
    /// Consume, get, purge, bind from.
    Read,
}

/// The kind of resource, as it appears in RabbitMQ's refusal text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// An exchange.
    Exchange,
    /// A queue.
    Queue,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Exchange => "exchange",
            Self::Queue => "queue",
        })
    }
}

/// A compiled permission pattern. `.*` is common enough to skip the regex engine.
#[derive(Clone, Debug)]
enum Pattern {
    Any,
    Regex(Regex),
}

impl Pattern {
    fn compile(text: &str) -> Result<Self, regex::Error> {
        match text {
            ".*" => Ok(Self::Any),
            // RabbitMQ: an empty pattern is a synonym for "^$".
            "" => Regex::new("^$").map(Self::Regex),
            _ => Regex::new(text).map(Self::Regex),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Regex(re) => re.is_match(name),
        }
    }
}

/// A user's permissions in one vhost.
#[derive(Clone, Debug)]
pub struct VHostPermissions {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
}

impl VHostPermissions {
    /// Everything allowed: `".*" ".*" ".*"`.
    pub fn full() -> Self {
        Self {
            configure: Pattern::Any,
            write: Pattern::Any,
            read: Pattern::Any,
        }
    }

    fn compile(entry: &PermissionConfig) -> anyhow::Result<Self> {
        let compile = |key: &str, text: &str| {
            Pattern::compile(text).with_context(|| format!("{key}: invalid regular expression"))
        };
        Ok(Self {
            configure: compile("configure", &entry.configure)?,
            write: compile("write", &entry.write)?,
            read: compile("read", &entry.read)?,
        })
    }

    /// Whether `permission` is granted on a resource called `name`.
    pub fn allows(&self, permission: Permission, name: &str) -> bool {
        match permission {
            Permission::Configure => self.configure.matches(name),
            Permission::Write => self.write.matches(name),
            Permission::Read => self.read.matches(name),
        }
    }
}

/// Every (user, vhost) pair's permissions, compiled once at startup.
#[derive(Debug, Default)]
pub struct Permissions {
    table: HashMap<(String, String), Arc<VHostPermissions>>,
}

impl Permissions {
    /// Compiles the users' vhost grants and the `[[permissions]]` entries.
    ///
    /// # Errors
    /// An entry names an unknown user or vhost, or has an invalid regular expression; the
    /// error names the entry and key.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut table = HashMap::new();
        let full = Arc::new(VHostPermissions::full());
        for user in &config.users {
            for vhost in &user.vhosts {
                table.insert((user.name.clone(), vhost.clone()), Arc::clone(&full));
            }
        }
        for (i, entry) in config.permissions.iter().enumerate() {
            if !config.users.iter().any(|u| u.name == entry.user) {
                bail!(
                    "permissions[{i}].user: user {:?} is not declared in [[users]]",
                    entry.user
                );
            }
            if !config.vhosts.iter().any(|v| v.name == entry.vhost) {
                bail!(
                    "permissions[{i}].vhost: vhost {:?} is not declared in [[vhosts]]",
                    entry.vhost
                );
            }
            let compiled =
                VHostPermissions::compile(entry).with_context(|| format!("permissions[{i}]"))?;
            table.insert(
                (entry.user.clone(), entry.vhost.clone()),
                Arc::new(compiled),
            );
        }
        Ok(Self { table })
    }

    /// The user's permissions in `vhost`; `None` means the vhost is closed to the user.
    pub fn lookup(&self, user: &str, vhost: &str) -> Option<Arc<VHostPermissions>> {
        self.table
            .get(&(user.to_owned(), vhost.to_owned()))
            .cloned()
    }
}

/// One channel's access checks: the user's permissions in the connection's vhost, with the
/// last exchange allowed for publishing remembered so a stream of publishes to one exchange
/// matches the pattern once (RabbitMQ keeps a similar per-channel cache).
pub struct Access {
    user: Arc<str>,
    vhost: String,
    permissions: Arc<VHostPermissions>,
    /// The vhost's and the user's `max_queues`.
    queue_limits: QueueLimits,
    /// The queue.declare being checked creates a queue that counts against the user.
    creating: bool,
    publish_allowed: Option<String>,
}

impl Access {
    /// Checks for `user` in `vhost` with `permissions`, and the queue limits.
    pub fn new(
        user: Arc<str>,
        vhost: String,
        permissions: Arc<VHostPermissions>,
        queue_limits: QueueLimits,
    ) -> Self {
        Self {
            user,
            vhost,
            permissions,
            queue_limits,
            creating: false,
            publish_allowed: None,
        }
    }

    /// Checks `permission` on the resource `kind` named `name`.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED with RabbitMQ's text.
    pub fn check(
        &self,
        permission: Permission,
        kind: Resource,
        name: &str,
    ) -> Result<(), AmqpError> {
        let name = permission_name(kind, name);
        if self.permissions.allows(permission, name) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format_args!(
            "access to {kind} '{name}' in vhost '{}' refused for user '{}'",
            self.vhost, self.user
        )))
    }

    /// basic.publish: write on the exchange, cached for the last exchange allowed.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED with RabbitMQ's text.
    pub fn check_publish(&mut self, exchange: &str) -> Result<(), AmqpError> {
        if self.publish_allowed.as_deref() == Some(exchange) {
            return Ok(());
        }
        self.check(Permission::Write, Resource::Exchange, exchange)?;
        self.publish_allowed = Some(exchange.to_owned());
        Ok(())
    }

    /// Every permission check (and the vhost queue limit) a channel method needs, before the
    /// broker sees it. Methods that touch no exchange or queue pass.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED with RabbitMQ's text; 406 when a queue.declare would exceed the
    /// vhost's or the user's `max_queues`.
    pub fn check_method(&mut self, method: &Method, vhost: &VHost) -> Result<(), AmqpError> {
        use Permission::{Configure, Read, Write};
        use Resource::{Exchange, Queue};
        match method {
            Method::BasicPublish(m) => self.check_publish(&m.exchange),
            Method::BasicGet(m) => self.check(Read, Queue, &m.queue),
            Method::BasicConsume(m) => self.check(Read, Queue, &m.queue),
            Method::QueuePurge(m) => self.check(Read, Queue, &m.queue),
            Method::QueueDelete(m) => self.check(Configure, Queue, &m.queue),
            Method::ExchangeDelete(m) => self.check(Configure, Exchange, &m.exchange),
            Method::QueueBind(m) => {
                self.check(Write, Queue, &m.queue)?;
                self.check(Read, Exchange, &m.exchange)
            }
            Method::QueueUnbind(m) => {
                self.check(Write, Queue, &m.queue)?;
                self.check(Read, Exchange, &m.exchange)
            }
            Method::ExchangeBind(m) => {
                self.check(Write, Exchange, &m.destination)?;
                self.check(Read, Exchange, &m.source)
            }
            Method::ExchangeUnbind(m) => {
                self.check(Write, Exchange, &m.destination)?;
                self.check(Read, Exchange, &m.source)
            }
            // An unknown type is refused first (503), as RabbitMQ checks the type first.
            Method::ExchangeDeclare(m) if !m.passive && ExchangeKind::parse(&m.kind).is_ok() => {
                self.check(Configure, Exchange, &m.exchange)?;
                if let Some(ae) = long_string(&m.arguments, "alternate-exchange") {
                    self.check(Write, Exchange, &ae)?;
                    self.check(Read, Exchange, &m.exchange)?;
                }
                Ok(())
            }
            Method::QueueDeclare(m) if !m.passive => {
                // A server-named queue is checked as RabbitMQ would see it: "amq.gen-...".
                let name = if m.queue.is_empty() {
                    "amq.gen-"
                } else {
                    &m.queue
                };
                self.check(Configure, Queue, name)?;
                if let Some(dlx) = long_string(&m.arguments, "x-dead-letter-exchange") {
                    self.check(Write, Exchange, &dlx)?;
                    self.check(Read, Queue, name)?;
                }
                self.creating = false;
                self.creating = self.queue_limits.check(&self.user, vhost, &m.queue)?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// After a queue.declare succeeded: counts the queue against the user's `max_queues` when
    /// the declaration created it.
    pub fn queue_declared(&mut self, vhost: &VHost, queue: &str) {
        if std::mem::take(&mut self.creating) {
            if let Some(queue) = vhost.queue(queue) {
                self.queue_limits.created(&queue);
            }
        }
    }
}

/// A long-string argument as text.
fn long_string(arguments: &FieldTable, key: &str) -> Option<String> {
    match arguments.get(key) {
        Some(FieldValue::LongString(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    }
}

/// RabbitMQ checks the default exchange ("") under the name `amq.default`.
fn permission_name(kind: Resource, name: &str) -> &str {
    if kind == Resource::Exchange && name.is_empty() {
        "amq.default"
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permissions(extra: &str) -> Permissions {
        let config = Config::parse(&format!(
            "[[vhosts]]\nname = \"/\"\n[[vhosts]]\nname = \"other\"\n\
             [[users]]\nname = \"admin\"\npassword = \"a\"\nvhosts = [\"/\", \"other\"]\n\
             [[users]]\nname = \"app\"\npassword = \"p\"\nvhosts = []\n{extra}"
        ))
        .unwrap();
        Permissions::from_config(&config).unwrap()
    }

    fn access(perms: &Permissions, user: &str, vhost: &str) -> Access {
        Access::new(
            Arc::from(user),
            vhost.to_owned(),
            perms.lookup(user, vhost).unwrap(),
            QueueLimits::default(),
        )
    }

    #[test]
    fn vhosts_list_grants_everything() {
        let perms = permissions("");
        let admin = access(&perms, "admin", "other");
        for p in [Permission::Configure, Permission::Write, Permission::Read] {
            assert!(admin.check(p, Resource::Queue, "anything").is_ok());
        }
        assert!(perms.lookup("app", "/").is_none());
        assert!(perms.lookup("nobody", "/").is_none());
    }

    #[test]
    fn entries_restrict_and_refuse_with_rabbitmq_text() {
        let perms = permissions(
            "[[permissions]]\nuser = \"app\"\nvhost = \"/\"\n\
             configure = \"^app-\"\nwrite = \"^(amq\\\\.default|app-x)$\"\nread = \"\"",
        );
        let mut app = access(&perms, "app", "/");
        assert!(app
            .check(Permission::Configure, Resource::Queue, "app-q")
            .is_ok());
        let err = app
            .check(Permission::Configure, Resource::Queue, "q")
            .unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.text,
            "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'app'"
        );
        assert!(app.check_publish("").is_ok());
        assert!(app.check_publish("app-x").is_ok());
        assert!(app.check_publish("app-x").is_ok());
        assert_eq!(
            app.check_publish("amq.topic").unwrap_err().text,
            "ACCESS_REFUSED - access to exchange 'amq.topic' in vhost '/' refused for user 'app'"
        );
        // An empty pattern is "^$": nothing has an empty name.
        assert!(app
            .check(Permission::Read, Resource::Queue, "app-q")
            .is_err());
    }

    #[test]
    fn bad_entries_name_the_key() {
        let err = |extra: &str| {
            // Config::parse validates the permissions too.
            let parsed = Config::parse(&format!(
                "[[users]]\nname = \"u\"\npassword = \"p\"\n{extra}"
            ));
            format!("{:#}", parsed.unwrap_err())
        };
        let entry = |user: &str, vhost: &str, configure: &str| {
            format!(
                "[[permissions]]\nuser = \"{user}\"\nvhost = \"{vhost}\"\n\
                 configure = \"{configure}\"\nwrite = \"\"\nread = \"\""
            )
        };
        assert!(err(&entry("x", "/", ".*")).contains("permissions[0].user"));
        assert!(err(&entry("u", "nope", ".*")).contains("permissions[0].vhost"));
        let bad = err(&entry("u", "/", "("));
        assert!(
            bad.contains("permissions[0]") && bad.contains("configure"),
            "{bad}"
        );
    }
}
