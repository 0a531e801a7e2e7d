//! The snapshot job against a real Redis and a real SQLite file.

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use presence::snapshot::SnapshotError;
use support::{
    RedisServer, TestApi, TestDb, eventually, ms, short_ttls, snapshot, snapshot_options,
};

/// A diff across two runs writes last-seen and a closed session for the user who left,
/// and nothing for the user who stayed.
#[tokio::test]
async fn a_run_records_who_went_offline() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let opts = snapshot_options(&db);
    let (_, ann_start) = api.ping("ann").await;
    api.ping("bob").await;
    let first = snapshot(&redis, &opts).await.unwrap();
    api.ping("ann").await;
    let (_, ann_off) = api.offline("ann").await;

    let second = snapshot(&redis, &opts).await.unwrap();

    assert_eq!(
        (first.online, first.came_online, first.went_offline),
        (2, 2, 0)
    );
    assert_eq!(
        (second.online, second.came_online, second.went_offline),
        (1, 0, 1)
    );
    let off = ms(&ann_off["last_seen"]);
    assert_eq!(db.last_seen("ann"), Some(off));
    assert_eq!(db.last_seen("bob"), None);
    assert_eq!(
        db.sessions(),
        vec![("ann".into(), ms(&ann_start["last_seen"]), off)]
    );
}

/// A user who came and went between two runs is still recorded, from the shadow key.
#[tokio::test]
async fn a_visit_between_runs_is_recorded() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let opts = snapshot_options(&db);
    snapshot(&redis, &opts).await.unwrap();
    let (_, start) = api.ping("ann").await;
    let (_, end) = api.offline("ann").await;

    let run = snapshot(&redis, &opts).await.unwrap();

    assert_eq!((run.online, run.went_offline), (0, 0));
    let (start, end) = (ms(&start["last_seen"]), ms(&end["last_seen"]));
    assert_eq!(db.last_seen("ann"), Some(end));
    assert_eq!(db.sessions(), vec![("ann".into(), start, end)]);
}

/// When a run is missed and the shadow key expires too, the user is still recorded, at
/// the newest heartbeat a run made durable: never a later time than the truth. (Real
/// TTLs of one and two seconds have to pass.)
#[tokio::test]
async fn a_missed_run_still_records_last_seen() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(1, 2)).await;
    let opts = snapshot_options(&db);
    let (_, pinged) = api.ping("ann").await;
    snapshot(&redis, &opts).await.unwrap();

    let gone = eventually(Duration::from_secs(6), || async {
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.con()).unwrap();
        keys.is_empty()
    })
    .await;
    let run = snapshot(&redis, &opts).await.unwrap();

    assert!(gone, "the keys never expired");
    assert_eq!(run.went_offline, 1);
    assert_eq!(db.last_seen("ann"), Some(ms(&pinged["last_seen"])));
    assert_eq!(
        api.presence("ann").await.1["last_seen"],
        pinged["last_seen"]
    );
}

/// A session that ended and restarted between two runs is closed at its true end, which
/// the shadow key kept, and the new session is the one in the online set.
#[tokio::test]
async fn a_restarted_session_closes_at_its_true_end() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let opts = snapshot_options(&db);
    let (_, first) = api.ping("ann").await;
    snapshot(&redis, &opts).await.unwrap();
    let (_, first_end) = api.offline("ann").await;
    let (_, second) = api.ping("ann").await;

    let run = snapshot(&redis, &opts).await.unwrap();

    let first_end = ms(&first_end["last_seen"]);
    assert_eq!((run.online, run.came_online, run.went_offline), (1, 1, 1));
    assert_eq!(
        db.sessions(),
        vec![("ann".into(), ms(&first["last_seen"]), first_end)]
    );
    assert_eq!(db.last_seen("ann"), Some(first_end));
    let since: i64 = db
        .conn()
        .query_row(
            "SELECT since_ms FROM online_users WHERE user_id = 'ann'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(since, ms(&second["last_seen"]));
}

/// Last-seen in the database never moves backwards, even if Redis later holds an older
/// heartbeat (restored from an old copy, say).
#[tokio::test]
async fn durable_last_seen_never_moves_backwards() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let opts = support::SnapshotOptions {
        full: true,
        ..snapshot_options(&db)
    };
    let (_, off) = api.offline("ann").await;
    snapshot(&redis, &opts).await.unwrap();
    let older = ms(&off["last_seen"]) - 60_000;
    let value = format!("{older}:{older}:");
    let _: () = redis::cmd("SET")
        .arg("presence:seen:{ann}")
        .arg(value)
        .query(&mut redis.con())
        .unwrap();

    snapshot(&redis, &opts).await.unwrap();

    assert_eq!(db.last_seen("ann"), Some(ms(&off["last_seen"])));
}

/// A keyspace that grows during the run (small COUNT, many inserts, Redis rehashing under
/// the cursor) still gives each user exactly once in the counts and the online set.
#[tokio::test]
async fn a_growing_keyspace_counts_each_user_once() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    for i in 0..300 {
        api.ping(&format!("user{i}")).await;
    }
    let opts = support::SnapshotOptions {
        scan_count: 5,
        ..snapshot_options(&db)
    };
    let grower = std::thread::spawn({
        let mut con = redis.con();
        move || {
            for i in 0..20_000 {
                let _: () = redis::cmd("SET")
                    .arg(format!("other:{i}"))
                    .arg(1)
                    .query(&mut con)
                    .unwrap();
            }
        }
    });

    let run = snapshot(&redis, &opts).await.unwrap();
    grower.join().unwrap();

    assert_eq!(run.online, 300);
    assert_eq!(run.came_online, 300);
    let rows: i64 = db
        .conn()
        .query_row("SELECT COUNT(*) FROM online_users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 300);
}

/// A run that fails at its very last write leaves the database exactly as before, and the
/// next run writes what an uninterrupted run would have.
#[tokio::test]
async fn a_failed_run_leaves_the_database_as_before() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let reference = TestDb::new();
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let opts = snapshot_options(&db);
    let ref_opts = snapshot_options(&reference);
    api.ping("ann").await;
    api.ping("bob").await;
    snapshot(&redis, &opts).await.unwrap();
    snapshot(&redis, &ref_opts).await.unwrap();
    api.offline("ann").await;
    api.ping("cat").await;
    let before = db.dump();
    db.conn()
        .execute_batch(
            "CREATE TRIGGER fail_run BEFORE INSERT ON runs \
             BEGIN SELECT RAISE(ABORT, 'the disk went away'); END;",
        )
        .unwrap();

    let failed = snapshot(&redis, &opts).await;
    let after_failure = db.dump();
    db.conn().execute_batch("DROP TRIGGER fail_run").unwrap();
    snapshot(&redis, &opts).await.unwrap();
    snapshot(&redis, &ref_opts).await.unwrap();

    assert!(
        matches!(failed, Err(SnapshotError::Database(_))),
        "{failed:?}"
    );
    assert_eq!(after_failure, before);
    assert_eq!(db.dump(), reference.dump());
}

/// While one run holds the lock, a second exits with the lock-held code and says why;
/// the lock of a killed holder frees itself.
#[tokio::test]
async fn a_second_run_is_refused_while_one_holds_the_lock() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let lock_path = presence::lock::RunLock::path_for(&db.path());
    let mut holder = Command::new("flock")
        .arg(&lock_path)
        .args(["sleep", "60"])
        .process_group(0)
        .spawn()
        .expect("flock (util-linux) runs");
    let held = eventually(Duration::from_secs(5), || async {
        presence::lock::RunLock::try_acquire(&db.path()).is_err()
    })
    .await;

    let refused = run_cli(&redis, &db, &["run"]);
    let group = format!("-{}", holder.id());
    Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .unwrap();
    holder.wait().unwrap();
    let after = run_cli(&redis, &db, &["run"]);

    assert!(held, "the holder never took the lock");
    assert_eq!(refused.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("holds the lock"));
    assert_eq!(after.status.code(), Some(0), "{after:?}");
}

/// Each kind of failure has its own exit code: Redis unreachable 3, database 4.
#[tokio::test]
async fn failures_have_distinct_exit_codes() {
    let (mut redis, db) = (RedisServer::start(), TestDb::new());
    let bad_db = TestDb::new();
    std::fs::create_dir_all(bad_db.path()).unwrap();

    let database = run_cli(&redis, &bad_db, &["run"]);
    redis.stop();
    let unreachable = run_cli(&redis, &db, &["run"]);

    assert_eq!(database.status.code(), Some(4), "{database:?}");
    assert_eq!(unreachable.status.code(), Some(3), "{unreachable:?}");
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("error:"));
}

/// Without a terminal, `run` prints one summary line; `history` and `last-seen` read the
/// durable record back.
#[tokio::test]
async fn the_cli_reports_runs_and_records() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    api.ping("ann").await;
    let (_, off) = api.offline("ann").await;

    let run = run_cli(&redis, &db, &["run"]);
    let history = run_cli(&redis, &db, &["history"]);
    let record = run_cli(&redis, &db, &["last-seen", "ann"]);
    let bad = run_cli(&redis, &db, &["last-seen", "not valid"]);

    let out = String::from_utf8(run.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("snapshot: online=0 came_online=0 went_offline=0 keys_scanned=1"));
    let history = String::from_utf8(history.stdout).unwrap();
    assert_eq!(logged_runs(&history), 1, "{history}");
    let record = String::from_utf8(record.stdout).unwrap();
    assert!(
        record.contains(off["last_seen"].as_str().unwrap()),
        "{record}"
    );
    assert_eq!(bad.status.code(), Some(1));
}

/// The scheduler runs on its cron, and SIGTERM stops it cleanly.
#[tokio::test]
async fn the_scheduler_runs_until_told_to_stop() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut child = cli(&redis, &db, &["schedule", "--cron", "* * * * * *"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let ran_twice = eventually(Duration::from_secs(15), || async {
        let out = run_cli(&redis, &db, &["history"]);
        logged_runs(&String::from_utf8_lossy(&out.stdout)) >= 2
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();

    assert!(ran_twice, "the scheduler did not run twice");
    assert_eq!(status.code(), Some(0));
}

fn cli(redis: &RedisServer, db: &TestDb, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presence-snapshot"));
    cmd.env("PRESENCE_REDIS_URL", redis.url())
        .env("PRESENCE_DB", db.path())
        .env("RUST_LOG", "warn")
        .args(args);
    cmd
}

fn run_cli(redis: &RedisServer, db: &TestDb, args: &[&str]) -> std::process::Output {
    cli(redis, db, args).output().unwrap()
}

/// A tick that comes while a run is still going is skipped and logged; a run that fails
/// is logged and the next tick runs normally. The test holds the database's write lock
/// so that a run waits out its busy timeout and then fails.
#[tokio::test]
async fn the_scheduler_skips_overlapping_ticks_and_survives_failures() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    presence::db::open_and_migrate(&db.path(), Duration::from_secs(1)).unwrap();
    let blocker = db.conn();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cli(
        &redis,
        &db,
        &[
            "--busy-timeout-ms",
            "2500",
            "schedule",
            "--cron",
            "* * * * * *",
        ],
    )
    .env("RUST_LOG", "info")
    .stderr(log.reopen().unwrap())
    .spawn()
    .unwrap();

    let skipped = eventually(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(log.path()).unwrap();
        text.contains("skipping a tick") && text.contains("snapshot run failed")
    })
    .await;
    blocker.execute_batch("COMMIT").unwrap();
    let recovered = eventually(Duration::from_secs(10), || async {
        let out = run_cli(&redis, &db, &["history"]);
        logged_runs(&String::from_utf8_lossy(&out.stdout)) >= 1
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();

    assert!(skipped, "{}", std::fs::read_to_string(log.path()).unwrap());
    assert!(
        recovered,
        "no run succeeded after the database was free again"
    );
    assert_eq!(status.code(), Some(0));
}

/// The rows of a `history` table: one per run, each opening with its start time.
fn logged_runs(history: &str) -> usize {
    history.lines().filter(|l| l.starts_with("20")).count()
}
