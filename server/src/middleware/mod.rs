//! Tower middleware: the metered API's (key check, usage tracking), and the access log.

pub mod access_log;
pub mod api_key_auth;
pub mod api_usage_tracker;
mod counting_body;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;

/// Refused before its body is read (no or a revoked key, over quota): hyper then closes the
/// connection once the answer is out, unless the whole body had already arrived. Saying so in
/// `Connection: close` makes the client open a new one for its next request, instead of sending
/// it into a closing socket and getting a reset. Small bodies (mostly there already) keep the
/// connection: a refused client's next request should not cost a new handshake.
pub(crate) fn close_if_body_unread(request: &HeaderMap, response: &mut Response) {
    const ALREADY_THERE: u64 = 8 * 1024;
    let length = request.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let large = match length {
        Some(n) => n > ALREADY_THERE,
        // Chunked: of unknown size.
        None => request.contains_key(header::TRANSFER_ENCODING),
    };
    if large {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
