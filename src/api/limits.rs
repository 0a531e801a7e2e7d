//! Limits that keep one client, or a flood of them, from taking the service down.
//!
//! - [`PingLimiter`]: how often one user may write (ping or go offline); the excess is
//!   answered 429 before Redis is touched.
//! - [`RequestGuard`]: how many requests may be in flight at once (the excess is shed
//!   with 503 at once rather than queued) and how long one may take (503 after).
//! - The header-read timeout and the connection cap live in [`super::server`], where
//!   connections are accepted.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use tokio::sync::Semaphore;

use super::ApiError;

/// Writes one user may make at once before being slowed down.
pub const DEFAULT_PING_BURST: u32 = 3;
/// Milliseconds after which one more write of a user is allowed.
pub const DEFAULT_PING_REFILL_MS: u64 = 1000;
/// Users whose recent writes are remembered, across all shards.
pub const DEFAULT_PING_TRACKED_USERS: usize = 100_000;
/// Milliseconds one request may take, body reading included.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Milliseconds a client has to send a request's headers (and an idle keep-alive
/// connection stays open).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Requests handled at once; more are shed.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// Connections open at once; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The abuse limits of the API.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Pings and offline calls one user may make at once.
    #[arg(long, env = "PRESENCE_PING_BURST", default_value_t = DEFAULT_PING_BURST)]
    pub ping_burst: u32,

    /// Milliseconds after which a user may make one more ping or offline call.
    #[arg(long, env = "PRESENCE_PING_REFILL_MS", default_value_t = DEFAULT_PING_REFILL_MS)]
    pub ping_refill_ms: u64,

    /// Users whose recent pings the rate limit remembers; when full, users whose whole
    /// burst is back are forgotten, and a new user beyond that goes unlimited.
    #[arg(long, env = "PRESENCE_PING_TRACKED_USERS", default_value_t = DEFAULT_PING_TRACKED_USERS)]
    pub ping_tracked_users: usize,

    /// Milliseconds a request may take, reading its body included; 503 after.
    #[arg(long, env = "PRESENCE_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,

    /// Milliseconds a client has to send the headers of a request; the connection is
    /// closed after. Also closes keep-alive connections idle that long.
    #[arg(long, env = "PRESENCE_HEADER_READ_TIMEOUT_MS")]
    #[arg(default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS)]
    pub header_read_timeout_ms: u64,

    /// Requests handled at once; more get 503 `overloaded` at once.
    #[arg(long, env = "PRESENCE_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Connections open at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "PRESENCE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
}

impl Default for LimitArgs {
    fn default() -> LimitArgs {
        LimitArgs {
            ping_burst: DEFAULT_PING_BURST,
            ping_refill_ms: DEFAULT_PING_REFILL_MS,
            ping_tracked_users: DEFAULT_PING_TRACKED_USERS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl LimitArgs {
    /// Checks every limit lets something through.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.ping_burst >= 1, "--ping-burst must be at least 1");
        anyhow::ensure!(
            self.ping_refill_ms >= 1,
            "--ping-refill-ms must be at least 1"
        );
        anyhow::ensure!(
            self.request_timeout_ms >= 1,
            "--request-timeout-ms must be at least 1"
        );
        anyhow::ensure!(
            self.header_read_timeout_ms >= 1,
            "--header-read-timeout-ms must be at least 1"
        );
        anyhow::ensure!(
            self.max_in_flight >= 1,
            "--max-in-flight must be at least 1"
        );
        anyhow::ensure!(
            self.max_connections >= 1,
            "--max-connections must be at least 1"
        );
        Ok(())
    }

    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
}

const SHARDS: usize = 16;

/// A per-user rate limit on writes, kept in this process.
///
/// Each user has a "theoretical arrival time" (the generic cell rate algorithm): a write is
/// allowed while that time is at most `burst - 1` refills ahead of now, and moves it one
/// refill forward. One `Instant` per user is the whole state, and a user whose time has
/// passed is the same as one never seen, so such entries may be dropped at any moment.
///
/// The users live in a few mutex-guarded maps chosen by hash, so writes of different
/// users rarely wait for one another; a std `Mutex` because no lock is held across an
/// `.await`. Memory is bounded by `tracked_users`: a full shard first drops every entry
/// whose time has passed (with the default one-second refill, only users who wrote in the
/// last few seconds remain), and if it is still full it admits the write untracked rather
/// than refuse users it cannot remember. At about 70 bytes an entry, the default of 100 000
/// users costs some 7 MB. The limit is per API instance: behind N instances a user may
/// write up to N times as often, which is still far from hurting Redis.
pub struct PingLimiter {
    burst_span: Duration,
    refill: Duration,
    shard_capacity: usize,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Box<str>, Instant>>>,
}

impl PingLimiter {
    /// A limiter allowing `burst` writes at once and one more every `refill`.
    pub fn new(burst: u32, refill: Duration, tracked_users: usize) -> PingLimiter {
        PingLimiter {
            burst_span: refill * burst.saturating_sub(1),
            refill,
            shard_capacity: tracked_users.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Admits a write of `user` at `now`, or says how long until one would be admitted.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[self.hasher.hash_one(user) as usize % SHARDS];
        let mut times = shard.lock().unwrap_or_else(|e| e.into_inner());
        let due = times.get(user).map_or(now, |t| (*t).max(now));
        if due > now + self.burst_span {
            return Err(due - self.burst_span - now);
        }
        let next = due + self.refill;
        match times.get_mut(user) {
            Some(t) => *t = next,
            None => {
                if times.len() >= self.shard_capacity {
                    times.retain(|_, t| *t > now);
                }
                if times.len() < self.shard_capacity {
                    times.insert(user.into(), next);
                }
            }
        }
        Ok(())
    }

    /// Users currently remembered.
    pub fn tracked(&self) -> usize {
        let sizes = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len());
        sizes.sum()
    }
}

/// The 429 answer, with `Retry-After` in whole seconds, rounded up.
pub fn rate_limited(wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "this user is pinging too often; slow down",
    )
    .with_header(RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

/// The in-flight cap and request timeout, as one middleware.
pub struct RequestGuard {
    in_flight: Semaphore,
    timeout: Duration,
}

impl RequestGuard {
    /// A guard as `args` say.
    pub fn new(args: &LimitArgs) -> RequestGuard {
        RequestGuard {
            in_flight: Semaphore::new(args.max_in_flight),
            timeout: Duration::from_millis(args.request_timeout_ms),
        }
    }
}

/// Sheds a request when too many are in flight, and cuts it off when it takes too long.
/// Shedding at once rather than queueing keeps latency bounded under overload: a client
/// told 503 can retry elsewhere, one left waiting just times out later.
pub async fn guard_request(
    State(guard): State<Arc<RequestGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = guard.in_flight.try_acquire() else {
        tracing::debug!("shedding a request: too many in flight");
        return overloaded().into_response();
    };
    match tokio::time::timeout(guard.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::debug!(
                timeout_ms = guard.timeout.as_millis() as u64,
                "request timed out"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long; retry shortly",
            )
            .into_response()
        }
    }
}

fn overloaded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "the server is handling too many requests; retry shortly",
    )
    .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_one_per_refill() {
        let limiter = PingLimiter::new(3, SECOND, 100);
        let t0 = Instant::now();

        let burst: Vec<_> = (0..4).map(|_| limiter.check("ann", t0).is_ok()).collect();
        let too_soon = limiter.check("ann", t0 + SECOND / 2);
        let after_refill = limiter.check("ann", t0 + SECOND);
        let other_user = limiter.check("bob", t0);

        assert_eq!(burst, [true, true, true, false]);
        assert_eq!(too_soon, Err(SECOND / 2));
        assert_eq!(after_refill, Ok(()));
        assert_eq!(other_user, Ok(()));
    }

    #[test]
    fn a_quiet_user_gets_the_whole_burst_back() {
        let limiter = PingLimiter::new(2, SECOND, 100);
        let t0 = Instant::now();
        for _ in 0..2 {
            limiter.check("ann", t0).unwrap();
        }

        let later = t0 + 10 * SECOND;
        let burst: Vec<_> = (0..3)
            .map(|_| limiter.check("ann", later).is_ok())
            .collect();

        assert_eq!(burst, [true, true, false]);
    }

    #[test]
    fn memory_stays_within_the_tracked_users() {
        let limiter = PingLimiter::new(1, SECOND, 64);
        let t0 = Instant::now();

        for i in 0..10_000 {
            limiter.check(&format!("user{i}"), t0).unwrap();
        }
        let crowded = limiter.tracked();
        limiter.check("late", t0 + 2 * SECOND).unwrap();

        assert!(crowded <= 64 + SHARDS, "{crowded} users tracked");
        assert!(
            limiter.tracked() < crowded,
            "expired users were not dropped"
        );
    }
}
