//! The measurements: a timed `presence-snapshot run` in a process of its own, the floor
//! Redis itself sets for the same walk, and Redis's own memory count.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use presence::keys::KeyLayout;
use redis::Connection;

/// The floor: Redis walks the shadow keys with the job's SCAN pattern and COUNT and reads
/// each batch's values with one MGET, as the job does, all inside one script, so no byte
/// crosses a socket. `ARGV`: the pattern and the COUNT.
const FLOOR_SCRIPT: &str = r#"
local cursor, keys_seen = '0', 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', ARGV[2])
  cursor = reply[1]
  if #reply[2] > 0 then redis.call('MGET', unpack(reply[2])) end
  keys_seen = keys_seen + #reply[2]
until cursor == '0'
return keys_seen
"#;

/// Where the job runs: its binary, Redis, and a directory for databases.
pub struct JobSetup {
    /// The release `presence-snapshot` binary.
    pub binary: PathBuf,
    /// The Redis URL.
    pub redis_url: String,
    /// Where each scenario keeps its database.
    pub work_dir: PathBuf,
    /// The SCAN COUNT of both the job and the floor.
    pub scan_count: usize,
}

/// One timed run of the job.
#[derive(Clone, Copy, Debug)]
pub struct JobRun {
    /// Wall time of the process, start to exit.
    pub wall: Duration,
    /// Peak resident memory of the process, as the kernel counted it.
    pub peak_rss_kb: u64,
    /// Keys the run scanned, from its run log row.
    pub keys_scanned: u64,
    /// Rows the run wrote, from its run log row.
    pub rows_written: u64,
    /// Users that came online and went offline, from its run log row.
    pub transitions: u64,
}

impl JobSetup {
    /// Runs `presence-snapshot run` once against `db` under `/usr/bin/time -v`.
    pub fn run(&self, db: &Path) -> anyhow::Result<JobRun> {
        let began = Instant::now();
        let output = Command::new("/usr/bin/time")
            .arg("-v")
            .arg(&self.binary)
            .arg("run")
            .env("PRESENCE_REDIS_URL", &self.redis_url)
            .env("PRESENCE_DB", db)
            .env("PRESENCE_SCAN_COUNT", self.scan_count.to_string())
            .output()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let wall = began.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!(
                "presence-snapshot run failed ({}):\n{stderr}",
                output.status
            );
        }
        let (keys_scanned, rows_written, transitions) = last_logged_run(db)?;
        Ok(JobRun {
            wall,
            peak_rss_kb: peak_rss_kb(&stderr)?,
            keys_scanned,
            rows_written,
            transitions,
        })
    }

    /// The database path of a scenario.
    pub fn db(&self, name: &str) -> PathBuf {
        self.work_dir.join(format!("{name}.db"))
    }

    /// Times the floor walk and returns it with the number of keys it saw.
    pub fn floor(&self, con: &mut Connection, keys: &KeyLayout) -> anyhow::Result<(Duration, u64)> {
        let began = Instant::now();
        let seen: u64 = redis::cmd("EVAL")
            .arg(FLOOR_SCRIPT)
            .arg(0)
            .arg(keys.shadow_pattern())
            .arg(self.scan_count)
            .query(con)
            .context("running the floor script")?;
        Ok((began.elapsed(), seen))
    }
}

fn peak_rss_kb(time_report: &str) -> anyhow::Result<u64> {
    let line = time_report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .context("no peak RSS in the /usr/bin/time report")?;
    Ok(line.trim().parse()?)
}

fn last_logged_run(db: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let conn = rusqlite::Connection::open(db)?;
    let row = conn.query_row(
        "SELECT keys_scanned, rows_written, came_online + went_offline FROM runs \
         ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(row)
}

/// Bytes Redis has allocated, from `INFO memory`.
pub fn used_memory(con: &mut Connection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query(con)?;
    let value = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .context("no used_memory in INFO memory")?;
    Ok(value.trim().parse()?)
}

/// Redis's clock in milliseconds.
pub fn redis_now(con: &mut Connection) -> anyhow::Result<i64> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(con)?;
    Ok(secs * 1000 + micros / 1000)
}
