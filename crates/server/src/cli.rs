//! Command-line flags. Each one overrides the matching config key.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, LogFormat};

/// lockgate: an AMQP 0-9-1 message broker.
#[derive(Debug, Parser)]
#[command(name = "lockgate", version, about)]
pub struct Cli {
    /// TOML config file (see config/lockgate.toml); without it the embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:5672 (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log level or tracing filter (overrides `log.level`).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format (overrides `log.format`).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl Cli {
    /// Loads the config file (or the defaults) and applies the flags over it.
    ///
    /// # Errors
    /// The config file cannot be read or is invalid, or a flag value is invalid.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(level) = self.log_level {
            config.log.level = level;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_config() {
        let cli = Cli::parse_from([
            "lockgate",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
            "--log-level",
            "debug",
            "--log-format",
            "json",
        ]);
        let config = cli.into_config().unwrap();
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn no_flags_is_the_default_config() {
        let config = Cli::parse_from(["lockgate"]).into_config().unwrap();
        assert_eq!(config, Config::default());
    }
}
