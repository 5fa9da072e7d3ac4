//! Signed-out visits to the dashboard and admin pages get a real redirect to sign-in, decided
//! before any rendering. The pages render on the server and hydrate; a `<Redirect/>` rendered
//! there goes through `leptos_axum::redirect`, which answers a 302 only to requests accepting
//! `text/html` and otherwise 200 with a `Location` header and an empty page (meant for its own
//! server-function client), so `curl -L` and other clients were left on an empty page.
//!
//! Only "is anyone signed in" is checked here, with the same session lookup the server functions
//! use; what the user may see (admin or not, whose key) stays with the pages.

use app::api::login_path_for;
use app::api::session::user_from_headers;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use services::Services;

/// Path prefixes of pages for signed-in users only.
const PROTECTED: [&str; 2] = ["/dashboard", "/admin"];

fn is_protected(path: &str) -> bool {
    PROTECTED.iter().any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

pub async fn require_session(State(services): State<Services>, req: Request, next: Next) -> Response {
    if !is_protected(req.uri().path()) {
        return next.run(req).await;
    }
    match user_from_headers(&services, req.headers()).await {
        Ok(Some(_)) => next.run(req).await,
        Ok(None) => {
            let here = req.uri().path_and_query().map_or_else(|| req.uri().path(), |pq| pq.as_str());
            match HeaderValue::from_str(&login_path_for(here)) {
                Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
                // Not reachable (the path is percent-encoded), but never a panic on a request.
                Err(_) => next.run(req).await,
            }
        }
        // The database cannot say: the page renders and shows the error (e.g. "data delayed").
        Err(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dashboard_and_admin_pages_are_guarded() {
        for p in ["/dashboard", "/dashboard/developers/api-keys", "/admin", "/admin/quota-requests"] {
            assert!(is_protected(p), "{p}");
        }
        for p in ["/", "/login", "/dashboards", "/administrator", "/rpc/admin/keys", "/pkg/x.js", "/api/v1/ping"] {
            assert!(!is_protected(p), "{p}");
        }
    }
}
