//! Heartbeats of concurrent requests coalesced into shared script calls, against a real
//! Redis.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use presence::heartbeat::{Beat, HeartbeatWriter};
use presence::heartbeat_queue::{HeartbeatQueue, QueueLimits};
use presence::keys::KeyLayout;
use presence::redis_conn::open_lazy;
use presence::user::UserId;
use redis::Commands;
use support::{PREFIX, RedisServer, eventually, redis_now_ms, script_calls};

/// The online TTL the writer gives, in milliseconds: a ping at `t` writes the presence
/// key's deadline `t + ONLINE_MS` at the end of the shadow value.
const ONLINE_MS: i64 = 300_000;

fn writer() -> HeartbeatWriter {
    HeartbeatWriter::new(
        KeyLayout::new(PREFIX),
        Duration::from_millis(ONLINE_MS as u64),
        Duration::from_secs(1200),
    )
}

fn queue(redis: &RedisServer) -> HeartbeatQueue {
    HeartbeatQueue::start(
        writer(),
        open_lazy(&redis.url()).unwrap(),
        QueueLimits::default(),
    )
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn shadow(redis: &RedisServer, name: &str) -> Option<String> {
    redis.con().get(format!("{PREFIX}seen:{{{name}}}")).unwrap()
}

fn presence_value(redis: &RedisServer, name: &str) -> Option<String> {
    redis.con().get(format!("{PREFIX}on:{{{name}}}")).unwrap()
}

/// Pings sent together share script calls, and each user still gets their own exact
/// stamp: the one their shadow key holds, on Redis's clock.
#[tokio::test]
async fn concurrent_pings_share_script_calls() {
    let redis = RedisServer::start();
    let queue = queue(&redis);
    queue.record(user("warm-up"), Beat::Ping).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis.con())
        .unwrap();
    let names: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();

    let before = redis_now_ms(&redis);
    let pings = names.iter().map(|n| queue.record(user(n), Beat::Ping));
    let stamps = join_all(pings).await;
    let after = redis_now_ms(&redis);

    // The pings reach the queue in bursts, not all at once (the futures are polled a few
    // dozen at a time between yields), so a burst may leave in a call of its own; what
    // must hold is that calls carry many pings each, not one.
    let calls = script_calls(&redis);
    assert!(
        calls <= (names.len() / 16) as u64,
        "{calls} script calls for {} pings sent together",
        names.len()
    );
    for (name, stamp) in names.iter().zip(stamps) {
        let stamp = stamp.unwrap();
        assert!(
            before <= stamp && stamp <= after,
            "{name}: {before} {stamp} {after}"
        );
        let until = stamp + ONLINE_MS;
        assert_eq!(
            shadow(&redis, name),
            Some(format!("{stamp}:{stamp}::{until}"))
        );
    }
}

/// One user twice or more in a call is handled in order: the second ping sees the session
/// the first opened, and the offline call after them closes it, keeping the end of the
/// session before.
#[tokio::test]
async fn one_user_repeated_in_a_call_sees_its_own_writes() {
    let redis = RedisServer::start();
    let mut con = open_lazy(&redis.url()).unwrap();
    let _: () = redis
        .con()
        .set(format!("{PREFIX}seen:{{ann}}"), "1000:900:")
        .unwrap();
    let ann = user("ann");

    let beats = [
        (&ann, Beat::Ping),
        (&ann, Beat::Ping),
        (&ann, Beat::Offline),
    ];
    let stamps = writer().record(&mut con, beats).await.unwrap();

    let t = stamps[0];
    assert_eq!(stamps, [t, t, t]);
    let online: bool = redis.con().exists(format!("{PREFIX}on:{{ann}}")).unwrap();
    assert!(!online, "the offline call at the end left the user online");
    assert_eq!(shadow(&redis, "ann"), Some(format!("{t}:{t}:1000:0")));
}

/// The presence key carries the running session, so later pings and the offline call
/// keep the session's start and the previous session's end without reading the shadow
/// key first.
#[tokio::test]
async fn a_session_keeps_its_start_and_previous_end_across_pings() {
    let redis = RedisServer::start();
    let mut con = open_lazy(&redis.url()).unwrap();
    let _: () = redis
        .con()
        .set(format!("{PREFIX}seen:{{ann}}"), "1000:900:")
        .unwrap();
    let ann = user("ann");

    let first = writer().record_ping(&mut con, &ann).await.unwrap();
    let session = presence_value(&redis, "ann");
    let second = writer().record_ping(&mut con, &ann).await.unwrap();
    let shadow_while_online = shadow(&redis, "ann");
    let gone = writer().record_offline(&mut con, &ann).await.unwrap();

    assert_eq!(session, Some(format!("{first}:1000")));
    let until = second + ONLINE_MS;
    assert_eq!(
        shadow_while_online,
        Some(format!("{second}:{first}:1000:{until}"))
    );
    assert_eq!(presence_value(&redis, "ann"), None);
    assert_eq!(
        shadow(&redis, "ann"),
        Some(format!("{gone}:{first}:1000:0"))
    );
}

/// In a running session the shadow key is written before its old heartbeat is seen; a
/// heartbeat stored ahead of Redis's clock must still win, or last-seen would move back.
#[tokio::test]
async fn a_running_session_never_moves_last_seen_backwards() {
    let redis = RedisServer::start();
    let mut con = open_lazy(&redis.url()).unwrap();
    let ann = user("ann");
    let start = writer().record_ping(&mut con, &ann).await.unwrap();
    let ahead = start + 3_600_000;
    let _: () = redis
        .con()
        .set(format!("{PREFIX}seen:{{ann}}"), format!("{ahead}:{start}:"))
        .unwrap();

    let pinged = writer().record_ping(&mut con, &ann).await.unwrap();
    let gone = writer().record_offline(&mut con, &ann).await.unwrap();

    assert_eq!((pinged, gone), (ahead, ahead));
    assert_eq!(shadow(&redis, "ann"), Some(format!("{ahead}:{start}::0")));
}

/// A presence key holding a bare heartbeat, as earlier versions wrote it, and a presence
/// key whose shadow key is gone or of another type all keep the user's session rather
/// than failing or starting a new one.
#[tokio::test]
async fn older_or_lonely_presence_keys_keep_their_session() {
    let redis = RedisServer::start();
    let mut con = open_lazy(&redis.url()).unwrap();
    let _: () = redis::pipe()
        .set(format!("{PREFIX}on:{{ann}}"), "1500")
        .set(format!("{PREFIX}seen:{{ann}}"), "1500:1000:400")
        .set(format!("{PREFIX}on:{{bob}}"), "1000:")
        .set(format!("{PREFIX}on:{{cat}}"), "1000:")
        .rpush(format!("{PREFIX}seen:{{cat}}"), "x")
        .query(&mut redis.con())
        .unwrap();
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));

    let beats = [(&ann, Beat::Ping), (&bob, Beat::Ping), (&cat, Beat::Ping)];
    let stamps = writer().record(&mut con, beats).await.unwrap();

    let t = stamps[0];
    assert_eq!(stamps, [t, t, t]);
    let until = t + ONLINE_MS;
    assert_eq!(shadow(&redis, "cat"), Some(format!("{t}:1000::{until}")));
    assert_eq!(presence_value(&redis, "ann"), Some("1000:400".to_owned()));
    assert_eq!(shadow(&redis, "ann"), Some(format!("{t}:1000:400:{until}")));
    assert_eq!(presence_value(&redis, "bob"), Some("1000:".to_owned()));
    assert_eq!(shadow(&redis, "bob"), Some(format!("{t}:1000::{until}")));
}

/// A key of the wrong type under one user does not fail the others in the same call.
#[tokio::test]
async fn a_foreign_key_spoils_nobody_elses_heartbeat() {
    let redis = RedisServer::start();
    let mut con = open_lazy(&redis.url()).unwrap();
    let _: () = redis
        .con()
        .rpush(format!("{PREFIX}seen:{{bob}}"), "x")
        .unwrap();
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));

    let beats = [
        (&ann, Beat::Ping),
        (&bob, Beat::Ping),
        (&cat, Beat::Offline),
    ];
    let stamps = writer().record(&mut con, beats).await.unwrap();

    let (t, until) = (stamps[0], stamps[0] + ONLINE_MS);
    assert_eq!(shadow(&redis, "ann"), Some(format!("{t}:{t}::{until}")));
    assert_eq!(shadow(&redis, "bob"), Some(format!("{t}:{t}::{until}")));
    assert_eq!(shadow(&redis, "cat"), Some(format!("{t}:{t}::0")));
}

/// A presence key of another type under one user is replaced by a new session rather than
/// failing the call, and the others in the call are written as usual.
#[tokio::test]
async fn a_foreign_presence_key_becomes_a_new_session() {
    let redis = RedisServer::start();
    let mut con = open_lazy(&redis.url()).unwrap();
    let _: () = redis
        .con()
        .sadd(format!("{PREFIX}on:{{bob}}"), "x")
        .unwrap();
    let (ann, bob) = (user("ann"), user("bob"));

    let stamps = writer()
        .record(&mut con, [(&ann, Beat::Ping), (&bob, Beat::Ping)])
        .await
        .unwrap();

    let t = stamps[0];
    assert_eq!(stamps, [t, t]);
    let kind: String = redis::cmd("TYPE")
        .arg(format!("{PREFIX}on:{{bob}}"))
        .query(&mut redis.con())
        .unwrap();
    assert_eq!(kind, "string", "the foreign presence key was left in place");
    let until = t + ONLINE_MS;
    assert_eq!(shadow(&redis, "bob"), Some(format!("{t}:{t}::{until}")));
    assert_eq!(shadow(&redis, "ann"), Some(format!("{t}:{t}::{until}")));
}

/// With Redis gone, every waiting heartbeat fails rather than hanging, and the queue
/// serves again by itself once Redis is back.
#[tokio::test]
async fn heartbeats_fail_while_redis_is_down_and_flow_again_after() {
    let mut redis = RedisServer::start();
    let queue = queue(&redis);
    queue.record(user("ann"), Beat::Ping).await.unwrap();

    redis.stop();
    let pings = (0..50).map(|i| queue.record(user(&format!("u{i}")), Beat::Ping));
    let while_down = join_all(pings).await;
    redis.restart();
    let back = eventually(Duration::from_secs(10), || async {
        queue.record(user("ann"), Beat::Ping).await.is_ok()
    })
    .await;

    assert!(
        while_down.iter().all(Result::is_err),
        "a ping succeeded with Redis down"
    );
    assert!(back, "the queue never wrote again after Redis came back");
}
