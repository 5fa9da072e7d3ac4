//! The usage tracker's storage side: every metered request becomes a [`UsageEvent`], which the
//! [`recorder`] hands to Redis (a stream, plus per-minute live counters) off the request path,
//! and the [`writer`] moves into PostgreSQL in batches, idempotently, with per-minute, hourly and
//! daily rollups; what PostgreSQL refuses is kept in the [`set_aside`] stream.

pub mod dashboard;
pub mod demo;
pub mod export;
pub mod histogram;
pub mod live;
pub mod periods;
pub mod recorder;
pub mod rollups;
pub mod set_aside;
pub mod writer;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The error column a status counts in (`errors_4xx`, `errors_5xx`), if any: the one rule for
/// the live counters, the stored rollups and the exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Client,
    Server,
}

impl ErrorClass {
    pub fn of(status: i32) -> Option<Self> {
        match status {
            400..=499 => Some(Self::Client),
            500..=599 => Some(Self::Server),
            _ => None,
        }
    }
}

pub use histogram::LatencyHistogram;

use crate::alerts::QuotaCrossing;
pub use recorder::UsageRecorder;

/// One metered request. Field names are short: millions of these cross Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    #[serde(rename = "r")]
    pub request_id: Uuid,
    #[serde(rename = "k")]
    pub key_id: Uuid,
    /// When the request was decided on, ms since the epoch, on the quota clock (Redis).
    #[serde(rename = "t")]
    pub at_ms: i64,
    #[serde(rename = "m")]
    pub method: String,
    /// The route template, e.g. `/api/v1/status/{code}`.
    #[serde(rename = "e")]
    pub endpoint: String,
    #[serde(rename = "s")]
    pub status: u16,
    #[serde(rename = "l")]
    pub latency_us: u64,
    #[serde(rename = "i")]
    pub bytes_in: u64,
    #[serde(rename = "o")]
    pub bytes_out: u64,
    /// Refused before running: by the quota (429), or because it could not be checked while
    /// quotas fail closed (503). Not admitted, not billable.
    #[serde(rename = "q")]
    pub throttled: bool,
    /// False when the quota could not be enforced (Redis unavailable).
    #[serde(rename = "n", default = "yes")]
    pub enforced: bool,
    /// Quota alert thresholds this request crossed (almost always none).
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<QuotaCrossing>,
}

fn yes() -> bool {
    true
}

/// A time in ms since the epoch (the quota clock's unit) as a UTC time.
pub(crate) fn time_from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono::Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl UsageEvent {
    /// The most bytes or microseconds one event records. Far above anything real (a terabyte,
    /// twelve days), and low enough that no sum of events can overflow a counter in Redis or
    /// PostgreSQL: one absurd value must not stop usage from being stored.
    pub const MAX_MEASURE: u64 = 1 << 40;

    pub(crate) fn bounded(mut self) -> Self {
        self.bytes_in = self.bytes_in.min(Self::MAX_MEASURE);
        self.bytes_out = self.bytes_out.min(Self::MAX_MEASURE);
        self.latency_us = self.latency_us.min(Self::MAX_MEASURE);
        self
    }

    pub fn minute_start_ms(&self) -> i64 {
        self.at_ms - self.at_ms.rem_euclid(60_000)
    }
}
