//! `/healthz`: the process is alive. `/readyz`: whether this instance should get traffic, and
//! what of PostgreSQL and Redis answers.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use services::keys::FailMode;
use services::{ServiceError, ServiceResult, Services};

/// How long each readiness check may take: load balancers' probes commonly give up after one
/// second, and a hung dependency counts as down.
const CHECK_WITHIN: Duration = Duration::from_millis(800);

pub fn router() -> Router<Services> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Not ready (503) only when this instance cannot serve the metered API: Redis is down and
/// quotas fail closed (every metered call would get a 503). With PostgreSQL down it still
/// serves the keys it knows, and with Redis down and quotas failing open it answers within the
/// local fallback limit: it says `degraded` then, but stays in rotation, since a shared
/// outage would otherwise take every instance out of the load balancer at once.
///
/// Anyone may ask, so the answer names what is down and nothing more: backend errors carry
/// host names, users and addresses, and go to the log only.
async fn readyz(State(services): State<Services>) -> (StatusCode, Json<serde_json::Value>) {
    let (db, redis) =
        tokio::join!(within(services::db::ping(&services.db)), within(services::redis_pool::ping(&services.redis)));
    let show = |dependency: &str, r: &ServiceResult<()>| match r {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(dependency, error = %e, "readiness check failed");
            "down"
        }
    };
    let fails_closed = services.quota.policy().mode == FailMode::Closed;
    let (status, state) = match (&db, &redis) {
        (Ok(()), Ok(())) => (StatusCode::OK, "ok"),
        (_, Err(_)) if fails_closed => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::OK, "degraded"),
    };
    (status, Json(json!({ "status": state, "postgres": show("postgres", &db), "redis": show("redis", &redis) })))
}

async fn within(check: impl std::future::Future<Output = ServiceResult<()>>) -> ServiceResult<()> {
    tokio::time::timeout(CHECK_WITHIN, check)
        .await
        .unwrap_or_else(|_| Err(ServiceError::Internal(format!("no answer within {CHECK_WITHIN:?}"))))
}
