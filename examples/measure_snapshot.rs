//! Measures the snapshot against a Redis or Redis Cluster of your own: seeds users with
//! real pings, then times the walk alone (with the CPU it cost the job and Redis), a run in
//! which everyone came online, and a run in which everyone went offline, each followed by
//! a run with nothing to write; the difference in this process's CPU time is what the
//! database writes cost. The
//! figures in `docs/capacity.md` come from it.
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
use presence::snapshot::{RunSummary, SnapshotOptions, run_once};
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
    let cpu_before = (own_cpu()?, redis_cpu(&mut redis).await?);
    let walked = Instant::now();
    let walk = redis.walk_shadows(&keys, 1000, |_| {}).await?;
    report("walk", walk.observations.len(), walked.elapsed());
    let job_cpu = own_cpu()? - cpu_before.0;
    let redis_used = redis_cpu(&mut redis).await? - cpu_before.1;
    println!("walk CPU: job {job_cpu:.2} s, redis (all nodes) {redis_used:.2} s");

    let dir = tempfile::tempdir()?;
    let opts = options(dir.path().join("measure.db"), keys);
    let (first, first_cpu) = run(&mut redis, &opts, "run, all came online").await?;
    let (_, steady_cpu) = run(&mut redis, &opts, "run, no change").await?;
    let offline = timed(seed(&redis, &writer, users, true)).await?;
    report("offline calls", users, offline);
    let (second, second_cpu) = run(&mut redis, &opts, "run, all went offline").await?;
    let (_, after_cpu) = run(&mut redis, &opts, "run, no change").await?;
    let came = first_cpu - steady_cpu;
    let went = second_cpu - after_cpu;
    println!(
        "database writes: {came:.2} CPU-s for {} came online",
        first.came_online
    );
    println!(
        "database writes: {went:.2} CPU-s for {} went offline",
        second.went_offline
    );
    Ok(())
}

/// One run, reported with its wall time and the CPU seconds it cost this process.
async fn run(
    redis: &mut RedisConn,
    opts: &SnapshotOptions,
    what: &str,
) -> anyhow::Result<(RunSummary, f64)> {
    let cpu = own_cpu()?;
    let summary = run_once(redis, opts).await?;
    let cpu = own_cpu()? - cpu;
    report(what, summary.keys_scanned as usize, ms(summary.elapsed_ms));
    println!("{:<24} {cpu:.2} CPU-s in this process", "");
    Ok((summary, cpu))
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

/// CPU seconds this process has used, from `/proc/self/stat` (Linux).
fn own_cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split(' ')
        .collect();
    let ticks: f64 = fields[12].parse::<f64>()? + fields[13].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// CPU seconds Redis has used (summed over every node of a cluster), from `INFO cpu`.
async fn redis_cpu(redis: &mut RedisConn) -> anyhow::Result<f64> {
    let reply: redis::Value = redis::cmd("INFO").arg("cpu").query_async(redis).await?;
    let texts: Vec<String> = match reply {
        redis::Value::Map(nodes) => nodes
            .into_iter()
            .map(|(_, info)| redis::from_redis_value(info))
            .collect::<Result<_, _>>()?,
        other => vec![redis::from_redis_value(other)?],
    };
    let mut total = 0.0;
    for line in texts.iter().flat_map(|t| t.lines()) {
        if let Some((name, value)) = line.trim().split_once(':')
            && (name == "used_cpu_sys" || name == "used_cpu_user")
        {
            total += value.parse::<f64>()?;
        }
    }
    Ok(total)
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
