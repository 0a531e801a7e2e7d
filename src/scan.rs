//! Walking the shadow keys: what Redis knows of every user seen lately.
//!
//! The walk uses SCAN with a MATCH pattern, never KEYS: SCAN does a bounded amount of work
//! per call, so Redis keeps serving pings in between. Each batch of keys is followed by
//! `TIME` and one MGET of the users' shadow keys, sent in the same pipeline as the SCAN for
//! the next batch, so a batch costs one round trip. A user is online when Redis's clock
//! has not passed the presence key's deadline in the shadow value, as status reads judge
//! it (see [`crate::status`]); only values written by an earlier version, which carry no
//! deadline, send the walk to those users' presence keys, in one read after the SCAN.
//!
//! The job walks shadow keys rather than presence keys because a shadow key outlives its
//! user's session: a user who came online and went offline between two runs is still
//! found, and their last-seen recorded.

use redis::aio::ConnectionLike;

use crate::compact_id::CompactId;
use crate::keys::KeyLayout;
use crate::shadow::Shadow;
use crate::time::{Millis, from_time_reply};

/// The default SCAN COUNT: keys Redis examines per call.
pub const DEFAULT_SCAN_COUNT: usize = 1000;

/// One user as the walk found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The user id.
    pub user: CompactId,
    /// The shadow value: last heartbeat and session start.
    pub shadow: Shadow,
    /// Whether the user was online when their batch was read.
    pub online: bool,
}

/// The outcome of one walk.
#[derive(Debug, Default)]
pub struct Walk {
    /// One observation per user, sorted by user id.
    pub observations: Vec<Observation>,
    /// Keys SCAN returned, counting repeats.
    pub keys_scanned: u64,
    /// Keys SCAN returned more than once (SCAN may repeat a key while Redis rehashes).
    pub duplicates: u64,
    /// Keys or values this service did not write, skipped.
    pub skipped_values: u64,
    /// Redis's clock when the walk began.
    pub started: Millis,
}

/// Walks every shadow key under `keys`, reading values in batches of about `count`.
/// `on_batch` hears the running count of keys scanned.
///
/// While Redis answers one batch, the job records the one before: each round trip goes
/// out on a task of its own over a clone of the connection (which shares it), so the
/// job's parsing and bookkeeping overlap Redis's work instead of leaving Redis idle.
pub async fn walk_shadows<C>(
    con: &mut C,
    keys: &KeyLayout,
    count: usize,
    mut on_batch: impl FnMut(u64),
) -> redis::RedisResult<Walk>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut walk = Walk {
        started: redis_time(con).await?,
        ..Walk::default()
    };
    let pattern = keys.shadow_pattern();
    let (mut cursor, batch) = scan_step(con, 0, &pattern, count).await?;
    let mut users = users_of(keys, &batch, &mut walk);
    let mut unrecorded: Option<(Vec<CompactId>, BatchRead)> = None;
    let mut unsettled = Vec::new();
    while !users.is_empty() || cursor != 0 {
        let in_flight = send_step(con, keys, &users, cursor, &pattern, count);
        if let Some((users, read)) = unrecorded.take() {
            record_batch(&mut walk, &mut unsettled, users, read)?;
        }
        let (values, next) = in_flight.await.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "a walk step failed",
                e.to_string(),
            ))
        })??;
        on_batch(walk.keys_scanned);
        if let Some(values) = values {
            unrecorded = Some((std::mem::take(&mut users), values));
        }
        users.clear();
        if let Some(reply) = next {
            let batch: Vec<Vec<u8>>;
            (cursor, batch) = redis::from_redis_value(reply)?;
            users = users_of(keys, &batch, &mut walk);
        } else {
            cursor = 0;
        }
    }
    if let Some((users, read)) = unrecorded {
        record_batch(&mut walk, &mut unsettled, users, read)?;
    }
    settle(con, keys, &mut walk, &unsettled).await?;
    on_batch(walk.keys_scanned);
    let sorting = std::time::Instant::now();
    dedup(&mut walk);
    let sort_ms = sorting.elapsed().as_millis() as u64;
    tracing::debug!(
        sort_ms,
        observations = walk.observations.len(),
        "sorted the walk"
    );
    Ok(walk)
}

/// Redis's replies to `TIME` and to the MGET of a batch's shadow keys.
type BatchRead = (redis::Value, redis::Value);

/// The replies of one step: the read of `users`' values (when there are users) and the
/// next SCAN (when `cursor` is not 0).
type StepReplies = (Option<BatchRead>, Option<redis::Value>);

/// Sends one step, `TIME` and the MGET of `users`' shadow keys, then the SCAN from
/// `cursor`, in one pipeline on a task of its own.
fn send_step<C>(
    con: &C,
    keys: &KeyLayout,
    users: &[CompactId],
    cursor: u64,
    pattern: &str,
    count: usize,
) -> tokio::task::JoinHandle<redis::RedisResult<StepReplies>>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut pipe = redis::pipe();
    let read = !users.is_empty();
    if read {
        pipe.cmd("TIME");
        pipe.add_command(keys.read_shadows(users.iter().map(CompactId::as_str)));
    }
    let more = cursor != 0;
    if more {
        pipe.cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
    }
    let mut con = con.clone();
    tokio::spawn(async move {
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut con).await?;
        let next = if more { replies.pop() } else { None };
        let values = if read { replies.pop() } else { None };
        let time = if read { replies.pop() } else { None };
        Ok((time.zip(values), next))
    })
}

async fn scan_step<C: ConnectionLike + Send>(
    con: &mut C,
    cursor: u64,
    pattern: &str,
    count: usize,
) -> redis::RedisResult<(u64, Vec<Vec<u8>>)> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await
}

/// Redis's clock, in milliseconds.
pub async fn redis_time<C: ConnectionLike + Send>(con: &mut C) -> redis::RedisResult<Millis> {
    from_time_reply(redis::cmd("TIME").query_async(con).await?)
}

/// The users of a SCAN batch of shadow keys, counted into `walk`; a key that is not a
/// shadow key of this layout is counted as skipped.
pub(crate) fn users_of(keys: &KeyLayout, batch: &[Vec<u8>], walk: &mut Walk) -> Vec<CompactId> {
    walk.keys_scanned += batch.len() as u64;
    let mut users = Vec::with_capacity(batch.len());
    for key in batch {
        match keys.user_of_shadow(key) {
            Some(user) => users.push(CompactId::from(user)),
            None => {
                walk.skipped_values += 1;
                let key = String::from_utf8_lossy(key);
                tracing::warn!(%key, "skipping a key this service did not write");
            }
        }
    }
    users
}

fn record_batch(
    walk: &mut Walk,
    unsettled: &mut Vec<usize>,
    users: Vec<CompactId>,
    (time, values): BatchRead,
) -> redis::RedisResult<()> {
    let now = from_time_reply(time)?;
    let values: Vec<Option<Vec<u8>>> = redis::from_redis_value(values)?;
    for (user, value) in users.into_iter().zip(values) {
        observe(walk, unsettled, user, value.as_deref(), now);
    }
    Ok(())
}

/// Records one user's shadow value as read at `now` on the clock of the server holding
/// it. A shadow key that expired between SCAN and the read is simply gone; one holding
/// something else is counted and skipped. A value without a deadline leaves the user's
/// index in `unsettled`, for [`settle`] to ask the presence key.
pub(crate) fn observe(
    walk: &mut Walk,
    unsettled: &mut Vec<usize>,
    user: CompactId,
    value: Option<&[u8]>,
    now: Millis,
) {
    let Some(raw) = value else { return };
    match Shadow::parse_with_deadline(raw) {
        Some((shadow, until)) => {
            if until.is_none() {
                unsettled.push(walk.observations.len());
            }
            walk.observations.push(Observation {
                user,
                shadow,
                online: until.is_some_and(|until| now <= until),
            });
        }
        None => {
            walk.skipped_values += 1;
            tracing::warn!(
                %user,
                "skipping a shadow key holding a value this service did not write"
            );
        }
    }
}

/// Reads the presence keys of the observations at `unsettled`, a batch of SCAN's size at
/// a time, and takes each user as online while theirs exists.
async fn settle<C>(
    con: &mut C,
    keys: &KeyLayout,
    walk: &mut Walk,
    unsettled: &[usize],
) -> redis::RedisResult<()>
where
    C: ConnectionLike + Send,
{
    for chunk in unsettled.chunks(DEFAULT_SCAN_COUNT) {
        let users = chunk.iter().map(|&i| &*walk.observations[i].user);
        let values: Vec<redis::Value> = keys.read_presence(users).query_async(con).await?;
        for (&i, value) in chunk.iter().zip(values) {
            walk.observations[i].online = value != redis::Value::Nil;
        }
    }
    Ok(())
}

/// Sorts by user and keeps one observation per user: the one with the newest heartbeat.
fn dedup(walk: &mut Walk) {
    walk.observations
        .sort_unstable_by(|a, b| a.user.cmp(&b.user).then(b.shadow.last.cmp(&a.shadow.last)));
    let before = walk.observations.len();
    walk.observations
        .dedup_by(|later, first| later.user == first.user);
    walk.duplicates = (before - walk.observations.len()) as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(user: &str, last: Millis) -> Observation {
        Observation {
            user: user.into(),
            shadow: Shadow {
                last,
                start: 0,
                previous_end: None,
            },
            online: true,
        }
    }

    #[test]
    fn dedup_keeps_one_observation_per_user_the_newest() {
        let mut walk = Walk {
            observations: vec![obs("b", 1), obs("a", 1), obs("b", 3), obs("b", 2)],
            ..Walk::default()
        };

        dedup(&mut walk);

        assert_eq!(walk.observations, vec![obs("a", 1), obs("b", 3)]);
        assert_eq!(walk.duplicates, 2);
    }
}
