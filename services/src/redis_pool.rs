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

/// One multiplexed connection shared by every request on the hot path. Taking a connection
/// from the pool costs a round trip (deadpool-redis pings on recycle); a multiplexed connection
/// carries concurrent commands without that. Replaced after an I/O error.
#[derive(Clone)]
pub struct SharedConnection {
    pool: RedisPool,
    conn: std::sync::Arc<std::sync::RwLock<Option<deadpool_redis::redis::aio::MultiplexedConnection>>>,
}

impl SharedConnection {
    pub fn new(pool: RedisPool) -> Self {
        Self { pool, conn: Default::default() }
    }

    pub async fn get(&self) -> ServiceResult<deadpool_redis::redis::aio::MultiplexedConnection> {
        if let Some(conn) = self.conn.read().ok().and_then(|c| c.clone()) {
            return Ok(conn);
        }
        let conn = Connection::take(conn(&self.pool).await?);
        if let Ok(mut slot) = self.conn.write() {
            *slot = Some(conn.clone());
        }
        Ok(conn)
    }

    /// Call after an error that may have broken the connection; the next `get` opens another.
    pub fn reset_after(&self, err: &deadpool_redis::redis::RedisError) {
        if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
            if let Ok(mut slot) = self.conn.write() {
                *slot = None;
            }
        }
    }
}
