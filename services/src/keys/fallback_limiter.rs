//! The local fallback limit, used only while Redis cannot answer: each instance admits at most
//! its share of what was left of every window (the remaining quota, as last seen from Redis,
//! divided by the configured instance count), counted in memory on this node's clock. Together
//! the instances stay within the quota without talking to each other; requests admitted this way
//! are recorded as unenforced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::api_keys::ApiKeyId;
use super::quota::Quota;
use super::quota_manager::{ceil_div, QuotaDecision, Window, WindowUse};

/// One window of one key: what Redis last said was used, what this instance admitted on its
/// own and sent to be added to Redis' counts (not known to have landed yet), and what it
/// admitted on its own since.
#[derive(Default, Clone, Copy)]
struct WindowState {
    start_ms: i64,
    known_used: i64,
    in_flight: i64,
    local: i64,
}

impl WindowState {
    fn roll(&mut self, start_ms: i64) {
        if self.start_ms != start_ms {
            *self = Self { start_ms, ..Self::default() };
        }
    }

    /// Used by others and before, as far as this instance knows: an answer of Redis decided
    /// before the admissions in flight land does not include them, so they count on top of it
    /// (one decided after counts them twice until they are known to have landed: the safe side,
    /// and brief). This instance's share is of what it leaves.
    fn known(&self) -> i64 {
        self.known_used + self.in_flight
    }

    /// [`Self::known`] and what this instance admitted on its own since.
    fn used(&self) -> i64 {
        self.known() + self.local
    }

    /// The `n` admissions of the window starting at `start_ms` that were in flight (if it is
    /// still this one), settled.
    fn settle(&mut self, start_ms: i64, n: i64) -> bool {
        let ours = self.start_ms == start_ms && n > 0;
        if ours {
            self.in_flight = (self.in_flight - n).max(0);
        }
        ours
    }
}

/// Requests admitted by the fallback in some windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAdmissions {
    pub hour_start_ms: i64,
    pub hour: i64,
    pub day_start_ms: i64,
    pub day: i64,
}

#[derive(Default, Clone, Copy)]
struct KeyState {
    hour: WindowState,
    day: WindowState,
    /// The key's hour and day limits when last checked or seen: what owed admissions are
    /// measured against when they are added to Redis without a request ([`FallbackLimiter::take_owed`]).
    limits: (i64, i64),
}

impl KeyState {
    /// What this instance admitted on its own, taken to be added to Redis' counts: in flight
    /// until told how that went, and counted meanwhile (a next outage must start from it too).
    fn take_local(&mut self) -> Option<LocalAdmissions> {
        let owed = (self.hour.local > 0 || self.day.local > 0).then_some(LocalAdmissions {
            hour_start_ms: self.hour.start_ms,
            hour: self.hour.local,
            day_start_ms: self.day.start_ms,
            day: self.day.local,
        });
        for w in [&mut self.hour, &mut self.day] {
            w.in_flight += w.local;
            w.local = 0;
        }
        owed
    }

    fn windows<'a>(&'a mut self, owed: &LocalAdmissions) -> [(&'a mut WindowState, i64, i64); 2] {
        [(&mut self.hour, owed.hour_start_ms, owed.hour), (&mut self.day, owed.day_start_ms, owed.day)]
    }
}

pub struct FallbackLimiter {
    instances: i64,
    keys: Mutex<HashMap<ApiKeyId, KeyState>>,
    /// Whether some key may hold admissions not taken yet; written under `keys`' lock, so that
    /// [`Self::take_owed`] walks the keys only after an outage.
    maybe_owing: AtomicBool,
}

impl FallbackLimiter {
    /// Keys tracked at most; beyond that the state is simply forgotten (fail-open).
    const MAX_KEYS: usize = 100_000;

    pub fn new(instances: u32) -> Self {
        Self {
            instances: i64::from(instances.max(1)),
            keys: Mutex::new(HashMap::new()),
            maybe_owing: AtomicBool::new(false),
        }
    }

    fn with_key<T>(&self, key: ApiKeyId, f: impl FnOnce(&mut KeyState) -> T) -> T {
        let mut keys = match self.keys.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        if keys.len() >= Self::MAX_KEYS && !keys.contains_key(&key) {
            keys.clear();
        }
        f(keys.entry(key).or_default())
    }

    /// Remembers what Redis said (after every enforced decision) and ends any local counting.
    /// Returns what this instance admitted on its own meanwhile, for Redis to add to its counts
    /// (else the key could use its quota twice over an outage).
    pub fn observe(&self, key: ApiKeyId, d: &QuotaDecision) -> Option<LocalAdmissions> {
        self.with_key(key, |k| {
            let owed = k.take_local();
            // Within a window, the larger of Redis' word and what this instance knew: admissions
            // that perhaps landed ([`Self::added`]) may not be in `d`, and a next outage (or a
            // flapping Redis) must start from them, or each episode would hand out a share of
            // the same remaining quota again. Those still in flight stay counted on top.
            let known = |w: &WindowState, start_ms: i64, used: i64| match w.start_ms == start_ms {
                true => WindowState { known_used: used.max(w.known_used), local: 0, ..*w },
                false => WindowState { start_ms, known_used: used, ..WindowState::default() },
            };
            k.hour = known(&k.hour, d.hour.start_ms(), d.hour.used);
            k.day = known(&k.day, d.day.start_ms(), d.day.used);
            k.limits = (d.hour.limit, d.day.limit);
            owed
        })
    }

    /// Whether some key may hold admissions not taken yet (false unless an outage left some):
    /// read without the lock, so that checks in normal times pay one load for it.
    pub fn may_owe(&self) -> bool {
        self.maybe_owing.load(Ordering::Relaxed)
    }

    /// Whether nothing is owed to Redis: no admission left to take, none taken whose add has
    /// not ended ([`Self::added`] or [`Self::put_back`]). Both read under the one lock: an add
    /// that fails between two separate reads would put its admissions back unseen. A walk of
    /// every key, for a stop only.
    pub fn all_added(&self) -> bool {
        let keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        !self.maybe_owing.load(Ordering::Relaxed) && !keys.values().any(|k| k.hour.in_flight > 0 || k.day.in_flight > 0)
    }

    /// What this instance admitted on its own of the keys `wanted` picks, taken (as by
    /// [`Self::observe`]) to be added to Redis' counts once it answers again, with each key's
    /// limits: a key may get no request to observe after an outage.
    pub fn take_owed(&self, wanted: impl Fn(ApiKeyId) -> bool) -> Vec<(ApiKeyId, LocalAdmissions, (i64, i64))> {
        let mut keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !self.maybe_owing.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut left = false;
        for (key, k) in keys.iter_mut() {
            if k.hour.local == 0 && k.day.local == 0 {
                continue;
            }
            if !wanted(*key) {
                left = true;
                continue;
            }
            if let Some(owed) = k.take_local() {
                taken.push((*key, owed, k.limits));
            }
        }
        self.maybe_owing.store(left, Ordering::Relaxed);
        taken
    }

    /// The keys holding admissions not taken yet (none, without a walk, unless an outage left
    /// some): what keeps trying Redis for them while their instance gets no requests.
    pub fn owing(&self) -> Vec<ApiKeyId> {
        if !self.may_owe() {
            return Vec::new();
        }
        let keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let owing: Vec<ApiKeyId> =
            keys.iter().filter(|(_, k)| k.hour.local > 0 || k.day.local > 0).map(|(key, _)| *key).collect();
        // Taken one key at a time ([`Self::take_owed_of`]) since the flag was set: no walk again.
        if owing.is_empty() {
            self.maybe_owing.store(false, Ordering::Relaxed);
        }
        owing
    }

    /// [`Self::take_owed`] of one key: a lookup, not a walk of every key.
    pub fn take_owed_of(&self, key: ApiKeyId) -> Option<(LocalAdmissions, (i64, i64))> {
        let mut keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let k = keys.get_mut(&key)?;
        k.take_local().map(|owed| (owed, k.limits))
    }

    /// Admissions taken to be added to Redis that got there, with the window's count Redis
    /// gave after adding them (-1: it did not count into that window, no longer its current
    /// one), or that perhaps did (`None`: no answer; counted as landed, since a count missed
    /// once beats a count doubled).
    pub fn added(&self, key: ApiKeyId, owed: &LocalAdmissions, counts: Option<(i64, i64)>) {
        self.with_key(key, |k| {
            let counts = counts.map_or([None, None], |(hour, day)| [Some(hour), Some(day)]);
            for ((w, start_ms, n), count) in k.windows(owed).into_iter().zip(counts) {
                if w.settle(start_ms, n) {
                    w.known_used = count.map_or(w.known_used + n, |count| w.known_used.max(count));
                }
            }
        });
    }

    /// Admissions taken to be added to Redis that did not get there (Redis failed again): kept
    /// for the key's next chance, in the windows they were counted in (if still current).
    pub fn put_back(&self, key: ApiKeyId, owed: &LocalAdmissions) {
        self.with_key(key, |k| {
            for (w, start_ms, n) in k.windows(owed) {
                if w.settle(start_ms, n) {
                    w.local += n;
                    self.maybe_owing.store(true, Ordering::Relaxed);
                }
            }
        });
    }

    /// This instance's share of what is left of a window.
    fn share(&self, limit: i64, known_used: i64) -> i64 {
        (limit - known_used).max(0) / self.instances
    }

    /// The key's windows as Redis last said (with what this instance admitted on its own since),
    /// counting nothing: what a fail-closed refusal reports in its rate-limit headers. A key this
    /// instance has not seen Redis decide reads as unused.
    pub fn last_seen(&self, key: ApiKeyId, quota: &Quota, now_ms: i64) -> QuotaDecision {
        let (hour_start, day_start) = (Window::Hour.start_ms(now_ms), Window::Day.start_ms(now_ms));
        self.with_key(key, |k| {
            k.hour.roll(hour_start);
            k.day.roll(day_start);
            known_use(k, quota, now_ms)
        })
    }

    /// Checks and counts one request at `now_ms` (this node's clock).
    pub fn check(&self, key: ApiKeyId, quota: &Quota, now_ms: i64) -> QuotaDecision {
        self.check_and_know(key, quota, now_ms).0
    }

    /// [`Self::check`], and the key's use after it as [`Self::last_seen`] gives it, in one look.
    pub fn check_and_know(&self, key: ApiKeyId, quota: &Quota, now_ms: i64) -> (QuotaDecision, QuotaDecision) {
        let (hour_start, day_start) = (Window::Hour.start_ms(now_ms), Window::Day.start_ms(now_ms));
        let (admitted, hour, day, known) = self.with_key(key, |k| {
            k.hour.roll(hour_start);
            k.day.roll(day_start);
            k.limits = (quota.per_hour.get(), quota.per_day.get());
            let hour_share = self.share(quota.per_hour.get(), k.hour.known());
            let day_share = self.share(quota.per_day.get(), k.day.known());
            let admitted = k.hour.local < hour_share && k.day.local < day_share;
            if admitted {
                k.hour.local += 1;
                k.day.local += 1;
                self.maybe_owing.store(true, Ordering::Relaxed);
            }
            // What this instance enforces, as the headers report it.
            let window = |w: Window, s: &WindowState, share: i64, reset_at_ms: i64| WindowUse {
                window: w,
                limit: s.known() + share,
                used: s.used(),
                reset_at_ms,
            };
            (
                admitted,
                window(Window::Hour, &k.hour, hour_share, hour_start + Window::Hour.length_ms()),
                window(Window::Day, &k.day, day_share, day_start + Window::Day.length_ms()),
                known_use(k, quota, now_ms),
            )
        });
        let blocked_by = match admitted {
            true => None,
            false if day.used >= day.limit => Some(Window::Day),
            false => Some(Window::Hour),
        };
        let retry_after_secs = blocked_by.map(|w| {
            let reset = if w == Window::Day { day.reset_at_ms } else { hour.reset_at_ms };
            ceil_div(reset - now_ms, 1000).max(1)
        });
        (QuotaDecision { admitted, hour, day, burst_per_second: None, blocked_by, retry_after_secs, now_ms }, known)
    }
}

/// A key's windows (already rolled to `now_ms`) with its own limits and the use this instance
/// knows of: Redis' last word and its own admissions since.
fn known_use(k: &KeyState, quota: &Quota, now_ms: i64) -> QuotaDecision {
    let window = |window, limit: i64, s: &WindowState| WindowUse {
        window,
        limit,
        used: s.used().min(limit),
        reset_at_ms: s.start_ms + window.length_ms(),
    };
    QuotaDecision {
        admitted: false,
        hour: window(Window::Hour, quota.per_hour.get(), &k.hour),
        day: window(Window::Day, quota.per_day.get(), &k.day),
        burst_per_second: quota.burst_per_second.map(|b| b.get()),
        blocked_by: None,
        retry_after_secs: Some(1),
        now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::QuotaLimit;

    fn quota(hour: i64, day: i64) -> Quota {
        Quota {
            per_hour: QuotaLimit::new(hour).unwrap(),
            per_day: QuotaLimit::new(day).unwrap(),
            burst_per_second: None,
        }
    }

    const HOUR: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;

    /// What Redis said about a key of `quota` in the hour starting at `HOUR`.
    fn redis_said(quota: &Quota, used: i64) -> QuotaDecision {
        let day_start = HOUR - HOUR.rem_euclid(86_400_000);
        let window = |window, limit, reset_at_ms| WindowUse { window, limit, used, reset_at_ms };
        QuotaDecision {
            admitted: true,
            hour: window(Window::Hour, quota.per_hour.get(), HOUR + 3_600_000),
            day: window(Window::Day, quota.per_day.get(), day_start + 86_400_000),
            burst_per_second: None,
            blocked_by: None,
            retry_after_secs: None,
            now_ms: HOUR + 60_000,
        }
    }

    #[test]
    fn each_instance_admits_its_share_of_the_hour() {
        let limiter = FallbackLimiter::new(3);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = HOUR + 60_000;
        let admitted = (0..50).filter(|_| limiter.check(key, &quota(100, 10_000), now).admitted).count();
        assert_eq!(admitted, 33);
        let refused = limiter.check(key, &quota(100, 10_000), now);
        assert_eq!(refused.blocked_by, Some(Window::Hour));
        assert_eq!(refused.retry_after_secs, Some(3_540));
        assert_eq!(refused.hour.remaining(), 0);
        // A new hour starts from zero.
        assert!(limiter.check(key, &quota(100, 10_000), now + 3_600_000).admitted);
    }

    #[test]
    fn the_share_is_of_what_redis_said_was_left() {
        let limiter = FallbackLimiter::new(2);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = HOUR + 60_000;
        limiter.observe(key, &redis_said(&quota(10, 1_000), 4));
        // 6 left of 10, half of it here.
        let admitted = (0..10).filter(|_| limiter.check(key, &quota(10, 1_000), now).admitted).count();
        assert_eq!(admitted, 3);
        let refused = limiter.check(key, &quota(10, 1_000), now);
        assert_eq!((refused.hour.limit, refused.hour.used), (7, 7));
    }

    #[test]
    fn a_second_outage_counts_what_the_first_admitted() {
        let limiter = FallbackLimiter::new(2);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = HOUR + 60_000;
        let seen = redis_said(&quota(20, 1_000), 0);
        assert!(limiter.observe(key, &seen).is_none());
        // First outage: half of 20 here.
        let first = (0..20).filter(|_| limiter.check(key, &quota(20, 1_000), now).admitted).count();
        assert_eq!(first, 10);
        // Redis answers once, before the 10 are added to its count (it still says 0 used)...
        let owed = limiter.observe(key, &seen).expect("the first outage's admissions are owed");
        assert_eq!(owed.hour, 10);
        // ...and goes away again: of the 10 left, half here, not half of 20 again.
        let second = (0..20).filter(|_| limiter.check(key, &quota(20, 1_000), now).admitted).count();
        assert_eq!(second, 5);
    }

    /// A stop waits for adds under way: from when admissions are taken until the add ends,
    /// landed or put back (then owed again).
    #[test]
    fn all_is_added_once_taken_admissions_landed() {
        let limiter = FallbackLimiter::new(2);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = HOUR + 60_000;
        limiter.observe(key, &redis_said(&quota(20, 1_000), 0));
        assert!(limiter.all_added());
        assert!(limiter.check(key, &quota(20, 1_000), now).admitted);
        assert!(!limiter.all_added(), "owed");
        let [(_, owed, _)] = <[_; 1]>::try_from(limiter.take_owed(|_| true)).unwrap();
        assert!(!limiter.all_added(), "under way");
        limiter.put_back(key, &owed);
        assert!(!limiter.all_added(), "owed again");
        let [(_, owed, _)] = <[_; 1]>::try_from(limiter.take_owed(|_| true)).unwrap();
        assert!(!limiter.all_added(), "under way");
        limiter.added(key, &owed, Some((1, 1)));
        assert!(limiter.all_added());
    }

    /// After an outage, admissions taken to be added to Redis count as known until Redis' own
    /// word includes them: an answer decided before they land does not hand them out again.
    #[test]
    fn owed_admissions_in_flight_still_count_if_redis_fails_again() {
        let limiter = FallbackLimiter::new(2);
        let (key, other) = (ApiKeyId(uuid::Uuid::new_v4()), ApiKeyId(uuid::Uuid::new_v4()));
        let now = HOUR + 60_000;
        let seen = redis_said(&quota(20, 1_000), 0);
        limiter.observe(key, &seen);
        assert!(limiter.take_owed(|_| true).is_empty(), "nothing admitted yet");
        let first = (0..20).filter(|_| limiter.check(key, &quota(20, 1_000), now).admitted).count();
        assert_eq!(first, 10);
        // Taken for Redis only where it answers again.
        assert!(limiter.take_owed(|k| k == other).is_empty());
        let taken = limiter.take_owed(|k| k == key);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].1.hour, taken[0].1.day, taken[0].2), (10, 10, (20, 1_000)));
        assert!(limiter.take_owed(|_| true).is_empty(), "taken once");
        // Redis decides a request before the 10 land (it says 1 used), then fails again.
        assert!(limiter.observe(key, &redis_said(&quota(20, 1_000), 1)).is_none());
        let second = (0..20).filter(|_| limiter.check(key, &quota(20, 1_000), now).admitted).count();
        assert_eq!(second, 4, "half of the 9 left (11 used), not of the 19 Redis' word alone leaves");
    }

    /// Admissions in flight whose addition failed come back as this instance's own, on top of
    /// Redis' newest word, even when that word grew meanwhile (other instances' admissions
    /// landed): they are not subtracted from it.
    #[test]
    fn admissions_put_back_after_a_newer_word_are_not_handed_out_again() {
        let limiter = FallbackLimiter::new(2);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = HOUR + 60_000;
        limiter.observe(key, &redis_said(&quota(20, 1_000), 0));
        for _ in 0..4 {
            assert!(limiter.check(key, &quota(20, 1_000), now).admitted);
        }
        let (_, owed, _) = limiter.take_owed(|_| true).pop().expect("owed");
        // The other instance's 12 landed first; then adding these 4 fails.
        assert!(limiter.observe(key, &redis_said(&quota(20, 1_000), 12)).is_none());
        limiter.put_back(key, &owed);
        // Half of the 8 Redis leaves is 4, and these 4 already used it.
        assert!(!limiter.check(key, &quota(20, 1_000), now).admitted);
        let (_, again, _) = limiter.take_owed(|_| true).pop().expect("owed again");
        assert_eq!((again.hour, again.day), (4, 4));
    }

    /// Once admissions have landed, Redis' count after adding them is what is known; if it is
    /// not known whether they landed, they count as landed, even against an older word.
    #[test]
    fn admissions_added_or_perhaps_added_are_known() {
        let limiter = FallbackLimiter::new(1);
        let (landed, perhaps) = (ApiKeyId(uuid::Uuid::new_v4()), ApiKeyId(uuid::Uuid::new_v4()));
        let now = HOUR + 60_000;
        for key in [landed, perhaps] {
            limiter.observe(key, &redis_said(&quota(20, 1_000), 0));
            for _ in 0..5 {
                assert!(limiter.check(key, &quota(20, 1_000), now).admitted);
            }
        }
        let mut owed = limiter.take_owed(|_| true);
        owed.sort_by_key(|(key, ..)| *key != landed);
        // Redis' count after adding the 5: 9 (others' admissions are in it too).
        limiter.added(landed, &owed[0].1, Some((9, 9)));
        limiter.added(perhaps, &owed[1].1, None);
        for (key, left) in [(landed, 11), (perhaps, 15)] {
            // An answer decided before they landed says 0 used: it lowers nothing.
            assert!(limiter.observe(key, &redis_said(&quota(20, 1_000), 0)).is_none());
            let admitted = (0..30).filter(|_| limiter.check(key, &quota(20, 1_000), now).admitted).count();
            assert_eq!(admitted, left);
        }
        assert_eq!(limiter.take_owed(|_| true).len(), 2, "the new admissions only");
    }

    /// Admissions Redis did not take (it failed again) are owed again, once.
    #[test]
    fn admissions_put_back_are_owed_again() {
        let limiter = FallbackLimiter::new(1);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = HOUR + 60_000;
        for _ in 0..3 {
            assert!(limiter.check(key, &quota(20, 1_000), now).admitted);
        }
        let (_, owed, _) = limiter.take_owed(|_| true).pop().expect("owed");
        limiter.put_back(key, &owed);
        // Not counted twice meanwhile: 17 more, not 14.
        let more = (0..20).filter(|_| limiter.check(key, &quota(20, 1_000), now).admitted).count();
        assert_eq!(more, 17);
        let (_, again, _) = limiter.take_owed(|_| true).pop().expect("owed again");
        assert_eq!((again.hour, again.day), (20, 20));
    }

    /// One key's admissions are taken alone (its batch adds them before Redis decides for it);
    /// another key's stay owed for the walk after the outage.
    #[test]
    fn one_keys_admissions_are_taken_alone() {
        let limiter = FallbackLimiter::new(1);
        let (key, other) = (ApiKeyId(uuid::Uuid::new_v4()), ApiKeyId(uuid::Uuid::new_v4()));
        let now = HOUR + 60_000;
        for k in [key, key, other] {
            assert!(limiter.check(k, &quota(20, 1_000), now).admitted);
        }
        let (owed, limits) = limiter.take_owed_of(key).expect("owed");
        assert_eq!((owed.hour, owed.day, limits), (2, 2, (20, 1_000)));
        assert!(limiter.take_owed_of(key).is_none(), "taken once");
        // Still counted while in flight: 18 more for the key, not 20.
        let more = (0..20).filter(|_| limiter.check(key, &quota(20, 1_000), now).admitted).count();
        assert_eq!(more, 18);
        assert!(limiter.may_owe());
        // The walk finds the other key's one and the key's 18 since.
        let mut rest: Vec<_> = limiter.take_owed(|_| true).into_iter().map(|(k, o, _)| (k == key, o.hour)).collect();
        rest.sort();
        assert_eq!(rest, [(false, 1), (true, 18)]);
        assert!(!limiter.may_owe());
    }

    /// Admissions in flight belong to their window: once the hour has moved on, the new hour
    /// starts from zero, and news of the old hour's admissions changes nothing in it.
    #[test]
    fn admissions_in_flight_stay_with_their_hour() {
        let limiter = FallbackLimiter::new(1);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = HOUR + 60_000;
        for _ in 0..8 {
            assert!(limiter.check(key, &quota(10, 1_000), now).admitted);
        }
        let (_, owed, _) = limiter.take_owed(|_| true).pop().expect("owed");
        let next_hour = now + 3_600_000;
        let admitted = (0..20).filter(|_| limiter.check(key, &quota(10, 1_000), next_hour).admitted).count();
        assert_eq!(admitted, 10, "a new hour starts from zero");
        limiter.added(key, &owed, Some((8, 8)));
        assert!(!limiter.check(key, &quota(10, 1_000), next_hour).admitted);
        // The day still counts the 8 (in flight, then said to have landed) and the new 10.
        let day = limiter.last_seen(key, &quota(10, 1_000), next_hour).day;
        assert_eq!(day.used, 18);
    }

    #[test]
    fn nothing_left_means_nothing_admitted() {
        let limiter = FallbackLimiter::new(4);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        limiter.observe(key, &redis_said(&quota(3, 1_000), 3));
        assert!(!limiter.check(key, &quota(3, 1_000), HOUR + 1).admitted);
    }
}
