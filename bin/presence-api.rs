//! `presence-api`: the HTTP API for heartbeats and presence reads.

use std::process::ExitCode;

use clap::Parser;
use presence::api::{self, ApiArgs};

/// mimalloc rather than the system allocator: the API allocates a little for every request,
/// and mimalloc does it in measurably less CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves the presence HTTP API.
#[derive(Parser, Debug)]
#[command(name = "presence-api", version, about)]
struct Cli {
    #[command(flatten)]
    api: ApiArgs,

    #[command(flatten)]
    log: presence::logging::LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    presence::logging::init(presence::logging::DEFAULT_FILTER, cli.log.log_format);
    let served = api::runtime(&cli.api).and_then(|rt| rt.block_on(api::serve(cli.api)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "presence-api stopped");
            ExitCode::FAILURE
        }
    }
}
