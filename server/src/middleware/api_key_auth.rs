//! API key authentication for the metered API: reads the key from `Authorization: Bearer` or
//! `X-API-Key` and rejects what is missing, malformed, unknown or revoked with a JSON 401.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use services::keys::{ApiKeySecret, AuthenticatedKey, KeyCheck};
use services::Services;

use crate::error::ApiError;

/// The secret presented in the headers, checked for shape only. A request that names a key
/// twice (both headers, or one header repeated) must name the same one: otherwise one of them
/// would be silently ignored, and a client could not tell which key it was billed to.
pub fn presented_key(headers: &HeaderMap) -> Result<ApiKeySecret, ApiError> {
    // Borrowed from the headers: nothing is allocated before the one key is parsed.
    let mut first: Option<&str> = None;
    for value in headers.get_all(axum::http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed_api_key", "the Authorization header is not valid text"))?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| {
            ApiError::unauthorized("malformed_api_key", "use Authorization: Bearer <key> or X-API-Key: <key>")
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized("malformed_api_key", "use Authorization: Bearer <key>"));
        }
        same_key(&mut first, token.trim())?;
    }
    for value in headers.get_all("x-api-key") {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed_api_key", "the X-API-Key header is not valid text"))?;
        same_key(&mut first, value.trim())?;
    }
    let Some(key) = first else {
        return Err(ApiError::unauthorized(
            "missing_api_key",
            "send your API key as Authorization: Bearer <key> or X-API-Key: <key>",
        ));
    };
    ApiKeySecret::parse(key).map_err(|e| ApiError::unauthorized("malformed_api_key", e.to_string()))
}

/// Remembers the first key named; any later one must be the same.
fn same_key<'h>(first: &mut Option<&'h str>, key: &'h str) -> Result<(), ApiError> {
    match *first {
        None => *first = Some(key),
        Some(seen) if seen == key => {}
        Some(_) => {
            return Err(ApiError::unauthorized(
                "conflicting_api_keys",
                "send one API key: the headers name different keys",
            ))
        }
    }
    Ok(())
}

/// Middleware: every request needs an active key (a JSON 401 otherwise, before anything else
/// is looked at, unknown routes and bad parameters included); the key rides along in the
/// request's extensions for the usage tracker and handlers.
pub async fn require_api_key(State(services): State<Services>, mut request: Request, next: Next) -> Response {
    let arrived = RequestArrived(std::time::Instant::now());
    match authenticate(&services, request.headers()).await {
        Ok(key) => {
            request.extensions_mut().insert(key);
            request.extensions_mut().insert(arrived);
            next.run(request).await
        }
        Err(err) => {
            let mut response = err.into_response();
            super::close_if_body_unread(request.headers(), &mut response);
            response
        }
    }
}

/// When the request reached the metered API, before its key was looked up: the usage tracker
/// measures its latency from here (a lookup that waits on PostgreSQL is the client's wait too).
#[derive(Clone, Copy)]
pub(crate) struct RequestArrived(pub(crate) std::time::Instant);

/// Resolves the presented key: a JSON 401 for anything but an active key.
pub async fn authenticate(services: &Services, headers: &HeaderMap) -> Result<AuthenticatedKey, ApiError> {
    let secret = presented_key(headers)?;
    match services.keys.check(&secret).await? {
        KeyCheck::Active(key) => Ok(key),
        KeyCheck::Revoked => Err(ApiError::unauthorized("revoked_api_key", "this API key has been revoked")),
        KeyCheck::Rolled => Err(ApiError::unauthorized(
            "rolled_api_key",
            "this secret was replaced when its API key was rolled: use the key's new secret",
        )),
        KeyCheck::Unknown => Err(ApiError::unauthorized("invalid_api_key", "unknown API key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, HeaderValue)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.clone());
        }
        h
    }

    #[test]
    fn reads_bearer_and_x_api_key() {
        let secret = ApiKeySecret::generate();
        let bearer =
            headers(&[("authorization", HeaderValue::from_str(&format!("Bearer {}", secret.expose())).unwrap())]);
        assert_eq!(presented_key(&bearer).unwrap(), secret);
        let x = headers(&[("x-api-key", HeaderValue::from_str(secret.expose()).unwrap())]);
        assert_eq!(presented_key(&x).unwrap(), secret);
    }

    #[test]
    fn refuses_missing_and_malformed() {
        assert_eq!(presented_key(&HeaderMap::new()).unwrap_err().code, "missing_api_key");
        let basic = headers(&[("authorization", HeaderValue::from_static("Basic abc"))]);
        assert_eq!(presented_key(&basic).unwrap_err().code, "malformed_api_key");
        let binary = headers(&[("x-api-key", HeaderValue::from_bytes(b"km_live_\xff\xfe").unwrap())]);
        assert_eq!(presented_key(&binary).unwrap_err().code, "malformed_api_key");
        let short = headers(&[("x-api-key", HeaderValue::from_static("km_live_short"))]);
        assert_eq!(presented_key(&short).unwrap_err().code, "malformed_api_key");
    }

    #[test]
    fn a_key_named_twice_must_be_the_same_key() {
        let (secret, other) = (ApiKeySecret::generate(), ApiKeySecret::generate());
        let bearer = |s: &ApiKeySecret| HeaderValue::from_str(&format!("Bearer {}", s.expose())).unwrap();
        let x = |s: &ApiKeySecret| HeaderValue::from_str(s.expose()).unwrap();
        let same = headers(&[("authorization", bearer(&secret)), ("x-api-key", x(&secret))]);
        assert_eq!(presented_key(&same).unwrap(), secret);
        let both = headers(&[("authorization", bearer(&secret)), ("x-api-key", x(&other))]);
        assert_eq!(presented_key(&both).unwrap_err().code, "conflicting_api_keys");
        let bogus =
            headers(&[("authorization", bearer(&secret)), ("x-api-key", HeaderValue::from_static("km_live_bogus"))]);
        assert_eq!(presented_key(&bogus).unwrap_err().code, "conflicting_api_keys");
        let mut repeated = HeaderMap::new();
        repeated.append("x-api-key", x(&secret));
        repeated.append("x-api-key", x(&other));
        assert_eq!(presented_key(&repeated).unwrap_err().code, "conflicting_api_keys");
    }
}
