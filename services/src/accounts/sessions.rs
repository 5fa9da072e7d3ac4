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

/// Whether a session is live: not expired, and used within the idle limit.
fn is_live(expires_at: DateTime<Utc>, last_seen_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    expires_at > now && last_seen_at > now - SESSION_IDLE
}

/// [`is_live`] as a query filter.
#[diesel::dsl::auto_type]
fn live_at(now: DateTime<Utc>, seen_since: DateTime<Utc>) -> _ {
    sessions::expires_at.gt(now).and(sessions::last_seen_at.gt(seen_since))
}

/// A session cookie's token.
pub type SessionToken = super::token::Token<super::token::Session>;

/// Starts a session for the account, in the browser whose `User-Agent` this is.
pub async fn create(db: &DbPool, user_id: i64, user_agent: Option<&str>) -> ServiceResult<SessionToken> {
    let token = SessionToken::generate();
    let mut conn = db::conn(db).await?;
    diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(token.hash()),
            sessions::user_id.eq(user_id),
            sessions::expires_at.eq(Utc::now() + SESSION_TTL),
            sessions::browser.eq(user_agent.map(browser_name).unwrap_or_default()),
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
        .filter(live_at(now, now - SESSION_IDLE))
        .filter(users::disabled_at.is_null())
        .select((UserRow::as_select(), sessions::last_seen_at))
        .first(&mut conn)
        .await
        .optional()?;
    let Some((row, last_seen)) = row else { return Ok(None) };
    if last_seen < now - LAST_SEEN_EVERY {
        // Best effort: a database that reads but cannot write (a failover under way, a lock
        // held) must not sign people out; the next look tries again.
        let noted = diesel::update(sessions::table.filter(sessions::token_hash.eq(hash)))
            .set(sessions::last_seen_at.eq(now))
            .execute(&mut conn)
            .await;
        if let Err(e) = noted {
            tracing::warn!(error = %e, "a session's last use could not be noted");
        }
    }
    row.into_user().map(Some)
}

/// One of an account's sessions, as its list on the account page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// "Firefox on Linux"; empty when not known.
    pub browser: String,
    pub signed_in_at: DateTime<Utc>,
    /// To the nearest few minutes (`LAST_SEEN_EVERY`).
    pub last_seen_at: DateTime<Utc>,
    /// The session asking.
    pub current: bool,
}

/// Longest list of sessions shown; an account signed in from more places sees the most
/// recently used.
const LISTED: i64 = 50;

/// The account's live sessions, the most recently used first.
pub async fn list_for(db: &DbPool, user_id: i64, current: &SessionToken) -> ServiceResult<Vec<SessionInfo>> {
    let mut conn = db::conn(db).await?;
    let now = Utc::now();
    #[derive(Queryable)]
    struct Listed {
        token_hash: Vec<u8>,
        browser: String,
        created_at: DateTime<Utc>,
        last_seen_at: DateTime<Utc>,
    }
    let rows: Vec<Listed> = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(live_at(now, now - SESSION_IDLE))
        .order((sessions::last_seen_at.desc(), sessions::created_at.desc()))
        .limit(LISTED)
        .select((sessions::token_hash, sessions::browser, sessions::created_at, sessions::last_seen_at))
        .load(&mut conn)
        .await?;
    let current = current.hash();
    Ok(rows
        .into_iter()
        .map(|row| SessionInfo {
            current: row.token_hash == current,
            browser: row.browser,
            signed_in_at: row.created_at,
            last_seen_at: row.last_seen_at,
        })
        .collect())
}

/// Ends every session of the account but `current`, also in this instance's outage stand-in;
/// returns how many live ones ended.
pub async fn end_others(db: &DbPool, user_id: i64, current: &SessionToken) -> ServiceResult<usize> {
    let mut conn = db::conn(db).await?;
    end_sessions(&mut conn, user_id, Some(current), true).await
}

/// A browser's name and system from its `User-Agent` ("Firefox on Linux"), or "" when it says
/// nothing recognizable. Only this is kept, not the header.
pub fn browser_name(user_agent: &str) -> String {
    // Order matters: Edge and Opera also say Chrome, Chrome also says Safari; iOS also says
    // Mac OS X, Android also says Linux.
    const BROWSERS: [(&str, &str); 8] = [
        ("Edg", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ];
    const SYSTEMS: [(&str, &str); 7] = [
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Android", "Android"),
        ("Windows", "Windows"),
        ("CrOS", "ChromeOS"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ];
    let find =
        |table: &[(&str, &'static str)]| table.iter().find(|(mark, _)| user_agent.contains(mark)).map(|(_, n)| *n);
    match (find(&BROWSERS), find(&SYSTEMS)) {
        (Some(browser), Some(system)) => format!("{browser} on {system}"),
        (Some(browser), None) => browser.to_owned(),
        (None, Some(system)) => format!("A browser on {system}"),
        (None, None) => String::new(),
    }
}

pub async fn delete(db: &DbPool, token: &SessionToken) -> ServiceResult<()> {
    if let Ok(mut cache) = recently_confirmed().lock() {
        cache.remove(&token.hash());
    }
    let mut conn = db::conn(db).await?;
    diesel::delete(sessions::table.filter(sessions::token_hash.eq(token.hash()))).execute(&mut conn).await?;
    Ok(())
}

/// Ends every session of the account (a new password, a disabled account), `current`
/// included, also in this instance's outage stand-in; returns how many live sessions other
/// than `current` ended. (Other instances' stand-ins are only read while PostgreSQL is
/// unreachable, and only for their first 15 minutes.)
pub(crate) async fn end_all(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: i64,
    current: Option<&SessionToken>,
) -> ServiceResult<usize> {
    end_sessions(conn, user_id, current, false).await
}

async fn end_sessions(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: i64,
    current: Option<&SessionToken>,
    keep_current: bool,
) -> ServiceResult<usize> {
    let current = current.map(SessionToken::hash).unwrap_or_default();
    // No token hashes to nothing: "all but the empty hash" is all of them.
    let kept = if keep_current { current.clone() } else { Vec::new() };
    let ended: Vec<(Vec<u8>, DateTime<Utc>, DateTime<Utc>)> =
        diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id)).filter(sessions::token_hash.ne(&kept)))
            .returning((sessions::token_hash, sessions::expires_at, sessions::last_seen_at))
            .get_results(conn)
            .await?;
    if let Ok(mut cache) = recently_confirmed().lock() {
        cache.retain(|hash, (_, user)| user.id != user_id || (keep_current && *hash == current));
    }
    let now = Utc::now();
    Ok(ended.iter().filter(|(hash, expires, seen)| *hash != current && is_live(*expires, *seen, now)).count())
}

#[cfg(test)]
mod tests {
    use super::browser_name;

    #[test]
    fn browsers_are_named_by_what_they_are_not_what_they_also_claim() {
        let cases = [
            ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "Firefox on Linux"),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0 Mobile/15E148 Safari/604.1",
                "Chrome on iOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
                "Chrome on Linux",
            ),
            ("curl/8.11.0", "curl"),
            ("Mozilla/5.0 (Windows NT 10.0)", "A browser on Windows"),
            ("", ""),
            ("\u{0}<script>", ""),
        ];
        for (agent, name) in cases {
            assert_eq!(browser_name(agent), name, "{agent}");
        }
    }
}
