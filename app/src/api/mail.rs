use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// A message in the outbox: sent, waiting, or given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailView {
    pub id: i64,
    pub to: String,
    pub subject: String,
    pub attachments: Vec<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

/// Messages on a page of `/admin/mail`.
pub const MAIL_PER_PAGE: usize = 50;

/// The admins' view of outgoing mail: where it goes, how much is stuck, and a page of
/// messages, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxView {
    pub delivery: String,
    pub waiting: i64,
    pub failed: i64,
    pub messages: Vec<MailView>,
    /// There are older messages (of the same filter) than the last one listed.
    pub more: bool,
}

/// A page of the outbox: the newest messages, or those before the one numbered `before`; only
/// the given-up ones with `given_up`.
#[server(prefix = "/rpc", endpoint = "admin/mail")]
pub async fn admin_mail(before: Option<i64>, #[server(default)] given_up: bool) -> Result<MailboxView, AppError> {
    use super::session;
    use services::mailer::OutboxFilter;
    let services = session::services()?;
    session::require_admin(&services).await?;
    let filter = OutboxFilter { before, given_up };
    // One more than a page tells whether there is an older page.
    let mut messages = services::mailer::recent(&services.db, filter, MAIL_PER_PAGE as i64 + 1).await?;
    let more = messages.len() > MAIL_PER_PAGE;
    messages.truncate(MAIL_PER_PAGE);
    let counts = services::mailer::counts(&services.db).await?;
    Ok(MailboxView {
        delivery: services.settings.mail_delivery.clone(),
        waiting: counts.waiting,
        failed: counts.failed,
        more,
        messages: messages
            .into_iter()
            .map(|m| MailView {
                id: m.id,
                to: m.to,
                subject: m.subject,
                attachments: m.attachments,
                attempts: m.attempts,
                last_error: m.last_error,
                created_at: m.created_at,
                sent_at: m.sent_at,
                failed_at: m.failed_at,
            })
            .collect(),
    })
}

/// A message's plain-text and HTML parts, read when an admin opens it: listing every message
/// with its parts made the page tens of MB once big summaries were among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailBody {
    pub text: String,
    pub html: String,
}

#[server(prefix = "/rpc", endpoint = "admin/mail/body")]
pub async fn admin_mail_body(id: i64) -> Result<MailBody, AppError> {
    use super::session;
    let services = session::services()?;
    session::require_admin(&services).await?;
    let (text, html) = services::mailer::body(&services.db, id).await?;
    Ok(MailBody { text, html })
}

/// Queues a given-up message again, for admins only.
#[server(prefix = "/rpc", endpoint = "admin/mail/send-again")]
pub async fn send_mail_again(id: i64) -> Result<(), AppError> {
    use super::session;
    let services = session::services()?;
    let admin = session::require_admin(&services).await?;
    services::mailer::send_again(&services.db, id).await?;
    tracing::info!(email_id = id, admin_id = admin.id, "given-up email queued again");
    Ok(())
}
