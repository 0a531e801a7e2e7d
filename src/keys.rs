//! The Redis key layout.
//!
//! Each user has two keys, both carrying the user id as a hash tag so that Redis Cluster
//! puts them in one slot and one script call can touch both:
//!
//! - `{prefix}on:{user}`: the presence key. It exists while the user is online and
//!   expires one online TTL after the last heartbeat; its value is the running session's
//!   `start:previous_end` (the tail of the shadow value), so a ping reads it where it
//!   refreshes it. Its expiry is the event a keyspace-notification listener would watch.
//! - `{prefix}seen:{user}`: the shadow key (see [`crate::shadow`]). It outlives the
//!   presence key by the shadow TTL, so last-seen stays exact after the user goes offline
//!   and until the batch job has made it durable.

use crate::user::UserId;

/// The default prefix of every key this service writes.
pub const DEFAULT_KEY_PREFIX: &str = "presence:";

/// Builds and parses key names under one prefix.
#[derive(Clone, Debug)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// A layout under `prefix` (which may be empty).
    pub fn new(prefix: impl Into<String>) -> KeyLayout {
        KeyLayout {
            prefix: prefix.into(),
        }
    }

    /// The presence key of `user`.
    pub fn presence(&self, user: &str) -> String {
        let mut key = String::new();
        self.presence_in(user, &mut key);
        key
    }

    /// The shadow key of `user`.
    pub fn shadow(&self, user: &str) -> String {
        let mut key = String::new();
        self.shadow_in(user, &mut key);
        key
    }

    /// The presence key of `user`, built in `buf` (cleared first): for loops over many
    /// users, where one buffer for every key saves an allocation per key.
    pub fn presence_in<'b>(&self, user: &str, buf: &'b mut String) -> &'b str {
        self.build(buf, "on:{", user)
    }

    /// The shadow key of `user`, built in `buf` as [`KeyLayout::presence_in`] does.
    pub fn shadow_in<'b>(&self, user: &str, buf: &'b mut String) -> &'b str {
        self.build(buf, "seen:{", user)
    }

    /// One MGET of the shadow key of every user, in the order given: the read behind
    /// status lookups and the snapshot walk on one server.
    pub fn read_shadows<'u>(&self, users: impl IntoIterator<Item = &'u str>) -> redis::Cmd {
        self.mget(users, "seen:{")
    }

    /// One MGET of the presence key of every user, in the order given: for the users
    /// whose shadow value carries no deadline.
    pub fn read_presence<'u>(&self, users: impl IntoIterator<Item = &'u str>) -> redis::Cmd {
        self.mget(users, "on:{")
    }

    fn mget<'u>(&self, users: impl IntoIterator<Item = &'u str>, kind: &str) -> redis::Cmd {
        let mut mget = redis::cmd("MGET");
        let mut key = String::new();
        for user in users {
            mget.arg(self.build(&mut key, kind, user));
        }
        mget
    }

    fn build<'b>(&self, buf: &'b mut String, kind: &str, user: &str) -> &'b str {
        buf.clear();
        buf.push_str(&self.prefix);
        buf.push_str(kind);
        buf.push_str(user);
        buf.push('}');
        buf
    }

    /// The SCAN pattern that matches every shadow key. Characters that SCAN patterns treat
    /// specially are escaped in the prefix.
    pub fn shadow_pattern(&self) -> String {
        format!("{}seen:{{*}}", escape_glob(&self.prefix))
    }

    /// The user of a shadow key, or `None` when the key is not a shadow key of a valid user
    /// (someone else's key that happens to match the pattern).
    pub fn user_of_shadow<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let user = rest.strip_prefix("seen:{")?.strip_suffix('}')?;
        UserId::parse(user).ok().map(|_| user)
    }
}

fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_keys_share_the_user_hash_tag() {
        let keys = KeyLayout::new("presence:");
        assert_eq!(keys.presence("ann"), "presence:on:{ann}");
        assert_eq!(keys.shadow("ann"), "presence:seen:{ann}");
    }

    #[test]
    fn keys_built_in_a_buffer_match_the_allocated_ones() {
        let keys = KeyLayout::new("app:");
        let mut buf = String::from("left over from an earlier key");
        assert_eq!(keys.presence_in("ann", &mut buf), keys.presence("ann"));
        assert_eq!(keys.shadow_in("bo", &mut buf), keys.shadow("bo"));
    }

    #[test]
    fn parses_only_shadow_keys_of_valid_users() {
        let keys = KeyLayout::new("p:");
        assert_eq!(keys.user_of_shadow(b"p:seen:{ann}"), Some("ann"));
        assert_eq!(keys.user_of_shadow(b"p:on:{ann}"), None);
        assert_eq!(keys.user_of_shadow(b"p:seen:{a b}"), None);
        assert_eq!(keys.user_of_shadow(b"q:seen:{ann}"), None);
    }

    #[test]
    fn escapes_glob_characters_in_the_prefix() {
        assert_eq!(KeyLayout::new("a*[").shadow_pattern(), "a\\*\\[seen:{*}");
    }
}
