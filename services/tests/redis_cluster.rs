//! `redis_pool` against a real Redis Cluster named by `KEYMETER_TEST_REDIS_CLUSTER` (comma-separated
//! seed nodes; `make test` starts one). Without it the tests fail: a skipped check would look green.

#[path = "support/own_cluster.rs"]
mod own_cluster;

use std::time::Duration;

use own_cluster::OwnCluster;
use redis::{ErrorKind, RedisResult};
use services::redis_pool::{self, Conn, RedisPool, SharedConnection};
use uuid::Uuid;

fn cluster_pool() -> RedisPool {
    let nodes = std::env::var("KEYMETER_TEST_REDIS_CLUSTER").expect(
        "KEYMETER_TEST_REDIS_CLUSTER is not set: these tests need a Redis Cluster (scripts/services.sh cluster-start)",
    );
    let pool = redis_pool::pool(&nodes, 4).expect("cluster pool");
    assert!(matches!(pool, RedisPool::Cluster(_)), "several seed nodes make a cluster pool");
    pool
}

/// Keys in different hash slots (distinct hash tags).
fn keys() -> (String, String) {
    let run = Uuid::new_v4().simple();
    (format!("km:{{a-{run}}}:test"), format!("km:{{b-{run}}}:test"))
}

#[tokio::test]
async fn a_pipeline_across_slots_answers_in_order_and_keeps_each_keys_order() {
    let pool = cluster_pool();
    redis_pool::ping(&SharedConnection::new(pool.clone())).await.expect("every primary answers");
    let mut conn = redis_pool::conn(&pool).await.unwrap();
    assert!(matches!(conn, Conn::Cluster(_)));
    let (a, b) = keys();

    // As the login throttle does: a counter and its expiry per key, two keys.
    let (a1, b1, a2, b2): (i64, i64, i64, i64) = redis::pipe()
        .incr(&a, 1)
        .incr(&b, 10)
        .expire(&a, 60)
        .ignore()
        .incr(&a, 1)
        .incr(&b, 10)
        .expire(&b, 60)
        .ignore()
        .cmd("TIME")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("cross-slot pipeline");
    assert_eq!((a1, b1, a2, b2), (1, 10, 2, 20));
    let (ttl_a, ttl_b): (i64, i64) = redis::pipe().ttl(&a).ttl(&b).query_async(&mut conn).await.unwrap();
    assert!(ttl_a > 0 && ttl_b > 0, "each EXPIRE ran after its key existed: {ttl_a} {ttl_b}");

    // A MULTI/EXEC pipeline is never split: atomicity across slots cannot be had.
    let atomic: RedisResult<(i64, i64)> = redis::pipe().atomic().incr(&a, 1).incr(&b, 1).query_async(&mut conn).await;
    assert_eq!(atomic.unwrap_err().kind(), ErrorKind::CrossSlot);

    let _: i64 = redis::cmd("DEL").arg(&a).query_async(&mut conn).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&b).query_async(&mut conn).await.unwrap();
}

/// As the login throttle and the quota manager do: a script per key, keys in different slots.
/// A script's key follows its key count, not its first argument (the script itself).
#[tokio::test]
async fn a_pipeline_of_scripts_across_slots_goes_to_each_keys_node() {
    let pool = cluster_pool();
    let mut conn = redis_pool::conn(&pool).await.unwrap();
    let (a, b) = keys();
    const INCR: &str = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(INCR).query_async(&mut conn).await.unwrap();
    let counts: (i64, i64, i64, i64) = redis::pipe()
        .cmd("EVAL")
        .arg(INCR)
        .arg(1)
        .arg(&a)
        .arg(1)
        .cmd("EVAL")
        .arg(INCR)
        .arg(1)
        .arg(&b)
        .arg(10)
        .cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg(&b)
        .arg(10)
        .cmd("EVAL")
        .arg(INCR)
        .arg(1)
        .arg(&a)
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("cross-slot pipeline of scripts");
    assert_eq!(counts, (1, 10, 20, 2));
    let _: () = redis::pipe().del(&a).ignore().del(&b).ignore().query_async(&mut conn).await.unwrap();
}

#[tokio::test]
async fn the_shared_connection_is_a_cluster_connection_too() {
    let shared = SharedConnection::new(cluster_pool());
    let mut conn = shared.get().await.unwrap();
    let (a, b) = keys();
    let values: Vec<Option<i64>> =
        redis::pipe().set(&a, 7).ignore().set(&b, 8).ignore().get(&a).get(&b).query_async(&mut conn).await.unwrap();
    assert_eq!(values, [Some(7), Some(8)]);
    // Clones share the connection, as the quota manager's concurrent requests do.
    let mut other = shared.get().await.unwrap();
    let _: () = redis::pipe().del(&a).ignore().del(&b).ignore().query_async(&mut other).await.unwrap();
}

/// redis-rs' cluster client retried a command for a dead primary's slots for minutes (811 s
/// measured): callers without a timeout of their own, such as the usage writer, hung that long
/// instead of logging and retrying. Now it fails at once, other slots keep working, and the
/// same connection serves the slots again once their primary is back.
#[tokio::test]
async fn a_dead_primary_fails_its_slots_at_once_and_serves_them_again_when_back() {
    let cluster = OwnCluster::start();
    let pool = redis_pool::pool_with(&cluster.url(), 2, true).expect("cluster pool");
    let mut conn = redis_pool::conn(&pool).await.unwrap();
    let run = Uuid::new_v4().simple();
    let key = format!("km:{{a-{run}}}:test");
    let _: () = redis::cmd("SET").arg(&key).arg(1).query_async(&mut conn).await.unwrap();
    let victim = cluster.primary_of(&key);
    let mut elsewhere = None;
    for i in 0..64 {
        let other = format!("km:{{b-{run}-{i}}}:test");
        let _: () = redis::cmd("SET").arg(&other).arg(2).query_async(&mut conn).await.unwrap();
        if cluster.primary_of(&other) != victim {
            elsewhere = Some(other);
            break;
        }
    }
    let elsewhere = elsewhere.expect("a key on another primary");

    cluster.kill(victim);
    for _ in 0..3 {
        let failed = get(&mut conn, &key).await.expect("an answer within 10 s, not retries for minutes");
        assert!(failed.is_err(), "its primary is dead: {failed:?}");
        let other = get(&mut conn, &elsewhere).await.expect("an answer within 10 s");
        assert_eq!(other.expect("another primary's key"), Some(2));
    }

    cluster.restart(victim);
    let mut back = None;
    for _ in 0..100 {
        back = get(&mut conn, &key).await.ok().and_then(Result::ok);
        if back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node kept no data (no persistence), but it answers for its slots again.
    assert_eq!(back, Some(None), "the restarted primary serves its slots on the same connection");
}

/// A `GET`, given 10 s to answer (an answer of any kind, not a hang, is what the tests expect).
async fn get(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
) -> Result<RedisResult<Option<i64>>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(10), redis::cmd("GET").arg(key).query_async(conn)).await
}

/// What keeping the hot path's shared connection through errors on a cluster relies on (a new
/// one costs a connection to every node, and would be made for every key on a dead node): the
/// cluster client mends it, even after every node went down and came back.
#[tokio::test]
async fn the_shared_connection_mends_itself_after_the_whole_cluster_restarts() {
    let cluster = OwnCluster::start();
    let shared = SharedConnection::new(redis_pool::pool_with(&cluster.url(), 2, true).expect("cluster pool"));
    let key = format!("km:{{{}}}:test", Uuid::new_v4().simple());
    let mut conn = shared.get().await.unwrap();
    let _: () = redis::cmd("SET").arg(&key).arg(1).query_async(&mut conn).await.unwrap();
    for &port in &cluster.ports {
        cluster.kill(port);
    }
    let e = get(&mut conn, &key).await.expect("an answer within 10 s").expect_err("every node is down");
    shared.reset_after(&e);
    for &port in &cluster.ports {
        cluster.restart(port);
    }
    let mut back = None;
    for _ in 0..100 {
        let mut conn = shared.get().await.expect("the shared connection");
        match get(&mut conn, &key).await.expect("an answer within 10 s") {
            Ok(value) => {
                back = Some(value);
                break;
            }
            Err(e) => shared.reset_after(&e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The nodes kept no data (no persistence), but they answer again.
    assert_eq!(back, Some(None), "the cluster answers on the shared connection again");
}
