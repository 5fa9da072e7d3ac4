//! Redis: the connection pool shared by sessions throttling, quotas and live counters.

use std::time::Duration;

use deadpool_redis::{Config, Connection, Pool, Runtime};

use crate::{ServiceError, ServiceResult};

pub type RedisPool = Pool;
pub type RedisConn = Connection;

pub fn pool(redis_url: &str, max_size: usize) -> ServiceResult<RedisPool> {
    Config::from_url(redis_url)
        .builder()
        .map_err(|e| ServiceError::Internal(format!("invalid REDIS_URL: {e}")))?
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| ServiceError::Internal(format!("cannot build the Redis pool: {e}")))
}

pub async fn conn(pool: &RedisPool) -> ServiceResult<RedisConn> {
    Ok(pool.get().await?)
}

/// Round trip to Redis (`PING`).
pub async fn ping(pool: &RedisPool) -> ServiceResult<()> {
    let mut conn = conn(pool).await?;
    let _: String = deadpool_redis::redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}
