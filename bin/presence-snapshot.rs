//! `presence-snapshot`: records last-seen times and online periods from Redis into SQLite.

use std::process::ExitCode;

use clap::Parser;
use presence::cli::{self, SnapshotCli};

#[tokio::main]
async fn main() -> ExitCode {
    let args = SnapshotCli::parse();
    presence::logging::init(presence::logging::DEFAULT_FILTER, args.log.log_format);
    cli::main(args).await
}
