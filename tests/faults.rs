//! Faults of the stores and of the data in them: nothing is lost, nothing crashes.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use support::{
    ApiProcess, RedisServer, TestApi, TestDb, Tmpfs, eventually, last_seen_rows, ms, redis_now_ms,
    short_ttls, snapshot_command, snapshot_run, store_flags,
};

const GUARD: Duration = Duration::from_secs(20);

/// What a pinging task saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

/// Pings users `task*50 ..` in a loop until `stop` or `limit` pings, counting answers.
async fn ping_loop(base: String, task: u64, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    for i in 0..20_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let url = format!("{base}/v1/users/t{task}u{}/ping", i % 50);
        let counter = match http.post(url).send().await.map(|r| r.status().as_u16()) {
            Ok(200) => &tally.ok,
            Ok(503) => &tally.unavailable,
            _ => &tally.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Redis killed while clients ping: the API (the real binary) answers 503 meanwhile, never
/// anything else, stays up, and serves again once Redis is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load() {
    let (mut redis, db) = (RedisServer::start(), TestDb::new());
    let mut flags = store_flags(&redis, &db.path());
    flags.extend(["--insecure-no-auth", "--ping-burst", "1000000"].map(String::from));
    let mut api = ApiProcess::start(&flags).await;
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let tasks: Vec<_> = (0..4)
        .map(|t| tokio::spawn(ping_loop(api.base.clone(), t, tally.clone(), stop.clone())))
        .collect();
    let ok_after = |n: u64| {
        let tally = tally.clone();
        move || {
            let tally = tally.clone();
            async move { tally.ok.load(Ordering::Relaxed) >= n }
        }
    };

    let warmed = eventually(GUARD, ok_after(100)).await;
    redis.stop();
    let saw_503 = eventually(GUARD, || async {
        tally.unavailable.load(Ordering::Relaxed) >= 20
    })
    .await;
    redis.restart();
    let ok_before = tally.ok.load(Ordering::Relaxed);
    let recovered = eventually(GUARD, ok_after(ok_before + 200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    assert!(
        warmed && saw_503 && recovered,
        "warmed {warmed}, 503 {saw_503}, back {recovered}"
    );
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "answers other than 200 and 503"
    );
    assert!(api.alive(), "the API died; its log:\n{}", api.log_text());
}

/// Redis restarted empty: the next run keeps the vanished online set (logged, counted in
/// the run log), records exactly what it saw, and closes the old session of each user who
/// pinged again at its last durable heartbeat.
#[tokio::test]
async fn redis_restarted_empty_keeps_the_online_set() {
    let (mut redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let mut first = Vec::new();
    for i in 0..150 {
        first.push(ms(&api.ping(&format!("u{i:03}")).await.1["last_seen"]));
    }
    assert_eq!(snapshot_run(&redis, &db.path(), &[]).0, 0);

    redis.restart();
    let back = eventually(GUARD, || async { api.presence("u000").await.0 == 200 }).await;
    assert!(back, "the API never reconnected");
    let mut again = Vec::new();
    for i in 0..10 {
        again.push(ms(&api.ping(&format!("u{i:03}")).await.1["last_seen"]));
    }
    let (code, stdout, stderr) = snapshot_run(&redis, &db.path(), &[]);

    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("vanished_kept=140"), "{stdout}");
    assert!(
        stderr.contains("WARN") && stderr.contains("vanished"),
        "{stderr}"
    );
    let kept: i64 = db
        .conn()
        .query_row(
            "SELECT vanished_kept FROM runs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 140);
    let online: i64 = db
        .conn()
        .query_row("SELECT COUNT(*) FROM online_users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(online, 150);
    let closed: Vec<_> = (0..10)
        .map(|i| (format!("u{i:03}"), first[i], first[i]))
        .collect();
    assert_eq!(db.sessions(), closed);
    for (i, at) in first.iter().enumerate() {
        let expected = (i < 10).then_some(*at);
        assert_eq!(db.last_seen(&format!("u{i:03}")), expected, "u{i:03}");
    }
    let since: i64 = db
        .conn()
        .query_row(
            "SELECT since_ms FROM online_users WHERE user_id = 'u000'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(since, again[0]);
}

/// Users pinged, then half of them offline: the keyspace the database faults run on.
async fn two_phases(api: &TestApi, users: usize) -> Vec<(String, i64)> {
    for i in 0..users {
        api.ping(&format!("u{i:04}")).await;
    }
    let mut offline = Vec::new();
    for i in (0..users).step_by(2) {
        let user = format!("u{i:04}");
        let at = ms(&api.offline(&user).await.1["last_seen"]);
        offline.push((user, at));
    }
    offline
}

/// The database locked by another connection beyond the busy timeout: the run fails with
/// a clear error and exit code 4, writes nothing, and the next run catches up.
#[tokio::test]
async fn a_locked_database_fails_clearly_and_catches_up() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    assert_eq!(snapshot_run(&redis, &db.path(), &[]).0, 0);
    let expected = two_phases(&api, 40).await;
    let holder = db.conn();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let impatient = snapshot_command(&redis, &db.path())
        .args(["--busy-timeout-ms", "200", "run"])
        .output()
        .unwrap();
    holder.execute_batch("ROLLBACK").unwrap();
    let rows_while_locked = last_seen_rows(&db.path());
    let (again, _, _) = snapshot_run(&redis, &db.path(), &[]);

    let stderr = String::from_utf8_lossy(&impatient.stderr);
    assert_eq!(impatient.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(rows_while_locked.is_empty());
    assert_eq!(again, 0);
    assert_eq!(last_seen_rows(&db.path()), expected);
}

/// The database on a file system turned read-only: exit code 4 with a clear error, and
/// once it is writable again the next run catches up.
#[tokio::test]
async fn a_read_only_database_fails_clearly_and_catches_up() {
    let Some(disk) = Tmpfs::mount("16m") else {
        return;
    };
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let path = disk.path().join("presence.db");
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    assert_eq!(snapshot_run(&redis, &path, &[]).0, 0);
    let expected = two_phases(&api, 40).await;
    disk.set_read_only(true);

    let (code, _, stderr) = snapshot_run(&redis, &path, &[]);
    disk.set_read_only(false);
    let rows_while_read_only = last_seen_rows(&path);
    let (again, _, _) = snapshot_run(&redis, &path, &[]);

    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("database"), "{stderr}");
    assert!(rows_while_read_only.is_empty());
    assert_eq!(again, 0);
    assert_eq!(last_seen_rows(&path), expected);
}

/// A full disk: the run fails with exit code 4 and a clear error, the database stays
/// sound, and once there is room the next run catches up.
#[tokio::test]
async fn a_full_disk_fails_clearly_and_catches_up() {
    let Some(disk) = Tmpfs::mount("4m") else {
        return;
    };
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let path = disk.path().join("presence.db");
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    assert_eq!(snapshot_run(&redis, &path, &[]).0, 0);
    let expected = two_phases(&api, 2000).await;
    let filler = disk.fill();

    let (code, _, stderr) = snapshot_run(&redis, &path, &[]);
    std::fs::remove_file(filler).unwrap();
    let integrity = support::integrity(&path);
    let rows_while_full = last_seen_rows(&path);
    let (again, _, _) = snapshot_run(&redis, &path, &[]);

    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("full") || stderr.contains("I/O error"),
        "{stderr}"
    );
    assert_eq!(integrity, "ok");
    assert!(rows_while_full.is_empty());
    assert_eq!(again, 0);
    assert_eq!(last_seen_rows(&path), expected);
}

/// Keys and values this service did not write are counted, skipped with a warning and
/// never crash the job; the API reads and writes past them too.
#[tokio::test]
async fn garbage_values_are_skipped_not_fatal() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let (_, ann) = api.ping("ann").await;
    let mut con = redis.con();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("presence:seen:{junk}")
        .arg("garbage")
        .ignore()
        .cmd("SET")
        .arg("presence:seen:{a b}")
        .arg("1:1:")
        .ignore()
        .cmd("RPUSH")
        .arg("presence:seen:{listy}")
        .arg("x")
        .ignore()
        .cmd("SET")
        .arg("presence:on:{ann}")
        .arg("not-a-time")
        .ignore()
        .cmd("RPUSH")
        .arg("presence:on:{bob}")
        .arg("x")
        .ignore()
        .query(&mut con)
        .unwrap();

    let (code, stdout, stderr) = snapshot_run(&redis, &db.path(), &[]);
    let (query_status, query) = api
        .query(json!({"user_ids": ["ann", "junk", "listy", "bob"]}))
        .await;
    let writes = [
        api.ping("listy").await.0,
        api.ping("bob").await.0,
        api.offline("junk").await.0,
    ];

    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("online=1 ") && stdout.contains("skipped_values=2"),
        "{stdout}"
    );
    assert!(stderr.contains("WARN"), "{stderr}");
    assert_eq!(query_status, 200);
    assert_eq!(query["users"][0]["last_seen"], ann["last_seen"]);
    assert_eq!(query["users"][1]["last_seen"], json!(null));
    assert_eq!(writes, [200, 200, 200]);
    assert_eq!(api.presence("listy").await.1["online"], true);
}

/// Two API instances stamp with Redis's clock, not their own: every last-seen falls
/// between Redis TIME before and after the call, and a stored time ahead of Redis's clock
/// is never moved back, by either instance or by the job.
#[tokio::test]
async fn last_seen_follows_the_redis_clock_across_instances() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let a = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let b = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;

    let mut brackets = Vec::new();
    for (api, user) in [(&a, "ann"), (&b, "bob"), (&a, "bob"), (&b, "ann")] {
        let before = redis_now_ms(&redis);
        let stamped = ms(&api.ping(user).await.1["last_seen"]);
        brackets.push((before, stamped, redis_now_ms(&redis)));
    }
    let ahead = redis_now_ms(&redis) + 3_600_000;
    let _: () = redis::cmd("SET")
        .arg("presence:seen:{cat}")
        .arg(format!("{ahead}:{ahead}:"))
        .query(&mut redis.con())
        .unwrap();
    let from_a = ms(&a.ping("cat").await.1["last_seen"]);
    let from_b = ms(&b.offline("cat").await.1["last_seen"]);
    assert_eq!(snapshot_run(&redis, &db.path(), &[]).0, 0);

    for (before, stamped, after) in brackets {
        assert!(
            before <= stamped && stamped <= after,
            "{before} {stamped} {after}"
        );
    }
    assert_eq!((from_a, from_b), (ahead, ahead));
    assert_eq!(db.last_seen("cat"), Some(ahead));
}
