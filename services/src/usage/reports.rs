//! Usage as people read it: the live last hour (from Redis, or from the per-minute rollups when
//! Redis cannot answer), breakdowns by day, ISO week and month, top endpoints and status codes
//! (from the hourly rollups in PostgreSQL), and export rows.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use diesel::sql_types::{SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::histogram::LatencyHistogram;
use super::live::{self, MinuteCounters};
use crate::db::{self, DbPool};
use crate::redis_pool::RedisPool;
use crate::{ServiceError, ServiceResult};

pub use calendar::{DayRange, RangeError};

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

/// A calendar month (UTC), as `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    first: NaiveDate,
}

impl Month {
    pub fn parse(raw: &str) -> ServiceResult<Self> {
        let raw = raw.trim();
        let invalid = || ServiceError::invalid(format!("a month is written YYYY-MM, not {raw:?}"));
        if raw.len() != 7 {
            return Err(invalid());
        }
        let first = NaiveDate::parse_from_str(&format!("{raw}-01"), "%Y-%m-%d").map_err(|_| invalid())?;
        // The same years as any export's range.
        if !DayRange::YEARS.contains(&first.year()) {
            return Err(ServiceError::invalid(format!("months lie between 1970-01 and 9999-12, not {raw:?}")));
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

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.first.format("%Y-%m"))
    }
}

/// Sums of one period (and possibly one endpoint).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    /// Admitted (billable) calls.
    pub requests: i64,
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    /// Calls refused by the quota.
    pub throttled: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub latency: LatencyHistogram,
}

impl UsageTotals {
    pub(super) fn add_row(&mut self, r: &RollupRow, hist: &LatencyHistogram) {
        self.requests += r.requests;
        if (400..500).contains(&r.status) {
            self.errors_4xx += r.requests;
        }
        if (500..600).contains(&r.status) {
            self.errors_5xx += r.requests;
        }
        self.throttled += r.throttled;
        self.bytes_in += r.bytes_in;
        self.bytes_out += r.bytes_out;
        self.latency.merge(hist);
    }

    /// Share of admitted calls that failed (4xx or 5xx), 0 to 1.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            (self.errors_4xx + self.errors_5xx) as f64 / self.requests as f64
        }
    }

    pub fn p50_ms(&self) -> Option<f64> {
        self.latency.quantile_us(0.5).map(|us| us / 1000.0)
    }

    pub fn p95_ms(&self) -> Option<f64> {
        self.latency.quantile_us(0.95).map(|us| us / 1000.0)
    }
}

#[derive(QueryableByName, Clone)]
pub(super) struct RollupRow {
    #[diesel(sql_type = Timestamptz)]
    period_start: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    method: String,
    #[diesel(sql_type = Text)]
    endpoint: String,
    #[diesel(sql_type = SmallInt)]
    status: i16,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    requests: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    throttled: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_in: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_out: i64,
    /// The histogram's JSON as text (`latency_hist::text`): parsed straight into a
    /// [`LatencyHistogram`], without building a JSON value tree first.
    #[diesel(sql_type = Text)]
    latency_hist: String,
}

/// An hourly rollup row and its key.
#[derive(QueryableByName)]
pub(super) struct KeyedRollupRow {
    #[diesel(sql_type = SqlUuid)]
    api_key_id: Uuid,
    #[diesel(embed)]
    rollup: RollupRow,
}

impl KeyedRollupRow {
    /// The row's latency histogram (empty if the stored JSON is not one).
    fn histogram(&self) -> LatencyHistogram {
        serde_json::from_str(&self.rollup.latency_hist).unwrap_or_default()
    }
}

/// The rollup tables: per minute (recent detail), per hour (history, exports) and per day
/// (the usage page's breakdowns, a year at a time).
#[derive(Clone, Copy)]
enum Rollups {
    Minute,
    Hour,
    Day,
}

/// One key's rollups between two instants, histograms not parsed yet.
async fn rollup_rows(
    db: &DbPool,
    table: Rollups,
    key: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> ServiceResult<Vec<KeyedRollupRow>> {
    let table = match table {
        Rollups::Minute => "api_key_usage_minute",
        Rollups::Hour => "api_key_usage_hour",
        Rollups::Day => "api_key_usage_day",
    };
    let mut conn = db::conn(db).await?;
    Ok(diesel::sql_query(format!(
        "SELECT api_key_id, period_start, method, endpoint, status, requests, throttled, bytes_in, bytes_out, \
         latency_hist::text AS latency_hist FROM {table} \
         WHERE api_key_id = $1 AND period_start >= $2 AND period_start < $3"
    ))
    .bind::<SqlUuid, _>(key)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .load(&mut conn)
    .await?)
}

/// Whether a key has any usage in the rollups.
pub async fn has_usage(db: &DbPool, key: Uuid) -> ServiceResult<bool> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let mut conn = db::conn(db).await?;
    let row: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM api_key_usage_hour WHERE api_key_id = $1) AS found")
            .bind::<SqlUuid, _>(key)
            .get_result(&mut conn)
            .await?;
    Ok(row.found)
}

/// One key's hourly or daily rollups over a range, read (and their histograms parsed) once,
/// from which a page derives its breakdowns. Daily rows serve periods of a day or more; ranges
/// of hours (the top tables' "last 24 h") need hourly ones.
pub struct RollupRows {
    // (Rows are private: callers use the derived views.)
    range: DayRange,
    rows: Vec<(RollupRow, LatencyHistogram)>,
}

impl RollupRows {
    pub async fn hours(db: &DbPool, key: Uuid, range: DayRange) -> ServiceResult<Self> {
        Self::load(db, Rollups::Hour, key, range).await
    }

    pub async fn days(db: &DbPool, key: Uuid, range: DayRange) -> ServiceResult<Self> {
        Self::load(db, Rollups::Day, key, range).await
    }

    async fn load(db: &DbPool, table: Rollups, key: Uuid, range: DayRange) -> ServiceResult<Self> {
        let rows = rollup_rows(db, table, key, range.start(), range.end()).await?;
        // Parsing tens of thousands of histograms takes tens of milliseconds: not on the
        // request workers, which also run the metered API's requests.
        let rows = tokio::task::spawn_blocking(move || {
            rows.into_iter()
                .map(|row| {
                    let hist = row.histogram();
                    (row.rollup, hist)
                })
                .collect()
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("reading rollups: {e}")))?;
        Ok(Self { range, rows })
    }

    fn within(&self, range: DayRange) -> impl Iterator<Item = &(RollupRow, LatencyHistogram)> {
        self.between(range.start(), range.end())
    }

    /// Rows of the hours starting in `start..end` (within the loaded days).
    fn between(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Iterator<Item = &(RollupRow, LatencyHistogram)> {
        let (start, end) = (start.max(self.range.start()), end.min(self.range.end()));
        self.rows.iter().filter(move |(r, _)| r.period_start >= start && r.period_start < end)
    }

    /// Totals per period, oldest first, every period present (empty ones as zero).
    pub fn breakdown(&self, granularity: Granularity, range: DayRange) -> Vec<(DateTime<Utc>, UsageTotals)> {
        let mut periods: BTreeMap<DateTime<Utc>, UsageTotals> = BTreeMap::new();
        let mut at = granularity.period_start(range.start());
        while at < range.end() {
            periods.insert(at, UsageTotals::default());
            at = next_period(granularity, at);
        }
        for (row, hist) in self.within(range) {
            periods.entry(granularity.period_start(row.period_start)).or_default().add_row(row, hist);
        }
        periods.into_iter().collect()
    }

    /// Per endpoint (method and route template) over the hours starting in `start..end`,
    /// busiest first.
    pub fn by_endpoint(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<(String, String, UsageTotals)> {
        let mut map: HashMap<(String, String), UsageTotals> = HashMap::new();
        for (row, hist) in self.between(start, end) {
            map.entry((row.method.clone(), row.endpoint.clone())).or_default().add_row(row, hist);
        }
        let mut out: Vec<_> = map.into_iter().map(|((m, e), t)| (m, e, t)).collect();
        out.sort_by(|a, b| (b.2.requests + b.2.throttled).cmp(&(a.2.requests + a.2.throttled)).then(a.1.cmp(&b.1)));
        out
    }

    /// Export rows of several keys' loaded rollups together, in the order of [`export_rows`].
    pub fn export_rows<'a>(
        keys: impl IntoIterator<Item = (Uuid, &'a RollupRows)>,
        granularity: Granularity,
        range: DayRange,
    ) -> Vec<ExportRow> {
        let mut rows = ExportRows::new(granularity, range);
        for (key, hours) in keys {
            for (row, hist) in hours.within(range) {
                rows.add(key, row, hist);
            }
        }
        rows.finish()
    }

    /// Calls per status code (quota refusals under 429) over the hours starting in
    /// `start..end`, by code.
    pub fn by_status(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<(u16, i64)> {
        let mut map: BTreeMap<u16, i64> = BTreeMap::new();
        for (row, _) in self.between(start, end) {
            *map.entry(row.status as u16).or_default() += row.requests + row.throttled;
        }
        map.into_iter().collect()
    }
}

fn next_period(g: Granularity, at: DateTime<Utc>) -> DateTime<Utc> {
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

/// One row of a CSV export.
#[derive(Debug, Clone)]
pub struct ExportRow {
    pub period_start: DateTime<Utc>,
    pub key_id: Uuid,
    pub method: String,
    pub endpoint: String,
    pub totals: UsageTotals,
}

// Export rows are one per key, period and endpoint (route template, then method) with any
// traffic, in that order. Both ways of building them below follow it.

/// One key's hourly rollups over a range (`$1` the key id, `$2`..`$3` the instants), oldest
/// first. That is the order of the table's primary key, so PostgreSQL walks the index and sorts
/// nothing: sorting the wide rows (histograms included) into the export's own order used to
/// cost more than the rest of an export. [`KeyExportRows`] groups each period's rows in memory.
pub(super) const KEY_ROLLUPS_OLDEST_FIRST: &str =
    "SELECT api_key_id, period_start, method, endpoint, status, requests, \
     throttled, bytes_in, bytes_out, latency_hist::text AS latency_hist FROM api_key_usage_hour \
     WHERE api_key_id = $1 AND period_start >= $2 AND period_start < $3 \
     ORDER BY period_start";

/// Export rows of one key from its hourly rollups, pushed oldest first
/// ([`KEY_ROLLUPS_OLDEST_FIRST`]): only the rows of the period being summed are held (one per
/// endpoint and method), so a streamed export needs little more memory than one piece of
/// rollups, whatever its range.
pub(super) struct KeyExportRows {
    granularity: Granularity,
    range: DayRange,
    key: Uuid,
    period: Option<DateTime<Utc>>,
    // Few distinct endpoints per key: a list searched in place beats allocating map keys.
    rows: Vec<(String, String, UsageTotals)>,
}

impl KeyExportRows {
    pub(super) fn new(granularity: Granularity, range: DayRange, key: Uuid) -> Self {
        Self { granularity, range, key, period: None, rows: Vec::new() }
    }

    /// Adds one hourly row; once it starts a new period, the previous period's rows are
    /// finished and appended to `done`, in export order.
    pub(super) fn push(&mut self, row: &KeyedRollupRow, done: &mut Vec<ExportRow>) -> ServiceResult<()> {
        let r = &row.rollup;
        if row.api_key_id != self.key {
            return Err(ServiceError::Internal("a usage rollup of another key reached a key's export".into()));
        }
        let period = self.granularity.export_period_start(&self.range, r.period_start);
        match self.period {
            Some(current) if current == period => {}
            // A period already written out would get more hours: say so instead of writing it
            // twice.
            Some(current) if current > period => {
                return Err(ServiceError::Internal("usage rollups arrived out of time order".into()));
            }
            _ => {
                self.finish(done);
                self.period = Some(period);
            }
        }
        let hist = row.histogram();
        match self.rows.iter_mut().find(|(e, m, _)| *e == r.endpoint && *m == r.method) {
            Some((_, _, totals)) => totals.add_row(r, &hist),
            None => {
                let mut totals = UsageTotals::default();
                totals.add_row(r, &hist);
                self.rows.push((r.endpoint.clone(), r.method.clone(), totals));
            }
        }
        Ok(())
    }

    /// Appends the rows of the period being summed to `done`; call it after the last push.
    pub(super) fn finish(&mut self, done: &mut Vec<ExportRow>) {
        let Some(period_start) = self.period.take() else { return };
        let mut rows = std::mem::take(&mut self.rows);
        rows.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        done.extend(rows.into_iter().map(|(endpoint, method, totals)| ExportRow {
            period_start,
            key_id: self.key,
            method,
            endpoint,
            totals,
        }));
    }
}

/// Hourly rollup rows in any order summed into export rows, in export order (all in memory:
/// for the monthly summary's attachment, built from rows a report loaded anyway).
struct ExportRows {
    granularity: Granularity,
    range: DayRange,
    map: BTreeMap<(Uuid, DateTime<Utc>, String, String), UsageTotals>,
}

impl ExportRows {
    fn new(granularity: Granularity, range: DayRange) -> Self {
        Self { granularity, range, map: BTreeMap::new() }
    }

    fn add(&mut self, key: Uuid, row: &RollupRow, hist: &LatencyHistogram) {
        let period = self.granularity.export_period_start(&self.range, row.period_start);
        self.map.entry((key, period, row.endpoint.clone(), row.method.clone())).or_default().add_row(row, hist);
    }

    fn finish(self) -> Vec<ExportRow> {
        self.map
            .into_iter()
            .map(|((key_id, period_start, endpoint, method), totals)| ExportRow {
                period_start,
                key_id,
                method,
                endpoint,
                totals,
            })
            .collect()
    }
}

/// Admitted calls stored since `hour_start` and since `day_start` (the quota gauges when Redis,
/// which holds the quota counters, cannot answer).
pub async fn admitted_since(
    db: &DbPool,
    key: Uuid,
    hour_start: DateTime<Utc>,
    day_start: DateTime<Utc>,
) -> ServiceResult<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Sums {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        hour: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        day: i64,
    }
    let mut conn = db::conn(db).await?;
    let sums: Sums = diesel::sql_query(
        "SELECT COALESCE(SUM(requests) FILTER (WHERE period_start >= $2), 0)::BIGINT AS hour, \
         COALESCE(SUM(requests), 0)::BIGINT AS day \
         FROM api_key_usage_hour WHERE api_key_id = $1 AND period_start >= $3",
    )
    .bind::<SqlUuid, _>(key)
    .bind::<Timestamptz, _>(hour_start)
    .bind::<Timestamptz, _>(day_start)
    .get_result(&mut conn)
    .await?;
    Ok((sums.hour, sums.day))
}

/// The first minute of the last `minutes` minutes that end with the current one.
fn first_minute_ms(now_ms: i64, minutes: usize) -> i64 {
    let current = now_ms - now_ms.rem_euclid(60_000);
    current - (minutes as i64 - 1) * 60_000
}

/// The last `minutes` minutes as stored in the per-minute rollups, oldest first, ending with the
/// current minute, every minute present: what the live counters would say, as far as the usage
/// has reached PostgreSQL.
pub async fn stored_minutes(
    db: &DbPool,
    key: Uuid,
    now_ms: i64,
    minutes: usize,
) -> ServiceResult<Vec<(i64, MinuteCounters)>> {
    let first = first_minute_ms(now_ms, minutes);
    let mut counters: Vec<(i64, MinuteCounters)> =
        (0..minutes as i64).map(|i| (first + i * 60_000, MinuteCounters::default())).collect();
    let (start, end) = (super::time_from_ms(first), super::time_from_ms(first + minutes as i64 * 60_000));
    for keyed in rollup_rows(db, Rollups::Minute, key, start, end).await? {
        let (row, hist) = (&keyed.rollup, keyed.histogram());
        let index = (row.period_start.timestamp_millis() - first).div_euclid(60_000);
        if let Some((_, m)) = usize::try_from(index).ok().and_then(|i| counters.get_mut(i)) {
            let requests = u64::try_from(row.requests).unwrap_or(0);
            m.requests += requests;
            match row.status {
                400..=499 => m.errors_4xx += requests,
                500..=599 => m.errors_5xx += requests,
                _ => {}
            }
            m.throttled += u64::try_from(row.throttled).unwrap_or(0);
            m.bytes_in += u64::try_from(row.bytes_in).unwrap_or(0);
            m.bytes_out += u64::try_from(row.bytes_out).unwrap_or(0);
            m.latency.merge(&hist);
        }
    }
    Ok(counters)
}

/// The last `minutes` minutes of live counters, oldest first, ending with the current minute.
pub async fn live_minutes(
    redis: &RedisPool,
    key: Uuid,
    now_ms: i64,
    minutes: usize,
) -> ServiceResult<Vec<(i64, MinuteCounters)>> {
    live::read_minutes(redis, key, first_minute_ms(now_ms, minutes), minutes).await
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
    fn months() {
        let m = Month::parse("2026-12").unwrap();
        assert_eq!(m.to_string(), "2026-12");
        assert_eq!(m.next().to_string(), "2027-01");
        assert_eq!(m.previous().to_string(), "2026-11");
        assert_eq!(m.days().to.to_string(), "2026-12-31");
        assert_eq!(Month::parse("2028-02").unwrap().last_day().to_string(), "2028-02-29");
        assert_eq!(m.long_name(), "December 2026");
        assert_eq!(Month::containing(at("2026-11-30T23:59:59Z")).to_string(), "2026-11");
        for bad in ["2026-13", "2026-1", "26-11", "2026-11-01", "", "november", "0000-01", "0001-01", "1969-12"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
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
