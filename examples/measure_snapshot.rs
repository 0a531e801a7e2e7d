//! Measures the snapshot against a Redis or Redis Cluster of your own: seeds users with
//! real pings, then times the walk alone, a run in which everyone came online, and a run
//! in which everyone went offline. The figures in `docs/capacity.md` come from it.
//!
//! ```sh
//! cargo run --release --example measure_snapshot -- redis://127.0.0.1:6390 200000
//! cargo run --release --example measure_snapshot -- redis+cluster://127.0.0.1:7000 200000
//! ```
//!
//! It writes keys under `measure:` in that Redis (deleted by their TTLs within 20 minutes)
//! and a database in a temp dir. Point it at nothing that matters.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use presence::diff::VanishGuard;
use presence::heartbeat::HeartbeatWriter;
use presence::keys::KeyLayout;
use presence::redis_conn::{RedisConn, ShadowSource, open_lazy};
use presence::snapshot::{SnapshotOptions, run_once};
use presence::user::UserId;

/// Pings in flight at once while seeding.
const IN_FLIGHT: usize = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let users: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let mut redis = open_lazy(&url)?;
    let keys = KeyLayout::new("measure:");
    let writer = HeartbeatWriter::new(
        keys.clone(),
        Duration::from_secs(600),
        Duration::from_secs(1200),
    );

    let seeded = timed(seed(&redis, &writer, users, false)).await?;
    report("seed (pings)", users, seeded);
    let walked = Instant::now();
    let walk = redis.walk_shadows(&keys, 1000, |_| {}).await?;
    report("walk", walk.observations.len(), walked.elapsed());

    let dir = tempfile::tempdir()?;
    let opts = options(dir.path().join("measure.db"), keys);
    let first = run_once(&mut redis, &opts).await?;
    report(
        "run, all came online",
        first.came_online as usize,
        ms(first.elapsed_ms),
    );
    let offline = timed(seed(&redis, &writer, users, true)).await?;
    report("offline calls", users, offline);
    let second = run_once(&mut redis, &opts).await?;
    report(
        "run, all went offline",
        second.went_offline as usize,
        ms(second.elapsed_ms),
    );
    Ok(())
}

/// Pings (or takes offline) `users` users, `IN_FLIGHT` at a time.
async fn seed(
    redis: &RedisConn,
    writer: &HeartbeatWriter,
    users: usize,
    offline: bool,
) -> anyhow::Result<()> {
    let ids: Vec<UserId> = (0..users)
        .map(|i| UserId::parse(&format!("u{i}")))
        .collect::<Result<_, _>>()?;
    for chunk in ids.chunks(IN_FLIGHT) {
        let calls = chunk.iter().map(|user| {
            let mut con = redis.clone();
            async move {
                match offline {
                    true => writer.record_offline(&mut con, user).await,
                    false => writer.record_ping(&mut con, user).await,
                }
            }
        });
        for result in join_all(calls).await {
            result?;
        }
    }
    Ok(())
}

fn options(db: std::path::PathBuf, keys: KeyLayout) -> SnapshotOptions {
    SnapshotOptions {
        db,
        busy_timeout: Duration::from_secs(5),
        keys,
        scan_count: 1000,
        guard: VanishGuard {
            max_share: 1.0,
            min_users: u64::MAX,
            accept: false,
        },
        full: false,
        progress: false,
    }
}

/// How long `work` took.
async fn timed(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    work.await?;
    Ok(started.elapsed())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn report(what: &str, n: usize, took: Duration) {
    let rate = n as f64 / took.as_secs_f64().max(1e-9);
    println!(
        "{what:<24} {n:>9} in {:>8.3} s = {rate:>10.0}/s",
        took.as_secs_f64()
    );
}
