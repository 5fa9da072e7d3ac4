//! `/healthz`: the process is alive. `/readyz`: PostgreSQL and Redis answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use services::Services;

pub fn router() -> Router<Services> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Anyone may ask, so the answer names what is down and nothing more: backend errors carry
/// host names, users and addresses, and go to the log only.
async fn readyz(State(services): State<Services>) -> (StatusCode, Json<serde_json::Value>) {
    let (db, redis) = tokio::join!(services::db::ping(&services.db), services::redis_pool::ping(&services.redis));
    let status = if db.is_ok() && redis.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let show = |dependency: &str, r: &Result<(), services::ServiceError>| match r {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(dependency, error = %e, "readiness check failed");
            "down"
        }
    };
    (status, Json(json!({ "postgres": show("postgres", &db), "redis": show("redis", &redis) })))
}
