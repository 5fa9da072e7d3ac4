//! Which keys' quota checks skip Redis for now, because their last check could not reach it.
//!
//! On a single Redis this is one state: a failed check sends every key to the fallback, and
//! once a second one caller (the quota manager's probe, off the request path) tries Redis
//! again, so an outage costs no request the check's timeout after the checks that met it. On a
//! Redis Cluster a dead primary takes only its hash slots with it, so the state is kept per
//! slot: keys on healthy primaries stay exact. Only a hung cluster would then cost a timeout per
//! slot: checks that timed out in three slots with no success in between skip every slot at
//! once, until a try succeeds. (Failures that cost nothing, a refused connection or a slot
//! without a primary, never do: keys elsewhere lose nothing by trying.)
//!
//! Atomics only: this is read on every metered request.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use super::api_keys::ApiKeyId;
use crate::redis_pool;

/// Slots whose checks timed out, with no success in between, that count as a hung Redis.
const HUNG_SLOTS: u32 = 3;

/// Failures this far apart are two outages (for the log).
const NEW_OUTAGE_AFTER_MS: i64 = 10_000;

/// A slot whose wait ran out this long ago without a check meeting it had no traffic since.
const QUIET_AFTER_MS: i64 = 1_000;

/// Who tries Redis again for a slot that is not up (see [`QuotaOutage::claim_retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not yet, or another caller does.
    Wait,
    /// A probe beside the caller, which goes on without Redis: checks keep coming, and while
    /// Redis hangs none of them should wait out the timeout.
    Probe,
    /// The caller's own check: the slot went quiet, so its outage may be long over, and a
    /// caller decided without Redis could be refused (failing closed) for nothing.
    Check,
}

/// What a successful check changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// Its slot was up.
    Nothing,
    /// Its slot (or, after a hung Redis, every slot) came back, while others are still down.
    Slots,
    /// No slot is down any more: the outage ends.
    Outage,
}

/// What a failed check changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// No check was failing before (or none for [`NEW_OUTAGE_AFTER_MS`]): an outage starts.
    OutageBegins,
    /// Part of an outage already seen.
    Ongoing,
}

pub struct QuotaOutage {
    /// Per hash slot (one entry on a single Redis): 0 while up, else until when (ms on the
    /// caller's clock) its checks skip Redis (or, during a try, until when the try is held).
    /// Stays non-zero after that until one succeeds.
    down_until_ms: Box<[AtomicI64]>,
    /// Entries of `down_until_ms` that are not 0 (signed: a success may take a slot off an
    /// instant before the failure that put it on has counted it).
    slots_down: AtomicI64,
    /// Checks that timed out since the last success: in slots that were up, and once
    /// [`HUNG_SLOTS`] is reached, in any slot whose wait had run out.
    timeouts_since_success: AtomicU32,
    /// 0, else until when every slot skips Redis (a hung Redis); cleared by a success.
    all_down_until_ms: AtomicI64,
    /// When a check last failed (0: never).
    last_failure_ms: AtomicI64,
}

impl QuotaOutage {
    pub fn new(cluster: bool) -> Self {
        let slots = if cluster { usize::from(redis_pool::SLOTS) } else { 1 };
        Self {
            down_until_ms: (0..slots).map(|_| AtomicI64::new(0)).collect(),
            slots_down: AtomicI64::new(0),
            timeouts_since_success: AtomicU32::new(0),
            all_down_until_ms: AtomicI64::new(0),
            last_failure_ms: AtomicI64::new(0),
        }
    }

    /// The slot of `key`'s quota counters (`km:{<key id>}:quota`: the hash tag is the id).
    pub fn slot_of(&self, key: ApiKeyId) -> usize {
        if self.down_until_ms.len() == 1 {
            return 0;
        }
        let mut tag = [0; uuid::fmt::Hyphenated::LENGTH];
        let tag = key.0.hyphenated().encode_lower(&mut tag);
        // The tag alone hashes as the whole `km:{<id>}:…` key does.
        usize::from(redis_pool::hash_slot(tag.as_bytes()))
    }

    /// For a `slot` that is not up, at `now_ms`: whether its wait has run out and this caller
    /// is the one to try Redis again, and how. The others keep skipping it until
    /// `hold_until_ms`, unless the try's success or failure says otherwise before (a failure of
    /// another check meanwhile may end the hold early: a second try then, harmless).
    pub fn claim_retry(&self, slot: usize, now_ms: i64, hold_until_ms: i64) -> Retry {
        let all = self.all_down_until_ms.load(Ordering::Relaxed);
        let own = self.down_until_ms[slot].load(Ordering::Relaxed);
        if all > now_ms || own > now_ms || (all == 0 && own == 0) {
            return Retry::Wait;
        }
        // A hung Redis holds every slot: one try for all of them.
        let (state, seen) = if all != 0 { (&self.all_down_until_ms, all) } else { (&self.down_until_ms[slot], own) };
        if state.compare_exchange(seen, hold_until_ms, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return Retry::Wait;
        }
        if now_ms - all.max(own) >= QUIET_AFTER_MS {
            Retry::Check
        } else {
            Retry::Probe
        }
    }

    /// A check in `slot` failed at `now_ms` (`timed_out`: after waiting its whole timeout): its
    /// slot skips Redis until `until_ms`.
    pub fn failed(&self, slot: usize, now_ms: i64, until_ms: i64, timed_out: bool) -> Marked {
        let last_failure = self.last_failure_ms.swap(now_ms, Ordering::Relaxed);
        if last_failure + NEW_OUTAGE_AFTER_MS < now_ms {
            self.forget_quiet_slots();
        }
        let before = self.down_until_ms[slot].swap(until_ms, Ordering::Relaxed);
        let none_down = before == 0 && self.slots_down.fetch_add(1, Ordering::Relaxed) <= 0;
        // A slot already waiting failed again (concurrent checks fail together): once. A slot
        // whose keys keep failing on one dead primary counts once until a success, unless Redis
        // already counts as hung.
        if timed_out && before <= now_ms {
            let hung = self.timeouts_since_success.load(Ordering::Relaxed) >= HUNG_SLOTS;
            if (before == 0 || hung) && self.timeouts_since_success.fetch_add(1, Ordering::Relaxed) + 1 >= HUNG_SLOTS {
                self.all_down_until_ms.store(until_ms, Ordering::Relaxed);
            }
        }
        if none_down {
            Marked::OutageBegins
        } else {
            Marked::Ongoing
        }
    }

    /// Slots still marked from an earlier outage, whose keys went quiet: not held against Redis.
    fn forget_quiet_slots(&self) {
        for slot in self.down_until_ms.iter() {
            let until = slot.load(Ordering::Relaxed);
            if until != 0 && slot.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                self.slots_down.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// A check in `slot` got Redis' answer: what that changed.
    pub fn succeeded(&self, slot: usize) -> Recovered {
        // Loads first: on the hot path, with nothing down, nothing is written.
        if self.timeouts_since_success.load(Ordering::Relaxed) != 0 {
            self.timeouts_since_success.store(0, Ordering::Relaxed);
        }
        let hung_ended = self.all_down_until_ms.load(Ordering::Relaxed) != 0
            && self.all_down_until_ms.swap(0, Ordering::Relaxed) != 0;
        let slot = &self.down_until_ms[slot];
        let slot_back = slot.load(Ordering::Relaxed) != 0 && slot.swap(0, Ordering::Relaxed) != 0;
        if slot_back && self.slots_down.fetch_sub(1, Ordering::Relaxed) == 1 {
            Recovered::Outage
        } else if slot_back || hung_ended {
            Recovered::Slots
        } else {
            Recovered::Nothing
        }
    }

    /// Whether checks in `slot` go to Redis (no failure there, nor a hung Redis, since the last
    /// success).
    pub fn is_up(&self, slot: usize) -> bool {
        self.all_down_until_ms.load(Ordering::Relaxed) == 0 && self.down_until_ms[slot].load(Ordering::Relaxed) == 0
    }

    /// Whether quota checks are failing: on a single Redis its one state, on a cluster any
    /// slot's. Until a check there succeeds, however long its keys stay quiet: an instance
    /// that left the rotation because of it gets no calls to find out otherwise.
    pub fn any_down(&self) -> bool {
        self.slots_down.load(Ordering::Relaxed) > 0 || self.all_down_until_ms.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ApiKeyId {
        ApiKeyId(s.parse().unwrap())
    }

    #[test]
    fn slots_are_redis_cluster_hash_slots() {
        let cluster = QuotaOutage::new(true);
        // `redis-cli CLUSTER KEYSLOT 'km:{<id>}:quota'` for these ids.
        assert_eq!(cluster.slot_of(key("00000000-0000-0000-0000-000000000000")), 10_372);
        assert_eq!(cluster.slot_of(key("5b8f3c52-2e0f-4c8e-9d7a-3f1e2b4a6c8d")), 3_375);
        assert_eq!(QuotaOutage::new(false).slot_of(key("5b8f3c52-2e0f-4c8e-9d7a-3f1e2b4a6c8d")), 0);
    }

    #[test]
    fn a_single_redis_has_one_state_for_every_key() {
        let outage = QuotaOutage::new(false);
        assert!(outage.is_up(0));
        assert_eq!(outage.failed(0, 20_100, 21_100, true), Marked::OutageBegins);
        assert!(!outage.is_up(0));
        assert_eq!(outage.claim_retry(0, 20_500, 22_500), Retry::Wait, "waiting");
        // Concurrent checks that were already out fail too: the same outage.
        assert_eq!(outage.failed(0, 20_120, 21_120, true), Marked::Ongoing);
        assert_eq!(outage.claim_retry(0, 21_200, 23_200), Retry::Probe, "tried again after its wait");
        assert_eq!(outage.claim_retry(0, 21_210, 23_210), Retry::Wait, "by one caller at a time");
        assert_eq!(outage.failed(0, 21_200, 22_200, true), Marked::Ongoing);
        // Down until a check succeeds, however long nobody tries (readiness relies on it).
        assert!(outage.any_down());
        // Nobody came for a while: the next caller checks through Redis itself.
        assert_eq!(outage.claim_retry(0, 90_000, 92_000), Retry::Check);
        assert!(outage.any_down());
        assert_eq!(outage.succeeded(0), Recovered::Outage, "the outage ends");
        assert!(!outage.any_down());
        assert_eq!(outage.succeeded(0), Recovered::Nothing, "nothing was down");
    }

    #[test]
    fn on_a_cluster_a_dead_slot_leaves_the_others_alone() {
        let outage = QuotaOutage::new(true);
        let (dead, healthy) = (7, 12_000);
        // The dead slot's checks fail (timing out) each time they are tried; the healthy
        // slot's succeed in between and are never skipped.
        for second in 0..10 {
            let now = 20_000 + second * 1_000;
            assert!(second == 0 || outage.claim_retry(dead, now, now + 3_000) == Retry::Probe, "second {second}");
            let marked = outage.failed(dead, now, now + 1_000, true);
            assert_eq!(marked == Marked::OutageBegins, second == 0, "logged once, second {second}");
            assert!(outage.is_up(healthy), "second {second}");
            assert_eq!(outage.succeeded(healthy), Recovered::Nothing, "the dead slot is still down");
            assert!(outage.is_up(healthy) && !outage.is_up(dead));
            assert!(outage.any_down());
        }
        assert_eq!(outage.succeeded(dead), Recovered::Outage, "its primary is back");
        assert!(!outage.any_down());
    }

    #[test]
    fn one_slot_failing_again_and_again_is_not_a_hung_redis() {
        let outage = QuotaOutage::new(true);
        // Only the dead primary's key is busy: no success anywhere in between.
        for second in 0..10 {
            let now = 20_000 + second * 1_000;
            outage.failed(7, now, now + 1_000, true);
            assert!(outage.is_up(8), "another slot's key still tries, second {second}");
        }
    }

    #[test]
    fn timeouts_in_three_slots_without_a_success_skip_every_slot_until_one_succeeds() {
        let outage = QuotaOutage::new(true);
        outage.failed(1, 20_000, 21_000, true);
        outage.failed(2, 20_010, 21_010, true);
        assert!(outage.is_up(3), "two slots may be one dead primary");
        outage.failed(3, 20_020, 21_020, true);
        assert!(!outage.is_up(4), "three: the whole cluster hangs");
        assert_eq!(outage.claim_retry(4, 20_030, 22_030), Retry::Wait);
        // Tried again after the wait, once for every slot: a failure skips every slot again.
        assert_eq!(outage.claim_retry(4, 21_030, 23_030), Retry::Probe);
        assert_eq!(outage.claim_retry(5, 21_035, 23_035), Retry::Wait, "one try for all of them");
        outage.failed(4, 21_030, 22_030, true);
        assert_eq!(outage.claim_retry(5, 22_029, 24_029), Retry::Wait);
        // One success shows the cluster answers: slots are judged one by one again (every slot
        // came back, so what the fallback admitted in the slots now up is owed to Redis).
        assert!(!outage.is_up(6));
        assert_eq!(outage.succeeded(6), Recovered::Slots);
        assert!(outage.is_up(6) && outage.is_up(5) && !outage.is_up(1));
        assert_eq!(outage.claim_retry(4, 21_040, 23_040), Retry::Wait, "its own failure still holds");
    }

    #[test]
    fn failures_that_cost_nothing_never_skip_other_slots() {
        let outage = QuotaOutage::new(true);
        for slot in 0..100 {
            outage.failed(slot, 20_000, 21_000, false);
        }
        assert!(outage.is_up(100));
        assert_eq!(outage.claim_retry(99, 20_010, 22_010), Retry::Wait);
    }

    #[test]
    fn a_new_outage_forgets_slots_whose_keys_went_quiet() {
        let outage = QuotaOutage::new(true);
        assert_eq!(outage.failed(1, 20_000, 21_000, false), Marked::OutageBegins);
        assert!(outage.any_down());
        // Much later, another slot: a new outage, and slot 1 no longer counts.
        assert_eq!(outage.failed(2, 40_000, 41_000, false), Marked::OutageBegins);
        assert_eq!(outage.succeeded(2), Recovered::Outage, "the only slot down was this one");
        assert!(!outage.any_down());
    }
}
