//! The service on a Redis Cluster: the API, the batch query and the snapshot against three
//! real primaries, and the snapshot through a failover.

mod support;

use std::time::Duration;

use presence::heartbeat::HeartbeatWriter;
use presence::keys::KeyLayout;
use presence::redis_conn::ShadowSource;
use presence::scan::redis_time;
use presence::snapshot::{SnapshotError, run_once};
use presence::time::Millis;
use presence::user::UserId;
use serde_json::json;
use support::cluster::RedisCluster;
use support::{
    PREFIX, TestApi, TestDb, eventually, ms, seed_online_states, short_ttls, snapshot_options,
};

/// Users named so that their hash tags spread over every primary.
fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// Records a ping of each user straight through the heartbeat script; returns the times.
async fn ping_all(cluster: &RedisCluster, users: &[String]) -> Vec<Millis> {
    let writer = HeartbeatWriter::new(
        KeyLayout::new(PREFIX),
        Duration::from_secs(300),
        Duration::from_secs(1200),
    );
    let mut con = cluster.connection();
    let mut times = Vec::with_capacity(users.len());
    for user in users {
        let user = UserId::parse(user).unwrap();
        times.push(writer.record_ping(&mut con, &user).await.unwrap());
    }
    times
}

/// Shadow keys held by each primary, to show a test's users reached every node.
fn keys_per_primary(cluster: &RedisCluster) -> Vec<i64> {
    cluster
        .primary_ports()
        .into_iter()
        .map(|port| redis::cmd("DBSIZE").query(&mut cluster.node(port)).unwrap())
        .collect()
}

/// Pings and presence reads work on a cluster, for users whose keys live on every primary.
#[tokio::test]
async fn pings_and_reads_reach_every_primary() {
    let (cluster, db) = (RedisCluster::start(), TestDb::new());
    let api = TestApi::start_at(cluster.url(), &db, short_ttls(300, 1200)).await;

    let mut pinged = Vec::new();
    for user in users(30) {
        let (status, body) = api.ping(&user).await;
        assert_eq!(status, 200);
        pinged.push((user, body["last_seen"].clone()));
    }

    for (user, last_seen) in &pinged {
        let (_, read) = api.presence(user).await;
        assert_eq!(
            read,
            json!({"user_id": user, "online": true, "last_seen": last_seen})
        );
    }
    assert!(keys_per_primary(&cluster).iter().all(|&n| n > 0));
    assert_eq!(ready(&api).await, 200);
}

/// The status of `GET /readyz`.
async fn ready(api: &TestApi) -> u16 {
    api.send(api.http.get(format!("{}/readyz", api.base)))
        .await
        .0
}

/// On a cluster too, a user whose pings stop goes offline by themselves and keeps the
/// exact last heartbeat as last-seen. (A one-second TTL: a real expiry has to pass.)
#[tokio::test]
async fn silence_goes_offline_with_exact_last_seen() {
    let (cluster, db) = (RedisCluster::start(), TestDb::new());
    let api = TestApi::start_at(cluster.url(), &db, short_ttls(1, 60)).await;
    let (_, pinged) = api.ping("ann").await;

    let offline = eventually(Duration::from_secs(5), || async {
        api.presence("ann").await.1["online"] == false
    })
    .await;

    assert!(offline);
    let (_, read) = api.presence("ann").await;
    assert_eq!(ms(&read["last_seen"]), ms(&pinged["last_seen"]));
}

/// When the primary of a user's keys dies, the API answers 503 rather than hanging, and
/// serves that user again by itself once a replica took over, with last-seen intact; the
/// batch query, which remembered the old slot map, answers right too.
#[tokio::test]
async fn api_serves_again_after_a_failover() {
    let (cluster, db) = (RedisCluster::start_with_replicas(), TestDb::new());
    // The retry loop below pings one user every 50 ms: far past the per-user limit.
    let mut args = support::api_args_at(&db, short_ttls(300, 1200));
    args.store.redis_url = cluster.url();
    args.limits.ping_burst = 10_000;
    let api = TestApi::serve(args).await;
    let all = users(30);
    let (_, first) = api.ping("ann").await;
    let pinged = ping_all(&cluster, &all).await;
    api.query(json!({ "user_ids": all })).await;
    cluster.wait_replicated();

    cluster.kill(cluster.primary_of("presence:on:{ann}"));
    let back = eventually(Duration::from_secs(30), || async {
        let (status, _) = api.ping("ann").await;
        assert!(status == 200 || status == 503, "status {status}");
        status == 200
    })
    .await;

    // Other nodes may take a moment more to agree on the new primary; a 503 meanwhile is
    // the API telling the truth, so the answers below wait for readiness first.
    let settled = eventually(Duration::from_secs(15), || async {
        ready(&api).await == 200
    })
    .await;

    assert!(back);
    assert!(settled, "/readyz never answered 200 after the failover");
    let (status, read) = api.presence("ann").await;
    assert_eq!((status, &read["online"]), (200, &json!(true)), "{read}");
    assert!(ms(&read["last_seen"]) >= ms(&first["last_seen"]));
    let (status, session) = api.offline("ann").await;
    assert_eq!(status, 200, "{session}");
    let (status, after) = api.presence("ann").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(ms(&after["last_seen"]), ms(&session["last_seen"]));
    let (status, answer) = api.query(json!({ "user_ids": all })).await;
    assert_eq!(status, 200, "{answer}");
    let read: Vec<Option<Millis>> = answer["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["last_seen"].as_str().map(|_| ms(&u["last_seen"])))
        .collect();
    let pinged: Vec<Option<Millis>> = pinged.into_iter().map(Some).collect();
    assert_eq!(read, pinged, "{answer}");
    let users = answer["users"].as_array().unwrap();
    let offline: Vec<_> = users.iter().filter(|u| u["online"] != true).collect();
    assert!(
        offline.is_empty(),
        "offline after the failover: {offline:?}"
    );
}

/// The batch query answers users on every primary, strangers included, in request order.
#[tokio::test]
async fn batch_query_reads_users_on_every_primary() {
    let (cluster, db) = (RedisCluster::start(), TestDb::new());
    let api = TestApi::start_at(cluster.url(), &db, short_ttls(300, 1200)).await;
    let all = users(300);
    let mut expected = Vec::new();
    for (i, user) in all.iter().enumerate() {
        let last_seen = match i % 3 {
            0 => api.ping(user).await.1["last_seen"].clone(),
            1 => api.offline(user).await.1["last_seen"].clone(),
            _ => serde_json::Value::Null,
        };
        let online = i % 3 == 0;
        expected.push(json!({"user_id": user, "online": online, "last_seen": last_seen}));
    }

    let (status, answer) = api.query(json!({ "user_ids": all })).await;

    assert_eq!(status, 200);
    assert_eq!(answer["users"], serde_json::Value::Array(expected));
}

/// On a cluster too, the batch query judges each deadline in a shadow key by the clock of
/// the primary holding it, read in the same pipeline, and reads presence keys only for
/// values without a deadline: a deadline ahead reads online without a presence key, one
/// passed reads offline beside one.
#[tokio::test]
async fn batch_query_judges_deadlines_by_each_primarys_clock() {
    let (cluster, db) = (RedisCluster::start(), TestDb::new());
    let api = TestApi::start_at(cluster.url(), &db, short_ttls(300, 1200)).await;
    let (all, expected) = seed_states_on_every_primary(&cluster).await;

    let (status, answer) = api.query(json!({ "user_ids": all })).await;

    assert_eq!(status, 200, "{answer}");
    let online: Vec<bool> = answer["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["online"] == true)
        .collect();
    assert_eq!(online, expected, "{answer}");
}

/// Writes the five states of [`seed_online_states`] for six users each, spread over every
/// primary; returns the users, sorted, and whether each is online.
async fn seed_states_on_every_primary(cluster: &RedisCluster) -> (Vec<String>, Vec<bool>) {
    let mut con = cluster.connection();
    let now = redis_time(&mut con).await.unwrap();
    let mut expected = Vec::new();
    for round in 0..6 {
        let names = ["ahead", "passed", "left", "old-on", "old-off"].map(|n| format!("{n}{round}"));
        let [a, b, c, d, e] = &names;
        seed_online_states(&mut con, now, &[a, b, c, d, e]).await;
        let online = [true, false, false, true, false];
        expected.extend(names.into_iter().zip(online));
    }
    expected.sort();
    assert!(keys_per_primary(cluster).iter().all(|&keys| keys > 0));
    expected.into_iter().unzip()
}

/// A cluster walk judges each deadline by the clock of the node holding it, and settles
/// values without a deadline by their presence keys on that node.
#[tokio::test]
async fn snapshot_walk_takes_online_from_deadlines_on_every_primary() {
    let cluster = RedisCluster::start();
    let (users, online) = seed_states_on_every_primary(&cluster).await;

    let walk = cluster
        .connection()
        .walk_shadows(&KeyLayout::new(PREFIX), 1000, |_| {})
        .await
        .unwrap();

    let walked: Vec<(String, bool)> = walk
        .observations
        .iter()
        .map(|o| (o.user.to_string(), o.online))
        .collect();
    let expected: Vec<(String, bool)> = users.into_iter().zip(online).collect();
    assert_eq!(walked, expected);
}

/// A batch query sends each primary its share as one pipeline: a thousand users cost each
/// primary a few reads of requests, not one per user.
#[tokio::test]
async fn batch_query_sends_each_primary_one_pipeline() {
    let (cluster, db) = (RedisCluster::start(), TestDb::new());
    let api = TestApi::start_at(cluster.url(), &db, short_ttls(300, 1200)).await;
    let all = users(1000);
    api.query(json!({ "user_ids": all[..2] })).await;
    let mut nodes: Vec<redis::Connection> = cluster
        .primary_ports()
        .into_iter()
        .map(|p| cluster.node(p))
        .collect();
    let before = reads_processed(&mut nodes);

    let (status, _) = api.query(json!({ "user_ids": all })).await;

    let after = reads_processed(&mut nodes);
    assert_eq!(status, 200);
    for (b, a) in before.iter().zip(&after) {
        // One read is the INFO that measures it, and a pipeline of 20 KB may take a few
        // more; 333 MGETs sent one by one take dozens to hundreds.
        assert!(a - b <= 6, "a primary read {} times", a - b);
    }
}

/// Each node's count of reads from its clients (`total_reads_processed`).
fn reads_processed(nodes: &mut [redis::Connection]) -> Vec<i64> {
    nodes
        .iter_mut()
        .map(|con| {
            let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
            let line = info
                .lines()
                .find_map(|l| l.strip_prefix("total_reads_processed:"));
            line.unwrap().trim().parse().unwrap()
        })
        .collect()
}

/// The snapshot walks every primary: it finds each user wherever their keys live, and
/// records exact last-seen times and sessions when they go offline.
#[tokio::test]
async fn snapshot_reads_every_primary() {
    let (cluster, db) = (RedisCluster::start(), TestDb::new());
    let api = TestApi::start_at(cluster.url(), &db, short_ttls(300, 1200)).await;
    let all = users(300);
    ping_all(&cluster, &all).await;
    let opts = snapshot_options(&db);
    let first = run_once(&mut cluster.connection(), &opts).await.unwrap();
    let mut offline_at = Vec::new();
    for user in &all[..100] {
        offline_at.push(ms(&api.offline(user).await.1["last_seen"]));
    }

    let second = run_once(&mut cluster.connection(), &opts).await.unwrap();

    assert_eq!(
        (first.online, first.came_online, first.keys_scanned),
        (300, 300, 300)
    );
    assert_eq!((second.online, second.went_offline), (200, 100));
    for (user, at) in all.iter().zip(&offline_at) {
        assert_eq!(db.last_seen(user), Some(*at), "last-seen of {user}");
    }
    assert_eq!(db.sessions().len(), 100);
}

/// A primary that dies in the middle of the walk is not taken as "everyone on it went
/// offline": the walk waits for the failover and reads its slots from the promoted
/// replica, and finds every user with their exact last heartbeat.
#[tokio::test]
async fn a_primary_killed_mid_walk_is_read_again_after_failover() {
    let cluster = RedisCluster::start_with_replicas();
    let all = users(600);
    let times = ping_all(&cluster, &all).await;
    cluster.wait_replicated();
    let victim = cluster.primary_ports()[0];
    let keys = KeyLayout::new(PREFIX);
    let mut killed = false;

    let walk = presence::cluster::walk_cluster(&mut cluster.connection(), &keys, 20, |_| {
        if !killed {
            cluster.kill(victim);
            killed = true;
        }
    })
    .await
    .unwrap();

    assert!(killed);
    let found: Vec<(String, Millis, bool)> = walk
        .observations
        .iter()
        .map(|o| (o.user.to_string(), o.shadow.last, o.online))
        .collect();
    let mut expected: Vec<(String, Millis, bool)> = all
        .into_iter()
        .zip(times)
        .map(|(u, t)| (u, t, true))
        .collect();
    expected.sort();
    assert_eq!(found, expected);
}

/// A primary's walk is trusted only while the primary itself says it serves the slots it
/// was walked for, with none migrating: a key in transit could be missed by both nodes'
/// SCANs, and a slot the node no longer serves was not read there.
#[tokio::test]
async fn a_primary_is_trusted_only_for_its_own_stable_slots() {
    let cluster = RedisCluster::start();
    let mut con = cluster.connection();
    let primaries = presence::cluster::primaries(&mut con).await.unwrap();
    let (from, to) = (&primaries[0], &primaries[1]);
    let slot = from.slots[0].0;
    let to_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut cluster.node(to.port))
        .unwrap();

    redis::cmd("CLUSTER")
        .arg(&["SETSLOT", &slot.to_string(), "MIGRATING", &to_id])
        .exec(&mut cluster.node(from.port))
        .unwrap();
    let migrating = presence::cluster::check_node_serves(&mut con, from).await;
    redis::cmd("CLUSTER")
        .arg(&["SETSLOT", &slot.to_string(), "STABLE"])
        .exec(&mut cluster.node(from.port))
        .unwrap();
    let stable = presence::cluster::check_node_serves(&mut con, from).await;
    let mut other_slots = from.clone();
    other_slots.slots = vec![(slot, slot)];
    let elsewhere = presence::cluster::check_node_serves(&mut con, &other_slots).await;
    let untouched = presence::cluster::check_node_serves(&mut con, to).await;

    assert!(migrating.is_err());
    assert!(stable.is_ok());
    assert!(elsewhere.is_err());
    assert!(untouched.is_ok());
}

/// A snapshot run while a primary is down either completes exactly once the replica took
/// over, or fails as a Redis error with nothing written; either way the next run is exact.
#[tokio::test]
async fn a_run_during_failover_is_exact_or_writes_nothing() {
    let (cluster, db) = (RedisCluster::start_with_replicas(), TestDb::new());
    let api = TestApi::start_at(cluster.url(), &db, short_ttls(300, 1200)).await;
    let all = users(300);
    ping_all(&cluster, &all).await;
    let opts = snapshot_options(&db);
    run_once(&mut cluster.connection(), &opts).await.unwrap();
    let mut offline_at = Vec::new();
    for user in &all[..50] {
        offline_at.push(ms(&api.offline(user).await.1["last_seen"]));
    }
    cluster.wait_replicated();
    let before = db.dump();

    cluster.kill(cluster.primary_ports()[0]);
    let during = run_once(&mut cluster.connection(), &opts).await;
    let after_during = db.dump();
    let later = run_once(&mut cluster.connection(), &opts).await.unwrap();

    match during {
        Ok(summary) => assert_eq!((summary.online, summary.went_offline), (250, 50)),
        Err(SnapshotError::Redis(_)) => {
            assert_eq!(after_during, before);
            assert_eq!((later.online, later.went_offline), (250, 50));
        }
        Err(e) => panic!("expected success or a Redis error, got {e:#}"),
    }
    for (user, at) in all.iter().zip(&offline_at) {
        assert_eq!(db.last_seen(user), Some(*at), "last-seen of {user}");
    }
    assert_eq!(db.sessions().len(), 50);
}
