//! `/dashboard/account`: the signed-in account, and changing its password.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use super::form_error::FormError;
use super::layout::PageTitle;
use crate::api::{whoami, ChangePassword, PASSWORD_CHANGED};
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
                <label>"New password (at least 10 characters)"
                    <input type="password" name="new_password" autocomplete="new-password" required minlength="10"
                        maxlength="256" data-testid="new-password" {..error.on("new_password")}/>
                </label>
                <label>"New password again"
                    <input type="password" name="confirm_password" autocomplete="new-password" required
                        data-testid="confirm-password" {..error.on("confirm_password")}/>
                </label>
                <button type="submit">"Change password"</button>
            </ActionForm>
            <p class="ok" role="status" data-testid="password-changed">{done}</p>
            {error.message("password-error")}
        </section>
    }
}
