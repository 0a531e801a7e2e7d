//! Recording heartbeats and explicit offline calls in Redis.
//!
//! Each call is one Lua script run: one round trip, atomic, and stamped with Redis's own
//! clock rather than the API host's. Every API instance therefore stamps with the same
//! clock, so a host whose clock is a minute off cannot move anyone's last-seen into the
//! future or back in time. The stamp comes from a [`RedisClock`], an estimate of Redis's
//! clock kept by the caller, when it has one; otherwise the script asks Redis (`TIME`),
//! which costs the script about a fifth more time inside Redis. The scripts also never
//! write a heartbeat older than the one already in the shadow key, so last-seen cannot
//! move backwards even if Redis's own clock steps back (a failover to a replica with a
//! slower clock, say).

use std::time::Duration;

use std::sync::Arc;

use redis::Script;
use redis::aio::ConnectionLike;

use crate::clock::RedisClock;
use crate::keys::KeyLayout;
use crate::time::Millis;
use crate::user::UserId;

/// Reads the shadow key into `last`, `start` and `prev`, and Redis's time into `now`,
/// never earlier than `last`: `ARGV[3]` when the caller has an estimate, `TIME` when it
/// passes 0. Shared by both scripts; the format is [`crate::shadow`]'s.
///
/// Times stay the decimal strings they arrive as and are joined with `..`, converted to
/// numbers only to compare: formatting numbers back into text (`string.format`) was a
/// measurable share of the script's time.
const SCRIPT_PRELUDE: &str = r#"
local now = ARGV[3]
if now == '0' then
  local t = redis.call('TIME')
  now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local last, start, prev = '', nil, ''
-- pcall: a shadow key of another type (not written by this service) is overwritten below
-- rather than failing every ping of its user.
local old = redis.pcall('GET', KEYS[2])
if type(old) == 'string' then
  local a, b, c = string.match(old, '^(%d+):(%d+):(%d*)$')
  if a then last = a; start = b; prev = c end
end
if last ~= '' and tonumber(now) < tonumber(last) then now = last end
local function previous_end()
  if last ~= '' and tonumber(last) > 0 then return last end
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
redis.call('SET', KEYS[1], now, 'PX', ARGV[1])
redis.call('SET', KEYS[2], now .. ':' .. start .. ':' .. prev, 'PX', ARGV[2])
return tonumber(now)
"#;

/// An explicit offline call: the presence key goes at once and the session ends now. A
/// user who was not online gets a session of no length, so the visit is still recorded.
const OFFLINE_BODY: &str = r#"
if redis.call('DEL', KEYS[1]) == 0 or start == nil then
  prev = previous_end()
  start = now
end
redis.call('SET', KEYS[2], now .. ':' .. start .. ':' .. prev, 'PX', ARGV[2])
return tonumber(now)
"#;

/// Writes heartbeats with fixed TTLs.
#[derive(Clone, Debug)]
pub struct HeartbeatWriter {
    keys: KeyLayout,
    online_ttl: Duration,
    shadow_ttl: Duration,
    ping: Script,
    offline: Script,
    clock: Option<Arc<RedisClock>>,
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
            clock: None,
        }
    }

    /// Stamps with `clock`'s estimate of Redis's time whenever it has one, sparing the
    /// script its own `TIME` call.
    pub fn with_clock(mut self, clock: Arc<RedisClock>) -> HeartbeatWriter {
        self.clock = Some(clock);
        self
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
            .arg(self.clock.as_ref().and_then(|c| c.now()).unwrap_or(0))
            .invoke_async(con)
            .await
    }
}
