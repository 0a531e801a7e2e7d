//! Coalescing the heartbeats of concurrent requests into shared script runs.
//!
//! A script run costs Redis far more for its call than for each user in it, so the API
//! does not send one run per request. Requests put their heartbeat on a queue; one task
//! takes whatever has gathered, up to a batch ([`DEFAULT_WRITE_BATCH`] by default), and
//! sends it as one run, with one run outstanding by default ([`DEFAULT_WRITES_IN_FLIGHT`]).
//! Nothing waits on a timer: when Redis keeps up, each heartbeat goes out at once, alone;
//! only while a run is outstanding do the next ones gather, so the batches grow with the
//! load and a heartbeat waits at most for the run ahead of it.
//!
//! On a Redis Cluster a script's keys must share a slot, so a batch is split by slot and
//! the parts are sent side by side; users rarely share one, and the gain there is in the
//! fewer, fuller writes to each node's connection rather than in fewer script runs.
//!
//! A failed run fails every heartbeat in it with the same error. A run that fails part
//! way (Redis out of memory, say) has still written the users before the failure; their
//! clients retry, and a retried heartbeat only moves a stamp forward.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::heartbeat::{Beat, HeartbeatWriter};
use crate::redis_conn::RedisConn;
use crate::slot_map::key_slot;
use crate::time::Millis;
use crate::user::UserId;

/// The default most heartbeats in one script run: large enough that a batch amortises
/// the call, small enough that one run holds Redis for about a millisecond at most.
pub const DEFAULT_WRITE_BATCH: usize = 128;

/// The default most script runs outstanding at once: one. The next batch gathers while
/// Redis works on the current one, so batches are as full as the load allows, and each
/// run wakes Redis and the API once for more users. Beside two and four runs outstanding,
/// one gave 10-15% more pings a second from the same two cores, with lower tail latency.
/// One run at a time still keeps up with far more than one API process can serve: a full
/// batch of 128 takes Redis about a millisecond, so even with half a millisecond of network
/// between them a process could write about 80,000 heartbeats a second. Raise it where
/// the round trip to Redis is long.
pub const DEFAULT_WRITES_IN_FLIGHT: usize = 1;

/// How heartbeats are gathered.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// The most heartbeats in one script run; 1 sends each alone.
    pub max_batch: usize,
    /// The most script runs outstanding at once.
    pub in_flight: usize,
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits {
            max_batch: DEFAULT_WRITE_BATCH,
            in_flight: DEFAULT_WRITES_IN_FLIGHT,
        }
    }
}

/// Heartbeats waiting for a run; past this, requests wait for room (the API caps requests
/// in flight well below it).
const QUEUE_DEPTH: usize = 4096;

/// The sending end: cloning it shares the queue and its task.
#[derive(Clone, Debug)]
pub struct HeartbeatQueue {
    queue: mpsc::Sender<Pending>,
}

/// One request's heartbeat, and where its stamp goes.
struct Pending {
    user: UserId,
    beat: Beat,
    reply: oneshot::Sender<redis::RedisResult<Millis>>,
}

impl HeartbeatQueue {
    /// Starts the task that writes through `writer` on `redis`. It must run inside a Tokio
    /// runtime; the task ends when the last clone of the queue is dropped.
    pub fn start(writer: HeartbeatWriter, redis: RedisConn, limits: QueueLimits) -> HeartbeatQueue {
        let (queue, waiting) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(drain(waiting, Arc::new(writer), redis, limits));
        HeartbeatQueue { queue }
    }

    /// Records `beat` for `user` in the next run and returns its time on Redis's clock.
    pub async fn record(&self, user: UserId, beat: Beat) -> redis::RedisResult<Millis> {
        let (reply, stamp) = oneshot::channel();
        let pending = Pending { user, beat, reply };
        if self.queue.send(pending).await.is_err() {
            return Err(stopped());
        }
        stamp.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> redis::RedisError {
    (redis::ErrorKind::Io, "the heartbeat queue has stopped").into()
}

/// Takes gathered heartbeats off the queue, a batch per run, until every sender is gone.
async fn drain(
    mut waiting: mpsc::Receiver<Pending>,
    writer: Arc<HeartbeatWriter>,
    redis: RedisConn,
    limits: QueueLimits,
) {
    let in_flight = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    while let Some(first) = waiting.recv().await {
        // Waiting for a free run first lets the batch gather while Redis is busy.
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut batch = vec![first];
        while batch.len() < limits.max_batch {
            match waiting.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let (writer, mut redis) = (Arc::clone(&writer), redis.clone());
        tokio::spawn(async move {
            write(&writer, &mut redis, batch).await;
            drop(permit);
        });
    }
}

/// Writes one batch, split by slot on a cluster, and answers every request in it.
async fn write(writer: &HeartbeatWriter, redis: &mut RedisConn, batch: Vec<Pending>) {
    tracing::trace!(heartbeats = batch.len(), "writing a batch");
    match redis {
        RedisConn::Single(_) => write_part(writer, redis, batch).await,
        RedisConn::Cluster(_) => {
            let parts = by_slot(writer, batch).into_values().map(|part| {
                let mut redis = redis.clone();
                async move { write_part(writer, &mut redis, part).await }
            });
            join_all(parts).await;
        }
    }
}

/// Groups a batch by the slot of its users' keys.
fn by_slot(writer: &HeartbeatWriter, batch: Vec<Pending>) -> BTreeMap<u16, Vec<Pending>> {
    let mut parts: BTreeMap<u16, Vec<Pending>> = BTreeMap::new();
    for pending in batch {
        let key = writer.keys().presence(pending.user.as_str());
        parts
            .entry(key_slot(key.as_bytes()))
            .or_default()
            .push(pending);
    }
    parts
}

/// One script run for `part`, whose users share a slot when on a cluster.
async fn write_part(writer: &HeartbeatWriter, redis: &mut RedisConn, part: Vec<Pending>) {
    let beats = part.iter().map(|p| (&p.user, p.beat));
    let result = writer.record(redis, beats).await;

    // A request that gave up (its client left, or it timed out) no longer listens.
    match result {
        Ok(stamps) => {
            for (pending, stamp) in part.into_iter().zip(stamps) {
                let _ = pending.reply.send(Ok(stamp));
            }
        }
        Err(e) => {
            for pending in part {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}
