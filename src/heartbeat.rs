//! Recording heartbeats and explicit offline calls in Redis.
//!
//! Each call is one Lua script run: one round trip, atomic, and stamped with Redis's own
//! clock (`TIME`) rather than the API host's. Every API instance therefore stamps with the
//! same clock, so a host whose clock is a minute off cannot move anyone's last-seen into
//! the future or back in time. The scripts also never write a heartbeat older than the one
//! already in the shadow key, so last-seen cannot move backwards even if Redis's own clock
//! steps back (a failover to a replica with a slower clock, say).

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionLike;

use crate::keys::KeyLayout;
use crate::time::Millis;
use crate::user::UserId;

/// Reads the shadow key into `last`, `start` and `prev`, and the Redis clock into `now`,
/// never earlier than `last`. Shared by both scripts; the format is [`crate::shadow`]'s.
const SCRIPT_PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last, start, prev = 0, nil, ''
-- pcall: a shadow key of another type (not written by this service) is overwritten below
-- rather than failing every ping of its user.
local old = redis.pcall('GET', KEYS[2])
if type(old) == 'string' then
  local a, b, c = string.match(old, '^(%d+):(%d+):(%d*)$')
  if a then last = tonumber(a); start = tonumber(b); prev = c end
end
if now < last then now = last end
local function previous_end()
  if last > 0 then return string.format('%d', last) end
  return ''
end
"#;

/// A ping: refresh (or create) the presence key, and move the shadow key's heartbeat
/// forward. A missing presence key means a new session, which starts now.
const PING_BODY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 or start == nil then
  prev = previous_end()
  start = now
end
redis.call('SET', KEYS[1], string.format('%d', now), 'PX', ARGV[1])
redis.call('SET', KEYS[2], string.format('%d:%d:%s', now, start, prev), 'PX', ARGV[2])
return now
"#;

/// An explicit offline call: the presence key goes at once and the session ends now. A
/// user who was not online gets a session of no length, so the visit is still recorded.
const OFFLINE_BODY: &str = r#"
if redis.call('DEL', KEYS[1]) == 0 or start == nil then
  prev = previous_end()
  start = now
end
redis.call('SET', KEYS[2], string.format('%d:%d:%s', now, start, prev), 'PX', ARGV[2])
return now
"#;

/// Writes heartbeats with fixed TTLs.
#[derive(Clone, Debug)]
pub struct HeartbeatWriter {
    keys: KeyLayout,
    online_ttl: Duration,
    shadow_ttl: Duration,
    ping: Script,
    offline: Script,
}

impl HeartbeatWriter {
    /// A writer for keys under `keys`, with the presence key living `online_ttl` after a
    /// heartbeat and the shadow key `shadow_ttl`.
    pub fn new(keys: KeyLayout, online_ttl: Duration, shadow_ttl: Duration) -> HeartbeatWriter {
        HeartbeatWriter {
            keys,
            online_ttl,
            shadow_ttl,
            ping: Script::new(&format!("{SCRIPT_PRELUDE}{PING_BODY}")),
            offline: Script::new(&format!("{SCRIPT_PRELUDE}{OFFLINE_BODY}")),
        }
    }

    /// Records a heartbeat of `user` and returns its time on Redis's clock.
    pub async fn record_ping<C>(&self, con: &mut C, user: &UserId) -> redis::RedisResult<Millis>
    where
        C: ConnectionLike + Send,
    {
        self.invoke(&self.ping, con, user).await
    }

    /// Takes `user` offline now and returns that time on Redis's clock.
    pub async fn record_offline<C>(&self, con: &mut C, user: &UserId) -> redis::RedisResult<Millis>
    where
        C: ConnectionLike + Send,
    {
        self.invoke(&self.offline, con, user).await
    }

    async fn invoke<C>(
        &self,
        script: &Script,
        con: &mut C,
        user: &UserId,
    ) -> redis::RedisResult<Millis>
    where
        C: ConnectionLike + Send,
    {
        script
            .key(self.keys.presence(user.as_str()))
            .key(self.keys.shadow(user.as_str()))
            .arg(self.online_ttl.as_millis() as u64)
            .arg(self.shadow_ttl.as_millis() as u64)
            .invoke_async(con)
            .await
    }
}
