//! Quota-increase requests: a merchant asks for higher limits on one of their keys, an admin
//! approves (possibly with adjusted numbers) or denies with a note. A decision is final and
//! made once: the decision is an `UPDATE … WHERE status = 'pending'`, so of two admins deciding
//! at the same moment exactly one wins. Approval changes the quota, records the change in the
//! audit trail and tells the merchant (in-app and by email), all in one transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::accounts::{Role, User};
use crate::db::{self, DbPool};
use crate::keys::quota::{checked_limit, checked_limits, hour_within_day, parse_limit, QuotaMaximum};
use crate::keys::{api_keys, ApiKeyId, Quota};
use crate::notifications;
use crate::public_url::PublicUrl;
use crate::quota_changes::{apply, lock_key, publish, ChangeSource, LiveKey, QuotaChange};
use crate::schema::{quota_requests, users};
use crate::{ServiceError, ServiceResult, Services};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Cancelled,
}

impl RequestStatus {
    /// A status as stored; anything else is a fault of the data, not an open request.
    fn parse(raw: &str) -> ServiceResult<Self> {
        match raw {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "denied" => Ok(Self::Denied),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(ServiceError::Internal(format!("a quota request has the unknown status {other:?}"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A request as both sides see it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRequest {
    pub id: i64,
    pub key_id: Uuid,
    pub key_name: String,
    pub owner_email: String,
    /// The key's limits when the request was made.
    pub current_per_hour: i64,
    pub current_per_day: i64,
    /// The key's limits now (they may have changed since the request was made).
    pub live_per_hour: i64,
    pub live_per_day: i64,
    pub key_revoked: bool,
    pub requested_per_hour: i64,
    pub requested_per_day: i64,
    pub reason: String,
    pub status: RequestStatus,
    pub approved_per_hour: Option<i64>,
    pub approved_per_day: Option<i64>,
    pub decision_note: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Admitted calls of the key over the last 24 hours.
    pub requests_last_24h: i64,
}

/// Requested limits, checked against the current ones and the platform maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedLimits {
    pub per_hour: i64,
    pub per_day: i64,
}

impl RequestedLimits {
    /// Empty fields, and fields typed at the current limit, keep it; at least one must be
    /// raised, each raised one passes [`checked_limit`] as an admin's limits do (one left as it
    /// is is not checked again: an operator may have set it above today's maximum), and the hour
    /// stays within the day.
    pub fn parse(per_hour: &str, per_day: &str, current: &Quota, max: QuotaMaximum) -> ServiceResult<Self> {
        let raised = |raw: &str, name: &str, current: i64, field: &'static str| -> ServiceResult<Option<i64>> {
            if raw.trim().is_empty() {
                return Ok(None);
            }
            let value = parse_limit(raw, name).map_err(|e| e.in_field(field))?;
            if value == current {
                return Ok(None);
            }
            if value < current {
                let message = format!(
                    "The {name} limit must be above the current {}; leave it empty to keep it.",
                    format::count(current)
                );
                return Err(ServiceError::invalid_field(field, message));
            }
            Ok(Some(value))
        };
        let hour = raised(per_hour, "hourly", current.per_hour.get(), "per_hour")?;
        let day = raised(per_day, "daily", current.per_day.get(), "per_day")?;
        if let Some(h) = hour {
            checked_limit(h, "hourly", max.per_hour, "per_hour")?;
        }
        if let Some(d) = day {
            checked_limit(d, "daily", max.per_day, "per_day")?;
        }
        if hour.is_none() && day.is_none() {
            return Err(ServiceError::invalid_field("per_hour", "Ask for a higher hourly or daily limit."));
        }
        let limits =
            Self { per_hour: hour.unwrap_or(current.per_hour.get()), per_day: day.unwrap_or(current.per_day.get()) };
        hour_within_day(limits.per_hour, limits.per_day)?;
        Ok(limits)
    }
}

fn check_reason(reason: &str) -> ServiceResult<&str> {
    let reason = crate::text::check_note("The reason", reason).map_err(|e| e.in_field("reason"))?;
    if reason.is_empty() {
        return Err(ServiceError::invalid_field("reason", "Say why the key needs more."));
    }
    Ok(reason)
}

/// A merchant asks for more on one of their keys.
pub async fn create(
    services: &Services,
    user: &User,
    key_id: ApiKeyId,
    per_hour: &str,
    per_day: &str,
    reason: &str,
) -> ServiceResult<QuotaRequest> {
    let key = api_keys::get_for(&services.db, key_id, user).await?;
    if key.owner_id != user.id {
        return Err(ServiceError::invalid("Only the key's owner can ask for more quota."));
    }
    if key.revoked_at.is_some() {
        return Err(ServiceError::invalid("This key is revoked."));
    }
    let maximum = services.settings.quota_maximum;
    // Checked here for a quick answer, and again under the key's lock against its live limits.
    RequestedLimits::parse(per_hour, per_day, &key.quota, maximum)?;
    let reason = check_reason(reason)?;
    let public_url = &services.settings.public_url;
    let mut conn = db::conn(&services.db).await?;
    let id = conn
        .transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                // Under the key's lock: a revocation committed since the check above is seen
                // here, and one under way waits for this request and then closes it.
                let live = lock_key(conn, key.id).await?;
                if live.revoked {
                    return Err(ServiceError::invalid("This key is revoked."));
                }
                // Raised meanwhile, the key may already allow what was asked: then there is
                // nothing to ask for (an approval could only be refused as a lowering).
                let limits = RequestedLimits::parse(per_hour, per_day, &live.quota()?, maximum)?;
                let id: i64 = diesel::insert_into(quota_requests::table)
                    .values((
                        quota_requests::api_key_id.eq(key.id.0),
                        quota_requests::requested_by.eq(user.id),
                        quota_requests::current_per_hour.eq(live.per_hour),
                        quota_requests::current_per_day.eq(live.per_day),
                        quota_requests::requested_per_hour.eq(limits.per_hour),
                        quota_requests::requested_per_day.eq(limits.per_day),
                        quota_requests::reason.eq(reason),
                    ))
                    .returning(quota_requests::id)
                    .get_result(conn)
                    .await
                    .map_err(|e| match ServiceError::from(e) {
                        ServiceError::Conflict(_) => ServiceError::Conflict(
                            "This key already has an open request; wait for the decision or cancel it.".into(),
                        ),
                        other => other,
                    })?;
                tell_admins(conn, (id, user), &key, &live, &limits, reason, public_url).await?;
                Ok(id)
            })
        })
        .await?;
    get(&services.db, id).await
}

/// Every admin hears of a new request, in the bell and by email: who asks, for which key, what
/// it allows now and why more is needed, with a link to decide.
async fn tell_admins(
    conn: &mut AsyncPgConnection,
    (request_id, requester): (i64, &User),
    key: &api_keys::ApiKey,
    live: &LiveKey,
    asked: &RequestedLimits,
    reason: &str,
    public_url: &PublicUrl,
) -> ServiceResult<()> {
    let admins: Vec<(i64, String)> =
        users::table.filter(users::role.eq(Role::Admin.as_str())).select((users::id, users::email)).load(conn).await?;
    let title = format!("Quota request for \u{201c}{}\u{201d}", key.name);
    let body = format!(
        "{} asks for {} on the key \u{201c}{}\u{201d} ({}…, now {}): {}",
        requester.email,
        format::limits_in_words(asked.per_hour, asked.per_day),
        key.name,
        key.prefix,
        format::limits_in_words(live.per_hour, live.per_day),
        reason
    );
    // Straight to the request's card on the admins' list (`app::api::request_at` names it;
    // every pending request is on the list's first page).
    let decide_path = format!("/admin/quota-requests#request-{request_id}");
    let news = notifications::News {
        kind: "quota_request",
        title: &title,
        body: &body,
        link: &decide_path,
        link_label: "Decide",
        dedupe_key: None,
    };
    for (admin, email) in admins {
        notifications::tell(conn, (admin, &email), &news, public_url).await?;
    }
    Ok(())
}

/// The requester withdraws a pending request.
pub async fn cancel(services: &Services, user: &User, request_id: i64) -> ServiceResult<QuotaRequest> {
    let request = get(&services.db, request_id).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId(request.key_id), user).await?;
    if key.owner_id != user.id {
        return Err(ServiceError::NotFound);
    }
    let mut conn = db::conn(&services.db).await?;
    let updated = diesel::update(
        quota_requests::table
            .filter(quota_requests::id.eq(request_id))
            .filter(quota_requests::status.eq(RequestStatus::Pending.as_str())),
    )
    .set((quota_requests::status.eq(RequestStatus::Cancelled.as_str()), quota_requests::decided_at.eq(Utc::now())))
    .execute(&mut conn)
    .await?;
    drop(conn);
    let now = get(&services.db, request_id).await?;
    if updated == 0 {
        // As it is now: an admin may have decided it since it was read above.
        return Err(ServiceError::Conflict(format!("This request was already {}.", now.status.as_str())));
    }
    Ok(now)
}

/// Why a request was closed when its key was revoked: the one note a cancellation carries (its
/// merchant's own cancellation has none), shown where the request is listed.
pub const CLOSED_BY_REVOCATION: &str = "The key was revoked.";

/// Closes the key's pending request, inside the revocation's transaction: nobody can decide it
/// any more.
pub(crate) async fn close_for_revoked_key(
    conn: &mut AsyncPgConnection,
    key: ApiKeyId,
    now: DateTime<Utc>,
) -> ServiceResult<()> {
    diesel::update(
        quota_requests::table
            .filter(quota_requests::api_key_id.eq(key.0))
            .filter(quota_requests::status.eq(RequestStatus::Pending.as_str())),
    )
    .set((
        quota_requests::status.eq(RequestStatus::Cancelled.as_str()),
        quota_requests::decided_at.eq(now),
        quota_requests::decision_note.eq(CLOSED_BY_REVOCATION),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// An admin's decision.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Approve, with these limits (the requested ones, or adjusted).
    Approve {
        per_hour: i64,
        per_day: i64,
    },
    Deny,
}

/// Decides a pending request, once. Approval applies the new quota at once.
pub async fn decide(
    services: &Services,
    admin: &User,
    request_id: i64,
    decision: Decision,
    note: &str,
) -> ServiceResult<QuotaRequest> {
    if !admin.is_admin() {
        return Err(ServiceError::Forbidden);
    }
    let note = crate::text::check_note("The note", note).map_err(|e| e.in_field("note"))?;
    if matches!(decision, Decision::Deny) && note.is_empty() {
        return Err(ServiceError::invalid_field("note", "Say why the request is denied."));
    }
    let approved = match decision {
        Decision::Approve { per_hour, per_day } => {
            Some(checked_limits(services.settings.quota_maximum, per_hour, per_day)?)
        }
        Decision::Deny => None,
    };
    let request = get(&services.db, request_id).await?;
    let public_url = services.settings.public_url.clone();
    let mut conn = db::conn(&services.db).await?;
    let applied = conn
        .transaction::<_, ServiceError, _>(|conn| {
            let request = &request;
            Box::pin(async move {
                // The key first, as everything that changes a key's quota or requests does
                // (`quota_changes`): a revocation under way has its row and waits for none of ours.
                let key_id = ApiKeyId(request.key_id);
                let live = lock_key(conn, key_id).await?;
                let status = if approved.is_some() { RequestStatus::Approved } else { RequestStatus::Denied }.as_str();
                let won = diesel::update(
                    quota_requests::table
                        .filter(quota_requests::id.eq(request_id))
                        .filter(quota_requests::status.eq(RequestStatus::Pending.as_str())),
                )
                .set((
                    quota_requests::status.eq(status),
                    quota_requests::decided_by.eq(admin.id),
                    quota_requests::decided_at.eq(Utc::now()),
                    quota_requests::decision_note.eq((!note.is_empty()).then_some(note)),
                    quota_requests::approved_per_hour.eq(approved.map(|a| a.0.get())),
                    quota_requests::approved_per_day.eq(approved.map(|a| a.1.get())),
                ))
                .execute(conn)
                .await?;
                if won == 0 {
                    // Approved or denied by another admin, cancelled by its owner or by the
                    // key's revocation.
                    let now: String =
                        quota_requests::table.find(request_id).select(quota_requests::status).get_result(conn).await?;
                    return Err(ServiceError::Conflict(format!("This request was already {now}.")));
                }
                let applied = match approved {
                    Some((per_hour, per_day)) => {
                        // Checked against the key as it is now, under lock, not as it was when the
                        // merchant asked: a stale approval must not undo a later raise. An error
                        // rolls the status back, so the request stays pending.
                        check_approval(&live, per_hour.get(), per_day.get())?;
                        let burst = live.burst;
                        let quota = Quota { per_hour, per_day, burst_per_second: burst };
                        let reason = if note.is_empty() { request.reason.as_str() } else { note };
                        let change =
                            QuotaChange { actor: Some(admin.id), source: ChangeSource::Request(request_id), reason };
                        Some((quota, apply(conn, key_id, &live, &quota, &change).await?))
                    }
                    None => None,
                };
                let decided = match approved {
                    Some((h, d)) => Told::Approved { granted: (h.get(), d.get()), had: (live.per_hour, live.per_day) },
                    None => Told::Denied { stays: (live.per_hour, live.per_day) },
                };
                tell_merchant(conn, request, decided, note, &public_url).await?;
                Ok(applied)
            })
        })
        .await?;
    drop(conn);
    if let Some((quota, version)) = applied {
        publish(services, ApiKeyId(request.key_id), &quota, version).await;
    }
    get(&services.db, request_id).await
}

/// An approval may only keep or raise the key's live limits, and only on a key still in use.
fn check_approval(live: &LiveKey, per_hour: i64, per_day: i64) -> ServiceResult<()> {
    if live.revoked {
        return Err(ServiceError::Conflict("This key is revoked; the request can only be denied.".into()));
    }
    if per_hour < live.per_hour || per_day < live.per_day {
        let field = if per_hour < live.per_hour { "per_hour" } else { "per_day" };
        return Err(ServiceError::invalid_field(
            field,
            format!(
                "The key now allows {}; approving {} would lower its quota. \
             Approve at least the current limits, or deny the request.",
                format::limits_in_words(live.per_hour, live.per_day),
                format::limits_in_words(per_hour, per_day),
            ),
        ));
    }
    Ok(())
}

/// What the merchant is told: the limits granted, or the limits the key keeps.
enum Told {
    /// The limits granted, and those the key had.
    Approved {
        granted: (i64, i64),
        had: (i64, i64),
    },
    Denied {
        stays: (i64, i64),
    },
}

/// The merchant hears of the decision in the bell and by email: which key, what was asked, and
/// what the key allows now.
async fn tell_merchant(
    conn: &mut AsyncPgConnection,
    request: &QuotaRequest,
    decided: Told,
    note: &str,
    public_url: &PublicUrl,
) -> ServiceResult<()> {
    let requester: (i64, String) = users::table
        .inner_join(quota_requests::table.on(quota_requests::requested_by.eq(users::id)))
        .filter(quota_requests::id.eq(request.id))
        .select((users::id, users::email))
        .first(conn)
        .await?;
    let name = &request.key_name;
    let asked = (request.requested_per_hour, request.requested_per_day);
    let limits = |(h, d): (i64, i64)| format::limits_in_words(h, d);
    // "Raised" only when it was: an approval may keep the limits a later change already gave.
    let approved_title = |granted: (i64, i64), had: (i64, i64)| {
        if granted.0 > had.0 || granted.1 > had.1 {
            format!("Quota raised for \u{201c}{name}\u{201d}")
        } else {
            format!("Quota request for \u{201c}{name}\u{201d} approved")
        }
    };
    let denied = matches!(decided, Told::Denied { .. });
    let (title, mut body) = match decided {
        Told::Approved { granted, had } if granted == asked => (
            approved_title(granted, had),
            format!("Your request for \u{201c}{name}\u{201d} was approved: the key now allows {}, as you asked.", limits(granted)),
        ),
        Told::Approved { granted, had } => (
            approved_title(granted, had),
            format!(
                "Your request for \u{201c}{name}\u{201d} was approved with other limits: you asked for {}; the key now allows {}.",
                limits(asked),
                limits(granted)
            ),
        ),
        Told::Denied { stays } => (
            format!("Quota request for \u{201c}{name}\u{201d} denied"),
            format!(
                "Your request for {} on \u{201c}{name}\u{201d} was denied; the key keeps {}.",
                limits(asked),
                limits(stays)
            ),
        ),
    };
    if !note.is_empty() {
        body.push_str(&format!(" Note from the admin: {note}"));
    }
    if denied {
        body.push_str("\n\nYou can send a new request from the key's page, explaining the need in more detail.");
    }
    notifications::tell_key_owner(
        conn,
        (requester.0, &requester.1),
        "quota_decision",
        &title,
        body,
        request.key_id,
        public_url,
    )
    .await
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = SqlUuid)]
    key_id: Uuid,
    #[diesel(sql_type = Text)]
    key_name: String,
    #[diesel(sql_type = Text)]
    owner_email: String,
    #[diesel(sql_type = BigInt)]
    current_per_hour: i64,
    #[diesel(sql_type = BigInt)]
    current_per_day: i64,
    #[diesel(sql_type = BigInt)]
    live_per_hour: i64,
    #[diesel(sql_type = BigInt)]
    live_per_day: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    key_revoked: bool,
    #[diesel(sql_type = BigInt)]
    requested_per_hour: i64,
    #[diesel(sql_type = BigInt)]
    requested_per_day: i64,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    approved_per_hour: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    approved_per_day: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    decision_note: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    decided_by: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    decided_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    requests_last_24h: i64,
}

impl TryFrom<Row> for QuotaRequest {
    type Error = ServiceError;

    fn try_from(r: Row) -> ServiceResult<Self> {
        Ok(Self {
            id: r.id,
            key_id: r.key_id,
            key_name: r.key_name,
            owner_email: r.owner_email,
            current_per_hour: r.current_per_hour,
            current_per_day: r.current_per_day,
            live_per_hour: r.live_per_hour,
            live_per_day: r.live_per_day,
            key_revoked: r.key_revoked,
            requested_per_hour: r.requested_per_hour,
            requested_per_day: r.requested_per_day,
            reason: r.reason,
            status: RequestStatus::parse(&r.status)?,
            approved_per_hour: r.approved_per_hour,
            approved_per_day: r.approved_per_day,
            decision_note: r.decision_note,
            decided_by: r.decided_by,
            decided_at: r.decided_at,
            created_at: r.created_at,
            requests_last_24h: r.requests_last_24h,
        })
    }
}

const SELECT: &str = "SELECT r.id, r.api_key_id AS key_id, k.name AS key_name, o.email AS owner_email, \
    r.current_per_hour, r.current_per_day, q.requests_per_hour AS live_per_hour, q.requests_per_day AS live_per_day, \
    (k.revoked_at IS NOT NULL) AS key_revoked, r.requested_per_hour, r.requested_per_day, r.reason, r.status, \
    r.approved_per_hour, r.approved_per_day, r.decision_note, d.email AS decided_by, r.decided_at, r.created_at, \
    coalesce((SELECT sum(h.requests) FROM api_key_usage_hour h WHERE h.api_key_id = r.api_key_id \
              AND h.period_start >= now() - interval '24 hours'), 0)::bigint AS requests_last_24h \
    FROM quota_requests r JOIN api_keys k ON k.id = r.api_key_id JOIN api_key_quotas q ON q.api_key_id = k.id \
    JOIN users o ON o.id = k.owner_id \
    LEFT JOIN users d ON d.id = r.decided_by";

pub async fn get(db: &DbPool, id: i64) -> ServiceResult<QuotaRequest> {
    let mut conn = db::conn(db).await?;
    let row: Row =
        diesel::sql_query(format!("{SELECT} WHERE r.id = $1")).bind::<BigInt, _>(id).get_result(&mut conn).await?;
    row.try_into()
}

/// A key's requests, newest first, for its owner (or an admin).
pub async fn for_key(db: &DbPool, user: &User, key: ApiKeyId) -> ServiceResult<Vec<QuotaRequest>> {
    api_keys::get_for(db, key, user).await?;
    let mut conn = db::conn(db).await?;
    let rows: Vec<Row> = diesel::sql_query(format!("{SELECT} WHERE r.api_key_id = $1 ORDER BY r.created_at DESC"))
        .bind::<SqlUuid, _>(key.0)
        .load(&mut conn)
        .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

/// How many requests wait for an admin's decision (the admins' top bar shows it).
pub async fn waiting_count(db: &DbPool) -> ServiceResult<i64> {
    let mut conn = db::conn(db).await?;
    Ok(quota_requests::table
        .filter(quota_requests::status.eq(RequestStatus::Pending.as_str()))
        .count()
        .get_result(&mut conn)
        .await?)
}

/// How many decided requests the admins' list shows (the latest); pending ones are all shown.
pub const DECIDED_SHOWN: i64 = 200;

/// Every pending request (oldest first: each awaits a decision), then the latest decisions.
pub async fn all(db: &DbPool) -> ServiceResult<Vec<QuotaRequest>> {
    let mut conn = db::conn(db).await?;
    // Two queries: one limit over both hid the newest pending requests once more than the
    // limit were waiting.
    let mut rows: Vec<Row> =
        diesel::sql_query(format!("{SELECT} WHERE r.status = 'pending' ORDER BY r.created_at, r.id"))
            .load(&mut conn)
            .await?;
    let decided: Vec<Row> = diesel::sql_query(format!(
        "{SELECT} WHERE r.status <> 'pending' ORDER BY r.created_at DESC, r.id DESC LIMIT {DECIDED_SHOWN}"
    ))
    .load(&mut conn)
    .await?;
    rows.extend(decided);
    rows.into_iter().map(TryInto::try_into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Quota {
        Quota::default_for_new_key()
    }

    #[test]
    fn requested_limits_must_be_raises_within_the_maximum() {
        let max = QuotaMaximum { per_hour: 50_000, per_day: 500_000 };
        assert_eq!(
            RequestedLimits::parse("5000", "", &current(), max).unwrap(),
            RequestedLimits { per_hour: 5000, per_day: 10_000 }
        );
        assert_eq!(RequestedLimits::parse(" 2,000 ", "20000", &current(), max).unwrap().per_day, 20_000);
        // The limit the merchant keeps, typed as it is (1,000 an hour), asks for no change to it.
        assert_eq!(
            RequestedLimits::parse("1,000", "20000", &current(), max).unwrap(),
            RequestedLimits { per_hour: 1000, per_day: 20_000 }
        );
        for (h, d) in
            [("", ""), ("1000", ""), ("500", ""), ("-5", ""), ("abc", ""), ("1.5", ""), ("60000", ""), ("", "9999999")]
        {
            assert!(RequestedLimits::parse(h, d, &current(), max).is_err(), "{h:?} {d:?}");
        }
    }

    #[test]
    fn the_hour_cannot_allow_more_than_the_day() {
        let max = QuotaMaximum { per_hour: 100_000, per_day: 500_000 };
        // The daily field left empty keeps today's 10,000, below the hourly ask.
        let err = RequestedLimits::parse("50000", "", &current(), max).unwrap_err();
        assert!(
            matches!(&err, ServiceError::Invalid { message: m, .. } if m.contains("cannot exceed the daily limit")),
            "{err:?}"
        );
        assert!(RequestedLimits::parse("50000", "50000", &current(), max).is_ok());
        // A limit left as it is may be above today's maximum (an operator set it, or the
        // maximum was lowered): asking for more of the other is still possible.
        let above = Quota { per_hour: crate::keys::QuotaLimit::new(200_000).unwrap(), ..current() };
        assert!(RequestedLimits::parse("", "900000", &above, QuotaMaximum { per_hour: 100_000, per_day: 1_000_000 })
            .is_ok());
        assert!(RequestedLimits::parse("10000", "", &current(), max).is_ok());
        assert!(checked_limits(max, 3000, 2000).is_err());
        assert!(checked_limits(max, 2000, 2000).is_ok());
        assert!(checked_limits(max, 0, 2000).is_err());
        assert!(checked_limits(max, 2000, 600_000).is_err());
    }

    fn field_of<T: std::fmt::Debug>(r: ServiceResult<T>) -> Option<&'static str> {
        match r {
            Err(ServiceError::Invalid { field, .. }) => field,
            other => panic!("expected bad input, got {other:?}"),
        }
    }

    #[test]
    fn bad_input_names_the_field_to_correct() {
        let max = QuotaMaximum { per_hour: 50_000, per_day: 500_000 };
        for (h, d, field) in [
            ("abc", "20000", "per_hour"),
            ("500", "", "per_hour"),
            ("60000", "", "per_hour"),
            ("", "", "per_hour"),
            ("5000", "-1", "per_day"),
            ("5000", "9999999", "per_day"),
            // The hour above the day: the message asks for a higher daily limit.
            ("20000", "", "per_day"),
        ] {
            assert_eq!(field_of(RequestedLimits::parse(h, d, &current(), max)), Some(field), "{h:?} {d:?}");
        }
        assert_eq!(field_of(check_reason("  ")), Some("reason"));
        assert_eq!(field_of(check_reason("more\u{202e}")), Some("reason"));
        assert_eq!(field_of(checked_limits(max, 60_000, 100_000)), Some("per_hour"));
        assert_eq!(field_of(checked_limits(max, 5_000, 600_000)), Some("per_day"));
        assert_eq!(field_of(checked_limits(max, 0, 2_000)), Some("per_hour"));
        assert_eq!(field_of(checked_limits(max, 3_000, 2_000)), Some("per_day"));
        let live = LiveKey { per_hour: 5_000, per_day: 50_000, burst: None, revoked: false };
        assert_eq!(field_of(check_approval(&live, 6_000, 40_000)), Some("per_day"));
        assert_eq!(field_of(check_approval(&live, 4_000, 60_000)), Some("per_hour"));
    }

    #[test]
    fn an_approval_keeps_or_raises_the_live_limits_of_a_key_in_use() {
        let live = LiveKey { per_hour: 5_000, per_day: 50_000, burst: None, revoked: false };
        assert!(check_approval(&live, 5_000, 50_000).is_ok());
        assert!(check_approval(&live, 6_000, 60_000).is_ok());
        for (h, d) in [(4_999, 50_000), (5_000, 49_999), (100, 60_000)] {
            let err = check_approval(&live, h, d).unwrap_err();
            assert!(
                matches!(&err, ServiceError::Invalid { message: m, .. } if m.contains("now allows 5,000 requests per hour and 50,000 per day")),
                "{h} {d}: {err:?}"
            );
        }
        let revoked = LiveKey { revoked: true, ..live };
        assert!(
            matches!(check_approval(&revoked, 6_000, 60_000), Err(ServiceError::Conflict(m)) if m.contains("revoked"))
        );
    }
}
