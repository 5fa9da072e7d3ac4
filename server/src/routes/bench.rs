//! Routes for `make bench` only (mounted when `KEYMETER_BENCH_ROUTES=1`): the sample ping route
//! without any metering, and the tracker's own measured time.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use services::Services;

use crate::middleware::api_usage_tracker::OVERHEAD;

pub fn router() -> Router<Services> {
    OVERHEAD.enable();
    Router::new().route("/bench/ping", get(bare_ping)).route("/bench/overhead", get(overhead))
}

/// The same work as `/api/v1/ping`, unmetered.
async fn bare_ping() -> Json<Value> {
    Json(json!({ "ok": true, "key_id": "00000000-0000-0000-0000-000000000000" }))
}

/// The tracker's own time per request since the last call: count, p50 and p99 in µs.
async fn overhead() -> Json<Value> {
    let (count, p50_us, p99_us) = OVERHEAD.take();
    Json(json!({ "count": count, "p50_us": p50_us, "p99_us": p99_us }))
}
