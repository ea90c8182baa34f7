//! tracing setup: text or JSON lines on stderr, filtered by `log.level`.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber.
///
/// # Errors
/// The level is not a valid filter, or a subscriber is already installed.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.level)
        .with_context(|| format!("log.level: invalid filter {:?}", config.level))?;
    // A line that cannot be written (stderr is a pipe nobody reads any more: a log collector
    // gone) is dropped. By default the subscriber reports that with eprintln!, which panics on
    // the same broken pipe: every task that logged would die, the signal handler's included.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let result = match config.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    result
        .map_err(|e| anyhow::anyhow!(e))
        .context("installing the log subscriber")
}
