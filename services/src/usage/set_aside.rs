//! The set-aside stream (`<usage stream>:set-aside`): usage stream entries PostgreSQL kept
//! refusing (see the writer's `write_one_entry`) or that cannot be read, each with its payload
//! as it was and the error, so that the usage behind them keeps flowing. An operator lists them (`keymeter usage set-aside`) and,
//! once the cause is fixed, puts them back in the usage stream (`--replay`), where the writers
//! store them like any other entry: idempotently, so a replay never counts an event twice.

use std::collections::HashMap;

use deadpool_redis::redis::{self, Value};

use super::recorder::stream_name as usage_stream;
use super::writer::{decode_batch, Unreadable};
use super::UsageEvent;
use crate::redis_pool::{self, RedisPool};
use crate::ServiceResult;

/// Where the entries of `usage_stream` that PostgreSQL refuses are kept.
pub fn stream_name(usage_stream: &str) -> String {
    format!("{usage_stream}:set-aside")
}

/// Entries taken per round trip while listing or replaying.
const CHUNK: usize = 100;

/// Keeps the usage stream's entry `entry` (its payload as it was) with the reason it could not
/// be stored.
pub async fn keep(redis: &RedisPool, usage_stream: &str, entry: &str, payload: &[u8], why: &str) -> ServiceResult<()> {
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
    /// Its id in the usage stream when it was set aside.
    pub entry: String,
    /// Its events, or why they cannot be read (then a replay leaves it here).
    pub events: Result<Vec<UsageEvent>, String>,
    /// Why it was set aside (PostgreSQL's error, or why it could not be read).
    pub error: String,
}

type RawEntry = (String, HashMap<String, Value>);

/// The number of set-aside entries in `namespace`, and the oldest `limit` of them.
pub async fn list(redis: &RedisPool, namespace: &str, limit: usize) -> ServiceResult<(u64, Vec<SetAside>)> {
    let aside = stream_name(&usage_stream(namespace));
    let mut conn = redis_pool::conn(redis).await?;
    let total: u64 = redis::cmd("XLEN").arg(&aside).query_async(&mut conn).await?;
    let entries: Vec<RawEntry> =
        redis::cmd("XRANGE").arg(&aside).arg("-").arg("+").arg("COUNT").arg(limit).query_async(&mut conn).await?;
    let text = |fields: &HashMap<String, Value>, name: &str| -> String {
        fields.get(name).and_then(|v| redis::from_redis_value(v).ok()).unwrap_or_default()
    };
    let shown = entries
        .into_iter()
        .map(|(id, fields)| SetAside {
            entry: text(&fields, "entry"),
            events: decode_batch(fields.get("b")).map_err(|Unreadable { why, .. }| why),
            error: text(&fields, "error"),
            id,
        })
        .collect();
    Ok((total, shown))
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Entries put back in the usage stream (an empty batch is only removed).
    pub entries: u64,
    pub events: u64,
    /// Entries left set aside because they cannot be read: nothing could store them.
    pub unreadable: u64,
}

/// Puts every readable entry set aside so far back at the end of the usage stream. Entries set
/// aside while this runs (a writer refusing a replayed entry again) stay for the next replay,
/// so it always ends. Each entry is added to the usage stream before it leaves the set-aside
/// one: an interruption in between leaves it in both, and storing it twice adds nothing.
pub async fn replay(redis: &RedisPool, namespace: &str) -> ServiceResult<Replayed> {
    let stream = usage_stream(namespace);
    let aside = stream_name(&stream);
    let mut conn = redis_pool::conn(redis).await?;
    let newest: Vec<RawEntry> =
        redis::cmd("XREVRANGE").arg(&aside).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut conn).await?;
    let Some((last, _)) = newest.into_iter().next() else { return Ok(Replayed::default()) };
    let mut replayed = Replayed::default();
    // After each chunk, from just past its last entry: unreadable ones stay behind.
    let mut from = "-".to_owned();
    loop {
        let chunk: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(&aside)
            .arg(&from)
            .arg(&last)
            .arg("COUNT")
            .arg(CHUNK)
            .query_async(&mut conn)
            .await?;
        let Some((end, _)) = chunk.last() else { return Ok(replayed) };
        from = format!("({end}");
        // A pipeline per stream (in a cluster each may live on its own node): all of the
        // chunk's copies, then all of its deletions.
        let mut copies = redis::pipe();
        let mut deletions = redis::pipe();
        for (id, fields) in &chunk {
            match decode_batch(fields.get("b")) {
                Ok(events) => {
                    if !events.is_empty() {
                        // The payload as it was, byte for byte: the writer decodes it as above.
                        let payload: Vec<u8> =
                            fields.get("b").and_then(|v| redis::from_redis_value(v).ok()).unwrap_or_default();
                        copies.cmd("XADD").arg(&stream).arg("*").arg("b").arg(payload).ignore();
                    }
                    replayed.entries += 1;
                    replayed.events += events.len() as u64;
                    deletions.cmd("XDEL").arg(&aside).arg(id).ignore();
                }
                Err(_) => replayed.unreadable += 1,
            }
        }
        if !copies.is_empty() {
            let _: () = copies.query_async(&mut conn).await?;
        }
        if !deletions.is_empty() {
            let _: () = deletions.query_async(&mut conn).await?;
        }
    }
}
