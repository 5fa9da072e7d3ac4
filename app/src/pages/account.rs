//! `/dashboard/account`: the signed-in account, changing its password, and where it is signed in.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use super::form_error::FormError;
use super::layout::{ErrorPanel, PageTitle, SubmitButton};
use crate::api::{
    list_sessions, whoami, ChangePassword, SessionView, SignOutOthers, OTHERS_SIGNED_OUT, PASSWORD_CHANGED,
};
use crate::render_memo::once_per_render;

#[component]
pub fn AccountPage() -> impl IntoView {
    let me = Resource::new(|| (), |()| once_per_render("auth/whoami", &(), whoami()));
    view! {
        <PageTitle text="Account · keymeter"/>
        <h1>"Account"</h1>
        <section class="card">
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    me.await.ok().flatten().map(|user| view! {
                        <p>"Signed in as " <strong data-testid="account-address">{user.email}</strong>
                        {user.is_admin.then_some(" (admin)")}"."</p>
                    })
                })}
            </Transition>
        </section>
        <PasswordCard/>
        <SessionsCard/>
    }
}

/// A form, so that it also works without JavaScript. The browser's password manager sees the
/// usual `current-password`/`new-password` fields.
#[component]
fn PasswordCard() -> impl IntoView {
    let action = ServerAction::<ChangePassword>::new();
    let error = FormError::of("password-error", action);
    let form = NodeRef::<leptos::html::Form>::new();
    // Typed passwords do not stay on the screen once changed.
    Effect::new(move |_| {
        if matches!(action.value().get(), Some(Ok(_))) {
            if let Some(form) = form.get() {
                form.reset();
            }
        }
    });
    // Without JavaScript the change comes back as a new load of this page, saying so in its
    // address.
    let query = use_query_map();
    let changed_without_script = move || query.read().get(PASSWORD_CHANGED).and_then(|n| n.parse::<usize>().ok());
    let done = move || match action.value().get().or_else(|| changed_without_script().map(Ok)) {
        Some(Ok(0)) => "Password changed.",
        Some(Ok(_)) => "Password changed. Your other sessions were signed out.",
        _ => "",
    };
    view! {
        <section class="card" data-testid="password">
            <h2>"Password"</h2>
            <p class="muted">"Changing it signs you out everywhere else."</p>
            <ActionForm action node_ref=form>
                <label>"Current password"
                    <input type="password" name="current_password" autocomplete="current-password" required
                        data-testid="current-password" {..error.on("current_password")}/>
                </label>
                <NewPasswordFields error/>
                <button type="submit">"Change password"</button>
            </ActionForm>
            <p class="ok" role="status" data-testid="password-changed">{done}</p>
            {error.message("password-error")}
        </section>
    }
}

/// A new password and its confirmation, as the password policy has them (10–256 characters):
/// changing a password here and choosing one through a mailed link ask the same.
#[component]
pub fn NewPasswordFields(error: FormError) -> impl IntoView {
    view! {
        <label>"New password (at least 10 characters)"
            <input type="password" name="new_password" autocomplete="new-password" required minlength="10"
                maxlength="256" data-testid="new-password" {..error.on("new_password")}/>
        </label>
        <label>"New password again"
            <input type="password" name="confirm_password" autocomplete="new-password" required
                data-testid="confirm-password" {..error.on("confirm_password")}/>
        </label>
    }
}

/// Where the account is signed in, and a way to sign out everywhere else (a form: it also
/// works without JavaScript).
#[component]
fn SessionsCard() -> impl IntoView {
    let action = ServerAction::<SignOutOthers>::new();
    let sessions =
        Resource::new(move || action.version().get(), |v| once_per_render("auth/sessions", &v, list_sessions()));
    let error = FormError::of("sessions-error", action);
    let query = use_query_map();
    let ended_without_script = move || query.read().get(OTHERS_SIGNED_OUT).and_then(|n| n.parse::<usize>().ok());
    let done = move || match action.value().get().and_then(Result::ok).or_else(ended_without_script) {
        Some(0) => "You were signed in nowhere else.".to_owned(),
        Some(1) => "Signed out of 1 other session.".to_owned(),
        Some(n) => format!("Signed out of {n} other sessions."),
        None => String::new(),
    };
    view! {
        <section class="card" data-testid="sessions">
            <h2>"Where you are signed in"</h2>
            <p class="muted">"A session ends after 12 hours unused, and 7 days after signing in."</p>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match sessions.await {
                        Ok(list) => view! { <SessionList list/> }.into_any(),
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Transition>
            <div class="after-list">
                <ActionForm action>
                    <SubmitButton pending=action.pending() testid="sign-out-others">"Sign out everywhere else"</SubmitButton>
                </ActionForm>
            </div>
            <p class="ok" role="status" data-testid="others-signed-out">{done}</p>
            {error.message("sessions-error")}
        </section>
    }
}

#[component]
fn SessionList(list: Vec<SessionView>) -> impl IntoView {
    view! {
        <div class="table-scroll"><table class="stacked" data-testid="session-list">
            <thead><tr><th>"Browser"</th><th>"Signed in"</th><th>"Last active"</th></tr></thead>
            <tbody>
                {list.into_iter().map(|s| {
                    let browser = if s.browser.is_empty() { "A browser".to_owned() } else { s.browser };
                    view! {
                        <tr data-testid="session-row">
                            <td data-label="Browser">{browser}" "{s.this_browser.then(|| view! { <span class="badge active">"This browser"</span> })}</td>
                            <td class="when" data-label="Signed in">{format::time(&s.signed_in_at)}</td>
                            <td class="when" data-label="Last active">{format::time(&s.last_active_at)}</td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table></div>
    }
}
