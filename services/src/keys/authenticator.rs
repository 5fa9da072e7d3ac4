//! Resolves presented API key secrets to keys and their quotas, with a short per-instance cache
//! so the metered path rarely touches PostgreSQL. Entries live a few seconds: a revoked key
//! stops working on every instance within [`KeyAuthenticator::TTL`]. A rolled key's previous
//! secret is known with the time left until it stops, which each instance counts down on its own
//! monotonic clock (so it stops on time even while PostgreSQL cannot be asked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{Double, Nullable};
use diesel_async::RunQueryDsl;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use uuid::Uuid;

use super::api_keys::ApiKeyId;
use super::quota::Quota;
use super::secret::ApiKeySecret;
use crate::db::{self, DbPool};
use crate::schema::{api_key_quotas, api_keys};
use crate::{ServiceError, ServiceResult};

/// An active key, as the metered path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedKey {
    pub id: ApiKeyId,
    pub owner_id: i64,
    pub quota: Quota,
    /// When the quota last changed (ms since the epoch, `updated_at` as stamped by PostgreSQL,
    /// so it is comparable across instances); newer limits win in Redis.
    pub quota_version_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Active(AuthenticatedKey),
    Revoked,
    /// A key's previous secret, past the time it was to stop working after a roll.
    Rolled,
    Unknown,
}

type Hash = [u8; 32];

/// What this instance has seen. Known keys (active or revoked) and unknown secrets are kept
/// apart: a flood of made-up secrets fills and empties only its own map, so it can never push
/// out the last known state of real keys, which stands in while PostgreSQL is down.
#[derive(Default)]
struct Cache {
    /// Secret hash → what it resolved to. Bounded by the keys that exist; entries too old to
    /// stand in for PostgreSQL are pruned when it grows large.
    known: HashMap<Hash, Known>,
    /// Secret hash → when PostgreSQL last said no such key.
    unknown: HashMap<Hash, Instant>,
    /// Secrets this instance itself rolled away or ended → when they stop, and when that was
    /// recorded. A lookup that began before the change may answer after it: it cannot give them
    /// a later end.
    ends: HashMap<Hash, (Instant, Instant)>,
    /// Size of `known` at which stale entries are next pruned: twice what the last prune kept.
    /// With more live keys than the capacity (a large deployment), pruning at the capacity
    /// would scan the whole map, under the write lock, on every insert.
    prune_known_at: usize,
    #[cfg(test)]
    prunes: usize,
}

/// A key's last known state.
#[derive(Debug, Clone, Copy)]
struct Known {
    check: KeyCheck,
    /// When PostgreSQL last said so: it stands in for PostgreSQL until
    /// [`KeyAuthenticator::STALE_IF_ERROR`] after this.
    confirmed: Instant,
    /// When it was last looked up, whether PostgreSQL answered or not: the next lookup waits
    /// [`KeyAuthenticator::TTL`] after this.
    tried: Instant,
    /// A previous secret's end (see [`Resolved`]).
    stops_at: Option<Instant>,
}

impl Known {
    fn resolved(&self) -> Resolved {
        Resolved { check: self.check, stops_at: self.stops_at }
    }
}

impl Cache {
    fn get(&self, hash: &Hash) -> Option<Known> {
        self.known.get(hash).copied().or_else(|| {
            let &at = self.unknown.get(hash)?;
            Some(Known { check: KeyCheck::Unknown, confirmed: at, tried: at, stops_at: None })
        })
    }

    /// Keeps what PostgreSQL said of `hash`, with any earlier end this instance knows of; returns
    /// what was kept.
    fn insert(&mut self, hash: Hash, at: Instant, resolved: Resolved, capacity: usize) -> Resolved {
        let Resolved { check, stops_at } = resolved;
        let stops_at = earliest(stops_at, self.ends.get(&hash).map(|&(end, _)| end));
        if check == KeyCheck::Unknown {
            self.known.remove(&hash);
            if self.unknown.len() >= capacity {
                self.unknown.clear();
            }
            self.unknown.insert(hash, at);
        } else {
            self.unknown.remove(&hash);
            if self.known.len() >= self.prune_known_at.max(capacity) && !self.known.contains_key(&hash) {
                self.known.retain(|_, known| known.confirmed.elapsed() < KeyAuthenticator::STALE_IF_ERROR);
                self.prune_known_at = self.known.len() * 2;
                #[cfg(test)]
                {
                    self.prunes += 1;
                }
            }
            self.known.insert(hash, Known { check, confirmed: at, tried: at, stops_at });
        }
        Resolved { check, stops_at }
    }

    /// The secret `hash` stops at `at` (or earlier, if it was to stop before).
    fn end(&mut self, hash: Hash, at: Instant) {
        let now = Instant::now();
        // Lookups begun before the change answer within LOOKUP_TIMEOUT: then a record has done
        // its work (the entry, and PostgreSQL, carry the end from there).
        self.ends.retain(|_, &mut (_, made)| now.duration_since(made) < KeyAuthenticator::LOOKUP_TIMEOUT * 10);
        let end = earliest(Some(at), self.ends.get(&hash).map(|&(end, _)| end)).unwrap_or(at);
        self.ends.insert(hash, (end, now));
        if let Some(known) = self.known.get_mut(&hash) {
            known.stops_at = earliest(known.stops_at, Some(end));
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What PostgreSQL said of a secret: the key, and when this secret stops working if it is the
/// key's previous one (on this instance's monotonic clock, from the time left that PostgreSQL
/// computed on its own: no two clocks are compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resolved {
    check: KeyCheck,
    stops_at: Option<Instant>,
}

impl Resolved {
    /// What the secret is worth now.
    fn now(self) -> KeyCheck {
        match (self.check, self.stops_at) {
            (KeyCheck::Active(_), Some(at)) if Instant::now() >= at => KeyCheck::Rolled,
            (check, _) => check,
        }
    }
}

/// Why a lookup failed, in a form every request waiting on it can have a copy of.
#[derive(Debug, Clone)]
enum LookupFailure {
    /// PostgreSQL could not be reached or did not answer in time (a 503, not a 500).
    Unavailable(String),
    /// No place among the lookups of unseen secrets came free in time (a 503 too): too many
    /// at once, e.g. a flood of made-up keys, with PostgreSQL perhaps well.
    Overloaded(&'static str),
    Internal(String),
}

impl From<ServiceError> for LookupFailure {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::DatabaseUnavailable(why) => Self::Unavailable(why),
            ServiceError::Overloaded(what) => Self::Overloaded(what),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<LookupFailure> for ServiceError {
    fn from(f: LookupFailure) -> Self {
        match f {
            LookupFailure::Unavailable(why) => Self::DatabaseUnavailable(why),
            LookupFailure::Overloaded(what) => Self::Overloaded(what),
            LookupFailure::Internal(why) => Self::Internal(why),
        }
    }
}

/// A lookup in flight, shared by every request that needs its answer.
type Lookup = Shared<BoxFuture<'static, Result<Resolved, LookupFailure>>>;

#[derive(Clone)]
pub struct KeyAuthenticator {
    db: DbPool,
    cache: Arc<RwLock<Cache>>,
    /// Concurrent requests with a key whose entry expired ask PostgreSQL once, together.
    in_flight: Arc<Mutex<HashMap<Hash, Lookup>>>,
    capacity: usize,
    /// [`Self::STALE_IF_ERROR`], shorter in tests.
    stale_if_error: Duration,
    /// Lookups of secrets this instance has not seen that may use the database at once: half
    /// its pool. Anyone can send well-formed made-up keys, each a lookup; without a bound a
    /// flood of them took the connections pages, sign-in and the usage writer need. Past it,
    /// lookups wait half their [`Self::LOOKUP_TIMEOUT`] for a place, then are shed (a 503 as
    /// for a hung database, logged as shed work, not as PostgreSQL failing). Keys it
    /// knows (every few seconds each, to see revocations) are not bounded: a flood cannot
    /// hold them up, and a busy deployment with many keys is not slowed down.
    lookups: Arc<tokio::sync::Semaphore>,
    /// When this instance last wrote each previous secret's use (see `previous_secret_used`).
    previous_uses: Arc<Mutex<HashMap<Hash, Instant>>>,
}

impl KeyAuthenticator {
    pub const TTL: Duration = Duration::from_secs(2);
    /// How long a cached answer may stand in while PostgreSQL cannot be asked.
    pub const STALE_IF_ERROR: Duration = Duration::from_secs(15 * 60);
    /// Longest wait for PostgreSQL (pool checkout and query) on the metered path. The pool's own
    /// timeouts cover only checkout; a database that accepts the query and never answers
    /// (partition, lock wait) would otherwise hold every request whose entry is past its TTL.
    /// Past it the lookup counts as a failure: the last known state stands in, or a 503.
    pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
    /// Bounds each of the cache's maps (see [`Cache`]).
    pub const CAPACITY: usize = 100_000;
    /// How often an instance writes that a previous secret was used, at most.
    pub const PREVIOUS_USE_EVERY: Duration = Duration::from_secs(60);

    pub fn new(db: DbPool) -> Self {
        Self::with_capacity(db, Self::CAPACITY)
    }

    /// With room for `capacity` known keys and as many unknown secrets (tests use a small one).
    pub fn with_capacity(db: DbPool, capacity: usize) -> Self {
        let lookups = Arc::new(tokio::sync::Semaphore::new((db.status().max_size / 2).max(1)));
        Self {
            db,
            cache: Arc::new(RwLock::new(Cache::default())),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            capacity: capacity.max(1),
            stale_if_error: Self::STALE_IF_ERROR,
            lookups,
            previous_uses: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// With last known states standing in for PostgreSQL for `limit` instead (tests).
    pub fn with_stale_limit(self, limit: Duration) -> Self {
        Self { stale_if_error: limit, ..self }
    }

    pub async fn check(&self, secret: &ApiKeySecret) -> ServiceResult<KeyCheck> {
        let hash = secret.hash();
        let resolved = self.resolve(hash).await?;
        let check = resolved.now();
        if let (KeyCheck::Active(_), Some(_)) = (check, resolved.stops_at) {
            self.previous_secret_used(hash);
        }
        Ok(check)
    }

    /// What `hash` is, from the cache or PostgreSQL.
    async fn resolve(&self, hash: Hash) -> ServiceResult<Resolved> {
        let cached = self.cache.read().ok().and_then(|cache| cache.get(&hash));
        if let Some(known) = cached {
            if known.tried.elapsed() < Self::TTL {
                return Ok(known.resolved());
            }
        }
        // A key this instance knows is looked up again without waiting for a place: only
        // secrets it has not seen (anyone can make those up) are bounded.
        let known = cached.is_some_and(|known| known.check != KeyCheck::Unknown);
        match self.lookup(hash, !known).await {
            Ok(resolved) => Ok(resolved),
            // PostgreSQL unreachable or not answering: a key confirmed recently keeps its last
            // known state, so metered traffic goes on through a database outage (tried again
            // after another TTL: a hung database costs a key's requests the timeout once per
            // TTL). Counted from the last confirmation, not the last use: a key revoked while
            // this instance cannot reach PostgreSQL stops working here within STALE_IF_ERROR,
            // however often it is used.
            Err(failure) => match cached {
                Some(known) if known.confirmed.elapsed() < self.stale_if_error => {
                    match known.check {
                        // Refused either way; only when to ask again matters.
                        KeyCheck::Unknown => {
                            self.remember(hash, Resolved { check: KeyCheck::Unknown, stops_at: None });
                        }
                        _ => self.tried(hash),
                    }
                    // As the entry is now, not as it was read before the lookup: a roll may have
                    // ended the secret meanwhile.
                    let now = self.cache.read().ok().and_then(|cache| cache.get(&hash)).unwrap_or(known);
                    Ok(now.resolved())
                }
                _ => Err(failure.into()),
            },
        }
    }

    /// The key was revoked on this instance: refused here from now on (other instances follow
    /// within [`Self::TTL`]).
    pub fn revoked(&self, id: ApiKeyId) {
        self.update_entries_of(id, |entry| {
            let now = Instant::now();
            *entry = Known { check: KeyCheck::Revoked, confirmed: now, tried: now, stops_at: None };
            true
        });
    }

    /// A secret this instance rolled away or ended stops at `at` here, whatever a lookup begun
    /// before the change answers, and even if PostgreSQL cannot be asked then (other instances
    /// read the change within [`Self::TTL`]).
    pub fn secret_ends(&self, hash: &[u8], at: Instant) {
        let Ok(hash) = Hash::try_from(hash) else { return };
        if let Ok(mut cache) = self.cache.write() {
            cache.end(hash, at);
        }
    }

    /// The key's quota changed on this instance: its next request reads the key again. Its last
    /// known state stays, to stand in if PostgreSQL is down then (emptying the whole cache here
    /// used to turn a database outage soon after any change into 503s for every key).
    pub fn quota_changed(&self, id: ApiKeyId) {
        let stale = Instant::now().checked_sub(Self::TTL);
        self.update_entries_of(id, |entry| match stale {
            Some(stale) => {
                entry.tried = entry.tried.min(stale);
                true
            }
            // Too early in the process's life to date an entry back: forgotten instead.
            None => false,
        });
    }

    /// A call came with a key's previous secret: the key's page says when it was last used, so
    /// its owner can tell whether something still uses it before it stops. Written off the
    /// request path, at most once a minute per secret on each instance, best effort.
    fn previous_secret_used(&self, hash: Hash) {
        let now = Instant::now();
        {
            let Ok(mut written) = self.previous_uses.lock() else { return };
            if written.get(&hash).is_some_and(|&at| now.duration_since(at) < Self::PREVIOUS_USE_EVERY) {
                return;
            }
            if written.len() >= self.capacity {
                // Forgetting costs at most one more write per secret.
                written.clear();
            }
            written.insert(hash, now);
        }
        // Within the bound of lookups (half the pool): past it, this use is not written, and
        // the next one tries again.
        let Ok(place) = self.lookups.clone().try_acquire_owned() else {
            if let Ok(mut written) = self.previous_uses.lock() {
                written.remove(&hash);
            }
            return;
        };
        let db = self.db.clone();
        tokio::spawn(async move {
            let _place = place;
            let write = async {
                let mut conn = db::conn(&db).await?;
                diesel::update(api_keys::table.filter(api_keys::previous_secret_hash.eq(hash.to_vec())))
                    .set(api_keys::previous_last_used_at.eq(diesel::dsl::now))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, ServiceError>(())
            };
            match tokio::time::timeout(Self::LOOKUP_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "a previous secret's last use was not written"),
                Err(_) => tracing::debug!("a previous secret's last use was not written in time"),
            }
        });
    }

    /// Applies `update` to the key's entries; those it returns false for are forgotten.
    fn update_entries_of(&self, id: ApiKeyId, update: impl Fn(&mut Known) -> bool) {
        if let Ok(mut cache) = self.cache.write() {
            // Entries are by secret: a scan, but only when a key changes.
            cache.known.retain(|_, entry| match entry.check {
                KeyCheck::Active(k) if k.id == id => update(entry),
                _ => true,
            });
        }
    }

    /// Caches what PostgreSQL said; returns it with any earlier end this instance knows of.
    fn remember(&self, hash: Hash, resolved: Resolved) -> Resolved {
        match self.cache.write() {
            Ok(mut cache) => cache.insert(hash, Instant::now(), resolved, self.capacity),
            Err(_) => resolved,
        }
    }

    /// A lookup of a known key failed: the next waits another TTL; its confirmation stays.
    fn tried(&self, hash: Hash) {
        if let Ok(mut cache) = self.cache.write() {
            if let Some(known) = cache.known.get_mut(&hash) {
                known.tried = Instant::now();
            }
        }
    }

    /// Joins the lookup of `hash` in flight, or starts one. It runs in a task of its own, so
    /// it finishes (and fills the cache) even if every request waiting on it goes away.
    fn lookup(&self, hash: Hash, bounded: bool) -> Lookup {
        let Ok(mut in_flight) = self.in_flight.lock() else {
            return futures_util::future::ready(Err(LookupFailure::Internal(
                "the key lookup table is poisoned".into(),
            )))
            .boxed()
            .shared();
        };
        if let Some(lookup) = in_flight.get(&hash) {
            return lookup.clone();
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let deadline = started + Self::LOOKUP_TIMEOUT;
            let query = async {
                // A place must come free within half the time, or the lookup is shed: waiting
                // to the end would take a place freed just before the deadline and then time
                // out in PostgreSQL, which is not where the trouble is.
                let place_by = started + Self::LOOKUP_TIMEOUT / 2;
                let _place = match bounded {
                    true => match tokio::time::timeout_at(place_by, this.lookups.acquire()).await {
                        Ok(place) => Some(place.map_err(|e| ServiceError::Internal(e.to_string()))?),
                        Err(_) => return Err(ServiceError::Overloaded("lookups of API keys not seen before")),
                    },
                    false => None,
                };
                tokio::time::timeout_at(deadline, this.query_key(&hash))
                    .await
                    .unwrap_or_else(|_| Err(ServiceError::DatabaseUnavailable("the API key lookup timed out".into())))
            };
            let loaded = query.await;
            // Every request waiting on this lookup gets what was kept: a roll during the lookup
            // may have ended the secret.
            let loaded = loaded.map(|resolved| this.remember(hash, resolved));
            if let Ok(mut in_flight) = this.in_flight.lock() {
                in_flight.remove(&hash);
            }
            loaded.map_err(LookupFailure::from)
        });
        let lookup = async move {
            task.await.unwrap_or_else(|e| Err(LookupFailure::Internal(format!("the key lookup failed: {e}"))))
        }
        .boxed()
        .shared();
        in_flight.insert(hash, lookup.clone());
        lookup
    }

    /// The key whose current or previous secret has this hash.
    async fn query_key(&self, hash: &Hash) -> ServiceResult<Resolved> {
        // Before the query: the time left is counted from no later than PostgreSQL's now().
        let asked = Instant::now();
        type Row = (Uuid, i64, Option<DateTime<Utc>>, Vec<u8>, Option<f64>, i64, i64, Option<i32>, DateTime<Utc>);
        let mut conn = db::conn(&self.db).await?;
        let row: Option<Row> = api_keys::table
            .inner_join(api_key_quotas::table)
            .filter(api_keys::secret_hash.eq(hash.to_vec()).or(api_keys::previous_secret_hash.eq(hash.to_vec())))
            .select((
                api_keys::id,
                api_keys::owner_id,
                api_keys::revoked_at,
                api_keys::secret_hash,
                // Seconds the previous secret has left, by PostgreSQL's clock alone.
                sql::<Nullable<Double>>("EXTRACT(EPOCH FROM (api_keys.previous_expires_at - now()))::float8"),
                api_key_quotas::requests_per_hour,
                api_key_quotas::requests_per_day,
                api_key_quotas::burst_per_second,
                api_key_quotas::updated_at,
            ))
            .first(&mut conn)
            .await
            .optional()?;
        let Some((id, owner_id, revoked_at, current_hash, previous_left, hour, day, burst, updated_at)) = row else {
            return Ok(Resolved { check: KeyCheck::Unknown, stops_at: None });
        };
        if revoked_at.is_some() {
            return Ok(Resolved { check: KeyCheck::Revoked, stops_at: None });
        }
        let key = AuthenticatedKey {
            id: ApiKeyId(id),
            owner_id,
            quota: Quota::from_stored(hour, day, burst)?,
            quota_version_ms: updated_at.timestamp_millis(),
        };
        // The previous secret carries its end; past it, `Resolved::now` says `Rolled`.
        let stops_at = match current_hash.as_slice() == hash.as_slice() {
            true => None,
            false => {
                let left = previous_left.filter(|left| left.is_finite()).unwrap_or(0.0).max(0.0);
                Some(asked + Duration::from_secs_f64(left.min(1e9)))
            }
        };
        Ok(Resolved { check: KeyCheck::Active(key), stops_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> KeyCheck {
        KeyCheck::Active(AuthenticatedKey {
            id: ApiKeyId(Uuid::nil()),
            owner_id: 1,
            quota: Quota::default_for_new_key(),
            quota_version_ms: 0,
        })
    }

    #[test]
    fn a_previous_secret_works_until_its_end() {
        let now = Instant::now();
        let until = |stops_at| Resolved { check: active(), stops_at }.now();
        assert_eq!(until(None), active());
        assert_eq!(until(Some(now + Duration::from_secs(3600))), active());
        assert_eq!(until(Some(now)), KeyCheck::Rolled);
        // A revoked key stays revoked, whichever of its secrets is presented.
        assert_eq!(Resolved { check: KeyCheck::Revoked, stops_at: Some(now) }.now(), KeyCheck::Revoked);
    }

    #[test]
    fn a_lookup_begun_before_a_roll_cannot_give_the_old_secret_a_later_end() {
        let mut cache = Cache::default();
        let (secret, other) = ([7u8; 32], [8u8; 32]);
        let now = Instant::now();
        // Rolled here at once, while a lookup of the secret was on its way.
        cache.end(secret, now);
        // That lookup read the row before the roll: the secret was still the current one. What
        // is kept, and handed to every request waiting on the lookup, has the roll's end.
        let kept = cache.insert(secret, now, Resolved { check: active(), stops_at: None }, 100);
        assert_eq!(kept.now(), KeyCheck::Rolled);
        assert_eq!(cache.get(&secret).map(|k| k.resolved().now()), Some(KeyCheck::Rolled));
        // An end given later by PostgreSQL cannot move it either; other secrets are untouched.
        cache.insert(secret, now, Resolved { check: active(), stops_at: Some(now + Duration::from_secs(60)) }, 100);
        assert_eq!(cache.get(&secret).map(|k| k.resolved().now()), Some(KeyCheck::Rolled));
        cache.insert(other, now, Resolved { check: active(), stops_at: None }, 100);
        assert_eq!(cache.get(&other).map(|k| k.resolved().now()), Some(active()));
    }

    #[test]
    fn more_live_keys_than_the_capacity_do_not_make_every_insert_scan_the_cache() {
        let mut cache = Cache::default();
        let active = Resolved { check: KeyCheck::Revoked, stops_at: None };
        for i in 0..10_000u32 {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(hash, Instant::now(), active, 100);
            // A refresh of a key already cached scans nothing either.
            cache.insert(hash, Instant::now(), active, 100);
        }
        // Nothing was stale: every key stays (they stand in for PostgreSQL during an outage).
        assert_eq!(cache.known.len(), 10_000);
        assert!(cache.prunes <= 8, "{} scans of the cache", cache.prunes);
    }
}
