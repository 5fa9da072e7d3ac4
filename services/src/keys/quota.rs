//! Quota values: per-key request limits per calendar hour and UTC day, and an optional burst rate.

use crate::{ServiceError, ServiceResult};

/// A positive request limit, at most [`QuotaLimit::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaLimit(i64);

impl QuotaLimit {
    /// Far above any sane plan; keeps arithmetic on counters clear of overflow.
    pub const MAX: i64 = 1_000_000_000_000;

    pub fn new(value: i64) -> ServiceResult<Self> {
        if value <= 0 {
            return Err(ServiceError::invalid(
                "a limit must be a positive whole number",
            ));
        }
        if value > Self::MAX {
            return Err(ServiceError::invalid(format!(
                "a limit can be at most {}",
                Self::MAX
            )));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The limits of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_hour: QuotaLimit,
    pub per_day: QuotaLimit,
    /// Requests per second allowed in a burst (GCRA), or none.
    pub burst_per_second: Option<QuotaLimit>,
}

impl Quota {
    pub const DEFAULT_PER_HOUR: i64 = 1_000;
    pub const DEFAULT_PER_DAY: i64 = 10_000;

    pub fn default_for_new_key() -> Self {
        Self {
            per_hour: QuotaLimit(Self::DEFAULT_PER_HOUR),
            per_day: QuotaLimit(Self::DEFAULT_PER_DAY),
            burst_per_second: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_must_be_positive_and_bounded() {
        assert!(QuotaLimit::new(0).is_err());
        assert!(QuotaLimit::new(-5).is_err());
        assert!(QuotaLimit::new(QuotaLimit::MAX + 1).is_err());
        assert_eq!(QuotaLimit::new(1000).unwrap().get(), 1000);
    }
}
