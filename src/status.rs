//! Answering "is this user online, and when were they last seen?".
//!
//! Redis answers for everyone seen within the shadow TTL: the presence key says online,
//! the shadow key holds the exact last heartbeat. For anyone older, the durable row in
//! SQLite answers. Any number of users costs one Redis round trip (on a cluster, one per
//! primary, in parallel: see [`crate::slot_map`]) and, only if some of them are not in
//! Redis, one batch of SQLite point reads.

use std::sync::Arc;

use redis::aio::ConnectionLike;

use crate::db::DbReader;
use crate::keys::KeyLayout;
use crate::last_seen::read_last_seen;
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
    pub async fn read_many<C>(
        &self,
        con: &mut C,
        users: Vec<UserId>,
    ) -> Result<Vec<Presence>, StatusError>
    where
        C: ConnectionLike + Send,
    {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.fetch(con, &users).await?;
        let mut found: Vec<Presence> = users
            .into_iter()
            .zip(values.chunks_exact(2))
            .map(|(user, pair)| from_redis(user, &pair[0], &pair[1]))
            .collect();
        self.fill_from_db(&mut found).await?;
        Ok(found)
    }

    async fn fetch<C>(&self, con: &mut C, users: &[UserId]) -> redis::RedisResult<Vec<redis::Value>>
    where
        C: ConnectionLike + Send,
    {
        self.keys
            .read_both(users.iter().map(UserId::as_str))
            .query_async(con)
            .await
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

/// Reads one user's two values. The presence value backs up a shadow key that holds
/// something this service did not write.
fn from_redis(user: UserId, presence: &redis::Value, shadow: &redis::Value) -> Presence {
    let last_seen = bytes(shadow)
        .and_then(Shadow::parse)
        .map(|s| s.last)
        .or_else(|| bytes(presence).and_then(presence_heartbeat));
    Presence {
        user,
        online: bytes(presence).is_some(),
        last_seen,
    }
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
