//! User ids as the batch job holds them: a million or more at once, sorted.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

/// Ids up to this many bytes are kept inline.
const INLINE: usize = 22;

/// A user id kept inline when it is short, as most are, and on the heap otherwise.
///
/// The job keeps one per user it walked and sorts them. As a `Box<str>` each id cost a
/// heap allocation of its own (about 32 bytes for a 12-byte id) and a pointer to follow on
/// every comparison of the sort, and those comparisons were a quarter of the job's CPU at
/// a million users. Inline, an id is 24 bytes in the observation itself.
#[derive(Clone)]
pub enum CompactId {
    /// An id of at most 22 bytes.
    Inline {
        /// Bytes in use.
        len: u8,
        /// The id, then zeros.
        bytes: [u8; INLINE],
    },
    /// A longer id.
    Heap(Box<str>),
}

impl CompactId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CompactId::Inline { len, bytes } => &bytes[..usize::from(*len)],
            CompactId::Heap(id) => id.as_bytes(),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        match self {
            // Inline bytes are only ever copied whole from a `&str`, so they are UTF-8.
            CompactId::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            CompactId::Heap(id) => id,
        }
    }
}

impl From<&str> for CompactId {
    fn from(id: &str) -> CompactId {
        if id.len() > INLINE {
            return CompactId::Heap(id.into());
        }
        let mut bytes = [0; INLINE];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        CompactId::Inline {
            len: id.len() as u8,
            bytes,
        }
    }
}

impl Deref for CompactId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for CompactId {
    fn eq(&self, other: &CompactId) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CompactId {}

impl PartialOrd for CompactId {
    fn partial_cmp(&self, other: &CompactId) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The order of the ids as strings, which is the order SQLite sorts them in.
impl Ord for CompactId {
    fn cmp(&self, other: &CompactId) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for CompactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CompactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_no_bigger_than_a_pointer_length_and_tag() {
        assert_eq!(std::mem::size_of::<CompactId>(), 24);
    }

    #[test]
    fn short_and_long_ids_read_back_and_sort_as_strings() {
        let ids = [
            "",
            "a",
            "ab",
            "abcdefghijklmnopqrstuv",
            "abcdefghijklmnopqrstuvw",
            "abcdefghijklmnopqrstuvwx",
            "b",
            "user-1",
            "user-10",
            "user-2",
        ];
        let mut compact: Vec<CompactId> = ids.iter().rev().map(|&id| id.into()).collect();
        compact.sort();
        let back: Vec<&str> = compact.iter().map(CompactId::as_str).collect();
        assert_eq!(back, ids);
        assert!(matches!(compact[4], CompactId::Heap(_)));
        assert!(matches!(compact[3], CompactId::Inline { .. }));
    }
}
