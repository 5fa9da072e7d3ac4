//! `/dashboard/developers/api-keys` (list, create, revoke) and one key's page.

use std::collections::HashMap;

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_params_map, use_query_map};

use super::form_error::FormError;
use super::layout::{
    page_number, ConfirmInPlace, Confirmation, ErrorPanel, PageTitle, Pager, PastTheEnd, SubmitButton,
};
use crate::api::plain_form;
use crate::api::{
    get_key, list_keys, take_created_key, AdminSetQuota, CreateKey, CreatedKey, EndKeyOverlap, KeyView, LinkToken,
    PreviousSecretView, RenameKey, RevokeKey, RollKey, SetAlertEmails, ALERTS_SAVED, OVERLAP_ENDED, RENAMED, REVOKED,
};
use crate::render_memo::once_per_render;

#[component]
pub fn ApiKeysPage() -> impl IntoView {
    let create = ServerAction::<CreateKey>::new();
    let create_error = FormError::of("create-key-error", create);
    // A name refused without JavaScript comes back in the address.
    let typed_name = plain_form::kept::<CreateKey>("name");
    let revoke = ServerAction::<RevokeKey>::new();
    let revoked_without_script = plain_form::done(REVOKED);
    let query = use_query_map();
    // 50 a page (`?page=`), active keys first.
    let page = move || page_number(&query.read());
    let keys = Resource::new(
        move || (page(), create.version().get(), revoke.version().get()),
        |(page, created, revoked)| once_per_render("keys/list", &(page, created, revoked), list_keys(page)),
    );
    // Use and limits change while the list stays open (calls, an admin's decision): the page's
    // keys are read again every half minute while it is in view, and only that column follows
    // them, so an open confirmation or a half-typed name is left alone. Key id → the column's
    // text. Only when the keys themselves changed (created, renamed or revoked elsewhere) are
    // the rows made again.
    let latest_use = RwSignal::new(HashMap::<String, String>::new());
    let rows_shown = StoredValue::new(Vec::new());
    // A reading taken before the list itself was read again (a key created or revoked, another
    // page) may be older than the rows: it is dropped.
    let list_state = move || {
        Some((
            query.try_with_untracked(page_number)?,
            create.version().try_get_untracked()?,
            revoke.version().try_get_untracked()?,
        ))
    };
    Effect::new(move |_| {
        let _ = (page(), create.version().get(), revoke.version().get());
        latest_use.set(HashMap::new());
    });
    #[cfg(feature = "hydrate")]
    {
        let handle = set_interval_with_handle(
            move || {
                // Not for a tab in the background: it reads again once it is looked at.
                if document().hidden() {
                    return;
                }
                let Some(before) = list_state() else { return };
                leptos::task::spawn_local(async move {
                    // A failed reading (signed out, server restarting) keeps what is shown.
                    let Ok(found) = list_keys(before.0).await else { return };
                    if list_state() != Some(before) {
                        return;
                    }
                    if rows_shown.try_with_value(|shown| *shown == rows_of(&found.keys)) == Some(false) {
                        let _ = latest_use.try_set(HashMap::new());
                        keys.refetch();
                    } else {
                        let texts = found.keys.iter().map(|key| (key.id.clone(), quota_and_use(key))).collect();
                        let _ = latest_use.try_set(texts);
                    }
                });
            },
            std::time::Duration::from_secs(30),
        );
        on_cleanup(move || {
            if let Ok(h) = handle {
                h.clear();
            }
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = list_state;
    // A key created without JavaScript: its post came back here with a one-time token.
    let handed_over = Resource::new(
        move || query.read().get(plain_form::CREATED),
        // Through the memo: the hand-off is used up by the first read.
        |token| {
            once_per_render("keys/created", &token.clone(), async move {
                match token {
                    Some(token) => take_created_key(LinkToken(token)).await.map(|created| (true, created)),
                    None => Ok((false, None)),
                }
            })
        },
    );

    view! {
        <PageTitle text="API keys · keymeter"/>
        <h1>"API keys"</h1>
        <section class="card" id=crate::api::CREATE_AT>
            <h2>"Create a key"</h2>
            <ActionForm action=create>
                <div class="inline-form">
                    <label>
                        "Name"
                        <input name="name" required maxlength="100" placeholder="e.g. Checkout server" value=move || typed_name.get() data-testid="key-name" {..create_error.on("name")}/>
                    </label>
                    <SubmitButton pending=create.pending()>"Create key"</SubmitButton>
                </div>
            </ActionForm>
            {move || create.value().get().and_then(Result::ok).map(|created| view! { <NewSecret created/> })}
            {create_error.message("create-key-error")}
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    match handed_over.await {
                        Ok((_, Some(created))) => view! { <NewSecret created/> }.into_any(),
                        Ok((true, None)) => view! {
                            <p class="muted" data-testid="secret-gone">
                                "A new key's secret is shown only once; this one was shown already or has expired. If you did not copy it, revoke that key and create another."
                            </p>
                        }.into_any(),
                        Ok((false, None)) => ().into_any(),
                        Err(err) => view! { <p class="error" role="alert">{err.to_string()}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
        // Where a refused revocation posted without JavaScript returns (the key's page has a
        // section of that id too; the two are never one page).
        <div id=crate::api::REVOKE_AT>
            {move || match revoke.value().get() {
                // The row's "Revoke…" is gone with the key: say so where the keyboard was.
                Some(Ok(key)) => Some(view! { <Confirmation text=revoked_text(Some(&key.name)) testid="revoked"/> }.into_any()),
                Some(Err(err)) => Some(view! { <p class="error" role="alert">{err.to_string()}</p> }.into_any()),
                // A post without JavaScript came back to a new page.
                None => revoked_without_script.get()
                    .then(|| view! { <Confirmation text=revoked_text(None) testid="revoked"/> }.into_any()),
            }}
        </div>
        <section class="card">
            <h2>"Your keys"</h2>
            <Transition fallback=|| view! { <p class="loading">"Loading keys…"</p> }>
                {move || Suspend::new(async move {
                    let page = page();
                    let keys = keys.await;
                    if let Ok(found) = &keys {
                        rows_shown.set_value(rows_of(&found.keys));
                    }
                    match keys {
                        Ok(found) if found.keys.is_empty() && page == 1 => view! {
                            <p class="empty" data-testid="no-keys">"No keys yet. Create one above to start calling the API."</p>
                        }.into_any(),
                        Ok(found) => {
                            let href = |page: u32| match page {
                                1 => "/dashboard/developers/api-keys".to_owned(),
                                n => format!("/dashboard/developers/api-keys?page={n}"),
                            };
                            // Past the end, "Previous" could lead to another empty page.
                            let previous = (page > 1 && !found.keys.is_empty()).then(|| href(page - 1));
                            let next = found.more.then(|| href(page + 1));
                            // Type-erased: the table's view type is deep enough to overflow
                            // the WASM build's query depth when nested further.
                            let table = if found.keys.is_empty() {
                                view! { <PastTheEnd first=href(1)/> }.into_any()
                            } else {
                                view! { <KeyTable keys=found.keys revoke latest_use/> }.into_any()
                            };
                            view! { {table} <Pager previous next/> }.into_any()
                        }
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
    // The keyboard goes to "Copy": the secret is what the user came for, and it is shown once.
    let copy_button = NodeRef::<leptos::html::Button>::new();
    Effect::new(move |_| {
        if let Some(b) = copy_button.get() {
            let _ = b.focus();
        }
    });
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
                <button type="button" class="needs-script" on:click=copy data-testid="copy-secret" node_ref=copy_button>
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
fn KeyTable(
    keys: Vec<KeyView>,
    revoke: ServerAction<RevokeKey>,
    latest_use: RwSignal<HashMap<String, String>>,
) -> impl IntoView {
    let rows = keys
        .into_iter()
        .map(|key| {
            let revoked = key.is_revoked();
            let status = key.status();
            let loaded = quota_and_use(&key);
            let id = key.id.clone();
            let quota = move || latest_use.with(|texts| texts.get(&id).cloned()).unwrap_or_else(|| loaded.clone());
            let actions = (!revoked).then(|| view! { <RevokeButton id=key.id.clone() name=key.name.clone() revoke/> });
            let usage_label = format!("Usage of {}", key.name);
            view! {
                <tr data-testid="key-row" data-key-id=key.id.clone() data-status=status>
                    <td>
                        <A href=format!("/dashboard/developers/api-keys/{}", key.id)>{key.name.clone()}</A>
                        " · "
                        <A href=format!("/dashboard/developers/api-keys/{}/usage", key.id) attr:aria-label=usage_label>"usage"</A>
                    </td>
                    <td data-label="Key"><code>{format!("{}…", key.prefix)}</code></td>
                    <td class="when" data-label="Created">{format::time(&key.created_at)}</td>
                    <td class="when" data-label="Last used">{format::time_or(key.last_used_at.as_ref(), "never")}</td>
                    <td data-label="Status"><span class=format!("badge {status}")>{status}</span></td>
                    <td class="num" data-label="Quota and use (UTC)" data-testid="key-quota">{quota}</td>
                    <td>{actions}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <div class="table-scroll"><table class="keys stacked">
            <thead>
                <tr>
                    <th>"Name"</th><th>"Key"</th><th>"Created"</th><th>"Last used"</th>
                    <th>"Status"</th><th>"Quota and use (UTC)"</th><th></th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table></div>
    }
}

/// "Revoke…", asked in place ([`ConfirmInPlace`]).
#[component]
fn RevokeButton(id: String, name: String, revoke: ServerAction<RevokeKey>) -> impl IntoView {
    let confirm = NodeRef::<leptos::html::Button>::new();
    view! {
        <ConfirmInPlace opener="Revoke…" opener_label=format!("Revoke \u{201c}{name}\u{201d}…") opener_testid="revoke" dialog_label="Confirm revocation"
            question_id=format!("revoke-question-{id}")
            question=format!("Revoke \u{201c}{name}\u{201d}? Calls with it will be refused within seconds.")
            confirm>
            <ActionForm action=revoke>
                <input type="hidden" name="id" value=id/>
                <button type="submit" class="danger" data-testid="confirm-revoke" node_ref=confirm>"Revoke"</button>
            </ActionForm>
        </ConfirmInPlace>
    }
}

/// What revoking a key (named, when the page knows which) says.
fn revoked_text(name: Option<&str>) -> String {
    match name {
        Some(name) => format!("\u{201c}{name}\u{201d} is revoked: calls with it are refused."),
        None => "The key is revoked: calls with it are refused.".to_owned(),
    }
}

/// What the list's rows show of each key besides its use: a reading that differs makes them again.
fn rows_of(keys: &[KeyView]) -> Vec<(String, String, &'static str)> {
    keys.iter().map(|key| (key.id.clone(), key.name.clone(), key.status())).collect()
}

/// "12 / 1,000 this hour · 40 / 10,000 today", or the quota alone when the use is not known
/// (revoked key, Redis unavailable).
fn quota_and_use(key: &KeyView) -> String {
    match key.current_use {
        Some(u) => format!(
            "{} / {} this hour · {} / {} today",
            format::count(u.hour),
            format::count(key.requests_per_hour),
            format::count(u.day),
            format::count(key.requests_per_day)
        ),
        None => format::limits(key.requests_per_hour, key.requests_per_day),
    }
}

/// `/dashboard/developers/api-keys/{id}`: one key, for its owner or an admin; 404 otherwise.
#[component]
pub fn ApiKeyPage() -> impl IntoView {
    let params = use_params_map();
    // Created here, before any await (see layout.rs).
    let set_quota = ServerAction::<AdminSetQuota>::new();
    let rename = ServerAction::<RenameKey>::new();
    let roll = ServerAction::<RollKey>::new();
    let end_overlap = ServerAction::<EndKeyOverlap>::new();
    let revoke = ServerAction::<RevokeKey>::new();
    let (quota_set, rolled, revoked) = (key_changes(set_quota), key_changes(roll), key_changes(revoke));
    let key = Resource::new(
        move || {
            // Stopping the previous secret updates the page in place (see `KeyDetails`).
            let versions = (quota_set.get(), rolled.get(), revoked.get());
            (params.read().get("id").unwrap_or_default(), versions)
        },
        |(id, versions)| once_per_render("keys/get", &(id.clone(), versions), get_key(id)),
    );
    // A key rolled without JavaScript: its post came back here with a one-time token.
    let query = use_query_map();
    let handed_over = Resource::new(
        move || query.read().get(plain_form::ROLLED),
        // Through the memo: the hand-off is used up by the first read.
        |token| once_per_render("keys/rolled", &token.clone(), async move { NewSecretHandOff::take(token).await }),
    );
    let requests = super::quota_requests::QuotaRequestsState::new(move || params.read().get("id").unwrap_or_default());
    // Revoking the key cancels its open request.
    requests.refetch_on(move || revoke.version().get());
    let alerts = ServerAction::<SetAlertEmails>::new();
    let actions = KeyActions { alerts, set_quota, rename, roll, end_overlap, revoke };
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let handed_over = handed_over.await;
                match key.await {
                    Ok(key) => view! { <KeyDetails key requests actions handed_over/> }.into_any(),
                    Err(err) => view! { <ErrorPanel err/> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The forms of a key's page, made before its first await (see layout.rs).
#[derive(Clone, Copy)]
struct KeyActions {
    alerts: ServerAction<SetAlertEmails>,
    set_quota: ServerAction<AdminSetQuota>,
    rename: ServerAction<RenameKey>,
    roll: ServerAction<RollKey>,
    end_overlap: ServerAction<EndKeyOverlap>,
    revoke: ServerAction<RevokeKey>,
}

/// A secret a plain form post (no JavaScript) left for the page it returned to, by the one-time
/// token in the page's address.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum NewSecretHandOff {
    /// No token in the address.
    None,
    Here(Box<CreatedKey>),
    /// The token was used already, has expired, or is someone else's.
    Gone,
}

impl NewSecretHandOff {
    async fn take(token: Option<String>) -> Result<Self, crate::error::AppError> {
        Ok(match token {
            None => Self::None,
            Some(token) => {
                take_created_key(LinkToken(token)).await?.map_or(Self::Gone, |created| Self::Here(Box::new(created)))
            }
        })
    }
}

#[component]
fn KeyDetails(
    key: KeyView,
    requests: super::quota_requests::QuotaRequestsState,
    actions: KeyActions,
    handed_over: Result<NewSecretHandOff, crate::error::AppError>,
) -> impl IntoView {
    let KeyActions { alerts, set_quota, rename, roll, end_overlap, revoke } = actions;
    let quota = Signal::stored((key.requests_per_hour, key.requests_per_day));
    let requests = view! { <super::quota_requests::KeyQuotaRequests key=key.clone() state=requests quota/> };
    // A rename, and stopping the previous secret early, update the page in place (refetching
    // the key would rebuild the page under the keyboard, and drop a secret just shown).
    let name = follow(rename, &key, key.name.clone(), |k| k.name);
    let previous = follow(end_overlap, &key, key.previous_secret.clone(), |k| k.previous_secret);
    let rename = (key.yours && !key.is_revoked()).then(|| view! { <RenameForm key=key.clone() action=rename/> });
    let set_quota = (key.viewer_is_admin && !key.is_revoked())
        .then(|| view! { <super::quota_requests::SetQuota key=key.clone() action=set_quota/> });
    let alert_settings = view! { <AlertEmails key=key.clone() action=alerts/> };
    // The owner, or an admin acting on a leak report.
    let revoking = ((key.yours || key.viewer_is_admin) && !key.is_revoked()).then(|| {
        let error = FormError::of("revoke-error", revoke);
        view! {
            <section class="card" id=crate::api::REVOKE_AT data-testid="revoke-key">
                <h2>"Revoke the key"</h2>
                <p class="muted">"Calls with it are refused within seconds, for good. Its usage history stays."</p>
                // Made again on a rename: the question names the key as it is called now.
                {let id = key.id.clone(); move || view! { <RevokeButton id=id.clone() name=name.get() revoke/> }}
                {error.message("revoke-error")}
            </section>
        }
        .into_any()
    });
    // Where the revoke section was: with JavaScript after this page's own revocation, without
    // after the post came back here.
    let revoked_here = plain_form::done(REVOKED);
    let revoked_now = key.is_revoked().then(|| {
        let this_key = key.id.clone();
        let by_this_page = move || revoke.value().get().is_some_and(|r| r.is_ok_and(|k| k.id == this_key));
        let text = revoked_text(Some(&key.name));
        move || {
            (by_this_page() || revoked_here.get()).then(|| {
                view! {
                    <section class="card" id=crate::api::REVOKE_AT>
                        <Confirmation text=text.clone() testid="revoked"/>
                    </section>
                }
            })
        }
    });
    let rolling = (key.yours && !key.is_revoked())
        .then(|| view! { <RollSecret key=key.clone() name previous action=roll end_overlap handed_over/> }.into_any());
    let previous_fact = move || {
        previous.get().map(|p| {
            let when = format::time(&p.expires_at);
            let state = if p.works { format!("works until {when}") } else { format!("stopped working {when}") };
            let used = previous_use(p.last_used_at.as_ref());
            view! { <dt>"Previous secret"</dt><dd data-testid="previous-secret"><code>{format!("{}…", p.prefix)}</code>{format!(" {state}; {used}")}</dd> }
        })
    };
    let status = key.status();
    view! {
        // Made again when the name changes: leptos_meta keeps a title's text beyond the page, so
        // a reactive text would be read after the page is gone.
        {move || view! { <PageTitle text=format!("{} · API keys · keymeter", name.get())/> }}
        <p class="crumbs"><KeysCrumb yours=key.yours/>" / "{name}</p>
        <div class="page-head">
            <h1 data-testid="key-title">{name}</h1>
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
                <dt>"Secret rolled"</dt><dd data-testid="rolled-at">{format::time_or(key.rolled_at.as_ref(), "never")}</dd>
                {previous_fact}
                <dt>"Hourly quota"</dt><dd>{format!("{} per hour (UTC)", format::counted(key.requests_per_hour, "request", "requests"))}</dd>
                <dt>"Daily quota"</dt><dd>{format!("{} per day (UTC)", format::counted(key.requests_per_day, "request", "requests"))}</dd>
                <dt>"Burst limit"</dt><dd>{key.burst_per_second.map(|b| format!("{} per second", format::counted(b, "request", "requests"))).unwrap_or_else(|| "none".into())}</dd>
            </dl>
        </section>
        {rename}
        {rolling}
        {set_quota}
        {alert_settings}
        {requests}
        {revoking}
        {revoked_now}
    }
}

/// The first step of a key page's breadcrumb: the owner's key list, or for an admin viewing
/// someone else's key, the list of every key (the admin's own list does not hold it).
#[component]
pub fn KeysCrumb(yours: bool) -> impl IntoView {
    if yours {
        view! { <A href="/dashboard/developers/api-keys" exact=true>"API keys"</A> }.into_any()
    } else {
        view! { <A href="/admin" exact=true>"All keys"</A> }.into_any()
    }
}

/// `initial`, then `pick` of each answer of `action` about this `key`: a part of the key's page
/// kept up to date in place. Only this key's answers: the action outlives a move to another
/// key's page.
fn follow<A, T>(action: ServerAction<A>, key: &KeyView, initial: T, pick: fn(KeyView) -> T) -> RwSignal<T>
where
    A: leptos::server_fn::ServerFn<Output = KeyView, Error = crate::error::AppError> + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    let value = RwSignal::new(initial);
    let this_key = key.id.clone();
    // Answers from before this part was made (it is made again when the page is) are in
    // `initial` already, or older than it.
    let seen = action.version().get_untracked();
    Effect::new(move |_| {
        if action.version().get() <= seen {
            return;
        }
        if let Some(Ok(answer)) = action.value().get() {
            if answer.id == this_key {
                value.set(pick(answer));
            }
        }
    });
    value
}

/// How many answers of `action` say the key may have changed: what the key's page is fetched
/// again for. A success, or a refusal because the key is not as the page shows it (revoked or
/// rolled elsewhere: a conflict; gone). Bad input leaves the page as it was, with the keyboard
/// where it was (on the form, its message beside it).
fn key_changes<A, O>(action: ServerAction<A>) -> RwSignal<usize>
where
    A: leptos::server_fn::ServerFn<Output = O, Error = crate::error::AppError> + Clone + Send + Sync + 'static,
    O: Clone + Send + Sync + 'static,
{
    let count = RwSignal::new(0);
    // Each answer sets the value once (also an answer equal to the one before).
    Effect::new(move |_| {
        use crate::error::AppError;
        if matches!(action.value().get(), Some(Ok(_) | Err(AppError::Conflict(_) | AppError::NotFound))) {
            count.update(|n| *n += 1);
        }
    });
    count
}

/// Whether anything still calls with a rolled key's previous secret: what its owner needs to
/// know before it stops.
fn previous_use(last_used_at: Option<&chrono::DateTime<chrono::Utc>>) -> String {
    match last_used_at {
        Some(at) => format!("last used {}", format::time(at)),
        None => "not used since the roll".to_owned(),
    }
}

/// How long the replaced secret may keep working, as the key page offers it (hours, words); the
/// first is the default. The server takes any whole number of hours up to `RollOverlap::MAX_HOURS`.
const OVERLAPS: [(&str, &str); 4] = [("0", "at once"), ("1", "in 1 hour"), ("24", "in 24 hours"), ("168", "in 7 days")];

/// The owner replaces the key's secret ("rolls" it), choosing when the old one stops working;
/// the new one is shown once, here. While the old one still works it can be stopped early.
#[component]
fn RollSecret(
    key: KeyView,
    /// The key's name as it is now (renamed on this page, maybe).
    name: RwSignal<String>,
    previous: RwSignal<Option<PreviousSecretView>>,
    action: ServerAction<RollKey>,
    end_overlap: ServerAction<EndKeyOverlap>,
    handed_over: Result<NewSecretHandOff, crate::error::AppError>,
) -> impl IntoView {
    let error = FormError::of("roll-error", action);
    let end_error = FormError::of("end-overlap-error", end_overlap);
    let confirm = NodeRef::<leptos::html::Button>::new();
    let confirm_end = NodeRef::<leptos::html::Button>::new();
    let id = key.id.clone();
    // Only this key's: the actions outlive a move to another key's page.
    let this_key = id.clone();
    let rolled_here = move || action.value().get().and_then(Result::ok).filter(|created| created.key.id == this_key);
    let this_key = id.clone();
    let ended_here = move || end_overlap.value().get().and_then(Result::ok).filter(|key| key.id == this_key);
    let ended_without_script = plain_form::done(OVERLAP_ENDED);
    let handed_over = match handed_over {
        Ok(NewSecretHandOff::Here(created)) if created.key.id == id => Some(view! { <NewSecret created=*created/> }.into_any()),
        Ok(NewSecretHandOff::Gone) => Some(view! {
            <p class="muted" data-testid="secret-gone">"A new secret is shown once, within two minutes of the roll; this one is not shown again."</p>
        }.into_any()),
        Ok(_) => None,
        Err(err) => Some(view! { <p class="error" role="alert">{err.to_string()}</p> }.into_any()),
    };
    // The question says when the old secret stops, as chosen (read again as the choice changes).
    let hours = RwSignal::new(OVERLAPS[0].0.to_owned());
    let when = move || hours.with(|h| OVERLAPS.iter().find(|(value, _)| value == h).map_or("", |(_, words)| words));
    // Rolling again stops a previous secret that still works.
    let discarded = |p: Option<PreviousSecretView>| {
        p.filter(|p| p.works).map(|p| format!(" The previous secret {}… stops at once.", p.prefix)).unwrap_or_default()
    };
    let question = move || {
        format!(
            "Give \u{201c}{}\u{201d} a new secret? It is shown once; the current one stops working {}.{}",
            name.get(),
            when(),
            discarded(previous.get())
        )
    };
    // Without a script the page cannot read the choice made above the question.
    let question_without_script = format!(
        "Give \u{201c}{}\u{201d} a new secret? It is shown once; the current one stops working when chosen above.{}",
        key.name,
        discarded(previous.get_untracked())
    );
    let id_for_end = id.clone();
    let overlap = move || {
        previous.get().filter(|p| p.works).map(|p| {
            let id = id_for_end.clone();
            view! {
                <div class="overlap">
                    <p data-testid="overlap">{format!(
                        "The previous secret {}… keeps working until {}; {}.",
                        p.prefix,
                        format::time(&p.expires_at),
                        previous_use(p.last_used_at.as_ref())
                    )}</p>
                    <ActionForm action=end_overlap>
                        <input type="hidden" name="id" value=id.clone()/>
                        <input type="hidden" name="prefix" value=p.prefix.clone()/>
                        <ConfirmInPlace opener="Stop it now…" opener_testid="end-overlap" dialog_label="Confirm stopping the previous secret"
                            question_id=format!("end-overlap-question-{id}")
                            question=format!("Stop {}… now? Calls with it are refused within seconds.", p.prefix)
                            confirm=confirm_end>
                            <SubmitButton pending=end_overlap.pending() class="danger" testid="confirm-end-overlap" node_ref=confirm_end>"Stop it"</SubmitButton>
                        </ConfirmInPlace>
                    </ActionForm>
                </div>
            }
        })
    };
    view! {
        <section class="card" id=crate::api::ROLL_AT data-testid="roll">
            <h2>"Roll the secret"</h2>
            <p class="muted">"Rolling gives the key a new secret, for one that leaked or a routine change. The key keeps its name, quota, alerts and usage history. The old secret keeps working until the time you choose, so your integrations can switch over; after it, calls with it are refused."</p>
            {overlap}
            // Only while that secret is still the previous one (not after another roll).
            {move || ended_here().and_then(|key| key.previous_secret).filter(|ended| previous.with(|p| p.as_ref().is_some_and(|p| p.prefix == ended.prefix))).map(|p| view! {
                <Confirmation text=format!("The previous secret {}… no longer works: calls with it are refused.", p.prefix) testid="overlap-ended"/>
            })}
            {move || (end_overlap.value().with(Option::is_none) && ended_without_script.get()).then(|| view! {
                <Confirmation text="The previous secret no longer works: calls with it are refused." testid="overlap-ended"/>
            })}
            {end_error.message("end-overlap-error")}
            <ActionForm action>
                <input type="hidden" name="id" value=id.clone()/>
                <div class="inline-form">
                    <label>
                        "The current secret stops working"
                        <select name="old_secret_hours" data-testid="old-secret-hours" {..error.on("old_secret_hours")}
                            // Bound both ways: a page rebuilt in place after a roll keeps the
                            // element, and its choice must match what the question says.
                            prop:value=move || hours.get() on:change=move |ev| hours.set(event_target_value(&ev))>
                            {OVERLAPS.iter().enumerate().map(|(i, &(value, words))| view! {
                                <option value=value selected=i == 0>{words}</option>
                            }).collect_view()}
                        </select>
                    </label>
                    <ConfirmInPlace opener="Roll key…" opener_testid="roll-key" dialog_label="Confirm rolling"
                        question_id=format!("roll-question-{id}") question=Signal::derive(question) question_without_script confirm>
                        <SubmitButton pending=action.pending() class="danger" testid="confirm-roll" node_ref=confirm>"Roll key"</SubmitButton>
                    </ConfirmInPlace>
                </div>
            </ActionForm>
            {error.message("roll-error")}
            {move || rolled_here().map(|created| view! { <NewSecret created/> })}
            {handed_over}
        </section>
    }
}

/// The owner renames an active key; the page's title follows.
#[component]
fn RenameForm(key: KeyView, action: ServerAction<RenameKey>) -> impl IntoView {
    let error = FormError::of("rename-error", action);
    // Without JavaScript the page comes back: the name as refused, or a confirmation.
    let typed = plain_form::kept::<RenameKey>("name");
    let renamed_without_script = plain_form::done(RENAMED);
    let (id, name) = (key.id, key.name);
    let value = {
        let name = name.clone();
        move || typed.get().unwrap_or_else(|| name.clone())
    };
    let renamed = move || match action.value().get() {
        Some(Ok(key)) => Some(key.name),
        Some(Err(_)) => None,
        None => renamed_without_script.get().then(|| name.clone()),
    };
    view! {
        <section class="card" id=crate::api::RENAME_AT data-testid="rename">
            <h2>"Name"</h2>
            <ActionForm action>
                <input type="hidden" name="id" value=id/>
                <div class="inline-form">
                    <label>
                        "Name"
                        <input name="name" required maxlength="100" value=value data-testid="rename-name" {..error.on("name")}/>
                    </label>
                    <SubmitButton pending=action.pending() testid="rename-save">"Rename"</SubmitButton>
                </div>
            </ActionForm>
            {move || renamed().map(|name| view! {
                <p class="ok" role="status" data-testid="renamed">{format!("Renamed to \u{201c}{name}\u{201d}.")}</p>
            })}
            {error.message("rename-error")}
        </section>
    }
}

/// Which quota alerts email the owner; the bell shows every alert regardless. Only the owner
/// of an active key can change them; others (an admin, or anyone once the key is revoked) read them.
#[component]
fn AlertEmails(key: KeyView, action: ServerAction<SetAlertEmails>) -> impl IntoView {
    let (on_50, on_80, on_100) =
        (key.alert_emails.contains(&50), key.alert_emails.contains(&80), key.alert_emails.contains(&100));
    if !key.yours || key.is_revoked() {
        let chosen: Vec<String> = key.alert_emails.iter().map(|t| format!("{t}%")).collect();
        let chosen = if chosen.is_empty() { "none".to_owned() } else { chosen.join(", ") };
        let why = if key.is_revoked() {
            "This key is revoked: it sends no more alerts."
        } else {
            "Only the key's owner changes these."
        };
        return view! {
            <section class="card" id=crate::api::ALERTS_AT data-testid="alert-emails">
                <h2>"Quota alerts"</h2>
                <p data-testid="alert-emails-chosen">{format!("Alerts that email {}: {chosen}.", key.owner_email)}</p>
                <p class="muted">{why}</p>
            </section>
        }
        .into_any();
    }
    let saved_without_script = plain_form::done(ALERTS_SAVED);
    view! {
        <section class="card" id=crate::api::ALERTS_AT data-testid="alert-emails">
            <h2>"Quota alerts"</h2>
            <p class="muted">"When this key uses 50%, 80% and 100% of its hourly or daily quota, you get a notification in the bell (Notifications). Choose which of them also email you."</p>
            <ActionForm action>
                <input type="hidden" name="id" value=key.id.clone()/>
                <div class="inline-form" role="group" aria-label="Email me at">
                    <label><input type="checkbox" name="email_50" checked=on_50 data-testid="alert-50"/>" 50%"</label>
                    <label><input type="checkbox" name="email_80" checked=on_80 data-testid="alert-80"/>" 80%"</label>
                    <label><input type="checkbox" name="email_100" checked=on_100 data-testid="alert-100"/>" 100%"</label>
                    <button type="submit" data-testid="alert-save">"Save"</button>
                </div>
            </ActionForm>
            {move || match action.value().get() {
                Some(Err(e)) => Some(view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any()),
                saved => (saved.is_some() || saved_without_script.get())
                    .then(|| view! { <p class="ok" role="status" data-testid="alert-saved">"Saved."</p> }.into_any()),
            }}
        </section>
    }
    .into_any()
}
