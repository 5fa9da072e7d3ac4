//! The recorder takes usage events from the request path without blocking it and hands them to
//! Redis in batches: one stream entry per batch (read by the [`writer`](super::writer)) and the
//! per-minute live counters, in one pipelined round trip. If Redis is unreachable, batches wait
//! in memory and are retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::redis;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::live::{minute_key, MinuteCounters};
use super::UsageEvent;
use crate::redis_pool::{self, RedisPool};

/// The Redis stream between recorders and writers, within a namespace (one per deployment
/// sharing a Redis; tests use one per database).
pub fn stream_name(namespace: &str) -> String {
    format!("{namespace}:usage:events")
}
/// Most events per stream entry.
const MAX_BATCH: usize = 2_000;
/// How long a batch may wait for more events. Longer means fewer, larger writes downstream; the
/// live view refreshes every few seconds anyway.
const LINGER: Duration = Duration::from_millis(100);
/// Events queued in memory before new ones are refused (and counted as dropped).
const QUEUE: usize = 200_000;

#[derive(Clone)]
pub struct UsageRecorder {
    tx: Arc<Mutex<Option<mpsc::Sender<UsageEvent>>>>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    dropped: Arc<AtomicU64>,
}

impl UsageRecorder {
    /// Starts the background flusher on the current Tokio runtime.
    pub fn start(redis: RedisPool, namespace: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(flush_loop(redis, stream_name(namespace), rx));
        Self {
            tx: Arc::new(Mutex::new(Some(tx))),
            task: Arc::new(Mutex::new(Some(task))),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues an event; never waits.
    pub fn record(&self, event: UsageEvent) {
        let sender = self.tx.lock().ok().and_then(|tx| tx.clone());
        let queued = sender.map(|tx| tx.try_send(event).is_ok()).unwrap_or(false);
        if !queued {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "usage queue full or closed: events dropped");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops accepting events and waits until every queued event has reached Redis.
    pub async fn shutdown(&self) {
        let sender = self.tx.lock().ok().and_then(|mut tx| tx.take());
        drop(sender);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn flush_loop(redis: RedisPool, stream: String, mut rx: mpsc::Receiver<UsageEvent>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        flush_until_done(&redis, &stream, &mut batch).await;
    }
    // Closed: whatever is left was flushed above, as `recv` drains before returning None.
}

async fn flush_until_done(redis: &RedisPool, stream: &str, batch: &mut Vec<UsageEvent>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match flush(redis, stream, batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, events = batch.len(), "usage flush to Redis failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn flush(redis: &RedisPool, stream: &str, batch: &[UsageEvent]) -> crate::ServiceResult<()> {
    let payload =
        serde_json::to_string(batch).map_err(|e| crate::ServiceError::Internal(format!("usage encode: {e}")))?;
    let mut minutes: HashMap<(Uuid, i64), MinuteCounters> = HashMap::new();
    for e in batch {
        minutes.entry((e.key_id, e.minute_start_ms())).or_default().add(e);
    }
    let mut pipe = redis::pipe();
    pipe.cmd("XADD").arg(stream).arg("*").arg("b").arg(payload).ignore();
    for ((key_id, minute), counters) in &minutes {
        counters.incr_into(&mut pipe, &minute_key(*key_id, *minute));
    }
    let mut conn = redis_pool::conn(redis).await?;
    let _: () = pipe.query_async(&mut conn).await?;
    Ok(())
}
