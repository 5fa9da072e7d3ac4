//! `/password-reset`: asking for a link to choose a new password, and `/password-reset/{token}`,
//! where the mailed link leads. Both are forms, so they work without JavaScript too.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_params_map, use_query_map};

use super::form_error::FormError;
use super::layout::{ErrorPanel, PageTitle, SubmitButton};
use crate::api::{password_reset_link, AskPasswordReset, ChooseNewPassword, LinkToken, RESET_LINK_ASKED};
use crate::error::AppError;
use crate::render_memo::once_per_render;

#[component]
pub fn PasswordResetPage() -> impl IntoView {
    let ask = ServerAction::<AskPasswordReset>::new();
    let error = FormError::of("reset-error", ask);
    let query = use_query_map();
    let asked = move || matches!(ask.value().get(), Some(Ok(()))) || query.read().get(RESET_LINK_ASKED).is_some();
    view! {
        <PageTitle text="Forgot your password · keymeter"/>
        <main class="login">
            <section class="card">
                <h1>"Forgot your password?"</h1>
                <p class="muted">
                    "Enter your account's email address: we mail it a link to choose a new password. "
                    "The link works once, for an hour."
                </p>
                <ActionForm action=ask>
                    <label>"Email"
                        <input type="email" name="email" autocomplete="username" required {..error.on("email")}/>
                    </label>
                    <SubmitButton pending=ask.pending() testid="ask-reset">"Mail me a link"</SubmitButton>
                </ActionForm>
                <p class="ok" role="status" data-testid="reset-asked">
                    {move || asked().then_some(
                        "If an account uses that address, a link is on its way to it. Nothing came? Check the spam folder, or ask your keymeter administrator.",
                    )}
                </p>
                {error.message("reset-error")}
                <p><A href="/login">"Back to sign in"</A></p>
            </section>
        </main>
    }
}

/// Where a mailed link leads. Opening it only shows the form (mail scanners open links).
#[component]
pub fn ChooseNewPasswordPage() -> impl IntoView {
    let params = use_params_map();
    let token = move || params.read().get("token").unwrap_or_default();
    let choose = ServerAction::<ChooseNewPassword>::new();
    let link = Resource::new(token, |t| {
        once_per_render("auth/password-reset/link", &t.clone(), password_reset_link(LinkToken(t)))
    });
    view! {
        <PageTitle text="Choose a new password · keymeter"/>
        <main class="login">
            <section class="card">
                <h1>"Choose a new password"</h1>
                <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
                    {move || Suspend::new(async move {
                        match link.await {
                            Ok(address) => view! { <ChooseForm token=token() address action=choose/> }.into_any(),
                            Err(AppError::BadRequest { message, .. }) => view! {
                                <p class="error" data-testid="reset-link-gone">{message}</p>
                                <p><A href="/password-reset">"Ask for a new link"</A></p>
                            }
                            .into_any(),
                            Err(err) => view! { <ErrorPanel err/> }.into_any(),
                        }
                    })}
                </Suspense>
            </section>
        </main>
    }
}

#[component]
fn ChooseForm(token: String, address: String, action: ServerAction<ChooseNewPassword>) -> impl IntoView {
    let error = FormError::of("choose-error", action);
    view! {
        <p>"For " <strong data-testid="reset-address">{address}</strong>". Every session of the account is signed out."</p>
        <ActionForm action>
            <input type="hidden" name="token" value=token/>
            <super::account::NewPasswordFields error/>
            <SubmitButton pending=action.pending() testid="choose-password">"Set the password"</SubmitButton>
        </ActionForm>
        {error.message("choose-error")}
    }
}
