//! Instants as this crate stores them: milliseconds since the Unix epoch, UTC.

use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

/// Milliseconds since the Unix epoch. Every stored time is one of these; they come from
/// Redis's clock (see [`crate::heartbeat`]) so that all API instances agree.
pub type Millis = i64;

/// The milliseconds of a reply to Redis's `TIME` (seconds and microseconds).
pub fn from_time_reply(reply: redis::Value) -> redis::RedisResult<Millis> {
    let (secs, micros): (i64, i64) = redis::from_redis_value(reply)?;
    Ok(secs * 1000 + micros / 1000)
}

/// Formats `ms` as an RFC 3339 UTC string with millisecond precision.
pub fn to_rfc3339(ms: Millis) -> String {
    Rfc3339(ms).to_string()
}

/// An instant shown as RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.123Z`),
/// written straight into whatever formats it: a status query shows one per user, and a
/// `String` each plus chrono's general formatter were a visible share of its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub Millis);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(t) = DateTime::<Utc>::from_timestamp_millis(self.0) else {
            return write!(f, "invalid time ({} ms)", self.0);
        };
        if !(0..=9999).contains(&t.year()) {
            return f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let fields = [
            (0..4, t.year() as u32),
            (5..7, t.month()),
            (8..10, t.day()),
            (11..13, t.hour()),
            (14..16, t.minute()),
            (17..19, t.second()),
            (20..23, t.timestamp_subsec_millis()),
        ];
        for (range, mut value) in fields {
            for digit in text[range].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
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
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(to_rfc3339(951_782_400_007), "2000-02-29T00:00:00.007Z");
    }

    #[test]
    fn agrees_with_chrono_across_the_years() {
        let step = 86_400_000 * 367 + 3_723_456;
        for ms in (-62_135_596_800_000..=253_402_300_799_999).step_by(step) {
            let chrono = DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(to_rfc3339(ms), chrono, "{ms}");
        }
    }

    #[test]
    fn years_beyond_four_digits_and_impossible_times_still_format() {
        assert_eq!(
            to_rfc3339(253_402_300_800_000),
            "+10000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            to_rfc3339(i64::MAX),
            format!("invalid time ({} ms)", i64::MAX)
        );
    }
}
