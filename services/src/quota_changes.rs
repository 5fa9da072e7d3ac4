//! Every change of a key's limits, and the audit trail of quota decisions.
//!
//! One writer, [`apply`], runs inside the caller's transaction and takes the [`LiveKey`] that
//! [`lock_key`] returns: the key's row locked (shared), then its limits (for update). Everything
//! that touches a key's quota or requests takes the key's row first (a revocation updates it, then
//! closes the key's requests; a decision locks it before it touches the request; a new request
//! locks it before it is stored), so no two of them wait for each other in a circle. [`publish`]
//! then tells Redis and this instance's cache. An admin's or the operator's direct set is told to
//! the key's owner; [`set_quota`] is the quiet one, for seeding and tests.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::accounts::User;
use crate::db::{self, DbPool};
use crate::keys::quota::{self, checked_limits};
use crate::keys::{ApiKeyId, Quota, QuotaLimit};
use crate::notifications;
use crate::schema::users;
use crate::{ServiceError, ServiceResult, Services};

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

/// What a change does to a key's burst limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BurstChange {
    /// Keeps the key's burst limit, or its lack of one (as the admin form does).
    Keep,
    Set(QuotaLimit),
    Remove,
}

impl BurstChange {
    /// The admin form's burst field as typed: blank removes the key's burst limit, a number
    /// ("1,000" too) sets it.
    pub fn typed(raw: &str) -> ServiceResult<Self> {
        match raw.trim() {
            "" => Ok(Self::Remove),
            raw => {
                let value = quota::parse_limit(raw, "burst").map_err(|e| e.in_field("burst"))?;
                Ok(Self::Set(quota::checked_burst(value)?))
            }
        }
    }
}

/// A key's limits and state as [`lock_key`] read them, under lock until the transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LiveKey {
    pub per_hour: i64,
    pub per_day: i64,
    pub burst: Option<QuotaLimit>,
    pub revoked: bool,
}

impl LiveKey {
    /// The limits as a quota.
    pub fn quota(&self) -> ServiceResult<Quota> {
        Ok(Quota {
            per_hour: QuotaLimit::new(self.per_hour)?,
            per_day: QuotaLimit::new(self.per_day)?,
            burst_per_second: self.burst,
        })
    }

    /// A revoked key's limits no longer change: nothing could use them.
    pub fn check_not_revoked(&self) -> ServiceResult<()> {
        if self.revoked {
            return Err(ServiceError::Conflict("This key is revoked; its quota can no longer change.".into()));
        }
        Ok(())
    }
}

/// Locks the key's row (shared: a revocation waits for this transaction, and this one for a
/// revocation under way) and then its limits (no other change slips in before the commit), and
/// reads both.
pub(crate) async fn lock_key(conn: &mut AsyncPgConnection, key: ApiKeyId) -> ServiceResult<LiveKey> {
    use crate::schema::{api_key_quotas, api_keys};
    let revoked_at: Option<DateTime<Utc>> =
        api_keys::table.filter(api_keys::id.eq(key.0)).select(api_keys::revoked_at).for_share().first(conn).await?;
    let (per_hour, per_day, burst): (i64, i64, Option<i32>) = api_key_quotas::table
        .filter(api_key_quotas::api_key_id.eq(key.0))
        .select((api_key_quotas::requests_per_hour, api_key_quotas::requests_per_day, api_key_quotas::burst_per_second))
        .for_update()
        .first(conn)
        .await?;
    Ok(LiveKey {
        per_hour,
        per_day,
        burst: Quota::from_stored(per_hour, per_day, burst)?.burst_per_second,
        revoked: revoked_at.is_some(),
    })
}

/// Writes the key's new limits and their audit row, inside the caller's transaction, with the
/// key locked by [`lock_key`] (`live`, what the limits were); returns the change's time on
/// PostgreSQL's clock (the limits' version, as the authenticator reads it back from
/// `updated_at`). Refuses a revoked key and a reason that is missing or not text.
pub(crate) async fn apply(
    conn: &mut AsyncPgConnection,
    id: ApiKeyId,
    live: &LiveKey,
    quota: &Quota,
    change: &QuotaChange<'_>,
) -> ServiceResult<DateTime<Utc>> {
    use crate::schema::{api_key_quotas, quota_changes};
    live.check_not_revoked()?;
    let reason = crate::text::check_note("The reason", change.reason).map_err(|e| e.in_field("reason"))?;
    if reason.is_empty() {
        return Err(ServiceError::invalid_field("reason", "Give a reason for the change."));
    }
    let burst = quota.burst_per_second.map(|b| b.get() as i32);
    // The version is stamped by PostgreSQL, never by this node's clock: app nodes' clocks
    // differ, and a change stamped by a node running behind would lose in Redis to the older
    // limits it replaces. Under the row lock `lock_key` took it is also strictly later (by at least
    // a millisecond, the unit the version is compared in) than the version it replaces, so
    // versions follow the order of the changes even if the database's clock steps back.
    let version: DateTime<Utc> = diesel::update(api_key_quotas::table.filter(api_key_quotas::api_key_id.eq(id.0)))
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
            quota_changes::old_per_hour.eq(live.per_hour),
            quota_changes::old_per_day.eq(live.per_day),
            quota_changes::old_burst.eq(live.burst.map(|b| b.get() as i32)),
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

/// After the commit: Redis and this instance's cache learn the new limits. The change is made
/// whether or not Redis hears of it, so a failure here is logged, not returned: every instance
/// reads the new limits (and their newer version, which the quota script prefers) once its
/// cached key expires, within [`crate::keys::KeyAuthenticator::TTL`].
pub(crate) async fn publish(services: &crate::Services, id: ApiKeyId, quota: &Quota, version: DateTime<Utc>) {
    services.keys.quota_changed(id);
    if let Err(e) = services.quota.publish_limits(id, quota, version.timestamp_millis()).await {
        tracing::warn!(key_id = %id, error = %e, "new limits saved but not published to Redis; they apply as caches expire");
    }
}

/// Sets a key's limits and records the change, in one transaction, then publishes them so that
/// the very next request on any instance is checked against them. Nobody is told: for seeding
/// (`demo seed`) and tests; people's changes go through [`set_by_admin`], [`set_by_operator`]
/// or an approved request.
pub async fn set_quota(
    services: &Services,
    id: ApiKeyId,
    quota: &Quota,
    change: &QuotaChange<'_>,
) -> ServiceResult<()> {
    let mut conn = db::conn(&services.db).await?;
    let version = conn
        .transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                let live = lock_key(conn, id).await?;
                apply(conn, id, &live, quota, change).await
            })
        })
        .await?;
    publish(services, id, quota, version).await;
    Ok(())
}

/// An admin sets a key's limits directly (from the key's page), its burst limit as `burst` says.
pub async fn set_by_admin(
    services: &Services,
    admin: &User,
    key_id: ApiKeyId,
    (per_hour, per_day): (i64, i64),
    burst: BurstChange,
    reason: &str,
) -> ServiceResult<()> {
    if !admin.is_admin() {
        return Err(ServiceError::Forbidden);
    }
    let (per_hour, per_day) = checked_limits(services.settings.quota_maximum, per_hour, per_day)?;
    let change = QuotaChange { actor: Some(admin.id), source: ChangeSource::Admin, reason };
    let (quota, changed) = set_and_tell(services, key_id, (per_hour, per_day, burst), &change, "An admin").await?;
    if !changed {
        return Err(ServiceError::invalid(format!(
            "The key already allows {}, {}; nothing to change.",
            format::limits_in_words(per_hour.get(), per_day.get()),
            burst_words(quota.burst_per_second)
        )));
    }
    Ok(())
}

/// A burst limit in words: "at most 5 per second", or "no burst limit".
fn burst_words(burst: Option<QuotaLimit>) -> String {
    match burst {
        Some(b) => format!("at most {} per second", format::count(b.get())),
        None => "no burst limit".to_owned(),
    }
}

/// The platform's operator sets a key's limits (`keymeter quota set`), changing its burst limit
/// as `burst` says; returns the quota now in force and whether it changed. Unlike the admin form
/// it accepts an hourly limit above the daily one and any limits (operators test with them).
pub async fn set_by_operator(
    services: &Services,
    key_id: ApiKeyId,
    per_hour: QuotaLimit,
    per_day: QuotaLimit,
    burst: BurstChange,
    reason: &str,
) -> ServiceResult<(Quota, bool)> {
    let change = QuotaChange { actor: None, source: ChangeSource::Operator, reason };
    set_and_tell(services, key_id, (per_hour, per_day, burst), &change, "The platform's operator").await
}

/// A direct change of a key's limits (an admin's or the operator's): made and told to the owner
/// (`who` did it) in one transaction, then published. Setting what is already there changes
/// nothing, adds nothing to the audit trail and tells nobody; returns the quota in force and
/// whether it changed.
async fn set_and_tell(
    services: &Services,
    key_id: ApiKeyId,
    (per_hour, per_day, burst): (QuotaLimit, QuotaLimit, BurstChange),
    change: &QuotaChange<'_>,
    who: &str,
) -> ServiceResult<(Quota, bool)> {
    let public_url = services.settings.public_url.clone();
    let mut conn = db::conn(&services.db).await?;
    let (quota, version) = conn
        .transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                // The limits and burst as they are now, under lock (as approvals read them): a
                // concurrent change of the burst is kept, and "nothing to change" is judged
                // against what is really there.
                let live = lock_key(conn, key_id).await?;
                live.check_not_revoked()?;
                let burst_per_second = match burst {
                    BurstChange::Keep => live.burst,
                    BurstChange::Set(b) => Some(b),
                    BurstChange::Remove => None,
                };
                let quota = Quota { per_hour, per_day, burst_per_second };
                if (per_hour.get(), per_day.get(), burst_per_second) == (live.per_hour, live.per_day, live.burst) {
                    return Ok((quota, None));
                }
                let version = apply(conn, key_id, &live, &quota, change).await?;
                use crate::schema::api_keys as keys;
                let (owner_id, owner, name): (i64, String, String) = keys::table
                    .inner_join(users::table)
                    .filter(keys::id.eq(key_id.0))
                    .select((users::id, users::email, keys::name))
                    .first(conn)
                    .await?;
                let title = format!("Quota changed for \u{201c}{name}\u{201d}");
                // The burst is mentioned when this change changed it.
                let burst = match burst_per_second {
                    _ if burst_per_second == live.burst => String::new(),
                    Some(_) => format!(", {}", burst_words(burst_per_second)),
                    None => format!(", with {}", burst_words(None)),
                };
                // What it was, for the parts that changed: the owner compares without a lookup.
                let mut before = Vec::new();
                if (per_hour.get(), per_day.get()) != (live.per_hour, live.per_day) {
                    before.push(format::limits_in_words(live.per_hour, live.per_day));
                }
                if burst_per_second != live.burst {
                    before.push(burst_words(live.burst));
                }
                let body = format!(
                    "{who} set the quota of \u{201c}{name}\u{201d} to {}{burst} (before: {}). Reason: {}",
                    format::limits_in_words(per_hour.get(), per_day.get()),
                    before.join(", "),
                    change.reason.trim()
                );
                notifications::tell_key_owner(
                    conn,
                    (owner_id, &owner),
                    "quota_changed",
                    &title,
                    body,
                    key_id.0,
                    &public_url,
                )
                .await?;
                Ok((quota, Some(version)))
            })
        })
        .await?;
    drop(conn);
    match version {
        Some(version) => {
            publish(services, key_id, &quota, version).await;
            Ok((quota, true))
        }
        None => Ok((quota, false)),
    }
}

/// One entry of the audit trail: a quota change (approved request, admin or operator set) or a
/// denied request.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct AuditEntry {
    /// When the change was made or the request denied.
    #[diesel(sql_type = Timestamptz)]
    pub changed_at: DateTime<Utc>,
    #[diesel(sql_type = SqlUuid)]
    pub key_id: Uuid,
    #[diesel(sql_type = Text)]
    pub key_name: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub changed_by: Option<String>,
    /// `request`, `admin` or `operator`.
    #[diesel(sql_type = Text)]
    pub source: String,
    /// `approved` (a request's change), `set` (an admin's or operator's change) or `denied`.
    #[diesel(sql_type = Text)]
    pub decision: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub quota_request_id: Option<i64>,
    /// The limits before; for a denial, the key's limits when the merchant asked.
    #[diesel(sql_type = BigInt)]
    pub old_per_hour: i64,
    #[diesel(sql_type = BigInt)]
    pub old_per_day: i64,
    /// The burst limit (requests per second) before, if any; none on a denial (requests do not
    /// change it).
    #[diesel(sql_type = Nullable<diesel::sql_types::Integer>)]
    pub old_burst: Option<i32>,
    /// The limits after; for a denial, the limits asked for (never applied).
    #[diesel(sql_type = BigInt)]
    pub new_per_hour: i64,
    #[diesel(sql_type = BigInt)]
    pub new_per_day: i64,
    #[diesel(sql_type = Nullable<diesel::sql_types::Integer>)]
    pub new_burst: Option<i32>,
    /// The change's reason, or the admin's note on a denial.
    #[diesel(sql_type = Text)]
    pub reason: String,
    /// 0 for a change, 1 for a denial; with `seq` (the change's or request's id) it orders
    /// entries of the same instant.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    kind: i32,
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

impl AuditEntry {
    /// Where the page that follows this entry starts.
    pub fn cursor(&self) -> AuditCursor {
        AuditCursor { changed_at: self.changed_at, kind: self.kind, seq: self.seq }
    }
}

/// A place in the audit trail (newest first): the entries after it are older. Written in
/// links as `<µs since the epoch>.<kind>.<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    changed_at: DateTime<Utc>,
    kind: i32,
    seq: i64,
}

impl AuditCursor {
    pub fn parse(raw: &str) -> ServiceResult<Self> {
        let mut parts = raw.split('.').map(str::parse::<i64>);
        let cursor = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(us)), Some(Ok(kind @ (0 | 1))), Some(Ok(seq)), None) => {
                DateTime::from_timestamp_micros(us).map(|changed_at| Self { changed_at, kind: kind as i32, seq })
            }
            _ => None,
        };
        cursor.ok_or_else(|| ServiceError::invalid(format!("{raw:?} is not a place in the audit trail")))
    }
}

impl std::fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.changed_at.timestamp_micros(), self.kind, self.seq)
    }
}

/// Decisions on quotas, newest first, at most `limit`, from the newest or from after `before`:
/// the changes (which approvals, admin and operator sets write to `quota_changes`) and the
/// denied requests (which live only in `quota_requests`).
pub async fn audit_trail(db: &DbPool, before: Option<AuditCursor>, limit: i64) -> ServiceResult<Vec<AuditEntry>> {
    let mut conn = db::conn(db).await?;
    // With no cursor, one after every entry.
    let before = before.unwrap_or(AuditCursor { changed_at: DateTime::<Utc>::MAX_UTC, kind: i32::MAX, seq: i64::MAX });
    Ok(diesel::sql_query(
        "SELECT changed_at, key_id, key_name, changed_by, source, decision, quota_request_id, \
         old_per_hour, old_per_day, old_burst, new_per_hour, new_per_day, new_burst, reason, kind, seq FROM ( \
           SELECT c.changed_at, c.api_key_id AS key_id, k.name AS key_name, u.email AS changed_by, c.source, \
             CASE c.source WHEN 'request' THEN 'approved' ELSE 'set' END AS decision, c.quota_request_id, \
             c.old_per_hour, c.old_per_day, c.old_burst, c.new_per_hour, c.new_per_day, c.new_burst, c.reason, \
             0 AS kind, c.id AS seq \
           FROM quota_changes c JOIN api_keys k ON k.id = c.api_key_id LEFT JOIN users u ON u.id = c.changed_by \
           UNION ALL \
           SELECT r.decided_at, r.api_key_id, k.name, u.email, 'request', 'denied', r.id, \
             r.current_per_hour, r.current_per_day, NULL::integer, r.requested_per_hour, r.requested_per_day, NULL::integer, \
             coalesce(r.decision_note, ''), 1, r.id \
           FROM quota_requests r JOIN api_keys k ON k.id = r.api_key_id LEFT JOIN users u ON u.id = r.decided_by \
           WHERE r.status = 'denied' AND r.decided_at IS NOT NULL \
         ) e \
         WHERE (changed_at, kind, seq) < ($1, $2, $3) \
         ORDER BY changed_at DESC, kind DESC, seq DESC LIMIT $4",
    )
    .bind::<Timestamptz, _>(before.changed_at)
    .bind::<diesel::sql_types::Integer, _>(before.kind)
    .bind::<BigInt, _>(before.seq)
    .bind::<BigInt, _>(limit)
    .load(&mut conn)
    .await?)
}
