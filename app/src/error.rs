//! The one error type of the server functions, shared by server and browser.

use serde::{Deserialize, Serialize};
use server_fn::codec::JsonEncoding;
use server_fn::error::{FromServerFnError, ServerFnErrorErr};

/// What a server function can answer instead of a value. The message of every variant is meant
/// for the person using the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    /// Bad input; `field` names the form field at fault, when one is (see `pages::form_error`).
    #[error("{message}")]
    BadRequest { message: String, field: Option<String> },
    #[error("Your session has ended: sign in again.")]
    Unauthorized,
    #[error("You are not allowed to see this page.")]
    Forbidden,
    #[error("Not found.")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// The wait in seconds.
    #[error("Too many attempts. Try again in {}.", format::wait(i64::try_from(*.0).unwrap_or(i64::MAX)))]
    TooManyAttempts(u64),
    #[error("Something went wrong on our side. Please try again.")]
    Internal,
    #[error("Could not reach the server: {0}")]
    Network(String),
    /// PostgreSQL or Redis cannot be reached for now (metered calls keep being counted).
    #[error("keymeter cannot reach its database right now. Please try again in a moment.")]
    Unavailable,
}

impl AppError {
    /// Bad input that is not about one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), field: None }
    }

    /// The form field (by its `name`) this error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::BadRequest { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict(_) => 409,
            Self::TooManyAttempts(_) => 429,
            Self::Internal => 500,
            Self::Network(_) | Self::Unavailable => 503,
        }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        #[cfg(feature = "hydrate")]
        leptos::logging::warn!("server function error: {value:?}");
        match value {
            // Arguments the server could not read are the caller's mistake.
            ServerFnErrorErr::Args(msg) => Self::bad_request(format!("Invalid request: {msg}")),
            ServerFnErrorErr::MissingArg(name) => {
                Self::BadRequest { message: format!("Missing field: {name}"), field: Some(name) }
            }
            // On the server this is a request body that could not be read (in the browser, a
            // reply it could not read: our fault, below).
            #[cfg(feature = "ssr")]
            ServerFnErrorErr::Deserialization(msg) if msg.contains("length limit") => {
                Self::bad_request("The request is too large.")
            }
            #[cfg(feature = "ssr")]
            ServerFnErrorErr::Deserialization(_) => {
                Self::bad_request("The request is not valid form data: send UTF-8 text.")
            }
            ServerFnErrorErr::Request(msg) => Self::Network(msg),
            _ => Self::Internal,
        }
    }

    /// Serialising happens for every error response on the server, so this is where the
    /// response gets the error's status code.
    fn ser(&self) -> server_fn::Bytes {
        #[cfg(feature = "ssr")]
        self.set_response_status();
        serde_json::to_vec(&ErrorBody { error: self.to_wire() }).map(Into::into).unwrap_or_default()
    }

    fn de(data: server_fn::Bytes) -> Self {
        serde_json::from_slice::<ErrorBody>(&data)
            .map(|body| Self::from_wire(body.error))
            .unwrap_or_else(|e| Self::from_server_fn_error(ServerFnErrorErr::Deserialization(e.to_string())))
    }
}

#[cfg(feature = "ssr")]
impl AppError {
    /// Gives the server function's response this error's status, except for a plain form post
    /// (no JavaScript) that goes back to its page with the error in the URL for the page to
    /// show (`api::plain_form`): leptos_axum applies this status after that redirect and would
    /// turn it into a bare JSON error. Without a page to return to (no `Referer`), server_fn
    /// would redirect to `/` and lose the message, so the status and JSON stay.
    fn set_response_status(&self) {
        use leptos::prelude::use_context;
        if crate::api::plain_form::PlainForm::of_request().is_some() {
            return;
        }
        if let (Some(response), Ok(status)) =
            (use_context::<leptos_axum::ResponseOptions>(), axum::http::StatusCode::from_u16(self.status()))
        {
            response.set_status(status);
            if let Some(secs) = self.retry_after() {
                response.insert_header(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
            }
        }
    }
}

/// The wire form of an error, the same as the HTTP routes' (`{"error":{"code","message"}}`):
/// the app reads the error back from its code, anyone else (scripts, curl) reads the message.
#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: WireError,
}

#[derive(Serialize, Deserialize)]
struct WireError {
    code: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    /// The form field a `bad_request` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl AppError {
    /// The machine-readable code of the wire format (`{"error":{"code":…}}`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict(_) => "conflict",
            Self::TooManyAttempts(_) => "too_many_attempts",
            Self::Internal => "internal",
            Self::Network(_) => "network",
            Self::Unavailable => "unavailable",
        }
    }

    /// Seconds to wait before trying again, for an answer that says so (`Retry-After`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooManyAttempts(secs) => Some(*secs),
            _ => None,
        }
    }

    fn to_wire(&self) -> WireError {
        let retry_after = self.retry_after();
        WireError {
            code: self.code().to_owned(),
            message: self.to_string(),
            retry_after,
            field: self.field().map(str::to_owned),
        }
    }

    /// (`Network` is made in the browser when no answer came; no server sends it.)
    fn from_wire(wire: WireError) -> Self {
        match wire.code.as_str() {
            "bad_request" => Self::BadRequest { message: wire.message, field: wire.field },
            "unauthorized" => Self::Unauthorized,
            "forbidden" => Self::Forbidden,
            "not_found" => Self::NotFound,
            "conflict" => Self::Conflict(wire.message),
            "too_many_attempts" => Self::TooManyAttempts(wire.retry_after.unwrap_or_default()),
            "unavailable" => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

#[cfg(feature = "ssr")]
static DATABASE_DOWN_LOG: services::outage_log::LogEvery = services::outage_log::LogEvery::new();
#[cfg(feature = "ssr")]
static REDIS_DOWN_LOG: services::outage_log::LogEvery = services::outage_log::LogEvery::new();
#[cfg(feature = "ssr")]
static SHED_LOG: services::outage_log::LogEvery = services::outage_log::LogEvery::new();

/// The one mapping of domain errors to what users and HTTP clients see: server functions use it,
/// and so do the server crate's routes (`server/src/error.rs`). Failures are logged here, once.
#[cfg(feature = "ssr")]
impl From<services::ServiceError> for AppError {
    fn from(err: services::ServiceError) -> Self {
        use services::ServiceError as E;
        match err {
            E::Invalid { message, field } => Self::BadRequest { message, field: field.map(str::to_owned) },
            E::NotFound => Self::NotFound,
            E::Forbidden => Self::Forbidden,
            E::Unauthorized => Self::Unauthorized,
            E::Conflict(msg) => Self::Conflict(msg),
            E::TooManyAttempts { retry_after_secs } => Self::TooManyAttempts(retry_after_secs),
            // Once in a while, not per request: requests come as fast as anyone sends them (a
            // flood of made-up API keys ends here as refused lookups).
            E::DatabaseUnavailable(why) => {
                services::warn_every!(DATABASE_DOWN_LOG, error = %why, "PostgreSQL unavailable");
                Self::Unavailable
            }
            E::RedisUnavailable(why) => {
                services::warn_every!(REDIS_DOWN_LOG, error = %why, "Redis unavailable");
                Self::Unavailable
            }
            E::Overloaded(what) => {
                services::warn_every!(SHED_LOG, what, "requests shed: too many at once");
                Self::Unavailable
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_wire() {
        for err in [
            AppError::bad_request("The hourly limit must be a whole number."),
            AppError::BadRequest { message: "Say why the key needs more.".into(), field: Some("reason".into()) },
            AppError::Unauthorized,
            AppError::Forbidden,
            AppError::NotFound,
            AppError::Conflict("This request was already approved.".into()),
            AppError::TooManyAttempts(42),
            AppError::Internal,
            AppError::Unavailable,
        ] {
            let body = serde_json::to_value(ErrorBody { error: err.to_wire() }).unwrap();
            assert_eq!(body["error"]["message"], err.to_string());
            let back: ErrorBody = serde_json::from_value(body).unwrap();
            assert_eq!(AppError::from_wire(back.error), err);
        }
    }
}
