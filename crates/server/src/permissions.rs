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
//! the user. The management API (`PUT /api/permissions/{vhost}/{user}`) and definitions
//! imports add stored entries; the config file wins for every (user, vhost) it names.
//!
//! [`Permissions`] is the runtime registry of users, permissions and policies: two layers
//! (config file, stored) and the effective tables computed from them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use lockgate_broker::{Broker, ExchangeKind, Policy, VHost};
use lockgate_wire::{FieldTable, FieldValue, Method};
use regex::Regex;
use serde::Deserialize;

use crate::auth::{AuthError, AuthUser, Credentials, PasswordHash};
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

impl PermissionConfig {
    /// `".*" ".*" ".*"` for `user` on `vhost`.
    pub fn full(user: &str, vhost: &str) -> Self {
        Self {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            configure: ".*".to_owned(),
            write: ".*".to_owned(),
            read: ".*".to_owned(),
        }
    }

    fn is_full(&self) -> bool {
        [&self.configure, &self.write, &self.read]
            .iter()
            .all(|p| p.as_str() == ".*")
    }
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

    /// Compiles an entry's three patterns.
    ///
    /// # Errors
    /// An invalid regular expression; the error names the key.
    pub fn compile(entry: &PermissionConfig) -> anyhow::Result<Self> {
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

/// A user who may log in, as the checks see it.
#[derive(Clone, Debug, PartialEq)]
pub struct UserEntry {
    /// Login name.
    pub name: String,
    /// The password hash (RabbitMQ's format).
    pub hash: PasswordHash,
    /// RabbitMQ tags (`administrator`, `monitoring`, ...).
    pub tags: Vec<String>,
    /// Only from loopback addresses.
    pub loopback_only: bool,
}

/// One source of users, permissions and policies: the config file, or what the management
/// API and definitions imports stored. Keys: user name; (user, vhost); (vhost, policy name).
#[derive(Clone, Debug, Default)]
pub struct Layer {
    /// Users by name.
    pub users: BTreeMap<String, UserEntry>,
    /// Permissions by (user, vhost).
    pub permissions: BTreeMap<(String, String), PermissionConfig>,
    /// Policies by (vhost, name).
    pub policies: BTreeMap<(String, String), Policy>,
}

impl Layer {
    /// The config file's users (each with full permissions on the vhosts it lists),
    /// `[[permissions]]` entries (replacing those grants) and policies.
    ///
    /// # Errors
    /// An entry names an unknown user or vhost, has an invalid regular expression, password
    /// hash or policy; the error names the entry and key.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut layer = Self::default();
        for (i, user) in config.users.iter().enumerate() {
            let hash = user.hash().with_context(|| format!("users[{i}]"))?;
            layer.users.insert(
                user.name.clone(),
                UserEntry {
                    name: user.name.clone(),
                    hash,
                    tags: user.tags.clone(),
                    loopback_only: user.loopback_only,
                },
            );
            for vhost in &user.vhosts {
                layer.permissions.insert(
                    (user.name.clone(), vhost.clone()),
                    PermissionConfig::full(&user.name, vhost),
                );
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
            VHostPermissions::compile(entry).with_context(|| format!("permissions[{i}]"))?;
            layer
                .permissions
                .insert((entry.user.clone(), entry.vhost.clone()), entry.clone());
        }
        for (i, entry) in config.policies.iter().enumerate() {
            let policy = crate::apply::policy_from_config(entry)
                .with_context(|| format!("policies[{i}]"))?;
            if layer
                .policies
                .insert((entry.vhost.clone(), entry.name.clone()), policy)
                .is_some()
            {
                bail!(
                    "policies[{i}].name: duplicate policy {:?} in vhost {:?}",
                    entry.name,
                    entry.vhost
                );
            }
        }
        Ok(layer)
    }
}

/// The effective tables: the config layer over the stored one.
#[derive(Debug, Default)]
struct Effective {
    users: HashMap<String, UserEntry>,
    table: HashMap<(String, String), Arc<VHostPermissions>>,
    permissions: BTreeMap<(String, String), PermissionConfig>,
    policies: BTreeMap<String, Vec<Policy>>,
}

#[derive(Debug, Default)]
struct State {
    config: Layer,
    stored: Layer,
    effective: Effective,
}

impl State {
    /// Recomputes the effective tables. The config file wins for every key it names;
    /// stored permissions of users that do not exist are left out.
    fn rebuild(&mut self) {
        let mut users: HashMap<String, UserEntry> = HashMap::new();
        for (name, user) in self.stored.users.iter().chain(&self.config.users) {
            users.insert(name.clone(), user.clone());
        }
        let mut permissions = BTreeMap::new();
        for (key, entry) in self
            .stored
            .permissions
            .iter()
            .chain(&self.config.permissions)
        {
            if users.contains_key(&key.0) {
                permissions.insert(key.clone(), entry.clone());
            }
        }
        let full = Arc::new(VHostPermissions::full());
        let table = permissions
            .iter()
            .filter_map(|(key, entry)| {
                let compiled = if entry.is_full() {
                    Arc::clone(&full)
                } else {
                    // Every entry was compiled once when it was accepted.
                    Arc::new(VHostPermissions::compile(entry).ok()?)
                };
                Some((key.clone(), compiled))
            })
            .collect();
        let mut by_key: BTreeMap<(String, String), Policy> = BTreeMap::new();
        for (key, policy) in self.stored.policies.iter().chain(&self.config.policies) {
            by_key.insert(key.clone(), policy.clone());
        }
        let mut policies: BTreeMap<String, Vec<Policy>> = BTreeMap::new();
        for ((vhost, _), policy) in by_key {
            policies.entry(vhost).or_default().push(policy);
        }
        self.effective = Effective {
            users,
            table,
            permissions,
            policies,
        };
    }
}

/// Who may log in and what they may do (users and permissions), and the policies: the config
/// file's entries over those stored through the management API. Read at every login and
/// connection.open (a short read lock), replaced on SIGHUP and by API writes.
#[derive(Debug, Default)]
pub struct Permissions {
    state: RwLock<State>,
}

/// A definition the config file names: the API may not change it (edit the file instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinedInConfig(pub String);

impl Permissions {
    /// The config file's users, permissions and policies (nothing stored yet).
    ///
    /// # Errors
    /// See [`Layer::from_config`].
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let permissions = Self::default();
        permissions.set_config(Layer::from_config(config)?);
        Ok(permissions)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        match self.state.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        match self.state.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Replaces the config file's layer (at start and on SIGHUP).
    pub fn set_config(&self, layer: Layer) {
        let mut state = self.write();
        state.config = layer;
        state.rebuild();
    }

    /// Replaces the stored layer (at start, from the store).
    pub fn set_stored(&self, layer: Layer) {
        let mut state = self.write();
        state.stored = layer;
        state.rebuild();
    }

    /// The user's permissions in `vhost`; `None` means the vhost is closed to the user.
    pub fn lookup(&self, user: &str, vhost: &str) -> Option<Arc<VHostPermissions>> {
        self.read()
            .effective
            .table
            .get(&(user.to_owned(), vhost.to_owned()))
            .cloned()
    }

    /// Checks credentials, and the loopback rule against `peer`. The same error whether the
    /// user exists or the password is wrong.
    ///
    /// # Errors
    /// [`AuthError::BadCredentials`] or [`AuthError::LoopbackOnly`].
    pub fn authenticate(
        &self,
        credentials: &Credentials,
        peer: IpAddr,
    ) -> Result<AuthUser, AuthError> {
        let user = self
            .read()
            .effective
            .users
            .get(&credentials.username)
            .filter(|u| u.hash.verify(&credentials.password))
            .cloned()
            .ok_or_else(|| AuthError::BadCredentials(credentials.username.clone()))?;
        if user.loopback_only && !peer.to_canonical().is_loopback() {
            return Err(AuthError::LoopbackOnly(user.name));
        }
        Ok(AuthUser {
            name: user.name,
            tags: user.tags,
        })
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserEntry> {
        let mut users: Vec<_> = self.read().effective.users.values().cloned().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// One user.
    pub fn user(&self, name: &str) -> Option<UserEntry> {
        self.read().effective.users.get(name).cloned()
    }

    /// Every permission entry, by (user, vhost).
    pub fn permissions(&self) -> Vec<PermissionConfig> {
        self.read()
            .effective
            .permissions
            .values()
            .cloned()
            .collect()
    }

    /// The policies of `vhost`, by name.
    pub fn policies(&self, vhost: &str) -> Vec<Policy> {
        self.read()
            .effective
            .policies
            .get(vhost)
            .cloned()
            .unwrap_or_default()
    }

    /// Every vhost that has policies, with them.
    pub fn all_policies(&self) -> BTreeMap<String, Vec<Policy>> {
        self.read().effective.policies.clone()
    }

    /// Changes the stored layer with `change`, unless `key` is one the config file names.
    ///
    /// # Errors
    /// [`DefinedInConfig`] naming the definition.
    pub fn change_stored<T>(
        &self,
        in_config: impl FnOnce(&Layer) -> Option<String>,
        change: impl FnOnce(&mut Layer) -> T,
    ) -> Result<T, DefinedInConfig> {
        let mut state = self.write();
        if let Some(what) = in_config(&state.config) {
            return Err(DefinedInConfig(what));
        }
        let out = change(&mut state.stored);
        state.rebuild();
        Ok(out)
    }

    /// Sets every vhost's policies in the broker to the effective ones; returns how many
    /// queues changed.
    pub fn push_policies(&self, broker: &Broker) -> usize {
        let policies = self.all_policies();
        let mut changed = 0;
        for name in broker.vhost_names() {
            let Some(vhost) = broker.vhost(&name) else {
                continue;
            };
            let wanted = policies.get(&name).cloned().unwrap_or_default();
            if *vhost.policies() != wanted {
                changed += vhost.set_policies(wanted);
            }
        }
        changed
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
        // Lengths first: most publishes name the default exchange "", and a memcmp call per
        // publish shows in profiles.
        let allowed = self.publish_allowed.as_deref().is_some_and(|allowed| {
            allowed.len() == exchange.len() && (exchange.is_empty() || allowed == exchange)
        });
        if allowed {
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

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn guest_only_from_loopback_and_wrong_passwords_refused() {
        let config = Config::parse(
            "[[users]]\nname = \"guest\"\npassword = \"guest\"\nloopback_only = true\n\
             [[users]]\nname = \"app\"\npassword = \"pw\"",
        )
        .unwrap();
        let perms = Permissions::from_config(&config).unwrap();
        let local = "127.0.0.1".parse().unwrap();
        let remote = "10.1.2.3".parse().unwrap();
        let guest = creds("guest", "guest");
        assert_eq!(perms.authenticate(&guest, local).unwrap().name, "guest");
        assert!(perms
            .authenticate(&guest, "::ffff:127.0.0.1".parse().unwrap())
            .is_ok());
        assert_eq!(
            perms.authenticate(&guest, remote),
            Err(AuthError::LoopbackOnly("guest".into()))
        );
        assert!(perms.authenticate(&creds("app", "pw"), remote).is_ok());
        assert_eq!(
            perms.authenticate(&creds("guest", "nope"), local),
            Err(AuthError::BadCredentials("guest".into()))
        );
        assert_eq!(
            perms.authenticate(&creds("nobody", "guest"), local),
            Err(AuthError::BadCredentials("nobody".into()))
        );
    }

    #[test]
    fn the_config_file_wins_over_stored_entries() {
        let perms = permissions("");
        let mut stored = Layer::default();
        let hash = PasswordHash::new("stored").unwrap();
        for name in ["admin", "api"] {
            stored.users.insert(
                name.into(),
                UserEntry {
                    name: name.into(),
                    hash: hash.clone(),
                    tags: Vec::new(),
                    loopback_only: false,
                },
            );
        }
        stored.permissions.insert(
            ("api".into(), "/".into()),
            PermissionConfig::full("api", "/"),
        );
        stored.permissions.insert(
            ("ghost".into(), "/".into()),
            PermissionConfig::full("ghost", "/"),
        );
        perms.set_stored(stored);
        let local = "127.0.0.1".parse().unwrap();
        // "admin" is in the config file: its password there wins.
        assert!(perms.authenticate(&creds("admin", "a"), local).is_ok());
        assert!(perms
            .authenticate(&creds("admin", "stored"), local)
            .is_err());
        assert!(perms.authenticate(&creds("api", "stored"), local).is_ok());
        assert!(perms.lookup("api", "/").is_some());
        // A stored permission of a user that does not exist opens nothing.
        assert!(perms.lookup("ghost", "/").is_none());
        let refused = perms.change_stored(
            |config| {
                config
                    .users
                    .contains_key("admin")
                    .then(|| "user 'admin'".to_owned())
            },
            |layer| layer.users.remove("admin"),
        );
        assert_eq!(refused, Err(DefinedInConfig("user 'admin'".into())));
        let removed = perms.change_stored(|_| None, |layer| layer.users.remove("api"));
        assert!(removed.unwrap().is_some());
        assert!(perms.authenticate(&creds("api", "stored"), local).is_err());
        assert!(perms.lookup("api", "/").is_none());
    }
}
