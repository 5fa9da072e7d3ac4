//! Choosing a new password without the old one: a one-time link mailed to the account's
//! address, working for [`LINK_VALID_FOR`].
//!
//! - Asking answers at once and the same whether or not an account uses the address: the work
//!   (and its time) happens after the answer, so the form tells no one who has an account. An
//!   address gets at most [`LINKS_PER_HOUR`] links an hour and [`LINKS_PER_DAY`] a day, and one
//!   client may ask [`ASKS_PER_CLIENT_HOUR`] times an hour: the form cannot flood inboxes.
//! - The database keeps only each token's SHA-256. The message holding the link is a credential
//!   ([`mailer::Email::credential_until`]): the admins' mail page does not show it, it is not
//!   retried past the link's end, and its text is erased once it is sent or given up.
//! - Opening the link only shows a form (mail scanners open links); choosing the password uses
//!   it. That ends every session and forgets the account's browsers, as a password change does,
//!   voids the account's other links, lifts a sign-in lockout of the address (its owner proved
//!   they read its mail), and tells the owner.
//! - Locks are taken account first, then link, as a password change takes them (it updates the
//!   account, then voids its links), so the two cannot deadlock.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::token::{Reset, Token};
use super::{login_throttle, Email, Password, User, UserRow};
use crate::mailer;
use crate::outage_log::LogEvery;
use crate::schema::{password_resets, users};
use crate::{db, ServiceError, ServiceResult, Services};
use format::html_escape;

/// Anyone can ask for links: what their asking meets is logged once in a while, not per ask.
static THROTTLED_LOG: LogEvery = LogEvery::new();
static REDIS_TROUBLE_LOG: LogEvery = LogEvery::new();

/// The token in a reset link.
pub type ResetToken = Token<Reset>;

/// How long a link works.
pub const LINK_VALID_FOR: Duration = Duration::hours(1);

/// Links mailed to one address within an hour, at most.
pub const LINKS_PER_HOUR: i64 = 3;

/// Links mailed to one address within a day, at most.
pub const LINKS_PER_DAY: i64 = 10;

/// Asks one client (as the sign-in throttle counts it) may make within an hour, whatever the
/// addresses.
pub const ASKS_PER_CLIENT_HOUR: i64 = 20;

/// The page that asks for a link; a link is this path, a slash and its token.
pub const RESET_PAGE: &str = "/password-reset";

/// What the page of a link that no longer works says.
pub const LINK_GONE: &str = "This link has expired or was used already. Ask for a new one.";

/// What came of asking for a link. The person asking is told the same in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Sent,
    /// No account uses the address.
    NoAccount,
    /// The account is disabled: a new password would not let anyone in.
    Disabled,
    /// The address had its links for the hour or the day, or the client its asks.
    TooMany,
}

/// Takes a request for a link to the account that uses `email_raw` (from `client`): a
/// malformed address is refused; anything else is answered at once, and the link (if any, see
/// [`Asked`]) is mailed in the background, so that the answer's timing tells nothing.
pub fn ask(services: &Services, email_raw: &str, client: &str) -> ServiceResult<()> {
    let email = Email::parse(email_raw).map_err(|e| e.in_field("email"))?;
    let (services, client) = (services.clone(), client.to_owned());
    tokio::spawn(async move {
        if let Err(e) = send_link(&services, &email, &client).await {
            tracing::warn!(error = %e, "password reset link not mailed");
        }
    });
    Ok(())
}

/// Mails a reset link to the account that uses `email`, within the limits (see [`Asked`]).
pub async fn send_link(services: &Services, email: &Email, client: &str) -> ServiceResult<Asked> {
    if !client_may_ask(services, client).await {
        return Ok(Asked::TooMany);
    }
    let token = ResetToken::generate();
    let hash = token.hash();
    let public_url = &services.settings.public_url;
    let mut conn = db::conn(&services.db).await?;
    let asked = conn
        .transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                // The account's row is locked (not its key: sessions being made for it do not
                // wait): two requests at once cannot both see room for one more link.
                let account: Option<(i64, String, Option<DateTime<Utc>>)> = users::table
                    .filter(users::email.eq(email.as_str()))
                    .select((users::id, users::email, users::disabled_at))
                    .for_no_key_update()
                    .first(conn)
                    .await
                    .optional()?;
                let Some((user_id, address, disabled_at)) = account else { return Ok(Asked::NoAccount) };
                if disabled_at.is_some() {
                    return Ok(Asked::Disabled);
                }
                let now = Utc::now();
                let recent: Vec<DateTime<Utc>> = password_resets::table
                    .filter(password_resets::user_id.eq(user_id))
                    .filter(password_resets::created_at.gt(now - Duration::days(1)))
                    .select(password_resets::created_at)
                    .load(conn)
                    .await?;
                let last_hour = recent.iter().filter(|at| **at > now - Duration::hours(1)).count() as i64;
                if last_hour >= LINKS_PER_HOUR || recent.len() as i64 >= LINKS_PER_DAY {
                    return Ok(Asked::TooMany);
                }
                let expires_at = now + LINK_VALID_FOR;
                diesel::insert_into(password_resets::table)
                    .values((
                        password_resets::token_hash.eq(&hash),
                        password_resets::user_id.eq(user_id),
                        password_resets::created_at.eq(now),
                        password_resets::expires_at.eq(expires_at),
                    ))
                    .execute(conn)
                    .await?;
                let url = public_url.link(&format!("{RESET_PAGE}/{}", token.as_str()));
                let message = LinkMessage::new(&address, &url, expires_at);
                mailer::enqueue(conn, &message.email(), None).await?;
                tracing::info!(user_id, "password reset link mailed");
                Ok(Asked::Sent)
            })
        })
        .await?;
    if asked == Asked::TooMany {
        tracing::info!("password reset link not mailed: the address had its links for now");
    }
    Ok(asked)
}

/// Counts an ask against the client's allowance in Redis. Without Redis the ask goes on: the
/// per-address limits in PostgreSQL still hold.
async fn client_may_ask(services: &Services, client: &str) -> bool {
    let key = format!("{}:password-reset:asks:{client}", services.namespace);
    let counted = async {
        let mut conn = crate::redis_pool::conn(&services.redis).await?;
        // The hour starts with the first ask (asking on does not push its end back).
        let (n,): (i64,) = deadpool_redis::redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("NX")
            .arg("EX")
            .arg(3600)
            .ignore()
            .incr(&key, 1)
            .query_async(&mut conn)
            .await?;
        ServiceResult::Ok(n)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), counted).await {
        Ok(Ok(n)) => {
            // Once per client and hour: a script asking on must not fill the log either.
            if n == ASKS_PER_CLIENT_HOUR + 1 {
                crate::warn_every!(THROTTLED_LOG, client, "password reset asked too often from one client");
            }
            n <= ASKS_PER_CLIENT_HOUR
        }
        Ok(Err(e)) => {
            crate::warn_every!(REDIS_TROUBLE_LOG, error = %e, "password reset asks not counted per client");
            true
        }
        Err(_) => {
            crate::warn_every!(REDIS_TROUBLE_LOG, "password reset asks not counted per client: Redis did not answer");
            true
        }
    }
}

/// The address a working link is for, partly hidden (`an***@example.com`: a message may be
/// forwarded), or `None` for a link that expired, was used, or never was.
pub async fn address_of(db: &db::DbPool, token: &ResetToken) -> ServiceResult<Option<String>> {
    let mut conn = db::conn(db).await?;
    let email: Option<String> = password_resets::table
        .inner_join(users::table)
        .filter(password_resets::token_hash.eq(token.hash()))
        .filter(works())
        .filter(users::disabled_at.is_null())
        .select(users::email)
        .first(&mut conn)
        .await
        .optional()?;
    Ok(email.as_deref().map(super::email_preferences::masked))
}

/// What someone typed on a link's page.
pub struct NewPassword<'a> {
    pub new: &'a str,
    pub confirm: &'a str,
}

/// Sets the password of the link's account, once (see the module's notes). A link that no
/// longer works is refused with [`LINK_GONE`]; a password the policy refuses leaves the link
/// working.
pub async fn choose_password(services: &Services, token: &ResetToken, typed: &NewPassword<'_>) -> ServiceResult<User> {
    let new = Password::parse(typed.new).map_err(|e| e.in_field("new_password"))?;
    if typed.confirm != typed.new {
        return Err(ServiceError::invalid_field("confirm_password", "The two passwords differ."));
    }
    let token_hash = token.hash();
    // The link is looked up before the password is hashed: hashing is the costly part, shared
    // with sign-in, and made-up links must not be a way to spend it.
    let user_id = {
        let mut conn = db::conn(&services.db).await?;
        password_resets::table
            .filter(password_resets::token_hash.eq(&token_hash))
            .filter(works())
            .select(password_resets::user_id)
            .first::<i64>(&mut conn)
            .await
            .optional()?
    }
    .ok_or_else(|| ServiceError::invalid(LINK_GONE))?;
    let hash = new.hash().await?;
    let public_url = &services.settings.public_url;
    let mut conn = db::conn(&services.db).await?;
    let (user, ended) = conn
        .transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                // The account first, then the link (the order a password change takes them).
                let (row, disabled_at): (UserRow, Option<DateTime<Utc>>) = users::table
                    .find(user_id)
                    .select((UserRow::as_select(), users::disabled_at))
                    .for_no_key_update()
                    .first(conn)
                    .await?;
                // Used up here, if it still works (under the account's lock, so checked again):
                // the same link used twice at once sets the password once, and a password
                // changed meanwhile voided it.
                let used: Option<i64> = diesel::update(password_resets::table)
                    .filter(password_resets::token_hash.eq(&token_hash))
                    .filter(works())
                    .set(password_resets::used_at.eq(diesel::dsl::now))
                    .returning(password_resets::user_id)
                    .get_result(conn)
                    .await
                    .optional()?;
                if used != Some(user_id) {
                    return Err(ServiceError::invalid(LINK_GONE));
                }
                if disabled_at.is_some() {
                    return Err(ServiceError::invalid(super::ACCOUNT_DISABLED));
                }
                let user = row.into_user()?;
                // Voids the account's other links with it.
                let by = super::PasswordChangedBy::MailedLink;
                let ended = super::replace_password(conn, &user, &hash, by, public_url).await?;
                Ok((user, ended))
            })
        })
        .await?;
    tracing::info!(user_id = user.id, sessions_ended = ended, "password reset through a mailed link");
    lift_lockout(services, &user.email).await;
    Ok(user)
}

/// The links that still work: neither used nor expired.
type Works = diesel::dsl::And<
    diesel::dsl::IsNull<password_resets::used_at>,
    diesel::dsl::Gt<password_resets::expires_at, diesel::dsl::now>,
>;

fn works() -> Works {
    password_resets::used_at.is_null().and(password_resets::expires_at.gt(diesel::dsl::now))
}

/// Voids every link of the account not used yet, inside the caller's transaction (a new
/// password, however it was set, ends what an old link could do).
pub(crate) async fn void_links(conn: &mut diesel_async::AsyncPgConnection, user_id: i64) -> ServiceResult<()> {
    diesel::update(password_resets::table.filter(password_resets::user_id.eq(user_id)))
        // Expired ones are left alone (housekeeping deletes them; nothing to wait for there).
        .filter(works())
        .set(password_resets::used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Failed sign-ins at the address are forgotten, so its owner signs in at once with the new
/// password. Not lifted (Redis unavailable) only means a lockout in force runs out by itself.
async fn lift_lockout(services: &Services, email: &str) {
    let lifted = login_throttle::lift(&services.redis, &services.namespace, email);
    match tokio::time::timeout(std::time::Duration::from_secs(2), lifted).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "sign-in lockout not lifted after a password reset"),
        Err(_) => tracing::warn!("sign-in lockout not lifted after a password reset: Redis did not answer"),
    }
}

/// The message with the link.
struct LinkMessage {
    to: String,
    text: String,
    html: String,
    expires_at: DateTime<Utc>,
}

impl LinkMessage {
    const SUBJECT: &'static str = "Choose a new keymeter password";

    fn new(to: &str, url: &str, expires_at: DateTime<Utc>) -> Self {
        let minutes = LINK_VALID_FOR.num_minutes();
        let intro = format!("Someone, probably you, asked to choose a new password for the keymeter account {to}.");
        let how = format!("To choose one, open this link within {minutes} minutes. It works once.");
        let otherwise = "If you did not ask, ignore this message: your password stays as it is.";
        let text = format!("{intro}\n\n{how}\n\n{url}\n\n{otherwise}\n");
        let html = format!(
            "<p>{}</p><p>{}</p><p><a href=\"{url}\">Choose a new password</a></p><p>{}</p>",
            html_escape(&intro),
            html_escape(&how),
            html_escape(otherwise),
            url = html_escape(url),
        );
        Self { to: to.to_owned(), text, html, expires_at }
    }

    fn email(&self) -> mailer::Email<'_> {
        mailer::Email {
            to: &self.to,
            subject: Self::SUBJECT,
            text: &self.text,
            html: &self.html,
            attachments: &[],
            list_unsubscribe: None,
            credential_until: Some(self.expires_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_the_link_in_both_parts_and_says_how_long_it_works() {
        let url = "https://keymeter.example/password-reset/ab&cd";
        let expires_at = Utc::now() + LINK_VALID_FOR;
        let message = LinkMessage::new("ann@example.com", url, expires_at);
        let email = message.email();
        assert_eq!(email.credential_until, Some(expires_at));
        assert!(email.text.contains(url) && email.text.contains("within 60 minutes"), "{}", email.text);
        assert!(email.html.contains("href=\"https://keymeter.example/password-reset/ab&amp;cd\""), "{}", email.html);
        assert!(email.text.contains("ann@example.com"));
    }
}
