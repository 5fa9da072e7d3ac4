//! One key's usage as stored in the rollups (PostgreSQL), per minute, hour and day: totals,
//! breakdowns by period, top endpoints and status codes, the rows an export sums, and the
//! stored stand-ins for the live counters when Redis cannot answer (the admitted calls of the
//! quota gauges, the live charts' minutes).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use diesel::sql_types::{SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::histogram::LatencyHistogram;
use super::live::{first_minute_ms, MinuteCounters};
use super::periods::{DayRange, Granularity};
use super::ErrorClass;
use crate::db::{self, DbPool};
use crate::{ServiceError, ServiceResult};

/// Sums of one period (and possibly one endpoint).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    /// Admitted (billable) calls.
    pub requests: i64,
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    /// Calls refused before running: by the quota (429), or unchecked while quotas fail
    /// closed (503).
    pub throttled: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub latency: LatencyHistogram,
}

impl UsageTotals {
    pub(super) fn add_row(&mut self, r: &RollupRow, hist: &LatencyHistogram) {
        self.requests += r.requests;
        match ErrorClass::of(r.status.into()) {
            Some(ErrorClass::Client) => self.errors_4xx += r.requests,
            Some(ErrorClass::Server) => self.errors_5xx += r.requests,
            None => {}
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

impl MinuteCounters {
    /// A stored per-minute rollup row, counted as the live counters count events.
    fn add_row(&mut self, r: &RollupRow, hist: &LatencyHistogram) {
        let requests = u64::try_from(r.requests).unwrap_or(0);
        self.requests += requests;
        match ErrorClass::of(r.status.into()) {
            Some(ErrorClass::Client) => self.errors_4xx += requests,
            Some(ErrorClass::Server) => self.errors_5xx += requests,
            None => {}
        }
        self.throttled += u64::try_from(r.throttled).unwrap_or(0);
        self.bytes_in += u64::try_from(r.bytes_in).unwrap_or(0);
        self.bytes_out += u64::try_from(r.bytes_out).unwrap_or(0);
        self.latency.merge(hist);
    }
}

#[derive(QueryableByName, Clone)]
pub(super) struct RollupRow {
    #[diesel(sql_type = Timestamptz)]
    pub(super) period_start: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub(super) method: String,
    #[diesel(sql_type = Text)]
    pub(super) endpoint: String,
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
    pub(super) api_key_id: Uuid,
    #[diesel(embed)]
    pub(super) rollup: RollupRow,
}

impl KeyedRollupRow {
    /// The row's latency histogram (empty if the stored JSON is not one).
    pub(super) fn histogram(&self) -> LatencyHistogram {
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

    pub(super) fn within(&self, range: DayRange) -> impl Iterator<Item = &(RollupRow, LatencyHistogram)> {
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
            at = granularity.next_start(at);
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

/// One key's hourly rollups over a range (`$1` the key id, `$2`..`$3` the instants), oldest
/// first. That is the order of the table's primary key, so PostgreSQL walks the index and sorts
/// nothing: sorting the wide rows (histograms included) into the export's own order used to
/// cost more than the rest of an export. The export (`KeyExportRows`) groups each period's rows
/// in memory.
pub(super) const KEY_ROLLUPS_OLDEST_FIRST: &str =
    "SELECT api_key_id, period_start, method, endpoint, status, requests, \
     throttled, bytes_in, bytes_out, latency_hist::text AS latency_hist FROM api_key_usage_hour \
     WHERE api_key_id = $1 AND period_start >= $2 AND period_start < $3 \
     ORDER BY period_start";

// PostgreSQL stand-ins for the live counters (`live`): rollup reads, so they stay with the others.

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
            m.add_row(row, &hist);
        }
    }
    Ok(counters)
}
