//! User ids as the API accepts them.

use std::fmt;

/// The longest user id accepted, in bytes (all allowed characters are ASCII).
pub const MAX_USER_ID_LEN: usize = 128;

/// A user id checked against the allowed alphabet: 1 to 128 characters of
/// `A-Z a-z 0-9 _ - . @`.
///
/// The alphabet leaves out `{`, `}`, `:` and `*`, so an id can sit inside a Redis hash tag
/// and a SCAN pattern without escaping, and a key can always be parsed back into its id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

/// Why a string is not a user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserId {
    /// The id is empty.
    #[error("a user id must not be empty")]
    Empty,
    /// The id is longer than [`MAX_USER_ID_LEN`].
    #[error("a user id must be at most {MAX_USER_ID_LEN} characters")]
    TooLong,
    /// The id holds a character outside the alphabet.
    #[error("a user id may hold only A-Z, a-z, 0-9, '_', '-', '.' and '@'")]
    BadCharacter,
}

impl UserId {
    /// Checks `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<UserId, InvalidUserId> {
        if raw.is_empty() {
            return Err(InvalidUserId::Empty);
        }
        if raw.len() > MAX_USER_ID_LEN {
            return Err(InvalidUserId::TooLong);
        }
        if !raw.bytes().all(is_id_byte) {
            return Err(InvalidUserId::BadCharacter);
        }
        Ok(UserId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@')
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet() {
        assert!(UserId::parse("Az09_-.@").is_ok());
        assert!(UserId::parse(&"a".repeat(MAX_USER_ID_LEN)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(UserId::parse(""), Err(InvalidUserId::Empty));
        let long = "a".repeat(MAX_USER_ID_LEN + 1);
        assert_eq!(UserId::parse(&long), Err(InvalidUserId::TooLong));
        for bad in ["a b", "a{b}", "a:b", "a*", "é", "a/b", "a\0"] {
            assert_eq!(
                UserId::parse(bad),
                Err(InvalidUserId::BadCharacter),
                "{bad:?}"
            );
        }
    }
}
