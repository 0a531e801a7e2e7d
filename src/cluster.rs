//! Walking the shadow keys of a Redis Cluster: every primary, each with a SCAN of its own.
//!
//! SCAN on a cluster node walks only that node's keys, and redis-rs has no cluster-wide
//! SCAN, so the walk reads the slot map (`CLUSTER SLOTS`), then walks each primary in
//! parallel, sending its SCANs and value reads to that node by address. A batch MGET
//! across users would span slots, which a cluster refuses even on one node, so each batch
//! reads the node's `TIME` and one MGET of each user's shadow key (MGET, unlike GET,
//! answers a key of another type with nil rather than an error), all in one pipeline with
//! the next SCAN: still one round trip per batch and node. Each deadline in a shadow value
//! is then judged by the clock of the node that wrote it (see [`crate::scan`]).
//!
//! A node's walk counts only if the slot map showed it serving the same slots before and
//! after, and the node itself said so at both ends, with no slot migrating in or out. A
//! primary that dies mid-walk, a failover that moves its slots to a replica, or a slot
//! moved to another node therefore makes the walk of the nodes involved fail; the walk
//! reads the slot map again and walks those slots' current owners, until
//! [`FAILOVER_WAIT`] runs out and the whole walk fails. It never returns with a slot
//! unread, so no user is taken for offline because their node could not be read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisResult, Value};

use crate::compact_id::CompactId;
use crate::keys::KeyLayout;
use crate::scan::{Walk, observe, users_of};
use crate::time::{Millis, from_time_reply};

/// How long a walk keeps trying to read every slot while the cluster fails over or moves
/// slots. Redis Cluster promotes a replica within about twice `cluster-node-timeout` (15 s
/// by default); a walk still short of slots after this fails, and the next run tries again.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(60);

/// The pause between two attempts to read the slots still unread.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The number of hash slots in a Redis Cluster.
const SLOTS: u32 = 16384;

/// A primary and the slot ranges it serves, as `CLUSTER SLOTS` reports them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Primary {
    /// The node's host, as the cluster announces it.
    pub host: String,
    /// The node's port.
    pub port: u16,
    /// Inclusive slot ranges, sorted.
    pub slots: Vec<(u16, u16)>,
}

impl Primary {
    fn route(&self) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::ByAddress {
            host: self.host.clone(),
            port: self.port,
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
            .sum()
    }
}

/// Walks every shadow key of the cluster behind `con`; `on_batch` hears the running count
/// of keys scanned over all nodes.
pub async fn walk_cluster(
    con: &mut ClusterConnection,
    keys: &KeyLayout,
    count: usize,
    on_batch: impl FnMut(u64) + Send,
) -> RedisResult<Walk> {
    let progress = Progress {
        scanned: AtomicU64::new(0),
        report: Mutex::new(on_batch),
    };
    let deadline = Instant::now() + FAILOVER_WAIT;
    let mut done: Vec<(Primary, Walk)> = Vec::new();
    loop {
        let outcome = walk_unread(con, keys, count, &progress, &mut done).await;
        let unread = SLOTS - done.iter().map(|(p, _)| p.slot_count()).sum::<u32>();
        match outcome {
            Ok(()) if unread == 0 => return Ok(merge(done)),
            Ok(()) => tracing::warn!(unread, "some slots have no primary; reading again"),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, unread, "cluster walk incomplete; reading again")
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(incomplete(unread));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// One attempt: reads the slot map, walks the primaries not yet walked under it, and keeps
/// in `done` the walks of primaries whose slots did not change meanwhile.
async fn walk_unread(
    con: &mut ClusterConnection,
    keys: &KeyLayout,
    count: usize,
    progress: &Progress<impl FnMut(u64) + Send>,
    done: &mut Vec<(Primary, Walk)>,
) -> RedisResult<()> {
    let before = primaries(con).await?;
    done.retain(|(p, _)| before.contains(p));
    let todo: Vec<Primary> = before
        .into_iter()
        .filter(|p| !done.iter().any(|(d, _)| d == p))
        .collect();
    let walks = join_all(
        todo.iter()
            .map(|p| walk_node(con.clone(), p, keys, count, progress)),
    )
    .await;

    let after = primaries(con).await?;
    done.retain(|(p, _)| after.contains(p));
    let mut failure = None;
    for (primary, walk) in todo.into_iter().zip(walks) {
        match walk {
            Ok(walk) if after.contains(&primary) => done.push((primary, walk)),
            Ok(_) => tracing::warn!(node = primary.address(), "slots moved during the walk"),
            Err(e) => {
                tracing::warn!(node = primary.address(), error = %e, "walking a primary failed");
                failure = Some(e);
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The primaries and their slots, sorted by address.
pub async fn primaries(con: &mut ClusterConnection) -> RedisResult<Vec<Primary>> {
    let reply = con
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(reply)?;
    let mut found: Vec<Primary> = Vec::new();
    for range in ranges {
        let (start, end, host, port) = parse_range(range)?;
        match found.iter_mut().find(|p| p.host == host && p.port == port) {
            Some(p) => p.slots.push((start, end)),
            None => found.push(Primary {
                host,
                port,
                slots: vec![(start, end)],
            }),
        }
    }
    for p in &mut found {
        p.slots.sort_unstable();
    }
    found.sort_unstable();
    Ok(found)
}

/// One entry of `CLUSTER SLOTS`: first slot, last slot, then the primary as
/// `[host, port, id, …]`; replicas follow and are not needed.
fn parse_range(range: Vec<Value>) -> RedisResult<(u16, u16, String, u16)> {
    let mut parts = range.into_iter();
    let (Some(start), Some(end), Some(node)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(unexpected("a CLUSTER SLOTS entry without a primary"));
    };
    let mut node = redis::from_redis_value::<Vec<Value>>(node)?.into_iter();
    let (Some(host), Some(port)) = (node.next(), node.next()) else {
        return Err(unexpected("a CLUSTER SLOTS node without host and port"));
    };
    Ok((
        redis::from_redis_value(start)?,
        redis::from_redis_value(end)?,
        redis::from_redis_value(host)?,
        redis::from_redis_value(port)?,
    ))
}

/// The running count of keys scanned, shared by the walks of all nodes.
struct Progress<F> {
    scanned: AtomicU64,
    report: Mutex<F>,
}

impl<F: FnMut(u64)> Progress<F> {
    fn add(&self, keys: u64) {
        let total = self.scanned.fetch_add(keys, Ordering::Relaxed) + keys;
        if let Ok(mut report) = self.report.lock() {
            report(total);
        }
    }
}

/// Walks one primary: SCAN on that node, and `TIME` and one MGET per user found, pipelined
/// with the next SCAN. Fails unless the node serves the same slots, with none migrating,
/// at both the start and the end ([`check_node_serves`]).
async fn walk_node(
    mut con: ClusterConnection,
    node: &Primary,
    keys: &KeyLayout,
    count: usize,
    progress: &Progress<impl FnMut(u64)>,
) -> RedisResult<Walk> {
    let mut walk = Walk {
        started: node_time(&mut con, node).await?,
        ..Walk::default()
    };
    check_node_serves(&mut con, node).await?;
    let pattern = keys.shadow_pattern();
    let mut scan = Some(scan_cmd(0, &pattern, count));
    let mut users: Vec<CompactId> = Vec::new();
    let mut unsettled = Vec::new();
    while scan.is_some() || !users.is_empty() {
        let mut pipe = redis::pipe();
        let mut key = String::new();
        if !users.is_empty() {
            pipe.cmd("TIME");
        }
        for user in &users {
            pipe.cmd("MGET").arg(keys.shadow_in(user, &mut key));
        }
        let more = scan.is_some();
        if let Some(cmd) = scan.take() {
            pipe.add_command(cmd);
        }
        let count_sent = pipe.len();
        let mut replies = con
            .route_pipeline(pipe, 0, count_sent, node.route())
            .await?;
        let next = if more { replies.pop() } else { None };
        record(
            &mut walk,
            &mut unsettled,
            std::mem::take(&mut users),
            replies,
        )?;
        if let Some(reply) = next {
            let (cursor, batch): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)?;
            users = users_of(keys, &batch, &mut walk);
            progress.add(batch.len() as u64);
            scan = (cursor != 0).then(|| scan_cmd(cursor, &pattern, count));
        }
    }
    settle(&mut con, node, keys, &mut walk, &unsettled).await?;
    check_node_serves(&mut con, node).await?;
    Ok(walk)
}

/// Reads the presence keys of the node's observations at `unsettled` (values without a
/// deadline), a pipeline of one-key MGETs per thousand, and takes each user as online
/// while theirs holds a string, as a single server's walk does.
async fn settle(
    con: &mut ClusterConnection,
    node: &Primary,
    keys: &KeyLayout,
    walk: &mut Walk,
    unsettled: &[usize],
) -> RedisResult<()> {
    let mut key = String::new();
    for chunk in unsettled.chunks(crate::scan::DEFAULT_SCAN_COUNT) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.cmd("MGET")
                .arg(keys.presence_in(&walk.observations[i].user, &mut key));
        }
        let replies = con
            .route_pipeline(pipe, 0, chunk.len(), node.route())
            .await?;
        for (&i, reply) in chunk.iter().zip(replies) {
            let (value,): (Option<Vec<u8>>,) = redis::from_redis_value(reply)?;
            walk.observations[i].online = value.is_some();
        }
    }
    Ok(())
}

fn scan_cmd(cursor: u64, pattern: &str, count: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count);
    cmd
}

/// The node's own clock, in milliseconds.
async fn node_time(con: &mut ClusterConnection, node: &Primary) -> RedisResult<Millis> {
    let reply = con
        .route_command(redis::cmd("TIME"), RoutingInfo::SingleNode(node.route()))
        .await?;
    from_time_reply(reply)
}

/// Fails unless the node, by its own account, is a primary serving exactly the slots it
/// is walked for, with none moving in or out. A slot in migration could have keys the
/// node's SCAN misses because they already moved, and that the other node's SCAN passed
/// before they arrived. The node's own line of CLUSTER NODES (`myself`) carries its role,
/// its slot ranges, and its migrations as `[slot->-id]` or `[slot-<-id]`.
pub async fn check_node_serves(con: &mut ClusterConnection, node: &Primary) -> RedisResult<()> {
    let reply = con
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(node.route()),
        )
        .await?;
    let text: String = redis::from_redis_value(reply)?;
    let Some(myself) = text.lines().find(|line| line.contains("myself")) else {
        return Err(unexpected("CLUSTER NODES without the node itself"));
    };
    let fields: Vec<&str> = myself.split_whitespace().collect();
    if fields.len() < 8 || !fields[2].split(',').any(|flag| flag == "master") {
        return Err(unexpected("the node is no longer a primary"));
    }
    if fields[8..].iter().any(|f| f.starts_with('[')) {
        return Err(unexpected("a slot is migrating to or from the node"));
    }
    if own_slots(&fields[8..])? != node.slots {
        return Err(unexpected("the node's slots changed"));
    }
    Ok(())
}

/// Slot ranges as CLUSTER NODES writes them (`0-5460`, or `5461` alone), sorted.
fn own_slots(fields: &[&str]) -> RedisResult<Vec<(u16, u16)>> {
    let mut slots = Vec::with_capacity(fields.len());
    for field in fields {
        let (start, end) = field.split_once('-').unwrap_or((field, field));
        match (start.parse(), end.parse()) {
            (Ok(start), Ok(end)) => slots.push((start, end)),
            _ => return Err(unexpected("a slot range CLUSTER NODES did not write")),
        }
    }
    slots.sort_unstable();
    Ok(slots)
}

/// Records a batch: the node's `TIME`, then each user's shadow value. A shadow key gone
/// since SCAN is skipped; an error reply (a MOVED, say) fails the node's walk.
fn record(
    walk: &mut Walk,
    unsettled: &mut Vec<usize>,
    users: Vec<CompactId>,
    replies: Vec<Value>,
) -> RedisResult<()> {
    let mut replies = replies.into_iter();
    let Some(time) = replies.next() else {
        return Ok(());
    };
    let now = from_time_reply(time)?;
    for (user, reply) in users.into_iter().zip(replies) {
        let (value,): (Option<Vec<u8>>,) = redis::from_redis_value(reply)?;
        observe(walk, unsettled, user, value.as_deref(), now);
    }
    Ok(())
}

/// One walk from the walks of all primaries: sorted by user, one observation per user
/// (the newest heartbeat, should a moved slot have shown a user on two nodes), and the
/// earliest node clock as the walk's start, so the next run's watermark covers every node.
fn merge(done: Vec<(Primary, Walk)>) -> Walk {
    let mut merged = Walk {
        started: Millis::MAX,
        ..Walk::default()
    };
    for (_, walk) in done {
        merged.keys_scanned += walk.keys_scanned;
        merged.skipped_values += walk.skipped_values;
        merged.started = merged.started.min(walk.started);
        merged.observations.extend(walk.observations);
    }
    merged
        .observations
        .sort_unstable_by(|a, b| a.user.cmp(&b.user).then(b.shadow.last.cmp(&a.shadow.last)));
    let before = merged.observations.len();
    merged
        .observations
        .dedup_by(|later, first| later.user == first.user);
    merged.duplicates = (before - merged.observations.len()) as u64;
    merged
}

fn unexpected(message: &'static str) -> redis::RedisError {
    (redis::ErrorKind::Client, message).into()
}

fn incomplete(unread: u32) -> redis::RedisError {
    (
        redis::ErrorKind::Client,
        "the cluster walk could not read every slot",
        format!("{unread} slots unread"),
    )
        .into()
}
