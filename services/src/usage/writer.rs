//! The writer moves usage from the Redis stream into PostgreSQL: raw events into the
//! day-partitioned `api_key_usage` (idempotent on request id) and rollups per minute, hour and
//! day into `api_key_usage_minute` / `_hour` / `_day`, in one transaction per batch. A stream entry is acknowledged only
//! after its transaction commits, so a crash or a PostgreSQL outage delays usage but loses none;
//! a replayed entry inserts nothing twice and adds nothing twice to the rollups.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_redis::redis::{self, streams::StreamReadReply, Value};
use diesel::sql_types::{Array, BigInt, Bool, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tokio::sync::watch;
use uuid::Uuid;

use super::histogram::LatencyHistogram;
use super::recorder::stream_name;
use super::set_aside;
use super::{time_from_ms, UsageEvent};
use crate::db::{self, DbPool};
use crate::housekeeping::ensure_partitions;
use crate::keys::Window;
use crate::metrics::Metrics;
use crate::public_url::PublicUrl;
use crate::redis_pool::{self, RedisPool};
use crate::{alerts, ServiceError, ServiceResult, Services};

pub const GROUP: &str = "pg-writer";
/// Stream entries read per round (each holds one recorder batch: up to a few thousand events).
const ENTRIES_PER_READ: usize = 100;
/// Under light load, a round that found fewer events than this waits a little before the next,
/// so that transactions stay few and large.
const GATHER_EVENTS: usize = 1_000;
const GATHER_FOR: Duration = Duration::from_millis(150);
/// Entries left unacknowledged this long by a writer that died are taken over.
const CLAIM_IDLE_MS: u64 = 30_000;
/// How often to look for such entries.
const CLAIM_EVERY: Duration = Duration::from_secs(5);
/// A consumer (a writer of an instance) silent this long is taken for gone.
const DEPARTED_AFTER_MS: u64 = 3_600_000;
/// [`forget_departed_consumers`]: ARGV group, consumer to keep, idle time in ms.
const FORGET_DEPARTED: &str = r"
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local f = {}
    for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
    if f['name'] ~= ARGV[2] and tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
        n = n + 1
    end
end
return n
";
/// Tries of one entry PostgreSQL refuses before it is set aside.
const ENTRY_ATTEMPTS: u32 = 3;

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Events written to PostgreSQL.
    pub events: usize,
    /// The stream had no more entries for this writer after this round.
    pub caught_up: bool,
    /// The newest of the new entries it read (none: it read none, or only older ones left by
    /// this writer or taken over from a dead one).
    newest: Option<EntryId>,
}

/// A stream entry's id, `<ms>-<sequence>`, ordered as the stream orders entries; the ms are
/// when Redis added it, by its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId(u64, u64);

impl EntryId {
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// When Redis added the entry, in ms since the epoch.
    pub fn added_ms(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

/// The id of `stream`'s oldest entry, if it has any.
pub(crate) async fn oldest_entry(conn: &mut redis_pool::RedisConn, stream: &str) -> ServiceResult<Option<EntryId>> {
    let oldest: Vec<(String, HashMap<String, Value>)> =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await?;
    Ok(oldest.into_iter().next().and_then(|(id, _)| EntryId::parse(&id)))
}

pub struct UsageWriter {
    db: DbPool,
    redis: RedisPool,
    /// For links in the quota alerts that the writer sends.
    public_url: PublicUrl,
    consumer: String,
    stream: String,
    partitions: HashSet<NaiveDate>,
    /// The consumer group is known to exist (checked again after any error).
    group_ready: bool,
    /// This writer may have entries read but not acknowledged (at start, and after an error).
    own_pending: bool,
    last_claim: Option<std::time::Instant>,
    metrics: Arc<Metrics>,
}

impl UsageWriter {
    pub fn new(services: &Services) -> Self {
        Self::from_parts(
            services.db.clone(),
            services.redis.clone(),
            &services.namespace,
            &services.settings.public_url,
            services.metrics.clone(),
        )
    }

    /// What it writes from the stream and sets aside is counted in `metrics`.
    pub fn from_parts(
        db: DbPool,
        redis: RedisPool,
        namespace: &str,
        public_url: &PublicUrl,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            redis,
            public_url: public_url.clone(),
            consumer: format!("writer-{}", Uuid::new_v4().simple()),
            stream: stream_name(namespace),
            partitions: HashSet::new(),
            group_ready: false,
            own_pending: true,
            last_claim: None,
            metrics,
        }
    }

    /// Runs until `stop` turns true or its sender is gone (the server was dropped), then drains
    /// what is in the stream at that moment and returns: what other instances add after it is
    /// theirs to store (their traffic could otherwise hold the stop until its time ran out).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // Beside the writing: a PostgreSQL that does not answer must not hold the writer up.
        tokio::spawn(warn_if_messages_not_in_english(self.db.clone()));
        let mut backoff = Duration::from_millis(100);
        let mut outage = crate::outage_log::OutageLog::new("usage writer");
        // The stream's newest entry when the stop came (unknown: drain until caught up).
        let mut drain_to: Option<Option<EntryId>> = None;
        loop {
            let stopping = *stop.borrow() || stop.has_changed().is_err();
            if stopping && drain_to.is_none() {
                drain_to = Some(self.newest_entry().await.ok());
            }
            let step = self.step(if stopping { 0 } else { 200 }).await;
            if step.is_ok() {
                outage.succeeded();
            }
            match step {
                Ok(Round { events: 0, caught_up: true, .. }) if stopping => return,
                Ok(Round { newest: Some(read), .. }) if drain_to.flatten().is_some_and(|to| read >= to) => return,
                Ok(round) => {
                    backoff = Duration::from_millis(100);
                    // Under light load, let a few entries gather: fewer, larger transactions.
                    // A writer with a backlog goes straight on.
                    if !stopping && round.caught_up && round.events > 0 && round.events < GATHER_EVENTS {
                        tokio::select! {
                            _ = tokio::time::sleep(GATHER_FOR) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
                Err(e) => {
                    outage.failed(&e, "will retry");
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One round: this writer's own unacknowledged entries first (left by a failed commit),
    /// then entries abandoned by dead writers (every few seconds), then new ones.
    pub async fn step(&mut self, block_ms: usize) -> ServiceResult<Round> {
        let round = self.try_step(block_ms).await;
        if round.is_err() {
            // Whatever failed, start the next round from what Redis holds.
            self.group_ready = false;
            self.own_pending = true;
        }
        round
    }

    async fn try_step(&mut self, block_ms: usize) -> ServiceResult<Round> {
        if !self.group_ready {
            self.ensure_group().await?;
            self.group_ready = true;
        }
        if self.own_pending {
            let pending = self.read("0", None).await?;
            if !pending.is_empty() {
                return Ok(Round { events: self.write_and_ack(pending).await?, caught_up: false, newest: None });
            }
            self.own_pending = false;
        }
        if self.last_claim.is_none_or(|at| at.elapsed() >= CLAIM_EVERY) {
            let claimed = self.claim_abandoned().await?;
            if claimed.len() == ENTRIES_PER_READ {
                // More may be waiting: look again next round.
                self.last_claim = None;
            } else {
                self.last_claim = Some(std::time::Instant::now());
            }
            if !claimed.is_empty() {
                return Ok(Round { events: self.write_and_ack(claimed).await?, caught_up: false, newest: None });
            }
            self.forget_departed_consumers().await;
        }
        let fresh = self.read(">", Some(block_ms)).await?;
        let caught_up = fresh.len() < ENTRIES_PER_READ;
        let newest = fresh.iter().filter_map(|(id, _)| EntryId::parse(id)).max();
        Ok(Round { events: self.write_and_ack(fresh).await?, caught_up, newest })
    }

    /// The id of the stream's newest entry; `0-0` when it is empty (nothing to drain).
    async fn newest_entry(&self) -> ServiceResult<EntryId> {
        let mut conn = redis_pool::conn(&self.redis).await?;
        let newest: Vec<(String, HashMap<String, Value>)> = redis::cmd("XREVRANGE")
            .arg(&self.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(newest.into_iter().next().and_then(|(id, _)| EntryId::parse(&id)).unwrap_or(EntryId(0, 0)))
    }

    async fn ensure_group(&self) -> ServiceResult<()> {
        let mut conn = redis_pool::conn(&self.redis).await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(&self, from: &str, block_ms: Option<usize>) -> ServiceResult<Vec<Entry>> {
        let mut conn = redis_pool::conn(&self.redis).await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&self.consumer).arg("COUNT").arg(ENTRIES_PER_READ);
        if let Some(ms) = block_ms.filter(|&ms| ms > 0) {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: Option<StreamReadReply> = cmd.query_async(&mut conn).await?;
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                let events = decode_batch(entry.map.get("b"));
                out.push((entry.id, events));
            }
        }
        Ok(out)
    }

    async fn claim_abandoned(&self) -> ServiceResult<Vec<Entry>> {
        let mut conn = redis_pool::conn(&self.redis).await?;
        type Claimed = (String, Vec<(String, HashMap<String, Value>)>, Vec<String>);
        let reply: Claimed = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(CLAIM_IDLE_MS)
            .arg("0")
            .arg("COUNT")
            .arg(ENTRIES_PER_READ)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .1
            .into_iter()
            .map(|(id, fields)| {
                let events = decode_batch(fields.get("b"));
                (id, events)
            })
            .collect())
    }

    /// Every instance that ever ran left a consumer in the group: see [`forget_departed_consumers`].
    /// Tidying only: a failure (a Redis user without `XINFO`) must not hold up the writing.
    async fn forget_departed_consumers(&self) {
        match forget_departed_consumers(&self.redis, &self.stream, &self.consumer, DEPARTED_AFTER_MS).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(consumers = n, "usage writer: departed instances' consumers removed from the group")
            }
            Err(e) => tracing::debug!(error = %e, "usage writer: departed consumers not removed"),
        }
    }

    async fn write_and_ack(&mut self, entries: Vec<Entry>) -> ServiceResult<usize> {
        // An entry that cannot be read would block the stream forever: it is set aside as it is.
        let mut readable = Vec::with_capacity(entries.len());
        for (id, decoded) in entries {
            match decoded {
                Ok(events) => readable.push((id, events)),
                Err(Unreadable { raw, why }) => self.set_aside(&id, &raw, 0, &format!("unreadable: {why}")).await?,
            }
        }
        let entries = readable;
        if entries.is_empty() {
            return Ok(0);
        }
        // The entries' events are moved into one batch, not copied; `ends` remembers where
        // each entry's events end, should they have to be written entry by entry.
        let mut ids = Vec::with_capacity(entries.len());
        let mut ends = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        for (id, mut entry_events) in entries {
            ids.push(id);
            events.append(&mut entry_events);
            ends.push(events.len());
        }
        match self.write(&events).await {
            Ok(stored) => {
                self.ack(&ids).await?;
                self.metrics.written(stored);
            }
            Err(e) if refused_by_postgres(&e) => {
                tracing::warn!(error = %e, entries = ids.len(), "usage writer: PostgreSQL refused a batch; writing its entries one by one");
                let mut start = 0;
                for (id, &end) in ids.iter().zip(&ends) {
                    self.write_one_entry(id, &events[start..end]).await?;
                    start = end;
                }
            }
            Err(e) => return Err(e),
        }
        Ok(events.len())
    }

    /// Writes one stream entry, retried a few times; if PostgreSQL still refuses it (not a
    /// connection failure: the data itself), it is set aside so that it cannot hold up all the
    /// usage behind it.
    async fn write_one_entry(&mut self, id: &str, events: &[UsageEvent]) -> ServiceResult<()> {
        let mut last = None;
        for attempt in 0..ENTRY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match self.write(events).await {
                Ok(stored) => {
                    self.ack(&[id.to_owned()]).await?;
                    self.metrics.written(stored);
                    return Ok(());
                }
                Err(e) if refused_by_postgres(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let why = last.map(|e| e.to_string()).unwrap_or_default();
        // Only if PostgreSQL answers anything else: then it is this entry it refuses, not a
        // passing trouble of the server (a restart, a timeout) that the next round outlives.
        if !self.postgres_answers().await {
            return Err(ServiceError::DatabaseUnavailable(why));
        }
        let payload = serde_json::to_vec(events).map_err(|e| ServiceError::Internal(format!("usage encode: {e}")))?;
        self.set_aside(id, &payload, events.len(), &why).await
    }

    async fn postgres_answers(&self) -> bool {
        let Ok(mut conn) = db::conn(&self.db).await else { return false };
        diesel::sql_query("SELECT 1").execute(&mut conn).await.is_ok()
    }

    /// Moves an entry PostgreSQL refuses to the set-aside stream, with the error, for an
    /// operator to look at (see [`set_aside`](super::set_aside)); only then is it acknowledged.
    async fn set_aside(&self, id: &str, payload: &[u8], events: usize, why: &str) -> ServiceResult<()> {
        set_aside::keep(&self.redis, &self.stream, id, payload, why).await?;
        tracing::error!(
            entry = id,
            events,
            error = why,
            stream = set_aside::stream_name(&self.stream),
            "usage writer: a stream entry PostgreSQL refuses or nobody can read is set aside so that later usage is stored \
             (`keymeter usage set-aside` lists them)"
        );
        self.ack(&[id.to_owned()]).await?;
        self.metrics.set_aside();
        Ok(())
    }

    async fn ack(&self, ids: &[String]) -> ServiceResult<()> {
        let mut conn = redis_pool::conn(&self.redis).await?;
        let _: () = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(ids)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Writes a batch in one transaction; events already stored are skipped, and only the newly
    /// stored ones are added to the rollups. Returns how many were new.
    pub async fn write(&mut self, events: &[UsageEvent]) -> ServiceResult<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let days: Vec<NaiveDate> = events
            .iter()
            .map(|e| time_from_ms(e.at_ms).date_naive())
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|d| !self.partitions.contains(d))
            .collect();
        let mut conn = db::conn(&self.db).await?;
        if !days.is_empty() {
            // Usually made ahead by the housekeeping; otherwise (old events, a first start) here.
            ensure_partitions(&mut conn, &days).await?;
            self.partitions.extend(days);
        }

        // In request id order, as the rollups go in key order: two writers storing the same
        // events (a claimed-over entry, the recorder's fallback) wait in line, not in a circle.
        let mut ordered: Vec<&UsageEvent> = events.iter().collect();
        ordered.sort_unstable_by_key(|e| e.request_id);
        let columns = EventColumns::from(ordered.as_slice());
        let public_url = &self.public_url;
        let mut last_used = LastUsed::default();
        let last_used_ref = &mut last_used;
        let written = conn
            .transaction::<_, ServiceError, _>(|conn| {
                Box::pin(async move {
                    let inserted: Vec<Inserted> = diesel::sql_query(
                        "INSERT INTO api_key_usage (request_id, api_key_id, occurred_at, method, endpoint, status, \
                     latency_us, bytes_in, bytes_out, throttled, enforced) \
                     SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT DO NOTHING RETURNING request_id",
                    )
                    .bind::<Array<SqlUuid>, _>(&columns.request_id)
                    .bind::<Array<SqlUuid>, _>(&columns.key_id)
                    .bind::<Array<Timestamptz>, _>(&columns.at)
                    .bind::<Array<Text>, _>(&columns.method)
                    .bind::<Array<Text>, _>(&columns.endpoint)
                    .bind::<Array<SmallInt>, _>(&columns.status)
                    .bind::<Array<BigInt>, _>(&columns.latency_us)
                    .bind::<Array<BigInt>, _>(&columns.bytes_in)
                    .bind::<Array<BigInt>, _>(&columns.bytes_out)
                    .bind::<Array<Bool>, _>(&columns.throttled)
                    .bind::<Array<Bool>, _>(&columns.enforced)
                    .load(conn)
                    .await?;
                    let mut new: HashSet<Uuid> = inserted.into_iter().map(|r| r.request_id).collect();
                    // Each stored request once, even if the batch holds it twice (a hand-off
                    // retried after its reply was lost): the rollups must equal the events.
                    let fresh: Vec<&UsageEvent> = events.iter().filter(|e| new.remove(&e.request_id)).collect();
                    let fresh = || fresh.iter().copied();
                    last_used_ref.extend(fresh());
                    if fresh().next().is_some() {
                        Rollups::of(fresh(), 60_000).upsert(conn, "api_key_usage_minute").await?;
                        Rollups::of(fresh(), Window::Hour.length_ms()).upsert(conn, "api_key_usage_hour").await?;
                        Rollups::of(fresh(), Window::Day.length_ms()).upsert(conn, "api_key_usage_day").await?;
                        let crossings: Vec<_> =
                            fresh().flat_map(|e| e.alerts.iter().map(|c| (e.key_id, e.at_ms, *c))).collect();
                        alerts::record(conn, &crossings, public_url).await?;
                    }
                    Ok(fresh().count())
                })
            })
            .await;
        if written.is_err() {
            // One of the partitions this writer knows may have been dropped since (an old
            // event's day, past the retention): make them again on the next try.
            self.partitions.clear();
        } else if let Err(e) = last_used.store(&mut conn).await {
            // The usage is stored; only "last used" on the key list lags until the next batch.
            tracing::warn!(error = %e, "usage writer: keys' last use not updated");
        }
        written
    }
}

/// Removes the writers' group's consumers other than `keep` that have nothing pending (what
/// they held has been claimed) and have been silent over `idle_over_ms`, so that the group lists
/// the writers that exist; returns how many. In one script: a consumer that received an entry
/// between a check and its removal would lose that entry's place in the group.
pub async fn forget_departed_consumers(
    redis: &RedisPool,
    stream: &str,
    keep: &str,
    idle_over_ms: u64,
) -> ServiceResult<i64> {
    let mut conn = redis_pool::conn(redis).await?;
    Ok(redis::Script::new(FORGET_DEPARTED)
        .key(stream)
        .arg(GROUP)
        .arg(keep)
        .arg(idle_over_ms)
        .invoke_async(&mut conn)
        .await?)
}

/// Usage handed off but not yet stored in PostgreSQL, deployment-wide (every instance's
/// recorder feeds the one stream, and writers delete what they have stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Stream entries (batches of events) waiting to be written.
    pub entries: u64,
    /// How long the oldest of them has waited, in ms (0 when none waits), by this instance's
    /// clock against the id Redis gave the entry.
    pub oldest_wait_ms: u64,
    /// Entries PostgreSQL refused, kept for an operator (see [`set_aside`]).
    pub set_aside: u64,
}

pub async fn backlog(redis: &RedisPool, namespace: &str) -> ServiceResult<Backlog> {
    let stream = stream_name(namespace);
    let mut conn = redis_pool::conn(redis).await?;
    // The two streams' keys may live on different nodes of a cluster: a command each.
    let entries: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await?;
    let oldest = oldest_entry(&mut conn, &stream).await?;
    let set_aside: u64 = redis::cmd("XLEN").arg(set_aside::stream_name(&stream)).query_async(&mut conn).await?;
    let oldest_wait_ms = oldest.map_or(0, |id| (Utc::now().timestamp_millis() - id.added_ms()).max(0).unsigned_abs());
    Ok(Backlog { entries, oldest_wait_ms, set_aside })
}

/// PostgreSQL answered and refused the statement (bad data, a value out of range), as opposed
/// to being unreachable. Conflicts between concurrent transactions, timeouts and cancellations
/// are not refusals: they pass. (diesel gives no SQLSTATE for most errors, only PostgreSQL's
/// message, in English unless the server's `lc_messages` says otherwise.)
fn refused_by_postgres(e: &ServiceError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    const PASSING: [&str; 6] = [
        "deadlock",
        "could not serialize",
        "lock timeout",
        "canceling statement",
        "terminating connection",
        "could not obtain lock",
    ];
    match e {
        ServiceError::Database(Error::DatabaseError(kind, info)) => {
            !matches!(kind, DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::ClosedConnection)
                && !PASSING.iter().any(|p| info.message().contains(p))
        }
        ServiceError::Invalid { .. } | ServiceError::Conflict(_) => true,
        _ => false,
    }
}

/// [`refused_by_postgres`] reads PostgreSQL's messages, which come in the language of
/// `lc_messages`: in another one, a passing conflict (a deadlock, a lock timeout) looks like a
/// refusal, and its entries are retried one at a time, then set aside for an operator. Said
/// once, when the writer starts; a failed check says nothing (the writer reports outages).
async fn warn_if_messages_not_in_english(db: DbPool) {
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        lc_messages: String,
    }
    let Ok(mut conn) = db::conn(&db).await else { return };
    let setting = diesel::sql_query("SELECT current_setting('lc_messages') AS lc_messages")
        .get_result::<Setting>(&mut conn)
        .await;
    if let Ok(Setting { lc_messages }) = setting {
        if !messages_in_english(&lc_messages) {
            tracing::warn!(
                lc_messages,
                "PostgreSQL's messages are not in English: the usage writer may take a deadlock or a lock timeout \
                 for refused data and set entries aside; have lc_messages set to 'C' for keymeter's database or role"
            );
        }
    }
}

/// Whether a `lc_messages` value gives PostgreSQL's own (English) messages. Empty means the
/// server's environment decides: not known, so not warned about.
fn messages_in_english(locale: &str) -> bool {
    let locale = locale.trim().to_ascii_lowercase();
    locale.is_empty()
        || locale == "c"
        || locale == "posix"
        || locale.starts_with("c.")
        || locale.starts_with("en_")
        || locale.starts_with("en-")
        || locale == "en"
        // Windows' names.
        || locale.starts_with("english")
}

/// A usage stream entry: its id, and its events or why they cannot be read.
type Entry = (String, Result<Vec<UsageEvent>, Unreadable>);

/// A stream entry's payload that is not a batch of events (written by something else than a
/// recorder, or damaged), kept as it is for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreadable {
    pub raw: Vec<u8>,
    pub why: String,
}

/// The events of a stream entry's payload (its `b` field: the recorder's JSON), with their
/// measures bounded as the recorder bounds them.
pub(crate) fn decode_batch(payload: Option<&Value>) -> Result<Vec<UsageEvent>, Unreadable> {
    let Some(raw) = payload.and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok()) else {
        return Err(Unreadable { raw: Vec::new(), why: "no events field".to_owned() });
    };
    match serde_json::from_slice::<Vec<UsageEvent>>(&raw) {
        Ok(events) => Ok(events.into_iter().map(UsageEvent::bounded).collect()),
        Err(e) => Err(Unreadable { raw, why: e.to_string() }),
    }
}

#[derive(diesel::QueryableByName)]
struct Inserted {
    #[diesel(sql_type = SqlUuid)]
    request_id: Uuid,
}

/// A batch of events as one array per column, for `unnest`.
#[derive(Default)]
struct EventColumns {
    request_id: Vec<Uuid>,
    key_id: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    method: Vec<String>,
    endpoint: Vec<String>,
    status: Vec<i16>,
    latency_us: Vec<i64>,
    bytes_in: Vec<i64>,
    bytes_out: Vec<i64>,
    throttled: Vec<bool>,
    enforced: Vec<bool>,
}

impl From<&[&UsageEvent]> for EventColumns {
    fn from(events: &[&UsageEvent]) -> Self {
        let mut c = Self::default();
        for e in events {
            c.request_id.push(e.request_id);
            c.key_id.push(e.key_id);
            c.at.push(time_from_ms(e.at_ms));
            c.method.push(e.method.clone());
            c.endpoint.push(e.endpoint.clone());
            c.status.push(e.status as i16);
            c.latency_us.push(e.latency_us.min(i64::MAX as u64) as i64);
            c.bytes_in.push(e.bytes_in.min(i64::MAX as u64) as i64);
            c.bytes_out.push(e.bytes_out.min(i64::MAX as u64) as i64);
            c.throttled.push(e.throttled);
            c.enforced.push(e.enforced);
        }
        c
    }
}

type RollupKey = (Uuid, i64, String, String, u16);

#[derive(Default)]
struct Rollup {
    requests: i64,
    throttled: i64,
    bytes_in: i64,
    bytes_out: i64,
    latency: LatencyHistogram,
}

/// Ordered by key: every writer upserts rows in the same order, so concurrent writers (one per
/// instance, and the recorder's fallback) adding to the same rows queue behind each other instead
/// of deadlocking (each holding a row the other waits for).
struct Rollups(BTreeMap<RollupKey, Rollup>);

impl Rollups {
    /// Sums events per period of `period_ms` (a minute, an hour or a day) and dimension.
    fn of<'a>(events: impl Iterator<Item = &'a UsageEvent>, period_ms: i64) -> Self {
        let mut map: BTreeMap<RollupKey, Rollup> = BTreeMap::new();
        for e in events {
            let period = e.at_ms - e.at_ms.rem_euclid(period_ms);
            let r = map.entry((e.key_id, period, e.method.clone(), e.endpoint.clone(), e.status)).or_default();
            if e.throttled {
                r.throttled += 1;
            } else {
                r.requests += 1;
                r.latency.record(e.latency_us);
            }
            r.bytes_in = r.bytes_in.saturating_add(i64::try_from(e.bytes_in).unwrap_or(i64::MAX));
            r.bytes_out = r.bytes_out.saturating_add(i64::try_from(e.bytes_out).unwrap_or(i64::MAX));
        }
        Self(map)
    }

    /// Adds the sums to `table` (a rollup table; a fixed name, never user input).
    async fn upsert(&self, conn: &mut diesel_async::AsyncPgConnection, table: &'static str) -> ServiceResult<()> {
        let mut key_id = Vec::new();
        let mut minute = Vec::new();
        let mut method = Vec::new();
        let mut endpoint = Vec::new();
        let mut status = Vec::new();
        let (mut requests, mut throttled, mut bytes_in, mut bytes_out, mut hist) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((k, m, me, ep, st), r) in &self.0 {
            key_id.push(*k);
            minute.push(time_from_ms(*m));
            method.push(me.clone());
            endpoint.push(ep.clone());
            status.push(*st as i16);
            requests.push(r.requests);
            throttled.push(r.throttled);
            bytes_in.push(r.bytes_in);
            bytes_out.push(r.bytes_out);
            hist.push(serde_json::to_string(&r.latency).unwrap_or_else(|_| "{}".into()));
        }
        diesel::sql_query(format!(
            "INSERT INTO {table} AS u (api_key_id, period_start, method, endpoint, status, requests, \
             throttled, bytes_in, bytes_out, latency_hist) \
             SELECT k, m, me, ep, st, rq, th, bi, bo, h::jsonb \
             FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) AS t(k, m, me, ep, st, rq, th, bi, bo, h) \
             ON CONFLICT (api_key_id, period_start, method, endpoint, status) DO UPDATE SET \
             requests = u.requests + EXCLUDED.requests, throttled = u.throttled + EXCLUDED.throttled, \
             bytes_in = u.bytes_in + EXCLUDED.bytes_in, bytes_out = u.bytes_out + EXCLUDED.bytes_out, \
             latency_hist = km_hist_merge(u.latency_hist, EXCLUDED.latency_hist)"
        ))
        .bind::<Array<SqlUuid>, _>(&key_id)
        .bind::<Array<Timestamptz>, _>(&minute)
        .bind::<Array<Text>, _>(&method)
        .bind::<Array<Text>, _>(&endpoint)
        .bind::<Array<SmallInt>, _>(&status)
        .bind::<Array<BigInt>, _>(&requests)
        .bind::<Array<BigInt>, _>(&throttled)
        .bind::<Array<BigInt>, _>(&bytes_in)
        .bind::<Array<BigInt>, _>(&bytes_out)
        .bind::<Array<Text>, _>(&hist)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The latest use of each key in a batch, for `api_keys.last_used_at` (one statement per batch,
/// not per request). Stored after the batch's commit, on its own: the batch's transaction then
/// never waits for a key's row (a quota change holds it), and the keys are locked in id order,
/// so writers updating the same keys queue instead of deadlocking.
#[derive(Default)]
struct LastUsed(BTreeMap<Uuid, i64>);

impl LastUsed {
    fn extend<'a>(&mut self, events: impl Iterator<Item = &'a UsageEvent>) {
        for e in events {
            let at = self.0.entry(e.key_id).or_insert(e.at_ms);
            *at = (*at).max(e.at_ms);
        }
    }

    async fn store(self, conn: &mut diesel_async::AsyncPgConnection) -> ServiceResult<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) =
            self.0.into_iter().map(|(k, t)| (k, time_from_ms(t))).unzip();
        conn.transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                diesel::sql_query("SELECT id FROM api_keys WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
                    .bind::<Array<SqlUuid>, _>(&ids)
                    .execute(conn)
                    .await?;
                diesel::sql_query(
                    "UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, t.at), t.at) \
                     FROM unnest($1, $2) AS t(id, at) WHERE api_keys.id = t.id",
                )
                .bind::<Array<SqlUuid>, _>(&ids)
                .bind::<Array<Timestamptz>, _>(&times)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_batch, messages_in_english, UsageEvent, Value};

    #[test]
    fn a_batch_is_read_with_its_measures_capped_or_kept_whole_when_unreadable() {
        let json = r#"[{"r":"0190f5b2-0000-7000-8000-000000000001","k":"0190f5b2-0000-7000-8000-000000000002",
            "t":1,"m":"GET","e":"/api/v1/ping","s":200,"l":18446744073709551615,"i":1,"o":2,"q":false}]"#;
        let events = decode_batch(Some(&Value::BulkString(json.as_bytes().to_vec()))).unwrap();
        assert_eq!(events[0].latency_us, UsageEvent::MAX_MEASURE, "as the recorder caps it");
        for raw in [&b"not json"[..], br#"[1,2,3]"#, br#"[{"s":99999}]"#] {
            let unreadable = decode_batch(Some(&Value::BulkString(raw.to_vec()))).unwrap_err();
            assert_eq!(unreadable.raw, raw, "kept as it was");
        }
        assert!(decode_batch(None).is_err());
    }

    #[test]
    fn only_english_message_locales_pass_without_a_warning() {
        for english in ["C", "C.UTF-8", "POSIX", "en_US.UTF-8", "en_GB.utf8", "", "English_United States.1252"] {
            assert!(messages_in_english(english), "{english}");
        }
        for other in ["de_DE.UTF-8", "fr_FR.utf8", "ja_JP.UTF-8", "pt_BR", "es"] {
            assert!(!messages_in_english(other), "{other}");
        }
    }
}
