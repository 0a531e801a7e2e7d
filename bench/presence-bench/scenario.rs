//! The snapshot scenarios: seed a population, run the job to settle it, churn, then time
//! the next run beside the floor and check every row it wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use presence::keys::KeyLayout;
use redis::Connection;

use crate::measure::{JobRun, JobSetup, redis_now, used_memory};
use crate::population::{Population, user_id};
use crate::verify::{Check, check_rows};

/// TTLs of the seeded keys: longer than the service's defaults so that no key expires
/// while a scenario runs (a TTL's length does not change what a key costs).
pub const ONLINE_TTL_MS: u64 = 1_800_000;
/// See [`ONLINE_TTL_MS`].
pub const SHADOW_TTL_MS: u64 = 3_600_000;

/// What one population size measured.
pub struct SizeResult {
    /// Online users before the churn.
    pub users: usize,
    /// Redis `used_memory` growth per seeded user.
    pub bytes_per_user: f64,
    /// The timed run, after 2% went offline and 2% came online (the median of
    /// [`rounds`] such runs).
    pub timed: JobRun,
    /// The floor walk's time just before and just after it: the machine's load drifts, so
    /// their mean is the fairer comparison.
    pub floor: [Duration; 2],
    /// The rows after the timed run against the truth.
    pub check: Check,
    /// Further runs at other churn shares, each with its rows checked.
    pub churn_runs: Vec<(f64, JobRun, Check)>,
}

/// Runs the scenario for `users` online users; `extra_churn` lists further churn shares
/// to run afterwards.
pub fn run_size(
    job: &JobSetup,
    con: &mut Connection,
    users: usize,
    extra_churn: &[f64],
) -> anyhow::Result<SizeResult> {
    let keys = KeyLayout::new(presence::keys::DEFAULT_KEY_PREFIX);
    let mut population = Population::new(keys.clone(), ONLINE_TTL_MS, SHADOW_TTL_MS);
    let db = fresh_db(job, users)?;
    redis::cmd("FLUSHALL").exec(con)?;
    let before = used_memory(con)?;
    let now = redis_now(con)?;
    population.come_online(con, users, now)?;
    let bytes_per_user = (used_memory(con)? - before) as f64 / users as f64;
    eprintln!("seeded {users} users; first run");
    job.run(&db)?;

    let mut rounds: Vec<Round> = (0..rounds(users))
        .map(|_| timed_round(job, con, &mut population, &keys, &db))
        .collect::<anyhow::Result<_>>()?;
    rounds.sort_by_key(|r| r.timed.wall);
    let Round { timed, floor } = rounds[rounds.len() / 2];
    let check = check_rows(&db, &population)?;
    eprintln!("{users} users: run {:?}, floor {floor:?}", timed.wall);

    let mut churn_runs = Vec::new();
    for &share in extra_churn {
        churn(con, &mut population, share)?;
        let run = job.run(&db)?;
        churn_runs.push((share, run, check_rows(&db, &population)?));
    }
    Ok(SizeResult {
        users,
        bytes_per_user,
        timed,
        floor,
        check,
        churn_runs,
    })
}

/// One timed run of the job between two floor walks.
#[derive(Clone, Copy)]
struct Round {
    timed: JobRun,
    floor: [Duration; 2],
}

/// Timed rounds at a size. A run of a second or less is at the mercy of a moment's load on
/// a shared machine, and one of ten seconds still catches a slow spell now and then, so
/// sizes up to a couple of million repeat and their median round counts. Larger runs
/// take half a minute, long enough to average the spells out, and would make the
/// benchmark too long to repeat.
fn rounds(users: usize) -> usize {
    match users {
        0..500_000 => 5,
        500_000..2_000_000 => 3,
        _ => 1,
    }
}

/// Churns 2% of the users, then times the job between two floor walks.
fn timed_round(
    job: &JobSetup,
    con: &mut Connection,
    population: &mut Population,
    keys: &KeyLayout,
    db: &Path,
) -> anyhow::Result<Round> {
    churn(con, population, 0.02)?;
    let (before, _) = job.floor(con, keys)?;
    let timed = job.run(db)?;
    let (after, _) = job.floor(con, keys)?;
    Ok(Round {
        timed,
        floor: [before, after],
    })
}

/// Takes `share` of the online users offline and brings as many new ones online.
fn churn(con: &mut Connection, population: &mut Population, share: f64) -> anyhow::Result<()> {
    let joining = (population.online_count() as f64 * share).round() as usize;
    let now = redis_now(con)?;
    population.go_offline(con, share, now)?;
    population.come_online(con, joining, now)
}

fn fresh_db(job: &JobSetup, users: usize) -> anyhow::Result<PathBuf> {
    let db = job.db(&format!("snapshot-{users}"));
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let path = format!("{}{suffix}", db.display());
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e.into());
        }
    }
    Ok(db)
}

/// Redis memory per user of the plain layout: the same two keys per user, each holding
/// one integer, both with TTLs.
pub fn plain_bytes_per_user(con: &mut Connection, users: usize) -> anyhow::Result<f64> {
    let keys = KeyLayout::new(presence::keys::DEFAULT_KEY_PREFIX);
    redis::cmd("FLUSHALL").exec(con)?;
    let before = used_memory(con)?;
    let now = redis_now(con)?;
    for first in (0..users).step_by(2000) {
        let mut pipe = redis::pipe();
        for i in first..(first + 2000).min(users) {
            let id = user_id(i);
            pipe.cmd("SET")
                .arg(keys.presence(&id))
                .arg(now)
                .arg("PX")
                .arg(ONLINE_TTL_MS);
            pipe.ignore();
            pipe.cmd("SET")
                .arg(keys.shadow(&id))
                .arg(now)
                .arg("PX")
                .arg(SHADOW_TTL_MS);
            pipe.ignore();
        }
        pipe.exec(con)?;
    }
    let grown = used_memory(con)? - before;
    redis::cmd("FLUSHALL").exec(con)?;
    Ok(grown as f64 / users as f64)
}

impl SizeResult {
    /// The floor's time: the mean of the walks before and after the timed run.
    pub fn floor(&self) -> Duration {
        (self.floor[0] + self.floor[1]) / 2
    }
}
