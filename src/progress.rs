//! The progress bar of a snapshot run on a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner counting keys scanned, or a hidden bar when `visible` is false (under cron,
/// or with output redirected).
pub fn scan_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} scanned {pos} keys ({per_sec}) {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
