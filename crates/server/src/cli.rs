//! Command-line flags. Each one overrides the matching config key (at start and on each
//! SIGHUP reload). Besides running the broker: `--check-config FILE` and `hash-password`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::auth::PasswordHash;
use crate::config::{Config, LogFormat};

/// lockgate: an AMQP 0-9-1 message broker.
#[derive(Debug, Parser)]
#[command(name = "lockgate", version, about)]
pub struct Cli {
    /// Something else than running the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file (see config/lockgate.toml); without it the embedded defaults apply.
    /// SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate FILE and print what applying it would change compared with --config (the
    /// file the broker runs with) or the defaults, without applying it. Exit status: 0 valid,
    /// 1 invalid (the error names file, line and key).
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
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

/// Commands other than running the broker.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a password_hash for a [[users]] entry.
    ///
    /// RabbitMQ's format: base64 of a random 4-byte salt and SHA-256(salt + password)
    /// (rabbit_password_hashing_sha256). Without PASSWORD it is read from the first line of
    /// standard input, which keeps it out of the shell history.
    HashPassword {
        /// The password.
        password: Option<String>,
    },
}

impl Command {
    /// Runs the command; the exit status.
    pub fn run(&self) -> ExitCode {
        match self {
            Self::HashPassword { password } => {
                let password = match password {
                    Some(p) => p.clone(),
                    None => {
                        let mut line = String::new();
                        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                            eprintln!("lockgate: error: reading the password: {e}");
                            return ExitCode::FAILURE;
                        }
                        line.trim_end_matches(['\n', '\r']).to_owned()
                    }
                };
                match PasswordHash::new(&password) {
                    Ok(hash) => {
                        println!("{}", hash.to_base64());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("lockgate: error: no random salt: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// The flags that override config keys, kept to apply them again on each reload.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
}

impl Overrides {
    /// Sets the overridden keys in `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir.clone_from(dir);
        }
        if let Some(level) = &self.log_level {
            config.log.level.clone_from(level);
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
    }
}

impl Cli {
    /// The flags that override config keys.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format,
        }
    }

    /// Loads the config file (or the defaults) and applies the flags over it.
    ///
    /// # Errors
    /// The config file cannot be read or is invalid, or a flag value is invalid.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        self.overrides().apply(&mut config);
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
        let config = cli.load_config().unwrap();
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn no_flags_is_the_default_config() {
        let config = Cli::parse_from(["lockgate"]).load_config().unwrap();
        assert_eq!(config, Config::default());
    }
}
