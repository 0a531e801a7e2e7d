//! The snapshot job killed at random points, and runs racing for the same database.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::{Duration, Instant};

use presence::lock::{LockError, RunLock};
use support::{
    Crowd, RedisServer, Rng, TestDb, eventually, integrity, last_seen_rows, run_count, run_totals,
    snapshot, snapshot_command, snapshot_options, snapshot_run,
};

/// Runs of the job that a SIGKILL must cut short.
const KILLS: usize = 50;

/// The most rounds tried to get there: a kill that comes after the run finished is a round
/// that does not count.
const MAX_ROUNDS: usize = 300;

/// The job killed with SIGKILL at random points, fifty times, while the keyspace
/// changes under it: the database passes `PRAGMA integrity_check` after every kill, and after one
/// clean run its last-seen rows and online set equal those of a database whose runs were
/// never interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_lose_nothing() {
    let (redis, killed, reference) = (RedisServer::start(), TestDb::new(), TestDb::new());
    let mut rng = Rng::from_env_or(20261203);
    let mut crowd = Crowd::new(&redis, 3000).await;
    crowd.all_ping().await;
    let reference_opts = snapshot_options(&reference);
    let clean = Instant::now();
    assert_eq!(snapshot_run(&redis, &TestDb::new().path(), &[]).0, 0);
    let mut span_us = clean.elapsed().as_micros() as u64;

    let (mut cut_short, mut round) = (0, 0);
    while cut_short < KILLS && round < MAX_ROUNDS {
        round += 1;
        let mut child = snapshot_command(&redis, &killed.path())
            .arg("run")
            .spawn()
            .unwrap();
        let delay = Duration::from_micros(rng.below(span_us));
        let mut changes = rng.split();
        let ((), ()) = tokio::join!(crowd.round(&mut changes, 200), async {
            tokio::time::sleep(delay).await;
            child.kill().unwrap();
        });
        if child.wait().unwrap().signal() == Some(9) {
            cut_short += 1;
        } else {
            // The run beat the kill: aim the next kills earlier.
            span_us = (span_us * 4 / 5).max(1_000);
        }
        snapshot(&redis, &reference_opts).await.unwrap();

        assert_eq!(integrity(&killed.path()), "ok", "after kill {round}");
    }
    crowd.round(&mut rng, 200).await;
    snapshot(&redis, &reference_opts).await.unwrap();
    let (code, _, stderr) = snapshot_run(&redis, &killed.path(), &[]);

    eprintln!("{cut_short} runs killed before they finished, in {round} rounds");
    assert_eq!(code, 0, "{stderr}");
    assert!(cut_short >= KILLS, "only {cut_short} runs were cut short");
    assert_eq!(
        last_seen_rows(&killed.path()),
        last_seen_rows(&reference.path())
    );
    assert_eq!(online_set(&killed), online_set(&reference));
}

/// The online set: each user with the start of their open session. (Not the heartbeat
/// stored with it, which is the newest one the run that first saw the session knew.)
fn online_set(db: &TestDb) -> Vec<(String, i64)> {
    let conn = db.conn();
    let mut stmt = conn
        .prepare("SELECT user_id, since_ms FROM online_users ORDER BY 1")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Two schedulers and manual runs on one Redis and one database: runs take turns under
/// the run lock (a manual run that finds it taken exits with code 5), and no run's writes
/// are doubled or lost: the run log's totals, the sessions and last-seen rows equal those
/// of a database fed by one uninterrupted run per change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_runs_take_turns() {
    let (redis, shared, reference) = (RedisServer::start(), TestDb::new(), TestDb::new());
    let mut rng = Rng::from_env_or(7);
    let mut crowd = Crowd::new(&redis, 2000).await;
    crowd.all_ping().await;
    let reference_opts = snapshot_options(&reference);
    snapshot(&redis, &reference_opts).await.unwrap();
    assert_eq!(snapshot_run(&redis, &shared.path(), &[]).0, 0);
    let schedulers: Vec<Child> = (0..2).map(|_| scheduler(&redis, &shared)).collect();

    let mut manual_codes = Vec::new();
    for _ in 0..5 {
        crowd.round(&mut rng, 300).await;
        snapshot(&redis, &reference_opts).await.unwrap();
        manual_codes.push(manual_run_while_locked(&redis, &shared));
        let seen_by_a_later_run = run_count(&shared.path()) + 2;
        let caught_up = eventually(Duration::from_secs(20), || async {
            run_count(&shared.path()) >= seen_by_a_later_run
        })
        .await;
        assert!(caught_up, "the schedulers stopped running");
    }
    while !manual_codes.contains(&5) && manual_codes.len() < 40 {
        manual_codes.push(manual_run_while_locked(&redis, &shared));
    }
    let logs: Vec<String> = schedulers.into_iter().map(stop).collect();
    let (code, _, stderr) = snapshot_run(&redis, &shared.path(), &[]);

    assert_eq!(code, 0, "{stderr}");
    assert!(
        manual_codes.iter().all(|c| [0, 5].contains(c)),
        "{manual_codes:?}"
    );
    assert!(
        manual_codes.contains(&5),
        "no manual run ever lost the lock: {manual_codes:?}"
    );
    assert!(logs.iter().all(|l| !l.contains("panicked")), "{logs:?}");
    assert_eq!(run_totals(&shared.path()), run_totals(&reference.path()));
    assert_eq!(shared.sessions(), reference.sessions());
    assert_eq!(
        last_seen_rows(&shared.path()),
        last_seen_rows(&reference.path())
    );
}

/// `presence-snapshot schedule` running every second.
fn scheduler(redis: &RedisServer, db: &TestDb) -> Child {
    snapshot_command(redis, &db.path())
        .args(["schedule", "--cron", "* * * * * *"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then waits for the scheduler to finish its run; returns what it logged.
fn stop(child: Child) -> String {
    support::terminate(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a scheduler failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A manual run started the moment a scheduled run is seen holding the run lock (or
/// after a few seconds without one); it may still win if that run ends first.
fn manual_run_while_locked(redis: &RedisServer, db: &TestDb) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match RunLock::try_acquire(&db.path()) {
            Err(LockError::Held(_)) => break,
            Ok(probe) => drop(probe),
            Err(e) => panic!("probing the run lock: {e}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    snapshot_run(redis, &db.path(), &[]).0
}
