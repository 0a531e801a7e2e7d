//! `presence-snapshot backup PATH`: a consistent copy of the database while it is in use.
//!
//! Copying the file is not a backup: in WAL mode the newest commits live in `-wal` until a
//! checkpoint, and a copy taken during a write is torn. SQLite's online backup reads every
//! page inside one read transaction instead. It copies all pages in one step: in WAL mode
//! that read holds up no writer, and a stepwise copy would restart whenever the job commits.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

/// How long to wait before retrying when the source is busy.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Copies the database at `db` to `target`, replacing it: the copy is written beside
/// `target` and renamed over it, so `target` is always a whole database.
pub fn backup(db: &Path, target: &Path, busy_timeout: Duration) -> anyhow::Result<()> {
    let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening database {}", db.display()))?;
    source.busy_timeout(busy_timeout)?;
    let partial = target.with_extension("partial");
    let _ = std::fs::remove_file(&partial);

    copy_pages(&source, &partial)
        .with_context(|| format!("backing up {} to {}", db.display(), partial.display()))?;

    std::fs::rename(&partial, target)
        .with_context(|| format!("moving the backup to {}", target.display()))
}

fn copy_pages(source: &Connection, partial: &Path) -> anyhow::Result<()> {
    let mut copy = Connection::open(partial)?;
    // Every page in one step; a busy source is retried after a pause.
    Backup::new(source, &mut copy)?.run_to_completion(i32::MAX, RETRY_PAUSE, None)?;

    let verdict: String = copy.pragma_query_value(None, "integrity_check", |row| row.get(0))?;
    anyhow::ensure!(
        verdict == "ok",
        "the copy failed its integrity check: {verdict}"
    );
    Ok(())
}
