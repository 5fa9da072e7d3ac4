//! The JSON error of the HTTP API: `{"error":{"code":…,"message":…}}` with the right status.
//! 5xx are logged here, once; their details never reach the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use services::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match &err {
            ServiceError::Invalid(msg) => Self::bad_request("invalid_request", msg.clone()),
            ServiceError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            ServiceError::Forbidden => Self::new(StatusCode::FORBIDDEN, "forbidden", err.to_string()),
            ServiceError::Unauthorized => Self::unauthorized("unauthorized", err.to_string()),
            ServiceError::Conflict(msg) => Self::new(StatusCode::CONFLICT, "conflict", msg.clone()),
            ServiceError::TooManyAttempts { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", err.to_string())
            }
            ServiceError::DatabaseUnavailable(_) | ServiceError::RedisUnavailable(_) => {
                tracing::error!(error = %err, "backing service unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a backing service is unavailable; retry shortly",
                )
            }
            _ => {
                tracing::error!(error = %err, "request failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
