//! `presence-bench`: the Rust half of `bench/run`. It seeds Redis with users in exactly
//! the layout the ping script writes, runs the snapshot scenarios (the release
//! `presence-snapshot` timed in its own process, beside a floor Redis sets by itself) and
//! checks every row the job wrote against the seeded truth.
//!
//! `bench/run` calls it; run that, not this.

mod measure;
mod population;
mod report;
mod scenario;
mod verify;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use presence::keys::{DEFAULT_KEY_PREFIX, KeyLayout};

use crate::measure::{JobSetup, redis_now};
use crate::population::Population;
use crate::scenario::{ONLINE_TTL_MS, SHADOW_TTL_MS};

/// Seeds and measures presence for `bench/run`.
#[derive(Parser, Debug)]
struct Cli {
    /// The benchmark's private Redis.
    #[arg(long)]
    redis_url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes `users` online users (ids 000000000000 up) for the read benchmarks.
    Seed {
        #[arg(long)]
        users: usize,
    },
    /// Prints a back-end service token (the admin scope, good for an hour) signed with the
    /// HS256 secret in `secret_file`, for the load generator.
    Token {
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// Runs the snapshot scenarios and prints their table rows.
    Snapshot {
        /// The release `presence-snapshot` binary.
        #[arg(long)]
        binary: PathBuf,
        /// Where the scenarios keep their databases.
        #[arg(long)]
        work_dir: PathBuf,
        /// Online users per scenario, comma-separated.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// The size whose run is the headline, and where further churn shares run.
        #[arg(long)]
        headline: usize,
        /// Further churn shares run at the headline size.
        #[arg(long, value_delimiter = ',', default_value = "0.01,0.1")]
        churn: Vec<f64>,
        /// The SCAN COUNT of the job and the floor.
        #[arg(long, default_value_t = presence::scan::DEFAULT_SCAN_COUNT)]
        scan_count: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token { secret_file } => {
            println!("{}", admin_token(&secret_file)?);
            Ok(())
        }
        Command::Seed { users } => {
            let mut con = connect(&cli.redis_url)?;
            let keys = KeyLayout::new(DEFAULT_KEY_PREFIX);
            let mut population = Population::new(keys, ONLINE_TTL_MS, SHADOW_TTL_MS);
            let now = redis_now(&mut con)?;
            population.come_online(&mut con, users, now)
        }
        Command::Snapshot {
            binary,
            work_dir,
            sizes,
            headline,
            churn,
            scan_count,
        } => {
            let mut con = connect(&cli.redis_url)?;
            let job = JobSetup {
                binary,
                redis_url: cli.redis_url,
                work_dir,
                scan_count,
            };
            snapshot(&job, &mut con, &sizes, headline, &churn)
        }
    }
}

fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    client
        .get_connection()
        .with_context(|| format!("connecting to the bench redis {url}"))
}

fn snapshot(
    job: &JobSetup,
    con: &mut redis::Connection,
    sizes: &[usize],
    headline: usize,
    churn: &[f64],
) -> anyhow::Result<()> {
    anyhow::ensure!(sizes.contains(&headline), "--sizes must include --headline");
    let mut results = Vec::new();
    for &users in sizes {
        let extra: &[f64] = if users == headline { churn } else { &[] };
        results.push(scenario::run_size(job, con, users, extra)?);
    }
    let plain = scenario::plain_bytes_per_user(con, headline)?;
    let top = results
        .iter()
        .find(|r| r.users == headline)
        .expect("checked above");
    for line in report::rows(&results, top, plain) {
        println!("{line}");
    }
    Ok(())
}

fn admin_token(secret_file: &std::path::Path) -> anyhow::Result<String> {
    let secret = std::fs::read_to_string(secret_file)
        .with_context(|| format!("reading {}", secret_file.display()))?;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes())?;
    let claims = serde_json::json!({
        "sub": "presence-bench",
        "scope": presence::api::auth::DEFAULT_ADMIN_VALUE,
        "exp": chrono::Utc::now().timestamp() + 3600,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}
