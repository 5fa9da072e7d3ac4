//! The JSON error of the HTTP API: `{"error":{"code":…,"message":…}}` (and `retry_after` when
//! there is one) with the right status, the same shape and codes as the server functions'.
//! Failures are logged once, where domain errors are mapped; their details never reach the
//! client.

use app::error::AppError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use services::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (a busy server, a throttle).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// A 503 that says when to try again.
    pub fn busy(code: &'static str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self { retry_after: Some(retry_after_secs), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }
}

/// Domain errors get the status, code and message the server functions give them (one mapping,
/// `app::error::AppError`'s, which also logs the failures).
impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let err = AppError::from(err);
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { retry_after: err.retry_after(), ..Self::new(status, err.code(), err.to_string()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        // In the body too, as the server functions' errors have it (`app::error::WireError`).
        if let Some(secs) = self.retry_after {
            error["retry_after"] = secs.into();
        }
        let body = serde_json::json!({ "error": error });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal that says when to come back keeps saying it on the HTTP routes.
    #[test]
    fn too_many_attempts_tell_when_to_try_again() {
        let response = ApiError::from(ServiceError::TooManyAttempts { retry_after_secs: 7 }).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(response.into_body(), 4096))
            .expect("a body at hand")
            .expect("a body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            (body["error"]["code"].as_str(), body["error"]["retry_after"].as_u64()),
            (Some("too_many_attempts"), Some(7))
        );
    }
}
