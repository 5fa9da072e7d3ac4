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

#[server(prefix = "/rpc", endpoint = "notifications/list")]
pub async fn my_notifications() -> Result<Vec<NotificationView>, AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let items = services::notifications::recent(&services.db, user.id, 50).await?;
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

#[server(prefix = "/rpc", endpoint = "notifications/unread")]
pub async fn unread_notifications() -> Result<i64, AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    Ok(services::notifications::unread_count(&services.db, user.id).await?)
}

#[server(prefix = "/rpc", endpoint = "notifications/read")]
pub async fn mark_notifications_read(newest_shown: i64) -> Result<(), AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    Ok(services::notifications::mark_read_up_to(&services.db, user.id, newest_shown).await?)
}
