//! `/admin`: every key of every merchant and the month's usage export for invoicing;
//! `/admin/accounts`: every account, disabled and enabled there; `/admin/mail`: what keymeter
//! has sent.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::use_query_map;

use super::form_error::FormError;
use super::layout::{
    page_number, ConfirmInPlace, Confirmation, ErrorPanel, PageTitle, Pager, PastTheEnd, SubmitButton,
};
use crate::api::{
    admin_mail, admin_mail_body, admin_search_accounts, admin_search_keys, AccountSwitched, AccountView,
    AdminSwitchAccount, MailBody, MailView, SendMailAgain,
};
use crate::error::AppError;
use crate::render_memo::once_per_render;

/// `/admin`: every key of every merchant, 100 a page (`?page=`), found by owner, name or prefix
/// (`?q=`, a plain GET form that works without JavaScript).
#[component]
pub fn AdminKeysPage() -> impl IntoView {
    let query = use_query_map();
    let shown = move || {
        let q = query.read();
        let search = q.get("q").unwrap_or_default();
        (search, page_number(&q))
    };
    let keys = Resource::new(shown, |(search, page)| {
        once_per_render("admin/keys/search", &(search.clone(), page), admin_search_keys(search, page))
    });
    let page_href = |search: &str, page: u32| search_href("/admin", search, page);
    view! {
        <PageTitle text="All API keys · keymeter"/>
        <div class="page-head">
            <h1>"All API keys"</h1>
            // Every key's daily usage of a month, for invoicing (the server checks the month).
            <form class="export" method="get" action="/admin/usage.csv" data-testid="invoice-form">
                <label>"Month" <input type="month" name="month" value=last_month() required/></label>
                <button type="submit">"Export month (CSV)"</button>
            </form>
        </div>
        <form class="inline-form" method="get" action="/admin" data-testid="key-search">
            <label>"Find keys" <input type="search" name="q" value=move || shown().0 size="34"
                placeholder="owner email, key name or prefix"/></label>
            <button type="submit">"Search"</button>
        </form>
        <section class="card">
            <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let (search, page) = shown();
                    match keys.await {
                        Ok(found) if found.keys.is_empty() && page > 1 => view! {
                            <PastTheEnd first=page_href(&search, 1)/>
                        }.into_any(),
                        Ok(found) if found.keys.is_empty() => view! {
                            <p class="empty">{if search.is_empty() && page == 1 {
                                "No keys yet.".to_owned()
                            } else {
                                "No keys found.".to_owned()
                            }}</p>
                        }.into_any(),
                        Ok(found) => {
                            let previous = (page > 1).then(|| page_href(&search, page - 1));
                            let next = found.more.then(|| page_href(&search, page + 1));
                            view! {
                            <div class="table-scroll"><table class="keys stacked" data-testid="admin-keys">
                                <thead><tr><th>"Owner"</th><th>"Name"</th><th>"Key"</th><th>"Status"</th><th>"Quota"</th><th>"Last used"</th></tr></thead>
                                <tbody>
                                    {found.keys.into_iter().map(|key| {
                                        let status = key.status();
                                        let usage_label = format!("Usage of {}", key.name);
                                        view! {
                                            <tr>
                                                <td data-label="Owner">{key.owner_email.clone()}</td>
                                                <td>
                                                    <A href=format!("/dashboard/developers/api-keys/{}", key.id)>{key.name.clone()}</A>
                                                    " · "
                                                    <A href=format!("/dashboard/developers/api-keys/{}/usage", key.id) attr:aria-label=usage_label>"usage"</A>
                                                </td>
                                                // A rolled key is also found by its previous prefix (a leak
                                                // report names the secret that leaked): say why it matched.
                                                <td data-label="Key"><code>{format!("{}…", key.prefix)}</code>
                                                    {key.previous_secret.as_ref().map(|p| view! {
                                                        <br/><span class="hint" data-testid="previous-prefix">"rolled from "<code>{format!("{}…", p.prefix)}</code></span>
                                                    })}
                                                </td>
                                                <td data-label="Status"><span class=format!("badge {status}")>{status}</span></td>
                                                <td class="num" data-label="Quota">{format::limits(key.requests_per_hour, key.requests_per_day)}</td>
                                                <td class="when" data-label="Last used">{format::time_or(key.last_used_at.as_ref(), "never")}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                            <Pager previous next/>
                        }.into_any()
                        }
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

/// `/admin/accounts`: every account, 100 a page (`?page=`), found by address (`?q=`); an admin
/// disables an account (no more sign-in, signed out everywhere; its keys keep working) or
/// enables it again. Forms: they work without JavaScript.
#[component]
pub fn AdminAccountsPage() -> impl IntoView {
    // Each row switches with an action of its own and updates in place (see `AccountRow`); this
    // one only reads the error a plain form post (no JavaScript) came back with.
    let plain_post = ServerAction::<AdminSwitchAccount>::new();
    let outcome = RwSignal::new(None::<Result<AccountSwitched, AppError>>);
    let error = FormError::new("account-error", move || {
        outcome.get().and_then(Result::err).or_else(|| plain_post.value().get().and_then(Result::err))
    });
    let query = use_query_map();
    let shown = move || {
        let q = query.read();
        (q.get("q").unwrap_or_default(), page_number(&q))
    };
    let accounts = Resource::new(shown, |(search, page)| {
        once_per_render("admin/accounts/search", &(search.clone(), page), admin_search_accounts(search, page))
    });
    let page_href = |search: &str, page: u32| search_href("/admin/accounts", search, page);
    view! {
        <PageTitle text="Accounts · keymeter"/>
        <h1>"Accounts"</h1>
        <form class="inline-form" method="get" action="/admin/accounts" data-testid="account-search">
            <label>"Find accounts" <input type="search" name="q" value=move || shown().0 placeholder="email address"/></label>
            <button type="submit">"Search"</button>
        </form>
        <section class="card">
            <p class="muted">"A disabled account cannot sign in and is signed out everywhere. Its API keys keep working: revoke them from the key's page to stop them."</p>
            // The switched row's button is gone with the answer: the focus goes to what was done.
            {move || outcome.get().and_then(Result::ok).map(|done| view! { <Confirmation text=done.message() testid="account-switched"/> })}
            {error.message("account-error")}
            <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let (search, page) = shown();
                    match accounts.await {
                        Ok(found) if found.accounts.is_empty() && page > 1 => view! {
                            <PastTheEnd first=page_href(&search, 1)/>
                        }.into_any(),
                        Ok(found) if found.accounts.is_empty() => view! {
                            <p class="empty">{if search.is_empty() && page == 1 { "No accounts yet." } else { "No accounts found." }}</p>
                        }.into_any(),
                        Ok(found) => {
                            let previous = (page > 1).then(|| page_href(&search, page - 1));
                            let next = found.more.then(|| page_href(&search, page + 1));
                            view! {
                                <div class="table-scroll"><table class="stacked" data-testid="admin-accounts">
                                    <thead><tr><th>"Account"</th><th>"Role"</th><th>"Created"</th><th class="num">"Active keys"</th><th>"Status"</th><th></th></tr></thead>
                                    <tbody>
                                        {found.accounts.into_iter().map(|a| view! { <AccountRow account=a outcome/> }).collect_view()}
                                    </tbody>
                                </table></div>
                                <Pager previous next/>
                            }.into_any()
                        }
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

/// One account and its switch. The row has its own action, so its button waits for its own
/// answer only (another row can be switched meanwhile), and its status changes in place; what
/// was done is said above the list (`outcome`).
#[component]
fn AccountRow(account: AccountView, outcome: RwSignal<Option<Result<AccountSwitched, AppError>>>) -> impl IntoView {
    let switch = ServerAction::<AdminSwitchAccount>::new();
    let disabled = RwSignal::new(account.disabled_at.is_some());
    let since = RwSignal::new(account.disabled_at.map(|at| format!("since {}", format::time(&at))).unwrap_or_default());
    Effect::new(move |_| {
        // Version 0: nothing dispatched here (a plain post's error is the page's to show).
        if switch.version().get() == 0 {
            return;
        }
        let answer = switch.value().get();
        if let Some(Ok(done)) = &answer {
            if done.changed {
                disabled.set(done.disabled);
                since.set(String::new());
            }
        }
        outcome.set(answer);
    });
    let confirm = NodeRef::<leptos::html::Button>::new();
    let form = move |email: String, verb: &'static str, class: Option<&'static str>| {
        let label = format!("{verb} {email}");
        view! {
            <ActionForm action=switch>
                <input type="hidden" name="email" value=email/>
                {(verb == "Disable").then(|| view! { <input type="hidden" name="disable" value="on"/> })}
                <SubmitButton pending=switch.pending() label class=class.unwrap_or_default() node_ref=confirm>{verb}</SubmitButton>
            </ActionForm>
        }
    };
    // Disabling asks first: it signs the account out everywhere at once. Enabling is harmless
    // and takes one click.
    let question = format!(
        "Disable {}? It is signed out everywhere; its {} keep working.",
        account.email,
        format::counted(account.active_keys, "active key", "active keys")
    );
    let question_id = format!("disable-question-{}", account.email);
    let (you, email) = (account.you, account.email.clone());
    let switch_control = move || {
        (!you).then(|| {
            if disabled.get() {
                form(email.clone(), "Enable", None).into_any()
            } else {
                let disable = form(email.clone(), "Disable", Some("danger"));
                view! {
                    <ConfirmInPlace opener="Disable…" opener_testid="disable-account" dialog_label="Confirm disabling"
                        question_id=question_id.clone() question=question.clone() confirm>
                        {disable}
                    </ConfirmInPlace>
                }
                .into_any()
            }
        })
    };
    let badge = move || if disabled.get() { "badge revoked" } else { "badge active" };
    let status = move || if disabled.get() { "disabled" } else { "active" };
    view! {
        <tr data-testid="account-row" data-email=account.email.clone()>
            <td data-label="Account">{account.email.clone()}{account.you.then_some(" (you)")}</td>
            <td data-label="Role">{if account.is_admin { "admin" } else { "merchant" }}</td>
            <td class="when" data-label="Created">{format::time(&account.created_at)}</td>
            <td class="num" data-label="Active keys">{format::count(account.active_keys)}</td>
            <td data-label="Status"><span class=badge title=since data-testid="account-status">{status}</span></td>
            <td>{switch_control}</td>
        </tr>
    }
}

/// A page of a searchable list: `base?q=…&page=…`, each only when it is not the default.
fn search_href(base: &str, search: &str, page: u32) -> String {
    let mut params = Vec::new();
    if !search.is_empty() {
        params.push(format!("q={}", format::query_value(search)));
    }
    if page > 1 {
        params.push(format!("page={page}"));
    }
    if params.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", params.join("&"))
    }
}

/// The month that just ended (`YYYY-MM`, UTC), the one invoices are made for.
fn last_month() -> String {
    #[cfg(feature = "ssr")]
    let now = chrono::Utc::now();
    // The browser's clock (chrono's own needs its `clock` feature, which the WASM build leaves out).
    #[cfg(all(feature = "hydrate", not(feature = "ssr")))]
    let now = chrono::DateTime::from_timestamp_millis(js_sys::Date::now() as i64).unwrap_or_default();
    #[cfg(not(any(feature = "ssr", feature = "hydrate")))]
    let now = chrono::DateTime::<chrono::Utc>::default();
    calendar::Month::containing(now).previous().to_string()
}

/// `/admin/mail`: the outbox, newest first, a page at a time (`?before=<id>` for older ones,
/// `?given_up=1` for the given-up ones only), each message readable as text and as HTML once
/// opened (its parts are fetched then; `?open=<id>` without JavaScript); a message that was given
/// up can be sent again. In development (no `SMTP_URL`) this is how the mail folder's messages
/// are read.
#[component]
pub fn AdminMailPage() -> impl IntoView {
    let send_again = ServerAction::<SendMailAgain>::new();
    let query = use_query_map();
    let shown = move || {
        let q = query.read();
        MailPage { before: q.get("before").and_then(|b| b.parse().ok()), given_up: q.get("given_up").is_some() }
    };
    let mail = Resource::new(
        move || (send_again.version().get(), shown()),
        |(version, page)| {
            once_per_render(
                "admin/mail",
                &(version, page.before, page.given_up),
                admin_mail(page.before, page.given_up),
            )
        },
    );
    let open = Resource::new(
        move || query.read().get("open").and_then(|id| id.parse::<i64>().ok()),
        |id| {
            once_per_render("admin/mail/body", &id, async move {
                match id {
                    Some(id) => admin_mail_body(id).await.map(|body| Some((id, body))),
                    None => Ok(None),
                }
            })
        },
    );
    view! {
        <PageTitle text="Mail · keymeter"/>
        <h1>"Mail"</h1>
        {move || send_again.value().get().and_then(Result::err).map(|err| view! {
            <p class="error" role="alert">{err.to_string()}</p>
        })}
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let opened = open.await.ok().flatten();
                let page = shown();
                match mail.await {
                    Ok(mailbox) => {
                        let stuck = mailbox.failed > 0;
                        let older = mailbox.more.then(|| mailbox.messages.last().map(|m| page.older_than(m.id).href())).flatten();
                        let empty = match (page.given_up, page.before.is_some()) {
                            (true, _) => "Nothing given up.",
                            (false, true) => "No older mail.",
                            (false, false) => "No mail yet.",
                        };
                        view! {
                        <p data-testid="mail-delivery">"Delivered to " {mailbox.delivery.clone()} "."</p>
                        <p data-testid="mail-counts" class:error=stuck>
                            {outbox_summary(mailbox.waiting, mailbox.failed)} " "
                            {page.given_up.then(|| view! {
                                <A href="/admin/mail" attr:data-testid="all-mail">"Show all mail"</A>
                            })}
                            {(stuck && !page.given_up).then(|| view! {
                                <A href="/admin/mail?given_up=1" attr:data-testid="given-up-only">"Show the given-up ones"</A>
                            })}
                        </p>
                        {if mailbox.messages.is_empty() {
                            view! { <section class="card"><p class="empty">{empty}</p></section> }.into_any()
                        } else {
                            mailbox.messages.into_iter().map(|m| {
                                let body = opened.clone().filter(|(id, _)| *id == m.id).map(|(_, body)| body);
                                let read_href = page.opening(m.id);
                                view! { <MailItem m body read_href send_again/> }
                            }).collect_view().into_any()
                        }}
                        <nav class="pager">
                            {page.before.is_some().then(|| view! {
                                <A href=MailPage { before: None, ..page }.href()>"Newest"</A>
                            })}
                            {older.map(|href| view! { <A href=href attr:data-testid="older">"Older"</A> })}
                        </nav>
                    }.into_any()
                    }
                    Err(err) => view! { <ErrorPanel err/> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// Which part of the outbox `/admin/mail` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MailPage {
    before: Option<i64>,
    given_up: bool,
}

impl MailPage {
    fn older_than(self, id: i64) -> Self {
        Self { before: Some(id), ..self }
    }

    /// This page with one message opened (for reading without JavaScript).
    fn opening(self, id: i64) -> String {
        let page = self.href();
        let join = if page.contains('?') { '&' } else { '?' };
        format!("{page}{join}open={id}")
    }

    fn href(self) -> String {
        let mut params = Vec::new();
        if let Some(before) = self.before {
            params.push(format!("before={before}"));
        }
        if self.given_up {
            params.push("given_up=1".to_owned());
        }
        match params.is_empty() {
            true => "/admin/mail".to_owned(),
            false => format!("/admin/mail?{}", params.join("&")),
        }
    }
}

/// "Nothing waiting." / "3 waiting to be sent · 1 given up (open one to send it again)."
fn outbox_summary(waiting: i64, failed: i64) -> String {
    let waiting = match waiting {
        0 => "Nothing waiting to be sent".to_owned(),
        n => format!("{} waiting to be sent", format::count(n)),
    };
    match failed {
        0 => format!("{waiting}."),
        n => format!("{waiting} · {} given up (open one to send it again).", format::count(n)),
    }
}

#[component]
fn MailItem(
    m: MailView,
    body: Option<MailBody>,
    read_href: String,
    send_again: ServerAction<SendMailAgain>,
) -> impl IntoView {
    // The parts are fetched when the message is opened: every message's parts in the list made
    // the page tens of MB, and a frame per message, all parsed up front, took seconds.
    let open_at_start = body.is_some();
    let body = RwSignal::new(body.map(Ok::<_, AppError>));
    let id = m.id;
    let on_toggle = move |_| {
        if body.get_untracked().is_none() {
            leptos::task::spawn_local(async move { body.set(Some(admin_mail_body(id).await)) });
        }
    };
    let error = m.last_error.clone().unwrap_or_default();
    let (badge, label, status) = match (&m.sent_at, &m.failed_at) {
        (Some(at), _) => ("badge approved", "sent", format!("sent {}", format::time(at))),
        (None, Some(at)) => (
            "badge denied",
            "given up",
            format!("given up {} after {} attempt(s): {error}", format::time(at), m.attempts),
        ),
        (None, None) if m.attempts > 0 => {
            ("badge pending", "waiting", format!("waiting: {} attempt(s), last error: {error}", m.attempts))
        }
        (None, None) => ("badge pending", "waiting", "queued".to_owned()),
    };
    let given_up = m.failed_at.is_some() && m.sent_at.is_none();
    view! {
        <details class="card mail" data-testid="mail-item" open=open_at_start on:toggle=on_toggle>
            <summary>
                <span class=badge data-testid="mail-status">{label}</span>" "
                <b data-testid="mail-subject">{m.subject.clone()}</b>
                <span class="muted">" to " {m.to.clone()} " · " {format::time(&m.created_at)}</span>
            </summary>
            <p class="muted">{status}</p>
            {given_up.then(|| view! {
                <ActionForm action=send_again>
                    <input type="hidden" name="id" value=m.id/>
                    <SubmitButton pending=send_again.pending() testid="send-again">"Send again"</SubmitButton>
                </ActionForm>
            })}
            {(!m.attachments.is_empty()).then(|| view! {
                <p>"Attachments: " {m.attachments.join(", ")}</p>
            })}
            <noscript><a href=read_href>"Read it"</a></noscript>
            {move || body.get().map(|body| match body {
                // The HTML part is shown in a sandbox: no scripts, no same-origin access. Its
                // links open in a tab of their own (the app refuses to be shown in a frame).
                Ok(body) => view! {
                    <iframe class="mail-html" sandbox="allow-popups allow-popups-to-escape-sandbox"
                        srcdoc=format!("<base target=\"_blank\">{}", body.html) title="HTML part"></iframe>
                    <pre class="mail-text">{body.text}</pre>
                }.into_any(),
                Err(err) => view! { <p class="error" role="alert">{err.to_string()}</p> }.into_any(),
            })}
        </details>
    }
}
