//! `/dashboard/developers/api-keys` (list, create, revoke) and one key's page.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;
use leptos_router::hooks::use_params_map;

use super::layout::ErrorPanel;
use crate::api::{get_key, list_keys, CreateKey, CreatedKey, KeyView, RevokeKey, SetAlertEmails};

#[component]
pub fn ApiKeysPage() -> impl IntoView {
    let create = ServerAction::<CreateKey>::new();
    let revoke = ServerAction::<RevokeKey>::new();
    let keys = Resource::new(move || (create.version().get(), revoke.version().get()), |_| list_keys());

    view! {
        <Title text="API keys · keymeter"/>
        <h1>"API keys"</h1>
        <section class="card">
            <h2>"Create a key"</h2>
            <ActionForm action=create>
                <div class="inline-form">
                    <label>
                        "Name"
                        <input name="name" required maxlength="100" placeholder="e.g. Checkout server" data-testid="key-name"/>
                    </label>
                    <button type="submit" disabled=move || create.pending().get()>"Create key"</button>
                </div>
            </ActionForm>
            {move || create.value().get().map(|result| match result {
                Ok(created) => view! { <NewSecret created/> }.into_any(),
                Err(err) => view! { <p class="error" role="alert">{err.to_string()}</p> }.into_any(),
            })}
        </section>
        {move || revoke.value().get().and_then(|r| r.err()).map(|err| view! {
            <p class="error" role="alert">{err.to_string()}</p>
        })}
        <section class="card">
            <h2>"Your keys"</h2>
            <Transition fallback=|| view! { <p class="loading">"Loading keys…"</p> }>
                {move || Suspend::new(async move {
                    match keys.await {
                        Ok(keys) if keys.is_empty() => view! {
                            <p class="empty" data-testid="no-keys">"No keys yet. Create one above to start calling the API."</p>
                        }.into_any(),
                        Ok(keys) => view! { <KeyTable keys revoke/> }.into_any(),
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

/// The freshly created secret, shown once, with a copy button.
#[component]
fn NewSecret(created: CreatedKey) -> impl IntoView {
    let copied = RwSignal::new(false);
    let secret = created.secret.clone();
    let copy = move |_| {
        #[cfg(feature = "hydrate")]
        {
            let _ = window().navigator().clipboard().write_text(&secret);
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = &secret;
        copied.set(true);
    };
    view! {
        <div class="new-secret" data-testid="new-key">
            <p>
                <strong>"Copy your new key now."</strong>
                " It is shown only this once; keymeter stores only a hash of it."
            </p>
            <div class="secret-row">
                <code data-testid="new-secret">{created.secret.clone()}</code>
                <button type="button" on:click=copy data-testid="copy-secret">
                    {move || if copied.get() { "Copied" } else { "Copy" }}
                </button>
            </div>
            <p class="hint">
                "Try it: "
                <code data-testid="try-it">
                    {format!("curl -H \"Authorization: Bearer {}\" {}/api/v1/ping", created.secret, created.api_base)}
                </code>
            </p>
        </div>
    }
}

#[component]
fn KeyTable(keys: Vec<KeyView>, revoke: ServerAction<RevokeKey>) -> impl IntoView {
    // The key whose revocation awaits confirmation.
    let confirming = RwSignal::new(None::<String>);
    let rows = keys
        .into_iter()
        .map(|key| {
            let id = key.id.clone();
            let revoked = key.is_revoked();
            let status = if revoked { "revoked" } else { "active" };
            let name = key.name.clone();
            let quota = quota_and_use(&key);
            let actions = move || {
                if revoked {
                    return view! { <span></span> }.into_any();
                }
                let id = id.clone();
                let is_confirming = confirming.get().as_deref() == Some(id.as_str());
                if is_confirming {
                    let name = name.clone();
                    view! {
                        <div class="confirm" role="alertdialog">
                            <span>{format!("Revoke \u{201c}{name}\u{201d}? Calls with it will be refused at once.")}</span>
                            <button class="danger" data-testid="confirm-revoke" on:click=move |_| {
                                revoke.dispatch(RevokeKey { id: id.clone() });
                                confirming.set(None);
                            }>"Revoke"</button>
                            <button class="link" on:click=move |_| confirming.set(None)>"Cancel"</button>
                        </div>
                    }.into_any()
                } else {
                    view! {
                        <button class="danger-outline" data-testid="revoke" on:click=move |_| confirming.set(Some(id.clone()))>
                            "Revoke…"
                        </button>
                    }.into_any()
                }
            };
            view! {
                <tr data-testid="key-row" data-key-id=key.id.clone() data-status=status>
                    <td>
                        <A href=format!("/dashboard/developers/api-keys/{}", key.id)>{key.name.clone()}</A>
                        " · "
                        <A href=format!("/dashboard/developers/api-keys/{}/usage", key.id)>"usage"</A>
                    </td>
                    <td><code>{format!("{}…", key.prefix)}</code></td>
                    <td>{format::time(&key.created_at)}</td>
                    <td>{format::time_or(key.last_used_at.as_ref(), "never")}</td>
                    <td><span class=format!("badge {status}")>{status}</span></td>
                    <td class="num" data-testid="key-quota">{quota}</td>
                    <td>{actions}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <div class="table-scroll"><table class="keys">
            <thead>
                <tr>
                    <th>"Name"</th><th>"Key"</th><th>"Created"</th><th>"Last used"</th>
                    <th>"Status"</th><th>"Quota and use"</th><th></th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table></div>
    }
}

/// "12 / 1,000 this hour · 40 / 10,000 today", or the quota alone when the use is not known
/// (revoked key, Redis unavailable).
fn quota_and_use(key: &KeyView) -> String {
    let (hour, day) = (format::count(key.requests_per_hour), format::count(key.requests_per_day));
    match key.current_use {
        Some(u) => format!("{} / {hour} this hour · {} / {day} today", format::count(u.hour), format::count(u.day)),
        None => format!("{hour}/h · {day}/day"),
    }
}

/// `/dashboard/developers/api-keys/{id}`: one key, for its owner or an admin; 404 otherwise.
#[component]
pub fn ApiKeyPage() -> impl IntoView {
    let params = use_params_map();
    let key = Resource::new(move || params.read().get("id").unwrap_or_default(), get_key);
    // Created here, before any await (see layout.rs).
    let requests = super::quota_requests::QuotaRequestsState::new(move || params.read().get("id").unwrap_or_default());
    let alerts = ServerAction::<SetAlertEmails>::new();
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match key.await {
                    Ok(key) => view! { <KeyDetails key requests alerts/> }.into_any(),
                    Err(err) => view! { <ErrorPanel err/> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn KeyDetails(
    key: KeyView,
    requests: super::quota_requests::QuotaRequestsState,
    alerts: ServerAction<SetAlertEmails>,
) -> impl IntoView {
    let requests = view! { <super::quota_requests::KeyQuotaRequests key=key.clone() state=requests/> };
    let alert_settings = view! { <AlertEmails key=key.clone() action=alerts/> };
    let status = if key.is_revoked() { "revoked" } else { "active" };
    view! {
        <Title text=format!("{} · API keys · keymeter", key.name)/>
        <p class="crumbs"><A href="/dashboard/developers/api-keys">"API keys"</A>" / "{key.name.clone()}</p>
        <div class="page-head">
            <h1 data-testid="key-title">{key.name.clone()}</h1>
            <A href=format!("/dashboard/developers/api-keys/{}/usage", key.id)>"View usage →"</A>
        </div>
        <section class="card">
            <dl class="facts">
                <dt>"Key"</dt><dd><code>{format!("{}…", key.prefix)}</code></dd>
                <dt>"Status"</dt><dd><span class=format!("badge {status}")>{status}</span></dd>
                <dt>"Owner"</dt><dd>{key.owner_email.clone()}</dd>
                <dt>"Created"</dt><dd>{format::time(&key.created_at)}</dd>
                <dt>"Last used"</dt><dd>{format::time_or(key.last_used_at.as_ref(), "never")}</dd>
                <dt>"Revoked"</dt><dd>{format::time_or(key.revoked_at.as_ref(), "—")}</dd>
                <dt>"Hourly quota"</dt><dd>{format!("{} requests per hour (UTC)", format::count(key.requests_per_hour))}</dd>
                <dt>"Daily quota"</dt><dd>{format!("{} requests per day (UTC)", format::count(key.requests_per_day))}</dd>
                <dt>"Burst limit"</dt><dd>{key.burst_per_second.map(|b| format!("{b} requests per second")).unwrap_or_else(|| "none".into())}</dd>
            </dl>
        </section>
        {alert_settings}
        {requests}
    }
}

/// Which quota alerts email the owner; the bell shows every alert regardless.
#[component]
fn AlertEmails(key: KeyView, action: ServerAction<SetAlertEmails>) -> impl IntoView {
    let (on_50, on_80, on_100) =
        (key.alert_emails.contains(&50), key.alert_emails.contains(&80), key.alert_emails.contains(&100));
    view! {
        <section class="card" data-testid="alert-emails">
            <h2>"Quota alerts"</h2>
            <p class="muted">"When this key uses 50%, 80% and 100% of its hourly or daily quota, you get a notification here. Choose which of them also email you."</p>
            <ActionForm action>
                <input type="hidden" name="id" value=key.id.clone()/>
                <div class="inline-form">
                    <label><input type="checkbox" name="email_50" checked=on_50 data-testid="alert-50"/>" 50%"</label>
                    <label><input type="checkbox" name="email_80" checked=on_80 data-testid="alert-80"/>" 80%"</label>
                    <label><input type="checkbox" name="email_100" checked=on_100 data-testid="alert-100"/>" 100%"</label>
                    <button type="submit" data-testid="alert-save">"Save"</button>
                </div>
            </ActionForm>
            {move || action.value().get().map(|r| match r {
                Ok(_) => view! { <p class="ok" data-testid="alert-saved">"Saved."</p> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
            })}
        </section>
    }
}
