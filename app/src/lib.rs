//! The keymeter web app: routes, pages and server functions, compiled twice: for the server
//! (`ssr`) and for the browser (`hydrate`).

pub mod api;
mod charts;
pub mod error;
mod pages;
mod render_memo;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{ParentRoute, Redirect, Route, Router, Routes};
use leptos_router::{path, SsrMode};

use pages::{account, admin, api_keys, layout, login, notifications, password_reset, quota_requests, usage};

/// The HTML document around the app, rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    #[cfg(feature = "ssr")]
    {
        content_security_policy();
        render_memo::provide();
    }
    let nonce = leptos::nonce::use_nonce();
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="data:,"/>
                <script src="/pkg/echarts.min.js" defer nonce=nonce></script>
                <HydrationScripts options/>
                <MetaTags/>
                // Without JavaScript: controls that need it go, their stand-ins show (see
                // main.css). Here, outside the hydrated app, and never applied with scripts on.
                <noscript><style>".needs-script { display: none !important; } .without-script { display: revert !important; }"</style></noscript>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// Only scripts carrying this page's nonce run (Leptos puts it on its hydration and data
/// scripts), and what they load themselves (`strict-dynamic`: the app's module and its WASM). A
/// script that got into the page some other way (text that escaped its escaping) does not run.
#[cfg(feature = "ssr")]
fn content_security_policy() {
    use axum::http::{header, HeaderValue};
    leptos::nonce::provide_nonce();
    let (Some(nonce), Some(response)) = (leptos::nonce::use_nonce(), use_context::<leptos_axum::ResponseOptions>())
    else {
        return;
    };
    let policy = format!(
        "default-src 'self'; script-src 'nonce-{nonce}' 'strict-dynamic' 'wasm-unsafe-eval'; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
         base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response.insert_header(header::CONTENT_SECURITY_POLICY, value);
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    layout::Announcer::provide();
    // Browser tests wait for this attribute: it proves the WASM loaded and the page is live.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        if let Some(body) = document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });

    view! {
        <Stylesheet id="keymeter" href="/pkg/keymeter.css"/>
        <Title text="keymeter"/>
        <Router>
            <Routes fallback=|| view! { <layout::NotFound/> }>
                <Route path=path!("/") view=|| view! { <Redirect path=api::HOME_PATH/> }/>
                <Route path=path!("/login") view=login::LoginPage/>
                <Route path=path!("/password-reset") view=password_reset::PasswordResetPage/>
                // Async: without JavaScript the form must be in the page as sent (not streamed in).
                <Route path=path!("/password-reset/:token") view=password_reset::ChooseNewPasswordPage ssr=SsrMode::Async/>
                <ParentRoute path=path!("/dashboard") view=layout::DashboardLayout ssr=SsrMode::Async>
                    <Route path=path!("") view=|| view! { <Redirect path=api::HOME_PATH/> }/>
                    <Route path=path!("developers/api-keys") view=api_keys::ApiKeysPage/>
                    <Route path=path!("developers/api-keys/:id") view=api_keys::ApiKeyPage/>
                    <Route path=path!("developers/api-keys/:id/usage") view=usage::UsagePage/>
                    <Route path=path!("notifications") view=notifications::NotificationsPage/>
                    <Route path=path!("account") view=account::AccountPage/>
                </ParentRoute>
                <ParentRoute path=path!("/admin") view=layout::AdminLayout ssr=SsrMode::Async>
                    <Route path=path!("") view=admin::AdminKeysPage/>
                    <Route path=path!("quota-requests") view=quota_requests::AdminQuotaRequestsPage/>
                    <Route path=path!("quota-changes") view=quota_requests::AdminQuotaChangesPage/>
                    <Route path=path!("accounts") view=admin::AdminAccountsPage/>
                    <Route path=path!("mail") view=admin::AdminMailPage/>
                </ParentRoute>
            </Routes>
            <layout::RouteAnnouncer/>
        </Router>
    }
}
