//! The usage page's data: live last hour and quota gauges, breakdowns, top endpoints.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use super::KeyView;
use crate::error::AppError;

/// One minute of the live charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LivePoint {
    pub minute_ms: i64,
    pub requests: u64,
    pub throttled: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// One quota window as a gauge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gauge {
    pub used: i64,
    pub limit: i64,
    pub reset_at: DateTime<Utc>,
    /// When the window runs out at the current rate, if before it resets.
    pub runs_out_at: Option<DateTime<Utc>>,
}

/// What the live part of the page shows; pushed again every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveData {
    pub now: DateTime<Utc>,
    pub points: Vec<LivePoint>,
    pub hour: Gauge,
    pub day: Gauge,
    /// Admitted requests per minute over the last 15 minutes.
    pub rate_per_minute: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodRow {
    pub start: DateTime<Utc>,
    pub requests: i64,
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    pub throttled: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRow {
    pub method: String,
    pub endpoint: String,
    pub requests: i64,
    pub throttled: i64,
    pub error_rate: f64,
    pub p95_ms: Option<f64>,
}

/// The endpoint and status tables: calls of the last `range_days` × 24 hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopCalls {
    pub range_days: u32,
    pub endpoints: Vec<EndpointRow>,
    pub statuses: Vec<(u16, i64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageOverview {
    pub key: KeyView,
    pub live: LiveData,
    pub daily: Vec<PeriodRow>,
    pub weekly: Vec<PeriodRow>,
    pub monthly: Vec<PeriodRow>,
    /// Over `DEFAULT_RANGE` days; other ranges come from `get_top_calls`.
    pub top: TopCalls,
    /// Where the metered API is reached (`KEYMETER_PUBLIC_URL`), for the page's example call.
    pub api_base: String,
}

impl UsageOverview {
    pub fn has_traffic(&self) -> bool {
        self.monthly.iter().any(|p| p.requests + p.throttled > 0)
            || self.live.points.iter().any(|p| p.requests + p.throttled > 0)
    }
}

/// Ranges offered for the endpoint and status tables, in days.
pub const RANGES: [u32; 4] = [1, 7, 30, 90];
/// The range the usage page opens with.
pub const DEFAULT_RANGE: u32 = 30;

#[server(prefix = "/rpc", endpoint = "usage/overview")]
pub async fn get_usage_overview(id: String) -> Result<UsageOverview, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    Ok(ssr::overview(&services, key, user.id).await?)
}

/// The endpoint and status tables over another range, without reloading the rest of the page.
#[server(prefix = "/rpc", endpoint = "usage/top")]
pub async fn get_top_calls(id: String, days: u32) -> Result<TopCalls, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    if !RANGES.contains(&days) {
        return Err(AppError::BadRequest(format!("days must be one of {RANGES:?}")));
    }
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    Ok(ssr::top_calls(&services, &key, days).await?)
}

#[server(prefix = "/rpc", endpoint = "usage/live")]
pub async fn get_usage_live(id: String) -> Result<LiveData, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    Ok(ssr::live_data(&services, &key).await?)
}

/// Server-side assembly, shared with the live stream and exports of the server crate.
#[cfg(feature = "ssr")]
pub mod ssr {
    use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
    use services::keys::{projected_day_exhaustion_ms, projected_exhaustion_ms, ApiKey, WindowUse};
    use services::usage::reports::{self, DayRange, Granularity, HourRows, UsageTotals};
    use services::{ServiceResult, Services};

    use super::*;

    fn time(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
    }

    fn gauge(w: &WindowUse, runs_out_at: Option<i64>) -> Gauge {
        Gauge { used: w.used, limit: w.limit, reset_at: time(w.reset_at_ms), runs_out_at: runs_out_at.map(time) }
    }

    pub async fn live_data(services: &Services, key: &ApiKey) -> ServiceResult<LiveData> {
        let (hour, day, now_ms) = services.quota.snapshot(key.id, &key.quota).await?;
        let minutes = reports::live_minutes(&services.redis, key.id.0, now_ms, 60).await?;
        let points: Vec<LivePoint> = minutes
            .iter()
            .map(|(minute_ms, m)| LivePoint {
                minute_ms: *minute_ms,
                requests: m.requests,
                throttled: m.throttled,
                errors: m.errors_4xx + m.errors_5xx,
                p50_ms: m.latency.quantile_us(0.5).map(|us| us / 1000.0),
                p95_ms: m.latency.quantile_us(0.95).map(|us| us / 1000.0),
            })
            .collect();
        // Rate over the last 15 minutes, the current (partial) one included.
        let recent: u64 = points.iter().rev().take(15).map(|p| p.requests).sum();
        let elapsed_minutes = 14.0 + (now_ms.rem_euclid(60_000) as f64 / 60_000.0);
        let per_minute = recent as f64 / elapsed_minutes.max(1.0);
        Ok(LiveData {
            now: time(now_ms),
            points,
            hour: gauge(&hour, projected_exhaustion_ms(&hour, per_minute, now_ms)),
            day: gauge(&day, projected_day_exhaustion_ms(&day, &hour, per_minute, now_ms)),
            rate_per_minute: per_minute,
        })
    }

    fn row(start: DateTime<Utc>, t: &UsageTotals) -> PeriodRow {
        PeriodRow {
            start,
            requests: t.requests,
            errors_4xx: t.errors_4xx,
            errors_5xx: t.errors_5xx,
            throttled: t.throttled,
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            p50_ms: t.p50_ms(),
            p95_ms: t.p95_ms(),
        }
    }

    fn periods(hours: &HourRows, g: Granularity, from: NaiveDate, to: NaiveDate) -> ServiceResult<Vec<PeriodRow>> {
        let rows = hours.breakdown(g, DayRange::new(from, to)?);
        Ok(rows.iter().map(|(start, t)| row(*start, t)).collect())
    }

    pub async fn overview(services: &Services, key: ApiKey, viewer_id: i64) -> ServiceResult<UsageOverview> {
        let live = live_data(services, &key).await?;
        let today = live.now.date_naive();
        let monday = today - Duration::days(today.weekday().num_days_from_monday() as i64);
        // The first day of the month eleven months back: twelve months with this one.
        let months = today.year() * 12 + today.month0() as i32 - 11;
        let first =
            NaiveDate::from_ymd_opt(months.div_euclid(12), months.rem_euclid(12) as u32 + 1, 1).unwrap_or(today);
        // One read of the hourly rollups serves every breakdown of the page.
        let oldest = first.min(monday - Duration::weeks(11)).min(today - Duration::days(RANGES[3] as i64));
        let hours = HourRows::load(&services.db, key.id.0, DayRange::new(oldest, today)?).await?;
        let daily = periods(&hours, Granularity::Day, today - Duration::days(29), today)?;
        let weekly = periods(&hours, Granularity::Week, monday - Duration::weeks(11), today)?;
        let monthly = periods(&hours, Granularity::Month, first, today)?;
        let top = top_of(&hours, live.now, DEFAULT_RANGE);
        let api_base = services.settings.public_url.trim_end_matches('/').to_owned();
        Ok(UsageOverview { key: KeyView::seen_by(key, viewer_id), live, daily, weekly, monthly, top, api_base })
    }

    pub async fn top_calls(services: &Services, key: &ApiKey, days: u32) -> ServiceResult<TopCalls> {
        // The quota clock, as the rest of the page (tests shift it); the host's without Redis.
        let now = services.quota.now_ms().await.map(time).unwrap_or_else(|_| Utc::now());
        let today = now.date_naive();
        let hours =
            HourRows::load(&services.db, key.id.0, DayRange::new(today - Duration::days(days as i64), today)?).await?;
        Ok(top_of(&hours, now, days))
    }

    /// The last `days` × 24 hours, the current hour included ("24 h" is not "today").
    fn top_of(hours: &HourRows, now: DateTime<Utc>, days: u32) -> TopCalls {
        let end = Granularity::Hour.period_start(now) + Duration::hours(1);
        let start = end - Duration::hours(24 * days as i64);
        let endpoints = hours
            .by_endpoint(start, end)
            .into_iter()
            .take(10)
            .map(|(method, endpoint, t)| EndpointRow {
                method,
                endpoint,
                requests: t.requests,
                throttled: t.throttled,
                error_rate: t.error_rate(),
                p95_ms: t.p95_ms(),
            })
            .collect();
        TopCalls { range_days: days, endpoints, statuses: hours.by_status(start, end) }
    }
}
