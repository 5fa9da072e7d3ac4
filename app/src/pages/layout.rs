//! Page frames: the signed-in dashboard and admin layouts, error panels.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::{Outlet, Redirect, A};
use leptos_router::hooks::use_location;

use crate::api::{get_nav_counts, login_path_for, whoami, CurrentUser, Logout, NavCounts};
use crate::error::AppError;
use crate::render_memo::once_per_render;

/// `/login?next=<here>`. On the server a signed-out visit never gets here (the server's page
/// guard redirects first); this covers client-side navigation after a session ended.
fn login_path() -> String {
    let location = use_location();
    // The router's `search` comes without its `?`.
    let search = location.search.get_untracked();
    let here = location.pathname.get_untracked();
    login_path_for(&if search.is_empty() { here } else { format!("{here}?{search}") })
}

#[component]
fn NavBar(user: CurrentUser, counts: CountsResource) -> impl IntoView {
    let logout = ServerAction::<Logout>::new();
    // New notifications (alerts, decisions) arrive while a page stays open: the count is asked
    // again every half minute, until the session has ended.
    #[cfg(feature = "hydrate")]
    {
        let handle = set_interval_with_handle(
            move || {
                let signed_out = counts.get_untracked().is_some_and(|r| r == Err(AppError::Unauthorized));
                if !signed_out && logout.value().get_untracked().is_none() {
                    counts.refetch();
                }
            },
            std::time::Duration::from_secs(30),
        );
        on_cleanup(move || {
            if let Ok(h) = handle {
                h.clear();
            }
        });
    }
    view! {
        <header class="topbar">
            <a class="brand" href="/dashboard/developers/api-keys">"keymeter"</a>
            <nav>
                <A href="/dashboard/developers/api-keys">"API keys"</A>
                {user.is_admin.then(|| view! {
                    <A href="/admin" exact=true>"All keys"</A>
                    <A href="/admin/quota-requests" attr:data-testid="nav-quota-requests">
                        "Quota requests "
                        <Transition fallback=|| ()>
                            {move || Suspend::new(async move {
                                match counts.await {
                                    Ok(NavCounts { waiting_requests: Some(n), .. }) if n > 0 => view! {
                                        <span class="count" data-testid="waiting-requests">{n}<span class="visually-hidden">" waiting"</span></span>
                                    }.into_any(),
                                    _ => ().into_any(),
                                }
                            })}
                        </Transition>
                    </A>
                    <A href="/admin/quota-changes">"Quota changes"</A>
                    <A href="/admin/accounts">"Accounts"</A>
                    <A href="/admin/mail">"Mail"</A>
                })}
            </nav>
            <div class="account">
                <a
                    class="bell"
                    href="/dashboard/notifications"
                    title="Notifications"
                    data-testid="bell"
                >
                    // Its name, with the count below, for screen readers: "Notifications 2 unread".
                    <span class="visually-hidden">"Notifications"</span>
                    // An inline icon: an emoji bell needs an emoji font, which many machines lack.
                    <svg class="bell-icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true">
                        <path
                            fill="currentColor"
                            d="M12 2a1.5 1.5 0 0 0-1.5 1.5v.7A6 6 0 0 0 6 10v4.5L4 17v1h16v-1l-2-2.5V10a6 6 0 0 0-4.5-5.8v-.7A1.5 1.5 0 0 0 12 2zm-2 17a2 2 0 0 0 4 0z"
                        />
                    </svg>
                    <Transition fallback=|| ()>
                        {move || Suspend::new(async move {
                            match counts.await {
                                Ok(NavCounts { unread: n, .. }) if n > 0 => view! {
                                    <span class="count" data-testid="unread">{n}<span class="visually-hidden">" unread"</span></span>
                                }.into_any(),
                                _ => ().into_any(),
                            }
                        })}
                    </Transition>
                </a>
                <A href="/dashboard/account" attr:class="email" attr:title="Your account" attr:data-testid="account-email">
                    {user.email.clone()}
                </A>
                <ActionForm action=logout>
                    <button type="submit" class="link">"Sign out"</button>
                </ActionForm>
            </div>
        </header>
    }
}

/// The signed-in user and the top bar's counts, created before any await.
type UserResource = Resource<Result<Option<CurrentUser>, AppError>>;
type CountsResource = Resource<Result<NavCounts, AppError>>;

/// The top bar's counts (the bell's unread, the admins' waiting requests), for a page that
/// changes them (marking notifications read, deciding a request) to refetch.
#[derive(Clone, Copy)]
pub struct TopBarCounts(pub CountsResource);

fn account_resources() -> (UserResource, CountsResource) {
    let user = Resource::new(|| (), |_| once_per_render("auth/whoami", &(), whoami()));
    // Refreshed on every navigation within the signed-in pages; not on the way out (sign-out
    // lands on /login, where the session is gone and the count would only be refused).
    let location = use_location();
    let counts = Resource::new(
        move || location.pathname.get(),
        |path| {
            once_per_render("nav/counts", &path.clone(), async move {
                if path.starts_with("/dashboard") || path.starts_with("/admin") {
                    get_nav_counts().await
                } else {
                    Ok(NavCounts { unread: 0, waiting_requests: None })
                }
            })
        },
    );
    provide_context(TopBarCounts(counts));
    (user, counts)
}

/// Frame of every `/dashboard` page: signed-in users only.
#[component]
pub fn DashboardLayout() -> impl IntoView {
    let (user, counts) = account_resources();
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match user.await {
                    Ok(Some(user)) => view! {
                        <NavBar user counts/>
                        <main class="page"><Outlet/></main>
                    }.into_any(),
                    Ok(None) => view! { <Redirect path=login_path()/> }.into_any(),
                    Err(err) => view! { <main class="page"><ErrorPanel err/></main> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// Frame of every `/admin` page: admins only; others get 403.
#[component]
pub fn AdminLayout() -> impl IntoView {
    let (user, counts) = account_resources();
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match user.await {
                    Ok(Some(user)) if user.is_admin => view! {
                        <NavBar user counts/>
                        <main class="page"><Outlet/></main>
                    }.into_any(),
                    Ok(Some(user)) => view! {
                        <NavBar user counts/>
                        <main class="page"><ErrorPanel err=AppError::Forbidden/></main>
                    }.into_any(),
                    Ok(None) => view! { <Redirect path=login_path()/> }.into_any(),
                    Err(err) => view! { <main class="page"><ErrorPanel err/></main> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The page's `<title>`. leptos_meta writes a title's text into the server-rendered HTML as it
/// is, so a key name such as `</title><script>…` would end the element and inject markup into
/// the page (an admin opening that key's page would run it). The server escapes the text; the
/// browser sets `document.title` from the raw text, which needs no escaping.
#[component]
pub fn PageTitle(#[prop(into)] text: String) -> impl IntoView {
    #[cfg(feature = "ssr")]
    let text = format::html_escape(&text);
    // (Effects run in the browser only.)
    if let Some(announcer) = use_context::<Announcer>() {
        let (title, location) = (text.clone(), use_location());
        Effect::new(move |_| announcer.page_shown(location.pathname.get_untracked(), title.clone()));
    }
    view! { <Title text/> }
}

/// A form's submit button that refuses a second submission while the first is pending. Not
/// `disabled` then: a browser takes the focus off a button it disables, and a keyboard user
/// would be back at the top of the page when the answer (an error, say) comes.
#[component]
pub fn SubmitButton(
    #[prop(into)] pending: Signal<bool>,
    #[prop(optional)] testid: Option<&'static str>,
    /// What a screen reader calls it, when its words alone do not say (a row's "Disable").
    #[prop(optional)]
    label: Option<String>,
    /// `danger` for one that takes something away.
    #[prop(optional)]
    class: Option<&'static str>,
    /// For a [`ConfirmInPlace`] to focus it.
    #[prop(optional)]
    node_ref: NodeRef<leptos::html::Button>,
    children: Children,
) -> impl IntoView {
    view! {
        <button type="submit" class=class data-testid=testid aria-label=label aria-disabled=move || pending.get().then_some("true")
            node_ref=node_ref on:click=move |ev| if pending.get_untracked() { ev.prevent_default() }>
            {children()}
        </button>
    }
}

/// An action that takes something away ("Revoke…", "Disable…") asks first, in place: a
/// `<details>` holding the question and the form that answers yes, so it also works without
/// JavaScript (there the opener stays, to close it again; there is no Cancel). With it, opening
/// moves the focus to the confirming button, and Cancel or Escape close the question and give
/// the focus back to the opener, not to the top of the page.
#[component]
pub fn ConfirmInPlace(
    /// The opener's words ("Revoke…").
    opener: &'static str,
    /// Its name for screen readers, where the words alone repeat on the page (a list's rows).
    #[prop(optional)]
    opener_label: Option<String>,
    opener_testid: &'static str,
    /// What a screen reader calls the question ("Confirm revocation").
    dialog_label: &'static str,
    /// Unique on the page: the dialog is described by the question through it.
    question_id: String,
    #[prop(into)] question: Signal<String>,
    /// The question as a page without JavaScript asks it, when `question` follows choices made
    /// on the page (which only a script can read).
    #[prop(optional, into)]
    question_without_script: Option<String>,
    /// The confirming button, inside `children`.
    confirm: NodeRef<leptos::html::Button>,
    /// The form that answers yes.
    children: Children,
) -> impl IntoView {
    let details = NodeRef::<leptos::html::Details>::new();
    let opener_ref = NodeRef::<leptos::html::Summary>::new();
    let scripted = RwSignal::new(false);
    Effect::new(move |_| {
        scripted.set(true);
        // A page made again after an answer (a roll, a switch) keeps its elements in place, an
        // open question too: whatever it asked was answered, or asked of older data.
        if let Some(d) = details.get() {
            d.set_open(false);
        }
    });
    let close = move || {
        if let Some(d) = details.get_untracked() {
            d.set_open(false);
        }
        // The opener is hidden while the question shows (CSS), so the focus was not there.
        if let Some(s) = opener_ref.get_untracked() {
            let _ = s.focus();
        }
    };
    let describes = question_id.clone();
    // Until the page runs its script (and for good without one), as the page was sent.
    let asked = move || match (&question_without_script, scripted.get()) {
        (Some(unscripted), false) => unscripted.clone(),
        _ => question.get(),
    };
    view! {
        <details class="revoke" class:scripted=move || scripted.get() node_ref=details
            on:toggle=move |_| {
                if details.get_untracked().is_some_and(|d| d.open()) {
                    if let Some(b) = confirm.get_untracked() {
                        let _ = b.focus();
                    }
                }
            }
            on:keydown=move |ev| if ev.key() == "Escape" { close() }>
            <summary class="danger-outline" aria-label=opener_label data-testid=opener_testid node_ref=opener_ref>{opener}</summary>
            <div class="confirm" role="alertdialog" aria-label=dialog_label aria-describedby=describes>
                <span id=question_id>{asked}</span>
                {children()}
                <button type="button" class="link" hidden=move || !scripted.get() on:click=move |_| close()>"Cancel"</button>
            </div>
        </details>
    }
    // Erased: inside a table row its full type is too deep for the WASM build.
    .into_any()
}

/// `?page=` of a paged list: from 1; anything else is the first page.
pub fn page_number(query: &leptos_router::params::ParamsMap) -> u32 {
    query.get("page").and_then(|p| p.parse::<u32>().ok()).unwrap_or(1).max(1)
}

/// "Previous" and "Next" under a paged list, each only where there is such a page.
#[component]
pub fn Pager(previous: Option<String>, next: Option<String>) -> impl IntoView {
    // No empty navigation landmark when everything fits on one page.
    (previous.is_some() || next.is_some()).then(|| {
        view! {
            <nav class="pager" aria-label="Pages">
                {previous.map(|href| view! { <A href=href attr:data-testid="previous">"Previous"</A> })}
                {next.map(|href| view! { <A href=href attr:data-testid="next">"Next"</A> })}
            </nav>
        }
    })
}

/// In place of a paged list whose `?page=` lies past its end (an old link, a list that shrank):
/// the way back to its first page.
#[component]
pub fn PastTheEnd(first: String) -> impl IntoView {
    view! {
        <p class="empty" data-testid="past-end">
            "This page is past the end of the list. " <A href=first>"Back to the first page"</A>
        </p>
    }
}

/// What a form just did, said where the keyboard is: the form that was sent is often gone
/// afterwards (a request asked, a key revoked), and focus would fall back to the page's start,
/// leaving keyboard and screen-reader users unsure what happened. It takes the focus when it
/// appears.
#[component]
pub fn Confirmation(#[prop(into)] text: String, testid: &'static str) -> impl IntoView {
    let node = NodeRef::<leptos::html::P>::new();
    Effect::new(move |_| {
        if let Some(p) = node.get() {
            let _ = p.focus();
        }
    });
    // No `role=status`: focused, it is read already (a live region would read it twice).
    view! { <p class="ok confirmation" tabindex="-1" data-testid=testid node_ref=node>{text}</p> }
}

/// Brings the element the address' `#fragment` names into view once a list that holds it has
/// rendered, once per page: a browser does so on a page load, but not when the router shows the
/// page (a bell entry's link) and the list arrives after it. Placed after the list's items.
#[component]
pub fn ScrollToLinked(done: StoredValue<bool>) -> impl IntoView {
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        if done.get_value() {
            return;
        }
        request_animation_frame(move || {
            let hash = window().location().hash().unwrap_or_default();
            match hash.strip_prefix('#').filter(|id| !id.is_empty()) {
                None => done.set_value(true),
                // Not listed yet (a list fetched again may have it): looked for on its next render.
                Some(id) => {
                    if let Some(element) = document().get_element_by_id(id) {
                        done.set_value(true);
                        element.scroll_into_view();
                    }
                }
            }
        });
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = done;
}

/// Where page titles are announced to screen readers: the router swaps pages without a load,
/// which they would not announce. Each page's [`PageTitle`] puts its title here when it
/// appears once the reader has left the page the browser loaded (a page load reads the title
/// itself), as a page load would have it read. A page whose title needs its data (a key's name)
/// sets it once that has loaded, so what is read is the new page's title, not a passing one.
#[derive(Clone, Copy)]
pub struct Announcer {
    said: RwSignal<String>,
    /// The path of the page the browser loaded, and whether the reader has left it since.
    loaded_path: StoredValue<Option<String>>,
    moved: StoredValue<bool>,
}

impl Announcer {
    /// Made once, above the router, for every page below it.
    pub fn provide() {
        #[cfg(feature = "hydrate")]
        let loaded_path = window().location().pathname().ok();
        #[cfg(not(feature = "hydrate"))]
        let loaded_path = None;
        provide_context(Self {
            said: RwSignal::new(String::new()),
            loaded_path: StoredValue::new(loaded_path),
            moved: StoredValue::new(false),
        });
    }

    /// Announces `title` if the page showing it is not the one the browser loaded.
    fn page_shown(self, path: String, title: String) {
        if self.moved.get_value() || self.loaded_path.get_value().as_ref() != Some(&path) {
            self.moved.set_value(true);
            self.said.set(title);
        }
    }
}

/// The polite live region of the [`Announcer`].
#[component]
pub fn RouteAnnouncer() -> impl IntoView {
    let said = use_context::<Announcer>().map(|a| a.said);
    view! {
        <p class="visually-hidden" aria-live="polite" aria-atomic="true" data-testid="route-announcer">
            {move || said.map(|s| s.get()).unwrap_or_default()}
        </p>
    }
}

/// Shows an error to the user; during server rendering it also sets the page's HTTP status.
#[component]
pub fn ErrorPanel(err: AppError) -> impl IntoView {
    // Not for "sign in required": the layout redirects to the sign-in page, and a status set
    // here would spoil that redirect.
    #[cfg(feature = "ssr")]
    if let (Some(response), false) =
        (use_context::<leptos_axum::ResponseOptions>(), matches!(err, AppError::Unauthorized))
    {
        if let Ok(status) = axum::http::StatusCode::from_u16(err.status()) {
            response.set_status(status);
        }
    }
    // Which error a page shows is worth knowing when a browser test fails.
    #[cfg(feature = "hydrate")]
    leptos::logging::warn!("error panel: {err:?}");
    if err == AppError::Unavailable {
        return view! { <DataDelayed/> }.into_any();
    }
    // The session ended while the page was open (signed out elsewhere, or it expired): the way
    // on is signing in again, back to this page.
    if err == AppError::Unauthorized {
        return view! {
            <section class="card error-panel" role="alert" data-testid="error-panel">
                <h1>"Your session has ended"</h1>
                <p>"You were signed out, here or in another tab. Sign in again to go on."</p>
                <p><a href=login_path() data-testid="sign-in-again">"Sign in again"</a></p>
            </section>
        }
        .into_any();
    }
    let title = match err {
        AppError::NotFound => "Not found",
        AppError::Forbidden => "Forbidden",
        _ => "Something went wrong",
    };
    // A page that is not there, or not this user's, is titled so (its own title needs its data).
    let page_title = matches!(err, AppError::NotFound | AppError::Forbidden)
        .then(|| view! { <PageTitle text=format!("{title} · keymeter")/> });
    view! {
        {page_title}
        <section class="card error-panel" role="alert" data-testid="error-panel">
            <h1>{title}</h1>
            <p>{err.to_string()}</p>
            <p><a href="/dashboard/developers/api-keys">"Back to your API keys"</a></p>
        </section>
    }
    .into_any()
}

/// Shown instead of an error while the database is away: usage is still being recorded, and the
/// page reloads itself until the data is back.
#[component]
fn DataDelayed() -> impl IntoView {
    #[cfg(feature = "hydrate")]
    {
        let handle = set_timeout_with_handle(
            || {
                if let Some(w) = web_sys::window() {
                    let _ = w.location().reload();
                }
            },
            std::time::Duration::from_secs(10),
        );
        on_cleanup(move || {
            if let Ok(h) = handle {
                h.clear();
            }
        });
    }
    view! {
        <section class="card delayed-panel" role="status" data-testid="data-delayed">
            <h1>"Data delayed"</h1>
            <p>{AppError::Unavailable.to_string()}</p>
            <p class="muted">"This page tries again every 10 seconds."</p>
        </section>
    }
}

#[component]
pub fn NotFound() -> impl IntoView {
    view! {
        <PageTitle text="Not found · keymeter"/>
        <main class="page"><ErrorPanel err=AppError::NotFound/></main>
    }
}
