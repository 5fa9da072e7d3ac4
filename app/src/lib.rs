//! The keymeter web app: routes, pages and server functions, compiled twice: for the server
//! (`ssr`) and for the browser (`hydrate`).

pub mod api;
mod charts;
pub mod error;
mod pages;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{ParentRoute, Redirect, Route, Router, Routes};
use leptos_router::{path, SsrMode};

use pages::{admin, api_keys, layout, login, quota_requests, usage};

/// The HTML document around the app, rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="data:,"/>
                <script src="/pkg/echarts.min.js" defer></script>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
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
                <ParentRoute path=path!("/dashboard") view=layout::DashboardLayout ssr=SsrMode::Async>
                    <Route path=path!("") view=|| view! { <Redirect path=api::HOME_PATH/> }/>
                    <Route path=path!("developers/api-keys") view=api_keys::ApiKeysPage/>
                    <Route path=path!("developers/api-keys/:id") view=api_keys::ApiKeyPage/>
                    <Route path=path!("developers/api-keys/:id/usage") view=usage::UsagePage/>
                    <Route path=path!("notifications") view=quota_requests::NotificationsPage/>
                </ParentRoute>
                <ParentRoute path=path!("/admin") view=layout::AdminLayout ssr=SsrMode::Async>
                    <Route path=path!("") view=admin::AdminKeysPage/>
                    <Route path=path!("quota-requests") view=quota_requests::AdminQuotaRequestsPage/>
                    <Route path=path!("quota-changes") view=quota_requests::AdminQuotaChangesPage/>
                    <Route path=path!("mail") view=admin::AdminMailPage/>
                </ParentRoute>
            </Routes>
        </Router>
    }
}
