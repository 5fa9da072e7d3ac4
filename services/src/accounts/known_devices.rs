//! Browsers that signed in to an account before. A sign-in from one of them is counted apart
//! from the address's other attempts (by the browser, not by its network address), so
//! strangers guessing at an address cannot lock its owner out of their own account: the usual
//! browser still gets in, with a few tries of its own. The browser keeps a random token in a
//! cookie; the database keeps its hash and which accounts it signed in to. A sign-in from a
//! browser the account does not know tells its owner.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::sessions::browser_name;
use super::token::{Device, Token};
use super::{SignInFrom, User};
use crate::db::{self, DbPool};
use crate::mailer::{self, html_escape, html_paragraph, Email};
use crate::notifications::{self, NewNotification};
use crate::schema::{known_devices, users};
use crate::{ServiceResult, Services};

/// A known browser's cookie token.
pub type DeviceToken = Token<Device>;

/// How long a browser stays known after its last successful sign-in to an account.
pub const KNOWN_FOR: Duration = Duration::days(60);

/// Browsers remembered per account; signing in from one more forgets the longest unused.
const PER_ACCOUNT: i64 = 20;

/// Whether this browser signed in to the account with this address (as stored: trimmed,
/// lower-cased) within [`KNOWN_FOR`].
pub async fn recognizes(db: &DbPool, device: &DeviceToken, email: &str) -> ServiceResult<bool> {
    let mut conn = db::conn(db).await?;
    let found: Option<i64> = known_devices::table
        .inner_join(users::table)
        .filter(known_devices::token_hash.eq(device.hash()))
        .filter(users::email.eq(email))
        .filter(known_devices::last_sign_in_at.gt(Utc::now() - KNOWN_FOR))
        .select(known_devices::user_id)
        .first(&mut conn)
        .await
        .optional()?;
    Ok(found.is_some())
}

/// Notes a successful sign-in to `user` from this browser, under a new token that replaces
/// the one it presented (for every account that browser signed in to): a token planted in the
/// browser by someone else is worth nothing once its owner signs in. A sign-in from a browser
/// the account does not know, while it knows others, tells its owner (the bell and an email):
/// a stranger with the password is noticed. Returns the token for the browser's cookie.
pub async fn remember(services: &Services, user: &User, from: &SignInFrom<'_>) -> ServiceResult<DeviceToken> {
    use diesel_async::AsyncConnection;
    let device = DeviceToken::generate();
    let hash = device.hash();
    let presented = from.device.map(DeviceToken::hash);
    let notice = SignInNotice::new(user, from, &services.settings.public_url);
    let mut conn = db::conn(&services.db).await?;
    conn.transaction::<_, crate::ServiceError, _>(|conn| {
        Box::pin(async move {
            let now = Utc::now();
            let known: Vec<Vec<u8>> = known_devices::table
                .filter(known_devices::user_id.eq(user.id))
                .filter(known_devices::last_sign_in_at.gt(now - KNOWN_FOR))
                .select(known_devices::token_hash)
                .load(conn)
                .await?;
            let new_browser = !known.is_empty() && presented.as_ref().is_none_or(|p| !known.contains(p));
            if let Some(old) = &presented {
                diesel::update(known_devices::table.filter(known_devices::token_hash.eq(old)))
                    .set(known_devices::token_hash.eq(&hash))
                    .execute(conn)
                    .await?;
            }
            diesel::insert_into(known_devices::table)
                .values((
                    known_devices::token_hash.eq(&hash),
                    known_devices::user_id.eq(user.id),
                    known_devices::last_sign_in_at.eq(now),
                ))
                .on_conflict((known_devices::token_hash, known_devices::user_id))
                .do_update()
                .set(known_devices::last_sign_in_at.eq(now))
                .execute(conn)
                .await?;
            // Past the cap, the longest unused go: someone with the password signing in from
            // script after script must not grow the table without bound.
            diesel::sql_query(
                "DELETE FROM known_devices WHERE user_id = $1 AND token_hash NOT IN \
                 (SELECT token_hash FROM known_devices WHERE user_id = $1 ORDER BY last_sign_in_at DESC LIMIT $2)",
            )
            .bind::<diesel::sql_types::BigInt, _>(user.id)
            .bind::<diesel::sql_types::BigInt, _>(PER_ACCOUNT)
            .execute(conn)
            .await?;
            if new_browser {
                notice.send(conn, user).await?;
            }
            Ok(())
        })
    })
    .await?;
    Ok(device)
}

/// What the owner is told of a sign-in from a browser their account did not know.
struct SignInNotice {
    title: &'static str,
    body: String,
    url: String,
}

impl SignInNotice {
    fn new(user: &User, from: &SignInFrom<'_>, public_url: &str) -> Self {
        let browser = match from.user_agent.map(browser_name).unwrap_or_default() {
            name if name.is_empty() => "a browser that did not say which it is".to_owned(),
            name => name,
        };
        let body = format!(
            "Your keymeter account {} was signed in to at {} from a browser it had not been used from before: {browser}, network address {}. \
             If this was you, there is nothing to do. If it was not, change your password now: that signs out every other session. \
             Then tell your keymeter administrator.",
            user.email,
            format::time(&Utc::now()),
            from.client,
        );
        Self {
            title: "New sign-in to your keymeter account",
            body,
            url: format!("{}{ACCOUNT_PAGE}", public_url.trim_end_matches('/')),
        }
    }

    async fn send(&self, conn: &mut diesel_async::AsyncPgConnection, user: &User) -> ServiceResult<()> {
        let new = NewNotification {
            user_id: user.id,
            kind: "new_sign_in",
            title: self.title,
            body: &self.body,
            link: Some(ACCOUNT_PAGE),
            dedupe_key: None,
        };
        notifications::notify(conn, &new).await?;
        let text = format!("{}\n\nYour account: {}\n", self.body, self.url);
        let html =
            format!("{}<p><a href=\"{}\">Your account</a></p>", html_paragraph(&self.body), html_escape(&self.url));
        let email = Email {
            to: &user.email,
            subject: self.title,
            text: &text,
            html: &html,
            attachments: &[],
            list_unsubscribe: None,
        };
        mailer::enqueue(conn, &email, None).await?;
        Ok(())
    }
}

/// Where the owner changes their password and sees where they are signed in.
const ACCOUNT_PAGE: &str = "/dashboard/account";

/// Forgets every browser known to the account (a new password, a disabled account): whoever
/// signed in with the old password keeps no count of their own at the address.
pub(crate) async fn forget_all(conn: &mut diesel_async::AsyncPgConnection, user_id: i64) -> ServiceResult<usize> {
    Ok(diesel::delete(known_devices::table.filter(known_devices::user_id.eq(user_id))).execute(conn).await?)
}
