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

/// Bars from low to high, one per run.
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The online count of `runs` (newest first) as a sparkline, oldest on the left, with its
/// range: the shape of a day at a glance, under the table's exact numbers.
pub fn online_sparkline(runs: &[LoggedRun]) -> String {
    let counts: Vec<u64> = runs.iter().rev().map(|r| r.summary.online).collect();
    let (Some(&low), Some(&high)) = (counts.iter().min(), counts.iter().max()) else {
        return String::new();
    };
    let line: String = counts.iter().map(|&n| spark(n, low, high)).collect();
    format!("online {line}  min {low} max {high}, oldest to newest\n\n")
}

fn spark(n: u64, low: u64, high: u64) -> char {
    if high == low {
        return SPARKS[SPARKS.len() / 2];
    }
    let step = (n - low) as f64 / (high - low) as f64 * (SPARKS.len() - 1) as f64;
    SPARKS[step.round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::RunSummary;

    fn run(online: u64) -> LoggedRun {
        LoggedRun {
            started_ms: 0,
            summary: RunSummary {
                online,
                ..RunSummary::default()
            },
        }
    }

    /// The history comes newest first; the sparkline reads left to right, oldest first.
    #[test]
    fn the_sparkline_runs_oldest_to_newest() {
        let newest_first = [run(70), run(0), run(10)];

        let line = online_sparkline(&newest_first);

        assert_eq!(line, "online ▂▁█  min 0 max 70, oldest to newest\n\n");
    }

    /// Equal counts draw a flat middle line, not a division by zero; no runs draw nothing.
    #[test]
    fn a_flat_history_draws_a_flat_line() {
        assert_eq!(
            online_sparkline(&[run(5), run(5)]),
            "online ▅▅  min 5 max 5, oldest to newest\n\n"
        );
        assert_eq!(online_sparkline(&[]), "");
    }
}
