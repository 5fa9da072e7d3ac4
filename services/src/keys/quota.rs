//! Quota values: per-key request limits per calendar hour and UTC day, and an optional burst rate.

use crate::{ServiceError, ServiceResult};

/// A positive request limit, at most [`QuotaLimit::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaLimit(i64);

impl QuotaLimit {
    /// Far above any sane plan; keeps arithmetic on counters clear of overflow.
    pub const MAX: i64 = 1_000_000_000_000;

    pub fn new(value: i64) -> ServiceResult<Self> {
        Self::bounded(value, Self::MAX)
    }

    /// Burst rates are stored as 32-bit integers.
    pub fn burst(value: i64) -> ServiceResult<Self> {
        Self::bounded(value, i32::MAX as i64)
    }

    fn bounded(value: i64, max: i64) -> ServiceResult<Self> {
        if value <= 0 {
            return Err(ServiceError::invalid("a limit must be a positive whole number"));
        }
        if value > max {
            return Err(ServiceError::invalid(format!("a limit can be at most {max}")));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The limits of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_hour: QuotaLimit,
    pub per_day: QuotaLimit,
    /// Requests per second allowed in a burst (GCRA), or none.
    pub burst_per_second: Option<QuotaLimit>,
}

impl Quota {
    pub const DEFAULT_PER_HOUR: i64 = 1_000;
    pub const DEFAULT_PER_DAY: i64 = 10_000;

    pub fn default_for_new_key() -> Self {
        Self {
            per_hour: QuotaLimit(Self::DEFAULT_PER_HOUR),
            per_day: QuotaLimit(Self::DEFAULT_PER_DAY),
            burst_per_second: None,
        }
    }
}

/// Sets a key's limits: written to PostgreSQL, then published to Redis so that the very next
/// request on any instance is checked against them.
pub async fn set_quota(services: &crate::Services, id: super::ApiKeyId, quota: &Quota) -> ServiceResult<()> {
    use crate::schema::api_key_quotas;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;

    let now = chrono::Utc::now();
    let mut conn = crate::db::conn(&services.db).await?;
    let updated = diesel::update(api_key_quotas::table.filter(api_key_quotas::api_key_id.eq(id.0)))
        .set((
            api_key_quotas::requests_per_hour.eq(quota.per_hour.get()),
            api_key_quotas::requests_per_day.eq(quota.per_day.get()),
            api_key_quotas::burst_per_second.eq(quota.burst_per_second.map(|b| b.get() as i32)),
            api_key_quotas::updated_at.eq(now),
        ))
        .execute(&mut conn)
        .await?;
    if updated == 0 {
        return Err(ServiceError::NotFound);
    }
    services.quota.publish_limits(id, quota, now.timestamp_millis()).await?;
    services.keys.invalidate_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_must_be_positive_and_bounded() {
        assert!(QuotaLimit::new(0).is_err());
        assert!(QuotaLimit::new(-5).is_err());
        assert!(QuotaLimit::new(QuotaLimit::MAX + 1).is_err());
        assert_eq!(QuotaLimit::new(1000).unwrap().get(), 1000);
    }
}
