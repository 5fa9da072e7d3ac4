//! The bell: in-app notifications of the signed-in account (quota alerts, decisions on quota
//! requests, quota changes), newest first.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationView {
    pub id: i64,
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    pub created_at: DateTime<Utc>,
    pub unread: bool,
}

/// Notifications on one page of the list.
pub const NOTIFICATIONS_PER_PAGE: usize = 50;

/// A page of the list, newest first: the newest ones, or those before the one numbered `before`.
#[server(prefix = "/rpc", endpoint = "notifications/list")]
pub async fn my_notifications(before: Option<i64>) -> Result<Vec<NotificationView>, AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let items = services::notifications::recent(&services.db, user.id, NOTIFICATIONS_PER_PAGE as i64, before).await?;
    Ok(items
        .into_iter()
        .map(|n| NotificationView {
            id: n.id,
            title: n.title,
            body: n.body,
            link: n.link,
            created_at: n.created_at,
            unread: n.read_at.is_none(),
        })
        .collect())
}

/// What the top bar counts: the bell's unread notifications, and for admins the quota
/// requests that wait for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NavCounts {
    pub unread: i64,
    /// `None` for merchants, who decide none.
    pub waiting_requests: Option<i64>,
}

#[server(prefix = "/rpc", endpoint = "nav/counts")]
pub async fn get_nav_counts() -> Result<NavCounts, AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let unread = services::notifications::unread_count(&services.db, user.id).await?;
    let waiting_requests = match user.is_admin() {
        true => Some(services::quota_requests::waiting_count(&services.db).await?),
        false => None,
    };
    Ok(NavCounts { unread, waiting_requests })
}

/// Marks read the page of the list that was shown, from its oldest to its newest item: by the
/// page's script once it shows them, or by its button without JavaScript.
#[server(prefix = "/rpc", endpoint = "notifications/read")]
pub async fn mark_notifications_read(oldest_shown: i64, newest_shown: i64) -> Result<(), AppError> {
    use super::session;
    let services = session::services()?;
    super::plain_form::answer::<MarkNotificationsRead, _>(Some(MARKED_READ), NOTIFICATIONS_AT, &[], async {
        let user = session::require_user(&services).await?;
        Ok(services::notifications::mark_read(&services.db, user.id, oldest_shown, newest_shown).await?)
    })
    .await
}

/// The section (element id) of the list, where marking it read without JavaScript returns.
pub const NOTIFICATIONS_AT: &str = "notification-list";
/// The list's confirmation, without JavaScript, that it was marked read.
pub const MARKED_READ: &str = "marked_read";

/// Whether the signed-in account gets the monthly usage summary by email.
#[server(prefix = "/rpc", endpoint = "notifications/monthly-summary")]
pub async fn monthly_summary_setting() -> Result<bool, AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    Ok(services::accounts::email_preferences::gets_monthly_summary(&services.db, user.id).await?)
}

/// Turns the signed-in account's monthly summary on or off; a checked box sends `on`.
#[server(prefix = "/rpc", endpoint = "notifications/monthly-summary/set")]
pub async fn set_monthly_summary(monthly_summary: Option<String>) -> Result<bool, AppError> {
    use super::session;
    let services = session::services()?;
    let chosen = super::checkbox(monthly_summary.as_deref(), "The monthly summary", "monthly_summary");
    let done = if matches!(chosen, Ok(true)) { MONTHLY_SUMMARY_ON } else { MONTHLY_SUMMARY_OFF };
    super::plain_form::answer::<SetMonthlySummary, _>(Some(done), MONTHLY_SUMMARY_AT, &[], async {
        let user = session::require_user(&services).await?;
        let on = chosen?;
        services::accounts::email_preferences::set_monthly_summary(&services.db, user.id, on).await?;
        Ok(on)
    })
    .await
}

/// The section (element id) of the monthly summary's form, where its answer shows.
pub const MONTHLY_SUMMARY_AT: &str = "monthly-summary";

/// The notifications page's confirmations, without JavaScript, of the monthly summary choice.
pub const MONTHLY_SUMMARY_ON: &str = "summary_on";
pub const MONTHLY_SUMMARY_OFF: &str = "summary_off";
