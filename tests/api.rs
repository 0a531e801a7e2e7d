//! The HTTP API against a real Redis and a real SQLite file.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{RedisServer, TestApi, TestDb, eventually, ms, redis_now_ms, short_ttls};

/// A ping makes the user online, stamps last-seen, and says when to ping next.
#[tokio::test]
async fn ping_makes_a_user_online() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;

    let (status, pinged) = api.ping("ann").await;
    let (_, read) = api.presence("ann").await;

    assert_eq!(status, 200);
    assert_eq!(pinged["online"], true);
    assert_eq!(pinged["next_ping_in_seconds"], 30);
    assert_eq!(
        read,
        json!({"user_id": "ann", "online": true, "last_seen": pinged["last_seen"]})
    );
}

/// A user never seen is offline with no last-seen.
#[tokio::test]
async fn a_stranger_is_offline_and_never_seen() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;

    let (status, body) = api.presence("nobody").await;

    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"user_id": "nobody", "online": false, "last_seen": null})
    );
}

/// When pings stop, the user goes offline by themselves once the online TTL passes, and
/// last-seen is the exact last heartbeat before any snapshot has run. (A one-second TTL:
/// a real Redis expiry has to pass.)
#[tokio::test]
async fn silence_goes_offline_with_exact_last_seen() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(1, 30)).await;
    api.ping("ann").await;
    let (_, last) = api.ping("ann").await;

    let offline = eventually(Duration::from_secs(5), || async {
        api.presence("ann").await.1["online"] == false
    })
    .await;
    let (_, read) = api.presence("ann").await;

    assert!(offline, "the user never went offline");
    assert_eq!(read["last_seen"], last["last_seen"]);
}

/// An explicit offline call takes the user offline at once, with last-seen now.
#[tokio::test]
async fn offline_call_ends_presence_at_once() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let (_, pinged) = api.ping("ann").await;

    let (status, offline) = api.offline("ann").await;
    let (_, read) = api.presence("ann").await;

    assert_eq!(status, 200);
    assert_eq!(read["online"], false);
    assert_eq!(read["last_seen"], offline["last_seen"]);
    assert!(ms(&offline["last_seen"]) >= ms(&pinged["last_seen"]));
}

/// The batch query answers in request order, strangers included, repeats allowed.
#[tokio::test]
async fn batch_query_answers_in_request_order() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let (_, ann) = api.ping("ann").await;
    api.ping("bob").await;
    let (_, bob_off) = api.offline("bob").await;

    let (status, body) = api
        .query(json!({"user_ids": ["bob", "zed", "ann", "bob"]}))
        .await;

    assert_eq!(status, 200);
    let users = body["users"].as_array().unwrap();
    let online: Vec<_> = users
        .iter()
        .map(|u| (u["user_id"].clone(), u["online"].clone()))
        .collect();
    assert_eq!(
        online,
        vec![
            (json!("bob"), json!(false)),
            (json!("zed"), json!(false)),
            (json!("ann"), json!(true)),
            (json!("bob"), json!(false))
        ]
    );
    assert_eq!(users[0]["last_seen"], bob_off["last_seen"]);
    assert_eq!(users[1]["last_seen"], json!(null));
    assert_eq!(users[2]["last_seen"], ann["last_seen"]);
}

/// A batch of exactly the maximum is served; an empty batch is an empty answer.
#[tokio::test]
async fn batch_query_takes_up_to_the_maximum() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let ids: Vec<String> = (0..1000).map(|i| format!("user{i}")).collect();

    let (full, body) = api.query(json!({ "user_ids": ids })).await;
    let (empty, none) = api.query(json!({ "user_ids": [] })).await;

    assert_eq!(full, 200);
    assert_eq!(body["users"].as_array().unwrap().len(), 1000);
    assert_eq!((empty, none), (200, json!({"users": []})));
}

/// Once the shadow key is gone, last-seen comes from the durable row the job wrote.
#[tokio::test]
async fn last_seen_falls_back_to_the_database() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(1, 2)).await;
    let opts = support::snapshot_options(&db);
    let (_, pinged) = api.ping("ann").await;
    support::snapshot(&redis, &opts).await.unwrap();
    let (_, off) = api.offline("ann").await;
    support::snapshot(&redis, &opts).await.unwrap();

    let gone = eventually(Duration::from_secs(6), || async {
        let mut con = redis.con();
        !redis::cmd("EXISTS")
            .arg("presence:seen:{ann}")
            .query::<bool>(&mut con)
            .unwrap()
    })
    .await;
    let (_, read) = api.presence("ann").await;

    assert!(gone, "the shadow key never expired");
    assert!(ms(&off["last_seen"]) >= ms(&pinged["last_seen"]));
    assert_eq!(
        read,
        json!({"user_id": "ann", "online": false, "last_seen": off["last_seen"]})
    );
}

/// Every kind of bad input gets a 4xx with a stable code and a message, never a 5xx.
#[tokio::test]
async fn bad_input_gets_a_json_error() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let base = api.base.clone();
    let long_id = "a".repeat(129);
    let too_many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let huge = format!("{{\"user_ids\": [\"{}\"]}}", "a".repeat(70 * 1024));
    let cases = vec![
        (
            api.http.post(format!("{base}/v1/users/a%20b/ping")),
            400,
            "invalid_user_id",
        ),
        (
            api.http.post(format!("{base}/v1/users/%7Bx%7D/ping")),
            400,
            "invalid_user_id",
        ),
        (
            api.http.post(format!("{base}/v1/users/{long_id}/ping")),
            400,
            "invalid_user_id",
        ),
        (
            api.http.post(format!("{base}/v1/users/%FF/ping")),
            400,
            "invalid_path",
        ),
        (
            api.http.get(format!("{base}/v1/users/a:b/presence")),
            400,
            "invalid_user_id",
        ),
        (
            api.http.post(format!("{base}/v1/users/ann/offline/x")),
            404,
            "not_found",
        ),
        (
            api.http.get(format!("{base}/v1/users/ann/ping")),
            405,
            "method_not_allowed",
        ),
        (json_post(&api, "{not json"), 400, "invalid_json"),
        (
            json_post(&api, "{\"user_ids\": \"ann\"}"),
            422,
            "invalid_json",
        ),
        (json_post(&api, "{\"users\": []}"), 422, "invalid_json"),
        (
            json_post(&api, "{\"user_ids\": [\"ok\", \"not ok\"]}"),
            400,
            "invalid_user_id",
        ),
        (json_post(&api, &huge), 413, "body_too_large"),
        (
            api.http
                .post(format!("{base}/v1/presence/query"))
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            api.http
                .post(format!("{base}/v1/presence/query"))
                .json(&json!({"user_ids": too_many})),
            400,
            "batch_too_large",
        ),
    ];

    for (request, want_status, want_code) in cases {
        let (status, body) = api.send(request).await;

        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_code)),
            "{body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

fn json_post(api: &TestApi, body: &str) -> reqwest::RequestBuilder {
    api.http
        .post(format!("{}/v1/presence/query", api.base))
        .header("content-type", "application/json")
        .body(body.to_owned())
}

/// With Redis gone the API answers 503 with the JSON error, keeps running, and serves
/// again by itself once Redis is back, with no restart.
#[tokio::test]
async fn survives_redis_stopping_and_coming_back() {
    let (mut redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    assert_eq!(api.ping("ann").await.0, 200);

    redis.stop();
    let (down_status, down_body) = api.ping("ann").await;
    let (ready_status, _) = api.send(api.http.get(format!("{}/readyz", api.base))).await;
    let (health_status, _) = api
        .send(api.http.get(format!("{}/healthz", api.base)))
        .await;
    redis.restart();
    let recovered = eventually(Duration::from_secs(10), || async {
        api.ping("ann").await.0 == 200
    })
    .await;
    let (ready_again, _) = api.send(api.http.get(format!("{}/readyz", api.base))).await;

    assert_eq!(down_status, 503);
    assert_eq!(down_body["error"], "redis_unavailable");
    assert_eq!((ready_status, health_status), (503, 200));
    assert!(
        recovered,
        "the API never served again after Redis came back"
    );
    assert_eq!(ready_again, 200);
}

/// A ping is stamped by Redis's clock and never moves last-seen backwards, even when the
/// stored heartbeat is ahead of that clock.
#[tokio::test]
async fn last_seen_never_moves_backwards() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let ahead = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let mut con = redis.con();
    let value = format!("{ahead}:{ahead}:");
    let _: () = redis::cmd("SET")
        .arg("presence:seen:{ann}")
        .arg(value)
        .query(&mut con)
        .unwrap();

    let (_, pinged) = api.ping("ann").await;

    assert_eq!(ms(&pinged["last_seen"]), ahead);
}

/// A shadow key holding something else is overwritten by the next ping, not a crash.
#[tokio::test]
async fn garbage_in_a_shadow_key_is_replaced() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let mut con = redis.con();
    let _: () = redis::cmd("SET")
        .arg("presence:seen:{ann}")
        .arg("garbage")
        .query(&mut con)
        .unwrap();

    let (before_status, before) = api.presence("ann").await;
    let (status, pinged) = api.ping("ann").await;

    assert_eq!(
        (before_status, before["last_seen"].clone()),
        (200, json!(null))
    );
    assert_eq!(status, 200);
    assert_eq!(
        api.presence("ann").await.1["last_seen"],
        pinged["last_seen"]
    );
}

/// A status read judges "online" by the presence key's deadline in the shadow key and by
/// Redis's clock, read in the same round trip, without reading the presence key: a
/// deadline still ahead reads online, and one just passed reads offline even beside a
/// presence key that says otherwise.
#[tokio::test]
async fn the_deadline_in_the_shadow_key_decides_online() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let now = redis_now_ms(&redis);
    let _: () = redis::pipe()
        .set(
            "presence:seen:{ann}",
            format!("{now}:{now}::{}", now + 60_000),
        )
        .set("presence:seen:{bob}", format!("{now}:{now}::{}", now - 1))
        .set("presence:on:{bob}", format!("{now}:"))
        .query(&mut redis.con())
        .unwrap();

    let (status, body) = api.query(json!({"user_ids": ["ann", "bob"]})).await;

    assert_eq!(status, 200);
    let answers: Vec<(bool, i64)> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["online"] == true, ms(&u["last_seen"])))
        .collect();
    assert_eq!(answers, [(true, now), (false, now)]);
}

/// Shadow values written by earlier versions carry no deadline, and a presence key can
/// outlive a shadow key someone deleted: those users are settled by their presence keys,
/// each in its place among users whose shadow key answers alone.
#[tokio::test]
async fn users_the_shadow_key_cannot_settle_are_read_from_their_presence_keys() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let _: () = redis::pipe()
        .set("presence:seen:{old-on}", "5000:1000:")
        .set("presence:on:{old-on}", "1000:")
        .set("presence:seen:{old-off}", "6000:1000:")
        .set("presence:on:{lone}", "2000:")
        .query(&mut redis.con())
        .unwrap();
    let (_, fresh) = api.ping("fresh").await;

    let ids = ["old-on", "fresh", "old-off", "zed", "lone", "old-on"];
    let (status, body) = api.query(json!({ "user_ids": ids })).await;

    assert_eq!(status, 200);
    let answers: Vec<(bool, Option<i64>)> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["online"] == true,
                u["last_seen"].as_str().map(|_| ms(&u["last_seen"])),
            )
        })
        .collect();
    let fresh = ms(&fresh["last_seen"]);
    assert_eq!(
        answers,
        [
            (true, Some(5000)),
            (true, Some(fresh)),
            (false, Some(6000)),
            (false, None),
            (true, Some(2000)),
            (true, Some(5000)),
        ]
    );
}
