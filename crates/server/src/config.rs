//! The broker's configuration: a TOML file (every key optional) overlaid by command-line flags.
//!
//! `config/lockgate.toml` in the repository is the documented reference of every key and its
//! default; [`Config::default`] must stay in step with it (a test checks this).
//! docs/configuration.md is the full reference, with the topology (`[[exchanges]]`,
//! `[[queues]]`, `[[bindings]]`), `[[policies]]` and hashed passwords.
//!
//! Errors name the file, the line and the key: `config file F, line N, key users[1].vhosts:
//! ...`. Type and syntax errors get their line from the TOML parser; checks made after
//! parsing name a key path, whose line is looked up in the file ([`locate`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::auth::{HashingAlgorithm, PasswordHash};

use crate::management::ManagementConfig;
use crate::metrics::MetricsConfig;
use crate::permissions::PermissionConfig;
use crate::tls::TlsConfig;

/// Everything the binary is configured with. Built once at startup and passed down.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the AMQP listener binds.
    pub listen: SocketAddr,
    /// Directory for persistent state.
    pub data_dir: PathBuf,
    /// Protocol and connection limits.
    pub limits: Limits,
    /// Memory alarm settings.
    pub memory: Memory,
    /// Disk alarm settings.
    pub disk: Disk,
    /// Logging.
    pub log: LogConfig,
    /// Virtual hosts that exist at startup.
    pub vhosts: Vec<VHostConfig>,
    /// Users that may log in.
    pub users: Vec<UserConfig>,
    /// `[[permissions]]`: per user and vhost configure/write/read patterns.
    pub permissions: Vec<PermissionConfig>,
    /// `[[exchanges]]` declared at start and on SIGHUP.
    pub exchanges: Vec<ExchangeConfig>,
    /// `[[queues]]` declared at start and on SIGHUP.
    pub queues: Vec<QueueConfig>,
    /// `[[bindings]]` made at start and on SIGHUP.
    pub bindings: Vec<BindingConfig>,
    /// `[[policies]]` (or `[[policy]]`): queue settings by name pattern.
    #[serde(alias = "policy")]
    pub policies: Vec<PolicyConfig>,
    /// Broker-wide default consumer timeout in milliseconds (RabbitMQ's `consumer_timeout`):
    /// a delivery not acknowledged in time is requeued. Queues override it with
    /// `x-consumer-timeout` or a policy. Absent: no timeout.
    pub consumer_timeout: Option<u64>,
    /// `[tls]`: the AMQPS listener.
    pub tls: TlsConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The management HTTP API and dashboard.
    pub management: ManagementConfig,
}

/// `[limits]`: what a client may negotiate or send.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum simultaneous client connections; 0 means unlimited.
    pub max_connections: u32,
    /// Highest channel number a client may open (proposed in connection.tune).
    pub channel_max: u16,
    /// Largest frame in bytes (proposed in connection.tune); at least 4096.
    pub frame_max: u32,
    /// Heartbeat interval in seconds proposed in connection.tune; 0 disables.
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
}

/// `[memory]`: the high watermark above which publishers are blocked.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Memory {
    /// A fraction of RAM or an absolute size.
    pub high_watermark: Watermark,
}

/// `[disk]`: the free space below which publishers are blocked.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Disk {
    /// Free space on the data directory's file system below which publishers are blocked:
    /// bytes, a size ("50MB"), or a float = a multiple of total RAM (RabbitMQ's
    /// `disk_free_limit.relative`).
    pub free_limit: Watermark,
}

impl Default for Disk {
    fn default() -> Self {
        // RabbitMQ's default disk_free_limit.
        Self {
            free_limit: Watermark::Bytes(50_000_000),
        }
    }
}

/// The memory high watermark as written in the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Watermark {
    /// A fraction of total RAM, `0.0 < f <= 1.0`.
    Fraction(f64),
    /// An absolute number of bytes.
    Bytes(u64),
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: a level (`info`) or directives (`lockgate=debug,info`).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[vhosts]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VHostConfig {
    /// The vhost name, as given in connection.open.
    pub name: String,
    /// Most client connections open to this vhost at once (absent: unlimited).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most queues in this vhost (absent: unlimited).
    #[serde(default)]
    pub max_queues: Option<u32>,
}

/// One `[[users]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// The password as plain text: still accepted for compatibility with older files, hashed
    /// in memory at load; prefer `password_hash`.
    #[serde(default)]
    pub password: PlainPassword,
    /// RabbitMQ's `password_hash`: base64(salt ++ SHA-256(salt ++ password)); produce one
    /// with `lockgate hash-password`.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// RabbitMQ's `hashing_algorithm` for `password_hash` (default
    /// `rabbit_password_hashing_sha256`).
    #[serde(default)]
    pub hashing_algorithm: Option<String>,
    /// Only accept logins from loopback addresses.
    #[serde(default)]
    pub loopback_only: bool,
    /// Vhosts the user may open.
    #[serde(default = "default_user_vhosts")]
    pub vhosts: Vec<String>,
    /// Most connections this user may have open at once (absent: unlimited).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most queues this user may have created and not yet deleted (absent: unlimited).
    #[serde(default)]
    pub max_queues: Option<u32>,
    /// RabbitMQ user tags; `administrator` or `monitoring` give access to the management API
    /// (monitoring: read only).
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_user_vhosts() -> Vec<String> {
    vec!["/".to_owned()]
}

/// A plain-text password from the config file; its `Debug` never shows it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct PlainPassword(pub Option<String>);

impl fmt::Debug for PlainPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// The default guest user's `password_hash` (of "guest": RabbitMQ's SHA-256 format, salt
/// 90 8d c6 0a), also in config/lockgate.toml: no plain-text password even in the defaults.
pub const GUEST_PASSWORD_HASH: &str = "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe";

impl UserConfig {
    /// The user's password hash: `password_hash` as given, or `password` hashed now.
    ///
    /// # Errors
    /// Neither or both given, an unknown `hashing_algorithm`, a malformed hash; the text
    /// names the key.
    pub fn hash(&self) -> anyhow::Result<PasswordHash> {
        let algorithm = match self.hashing_algorithm.as_deref() {
            None => HashingAlgorithm::default(),
            Some(name) => HashingAlgorithm::parse(name).with_context(|| {
                format!(
                    "hashing_algorithm: unknown {name:?} (rabbit_password_hashing_sha256 or \
                     rabbit_password_hashing_sha512)"
                )
            })?,
        };
        match (&self.password.0, &self.password_hash) {
            (Some(_), Some(_)) => bail!("password: give password_hash or password, not both"),
            (None, None) => bail!(
                "password_hash: the user needs a password_hash (see `lockgate hash-password`) \
                 or a password"
            ),
            (None, Some(hash)) => PasswordHash::parse(algorithm, hash)
                .map_err(|e| anyhow::anyhow!("password_hash: {e}")),
            (Some(plain), None) => PasswordHash::new(plain)
                .map_err(|e| anyhow::anyhow!("password: no random salt to hash it: {e}")),
        }
    }
}

fn default_vhost() -> String {
    "/".to_owned()
}

fn yes() -> bool {
    true
}

fn default_exchange_type() -> String {
    "direct".to_owned()
}

fn default_destination_type() -> String {
    "queue".to_owned()
}

fn default_apply_to() -> String {
    "all".to_owned()
}

/// One `[[exchanges]]` entry: declared at start and on SIGHUP unless it exists.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Its vhost (default "/").
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// direct, fanout, topic, headers or another type lockgate has (default direct).
    #[serde(rename = "type", default = "default_exchange_type")]
    pub kind: String,
    /// Survives a restart (default true).
    #[serde(default = "yes")]
    pub durable: bool,
    /// Deleted when its last binding goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Not published to directly.
    #[serde(default)]
    pub internal: bool,
    /// Exchange arguments (`alternate-exchange`, ...).
    #[serde(default)]
    pub arguments: toml::Table,
    /// `true`: make sure it does not exist (deleted if it does).
    #[serde(default)]
    pub delete: bool,
}

/// One `[[queues]]` entry: declared at start and on SIGHUP unless it exists.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Its vhost (default "/").
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Survives a restart (default true).
    #[serde(default = "yes")]
    pub durable: bool,
    /// Deleted when its last consumer goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-` arguments, as a client would declare them.
    #[serde(default)]
    pub arguments: toml::Table,
    /// `true`: make sure it does not exist (deleted if it does, with its messages).
    #[serde(default)]
    pub delete: bool,
}

/// One `[[bindings]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// Its vhost (default "/").
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// The exchange bound from.
    pub source: String,
    /// The queue or exchange bound to.
    pub destination: String,
    /// "queue" (default) or "exchange".
    #[serde(default = "default_destination_type")]
    pub destination_type: String,
    /// The binding key.
    #[serde(default)]
    pub routing_key: String,
    /// Binding arguments (headers exchanges).
    #[serde(default)]
    pub arguments: toml::Table,
    /// `true`: make sure it does not exist.
    #[serde(default)]
    pub delete: bool,
}

/// One `[[policies]]` (or `[[policy]]`) entry, as RabbitMQ's `set_policy`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Its vhost (default "/").
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Its name, unique in the vhost.
    pub name: String,
    /// Regular expression matched (unanchored) against queue names.
    pub pattern: String,
    /// When several policies match, the highest priority applies (default 0).
    #[serde(default)]
    pub priority: i64,
    /// "queues", "exchanges" or "all" (default, as RabbitMQ).
    #[serde(default = "default_apply_to", alias = "apply-to")]
    pub apply_to: String,
    /// The settings: max-length, max-length-bytes, overflow, dead-letter-exchange,
    /// dead-letter-routing-key, message-ttl, expires, consumer-timeout,
    /// consumer-timeout-action, delivery-limit, retry-delay, retry-delay-max, max-priority,
    /// deduplication-window, group-header.
    pub definition: toml::Table,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5672)),
            data_dir: PathBuf::from("lockgate-data"),
            limits: Limits::default(),
            memory: Memory::default(),
            disk: Disk::default(),
            permissions: Vec::new(),
            exchanges: Vec::new(),
            queues: Vec::new(),
            bindings: Vec::new(),
            policies: Vec::new(),
            consumer_timeout: None,
            tls: TlsConfig::default(),
            metrics: MetricsConfig::default(),
            management: ManagementConfig::default(),
            log: LogConfig::default(),
            vhosts: vec![VHostConfig {
                name: "/".to_owned(),
                max_connections: None,
                max_queues: None,
            }],
            users: vec![UserConfig {
                name: "guest".to_owned(),
                password: PlainPassword(None),
                password_hash: Some(GUEST_PASSWORD_HASH.to_owned()),
                hashing_algorithm: None,
                loopback_only: true,
                vhosts: default_user_vhosts(),
                max_connections: None,
                max_queues: None,
                tags: vec!["administrator".to_owned()],
            }],
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            max_message_size: 134_217_728,
        }
    }
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            high_watermark: Watermark::Fraction(0.4),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// The smallest frame_max AMQP 0-9-1 allows.
pub const FRAME_MIN_SIZE: u32 = 4096;

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, has an unknown key or a bad value; the error
    /// names the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse_located(&text).map_err(|e| {
            anyhow::anyhow!(
                "config file {}, line {}, key {}: {}",
                path.display(),
                e.line,
                e.key,
                e.message
            )
        })
    }

    /// Parses and validates config text (tests; files go through [`Config::load`]).
    ///
    /// # Errors
    /// Invalid TOML, an unknown key, or a value out of range; the error names the line and
    /// the key.
    #[cfg(test)]
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::parse_located(text)
            .map_err(|e| anyhow::anyhow!("line {}, key {}: {}", e.line, e.key, e.message))
    }

    /// Parses and validates config text; an error says where.
    ///
    /// # Errors
    /// A [`Located`] error.
    pub fn parse_located(text: &str) -> Result<Self, Located> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let mut offset = e.span().map_or(0, |span| span.start);
            let mut message = e.message().trim().to_owned();
            if message == "duplicate field `policies`" {
                // Both spellings of the list: point at the second one.
                let first = |header: &str| text.find(header).unwrap_or(0);
                offset = first("[[policy]]").max(first("[[policies]]"));
                message.push_str(": [[policy]] and [[policies]] are the same list, use one");
            }
            let key = if message.starts_with("duplicate field `policies`") {
                "policies".to_owned()
            } else {
                key_at(text, offset, &message)
            };
            Located {
                line: line_of(text, offset),
                key,
                message,
            }
        })?;
        config.validate().map_err(|e| {
            let (key, message) = split_key(&format!("{e:#}"));
            Located {
                line: locate(text, &key),
                key,
                message,
            }
        })?;
        Ok(config)
    }

    /// Checks values that the types alone do not constrain.
    ///
    /// # Errors
    /// The first key whose value is out of range or inconsistent.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.limits.channel_max == 0 {
            bail!("limits.channel_max must be between 1 and 65535, got 0");
        }
        if self.limits.frame_max < FRAME_MIN_SIZE {
            bail!(
                "limits.frame_max must be at least {FRAME_MIN_SIZE}, got {}",
                self.limits.frame_max
            );
        }
        if self.limits.max_message_size == 0 {
            bail!("limits.max_message_size must be greater than 0");
        }
        match self.memory.high_watermark {
            Watermark::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                bail!("memory.high_watermark as a fraction must be in (0, 1], got {f}")
            }
            Watermark::Bytes(0) => bail!("memory.high_watermark must be greater than 0 bytes"),
            _ => {}
        }
        if let Watermark::Fraction(f) = self.disk.free_limit {
            if !(f.is_finite() && f >= 0.0) {
                bail!("disk.free_limit as a multiple of RAM must be 0 or more, got {f}");
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .with_context(|| format!("log.level: invalid filter {:?}", self.log.level))?;
        if self.vhosts.is_empty() {
            bail!("vhosts: at least one [[vhosts]] entry is required");
        }
        for (i, vhost) in self.vhosts.iter().enumerate() {
            if vhost.name.is_empty() {
                bail!("vhosts[{i}].name must not be empty");
            }
            if self.vhosts[..i].iter().any(|v| v.name == vhost.name) {
                bail!("vhosts[{i}].name: duplicate vhost {:?}", vhost.name);
            }
        }
        self.tls.validate()?;
        self.management.tls.validate()?;
        crate::permissions::Permissions::from_config(self)?;
        for (i, user) in self.users.iter().enumerate() {
            if user.name.is_empty() {
                bail!("users[{i}].name must not be empty");
            }
            user.hash().with_context(|| format!("users[{i}]"))?;
            if self.users[..i].iter().any(|u| u.name == user.name) {
                bail!("users[{i}].name: duplicate user {:?}", user.name);
            }
            if let Some(v) = user
                .vhosts
                .iter()
                .find(|v| !self.vhosts.iter().any(|h| &h.name == *v))
            {
                if self.users == Config::default().users {
                    bail!(
                        "vhosts: the built-in guest user needs vhost {v:?}: declare it in \
                         [[vhosts]], or give [[users]]"
                    );
                }
                bail!("users[{i}].vhosts: vhost {v:?} is not declared in [[vhosts]]");
            }
        }
        if self.consumer_timeout == Some(0) {
            bail!("consumer_timeout must be greater than 0 (leave it out for no timeout)");
        }
        crate::apply::validate(self)?;
        Ok(())
    }

    /// The high watermark in bytes, given the machine's total memory.
    pub fn high_watermark_bytes(&self, total_memory: u64) -> u64 {
        match self.memory.high_watermark {
            // Truncation is intended: a watermark is a coarse limit.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Watermark::Fraction(f) => (total_memory as f64 * f) as u64,
            Watermark::Bytes(b) => b,
        }
    }
}

impl Config {
    /// The disk free limit in bytes, given the machine's total memory.
    pub fn disk_free_limit_bytes(&self, total_memory: u64) -> u64 {
        match self.disk.free_limit {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Watermark::Fraction(f) => (total_memory as f64 * f) as u64,
            Watermark::Bytes(b) => b,
        }
    }
}

/// A config error and where it is: the line (1-based) and the key path
/// (`users[1].vhosts`, `limits.frame_max`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// 1-based line in the file.
    pub line: usize,
    /// The key path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Splits a validation message into its key path and the rest: "users[0]: password_hash:
/// not base64" gives ("users[0].password_hash", "not base64"); "limits.frame_max must be ..."
/// gives ("limits.frame_max", the whole message).
pub fn split_key(message: &str) -> (String, String) {
    let is_key = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.[]-".contains(c))
    };
    let mut keys = Vec::new();
    let mut rest = message;
    while let Some((head, tail)) = rest.split_once(": ") {
        if !is_key(head) {
            break;
        }
        keys.push(head);
        rest = tail;
    }
    if keys.is_empty() {
        let key = message.split([':', ' ']).next().unwrap_or_default();
        return (key.to_owned(), message.to_owned());
    }
    (keys.join("."), rest.to_owned())
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

/// The key path of the TOML line holding `offset` (`limits.frame_max`, `users[1].password`),
/// or the unknown field a deserialisation message names.
fn key_at(text: &str, offset: usize, message: &str) -> String {
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut key = String::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|t| t.split("]]").next())
        {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.split(']').next()) {
            table = name.trim().to_owned();
        }
        if pos + line.len() > offset {
            if let Some((lhs, _)) = trimmed.split_once('=') {
                key = lhs.trim().trim_matches('"').to_owned();
            }
            break;
        }
        pos += line.len();
    }
    // serde names the field when the key itself is the problem ("unknown field `bogus`").
    let names_a_field =
        message.starts_with("unknown field") || message.starts_with("missing field");
    if let Some(field) = message.split('`').nth(1).filter(|_| names_a_field) {
        key = field.to_owned();
    }
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// The line of a key path such as `users[1].vhosts` or `limits.frame_max` in `text`: the
/// deepest part of the path that exists (a missing key points at its table). Line 1 when
/// nothing of it is found.
pub fn locate(text: &str, path: &str) -> usize {
    let Ok(root) = toml::de::DeTable::parse(text) else {
        return 1;
    };
    let root_value = toml::de::DeValue::Table(root.get_ref().clone());
    let mut current: Option<&toml::de::DeValue<'_>> = Some(&root_value);
    let mut span: Option<std::ops::Range<usize>> = None;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(value) = current else { break };
        // `[[policy]]` is accepted for `[[policies]]`.
        let found = value
            .get(name)
            .or_else(|| (name == "policies").then(|| value.get("policy")).flatten());
        let Some(found) = found else { break };
        span = Some(found.span());
        current = Some(found.get_ref());
        if let Some(i) = index {
            let Some(item) = found.get_ref().get(i) else {
                break;
            };
            span = Some(item.span());
            current = Some(item.get_ref());
        }
    }
    span.map_or(1, |s| line_of(text, s.start))
}

/// Total RAM from `/proc/meminfo`, or 8 GiB where that cannot be read.
pub fn total_memory() -> u64 {
    const FALLBACK: u64 = 8 << 30;
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(FALLBACK)
}

/// Parses sizes such as `"64MiB"`, `"1GB"`, `"512k"` or `"1048576"` into bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

impl<'de> Deserialize<'de> for Watermark {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WatermarkVisitor;

        impl Visitor<'_> for WatermarkVisitor {
            type Value = Watermark;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fraction of RAM (0.4), a number of bytes, or a size (\"64MiB\")")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Watermark, E> {
                Ok(Watermark::Fraction(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Watermark, E> {
                Ok(Watermark::Bytes(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Watermark, E> {
                u64::try_from(v)
                    .map(Watermark::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Watermark, E> {
                parse_size(v)
                    .map(Watermark::Bytes)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }

        deserializer.deserialize_any(WatermarkVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn disk_free_limit_takes_sizes_and_multiples_of_ram() {
        let config = Config::parse("[disk]\nfree_limit = \"1GB\"").unwrap();
        assert_eq!(config.disk_free_limit_bytes(8), 1_000_000_000);
        let config = Config::parse("[disk]\nfree_limit = 1.5").unwrap();
        assert_eq!(config.disk_free_limit_bytes(1000), 1500);
        assert_eq!(Config::default().disk_free_limit_bytes(1), 50_000_000);
        assert!(err("[disk]\nfree_limit = -1.0").contains("disk.free_limit"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn shipped_reference_config_equals_defaults() {
        let text = include_str!("../../../config/lockgate.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn every_key_is_read() {
        let config = Config::parse(
            r#"
            listen = "127.0.0.1:5673"
            data_dir = "/var/lib/lockgate"
            [limits]
            max_connections = 10
            channel_max = 16
            frame_max = 8192
            heartbeat = 5
            max_message_size = 1000
            [memory]
            high_watermark = "64MiB"
            [log]
            level = "debug"
            format = "json"
            [[vhosts]]
            name = "prod"
            [[vhosts]]
            name = "test"
            [[users]]
            name = "app"
            password = "secret"
            loopback_only = false
            vhosts = ["prod", "test"]
            "#,
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:5673".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/lockgate"));
        assert_eq!(
            config.limits,
            Limits {
                max_connections: 10,
                channel_max: 16,
                frame_max: 8192,
                heartbeat: 5,
                max_message_size: 1000,
            }
        );
        assert_eq!(config.memory.high_watermark, Watermark::Bytes(64 << 20));
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.vhosts.len(), 2);
        assert_eq!(config.users.len(), 1);
        assert_eq!(config.users[0].vhosts, vec!["prod", "test"]);
        assert!(!config.users[0].loopback_only);
    }

    #[test]
    fn watermark_forms() {
        let parse = |v: &str| {
            Config::parse(&format!("[memory]\nhigh_watermark = {v}"))
                .unwrap()
                .memory
                .high_watermark
        };
        assert_eq!(parse("0.5"), Watermark::Fraction(0.5));
        assert_eq!(parse("1048576"), Watermark::Bytes(1 << 20));
        assert_eq!(parse("\"2GiB\""), Watermark::Bytes(2 << 30));
        assert_eq!(parse("\"10MB\""), Watermark::Bytes(10_000_000));
        let config = Config::parse("[memory]\nhigh_watermark = 0.25").unwrap();
        assert_eq!(config.high_watermark_bytes(1000), 250);
    }

    #[test]
    fn bad_values_name_the_key() {
        assert!(err("listen = \"nowhere\"").contains("listen"));
        assert!(err("[limits]\nchannel_max = \"many\"").contains("channel_max"));
        assert!(err("[limits]\nchannel_max = 70000").contains("channel_max"));
        assert!(err("[limits]\nchannel_max = 0").contains("limits.channel_max"));
        assert!(err("[limits]\nframe_max = 100").contains("limits.frame_max"));
        assert!(err("[limits]\nmax_message_size = 0").contains("limits.max_message_size"));
        assert!(err("[memory]\nhigh_watermark = 1.5").contains("memory.high_watermark"));
        assert!(err("[memory]\nhigh_watermark = \"lots\"").contains("high_watermark"));
        assert!(err("[log]\nformat = \"xml\"").contains("format"));
        assert!(err("[log]\nlevel = \"=\"").contains("log.level"));
        assert!(err("[limits]\nbogus = 1").contains("bogus"));
        assert!(
            err("[[users]]\nname = \"a\"\npassword = \"b\"\nvhosts = [\"nope\"]")
                .contains("users[0].vhosts")
        );
        assert!(err("[[users]]\nname = \"a\"").contains("password"));
        let e = err("[[vhosts]]\nname = \"prod\"");
        assert!(
            e.contains("the built-in guest user needs vhost \"/\""),
            "{e}"
        );
    }

    #[test]
    fn users_and_vhosts_replace_defaults() {
        let config = Config::parse("[[users]]\nname = \"a\"\npassword = \"b\"").unwrap();
        assert_eq!(config.users.len(), 1);
        assert_eq!(config.users[0].name, "a");
        assert_eq!(config.users[0].vhosts, vec!["/"]);
        assert_eq!(config.vhosts, Config::default().vhosts);
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "[limits]\nframe_max = 1").unwrap();
        let message = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(message.contains("broken.toml"), "{message}");
        assert!(message.contains("limits.frame_max"), "{message}");
        let missing = format!(
            "{:#}",
            Config::load(&dir.path().join("none.toml")).unwrap_err()
        );
        assert!(missing.contains("none.toml"), "{missing}");
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let located = |text: &str| Config::parse_located(text).unwrap_err();
        let e = located("listen = \"127.0.0.1:1\"\n\n[limits]\nheartbeat = 5\nframe_max = 1\n");
        assert_eq!((e.line, e.key.as_str()), (5, "limits.frame_max"), "{e:?}");
        let e = located("[log]\nlevel = \"info\"\nbogus = 1\n");
        assert_eq!((e.line, e.key.as_str()), (3, "log.bogus"), "{e:?}");
        let e = located("[limits]\nchannel_max = \"many\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "limits.channel_max"), "{e:?}");
        let text = "[[vhosts]]\nname = \"/\"\n[[users]]\nname = \"a\"\npassword = \"p\"\n\
                    [[users]]\nname = \"b\"\npassword = \"p\"\nvhosts = [\"nope\"]\n";
        let e = located(text);
        assert_eq!((e.line, e.key.as_str()), (9, "users[1].vhosts"), "{e:?}");
        let policy = "pattern = \".*\"\ndefinition = { max-length = 1 }\n";
        let e = located(&format!(
            "[[policy]]\nname = \"a\"\n{policy}[[policies]]\nname = \"b\"\n{policy}"
        ));
        assert_eq!((e.line, e.key.as_str()), (5, "policies"), "{e:?}");
        assert!(e.message.contains("use one"), "{e:?}");
        // A bad queue or exchange argument is located at its own key, not at the entry.
        let e = located(
            "[[queues]]\nname = \"q\"\n\n[[queues]]\nname = \"r\"\narguments = { \"x-max-length\" = 1, \"x-overflow\" = \"blok\" }\n",
        );
        assert_eq!(
            (e.line, e.key.as_str()),
            (6, "queues[1].arguments.x-overflow"),
            "{e:?}"
        );
        assert!(e.message.contains("invalid arg 'x-overflow'"), "{e:?}");
        let e = located(
            "[[exchanges]]\nname = \"h\"\ntype = \"x-consistent-hash\"\n[exchanges.arguments]\n\
             hash-property = \"message_id\"\nhash-header = \"h\"\n",
        );
        assert_eq!(
            (e.line, e.key.as_str()),
            (6, "exchanges[0].arguments.hash-header"),
            "{e:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[memory]\nhigh_watermark = 7.5\n").unwrap();
        let message = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            message.contains("bad.toml, line 2, key memory.high_watermark"),
            "{message}"
        );
    }

    #[test]
    fn users_take_a_rabbitmq_password_hash_or_a_plain_password() {
        let config = Config::parse(&format!(
            "[[users]]\nname = \"a\"\npassword_hash = \"{GUEST_PASSWORD_HASH}\"\n\
             [[users]]\nname = \"b\"\npassword = \"pw\""
        ))
        .unwrap();
        assert!(config.users[0].hash().unwrap().verify("guest"));
        assert!(config.users[1].hash().unwrap().verify("pw"));
        assert!(!config.users[1].hash().unwrap().verify("guest"));
        assert!(format!("{:?}", config.users[1]).contains("Some(..)"));
        assert!(
            err("[[users]]\nname = \"a\"\npassword = \"p\"\npassword_hash = \"\"")
                .contains("not both")
        );
        assert!(err(
            "[[users]]\nname = \"a\"\npassword_hash = \"abc\"\nhashing_algorithm = \"md5\""
        )
        .contains("hashing_algorithm"));
        assert!(err("[[users]]\nname = \"a\"\npassword_hash = \"AAAA\"").contains("bytes"));
    }

    #[test]
    fn topology_and_policies_are_read() {
        let config = Config::parse(
            r#"
            consumer_timeout = 60000
            [[exchanges]]
            name = "events"
            type = "topic"
            [[queues]]
            name = "orders"
            durable = false
            arguments = { "x-max-length" = 10 }
            [[bindings]]
            source = "events"
            destination = "orders"
            routing_key = "order.*"
            [[policy]]
            name = "cap"
            pattern = "^orders"
            apply-to = "queues"
            priority = 2
            definition = { max-length = 5, overflow = "reject-publish" }
            "#,
        )
        .unwrap();
        assert_eq!(config.consumer_timeout, Some(60_000));
        assert_eq!(config.exchanges[0].kind, "topic");
        assert!(config.exchanges[0].durable);
        assert!(!config.queues[0].durable);
        assert_eq!(config.bindings[0].destination_type, "queue");
        assert_eq!(config.policies[0].apply_to, "queues");
        assert_eq!(config.policies[0].vhost, "/");
        assert!(err("consumer_timeout = 0").contains("consumer_timeout"));
    }
}
