//! The broker's configuration: a TOML file (every key optional) overlaid by command-line flags.
//!
//! `config/lockgate.toml` in the repository is the documented reference of every key and its
//! default; [`Config::default`] must stay in step with it (a test checks this).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

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
    /// Password, compared as plain text.
    pub password: String,
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

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5672)),
            data_dir: PathBuf::from("lockgate-data"),
            limits: Limits::default(),
            memory: Memory::default(),
            disk: Disk::default(),
            permissions: Vec::new(),
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
                password: "guest".to_owned(),
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
        Self::parse(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses and validates config text.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key, or a value out of range; the error names the key.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
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
            if self.users[..i].iter().any(|u| u.name == user.name) {
                bail!("users[{i}].name: duplicate user {:?}", user.name);
            }
            if let Some(v) = user
                .vhosts
                .iter()
                .find(|v| !self.vhosts.iter().any(|h| &h.name == *v))
            {
                bail!("users[{i}].vhosts: vhost {v:?} is not declared in [[vhosts]]");
            }
        }
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
}
