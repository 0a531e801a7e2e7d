//! Plain-text reports for the terminal.

use std::fmt::Write;

use crate::last_seen::DurableRecord;
use crate::snapshot::LoggedRun;
use crate::time::to_rfc3339;

/// The run log as a table, newest first.
pub fn history_table(runs: &[LoggedRun]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7}\n",
        "started", "elapsed", "keys", "online", "came", "went", "rows", "kept"
    );
    for run in runs {
        let s = &run.summary;
        let _ = writeln!(
            out,
            "{:<24} {:>7}ms {:>9} {:>9} {:>7} {:>7} {:>7} {:>7}",
            to_rfc3339(run.started_ms),
            s.elapsed_ms,
            s.keys_scanned,
            s.online,
            s.came_online,
            s.went_offline,
            s.rows_written,
            s.vanished_kept
        );
    }
    if runs.is_empty() {
        out.push_str("(no runs yet)\n");
    }
    out
}

/// One user's durable record.
pub fn record_text(user: &str, record: &DurableRecord) -> String {
    let mut out = format!("user:        {user}\n");
    let last = record.last_seen.map(to_rfc3339);
    let _ = writeln!(
        out,
        "last seen:   {}",
        last.as_deref().unwrap_or("never recorded")
    );
    if let Some(at) = record.recorded {
        let _ = writeln!(out, "recorded at: {}", to_rfc3339(at));
    }
    if let Some(since) = record.online_since {
        let _ = writeln!(
            out,
            "online since {} (as of the latest run)",
            to_rfc3339(since)
        );
    }
    for s in &record.sessions {
        let _ = writeln!(
            out,
            "online {} .. {}",
            to_rfc3339(s.started),
            to_rfc3339(s.ended)
        );
    }
    out
}
