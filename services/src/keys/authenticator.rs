//! Resolves presented API key secrets to keys and their quotas, with a short per-instance cache
//! so the metered path rarely touches PostgreSQL. Entries live a few seconds: a revoked key
//! stops working on every instance within [`KeyAuthenticator::TTL`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::api_keys::ApiKeyId;
use super::quota::{Quota, QuotaLimit};
use super::secret::ApiKeySecret;
use crate::db::{self, DbPool};
use crate::schema::{api_key_quotas, api_keys};
use crate::{ServiceError, ServiceResult};

/// An active key, as the metered path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedKey {
    pub id: ApiKeyId,
    pub owner_id: i64,
    pub quota: Quota,
    /// When the quota last changed (ms since the epoch, `updated_at` as stamped by PostgreSQL,
    /// so it is comparable across instances); newer limits win in Redis.
    pub quota_version_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Active(AuthenticatedKey),
    Revoked,
    Unknown,
}

/// Secret hash → (when it was looked up, what it resolved to).
type Cache = HashMap<[u8; 32], (Instant, KeyCheck)>;

#[derive(Clone)]
pub struct KeyAuthenticator {
    db: DbPool,
    cache: Arc<RwLock<Cache>>,
}

impl KeyAuthenticator {
    pub const TTL: Duration = Duration::from_secs(2);
    /// How long a cached answer may stand in while PostgreSQL cannot be asked.
    pub const STALE_IF_ERROR: Duration = Duration::from_secs(15 * 60);
    /// Longest wait for PostgreSQL (pool checkout and query) on the metered path. The pool's own
    /// timeouts cover only checkout; a database that accepts the query and never answers
    /// (partition, lock wait) would otherwise hold every request whose entry is past its TTL.
    /// Past it the lookup counts as a failure: the last known state stands in, or a 503.
    pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
    /// Bounds memory under a flood of random keys; the cache is simply emptied when full.
    const MAX_ENTRIES: usize = 100_000;

    pub fn new(db: DbPool) -> Self {
        Self { db, cache: Arc::new(RwLock::new(HashMap::new())) }
    }

    pub async fn check(&self, secret: &ApiKeySecret) -> ServiceResult<KeyCheck> {
        let hash = secret.hash();
        let cached = self.cache.read().ok().and_then(|cache| cache.get(&hash).copied());
        if let Some((at, check)) = cached {
            if at.elapsed() < Self::TTL {
                return Ok(check);
            }
        }
        let loaded = tokio::time::timeout(Self::LOOKUP_TIMEOUT, self.load(&hash))
            .await
            .unwrap_or_else(|_| Err(ServiceError::DatabaseUnavailable("the API key lookup timed out".into())));
        let check = match loaded {
            Ok(check) => check,
            // PostgreSQL unreachable or not answering: a key seen recently keeps its last known
            // state, so metered traffic goes on through a database outage (tried again after
            // another TTL: a hung database costs a key's requests the timeout once per TTL).
            Err(e) if e.is_server_error() => match cached {
                Some((at, check)) if at.elapsed() < Self::STALE_IF_ERROR => {
                    if let Ok(mut cache) = self.cache.write() {
                        cache.insert(hash, (Instant::now(), check));
                    }
                    return Ok(check);
                }
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= Self::MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(hash, (Instant::now(), check));
        }
        Ok(check)
    }

    /// Forgets everything cached (after a change made on this instance).
    pub fn invalidate_all(&self) {
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    async fn load(&self, hash: &[u8; 32]) -> ServiceResult<KeyCheck> {
        type Row = (Uuid, i64, Option<DateTime<Utc>>, i64, i64, Option<i32>, DateTime<Utc>);
        let mut conn = db::conn(&self.db).await?;
        let row: Option<Row> = api_keys::table
            .inner_join(api_key_quotas::table)
            .filter(api_keys::secret_hash.eq(hash.to_vec()))
            .select((
                api_keys::id,
                api_keys::owner_id,
                api_keys::revoked_at,
                api_key_quotas::requests_per_hour,
                api_key_quotas::requests_per_day,
                api_key_quotas::burst_per_second,
                api_key_quotas::updated_at,
            ))
            .first(&mut conn)
            .await
            .optional()?;
        Ok(match row {
            None => KeyCheck::Unknown,
            Some((_, _, Some(_), ..)) => KeyCheck::Revoked,
            Some((id, owner_id, None, hour, day, burst, updated_at)) => KeyCheck::Active(AuthenticatedKey {
                id: ApiKeyId(id),
                owner_id,
                quota: Quota {
                    per_hour: QuotaLimit::new(hour)?,
                    per_day: QuotaLimit::new(day)?,
                    burst_per_second: burst.map(i64::from).map(QuotaLimit::new).transpose()?,
                },
                quota_version_ms: updated_at.timestamp_millis(),
            }),
        })
    }
}
