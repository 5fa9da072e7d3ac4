//! Email: messages are written to an outbox table in the same transaction as what they report,
//! and a sender delivers them through lettre, over SMTP (`SMTP_URL`) or, without one, into a
//! local mail folder. Failed sends are retried with backoff; nothing is dropped silently.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::watch;

use crate::db::{self, DbPool};
use crate::schema::outbound_emails;
use crate::{ServiceError, ServiceResult};

/// A message to send, with a plain-text and an HTML part.
pub struct Email<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
}

/// Queues a message inside the caller's transaction. With a dedupe key, a message is queued at
/// most once; returns whether it was.
pub async fn enqueue(conn: &mut AsyncPgConnection, email: &Email<'_>, dedupe_key: Option<&str>) -> ServiceResult<bool> {
    let inserted = diesel::insert_into(outbound_emails::table)
        .values((
            outbound_emails::to_address.eq(email.to),
            outbound_emails::subject.eq(email.subject),
            outbound_emails::text_body.eq(email.text),
            outbound_emails::html_body.eq(email.html),
            outbound_emails::dedupe_key.eq(dedupe_key),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// Escapes text for an HTML part.
pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `smtp://[user:password@]host[:port]` (port 25 by default). TLS (STARTTLS, smtps) is not
/// built in yet: this needs a TLS backend for lettre; see docs/notes.md.
fn smtp_transport(url: &str) -> ServiceResult<AsyncSmtpTransport<Tokio1Executor>> {
    use lettre::transport::smtp::authentication::Credentials;
    let invalid = |why: &str| {
        ServiceError::invalid(format!("invalid SMTP_URL ({why}); expected smtp://[user:password@]host[:port]"))
    };
    let rest = url.strip_prefix("smtp://").ok_or_else(|| invalid("scheme"))?;
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((auth, hostport)) => (Some(auth), hostport),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| invalid("port"))?),
        None => (hostport, 25),
    };
    if host.is_empty() {
        return Err(invalid("host"));
    }
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port).timeout(Some(Duration::from_secs(10)));
    if let Some(auth) = auth {
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        builder = builder.credentials(Credentials::new(user.to_owned(), password.to_owned()));
    }
    Ok(builder.build())
}

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Folder(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl Mailer {
    /// SMTP when `smtp_url` is given (e.g. `smtp://user:pass@host:587?tls=required`), otherwise
    /// `.eml` files in `mail_dir`.
    pub fn new(smtp_url: Option<&str>, mail_dir: PathBuf, from: &str) -> ServiceResult<Self> {
        let from: Mailbox = from.parse().map_err(|e| ServiceError::invalid(format!("invalid sender address: {e}")))?;
        let transport = match smtp_url {
            Some(url) => Transport::Smtp(smtp_transport(url)?),
            None => {
                std::fs::create_dir_all(&mail_dir)
                    .map_err(|e| ServiceError::Internal(format!("cannot create {}: {e}", mail_dir.display())))?;
                Transport::Folder(AsyncFileTransport::new(&mail_dir), mail_dir)
            }
        };
        Ok(Self { transport, from })
    }

    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp(_) => "SMTP".to_owned(),
            Transport::Folder(_, dir) => format!("mail folder {}", dir.display()),
        }
    }

    async fn send(&self, to: &str, subject: &str, text: &str, html: &str) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("invalid recipient: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(text.to_owned(), html.to_owned()))
            .map_err(|e| e.to_string())?;
        match &self.transport {
            Transport::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| e.to_string()),
            Transport::Folder(t, _) => t.send(message).await.map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    /// Delivers due messages until `stop` turns true.
    pub async fn run(self, db: DbPool, mut stop: watch::Receiver<bool>) {
        loop {
            match self.deliver_due(&db).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "mail sender: will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Sends what is due (each message claimed by one sender only); returns how many were tried.
    pub async fn deliver_due(&self, db: &DbPool) -> ServiceResult<usize> {
        type Row = (i64, String, String, String, String, i32);
        let mut conn = db::conn(db).await?;
        let due: Vec<Row> = conn
            .build_transaction()
            .run(|conn| {
                Box::pin(async move {
                    let rows: Vec<Row> = outbound_emails::table
                        .filter(outbound_emails::sent_at.is_null())
                        .filter(outbound_emails::next_attempt_at.le(Utc::now()))
                        .order(outbound_emails::id)
                        .limit(20)
                        .for_update()
                        .skip_locked()
                        .select((
                            outbound_emails::id,
                            outbound_emails::to_address,
                            outbound_emails::subject,
                            outbound_emails::text_body,
                            outbound_emails::html_body,
                            outbound_emails::attempts,
                        ))
                        .load(conn)
                        .await?;
                    // Claimed for a minute: another sender skips them meanwhile.
                    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
                    diesel::update(outbound_emails::table.filter(outbound_emails::id.eq_any(&ids)))
                        .set(outbound_emails::next_attempt_at.eq(Utc::now() + chrono::Duration::minutes(1)))
                        .execute(conn)
                        .await?;
                    Ok::<_, ServiceError>(rows)
                })
            })
            .await?;
        for (id, to, subject, text, html, attempts) in &due {
            let result = self.send(to, subject, text, html).await;
            let update = diesel::update(outbound_emails::table.filter(outbound_emails::id.eq(id)));
            match result {
                Ok(()) => {
                    update.set(outbound_emails::sent_at.eq(Utc::now())).execute(&mut conn).await?;
                }
                Err(error) => {
                    // 5 s, 10 s, 20 s … capped at 10 minutes.
                    let delay = (5i64 << (*attempts).clamp(0, 7)).min(600);
                    tracing::warn!(email_id = id, attempts = attempts + 1, %error, "sending email failed; will retry");
                    update
                        .set((
                            outbound_emails::attempts.eq(attempts + 1),
                            outbound_emails::last_error.eq(error),
                            outbound_emails::next_attempt_at.eq(Utc::now() + chrono::Duration::seconds(delay)),
                        ))
                        .execute(&mut conn)
                        .await?;
                }
            }
        }
        Ok(due.len())
    }
}
