//! Instants as this crate stores them: milliseconds since the Unix epoch, UTC.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch. Every stored time is one of these; they come from
/// Redis's clock (see [`crate::heartbeat`]) so that all API instances agree.
pub type Millis = i64;

/// Formats `ms` as an RFC 3339 UTC string with millisecond precision.
pub fn to_rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("invalid time ({ms} ms)"))
}

/// The local wall clock, used only for the job's own bookkeeping (when a run started),
/// never for a user's last-seen.
pub fn wall_clock_ms() -> Millis {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds_in_utc() {
        assert_eq!(to_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
