//! `redis_pool` against a real Redis Cluster named by `KEYMETER_TEST_REDIS_CLUSTER` (comma-separated
//! seed nodes; `make test` starts one). Without it the tests fail: a skipped check would look green.

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
    redis_pool::ping(&pool).await.expect("every primary answers PING");
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
