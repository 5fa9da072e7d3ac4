//! Which keys' quota checks skip Redis for now, because their last check could not reach it.
//!
//! On a single Redis this is one state: a failed check sends every key to the fallback for a
//! second, so an outage costs the check's timeout once a second, not on every request. On a
//! Redis Cluster a dead primary takes only its hash slots with it, so the state is kept per
//! slot: keys on healthy primaries stay exact. Failures in several slots with no success in
//! between mean the whole cluster is out, and every slot is then skipped at once, so a hung
//! cluster still costs about one timeout a second rather than one per slot.
//!
//! Atomics only: this is read on every metered request.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};

use super::api_keys::ApiKeyId;

/// Redis Cluster's number of hash slots.
const SLOTS: usize = 16_384;

/// Failures in distinct slots, with no success in between, that count as a whole-Redis outage.
const WHOLE_OUTAGE_SLOTS: u32 = 3;

/// A slot not tried since this long after its failure no longer counts as down for
/// [`QuotaOutage::any_down`] (its keys may simply have gone quiet).
const STALE_MS: i64 = 10_000;

/// What a failed check changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// No check was failing before (or none for [`STALE_MS`]): an outage starts.
    OutageBegins,
    /// Part of an outage already seen.
    Ongoing,
}

pub struct QuotaOutage {
    /// Per hash slot (one entry on a single Redis): 0 while up, else until when (ms on the
    /// caller's clock) its checks skip Redis.
    down_until_ms: Box<[AtomicI64]>,
    /// Entries of `down_until_ms` that are not 0.
    slots_down: AtomicUsize,
    /// New failures (a slot not already skipped) since the last success.
    failures_since_success: AtomicU32,
    /// Until when every slot skips Redis (0: no whole outage).
    all_down_until_ms: AtomicI64,
    /// When a check last failed (0: never).
    last_failure_ms: AtomicI64,
}

impl QuotaOutage {
    pub fn new(cluster: bool) -> Self {
        let slots = if cluster { SLOTS } else { 1 };
        Self {
            down_until_ms: (0..slots).map(|_| AtomicI64::new(0)).collect(),
            slots_down: AtomicUsize::new(0),
            failures_since_success: AtomicU32::new(0),
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
        usize::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % self.down_until_ms.len()
    }

    /// Whether a check in `slot` should go to Redis at `now_ms`.
    pub fn should_try(&self, slot: usize, now_ms: i64) -> bool {
        self.all_down_until_ms.load(Ordering::Relaxed) <= now_ms
            && self.down_until_ms[slot].load(Ordering::Relaxed) <= now_ms
    }

    /// A check in `slot` failed at `now_ms`: its slot skips Redis until `until_ms`.
    pub fn failed(&self, slot: usize, now_ms: i64, until_ms: i64) -> Marked {
        let last_failure = self.last_failure_ms.swap(now_ms, Ordering::Relaxed);
        let before = self.down_until_ms[slot].swap(until_ms, Ordering::Relaxed);
        let was_counted = before != 0;
        let none_down = if was_counted { false } else { self.slots_down.fetch_add(1, Ordering::Relaxed) == 0 };
        // Concurrent checks of a slot fail together: only the first marks it anew.
        if before <= now_ms {
            let failures = self.failures_since_success.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= WHOLE_OUTAGE_SLOTS {
                self.all_down_until_ms.store(until_ms, Ordering::Relaxed);
            }
        }
        if none_down || last_failure + STALE_MS < now_ms {
            Marked::OutageBegins
        } else {
            Marked::Ongoing
        }
    }

    /// A check in `slot` got Redis' answer. Returns true if that ends the outage (no slot
    /// is down any more).
    pub fn succeeded(&self, slot: usize) -> bool {
        // Loads first: on the hot path, with nothing down, nothing is written.
        if self.failures_since_success.load(Ordering::Relaxed) != 0 {
            self.failures_since_success.store(0, Ordering::Relaxed);
        }
        if self.all_down_until_ms.load(Ordering::Relaxed) != 0 {
            self.all_down_until_ms.store(0, Ordering::Relaxed);
        }
        let slot = &self.down_until_ms[slot];
        slot.load(Ordering::Relaxed) != 0
            && slot.swap(0, Ordering::Relaxed) != 0
            && self.slots_down.fetch_sub(1, Ordering::Relaxed) == 1
    }

    /// Whether quota checks have been failing at `now_ms`: some slot is down and a check failed
    /// lately (a slot whose keys went quiet after a failure is not held against Redis forever).
    pub fn any_down(&self, now_ms: i64) -> bool {
        self.slots_down.load(Ordering::Relaxed) > 0 && self.last_failure_ms.load(Ordering::Relaxed) + STALE_MS > now_ms
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
        assert!(outage.should_try(0, 0));
        assert_eq!(outage.failed(0, 100, 1_100), Marked::OutageBegins);
        assert!(!outage.should_try(0, 500));
        assert!(outage.any_down(500));
        // Concurrent checks that were already out fail too: the same outage.
        assert_eq!(outage.failed(0, 120, 1_120), Marked::Ongoing);
        assert!(outage.should_try(0, 1_200), "tried again after its wait");
        assert_eq!(outage.failed(0, 1_200, 2_200), Marked::Ongoing);
        assert!(outage.succeeded(0), "the outage ends");
        assert!(!outage.any_down(1_300));
        assert!(outage.should_try(0, 1_300));
        assert!(!outage.succeeded(0), "nothing was down");
    }

    #[test]
    fn on_a_cluster_a_dead_slot_leaves_the_others_alone() {
        let outage = QuotaOutage::new(true);
        let (dead, healthy) = (7, 12_000);
        // Checks on the dead slot fail each time they are tried; the healthy slot's succeed
        // in between and are never skipped.
        for second in 0..10 {
            let now = second * 1_000;
            assert!(outage.should_try(dead, now));
            let marked = outage.failed(dead, now, now + 1_000);
            assert_eq!(marked == Marked::OutageBegins, second == 0, "logged once, second {second}");
            assert!(outage.should_try(healthy, now + 10), "second {second}");
            assert!(!outage.succeeded(healthy), "the dead slot is still down");
            assert!(outage.any_down(now + 10));
        }
        assert!(outage.succeeded(dead), "its primary is back");
        assert!(!outage.any_down(10_000));
    }

    #[test]
    fn failures_in_several_slots_without_a_success_skip_every_slot() {
        let outage = QuotaOutage::new(true);
        outage.failed(1, 0, 1_000);
        outage.failed(2, 10, 1_010);
        assert!(outage.should_try(3, 20), "two slots may be one dead primary");
        outage.failed(3, 20, 1_020);
        assert!(!outage.should_try(4, 30), "three: the whole cluster is out");
        assert!(outage.should_try(4, 1_030));
        // One success shows the cluster answers: slots are judged one by one again.
        outage.failed(4, 1_030, 2_030);
        assert!(!outage.should_try(5, 1_040));
        assert!(!outage.succeeded(6));
        assert!(outage.should_try(5, 1_040));
        assert!(!outage.should_try(4, 1_040), "its own failure still holds");
    }

    #[test]
    fn a_slot_whose_keys_went_quiet_stops_counting_as_down() {
        let outage = QuotaOutage::new(true);
        outage.failed(1, 0, 1_000);
        assert!(outage.any_down(5_000));
        assert!(!outage.any_down(10_001));
        // A later failure elsewhere is a new outage for the log.
        assert_eq!(outage.failed(2, 20_000, 21_000), Marked::OutageBegins);
    }
}
