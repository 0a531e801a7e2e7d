//! What a shadow key holds: `last:start:previous_end:online_until`, four times in
//! milliseconds.
//!
//! - `last` is the user's latest heartbeat, or the time of an explicit offline call.
//! - `start` is the first heartbeat of the session `last` belongs to, so the batch job can
//!   record exact online periods without storing anything per ping.
//! - `previous_end` (empty when unknown) is the `last` of the session before, kept when a
//!   new session starts. A job run that finds a user's session restarted since the
//!   previous run closes the old session at this time instead of guessing.
//! - `online_until` is when the presence key written beside it expires, on Redis's clock,
//!   or `0` after an offline call. A status read then answers from this one key and
//!   Redis's `TIME`, without reading the presence key too. Earlier versions wrote the
//!   first three fields only; such a value still parses, without a deadline.
//!
//! The ping script in [`crate::heartbeat`] writes this format in Lua; the two must agree.

use crate::time::Millis;

/// A decoded shadow value: what the batch job needs of it.
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
        Shadow::parse_with_deadline(raw).map(|(shadow, _)| shadow)
    }

    /// Decodes a shadow value with its `online_until`, which is `None` in a value an
    /// earlier version wrote. The deadline stays out of [`Shadow`]: the batch job holds
    /// one `Shadow` per user it walked, and needs the deadline only while it reads the
    /// user's batch.
    pub fn parse_with_deadline(raw: &[u8]) -> Option<(Shadow, Option<Millis>)> {
        let mut parts = raw.split(|&b| b == b':');
        let last = parse_ms(parts.next()?)?;
        let start = parse_ms(parts.next()?)?;
        let previous_end = match parts.next()? {
            [] => None,
            end => Some(parse_ms(end)?),
        };
        let online_until = match parts.next() {
            None => None,
            Some(until) => Some(parse_ms(until)?),
        };
        if parts.next().is_some() || start > last {
            return None;
        }
        let shadow = Shadow {
            last,
            start,
            previous_end,
        };
        Some((shadow, online_until))
    }

    /// Encodes the value as the ping script would, with the presence key's deadline
    /// (`0` after an offline call).
    pub fn encode(&self, online_until: Millis) -> String {
        format!("{}:{}:{online_until}", self.last, self.encode_session())
    }

    /// Encodes the value as versions before `online_until` wrote it.
    pub fn encode_without_deadline(&self) -> String {
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
        assert_eq!(
            Shadow::parse_with_deadline(s.encode(300).as_bytes()),
            Some((s, Some(300)))
        );
        assert_eq!(Shadow::parse(s.encode(0).as_bytes()), Some(s));
        let fresh = Shadow {
            previous_end: None,
            ..s
        };
        assert_eq!(
            Shadow::parse_with_deadline(b"20:10::0"),
            Some((fresh, Some(0)))
        );
    }

    #[test]
    fn values_of_earlier_versions_parse_without_a_deadline() {
        let s = Shadow {
            last: 20,
            start: 10,
            previous_end: None,
        };
        assert_eq!(s.encode_without_deadline(), "20:10:");
        assert_eq!(Shadow::parse_with_deadline(b"20:10:"), Some((s, None)));
    }

    #[test]
    fn rejects_values_it_did_not_write() {
        for bad in [
            "",
            "x",
            "1:2:3",
            "20:10",
            "20:10:5:",
            "20:10:5:1:2",
            "20:10:5:x",
            "-1:-2:",
            "20:1e3:",
            "９:1:",
        ] {
            assert_eq!(Shadow::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
