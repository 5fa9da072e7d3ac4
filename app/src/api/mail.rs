use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// A message in the outbox, sent or waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailView {
    pub id: i64,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub attachments: Vec<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// The admins' view of outgoing mail: where it goes, and the newest messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxView {
    pub delivery: String,
    pub messages: Vec<MailView>,
}

#[server(prefix = "/rpc", endpoint = "admin/mail")]
pub async fn admin_mail() -> Result<MailboxView, AppError> {
    use super::session;
    let services = session::services()?;
    session::require_admin(&services).await?;
    let messages = services::mailer::recent(&services.db, 100).await?;
    Ok(MailboxView {
        delivery: services.settings.mail_delivery.clone(),
        messages: messages
            .into_iter()
            .map(|m| MailView {
                id: m.id,
                to: m.to,
                subject: m.subject,
                text: m.text,
                html: m.html,
                attachments: m.attachments,
                attempts: m.attempts,
                last_error: m.last_error,
                created_at: m.created_at,
                sent_at: m.sent_at,
            })
            .collect(),
    })
}
