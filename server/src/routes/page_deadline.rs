//! A page or server function that has not answered within its deadline gets a 503 and an error
//! in the log, instead of holding its connection forever. Pages render every resource before
//! answering; Leptos has had bugs that leave a render waiting for a resource that never wakes
//! (leptos-rs/leptos#4773, #4851), and a user would see a page loading for good.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Far above any page's real time (the usage page over millions of events renders in ~0.3 s).
pub const PAGE_DEADLINE: Duration = Duration::from_secs(30);

pub async fn within_deadline(State(deadline): State<Duration>, req: Request, next: Next) -> Response {
    // The route's template, never the path: a path may hold a token (`/password-reset/{token}`).
    let path = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "(no route)".to_owned(), |m| m.as_str().to_owned());
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(path, deadline_ms = deadline.as_millis() as u64, "page did not render within its deadline");
            // Server functions answer in the API's JSON, which the app reads back as "unavailable".
            if path.starts_with("/rpc/") {
                return ApiError::busy("unavailable", "The server took too long to answer. Please try again.", 5)
                    .into_response();
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
                "This page took too long to prepare. Please try again.",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn app(deadline: Duration) -> Router {
        Router::new()
            .route("/stuck", get(std::future::pending::<&'static str>))
            .route("/quick", get(|| async { "here" }))
            .route("/rpc/stuck", axum::routing::post(std::future::pending::<&'static str>))
            .layer(axum::middleware::from_fn_with_state(deadline, within_deadline))
    }

    #[tokio::test]
    async fn a_page_that_never_answers_gets_a_503_at_its_deadline() {
        let call = app(Duration::from_millis(50)).oneshot(Request::get("/stuck").body(Body::empty()).unwrap());
        let res = tokio::time::timeout(Duration::from_secs(5), call).await.expect("answered at the deadline").unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"This page took too long to prepare. Please try again.");
    }

    /// The app reads a server function's error from its JSON: "unavailable", not "internal".
    #[tokio::test]
    async fn a_server_function_that_never_answers_gets_the_json_error() {
        let call = app(Duration::from_millis(50)).oneshot(Request::post("/rpc/stuck").body(Body::empty()).unwrap());
        let res = tokio::time::timeout(Duration::from_secs(5), call).await.expect("answered at the deadline").unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (body["error"]["code"].as_str(), body["error"]["retry_after"].as_u64()),
            (Some("unavailable"), Some(5))
        );
    }

    #[tokio::test]
    async fn a_page_within_its_deadline_is_answered_as_it_is() {
        let res = app(Duration::from_secs(5)).oneshot(Request::get("/quick").body(Body::empty()).unwrap()).await;
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&axum::body::to_bytes(res.into_body(), 1024).await.unwrap()[..], b"here");
    }
}
