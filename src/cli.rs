//! The `presence-snapshot` command line: one pass, the scheduler, readers, a backup and
//! shell completions.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::StoreArgs;
use crate::diff::VanishGuard;
use crate::last_seen::read_record;
use crate::logging::LogArgs;
use crate::redis_conn::redact_url;
use crate::scan::DEFAULT_SCAN_COUNT;
use crate::schedule::{DEFAULT_CRON, run_schedule};
use crate::snapshot::{RunSummary, SnapshotError, SnapshotOptions, recent_runs, run_once};

/// Exit code: Redis could not be reached or read.
pub const EXIT_REDIS: u8 = 3;
/// Exit code: the database could not be opened, read or written.
pub const EXIT_DATABASE: u8 = 4;
/// Exit code: another run holds the run lock.
pub const EXIT_LOCK_HELD: u8 = 5;

/// Records last-seen times and online periods from Redis into SQLite.
#[derive(Parser, Debug)]
#[command(name = "presence-snapshot", version, about)]
pub struct SnapshotCli {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// One pass: for cron, systemd timers and one-off reconciliation.
    Run {
        #[command(flatten)]
        run: RunArgs,

        /// Leave the run's numbers in this node_exporter textfile (`*.prom`), replaced
        /// atomically, failed runs included.
        #[arg(long, env = "PRESENCE_METRICS_FILE")]
        metrics_file: Option<PathBuf>,
    },
    /// Run passes on a cron schedule until SIGINT or SIGTERM.
    Schedule {
        /// When to run: six cron fields, seconds first, in UTC.
        #[arg(long, env = "PRESENCE_CRON", default_value = DEFAULT_CRON)]
        cron: String,

        /// Serve Prometheus metrics at `GET /metrics` on this address; off when unset.
        #[arg(long, env = "PRESENCE_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,

        #[command(flatten)]
        run: RunArgs,
    },
    /// Show the most recent runs, with the online count over time as a sparkline.
    History {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show the durable record of one user.
    LastSeen {
        /// The user id.
        user_id: String,

        /// How many online periods to show.
        #[arg(long, default_value_t = 10)]
        sessions: usize,
    },
    /// Copy the database, consistently, while the API and the job keep using it.
    Backup {
        /// Where to write the copy; an existing file is replaced.
        path: PathBuf,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// How a pass behaves.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Keys Redis examines per SCAN call.
    #[arg(long, env = "PRESENCE_SCAN_COUNT", default_value_t = DEFAULT_SCAN_COUNT)]
    pub scan_count: usize,

    /// Re-examine every shadow key, not only those newer than the previous run.
    #[arg(long)]
    pub full: bool,

    /// Share of the previous online set (0 to 1) that may vanish from Redis in one run
    /// before the run stops closing their sessions (Redis lost its data).
    #[arg(long, env = "PRESENCE_VANISH_SHARE", default_value_t = VanishGuard::default().max_share)]
    pub vanish_share: f64,

    /// Vanished users below which the guard never fires.
    #[arg(long, env = "PRESENCE_VANISH_MIN", default_value_t = VanishGuard::default().min_users)]
    pub vanish_min: u64,

    /// Close the sessions of vanished users however many there are, at their newest
    /// durable heartbeat.
    #[arg(long)]
    pub accept_vanished: bool,
}

impl RunArgs {
    fn options(&self, store: &StoreArgs) -> anyhow::Result<SnapshotOptions> {
        anyhow::ensure!(self.scan_count >= 1, "--scan-count must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.vanish_share),
            "--vanish-share must be between 0 and 1"
        );
        Ok(SnapshotOptions {
            db: store.db.clone(),
            busy_timeout: store.busy_timeout(),
            keys: store.keys(),
            scan_count: self.scan_count,
            guard: VanishGuard {
                max_share: self.vanish_share,
                min_users: self.vanish_min,
                accept: self.accept_vanished,
            },
            full: self.full,
            progress: std::io::stderr().is_terminal(),
        })
    }
}

/// Runs the command and maps its outcome to an exit code, printing any error.
pub async fn main(cli: SnapshotCli) -> ExitCode {
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<SnapshotError>() {
        Some(SnapshotError::LockHeld(_)) => EXIT_LOCK_HELD,
        Some(SnapshotError::Redis(_)) => EXIT_REDIS,
        Some(SnapshotError::Database(_)) => EXIT_DATABASE,
        None if e.chain().any(|c| c.is::<rusqlite::Error>()) => EXIT_DATABASE,
        None => 1,
    }
}

async fn dispatch(cli: SnapshotCli) -> anyhow::Result<()> {
    let store = cli.store;
    match cli.command {
        Command::Run { run, metrics_file } => run_pass(&store, &run, metrics_file.as_deref()).await,
        Command::Schedule {
            cron,
            metrics_listen,
            run,
        } => schedule_passes(&store, &run, &cron, metrics_listen).await,
        Command::History { limit } => {
            let runs = recent_runs(&store.db, store.busy_timeout(), limit)?;
            print!("{}", crate::report::online_sparkline(&runs));
            print!("{}", crate::report::history_table(&runs));
            Ok(())
        }
        Command::LastSeen { user_id, sessions } => {
            let user = crate::user::UserId::parse(&user_id)
                .with_context(|| format!("invalid user id {user_id:?}"))?;
            let conn = crate::db::open_and_migrate(&store.db, store.busy_timeout())?;
            let record = read_record(&conn, user.as_str(), sessions)?;
            print!("{}", crate::report::record_text(&user_id, &record));
            Ok(())
        }
        Command::Backup { path } => {
            crate::backup::backup(&store.db, &path, store.busy_timeout())?;
            println!("backed up {} to {}", store.db.display(), path.display());
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = SnapshotCli::command();
            let name = command.get_name().to_owned();
            clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Passes on `cron` until a shutdown signal, with `/metrics` on `metrics_listen` if set.
async fn schedule_passes(
    store: &StoreArgs,
    run: &RunArgs,
    cron: &str,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let opts = SnapshotOptions {
        progress: false,
        ..run.options(store)?
    };
    log_start(store, run, Some(cron), metrics_listen);
    if let Some(addr) = metrics_listen {
        crate::metrics::serve_listener(addr).await?;
    }
    let redis = store.open_redis()?;
    run_schedule(cron, redis, opts).await
}

/// One pass, its summary line on standard output, and its textfile when asked.
async fn run_pass(
    store: &StoreArgs,
    run: &RunArgs,
    metrics_file: Option<&Path>,
) -> anyhow::Result<()> {
    let opts = run.options(store)?;
    log_start(store, run, None, None);
    let started = Instant::now();
    let outcome = async {
        let mut redis = store.open_redis()?;
        anyhow::Ok(run_once(&mut redis, &opts).await?)
    }
    .await;

    // A run that found the lock taken leaves the file to the run that holds it.
    let lock_held = outcome
        .as_ref()
        .is_err_and(|e| exit_code(e) == EXIT_LOCK_HELD);
    if let Some(path) = metrics_file.filter(|_| !lock_held) {
        let report = crate::textfile::RunReport {
            ended_ms: crate::time::wall_clock_ms(),
            elapsed: started.elapsed(),
            summary: outcome.as_ref().ok(),
        };
        let written = crate::textfile::write_atomically(path, &crate::textfile::render(&report));
        match (written, &outcome) {
            (Err(e), Ok(_)) => return Err(e.context("the run committed")),
            (Err(e), Err(_)) => tracing::error!(error = format!("{e:#}"), "no metrics file"),
            (Ok(()), _) => {}
        }
    }
    println!("{}", summary_line(&outcome?));
    Ok(())
}

/// The effective configuration, once, at start; the Redis password masked.
fn log_start(store: &StoreArgs, run: &RunArgs, cron: Option<&str>, metrics: Option<SocketAddr>) {
    tracing::info!(
        redis = %redact_url(&store.redis_url),
        db = %store.db.display(),
        key_prefix = %store.key_prefix,
        busy_timeout_ms = store.busy_timeout_ms,
        scan_count = run.scan_count,
        full = run.full,
        vanish_share = run.vanish_share,
        vanish_min = run.vanish_min,
        accept_vanished = run.accept_vanished,
        cron,
        metrics_listen = metrics.map(tracing::field::display),
        "presence-snapshot starting"
    );
}

/// The one line a pass prints: what cron mails, what a person reads.
pub fn summary_line(s: &RunSummary) -> String {
    let mut line = format!(
        "snapshot: online={} came_online={} went_offline={} keys_scanned={} rows_written={} \
         elapsed_ms={}",
        s.online, s.came_online, s.went_offline, s.keys_scanned, s.rows_written, s.elapsed_ms
    );
    if s.skipped_values > 0 {
        line.push_str(&format!(" skipped_values={}", s.skipped_values));
    }
    if s.vanished_kept > 0 {
        line.push_str(&format!(
            " vanished_kept={} (Redis lost data?)",
            s.vanished_kept
        ));
    }
    line
}
