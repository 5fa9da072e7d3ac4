//! Per-minute live counters in Redis, written by every instance's recorder, read by the live
//! dashboard. One hash per key and minute: `n` admitted, `t` throttled, `e4`/`e5` errors,
//! `bi`/`bo` bytes, `h<bucket>` latency histogram buckets. (When Redis cannot answer, the
//! dashboard reads the same minutes from PostgreSQL: `rollups::stored_minutes`.)

use std::collections::HashMap;

use deadpool_redis::redis;
use uuid::Uuid;

use super::histogram::LatencyHistogram;
use super::UsageEvent;
use crate::redis_pool::{self, RedisPool};
use crate::ServiceResult;

/// Minutes of live counters kept.
pub const KEEP_SECS: i64 = 2 * 3600;

pub fn minute_key(key_id: Uuid, minute_start_ms: i64) -> String {
    format!("km:{{{key_id}}}:live:{}", minute_start_ms / 1000)
}

/// Counters of one key in one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinuteCounters {
    pub requests: u64,
    pub throttled: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: LatencyHistogram,
}

impl MinuteCounters {
    pub fn add(&mut self, e: &UsageEvent) {
        if e.throttled {
            self.throttled += 1;
        } else {
            self.requests += 1;
            match super::ErrorClass::of(e.status.into()) {
                Some(super::ErrorClass::Client) => self.errors_4xx += 1,
                Some(super::ErrorClass::Server) => self.errors_5xx += 1,
                None => {}
            }
            self.latency.record(e.latency_us);
        }
        self.bytes_in += e.bytes_in;
        self.bytes_out += e.bytes_out;
    }

    /// Adds the increments to a pipeline (HINCRBY per field, then the expiry).
    pub(crate) fn incr_into(&self, pipe: &mut redis::Pipeline, key: &str) {
        for (field, value) in [
            ("n", self.requests),
            ("t", self.throttled),
            ("e4", self.errors_4xx),
            ("e5", self.errors_5xx),
            ("bi", self.bytes_in),
            ("bo", self.bytes_out),
        ] {
            if value > 0 {
                pipe.hincr(key, field, value).ignore();
            }
        }
        for (bucket, count) in self.latency.buckets() {
            pipe.hincr(key, format!("h{bucket}"), count).ignore();
        }
        pipe.expire(key, KEEP_SECS).ignore();
    }

    fn from_hash(hash: HashMap<String, u64>) -> Self {
        let mut c = Self::default();
        for (field, value) in hash {
            match field.as_str() {
                "n" => c.requests = value,
                "t" => c.throttled = value,
                "e4" => c.errors_4xx = value,
                "e5" => c.errors_5xx = value,
                "bi" => c.bytes_in = value,
                "bo" => c.bytes_out = value,
                other => {
                    if let Some(bucket) = other.strip_prefix('h').and_then(|b| b.parse().ok()) {
                        c.latency.add_bucket(bucket, value);
                    }
                }
            }
        }
        c
    }
}

/// The counters of `minutes` consecutive minutes starting at `first_minute_ms`, oldest first.
pub async fn read_minutes(
    redis: &RedisPool,
    key_id: Uuid,
    first_minute_ms: i64,
    minutes: usize,
) -> ServiceResult<Vec<(i64, MinuteCounters)>> {
    let mut conn = redis_pool::conn(redis).await?;
    let mut pipe = redis::pipe();
    let starts: Vec<i64> = (0..minutes as i64).map(|i| first_minute_ms + i * 60_000).collect();
    for &start in &starts {
        pipe.hgetall(minute_key(key_id, start));
    }
    let hashes: Vec<HashMap<String, u64>> = pipe.query_async(&mut conn).await?;
    Ok(starts.into_iter().zip(hashes.into_iter().map(MinuteCounters::from_hash)).collect())
}

/// The first minute of the last `minutes` minutes that end with the current one.
pub(super) fn first_minute_ms(now_ms: i64, minutes: usize) -> i64 {
    let current = now_ms - now_ms.rem_euclid(60_000);
    current - (minutes as i64 - 1) * 60_000
}

/// The last `minutes` minutes of live counters, oldest first, ending with the current minute.
pub async fn live_minutes(
    redis: &RedisPool,
    key: Uuid,
    now_ms: i64,
    minutes: usize,
) -> ServiceResult<Vec<(i64, MinuteCounters)>> {
    read_minutes(redis, key, first_minute_ms(now_ms, minutes), minutes).await
}
