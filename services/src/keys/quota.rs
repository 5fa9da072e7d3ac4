//! Quota values: per-key request limits per calendar hour and UTC day, and an optional burst
//! rate; and the rules for limits that people type.

use crate::{ServiceError, ServiceResult};

/// A positive request limit, at most [`QuotaLimit::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaLimit(i64);

impl QuotaLimit {
    /// Far above any sane plan; keeps arithmetic on counters clear of overflow.
    pub const MAX: i64 = 1_000_000_000_000;

    pub fn new(value: i64) -> ServiceResult<Self> {
        Self::bounded(value, Self::MAX)
    }

    /// The highest burst rate per second: a request every 10 µs, beyond what an API key needs.
    /// (The burst limiter counts in 1/rate ms; its numbers stay far inside a double's exact
    /// integers up to this.)
    pub const MAX_BURST: i64 = 100_000;

    pub fn burst(value: i64) -> ServiceResult<Self> {
        Self::bounded(value, Self::MAX_BURST)
    }

    fn bounded(value: i64, max: i64) -> ServiceResult<Self> {
        if value <= 0 {
            return Err(ServiceError::invalid("a limit must be a positive whole number"));
        }
        if value > max {
            return Err(ServiceError::invalid(format!("a limit can be at most {max}")));
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

    /// The limits as stored (`api_key_quotas`), checked as when they were set.
    pub fn from_stored(per_hour: i64, per_day: i64, burst_per_second: Option<i32>) -> ServiceResult<Self> {
        Ok(Self {
            per_hour: QuotaLimit::new(per_hour)?,
            per_day: QuotaLimit::new(per_day)?,
            burst_per_second: burst_per_second.map(|b| QuotaLimit::burst(b.into())).transpose()?,
        })
    }

    pub fn default_for_new_key() -> Self {
        Self {
            per_hour: QuotaLimit(Self::DEFAULT_PER_HOUR),
            per_day: QuotaLimit(Self::DEFAULT_PER_DAY),
            burst_per_second: None,
        }
    }
}

/// The platform's ceiling for any limit a merchant may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaMaximum {
    pub per_hour: i64,
    pub per_day: i64,
}

impl Default for QuotaMaximum {
    fn default() -> Self {
        Self { per_hour: 1_000_000, per_day: 20_000_000 }
    }
}

/// The rule for limits that merchants ask for and admins set or approve: an hour cannot allow more
/// than its day (the excess could never be used, so it is a typo or a misunderstanding). The
/// operator CLI (`keymeter quota set`) stays free of it on purpose; tests use hour > day to make
/// the day window the one that blocks.
fn check_hour_within_day(per_hour: i64, per_day: i64) -> ServiceResult<()> {
    if per_hour > per_day {
        return Err(ServiceError::invalid(format!(
            "The hourly limit cannot exceed the daily limit ({} per hour is more than {} per day); raise the daily limit too.",
            format::count(per_hour),
            format::count(per_day)
        )));
    }
    Ok(())
}

/// One limit a person sets (a merchant asks for, an admin approves or sets): positive and
/// within the platform's maximum for it (`name`: "hourly", "daily"), naming its field.
pub(crate) fn checked_limit(value: i64, name: &str, max: i64, field: &'static str) -> ServiceResult<QuotaLimit> {
    if value <= 0 {
        return Err(ServiceError::invalid_field(field, format!("The {name} limit must be positive.")));
    }
    if value > max {
        let message = format!("The {name} limit can be at most {}.", format::count(max));
        return Err(ServiceError::invalid_field(field, message));
    }
    QuotaLimit::new(value).map_err(|e| e.in_field(field))
}

/// A burst rate (requests per second) that an admin sets: positive and at most
/// [`QuotaLimit::MAX_BURST`], naming the `burst` field.
pub(crate) fn checked_burst(value: i64) -> ServiceResult<QuotaLimit> {
    checked_limit(value, "burst", QuotaLimit::MAX_BURST, "burst")
}

/// Both limits an admin sets or approves: each as [`checked_limit`], and the hour within the day.
pub(crate) fn checked_limits(
    max: QuotaMaximum,
    per_hour: i64,
    per_day: i64,
) -> ServiceResult<(QuotaLimit, QuotaLimit)> {
    let limits = (
        checked_limit(per_hour, "hourly", max.per_hour, "per_hour")?,
        checked_limit(per_day, "daily", max.per_day, "per_day")?,
    );
    hour_within_day(per_hour, per_day)?;
    Ok(limits)
}

/// [`check_hour_within_day`], naming the field to change: the message asks for a higher daily
/// limit.
pub(crate) fn hour_within_day(per_hour: i64, per_day: i64) -> ServiceResult<()> {
    check_hour_within_day(per_hour, per_day).map_err(|e| e.in_field("per_day"))
}

/// A limit as typed in a form ("25,000", "25 000" and "25_000" are 25000); `name` ("hourly",
/// "daily") names it in the message.
pub fn parse_limit(raw: &str, name: &str) -> ServiceResult<i64> {
    raw.trim()
        .replace([',', '_', ' '], "")
        .parse::<i64>()
        .map_err(|_| ServiceError::invalid(format!("The {name} limit must be a whole number.")))
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

    /// Limits come from forms and the CLI: any i64 is accepted or refused as bad input, never a
    /// panic, and exactly the documented range is accepted.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any i64, with extra weight on the edges of both ranges.
        fn limit_value() -> impl Strategy<Value = i64> {
            prop_oneof![
                any::<i64>(),
                -3..=3i64,
                QuotaLimit::MAX - 3..=QuotaLimit::MAX + 3,
                i32::MAX as i64 - 3..=i32::MAX as i64 + 3,
                QuotaLimit::MAX_BURST - 3..=QuotaLimit::MAX_BURST + 3,
                Just(i64::MIN),
                Just(i64::MAX),
            ]
        }

        /// A quota built from raw numbers the way callers do it (`?` on each limit).
        fn quota(hour: i64, day: i64, burst: Option<i64>) -> ServiceResult<Quota> {
            Ok(Quota {
                per_hour: QuotaLimit::new(hour)?,
                per_day: QuotaLimit::new(day)?,
                burst_per_second: burst.map(QuotaLimit::burst).transpose()?,
            })
        }

        fn is_bad_input<T: std::fmt::Debug>(r: &ServiceResult<T>) -> bool {
            matches!(r, Err(ServiceError::Invalid { .. }))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn limit_accepted_iff_positive_and_at_most_max(v in limit_value()) {
                let r = QuotaLimit::new(v);
                if (1..=QuotaLimit::MAX).contains(&v) {
                    prop_assert_eq!(r.unwrap().get(), v);
                } else {
                    prop_assert!(is_bad_input(&r), "{v}: {r:?}");
                }
            }

            #[test]
            fn burst_accepted_iff_positive_and_at_most_the_maximum(v in limit_value()) {
                let r = QuotaLimit::burst(v);
                if (1..=QuotaLimit::MAX_BURST).contains(&v) {
                    let b = r.unwrap().get();
                    prop_assert_eq!(b, v);
                    // Stored as INTEGER: the cast in `quota_changes::apply` must not wrap.
                    prop_assert_eq!(b as i32 as i64, b);
                } else {
                    prop_assert!(is_bad_input(&r), "{v}: {r:?}");
                }
            }

            #[test]
            fn quota_built_iff_every_limit_is_valid(
                hour in limit_value(),
                day in limit_value(),
                burst in proptest::option::of(limit_value()),
            ) {
                let valid = (1..=QuotaLimit::MAX).contains(&hour)
                    && (1..=QuotaLimit::MAX).contains(&day)
                    && burst.is_none_or(|b| (1..=QuotaLimit::MAX_BURST).contains(&b));
                let r = quota(hour, day, burst);
                if valid {
                    let q = r.unwrap();
                    prop_assert_eq!(
                        (q.per_hour.get(), q.per_day.get(), q.burst_per_second.map(QuotaLimit::get)),
                        (hour, day, burst)
                    );
                } else {
                    prop_assert!(is_bad_input(&r), "{hour} {day} {burst:?}: {r:?}");
                }
            }
        }
    }
}
