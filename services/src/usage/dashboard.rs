//! What a key's usage page shows: the live last hour with the quota gauges, the daily, weekly
//! and monthly breakdowns, and the top endpoints and statuses. Assembled here from the quota
//! counters, the live minute counters and the daily and hourly rollups; the page only renders
//! it.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};

use super::live::{self, MinuteCounters};
use super::periods::{DayRange, Granularity, Month};
use super::rollups::{self, RollupRows, UsageTotals};
use super::time_from_ms;
use crate::keys::{ApiKey, Window, WindowUse};
use crate::outage_log::LogEvery;
use crate::{ServiceError, ServiceResult, Services};

static REDIS_DOWN_LOG: LogEvery = LogEvery::new();

/// Minutes the live charts cover, the current one included.
pub const LIVE_MINUTES: usize = 60;
/// How long the live view waits for Redis before it shows stored usage instead.
const REDIS_WAIT: StdDuration = StdDuration::from_secs(2);

/// The live part of the page: pushed again every few seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveUsage {
    pub now: DateTime<Utc>,
    /// The last [`LIVE_MINUTES`] minutes, oldest first: (minute start in ms, counters).
    pub minutes: Vec<(i64, MinuteCounters)>,
    pub hour: WindowUse,
    pub day: WindowUse,
    /// When each window runs out at the current rate, if before it resets.
    pub hour_runs_out_at: Option<DateTime<Utc>>,
    pub day_runs_out_at: Option<DateTime<Utc>>,
    /// Admitted requests per minute over the last 15 minutes.
    pub rate_per_minute: f64,
    /// Redis did not answer: the figures come from the usage stored in PostgreSQL, which trails
    /// the live counters by the writer's delay (and by whatever waits in buffers).
    pub from_storage: bool,
}

/// The live view from Redis (the quota counters themselves, on the quota clock), or, when Redis
/// cannot answer, from the stored rollups on this host's clock, so the page still works.
pub async fn live(services: &Services, key: &ApiKey) -> ServiceResult<LiveUsage> {
    let from_redis = async {
        let (hour, day, now_ms) = services.quota.snapshot(key.id, &key.quota, key.quota_version_ms).await?;
        let minutes = live::live_minutes(&services.redis, key.id.0, now_ms, LIVE_MINUTES).await?;
        ServiceResult::Ok((hour, day, now_ms, minutes))
    };
    let failure = match tokio::time::timeout(REDIS_WAIT, from_redis).await {
        Ok(Ok((hour, day, now_ms, minutes))) => return Ok(assemble(hour, day, now_ms, minutes, false)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer in time".to_owned(),
    };
    // Each open usage page asks every few seconds: once in a while, not per push.
    crate::warn_every!(REDIS_DOWN_LOG, key_id = %key.id, error = %failure, "live usage from storage: Redis unavailable");
    let now_ms = Utc::now().timestamp_millis();
    let (hour_start, day_start) = (Window::Hour.start_ms(now_ms), Window::Day.start_ms(now_ms));
    let (hour_used, day_used) =
        rollups::admitted_since(&services.db, key.id.0, time_from_ms(hour_start), time_from_ms(day_start)).await?;
    let hour = WindowUse {
        window: Window::Hour,
        limit: key.quota.per_hour.get(),
        used: hour_used,
        reset_at_ms: hour_start + Window::Hour.length_ms(),
    };
    let day = WindowUse {
        window: Window::Day,
        limit: key.quota.per_day.get(),
        used: day_used,
        reset_at_ms: day_start + Window::Day.length_ms(),
    };
    let minutes = rollups::stored_minutes(&services.db, key.id.0, now_ms, LIVE_MINUTES).await?;
    Ok(assemble(hour, day, now_ms, minutes, true))
}

fn assemble(
    hour: WindowUse,
    day: WindowUse,
    now_ms: i64,
    minutes: Vec<(i64, MinuteCounters)>,
    from_storage: bool,
) -> LiveUsage {
    let per_minute = recent_rate_per_minute(&minutes, now_ms);
    let (hour_runs_out_ms, day_runs_out_ms) = projections(&hour, &day, per_minute, now_ms);
    LiveUsage {
        now: time_from_ms(now_ms),
        hour_runs_out_at: hour_runs_out_ms.map(time_from_ms),
        day_runs_out_at: day_runs_out_ms.map(time_from_ms),
        minutes,
        hour,
        day,
        rate_per_minute: per_minute,
        from_storage,
    }
}

/// When the hour and the day windows run out at `per_minute`, if before they reset. The hour
/// cannot run out once the day has (nothing more is admitted until midnight), nor after it.
fn projections(hour: &WindowUse, day: &WindowUse, per_minute: f64, now_ms: i64) -> (Option<i64>, Option<i64>) {
    let day_out = if day.remaining() == 0 { None } else { projected_day_exhaustion_ms(day, hour, per_minute, now_ms) };
    let hour_out = projected_exhaustion_ms(hour, per_minute, now_ms)
        .filter(|&at| day.remaining() > 0 && day_out.is_none_or(|day_at| at < day_at));
    (hour_out, day_out)
}

/// When a window runs out at the current rate (admitted requests per minute), if before its
/// reset; none if it will not run out (or has already).
fn projected_exhaustion_ms(window: &WindowUse, per_minute: f64, now_ms: i64) -> Option<i64> {
    let remaining = window.remaining();
    if remaining == 0 || per_minute <= 0.0 {
        return None;
    }
    let at = now_ms + (remaining as f64 / per_minute * 60_000.0).ceil() as i64;
    (at < window.reset_at_ms).then_some(at)
}

/// When the day window runs out at the current rate, if before its reset. Unlike
/// [`projected_exhaustion_ms`] it knows that the hourly limit caps what each hour admits: a key
/// held at 10 an hour cannot use 90 more of its day within the next few minutes, whatever rate
/// it is sending at.
fn projected_day_exhaustion_ms(day: &WindowUse, hour: &WindowUse, per_minute: f64, now_ms: i64) -> Option<i64> {
    let mut left = day.remaining() as f64;
    if left == 0.0 || per_minute <= 0.0 {
        return None;
    }
    let per_ms = per_minute / 60_000.0;
    let (mut at, mut hour_left, mut hour_end) = (now_ms, hour.remaining() as f64, hour.reset_at_ms);
    while at < day.reset_at_ms {
        // What the rest of this hour admits: the rate's worth, at most the hour's remaining quota.
        let admits = ((hour_end.min(day.reset_at_ms) - at) as f64 * per_ms).min(hour_left);
        if admits >= left {
            let out = at + (left / per_ms).ceil() as i64;
            return (out < day.reset_at_ms).then_some(out);
        }
        left -= admits;
        (at, hour_left, hour_end) = (hour_end, hour.limit as f64, hour_end + Window::Hour.length_ms());
    }
    None
}

/// Admitted requests per minute over the last 15 minutes, the current (partial) one included
/// for the part of it that has passed.
fn recent_rate_per_minute(minutes: &[(i64, MinuteCounters)], now_ms: i64) -> f64 {
    let recent: u64 = minutes.iter().rev().take(15).map(|(_, m)| m.requests).sum();
    let elapsed_minutes = 14.0 + (now_ms.rem_euclid(60_000) as f64 / 60_000.0);
    recent as f64 / elapsed_minutes.max(1.0)
}

/// The history part of the page: one read of the daily rollups serves the daily, weekly and
/// monthly breakdowns, one of the hourly rollups the top tables.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The last 30 days, today included.
    pub daily: Vec<(DateTime<Utc>, UsageTotals)>,
    /// The last 12 ISO weeks (UTC), this one included.
    pub weekly: Vec<(DateTime<Utc>, UsageTotals)>,
    /// The last 12 calendar months, this one included.
    pub monthly: Vec<(DateTime<Utc>, UsageTotals)>,
    /// Over `top_days`.
    pub top: TopCalls,
}

/// The busiest endpoints and the status codes of a range of days.
#[derive(Debug, Clone, PartialEq)]
pub struct TopCalls {
    pub range_days: u32,
    /// (method, endpoint, totals), busiest first, at most 10.
    pub endpoints: Vec<(String, String, UsageTotals)>,
    /// (status, calls), most frequent first.
    pub statuses: Vec<(u16, i64)>,
}

pub async fn history(services: &Services, key: &ApiKey, now: DateTime<Utc>, top_days: u32) -> ServiceResult<History> {
    let today = now.date_naive();
    let monday = Granularity::Week.period_start(now).date_naive();
    // The first day of the month eleven months back: twelve months with this one.
    let first_month = (0..11).fold(Month::containing(now), |m, _| m.previous()).first_day();
    let first_week = monday - Duration::weeks(11);
    let first_day = today - Duration::days(29);
    let oldest = first_month.min(first_week).min(first_day);
    let days = RollupRows::days(&services.db, key.id.0, DayRange::new(oldest, today)?).await?;
    let hours =
        RollupRows::hours(&services.db, key.id.0, DayRange::new(today - Duration::days(top_days as i64), today)?)
            .await?;
    let breakdown = |granularity, first| -> ServiceResult<_> {
        Ok(in_key_life(days.breakdown(granularity, DayRange::new(first, today)?), granularity, key, now))
    };
    Ok(History {
        daily: breakdown(Granularity::Day, first_day)?,
        weekly: breakdown(Granularity::Week, first_week)?,
        monthly: breakdown(Granularity::Month, first_month)?,
        top: top_of(&hours, now, top_days),
    })
}

/// A range of days the merchant chose, per `granularity`, as it is at `now` (the page's
/// clock): as the page's history shows it (the CSV export gives the same range per endpoint). A
/// first week or month that the range starts inside is named by the range's first day, as the
/// export names it.
pub async fn history_between(
    services: &Services,
    key: &ApiKey,
    range: DayRange,
    granularity: Granularity,
    now: DateTime<Utc>,
) -> ServiceResult<Vec<(DateTime<Utc>, UsageTotals)>> {
    if let Some(problem) = calendar::history_range_problem(&range, granularity) {
        return Err(ServiceError::invalid_field("to", problem));
    }
    let rows = match granularity {
        Granularity::Hour => RollupRows::hours(&services.db, key.id.0, range).await?,
        _ => RollupRows::days(&services.db, key.id.0, range).await?,
    };
    let periods = in_key_life(rows.breakdown(granularity, range), granularity, key, now);
    Ok(periods.into_iter().map(|(start, totals)| (granularity.export_period_start(&range, start), totals)).collect())
}

/// Periods the key lived through: none after `now`, and no empty ones from before the key was
/// made (the demo key's history predates it, so periods with calls always stay).
fn in_key_life(
    periods: Vec<(DateTime<Utc>, UsageTotals)>,
    granularity: Granularity,
    key: &ApiKey,
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, UsageTotals)> {
    let before_key = |(start, totals): &(DateTime<Utc>, UsageTotals)| {
        granularity.next_start(*start) <= key.created_at && totals.requests + totals.throttled == 0
    };
    periods.into_iter().skip_while(before_key).take_while(|(start, _)| *start <= now).collect()
}

/// The time on the quota clock, as the rest of the page has it; this host's clock when Redis
/// does not answer within [`REDIS_WAIT`] (a hung Redis would hold the page).
pub async fn page_clock(services: &Services) -> DateTime<Utc> {
    match tokio::time::timeout(REDIS_WAIT, services.quota.now_ms()).await {
        Ok(Ok(ms)) => time_from_ms(ms),
        _ => Utc::now(),
    }
}

/// The top tables over another range.
pub async fn top_calls(services: &Services, key: &ApiKey, days: u32) -> ServiceResult<TopCalls> {
    let now = page_clock(services).await;
    let today = now.date_naive();
    let hours =
        RollupRows::hours(&services.db, key.id.0, DayRange::new(today - Duration::days(days as i64), today)?).await?;
    Ok(top_of(&hours, now, days))
}

/// The last `days` × 24 hours, the current hour included ("24 h" is not "today").
fn top_of(hours: &RollupRows, now: DateTime<Utc>, days: u32) -> TopCalls {
    let end = Granularity::Hour.period_start(now) + Duration::hours(1);
    let start = end - Duration::hours(24 * days as i64);
    TopCalls {
        range_days: days,
        endpoints: hours.by_endpoint(start, end).into_iter().take(10).collect(),
        statuses: hours.by_status(start, end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_projection_knows_the_hourly_limit() {
        let midnight = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000;
        let now = midnight + 2 * 3_600_000 + 30 * 60_000; // 02:30
        let hour = WindowUse { window: Window::Hour, limit: 10, used: 10, reset_at_ms: midnight + 3 * 3_600_000 };
        let day = WindowUse { window: Window::Day, limit: 100, used: 10, reset_at_ms: midnight + 86_400_000 };
        // 12 a minute would use the 90 left in 7.5 minutes, but at 10 an hour from 03:00 they
        // last nine hours: the last 10 go between 11:00 and 11:01 (10 at 12 a minute: 50 s).
        assert_eq!(projected_exhaustion_ms(&day, 12.0, now), Some(now + 450_000));
        assert_eq!(projected_day_exhaustion_ms(&day, &hour, 12.0, now), Some(midnight + 11 * 3_600_000 + 50_000));
        // At 1 a minute (60 an hour) the cap still binds: the same nine hours, the last 10 by 11:10.
        assert_eq!(projected_day_exhaustion_ms(&day, &hour, 1.0, now), Some(midnight + 11 * 3_600_000 + 600_000));
        // At 6 an hour it does not: 90 from 03:00 take 15 hours, until 18:00.
        assert_eq!(projected_day_exhaustion_ms(&day, &hour, 0.1, now), Some(midnight + 18 * 3_600_000));
        // With a day of 1,000, 10 an hour for the 21 hours left never gets there.
        let big = WindowUse { limit: 1_000, ..day };
        assert_eq!(projected_day_exhaustion_ms(&big, &hour, 12.0, now), None);
        assert_eq!(projected_day_exhaustion_ms(&day, &hour, 0.0, now), None);
    }

    #[test]
    fn projection_only_when_the_window_runs_out_before_its_reset() {
        let now = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000; // midnight
        let day = WindowUse { window: Window::Day, limit: 10_000, used: 4_000, reset_at_ms: now + 86_400_000 };
        // 6,000 left at 10 a minute: 600 minutes, i.e. 10:00 UTC.
        assert_eq!(projected_exhaustion_ms(&day, 10.0, now), Some(now + 600 * 60_000));
        // At 1 a minute it would take 100 hours: no exhaustion before the reset.
        assert_eq!(projected_exhaustion_ms(&day, 1.0, now), None);
        assert_eq!(projected_exhaustion_ms(&day, 0.0, now), None);
    }

    fn minute(requests: u64) -> MinuteCounters {
        MinuteCounters { requests, ..MinuteCounters::default() }
    }

    fn window(window: Window, used: i64, limit: i64, reset_at_ms: i64) -> WindowUse {
        WindowUse { window, limit, used, reset_at_ms }
    }

    #[test]
    fn the_hour_does_not_run_out_once_the_day_has_or_would_first() {
        let now = 10 * 3_600_000 + 30 * 60_000; // 10:30 UTC
        let hour = window(Window::Hour, 8, 12, 11 * 3_600_000);
        // The day used up: only the day's reset matters, no hour projection.
        let day = window(Window::Day, 8, 8, 24 * 3_600_000);
        assert_eq!(projections(&hour, &day, 1.0, now), (None, None));
        // The day has 2 left and runs out first (10:32): the hour (10:34) never does.
        let day = window(Window::Day, 8, 10, 24 * 3_600_000);
        let (hour_out, day_out) = projections(&hour, &day, 1.0, now);
        assert_eq!((hour_out, day_out), (None, Some(now + 2 * 60_000)));
        // Plenty left in the day: the hour runs out at 10:34.
        let day = window(Window::Day, 8, 10_000, 24 * 3_600_000);
        assert_eq!(projections(&hour, &day, 1.0, now).0, Some(now + 4 * 60_000));
    }

    #[test]
    fn the_rate_counts_the_passed_part_of_the_current_minute() {
        let now_ms = 30 * 60_000 + 30_000; // half-way through a minute
        let minutes: Vec<(i64, MinuteCounters)> = (0..60).map(|i| (i * 60_000, minute(10))).collect();
        // 15 minutes of 10 over 14.5 minutes.
        assert!((recent_rate_per_minute(&minutes, now_ms) - 150.0 / 14.5).abs() < 1e-9);
        assert_eq!(recent_rate_per_minute(&[], now_ms), 0.0);
    }
}
