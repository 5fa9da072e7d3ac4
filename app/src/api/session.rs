//! Server-side session plumbing for server functions and axum handlers: the cookie, the
//! signed-in user, and the role checks.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{request::Parts, HeaderMap, HeaderValue};
use leptos::prelude::*;
use services::accounts::known_devices::{DeviceToken, KNOWN_FOR};
use services::accounts::sessions::{self, SessionToken, SESSION_TTL};
use services::accounts::{SignInFrom, User};
use services::{ServiceResult, Services};

use crate::error::AppError;

pub const SESSION_COOKIE: &str = "km_session";

/// Marks a browser that signed in before (`services::accounts::known_devices`). Only sent to
/// the password forms' server functions.
pub const DEVICE_COOKIE: &str = "km_device";
const DEVICE_COOKIE_PATH: &str = "/rpc/auth";

/// Cookie settings chosen by the server configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct CookieSettings {
    /// Adds `Secure`, for deployments behind HTTPS.
    pub secure: bool,
}

pub fn services() -> Result<Services, AppError> {
    use_context::<Services>().ok_or_else(|| {
        // A server function that reads its context after an `.await` (see `current_user`).
        // The route's template only: a path or query may hold a token (`/password-reset/{token}`,
        // `?created=`).
        let path = use_context::<Parts>()
            .and_then(|p| p.extensions.get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned()));
        tracing::error!(?path, "Services missing from the server function context");
        AppError::Internal
    })
}

/// The value of the request's first cookie called `name`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// The session token presented in the request's cookies, if any is well formed.
pub fn session_token_from(headers: &HeaderMap) -> Option<SessionToken> {
    cookie(headers, SESSION_COOKIE).and_then(SessionToken::parse)
}

fn request_parts() -> Option<Parts> {
    use_context::<Parts>()
}

/// The user of a session token, if there is one and the session has not ended.
async fn user_of(services: &Services, token: Option<SessionToken>) -> ServiceResult<Option<User>> {
    match token {
        Some(token) => sessions::user_for(&services.db, &token).await,
        None => Ok(None),
    }
}

/// The user whose session cookie came with this request (for axum handlers and middleware).
pub async fn user_from_headers(services: &Services, headers: &HeaderMap) -> ServiceResult<Option<User>> {
    user_of(services, session_token_from(headers)).await
}

// Contexts (the request, the services) are only reliably there before a server function's
// first `.await`: a resource's fetcher can be polled later outside the render's reactive owner.
// So everything below reads its context when called, and the futures they return only await.

/// The signed-in user, if any.
pub fn current_user(services: &Services) -> impl Future<Output = Result<Option<User>, AppError>> + Send + 'static {
    let token = current_session_token();
    let services = services.clone();
    async move { Ok(user_of(&services, token).await?) }
}

pub fn require_user(services: &Services) -> impl Future<Output = Result<User, AppError>> + Send + 'static {
    let user = current_user(services);
    async move { user.await?.ok_or(AppError::Unauthorized) }
}

pub fn require_admin(services: &Services) -> impl Future<Output = Result<User, AppError>> + Send + 'static {
    let user = require_user(services);
    async move {
        let user = user.await?;
        if user.is_admin() {
            Ok(user)
        } else {
            Err(AppError::Forbidden)
        }
    }
}

/// Who is signing in, for throttling: the peer address, or behind a trusted proxy the address
/// it saw (`services::accounts::client_address`).
pub fn client_address(services: &Services) -> String {
    let Some(parts) = request_parts() else { return "unknown".to_owned() };
    let Some(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) else {
        return "unknown".to_owned();
    };
    let forwarded = parts.headers.get_all("x-forwarded-for").into_iter().filter_map(|v| v.to_str().ok());
    services::accounts::client_address(peer, forwarded, &services.settings.trusted_proxies)
}

/// Where this request's sign-in or password check comes from, read before the server
/// function's first `.await`: its client address, known-browser cookie and `User-Agent`.
pub struct SignInSource {
    pub client: String,
    device: Option<DeviceToken>,
    user_agent: Option<String>,
}

impl SignInSource {
    pub fn of_request(services: &Services) -> Self {
        let user_agent = request_parts()
            .and_then(|p| p.headers.get(axum::http::header::USER_AGENT)?.to_str().ok().map(str::to_owned));
        Self { client: client_address(services), device: current_device_token(), user_agent }
    }

    pub fn as_sign_in(&self) -> SignInFrom<'_> {
        SignInFrom { client: &self.client, device: self.device.as_ref(), user_agent: self.user_agent.as_deref() }
    }
}

fn cookie_settings() -> CookieSettings {
    use_context::<CookieSettings>().unwrap_or_default()
}

/// Sets a cookie of this app: never readable by scripts, not sent with other sites' posts, and
/// only over HTTPS where the deployment is (`CookieSettings`). `max_age_secs` 0 removes it.
fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: i64) {
    let secure = if cookie_settings().secure { "; Secure" } else { "" };
    let cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}");
    if let (Some(response), Ok(value)) = (use_context::<leptos_axum::ResponseOptions>(), HeaderValue::from_str(&cookie))
    {
        response.append_header(SET_COOKIE, value);
    }
}

pub fn set_session_cookie(token: &SessionToken) {
    set_cookie(SESSION_COOKIE, token.as_str(), "/", SESSION_TTL.num_seconds());
}

pub fn set_device_cookie(token: &DeviceToken) {
    set_cookie(DEVICE_COOKIE, token.as_str(), DEVICE_COOKIE_PATH, KNOWN_FOR.num_seconds());
}

/// The known-browser token of the current request, if any is well formed.
pub fn current_device_token() -> Option<DeviceToken> {
    request_parts().and_then(|p| cookie(&p.headers, DEVICE_COOKIE).and_then(DeviceToken::parse))
}

pub fn clear_session_cookie() {
    set_cookie(SESSION_COOKIE, "", "/", 0);
}

/// What was typed into the sign-in form's email field when a sign-in posted without JavaScript
/// was refused, for the sign-in page to show again. In a short-lived cookie for that page only,
/// not in its address: a password typed into the wrong field must not land in the browser's
/// history (or in a proxy's log).
const SIGN_IN_EMAIL_COOKIE: &str = "km_sign_in_email";

pub fn keep_sign_in_email(email: &str) {
    // Longer than any address (254): not an email, not kept.
    if email.len() > 254 {
        return;
    }
    let value: String = url::form_urlencoded::byte_serialize(email.as_bytes()).collect();
    set_cookie(SIGN_IN_EMAIL_COOKIE, &value, "/login", 300);
}

fn forget_sign_in_email() {
    set_cookie(SIGN_IN_EMAIL_COOKIE, "", "/login", 0);
}

/// The email kept by [`keep_sign_in_email`], for the sign-in page this request renders: once
/// (the answer forgets it, so it is not typed in again for whoever comes next).
pub fn kept_sign_in_email() -> Option<String> {
    let parts = request_parts()?;
    let raw = cookie(&parts.headers, SIGN_IN_EMAIL_COOKIE)?;
    forget_sign_in_email();
    let pair = format!("e={raw}");
    let (_, email) = url::form_urlencoded::parse(pair.as_bytes()).next()?;
    (!email.is_empty() && email.len() <= 254).then(|| email.into_owned())
}

/// The token of the current request, for sign-out.
pub fn current_session_token() -> Option<SessionToken> {
    request_parts().and_then(|p| session_token_from(&p.headers))
}
