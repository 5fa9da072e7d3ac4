//! UTC calendar rules that the server and the browser both apply: the usage page checks an
//! export range before leaving the page with the same rule the server enforces, and both name
//! the periods of breakdowns and exports alike.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

/// An inclusive range of UTC days, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// Why two dates are not a [`DayRange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeError {
    /// `field` ("from" or "to") is not a `YYYY-MM-DD` date.
    NotADate {
        field: &'static str,
        raw: String,
    },
    /// Written `YYYY-MM-DD`, but no such day (2026-02-29).
    NoSuchDay {
        field: &'static str,
        raw: String,
    },
    /// A date outside [`DayRange::YEARS`].
    OutsideYears,
    Reversed {
        from: NaiveDate,
        to: NaiveDate,
    },
    TooLong {
        days: i64,
    },
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotADate { field, raw } => write!(f, "{field} must be a date written YYYY-MM-DD, not {raw:?}"),
            Self::NoSuchDay { field, raw } => write!(f, "{field} is {raw:?}, a day the calendar does not have"),
            Self::OutsideYears => write!(f, "dates must lie between 1970-01-01 and 9999-12-31"),
            Self::Reversed { from, to } => write!(f, "from ({from}) must not be after to ({to})"),
            Self::TooLong { days } => {
                write!(f, "a range covers at most {} days; this one has {days}", DayRange::MAX_DAYS)
            }
        }
    }
}

impl std::error::Error for RangeError {}

impl RangeError {
    /// The input at fault ("from" or "to") for a form to mark: the date that is not one, or
    /// the end of a range that is reversed or too long. A date outside the years could be either.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::NotADate { field, .. } | Self::NoSuchDay { field, .. } => Some(field),
            Self::Reversed { .. } | Self::TooLong { .. } => Some("to"),
            Self::OutsideYears => None,
        }
    }
}

impl DayRange {
    /// The longest range one export or breakdown covers.
    pub const MAX_DAYS: i64 = 366;
    /// The years a range may touch.
    pub const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

    /// Two `YYYY-MM-DD` dates (surrounding blanks ignored), as a query string or a form has them.
    pub fn parse(from: &str, to: &str) -> Result<Self, RangeError> {
        // Exactly `YYYY-MM-DD`: chrono alone also takes `2026-1-1` and `+2026-01-01`.
        let day = |field: &'static str, raw: &str| {
            let text = raw.trim();
            let b = text.as_bytes();
            let shaped = b.len() == 10
                && b[4] == b'-'
                && b[7] == b'-'
                && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
            if !shaped {
                return Err(RangeError::NotADate { field, raw: raw.to_owned() });
            }
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| RangeError::NoSuchDay { field, raw: text.to_owned() })
        };
        Self::new(day("from", from)?, day("to", to)?)
    }

    pub fn new(from: NaiveDate, to: NaiveDate) -> Result<Self, RangeError> {
        // Far past and far future dates have no use here and would overflow the instants.
        let plausible = |d: NaiveDate| Self::YEARS.contains(&d.year());
        if !plausible(from) || !plausible(to) {
            return Err(RangeError::OutsideYears);
        }
        if from > to {
            return Err(RangeError::Reversed { from, to });
        }
        let range = Self { from, to };
        if range.days() > Self::MAX_DAYS {
            return Err(RangeError::TooLong { days: range.days() });
        }
        Ok(range)
    }

    /// How many days the range covers, both ends included.
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }

    pub fn start(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.from.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// Exclusive end: midnight after `to`.
    pub fn end(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&(self.to + Duration::days(1)).and_hms_opt(0, 0, 0).unwrap_or_default())
    }
}

/// A calendar month (UTC), as `YYYY-MM`: the period of a monthly summary or invoice export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    first: NaiveDate,
}

/// Why a text is not a [`Month`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonthError {
    /// Not written `YYYY-MM`, or no such month (`2026-13`).
    NotAMonth { raw: String },
    /// A month outside [`DayRange::YEARS`].
    OutsideYears { raw: String },
}

impl fmt::Display for MonthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAMonth { raw } => write!(f, "a month is written YYYY-MM, not {raw:?}"),
            Self::OutsideYears { raw } => write!(f, "months lie between 1970-01 and 9999-12, not {raw:?}"),
        }
    }
}

impl std::error::Error for MonthError {}

impl Month {
    /// Exactly `YYYY-MM` (surrounding blanks ignored).
    pub fn parse(raw: &str) -> Result<Self, MonthError> {
        let raw = raw.trim();
        let not_a_month = || MonthError::NotAMonth { raw: raw.to_owned() };
        let b = raw.as_bytes();
        if b.len() != 7 || b[4] != b'-' || !b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_digit()) {
            return Err(not_a_month());
        }
        let first = NaiveDate::parse_from_str(&format!("{raw}-01"), "%Y-%m-%d").map_err(|_| not_a_month())?;
        // The same years as any export's range.
        if !DayRange::YEARS.contains(&first.year()) {
            return Err(MonthError::OutsideYears { raw: raw.to_owned() });
        }
        Ok(Self { first })
    }

    /// The month holding `at`.
    pub fn containing(at: DateTime<Utc>) -> Self {
        let d = at.date_naive();
        Self { first: NaiveDate::from_ymd_opt(d.year(), d.month(), 1).unwrap_or(d) }
    }

    pub fn first_day(self) -> NaiveDate {
        self.first
    }

    pub fn next(self) -> Self {
        Self { first: self.first.checked_add_months(chrono::Months::new(1)).unwrap_or(self.first) }
    }

    pub fn previous(self) -> Self {
        Self { first: self.first.checked_sub_months(chrono::Months::new(1)).unwrap_or(self.first) }
    }

    pub fn last_day(self) -> NaiveDate {
        self.next().first.pred_opt().unwrap_or(self.first)
    }

    pub fn days(self) -> DayRange {
        DayRange { from: self.first, to: self.last_day() }
    }

    /// `November 2026`.
    pub fn long_name(self) -> String {
        self.first.format("%B %Y").to_string()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first.format("%Y-%m"))
    }
}

/// Periods of a breakdown or export: hours, days, ISO weeks (from Monday) and months, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
    Week,
    Month,
}

/// A word that names no [`Granularity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GranularityError {
    pub raw: String,
}

impl fmt::Display for GranularityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "granularity must be hour, day, week or month, not {:?}", self.raw)
    }
}

impl std::error::Error for GranularityError {}

impl Granularity {
    pub const ALL: [Granularity; 4] = [Self::Hour, Self::Day, Self::Week, Self::Month];

    /// The word of the query string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, GranularityError> {
        Self::ALL.into_iter().find(|g| g.as_str() == raw).ok_or_else(|| GranularityError { raw: raw.to_owned() })
    }

    /// The start of the period holding `at`.
    pub fn period_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let date = at.date_naive();
        let start = match self {
            Self::Hour => {
                let subsec = Duration::nanoseconds(at.timestamp_subsec_nanos() as i64);
                return at - Duration::seconds(at.timestamp().rem_euclid(3600)) - subsec;
            }
            Self::Day => date,
            Self::Week => date - Duration::days(date.weekday().num_days_from_monday() as i64),
            Self::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap_or(date),
        };
        Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// The start of the period after the one starting at `at`.
    pub fn next_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Hour => at + Duration::hours(1),
            Self::Day => at + Duration::days(1),
            Self::Week => at + Duration::days(7),
            Self::Month => {
                let d = at.date_naive();
                let first = d.checked_add_months(chrono::Months::new(1)).unwrap_or(d).with_day(1).unwrap_or(d);
                Utc.from_utc_datetime(&first.and_hms_opt(0, 0, 0).unwrap_or_default())
            }
        }
    }

    /// Where the export row holding `at` starts: its period's start, or the range's own start
    /// when the range begins inside that period, so that a partial first week or month says
    /// which days it covers (from 2026-11-04, the week of Monday 2026-11-02 reads 2026-11-04).
    pub fn export_period_start(self, range: &DayRange, at: DateTime<Utc>) -> DateTime<Utc> {
        self.period_start(at).max(range.start())
    }
}

/// The longest range a history shows per hour: a week is 168 rows.
pub const HOURLY_HISTORY_MAX_DAYS: i64 = 7;

/// Why a valid range of days cannot be shown as a history per `granularity`, if it cannot:
/// per hour it may cover at most [`HOURLY_HISTORY_MAX_DAYS`] (the message is the page's).
pub fn history_range_problem(range: &DayRange, granularity: Granularity) -> Option<String> {
    (granularity == Granularity::Hour && range.days() > HOURLY_HISTORY_MAX_DAYS).then(|| {
        format!(
            "Per hour, a range can cover at most {HOURLY_HISTORY_MAX_DAYS} days; choose a shorter range or per day."
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_hour_a_history_covers_at_most_a_week() {
        let range = |to| DayRange::parse("2026-11-01", to).unwrap();
        assert_eq!(history_range_problem(&range("2026-11-07"), Granularity::Hour), None);
        assert!(history_range_problem(&range("2026-11-08"), Granularity::Hour).is_some());
        assert_eq!(history_range_problem(&range("2026-12-31"), Granularity::Day), None);
    }

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
        assert_eq!(Granularity::Month.next_start(at("2026-12-01T00:00:00Z")), at("2027-01-01T00:00:00Z"));
        assert_eq!(Granularity::Month.next_start(at("2027-01-01T00:00:00Z")), at("2027-02-01T00:00:00Z"));
        assert_eq!(Granularity::Week.next_start(at("2026-11-23T00:00:00Z")), at("2026-11-30T00:00:00Z"));
    }

    #[test]
    fn granularities_are_four_words() {
        assert!(Granularity::parse("minute").is_err());
        assert_eq!(Granularity::ALL.map(|g| Granularity::parse(g.as_str())), Granularity::ALL.map(Ok));
    }

    #[test]
    fn a_bad_range_names_the_date_to_correct() {
        let field = |from, to| DayRange::parse(from, to).unwrap_err().field();
        assert_eq!(field("2026-1-1", "2026-11-30"), Some("from"));
        assert_eq!(field("2026-11-01", "2026-02-29"), Some("to"));
        assert_eq!(field("2026-11-30", "2026-11-01"), Some("to"));
        assert_eq!(field("2024-01-01", "2026-01-01"), Some("to"));
        assert_eq!(field("1969-12-31", "1970-01-02"), None);
    }

    #[test]
    fn ranges_are_validated() {
        assert!(DayRange::parse("2026-11-01", "2026-11-30").is_ok());
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            DayRange::parse("2026-11-30", "2026-11-01"),
            Err(RangeError::Reversed { from: day("2026-11-30"), to: day("2026-11-01") })
        );
        assert!(matches!(
            DayRange::parse("2026-13-01", "2026-11-01"),
            Err(RangeError::NoSuchDay { field: "from", .. })
        ));
        assert_eq!(
            DayRange::parse("2026-02-29", "2026-03-01").unwrap_err().to_string(),
            "from is \"2026-02-29\", a day the calendar does not have"
        );
        assert!(DayRange::parse("2028-02-29", "2028-03-01").is_ok(), "a leap day");
        for loose in ["2026-1-01", "2026-11-1", "+2026-11-01", "2026/11/01", "02026-11-01", "2026-11-01x"] {
            assert!(
                matches!(DayRange::parse(loose, "2026-11-30"), Err(RangeError::NotADate { field: "from", .. })),
                "{loose}"
            );
        }
        assert!(matches!(DayRange::parse("2026-11-01", "yesterday"), Err(RangeError::NotADate { field: "to", .. })));
        assert_eq!(DayRange::parse("2024-01-01", "2026-01-01"), Err(RangeError::TooLong { days: 732 }));
        let r = DayRange::parse("2026-11-01", "2026-11-01").unwrap();
        assert_eq!(r.end() - r.start(), Duration::days(1));
    }

    #[test]
    fn months() {
        let m = Month::parse("2026-12").unwrap();
        assert_eq!(m.to_string(), "2026-12");
        assert_eq!(m.next().to_string(), "2027-01");
        assert_eq!(m.previous().to_string(), "2026-11");
        assert_eq!(m.days().to.to_string(), "2026-12-31");
        assert_eq!(Month::parse("2028-02").unwrap().last_day().to_string(), "2028-02-29");
        assert_eq!(m.long_name(), "December 2026");
        assert_eq!(
            Month::containing(DateTime::parse_from_rfc3339("2026-11-30T23:59:59Z").unwrap().with_timezone(&Utc))
                .to_string(),
            "2026-11"
        );
        for bad in [
            "2026-13",
            "2026-1",
            "+2026-1",
            "2026-1 ",
            "2026+01",
            "26-11",
            "2026-11-01",
            "",
            "november",
            "0000-01",
            "0001-01",
            "1969-12",
        ] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Month::parse(" 2026-11 ").unwrap().to_string(), "2026-11");
        assert_eq!(Month::parse("2026-13").unwrap_err().to_string(), "a month is written YYYY-MM, not \"2026-13\"");
        assert_eq!(
            Month::parse("1969-12").unwrap_err().to_string(),
            "months lie between 1970-01 and 9999-12, not \"1969-12\""
        );
    }

    /// The CSV export's query parameters: any strings are a range or a refusal, never a panic,
    /// and valid dates are judged by the documented rule alone.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn date_from_day_number(n: i32) -> NaiveDate {
            NaiveDate::from_num_days_from_ce_opt(n).unwrap()
        }

        /// Any date chrono can hold, with the first and last ones weighted in.
        fn any_date() -> impl Strategy<Value = NaiveDate> {
            let (min, max) = (NaiveDate::MIN.num_days_from_ce(), NaiveDate::MAX.num_days_from_ce());
            prop_oneof![
                4 => (min..=max).prop_map(date_from_day_number),
                1 => (0..3i32).prop_map(move |k| date_from_day_number(min + k)),
                1 => (0..3i32).prop_map(move |k| date_from_day_number(max - k)),
            ]
        }

        /// A date and another one around it, so that both sides of the 366-day rule show up.
        fn near_dates() -> impl Strategy<Value = (NaiveDate, NaiveDate)> {
            let realistic = (1970 * 365..=2200 * 365i32).prop_map(date_from_day_number);
            (prop_oneof![3 => realistic, 1 => any_date()], -800..=800i64).prop_filter_map(
                "second date out of chrono's range",
                // The last day itself is the known bug above (`last_representable_day_has_an_end`).
                |(from, delta)| {
                    from.checked_add_signed(Duration::days(delta))
                        .filter(|to| *to < NaiveDate::MAX)
                        .map(|to| (from, to))
                },
            )
        }

        fn spelled(d: NaiveDate) -> String {
            d.format("%Y-%m-%d").to_string()
        }

        fn date_like() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "\\PC{0,40}",
                "[+-]?[0-9]{1,7}-[0-9]{1,3}-[0-9]{1,3}",
                " *[0-9]{4}-[01][0-9]-[0-3][0-9]\\PC{0,3}",
                any_date().prop_map(spelled),
            ]
        }

        /// Once a bug: the last day chrono can hold was accepted by `parse` (so
        /// `?from=%2B262142-12-31&to=%2B262142-12-31` reached the CSV export), but its exclusive
        /// end (the next midnight) does not exist and `end()` panicked. Years are now bounded.
        #[test]
        fn last_representable_day_has_an_end() {
            let last = spelled(NaiveDate::MAX);
            assert!(DayRange::parse(&last, &last).is_err());
            assert!(DayRange::parse("1969-12-31", "1970-01-01").is_err());
        }

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

            #[test]
            fn range_parse_never_panics(from in date_like(), to in date_like()) {
                if let Ok(r) = DayRange::parse(&from, &to) {
                    prop_assert!(r.from <= r.to);
                    prop_assert!((r.to - r.from).num_days() < DayRange::MAX_DAYS);
                    prop_assert!(r.start() < r.end());
                }
            }

            #[test]
            fn valid_dates_accepted_iff_ordered_and_at_most_max_days(
                (from, to) in near_dates(),
                pad in "[ \\t]{0,2}",
            ) {
                let r = DayRange::parse(&format!("{pad}{}{pad}", spelled(from)), &spelled(to));
                let days = (to - from).num_days() + 1;
                let plausible = |d: NaiveDate| DayRange::YEARS.contains(&d.year());
                if from <= to && days <= DayRange::MAX_DAYS && plausible(from) && plausible(to) {
                    let r = r.unwrap();
                    prop_assert_eq!((r.from, r.to), (from, to));
                    prop_assert_eq!(r, DayRange::new(from, to).unwrap());
                    prop_assert!(r.start() < r.end());
                    prop_assert_eq!(r.end() - r.start(), Duration::days(days));
                } else {
                    prop_assert!(r.is_err(), "{from} {to}: {r:?}");
                }
            }
        }
    }
}
