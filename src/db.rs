//! Opening the SQLite database and bringing its schema up to date.
//!
//! The schema lives in `sql/` as numbered migration files, compiled into the binaries.
//! `PRAGMA user_version` records how many have been applied; both binaries migrate at
//! start, inside an IMMEDIATE transaction, so two processes starting at once apply each
//! migration exactly once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// The migrations, in order; the version of each is its position, counting from 1.
const MIGRATIONS: &[&str] = &[include_str!("../sql/0001_initial.sql")];

/// The default path of the database file.
pub const DEFAULT_DB_PATH: &str = "presence.db";

/// How long a statement waits for another process's lock before it fails.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema version this build writes.
pub fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// Opens (creating if needed) the database at `path` for writing, in WAL mode so readers
/// never wait for the writer, and migrates it.
pub fn open_and_migrate(path: &Path, busy_timeout: Duration) -> anyhow::Result<Connection> {
    let mut conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    configure(&conn, busy_timeout)?;
    migrate(&mut conn).with_context(|| format!("migrating database {}", path.display()))?;
    Ok(conn)
}

fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // One commit per job run: the cost of a full sync is nothing beside losing a run.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")
}

/// Applies every migration newer than the database's `user_version`. A database already
/// current is only read, so readers never queue behind a running job for the write lock.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let latest = schema_version();
    if user_version(conn)? == latest {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = user_version(&tx)?;
    if current > latest {
        bail!("the database has schema version {current}, newer than this build's {latest}");
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {version}"))?;
        tx.pragma_update(None, "user_version", version)?;
        tracing::info!(version, "applied schema migration");
    }
    tx.commit()?;
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// A small pool of read-only connections for the API's fallback reads.
///
/// `rusqlite::Connection` is `Send` but not `Sync`, so each read borrows a connection for
/// its duration. Reads are point lookups of microseconds, so a handful of connections
/// serves any request rate the Redis side can.
pub struct DbReader {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl DbReader {
    /// A reader of the database at `path`, which must exist and be migrated.
    pub fn new(path: &Path, busy_timeout: Duration) -> DbReader {
        DbReader {
            path: path.to_owned(),
            busy_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with a connection, opening one when none is idle. A connection that saw an
    /// error is dropped rather than returned, in case the file changed underneath it.
    pub fn with_conn<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> anyhow::Result<R> {
        let conn = match self.take_idle() {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = f(&conn);
        if result.is_ok() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        result.with_context(|| format!("reading database {}", self.path.display()))
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn open(&self) -> anyhow::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)
            .with_context(|| format!("opening database {}", self.path.display()))?;
        conn.busy_timeout(self.busy_timeout)?;
        Ok(conn)
    }
}
