//! The snapshot rows of the benchmark's markdown table. The columns are `bench/run`'s:
//! measurement, presence, baseline, ratio, target, met.

use crate::scenario::SizeResult;

/// The peak RSS a run of the job may reach at the headline size, in bytes.
const RSS_TARGET_BYTES: u64 = 150_000_000;

/// The rows for the headline size (measurement 3), the cost per key at every size and the
/// rows written per churn (measurement 4), and Redis memory (measurement 5).
pub fn rows(sizes: &[SizeResult], headline: &SizeResult, plain_bytes: f64) -> Vec<String> {
    let mut rows = headline_rows(headline);
    rows.extend(sizes.iter().map(|s| per_key_row(s, headline)));
    rows.extend(churn_rows(headline));
    rows.push(row(
        &format!(
            "5. Redis memory per online user ({} users)",
            count(headline.users)
        ),
        &format!("{:.0} B", headline.bytes_per_user),
        &format!("plain layout {plain_bytes:.0} B"),
        &format!("{:.2}x", headline.bytes_per_user / plain_bytes),
        "—",
        "—",
    ));
    rows
}

fn headline_rows(h: &SizeResult) -> Vec<String> {
    let (wall, floor) = (h.timed.wall.as_secs_f64(), h.floor().as_secs_f64());
    let [before, after] = h.floor.map(|f| f.as_secs_f64());
    let rss = h.timed.peak_rss_kb * 1024;
    vec![
        row(
            &format!(
                "3. snapshot run, {} online, 2% left, 2% new",
                count(h.users)
            ),
            &format!("{wall:.2} s"),
            &format!("Lua floor {floor:.2} s ({before:.2} before, {after:.2} after)"),
            &format!("{:.2}x", wall / floor),
            "≤ 2x",
            verdict(wall <= 2.0 * floor),
        ),
        row(
            "3. snapshot run peak RSS",
            &format!("{:.0} MB", rss as f64 / 1e6),
            "—",
            "—",
            "≤ 150 MB",
            verdict(rss <= RSS_TARGET_BYTES),
        ),
        row(
            "3. online, last-seen and session rows vs seeded truth",
            &format!(
                "{} rows, {} wrong",
                count(h.check.expected as usize),
                h.check.wrong
            ),
            "—",
            "—",
            "exact",
            verdict(h.check.exact()),
        ),
    ]
}

fn per_key_row(s: &SizeResult, headline: &SizeResult) -> String {
    let per_key = |r: &SizeResult| r.timed.wall.as_secs_f64() * 1e6 / r.timed.keys_scanned as f64;
    let floor_per_key = s.floor().as_secs_f64() * 1e6 / s.timed.keys_scanned as f64;
    let ratio = per_key(s) / per_key(headline);
    row(
        &format!("4. snapshot time per key, {} online", count(s.users)),
        &format!(
            "{:.2} µs (run {:.2} s, peak RSS {:.0} MB)",
            per_key(s),
            s.timed.wall.as_secs_f64(),
            (s.timed.peak_rss_kb * 1024) as f64 / 1e6
        ),
        &format!("floor {floor_per_key:.2} µs"),
        &format!("{ratio:.2}x of {}", count(headline.users)),
        "0.75–1.25x",
        verdict((0.75..=1.25).contains(&ratio) && s.check.exact()),
    )
}

fn churn_rows(h: &SizeResult) -> Vec<String> {
    let timed = (0.02, h.timed, h.check);
    let runs = std::iter::once(&timed).chain(h.churn_runs.iter());
    runs.map(|(share, run, check)| {
        row(
            &format!(
                "4. rows written, {} online, {}% churn",
                count(h.users),
                share * 100.0
            ),
            &format!("{} rows", count(run.rows_written as usize)),
            &format!("{} transitions", count(run.transitions as usize)),
            &format!(
                "{:.2} rows/transition",
                run.rows_written as f64 / run.transitions as f64
            ),
            "proportional, rows exact",
            verdict(check.exact()),
        )
    })
    .collect()
}

fn row(what: &str, presence: &str, baseline: &str, ratio: &str, target: &str, met: &str) -> String {
    format!("| {what} | {presence} | {baseline} | {ratio} | {target} | {met} |")
}

fn verdict(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

/// `n` with thin separators between thousands: 1,000,000.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
