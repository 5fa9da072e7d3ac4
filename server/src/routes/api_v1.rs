//! The sample metered API under `/api/v1`: a cheap route, an echo, a chosen status and a chosen
//! delay, so that every chart has real data. Wrapped by the usage tracker (keys, quotas, usage).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, RawPathParamsRejection};
use axum::extract::{DefaultBodyLimit, Path, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use services::keys::AuthenticatedKey;
use services::Services;

use crate::error::ApiError;
use crate::middleware::api_key_auth::require_api_key;
use crate::middleware::api_usage_tracker::{add_rate_limit_headers, CurrentKey, UsageTrackerLayer};

/// Largest body `/echo` accepts.
pub const MAX_ECHO_BYTES: usize = 1024 * 1024;
/// Longest delay `/delay/{ms}` accepts.
pub const MAX_DELAY_MS: u64 = 10_000;

/// Layers, outside in: the key (401 before anything else), the route (404), the route
/// parameters (400), the method (405), then the usage tracker (quota, usage) around the handler.
/// Only requests that reach a handler are counted; the refusals before it still carry the key's
/// rate-limit headers ([`refusal`]), at no cost to the requests that pass.
pub fn router(services: Services) -> Router<Services> {
    let tracked = UsageTrackerLayer::new(services.clone());
    Router::new()
        // A method router's `route_layer` skips its 405 fallback.
        .route("/ping", get(ping).route_layer(tracked.clone()))
        .route("/echo", post(echo).route_layer(tracked.clone()))
        .route("/status/{code}", get(status).route_layer(tracked.clone()))
        .route("/delay/{ms}", get(delay).route_layer(tracked))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(services.clone(), validate_params))
        .layer(DefaultBodyLimit::max(MAX_ECHO_BYTES))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(services, require_api_key))
}

async fn ping(key: CurrentKey) -> Json<serde_json::Value> {
    Json(json!({ "ok": true, "key_id": key.id.to_string() }))
}

/// Sends the body back with its content type.
async fn echo(headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        // Too large (413) or cut short: the same JSON error shape as every other refusal.
        Err(rejection) => {
            let code =
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_body" };
            return ApiError::new(rejection.status(), code, rejection.body_text()).into_response();
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn parse_status(raw: &str) -> Result<StatusCode, ApiError> {
    raw.parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| ApiError::bad_request("invalid_parameter", "code must be a status code from 200 to 599"))
}

fn parse_delay(raw: &str) -> Result<Duration, ApiError> {
    raw.parse::<u64>().ok().filter(|&ms| ms <= MAX_DELAY_MS).map(Duration::from_millis).ok_or_else(|| {
        ApiError::bad_request("invalid_parameter", format!("ms must be a whole number from 0 to {MAX_DELAY_MS}"))
    })
}

/// Checks every route parameter before the request is metered.
async fn validate_params(
    State(services): State<Services>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let checked = match params {
        Ok(params) => params.iter().try_for_each(|(name, value)| match name {
            "code" => parse_status(value).map(|_| ()),
            "ms" => parse_delay(value).map(|_| ()),
            _ => Ok(()),
        }),
        Err(rejection) => Err(ApiError::bad_request("invalid_parameter", rejection.body_text())),
    };
    match checked {
        Ok(()) => next.run(request).await,
        Err(err) => refusal(&services, request.extensions().get::<AuthenticatedKey>(), err).await,
    }
}

/// A refusal before the tracker (400, 404, 405). Every answer to a key carries its rate-limit
/// headers (DESIGN.md): these report the key's current use, which they leave alone. If Redis
/// cannot tell in time, the refusal goes out without them.
async fn refusal(services: &Services, key: Option<&AuthenticatedKey>, err: ApiError) -> Response {
    let mut response = err.into_response();
    if let Some(key) = key {
        match services.quota.peek(key).await {
            Ok(view) => add_rate_limit_headers(response.headers_mut(), &view),
            Err(err) => tracing::debug!(error = %err, "no rate-limit headers on a refusal"),
        }
    }
    response
}

/// Answers with the status code asked for (200–599).
async fn status(Path(code): Path<String>) -> Result<Response, ApiError> {
    let status = parse_status(&code)?;
    // These must not carry content (RFC 9110: no body, and no Content-Length on a 204).
    if matches!(status.as_u16(), 204 | 205 | 304) {
        return Ok(status.into_response());
    }
    Ok((status, Json(json!({ "status": status.as_u16() }))).into_response())
}

/// Waits the number of milliseconds asked for (0–10000), then answers.
async fn delay(Path(ms): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let delay = parse_delay(&ms)?;
    tokio::time::sleep(delay).await;
    Ok(Json(json!({ "delayed_ms": delay.as_millis() as u64 })))
}

async fn not_found(State(services): State<Services>, key: Option<CurrentKey>) -> Response {
    let err = ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route");
    refusal(&services, key.as_deref(), err).await
}

async fn method_not_allowed(State(services): State<Services>, key: Option<CurrentKey>) -> Response {
    let err =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this API route does not take that method");
    refusal(&services, key.as_deref(), err).await
}
