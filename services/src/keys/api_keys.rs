//! The API key store: create, list, look up and revoke keys, always on behalf of someone.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::quota::Quota;
use super::secret::ApiKeySecret;
use crate::accounts::User;
use crate::alerts::AlertThresholds;
use crate::db::{self, DbPool};
use crate::notifications;
use crate::public_url::PublicUrl;
use crate::schema::{api_key_quotas, api_keys, users};
use crate::{ServiceError, ServiceResult};

/// A key's public identifier (a UUID, so ids reveal nothing about other keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyId(pub Uuid);

impl ApiKeyId {
    /// Any string that is not a key id is treated as a key that does not exist.
    pub fn parse(raw: &str) -> ServiceResult<Self> {
        Uuid::parse_str(raw.trim()).map(Self).map_err(|_| ServiceError::NotFound)
    }
}

impl std::fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A key's human-readable name: 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> ServiceResult<Self> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(ServiceError::invalid("Give the key a name."));
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err(ServiceError::invalid(format!("A key name can have at most {} characters.", Self::MAX_CHARS)));
        }
        // One line: no line breaks or tabs either (nor Unicode's line and paragraph separators,
        // which mail readers and pages show as breaks too).
        if name.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
            return Err(ServiceError::invalid("A key name is one line, without control characters."));
        }
        crate::text::check_typed("The key name", name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key as its owner and admins see it. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub owner_id: i64,
    pub owner_email: String,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub quota: Quota,
    /// When the quota last changed (ms since the epoch, PostgreSQL's clock): the version of the
    /// limits, which Redis keeps beside them.
    pub quota_version_ms: i64,
    /// Which quota alerts email the owner.
    pub alert_email_thresholds: AlertThresholds,
    /// The last time its secret was replaced ([`roll_for`]).
    pub rolled_at: Option<DateTime<Utc>>,
    /// The replaced secret, while the key remembers it: its visible prefix and when it stops
    /// (or stopped) working.
    pub previous_secret: Option<PreviousSecret>,
}

/// A key's secret before its last roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub prefix: String,
    pub expires_at: DateTime<Utc>,
    /// When a call last came with it (to the minute, from any instance); `None`: not since the
    /// roll.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Whether calls with it are still admitted (by PostgreSQL's clock, as the lookup sees it).
    pub works: bool,
}

type KeyRow = (
    Uuid,
    i64,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    i64,
    i64,
    Option<i32>,
    DateTime<Utc>,
    Vec<i16>,
    Option<DateTime<Utc>>,
    (Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<bool>),
);

macro_rules! key_columns {
    () => {
        (
            api_keys::id,
            api_keys::owner_id,
            users::email,
            api_keys::name,
            api_keys::prefix,
            api_keys::created_at,
            api_keys::last_used_at,
            api_keys::revoked_at,
            api_key_quotas::requests_per_hour,
            api_key_quotas::requests_per_day,
            api_key_quotas::burst_per_second,
            api_key_quotas::updated_at,
            api_keys::alert_email_thresholds,
            api_keys::rolled_at,
            (
                api_keys::previous_prefix,
                api_keys::previous_expires_at,
                api_keys::previous_last_used_at,
                api_keys::previous_expires_at.gt(diesel::dsl::now),
            ),
        )
    };
}

fn from_row(row: KeyRow) -> ServiceResult<ApiKey> {
    let (
        id,
        owner_id,
        owner_email,
        name,
        prefix,
        created_at,
        last_used_at,
        revoked_at,
        hour,
        day,
        burst,
        version,
        alerts,
        rolled_at,
        (previous_prefix, previous_expires_at, previous_last_used_at, previous_works),
    ) = row;
    Ok(ApiKey {
        id: ApiKeyId(id),
        owner_id,
        owner_email,
        name,
        prefix,
        created_at,
        last_used_at,
        revoked_at,
        quota: Quota::from_stored(hour, day, burst)?,
        quota_version_ms: version.timestamp_millis(),
        alert_email_thresholds: AlertThresholds::from_db(&alerts),
        rolled_at,
        previous_secret: previous_prefix.zip(previous_expires_at).map(|(prefix, expires_at)| PreviousSecret {
            prefix,
            expires_at,
            last_used_at: previous_last_used_at,
            works: previous_works.unwrap_or(false),
        }),
    })
}

/// Creates a key with the default quota. The secret is returned once and never stored.
pub async fn create(db: &DbPool, owner_id: i64, name: &KeyName) -> ServiceResult<(ApiKey, ApiKeySecret)> {
    let secret = ApiKeySecret::generate();
    let id = Uuid::new_v4();
    let quota = Quota::default_for_new_key();
    let mut conn = db::conn(db).await?;
    conn.transaction::<_, ServiceError, _>(|conn| {
        let secret = &secret;
        Box::pin(async move {
            diesel::insert_into(api_keys::table)
                .values((
                    api_keys::id.eq(id),
                    api_keys::owner_id.eq(owner_id),
                    api_keys::name.eq(name.as_str()),
                    api_keys::prefix.eq(secret.visible_prefix()),
                    api_keys::secret_hash.eq(secret.hash().to_vec()),
                ))
                .execute(conn)
                .await?;
            diesel::insert_into(api_key_quotas::table)
                .values((
                    api_key_quotas::api_key_id.eq(id),
                    api_key_quotas::requests_per_hour.eq(quota.per_hour.get()),
                    api_key_quotas::requests_per_day.eq(quota.per_day.get()),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
    })
    .await?;
    drop(conn);
    let key = fetch(db, ApiKeyId(id)).await?;
    Ok((key, secret))
}

async fn fetch(db: &DbPool, id: ApiKeyId) -> ServiceResult<ApiKey> {
    let mut conn = db::conn(db).await?;
    fetch_on(&mut conn, id).await
}

async fn fetch_on(conn: &mut diesel_async::AsyncPgConnection, id: ApiKeyId) -> ServiceResult<ApiKey> {
    let row: KeyRow = api_keys::table
        .inner_join(users::table)
        .inner_join(api_key_quotas::table)
        .filter(api_keys::id.eq(id.0))
        .select(key_columns!())
        .first(conn)
        .await?;
    from_row(row)
}

/// The key, if `viewer` owns it or is an admin. Anyone else is told it does not exist, so key
/// ids cannot be probed.
pub async fn get_for(db: &DbPool, id: ApiKeyId, viewer: &User) -> ServiceResult<ApiKey> {
    let key = fetch(db, id).await?;
    if key.owner_id == viewer.id || viewer.is_admin() {
        Ok(key)
    } else {
        Err(ServiceError::NotFound)
    }
}

/// The key, if `viewer` owns it: for choices that are the owner's alone (admins see the key but
/// get `Forbidden`; anyone else is told it does not exist, as with [`get_for`]).
pub async fn get_as_owner(db: &DbPool, id: ApiKeyId, viewer: &User) -> ServiceResult<ApiKey> {
    let key = get_for(db, id, viewer).await?;
    if key.owner_id == viewer.id {
        Ok(key)
    } else {
        Err(ServiceError::Forbidden)
    }
}

/// Every key of the owner: active ones first, newest first within each.
pub async fn list_for_owner(db: &DbPool, owner_id: i64) -> ServiceResult<Vec<ApiKey>> {
    page_for_owner(db, owner_id, 0, i64::MAX).await
}

/// A page of the owner's keys in `list_for_owner`'s order, skipping the first `offset`.
pub async fn page_for_owner(db: &DbPool, owner_id: i64, offset: i64, limit: i64) -> ServiceResult<Vec<ApiKey>> {
    let mut conn = db::conn(db).await?;
    let rows: Vec<KeyRow> = api_keys::table
        .inner_join(users::table)
        .inner_join(api_key_quotas::table)
        .filter(api_keys::owner_id.eq(owner_id))
        // The ones in use are what a merchant looks for; revoked ones pile up behind them.
        .order((api_keys::revoked_at.is_not_null(), api_keys::created_at.desc(), api_keys::id))
        .offset(offset.max(0))
        .limit(limit)
        .select(key_columns!())
        .load(&mut conn)
        .await?;
    rows.into_iter().map(from_row).collect()
}

/// Every key of every owner, for admins.
pub async fn list_all(db: &DbPool) -> ServiceResult<Vec<ApiKey>> {
    let mut conn = db::conn(db).await?;
    let rows: Vec<KeyRow> = api_keys::table
        .inner_join(users::table)
        .inner_join(api_key_quotas::table)
        .order((users::email, api_keys::created_at.desc()))
        .select(key_columns!())
        .load(&mut conn)
        .await?;
    rows.into_iter().map(from_row).collect()
}

/// A page of every owner's keys, for admins: those whose owner's email, name or prefix (or
/// previous prefix) contains `search` (any case; all keys when it is empty), by owner and then
/// newest first, skipping the first `offset`.
pub async fn search_all(db: &DbPool, search: &str, offset: i64, limit: i64) -> ServiceResult<Vec<ApiKey>> {
    // PostgreSQL refuses a NUL byte in text: bad input, not a failure.
    crate::text::check_typed("The search", search)?;
    let mut conn = db::conn(db).await?;
    let mut query = api_keys::table
        .inner_join(users::table)
        .inner_join(api_key_quotas::table)
        .order((users::email, api_keys::created_at.desc(), api_keys::id))
        .offset(offset.max(0))
        .limit(limit)
        .select(key_columns!())
        .into_boxed();
    let search = search.trim();
    if !search.is_empty() {
        let pattern = crate::text::contains_pattern(search);
        query = query.filter(
            users::email
                .ilike(pattern.clone())
                .or(api_keys::name.ilike(pattern.clone()))
                .or(api_keys::prefix.ilike(pattern.clone()))
                // A report of a leaked secret may name one replaced since.
                .or(api_keys::previous_prefix.ilike(pattern)),
        );
    }
    let rows: Vec<KeyRow> = query.load(&mut conn).await?;
    rows.into_iter().map(from_row).collect()
}

/// Renames a key for its owner (admins are refused, as with other owner choices; anyone else is
/// told it does not exist). Usage, exports and mail name the key as it is called when they are
/// read, so the new name shows everywhere at once. A revoked key keeps the name it had.
pub async fn rename_for(db: &DbPool, id: ApiKeyId, viewer: &User, name: &KeyName) -> ServiceResult<ApiKey> {
    let key = get_as_owner(db, id, viewer).await?;
    let revoked = || ServiceError::Conflict(format!("\u{201c}{}\u{201d} is revoked: it keeps its name.", key.name));
    if key.revoked_at.is_some() {
        return Err(revoked());
    }
    let mut conn = db::conn(db).await?;
    // Revoked meanwhile: same answer as above.
    let renamed = diesel::update(api_keys::table.filter(api_keys::id.eq(id.0)).filter(api_keys::revoked_at.is_null()))
        .set(api_keys::name.eq(name.as_str()))
        .execute(&mut conn)
        .await?;
    drop(conn);
    if renamed == 0 {
        return Err(revoked());
    }
    fetch(db, id).await
}

/// Revokes a key its owner (or an admin) asks to revoke. Revoking twice changes nothing.
/// This instance refuses it at once; the others once their cached entry expires (seconds).
pub async fn revoke_for(services: &crate::Services, id: ApiKeyId, viewer: &User) -> ServiceResult<ApiKey> {
    get_for(&services.db, id, viewer).await?;
    let (key, _) = revoke_by(&services.db, id, Revoker::Viewer(viewer), &services.settings.public_url).await?;
    services.keys.revoked(key.id);
    Ok(key)
}

/// Revokes a key regardless of owner (operator CLI); also says whether this call revoked it
/// (false: it already was).
pub async fn revoke(db: &DbPool, id: ApiKeyId, public_url: &PublicUrl) -> ServiceResult<(ApiKey, bool)> {
    revoke_by(db, id, Revoker::Operator, public_url).await
}

/// Takes back a key whose secret never reached anyone (the operator's `key create` could not
/// write it): revoked without telling its owner, who never had it.
pub async fn withdraw_unseen(db: &DbPool, id: ApiKeyId, public_url: &PublicUrl) -> ServiceResult<()> {
    revoke_by(db, id, Revoker::Withdrawn, public_url).await.map(|_| ())
}

/// Who revokes a key: its owner is told unless it was them (or it was never handed out).
#[derive(Clone, Copy)]
enum Revoker<'a> {
    Viewer(&'a User),
    Operator,
    Withdrawn,
}

/// Revokes the key (a second revocation changes nothing) and closes its open quota request,
/// which nobody could decide any more. An owner whose key someone else revoked (an admin, the
/// operator) is told by email and in the bell: their integration stops working.
async fn revoke_by(
    db: &DbPool,
    id: ApiKeyId,
    by: Revoker<'_>,
    public_url: &PublicUrl,
) -> ServiceResult<(ApiKey, bool)> {
    let mut conn = db::conn(db).await?;
    let revoked_now = conn
        .transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                let now = Utc::now();
                let revoked: Option<(i64, String, String)> = diesel::update(
                    api_keys::table.filter(api_keys::id.eq(id.0)).filter(api_keys::revoked_at.is_null()),
                )
                .set(api_keys::revoked_at.eq(now))
                .returning((api_keys::owner_id, api_keys::name, api_keys::prefix))
                .get_result(conn)
                .await
                .optional()?;
                let Some((owner_id, name, prefix)) = revoked else { return Ok(false) };
                crate::quota_requests::close_for_revoked_key(conn, id, now).await?;
                let who = match by {
                    Revoker::Viewer(user) if user.id == owner_id => None,
                    Revoker::Viewer(_) => Some("An admin"),
                    Revoker::Operator => Some("The platform's operator"),
                    Revoker::Withdrawn => None,
                };
                if let Some(who) = who {
                    let owner_email: String = users::table.find(owner_id).select(users::email).get_result(conn).await?;
                    let title = format!("API key “{name}” was revoked");
                    let body = format!(
                        "{who} revoked your API key “{name}” ({prefix}…) at {}. Calls with it are refused \
                         within seconds (401 revoked_api_key) and are no longer counted; its usage history stays on \
                         its page. If you did not expect this, ask your keymeter administrator; a new \
                         key can be created on the API keys page.",
                        format::time(&now)
                    );
                    let owner = (owner_id, owner_email.as_str());
                    notifications::tell_key_owner(conn, owner, "key_revoked", &title, body, id.0, public_url).await?;
                }
                Ok(true)
            })
        })
        .await?;
    drop(conn);
    let key = fetch(db, id).await?;
    if key.revoked_at.is_none() {
        return Err(ServiceError::NotFound);
    }
    Ok((key, revoked_now))
}

/// How long a rolled key's replaced secret keeps working, in whole hours: none (it stops at
/// once, for a secret that leaked) up to a week (time to deploy the new one everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollOverlap(u16);

impl RollOverlap {
    pub const MAX_HOURS: u16 = 7 * 24;

    pub fn parse(raw: &str) -> ServiceResult<Self> {
        let invalid = || {
            ServiceError::invalid(format!(
                "Choose how long the old secret keeps working: 0 to {} whole hours.",
                Self::MAX_HOURS
            ))
        };
        let hours: u16 = raw.trim().parse().map_err(|_| invalid())?;
        if hours > Self::MAX_HOURS {
            return Err(invalid());
        }
        Ok(Self(hours))
    }

    pub fn hours(self) -> u16 {
        self.0
    }
}

/// A key's secrets as a roll finds them: the current one's hash, the previous one's, whether
/// that still works, and when the key was revoked.
type SecretsRow = (Vec<u8>, Option<Vec<u8>>, Option<bool>, Option<DateTime<Utc>>);

/// Replaces the secret of a key its owner rolls (admins are refused; anyone else is told it
/// does not exist). The new secret is returned once and never stored. The key keeps its id,
/// name, quota, alerts and usage history; the replaced secret keeps working for `overlap`, then
/// gets 401 `rolled_api_key`. A key answers to two secrets at most: one replaced by an earlier
/// roll stops at once (it is unknown from then on).
pub async fn roll_for(
    services: &crate::Services,
    id: ApiKeyId,
    viewer: &User,
    overlap: RollOverlap,
) -> ServiceResult<(ApiKey, ApiKeySecret)> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Integer, Nullable, Timestamptz};
    let name = get_as_owner(&services.db, id, viewer).await?.name;
    let revoked = move || ServiceError::Conflict(format!("\u{201c}{name}\u{201d} is revoked: it cannot be rolled."));
    let secret = ApiKeySecret::generate();
    // Before the transaction: its ends are counted from no later than PostgreSQL's now().
    let began = std::time::Instant::now();
    let mut conn = db::conn(&services.db).await?;
    let (key, replaced, discarded) = conn
        .transaction::<_, ServiceError, _>(|conn| {
            let (secret, revoked) = (&secret, &revoked);
            Box::pin(async move {
                // Locked: two rolls at once take turns, and each knows what it replaced.
                let row: SecretsRow = api_keys::table
                    .filter(api_keys::id.eq(id.0))
                    .select((
                        api_keys::secret_hash,
                        api_keys::previous_secret_hash,
                        api_keys::previous_expires_at.gt(diesel::dsl::now),
                        api_keys::revoked_at,
                    ))
                    .for_update()
                    .first(conn)
                    .await?;
                let (current, previous, previous_works, revoked_at) = row;
                if revoked_at.is_some() {
                    return Err(revoked());
                }
                // Times by PostgreSQL's clock, which the key lookup counts from.
                let stops_at = sql::<Nullable<Timestamptz>>("now() + make_interval(hours => ")
                    .bind::<Integer, _>(i32::from(overlap.hours()))
                    .sql(")");
                // The right-hand sides read the row as it was: the current secret becomes the
                // previous one.
                diesel::update(api_keys::table.filter(api_keys::id.eq(id.0)))
                    .set((
                        api_keys::previous_prefix.eq(api_keys::prefix.nullable()),
                        api_keys::previous_secret_hash.eq(api_keys::secret_hash.nullable()),
                        api_keys::previous_expires_at.eq(stops_at),
                        api_keys::previous_last_used_at.eq(None::<DateTime<Utc>>),
                        api_keys::prefix.eq(secret.visible_prefix()),
                        api_keys::secret_hash.eq(secret.hash().to_vec()),
                        api_keys::rolled_at.eq(diesel::dsl::now),
                    ))
                    .execute(conn)
                    .await?;
                // Read in the same transaction: once it commits, the secret must reach its owner.
                let key = fetch_on(conn, id).await?;
                Ok((key, current, previous.filter(|_| previous_works == Some(true))))
            })
        })
        .await?;
    drop(conn);
    services.keys.secret_ends(&replaced, began + std::time::Duration::from_secs(u64::from(overlap.hours()) * 3600));
    if let Some(discarded) = discarded {
        services.keys.secret_ends(&discarded, began);
    }
    Ok((key, secret))
}

/// Stops a rolled key's previous secret now, for its owner, once the integrations use the new
/// one. `shown` is the prefix of the previous secret the owner was shown: if the key was rolled
/// again since, that one is gone and the one now previous is not touched (Conflict). Nothing
/// changes when it has stopped already.
pub async fn end_overlap_for(
    services: &crate::Services,
    id: ApiKeyId,
    viewer: &User,
    shown: &str,
) -> ServiceResult<ApiKey> {
    use diesel::dsl::now;
    get_as_owner(&services.db, id, viewer).await?;
    let began = std::time::Instant::now();
    let mut conn = db::conn(&services.db).await?;
    let ended: Option<Option<Vec<u8>>> = diesel::update(
        api_keys::table
            .filter(api_keys::id.eq(id.0))
            .filter(api_keys::previous_prefix.eq(shown))
            .filter(api_keys::previous_expires_at.gt(now)),
    )
    .set(api_keys::previous_expires_at.eq(now))
    .returning(api_keys::previous_secret_hash)
    .get_result(&mut conn)
    .await
    .optional()?;
    if let Some(Some(ended)) = ended {
        services.keys.secret_ends(&ended, began);
    }
    let key = fetch_on(&mut conn, id).await?;
    if key.previous_secret.as_ref().is_none_or(|p| p.prefix != shown) {
        return Err(ServiceError::Conflict(format!(
            "{shown}\u{2026} is no longer this key's previous secret: the key was rolled again. Reload the page."
        )));
    }
    Ok(key)
}

/// Moves a key's creation time back, for demo data and tests that seed past months; the quota
/// changes it has had so far move with it (meant for a key just made).
pub async fn backdate(db: &DbPool, id: ApiKeyId, created_at: DateTime<Utc>) -> ServiceResult<()> {
    use crate::schema::quota_changes;
    let mut conn = db::conn(db).await?;
    conn.transaction::<_, ServiceError, _>(|conn| {
        Box::pin(async move {
            diesel::update(api_keys::table.find(id.0)).set(api_keys::created_at.eq(created_at)).execute(conn).await?;
            // Its limits so far date from then too: a summary of the key's past measures its
            // use against them, not against the defaults.
            diesel::update(quota_changes::table.filter(quota_changes::api_key_id.eq(id.0)))
                .set(quota_changes::changed_at.eq(created_at))
                .execute(conn)
                .await?;
            Ok(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert_eq!(KeyName::parse("  Checkout server ").unwrap().as_str(), "Checkout server");
        assert!(KeyName::parse("   ").is_err());
        assert!(KeyName::parse(&"n".repeat(101)).is_err());
        assert!(KeyName::parse("bad\u{0}name").is_err());
        for broken in ["line\u{2028}Bcc: someone@example.com", "two\u{2029}paragraphs", "a\nb", "a\tb"] {
            let err = KeyName::parse(broken).unwrap_err();
            assert_eq!(err.to_string(), "A key name is one line, without control characters.", "{broken:?}");
        }
    }

    #[test]
    fn key_ids() {
        assert!(ApiKeyId::parse("not-a-uuid").is_err());
        let id = Uuid::new_v4();
        assert_eq!(ApiKeyId::parse(&id.to_string()).unwrap(), ApiKeyId(id));
    }

    /// Key ids come from URL paths: any string is either a key id or "not found", never a panic.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_input() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "\\PC{0,100}",
                // Very long (by repetition, which is cheap to generate).
                (any::<char>(), 1000..5000usize).prop_map(|(c, n)| c.to_string().repeat(n)),
                // Near-valid: hex and dashes of about the right length, braces, urn prefix.
                "(urn:uuid:|\\{)?[0-9a-fA-FgG-]{30,40}\\}?",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn parse_never_panics(raw in any_input()) {
                match ApiKeyId::parse(&raw) {
                    // Whatever was accepted has one canonical spelling, which parses back to it.
                    Ok(id) => prop_assert_eq!(ApiKeyId::parse(&id.to_string()).unwrap(), id),
                    Err(e) => prop_assert!(matches!(e, ServiceError::NotFound), "{e:?}"),
                }
            }

            #[test]
            fn every_spelling_of_an_id_parses(bytes in any::<[u8; 16]>(), pad in "[ \\t\\n]{0,3}") {
                let id = Uuid::from_bytes(bytes);
                for spelled in [
                    id.hyphenated().to_string(),
                    id.simple().to_string(),
                    id.braced().to_string(),
                    id.urn().to_string(),
                    id.hyphenated().to_string().to_uppercase(),
                ] {
                    let raw = format!("{pad}{spelled}{pad}");
                    prop_assert_eq!(ApiKeyId::parse(&raw).unwrap(), ApiKeyId(id), "{:?}", raw);
                }
            }
        }
    }
}
