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

    /// The highest burst rate per second. The burst limiter steps in 1/rate ms; far above this,
    /// the steps vanish in rounding at today's timestamps and the limit would not hold.
    pub const MAX_BURST: i64 = 100_000;

    pub fn burst(value: i64) -> ServiceResult<Self> {
        Self::bounded(value, Self::MAX_BURST)
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

    /// The limits as stored (`api_key_quotas`), checked as when they were set.
    pub fn from_stored(per_hour: i64, per_day: i64, burst_per_second: Option<i32>) -> ServiceResult<Self> {
        Ok(Self {
            per_hour: QuotaLimit::new(per_hour)?,
            per_day: QuotaLimit::new(per_day)?,
            burst_per_second: burst_per_second.map(|b| QuotaLimit::burst(b.into())).transpose()?,
        })
    }

    pub fn default_for_new_key() -> Self {
        Self {
            per_hour: QuotaLimit(Self::DEFAULT_PER_HOUR),
            per_day: QuotaLimit(Self::DEFAULT_PER_DAY),
            burst_per_second: None,
        }
    }
}

/// Why a quota changed, for the audit trail.
#[derive(Debug, Clone, Copy)]
pub enum ChangeSource {
    /// An approved quota-increase request.
    Request(i64),
    /// An admin, from the admin pages.
    Admin,
    /// An operator, from the CLI.
    Operator,
}

#[derive(Debug, Clone, Copy)]
pub struct QuotaChange<'a> {
    /// Who changed it (none for the operator CLI).
    pub actor: Option<i64>,
    pub source: ChangeSource,
    pub reason: &'a str,
}

/// Sets a key's limits and records the change, in one transaction; then publishes them to
/// Redis so that the very next request on any instance is checked against them.
pub async fn set_quota(
    services: &crate::Services,
    id: super::ApiKeyId,
    quota: &Quota,
    change: &QuotaChange<'_>,
) -> ServiceResult<()> {
    use diesel_async::AsyncConnection;
    let mut conn = crate::db::conn(&services.db).await?;
    let version = conn
        .transaction::<_, ServiceError, _>(|conn| Box::pin(async move { set_quota_in(conn, id, quota, change).await }))
        .await?;
    publish(services, id, quota, version).await;
    Ok(())
}

/// What a change does to a key's burst limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BurstChange {
    /// Keeps the key's burst limit, or its lack of one (as the admin form does).
    Keep,
    Set(QuotaLimit),
    Remove,
}

/// After the commit: Redis and this instance's cache learn the new limits. The change is made
/// whether or not Redis hears of it, so a failure here is logged, not returned: every instance
/// reads the new limits (and their newer version, which the quota script prefers) once its
/// cached key expires, within [`super::KeyAuthenticator::TTL`].
pub(crate) async fn publish(
    services: &crate::Services,
    id: super::ApiKeyId,
    quota: &Quota,
    version: chrono::DateTime<chrono::Utc>,
) {
    services.keys.quota_changed(id);
    if let Err(e) = services.quota.publish_limits(id, quota, version.timestamp_millis()).await {
        tracing::warn!(key_id = %id, error = %e, "new limits saved but not published to Redis; they apply as caches expire");
    }
}

/// The change itself, inside the caller's transaction; returns its time on PostgreSQL's clock
/// (the limits' version, as the authenticator reads it back from `updated_at`). A revoked key's
/// limits no longer change (a [`ServiceError::Conflict`]): nothing could use them.
pub(crate) async fn set_quota_in(
    conn: &mut diesel_async::AsyncPgConnection,
    id: super::ApiKeyId,
    quota: &Quota,
    change: &QuotaChange<'_>,
) -> ServiceResult<chrono::DateTime<chrono::Utc>> {
    use crate::schema::{api_key_quotas, api_keys, quota_changes};
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;

    let reason = change.reason.trim();
    if reason.is_empty() || reason.chars().count() > 2000 {
        return Err(ServiceError::invalid("Give a reason for the change (up to 2000 characters)."));
    }
    crate::text::check_typed("The reason", reason)?;
    let old: (i64, i64, Option<i32>) = api_key_quotas::table
        .filter(api_key_quotas::api_key_id.eq(id.0))
        .select((api_key_quotas::requests_per_hour, api_key_quotas::requests_per_day, api_key_quotas::burst_per_second))
        .for_update()
        .first(conn)
        .await?;
    // Shared lock (after the quota row's, as for approvals): a revocation running now waits for
    // this change to commit instead of crossing it.
    let revoked_at: Option<chrono::DateTime<chrono::Utc>> =
        api_keys::table.filter(api_keys::id.eq(id.0)).select(api_keys::revoked_at).for_share().first(conn).await?;
    if revoked_at.is_some() {
        return Err(ServiceError::Conflict("This key is revoked; its quota can no longer change.".into()));
    }
    let burst = quota.burst_per_second.map(|b| b.get() as i32);
    // The version is stamped by PostgreSQL, never by this node's clock: app nodes' clocks
    // differ, and a change stamped by a node running behind would lose in Redis to the older
    // limits it replaces. Under the row lock taken above it is also strictly later (by at least
    // a millisecond, the unit the version is compared in) than the version it replaces, so
    // versions follow the order of the changes even if the database's clock steps back.
    let version: chrono::DateTime<chrono::Utc> =
        diesel::update(api_key_quotas::table.filter(api_key_quotas::api_key_id.eq(id.0)))
            .set((
                api_key_quotas::requests_per_hour.eq(quota.per_hour.get()),
                api_key_quotas::requests_per_day.eq(quota.per_day.get()),
                api_key_quotas::burst_per_second.eq(burst),
                api_key_quotas::updated_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                    "GREATEST(date_trunc('milliseconds', clock_timestamp()), \
                     api_key_quotas.updated_at + interval '1 millisecond')",
                )),
            ))
            .returning(api_key_quotas::updated_at)
            .get_result(conn)
            .await?;
    let (source, request_id) = match change.source {
        ChangeSource::Request(r) => ("request", Some(r)),
        ChangeSource::Admin => ("admin", None),
        ChangeSource::Operator => ("operator", None),
    };
    diesel::insert_into(quota_changes::table)
        .values((
            quota_changes::api_key_id.eq(id.0),
            quota_changes::changed_by.eq(change.actor),
            quota_changes::source.eq(source),
            quota_changes::quota_request_id.eq(request_id),
            quota_changes::old_per_hour.eq(old.0),
            quota_changes::old_per_day.eq(old.1),
            quota_changes::old_burst.eq(old.2),
            quota_changes::new_per_hour.eq(quota.per_hour.get()),
            quota_changes::new_per_day.eq(quota.per_day.get()),
            quota_changes::new_burst.eq(burst),
            quota_changes::reason.eq(reason),
            quota_changes::changed_at.eq(version),
        ))
        .execute(conn)
        .await?;
    Ok(version)
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

    /// Limits come from forms and the CLI: any i64 is accepted or refused as bad input, never a
    /// panic, and exactly the documented range is accepted.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any i64, with extra weight on the edges of both ranges.
        fn limit_value() -> impl Strategy<Value = i64> {
            prop_oneof![
                any::<i64>(),
                -3..=3i64,
                QuotaLimit::MAX - 3..=QuotaLimit::MAX + 3,
                i32::MAX as i64 - 3..=i32::MAX as i64 + 3,
                QuotaLimit::MAX_BURST - 3..=QuotaLimit::MAX_BURST + 3,
                Just(i64::MIN),
                Just(i64::MAX),
            ]
        }

        /// A quota built from raw numbers the way callers do it (`?` on each limit).
        fn quota(hour: i64, day: i64, burst: Option<i64>) -> ServiceResult<Quota> {
            Ok(Quota {
                per_hour: QuotaLimit::new(hour)?,
                per_day: QuotaLimit::new(day)?,
                burst_per_second: burst.map(QuotaLimit::burst).transpose()?,
            })
        }

        fn is_bad_input<T: std::fmt::Debug>(r: &ServiceResult<T>) -> bool {
            matches!(r, Err(ServiceError::Invalid(_)))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn limit_accepted_iff_positive_and_at_most_max(v in limit_value()) {
                let r = QuotaLimit::new(v);
                if (1..=QuotaLimit::MAX).contains(&v) {
                    prop_assert_eq!(r.unwrap().get(), v);
                } else {
                    prop_assert!(is_bad_input(&r), "{v}: {r:?}");
                }
            }

            #[test]
            fn burst_accepted_iff_positive_and_at_most_the_maximum(v in limit_value()) {
                let r = QuotaLimit::burst(v);
                if (1..=QuotaLimit::MAX_BURST).contains(&v) {
                    let b = r.unwrap().get();
                    prop_assert_eq!(b, v);
                    // Stored as INTEGER: the cast in `set_quota_in` must not wrap.
                    prop_assert_eq!(b as i32 as i64, b);
                } else {
                    prop_assert!(is_bad_input(&r), "{v}: {r:?}");
                }
            }

            #[test]
            fn quota_built_iff_every_limit_is_valid(
                hour in limit_value(),
                day in limit_value(),
                burst in proptest::option::of(limit_value()),
            ) {
                let valid = (1..=QuotaLimit::MAX).contains(&hour)
                    && (1..=QuotaLimit::MAX).contains(&day)
                    && burst.is_none_or(|b| (1..=QuotaLimit::MAX_BURST).contains(&b));
                let r = quota(hour, day, burst);
                if valid {
                    let q = r.unwrap();
                    prop_assert_eq!(
                        (q.per_hour.get(), q.per_day.get(), q.burst_per_second.map(QuotaLimit::get)),
                        (hour, day, burst)
                    );
                } else {
                    prop_assert!(is_bad_input(&r), "{hour} {day} {burst:?}: {r:?}");
                }
            }
        }
    }
}
