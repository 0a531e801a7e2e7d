//! The walk over shadow keys against a real Redis.

mod support;

use std::time::Duration;

use presence::keys::KeyLayout;
use presence::scan::walk_shadows;
use support::{PREFIX, RedisServer, redis_now_ms, seed_online_states};

const USERS: u64 = 500;
const FILLER: u64 = 60_000;

/// When Redis shrinks its table in the middle of a walk, SCAN may return a key again; the
/// walk still reports each user once, and counts every repeat it dropped. A shrink repeats
/// keys only by chance, so the walk is tried a few times.
#[tokio::test]
async fn a_table_shrinking_mid_walk_counts_each_user_once() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let mut total_repeats = 0;

    for _ in 0..5 {
        seed(&mut con);

        let walk = walk_with_shrink(&redis, &mut con).await;

        assert_eq!(walk.observations.len() as u64, USERS);
        assert_eq!(walk.keys_scanned - walk.duplicates, USERS);
        total_repeats += walk.duplicates;
    }
    println!("SCAN repeated {total_repeats} keys over five walks");
}

fn seed(con: &mut redis::Connection) {
    let mut pipe = redis::pipe();
    for i in 0..USERS {
        pipe.cmd("SET")
            .arg(format!("{PREFIX}seen:{{user{i}}}"))
            .arg("20:10:")
            .ignore();
    }
    for i in 0..FILLER {
        pipe.cmd("SET").arg(format!("filler:{i}")).arg(1).ignore();
    }
    let _: () = pipe.query(con).unwrap();
}

/// Walks with a small COUNT and, after the third batch, deletes the filler so that Redis
/// shrinks its table under the cursor.
async fn walk_with_shrink(
    redis: &RedisServer,
    con: &mut redis::Connection,
) -> presence::scan::Walk {
    let mut walker = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut batches = 0;
    walk_shadows(&mut walker, &KeyLayout::new(PREFIX), 2000, |_| {
        batches += 1;
        if batches == 3 {
            let mut unlink = redis::pipe();
            for i in 0..FILLER {
                unlink.cmd("UNLINK").arg(format!("filler:{i}")).ignore();
            }
            let _: () = unlink.query(con).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .await
    .unwrap()
}

/// The walk takes "online" from the presence key's deadline in each shadow value, judged by
/// Redis's clock as status reads judge it; only values without a deadline are settled by
/// their presence keys.
#[tokio::test]
async fn online_comes_from_the_deadline_or_else_the_presence_key() {
    let redis = RedisServer::start();
    let mut walker = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let names = ["ahead", "passed", "left", "old-on", "old-off"];
    seed_online_states(&mut walker, redis_now_ms(&redis), &names).await;

    let walk = walk_shadows(&mut walker, &KeyLayout::new(PREFIX), 1000, |_| {})
        .await
        .unwrap();

    let online: Vec<(&str, bool)> = walk
        .observations
        .iter()
        .map(|o| (&*o.user, o.online))
        .collect();
    assert_eq!(
        online,
        [
            ("ahead", true),
            ("left", false),
            ("old-off", false),
            ("old-on", true),
            ("passed", false)
        ]
    );
}
