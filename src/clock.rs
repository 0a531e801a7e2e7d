//! Redis's clock, read without asking Redis on every ping.
//!
//! Heartbeats are stamped on Redis's clock so that every API host agrees, whatever its
//! own wall clock says. Asking Redis for the time (`TIME`) inside the ping script costs
//! about a fifth of the script's run time inside Redis, so an API process instead reads
//! `TIME` every few seconds, notes the round trip, and adds its own monotonic clock's
//! elapsed time to that reading. The host's wall clock is never consulted. An estimate
//! is off by at most half the round trip of its reading (well under a millisecond on a
//! LAN) plus what the host's monotonic clock drifts in a few seconds (microseconds).
//!
//! A reading older than [`MAX_AGE`] is not used, nor one whose round trip took longer than
//! [`MAX_ROUND_TRIP`]. Without a usable reading the ping script reads `TIME` itself, as it
//! does before the first reading, so a Redis that cannot be read from costs speed, never a
//! wrong stamp. The script also never writes a heartbeat older than the one stored, so a
//! new reading a fraction of a millisecond behind the last cannot move anyone backwards.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;

use crate::time::Millis;

/// How often the clock is read again.
pub const READ_EVERY: Duration = Duration::from_secs(5);

/// How long a reading may be used: long enough to ride out a few failed reads, short
/// enough that a step in Redis's clock reaches the stamps within half a minute.
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// The slowest round trip whose reading is kept: its estimates may be off by half of it.
pub const MAX_ROUND_TRIP: Duration = Duration::from_millis(20);

/// Redis's time, estimated from the latest reading.
#[derive(Debug, Default)]
pub struct RedisClock {
    reading: RwLock<Option<Reading>>,
}

/// Redis's clock in microseconds, and the local instant it is taken to belong to.
#[derive(Clone, Copy, Debug)]
struct Reading {
    redis_micros: i64,
    at: Instant,
}

/// What one attempt to read the clock came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The reading is kept; its estimates are off by at most half this round trip.
    Kept { round_trip: Duration },
    /// The round trip took too long to trust; the previous reading stays.
    TooSlow { round_trip: Duration },
}

impl RedisClock {
    /// A clock with no reading yet: [`RedisClock::now`] is `None` until the first one.
    pub fn new() -> RedisClock {
        RedisClock::default()
    }

    /// Redis's time now, in milliseconds, or `None` without a fresh enough reading.
    pub fn now(&self) -> Option<Millis> {
        let reading = (*self.reading.read().unwrap_or_else(|e| e.into_inner()))?;
        let age = reading.at.elapsed();
        if age > MAX_AGE {
            return None;
        }
        Some((reading.redis_micros + age.as_micros() as i64).div_euclid(1000))
    }

    /// Reads Redis's clock once. The reading is taken to belong to the middle of the round
    /// trip, which is where the error bound of half the round trip comes from.
    pub async fn read<C>(&self, con: &mut C) -> redis::RedisResult<ReadOutcome>
    where
        C: ConnectionLike + Send,
    {
        let sent = Instant::now();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(con).await?;
        let round_trip = sent.elapsed();
        if round_trip > MAX_ROUND_TRIP {
            return Ok(ReadOutcome::TooSlow { round_trip });
        }
        let reading = Reading {
            redis_micros: secs * 1_000_000 + micros,
            at: sent + round_trip / 2,
        };
        *self.reading.write().unwrap_or_else(|e| e.into_inner()) = Some(reading);
        Ok(ReadOutcome::Kept { round_trip })
    }

    /// Reads the clock every [`READ_EVERY`] on a task of its own, for as long as the
    /// process runs. A failed read is logged once per run of failures; until a read
    /// succeeds again the pings read `TIME` themselves.
    pub fn keep_reading<C>(self: &Arc<Self>, mut con: C)
    where
        C: ConnectionLike + Send + 'static,
    {
        let clock = Arc::clone(self);
        tokio::spawn(async move {
            let mut failing = false;
            let mut ticks = tokio::time::interval(READ_EVERY);
            loop {
                ticks.tick().await;
                match clock.read(&mut con).await {
                    Ok(outcome) => {
                        if failing {
                            tracing::info!(?outcome, "reading Redis's clock again");
                        }
                        failing = false;
                    }
                    Err(e) if !failing => {
                        let fallback = "pings ask Redis for the time";
                        tracing::warn!(error = %e, fallback, "reading Redis's clock failed");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
    }
}
