//! UTC periods of breakdowns and exports: hours, days, ISO weeks, months.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

use crate::{ServiceError, ServiceResult};

pub use calendar::{DayRange, Month, MonthError, RangeError};

/// Periods of a breakdown or export. Weeks are ISO weeks (from Monday), all in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
    Week,
    Month,
}

impl Granularity {
    /// The word of the query string and of PostgreSQL's `date_trunc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    pub fn parse(raw: &str) -> ServiceResult<Self> {
        match raw {
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            "week" => Ok(Self::Week),
            "month" => Ok(Self::Month),
            other => Err(ServiceError::invalid(format!("granularity must be hour, day, week or month, not {other:?}"))),
        }
    }

    /// The start of the period holding `at`.
    pub fn period_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let date = at.date_naive();
        let start = match self {
            Self::Hour => return at - Duration::seconds(at.timestamp().rem_euclid(3600)) - subsec(at),
            Self::Day => date,
            Self::Week => date - Duration::days(date.weekday().num_days_from_monday() as i64),
            Self::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap_or(date),
        };
        Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// Where the export row holding `at` starts: its period's start, or the range's own start
    /// when the range begins inside that period, so that a partial first week or month says
    /// which days it covers (from 2026-11-04, the week of Monday 2026-11-02 reads 2026-11-04).
    pub fn export_period_start(self, range: &DayRange, at: DateTime<Utc>) -> DateTime<Utc> {
        self.period_start(at).max(range.start())
    }
}

fn subsec(at: DateTime<Utc>) -> Duration {
    Duration::nanoseconds(at.timestamp_subsec_nanos() as i64)
}

/// The start of the period after the one starting at `at`.
pub(super) fn next_period(g: Granularity, at: DateTime<Utc>) -> DateTime<Utc> {
    match g {
        Granularity::Hour => at + Duration::hours(1),
        Granularity::Day => at + Duration::days(1),
        Granularity::Week => at + Duration::days(7),
        Granularity::Month => {
            let d = at.date_naive();
            let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
            Utc.from_utc_datetime(
                &NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d).and_hms_opt(0, 0, 0).unwrap_or_default(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_partial_first_period_of_an_export_starts_with_its_range() {
        let range = DayRange::parse("2026-11-04", "2026-12-10").unwrap();
        let t = at("2026-11-05T10:00:00Z");
        assert_eq!(Granularity::Week.export_period_start(&range, t), at("2026-11-04T00:00:00Z"));
        assert_eq!(Granularity::Month.export_period_start(&range, t), at("2026-11-04T00:00:00Z"));
        assert_eq!(Granularity::Day.export_period_start(&range, t), at("2026-11-05T00:00:00Z"));
        assert_eq!(Granularity::Hour.export_period_start(&range, t), t);
        // Later periods are whole: they start where the calendar says.
        assert_eq!(
            Granularity::Week.export_period_start(&range, at("2026-11-10T00:00:00Z")),
            at("2026-11-09T00:00:00Z")
        );
        assert_eq!(
            Granularity::Month.export_period_start(&range, at("2026-12-10T23:00:00Z")),
            at("2026-12-01T00:00:00Z")
        );
    }

    #[test]
    fn periods_are_utc_calendar_periods() {
        let t = at("2026-11-26T17:45:12.5Z"); // a Thursday
        assert_eq!(Granularity::Hour.period_start(t), at("2026-11-26T17:00:00Z"));
        assert_eq!(Granularity::Day.period_start(t), at("2026-11-26T00:00:00Z"));
        assert_eq!(Granularity::Week.period_start(t), at("2026-11-23T00:00:00Z"));
        assert_eq!(Granularity::Month.period_start(t), at("2026-11-01T00:00:00Z"));
        // ISO week of a Sunday starts the Monday before.
        assert_eq!(Granularity::Week.period_start(at("2026-11-29T23:59:59Z")), at("2026-11-23T00:00:00Z"));
        assert_eq!(next_period(Granularity::Month, at("2026-12-01T00:00:00Z")), at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn granularities_are_four_words() {
        assert!(Granularity::parse("minute").is_err());
    }

    /// The CSV export's granularity parameter: any string is one of the four or refused.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn granularity_accepted_iff_one_of_four_words(raw in prop_oneof![
                any::<String>(),
                "(hour|day|week|month|HOUR|Day|minute|year)[ \\t]?",
            ]) {
                let r = Granularity::parse(&raw);
                prop_assert_eq!(r.is_ok(), ["hour", "day", "week", "month"].contains(&raw.as_str()));
            }
        }
    }
}
