//! The CSV export (DESIGN.md): one header row, then one row per key, period and endpoint, UTC
//! periods, RFC 4180 quoting; and its streaming. An export reads each key's hourly rollups
//! oldest first through a cursor, a piece at a time, and hands each piece's finished rows to the
//! response as it goes: memory stays bounded by one piece and one period's rows, whatever the
//! range and the number of keys, and a piece boundary inside a period just carries it over.
//!
//! The rows ([`ExportRow`]) are summed here from the hourly rollups: streamed, a key at a time,
//! or all in memory for the monthly summary's attachment.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::Stream;
use tokio::sync::mpsc::{self, error::SendTimeoutError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::histogram::LatencyHistogram;
use super::periods::{DayRange, Granularity};
use super::rollups::{KeyedRollupRow, RollupRow, RollupRows, UsageTotals, KEY_ROLLUPS_OLDEST_FIRST};
use crate::db::{self, DbPool};
use crate::{ServiceError, ServiceResult};

pub const HEADER: &str = "period_start,key_id,key_name,method,endpoint,requests,errors_4xx,errors_5xx,throttled,bytes_in,bytes_out,p50_ms,p95_ms\r\n";

/// A field quoted when it holds a comma, quote or line break. Text a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@` first) is prefixed with `'`.
pub fn field(raw: &str) -> String {
    let guarded = if raw.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{raw}") } else { raw.to_owned() };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

fn millis(v: Option<f64>) -> String {
    v.map(|ms| format!("{ms:.3}")).unwrap_or_default()
}

/// The admins' export of every owner's keys adds the keys' owner as a last column (the columns
/// before it are the key export's, so what reads one reads the other).
pub const HEADER_WITH_OWNER: &str = "period_start,key_id,key_name,method,endpoint,requests,errors_4xx,errors_5xx,throttled,bytes_in,bytes_out,p50_ms,p95_ms,owner_email\r\n";

/// Appends one row (with its line break) to `out`; with `owner_email` for the admins' export.
pub fn write_row(out: &mut String, row: &ExportRow, key_name: &str, owner_email: Option<&str>) {
    let t = &row.totals;
    let _ = write!(
        out,
        "{},{},{},{},{},{},{},{},{},{},{},{},{}",
        row.period_start.format("%Y-%m-%dT%H:%M:%SZ"),
        row.key_id,
        field(key_name),
        field(&row.method),
        field(&row.endpoint),
        t.requests,
        t.errors_4xx,
        t.errors_5xx,
        t.throttled,
        t.bytes_in,
        t.bytes_out,
        millis(t.p50_ms()),
        millis(t.p95_ms()),
    );
    if let Some(owner) = owner_email {
        let _ = write!(out, ",{}", field(owner));
    }
    out.push_str("\r\n");
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

/// Export rows of one key from its hourly rollups, pushed oldest first
/// ([`KEY_ROLLUPS_OLDEST_FIRST`]): only the rows of the period being summed are held (one per
/// endpoint and method), so a streamed export needs little more memory than one piece of
/// rollups, whatever its range.
struct KeyExportRows {
    granularity: Granularity,
    range: DayRange,
    key: Uuid,
    period: Option<DateTime<Utc>>,
    // Few distinct endpoints per key: a list searched in place beats allocating map keys.
    rows: Vec<(String, String, UsageTotals)>,
}

impl KeyExportRows {
    fn new(granularity: Granularity, range: DayRange, key: Uuid) -> Self {
        Self { granularity, range, key, period: None, rows: Vec::new() }
    }

    /// Adds one hourly row; once it starts a new period, the previous period's rows are
    /// finished and appended to `done`, in export order.
    fn push(&mut self, row: &KeyedRollupRow, done: &mut Vec<ExportRow>) -> ServiceResult<()> {
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
    fn finish(&mut self, done: &mut Vec<ExportRow>) {
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

/// Export rows of several keys' loaded hourly rollups together, in export order (all in
/// memory: for the monthly summary's attachment, built from rows a report loaded anyway).
pub fn rows_of<'a>(
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

/// Hourly rollup rows in any order summed into export rows, in export order.
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

/// A key in an export: the name its rows carry and, in the admins' export, its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportKey {
    pub id: Uuid,
    pub name: String,
    pub owner_email: Option<String>,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub keys: Vec<ExportKey>,
    pub granularity: Granularity,
    pub range: DayRange,
    /// The `owner_email` column ([`HEADER_WITH_OWNER`]): the admins' export of every owner's keys.
    pub with_owner: bool,
}

/// How an export reads and hands out its rows.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Hourly rollup rows fetched per round trip: what an export holds in memory at most
    /// (besides the export row being summed and the CSV text of one piece).
    pub piece_rows: usize,
    /// How long a piece may wait for the client to take it. The export holds a database
    /// connection (its cursor) while it runs, so a client that stops reading loses the download
    /// after this long instead of keeping a pooled connection forever.
    pub stall_limit: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self { piece_rows: 1000, stall_limit: Duration::from_secs(30) }
    }
}

const CURSOR: &str = "km_export";

/// What the reading task hands to the response.
enum Message {
    Csv(String),
    Done,
    Failed(ServiceError),
}

/// How many exports read at once on one instance. Each holds a database connection for as long
/// as its client takes to download (minutes, for a slow one): slow downloads used to take the
/// whole pool, and pages, sign-in and the metered API answered 503. Exports get a quarter of the
/// pool; the rest stays for everything else. One person holds at most [`Self::PER_USER`] of
/// them, so a few slow downloads of one account cannot keep everyone else's (an admin's
/// invoicing export too) waiting.
#[derive(Clone)]
pub struct ExportSlots {
    slots: Arc<Semaphore>,
    /// Running exports per user id.
    running: Arc<std::sync::Mutex<HashMap<i64, usize>>>,
}

/// A place among the running exports, held until the export stops reading.
pub struct ExportSlot {
    _permit: OwnedSemaphorePermit,
    _user: UserExport,
}

/// One export counted against its user, from the request for a slot until it stops reading.
struct UserExport {
    user_id: i64,
    running: Arc<std::sync::Mutex<HashMap<i64, usize>>>,
}

impl Drop for UserExport {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            if let Some(n) = running.get_mut(&self.user_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    running.remove(&self.user_id);
                }
            }
        }
    }
}

/// Why no export slot was given.
#[derive(Debug, PartialEq, Eq)]
pub enum NoExportSlot {
    /// Every slot stayed taken for [`ExportSlots::WAIT`].
    Busy,
    /// The user already runs (or waits for) [`ExportSlots::PER_USER`] exports.
    TooManyOfYours,
}

impl ExportSlots {
    /// How long an export waits for a slot before it is refused (and told when to try again).
    pub const WAIT: Duration = Duration::from_secs(10);
    /// Exports one user may run at once on one instance.
    pub const PER_USER: usize = 2;

    pub fn new(slots: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(slots.max(1))), running: Default::default() }
    }

    /// A quarter of a database pool of `pool_size` connections (at least one).
    pub fn for_pool(pool_size: usize) -> Self {
        Self::new(pool_size / 4)
    }

    /// A slot for an export of `user_id`, waiting up to [`Self::WAIT`] for one to free up.
    pub async fn take(&self, user_id: i64) -> Result<ExportSlot, NoExportSlot> {
        let user = {
            let mut running = self.running.lock().map_err(|_| NoExportSlot::Busy)?;
            let mine = running.entry(user_id).or_default();
            if *mine >= Self::PER_USER {
                return Err(NoExportSlot::TooManyOfYours);
            }
            *mine += 1;
            UserExport { user_id, running: self.running.clone() }
        };
        match tokio::time::timeout(Self::WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(ExportSlot { _permit: permit, _user: user }),
            _ => Err(NoExportSlot::Busy),
        }
    }
}

/// A running export: the CSV text in chunks (the header with the first piece's rows first).
/// It ends with an error, never quietly, if the export could not finish; a response body built
/// from it is then cut off, so the client sees a broken download rather than a short file.
pub struct CsvStream {
    first: Option<String>,
    rx: mpsc::Receiver<Message>,
    finished: bool,
}

impl CsvStream {
    /// Starts reading and waits for the first piece, so that a database that cannot be reached
    /// (or a query that fails) is an error before any byte of the response is sent.
    pub async fn start(db: &DbPool, slot: ExportSlot, spec: ExportSpec, pace: Pace) -> ServiceResult<Self> {
        // Room for one message: the reader stays at most a piece ahead of the client.
        let (tx, mut rx) = mpsc::channel(1);
        let db = db.clone();
        tokio::spawn(async move {
            read(db, spec, pace, tx).await;
            drop(slot);
        });
        match rx.recv().await {
            Some(Message::Csv(first)) => Ok(Self { first: Some(first), rx, finished: false }),
            Some(Message::Failed(e)) => Err(e),
            Some(Message::Done) | None => Err(ServiceError::Internal("the CSV export ended before its header".into())),
        }
    }
}

impl Stream for CsvStream {
    type Item = ServiceResult<String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        let item = match std::task::ready!(this.rx.poll_recv(cx)) {
            Some(Message::Csv(chunk)) => return Poll::Ready(Some(Ok(chunk))),
            Some(Message::Done) => None,
            Some(Message::Failed(e)) => Some(Err(e)),
            // The reader gave up (see `Pace::stall_limit`) or died without a word.
            None => Some(Err(ServiceError::Internal("the CSV export stopped before its end".into()))),
        };
        this.finished = true;
        Poll::Ready(item)
    }
}

/// Why reading stopped early.
enum Stop {
    /// The client is gone or stopped reading: nobody to tell.
    Client,
    Failed(ServiceError),
}

impl From<ServiceError> for Stop {
    fn from(e: ServiceError) -> Self {
        Self::Failed(e)
    }
}

impl From<diesel::result::Error> for Stop {
    fn from(e: diesel::result::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// The reading task: runs the export and reports how it ended.
async fn read(db: DbPool, spec: ExportSpec, pace: Pace, tx: mpsc::Sender<Message>) {
    let last = match read_pieces(&db, &spec, pace, &tx).await {
        Ok(()) => Message::Done,
        Err(Stop::Client) => return,
        Err(Stop::Failed(e)) => Message::Failed(e),
    };
    let _ = hand_over(&tx, last, pace).await;
}

async fn hand_over(tx: &mpsc::Sender<Message>, message: Message, pace: Pace) -> Result<(), Stop> {
    match tx.send_timeout(message, pace.stall_limit).await {
        Ok(()) => Ok(()),
        Err(SendTimeoutError::Closed(_)) => Err(Stop::Client),
        Err(SendTimeoutError::Timeout(_)) => {
            tracing::warn!(limit = ?pace.stall_limit, "CSV export abandoned: the client stopped reading");
            Err(Stop::Client)
        }
    }
}

/// Reads the rollups, key after key, through a cursor in one transaction (one snapshot) and
/// hands out each piece's finished rows. Stopping early rolls the transaction back, and the
/// connection returns to the pool.
async fn read_pieces(db: &DbPool, spec: &ExportSpec, pace: Pace, tx: &mpsc::Sender<Message>) -> Result<(), Stop> {
    let mut keys: Vec<&ExportKey> = spec.keys.iter().collect();
    keys.sort_unstable_by_key(|k| k.id);
    keys.dedup_by_key(|k| k.id);
    let piece_rows = pace.piece_rows.max(1);
    let fetch = format!("FETCH FORWARD {piece_rows} FROM {CURSOR}");
    let mut conn = db::conn(db).await?;
    conn.transaction::<_, Stop, _>(|conn| {
        Box::pin(async move {
            let mut out = if spec.with_owner { HEADER_WITH_OWNER } else { HEADER }.to_owned();
            let mut done = Vec::new();
            for key in keys {
                let owner = if spec.with_owner { Some(key.owner_email.as_deref().unwrap_or_default()) } else { None };
                diesel::sql_query(format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR {KEY_ROLLUPS_OLDEST_FIRST}"))
                    .bind::<SqlUuid, _>(key.id)
                    .bind::<Timestamptz, _>(spec.range.start())
                    .bind::<Timestamptz, _>(spec.range.end())
                    .execute(conn)
                    .await?;
                let mut rows = KeyExportRows::new(spec.granularity, spec.range, key.id);
                loop {
                    let piece: Vec<KeyedRollupRow> = diesel::sql_query(&fetch).load(conn).await?;
                    let last = piece.len() < piece_rows;
                    for row in &piece {
                        rows.push(row, &mut done)?;
                    }
                    if last {
                        rows.finish(&mut done);
                    }
                    for row in done.drain(..) {
                        write_row(&mut out, &row, &key.name, owner);
                    }
                    // A piece inside one period finishes no row: nothing to send yet.
                    if !out.is_empty() {
                        hand_over(tx, Message::Csv(std::mem::take(&mut out)), pace).await?;
                    }
                    if last {
                        break;
                    }
                }
                diesel::sql_query(format!("CLOSE {CURSOR}")).execute(conn).await?;
            }
            // No keys at all: the header alone.
            if !out.is_empty() {
                hand_over(tx, Message::Csv(out), pace).await?;
            }
            Ok(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_user_holds_at_most_two_export_slots() {
        let slots = ExportSlots::new(4);
        let (first, second) = (slots.take(1).await.unwrap(), slots.take(1).await.unwrap());
        assert_eq!(slots.take(1).await.err(), Some(NoExportSlot::TooManyOfYours));
        let others = (slots.take(2).await.unwrap(), slots.take(3).await.unwrap());
        drop(first);
        let third = slots.take(1).await.expect("one of theirs ended");
        drop((second, third, others));
        assert!(slots.running.lock().unwrap().is_empty(), "nothing counted once all ended");
    }

    #[test]
    fn quoting() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("=SUM(A1:A9)"), "'=SUM(A1:A9)");
        assert_eq!(field("-1,2"), "\"'-1,2\"");
    }
}
