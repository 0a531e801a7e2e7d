//! Reading the durable record: last-seen rows and online periods.

use rusqlite::{Connection, OptionalExtension, params};

use crate::time::Millis;

/// What the database knows of one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableRecord {
    /// The latest heartbeat made durable, if any.
    pub last_seen: Option<Millis>,
    /// When the batch job wrote that row.
    pub recorded: Option<Millis>,
    /// The start of the open session, if the latest run saw the user online.
    pub online_since: Option<Millis>,
    /// Closed online periods, newest first.
    pub sessions: Vec<Session>,
}

/// One closed online period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The first heartbeat of the period.
    pub started: Millis,
    /// The last heartbeat (or explicit offline time) of the period.
    pub ended: Millis,
}

/// The newest heartbeat of `user` the database knows: the last-seen row, or the open
/// session's newest heartbeat when the job has not yet seen that session end.
pub fn read_last_seen(conn: &Connection, user: &str) -> rusqlite::Result<Option<Millis>> {
    conn.prepare_cached(
        "SELECT MAX(t) FROM (SELECT last_seen_ms AS t FROM last_seen WHERE user_id = ?1 \
         UNION ALL SELECT last_heartbeat_ms FROM online_users WHERE user_id = ?1)",
    )?
    .query_row([user], |row| row.get(0))
}

/// Everything recorded about `user`, with at most `max_sessions` sessions.
pub fn read_record(
    conn: &Connection,
    user: &str,
    max_sessions: usize,
) -> rusqlite::Result<DurableRecord> {
    let row: Option<(Millis, Millis)> = conn
        .prepare_cached("SELECT last_seen_ms, recorded_ms FROM last_seen WHERE user_id = ?1")?
        .query_row([user], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let online_since = conn
        .prepare_cached("SELECT since_ms FROM online_users WHERE user_id = ?1")?
        .query_row([user], |row| row.get(0))
        .optional()?;
    let sessions = conn
        .prepare_cached(
            "SELECT started_ms, ended_ms FROM sessions WHERE user_id = ?1 \
             ORDER BY started_ms DESC LIMIT ?2",
        )?
        .query_map(params![user, max_sessions as i64], |row| {
            Ok(Session {
                started: row.get(0)?,
                ended: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(DurableRecord {
        last_seen: row.map(|r| r.0),
        recorded: row.map(|r| r.1),
        online_since,
        sessions,
    })
}
