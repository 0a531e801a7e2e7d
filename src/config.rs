//! Command-line and environment options shared by both binaries.
//!
//! Every option is a long flag with a `PRESENCE_…` environment variable behind it, and a
//! default that runs against a local Redis. `--help` of each binary is the reference.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Args;

use crate::db::{DEFAULT_BUSY_TIMEOUT, DEFAULT_DB_PATH};
use crate::keys::{DEFAULT_KEY_PREFIX, KeyLayout};
use crate::redis_conn::{RedisConn, open_lazy, redact_url};

/// The default Redis to talk to.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The default online TTL in seconds: a user is online for this long after a heartbeat.
pub const DEFAULT_ONLINE_TTL_SECS: u64 = 300;

/// The default shadow TTL in seconds: how long the last heartbeat stays in Redis.
///
/// Twenty minutes is the online TTL plus three five-minute job intervals: even with one
/// run missed, at least one run sees each shadow key after its user went offline, and
/// the status API reads exact times from Redis until the durable row exists.
pub const DEFAULT_SHADOW_TTL_SECS: u64 = 1200;

/// Where the data lives.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Redis URL: `redis://[:password@]host:port[/db]` for one server, or
    /// `redis+cluster://[:password@]host:port[,host:port…]` for a Redis Cluster by its seeds.
    #[arg(long, env = "PRESENCE_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,

    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "PRESENCE_KEY_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,

    /// SQLite database file; created and migrated at start.
    #[arg(long, env = "PRESENCE_DB", default_value = DEFAULT_DB_PATH)]
    pub db: PathBuf,

    /// How long a database statement waits for another process's lock, in milliseconds.
    #[arg(long, env = "PRESENCE_BUSY_TIMEOUT_MS")]
    #[arg(default_value_t = DEFAULT_BUSY_TIMEOUT.as_millis() as u64)]
    pub busy_timeout_ms: u64,
}

impl StoreArgs {
    /// The key layout under the configured prefix.
    pub fn keys(&self) -> KeyLayout {
        KeyLayout::new(self.key_prefix.clone())
    }

    /// Opens the configured Redis (one server or a cluster) without connecting yet; the
    /// error names the URL, its password masked.
    pub fn open_redis(&self) -> anyhow::Result<RedisConn> {
        open_lazy(&self.redis_url)
            .with_context(|| format!("opening redis {}", redact_url(&self.redis_url)))
    }

    /// The busy timeout as a duration.
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }
}

/// How long Redis keeps a user's keys.
#[derive(Args, Clone, Debug)]
pub struct TtlArgs {
    /// Seconds a user stays online after a heartbeat.
    #[arg(long, env = "PRESENCE_ONLINE_TTL", default_value_t = DEFAULT_ONLINE_TTL_SECS)]
    pub online_ttl: u64,

    /// Seconds the last heartbeat stays in Redis; must exceed the online TTL by at least
    /// two snapshot intervals.
    #[arg(long, env = "PRESENCE_SHADOW_TTL", default_value_t = DEFAULT_SHADOW_TTL_SECS)]
    pub shadow_ttl: u64,
}

impl TtlArgs {
    /// Checks the TTLs make sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.online_ttl >= 1,
            "--online-ttl must be at least 1 second"
        );
        ensure!(
            self.shadow_ttl > self.online_ttl,
            "--shadow-ttl ({}) must be longer than --online-ttl ({})",
            self.shadow_ttl,
            self.online_ttl
        );
        Ok(())
    }

    /// The online TTL.
    pub fn online(&self) -> Duration {
        Duration::from_secs(self.online_ttl)
    }

    /// The shadow TTL.
    pub fn shadow(&self) -> Duration {
        Duration::from_secs(self.shadow_ttl)
    }
}
