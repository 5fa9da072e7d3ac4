//! Server-side sessions. The browser holds a random token; the database holds its SHA-256
//! (`token`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{User, UserRow};
use crate::db::{self, DbPool};
use crate::schema::{sessions, users};
use crate::ServiceResult;

/// How long a session lasts after sign-in, at most.
pub const SESSION_TTL: Duration = Duration::days(7);

/// A session unused for this long ends before its expiry: a browser left signed in on a
/// shared or lost computer is not a way into the account for the rest of the week. An open
/// dashboard keeps its session in use (its live view asks every few seconds).
pub const SESSION_IDLE: Duration = Duration::hours(12);

/// A session's last use is written at most this often (not on every page or live refresh);
/// the idle limit is that much less exact.
const LAST_SEEN_EVERY: Duration = Duration::minutes(5);

/// A session cookie's token.
pub type SessionToken = super::token::Token<super::token::Session>;

pub async fn create(db: &DbPool, user_id: i64) -> ServiceResult<SessionToken> {
    let token = SessionToken::generate();
    let mut conn = db::conn(db).await?;
    diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(token.hash()),
            sessions::user_id.eq(user_id),
            sessions::expires_at.eq(Utc::now() + SESSION_TTL),
        ))
        .execute(&mut conn)
        .await?;
    Ok(token)
}

/// Sessions confirmed recently, read only while PostgreSQL cannot be asked: a signed-in person
/// then still sees the dashboard (with its "data delayed" state) instead of being signed out.
type Confirmed = Mutex<HashMap<Vec<u8>, (Instant, User)>>;

fn recently_confirmed() -> &'static Confirmed {
    static CACHE: OnceLock<Confirmed> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// How long a confirmed session may stand in during a database outage.
const STALE_IF_ERROR: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The signed-in user for a token, if the session exists and has not expired.
pub async fn user_for(db: &DbPool, token: &SessionToken) -> ServiceResult<Option<User>> {
    let hash = token.hash();
    match lookup(db, &hash).await {
        Ok(user) => {
            if let Ok(mut cache) = recently_confirmed().lock() {
                if cache.len() > 10_000 {
                    cache.clear();
                }
                match &user {
                    Some(u) => cache.insert(hash, (Instant::now(), u.clone())),
                    None => cache.remove(&hash),
                };
            }
            Ok(user)
        }
        Err(e) if e.is_server_error() => {
            let cached = recently_confirmed().lock().ok().and_then(|c| c.get(&hash).cloned());
            match cached {
                Some((at, user)) if at.elapsed() < STALE_IF_ERROR => Ok(Some(user)),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

async fn lookup(db: &DbPool, hash: &[u8]) -> ServiceResult<Option<User>> {
    let mut conn = db::conn(db).await?;
    let now = Utc::now();
    let row: Option<(UserRow, DateTime<Utc>)> = sessions::table
        .inner_join(users::table)
        .filter(sessions::token_hash.eq(hash))
        .filter(sessions::expires_at.gt(now))
        .filter(sessions::last_seen_at.gt(now - SESSION_IDLE))
        .filter(users::disabled_at.is_null())
        .select((UserRow::as_select(), sessions::last_seen_at))
        .first(&mut conn)
        .await
        .optional()?;
    let Some((row, last_seen)) = row else { return Ok(None) };
    if last_seen < now - LAST_SEEN_EVERY {
        diesel::update(sessions::table.filter(sessions::token_hash.eq(hash)))
            .set(sessions::last_seen_at.eq(now))
            .execute(&mut conn)
            .await?;
    }
    row.into_user().map(Some)
}

pub async fn delete(db: &DbPool, token: &SessionToken) -> ServiceResult<()> {
    if let Ok(mut cache) = recently_confirmed().lock() {
        cache.remove(&token.hash());
    }
    let mut conn = db::conn(db).await?;
    diesel::delete(sessions::table.filter(sessions::token_hash.eq(token.hash()))).execute(&mut conn).await?;
    Ok(())
}

/// Ends every session of the account (a new password), `current` included, also in this
/// instance's outage stand-in; returns how many live sessions other than `current` ended.
/// (Other instances' stand-ins are only read while PostgreSQL is unreachable, and only for
/// their first 15 minutes.)
pub(crate) async fn end_all(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: i64,
    current: Option<&SessionToken>,
) -> ServiceResult<usize> {
    let current = current.map(SessionToken::hash).unwrap_or_default();
    let ended: Vec<(Vec<u8>, chrono::DateTime<Utc>)> =
        diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id)))
            .returning((sessions::token_hash, sessions::expires_at))
            .get_results(conn)
            .await?;
    if let Ok(mut cache) = recently_confirmed().lock() {
        cache.retain(|_, (_, user)| user.id != user_id);
    }
    let now = Utc::now();
    Ok(ended.iter().filter(|(hash, expires)| *hash != current && *expires > now).count())
}
