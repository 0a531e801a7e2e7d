//! The `presence-snapshot` command line: one pass, the scheduler, and two readers.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::StoreArgs;
use crate::diff::VanishGuard;
use crate::last_seen::read_record;
use crate::redis_conn::{open_lazy, redact_url};
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

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// One pass: for cron, systemd timers and one-off reconciliation.
    Run(RunArgs),
    /// Run passes on a cron schedule until SIGINT or SIGTERM.
    Schedule {
        /// When to run: six cron fields, seconds first, in UTC.
        #[arg(long, env = "PRESENCE_CRON", default_value = DEFAULT_CRON)]
        cron: String,

        #[command(flatten)]
        run: RunArgs,
    },
    /// Show the most recent runs.
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
        Command::Run(run) => {
            let opts = run.options(&store)?;
            let mut redis = open_lazy(&store.redis_url)
                .with_context(|| format!("opening redis {}", redact_url(&store.redis_url)))?;
            let summary = run_once(&mut redis, &opts).await?;
            println!("{}", summary_line(&summary));
            Ok(())
        }
        Command::Schedule { cron, run } => {
            let opts = run.options(&store)?;
            let redis = open_lazy(&store.redis_url)
                .with_context(|| format!("opening redis {}", redact_url(&store.redis_url)))?;
            run_schedule(
                &cron,
                redis,
                SnapshotOptions {
                    progress: false,
                    ..opts
                },
            )
            .await
        }
        Command::History { limit } => {
            let runs = recent_runs(&store.db, store.busy_timeout(), limit)?;
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
    }
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
