use leptos::prelude::*;

use super::CurrentUser;
use crate::error::AppError;

/// Where to go after signing in, if the page did not ask for somewhere else.
pub const HOME_PATH: &str = "/dashboard/developers/api-keys";

/// The email typed into a sign-in form refused without JavaScript, for the sign-in page to
/// show again (`session::keep_sign_in_email`); none in the browser.
pub fn kept_sign_in_email() -> Option<String> {
    #[cfg(feature = "ssr")]
    return super::session::kept_sign_in_email();
    #[cfg(not(feature = "ssr"))]
    None
}

/// `/login?next=<here>`, so that signing in comes back to the page asked for. Used by the page
/// layouts (client-side) and the server's guard of signed-in pages alike.
pub fn login_path_for(here: &str) -> String {
    let here = without_form_error(here);
    let here = if here.is_empty() { "/" } else { here.as_str() };
    format!("/login?next={}", format::query_value(here))
}

/// `path` without the error of a form post that leptos puts in the URL for pages without
/// JavaScript (`__path`, `__err`). It belongs to the post that failed (e.g. "Your session has ended" when
/// the session had ended) and would greet the user again once signed in.
fn without_form_error(path: &str) -> String {
    let Some((page, query)) = path.split_once('?') else { return path.to_owned() };
    let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && key != "__path" && key != "__err"
        })
        .collect();
    let mut out = page.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Only local absolute paths are followed after sign-in, so the form cannot be used to send
/// people to another site. Browsers treat `\` like `/` and drop tabs and line breaks from URLs,
/// so `/\evil`, `/<tab>/evil` and `//evil` all lead off-site: one leading `/`, then no second
/// `/` or `\`, and no backslash or control character anywhere.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if is_local_path(n) => n,
        _ => HOME_PATH,
    }
}

fn is_local_path(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next() == Some('/')
        && !matches!(chars.next(), Some('/' | '\\'))
        && !n.chars().any(|c| c == '\\' || c.is_control())
}

/// A password as typed into the sign-in form. Its `Debug` hides it: the server function's
/// arguments derive `Debug`, and a password must never reach a log.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TypedPassword(pub String);

impl std::fmt::Debug for TypedPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TypedPassword(***)")
    }
}

/// A one-time token from a link (a password reset's, a new key's hand-off), hidden in `Debug`
/// as a password is: it is worth a password, or an API key's secret, while it works.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LinkToken(pub String);

impl std::fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkToken(***)")
    }
}

#[server(prefix = "/rpc", endpoint = "auth/login")]
pub async fn login(email: String, password: TypedPassword, next: Option<String>) -> Result<(), AppError> {
    use super::session;
    use services::accounts::{self, sessions};

    let services = session::services()?;
    let source = session::SignInSource::of_request(&services);
    let from = source.as_sign_in();
    let plain_form = super::plain_form::is_plain_form_post();
    let user = accounts::authenticate(&services, &email, &password.0, &from).await.inspect_err(|e| {
        // For an operator watching for password guessing: from where. Not the address typed
        // (often a password typed into the wrong field), and not each throttled attempt (the
        // throttle bounds the lines logged here; an attacker could flood those).
        if matches!(e, services::ServiceError::Invalid { .. }) {
            tracing::info!(client = %from.client, error = %e, "sign-in refused");
        }
        // Without JavaScript the page is loaded anew: it shows the address typed again.
        if plain_form {
            session::keep_sign_in_email(&email);
        }
    })?;
    let token = sessions::create(&services.db, user.id, from.user_agent).await?;
    // The session this browser had (this account's or another's) ends: its token may have
    // been seen by someone else, and one browser has one session.
    if let Some(previous) = session::current_session_token() {
        if let Err(e) = sessions::delete(&services.db, &previous).await {
            tracing::warn!(error = %e, "the browser's previous session could not be ended");
        }
    }
    session::set_session_cookie(&token);
    // This browser is now known to the account: strangers' failed guesses at the address will
    // not lock it out.
    remember_browser(&services, &user, &from).await;
    tracing::info!(user_id = user.id, "signed in");
    leptos_axum::redirect(safe_next(next.as_deref()));
    Ok(())
}

/// Marks this browser as known to the account, under a new token (and tells the owner if the
/// account did not know it). Not remembered is only that: the sign-in or change stands.
#[cfg(feature = "ssr")]
async fn remember_browser(
    services: &services::Services,
    user: &services::accounts::User,
    from: &services::accounts::SignInFrom<'_>,
) {
    match services::accounts::known_devices::remember(services, user, from).await {
        Ok(device) => super::session::set_device_cookie(&device),
        Err(e) => tracing::warn!(error = %e, "the browser could not be remembered for sign-in"),
    }
}

#[server(prefix = "/rpc", endpoint = "auth/logout")]
pub async fn logout() -> Result<(), AppError> {
    use super::session;
    use services::accounts::sessions;

    let services = session::services()?;
    if let Some(token) = session::current_session_token() {
        sessions::delete(&services.db, &token).await?;
    }
    session::clear_session_cookie();
    leptos_axum::redirect("/login");
    Ok(())
}

/// The account page's query parameter that confirms a password change made without
/// JavaScript: how many other sessions ended.
pub const PASSWORD_CHANGED: &str = "password_changed";

/// Changes the signed-in user's password (the current one is checked like a sign-in); every
/// other session of the account ends, and this one goes on under a new cookie. Returns how
/// many other sessions ended.
#[server(prefix = "/rpc", endpoint = "auth/password")]
pub async fn change_password(
    current_password: TypedPassword,
    new_password: TypedPassword,
    confirm_password: TypedPassword,
) -> Result<usize, AppError> {
    use super::session;
    use services::accounts::{self, PasswordChange};

    let services = session::services()?;
    // The request's context is read before the first await.
    let token = session::current_session_token().ok_or(AppError::Unauthorized)?;
    let source = session::SignInSource::of_request(&services);
    let plain_form = super::plain_form::is_plain_form_post();
    let user = session::require_user(&services).await?;
    let change = PasswordChange { current: &current_password.0, new: &new_password.0, confirm: &confirm_password.0 };
    let (ended, session) = accounts::change_password(&services, &user, &token, &change, &source.as_sign_in()).await?;
    session::set_session_cookie(&session);
    // The change forgot every browser of the account (one may be a thief's); this one, which
    // just proved the password, is known again.
    remember_browser(&services, &user, &source.as_sign_in()).await;
    if plain_form {
        // Without JavaScript the page is loaded anew: the address carries the confirmation.
        leptos_axum::redirect(&format!("/dashboard/account?{PASSWORD_CHANGED}={ended}"));
    }
    Ok(ended)
}

#[server(prefix = "/rpc", endpoint = "auth/me")]
pub async fn whoami() -> Result<Option<CurrentUser>, AppError> {
    let services = super::session::services()?;
    let user = super::session::current_user(&services).await?;
    Ok(user.map(|u| CurrentUser { is_admin: u.is_admin(), email: u.email }))
}

/// One place the account is signed in, as the account page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionView {
    /// "Firefox on Linux"; empty when the browser did not say.
    pub browser: String,
    pub signed_in_at: chrono::DateTime<chrono::Utc>,
    /// To the nearest few minutes.
    pub last_active_at: chrono::DateTime<chrono::Utc>,
    /// The browser asking.
    pub this_browser: bool,
}

/// Where the signed-in account is signed in, the most recently used first.
#[server(prefix = "/rpc", endpoint = "auth/sessions")]
pub async fn list_sessions() -> Result<Vec<SessionView>, AppError> {
    use super::session;
    use services::accounts::sessions;

    let services = session::services()?;
    let token = session::current_session_token().ok_or(AppError::Unauthorized)?;
    let user = session::require_user(&services).await?;
    let listed = sessions::list_for(&services.db, user.id, &token).await?;
    Ok(listed
        .into_iter()
        .map(|s| SessionView {
            browser: s.browser,
            signed_in_at: s.signed_in_at,
            last_active_at: s.last_seen_at,
            this_browser: s.current,
        })
        .collect())
}

/// The account page's query parameter that confirms, without JavaScript, how many other
/// sessions "Sign out everywhere else" ended.
pub const OTHERS_SIGNED_OUT: &str = "signed_out";

/// Ends every session of the signed-in account but this one; returns how many ended.
#[server(prefix = "/rpc", endpoint = "auth/sign_out_others")]
pub async fn sign_out_others() -> Result<usize, AppError> {
    use super::session;
    use services::accounts::sessions;

    let services = session::services()?;
    let token = session::current_session_token().ok_or(AppError::Unauthorized)?;
    let plain_form = super::plain_form::is_plain_form_post();
    let user = session::require_user(&services).await?;
    let ended = sessions::end_others(&services.db, user.id, &token).await?;
    tracing::info!(user_id = user.id, ended, "signed out everywhere else");
    if plain_form {
        leptos_axum::redirect(&format!("/dashboard/account?{OTHERS_SIGNED_OUT}={ended}"));
    }
    Ok(ended)
}

/// The sign-in page's query parameter that says a new password was chosen through a mailed
/// link.
pub const PASSWORD_WAS_RESET: &str = "password_reset";

/// The reset page's query parameter that says a link was asked for without JavaScript.
pub const RESET_LINK_ASKED: &str = "asked";

/// Mails a link to choose a new password to the account using this address, if any. The
/// answer is the same whether or not one does (only a malformed address is refused).
#[server(prefix = "/rpc", endpoint = "auth/password-reset/ask")]
pub async fn ask_password_reset(email: String) -> Result<(), AppError> {
    use services::accounts::password_reset;

    let services = super::session::services()?;
    let plain_form = super::plain_form::is_plain_form_post();
    let client = super::session::client_address(&services);
    password_reset::ask(&services, &email, &client)?;
    if plain_form {
        leptos_axum::redirect(&format!("{}?{RESET_LINK_ASKED}=1", password_reset::RESET_PAGE));
    }
    Ok(())
}

/// The address (partly hidden) whose password a reset link sets; a 400 saying so for a link
/// that no longer works.
#[server(prefix = "/rpc", endpoint = "auth/password-reset/link")]
pub async fn password_reset_link(token: LinkToken) -> Result<String, AppError> {
    use services::accounts::password_reset::{self, ResetToken};

    let services = super::session::services()?;
    let gone = || AppError::bad_request(password_reset::LINK_GONE);
    let token = ResetToken::parse(&token.0).ok_or_else(gone)?;
    password_reset::address_of(&services.db, &token).await?.ok_or_else(gone)
}

/// Sets the password of a reset link's account, then sends the browser to sign in with it.
#[server(prefix = "/rpc", endpoint = "auth/password-reset/choose")]
pub async fn choose_new_password(
    token: LinkToken,
    new_password: TypedPassword,
    confirm_password: TypedPassword,
) -> Result<(), AppError> {
    use services::accounts::password_reset::{self, NewPassword, ResetToken};

    let services = super::session::services()?;
    let token = ResetToken::parse(&token.0).ok_or_else(|| AppError::bad_request(password_reset::LINK_GONE))?;
    let typed = NewPassword { new: &new_password.0, confirm: &confirm_password.0 };
    password_reset::choose_password(&services, &token, &typed).await?;
    leptos_axum::redirect(&format!("/login?{PASSWORD_WAS_RESET}=1"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(safe_next(Some("/dashboard/developers/api-keys/x")), "/dashboard/developers/api-keys/x");
        assert_eq!(safe_next(Some("//evil.example")), HOME_PATH);
        assert_eq!(safe_next(Some("https://evil.example")), HOME_PATH);
        assert_eq!(safe_next(Some("/\\evil.example")), HOME_PATH);
        assert_eq!(safe_next(None), HOME_PATH);
    }

    #[test]
    fn sign_in_does_not_bring_back_a_form_error_of_the_page() {
        let err = "__path=%2Frpc%2Fkeys%2Fcreate&__err=eyJlcnJvciI6IlVuYXV0aG9yaXplZCJ9";
        assert_eq!(
            login_path_for(&format!("/dashboard/developers/api-keys?{err}")),
            "/login?next=/dashboard/developers/api-keys"
        );
        assert_eq!(
            login_path_for(&format!("/dashboard/developers/api-keys/x?page=2&{err}&range=7d")),
            "/login?next=/dashboard/developers/api-keys/x%3Fpage%3D2%26range%3D7d"
        );
        assert_eq!(login_path_for("/admin?__errata=1"), "/login?next=/admin%3F__errata%3D1");
        assert_eq!(login_path_for(""), "/login?next=/");
    }

    #[test]
    fn paths_that_browsers_turn_into_another_host_are_refused() {
        for bad in [
            "/\t/evil.example/x",
            "/\n/evil.example/x",
            "/\r\n/evil.example",
            "//evil.example/x",
            "/\\evil.example/x",
            "/dashboard\\..\\x",
            "https://evil.example/x",
            "evil.example/x",
            "/dash\u{7f}board",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), HOME_PATH, "{bad:?} must not be followed");
        }
        for good in ["/", "/dashboard/developers/api-keys/abc?x=1", "/admin/quota-requests#top", "/a//b"] {
            assert_eq!(safe_next(Some(good)), good);
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let args = Login { email: "ann@example.com".into(), password: TypedPassword("hunter2!".into()), next: None };
        let shown = format!("{args:?}");
        assert!(shown.contains("ann@example.com") && !shown.contains("hunter2"), "{shown}");
        let token = "0123456789abcdef".repeat(4);
        let typed = TypedPassword("a new one!".into());
        let args =
            ChooseNewPassword { token: LinkToken(token.clone()), new_password: typed.clone(), confirm_password: typed };
        let shown = format!("{args:?} {:?}", PasswordResetLink { token: LinkToken(token.clone()) });
        assert!(!shown.contains(&token) && !shown.contains("a new one"), "{shown}");
        let shown = format!("{:?}", super::super::TakeCreatedKey { token: LinkToken(token.clone()) });
        assert!(!shown.contains(&token), "{shown}");
        let created = super::super::CreatedKey {
            key: super::super::KeyView {
                id: "k".into(),
                name: "n".into(),
                prefix: "km_live_ab".into(),
                owner_email: "ann@example.com".into(),
                created_at: chrono::DateTime::UNIX_EPOCH,
                last_used_at: None,
                revoked_at: None,
                requests_per_hour: 1,
                requests_per_day: 1,
                burst_per_second: None,
                alert_emails: vec![],
                current_use: None,
                yours: true,
                viewer_is_admin: false,
                rolled_at: None,
                previous_secret: None,
            },
            secret: "km_live_topsecret".into(),
            api_base: "http://x".into(),
        };
        assert!(!format!("{created:?}").contains("topsecret"));
    }
}
