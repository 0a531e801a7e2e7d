//! Log set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Sends logs to standard error, filtered by `RUST_LOG`, or by `default` when unset.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
