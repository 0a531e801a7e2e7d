//! Opening Redis: one server or a Redis Cluster, behind one connection type.
//!
//! `redis://…` opens one server through a [`ConnectionManager`]; `redis+cluster://…` opens
//! a cluster through redis-rs's cluster client, which follows the slot map, MOVED and ASK
//! redirects and failovers by itself. [`RedisConn`] wraps either, so the ping path and the
//! status reads run unchanged on both. What a cluster does differently goes through three
//! seams: an MGET across slots is sent to each primary as one pipeline
//! ([`crate::slot_map`]), a read that needs Redis's clock gets each primary's own
//! ([`RedisConn::mget_with_clock`]), and the snapshot walks every primary
//! ([`ShadowSource`]).

use std::future::Future;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::keys::KeyLayout;
use crate::scan::{self, Walk};
use crate::slot_map::{ClusterConn, key_slot, mget_keys};
use crate::time::{Millis, from_time_reply};

/// How long one command may take before it fails. Long enough for a pipelined batch of
/// a few thousand keys, short enough that a dead Redis turns into a 503 quickly.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a cluster command may take with all its redirects and retries: a command
/// caught in a failover fails after this rather than hanging until the cluster settles.
pub const CLUSTER_OVERALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL scheme that names a Redis Cluster by its seed nodes.
pub const CLUSTER_SCHEME: &str = "redis+cluster";

/// A connection to one Redis server or to a Redis Cluster. Cloning it shares the
/// underlying connections.
#[derive(Clone)]
pub enum RedisConn {
    /// One server, reconnecting by itself.
    Single(ConnectionManager),
    /// A cluster: one multiplexed connection per node, routed by slot. An MGET across
    /// slots goes to each primary as one pipeline ([`ClusterConn::mget`]).
    Cluster(ClusterConn),
}

/// Opens `url` without connecting yet: `redis://[:password@]host:port[/db]` for one
/// server, `redis+cluster://[[user]:password@]host:port[,host:port…]` for a cluster.
pub fn open_lazy(url: &str) -> redis::RedisResult<RedisConn> {
    match cluster_seeds(url)? {
        Some(seeds) => {
            let cluster = connect_cluster_lazy(seeds)?;
            Ok(RedisConn::Cluster(ClusterConn::new(cluster)))
        }
        None => Ok(RedisConn::Single(connect_lazy(url)?)),
    }
}

/// Opens a self-healing connection to one server at `url` without connecting yet.
///
/// The manager connects on first use and, when the connection drops, fails the command in
/// flight and reconnects in the background, so a Redis restart costs a few failed calls
/// and no process restart.
pub fn connect_lazy(url: &str) -> redis::RedisResult<ConnectionManager> {
    let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
    let client = redis::Client::open(info)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Opens a cluster connection from seed URLs without waiting for it. The client learns
/// the slot map from the seeds and refreshes it on MOVED, on a dropped node and after a
/// failover; a command that finds no live owner for its slot fails within
/// [`CLUSTER_OVERALL_TIMEOUT`] and the next one tries again.
pub fn connect_cluster_lazy(seeds: Vec<String>) -> redis::RedisResult<ClusterConnection> {
    let client = ClusterClientBuilder::new(seeds)
        .tcp_settings(tcp_settings())
        .retries(4)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .overall_response_timeout(Some(CLUSTER_OVERALL_TIMEOUT))
        .build()?;
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    Ok(client.get_pending_async_connection_with_config(config))
}

/// Every Redis connection turns Nagle's algorithm off (redis-rs leaves it on). With it on,
/// a command written while an earlier one awaits its reply is held back until that reply's
/// acknowledgement arrives, so pipelined heartbeat batches went out one round trip at a
/// time and the API sat idle while Redis did too.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// The seed URLs of a `redis+cluster://` URL, or `None` for any other scheme. Every seed
/// gets the URL's credentials; a database number is refused, since a cluster has only
/// database 0.
pub fn cluster_seeds(url: &str) -> redis::RedisResult<Option<Vec<String>>> {
    let Some(rest) = url
        .strip_prefix(CLUSTER_SCHEME)
        .and_then(|r| r.strip_prefix("://"))
    else {
        return Ok(None);
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    if hosts.contains(['/', '?']) {
        return Err(invalid_cluster_url(
            "a redis+cluster:// URL takes no database number or options",
        ));
    }
    if hosts.split(',').any(str::is_empty) {
        return Err(invalid_cluster_url(
            "a redis+cluster:// URL lists host:port seeds separated by commas",
        ));
    }
    let seeds = hosts
        .split(',')
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    Ok(Some(seeds))
}

fn invalid_cluster_url(message: &'static str) -> redis::RedisError {
    (redis::ErrorKind::InvalidClientConfig, message).into()
}

impl RedisConn {
    /// Runs `mget` (an MGET) and pairs each value with Redis's clock, read in the same
    /// round trip from the server that holds the key: a deadline stored in a value can
    /// then be judged by the clock that set it. On a cluster each primary answers with its
    /// own clock; where a stale slot map sent the read through redirects the clock is
    /// unknown (`None`).
    pub async fn mget_with_clock(
        &mut self,
        mget: Cmd,
    ) -> redis::RedisResult<Vec<(Value, Option<Millis>)>> {
        match self {
            RedisConn::Single(con) => {
                let (time, values): (Value, Vec<Value>) = redis::pipe()
                    .cmd("TIME")
                    .add_command(mget)
                    .query_async(con)
                    .await?;
                let now = Some(from_time_reply(time)?);
                Ok(values.into_iter().map(|value| (value, now)).collect())
            }
            RedisConn::Cluster(con) => {
                let keys = mget_keys(&mget).ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "not an MGET"))
                })?;
                con.mget_with_clock(&mget, keys).await
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(con) => con.req_packed_command(cmd),
            RedisConn::Cluster(con) => match mget_keys(cmd) {
                Some(keys) if spans_slots(&keys) => Box::pin(con.mget(cmd, keys)),
                _ => con.con.req_packed_command(cmd),
            },
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(con) => con.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(con) => con.con.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(con) => con.get_db(),
            RedisConn::Cluster(con) => con.con.get_db(),
        }
    }
}

/// Whether the keys of an MGET lie in more than one slot, which a cluster refuses as one
/// command.
fn spans_slots(keys: &[Vec<u8>]) -> bool {
    let mut slots = keys.iter().map(|k| key_slot(k));
    let first = slots.next();
    slots.any(|s| Some(s) != first)
}

/// Something the snapshot can walk the shadow keys of: one server walks with one SCAN
/// cursor ([`scan::walk_shadows`]); a cluster walks every primary
/// ([`crate::cluster::walk_cluster`]).
pub trait ShadowSource: Send {
    /// Walks every shadow key under `keys` with SCAN COUNT `count`; `on_batch` hears the
    /// running count of keys scanned.
    fn walk_shadows(
        &mut self,
        keys: &KeyLayout,
        count: usize,
        on_batch: impl FnMut(u64) + Send,
    ) -> impl Future<Output = redis::RedisResult<Walk>> + Send;
}

impl ShadowSource for RedisConn {
    async fn walk_shadows(
        &mut self,
        keys: &KeyLayout,
        count: usize,
        on_batch: impl FnMut(u64) + Send,
    ) -> redis::RedisResult<Walk> {
        match self {
            RedisConn::Single(con) => scan::walk_shadows(con, keys, count, on_batch).await,
            RedisConn::Cluster(con) => {
                crate::cluster::walk_cluster(&mut con.con, keys, count, on_batch).await
            }
        }
    }
}

/// One server over a plain multiplexed connection, as tests and tools open it.
impl ShadowSource for MultiplexedConnection {
    async fn walk_shadows(
        &mut self,
        keys: &KeyLayout,
        count: usize,
        on_batch: impl FnMut(u64) + Send,
    ) -> redis::RedisResult<Walk> {
        scan::walk_shadows(self, keys, count, on_batch).await
    }
}

/// One server through a self-healing manager.
impl ShadowSource for ConnectionManager {
    async fn walk_shadows(
        &mut self,
        keys: &KeyLayout,
        count: usize,
        on_batch: impl FnMut(u64) + Send,
    ) -> redis::RedisResult<Walk> {
        scan::walk_shadows(self, keys, count, on_batch).await
    }
}

/// A cluster, opened directly.
impl ShadowSource for ClusterConnection {
    async fn walk_shadows(
        &mut self,
        keys: &KeyLayout,
        count: usize,
        on_batch: impl FnMut(u64) + Send,
    ) -> redis::RedisResult<Walk> {
        crate::cluster::walk_cluster(self, keys, count, on_batch).await
    }
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cluster_seeds_with_their_credentials() {
        let seeds = cluster_seeds("redis+cluster://:pw@h1:7000,h2:7001").unwrap();
        assert_eq!(
            seeds,
            Some(vec![
                "redis://:pw@h1:7000".to_owned(),
                "redis://:pw@h2:7001".to_owned()
            ])
        );
        assert_eq!(
            cluster_seeds("redis+cluster://h1:7000/").unwrap(),
            Some(vec!["redis://h1:7000".to_owned()])
        );
        assert_eq!(cluster_seeds("redis://h1:7000").unwrap(), None);
    }

    #[test]
    fn refuses_cluster_urls_without_seeds_or_with_a_database() {
        assert!(cluster_seeds("redis+cluster://").is_err());
        assert!(cluster_seeds("redis+cluster://h1:7000,,h2:7001").is_err());
        assert!(cluster_seeds("redis+cluster://h1:7000/2").is_err());
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://secret@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
