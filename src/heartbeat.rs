//! Recording heartbeats and explicit offline calls in Redis.
//!
//! Each call is one Lua script run: atomic, and stamped with Redis's own clock (`TIME`,
//! read once per run) rather than the API host's. Every API instance therefore stamps
//! with the same clock, so a host whose clock is a minute off cannot move anyone's
//! last-seen into the future or back in time. The script never writes a heartbeat older
//! than the one already in the shadow key, so last-seen cannot move backwards even if
//! Redis's own clock steps back (a failover to a replica with a slower clock, say).
//!
//! One run may carry the heartbeats of many users ([`HeartbeatWriter::record`]): Redis
//! then pays for one script call, one `TIME` and one round trip for all of them, which is
//! what [`crate::heartbeat_queue`] uses to coalesce concurrent requests. Users are handled
//! in the order given, so one user twice in a run sees its own earlier write.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionLike;

use crate::keys::KeyLayout;
use crate::time::Millis;
use crate::user::UserId;

/// The script: `KEYS` are each user's presence and shadow key in pairs, `ARGV` the online
/// and shadow TTLs in milliseconds and then one letter per user, `p` for a ping and `o`
/// for an offline call. It returns each user's stamp, in order.
///
/// A ping refreshes (or creates) the presence key; a missing presence key means a new
/// session, which starts now. An offline call deletes the presence key and ends the
/// session now; a user who was not online gets a session of no length, so the visit is
/// still recorded. Both move the shadow key (format: [`crate::shadow`]) forward.
///
/// The presence key holds the running session's `start:previous_end`, the middle of the
/// shadow value. A ping in a running session is then two commands: `GETEX` reads the
/// session and refreshes the TTL, and `SET … GET` writes the shadow key and hands back the
/// old one, whose heartbeat is only compared. Reading the shadow key first and writing
/// both keys took three, and most of the script's time went to the commands it called,
/// not to its own logic. A new session, or a presence key in any other shape (another
/// type, or a bare heartbeat as earlier versions wrote), takes the longer way through the
/// shadow key.
///
/// Every shadow value ends in the deadline the ping gave the presence key (the clock plus
/// the online TTL), or in `0` for an offline call, so a status read can tell "online" from
/// the shadow key alone.
///
/// Times stay decimal strings and are converted to numbers only to compare: formatting
/// numbers into text for every user was a measurable share of the script's time.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock_text = string.format('%d', clock)
local online_ttl, shadow_ttl = ARGV[1], ARGV[2]
-- Each shadow value ends in the presence key's deadline, so that status reads need not
-- read the presence key too; an offline call ends it in 0.
local ping_tail = ':' .. string.format('%d', clock + tonumber(online_ttl))
local offline_tail = ':0'

-- A shadow value's `last`, `start` and `previous_end`, in this version's format or the one
-- before; nothing for a value this service did not write.
local function parse_shadow(value)
  local last, start, prev = string.match(value, '^(%d+):(%d+):(%d*):%d+$')
  if not last then last, start, prev = string.match(value, '^(%d+):(%d+):(%d*)$') end
  return last, start, prev
end

-- A running session, `session` being its `start:previous_end`: writes the shadow key and
-- returns the stamp, which is the clock unless the stored heartbeat is later.
local function keep_session(seen, session, tail)
  local now = clock_text
  local old = redis.pcall('SET', seen, now .. ':' .. session .. tail, 'PX', shadow_ttl, 'GET')
  local later, rewrite = nil, false
  if type(old) == 'string' then
    later = parse_shadow(old)
  else
    -- No shadow key, or one of another type, which SET … GET refuses to replace: the
    -- session's start is then the only earlier time there is to respect.
    later = string.match(session, '^%d+')
    rewrite = type(old) == 'table'
  end
  if later and tonumber(later) > clock then
    now = later
    rewrite = true
  end
  if rewrite then
    redis.call('SET', seen, now .. ':' .. session .. tail, 'PX', shadow_ttl)
  end
  return now
end

-- No session the presence key can describe: the shadow key says where the user stands.
-- `fresh` starts a new session; otherwise the shadow key's session goes on, if it has one.
local function resume_or_start(on, seen, fresh, ping, tail)
  local now, start, prev, last = clock_text, nil, '', nil
  -- pcall: a shadow key of another type (not written by this service) is overwritten
  -- below rather than failing every heartbeat of its user.
  local old = redis.pcall('GET', seen)
  if type(old) == 'string' then
    local a, b, c = parse_shadow(old)
    if a then
      last = a; start = b; prev = c
      if tonumber(a) > clock then now = a end
    end
  end
  if fresh or start == nil then
    prev = ''
    if last and tonumber(last) > 0 then prev = last end
    start = now
  end
  local session = start .. ':' .. prev
  if ping then
    redis.call('SET', on, session, 'PX', online_ttl)
  end
  redis.call('SET', seen, now .. ':' .. session .. tail, 'PX', shadow_ttl)
  return now
end

local stamps = {}
for i = 1, #ARGV - 2 do
  local on, seen = KEYS[2 * i - 1], KEYS[2 * i]
  local ping = ARGV[i + 2] ~= 'o'
  local session
  local tail = ping and ping_tail or offline_tail
  if ping then
    session = redis.pcall('GETEX', on, 'PX', online_ttl)
  else
    session = redis.pcall('GETDEL', on)
  end
  local now
  if type(session) == 'string' and string.find(session, '^%d+:%d*$') then
    now = keep_session(seen, session, tail)
  else
    -- false: not online. A table: a key of another type, which a ping replaces with a
    -- new session and an offline call deletes. Any other text: the user is online but
    -- the session is read from the shadow key.
    local fresh = session == false
    if type(session) == 'table' then
      fresh = ping
      if not ping then redis.call('DEL', on) end
    end
    now = resume_or_start(on, seen, fresh, ping, tail)
  end
  if now == clock_text then stamps[i] = clock else stamps[i] = tonumber(now) end
end
return stamps
"#;

/// What a client said: it is here, or it is leaving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// A ping: online for the online TTL from now.
    Ping,
    /// An explicit offline call: offline now, last seen now.
    Offline,
}

impl Beat {
    fn code(self) -> &'static str {
        match self {
            Beat::Ping => "p",
            Beat::Offline => "o",
        }
    }
}

/// Writes heartbeats with fixed TTLs.
#[derive(Clone, Debug)]
pub struct HeartbeatWriter {
    keys: KeyLayout,
    online_ttl: Duration,
    shadow_ttl: Duration,
    script: Script,
}

impl HeartbeatWriter {
    /// A writer for keys under `keys`, with the presence key living `online_ttl` after a
    /// heartbeat and the shadow key `shadow_ttl`.
    pub fn new(keys: KeyLayout, online_ttl: Duration, shadow_ttl: Duration) -> HeartbeatWriter {
        HeartbeatWriter {
            keys,
            online_ttl,
            shadow_ttl,
            script: Script::new(SCRIPT),
        }
    }

    /// The key layout written to.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// Records a heartbeat of `user` and returns its time on Redis's clock.
    pub async fn record_ping<C>(&self, con: &mut C, user: &UserId) -> redis::RedisResult<Millis>
    where
        C: ConnectionLike + Send,
    {
        self.record_one(con, user, Beat::Ping).await
    }

    /// Takes `user` offline now and returns that time on Redis's clock.
    pub async fn record_offline<C>(&self, con: &mut C, user: &UserId) -> redis::RedisResult<Millis>
    where
        C: ConnectionLike + Send,
    {
        self.record_one(con, user, Beat::Offline).await
    }

    async fn record_one<C>(
        &self,
        con: &mut C,
        user: &UserId,
        beat: Beat,
    ) -> redis::RedisResult<Millis>
    where
        C: ConnectionLike + Send,
    {
        let stamps = self.record(con, [(user, beat)]).await?;
        Ok(stamps[0])
    }

    /// Records every beat in one script run, in order, and returns each one's time on
    /// Redis's clock. On a cluster every user must hash to one slot, as a script's keys
    /// must; [`crate::heartbeat_queue`] groups them so.
    pub async fn record<'u, C>(
        &self,
        con: &mut C,
        beats: impl IntoIterator<Item = (&'u UserId, Beat)>,
    ) -> redis::RedisResult<Vec<Millis>>
    where
        C: ConnectionLike + Send,
    {
        let mut call = self.script.prepare_invoke();
        call.arg(self.online_ttl.as_millis() as u64)
            .arg(self.shadow_ttl.as_millis() as u64);
        let (mut count, mut key) = (0, String::new());
        for (user, beat) in beats {
            call.key(self.keys.presence_in(user.as_str(), &mut key));
            call.key(self.keys.shadow_in(user.as_str(), &mut key));
            call.arg(beat.code());
            count += 1;
        }
        let stamps: Vec<Millis> = call.invoke_async(con).await?;
        if stamps.len() != count {
            let detail = format!("{count} heartbeats, {} stamps", stamps.len());
            return Err((
                redis::ErrorKind::UnexpectedReturnType,
                "short reply",
                detail,
            )
                .into());
        }
        Ok(stamps)
    }
}
