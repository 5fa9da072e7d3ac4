use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use super::layout::{PageTitle, SubmitButton};
use crate::api::Login;

#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    let next = move || use_query_map().read().get("next").unwrap_or_default();
    let error = move || login.value().get().and_then(|r| r.err()).map(|e| e.to_string());
    view! {
        <PageTitle text="Sign in · keymeter"/>
        <main class="login">
            <section class="card">
                <h1>"Sign in to keymeter"</h1>
                <ActionForm action=login>
                    <input type="hidden" name="next" value=next/>
                    <label>"Email" <input type="email" name="email" autocomplete="username" required/></label>
                    <label>"Password" <input type="password" name="password" autocomplete="current-password" required/></label>
                    <SubmitButton pending=login.pending()>"Sign in"</SubmitButton>
                </ActionForm>
                {move || error().map(|msg| view! { <p class="error" role="alert" data-testid="login-error">{msg}</p> })}
            </section>
        </main>
    }
}
