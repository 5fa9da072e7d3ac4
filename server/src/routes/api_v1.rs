//! The sample metered API under `/api/v1`, what API clients call with their key.

use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use services::Services;

use crate::api_key_auth::{require_api_key, AuthenticatedKey};

pub fn router(services: Services) -> Router<Services> {
    Router::new()
        .route("/ping", get(ping))
        .layer(axum::middleware::from_fn_with_state(
            services,
            require_api_key,
        ))
}

/// The cheapest metered call: proves the key works.
async fn ping(Extension(key): Extension<AuthenticatedKey>) -> Json<Value> {
    Json(json!({ "ok": true, "key_id": key.id.to_string() }))
}
