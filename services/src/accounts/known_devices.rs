//! Browsers that signed in to an account before. A sign-in from one of them is counted apart
//! from the address's other attempts (by the browser, not by its network address), so
//! strangers guessing at an address cannot lock its owner out of their own account: the usual
//! browser still gets in, with a few tries of its own. The browser keeps a random token in a
//! cookie; the database keeps its hash and which accounts it signed in to. A sign-in from a
//! browser the account has never seen tells its owner.
//!
//! A new password (or a disabled account) makes the account's browsers *forgotten*: no longer
//! counted apart (one may be a thief's), but still *seen*, so that the owner's own phone
//! signing in again with the new password is not announced as a stranger, while a browser
//! never seen is.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::sessions::browser_name;
use super::token::{Device, Token};
use super::{SignInFrom, User};
use crate::db::{self, DbPool};
use crate::notifications::{self, News};
use crate::schema::{known_devices, users};
use crate::{ServiceResult, Services};

/// A known browser's cookie token.
pub type DeviceToken = Token<Device>;

/// How long a browser stays known after its last successful sign-in to an account.
pub const KNOWN_FOR: Duration = Duration::days(60);

/// Browsers remembered per account; signing in from one more forgets the longest unused.
const PER_ACCOUNT: i64 = 20;

/// Whether this browser signed in to the account with this address (as stored: trimmed,
/// lower-cased) within [`KNOWN_FOR`], and has not been forgotten since.
pub async fn recognizes(db: &DbPool, device: &DeviceToken, email: &str) -> ServiceResult<bool> {
    let mut conn = db::conn(db).await?;
    let found: Option<i64> = known_devices::table
        .inner_join(users::table)
        .filter(known_devices::token_hash.eq(device.hash()))
        .filter(users::email.eq(email))
        .filter(known_devices::last_sign_in_at.gt(Utc::now() - KNOWN_FOR))
        .filter(known_devices::forgotten_at.is_null())
        .select(known_devices::user_id)
        .first(&mut conn)
        .await
        .optional()?;
    Ok(found.is_some())
}

/// Notes a successful sign-in to `user` from this browser, under a new token that replaces
/// the one it presented (for every account that browser signed in to): a token planted in the
/// browser by someone else is worth nothing once its owner signs in. A sign-in from a browser
/// the account has not seen, while it has seen others, tells its owner (the bell and an email,
/// at most once a day per browser kind and network): a stranger with the password is noticed.
/// Returns the token for the browser's cookie.
pub async fn remember(services: &Services, user: &User, from: &SignInFrom<'_>) -> ServiceResult<DeviceToken> {
    use diesel_async::AsyncConnection;
    let device = DeviceToken::generate();
    let hash = device.hash();
    let presented = from.device.map(DeviceToken::hash);
    let notice = SignInNotice::new(user, from);
    let mut conn = db::conn(&services.db).await?;
    conn.transaction::<_, crate::ServiceError, _>(|conn| {
        Box::pin(async move {
            let now = Utc::now();
            let seen: Vec<Vec<u8>> = known_devices::table
                .filter(known_devices::user_id.eq(user.id))
                .filter(known_devices::last_sign_in_at.gt(now - KNOWN_FOR))
                .select(known_devices::token_hash)
                .load(conn)
                .await?;
            let new_browser = !seen.is_empty() && presented.as_ref().is_none_or(|p| !seen.contains(p));
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
                .set((known_devices::last_sign_in_at.eq(now), known_devices::forgotten_at.eq(None::<DateTime<Utc>>)))
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
                notifications::tell(conn, (user.id, &user.email), &notice.news(), &services.settings.public_url)
                    .await?;
            }
            Ok(())
        })
    })
    .await?;
    Ok(device)
}

/// What the owner is told of a sign-in from a browser their account had not seen.
struct SignInNotice {
    body: String,
    /// One a day per account, browser kind and network: signing in again and again without
    /// keeping cookies (a private window, a script) is one notice, not an inbox full.
    dedupe_key: String,
}

impl SignInNotice {
    fn new(user: &User, from: &SignInFrom<'_>) -> Self {
        let browser = match from.user_agent.map(browser_name).unwrap_or_default() {
            name if name.is_empty() => "a browser that did not say which it is".to_owned(),
            name => name,
        };
        // Behind a proxy the client may be whatever text it forwarded: only an address is shown.
        let network = match from.client.strip_suffix("/64").unwrap_or(from.client).parse::<std::net::IpAddr>() {
            Ok(_) => format!("network address {}", from.client),
            Err(_) => "an unknown network address".to_owned(),
        };
        let now = Utc::now();
        let body = format!(
            "Your keymeter account {} was signed in to at {} from a browser it had not been used from before: {browser}, {network}. \
             If this was you, there is nothing to do. If it was not, change your password now: that signs out every other session. \
             Then tell your keymeter administrator.",
            user.email,
            format::time(&now),
        );
        let dedupe_key = format!("new-sign-in:{}:{}:{browser}:{}", user.id, from.client, now.date_naive());
        Self { body, dedupe_key }
    }

    fn news(&self) -> News<'_> {
        News {
            kind: "new_sign_in",
            title: "New sign-in to your keymeter account",
            body: &self.body,
            link: ACCOUNT_PAGE,
            link_label: "Your account",
            dedupe_key: Some(&self.dedupe_key),
        }
    }
}

/// Where the owner changes their password and sees where they are signed in.
const ACCOUNT_PAGE: &str = "/dashboard/account";

/// Forgets every browser known to the account (a new password, a disabled account): whoever
/// signed in with the old password keeps no count of their own at the address. They stay seen
/// (see the module's notes).
pub(crate) async fn forget_all(conn: &mut diesel_async::AsyncPgConnection, user_id: i64) -> ServiceResult<usize> {
    let known =
        known_devices::table.filter(known_devices::user_id.eq(user_id)).filter(known_devices::forgotten_at.is_null());
    Ok(diesel::update(known).set(known_devices::forgotten_at.eq(Utc::now())).execute(conn).await?)
}
