//! Log set-up shared by the binaries.
//!
//! Both binaries log to standard error, filtered by `RUST_LOG` (default
//! [`DEFAULT_FILTER`]), as text for people or as one JSON object per line for a log
//! shipper (`--log-format json`).

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset: this crate's lifecycle lines, and only warnings
/// from the scheduler crate, which logs its own start-up chatter at info.
pub const DEFAULT_FILTER: &str = "info,tokio_cron_scheduler=warn";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target` and the event's `fields`.
    Json,
}

/// Logging options of both binaries.
#[derive(Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// How to write log lines to standard error; `RUST_LOG` picks which (default `info`).
    #[arg(long, global = true, env = "PRESENCE_LOG_FORMAT", value_enum)]
    #[arg(default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Sends logs to standard error, filtered by `RUST_LOG`, or by `default` when unset.
pub fn init(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
