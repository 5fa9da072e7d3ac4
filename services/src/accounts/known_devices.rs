//! Browsers that signed in to an account before. A sign-in from one of them is counted apart
//! from the address's other attempts (by the browser, not by its network address), so
//! strangers guessing at an address cannot lock its owner out of their own account: the usual
//! browser still gets in, with a few tries of its own. The browser keeps a random token in a
//! cookie; the database keeps its hash and which accounts it signed in to.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::token::{Device, Token};
use crate::db::{self, DbPool};
use crate::schema::{known_devices, users};
use crate::ServiceResult;

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

/// Notes a successful sign-in to `user_id` from this browser, under a new token that replaces
/// the one it presented (for every account that browser signed in to): a token planted in the
/// browser by someone else is worth nothing once its owner signs in. Returns the token for its
/// cookie.
pub async fn remember(db: &DbPool, presented: Option<DeviceToken>, user_id: i64) -> ServiceResult<DeviceToken> {
    use diesel_async::AsyncConnection;
    let device = DeviceToken::generate();
    let hash = device.hash();
    let mut conn = db::conn(db).await?;
    conn.transaction::<_, crate::ServiceError, _>(|conn| {
        Box::pin(async move {
            if let Some(old) = presented {
                diesel::update(known_devices::table.filter(known_devices::token_hash.eq(old.hash())))
                    .set(known_devices::token_hash.eq(&hash))
                    .execute(conn)
                    .await?;
            }
            let now = Utc::now();
            diesel::insert_into(known_devices::table)
                .values((
                    known_devices::token_hash.eq(&hash),
                    known_devices::user_id.eq(user_id),
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
            .bind::<diesel::sql_types::BigInt, _>(user_id)
            .bind::<diesel::sql_types::BigInt, _>(PER_ACCOUNT)
            .execute(conn)
            .await?;
            Ok(())
        })
    })
    .await?;
    Ok(device)
}

/// Forgets every browser known to the account (a new password, a disabled account): whoever
/// signed in with the old password keeps no count of their own at the address.
pub(crate) async fn forget_all(conn: &mut diesel_async::AsyncPgConnection, user_id: i64) -> ServiceResult<usize> {
    Ok(diesel::delete(known_devices::table.filter(known_devices::user_id.eq(user_id))).execute(conn).await?)
}
