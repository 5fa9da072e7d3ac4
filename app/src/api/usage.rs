//! The usage page's data: live last hour and quota gauges, breakdowns, top endpoints.

use calendar::Granularity;
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
    /// Redis could not answer: these figures come from stored usage and may lag.
    pub from_storage: bool,
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

/// Whether a row starting at `start` begins inside its week or month: a chosen range's first
/// row, named by the range's first day (as the CSV export names it).
fn starts_inside(per: Granularity, start: &DateTime<Utc>) -> bool {
    per.period_start(*start) != *start
}

/// A history row's period, as its table names it.
pub fn period_label(per: Granularity, start: &DateTime<Utc>) -> String {
    let format = match per {
        Granularity::Hour => "%a %d %b %H:00",
        Granularity::Day => "%a %d %b",
        Granularity::Week if starts_inside(per, start) => "week %G-W%V from %a %d %b",
        Granularity::Week => "week %G-W%V",
        Granularity::Month if starts_inside(per, start) => "%B %Y from %a %d",
        Granularity::Month => "%B %Y",
    };
    start.format(format).to_string()
}

/// The same, short, for a chart's axis and tooltip.
pub fn short_period_label(per: Granularity, start: &DateTime<Utc>) -> String {
    let format = match per {
        Granularity::Hour => "%d %b %H:00",
        Granularity::Day => "%d %b",
        Granularity::Week | Granularity::Month if starts_inside(per, start) => "%d %b",
        Granularity::Week => "%G-W%V",
        Granularity::Month => "%b %Y",
    };
    start.format(format).to_string()
}

/// The history over days the merchant chose, per hour, day, week or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChosenRange {
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub per: Granularity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageOverview {
    pub key: KeyView,
    pub live: LiveData,
    pub daily: Vec<PeriodRow>,
    pub weekly: Vec<PeriodRow>,
    pub monthly: Vec<PeriodRow>,
    /// The history over the range the page's address chose, if it chose one (or why that
    /// range cannot be shown).
    pub chosen: Option<Result<Vec<PeriodRow>, AppError>>,
    /// Over the range the page's address chose (`top_days`); others come from `get_top_calls`.
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

/// The usage page's data; its top tables over `top_days` (one of [`RANGES`]; by default
/// [`DEFAULT_RANGE`]), and the history over `from`..=`to` per `per` when all three are given,
/// as the page's address chose.
#[server(prefix = "/rpc", endpoint = "usage/overview")]
pub async fn get_usage_overview(
    id: String,
    #[server(default)] top_days: Option<u32>,
    #[server(default)] from: Option<String>,
    #[server(default)] to: Option<String>,
    #[server(default)] per: Option<String>,
) -> Result<UsageOverview, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let top_days = top_days.unwrap_or(DEFAULT_RANGE);
    if !RANGES.contains(&top_days) {
        return Err(AppError::bad_request(format!("top_days must be one of {RANGES:?}")));
    }
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    let mut overview = ssr::overview(&services, key.clone(), &user, top_days).await?;
    if let (Some(from), Some(to), Some(per)) = (from, to, per) {
        // A range that cannot be shown is said in its place; the rest of the page stays.
        let now = overview.live.now;
        let chosen = ssr::history_between(&services, &key, (&from, &to, &per), now).await;
        overview.chosen = Some(chosen.map_err(AppError::from));
    }
    Ok(overview)
}

/// The history over `from`..=`to` (`YYYY-MM-DD`, UTC days), per `per` (`hour` for at most a
/// week, `day`, `week` or `month`).
#[server(prefix = "/rpc", endpoint = "usage/history")]
pub async fn get_usage_history(id: String, from: String, to: String, per: String) -> Result<Vec<PeriodRow>, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    let now = services::usage::dashboard::page_clock(&services).await;
    Ok(ssr::history_between(&services, &key, (&from, &to, &per), now).await?)
}

/// The endpoint and status tables over another range, without reloading the rest of the page.
#[server(prefix = "/rpc", endpoint = "usage/top")]
pub async fn get_top_calls(id: String, days: u32) -> Result<TopCalls, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    if !RANGES.contains(&days) {
        return Err(AppError::bad_request(format!("days must be one of {RANGES:?}")));
    }
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    Ok(ssr::top_calls(&services, &key, days).await?)
}

/// Turns the usage page's data (`services::usage::dashboard`) into what crosses the wire; shared
/// with the live stream of the server crate.
#[cfg(feature = "ssr")]
pub mod ssr {
    use services::keys::{ApiKey, WindowUse};
    use services::usage::dashboard::{self, LiveUsage};
    use services::usage::periods::DayRange;
    use services::usage::rollups::UsageTotals;
    use services::{ServiceError, ServiceResult, Services};

    use super::*;

    fn gauge(w: &WindowUse, runs_out_at: Option<DateTime<Utc>>) -> Gauge {
        Gauge { used: w.used, limit: w.limit, reset_at: w.reset_at(), runs_out_at }
    }

    fn live_view(live: LiveUsage) -> LiveData {
        let points = live
            .minutes
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
        LiveData {
            now: live.now,
            points,
            hour: gauge(&live.hour, live.hour_runs_out_at),
            day: gauge(&live.day, live.day_runs_out_at),
            rate_per_minute: live.rate_per_minute,
            from_storage: live.from_storage,
        }
    }

    pub async fn live_data(services: &Services, key: &ApiKey) -> ServiceResult<LiveData> {
        Ok(live_view(dashboard::live(services, key).await?))
    }

    fn rows(periods: Vec<(DateTime<Utc>, UsageTotals)>) -> Vec<PeriodRow> {
        periods
            .into_iter()
            .map(|(start, t)| PeriodRow {
                start,
                requests: t.requests,
                errors_4xx: t.errors_4xx,
                errors_5xx: t.errors_5xx,
                throttled: t.throttled,
                bytes_in: t.bytes_in,
                bytes_out: t.bytes_out,
                p50_ms: t.p50_ms(),
                p95_ms: t.p95_ms(),
            })
            .collect()
    }

    fn top_view(top: dashboard::TopCalls) -> TopCalls {
        let endpoints = top
            .endpoints
            .into_iter()
            .map(|(method, endpoint, t)| EndpointRow {
                method,
                endpoint,
                requests: t.requests,
                throttled: t.throttled,
                error_rate: t.error_rate(),
                p95_ms: t.p95_ms(),
            })
            .collect();
        TopCalls { range_days: top.range_days, endpoints, statuses: top.statuses }
    }

    pub async fn overview(
        services: &Services,
        key: ApiKey,
        viewer: &services::accounts::User,
        top_days: u32,
    ) -> ServiceResult<UsageOverview> {
        let live = dashboard::live(services, &key).await?;
        let history = dashboard::history(services, &key, live.now, top_days).await?;
        let api_base = services.settings.public_url.to_string();
        Ok(UsageOverview {
            key: KeyView::seen_by(key, viewer),
            live: live_view(live),
            daily: rows(history.daily),
            weekly: rows(history.weekly),
            monthly: rows(history.monthly),
            chosen: None,
            top: top_view(history.top),
            api_base,
        })
    }

    /// The history over a range as typed (`from`, `to`, `per`), at `now` on the page's clock.
    pub async fn history_between(
        services: &Services,
        key: &ApiKey,
        (from, to, per): (&str, &str, &str),
        now: DateTime<Utc>,
    ) -> ServiceResult<Vec<PeriodRow>> {
        let range = DayRange::parse(from, to)?;
        let granularity = Granularity::parse(per).map_err(|e| ServiceError::from(e).in_field("per"))?;
        Ok(rows(dashboard::history_between(services, key, range, granularity, now).await?))
    }

    pub async fn top_calls(services: &Services, key: &ApiKey, days: u32) -> ServiceResult<TopCalls> {
        Ok(top_view(dashboard::top_calls(services, key, days).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_week_or_month_that_starts_inside_is_named_by_its_first_day() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(period_label(Granularity::Week, &at("2026-11-09T00:00:00Z")), "week 2026-W46");
        assert_eq!(period_label(Granularity::Week, &at("2026-11-10T00:00:00Z")), "week 2026-W46 from Tue 10 Nov");
        assert_eq!(period_label(Granularity::Month, &at("2026-11-01T00:00:00Z")), "November 2026");
        assert_eq!(period_label(Granularity::Month, &at("2026-11-10T00:00:00Z")), "November 2026 from Tue 10");
        assert_eq!(short_period_label(Granularity::Month, &at("2026-11-10T00:00:00Z")), "10 Nov");
        assert_eq!(period_label(Granularity::Hour, &at("2026-11-10T13:00:00Z")), "Tue 10 Nov 13:00");
    }
}
