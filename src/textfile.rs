//! The job's latest run as a node_exporter textfile (`presence-snapshot run --metrics-file`).
//!
//! A cron or timer run lives for a second and cannot be scraped, so it leaves its numbers
//! in a file that node_exporter's textfile collector serves. The file is written to a
//! temporary name in the same folder and renamed over the old one: the collector reads
//! either the previous run or this one, never half a file. A failed run writes the file
//! too, with `presence_snapshot_last_run_success 0` and no counts; a run that finds
//! another run holding the lock does not, and leaves the file to that run.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::snapshot::RunSummary;
use crate::time::Millis;

/// What one run leaves for the collector.
#[derive(Clone, Debug)]
pub struct RunReport<'a> {
    /// When the run ended, in milliseconds since the epoch.
    pub ended_ms: Millis,
    /// How long it took.
    pub elapsed: Duration,
    /// Its counts; `None` when it failed.
    pub summary: Option<&'a RunSummary>,
}

/// The report in Prometheus's text format.
pub fn render(report: &RunReport) -> String {
    let success = u8::from(report.summary.is_some());
    let mut gauges = vec![
        (
            "last_run_timestamp_seconds",
            "When the latest run ended (unix seconds).",
            report.ended_ms as f64 / 1000.0,
        ),
        (
            "last_run_duration_seconds",
            "How long the latest run took.",
            report.elapsed.as_secs_f64(),
        ),
        (
            "last_run_success",
            "1 if the latest run committed, 0 if it failed.",
            f64::from(success),
        ),
    ];
    if let Some(s) = report.summary {
        gauges.extend([
            (
                "last_run_online_users",
                "Users online as the latest run saw them.",
                s.online as f64,
            ),
            (
                "last_run_came_online_users",
                "Sessions the latest run saw begin.",
                s.came_online as f64,
            ),
            (
                "last_run_went_offline_users",
                "Sessions the latest run saw end.",
                s.went_offline as f64,
            ),
            (
                "last_run_keys_scanned",
                "Shadow keys the latest run scanned.",
                s.keys_scanned as f64,
            ),
        ]);
    }
    let mut out = String::new();
    for (name, help, value) in gauges {
        gauge(&mut out, name, help, value);
    }
    out
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP presence_snapshot_{name} {help}");
    let _ = writeln!(out, "# TYPE presence_snapshot_{name} gauge");
    let _ = writeln!(out, "presence_snapshot_{name} {value}");
}

/// Replaces `path` with `text` in one rename.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("metrics file {} has no file name", path.display()))?;
    let temp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        // node_exporter runs as a user of its own and must read it, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("writing metrics file {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed run reports when it ended and that it failed, and no counts it never made.
    #[test]
    fn a_failed_run_reports_no_counts() {
        let report = RunReport {
            ended_ms: 1_500,
            elapsed: Duration::from_millis(250),
            summary: None,
        };

        let text = render(&report);

        assert!(text.contains("presence_snapshot_last_run_success 0\n"));
        assert!(text.contains("presence_snapshot_last_run_timestamp_seconds 1.5\n"));
        assert!(!text.contains("online_users"));
    }
}
