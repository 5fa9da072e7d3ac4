//! The monthly usage summary: after each calendar month, every key owner gets one email that
//! sums up each of their keys, with the month's CSV attached.
//!
//! "Once per owner and month" is the `monthly_reports` primary key: the row and the queued email
//! are written in one transaction, so when several instances (or the CLI) run the job at the
//! same moment, one inserts and the others find the row and send nothing. A scheduler in every
//! server runs the job for the previous month at start and shortly after each month begins, so
//! a server that was down on the 1st catches up when it starts.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::sync::watch;

use crate::db::{self, DbPool};
use crate::keys::{api_keys, ApiKey};
use crate::mailer::{self, Attachment, Email};
use crate::public_url::PublicUrl;
use crate::schema::monthly_reports;
use crate::usage::export;
use crate::usage::periods::{Granularity, Month};
use crate::usage::rollups::{RollupRows, UsageTotals};
use crate::{ServiceError, ServiceResult, Services};
use format::count;
use format::html_escape;

/// One key's month.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySummary {
    pub key: ApiKey,
    pub totals: UsageTotals,
    /// The UTC day with the most admitted requests, if any, and its count.
    pub busiest_day: Option<(NaiveDate, i64)>,
    /// The highest share of the daily quota used on any day, in percent (of the quota in force
    /// that day: the highest, if it changed that day).
    pub peak_day_use_pct: f64,
    /// The highest share of the hourly quota used in any hour, in percent (likewise).
    pub peak_hour_use_pct: f64,
    /// Admitted requests per day of the month, for the chart.
    pub per_day: Vec<i64>,
}

/// What one owner is sent for one month.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerReport {
    pub month: Month,
    pub owner_id: i64,
    pub owner_email: String,
    pub keys: Vec<KeySummary>,
    /// The month's usage of every key, daily, in the export format.
    pub csv: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// Owners whose summary was queued by this run.
    pub sent: usize,
    /// Owners who already had this month's summary.
    pub already_sent: usize,
    /// Owners who stopped the monthly summary (`accounts::email_preferences`).
    pub opted_out: usize,
    /// The outbox ids of the emails this run queued (to send them at once, or report on them).
    pub email_ids: Vec<i64>,
}

/// Keys that existed at some point in the month: created before its end, not revoked before
/// its start.
async fn keys_of_month(db: &DbPool, month: Month) -> ServiceResult<Vec<ApiKey>> {
    let (start, end) = (month.days().start(), month.days().end());
    Ok(api_keys::list_all(db)
        .await?
        .into_iter()
        .filter(|k| k.created_at < end && k.revoked_at.is_none_or(|r| r >= start))
        .collect())
}

/// Sums up one key's month from the hourly rollups, as its owner's summary shows it.
pub async fn summarise_key(db: &DbPool, key: ApiKey, month: Month) -> ServiceResult<KeySummary> {
    Ok(key_month(db, key, month).await?.0)
}

/// One key's month: its summary, and the hourly rollups it was made from (read once, for the
/// summary and for the CSV).
async fn key_month(db: &DbPool, key: ApiKey, month: Month) -> ServiceResult<(KeySummary, RollupRows)> {
    let rows = RollupRows::hours(db, key.id.0, month.days()).await?;
    let limits = QuotaTimeline::load(db, &key).await?;
    Ok((summarise(key, &rows, &limits, month), rows))
}

/// A key's hourly and daily limits over time, from its audit trail of quota changes: a month's
/// use is measured against the limits of that month, not today's.
struct QuotaTimeline {
    /// The limits before the first change (the current ones if there was none).
    first: (i64, i64),
    /// (when, new hourly limit, new daily limit), oldest first.
    changes: Vec<(DateTime<Utc>, i64, i64)>,
}

impl QuotaTimeline {
    async fn load(db: &DbPool, key: &ApiKey) -> ServiceResult<Self> {
        use crate::schema::quota_changes as qc;
        let mut conn = db::conn(db).await?;
        let rows: Vec<(DateTime<Utc>, i64, i64, i64, i64)> = qc::table
            .filter(qc::api_key_id.eq(key.id.0))
            .order((qc::changed_at, qc::id))
            .select((qc::changed_at, qc::old_per_hour, qc::old_per_day, qc::new_per_hour, qc::new_per_day))
            .load(&mut conn)
            .await?;
        let first = match <[_]>::first(&rows) {
            Some(&(_, hour, day, _, _)) => (hour, day),
            None => (key.quota.per_hour.get(), key.quota.per_day.get()),
        };
        Ok(Self { first, changes: rows.into_iter().map(|(at, _, _, hour, day)| (at, hour, day)).collect() })
    }

    /// The highest (hourly, daily) limits in force at any moment of `start..end`.
    fn highest_during(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> (i64, i64) {
        let at_start = self.changes.iter().rev().find(|c| c.0 <= start).map_or(self.first, |c| (c.1, c.2));
        self.changes
            .iter()
            .filter(|c| c.0 > start && c.0 < end)
            .fold(at_start, |(hour, day), c| (hour.max(c.1), day.max(c.2)))
    }
}

fn summarise(key: ApiKey, rows: &RollupRows, limits: &QuotaTimeline, month: Month) -> KeySummary {
    let range = month.days();
    let days = rows.breakdown(Granularity::Day, range);
    let mut totals = UsageTotals::default();
    for (_, day) in &days {
        totals.requests += day.requests;
        totals.errors_4xx += day.errors_4xx;
        totals.errors_5xx += day.errors_5xx;
        totals.throttled += day.throttled;
        totals.bytes_in += day.bytes_in;
        totals.bytes_out += day.bytes_out;
        totals.latency.merge(&day.latency);
    }
    let busiest_day = days
        .iter()
        .filter(|(_, t)| t.requests > 0)
        .max_by_key(|(at, t)| (t.requests, std::cmp::Reverse(*at)))
        .map(|(at, t)| (at.date_naive(), t.requests));
    let share = |used: i64, limit: i64| if limit > 0 { used as f64 * 100.0 / limit as f64 } else { 0.0 };
    let peak = |periods: &[(DateTime<Utc>, UsageTotals)], length: chrono::Duration, pick: fn((i64, i64)) -> i64| {
        periods
            .iter()
            .map(|(start, t)| share(t.requests, pick(limits.highest_during(*start, *start + length))))
            .fold(0.0, f64::max)
    };
    KeySummary {
        peak_day_use_pct: peak(&days, chrono::Duration::days(1), |l| l.1),
        peak_hour_use_pct: peak(&rows.breakdown(Granularity::Hour, range), chrono::Duration::hours(1), |l| l.0),
        per_day: days.iter().map(|(_, t)| t.requests).collect(),
        busiest_day,
        totals,
        key,
    }
}

/// The owners of keys that `month`'s summary covers, in id order, without those in `skip`;
/// also how many were skipped.
fn owners_of_month(keys: &[ApiKey], skip: &HashSet<i64>) -> (Vec<(i64, String)>, usize) {
    let mut owners: Vec<(i64, String)> = keys.iter().map(|k| (k.owner_id, k.owner_email.clone())).collect();
    owners.sort();
    owners.dedup();
    let before = owners.len();
    owners.retain(|(owner_id, _)| !skip.contains(owner_id));
    let skipped = before - owners.len();
    (owners, skipped)
}

/// One owner's report for `month`, of their keys among `keys`.
async fn build_report(
    db: &DbPool,
    month: Month,
    keys: &[ApiKey],
    (owner_id, owner_email): (i64, String),
) -> ServiceResult<OwnerReport> {
    let mut summaries = Vec::new();
    let mut hours = Vec::new();
    for key in keys.iter().filter(|k| k.owner_id == owner_id) {
        let (summary, rows) = key_month(db, key.clone(), month).await?;
        summaries.push(summary);
        hours.push((key.id.0, rows));
    }
    summaries.sort_by(|a, b| a.key.name.cmp(&b.key.name));
    let rows = export::rows_of(hours.iter().map(|(id, h)| (*id, h)), Granularity::Day, month.days());
    let mut csv = export::HEADER.to_owned();
    for row in &rows {
        let name = summaries.iter().find(|s| s.key.id.0 == row.key_id).map_or("", |s| s.key.name.as_str());
        export::write_row(&mut csv, row, name, None);
    }
    Ok(OwnerReport { month, owner_id, owner_email, keys: summaries, csv })
}

/// How long after a month ends (on the Redis clock that times every request) its summary
/// waits: the month's last requests may still be lingering in an instance's recorder, or
/// waiting for a retry, before they reach the usage stream.
pub const SETTLE_MS: i64 = 10 * 60_000;

/// Fails while usage of `month` may still be on its way to PostgreSQL: the month (on the Redis
/// clock) ended less than [`SETTLE_MS`] ago, or the oldest entry left in the usage stream (not
/// yet stored by a writer, e.g. during a PostgreSQL outage at the month's end) was added before
/// that. Also fails if Redis cannot say.
async fn month_fully_stored(services: &Services, month: Month, now_ms: i64) -> ServiceResult<()> {
    let settled_ms = month.next().days().start().timestamp_millis() + SETTLE_MS;
    if now_ms < settled_ms {
        return Err(ServiceError::Conflict(format!(
            "the last requests of {month} may still be on their way to storage; its summaries go out from {}",
            format::time(&crate::usage::time_from_ms(settled_ms))
        )));
    }
    let mut conn = crate::redis_pool::conn(&services.redis).await?;
    let stream = crate::usage::recorder::stream_name(&services.namespace);
    let oldest_ms = crate::usage::writer::oldest_entry(&mut conn, &stream).await?.map(|id| id.added_ms());
    match oldest_ms {
        Some(ms) if ms < settled_ms => Err(ServiceError::Conflict(format!(
            "usage of {month} is still being stored (the usage stream holds events from before the month ended); \
             the summaries wait for it"
        ))),
        _ => Ok(()),
    }
}

/// Sends `month`'s summary to every owner who has not had it; with `force`, to every owner
/// again.
pub async fn send_monthly_reports(services: &Services, month: Month, force: bool) -> ServiceResult<RunOutcome> {
    // The month is over by the clock its requests were counted on, not this machine's.
    let now_ms = services.quota.now_ms().await?;
    if month >= Month::containing(crate::usage::time_from_ms(now_ms)) {
        return Err(ServiceError::invalid(format!("{month} is not over yet; its summary is sent after it ends")));
    }
    month_fully_stored(services, month, now_ms).await?;
    let already = if force { HashSet::new() } else { owners_already_sent(&services.db, month).await? };
    let keys = keys_of_month(&services.db, month).await?;
    // Owners already sent to are left out before any rollup is read: the scheduler asks every
    // 15 minutes on every instance.
    let (mut owners, skipped) = owners_of_month(&keys, &already);
    let recipients = {
        let ids: Vec<i64> = owners.iter().map(|(id, _)| *id).collect();
        let mut conn = db::conn(&services.db).await?;
        crate::accounts::email_preferences::summary_recipients(&mut conn, &ids, month.days().end()).await?
    };
    let before = owners.len();
    owners.retain(|(id, _)| recipients.contains_key(id));
    let mut outcome = RunOutcome { already_sent: skipped, opted_out: before - owners.len(), ..RunOutcome::default() };
    // One owner at a time, built and queued: building every report first held them all (their
    // CSVs too) in memory at once.
    for owner in owners {
        let unsubscribe =
            crate::accounts::email_preferences::unsubscribe_url(&services.settings.public_url, recipients[&owner.0]);
        let report = build_report(&services.db, month, &keys, owner).await?;
        let message = ReportMessage::new(&report, &services.settings.public_url, unsubscribe);
        let mut conn = db::conn(&services.db).await?;
        let queued = conn
            .transaction::<_, ServiceError, _>(|conn| {
                Box::pin(async move { queue_once(conn, &report, &message, force).await })
            })
            .await?;
        match queued {
            Queued::Email(email_id) => {
                outcome.sent += 1;
                outcome.email_ids.extend(email_id);
            }
            Queued::AlreadySent => outcome.already_sent += 1,
            Queued::StoppedMeanwhile => outcome.opted_out += 1,
        }
    }
    Ok(outcome)
}

async fn owners_already_sent(db: &DbPool, month: Month) -> ServiceResult<HashSet<i64>> {
    let mut conn = db::conn(db).await?;
    Ok(monthly_reports::table
        .filter(monthly_reports::month.eq(month.first_day()))
        .select(monthly_reports::user_id)
        .load::<i64>(&mut conn)
        .await?
        .into_iter()
        .collect())
}

/// What [`queue_once`] did.
enum Queued {
    /// Queued (the email's id: none if an identical one was queued already).
    Email(Option<i64>),
    AlreadySent,
    /// Its owner stopped the summary while the report was being built.
    StoppedMeanwhile,
}

/// Records the report and queues its email, unless it was sent before (and not forced) or its
/// owner has stopped the summary since the recipients were read.
async fn queue_once(
    conn: &mut AsyncPgConnection,
    report: &OwnerReport,
    message: &ReportMessage,
    force: bool,
) -> ServiceResult<Queued> {
    // Read under a row lock: a stop that comes now waits for this transaction, and then
    // withdraws what it queued (`email_preferences::set_monthly_summary`).
    let on: bool = crate::schema::users::table
        .find(report.owner_id)
        .select(crate::schema::users::monthly_summary)
        .for_share()
        .get_result(conn)
        .await?;
    if !on {
        return Ok(Queued::StoppedMeanwhile);
    }
    let first = report.month.first_day();
    // Waits for a concurrent run's insert to commit, then sees the conflict.
    let inserted = diesel::insert_into(monthly_reports::table)
        .values((monthly_reports::user_id.eq(report.owner_id), monthly_reports::month.eq(first)))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let sends: i32 = if inserted == 1 {
        1
    } else if force {
        diesel::update(monthly_reports::table.find((report.owner_id, first)))
            .set(monthly_reports::sends.eq(monthly_reports::sends + 1))
            .returning(monthly_reports::sends)
            .get_result(conn)
            .await?
    } else {
        return Ok(Queued::AlreadySent);
    };
    let attachment = Attachment {
        filename: format!("keymeter-usage-{}.csv", report.month),
        content_type: "text/csv; charset=utf-8".to_owned(),
        content: report.csv.clone().into_bytes(),
    };
    let email = Email {
        to: &report.owner_email,
        subject: &message.subject,
        text: &message.text,
        html: &message.html,
        attachments: std::slice::from_ref(&attachment),
        list_unsubscribe: Some(&message.unsubscribe_url),
        credential_until: None,
    };
    let dedupe = format!("monthly:{}:{}:{sends}", report.owner_id, report.month);
    let id = mailer::enqueue_returning_id(conn, &email, Some(&dedupe), mailer::Urgency::Bulk).await?;
    diesel::update(monthly_reports::table.find((report.owner_id, first)))
        .set(monthly_reports::email_id.eq(id))
        .execute(conn)
        .await?;
    Ok(Queued::Email(id))
}

fn busiest(s: &KeySummary) -> String {
    s.busiest_day.map_or_else(
        || "none".to_owned(),
        |(d, n)| format!("{} ({})", d.format("%a %-d %b"), format::counted(n, "request", "requests")),
    )
}

/// One line of block characters, one per day: the chart of the plain-text part.
fn sparkline(per_day: &[i64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = per_day.iter().copied().max().unwrap_or(0);
    per_day
        .iter()
        .map(|&n| if max == 0 || n == 0 { ' ' } else { BARS[((n * 7 + max / 2) / max).clamp(0, 7) as usize] })
        .collect()
}

/// A bar chart in plain HTML (table cells of proportional height), which mail clients render
/// without scripts or images.
fn html_chart(per_day: &[i64]) -> String {
    const HEIGHT: i64 = 40;
    let max = per_day.iter().copied().max().unwrap_or(0).max(1);
    let mut cells = String::new();
    for (i, &n) in per_day.iter().enumerate() {
        let h = if n == 0 { 0 } else { (n * HEIGHT / max).max(1) };
        cells.push_str(&format!(
            "<td style=\"vertical-align:bottom;padding:0 1px\" title=\"day {}: {}\">\
             <div style=\"width:6px;height:{h}px;background:#4f6bed\"></div></td>",
            i + 1,
            count(n)
        ));
    }
    format!("<table cellspacing=\"0\" cellpadding=\"0\" style=\"height:{HEIGHT}px\"><tr>{cells}</tr></table>")
}

/// The words of one owner's summary.
pub struct ReportMessage {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Where its recipient stops these summaries (linked at its end, and `List-Unsubscribe`).
    pub unsubscribe_url: String,
}

/// One key's figures as a summary words them (text, not yet escaped for HTML).
struct Figures {
    name: String,
    prefix: String,
    requests: String,
    throttled: String,
    error_rate: String,
    p95: String,
    busiest: String,
    peak_day: String,
    peak_hour: String,
}

impl Figures {
    fn of(s: &KeySummary) -> Self {
        let t = &s.totals;
        Self {
            name: s.key.name.clone(),
            prefix: s.key.prefix.clone(),
            requests: count(t.requests),
            throttled: count(t.throttled),
            error_rate: format::percent(t.error_rate()),
            p95: format::millis(t.p95_ms()),
            busiest: busiest(s),
            peak_day: format::whole_percent(s.peak_day_use_pct),
            peak_hour: format::whole_percent(s.peak_hour_use_pct),
        }
    }
}

/// How many keys a summary shows in full (figures and daily chart), the busiest first. An owner
/// with more keys gets every key as one line of a table after them: a section per key made a
/// 200-key owner's summary 2.7 MB (mail clients clip messages past ~100 KB).
pub const KEYS_IN_FULL: usize = 5;

impl ReportMessage {
    pub fn new(report: &OwnerReport, public_url: &PublicUrl, unsubscribe_url: String) -> Self {
        let base = public_url.as_str();
        let name = report.month.long_name();
        let subject = format!("Your keymeter usage for {name}");
        let all = report.keys.iter().fold(0, |n, s| n + s.totals.requests);
        let mut busiest_first: Vec<&KeySummary> = report.keys.iter().collect();
        busiest_first.sort_by_key(|s| std::cmp::Reverse(s.totals.requests));
        let in_full = &busiest_first[..busiest_first.len().min(KEYS_IN_FULL)];
        let every_key_listed = busiest_first.len() > in_full.len();
        let per_key = if every_key_listed {
            format!("The {} busiest keys below, then every key", in_full.len())
        } else {
            "Per key below".to_owned()
        };
        let mut text = format!(
            "Your API keys made {} in {name} (UTC). {per_key}; the daily figures of every key \
             are in the attached CSV.\n",
            format::counted(all, "request", "requests")
        );
        let mut html = format!(
            "<p>Your API keys made <b>{}</b> {} in {name} (UTC). {per_key}; the daily figures of \
             every key are in the attached CSV.</p>",
            count(all),
            if all == 1 { "request" } else { "requests" }
        );
        let usage_url = |s: &KeySummary| format!("{base}/dashboard/developers/api-keys/{}/usage", s.key.id);
        // A table cell of the full sections, figure right-aligned.
        let row = |label: &str, value: &str| {
            format!("<tr><td>{label}</td><td style=\"text-align:right;padding-left:16px\">{value}</td></tr>")
        };
        for s in in_full {
            let Figures { name, prefix, requests, throttled, error_rate, p95, busiest, peak_day, peak_hour } =
                Figures::of(s);
            let url = usage_url(s);
            let sparkline = sparkline(&s.per_day);
            text.push_str(&format!(
                "\n{name} ({prefix}…)\n  requests        {requests}\n  throttled       {throttled}\n  \
                 error rate      {error_rate}\n  p95 latency     {p95}\n  busiest day     {busiest}\n  \
                 peak quota use  {peak_day} of the daily, {peak_hour} of the hourly quota\n  \
                 per day         |{sparkline}|\n  usage           {url}\n"
            ));
            let (url, name, prefix, busiest) =
                (html_escape(&url), html_escape(&name), html_escape(&prefix), html_escape(&busiest));
            html.push_str(&format!(
                "<h3 style=\"margin-bottom:4px\"><a href=\"{url}\">{name}</a> <small style=\"color:#666\">{prefix}…</small></h3>\
                 <table style=\"border-collapse:collapse\">{}{}{}{}{}{}</table>{}",
                row("Requests", &requests),
                row("Throttled", &throttled),
                row("Error rate", &error_rate),
                row("p95 latency", &p95),
                row("Busiest day", &busiest),
                row("Peak quota use", &format!("{peak_day} daily, {peak_hour} hourly")),
                html_chart(&s.per_day),
            ));
        }
        if every_key_listed {
            let keys = count(busiest_first.len() as i64);
            text.push_str(&format!("\nEvery key ({keys}), busiest first:\n"));
            html.push_str(&format!(
                "<h3>Every key ({keys}), busiest first</h3><table cellpadding=\"3\" style=\"border-collapse:collapse\">\
                 <tr><th align=\"left\">Key</th><th>Requests</th><th>Throttled</th><th>Errors</th><th>p95</th>\
                 <th>Busiest day</th><th>Peak use (day/hour)</th></tr>"
            ));
            for s in &busiest_first {
                let Figures { name, prefix, requests, throttled, error_rate, p95, busiest, peak_day, peak_hour } =
                    Figures::of(s);
                text.push_str(&format!(
                    "- {name} ({prefix}…): {requests} requests, {throttled} throttled, {error_rate} errors, \
                     p95 {p95}, busiest {busiest}, peak {peak_day}/{peak_hour}\n"
                ));
                let (url, name, busiest) = (html_escape(&usage_url(s)), html_escape(&name), html_escape(&busiest));
                html.push_str(&format!(
                    "<tr><td><a href=\"{url}\">{name}</a></td><td align=\"right\">{requests}</td>\
                     <td align=\"right\">{throttled}</td><td align=\"right\">{error_rate}</td>\
                     <td align=\"right\">{p95}</td><td>{busiest}</td><td align=\"right\">{peak_day} / {peak_hour}</td></tr>"
                ));
            }
            html.push_str("</table>");
        }
        text.push_str(&format!(
            "\nYou get this summary each month as the owner of these API keys. To stop it: {unsubscribe_url}\n"
        ));
        html.push_str(&format!(
            "<p style=\"color:#666;font-size:12px\">You get this summary each month as the owner of these API keys. \
             <a href=\"{}\">Stop these summaries</a>.</p>",
            html_escape(&unsubscribe_url)
        ));
        Self { subject, text, html, unsubscribe_url }
    }
}

/// When the scheduler looks again: at the latest a minute after the next month's summaries may
/// go (see [`SETTLE_MS`]).
fn next_check(now: DateTime<Utc>) -> DateTime<Utc> {
    let settles = |m: Month| m.days().start() + chrono::Duration::milliseconds(SETTLE_MS + 60_000);
    let this_month = Month::containing(now);
    let target = if now < settles(this_month) { settles(this_month) } else { settles(this_month.next()) };
    (now + chrono::Duration::minutes(15)).min(target)
}

/// How many months back the scheduler looks for summaries still owed: a month whose summary could
/// not go out during the whole month after it (every instance down, Redis unreachable) is sent
/// when the scheduler next succeeds.
pub const CATCH_UP_MONTHS: u32 = 12;

/// Sends the summaries owed for the last `CATCH_UP_MONTHS` months now (catching up after
/// downtime), then shortly after every month begins, until `stop` turns true.
pub async fn run_scheduler(services: Services, mut stop: watch::Receiver<bool>) {
    loop {
        let latest = Month::containing(Utc::now()).previous();
        let mut month = (1..CATCH_UP_MONTHS).fold(latest, |m, _| m.previous());
        // Oldest first; owners already sent to cost one query per month.
        loop {
            match send_monthly_reports(&services, month, false).await {
                Ok(o) if o.sent > 0 => tracing::info!(%month, sent = o.sent, "monthly summaries queued"),
                Ok(_) => {}
                // Waiting for a month's last usage to settle is expected for its first minutes.
                Err(e @ ServiceError::Conflict(_)) => tracing::info!(error = %e, %month, "monthly summaries: not yet"),
                Err(e) => tracing::warn!(error = %e, %month, "monthly summaries: will retry"),
            }
            if month >= latest {
                break;
            }
            month = month.next();
        }
        let wait = (next_check(Utc::now()) - Utc::now()).to_std().unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_is_measured_against_the_highest_limits_in_force_during_it() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let limits = QuotaTimeline {
            first: (1_000, 10_000),
            changes: vec![(at("2026-10-15T12:30:00Z"), 5_000, 50_000), (at("2026-11-28T17:32:00Z"), 100, 1_000)],
        };
        let day = chrono::Duration::days(1);
        // Before any change: the first limits, not today's.
        assert_eq!(
            limits.highest_during(at("2026-10-01T00:00:00Z"), at("2026-10-01T00:00:00Z") + day),
            (1_000, 10_000)
        );
        // The day of a raise: the raised limits (requests above the old ones were admitted).
        assert_eq!(
            limits.highest_during(at("2026-10-15T00:00:00Z"), at("2026-10-15T00:00:00Z") + day),
            (5_000, 50_000)
        );
        // The day of a cut: the limits before it, which were in force part of the day.
        assert_eq!(
            limits.highest_during(at("2026-11-28T00:00:00Z"), at("2026-11-28T00:00:00Z") + day),
            (5_000, 50_000)
        );
        assert_eq!(limits.highest_during(at("2026-11-29T00:00:00Z"), at("2026-11-29T00:00:00Z") + day), (100, 1_000));
    }

    #[test]
    fn sparkline_scales_to_the_busiest_day() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8]), " ▂▃▅█");
        assert_eq!(sparkline(&[0, 0]), "  ");
    }

    #[test]
    fn the_scheduler_looks_right_after_a_month_begins() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // The month's summaries may go 10 minutes after it ends: checked a minute later.
        assert_eq!(next_check(at("2026-11-30T23:55:00Z")), at("2026-12-01T00:10:00Z"));
        assert_eq!(next_check(at("2026-12-01T00:10:00Z")), at("2026-12-01T00:11:00Z"));
        assert_eq!(next_check(at("2026-11-15T10:00:00Z")), at("2026-11-15T10:15:00Z"));
    }

    #[test]
    fn an_owner_of_many_keys_gets_every_key_in_a_summary_mail_clients_show_whole() {
        let month = Month::parse("2026-10").unwrap();
        let keys: Vec<KeySummary> = (0..200)
            .map(|i| KeySummary {
                key: crate::keys::api_keys::ApiKey {
                    id: crate::keys::ApiKeyId(uuid::Uuid::from_u128(i as u128 + 1)),
                    owner_id: 1,
                    owner_email: "ann@example.com".into(),
                    name: format!("Checkout server {i:03}"),
                    prefix: "km_live_ab12".into(),
                    created_at: Utc::now(),
                    last_used_at: None,
                    revoked_at: None,
                    quota: crate::keys::Quota::default_for_new_key(),
                    quota_version_ms: 0,
                    alert_email_thresholds: Default::default(),
                    rolled_at: None,
                    previous_secret: None,
                },
                totals: UsageTotals { requests: 1_000 + i, throttled: i, ..UsageTotals::default() },
                busiest_day: NaiveDate::from_ymd_opt(2026, 10, 6).map(|d| (d, 400)),
                peak_day_use_pct: 42.0,
                peak_hour_use_pct: 87.0,
                per_day: vec![30 + i; 31],
            })
            .collect();
        let report =
            OwnerReport { month, owner_id: 1, owner_email: "ann@example.com".into(), keys, csv: String::new() };
        let public_url = PublicUrl::parse("https://keymeter.example").unwrap();
        let m = ReportMessage::new(&report, &public_url, "https://keymeter.example/email/unsubscribe/t".into());
        assert!(m.html.len() < 100_000, "HTML of {} bytes", m.html.len());
        assert!(m.text.len() < 100_000, "text of {} bytes", m.text.len());
        for i in 0..200 {
            let name = format!("Checkout server {i:03}");
            assert!(m.html.contains(&name) && m.text.contains(&name), "{name} missing");
        }
        // The busiest keys in full (with a chart each), busiest first.
        assert_eq!(m.html.matches("height:40px\"><tr>").count(), KEYS_IN_FULL);
        let first = m.text.find("Checkout server 199 (").unwrap();
        assert!(first < m.text.find("Checkout server 198 (").unwrap());
        // A few keys: each in full, no list after them.
        let few = OwnerReport { keys: report.keys[..3].to_vec(), ..report.clone() };
        let m = ReportMessage::new(&few, &public_url, "https://keymeter.example/email/unsubscribe/t".into());
        assert!(!m.text.contains("Every key") && m.html.matches("height:40px\"><tr>").count() == 3);
    }

    #[test]
    fn the_html_chart_has_a_bar_per_day() {
        let html = html_chart(&[3, 0, 6]);
        assert_eq!(html.matches("<td").count(), 3);
        assert!(html.contains("height:40px;background") && html.contains("height:20px;background"));
    }
}
