//! Quota-increase requests (merchants ask, admins decide), direct quota changes by admins and
//! the audit trail.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// Where a request stands (`services::quota_requests::RequestStatus`, which the browser build
/// does not have); on the wire as stored: `pending`, `approved`, `denied`, `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Cancelled,
}

impl RequestStatus {
    /// The word the pages show, and their CSS class and test attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
        }
    }
}

#[cfg(feature = "ssr")]
impl From<services::quota_requests::RequestStatus> for RequestStatus {
    fn from(status: services::quota_requests::RequestStatus) -> Self {
        use services::quota_requests::RequestStatus as S;
        match status {
            S::Pending => Self::Pending,
            S::Approved => Self::Approved,
            S::Denied => Self::Denied,
            S::Cancelled => Self::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaRequestView {
    pub id: i64,
    pub key_id: String,
    pub key_name: String,
    pub owner_email: String,
    /// The key's limits when the request was made.
    pub current_per_hour: i64,
    pub current_per_day: i64,
    /// The key's limits now.
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
    pub requests_last_24h: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub changed_at: DateTime<Utc>,
    pub key_id: String,
    pub key_name: String,
    pub changed_by: Option<String>,
    /// `request`, `admin` or `operator`.
    pub source: String,
    /// `approved`, `set` or `denied`. A denial's `new_*` are the limits asked for, never applied.
    pub decision: String,
    pub quota_request_id: Option<i64>,
    pub old_per_hour: i64,
    pub old_per_day: i64,
    /// Burst limits (per second), if any.
    pub old_burst: Option<i64>,
    pub new_per_hour: i64,
    pub new_per_day: i64,
    pub new_burst: Option<i64>,
    pub reason: String,
}

#[cfg(feature = "ssr")]
impl From<services::quota_requests::QuotaRequest> for QuotaRequestView {
    fn from(r: services::quota_requests::QuotaRequest) -> Self {
        Self {
            id: r.id,
            key_id: r.key_id.to_string(),
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
            status: r.status.into(),
            approved_per_hour: r.approved_per_hour,
            approved_per_day: r.approved_per_day,
            decision_note: r.decision_note,
            decided_by: r.decided_by,
            decided_at: r.decided_at,
            created_at: r.created_at,
            requests_last_24h: r.requests_last_24h,
        }
    }
}

#[server(prefix = "/rpc", endpoint = "quota-requests/create")]
pub async fn request_quota_increase(
    key_id: String,
    per_hour: String,
    per_day: String,
    reason: String,
) -> Result<QuotaRequestView, AppError> {
    use super::session;
    use services::keys::ApiKeyId;
    let services = session::services()?;
    let typed = typed_limits(&per_hour, &per_day, &reason);
    super::plain_form::answer::<RequestQuotaIncrease, _>(Some(QUOTA_REQUESTED), REQUESTS_AT, &typed, async {
        let user = session::require_user(&services).await?;
        let key_id = ApiKeyId::parse(&key_id)?;
        let request = services::quota_requests::create(&services, &user, key_id, &per_hour, &per_day, &reason).await?;
        Ok(request.into())
    })
    .await
}

/// What a limits form (a request, an admin's change) had typed, to keep when it is refused.
#[cfg(feature = "ssr")]
fn typed_limits<'a>(per_hour: &'a str, per_day: &'a str, reason: &'a str) -> [(&'static str, &'a str); 3] {
    [("per_hour", per_hour), ("per_day", per_day), ("reason", reason)]
}

/// The section (element id) of a key's quota requests and their form, on its page and its usage
/// page, where a plain form post's answer shows (see `plain_form`).
pub const REQUESTS_AT: &str = "quota-requests";
/// The same for an admin's form that sets a key's quota.
pub const SET_QUOTA_AT: &str = "set-quota";

/// The same for an admin's refused decision: the request's own card (a decided card moves
/// down the page, so a decision's confirmation shows at the top, `DECISIONS_AT`).
/// The admins' email and bell entry of a new request link here too (`quota_requests::tell_admins`).
pub fn request_at(id: i64) -> String {
    format!("request-{id}")
}
pub const DECISIONS_AT: &str = "decisions";

/// The confirmation, without JavaScript, that a quota increase was asked for.
pub const QUOTA_REQUESTED: &str = "quota_requested";
/// The confirmation, without JavaScript, that a quota request was cancelled.
pub const REQUEST_CANCELLED: &str = "request_cancelled";

#[server(prefix = "/rpc", endpoint = "quota-requests/cancel")]
pub async fn cancel_quota_request(id: i64) -> Result<QuotaRequestView, AppError> {
    use super::session;
    let services = session::services()?;
    super::plain_form::answer::<CancelQuotaRequest, _>(Some(REQUEST_CANCELLED), REQUESTS_AT, &[], async {
        let user = session::require_user(&services).await?;
        Ok(services::quota_requests::cancel(&services, &user, id).await?.into())
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "quota-requests/for-key")]
pub async fn key_quota_requests(key_id: String) -> Result<Vec<QuotaRequestView>, AppError> {
    use super::session;
    use services::keys::ApiKeyId;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let requests = services::quota_requests::for_key(&services.db, &user, ApiKeyId::parse(&key_id)?).await?;
    Ok(requests.into_iter().map(Into::into).collect())
}

#[server(prefix = "/rpc", endpoint = "admin/quota-requests")]
pub async fn admin_quota_requests() -> Result<Vec<QuotaRequestView>, AppError> {
    use super::session;
    let services = session::services()?;
    session::require_admin(&services).await?;
    Ok(services::quota_requests::all(&services.db).await?.into_iter().map(Into::into).collect())
}

/// A limit typed into the form field `field`; `name` ("hourly", "daily") names it in the message.
#[cfg(feature = "ssr")]
fn whole_number(raw: &str, field: &'static str, name: &str) -> Result<i64, AppError> {
    Ok(services::keys::quota::parse_limit(raw, name).map_err(|e| e.in_field(field))?)
}

#[server(prefix = "/rpc", endpoint = "admin/quota-requests/approve")]
pub async fn approve_quota_request(
    id: i64,
    per_hour: String,
    per_day: String,
    note: String,
) -> Result<QuotaRequestView, AppError> {
    use super::session;
    use services::quota_requests::{decide, Decision};
    let services = session::services()?;
    let request = id.to_string();
    let typed = [("id", request.as_str()), ("per_hour", &per_hour), ("per_day", &per_day), ("note", &note)];
    let card = request_at(id);
    let at = super::plain_form::Sections { done: DECISIONS_AT, refused: &card };
    super::plain_form::answer::<ApproveQuotaRequest, _>(Some(APPROVED), at, &typed, async {
        let admin = session::require_admin(&services).await?;
        let decision = Decision::Approve {
            per_hour: whole_number(&per_hour, "per_hour", "hourly")?,
            per_day: whole_number(&per_day, "per_day", "daily")?,
        };
        Ok(decide(&services, &admin, id, decision, &note).await?.into())
    })
    .await
}

/// The requests page's confirmations, without JavaScript, of a decision.
pub const APPROVED: &str = "approved";
pub const DENIED: &str = "denied";

#[server(prefix = "/rpc", endpoint = "admin/quota-requests/deny")]
pub async fn deny_quota_request(id: i64, note: String) -> Result<QuotaRequestView, AppError> {
    use super::session;
    use services::quota_requests::{decide, Decision};
    let services = session::services()?;
    let request = id.to_string();
    let card = request_at(id);
    let at = super::plain_form::Sections { done: DECISIONS_AT, refused: &card };
    super::plain_form::answer::<DenyQuotaRequest, _>(Some(DENIED), at, &[("id", &request), ("note", &note)], async {
        let admin = session::require_admin(&services).await?;
        Ok(decide(&services, &admin, id, Decision::Deny, &note).await?.into())
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "admin/quota/set")]
pub async fn admin_set_quota(
    key_id: String,
    per_hour: String,
    per_day: String,
    /// Requests per second; blank for no burst limit.
    burst: String,
    reason: String,
) -> Result<(), AppError> {
    use super::session;
    use services::keys::ApiKeyId;
    use services::quota_changes::{set_by_admin, BurstChange};
    let services = session::services()?;
    let [per_hour_typed, per_day_typed, reason_typed] = typed_limits(&per_hour, &per_day, &reason);
    let typed = [per_hour_typed, per_day_typed, ("burst", &burst), reason_typed];
    super::plain_form::answer::<AdminSetQuota, _>(Some(QUOTA_SET), SET_QUOTA_AT, &typed, async {
        let admin = session::require_admin(&services).await?;
        let key_id = ApiKeyId::parse(&key_id)?;
        let limits = (whole_number(&per_hour, "per_hour", "hourly")?, whole_number(&per_day, "per_day", "daily")?);
        let burst = BurstChange::typed(&burst)?;
        set_by_admin(&services, &admin, key_id, limits, burst, &reason).await?;
        Ok(())
    })
    .await
}

/// The key page's confirmation, without JavaScript, that an admin set its quota.
pub const QUOTA_SET: &str = "quota_set";

/// Entries on a page of the audit trail.
pub const AUDIT_PER_PAGE: usize = 100;

/// A page of the audit trail, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Where the next (older) page starts, if there is one.
    pub older: Option<String>,
}

/// The newest decisions, or those after `before` (a page's `older`).
#[server(prefix = "/rpc", endpoint = "admin/quota-changes")]
pub async fn admin_quota_audit(before: Option<String>) -> Result<AuditPage, AppError> {
    use super::session;
    use services::quota_changes::AuditCursor;
    let services = session::services()?;
    session::require_admin(&services).await?;
    let before = before.as_deref().map(AuditCursor::parse).transpose()?;
    // One more than a page tells whether there is an older page.
    let mut entries = services::quota_changes::audit_trail(&services.db, before, AUDIT_PER_PAGE as i64 + 1).await?;
    let older = (entries.len() > AUDIT_PER_PAGE).then(|| entries[AUDIT_PER_PAGE - 1].cursor().to_string());
    entries.truncate(AUDIT_PER_PAGE);
    let entries = entries
        .into_iter()
        .map(|e| AuditView {
            changed_at: e.changed_at,
            key_id: e.key_id.to_string(),
            key_name: e.key_name,
            changed_by: e.changed_by,
            source: e.source,
            decision: e.decision,
            quota_request_id: e.quota_request_id,
            old_per_hour: e.old_per_hour,
            old_per_day: e.old_per_day,
            old_burst: e.old_burst.map(i64::from),
            new_per_hour: e.new_per_hour,
            new_per_day: e.new_per_day,
            new_burst: e.new_burst.map(i64::from),
            reason: e.reason,
        })
        .collect();
    Ok(AuditPage { entries, older })
}
