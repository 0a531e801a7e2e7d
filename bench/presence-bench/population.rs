//! A simulated population of users: the truth the benchmark writes into Redis and later
//! expects to find in SQLite.
//!
//! Users are numbered; user `i` has the id `format!("{i:012}")`, twelve digits, the same
//! shape `redis-benchmark` gives its `__rand_int__` keys, so the baselines of the read
//! benchmarks can address the very keys the API reads. Zero padding also makes the ids
//! sort numerically, which keeps the comparison with SQLite a plain merge.

use presence::keys::KeyLayout;
use presence::shadow::Shadow;
use presence::time::Millis;
use redis::Connection;

/// Commands sent in one pipeline while seeding.
const PIPELINE: usize = 4000;

/// Every tenth user carries the end of an earlier session in its shadow key.
const PREVIOUS_END_EVERY: u64 = 10;

/// One simulated user.
#[derive(Clone, Copy, Debug)]
pub struct SimUser {
    /// The shadow value as the ping script last wrote it.
    pub shadow: Shadow,
    /// Whether the presence key exists.
    pub online: bool,
}

/// The users, their key layout and TTLs.
pub struct Population {
    /// User `i` is `users[i]`.
    pub users: Vec<SimUser>,
    keys: KeyLayout,
    online_ttl_ms: u64,
    shadow_ttl_ms: u64,
}

/// The id of user `i`.
pub fn user_id(i: usize) -> String {
    format!("{i:012}")
}

impl Population {
    /// An empty population writing keys under `keys` with the given TTLs.
    pub fn new(keys: KeyLayout, online_ttl_ms: u64, shadow_ttl_ms: u64) -> Population {
        Population {
            users: Vec::new(),
            keys,
            online_ttl_ms,
            shadow_ttl_ms,
        }
    }

    /// Adds `count` online users whose last heartbeat lies within four minutes before
    /// `now`, and writes them to Redis.
    pub fn come_online(&mut self, con: &mut Connection, count: usize, now: Millis) -> Fallible {
        let first = self.users.len();
        self.users
            .extend((first..first + count).map(|i| fresh_user(i as u64, now)));
        self.write(con, first..first + count)
    }

    /// Takes about `share` of the online users offline: their last heartbeat moves to
    /// about `now` and their presence key goes, as an offline call would have it.
    pub fn go_offline(&mut self, con: &mut Connection, share: f64, now: Millis) -> Fallible {
        let mut chosen = Vec::new();
        for (i, user) in self.users.iter_mut().enumerate() {
            if user.online && picked(i as u64, now, share) {
                user.online = false;
                user.shadow.last = now - (i as Millis % 1000);
                chosen.push(i);
            }
        }
        self.write_offline(con, &chosen)
    }

    /// Users online now.
    pub fn online_count(&self) -> usize {
        self.users.iter().filter(|u| u.online).count()
    }

    fn write(&self, con: &mut Connection, range: std::ops::Range<usize>) -> Fallible {
        for chunk in range.collect::<Vec<_>>().chunks(PIPELINE / 2) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let (id, user) = (user_id(i), &self.users[i]);
                // The presence key expires one online TTL after the last heartbeat, as
                // the ping script would have set it, and the shadow value says so.
                let until = user.shadow.last + self.online_ttl_ms as Millis;
                if user.online {
                    pipe.cmd("SET")
                        .arg(self.keys.presence(&id))
                        .arg(user.shadow.encode_session());
                    pipe.arg("PXAT").arg(until).ignore();
                }
                pipe.cmd("SET")
                    .arg(self.keys.shadow(&id))
                    .arg(user.shadow.encode(if user.online { until } else { 0 }));
                pipe.arg("PX").arg(self.shadow_ttl_ms).ignore();
            }
            pipe.exec(con)?;
        }
        Ok(())
    }

    fn write_offline(&self, con: &mut Connection, chosen: &[usize]) -> Fallible {
        for chunk in chosen.chunks(PIPELINE / 2) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let id = user_id(i);
                pipe.cmd("DEL").arg(self.keys.presence(&id)).ignore();
                pipe.cmd("SET")
                    .arg(self.keys.shadow(&id))
                    .arg(self.users[i].shadow.encode(0));
                pipe.arg("PX").arg(self.shadow_ttl_ms).ignore();
            }
            pipe.exec(con)?;
        }
        Ok(())
    }
}

/// What the benchmark's steps return.
pub type Fallible = anyhow::Result<()>;

/// A user who just came online: a session of up to an hour, a heartbeat within the last
/// four minutes, and for some an earlier session's end.
fn fresh_user(i: u64, now: Millis) -> SimUser {
    let last = now - (mix(i) % 240_000) as Millis;
    let start = last - (mix(i ^ 0x5eed) % 3_600_000) as Millis;
    let previous_end = i
        .is_multiple_of(PREVIOUS_END_EVERY)
        .then(|| start - 1000 - (mix(i ^ 0xe17d) % 86_400_000) as Millis);
    SimUser {
        shadow: Shadow {
            last,
            start,
            previous_end,
        },
        online: true,
    }
}

/// Whether user `i` is among the `share` picked in the round stamped `round`.
fn picked(i: u64, round: Millis, share: f64) -> bool {
    let roll = mix(i ^ (round as u64).rotate_left(17)) % 1_000_000;
    (roll as f64) < share * 1_000_000.0
}

/// A well-mixed hash of `x` (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
