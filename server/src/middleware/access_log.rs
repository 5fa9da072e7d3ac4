//! The access log: one line per request to the pages, server functions, exports and email links
//! (log target `keymeter::access`, level INFO), with the method, the route, the status and the
//! time to the response's head. Metered API calls are left out: each is stored in PostgreSQL
//! already, and at their rates the log would cost more than the call. So are static assets and
//! health probes, which would bury everything else.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub async fn log_request(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let Some(route) = logged_route(request.uri().path(), matched).map(str::to_owned) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        target: "keymeter::access",
        %method,
        route,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// The route a request is logged under, `None` if it is not logged. Always the route's template,
/// never the path itself: paths carry secrets (an unsubscribe link's token) and identifiers.
fn logged_route<'a>(path: &str, matched: Option<&'a str>) -> Option<&'a str> {
    let unlogged = path.starts_with("/api/")
        || path.starts_with("/pkg/")
        || path.starts_with("/bench/")
        || matches!(path, "/healthz" | "/readyz" | "/favicon.ico");
    (!unlogged).then_some(matched.unwrap_or("(no route)"))
}

#[cfg(test)]
mod tests {
    use super::logged_route;

    #[test]
    fn routes_are_logged_by_their_template_and_metered_calls_not_at_all() {
        let unsubscribe = "/email/unsubscribe/{token}";
        assert_eq!(logged_route("/email/unsubscribe/5f0e…", Some(unsubscribe)), Some(unsubscribe));
        assert_eq!(logged_route("/rpc/auth/login", Some("/rpc/auth/login")), Some("/rpc/auth/login"));
        assert_eq!(logged_route("/no/such/page", None), Some("(no route)"));
        for quiet in ["/api/v1/ping", "/api/v1/status/404", "/pkg/keymeter.wasm", "/healthz", "/readyz"] {
            assert_eq!(logged_route(quiet, Some(quiet)), None, "{quiet}");
        }
    }
}
