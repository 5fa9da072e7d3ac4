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

async fn readyz(State(services): State<Services>) -> (StatusCode, Json<serde_json::Value>) {
    let (db, redis) = tokio::join!(services::db::ping(&services.db), services::redis_pool::ping(&services.redis));
    let status = if db.is_ok() && redis.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let show = |r: &Result<(), services::ServiceError>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    (status, Json(json!({ "postgres": show(&db), "redis": show(&redis) })))
}
