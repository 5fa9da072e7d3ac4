//! `/healthz`: the process is alive. `/readyz`: whether this instance should get traffic, and
//! what of PostgreSQL and Redis answers.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use services::keys::FailMode;
use services::redis_pool::Reach;
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

/// Not ready (503) only when this instance cannot serve the metered API: quotas fail closed,
/// its quota checks have been failing (every metered call gets a 503), and Redis does not take
/// this probe's write either (so that an instance taken out of rotation, which gets no calls
/// to find out, comes back once Redis takes writes; a Redis that answers reads but refuses
/// writes serves no quota check). With PostgreSQL down it still serves the keys it
/// knows, and with Redis down while quotas fail open it answers within the local fallback
/// limit: `degraded` then, but in rotation, since a shared outage would otherwise take every
/// instance out of the load balancer at once. A Redis Cluster of which only a part answers
/// (`"redis":"partial"`: a primary dead or hung) is `degraded` too: keys in the other slots are
/// served, and every instance sees the same cluster.
///
/// Anyone may ask, so the answer names what is down and nothing more: backend errors carry
/// host names, users and addresses, and go to the log only (at debug: probes come every few
/// seconds; the background loops log outages once).
async fn readyz(State(services): State<Services>) -> (StatusCode, Json<serde_json::Value>) {
    let (db, redis) = tokio::join!(
        within(CHECK_WITHIN, services::db::ping(&services.db)),
        services::redis_pool::reach(&services.hot_path, CHECK_WITHIN)
    );
    let show = |dependency: &str, r: Result<&'static str, &ServiceError>| match r {
        Ok(state) => state,
        Err(e) => {
            tracing::debug!(dependency, error = %e, "readiness check failed");
            "down"
        }
    };
    let fails_closed = services.quota.policy().mode == FailMode::Closed;
    let (status, state) = match (&db, &redis) {
        (Ok(()), Ok(Reach::Whole)) => (StatusCode::OK, "ok"),
        (_, Err(_)) if fails_closed && services.quota.redis_down() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::OK, "degraded"),
    };
    let redis = redis.as_ref().map(|reach| match reach {
        Reach::Whole => "ok",
        Reach::Part => "partial",
    });
    let db = db.as_ref().map(|()| "ok");
    (status, Json(json!({ "status": state, "postgres": show("postgres", db), "redis": show("redis", redis) })))
}

/// `read`'s answer, or an error if it takes longer than `limit`: a hung service counts as down.
pub(crate) async fn within<T>(
    limit: Duration,
    read: impl std::future::Future<Output = ServiceResult<T>>,
) -> ServiceResult<T> {
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| Err(ServiceError::Internal(format!("no answer within {limit:?}"))))
}
