//! Quota alerts: a key's owner hears once when its use crosses 50%, 80% and 100% of its hour or
//! day quota, in the app always and by email for the thresholds they chose.
//!
//! The crossing is seen by exactly one request: the quota script counts atomically, so only one
//! admitted request brings the count to a threshold. That request's usage event carries the
//! crossing ([`crossings`]); the usage writer stores it with the event, in the same transaction
//! ([`record`]), and the `quota_alerts` primary key (key, window, period, threshold) turns any
//! replay into a no-op. Nothing is added to the metered request's latency.
//!
//! While Redis is away, the fallback's requests carry the thresholds that the use this instance
//! knows of has reached (Redis' last count and its own admissions since, never more than the
//! true use): an alert is not held back until Redis answers again, and never sent early.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::housekeeping;
use crate::keys::{ApiKeyId, QuotaDecision, Verdict, Window};
use crate::mailer::{self, html_paragraph, Email};
use crate::notifications::{self, NewNotification};
use crate::public_url::PublicUrl;
use crate::schema::{api_keys, quota_alerts, users};
use crate::usage::time_from_ms;
use crate::{ServiceError, ServiceResult};
use format::html_escape;

/// The alert thresholds, in percent of a window's limit.
pub const THRESHOLDS: [u8; 3] = [50, 80, 100];

/// Which thresholds email a key's owner: a subset of [`THRESHOLDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertThresholds {
    mask: u8,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self::all()
    }
}

impl AlertThresholds {
    pub fn all() -> Self {
        Self { mask: 0b111 }
    }

    pub fn none() -> Self {
        Self { mask: 0 }
    }

    fn bit(threshold: u8) -> Option<u8> {
        THRESHOLDS.iter().position(|&t| t == threshold).map(|i| 1 << i)
    }

    /// A comma-separated list such as `50,100` (empty for none).
    pub fn parse(raw: &str) -> ServiceResult<Self> {
        let mut mask = 0;
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bit =
                part.trim_end_matches('%').parse::<u8>().ok().and_then(Self::bit).ok_or_else(|| {
                    ServiceError::invalid(format!("{part:?} is not an alert threshold (50, 80 or 100)"))
                })?;
            mask |= bit;
        }
        Ok(Self { mask })
    }

    /// The thresholds chosen one by one (a form's checkboxes).
    pub fn from_chosen(chosen: &[u8]) -> ServiceResult<Self> {
        let mut mask = 0;
        for &threshold in chosen {
            mask |= Self::bit(threshold).ok_or_else(|| {
                ServiceError::invalid(format!("{threshold} is not an alert threshold (50, 80 or 100)"))
            })?;
        }
        Ok(Self { mask })
    }

    pub fn from_db(values: &[i16]) -> Self {
        let mask = values.iter().filter_map(|&v| u8::try_from(v).ok().and_then(Self::bit)).fold(0, |m, b| m | b);
        Self { mask }
    }

    pub fn to_db(self) -> Vec<i16> {
        self.iter().map(i16::from).collect()
    }

    pub fn contains(self, threshold: u8) -> bool {
        Self::bit(threshold).is_some_and(|b| self.mask & b != 0)
    }

    pub fn iter(self) -> impl Iterator<Item = u8> {
        THRESHOLDS.into_iter().filter(move |&t| self.contains(t))
    }

    /// `50,80,100`, as [`Self::parse`] reads it.
    pub fn to_list(self) -> String {
        self.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// The quota window an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertWindow {
    #[serde(rename = "h")]
    Hour,
    #[serde(rename = "d")]
    Day,
}

impl AlertWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    fn adjective(self) -> &'static str {
        match self {
            Self::Hour => "hourly",
            Self::Day => "daily",
        }
    }

    fn length_ms(self) -> i64 {
        match self {
            Self::Hour => Window::Hour.length_ms(),
            Self::Day => Window::Day.length_ms(),
        }
    }
}

/// One request brought a window's use to a threshold. Carried by that request's usage event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaCrossing {
    #[serde(rename = "w")]
    pub window: AlertWindow,
    /// Start of the window's period (the UTC hour or day), ms since the epoch.
    #[serde(rename = "p")]
    pub period_start_ms: i64,
    #[serde(rename = "t")]
    pub threshold: u8,
    #[serde(rename = "l")]
    pub limit: i64,
}

/// The count at which `threshold` percent of `limit` is reached: rounded up, at least 1.
pub fn threshold_count(limit: i64, threshold: u8) -> i64 {
    let exact = (limit.max(0) as i128 * threshold as i128 + 99) / 100;
    exact.clamp(1, i64::MAX as i128) as i64
}

/// The thresholds a request finds reached in its windows, admitted or not.
/// Counted one by one, a window reaches each threshold with exactly one request, but counts also
/// jump (an outage's local admissions added at once, a limit lowered below the use), so the
/// test is "reached", not "equal". [`CrossingMemo`] passes each on once per instance; the
/// `quota_alerts` key makes it once across instances.
pub fn crossings(decision: &QuotaDecision) -> Vec<QuotaCrossing> {
    let mut out = Vec::new();
    for (window, use_) in [(AlertWindow::Hour, decision.hour), (AlertWindow::Day, decision.day)] {
        debug_assert!(matches!(use_.window, Window::Hour | Window::Day));
        if use_.limit <= 0 {
            continue;
        }
        for threshold in THRESHOLDS {
            if use_.used >= threshold_count(use_.limit, threshold) {
                out.push(QuotaCrossing { window, period_start_ms: use_.start_ms(), threshold, limit: use_.limit });
            }
        }
    }
    out
}

/// The crossings this instance has passed on, per key and window, for the window's latest period:
/// a key past a threshold would otherwise carry it on every request until the period ends.
#[derive(Default)]
pub struct CrossingMemo(Mutex<Memo>);

#[derive(Default)]
struct Memo {
    seen: HashMap<(Uuid, AlertWindow), (i64, u8)>,
    /// The latest period start seen of each window (hour, day). When one moves on, the entries
    /// of earlier periods go: keys no longer used (revoked ones) would otherwise stay for good.
    latest: [i64; 2],
}

impl Memo {
    fn saw_period(&mut self, window: AlertWindow, period_start_ms: i64) {
        let latest = &mut self.latest[window as usize];
        if period_start_ms > *latest {
            *latest = period_start_ms;
            // Once per window and period: the cost of walking the map is spread over its requests.
            self.seen.retain(|(_, w), (period, _)| *w != window || *period >= period_start_ms);
        }
    }
}

impl CrossingMemo {
    /// The thresholds a request of `key` reached and passes on (those not passed on before in
    /// their period): by Redis' count, or during an outage by what this instance knows of the
    /// key's use, so that an outage delays no alert one instance can see.
    pub fn reached(&self, key: Uuid, verdict: &Verdict) -> Vec<QuotaCrossing> {
        let reached = match verdict {
            Verdict::Enforced(decision) => crossings(decision),
            Verdict::Fallback { known, .. } => crossings(known),
            Verdict::Unavailable => return Vec::new(),
        };
        self.first_seen(key, reached)
    }

    /// Of `crossings` (of `key`), those not passed on before in their period.
    pub fn first_seen(&self, key: Uuid, crossings: Vec<QuotaCrossing>) -> Vec<QuotaCrossing> {
        if crossings.is_empty() {
            return crossings;
        }
        let mut memo = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for c in &crossings {
            memo.saw_period(c.window, c.period_start_ms);
        }
        crossings
            .into_iter()
            .filter(|c| {
                let (period, passed) = memo.seen.entry((key, c.window)).or_insert((c.period_start_ms, 0));
                if c.period_start_ms > *period {
                    (*period, *passed) = (c.period_start_ms, 0);
                } else if c.period_start_ms < *period {
                    // A late request of an earlier period: the database keeps it from repeating.
                    return true;
                }
                // Crossings carry only known thresholds; an unknown one would always pass (the
                // database keeps it from repeating).
                let bit = AlertThresholds::bit(c.threshold).unwrap_or(0);
                let new = *passed & bit == 0;
                *passed |= bit;
                new
            })
            .collect()
    }

    /// Takes back [`Self::first_seen`]'s word for `crossings` of `key` that could not be
    /// stored, so that a later request carries them again.
    pub fn forget(&self, key: Uuid, crossings: &[QuotaCrossing]) {
        let mut memo = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for c in crossings {
            if let Some((period, passed)) = memo.seen.get_mut(&(key, c.window)) {
                if *period == c.period_start_ms {
                    *passed &= !AlertThresholds::bit(c.threshold).unwrap_or(0);
                }
            }
        }
    }
}

/// What an alert email and notification need to know about a key.
struct KeyInfo {
    owner_id: i64,
    owner_email: String,
    name: String,
    prefix: String,
    email_thresholds: AlertThresholds,
}

/// Stores the crossings seen in a batch of usage events and tells the keys' owners, inside the
/// caller's transaction. Returns how many alerts were new.
pub async fn record(
    conn: &mut AsyncPgConnection,
    crossings: &[(Uuid, i64, QuotaCrossing)],
    public_url: &PublicUrl,
) -> ServiceResult<usize> {
    if crossings.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = crossings.iter().map(|(k, _, _)| *k).collect();
    type Row = (Uuid, i64, String, String, String, Vec<i16>);
    let rows: Vec<Row> = api_keys::table
        .inner_join(users::table)
        .filter(api_keys::id.eq_any(&ids))
        .select((
            api_keys::id,
            api_keys::owner_id,
            users::email,
            api_keys::name,
            api_keys::prefix,
            api_keys::alert_email_thresholds,
        ))
        .load(conn)
        .await?;
    let keys: HashMap<Uuid, KeyInfo> = rows
        .into_iter()
        .map(|(id, owner_id, owner_email, name, prefix, t)| {
            (id, KeyInfo { owner_id, owner_email, name, prefix, email_thresholds: AlertThresholds::from_db(&t) })
        })
        .collect();

    // A crossing this old (a months-old stream replayed) may have had its record deleted
    // already; alerting now would alert twice, and too late to matter.
    let kept_from_ms = housekeeping::records_kept_from(Utc::now().date_naive()).timestamp_millis();
    let mut new_alerts = 0;
    // In the records' key order: two writers storing the same crossings (each instance
    // remembers only its own) then wait for each other in line, never in a circle.
    // The request that used up its hour may have used up its day too: the hour's reset then
    // brings nothing back, and its alert names the day's.
    let days_used_up: HashMap<(Uuid, i64), i64> = crossings
        .iter()
        .filter(|(_, _, c)| c.window == AlertWindow::Day && c.threshold >= 100)
        .map(|(key, at_ms, c)| ((*key, *at_ms), c.period_start_ms + c.window.length_ms()))
        .collect();
    let mut crossings: Vec<&(Uuid, i64, QuotaCrossing)> = crossings.iter().collect();
    crossings.sort_by_key(|(key, at_ms, c)| (*key, c.window.as_str(), c.period_start_ms, c.threshold, *at_ms));
    for (key_id, at_ms, c) in crossings {
        let Some(key) = keys.get(key_id) else { continue };
        if c.period_start_ms < kept_from_ms {
            continue;
        }
        let emailed = key.email_thresholds.contains(c.threshold);
        let inserted = diesel::insert_into(quota_alerts::table)
            .values((
                quota_alerts::api_key_id.eq(key_id),
                quota_alerts::quota_window.eq(c.window.as_str()),
                quota_alerts::period_start.eq(time_from_ms(c.period_start_ms)),
                quota_alerts::threshold.eq(i16::from(c.threshold)),
                quota_alerts::quota_limit.eq(c.limit),
                quota_alerts::crossed_at.eq(time_from_ms(*at_ms)),
                quota_alerts::emailed.eq(emailed),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if inserted == 0 {
            continue;
        }
        new_alerts += 1;
        let refused_until = match c.window {
            AlertWindow::Hour => days_used_up.get(&(*key_id, *at_ms)).copied(),
            AlertWindow::Day => None,
        };
        let message = AlertMessage::new(ApiKeyId(*key_id), key, c, refused_until, public_url);
        let dedupe = format!("alert:{key_id}:{}:{}:{}", c.window.as_str(), c.period_start_ms, c.threshold);
        notifications::notify(
            conn,
            &NewNotification {
                user_id: key.owner_id,
                kind: "quota_alert",
                title: &message.subject,
                body: &message.summary,
                link: Some(&message.usage_path),
                dedupe_key: Some(&dedupe),
            },
        )
        .await?;
        if emailed {
            let email = Email {
                to: &key.owner_email,
                subject: &message.subject,
                text: &message.text,
                html: &message.html,
                attachments: &[],
                list_unsubscribe: None,
                credential_until: None,
            };
            mailer::enqueue(conn, &email, Some(&dedupe)).await?;
        }
    }
    Ok(new_alerts)
}

/// Tells owners of the thresholds that keys' use reached when counts were added to it without a
/// request (an outage's local admissions, added once Redis answers: each instance's share may
/// reach nothing while their sum does, and the key may get no more requests to carry it).
/// Stored as a request's crossings would be, once by the same `quota_alerts` key; what
/// PostgreSQL refuses is tried again every few seconds (no request may come to carry it). Runs
/// until `stopped`, then tries once more to store what is still queued.
pub async fn tell_added_counts(
    services: crate::Services,
    mut added: tokio::sync::mpsc::Receiver<crate::keys::quota_manager::AddedCounts>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut unstored = UnstoredAlerts::default();
    loop {
        // While PostgreSQL fails, reports only queue up: the timer tries them all again.
        let (retry, stop) = tokio::select! {
            report = added.recv() => match report {
                Some(report) => {
                    unstored.add(&services.alert_crossings, report);
                    (false, false)
                }
                None => (true, true),
            },
            _ = tokio::time::sleep(UnstoredAlerts::RETRY_AFTER), if !unstored.rows.is_empty() => (true, false),
            _ = stopped.wait_for(|&stop| stop) => (true, true),
        };
        if stop {
            while let Ok(report) = added.try_recv() {
                unstored.add(&services.alert_crossings, report);
            }
        }
        if retry || !unstored.failing {
            unstored.store(&services).await;
        }
        if stop {
            if !unstored.rows.is_empty() {
                // This instance's memory of them goes with it: another instance's requests of
                // those keys carry them (their crossings are new to it).
                tracing::warn!(
                    alerts = unstored.rows.len(),
                    "quota alerts reached after a Redis outage were not stored"
                );
            }
            return;
        }
    }
}

/// Crossings reported after an outage and not stored yet, oldest first.
#[derive(Default)]
struct UnstoredAlerts {
    rows: Vec<(Uuid, i64, QuotaCrossing)>,
    /// Whether the last try failed (warned once per run of failures).
    failing: bool,
}

impl UnstoredAlerts {
    const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
    /// Kept at most; the oldest beyond go back to the requests (a PostgreSQL down for long).
    const MAX_ROWS: usize = 10_000;

    fn add(&mut self, memo: &CrossingMemo, (key, use_): crate::keys::quota_manager::AddedCounts) {
        let reached = memo.first_seen(key.0, crossings(&use_));
        self.rows.extend(reached.into_iter().map(|c| (key.0, use_.now_ms, c)));
        if self.rows.len() > Self::MAX_ROWS {
            let dropped: Vec<_> = self.rows.drain(..self.rows.len() - Self::MAX_ROWS).collect();
            Self::hand_back(memo, &dropped);
        }
    }

    /// Stores them key by key (one key's refusal holds back no other's), keeping what failed.
    async fn store(&mut self, services: &crate::Services) {
        let mut failed = Vec::new();
        let mut error = None;
        let mut rows = std::mem::take(&mut self.rows);
        rows.sort_by_key(|(key, _, _)| *key);
        for of_key in rows.chunk_by(|a, b| a.0 == b.0) {
            let public_url = &services.settings.public_url;
            let stored = async {
                let mut conn = crate::db::conn(&services.db).await?;
                conn.transaction::<_, ServiceError, _>(|c| Box::pin(async move { record(c, of_key, public_url).await }))
                    .await
            };
            if let Err(e) = stored.await {
                failed.extend_from_slice(of_key);
                error = Some(e);
            }
        }
        self.rows = failed;
        match error {
            Some(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, waiting = self.rows.len(), "could not store quota alerts reached after a Redis outage; trying again");
            }
            Some(_) => {}
            None => self.failing = false,
        }
    }

    fn hand_back(memo: &CrossingMemo, rows: &[(Uuid, i64, QuotaCrossing)]) {
        for (key, _, c) in rows {
            memo.forget(*key, std::slice::from_ref(c));
        }
    }
}

/// The words of one alert, for the bell and the email.
struct AlertMessage {
    subject: String,
    summary: String,
    usage_path: String,
    text: String,
    html: String,
}

impl AlertMessage {
    /// `day_reset_ms`: when an hour's quota ran out with the request that also used up the
    /// day's, the day's reset (requests stay refused until then, not until the next hour).
    fn new(id: ApiKeyId, key: &KeyInfo, c: &QuotaCrossing, day_reset_ms: Option<i64>, public_url: &PublicUrl) -> Self {
        let used = threshold_count(c.limit, c.threshold);
        let period = time_from_ms(c.period_start_ms);
        let reset = time_from_ms(c.period_start_ms + c.window.length_ms());
        let period_text = match c.window {
            AlertWindow::Hour => format!("in the hour from {}", format::time(&period)),
            AlertWindow::Day => format!("on {} (UTC)", period.format("%Y-%m-%d")),
        };
        let subject = if c.threshold >= 100 {
            format!("{}: {} quota used up", key.name, c.window.adjective())
        } else {
            format!("{}: {}% of the {} quota used", key.name, c.threshold, c.window.adjective())
        };
        let consequence = if let (true, Some(day_reset)) = (c.threshold >= 100, day_reset_ms) {
            format!(
                "The daily quota is used up too: further requests get 429 Too Many Requests until it resets at {}.",
                format::time(&time_from_ms(day_reset))
            )
        } else if c.threshold >= 100 {
            format!("Further requests get 429 Too Many Requests until the quota resets at {}.", format::time(&reset))
        } else {
            format!("The quota resets at {}.", format::time(&reset))
        };
        // "At least": one request can pass several thresholds (a lowered limit, a big batch of
        // usage), so the use may be past the threshold's count.
        let how_much = if used >= c.limit && c.limit == 1 {
            "the 1 request".to_owned()
        } else if used >= c.limit {
            format!("all {}", format::counted(c.limit, "request", "requests"))
        } else {
            format!("{} or more of the {}", format::count(used), format::counted(c.limit, "request", "requests"))
        };
        let summary = format!(
            "API key “{}” ({}…) has used {how_much} allowed {period_text}. {consequence}",
            key.name, key.prefix
        );
        let base = public_url.as_str();
        let usage_path = format!("/dashboard/developers/api-keys/{id}/usage");
        let usage_url = format!("{base}{usage_path}");
        let settings_url = format!("{base}/dashboard/developers/api-keys/{id}");
        let text = format!(
            "{summary}\n\nSee the key's usage: {usage_url}\n\nTo ask for a higher quota, or to choose which alerts \
             email you, open the key: {settings_url}\n"
        );
        let html = format!(
            "{}<p><a href=\"{}\">See the key's usage</a></p>\
             <p style=\"color:#666\">To ask for a higher quota, or to choose which alerts email you, \
             <a href=\"{}\">open the key</a>.</p>",
            // Wraps anywhere: a long key name must not widen the mail past a phone's screen.
            html_paragraph(&summary),
            html_escape(&usage_url),
            html_escape(&settings_url)
        );
        Self { subject, summary, usage_path, text, html }
    }
}

/// The owner's choice of which alerts email them; anyone else is refused as for any change to
/// the key (admins see the choice but do not make it).
pub async fn set_email_thresholds_for(
    db: &crate::db::DbPool,
    key: ApiKeyId,
    owner: &crate::accounts::User,
    thresholds: AlertThresholds,
) -> ServiceResult<()> {
    crate::keys::api_keys::get_as_owner(db, key, owner).await?;
    let mut conn = crate::db::conn(db).await?;
    set_email_thresholds(&mut conn, key, thresholds).await
}

/// Sets which alerts email the owner of a key (the caller has checked access).
pub async fn set_email_thresholds(
    conn: &mut AsyncPgConnection,
    key: ApiKeyId,
    thresholds: AlertThresholds,
) -> ServiceResult<()> {
    let n = diesel::update(api_keys::table.filter(api_keys::id.eq(key.0)))
        .set(api_keys::alert_email_thresholds.eq(thresholds.to_db()))
        .execute(conn)
        .await?;
    if n == 0 {
        return Err(ServiceError::NotFound);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::WindowUse;

    fn decision(hour_used: i64, hour_limit: i64, day_used: i64, day_limit: i64) -> QuotaDecision {
        let now_ms = 1_700_000_000_000;
        let hour_reset = now_ms - now_ms % 3_600_000 + 3_600_000;
        let day_reset = now_ms - now_ms % 86_400_000 + 86_400_000;
        QuotaDecision {
            admitted: true,
            hour: WindowUse { window: Window::Hour, limit: hour_limit, used: hour_used, reset_at_ms: hour_reset },
            day: WindowUse { window: Window::Day, limit: day_limit, used: day_used, reset_at_ms: day_reset },
            burst_per_second: None,
            blocked_by: None,
            retry_after_secs: None,
            now_ms,
        }
    }

    fn message(threshold: u8, limit: i64) -> AlertMessage {
        message_with(threshold, limit, None)
    }

    fn message_with(threshold: u8, limit: i64, day_reset_ms: Option<i64>) -> AlertMessage {
        let key = KeyInfo {
            owner_id: 1,
            owner_email: "ann@example.com".into(),
            name: "checkout".into(),
            prefix: "km_live_ab".into(),
            email_thresholds: AlertThresholds::default(),
        };
        let crossing =
            QuotaCrossing { window: AlertWindow::Hour, period_start_ms: 1_699_999_200_000, threshold, limit };
        AlertMessage::new(
            ApiKeyId(Uuid::nil()),
            &key,
            &crossing,
            day_reset_ms,
            &PublicUrl::parse("http://localhost").unwrap(),
        )
    }

    /// The hour's reset brings nothing back when the same request used up the day as well.
    #[test]
    fn an_hour_used_up_with_its_day_names_the_days_reset() {
        let alone = message(100, 25).summary;
        assert!(alone.ends_with("until the quota resets at 2023-11-14 23:00 UTC."), "{alone}");
        let with_day = message_with(100, 25, Some(1_700_006_400_000)).summary;
        assert!(
            with_day.ends_with(
                "The daily quota is used up too: further requests get 429 Too Many Requests until it resets at 2023-11-15 00:00 UTC."
            ),
            "{with_day}"
        );
    }

    /// A limit lowered below the use passes every threshold at once: no message may claim the
    /// use was exactly the threshold's count.
    #[test]
    fn alert_texts_do_not_understate_the_use() {
        assert!(
            message(50, 2_000).summary.contains(
                "has used 1,000 or more of the 2,000 requests allowed in the hour from 2023-11-14 22:00 UTC."
            ),
            "{}",
            message(50, 2_000).summary
        );
        assert!(
            message(100, 25).summary.contains("has used all 25 requests allowed in"),
            "{}",
            message(100, 25).summary
        );
        // A limit of one: every threshold is its one request, said in plain words.
        for threshold in THRESHOLDS {
            let summary = message(threshold, 1).summary;
            assert!(summary.contains("has used the 1 request allowed in"), "{summary}");
        }
    }

    #[test]
    fn threshold_counts_round_up() {
        assert_eq!(threshold_count(10, 50), 5);
        assert_eq!(threshold_count(10, 80), 8);
        assert_eq!(threshold_count(10, 100), 10);
        assert_eq!(threshold_count(3, 50), 2);
        assert_eq!(threshold_count(1, 50), 1);
        assert_eq!(threshold_count(i64::MAX, 100), i64::MAX);
    }

    #[test]
    fn counted_one_by_one_each_threshold_is_passed_on_once() {
        let key = Uuid::now_v7();
        for limit in [1, 2, 3, 7, 10, 99, 1000] {
            let memo = CrossingMemo::default();
            let mut seen = Vec::new();
            // Up to the limit, then refusals at the limit.
            for used in (1..=limit).chain([limit, limit]) {
                for c in memo.first_seen(key, crossings(&decision(used, limit, 0, 1_000_000))) {
                    assert_eq!(c.window, AlertWindow::Hour);
                    seen.push(c.threshold);
                }
            }
            // With limit 1, one request crosses all three thresholds at once.
            assert_eq!(seen, vec![50, 80, 100], "limit {limit}");
        }
    }

    #[test]
    fn a_jump_in_the_count_passes_on_every_threshold_it_skipped() {
        let (key, memo) = (Uuid::now_v7(), CrossingMemo::default());
        let at = |used| memo.first_seen(key, crossings(&decision(used, 10, 0, 1_000_000)));
        assert!(at(3).is_empty());
        // An outage's admissions added at once: from 3 to 9 of 10.
        let jumped: Vec<u8> = at(9).iter().map(|c| c.threshold).collect();
        assert_eq!(jumped, [50, 80]);
        assert_eq!(at(10).iter().map(|c| c.threshold).collect::<Vec<_>>(), [100]);
    }

    /// During an outage the key's own limits and known use decide, not the fallback's share
    /// (a refusal by the share is no alert); with no decision at all, nothing is reached.
    #[test]
    fn a_request_reaches_thresholds_by_the_use_its_verdict_knows() {
        let (key, memo) = (Uuid::now_v7(), CrossingMemo::default());
        let share_used_up = decision(5, 5, 0, 1_000_000);
        let known = decision(5, 20, 0, 1_000_000);
        let fallback = Verdict::Fallback { decision: share_used_up, known: known.clone() };
        assert!(memo.reached(key, &fallback).is_empty(), "5 of 20 is no threshold");
        let known = decision(10, 20, 0, 1_000_000);
        let fallback = Verdict::Fallback { decision: decision(5, 5, 0, 1_000_000), known };
        assert_eq!(memo.reached(key, &fallback).iter().map(|c| c.threshold).collect::<Vec<_>>(), [50]);
        assert!(memo.reached(key, &Verdict::Enforced(decision(10, 20, 0, 1_000_000))).is_empty(), "once");
        assert_eq!(memo.reached(key, &Verdict::Enforced(decision(16, 20, 0, 1_000_000))).len(), 1);
        assert!(memo.reached(key, &Verdict::Unavailable).is_empty());
    }

    #[test]
    fn a_new_period_starts_over() {
        let (key, memo) = (Uuid::now_v7(), CrossingMemo::default());
        let d = decision(5, 10, 0, 1_000_000);
        assert_eq!(memo.first_seen(key, crossings(&d)).len(), 1);
        assert!(memo.first_seen(key, crossings(&d)).is_empty());
        let mut next_hour = d.clone();
        next_hour.hour.reset_at_ms += 3_600_000;
        assert_eq!(memo.first_seen(key, crossings(&next_hour)).len(), 1);
    }

    #[test]
    fn keys_of_past_periods_are_forgotten_when_a_new_one_starts() {
        let memo = CrossingMemo::default();
        let d = decision(5, 10, 0, 1_000_000);
        let keys: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
        for key in &keys {
            assert_eq!(memo.first_seen(*key, crossings(&d)).len(), 1);
        }
        assert_eq!(memo.0.lock().unwrap().seen.len(), 2000);
        // The next hour: the keys used in it, and the day's entries.
        let mut next_hour = d.clone();
        next_hour.hour.reset_at_ms += 3_600_000;
        for key in &keys[..10] {
            assert_eq!(memo.first_seen(*key, crossings(&next_hour)).len(), 1);
        }
        let left = memo.0.lock().unwrap().seen.len();
        assert_eq!(left, 10);
        // What stays still works: the current period's crossings are not passed on again.
        assert!(memo.first_seen(keys[0], crossings(&next_hour)).is_empty());
    }

    #[test]
    fn crossings_name_the_period_and_window() {
        let d = decision(8, 10, 50, 100);
        let c = crossings(&d);
        let named: Vec<(AlertWindow, u8)> = c.iter().map(|c| (c.window, c.threshold)).collect();
        assert_eq!(named, [(AlertWindow::Hour, 50), (AlertWindow::Hour, 80), (AlertWindow::Day, 50)]);
        assert_eq!(c[0].period_start_ms, d.hour.reset_at_ms - 3_600_000);
        assert_eq!(c[2].period_start_ms % 86_400_000, 0);
    }

    #[test]
    fn a_limit_lowered_below_the_use_reaches_every_threshold() {
        // 40 used, the hourly limit lowered to 30: the next request is refused, and the key is
        // past all three thresholds.
        let mut d = decision(40, 30, 40, 1_000);
        d.admitted = false;
        let reached: Vec<u8> = crossings(&d).iter().map(|c| c.threshold).collect();
        assert_eq!(reached, [50, 80, 100]);
    }

    #[test]
    fn threshold_lists() {
        assert_eq!(AlertThresholds::parse("50, 100%").unwrap().to_list(), "50,100");
        assert_eq!(AlertThresholds::parse("").unwrap(), AlertThresholds::none());
        assert_eq!(AlertThresholds::from_chosen(&[100, 50]).unwrap().to_list(), "50,100");
        assert!(AlertThresholds::from_chosen(&[75]).is_err());
        assert!(AlertThresholds::parse("75").is_err());
        assert!(AlertThresholds::parse("fifty").is_err());
        assert_eq!(AlertThresholds::from_db(&[100, 50, 7]).to_db(), vec![50, 100]);
        assert!(AlertThresholds::default().contains(80));
    }
}
