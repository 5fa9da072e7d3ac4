//! Slows down password guessing: failures are counted in Redis per address and per client, so
//! every instance sees them; past a threshold, sign-in is refused until the window expires.

use deadpool_redis::redis;

use crate::redis_pool::{self, RedisPool};
use crate::{ServiceError, ServiceResult};

/// Failed attempts allowed per window before sign-in is refused.
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

    /// Counts this attempt against both allowances before the password is checked, and refuses
    /// it (giving it back) if either is used up. Counting first, with atomic increments, means
    /// parallel guesses cannot all pass a check made before any of them failed. A failed
    /// attempt simply stays counted. If Redis is unreachable, sign-in still works (unthrottled)
    /// rather than locking everyone out.
    pub(crate) async fn begin(&self) -> ServiceResult<()> {
        let Ok(mut conn) = redis_pool::conn(self.redis).await else {
            tracing::warn!("login throttle skipped: Redis unavailable");
            return Ok(());
        };
        // Separate keys (separate cluster slots): each increment is atomic on its own.
        let result: redis::RedisResult<(i64, i64, i64, i64)> = redis::pipe()
            .incr(&self.email_key, 1)
            .expire(&self.email_key, WINDOW_SECS)
            .ignore()
            .incr(&self.client_key, 1)
            .expire(&self.client_key, WINDOW_SECS)
            .ignore()
            .ttl(&self.email_key)
            .ttl(&self.client_key)
            .query_async(&mut conn)
            .await;
        let Ok((email_attempts, client_attempts, email_ttl, client_ttl)) = result else {
            tracing::warn!("login throttle skipped: Redis error");
            return Ok(());
        };
        let mut wait = 0;
        if email_attempts > MAX_FAILURES_PER_EMAIL {
            wait = wait.max(email_ttl.max(1));
        }
        if client_attempts > MAX_FAILURES_PER_CLIENT {
            wait = wait.max(client_ttl.max(1));
        }
        if wait > 0 {
            self.give_back(&mut conn, true).await;
            return Err(ServiceError::TooManyAttempts { retry_after_secs: wait as u64 });
        }
        Ok(())
    }

    /// The password was right: the address's failures are forgotten, and the attempt does not
    /// count against the client.
    pub(crate) async fn succeeded(&self) {
        let Ok(mut conn) = redis_pool::conn(self.redis).await else {
            return;
        };
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.email_key).query_async(&mut conn).await;
        self.give_back(&mut conn, false).await;
    }

    async fn give_back(&self, conn: &mut redis_pool::RedisConn, email_too: bool) {
        let mut pipe = redis::pipe();
        if email_too {
            pipe.decr(&self.email_key, 1).ignore();
        }
        pipe.decr(&self.client_key, 1).ignore();
        if let Err(e) = pipe.query_async::<()>(conn).await {
            tracing::warn!(error = %e, "could not give a sign-in attempt back");
        }
    }
}
