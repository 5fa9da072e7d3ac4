//! Slows down password guessing: failures are counted in Redis per address and per client, so
//! every instance sees them; past a threshold, sign-in is refused until the window expires.

use deadpool_redis::redis;

use crate::redis_pool::{self, RedisPool};
use crate::{ServiceError, ServiceResult};

/// Failures allowed per window before sign-in is refused.
const MAX_FAILURES_PER_EMAIL: i64 = 5;
const MAX_FAILURES_PER_CLIENT: i64 = 100;
/// How long failures are remembered, in seconds.
const WINDOW_SECS: i64 = 15 * 60;

pub(crate) struct LoginThrottle<'a> {
    redis: &'a RedisPool,
    email_key: String,
    client_key: String,
}

impl<'a> LoginThrottle<'a> {
    pub(crate) fn new(redis: &'a RedisPool, email: &str, client: &str) -> Self {
        Self { redis, email_key: format!("km:login:email:{email}"), client_key: format!("km:login:client:{client}") }
    }

    /// Refuses when either counter is over its limit. If Redis is unreachable, sign-in still works
    /// (unthrottled) rather than locking everyone out.
    pub(crate) async fn check(&self) -> ServiceResult<()> {
        let Ok(mut conn) = redis_pool::conn(self.redis).await else {
            tracing::warn!("login throttle skipped: Redis unavailable");
            return Ok(());
        };
        let result: redis::RedisResult<(Option<i64>, i64, Option<i64>, i64)> = redis::pipe()
            .get(&self.email_key)
            .ttl(&self.email_key)
            .get(&self.client_key)
            .ttl(&self.client_key)
            .query_async(&mut conn)
            .await;
        let Ok((email_fails, email_ttl, client_fails, client_ttl)) = result else {
            tracing::warn!("login throttle skipped: Redis error");
            return Ok(());
        };
        let mut wait = 0;
        if email_fails.unwrap_or(0) >= MAX_FAILURES_PER_EMAIL {
            wait = wait.max(email_ttl.max(1));
        }
        if client_fails.unwrap_or(0) >= MAX_FAILURES_PER_CLIENT {
            wait = wait.max(client_ttl.max(1));
        }
        if wait > 0 {
            return Err(ServiceError::TooManyAttempts { retry_after_secs: wait as u64 });
        }
        Ok(())
    }

    pub(crate) async fn record_failure(&self) {
        let Ok(mut conn) = redis_pool::conn(self.redis).await else {
            return;
        };
        let result: redis::RedisResult<()> = redis::pipe()
            .incr(&self.email_key, 1)
            .expire(&self.email_key, WINDOW_SECS)
            .incr(&self.client_key, 1)
            .expire(&self.client_key, WINDOW_SECS)
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record a failed sign-in");
        }
    }

    pub(crate) async fn reset(&self) {
        let Ok(mut conn) = redis_pool::conn(self.redis).await else {
            return;
        };
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.email_key).query_async(&mut conn).await;
    }
}
