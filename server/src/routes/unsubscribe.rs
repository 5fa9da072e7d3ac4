//! `/email/unsubscribe/{token}`: the link at the end of every monthly summary, and its
//! `List-Unsubscribe` header. GET shows what it would stop and asks (mail scanners open links,
//! so a GET changes nothing); POST stops it: the page's button, or a mail reader's one-click
//! "Unsubscribe" (RFC 8058, body `List-Unsubscribe=One-Click`, no cookies). The random token is
//! the only credential, so no sign-in and no same-origin check. Plain HTML pages: they must
//! work in any browser a mail reader opens, without the app's script.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use format::html_escape;
use services::accounts::email_preferences;
use services::{ServiceError, Services};
use uuid::Uuid;

pub fn router() -> Router<Services> {
    Router::new().route("/email/unsubscribe/{token}", get(ask).post(stop))
}

async fn ask(State(services): State<Services>, Path(token): Path<String>) -> Response {
    let (email, on) = match account(&services, &token).await {
        Ok(account) => account,
        Err(response) => return response,
    };
    // Whoever holds the link sees the address only in part (a summary may be forwarded).
    let shown = html_escape(&email_preferences::masked(&email));
    if !on {
        return page(
            StatusCode::OK,
            &format!(
                "<p role=\"status\" data-testid=\"summary-stopped\">The monthly usage summary to <strong>{shown}</strong> is already stopped.</p>{AGAIN}"
            ),
        );
    }
    page(
        StatusCode::OK,
        &format!(
            "<p>Stop the monthly usage summary sent to <strong>{shown}</strong>?</p>\
             <form method=\"post\"><button type=\"submit\" data-testid=\"stop-summary\">Stop these summaries</button></form>\
             <p class=\"muted\">Alerts about quotas and quota requests still come; those are set per key.</p>"
        ),
    )
}

/// How to have it again.
const AGAIN: &str = "<p>To have it again, sign in to keymeter and turn it on under \
                     <a href=\"/dashboard/notifications\">Notifications</a>.</p>";

async fn stop(State(services): State<Services>, Path(token): Path<String>) -> Response {
    let Some(token) = Uuid::parse_str(&token).ok() else { return not_a_link() };
    match email_preferences::stop_monthly_summary_by_token(&services.db, token).await {
        Ok(email) => page(
            StatusCode::OK,
            &format!(
                "<p role=\"status\" data-testid=\"summary-stopped\">The monthly usage summary to <strong>{}</strong> is stopped.</p>{AGAIN}",
                html_escape(&email_preferences::masked(&email))
            ),
        ),
        Err(ServiceError::NotFound) => not_a_link(),
        Err(e) => trouble(e),
    }
}

/// The address the token's link is for and whether its summary is on, or the page to answer
/// instead.
async fn account(services: &Services, token: &str) -> Result<(String, bool), Response> {
    let token = Uuid::parse_str(token).map_err(|_| not_a_link())?;
    email_preferences::account_of_token(&services.db, token).await.map_err(|e| match e {
        ServiceError::NotFound => not_a_link(),
        e => trouble(e),
    })
}

fn not_a_link() -> Response {
    page(StatusCode::NOT_FOUND, "<p>This link is not one of keymeter's (or no longer is). Sign in to keymeter to choose which emails you get, under Notifications.</p>")
}

fn trouble(e: ServiceError) -> Response {
    let status =
        StatusCode::from_u16(app::error::AppError::from(e).status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    page(status, "<p>keymeter cannot do this right now. Please try again in a moment.</p>")
}

fn page(status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Monthly usage summary · keymeter</title><link rel=\"stylesheet\" href=\"/pkg/keymeter.css\"></head>\
         <body><main><section class=\"card\"><h1>Monthly usage summary</h1>{body}</section></main></body></html>"
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html)
        .into_response()
}
