use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::use_query_map;

use super::layout::{PageTitle, SubmitButton};
use crate::api::{kept_sign_in_email, Login, PASSWORD_WAS_RESET};

#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    let next = move || use_query_map().read().get("next").unwrap_or_default();
    let error = move || login.value().get().and_then(|r| r.err()).map(|e| e.to_string());
    // Back from choosing a new password through a mailed link.
    let reset = move || use_query_map().read().get(PASSWORD_WAS_RESET).is_some();
    // Refused without JavaScript: the address typed comes back (the password never does).
    let typed_email = kept_sign_in_email();
    view! {
        <PageTitle text="Sign in · keymeter"/>
        <main class="login">
            <section class="card">
                <h1>"Sign in to keymeter"</h1>
                {move || reset().then(|| view! {
                    <p class="ok" role="status" data-testid="password-was-reset">
                        "Your password was changed. Sign in with the new one."
                    </p>
                })}
                <ActionForm action=login>
                    <input type="hidden" name="next" value=next/>
                    <label>"Email" <input type="email" name="email" autocomplete="username" required value=typed_email/></label>
                    <label>"Password" <input type="password" name="password" autocomplete="current-password" required/></label>
                    <SubmitButton pending=login.pending()>"Sign in"</SubmitButton>
                </ActionForm>
                {move || error().map(|msg| view! { <p class="error" role="alert" data-testid="login-error">{msg}</p> })}
                <p><A href="/password-reset">"Forgot your password?"</A></p>
            </section>
        </main>
    }
}
