//! Checking what the snapshot job wrote against the simulated truth, row by row.

use std::cmp::Ordering;
use std::path::Path;

use anyhow::Context;
use rusqlite::Connection;

use crate::population::{Population, user_id};

/// A row of any of the three tables, as (user, time, time).
type Row = (String, i64, i64);

/// How the database compared with the truth.
#[derive(Clone, Copy, Debug, Default)]
pub struct Check {
    /// Rows the truth expects, over the three tables.
    pub expected: u64,
    /// Rows missing, extra or different.
    pub wrong: u64,
}

impl Check {
    /// Whether every row was exactly right.
    pub fn exact(&self) -> bool {
        self.wrong == 0
    }
}

/// Compares `online_users`, `last_seen` and `sessions` in `db` with what `population`
/// says they must hold.
pub fn check_rows(db: &Path, population: &Population) -> anyhow::Result<Check> {
    let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let tables = [
        (
            "SELECT user_id, since_ms, last_heartbeat_ms FROM online_users ORDER BY 1",
            expected_online(population),
        ),
        (
            "SELECT user_id, last_seen_ms, 0 FROM last_seen ORDER BY 1",
            expected_last_seen(population),
        ),
        (
            "SELECT user_id, started_ms, ended_ms FROM sessions ORDER BY 1, 2",
            expected_sessions(population),
        ),
    ];
    let mut check = Check::default();
    for (sql, expected) in tables {
        let found = read_rows(&conn, sql)?;
        check.expected += expected.len() as u64;
        check.wrong += count_differences(&found, &expected);
    }
    Ok(check)
}

fn expected_online(population: &Population) -> Vec<Row> {
    let users = population.users.iter().enumerate();
    users
        .filter(|(_, u)| u.online)
        .map(|(i, u)| (user_id(i), u.shadow.start, u.shadow.last))
        .collect()
}

/// An online user's last-seen is the end of their earlier session, if the shadow key
/// carried one; an offline user's is their last heartbeat.
fn expected_last_seen(population: &Population) -> Vec<Row> {
    let users = population.users.iter().enumerate();
    users
        .filter_map(|(i, u)| {
            let at = if u.online {
                u.shadow.previous_end
            } else {
                Some(u.shadow.last)
            };
            at.map(|at| (user_id(i), at, 0))
        })
        .collect()
}

fn expected_sessions(population: &Population) -> Vec<Row> {
    let users = population.users.iter().enumerate();
    users
        .filter(|(_, u)| !u.online)
        .map(|(i, u)| (user_id(i), u.shadow.start, u.shadow.last))
        .collect()
}

fn read_rows(conn: &Connection, sql: &str) -> anyhow::Result<Vec<Row>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Rows in one sorted list and not in the other, both ways.
fn count_differences(found: &[Row], expected: &[Row]) -> u64 {
    let (mut a, mut b, mut wrong) = (found.iter().peekable(), expected.iter().peekable(), 0);
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return wrong,
            (Some(_), None) | (None, Some(_)) => {
                return wrong + a.count() as u64 + b.count() as u64;
            }
            (Some(x), Some(y)) => {
                match x.cmp(y) {
                    Ordering::Less => _ = a.next(),
                    Ordering::Greater => _ = b.next(),
                    Ordering::Equal => {
                        a.next();
                        b.next();
                        continue;
                    }
                }
                wrong += 1;
            }
        }
    }
}
