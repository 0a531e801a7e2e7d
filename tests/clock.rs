//! The estimate of Redis's clock that stamps heartbeats without a `TIME` call per ping.

mod support;

use std::sync::Arc;
use std::time::Duration;

use presence::clock::{ReadOutcome, RedisClock};
use presence::heartbeat::HeartbeatWriter;
use presence::keys::KeyLayout;
use presence::user::UserId;
use support::{PREFIX, RedisServer, command_calls, redis_now_ms};

fn writer() -> HeartbeatWriter {
    HeartbeatWriter::new(
        KeyLayout::new(PREFIX),
        Duration::from_secs(300),
        Duration::from_secs(1200),
    )
}

/// The error bound of a reading, in whole milliseconds, plus one for rounding.
fn slack_ms(outcome: ReadOutcome) -> i64 {
    match outcome {
        ReadOutcome::Kept { round_trip } => round_trip.as_micros().div_ceil(2000) as i64 + 1,
        ReadOutcome::TooSlow { round_trip } => panic!("a loopback read took {round_trip:?}"),
    }
}

/// Before its first reading the clock claims nothing; after it, the estimate falls between
/// Redis's own clock read just before and just after, within half the round trip.
#[tokio::test]
async fn estimates_redis_time_within_half_a_round_trip() {
    let redis = RedisServer::start();
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let clock = RedisClock::new();

    let unread = clock.now();
    let slack = slack_ms(clock.read(&mut con).await.unwrap());
    let mut brackets = Vec::new();
    for _ in 0..20 {
        let before = redis_now_ms(&redis);
        let estimate = clock.now().unwrap();
        brackets.push((before, estimate, redis_now_ms(&redis)));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    assert_eq!(unread, None);
    for (before, estimate, after) in brackets {
        assert!(
            before - slack <= estimate && estimate <= after + slack,
            "{before} {estimate} {after} (slack {slack} ms)"
        );
    }
}

/// With a fresh reading the ping script takes its time from the caller and never calls
/// `TIME`; without one (no clock, or a clock never read) it asks Redis on every ping.
/// Either way the stamp is Redis's time.
#[tokio::test]
async fn pings_ask_redis_for_the_time_only_without_a_reading() {
    let redis = RedisServer::start();
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let user = UserId::parse("ann").unwrap();
    let read_clock = Arc::new(RedisClock::new());
    let slack = slack_ms(read_clock.read(&mut con).await.unwrap());
    let writers = [
        ("no clock", writer()),
        (
            "unread clock",
            writer().with_clock(Arc::new(RedisClock::new())),
        ),
        ("read clock", writer().with_clock(read_clock)),
    ];

    let mut asked = Vec::new();
    for (name, writer) in &writers {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut redis.con())
            .unwrap();
        for _ in 0..10 {
            let before = redis_now_ms(&redis);
            let at = writer.record_ping(&mut con, &user).await.unwrap();
            let after = redis_now_ms(&redis);
            assert!(
                before - slack <= at && at <= after + slack,
                "{name}: {before} {at} {after}"
            );
        }
        // The stamps above read TIME from outside the scripts: 20 calls of our own.
        asked.push((*name, command_calls(&redis, "time") - 20));
    }

    assert_eq!(
        asked,
        [("no clock", 10), ("unread clock", 10), ("read clock", 0)]
    );
}
