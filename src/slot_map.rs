//! Reading many users' keys from a Redis Cluster in one round trip per primary.
//!
//! A cluster refuses an MGET whose keys span slots. redis-rs splits such an MGET into one
//! command per slot and sends each on its own, which for a batch of a thousand users means
//! about a thousand small commands reaching each primary in dribs and drabs. Instead
//! [`ClusterConn`] keeps the slot map it read with `CLUSTER SLOTS`, groups the keys into
//! one MGET per slot, and sends each primary all of its MGETs as one pipeline, the
//! primaries in parallel. When the map is stale (a MOVED reply after a failover or a slot
//! move, a node gone) the read falls back to redis-rs's own routing, which follows
//! redirects, and the map is read again on the next call.
//!
//! A read may also ask for each primary's clock: `TIME` then rides at the head of the
//! primary's pipeline, so each value comes with the clock of the server that holds it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisResult, Value};

use crate::cluster::{Primary, primaries};
use crate::time::{Millis, from_time_reply};

/// A cluster connection with the slot map it last read. Clones share both.
#[derive(Clone)]
pub struct ClusterConn {
    /// The redis-rs cluster connection, which routes single commands by itself.
    pub con: ClusterConnection,
    map: Arc<RwLock<Option<Arc<SlotMap>>>>,
}

/// Which primary serves which slot: ranges sorted by first slot.
#[derive(Debug)]
struct SlotMap {
    primaries: Vec<Primary>,
    ranges: Vec<(u16, u16, usize)>,
}

/// One primary's share of a read: one MGET per slot, and where each key's value goes.
struct NodeRead<'p> {
    primary: &'p Primary,
    per_slot: BTreeMap<u16, Vec<usize>>,
}

impl ClusterConn {
    /// Wraps `con`; the slot map is read on first use.
    pub fn new(con: ClusterConnection) -> ClusterConn {
        ClusterConn {
            con,
            map: Arc::new(RwLock::new(None)),
        }
    }

    /// The values of `keys`, in order, as MGET answers them, in one pipeline per primary.
    pub async fn mget(&mut self, cmd: &Cmd, keys: Vec<Vec<u8>>) -> RedisResult<Value> {
        let values = self.read(cmd, keys, false).await?;
        Ok(Value::Array(
            values.into_iter().map(|(value, _)| value).collect(),
        ))
    }

    /// The values of `keys`, in order, each with the clock of the primary that holds it;
    /// `None` for every clock when a stale slot map sent the read through redirects.
    pub async fn mget_with_clock(
        &mut self,
        cmd: &Cmd,
        keys: Vec<Vec<u8>>,
    ) -> RedisResult<Vec<(Value, Option<Millis>)>> {
        self.read(cmd, keys, true).await
    }

    async fn read(
        &mut self,
        cmd: &Cmd,
        keys: Vec<Vec<u8>>,
        clock: bool,
    ) -> RedisResult<Vec<(Value, Option<Millis>)>> {
        let map = self.slot_map().await?;
        match self.mget_per_primary(&map, &keys, clock).await {
            Ok(values) => Ok(values),
            Err(e) => {
                tracing::debug!(error = %e, "slot map stale; reading through redirects");
                self.forget_map();
                let values: Vec<Value> =
                    redis::from_redis_value(self.con.req_packed_command(cmd).await?)?;
                Ok(values.into_iter().map(|value| (value, None)).collect())
            }
        }
    }

    async fn slot_map(&mut self) -> RedisResult<Arc<SlotMap>> {
        if let Some(map) = self.map.read().ok().and_then(|m| m.clone()) {
            return Ok(map);
        }
        let map = Arc::new(SlotMap::new(primaries(&mut self.con).await?));
        if let Ok(mut slot) = self.map.write() {
            *slot = Some(Arc::clone(&map));
        }
        Ok(map)
    }

    fn forget_map(&self) {
        if let Ok(mut slot) = self.map.write() {
            *slot = None;
        }
    }

    async fn mget_per_primary(
        &self,
        map: &SlotMap,
        keys: &[Vec<u8>],
        clock: bool,
    ) -> RedisResult<Vec<(Value, Option<Millis>)>> {
        let reads = map.group(keys)?;
        let replies = join_all(reads.iter().map(|read| {
            let mut con = self.con.clone();
            async move { read.send(&mut con, keys, clock).await }
        }))
        .await;
        let mut values = vec![(Value::Nil, None); keys.len()];
        for (read, reply) in reads.iter().zip(replies) {
            let mut replies = reply?.into_iter();
            let time = if clock {
                Some(from_time_reply(replies.next().unwrap_or(Value::Nil))?)
            } else {
                None
            };
            for (indexes, reply) in read.per_slot.values().zip(replies) {
                let reply: Vec<Value> = redis::from_redis_value(reply)?;
                for (&i, value) in indexes.iter().zip(reply) {
                    values[i] = (value, time);
                }
            }
        }
        Ok(values)
    }
}

impl NodeRead<'_> {
    /// Sends the primary its MGETs as one pipeline, after a `TIME` when `clock` is set.
    async fn send(
        &self,
        con: &mut ClusterConnection,
        keys: &[Vec<u8>],
        clock: bool,
    ) -> RedisResult<Vec<Value>> {
        let mut pipe = redis::pipe();
        if clock {
            pipe.cmd("TIME");
        }
        for indexes in self.per_slot.values() {
            let mget = pipe.cmd("MGET");
            for &i in indexes {
                mget.arg(&keys[i]);
            }
        }
        let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
            host: self.primary.host.clone(),
            port: self.primary.port,
        };
        let count = pipe.len();
        con.route_pipeline(pipe, 0, count, route).await
    }
}

impl SlotMap {
    fn new(primaries: Vec<Primary>) -> SlotMap {
        let mut ranges: Vec<(u16, u16, usize)> = primaries
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.slots.iter().map(move |&(a, b)| (a, b, i)))
            .collect();
        ranges.sort_unstable();
        SlotMap { primaries, ranges }
    }

    fn owner(&self, slot: u16) -> Option<usize> {
        let at = self.ranges.partition_point(|&(start, _, _)| start <= slot);
        let &(_, end, owner) = self.ranges.get(at.checked_sub(1)?)?;
        (slot <= end).then_some(owner)
    }

    /// Groups `keys` by primary, then by slot; fails when a slot has no primary.
    fn group(&self, keys: &[Vec<u8>]) -> RedisResult<Vec<NodeRead<'_>>> {
        let mut by_owner: BTreeMap<usize, BTreeMap<u16, Vec<usize>>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = key_slot(key);
            let owner = self.owner(slot).ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Client, "a slot has no primary"))
            })?;
            by_owner
                .entry(owner)
                .or_default()
                .entry(slot)
                .or_default()
                .push(i);
        }
        Ok(by_owner
            .into_iter()
            .map(|(owner, per_slot)| NodeRead {
                primary: &self.primaries[owner],
                per_slot,
            })
            .collect())
    }
}

/// The keys of an MGET, when `cmd` is one.
pub fn mget_keys(cmd: &Cmd) -> Option<Vec<Vec<u8>>> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    if !args.next()??.eq_ignore_ascii_case(b"MGET") {
        return None;
    }
    args.map(|arg| arg.map(<[u8]>::to_vec)).collect()
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key when it has
/// no non-empty tag, modulo 16384, as Redis Cluster computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_slots_as_redis_does() {
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"presence:on:{ann}"), key_slot(b"ann"));
        assert_eq!(key_slot(b"presence:seen:{ann}"), key_slot(b"ann"));
        assert_eq!(key_slot(b"a{}b"), key_slot(b"a{}b"));
        assert_ne!(key_slot(b"a{}b"), key_slot(b""));
    }

    #[test]
    fn finds_the_owner_of_each_slot() {
        let node = |port, slots| Primary {
            host: "h".into(),
            port,
            slots,
        };
        let map = SlotMap::new(vec![
            node(1, vec![(0, 99), (200, 16383)]),
            node(2, vec![(100, 199)]),
        ]);

        let owners: Vec<_> = [0, 99, 100, 199, 200, 16383].map(|s| map.owner(s)).into();

        assert_eq!(
            owners,
            [Some(0), Some(0), Some(1), Some(1), Some(0), Some(0)]
        );
    }
}
