//! The local fallback limit, used only while Redis cannot answer: each instance admits at most
//! its share of every window (the limit divided by the configured instance count), counted in
//! memory on this node's clock. Together the instances stay within the quota without talking
//! to each other; requests admitted this way are recorded as unenforced. Counts start from zero
//! when Redis goes away (use before the outage is not known here).

use std::collections::HashMap;
use std::sync::Mutex;

use super::api_keys::ApiKeyId;
use super::quota::Quota;
use super::quota_manager::{QuotaDecision, Window, WindowUse};

#[derive(Default, Clone, Copy)]
struct LocalCounts {
    hour_start_ms: i64,
    hour: i64,
    day_start_ms: i64,
    day: i64,
}

pub struct FallbackLimiter {
    instances: i64,
    counts: Mutex<HashMap<ApiKeyId, LocalCounts>>,
}

impl FallbackLimiter {
    /// Keys tracked at most; beyond that the oldest state is simply forgotten (fail-open).
    const MAX_KEYS: usize = 100_000;

    pub fn new(instances: u32) -> Self {
        Self { instances: i64::from(instances.max(1)), counts: Mutex::new(HashMap::new()) }
    }

    /// This instance's share of a limit: at least one request.
    pub fn share(&self, limit: i64) -> i64 {
        (limit / self.instances).max(1)
    }

    /// Checks and counts one request at `now_ms` (this node's clock).
    pub fn check(&self, key: ApiKeyId, quota: &Quota, now_ms: i64) -> QuotaDecision {
        let hour_start = now_ms - now_ms.rem_euclid(3_600_000);
        let day_start = now_ms - now_ms.rem_euclid(86_400_000);
        let (hour_limit, day_limit) = (self.share(quota.per_hour.get()), self.share(quota.per_day.get()));
        let mut counts = match self.counts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if counts.len() >= Self::MAX_KEYS && !counts.contains_key(&key) {
            counts.clear();
        }
        let c = counts.entry(key).or_default();
        if c.hour_start_ms != hour_start {
            (c.hour_start_ms, c.hour) = (hour_start, 0);
        }
        if c.day_start_ms != day_start {
            (c.day_start_ms, c.day) = (day_start, 0);
        }
        let hour_full = c.hour >= hour_limit;
        let day_full = c.day >= day_limit;
        let admitted = !hour_full && !day_full;
        if admitted {
            c.hour += 1;
            c.day += 1;
        }
        let hour =
            WindowUse { window: Window::Hour, limit: hour_limit, used: c.hour, reset_at_ms: hour_start + 3_600_000 };
        let day = WindowUse { window: Window::Day, limit: day_limit, used: c.day, reset_at_ms: day_start + 86_400_000 };
        let blocked_by = if day_full {
            Some(Window::Day)
        } else if hour_full {
            Some(Window::Hour)
        } else {
            None
        };
        let retry_after_secs = blocked_by.map(|w| {
            let reset = if w == Window::Day { day.reset_at_ms } else { hour.reset_at_ms };
            ((reset - now_ms + 999) / 1000).max(1)
        });
        QuotaDecision { admitted, hour, day, burst_per_second: None, blocked_by, retry_after_secs, now_ms }
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

    #[test]
    fn each_instance_admits_its_share_of_the_hour() {
        let limiter = FallbackLimiter::new(3);
        let key = ApiKeyId(uuid::Uuid::new_v4());
        let now = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000 + 60_000;
        let admitted = (0..50).filter(|_| limiter.check(key, &quota(100, 10_000), now).admitted).count();
        assert_eq!(admitted, 33);
        let refused = limiter.check(key, &quota(100, 10_000), now);
        assert_eq!(refused.blocked_by, Some(Window::Hour));
        assert_eq!(refused.retry_after_secs, Some(3_540));
        // A new hour starts from zero.
        assert!(limiter.check(key, &quota(100, 10_000), now + 3_600_000).admitted);
    }

    #[test]
    fn a_share_is_never_zero() {
        assert_eq!(FallbackLimiter::new(8).share(3), 1);
        assert_eq!(FallbackLimiter::new(0).share(5), 5);
    }
}
