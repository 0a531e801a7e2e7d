//! The abuse limits: per-user write rate, request and header timeouts, the in-flight and
//! connection caps.

mod support;

use std::time::Duration;

use support::{
    RedisServer, TestApi, TestDb, api_args, eventually, raw_connection, read_until_closed,
    script_calls, short_ttls,
};

/// A test's guard against a hung server; never a measurement.
const GUARD: Duration = Duration::from_secs(10);

/// A user who writes faster than the limit gets 429 `rate_limited` with `Retry-After`,
/// pings and offline calls alike, and the excess never reaches Redis; other users are not
/// slowed. (A one-minute refill, so the test's own speed cannot matter.)
#[tokio::test]
async fn a_user_pinging_too_often_is_told_to_slow_down() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.limits.ping_burst = 2;
    args.limits.ping_refill_ms = 60_000;
    let api = TestApi::serve(args).await;
    api.ping("loads-the-script").await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis.con())
        .unwrap();

    let allowed = [api.ping("ann").await.0, api.ping("ann").await.0];
    let ping = api
        .http
        .post(format!("{}/v1/users/ann/ping", api.base))
        .send()
        .await
        .unwrap();
    let retry_after = ping.headers().get("retry-after").cloned();
    let (status, body) = (
        ping.status().as_u16(),
        ping.json::<serde_json::Value>().await.unwrap(),
    );
    let (offline_status, _) = api.offline("ann").await;
    let calls = script_calls(&redis);
    let (other, _) = api.ping("bob").await;

    assert_eq!(allowed, [200, 200]);
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After: {secs}");
    assert_eq!(offline_status, 429);
    assert_eq!(calls, 2, "Redis ran a script for a refused write");
    assert_eq!(other, 200);
}

/// A request whose body never finishes arriving is cut off at the request timeout with a
/// 503 JSON error.
#[tokio::test]
async fn a_slow_body_times_out() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.limits.request_timeout_ms = 300;
    let api = TestApi::serve(args).await;
    let head = "POST /v1/presence/query HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
                content-length: 100\r\nconnection: close\r\n\r\n{\"user_ids\": [";

    let mut stream = raw_connection(&api.base, head.as_bytes()).await;
    let answer = read_until_closed(&mut stream, GUARD)
        .await
        .expect("no answer");

    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"error\":\"timeout\""), "{answer}");
}

/// A client that sends half a request head, or nothing at all, has its connection closed
/// at the header-read timeout.
#[tokio::test]
async fn slow_headers_lose_the_connection() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.limits.header_read_timeout_ms = 300;
    let api = TestApi::serve(args).await;

    let mut half = raw_connection(&api.base, b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await;
    let mut silent = raw_connection(&api.base, b"").await;
    let half_closed = read_until_closed(&mut half, GUARD).await;
    let silent_closed = read_until_closed(&mut silent, GUARD).await;

    assert!(
        half_closed.is_some(),
        "a half-sent head kept its connection"
    );
    assert!(
        silent_closed.is_some(),
        "a silent client kept its connection"
    );
    assert_eq!(api.ping("ann").await.0, 200);
}

/// Beyond the in-flight cap a request gets 503 `overloaded` at once, not a place in a
/// queue; once the request in flight ends, requests are served again.
#[tokio::test]
async fn too_many_in_flight_are_shed() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.limits.max_in_flight = 1;
    let api = TestApi::serve(args).await;
    let head = "POST /v1/presence/query HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n{";
    let stuck = raw_connection(&api.base, head.as_bytes()).await;

    let shed = eventually(GUARD, || async {
        let (status, body) = api
            .send(api.http.get(format!("{}/healthz", api.base)))
            .await;
        status == 503 && body["error"] == "overloaded"
    })
    .await;
    drop(stuck);
    let served = eventually(GUARD, || async { api.ping("ann").await.0 == 200 }).await;

    assert!(shed, "a request beyond the cap was never shed");
    assert!(
        served,
        "requests were not served again after the one in flight ended"
    );
}

/// Beyond the connection cap a new connection waits, unserved, until an open one closes.
/// (The half-second client timeout only shows the request was not answered meanwhile.)
#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.limits.max_connections = 1;
    let api = TestApi::serve(args).await;
    let holder = raw_connection(&api.base, b"").await;
    let url = format!("{}/healthz", api.base);

    let waiting = api
        .http
        .get(&url)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    drop(holder);
    let served = eventually(GUARD, || async {
        api.http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    assert!(
        waiting.is_err_and(|e| e.is_timeout()),
        "served beyond the connection cap"
    );
    assert!(served, "never served after the slot freed");
}
