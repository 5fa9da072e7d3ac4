//! The recorder takes usage events from the request path and hands them to Redis in batches:
//! one stream entry per batch (read by the [`writer`](super::writer)) and the per-minute live
//! counters, in one pipelined round trip (on a Redis Cluster the counters follow the entry).
//!
//! The hand-off is durable before the client has its answer: the usage tracker awaits
//! [`UsageRecorder::record_durably`], which resolves once the event's batch is in Redis (group
//! commit: events that arrive while a batch is in flight form the next one, so concurrent
//! requests share round trips). A crashed instance therefore loses no answered request's usage.
//! If Redis cannot take a batch, it is written straight to PostgreSQL (idempotently, by request
//! id); if neither answers, the batch stays in memory and is retried, and waiting requests are
//! released after [`HANDOFF_WAIT`] so that clients are still answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::redis;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::live::{minute_key, MinuteCounters};
use super::writer::UsageWriter;
use super::UsageEvent;
use crate::metrics::{HandOff, Metrics};
use crate::outage_log::OutageLog;
use crate::redis_pool::{RedisPool, SharedConnection};

/// The Redis stream between recorders and writers, within a namespace (one per deployment
/// sharing a Redis; tests use one per database).
pub fn stream_name(namespace: &str) -> String {
    format!("{namespace}:usage:events")
}
/// Most events per stream entry.
const MAX_BATCH: usize = 2_000;
/// How long a batch nobody waits for may gather more events (fewer, larger writes downstream).
const LINGER: Duration = Duration::from_millis(100);
/// Events queued in memory before new ones are refused (and counted as dropped).
const QUEUE: usize = 200_000;
/// How long a Redis hand-off may take before the batch goes to PostgreSQL instead.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// A wait for Redis that ran out this long before a batch came: the hand-offs went quiet.
const QUIET_AFTER: Duration = Duration::from_secs(1);
/// The longest a request waits for its event's hand-off; after that it is answered anyway and
/// the event waits in memory (only when Redis and PostgreSQL are both unavailable).
pub const HANDOFF_WAIT: Duration = Duration::from_secs(3);

struct Item {
    event: UsageEvent,
    handed_off: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
pub struct UsageRecorder {
    tx: Arc<Mutex<Option<mpsc::Sender<Item>>>>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    metrics: Arc<Metrics>,
}

impl UsageRecorder {
    /// Starts the background flusher on the current Tokio runtime, handing off on `redis` (a
    /// multiplexed connection, shared with the quota checks). `fallback` writes batches
    /// straight to PostgreSQL when Redis cannot take them. What it does is counted in `metrics`.
    pub fn start(
        redis: SharedConnection,
        namespace: &str,
        fallback: Option<UsageWriter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(flush_loop(redis, stream_name(namespace), rx, fallback, metrics.clone()));
        Self { tx: Arc::new(Mutex::new(Some(tx))), task: Arc::new(Mutex::new(Some(task))), metrics }
    }

    fn send(&self, item: Item) -> bool {
        self.metrics.recorded(&item.event);
        let sender = self.tx.lock().ok().and_then(|tx| tx.clone());
        let queued = sender.map(|tx| tx.try_send(item).is_ok()).unwrap_or(false);
        if !queued {
            let n = self.metrics.dropped();
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "usage queue full or closed: events dropped");
            }
        }
        queued
    }

    /// Queues an event without waiting (for requests whose client is already gone).
    pub fn record(&self, event: UsageEvent) {
        self.send(Item { event: event.bounded(), handed_off: None });
    }

    /// Queues an event and waits until it is stored durably (Redis stream or PostgreSQL), or
    /// [`HANDOFF_WAIT`] at most. Returns whether it was stored in time.
    pub async fn record_durably(&self, event: UsageEvent) -> bool {
        let (done, handed_off) = oneshot::channel();
        if !self.send(Item { event: event.bounded(), handed_off: Some(done) }) {
            return false;
        }
        matches!(tokio::time::timeout(HANDOFF_WAIT, handed_off).await, Ok(Ok(())))
    }

    /// Stops accepting events and waits until every queued event has been handed off.
    pub async fn shutdown(&self) {
        let sender = self.tx.lock().ok().and_then(|mut tx| tx.take());
        drop(sender);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn flush_loop(
    redis: SharedConnection,
    stream: String,
    mut rx: mpsc::Receiver<Item>,
    mut fallback: Option<UsageWriter>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<Item> = Vec::with_capacity(MAX_BATCH);
    let mut redis_state = RedisState::default();
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        // Whatever is already queued joins at once.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        // Nobody waits for this batch: let it gather a while longer.
        if batch.iter().all(|i| i.handed_off.is_none()) {
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(item)) => {
                        let waiting = item.handed_off.is_some();
                        batch.push(item);
                        if waiting {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        let handed = batch.len();
        let to = hand_off_until_done(&redis, &stream, fallback.as_mut(), &mut redis_state, &mut batch).await;
        metrics.handed_off(to, handed);
    }
    // Closed: whatever was queued has been handed off above (`recv` drains before None).
}

/// Whether hand-offs go to Redis. After a failed attempt Redis is left alone for a second
/// (batches go straight to PostgreSQL), then a probe beside the batches tries it again, and
/// batches go back to it once it answered: while Redis hangs, no batch (and no request waiting
/// for its hand-off) waits out the timeout again after the one that met the hang.
struct RedisState {
    /// When Redis may be tried again, while it is down.
    retry_at: Option<tokio::time::Instant>,
    /// A try under way, and what it came to.
    probe: Option<oneshot::Receiver<Result<(), String>>>,
    log: OutageLog,
    /// Neither Redis nor PostgreSQL took a batch (it is retried until one does).
    stuck: OutageLog,
}

impl Default for RedisState {
    fn default() -> Self {
        Self {
            retry_at: None,
            probe: None,
            log: OutageLog::new("usage hand-off to Redis"),
            stuck: OutageLog::new("usage hand-off (Redis and PostgreSQL)"),
        }
    }
}

impl RedisState {
    /// Whether the next batch goes to Redis: while it is up, once a probe found it answering
    /// again, or when no batch came for a while after the wait ran out (Redis may be back for
    /// long; the batch's live counters would be missed for nothing). Else starts that probe
    /// when the wait has run out.
    fn may_try(&mut self, redis: &SharedConnection, stream: &str) -> bool {
        let Some(retry_at) = self.retry_at else { return true };
        if let Some(probe) = &mut self.probe {
            match probe.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Ok(Ok(())) => {
                    self.probe = None;
                    self.succeeded();
                    return true;
                }
                Ok(Err(why)) => {
                    self.probe = None;
                    self.failed(&why);
                    return false;
                }
                // Its task is gone (the runtime is stopping): tried again below.
                Err(oneshot::error::TryRecvError::Closed) => self.probe = None,
            }
        }
        let now = tokio::time::Instant::now();
        if now >= retry_at + QUIET_AFTER {
            return true;
        }
        if now >= retry_at {
            self.probe = Some(probe(redis.clone(), stream.to_owned()));
        }
        false
    }

    fn failed(&mut self, why: &str) {
        self.log.failed(&why, "events go straight to PostgreSQL; Redis is tried again every second");
        self.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
        self.log.succeeded();
    }
}

async fn hand_off_until_done(
    redis: &SharedConnection,
    stream: &str,
    mut fallback: Option<&mut UsageWriter>,
    redis_state: &mut RedisState,
    batch: &mut Vec<Item>,
) -> HandOff {
    let (events, waiters): (Vec<UsageEvent>, Vec<Option<oneshot::Sender<()>>>) =
        batch.drain(..).map(|i| (i.event, i.handed_off)).unzip();
    let mut backoff = Duration::from_millis(50);
    loop {
        let stored = if redis_state.may_try(redis, stream) {
            match tokio::time::timeout(REDIS_TIMEOUT, flush(redis, stream, &events)).await {
                Ok(Ok(())) => {
                    redis_state.succeeded();
                    Some(HandOff::Redis)
                }
                Ok(Err(e)) => {
                    redis_state.failed(&e.to_string());
                    None
                }
                Err(_) => {
                    // The shared connection may be stuck behind the slow reply.
                    redis.reset();
                    redis_state.failed("timed out");
                    None
                }
            }
        } else {
            None
        };
        let stored = match stored {
            Some(to) => Some(to),
            None => match fallback.as_deref_mut() {
                Some(writer) => match writer.write(&events).await {
                    Ok(_) => Some(HandOff::Postgres),
                    Err(pg) => {
                        redis_state.stuck.failed(&pg, "events stay queued here, retried");
                        None
                    }
                },
                None => {
                    redis_state.stuck.failed(&"no PostgreSQL fallback", "events stay queued here, retried");
                    None
                }
            },
        };
        if let Some(to) = stored {
            redis_state.stuck.succeeded();
            for done in waiters.into_iter().flatten() {
                let _ = done.send(());
            }
            return to;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Tries Redis with a hand-off of no events (on a cluster, to the stream's node) in a task of
/// its own, within [`REDIS_TIMEOUT`]. A write, as a hand-off is one: a Redis that answers reads
/// but refuses writes (`OOM`, `MISCONF`, `READONLY`) stays down instead of taking the next
/// batch back to it, once a second. The writers store the empty entry as nothing.
fn probe(redis: SharedConnection, stream: String) -> oneshot::Receiver<Result<(), String>> {
    let (done, outcome) = oneshot::channel();
    tokio::spawn(async move {
        let empty = redis::cmd("XADD").arg(&stream).arg("*").arg("b").arg("[]").clone();
        let _ = done.send(redis.answers(&empty, REDIS_TIMEOUT).await);
    });
    outcome
}

/// One pipelined round trip on the shared multiplexed connection (a pooled one would cost a
/// `PING` round trip per batch on checkout).
async fn flush(redis: &SharedConnection, stream: &str, batch: &[UsageEvent]) -> crate::ServiceResult<()> {
    let payload =
        serde_json::to_string(batch).map_err(|e| crate::ServiceError::Internal(format!("usage encode: {e}")))?;
    let mut minutes: HashMap<(Uuid, i64), MinuteCounters> = HashMap::new();
    for e in batch {
        minutes.entry((e.key_id, e.minute_start_ms())).or_default().add(e);
    }
    // On a cluster the counters live on other nodes than the stream, and only the stream entry
    // is the hand-off: a node that is down must not send every key's usage to PostgreSQL and
    // slow every request. They follow the entry once it is in (a live view a little short if
    // their node does not take them). Elsewhere, one round trip for both.
    let cluster = matches!(redis.pool(), RedisPool::Cluster(_));
    let mut pipe = redis::pipe();
    pipe.cmd("XADD").arg(stream).arg("*").arg("b").arg(payload).ignore();
    let mut counters = redis::pipe();
    let into = if cluster { &mut counters } else { &mut pipe };
    for ((key_id, minute), minute_counters) in &minutes {
        minute_counters.incr_into(into, &minute_key(*key_id, *minute));
    }
    let mut conn = redis.get().await?;
    let sent: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
    sent.inspect_err(|e| redis.reset_after(e))?;
    if cluster && !counters.is_empty() {
        tokio::spawn(async move {
            let counted = tokio::time::timeout(REDIS_TIMEOUT, counters.query_async::<()>(&mut conn)).await;
            if !matches!(counted, Ok(Ok(()))) {
                tracing::debug!("live usage counters of a batch not counted: their cluster node did not take them");
            }
        });
    }
    Ok(())
}
