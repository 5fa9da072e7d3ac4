//! The quota manager: checks and counts each metered request against its key's hourly and daily
//! calendar windows (UTC) and optional burst limit, in one atomic Redis step.
//!
//! Time comes from the Redis server (`TIME` inside the script), so every app instance agrees on
//! window boundaries. A rejected request consumes nothing; across any number of instances the
//! number admitted in a window is exactly `min(limit, attempts)`.
//!
//! Concurrent checks of one key on one instance share a script call: while a key's call is in
//! flight, later checks queue, and the next call decides all of them in arrival order (the
//! script admits the first as many as the windows have room for). Each request still gets its
//! own exact use of every window, so headers and alerts are as if checked one by one, while
//! Redis runs one script per batch instead of one per request.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, Script};
use tokio::sync::{mpsc, oneshot};

use super::api_keys::ApiKeyId;
use super::authenticator::AuthenticatedKey;
use super::fallback_limiter::{FallbackLimiter, LocalAdmissions};
use super::quota::Quota;
use super::quota_outage::{Marked, QuotaOutage, Recovered, Retry};
use crate::redis_pool::{self, RedisPool, SharedConnection};
use crate::usage::time_from_ms;
use crate::{ServiceError, ServiceResult};

/// A quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Burst,
}

impl Window {
    /// A window's length: the calendar hour and day in UTC, and the burst limiter's second (the
    /// `w=` of its policy). The one place in Rust this is written (the Lua scripts, which run
    /// in Redis, have their own).
    pub const fn length_ms(self) -> i64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
            Self::Burst => 1_000,
        }
    }

    /// The start of the window holding `at_ms` (hours and days start on the UTC clock's whole
    /// hours and midnights: the epoch is one).
    pub const fn start_ms(self, at_ms: i64) -> i64 {
        at_ms - at_ms.rem_euclid(self.length_ms())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Burst => "burst",
        }
    }
}

/// Use of one window after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUse {
    pub window: Window,
    pub limit: i64,
    pub used: i64,
    /// When the window resets, in ms since the epoch (on the Redis clock).
    pub reset_at_ms: i64,
}

impl WindowUse {
    /// When the window began, in ms since the epoch.
    pub fn start_ms(&self) -> i64 {
        self.reset_at_ms - self.window.length_ms()
    }

    pub fn remaining(&self) -> i64 {
        (self.limit - self.used).max(0)
    }

    /// The reset, rounded up to a whole second (as clients are told it): never before a retry
    /// can succeed. (Hours and days reset on whole seconds; a burst's retry time need not.)
    pub fn reset_at(&self) -> DateTime<Utc> {
        time_from_ms(ceil_div(self.reset_at_ms, 1000) * 1000)
    }

    /// Whole seconds until the reset, rounded up.
    pub fn seconds_to_reset(&self, now_ms: i64) -> i64 {
        ceil_div(self.reset_at_ms - now_ms, 1000).max(0)
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDecision {
    pub admitted: bool,
    pub hour: WindowUse,
    pub day: WindowUse,
    /// Requests per second allowed in a burst, if limited.
    pub burst_per_second: Option<i64>,
    /// The window that refused the request (the one resetting last, if several did).
    pub blocked_by: Option<Window>,
    /// Seconds until the request could be admitted: rounded up, at least 1. Only when refused.
    pub retry_after_secs: Option<i64>,
    /// The time of the decision on the Redis clock, ms since the epoch.
    pub now_ms: i64,
}

impl QuotaDecision {
    /// The window the `RateLimit` and `X-RateLimit-*` headers report: the one that refused the
    /// request, so that its reset is when a retry can succeed (the burst window's use is its
    /// rate, its reset the retry time); otherwise the one with the least remaining, the day on
    /// ties (the later reset: when both run out, only the day's frees the key).
    pub fn reported_window(&self) -> WindowUse {
        match self.blocked_by {
            Some(Window::Hour) => self.hour,
            Some(Window::Day) => self.day,
            Some(Window::Burst) => {
                let rate = self.burst_per_second.unwrap_or(0);
                let retry_ms = self.retry_after_secs.unwrap_or(1) * 1000;
                WindowUse { window: Window::Burst, limit: rate, used: rate, reset_at_ms: self.now_ms + retry_ms }
            }
            None if self.hour.remaining() < self.day.remaining() => self.hour,
            None => self.day,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        time_from_ms(self.now_ms)
    }
}

pub(super) fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1).div_euclid(b)
}

/// The Redis key holding a key's counters and limits. `{…}` is a hash tag: everything of one
/// API key lives in one cluster slot.
pub fn quota_redis_key(id: ApiKeyId) -> String {
    format!("km:{{{id}}}:quota")
}

/// What [`QuotaManager::probe`] writes, in the key's slot, to find out whether Redis takes
/// the key's checks again.
fn probe_redis_key(id: ApiKeyId) -> String {
    format!("km:{{{id}}}:probe")
}

/// What metered requests get while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Keep answering, within the local fallback limit (the default).
    Open,
    /// Refuse with 503 until Redis is back.
    Closed,
}

/// How the quota manager copes with Redis being down or slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// How long a quota check may take before Redis counts as unavailable.
    pub timeout: Duration,
    pub mode: FailMode,
    /// Instances sharing the quota; each falls back to its share of every limit.
    pub instances: u32,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self { timeout: Duration::from_millis(250), mode: FailMode::Open, instances: 1 }
    }
}

/// The quota manager's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decided by Redis: exact across every instance.
    Enforced(QuotaDecision),
    /// Redis unavailable: decided by this instance's fallback limit (`decision`, whose limits
    /// are this instance's share). `known` is the key's own limits with the use this instance
    /// knows of (Redis' last word and its own admissions since): a lower bound of the
    /// deployment's use while Redis' count is exact, so alerts read from it are not early. (A
    /// check Redis ran after its timeout is counted there as well as by the fallback until it
    /// is given back: a batch early at worst.)
    Fallback { decision: QuotaDecision, known: QuotaDecision },
    /// Redis unavailable and the policy is fail-closed.
    Unavailable,
}

/// The quota check (see the script's header), one atomic step per batch of requests.
pub const CHECK_SCRIPT: &str = concat!(include_str!("quota_expiry.lua"), include_str!("quota_check.lua"));

/// Stores a key's new limits for every instance, unless newer ones are stored.
const PUBLISH_SCRIPT: &str = concat!(include_str!("quota_expiry.lua"), include_str!("quota_publish.lua"));

/// Adds counts to a key's windows (hour and day starts in seconds; ARGV[5] the clock offset in
/// ms, tests only); returns the hour's and the day's counts after, -1 for a window not counted
/// into. Admissions (positive counts) start their window when it is Redis' current one and
/// Redis holds an older one or none (the key's first requests of it came during the outage, or
/// Redis lost its data); a give-back (negative) only corrects its own. A day started here keeps
/// the key as long as the check script would (else a key used the day before would expire with
/// this day's counts an hour into it).
pub const RECONCILE_SCRIPT: &str = concat!(
    include_str!("quota_expiry.lua"),
    r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[5] or 0)
local now_s = math.floor(now_ms / 1000)
local s = redis.call('HMGET', KEYS[1], 'hw', 'dw')
local function add(window_field, count_field, held, start, n, current)
  held, start, n = tonumber(held), tonumber(start), tonumber(n)
  if held == start then return redis.call('HINCRBY', KEYS[1], count_field, n) end
  if n > 0 and start == current and (held == nil or held < start) then
    redis.call('HSET', KEYS[1], window_field, start, count_field, n)
    return n
  end
  return -1
end
local hc = add('hw', 'hc', s[1], ARGV[1], ARGV[2], now_s - now_s % 3600)
local day_start = now_s - now_s % 86400
local dc = add('dw', 'dc', s[2], ARGV[3], ARGV[4], day_start)
if (dc ~= -1 and tonumber(s[2]) ~= day_start) or (hc ~= -1 and redis.call('PTTL', KEYS[1]) < 0) then
  keep_past_day(KEYS[1], now_ms)
end
return {hc, dc}
"
);

/// A key's use after counts were added to it without a request to carry what they reach (an
/// outage's local admissions): for the alerts, which are otherwise read off requests.
pub type AddedCounts = (ApiKeyId, QuotaDecision);

/// Such reports waiting for their reader at most (a few per key per outage).
const ADDED_COUNTS_QUEUE: usize = 1024;

/// How long a report waits for room in that queue before it is dropped (the key's next request
/// that Redis decides then carries what it would have).
const ADDED_COUNTS_WAIT: Duration = Duration::from_secs(10);

/// How long a script call given up on is still listened to, for what it counted (see
/// `QuotaManager::give_back_when_late`). Longer than any pause a Redis comes back from with its
/// data; each such call holds only a task and a clone of the shared connection.
const LATE_REPLY_WAIT: Duration = Duration::from_secs(600);

/// Script calls listened to that way at once, at most (each a task and a pending reply).
const MAX_PARKED_CALLS: usize = 10_000;

/// Timed-out script calls still listened to, and whether reaching the bound was logged.
#[derive(Default)]
struct ParkedCalls {
    calls: std::sync::atomic::AtomicUsize,
    full_logged: std::sync::atomic::AtomicBool,
}

/// What adding counts to a key's windows (`RECONCILE_SCRIPT`) came to.
#[derive(Clone, Copy)]
enum Added {
    /// The hour's and the day's counts after (-1: a window not counted into).
    Counts(i64, i64),
    /// Surely not added: Redis refused or could not be reached.
    Failed,
    /// Perhaps added: no answer in time, or the connection dropped once the call was sent.
    Unknown,
}

/// Most a `RECONCILE_SCRIPT` call is waited for (a Redis paused just after it came back).
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds `hour` and `day` counts (negative to give back) to `key`'s windows starting at those
/// times, through `RECONCILE_SCRIPT`.
async fn add_to_counts(
    shared: &SharedConnection,
    script: &Script,
    key: ApiKeyId,
    (hour_start_ms, hour): (i64, i64),
    (day_start_ms, day): (i64, i64),
    clock_offset_ms: i64,
) -> Added {
    let Ok(mut conn) = shared.get().await else { return Added::Failed };
    let mut invocation = script.key(quota_redis_key(key));
    invocation
        .arg(hour_start_ms.div_euclid(1000))
        .arg(hour)
        .arg(day_start_ms.div_euclid(1000))
        .arg(day)
        .arg(clock_offset_ms);
    let added: Result<redis::RedisResult<(i64, i64)>, _> =
        tokio::time::timeout(RECONCILE_TIMEOUT, invocation.invoke_async(&mut conn)).await;
    match added {
        Ok(Ok((hour_count, day_count))) => Added::Counts(hour_count, day_count),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, %key, "could not correct the quota counts");
            if e.is_timeout() || e.is_connection_dropped() {
                Added::Unknown
            } else {
                Added::Failed
            }
        }
        Err(_) => {
            tracing::warn!(%key, "no answer in time to a correction of the quota counts");
            Added::Unknown
        }
    }
}

/// After a failed check, Redis is left alone this long before it is tried again (by a probe off
/// the request path: see [`QuotaManager::probe`]).
const RETRY_REDIS_AFTER: Duration = Duration::from_secs(1);

/// How long a graceful stop waits to add what the fallback admitted to Redis' counts.
const STOP_FLUSH_WAIT: Duration = Duration::from_secs(3);
/// How often a stop tries Redis again for what the fallback admitted (see
/// [`QuotaManager::add_owed_at_stop`]).
const STOP_RETRY_EVERY: Duration = Duration::from_millis(100);

/// Most requests decided by one script call (the script's own bound).
const MAX_BATCH: usize = 10_000;

/// A check waiting for its key's next script call.
struct Waiter {
    quota: Quota,
    quota_version_ms: i64,
    /// Past this, the check is dropped unsent: its caller falls back without Redis having
    /// counted it. Once sent, a check's outcome is whatever Redis answers, so a caller never
    /// decides differently from what Redis counted.
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<ServiceResult<QuotaDecision>>,
}

/// Per key with a script call in flight: the checks that arrived since.
type Queues = Mutex<HashMap<ApiKeyId, Vec<Waiter>>>;

#[derive(Clone)]
pub struct QuotaManager {
    redis: RedisPool,
    shared: SharedConnection,
    script: Arc<Script>,
    reconcile: Arc<Script>,
    /// Shifts the Redis clock, for tests of window boundaries only.
    clock_offset_ms: Arc<AtomicI64>,
    policy: FailurePolicy,
    fallback: Arc<FallbackLimiter>,
    /// Which keys' checks skip Redis for now (ms after `epoch`).
    outage: Arc<QuotaOutage>,
    /// Timed-out script calls still listened to (`give_back_when_late`).
    parked: Arc<ParkedCalls>,
    /// Whether the loop that retries Redis for owed admissions runs (`keep_retrying_for_owed`).
    retrying: Arc<AtomicBool>,
    /// Where keys' use is reported after an outage's local admissions were added to it.
    added_counts: mpsc::Sender<AddedCounts>,
    added_counts_reader: Arc<Mutex<Option<mpsc::Receiver<AddedCounts>>>>,
    epoch: Instant,
    queues: Arc<Queues>,
}

impl QuotaManager {
    pub fn new(redis: RedisPool) -> Self {
        Self::with_policy(redis, FailurePolicy::default())
    }

    pub fn with_policy(redis: RedisPool, policy: FailurePolicy) -> Self {
        Self::with_connection(SharedConnection::new(redis), policy)
    }

    /// On a multiplexed connection shared with the rest of the request path (the usage
    /// recorder): commands issued together go out in one write and come back in one read.
    pub fn with_connection(shared: SharedConnection, policy: FailurePolicy) -> Self {
        let cluster = matches!(shared.pool(), RedisPool::Cluster(_));
        let (added_counts, reader) = mpsc::channel(ADDED_COUNTS_QUEUE);
        Self {
            redis: shared.pool().clone(),
            shared,
            script: Arc::new(Script::new(CHECK_SCRIPT)),
            reconcile: Arc::new(Script::new(RECONCILE_SCRIPT)),
            clock_offset_ms: Arc::new(AtomicI64::new(0)),
            fallback: Arc::new(FallbackLimiter::new(policy.instances)),
            policy,
            outage: Arc::new(QuotaOutage::new(cluster)),
            parked: Arc::default(),
            retrying: Arc::default(),
            added_counts,
            added_counts_reader: Arc::new(Mutex::new(Some(reader))),
            epoch: Instant::now(),
            queues: Arc::default(),
        }
    }

    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    fn elapsed_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis().min(i64::MAX as u128) as i64
    }

    /// Decides on one request: exactly, through Redis, when its check leaves within the
    /// policy's timeout and Redis answers within another; otherwise by the local fallback limit
    /// (fail-open) or not at all (fail-closed). Never an error: the limiter must not turn into a
    /// failed request.
    ///
    /// The future owns what it needs (`'static`), so a caller that is going away can hand it to
    /// a task of its own and still learn what Redis counted.
    pub fn decide(&self, key: &AuthenticatedKey) -> impl Future<Output = Verdict> + Send + 'static {
        let manager = self.clone();
        let (id, quota, version_ms) = (key.id, key.quota, key.quota_version_ms);
        async move {
            let slot = manager.outage.slot_of(id);
            let to_redis = manager.outage.is_up(slot)
                || match manager.claim_retry(slot) {
                    Retry::Wait => false,
                    Retry::Check => true,
                    // Beside the request: a Redis that still hangs holds none up.
                    Retry::Probe => {
                        manager.spawn_probe(id, slot);
                        false
                    }
                };
            if to_redis {
                let started_ms = manager.elapsed_ms();
                match manager.check_and_count(id, &quota, version_ms).await {
                    Ok(decision) => {
                        manager.mark_up(slot);
                        return Verdict::Enforced(decision);
                    }
                    Err(e) => manager.mark_down(slot, &e.to_string(), started_ms),
                }
            }
            match manager.policy.mode {
                FailMode::Open => {
                    let (decision, known) = manager.fallback.check_and_know(id, &quota, Utc::now().timestamp_millis());
                    manager.keep_retrying_for_owed();
                    Verdict::Fallback { decision, known }
                }
                FailMode::Closed => Verdict::Unavailable,
            }
        }
    }

    /// The key's windows as this instance last saw them from Redis, counting nothing: for the
    /// rate-limit headers of a fail-closed refusal (see [`FallbackLimiter::last_seen`]).
    pub fn last_seen(&self, key: &AuthenticatedKey) -> QuotaDecision {
        self.fallback.last_seen(key.id, &key.quota, Utc::now().timestamp_millis())
    }

    /// Adds what the fallback admitted during an outage to the Redis counts of its windows, off
    /// the request path (see [`Self::add_to_redis`]).
    fn add_local_admissions(&self, owed: Vec<(ApiKeyId, LocalAdmissions, (i64, i64))>) {
        if owed.is_empty() {
            return;
        }
        let manager = self.clone();
        tokio::spawn(async move {
            let reports = manager.add_to_redis(owed).await;
            manager.report_added(reports).await;
        });
    }

    /// Adds what the fallback admitted to Redis' counts, one key after the other (a Redis just
    /// back is not flooded); returns each key's use after it, against its `limits` (hour, day),
    /// for [`Self::report_added`]. What Redis surely did not take goes back to the fallback, and
    /// the key's slot counts as down, so that the next success there adds it. (What it perhaps
    /// took is not sent again: a count is better missed once than doubled.)
    async fn add_to_redis(&self, owed: Vec<(ApiKeyId, LocalAdmissions, (i64, i64))>) -> Vec<AddedCounts> {
        let offset_ms = self.clock_offset_ms.load(Ordering::Relaxed);
        let mut reports = Vec::new();
        for (key, owed, limits) in owed {
            let started_ms = self.elapsed_ms();
            let (hour, day) = ((owed.hour_start_ms, owed.hour), (owed.day_start_ms, owed.day));
            let added = add_to_counts(&self.shared, &self.reconcile, key, hour, day, offset_ms).await;
            match added {
                Added::Counts(hour_count, day_count) => self.fallback.added(key, &owed, Some((hour_count, day_count))),
                Added::Unknown => self.fallback.added(key, &owed, None),
                Added::Failed => self.fallback.put_back(key, &owed),
            }
            let Added::Counts(hour_count, day_count) = added else {
                self.mark_down(self.outage.slot_of(key), "could not add an outage's admissions", started_ms);
                continue;
            };
            // A window not counted into (-1) has nothing to report.
            let window = |window: Window, limit, start_ms, count: i64| WindowUse {
                window,
                limit,
                used: count.max(0),
                reset_at_ms: start_ms + window.length_ms(),
            };
            reports.push((
                key,
                QuotaDecision {
                    admitted: false,
                    hour: window(Window::Hour, limits.0, owed.hour_start_ms, hour_count),
                    day: window(Window::Day, limits.1, owed.day_start_ms, day_count),
                    burst_per_second: None,
                    blocked_by: None,
                    retry_after_secs: None,
                    now_ms: Utc::now().timestamp_millis(),
                },
            ));
        }
        reports
    }

    /// Reports keys' use after counts were added to it to [`Self::take_added_counts`]: each
    /// instance's own admissions may reach no alert threshold while their sum does, and no
    /// request may come to carry it. Called once every count is in: a slow reader (it stores
    /// alerts in PostgreSQL) must not hold them back. Waited for a while, not for ever: with no
    /// reader, the key's next request that Redis decides carries what a report would have.
    async fn report_added(&self, reports: Vec<AddedCounts>) {
        for report in reports {
            let _ = tokio::time::timeout(ADDED_COUNTS_WAIT, self.added_counts.send(report)).await;
        }
    }

    /// Once some slot's outage ends (on a single Redis: the outage), what the fallback admitted
    /// of every key whose checks go to Redis again, added to it: a key that gets no request to
    /// observe would otherwise keep it for good. Looked for off the request path, and once more
    /// a check's timeout later (a request whose check began before the recovery may be admitted
    /// by the fallback after the first look).
    fn add_owed_of_slots_up(&self) {
        let manager = self.clone();
        tokio::spawn(async move {
            for look in 0..2 {
                if look > 0 {
                    tokio::time::sleep(manager.policy.timeout + Duration::from_millis(100)).await;
                }
                let outage = &manager.outage;
                let owed = manager.fallback.take_owed(|key| outage.is_up(outage.slot_of(key)));
                let reports = manager.add_to_redis(owed).await;
                manager.report_added(reports).await;
            }
        });
    }

    /// The reports of keys' use after counts were added without a request (see
    /// [`Self::add_local_admissions`]), for the quota alerts; once, to one reader.
    pub fn take_added_counts(&self) -> Option<mpsc::Receiver<AddedCounts>> {
        self.added_counts_reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    /// Whether the last quota check that tried Redis failed (on a Redis Cluster: in some hash
    /// slot) and none has succeeded there since: what metered calls meet, so readiness reports it.
    pub fn redis_down(&self) -> bool {
        self.outage.any_down()
    }

    /// Not `OutageLog` (which needs a lock): this runs on every metered request.
    fn mark_up(&self, slot: usize) {
        match self.outage.succeeded(slot) {
            Recovered::Nothing => {}
            recovered => {
                if recovered == Recovered::Outage {
                    tracing::info!("Redis answers quota checks again");
                }
                self.add_owed_of_slots_up();
            }
        }
    }

    /// For a check that started at `started_ms`; one that cost its whole timeout counts as
    /// timed out (a hung Redis, not a refusal).
    fn mark_down(&self, slot: usize, why: &str, started_ms: i64) {
        let now = self.elapsed_ms();
        let timed_out = now - started_ms >= self.policy.timeout.as_millis() as i64;
        let until = now + RETRY_REDIS_AFTER.as_millis() as i64;
        // Logged once per outage, not per request.
        if self.outage.failed(slot, now, until, timed_out) == Marked::OutageBegins {
            tracing::warn!(error = why, mode = ?self.policy.mode, "Redis unavailable for quota checks; using the fallback");
        }
        // Admissions that did not reach Redis may have been put back.
        self.keep_retrying_for_owed();
    }

    /// Who tries Redis again for `slot`, which is not up (see [`QuotaOutage::claim_retry`]).
    fn claim_retry(&self, slot: usize) -> Retry {
        let now = self.elapsed_ms();
        // Longer than a try can take: its own success or failure says what comes next.
        let hold_until = now + (self.policy.timeout + RETRY_REDIS_AFTER).as_millis() as i64;
        self.outage.claim_retry(slot, now, hold_until)
    }

    /// [`Self::probe`] in a task of its own.
    fn spawn_probe(&self, key: ApiKeyId, slot: usize) {
        let manager = self.clone();
        tokio::spawn(async move { manager.probe(key, slot).await });
    }

    /// Tries Redis again for `key`'s slot with a write that counts nothing (a key of its own
    /// beside the key's quota state, gone within a second), within the check timeout. A write,
    /// as the check is one: a Redis that answers reads but refuses writes (`OOM` at its memory
    /// limit, `MISCONF` after a failed save, `READONLY` on a replica) stays down instead of
    /// coming back and failing the next check, once a second. Taken: what this instance
    /// admitted of the key meanwhile is added to its counts, then the slot's checks go to Redis
    /// again (other keys' admissions follow, see [`Self::mark_up`]).
    async fn probe(&self, key: ApiKeyId, slot: usize) {
        let started_ms = self.elapsed_ms();
        let write = crate::redis_pool::probe_write(&probe_redis_key(key));
        match self.shared.answers(&write, self.policy.timeout).await {
            // The slot is still held meanwhile: no check of the key reaches Redis before them.
            Ok(()) => {
                if self.add_own_owed_first(key).await {
                    self.mark_up(slot);
                }
            }
            Err(why) => self.mark_down(slot, &why, started_ms),
        }
    }

    /// While the fallback holds admissions that Redis' counts lack (failing open), probes Redis
    /// about once a [`RETRY_REDIS_AFTER`] for their keys' slots and adds them where it answers:
    /// an instance that gets no more requests for them would otherwise keep them from Redis
    /// for good, and the other instances would hand out the same quota again. One such loop
    /// per instance, started by a fallback admission or a failed add, ended when nothing is owed.
    fn keep_retrying_for_owed(&self) {
        // A load first: this runs on every request the fallback decides.
        if self.policy.mode != FailMode::Open
            || self.retrying.load(Ordering::Relaxed)
            || self.retrying.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let manager = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_REDIS_AFTER).await;
                let owing = manager.fallback.owing();
                if owing.is_empty() {
                    manager.retrying.store(false, Ordering::SeqCst);
                    // Admissions since the look found this loop still running: it goes on.
                    if !manager.fallback.may_owe() || manager.retrying.swap(true, Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                let outage = &manager.outage;
                let up = manager.fallback.take_owed(|key| outage.is_up(outage.slot_of(key)));
                let reports = manager.add_to_redis(up).await;
                manager.report_added(reports).await;
                for key in owing {
                    let slot = outage.slot_of(key);
                    if !outage.is_up(slot) && manager.claim_retry(slot) != Retry::Wait {
                        manager.spawn_probe(key, slot);
                    }
                }
            }
        });
    }

    /// At a graceful stop: what the fallback admitted and Redis' counts still lack, added to
    /// them if Redis answers within [`STOP_FLUSH_WAIT`] (else the other instances would hand
    /// out the same quota again). Tried again while Redis fails (a stop during a blip), and
    /// adds already under way (a probe's, the retry loop's) are waited for: one that fails
    /// puts its admissions back for this to take.
    pub async fn add_owed_at_stop(&self) {
        let added = async {
            loop {
                let owed = self.fallback.take_owed(|_| true);
                if !owed.is_empty() {
                    let reports = self.add_to_redis(owed).await;
                    self.report_added(reports).await;
                }
                if self.fallback.all_added() {
                    return;
                }
                tokio::time::sleep(STOP_RETRY_EVERY).await;
            }
        };
        if tokio::time::timeout(STOP_FLUSH_WAIT, added).await.is_err() {
            tracing::warn!("what quota checks admitted without Redis was not all added to its counts at the stop");
        }
    }

    /// Test hook: every later decision sees the Redis time plus `offset_ms`.
    pub fn set_test_clock_offset_ms(&self, offset_ms: i64) {
        self.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// Checks the request against `quota` (whose last change was at `quota_version_ms`) and,
    /// if every window has room, counts it in all of them: in the key's next script call
    /// (EVALSHA, one round trip), shared with the key's other concurrent checks. Fails if the
    /// check could not leave within the policy's timeout (nothing counted) or the call failed
    /// or took longer than that again (counted or not: Redis did not say).
    pub async fn check_and_count(
        &self,
        key: ApiKeyId,
        quota: &Quota,
        quota_version_ms: i64,
    ) -> ServiceResult<QuotaDecision> {
        let (reply, decided) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.policy.timeout;
        let waiter = Waiter { quota: *quota, quota_version_ms, deadline, reply };
        let first = {
            let mut queues = self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match queues.entry(key) {
                Entry::Occupied(mut queue) => {
                    queue.get_mut().push(waiter);
                    false
                }
                Entry::Vacant(slot) => {
                    slot.insert(vec![waiter]);
                    true
                }
            }
        };
        // The calls run in their own task, so a caller that stops waiting (timeout, client
        // gone) never strands the checks queued behind it.
        if first {
            tokio::spawn(self.clone().run_batches(key));
        }
        decided.await.map_err(|_| ServiceError::RedisUnavailable("quota check timed out before it was sent".into()))?
    }

    /// Decides the key's queued checks, a batch per script call, until none are left.
    async fn run_batches(self, key: ApiKeyId) {
        loop {
            let mut batch: Vec<Waiter> = {
                let mut queues = self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match queues.get_mut(&key) {
                    Some(queue) if !queue.is_empty() => {
                        let take = queue.len().min(MAX_BATCH);
                        queue.drain(..take).collect()
                    }
                    _ => {
                        // Nothing queued: the next check starts a new run.
                        queues.remove(&key);
                        return;
                    }
                }
            };
            self.add_own_owed_first(key).await;
            // Checks whose caller has gone, or waited past its deadline behind a slow call, are
            // not sent: nothing is counted for them (the latter fall back on dropped replies).
            let now = tokio::time::Instant::now();
            batch.retain(|w| !w.reply.is_closed() && w.deadline > now);
            // Limits newer than the caller's are applied by the script anyway; of the
            // callers' own, the newest win.
            let Some(newest) = batch.iter().max_by_key(|w| w.quota_version_ms) else { continue };
            let (quota, version) = (newest.quota, newest.quota_version_ms);
            let send_by = tokio::time::Instant::now() + self.policy.timeout;
            let mut call = Box::pin(self.eval(key, &quota, version, batch.len(), send_by));
            match tokio::time::timeout(self.policy.timeout, &mut call).await {
                Ok(Ok(reply)) => {
                    // What Redis says now ends any local counting of an outage (once per batch).
                    let last = decode(&reply, batch.len() - 1);
                    if let Some(owed) = self.fallback.observe(key, &last) {
                        self.add_local_admissions(vec![(key, owed, (last.hour.limit, last.day.limit))]);
                    }
                    for (i, waiter) in batch.into_iter().enumerate() {
                        let _ = waiter.reply.send(Ok(decode(&reply, i)));
                    }
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => {
                            // The shared connection may be stuck behind the slow reply.
                            self.shared.reset();
                            self.give_back_when_late(key, call);
                            "timed out".to_owned()
                        }
                    };
                    for waiter in batch {
                        let _ = waiter.reply.send(Err(ServiceError::RedisUnavailable(why.clone())));
                    }
                }
            }
        }
    }

    /// What this instance admitted of `key` on its own while Redis was away, added to Redis'
    /// counts before Redis decides for the key again: a batch decided without them would hand
    /// out the same remaining quota a second time (until the flush after the outage landed).
    /// One more round trip, once per key and outage; a flag read otherwise.
    /// Whether Redis took them (or nothing was owed).
    async fn add_own_owed_first(&self, key: ApiKeyId) -> bool {
        if !self.fallback.may_owe() {
            return true;
        }
        let Some((owed, limits)) = self.fallback.take_owed_of(key) else { return true };
        let reports = self.add_to_redis(vec![(key, owed, limits)]).await;
        // A key's report comes only from counts Redis gave after adding.
        let added = !reports.is_empty();
        let manager = self.clone();
        tokio::spawn(async move { manager.report_added(reports).await });
        added
    }

    /// One script call for `n` requests of `key`, unless no connection is at hand by `send_by`.
    /// The future owns what it needs, so that a call given up on can still be heard out (see
    /// [`Self::give_back_when_late`]).
    fn eval(
        &self,
        key: ApiKeyId,
        quota: &Quota,
        quota_version_ms: i64,
        n: usize,
        send_by: tokio::time::Instant,
    ) -> impl Future<Output = ServiceResult<Vec<i64>>> + Send + 'static {
        let (shared, script) = (self.shared.clone(), self.script.clone());
        let (quota, offset_ms) = (*quota, self.clock_offset_ms.load(Ordering::Relaxed));
        async move {
            let mut conn = shared.get().await?;
            // Its requests are being decided without Redis by now: not sent, nothing counted.
            if tokio::time::Instant::now() >= send_by {
                return Err(ServiceError::RedisUnavailable("no Redis connection within the timeout".into()));
            }
            let reply: redis::RedisResult<Vec<i64>> = script
                .key(quota_redis_key(key))
                .arg(quota.per_hour.get())
                .arg(quota.per_day.get())
                .arg(quota.burst_per_second.map_or(0, |b| b.get()))
                .arg(quota_version_ms)
                .arg(offset_ms)
                .arg(n)
                .invoke_async(&mut conn)
                .await;
            reply.map_err(|e| {
                // Past its deadline its caller has replaced the connection already; a late
                // failure must not drop the newer one that others use now.
                if tokio::time::Instant::now() < send_by {
                    shared.reset_after(&e);
                }
                e.into()
            })
        }
    }

    /// A script call that outlived its timeout was still sent: Redis runs it once it gets to
    /// it (a hung or paused Redis), and counts what it admits, while its requests were decided
    /// without Redis (the fallback, whose admissions are added to Redis later, or a 503). What
    /// it admitted is taken off the same windows' counts when its late reply arrives, or the
    /// key would lose that much quota and the counts would exceed the admitted events. (The
    /// burst state it moved on is left: it frees up within a second or so.) A reply that never
    /// comes (the connection broke, Redis restarted) leaves nothing to give back that is known.
    fn give_back_when_late(
        &self,
        key: ApiKeyId,
        call: Pin<Box<impl Future<Output = ServiceResult<Vec<i64>>> + Send + 'static>>,
    ) {
        // Bounded: with a primary hung for long, each of its busy keys parks a call a second.
        let parked = self.parked.clone();
        if parked.calls.fetch_add(1, Ordering::Relaxed) >= MAX_PARKED_CALLS {
            parked.calls.fetch_sub(1, Ordering::Relaxed);
            // Once while full, not per call.
            if !parked.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(%key, "too many quota checks waiting for a hung Redis: more are not listened to");
            }
            return;
        }
        let (shared, script) = (self.shared.clone(), self.reconcile.clone());
        let offset_ms = self.clock_offset_ms.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let reply = tokio::time::timeout(LATE_REPLY_WAIT, call).await;
            if parked.calls.fetch_sub(1, Ordering::Relaxed) < MAX_PARKED_CALLS / 2 {
                parked.full_logged.store(false, Ordering::Relaxed);
            }
            let Ok(Ok(reply)) = reply else { return };
            let (admitted, now_ms) = (reply.first().copied().unwrap_or(0), reply.get(4).copied().unwrap_or(0));
            if admitted <= 0 {
                return;
            }
            tracing::info!(%key, admitted, "a quota check Redis ran after its timeout: its admissions are given back");
            let (hour_start_ms, day_start_ms) = (Window::Hour.start_ms(now_ms), Window::Day.start_ms(now_ms));
            let (hour, day) = ((hour_start_ms, -admitted), (day_start_ms, -admitted));
            add_to_counts(&shared, &script, key, hour, day, offset_ms).await;
        });
    }

    /// Makes new limits effective at once on every instance: the script prefers stored limits
    /// whose version is newer than the caller's. Limits already stored with a version at least
    /// as new are left alone, so two changes published out of order (two admins, two
    /// instances) end with the later change's limits.
    pub async fn publish_limits(&self, key: ApiKeyId, quota: &Quota, version_ms: i64) -> ServiceResult<()> {
        static PUBLISH_LIMITS: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(PUBLISH_SCRIPT));
        let mut conn = redis_pool::conn(&self.redis).await?;
        let _: i64 = PUBLISH_LIMITS
            .key(quota_redis_key(key))
            .arg(quota.per_hour.get())
            .arg(quota.per_day.get())
            .arg(quota.burst_per_second.map_or(0, |b| b.get()))
            .arg(version_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Current use of the hour and day windows, without counting anything (for dashboards).
    /// `quota` is of version `version_ms` (see [`AuthenticatedKey::quota_version_ms`]); the
    /// limits in Redis win when they are at least as new (a cached key may be older), not when
    /// a change failed to reach Redis.
    pub async fn snapshot(
        &self,
        key: ApiKeyId,
        quota: &Quota,
        version_ms: i64,
    ) -> ServiceResult<(WindowUse, WindowUse, i64)> {
        let mut conn = self.shared.get().await?;
        type Fields = (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let reply: redis::RedisResult<((i64, i64), Fields)> = redis::pipe()
            .cmd("TIME")
            .cmd("HMGET")
            .arg(quota_redis_key(key))
            .arg(&["hw", "hc", "dw", "dc", "hl", "dl", "qv"])
            .query_async(&mut conn)
            .await;
        let ((secs, micros), (hw, hc, dw, dc, hl, dl, qv)) = reply.inspect_err(|e| self.shared.reset_after(e))?;
        let (hl, dl) = if qv.unwrap_or(0) >= version_ms { (hl, dl) } else { (None, None) };
        let now_ms = secs * 1000 + micros / 1000 + self.clock_offset_ms.load(Ordering::Relaxed);
        let (hour_start, day_start) = (Window::Hour.start_ms(now_ms), Window::Day.start_ms(now_ms));
        // The script keeps each window's start in seconds.
        let hour = WindowUse {
            window: Window::Hour,
            limit: hl.unwrap_or(quota.per_hour.get()),
            used: if hw == Some(hour_start / 1000) { hc.unwrap_or(0) } else { 0 },
            reset_at_ms: hour_start + Window::Hour.length_ms(),
        };
        let day = WindowUse {
            window: Window::Day,
            limit: dl.unwrap_or(quota.per_day.get()),
            used: if dw == Some(day_start / 1000) { dc.unwrap_or(0) } else { 0 },
            reset_at_ms: day_start + Window::Day.length_ms(),
        };
        Ok((hour, day, now_ms))
    }

    /// The windows as the key's next request would find them, counting nothing: for the
    /// rate-limit headers of answers that are not metered (a bad parameter, an unknown route).
    /// Bounded by the check's timeout; the burst window is not looked at.
    pub async fn peek(&self, key: &AuthenticatedKey) -> ServiceResult<QuotaDecision> {
        let (hour, day, now_ms) =
            tokio::time::timeout(self.policy.timeout, self.snapshot(key.id, &key.quota, key.quota_version_ms))
                .await
                .map_err(|_| ServiceError::Internal("the quota snapshot timed out".into()))??;
        Ok(QuotaDecision {
            admitted: hour.remaining() > 0 && day.remaining() > 0,
            hour,
            day,
            burst_per_second: key.quota.burst_per_second.map(|b| b.get()),
            blocked_by: None,
            retry_after_secs: None,
            now_ms,
        })
    }

    /// The Redis clock (plus the test offset), ms since the epoch.
    pub async fn now_ms(&self) -> ServiceResult<i64> {
        let mut conn = redis_pool::conn(&self.redis).await?;
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        Ok(secs * 1000 + micros / 1000 + self.clock_offset_ms.load(Ordering::Relaxed))
    }
}

/// The decision for the `index`-th request (from 0, in arrival order) of a batch, from the
/// script's reply for the whole batch.
fn decode(r: &[i64], index: usize) -> QuotaDecision {
    let get = |i: usize| r.get(i).copied().unwrap_or(0);
    let (admitted_count, mask, hour_after, day_after, now_ms) = (get(0), get(1), get(2), get(3), get(4));
    let (hour_limit, day_limit, burst, retry_ms) = (get(5), get(6), get(7), get(8));
    let index = i64::try_from(index).unwrap_or(i64::MAX);
    let admitted = index < admitted_count;
    // An admitted request sees the windows as they were right after it was counted; a refused
    // one as they are after the whole batch.
    let (hour_used, day_used) = if admitted {
        let admitted_later = admitted_count - index - 1;
        (hour_after - admitted_later, day_after - admitted_later)
    } else {
        (hour_after, day_after)
    };
    let hour = WindowUse {
        window: Window::Hour,
        limit: hour_limit,
        used: hour_used,
        reset_at_ms: Window::Hour.start_ms(now_ms) + Window::Hour.length_ms(),
    };
    let day = WindowUse {
        window: Window::Day,
        limit: day_limit,
        used: day_used,
        reset_at_ms: Window::Day.start_ms(now_ms) + Window::Day.length_ms(),
    };
    // Of several blocking windows, report the one that resets last.
    let blocked_by = if admitted {
        None
    } else if mask & 2 != 0 {
        Some(Window::Day)
    } else if mask & 1 != 0 {
        Some(Window::Hour)
    } else if mask & 4 != 0 {
        Some(Window::Burst)
    } else {
        None
    };
    QuotaDecision {
        admitted,
        hour,
        day,
        burst_per_second: (burst > 0).then_some(burst),
        blocked_by,
        retry_after_secs: (!admitted).then(|| ceil_div(retry_ms, 1000).max(1)),
        now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_refusal_never_names_a_reset_before_a_retry_can_succeed() {
        // At xx:xx:47.700 a burst of 5/s is full; the next request fits in 400 ms (at 48.100).
        let now_ms = 1_700_000_000_000 - 1_700_000_000_000 % 60_000 + 47_700;
        let d = decode(&[0, 4, 5, 5, now_ms, 100, 1_000, 5, 400], 0);
        assert_eq!((d.blocked_by, d.retry_after_secs), (Some(Window::Burst), Some(1)));
        let w = d.reported_window();
        // Whole seconds, rounded up: 49, not 48 (a client waiting until 48 would be refused).
        assert_eq!(w.reset_at().timestamp_millis(), now_ms - 47_700 + 49_000);
        assert!(w.reset_at().timestamp_millis() >= now_ms + 400);
        // The seconds to wait agree with `Retry-After`.
        assert_eq!(w.seconds_to_reset(now_ms), 1);
    }

    #[test]
    fn windows_start_on_the_utc_hour_midnight_and_second() {
        let at = 1_700_000_000_123; // 2023-11-14 22:13:20.123 UTC
        assert_eq!(Window::Hour.start_ms(at), 1_699_999_200_000);
        assert_eq!(Window::Day.start_ms(at), 1_699_920_000_000);
        assert_eq!(Window::Burst.start_ms(at), 1_700_000_000_000);
        assert_eq!(Window::Day.start_ms(at) + Window::Day.length_ms(), 1_700_006_400_000);
    }

    #[test]
    fn decodes_a_refusal_with_rounded_up_retry() {
        // 10:59:59.250 UTC on some day; hour full.
        let now_ms = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000 + 3_599_250;
        let d = decode(&[0, 1, 5, 7, now_ms, 5, 100, 0, 750], 0);
        assert!(!d.admitted);
        assert_eq!(d.blocked_by, Some(Window::Hour));
        assert_eq!(d.retry_after_secs, Some(1));
        assert_eq!(d.hour.seconds_to_reset(now_ms), 1);
        assert_eq!(d.hour.remaining(), 0);
        assert_eq!(d.reported_window().window, Window::Hour);
    }

    #[test]
    fn day_wins_when_both_block() {
        let d = decode(&[0, 3, 5, 5, 1_700_000_000_000, 5, 5, 0, 40_000_000], 0);
        assert_eq!(d.blocked_by, Some(Window::Day));
        assert_eq!(d.retry_after_secs, Some(40_000));
        // The headers name the window whose reset frees the key, as the body does.
        assert_eq!(d.reported_window().window, Window::Day);
    }

    #[test]
    fn a_burst_refusal_reports_the_burst_window() {
        // Burst of 2/s blocks while the hour and day have plenty left; retry in 400 ms.
        let now_ms = 1_700_000_000_000;
        let d = decode(&[0, 4, 5, 5, now_ms, 1000, 10000, 2, 400], 0);
        assert_eq!(d.blocked_by, Some(Window::Burst));
        let w = d.reported_window();
        assert_eq!((w.window, w.limit, w.remaining()), (Window::Burst, 2, 0));
        assert_eq!(w.seconds_to_reset(now_ms), 1);
    }

    #[test]
    fn an_admitted_request_reports_the_window_with_least_remaining_and_the_day_on_ties() {
        let now_ms = 1_700_000_000_000;
        // Hour 10/10 and day 10/10 after this request: both are empty, the day resets later.
        let tie = decode(&[1, 0, 10, 10, now_ms, 10, 10, 0, 0], 0);
        assert_eq!(tie.reported_window().window, Window::Day);
        // Hour 3 left, day 90 left.
        let hour = decode(&[1, 0, 7, 10, now_ms, 10, 100, 0, 0], 0);
        assert_eq!(hour.reported_window().window, Window::Hour);
        assert_eq!(hour.reported_window().remaining(), 3);
    }

    #[test]
    fn a_batch_gives_each_request_its_own_use_in_arrival_order() {
        // Five requests with 3 left in the hour: the first three are admitted (uses 8, 9, 10).
        let reply = [3, 1, 10, 40, 1_700_000_000_000, 10, 1000, 0, 1_000];
        let used: Vec<(bool, i64, i64)> =
            (0..5).map(|i| decode(&reply, i)).map(|d| (d.admitted, d.hour.used, d.day.used)).collect();
        assert_eq!(used, [(true, 8, 38), (true, 9, 39), (true, 10, 40), (false, 10, 40), (false, 10, 40)]);
        assert_eq!(decode(&reply, 2).blocked_by, None);
        assert_eq!(decode(&reply, 2).retry_after_secs, None);
        assert_eq!(decode(&reply, 3).blocked_by, Some(Window::Hour));
        assert_eq!(decode(&reply, 4).retry_after_secs, Some(1));
    }

    #[test]
    fn admitted_has_no_retry() {
        let d = decode(&[1, 0, 1, 1, 1_700_000_000_000, 1000, 10000, 0, 0], 0);
        assert!(d.admitted);
        assert_eq!(d.retry_after_secs, None);
        assert_eq!(d.reported_window().remaining(), 999);
    }
}
