//! What a shadow key holds: `last:start:previous_end`, three times in milliseconds.
//!
//! - `last` is the user's latest heartbeat, or the time of an explicit offline call.
//! - `start` is the first heartbeat of the session `last` belongs to, so the batch job can
//!   record exact online periods without storing anything per ping.
//! - `previous_end` (empty when unknown) is the `last` of the session before, kept when a
//!   new session starts. A job run that finds a user's session restarted since the
//!   previous run closes the old session at this time instead of guessing.
//!
//! The ping script in [`crate::heartbeat`] writes this format in Lua; the two must agree.

use crate::time::Millis;

/// A decoded shadow value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shadow {
    /// The latest heartbeat (or explicit offline time).
    pub last: Millis,
    /// The first heartbeat of the current session.
    pub start: Millis,
    /// The end of the session before the current one, when known.
    pub previous_end: Option<Millis>,
}

impl Shadow {
    /// Decodes a shadow value; `None` for anything this service did not write. It works on
    /// bytes: status reads and the job's walk decode one value per user, and checking
    /// UTF-8 and splitting a `str` first cost more than the digits themselves.
    pub fn parse(raw: &[u8]) -> Option<Shadow> {
        let mut parts = raw.split(|&b| b == b':');
        let last = parse_ms(parts.next()?)?;
        let start = parse_ms(parts.next()?)?;
        let previous_end = match parts.next()? {
            [] => None,
            end => Some(parse_ms(end)?),
        };
        if parts.next().is_some() || start > last {
            return None;
        }
        Some(Shadow {
            last,
            start,
            previous_end,
        })
    }

    /// Encodes the value as the ping script would.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.last, self.encode_session())
    }

    /// Encodes `start:previous_end`, the value the ping script keeps in the presence key
    /// while the session runs.
    pub fn encode_session(&self) -> String {
        let end = self.previous_end.map(|e| e.to_string()).unwrap_or_default();
        format!("{}:{}", self.start, end)
    }
}

/// Decimal digits, at most 15 of them (ample for milliseconds, and no overflow).
pub(crate) fn parse_ms(digits: &[u8]) -> Option<Millis> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0, |ms: Millis, &b| {
        b.is_ascii_digit().then(|| ms * 10 + Millis::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = Shadow {
            last: 20,
            start: 10,
            previous_end: Some(5),
        };
        assert_eq!(Shadow::parse(s.encode().as_bytes()), Some(s));
        let fresh = Shadow {
            previous_end: None,
            ..s
        };
        assert_eq!(Shadow::parse(b"20:10:"), Some(fresh));
    }

    #[test]
    fn rejects_values_it_did_not_write() {
        for bad in [
            "",
            "x",
            "1:2:3",
            "20:10",
            "20:10:5:1",
            "-1:-2:",
            "20:1e3:",
            "９:1:",
        ] {
            assert_eq!(Shadow::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
