//! Answering "is this user online, and when were they last seen?".
//!
//! Redis answers for everyone seen within the shadow TTL, from the shadow key alone: it
//! holds the exact last heartbeat and the presence key's deadline, which Redis's `TIME`,
//! read in the same round trip, turns into "online" (see [`crate::shadow`]). Reading the
//! presence key too doubled the keys Redis touched per lookup, and that was most of a
//! status query's cost. A user whose shadow key cannot say (none, one written by an
//! earlier version, a clock a cluster could not name) costs a second read, of presence
//! keys, and anyone Redis no longer knows is read from SQLite.
//!
//! The deadline comes from the same script and clock as the presence key's TTL, so the
//! two agree; the key's own expiry is computed when its command runs, a fraction of a
//! millisecond after the script read the clock, and can outlive the deadline by that much.
//! Any number of users costs one Redis round trip (on a cluster, one per primary, in
//! parallel: see [`crate::slot_map`]), plus the second read and SQLite point reads only
//! when needed.

use std::sync::Arc;

use redis::aio::ConnectionLike;

use crate::db::DbReader;
use crate::keys::KeyLayout;
use crate::last_seen::read_last_seen;
use crate::redis_conn::RedisConn;
use crate::shadow::{Shadow, parse_ms};
use crate::time::Millis;
use crate::user::UserId;

/// One user's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// The user id.
    pub user: UserId,
    /// Whether a heartbeat arrived within the online TTL.
    pub online: bool,
    /// The last heartbeat or explicit offline time; `None` for a user never seen.
    pub last_seen: Option<Millis>,
}

/// Why a status read failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Redis did not answer.
    #[error("reading Redis")]
    Redis(#[from] redis::RedisError),
    /// The database did not answer.
    #[error("reading the database")]
    Database(#[source] anyhow::Error),
}

/// Reads presence from Redis, with SQLite behind it.
pub struct StatusReader {
    keys: KeyLayout,
    db: Arc<DbReader>,
}

impl StatusReader {
    /// A reader of keys under `keys`, falling back to `db`.
    pub fn new(keys: KeyLayout, db: Arc<DbReader>) -> StatusReader {
        StatusReader { keys, db }
    }

    /// The presence of each of `users`, in the same order.
    pub async fn read_many(
        &self,
        con: &mut RedisConn,
        users: Vec<UserId>,
    ) -> Result<Vec<Presence>, StatusError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let read = self.keys.read_shadows(users.iter().map(UserId::as_str));
        let shadows = con.mget_with_clock(read).await?;
        let mut unsure = Vec::new();
        let mut found: Vec<Presence> = users
            .into_iter()
            .zip(shadows)
            .enumerate()
            .map(|(i, (user, (shadow, clock)))| {
                let (presence, sure) = from_shadow(user, &shadow, clock);
                if !sure {
                    unsure.push(i);
                }
                presence
            })
            .collect();
        self.ask_presence_keys(con, &mut found, &unsure).await?;
        self.fill_from_db(&mut found).await?;
        Ok(found)
    }

    /// Settles the users at `unsure` by their presence keys: online while one exists, and
    /// its session start as last-seen when the shadow key had none to give.
    async fn ask_presence_keys<C>(
        &self,
        con: &mut C,
        found: &mut [Presence],
        unsure: &[usize],
    ) -> redis::RedisResult<()>
    where
        C: ConnectionLike + Send,
    {
        if unsure.is_empty() {
            return Ok(());
        }
        let read = self
            .keys
            .read_presence(unsure.iter().map(|&i| found[i].user.as_str()));
        let values: Vec<redis::Value> = read.query_async(con).await?;
        for (&i, value) in unsure.iter().zip(&values) {
            let presence = bytes(value);
            found[i].online = presence.is_some();
            if found[i].last_seen.is_none() {
                found[i].last_seen = presence.and_then(presence_heartbeat);
            }
        }
        Ok(())
    }

    /// Looks up, in one blocking task, every user Redis had no last-seen for.
    async fn fill_from_db(&self, found: &mut [Presence]) -> Result<(), StatusError> {
        let missing: Vec<(usize, UserId)> = found
            .iter()
            .enumerate()
            .filter(|(_, p)| p.last_seen.is_none())
            .map(|(i, p)| (i, p.user.clone()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let db = Arc::clone(&self.db);
        let durable = tokio::task::spawn_blocking(move || {
            db.with_conn(|conn| {
                missing
                    .into_iter()
                    .map(|(i, user)| Ok((i, read_last_seen(conn, user.as_str())?)))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
        })
        .await
        .map_err(|e| StatusError::Database(e.into()))?
        .map_err(StatusError::Database)?;
        for (i, last_seen) in durable {
            found[i].last_seen = last_seen;
        }
        Ok(())
    }
}

/// What a shadow value says of its user, and whether that is the whole answer: it is
/// when the value carries the presence key's deadline and the clock to judge it by.
fn from_shadow(user: UserId, shadow: &redis::Value, clock: Option<Millis>) -> (Presence, bool) {
    let parsed = bytes(shadow).and_then(Shadow::parse_with_deadline);
    let online = match (parsed, clock) {
        (Some((_, Some(until))), Some(now)) => Some(now <= until),
        _ => None,
    };
    let presence = Presence {
        user,
        online: online.unwrap_or(false),
        last_seen: parsed.map(|(s, _)| s.last),
    };
    (presence, online.is_some())
}

/// The bytes of a value MGET found; `None` for a missing key (or a key of another type).
fn bytes(value: &redis::Value) -> Option<&[u8]> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// A heartbeat the presence value vouches for: the start of the session it holds
/// (`start:previous_end`), or the bare heartbeat earlier versions kept there. Only a
/// missing or foreign shadow key makes this the answer, and then an earlier heartbeat of
/// the user is the best one Redis still has.
fn presence_heartbeat(raw: &[u8]) -> Option<Millis> {
    let start = raw.split(|&b| b == b':').next()?;
    parse_ms(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_value_vouches_for_its_session_start_or_its_bare_heartbeat() {
        assert_eq!(presence_heartbeat(b"1000:400"), Some(1000));
        assert_eq!(presence_heartbeat(b"1000:"), Some(1000));
        assert_eq!(presence_heartbeat(b"1500"), Some(1500));
        assert_eq!(presence_heartbeat(b"not-a-time"), None);
        assert_eq!(presence_heartbeat(b":400"), None);
    }
}
