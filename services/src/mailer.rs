//! Email: messages are written to an outbox table in the same transaction as what they report,
//! and a sender delivers them through lettre, over SMTP (`SMTP_URL`) or, without one, into a
//! local mail folder. Failed sends are retried with backoff for up to [`RETRY_FOR`]; a message
//! the mail server refuses for good, or that kept failing that long, is given up and stays on the
//! admins' mail page, where it can be sent again. Nothing is dropped silently.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::scoped_futures::ScopedFutureExt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::watch;

use crate::db::{self, DbPool};
use crate::schema::{outbound_email_attachments, outbound_emails};
use crate::{ServiceError, ServiceResult};

/// A message to send, with a plain-text and an HTML part, and maybe files.
pub struct Email<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    pub attachments: &'a [Attachment],
    /// Where the recipient stops this kind of message (`List-Unsubscribe`, with one-click POST).
    pub list_unsubscribe: Option<&'a str>,
    /// The text is a credential (a password reset link) that works until then: the admins' mail
    /// page does not show it, it is not retried past then, and its text is erased once it is
    /// sent or given up.
    pub credential_until: Option<chrono::DateTime<Utc>>,
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

/// Whether a message is one of many sent at once (the monthly summaries): those go after every
/// other message that is due, so that an alert never waits behind a month's summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Notice,
    Bulk,
}

/// Queues a message inside the caller's transaction. With a dedupe key, a message is queued at
/// most once; returns whether it was.
pub async fn enqueue(conn: &mut AsyncPgConnection, email: &Email<'_>, dedupe_key: Option<&str>) -> ServiceResult<bool> {
    Ok(enqueue_returning_id(conn, email, dedupe_key, Urgency::Notice).await?.is_some())
}

/// Like [`enqueue`], returning the queued message's id.
pub async fn enqueue_returning_id(
    conn: &mut AsyncPgConnection,
    email: &Email<'_>,
    dedupe_key: Option<&str>,
    urgency: Urgency,
) -> ServiceResult<Option<i64>> {
    let id: Option<i64> = diesel::insert_into(outbound_emails::table)
        .values((
            outbound_emails::to_address.eq(email.to),
            outbound_emails::subject.eq(email.subject),
            outbound_emails::text_body.eq(email.text),
            outbound_emails::html_body.eq(email.html),
            outbound_emails::dedupe_key.eq(dedupe_key),
            outbound_emails::bulk.eq(urgency == Urgency::Bulk),
        ))
        .on_conflict_do_nothing()
        .returning(outbound_emails::id)
        .get_result(conn)
        .await
        .optional()?;
    // The columns diesel's table does not list (see schema.rs), in one statement when any is set.
    if let (Some(id), true) = (id, email.list_unsubscribe.is_some() || email.credential_until.is_some()) {
        diesel::sql_query(
            "UPDATE outbound_emails SET list_unsubscribe = $1, confidential = $2 IS NOT NULL, retry_until = $2 \
             WHERE id = $3",
        )
        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(email.list_unsubscribe)
        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>, _>(email.credential_until)
        .bind::<diesel::sql_types::BigInt, _>(id)
        .execute(conn)
        .await?;
    }
    if let Some(id) = id {
        for a in email.attachments {
            diesel::insert_into(outbound_email_attachments::table)
                .values((
                    outbound_email_attachments::email_id.eq(id),
                    outbound_email_attachments::filename.eq(&a.filename),
                    outbound_email_attachments::content_type.eq(&a.content_type),
                    outbound_email_attachments::content.eq(&a.content),
                ))
                .execute(conn)
                .await?;
        }
    }
    Ok(id)
}

/// A message in the outbox, as the admins' mail page lists it (its parts are read when it is
/// opened: [`body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub to: String,
    pub subject: String,
    pub attachments: Vec<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<Utc>,
    pub sent_at: Option<chrono::DateTime<Utc>>,
    /// When it was given up (not sent, not retried unless sent again).
    pub failed_at: Option<chrono::DateTime<Utc>>,
}

/// Which messages a page of the outbox lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxFilter {
    /// Only those before (older than) the message numbered so.
    pub before: Option<i64>,
    /// Only the given-up ones (those an admin may send again).
    pub given_up: bool,
}

/// The newest messages (of those the filter lets through), sent or waiting, with their
/// attachments' names.
pub async fn recent(db: &DbPool, filter: OutboxFilter, limit: i64) -> ServiceResult<Vec<OutboxEntry>> {
    type Row = (
        i64,
        String,
        String,
        i32,
        Option<String>,
        chrono::DateTime<Utc>,
        Option<chrono::DateTime<Utc>>,
        Option<chrono::DateTime<Utc>>,
    );
    let mut conn = db::conn(db).await?;
    let mut query = outbound_emails::table.order(outbound_emails::id.desc()).limit(limit).into_boxed();
    if let Some(before) = filter.before {
        query = query.filter(outbound_emails::id.lt(before));
    }
    if filter.given_up {
        query = query.filter(outbound_emails::sent_at.is_null()).filter(outbound_emails::failed_at.is_not_null());
    }
    let rows: Vec<Row> = query
        .select((
            outbound_emails::id,
            outbound_emails::to_address,
            outbound_emails::subject,
            outbound_emails::attempts,
            outbound_emails::last_error,
            outbound_emails::created_at,
            outbound_emails::sent_at,
            outbound_emails::failed_at,
        ))
        .load(&mut conn)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let files: Vec<(i64, String)> = outbound_email_attachments::table
        .filter(outbound_email_attachments::email_id.eq_any(&ids))
        .order(outbound_email_attachments::id)
        .select((outbound_email_attachments::email_id, outbound_email_attachments::filename))
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, to, subject, attempts, last_error, created_at, sent_at, failed_at)| OutboxEntry {
            attachments: files.iter().filter(|(e, _)| *e == id).map(|(_, f)| f.clone()).collect(),
            id,
            to,
            subject,
            attempts,
            last_error,
            created_at,
            sent_at,
            failed_at,
        })
        .collect())
}

/// What the admins' mail page shows of a message whose text is a credential.
pub const CONFIDENTIAL_TEXT: &str =
    "This message holds a link that sets its recipient's password; its text is not shown here.";

/// The plain-text and HTML parts of one message (a confidential one's stand-in instead).
pub async fn body(db: &DbPool, id: i64) -> ServiceResult<(String, String)> {
    #[derive(QueryableByName)]
    struct Parts {
        #[diesel(sql_type = diesel::sql_types::Text)]
        text_body: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        html_body: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        confidential: bool,
    }
    let mut conn = db::conn(db).await?;
    let parts: Parts =
        diesel::sql_query("SELECT text_body, html_body, confidential FROM outbound_emails WHERE id = $1")
            .bind::<diesel::sql_types::BigInt, _>(id)
            .get_result(&mut conn)
            .await?;
    if parts.confidential {
        return Ok((CONFIDENTIAL_TEXT.to_owned(), html_paragraph(CONFIDENTIAL_TEXT)));
    }
    Ok((parts.text_body, parts.html_body))
}

/// How many messages wait to be sent, and how many were given up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub waiting: i64,
    pub failed: i64,
}

pub async fn counts(db: &DbPool) -> ServiceResult<OutboxCounts> {
    use diesel::dsl::count_star;
    let mut conn = db::conn(db).await?;
    let unsent = outbound_emails::table.filter(outbound_emails::sent_at.is_null());
    let waiting =
        unsent.filter(outbound_emails::failed_at.is_null()).select(count_star()).get_result(&mut conn).await?;
    let failed =
        unsent.filter(outbound_emails::failed_at.is_not_null()).select(count_star()).get_result(&mut conn).await?;
    Ok(OutboxCounts { waiting, failed })
}

/// Queues a given-up message again (an admin's "Send again"), with a fresh retry period. Not a
/// credential (its text is erased; whoever needs one asks for a new one).
pub async fn send_again(db: &DbPool, id: i64) -> ServiceResult<()> {
    let mut conn = db::conn(db).await?;
    let requeued = diesel::update(
        outbound_emails::table
            .filter(outbound_emails::id.eq(id))
            .filter(diesel::dsl::sql::<diesel::sql_types::Bool>("NOT confidential"))
            .filter(outbound_emails::sent_at.is_null())
            .filter(outbound_emails::failed_at.is_not_null()),
    )
    .set((
        outbound_emails::failed_at.eq(None::<chrono::DateTime<Utc>>),
        outbound_emails::retry_until.eq(None::<chrono::DateTime<Utc>>),
        outbound_emails::next_attempt_at.eq(diesel::dsl::now),
    ))
    .execute(&mut conn)
    .await?;
    if requeued == 0 {
        let exists: bool =
            diesel::select(diesel::dsl::exists(outbound_emails::table.find(id))).get_result(&mut conn).await?;
        return Err(if exists {
            ServiceError::Conflict(
                "only a message that was given up, and that is not a password reset link, can be sent again".into(),
            )
        } else {
            ServiceError::NotFound
        });
    }
    Ok(())
}

/// The Subject header. lettre encodes only the words that need it and copies plain ASCII words
/// as they are, so a key name such as `=?utf-8?b?…?=` would reach the reader as text of the
/// merchant's choosing (characters `text::check_typed` refuses included). A subject with
/// anything that looks like an encoded word is therefore encoded whole.
fn subject_header(subject: &str) -> lettre::message::header::HeaderValue {
    use lettre::message::header::{HeaderName, HeaderValue};
    let name = HeaderName::new_from_ascii_str("Subject");
    if !subject.contains("=?") {
        return HeaderValue::new(name, subject.to_owned());
    }
    let mut encoded = String::new();
    {
        let mut writer = email_encoding::headers::writer::EmailWriter::new(&mut encoded, "Subject: ".len(), 0, false);
        // Writing into a String cannot fail.
        let _ = email_encoding::headers::rfc2047::encode(subject, &mut writer);
    }
    HeaderValue::dangerous_new_pre_encoded(name, subject.to_owned(), encoded)
}

/// A paragraph of text people typed (a reason, a note) for an HTML part: escaped, its line
/// breaks kept and long words wrapped, as in the text part.
pub fn html_paragraph(text: &str) -> String {
    // `<br>`, not `white-space: pre-wrap`: some mail readers ignore that style.
    let lines: Vec<String> = text.lines().map(format::html_escape).collect();
    format!("<p style=\"overflow-wrap:anywhere\">{}</p>", lines.join("<br>\n"))
}

/// `SMTP_URL` as lettre reads it: `smtp://[user:password@]host[:port]` (plain; add
/// `?tls=required` for STARTTLS, `?tls=opportunistic` to use it when offered) or
/// `smtps://user:password@host[:465]` (TLS from the start). Credentials are sent only over TLS
/// unless the URL is plain `smtp://` on purpose (e.g. a relay on loopback). The server's
/// certificate must chain to a public root, or to one of `extra_roots` (PEM) when given.
fn smtp_transport(url: &str, extra_roots: Option<&[u8]>) -> ServiceResult<AsyncSmtpTransport<Tokio1Executor>> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| invalid_smtp_url(&e))?;
    if let Some(pem) = extra_roots {
        builder = builder.tls(tls_trusting(url, pem)?);
    }
    Ok(builder.timeout(Some(Duration::from_secs(10))).build())
}

fn invalid_smtp_url(e: &dyn std::fmt::Display) -> ServiceError {
    ServiceError::invalid(format!(
        "invalid SMTP_URL ({e}); expected smtp://[user:password@]host[:port][?tls=required] or smtps://…"
    ))
}

/// The URL's TLS mode, trusting `pem`'s certificates as roots besides the public ones (a relay
/// with a private CA).
fn tls_trusting(url: &str, pem: &[u8]) -> ServiceResult<Tls> {
    let parsed = url::Url::parse(url).map_err(|e| invalid_smtp_url(&e))?;
    let host = parsed.host_str().ok_or_else(|| invalid_smtp_url(&"no host"))?.to_owned();
    // An empty or key-only file would otherwise add nothing and fail only at the first send.
    if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ServiceError::invalid("SMTP_CA_FILE holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    let root = Certificate::from_pem(pem).map_err(|e| ServiceError::invalid(format!("SMTP_CA_FILE: {e}")))?;
    let params = TlsParameters::builder(host)
        .add_root_certificate(root)
        .build_rustls()
        .map_err(|e| ServiceError::invalid(format!("SMTP_CA_FILE: {e}")))?;
    let mode = parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    match (parsed.scheme(), mode.as_deref()) {
        ("smtps", _) => Ok(Tls::Wrapper(params)),
        ("smtp", Some("required")) => Ok(Tls::Required(params)),
        ("smtp", Some("opportunistic")) => Ok(Tls::Opportunistic(params)),
        _ => Err(ServiceError::invalid(
            "SMTP_CA_FILE is set but SMTP_URL asks for no TLS: add ?tls=required or use smtps://",
        )),
    }
}

/// Checks a sender address (`KEYMETER_MAIL_FROM`) the way the mailer will read it; the error
/// says why it cannot be used.
pub fn check_sender(from: &str) -> Result<(), String> {
    from.parse::<Mailbox>().map(drop).map_err(|e| format!("{e} (expected `name <address>` or an address)"))
}

fn parse_sender(from: &str) -> ServiceResult<Mailbox> {
    from.parse::<Mailbox>().map_err(|e| ServiceError::invalid(format!("invalid KEYMETER_MAIL_FROM {from:?}: {e}")))
}

/// The longest one message may take to send, whatever the server does. lettre's timeout does
/// not cover every step (a server that accepts the connection and never greets held the
/// sender forever), and a server that answers each step slowly must not hold it either.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a message whose sends keep failing is retried, from its first failure: about as long
/// as mail servers keep a message they cannot deliver. Then it is given up.
pub const RETRY_FOR: chrono::TimeDelta = chrono::TimeDelta::days(3);

/// Why a send failed, and whether sending it again could ever succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SendFailure {
    error: String,
    /// The mail server refused this message for good, or it cannot be built (a bad recipient).
    permanent: bool,
}

impl SendFailure {
    fn transient(error: impl ToString) -> Self {
        Self { error: error.to_string(), permanent: false }
    }

    fn permanent(error: impl ToString) -> Self {
        Self { error: error.to_string(), permanent: true }
    }

    /// A permanent (5xx) reply gives the message up, except 530–539: those refuse our
    /// credentials or TLS, not this message, and a corrected configuration sends it.
    fn from_smtp(e: &lettre::transport::smtp::Error) -> Self {
        let about_our_account = e.status().map(u16::from).is_some_and(|code| (530..540).contains(&code));
        Self { error: e.to_string(), permanent: e.is_permanent() && !about_our_account }
    }
}

/// What happens to a message after a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFailure {
    /// Tried again at `at`; given up if it still fails after `until`.
    Retry {
        at: chrono::DateTime<Utc>,
        until: chrono::DateTime<Utc>,
    },
    GiveUp,
}

impl AfterFailure {
    /// `attempts` sends failed before this one; `retry_until` is set from the first failure.
    fn decide(
        failure: &SendFailure,
        attempts: i32,
        retry_until: Option<chrono::DateTime<Utc>>,
        now: chrono::DateTime<Utc>,
    ) -> Self {
        let until = retry_until.unwrap_or(now + RETRY_FOR);
        if failure.permanent || now >= until {
            return Self::GiveUp;
        }
        // 5 s, 10 s, 20 s … capped at 10 minutes.
        let delay = (5i64 << attempts.clamp(0, 7)).min(600);
        Self::Retry { at: now + chrono::TimeDelta::seconds(delay), until }
    }
}

/// What a delivery round did with the messages it tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Ids of the messages sent.
    pub sent: Vec<i64>,
    /// Messages that could not be sent: retried with backoff, or given up (`FailedSend::given_up`).
    pub failed: Vec<FailedSend>,
    /// Ids of messages not tried, left queued for the next sender (another sender had claimed
    /// them, or the time ran out).
    pub not_tried: Vec<i64>,
}

/// A send that failed, with its error as kept in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedSend {
    pub id: i64,
    pub to: String,
    pub error: String,
    /// Not retried: refused for good, or failing for longer than [`RETRY_FOR`].
    pub given_up: bool,
}

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Folder(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// A queued message as the sender claimed it: `claim_token` marks this sender's claim.
#[derive(QueryableByName)]
struct Outgoing {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text, column_name = to_address)]
    to: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    subject: String,
    #[diesel(sql_type = diesel::sql_types::Text, column_name = text_body)]
    text: String,
    #[diesel(sql_type = diesel::sql_types::Text, column_name = html_body)]
    html: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    claim_token: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    message_key: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    retry_until: Option<chrono::DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    list_unsubscribe: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    confidential: bool,
}

/// Erases the text of a credential message once it is done with (sent, or given up): a
/// database read later must not find a link that may still work.
async fn erase_credential(conn: &mut AsyncPgConnection, id: i64) -> ServiceResult<()> {
    diesel::sql_query("UPDATE outbound_emails SET text_body = $1, html_body = $2 WHERE id = $3 AND confidential")
        .bind::<diesel::sql_types::Text, _>(CONFIDENTIAL_TEXT)
        .bind::<diesel::sql_types::Text, _>(html_paragraph(CONFIDENTIAL_TEXT))
        .bind::<diesel::sql_types::BigInt, _>(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub struct Mailer {
    transport: Transport,
    /// Where SMTP mail goes, without credentials (for logs and the admin mail page).
    smtp_host: String,
    from: Mailbox,
}

impl Mailer {
    /// SMTP when `smtp_url` is given (e.g. `smtp://user:pass@host:587?tls=required`), otherwise
    /// `.eml` files in `mail_dir`.
    pub fn new(smtp_url: Option<&str>, mail_dir: PathBuf, from: &str) -> ServiceResult<Self> {
        Self::with_smtp_ca(smtp_url, None, mail_dir, from)
    }

    /// Like [`Mailer::new`], also trusting the CA certificates in `smtp_ca_file` (PEM) for the
    /// SMTP server's TLS certificate (`SMTP_CA_FILE`: a relay with a private CA).
    pub fn with_smtp_ca(
        smtp_url: Option<&str>,
        smtp_ca_file: Option<&Path>,
        mail_dir: PathBuf,
        from: &str,
    ) -> ServiceResult<Self> {
        let from = parse_sender(from)?;
        let extra_roots = match smtp_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| ServiceError::invalid(format!("cannot read SMTP_CA_FILE {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let transport = match smtp_url {
            Some(url) => Transport::Smtp(smtp_transport(url, extra_roots.as_deref())?),
            None if extra_roots.is_some() => {
                return Err(ServiceError::invalid("SMTP_CA_FILE is set without SMTP_URL"));
            }
            None => {
                std::fs::create_dir_all(&mail_dir).map_err(|e| {
                    ServiceError::invalid(format!(
                        "invalid KEYMETER_MAIL_DIR: cannot create the mail folder {}: {e}",
                        mail_dir.display()
                    ))
                })?;
                Transport::Folder(AsyncFileTransport::new(&mail_dir), mail_dir)
            }
        };
        let smtp_host = smtp_url
            .map(|url| {
                let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                rest.split(['/', '?']).next().unwrap_or_default().to_owned()
            })
            .unwrap_or_default();
        Ok(Self { transport, from, smtp_host })
    }

    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp(_) => format!("SMTP {}", self.smtp_host),
            Transport::Folder(_, dir) => format!("mail folder {}", dir.display()),
        }
    }

    async fn send(&self, m: &Outgoing, attachments: &[Attachment]) -> Result<(), SendFailure> {
        let to: Mailbox = m.to.parse().map_err(|e| SendFailure::permanent(format!("invalid recipient: {e}")))?;
        let body = MultiPart::alternative_plain_html(m.text.clone(), m.html.clone());
        let body = if attachments.is_empty() {
            body
        } else {
            attachments.iter().fold(MultiPart::mixed().multipart(body), |mixed, a| {
                let content_type = ContentType::parse(&a.content_type)
                    .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("a valid MIME type"));
                mixed.singlepart(
                    lettre::message::Attachment::new(a.filename.clone()).body(a.content.clone(), content_type),
                )
            })
        };
        // One Message-ID for every attempt: a copy sent again (see `claim`) reads as the same
        // message to mail clients.
        let message_id = format!("<{}@{}>", m.message_key, self.from.email.domain());
        let header = |name: &'static str, value: String| {
            lettre::message::header::HeaderValue::new(
                lettre::message::header::HeaderName::new_from_ascii_str(name),
                value,
            )
        };
        let mut message = Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(to)
            .raw_header(subject_header(&m.subject))
            // Every keymeter email is machine-sent: auto-responders must not answer it (RFC 3834).
            .raw_header(header("Auto-Submitted", "auto-generated".to_owned()));
        if let Some(url) = &m.list_unsubscribe {
            // The mail reader's own "Unsubscribe" (RFC 2369), done with one POST (RFC 8058)
            // where the link is https, as that RFC requires (mail providers also want both
            // headers DKIM-signed: the relay's job).
            message = message.raw_header(header("List-Unsubscribe", format!("<{url}>")));
            if url.starts_with("https://") {
                message = message.raw_header(header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".to_owned()));
            }
        }
        let message = message.multipart(body).map_err(SendFailure::permanent)?;
        match &self.transport {
            Transport::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| SendFailure::from_smtp(&e)),
            // A folder that cannot be written (full, permissions) may be fixed: retried.
            Transport::Folder(t, _) => t.send(message).await.map(|_| ()).map_err(SendFailure::transient),
        }
    }

    /// Delivers due messages until `stop` turns true; a stop waits for the message being sent,
    /// not for the rest of the queue (other senders, or this one after a restart, send it).
    pub async fn run(self, db: DbPool, mut stop: watch::Receiver<bool>) {
        let mut outage = crate::outage_log::OutageLog::new("mail sender");
        loop {
            if *stop.borrow() {
                return;
            }
            match self.deliver_one(&db, None).await {
                Ok(Some(_)) => {
                    outage.succeeded();
                    continue;
                }
                Ok(None) => outage.succeeded(),
                Err(e) => outage.failed(&e, "will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Sends what is due (each message claimed by one sender only); returns how many were tried.
    pub async fn deliver_due(&self, db: &DbPool) -> ServiceResult<usize> {
        let mut tried = 0;
        while self.deliver_one(db, None).await?.is_some() {
            tried += 1;
        }
        Ok(tried)
    }

    /// Tries each of the queued messages `ids` once, now (e.g. what an operator command just
    /// queued), starting no send after `deadline`. A message another sender (a running server's)
    /// is sending meanwhile is waited for, within the deadline: its try counts. Whatever is not
    /// sent stays queued for a server's sender, which retries with backoff.
    pub async fn deliver_now(&self, db: &DbPool, ids: &[i64], deadline: Instant) -> ServiceResult<Delivery> {
        let mut done = Delivery::default();
        let mut left: Vec<i64> = ids.to_vec();
        while !left.is_empty() && Instant::now() < deadline {
            match self.deliver_one(db, Some((&left, deadline))).await? {
                Some((id, result)) => {
                    // Once each: a failed message is not tried again here, even when its retry
                    // comes due.
                    left.retain(|other| *other != id);
                    match result {
                        Ok(()) => done.sent.push(id),
                        Err(failed) => done.failed.push(failed),
                    }
                }
                None => {
                    // The rest are claimed by another sender. Until it is done with them, the
                    // command would say "not tried yet" of mail that is on its way.
                    left = untried(db, &left).await?;
                    let pause = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
                    if !left.is_empty() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
        done.not_tried = left;
        Ok(done)
    }

    /// Claims one due message (of `only`, when given) and sends it, within `SEND_TIMEOUT` or what
    /// is left before the deadline; `None` when nothing is due.
    async fn deliver_one(
        &self,
        db: &DbPool,
        only: Option<(&[i64], Instant)>,
    ) -> ServiceResult<Option<(i64, Result<(), FailedSend>)>> {
        let mut conn = db::conn(db).await?;
        let Some((m, files)) = claim_with_attachments(&mut conn, only.map(|(ids, _)| ids)).await? else {
            return Ok(None);
        };
        let limit = only.map_or(SEND_TIMEOUT, |(_, d)| SEND_TIMEOUT.min(d.saturating_duration_since(Instant::now())));
        let result = match tokio::time::timeout(limit, self.send(&m, &files)).await {
            Ok(result) => result,
            Err(_) => Err(SendFailure::transient(format!(
                "the mail server did not answer within {} s",
                limit.as_secs_f64().ceil()
            ))),
        };
        let outcome = record_attempt(&mut conn, &m, result).await?;
        Ok(Some((m.id, outcome)))
    }
}

/// Claims one due message (of `only`, when given) with its attachments.
async fn claim_with_attachments(
    conn: &mut AsyncPgConnection,
    only: Option<&[i64]>,
) -> ServiceResult<Option<(Outgoing, Vec<Attachment>)>> {
    // The attachments are read under the claim's row lock: a withdrawal (the owner stopping
    // the monthly summary) deletes them with the message, and waits for this transaction
    // rather than leaving a message claimed here to go without its CSV.
    conn.transaction(|conn| {
        async move {
            let Some(m) = claim(conn, only).await? else { return Ok::<_, ServiceError>(None) };
            let files: Vec<Attachment> = outbound_email_attachments::table
                .filter(outbound_email_attachments::email_id.eq(m.id))
                .order(outbound_email_attachments::id)
                .select((
                    outbound_email_attachments::filename,
                    outbound_email_attachments::content_type,
                    outbound_email_attachments::content,
                ))
                .load::<(String, String, Vec<u8>)>(conn)
                .await?
                .into_iter()
                .map(|(filename, content_type, content)| Attachment { filename, content_type, content })
                .collect();
            Ok(Some((m, files)))
        }
        .scope_boxed()
    })
    .await
}

/// Writes down how a try of the claimed message `m` went: sent, to be retried, or given up (a
/// confidential message's credential is erased once it will not be sent again). The outcome
/// for the caller.
async fn record_attempt(
    conn: &mut AsyncPgConnection,
    m: &Outgoing,
    result: Result<(), SendFailure>,
) -> ServiceResult<Result<(), FailedSend>> {
    // Only while the claim is ours: a sender that outlived its claim leaves the message to
    // whoever took it over.
    let update = diesel::update(
        outbound_emails::table
            .filter(outbound_emails::id.eq(m.id))
            .filter(outbound_emails::claim_token.eq(m.claim_token)),
    );
    let (marked, outcome) = match result {
        Ok(()) => {
            let marked = update.set(outbound_emails::sent_at.eq(diesel::dsl::now)).execute(conn).await?;
            if m.confidential && marked > 0 {
                erase_credential(conn, m.id).await?;
            }
            (marked, Ok(()))
        }
        Err(failure) => {
            let attempts = m.attempts + 1;
            let error = failure.error.clone();
            let (marked, given_up) = match AfterFailure::decide(&failure, m.attempts, m.retry_until, Utc::now()) {
                AfterFailure::Retry { at, until } => {
                    tracing::warn!(email_id = m.id, attempts, %error, "sending email failed; will retry");
                    let marked = update
                        .set((
                            outbound_emails::attempts.eq(attempts),
                            outbound_emails::last_error.eq(&error),
                            outbound_emails::next_attempt_at.eq(at),
                            outbound_emails::retry_until.eq(until),
                        ))
                        .execute(conn)
                        .await?;
                    (marked, false)
                }
                AfterFailure::GiveUp => {
                    tracing::error!(email_id = m.id, attempts, %error, "sending email failed; given up (an admin can send it again from /admin/mail)");
                    let marked = update
                        .set((
                            outbound_emails::attempts.eq(attempts),
                            outbound_emails::last_error.eq(&error),
                            outbound_emails::failed_at.eq(diesel::dsl::now),
                        ))
                        .execute(conn)
                        .await?;
                    if m.confidential && marked > 0 {
                        erase_credential(conn, m.id).await?;
                    }
                    (marked, true)
                }
            };
            (marked, Err(FailedSend { id: m.id, to: m.to.clone(), error, given_up }))
        }
    };
    if marked == 0 {
        // Or it was withdrawn meanwhile (its owner stopped the monthly summary).
        tracing::warn!(
            email_id = m.id,
            "mail sender: the message's claim ran out, or it was withdrawn, while it was being sent"
        );
    }
    Ok(outcome)
}

/// Of the messages `ids`, those no sender has finished a try of yet.
async fn untried(db: &DbPool, ids: &[i64]) -> ServiceResult<Vec<i64>> {
    let mut conn = db::conn(db).await?;
    Ok(outbound_emails::table
        .filter(outbound_emails::id.eq_any(ids))
        .filter(outbound_emails::sent_at.is_null())
        .filter(outbound_emails::failed_at.is_null())
        .filter(outbound_emails::attempts.eq(0))
        .select(outbound_emails::id)
        .load(&mut conn)
        .await?)
}

/// Of the messages `ids`, those not sent, with their last error ("not tried yet" if none: left
/// to the next sender) and whether they were given up.
pub async fn unsent(db: &DbPool, ids: &[i64]) -> ServiceResult<Vec<FailedSend>> {
    let mut conn = db::conn(db).await?;
    type Row = (i64, String, Option<String>, Option<chrono::DateTime<Utc>>);
    let rows: Vec<Row> = outbound_emails::table
        .filter(outbound_emails::id.eq_any(ids))
        .filter(outbound_emails::sent_at.is_null())
        .order(outbound_emails::id)
        .select((
            outbound_emails::id,
            outbound_emails::to_address,
            outbound_emails::last_error,
            outbound_emails::failed_at,
        ))
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, to, error, failed_at)| FailedSend {
            id,
            to,
            error: error.unwrap_or_else(|| "not tried yet".to_owned()),
            given_up: failed_at.is_some(),
        })
        .collect())
}

/// How long a claim keeps other senders off a message: well above `SEND_TIMEOUT`, so that only a
/// sender that stalled or died loses its claim.
const CLAIM_SECS: i32 = 120;

/// Claims the oldest due message (of `only`, when given; bulk mail last) for this sender, by
/// the database's clock. If the sender dies between the server's acceptance and marking it sent, the message
/// is sent again once the claim runs out: delivery is at least once, with one Message-ID.
async fn claim(conn: &mut AsyncPgConnection, only: Option<&[i64]>) -> ServiceResult<Option<Outgoing>> {
    let rows: Vec<Outgoing> = diesel::sql_query(
        "UPDATE outbound_emails SET next_attempt_at = now() + make_interval(secs => $1), claim_token = $2 \
         WHERE id = (SELECT id FROM outbound_emails \
                     WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() \
                       AND ($3::bigint[] IS NULL OR id = ANY($3)) \
                     ORDER BY bulk, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, to_address, subject, text_body, html_body, attempts, claim_token, message_key, retry_until, \
         list_unsubscribe, confidential",
    )
    .bind::<diesel::sql_types::Integer, _>(CLAIM_SECS)
    .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::new_v4())
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::BigInt>>, _>(
        only.map(<[i64]>::to_vec),
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339(rfc3339).expect("a valid time").with_timezone(&Utc)
    }

    /// The Subject header as it goes on the wire, folded lines joined.
    fn wire_subject(subject: &str) -> String {
        let message = Message::builder()
            .from("keymeter <mail@keymeter.local>".parse().expect("a mailbox"))
            .to("ann@example.com".parse().expect("a mailbox"))
            .raw_header(subject_header(subject))
            .body(String::from("hello"))
            .expect("a message");
        let text = String::from_utf8(message.formatted()).expect("ASCII");
        let start = text.find("Subject: ").expect("a subject") + "Subject: ".len();
        let end = start + text[start..].find("\r\n").expect("an end");
        let mut value = text[start..end].to_owned();
        for line in text[end..].split("\r\n").skip(1).take_while(|l| l.starts_with(' ')) {
            value.push_str(line);
        }
        value
    }

    #[test]
    fn a_key_name_cannot_put_encoded_words_of_its_own_into_a_subject() {
        // "Hacked!" as an encoded word, typed as a key name.
        let wire = wire_subject("=?utf-8?b?SGFja2VkIQ==?=: hourly quota used up");
        assert!(!wire.contains("SGFja2VkIQ=="), "{wire}");
        assert!(wire.split(' ').all(|w| w.starts_with("=?utf-8?b?") && w.ends_with("?=")), "{wire}");
        // Subjects without one are left to lettre: plain words stay readable in the source.
        assert_eq!(wire_subject("checkout: hourly quota used up"), "checkout: hourly quota used up");
    }

    #[test]
    fn typed_text_keeps_its_line_breaks_in_html_and_stays_text() {
        assert_eq!(
            html_paragraph("first line\r\n<script>x</script> & more\nlast"),
            "<p style=\"overflow-wrap:anywhere\">first line<br>\n&lt;script&gt;x&lt;/script&gt; &amp; more<br>\nlast</p>"
        );
    }

    #[test]
    fn a_message_refused_for_good_is_given_up_at_once() {
        let refused = SendFailure::permanent("550 no such mailbox");
        assert_eq!(AfterFailure::decide(&refused, 0, None, at("2026-11-29T10:00:00Z")), AfterFailure::GiveUp);
    }

    #[test]
    fn a_failing_message_is_retried_with_backoff_for_three_days_from_its_first_failure() {
        let down = SendFailure::transient("connection refused");
        let first = at("2026-11-29T10:00:00Z");
        let until = at("2026-12-02T10:00:00Z");
        assert_eq!(
            AfterFailure::decide(&down, 0, None, first),
            AfterFailure::Retry { at: at("2026-11-29T10:00:05Z"), until }
        );
        assert_eq!(
            AfterFailure::decide(&down, 3, Some(until), first),
            AfterFailure::Retry { at: at("2026-11-29T10:00:40Z"), until }
        );
        // The backoff stops growing at ten minutes.
        let later = at("2026-12-01T10:00:00Z");
        assert_eq!(
            AfterFailure::decide(&down, 300, Some(until), later),
            AfterFailure::Retry { at: at("2026-12-01T10:10:00Z"), until }
        );
        assert_eq!(AfterFailure::decide(&down, 301, Some(until), until), AfterFailure::GiveUp);
    }
}
