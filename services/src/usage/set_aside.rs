//! The set-aside stream (`<usage stream>:set-aside`): usage stream entries PostgreSQL kept
//! refusing (see the writer's `write_one_entry`), each with its events and the error, so that
//! the usage behind them keeps flowing. An operator lists them (`keymeter usage set-aside`) and,
//! once the cause is fixed, puts them back in the usage stream (`--replay`), where the writers
//! store them like any other entry: idempotently, so a replay never counts an event twice.

use std::collections::HashMap;

use deadpool_redis::redis::{self, Value};

use super::recorder::stream_name as usage_stream;
use super::UsageEvent;
use crate::redis_pool::{self, RedisPool};
use crate::{ServiceError, ServiceResult};

/// Where the entries of `usage_stream` that PostgreSQL refuses are kept.
pub fn stream_name(usage_stream: &str) -> String {
    format!("{usage_stream}:set-aside")
}

/// Entries taken per round trip while listing or replaying.
const CHUNK: usize = 100;

/// Keeps `events` (the usage stream's entry `entry`) with the reason PostgreSQL gave.
pub async fn keep(
    redis: &RedisPool,
    usage_stream: &str,
    entry: &str,
    events: &[UsageEvent],
    why: &str,
) -> ServiceResult<()> {
    let payload = serde_json::to_string(events).map_err(|e| ServiceError::Internal(format!("usage encode: {e}")))?;
    let mut conn = redis_pool::conn(redis).await?;
    let _: () = redis::cmd("XADD")
        .arg(stream_name(usage_stream))
        .arg("*")
        .arg("b")
        .arg(payload)
        .arg("entry")
        .arg(entry)
        .arg("error")
        .arg(why)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// One set-aside entry, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Its id in the set-aside stream (`<ms>-<seq>`: when it was set aside).
    pub id: String,
    /// Its id in the usage stream when it was refused.
    pub entry: String,
    /// Its events (none if they cannot be read).
    pub events: Vec<UsageEvent>,
    /// What PostgreSQL said.
    pub error: String,
}

/// The number of set-aside entries in `namespace`, and the oldest `limit` of them.
pub async fn list(redis: &RedisPool, namespace: &str, limit: usize) -> ServiceResult<(u64, Vec<SetAside>)> {
    let aside = stream_name(&usage_stream(namespace));
    let mut conn = redis_pool::conn(redis).await?;
    let total: u64 = redis::cmd("XLEN").arg(&aside).query_async(&mut conn).await?;
    let entries: Vec<(String, HashMap<String, Value>)> =
        redis::cmd("XRANGE").arg(&aside).arg("-").arg("+").arg("COUNT").arg(limit).query_async(&mut conn).await?;
    let text = |fields: &HashMap<String, Value>, name: &str| -> String {
        fields.get(name).and_then(|v| redis::from_redis_value(v).ok()).unwrap_or_default()
    };
    let shown = entries
        .into_iter()
        .map(|(id, fields)| SetAside {
            entry: text(&fields, "entry"),
            events: serde_json::from_str(&text(&fields, "b")).unwrap_or_default(),
            error: text(&fields, "error"),
            id,
        })
        .collect();
    Ok((total, shown))
}

/// What a replay moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    pub entries: u64,
    pub events: u64,
}

/// Puts every entry set aside so far back at the end of the usage stream. Entries set aside
/// while this runs (a writer refusing a replayed entry again) stay for the next replay, so it
/// always ends. Each entry is added to the usage stream before it leaves the set-aside one: an
/// interruption in between leaves it in both, and storing it twice adds nothing (events are
/// keyed by request id).
pub async fn replay(redis: &RedisPool, namespace: &str) -> ServiceResult<Replayed> {
    let stream = usage_stream(namespace);
    let aside = stream_name(&stream);
    let mut conn = redis_pool::conn(redis).await?;
    let newest: Vec<(String, HashMap<String, Value>)> =
        redis::cmd("XREVRANGE").arg(&aside).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut conn).await?;
    let Some((last, _)) = newest.into_iter().next() else { return Ok(Replayed::default()) };
    let mut replayed = Replayed::default();
    loop {
        let chunk: Vec<(String, HashMap<String, Value>)> =
            redis::cmd("XRANGE").arg(&aside).arg("-").arg(&last).arg("COUNT").arg(CHUNK).query_async(&mut conn).await?;
        if chunk.is_empty() {
            return Ok(replayed);
        }
        // A pipeline per stream (in a cluster each may live on its own node): all of the
        // chunk's copies, then all of its deletions.
        let mut copies = redis::pipe();
        let mut deletions = redis::pipe();
        for (id, fields) in &chunk {
            // The payload as it was refused, byte for byte.
            let payload: Option<Vec<u8>> = fields.get("b").and_then(|v| redis::from_redis_value(v).ok());
            match payload {
                Some(payload) => {
                    let events: Vec<serde_json::Value> = serde_json::from_slice(&payload).unwrap_or_default();
                    replayed.events += events.len() as u64;
                    copies.cmd("XADD").arg(&stream).arg("*").arg("b").arg(payload).ignore();
                }
                None => tracing::warn!(entry = %id, "set-aside entry without events dropped"),
            }
            deletions.cmd("XDEL").arg(&aside).arg(id).ignore();
            replayed.entries += 1;
        }
        if copies.cmd_iter().next().is_some() {
            let _: () = copies.query_async(&mut conn).await?;
        }
        let _: () = deletions.query_async(&mut conn).await?;
    }
}
