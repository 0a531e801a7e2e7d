//! A bounded soak: thousands of simulated users heartbeating, going offline and coming
//! back at a fixed rate against the real binaries, with snapshots running.
//!
//! The default run lasts about 20 seconds; `PRESENCE_SOAK_SECS=600 cargo test --test soak
//! -- --ignored` runs the long version for as many seconds as asked.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    ApiProcess, RedisServer, Rng, TestDb, admin_token, last_seen_rows, ms, secret_file,
    snapshot_command, snapshot_run, store_flags,
};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Simulated users.
const USERS: usize = 1500;
/// Seconds between two pings of an online user.
const PING_EVERY: Duration = Duration::from_secs(3);
/// How often each worker looks at its users.
const TICK: Duration = Duration::from_millis(250);
/// Workers sharing the users.
const WORKERS: usize = 6;

/// What each user last did, as the API stamped it.
type Truth = Arc<Mutex<HashMap<String, i64>>>;

/// One worker's users: when each acts next, and whether it is online.
struct Shift {
    users: Vec<(String, Instant, bool)>,
    rng: Rng,
}

/// Sends one write for `user` with the admin token; the stamp, or the unexpected status.
async fn write(http: &reqwest::Client, base: &str, user: &str, verb: &str) -> Result<i64, u16> {
    let response = http
        .post(format!("{base}/v1/users/{user}/{verb}"))
        .bearer_auth(admin_token())
        .send()
        .await
        .map_err(|_| 0u16)?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.map_err(|_| status)?;
    if status != 200 {
        return Err(status);
    }
    Ok(ms(&body["last_seen"]))
}

impl Shift {
    /// Acts for every user whose time has come, until `until`; returns the writes made and
    /// the unexpected statuses.
    async fn work(mut self, base: String, truth: Truth, until: Instant) -> (u64, Vec<u16>) {
        let http = reqwest::Client::new();
        let (mut writes, mut errors) = (0, Vec::new());
        let mut tick = tokio::time::interval(TICK);
        while Instant::now() < until {
            tick.tick().await;
            let now = Instant::now();
            for (user, next, online) in &mut self.users {
                if *next > now {
                    continue;
                }
                let leave = *online && self.rng.chance(0.1);
                let verb = if leave { "offline" } else { "ping" };
                writes += 1;
                match write(&http, &base, user, verb).await {
                    Ok(at) => {
                        truth.lock().await.insert(user.clone(), at);
                    }
                    Err(status) => errors.push(status),
                }
                *online = !leave;
                let pause = if leave {
                    Duration::from_millis(1000 + self.rng.below(4000))
                } else {
                    PING_EVERY
                };
                *next = now + pause;
            }
        }
        (writes, errors)
    }
}

async fn soak(duration: Duration) {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let mut flags = store_flags(&redis, &db.path());
    flags.push("--jwt-secret-file".into());
    flags.push(secret_file(dir.path()).display().to_string());
    let mut api = ApiProcess::start(&flags).await;
    let mut scheduler = snapshot_command(&redis, &db.path())
        .args(["schedule", "--cron", "*/2 * * * * *"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let truth: Truth = Arc::default();
    let until = Instant::now() + duration;

    let workers = start_workers(&api.base, &truth, until);
    let rss = sample_rss(&api, until).await;
    let (writes, errors) = join(workers).await;
    everyone_offline(&api.base, &truth).await;
    support::terminate(&scheduler);
    let scheduled = scheduler.wait().unwrap();
    let (code, _, stderr) = snapshot_run(&redis, &db.path(), &[]);

    eprintln!("{writes} writes in {duration:?}; API RSS samples (KiB): {rss:?}");
    assert!(errors.is_empty(), "unexpected answers: {errors:?}");
    assert!(api.alive(), "the API died: {}", api.log_text());
    assert!(scheduled.success() && code == 0, "{stderr}");
    assert_flat(&rss);
    let mut expected: Vec<(String, i64)> = truth.lock().await.clone().into_iter().collect();
    expected.sort();
    assert_eq!(expected.len(), USERS);
    assert!(
        last_seen_rows(&db.path()) == expected,
        "last-seen rows differ from the truth"
    );
}

/// Shares the users among the workers, each user's first ping at a random point of the
/// first ping interval, and starts them.
fn start_workers(base: &str, truth: &Truth, until: Instant) -> Vec<JoinHandle<(u64, Vec<u16>)>> {
    let mut rng = Rng::from_env_or(99);
    let start = Instant::now();
    (0..WORKERS)
        .map(|w| {
            let users = (0..USERS)
                .filter(|i| i % WORKERS == w)
                .map(|i| {
                    let first = start + Duration::from_millis(rng.below(3000));
                    (format!("s{i:05}"), first, false)
                })
                .collect();
            let shift = Shift {
                users,
                rng: rng.split(),
            };
            tokio::spawn(shift.work(base.to_owned(), truth.clone(), until))
        })
        .collect()
}

/// The API's resident memory once a second until `until`.
async fn sample_rss(api: &ApiProcess, until: Instant) -> Vec<u64> {
    let mut rss = Vec::new();
    while Instant::now() < until {
        rss.push(api.rss_kib());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    rss
}

async fn join(workers: Vec<JoinHandle<(u64, Vec<u16>)>>) -> (u64, Vec<u16>) {
    let (mut writes, mut errors) = (0, Vec::new());
    for worker in workers {
        let (done, failed) = worker.await.unwrap();
        writes += done;
        errors.extend(failed);
    }
    (writes, errors)
}

/// Every user goes offline, so each one's last-seen is known exactly.
async fn everyone_offline(base: &str, truth: &Truth) {
    let http = reqwest::Client::new();
    for i in 0..USERS {
        let user = format!("s{i:05}");
        let at = write(&http, base, &user, "offline")
            .await
            .expect("final offline");
        truth.lock().await.insert(user, at);
    }
}

/// Memory in the last quarter of the run stays within a quarter (plus 8 MiB) of what it
/// was once warm, in the second quarter.
fn assert_flat(rss: &[u64]) {
    let warm = rss[rss.len() / 4..rss.len() / 2]
        .iter()
        .max()
        .copied()
        .unwrap();
    let late = rss[rss.len() * 3 / 4..].iter().max().copied().unwrap();
    assert!(
        late <= warm + warm / 4 + 8 * 1024,
        "RSS grew from {warm} KiB to {late} KiB"
    );
}

/// About twenty seconds of simulated users: no unexpected answer, flat memory, and every
/// last-seen recorded exactly as the simulation saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_soak_loses_nothing() {
    soak(Duration::from_secs(20)).await;
}

/// The same for `PRESENCE_SOAK_SECS` seconds (default ten minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long; run with --ignored"]
async fn a_long_soak_loses_nothing() {
    let secs = std::env::var("PRESENCE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    soak(Duration::from_secs(secs)).await;
}
