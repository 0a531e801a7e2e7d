//! One run of the batch job: walk Redis, diff, and commit the result in one transaction.
//!
//! Everything a run writes (last-seen rows, sessions, the new online set, the run log
//! row) commits in a single SQLite transaction. A run killed at any point therefore leaves
//! the database exactly as it was, and the shadow keys it did not get to record are still
//! in Redis for the next run, which produces what the killed run would have.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use crate::diff::{self, OnlineRow, Plan, VanishGuard};
use crate::keys::KeyLayout;
use crate::lock::{LockError, RunLock};
use crate::redis_conn::ShadowSource;
use crate::scan::Walk;
use crate::time::{Millis, wall_clock_ms};

/// How far apart the clocks of Redis nodes may be while the job still trusts the previous
/// run's start as a watermark (see [`SnapshotOptions::full`]). On a cluster the run's start
/// is the earliest clock of the primaries it walked, and each shadow key is stamped by its
/// own primary's clock, so the nodes' clocks must agree within this margin (NTP keeps
/// them within milliseconds); a failover to a replica whose clock is behind is covered by
/// the same margin.
pub const WATERMARK_MARGIN_MS: Millis = 60_000;

/// How a run behaves.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    /// The database file.
    pub db: PathBuf,
    /// How long SQLite waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Key names.
    pub keys: KeyLayout,
    /// The SCAN COUNT.
    pub scan_count: usize,
    /// When to keep vanished users rather than close their sessions.
    pub guard: VanishGuard,
    /// Re-examine every offline user, not only those whose last heartbeat is newer than
    /// the previous run's start. Normal runs skip the rest: they were recorded then.
    pub full: bool,
    /// Show a progress bar on standard error.
    pub progress: bool,
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Users online now.
    pub online: u64,
    /// Users whose session began since the previous run.
    pub came_online: u64,
    /// Users whose session ended since the previous run.
    pub went_offline: u64,
    /// Keys SCAN returned.
    pub keys_scanned: u64,
    /// Keys SCAN returned twice.
    pub duplicates: u64,
    /// Keys or values not written by this service, skipped.
    pub skipped_values: u64,
    /// Rows inserted, updated or deleted.
    pub rows_written: u64,
    /// Users who vanished without a trace and were kept for the next run.
    pub vanished_kept: u64,
    /// Wall time of the run, in milliseconds.
    pub elapsed_ms: u64,
}

/// Why a run failed; the binary maps each to its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Another run holds the run lock.
    #[error("another snapshot run holds the lock {}", .0.display())]
    LockHeld(PathBuf),
    /// Redis could not be read.
    #[error("reading Redis")]
    Redis(#[source] redis::RedisError),
    /// The database could not be opened, read or written.
    #[error("writing the database")]
    Database(#[source] anyhow::Error),
}

impl From<LockError> for SnapshotError {
    fn from(e: LockError) -> SnapshotError {
        match e {
            LockError::Held(path) => SnapshotError::LockHeld(path),
            other => SnapshotError::Database(other.into()),
        }
    }
}

/// Runs one snapshot against `redis`.
pub async fn run_once<C>(redis: &mut C, opts: &SnapshotOptions) -> Result<RunSummary, SnapshotError>
where
    C: ShadowSource,
{
    let started = Instant::now();
    let started_ms = wall_clock_ms();
    let lock = RunLock::try_acquire(&opts.db)?;
    tracing::debug!(lock = %lock.path().display(), "holding the run lock");
    let conn = open_db(opts).await?;

    let bar = crate::progress::scan_bar(opts.progress);
    let walk = redis
        .walk_shadows(&opts.keys, opts.scan_count, |n| bar.set_position(n))
        .await
        .map_err(SnapshotError::Redis)?;
    bar.finish_and_clear();
    tracing::debug!(
        keys_scanned = walk.keys_scanned,
        walk_ms = started.elapsed().as_millis() as u64,
        "walked the shadow keys"
    );

    let (guard, full) = (opts.guard, opts.full);
    let summary = tokio::task::spawn_blocking(move || {
        let mut conn = conn;
        commit_run(&mut conn, &walk, guard, full, started, started_ms)
    })
    .await
    .map_err(|e| SnapshotError::Database(e.into()))?
    .map_err(SnapshotError::Database)?;
    if summary.vanished_kept > 0 {
        tracing::warn!(
            vanished_kept = summary.vanished_kept,
            "most of the online set vanished from Redis at once (restarted empty?); \
             kept them for the next run"
        );
    }
    drop(lock);
    Ok(summary)
}

async fn open_db(opts: &SnapshotOptions) -> Result<Connection, SnapshotError> {
    let (path, timeout) = (opts.db.clone(), opts.busy_timeout);
    tokio::task::spawn_blocking(move || crate::db::open_and_migrate(&path, timeout))
        .await
        .map_err(|e| SnapshotError::Database(e.into()))?
        .map_err(SnapshotError::Database)
}

/// Plans and writes the run in one IMMEDIATE transaction, so the previous online set it
/// reads cannot change before it writes.
fn commit_run(
    conn: &mut Connection,
    walk: &Walk,
    guard: VanishGuard,
    full: bool,
    started: Instant,
    started_ms: Millis,
) -> anyhow::Result<RunSummary> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let settled_before = if full { Millis::MIN } else { watermark(&tx)? };
    let planning = Instant::now();
    let plan = plan_against_online_set(&tx, walk, settled_before, guard)?;
    let plan_ms = planning.elapsed().as_millis() as u64;
    let rows_written = apply(&tx, &plan, started_ms)?;
    let write_ms = planning.elapsed().as_millis() as u64 - plan_ms;
    tracing::debug!(plan_ms, write_ms, rows_written, "planned and wrote the run");
    let mut summary = summarize(walk, &plan, rows_written);
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    log_run(&tx, &summary, started_ms, walk.started)?;
    tx.commit().context("committing the run")?;
    Ok(summary)
}

/// The previous run's walk start, less a margin for clock skew between Redis nodes.
fn watermark(tx: &Transaction) -> rusqlite::Result<Millis> {
    let last: Option<Millis> =
        tx.query_row("SELECT MAX(scan_started_ms) FROM runs", [], |row| {
            row.get(0)
        })?;
    Ok(last.map_or(Millis::MIN, |t| t - WATERMARK_MARGIN_MS))
}

fn plan_against_online_set(
    tx: &Transaction,
    walk: &Walk,
    settled_before: Millis,
    guard: VanishGuard,
) -> rusqlite::Result<Plan> {
    let mut stmt = tx.prepare(
        "SELECT user_id, since_ms, last_heartbeat_ms FROM online_users ORDER BY user_id",
    )?;
    let previous = stmt.query_map([], |row| {
        Ok(OnlineRow {
            user: row.get::<_, String>(0)?.into_boxed_str(),
            since: row.get(1)?,
            last_heartbeat: row.get(2)?,
        })
    })?;
    diff::plan(previous, &walk.observations, settled_before, guard)
}

/// Writes the plan; returns how many rows changed. Upserts move times forward only, so
/// writing the same plan twice changes nothing the second time.
fn apply(tx: &Transaction, plan: &Plan, now: Millis) -> rusqlite::Result<u64> {
    let mut rows = 0;
    let mut session = tx.prepare(
        "INSERT INTO sessions (user_id, started_ms, ended_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user_id, started_ms) DO UPDATE SET ended_ms = excluded.ended_ms \
         WHERE excluded.ended_ms > sessions.ended_ms",
    )?;
    for s in &plan.sessions {
        rows += session.execute(params![s.user, s.started, s.ended])?;
    }
    let mut seen = tx.prepare(
        "INSERT INTO last_seen (user_id, last_seen_ms, recorded_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, \
         recorded_ms = excluded.recorded_ms WHERE excluded.last_seen_ms > last_seen.last_seen_ms",
    )?;
    for (user, at) in &plan.last_seen {
        rows += seen.execute(params![user, at, now])?;
    }
    let mut upsert = tx.prepare(
        "INSERT OR REPLACE INTO online_users (user_id, since_ms, last_heartbeat_ms) \
         VALUES (?1, ?2, ?3)",
    )?;
    for row in &plan.online_upserts {
        rows += upsert.execute(params![row.user, row.since, row.last_heartbeat])?;
    }
    let mut remove = tx.prepare("DELETE FROM online_users WHERE user_id = ?1")?;
    for user in &plan.online_removals {
        rows += remove.execute([user])?;
    }
    Ok(rows as u64)
}

fn summarize(walk: &Walk, plan: &Plan, rows_written: u64) -> RunSummary {
    RunSummary {
        online: plan.online,
        came_online: plan.came_online,
        went_offline: plan.went_offline,
        keys_scanned: walk.keys_scanned,
        duplicates: walk.duplicates,
        skipped_values: walk.skipped_values,
        rows_written,
        vanished_kept: plan.vanished_kept,
        elapsed_ms: 0,
    }
}

fn log_run(
    tx: &Transaction,
    s: &RunSummary,
    started_ms: Millis,
    scan_started_ms: Millis,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO runs (started_ms, elapsed_ms, keys_scanned, duplicates, online, \
         came_online, went_offline, rows_written, skipped_values, vanished_kept, \
         scan_started_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            started_ms,
            s.elapsed_ms as i64,
            s.keys_scanned as i64,
            s.duplicates as i64,
            s.online as i64,
            s.came_online as i64,
            s.went_offline as i64,
            s.rows_written as i64,
            s.skipped_values as i64,
            s.vanished_kept as i64,
            scan_started_ms,
        ],
    )?;
    Ok(())
}

/// A logged run, as `history` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRun {
    /// When the run started (local clock).
    pub started_ms: Millis,
    /// The run's counts.
    pub summary: RunSummary,
}

/// The newest `limit` runs, newest first.
pub fn recent_runs(
    db: &Path,
    busy_timeout: Duration,
    limit: usize,
) -> anyhow::Result<Vec<LoggedRun>> {
    let conn = crate::db::open_and_migrate(db, busy_timeout)?;
    let mut stmt = conn.prepare(
        "SELECT started_ms, elapsed_ms, keys_scanned, online, came_online, went_offline, \
         rows_written, skipped_values, vanished_kept, duplicates FROM runs \
         ORDER BY id DESC LIMIT ?1",
    )?;
    let runs = stmt.query_map([limit as i64], |row| {
        Ok(LoggedRun {
            started_ms: row.get(0)?,
            summary: RunSummary {
                elapsed_ms: row.get::<_, i64>(1)? as u64,
                keys_scanned: row.get::<_, i64>(2)? as u64,
                online: row.get::<_, i64>(3)? as u64,
                came_online: row.get::<_, i64>(4)? as u64,
                went_offline: row.get::<_, i64>(5)? as u64,
                rows_written: row.get::<_, i64>(6)? as u64,
                skipped_values: row.get::<_, i64>(7)? as u64,
                vanished_kept: row.get::<_, i64>(8)? as u64,
                duplicates: row.get::<_, i64>(9)? as u64,
            },
        })
    })?;
    Ok(runs.collect::<rusqlite::Result<_>>()?)
}
