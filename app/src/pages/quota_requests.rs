//! Quota requests: the merchant's form and history (on a key's page and its usage page), the
//! admins' decision page and the audit trail.

use format::limits;
use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::use_query_map;

use super::form_error::FormError;
use super::layout::{Confirmation, ErrorPanel, PageTitle, ScrollToLinked};
use crate::api::plain_form;
use crate::api::{
    admin_quota_audit, admin_quota_requests, key_quota_requests, AdminSetQuota, ApproveQuotaRequest, AuditPage,
    AuditView, CancelQuotaRequest, DenyQuotaRequest, KeyView, QuotaRequestView, RequestQuotaIncrease, RequestStatus,
    APPROVED, DENIED, QUOTA_REQUESTED, QUOTA_SET, REQUEST_CANCELLED,
};
use crate::error::AppError;
use crate::render_memo::once_per_render;

/// [`limits`] with the burst limit, if the key has one.
fn limits_with_burst(per_hour: i64, per_day: i64, burst: Option<i64>) -> String {
    match burst {
        Some(b) => format!("{} · {}/s burst", limits(per_hour, per_day), format::count(b)),
        None => limits(per_hour, per_day),
    }
}

const CANCELLED: &str = "Request cancelled.";

/// The actions and the list of a key's requests, created by the page before it awaits anything.
#[derive(Clone, Copy)]
pub struct QuotaRequestsState {
    ask: ServerAction<RequestQuotaIncrease>,
    cancel: ServerAction<CancelQuotaRequest>,
    requests: Resource<Result<Vec<QuotaRequestView>, crate::error::AppError>>,
    /// Whether the requests as last shown hold an open one. Kept by the list's view, not read
    /// from `requests` in an effect: a resource read there can suspend the page around it (seen
    /// as a focused confirmation losing its focus).
    open: StoredValue<bool>,
}

impl QuotaRequestsState {
    pub fn new(key_id: impl Fn() -> String + Send + Sync + 'static) -> Self {
        let ask = ServerAction::<RequestQuotaIncrease>::new();
        let cancel = ServerAction::<CancelQuotaRequest>::new();
        let open = StoredValue::new(false);
        let requests = Resource::new(
            move || (key_id(), ask.version().get(), cancel.version().get()),
            |(id, ask, cancel)| {
                once_per_render("quota-requests/key", &(id.clone(), ask, cancel), key_quota_requests(id))
            },
        );
        // An admin decides while the page stays open: an open request is read again every half
        // minute (a denial changes nothing else the page shows). Only while one is open, so
        // that the ask form, shown only when none is, is never rebuilt under the user's typing.
        #[cfg(feature = "hydrate")]
        {
            let handle = set_interval_with_handle(
                move || {
                    if !document().hidden() && open.try_get_value() == Some(true) {
                        requests.refetch();
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
        Self { ask, cancel, requests, open }
    }

    /// Reads the key's open request again whenever `changes` reads another value than before:
    /// what else ends it (revoking the key cancels it; an admin's approval shows as new limits
    /// on the usage page).
    pub fn refetch_on<T: PartialEq + 'static>(&self, changes: impl Fn() -> T + 'static) {
        let (requests, open) = (self.requests, self.open);
        Effect::new(move |seen: Option<T>| {
            let now = changes();
            if seen.is_some_and(|seen| seen != now) && open.get_value() {
                requests.refetch();
            }
            now
        });
    }
}

/// On a key's page and its usage page: ask for more, follow the request, cancel it. `quota`
/// is the key's hourly and daily limits as the page knows them now (live on the usage page),
/// shown in the form's empty fields.
#[component]
pub fn KeyQuotaRequests(key: KeyView, state: QuotaRequestsState, quota: Signal<(i64, i64)>) -> impl IntoView {
    let QuotaRequestsState { ask, cancel, requests, open: open_shown } = state;
    // Which of the two forms was sent last, for the confirmation that replaces it.
    let sent = RwSignal::new(None::<Sent>);
    let (asked_without_script, cancelled_without_script) =
        (plain_form::done(QUOTA_REQUESTED), plain_form::done(REQUEST_CANCELLED));
    // What a refused post without JavaScript had typed.
    let typed = |field| plain_form::kept::<RequestQuotaIncrease>(field);
    let (typed_per_hour, typed_per_day) = (typed("per_hour"), typed("per_day"));
    let typed_reason = plain_form::kept_in_textarea::<RequestQuotaIncrease>("reason");
    // Only once the form sent last has its answer: an action keeps its last value while the
    // next one is on its way, and that would be confirmed (and focused) again.
    let confirmation = move || {
        let Some(sent) = sent.get() else {
            // A post without JavaScript came back to a new page.
            let text = if asked_without_script.get() {
                "Request sent. You will be told when an admin decides."
            } else if cancelled_without_script.get() {
                CANCELLED
            } else {
                return None;
            };
            return Some(view! { <Confirmation text testid="request-done"/> });
        };
        let text = match sent {
            Sent::Ask if ask.pending().get() => None,
            Sent::Cancel if cancel.pending().get() => None,
            Sent::Ask => ask.value().get()?.ok().map(|r| {
                format!(
                    "Request for {} sent. You will be told when an admin decides.",
                    limits(r.requested_per_hour, r.requested_per_day)
                )
            }),
            Sent::Cancel => cancel.value().get()?.ok().map(|_| CANCELLED.to_owned()),
        }?;
        Some(view! { <Confirmation text testid="request-done"/> })
    };
    let ask_error = FormError::of("ask-error", ask);
    let cancel_error = FormError::of("cancel-error", cancel);
    let revoked = key.is_revoked();
    // Only the owner asks (the server refuses anyone else); an admin changes quotas directly.
    let yours = key.yours;
    let id = key.id.clone();
    view! {
        <section class="card" id=crate::api::REQUESTS_AT data-testid="quota-requests">
            <h2>"Quota increase"</h2>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || {
                    let id = id.clone();
                    Suspend::new(async move {
                        match requests.await {
                            Ok(list) => {
                                let open = list.iter().any(|r| r.status == RequestStatus::Pending);
                                open_shown.set_value(open);
                                view! {
                                    {(!yours && !revoked).then(|| view! {
                                        <p class="muted" data-testid="not-owner">
                                            "Only the key's owner asks for more. As an admin, "
                                            <A href=format!("/dashboard/developers/api-keys/{id}#{}", crate::api::SET_QUOTA_AT) exact=true>"set its quota directly"</A>"."
                                        </p>
                                    })}
                                    {(yours && !open && !revoked).then(|| view! {
                                        <div on:submit=move |_| sent.set(Some(Sent::Ask))>
                                        <ActionForm action=ask>
                                            <input type="hidden" name="key_id" value=id.clone()/>
                                            <div class="inline-form" on:input=ask_error.edited_in(&["per_hour", "per_day"])>
                                                <label>"Requests per hour" <input name="per_hour" inputmode="numeric" placeholder=move || format::count(quota.get().0) value=move || typed_per_hour.get() data-testid="ask-per-hour" {..ask_error.on("per_hour")}/></label>
                                                <label>"Requests per day" <input name="per_day" inputmode="numeric" placeholder=move || format::count(quota.get().1) value=move || typed_per_day.get() data-testid="ask-per-day" {..ask_error.on("per_day")}/></label>
                                            </div>
                                            <p class="hint">"Leave a field empty to keep its current limit."</p>
                                            <label>"Why does this key need more?" <textarea name="reason" rows="2" required data-testid="ask-reason" {..ask_error.on("reason")} inner_html=typed_reason></textarea></label>
                                            <button type="submit">"Request increase"</button>
                                        </ActionForm>
                                        </div>
                                    })}
                                    <div on:submit=move |_| sent.set(Some(Sent::Cancel))><RequestList list cancel yours/></div>
                                }.into_any()
                            }
                            Err(err) => view! { <ErrorPanel err/> }.into_any(),
                        }
                    })
                }}
            </Transition>
            {confirmation}
            {ask_error.message("ask-error")}
            {cancel_error.message("cancel-error")}
        </section>
    }
}

#[derive(Clone, Copy)]
enum Sent {
    Ask,
    Cancel,
}

#[component]
/// A key's requests; its owner may cancel a pending one, an admin decides it on the requests page.
fn RequestList(list: Vec<QuotaRequestView>, cancel: ServerAction<CancelQuotaRequest>, yours: bool) -> impl IntoView {
    if list.is_empty() {
        return view! { <p class="empty">"No quota increase requests yet."</p> }.into_any();
    }
    view! {
        <div class="table-scroll"><table class="stacked" data-testid="request-list">
            <thead><tr><th>"Asked"</th><th>"Status"</th><th>"From"</th><th>"To"</th><th>"Note"</th><th></th></tr></thead>
            <tbody>
                {list.into_iter().map(|r| {
                    let pending = r.status == RequestStatus::Pending;
                    let id = r.id;
                    view! {
                        <tr data-testid="request-row" data-status=r.status.as_str()>
                            <td class="when" data-label="Asked">{format::time(&r.created_at)}</td>
                            <td data-label="Status"><span class=format!("badge {}", r.status.as_str())>{r.status.as_str()}</span></td>
                            <td class="num" data-label="From">{limits(r.current_per_hour, r.current_per_day)}</td>
                            <td class="num" data-label="To">{match (r.approved_per_hour, r.approved_per_day) {
                                (Some(h), Some(d)) => limits(h, d),
                                _ => limits(r.requested_per_hour, r.requested_per_day),
                            }}</td>
                            // Nothing at all without a note: on a phone the empty cell is hidden.
                            <td data-label="Note">{r.decision_note.clone()}</td>
                            // A form, so that it also works without JavaScript.
                            <td>{match (pending, yours) {
                                (true, true) => Some(view! {
                                    <ActionForm action=cancel>
                                        <input type="hidden" name="id" value=id.to_string()/>
                                        <button type="submit" class="link" data-testid="cancel-request">"Cancel"</button>
                                    </ActionForm>
                                }.into_any()),
                                (true, false) => Some(view! { <A href="/admin/quota-requests">"Decide…"</A> }.into_any()),
                                (false, _) => None,
                            }}</td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table></div>
    }
    .into_any()
}

/// `/admin/quota-requests`: pending first; approve (numbers adjustable) or deny with a note.
#[component]
pub fn AdminQuotaRequestsPage() -> impl IntoView {
    let approve = ServerAction::<ApproveQuotaRequest>::new();
    let deny = ServerAction::<DenyQuotaRequest>::new();
    let requests = Resource::new(
        move || (approve.version().get(), deny.version().get()),
        |versions| once_per_render("admin/quota-requests", &versions, admin_quota_requests()),
    );
    // The top bar's count of waiting requests follows each decision.
    let counts = use_context::<super::layout::TopBarCounts>();
    Effect::new(move |previous: Option<(usize, usize)>| {
        let versions = (approve.version().get(), deny.version().get());
        if previous.is_some_and(|p| p != versions) {
            counts.into_iter().for_each(|b| b.0.refetch());
        }
        versions
    });
    // The request whose card was last submitted, so that its error shows on that card. A post
    // without JavaScript that was refused comes back naming its card.
    let decided = RwSignal::new(refused_without_script());
    // A link to one request's card (the admins' email and bell entry) shows it once listed.
    let scrolled = StoredValue::new(false);
    let decision = Decision { approve, deny, decided };
    let (approved_without_script, denied_without_script) = (plain_form::done(APPROVED), plain_form::done(DENIED));
    let error = decision.error_of_unknown_card();
    // The decided card loses its forms (and moves below the pending ones): say what happened.
    // For the card decided last, once its answer is in (the actions keep their last values).
    let confirmation = move || {
        let Some((request_id, kind)) = decided.get() else {
            // A decision made without JavaScript came back to a new page.
            let text = if approved_without_script.get() {
                "Approved: the new quota applies at once. The owner is told."
            } else if denied_without_script.get() {
                "Denied. The owner is told."
            } else {
                return None;
            };
            return Some(view! { <Confirmation text testid="decision-done"/> });
        };
        if approve.pending().get() || deny.pending().get() {
            return None;
        }
        let text =
            match kind {
                Kind::Approve => approve.value().get()?.ok().filter(|r| r.id == request_id).map(|r| {
                    let granted = limits(
                        r.approved_per_hour.unwrap_or(r.requested_per_hour),
                        r.approved_per_day.unwrap_or(r.requested_per_day),
                    );
                    format!("Approved: \u{201c}{}\u{201d} now allows {granted}. {} is told.", r.key_name, r.owner_email)
                }),
                Kind::Deny => deny.value().get()?.ok().filter(|r| r.id == request_id).map(|r| {
                    format!("Denied: the request for \u{201c}{}\u{201d}. {} is told.", r.key_name, r.owner_email)
                }),
            }?;
        Some(view! { <Confirmation text testid="decision-done"/> })
    };
    view! {
        <PageTitle text="Quota requests · keymeter"/>
        <h1>"Quota requests"</h1>
        <p><A href="/admin/quota-changes">"Audit trail of every quota change and decision →"</A></p>
        <p class="muted" data-testid="set-directly">
            "To change a key's quota without a request, find the key under "<A href="/admin" exact=true>"All keys"</A>
            " and open it."
        </p>
        <div id=crate::api::DECISIONS_AT>
            {error.message("decision-error")}
            {confirmation}
        </div>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match requests.await {
                    Ok(list) if list.is_empty() => view! { <section class="card"><p class="empty">"No quota increase requests yet."</p></section> }.into_any(),
                    Ok(list) => {
                        // A refusal without JavaScript names its card; with no such card here
                        // (decided long ago, or a made-up address), its error shows on top.
                        let orphan = decided
                            .get_untracked()
                            .filter(|(id, _)| !list.iter().any(|r| r.id == *id))
                            .and_then(|(_, kind)| decision.last_error(kind))
                            .map(|e| view! { <p class="error" role="alert" data-testid="decision-error">{e.to_string()}</p> });
                        // What waits for a decision first, under a count; the decided after it.
                        let (waiting, decided_ones): (Vec<_>, Vec<_>) = list.into_iter().partition(|r| r.status == RequestStatus::Pending);
                        let count = match waiting.len() {
                            0 => "Nothing waiting: every request is decided.".to_owned(),
                            1 => "1 request waiting for a decision.".to_owned(),
                            n => format!("{n} requests waiting for a decision."),
                        };
                        let decided_heading = (!decided_ones.is_empty()).then(|| view! { <h2 class="section-head">"Decided"</h2> });
                        view! {
                            {orphan}
                            <p class="section-head" data-testid="waiting-count"><strong>{count}</strong></p>
                            {waiting.into_iter().map(|r| view! { <RequestCard r decision/> }).collect_view()}
                            {decided_heading}
                            {decided_ones.into_iter().map(|r| view! { <RequestCard r decision/> }).collect_view()}
                            <ScrollToLinked done=scrolled/>
                        }.into_any()
                    }
                    Err(err) => view! { <ErrorPanel err/> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Approve,
    Deny,
}

/// The card and form of a decision refused without JavaScript, from the page's address.
fn refused_without_script() -> Option<(i64, Kind)> {
    let card = |kept: Memo<Option<String>>| kept.get_untracked().and_then(|id| id.parse().ok());
    card(plain_form::kept::<ApproveQuotaRequest>("id"))
        .map(|id| (id, Kind::Approve))
        .or_else(|| card(plain_form::kept::<DenyQuotaRequest>("id")).map(|id| (id, Kind::Deny)))
}

/// What a decision refused without JavaScript had typed into `field` of this card's form `S`.
fn kept_on_card<S: server_fn::ServerFn>(request_id: i64, field: &'static str) -> Option<String> {
    let on_this_card = plain_form::kept::<S>("id").get_untracked() == Some(request_id.to_string());
    on_this_card.then(|| plain_form::kept::<S>(field).get_untracked()).flatten()
}

/// The admin's two decisions, and which one was last submitted on which request.
#[derive(Clone, Copy)]
struct Decision {
    approve: ServerAction<ApproveQuotaRequest>,
    deny: ServerAction<DenyQuotaRequest>,
    decided: RwSignal<Option<(i64, Kind)>>,
}

impl Decision {
    fn last_error(self, kind: Kind) -> Option<AppError> {
        match kind {
            Kind::Approve => self.approve.value().get().and_then(Result::err),
            Kind::Deny => self.deny.value().get().and_then(Result::err),
        }
    }

    /// The error of the `kind` form, if it was the one submitted last and on this card.
    fn error_on(self, request_id: i64, kind: Kind) -> FormError {
        let form = match kind {
            Kind::Approve => "approve",
            Kind::Deny => "deny",
        };
        FormError::new(format!("{form}-error-{request_id}"), move || {
            (self.decided.get() == Some((request_id, kind))).then(|| self.last_error(kind)).flatten()
        })
    }

    /// Either form's error on a page a plain form post came back to: it knows no card.
    fn error_of_unknown_card(self) -> FormError {
        FormError::new("decision-error", move || {
            self.decided
                .get()
                .is_none()
                .then(|| self.last_error(Kind::Approve).or_else(|| self.last_error(Kind::Deny)))
                .flatten()
        })
    }
}

#[component]
fn RequestCard(r: QuotaRequestView, decision: Decision) -> impl IntoView {
    let Decision { approve, deny, decided } = decision;
    let request_id = r.id;
    let (approve_error, deny_error) =
        (decision.error_on(request_id, Kind::Approve), decision.error_on(request_id, Kind::Deny));
    let pending = r.status == RequestStatus::Pending;
    let id = r.id.to_string();
    let id2 = id.clone();
    let approve_typed = |field| kept_on_card::<ApproveQuotaRequest>(request_id, field);
    let (per_hour, per_day, approve_note) = (
        approve_typed("per_hour").unwrap_or_else(|| r.requested_per_hour.to_string()),
        approve_typed("per_day").unwrap_or_else(|| r.requested_per_day.to_string()),
        approve_typed("note").unwrap_or_default(),
    );
    let deny_note = kept_on_card::<DenyQuotaRequest>(request_id, "note").unwrap_or_default();
    view! {
        <section class="card request" id=crate::api::request_at(r.id) data-testid="admin-request" data-status=r.status.as_str()>
            <div class="card-head">
                <h2>
                    <A href=format!("/dashboard/developers/api-keys/{}/usage", r.key_id)>{r.key_name.clone()}</A>
                    " · " {r.owner_email.clone()}
                </h2>
                <span class=format!("badge {}", r.status.as_str())>{r.status.as_str()}</span>
            </div>
            <dl class="facts">
                <dt>"Current"</dt>
                <dd data-testid="live-quota">
                    {limits(r.live_per_hour, r.live_per_day)}
                    {r.key_revoked.then(|| view! { " " <span class="badge revoked">"key revoked"</span> })}
                </dd>
                <dt>"When asked"</dt><dd>{limits(r.current_per_hour, r.current_per_day)}</dd>
                <dt>"Requested"</dt><dd>{limits(r.requested_per_hour, r.requested_per_day)}</dd>
                <dt>"Last 24 hours"</dt><dd>{format::counted(r.requests_last_24h, "request", "requests")}</dd>
                <dt>"Reason"</dt><dd>{r.reason.clone()}</dd>
                <dt>"Asked"</dt><dd>{format::time(&r.created_at)}</dd>
                {match (r.approved_per_hour, r.approved_per_day) {
                    (Some(h), Some(d)) => Some(view! { <dt>"Granted"</dt><dd data-testid="granted">{limits(h, d)}</dd> }),
                    _ => None,
                }}
                {r.decided_at.map(|at| {
                    let when = format::time(&at);
                    let note = r.decision_note.clone().map(|n| format!(": {n}")).unwrap_or_default();
                    // No admin decided a cancelled request: its merchant withdrew it (no note), or
                    // it was closed when its key was revoked (the note says so).
                    match (r.status, r.decided_by.clone()) {
                        (RequestStatus::Cancelled, _) if r.decision_note.is_some() => {
                            view! { <dt>"Cancelled"</dt><dd data-testid="cancelled">{format!("{when}{note}")}</dd> }.into_any()
                        }
                        (RequestStatus::Cancelled, _) => {
                            view! { <dt>"Cancelled"</dt><dd data-testid="cancelled">{format!("{when} by the merchant")}</dd> }.into_any()
                        }
                        (_, Some(admin)) => view! { <dt>"Decided"</dt><dd>{format!("{when} by {admin}{note}")}</dd> }.into_any(),
                        (_, None) => view! { <dt>"Decided"</dt><dd>{format!("{when}{note}")}</dd> }.into_any(),
                    }
                })}
            </dl>
            {approve_error.message("decision-error")}
            {deny_error.message("decision-error")}
            {pending.then(|| view! {
                // Each form's `submit` bubbles up to the wrapper that records it.
                <div class="decide">
                    // A revoked key's request can only be denied (the server refuses approval too).
                    {(!r.key_revoked).then(|| view! {
                        <div on:submit=move |_| decided.set(Some((request_id, Kind::Approve)))>
                        <ActionForm action=approve>
                            <input type="hidden" name="id" value=id.clone()/>
                            <div class="inline-form">
                                <label>"Per hour" <input name="per_hour" inputmode="numeric" value=per_hour.clone() required {..approve_error.on("per_hour")}/></label>
                                <label>"Per day" <input name="per_day" inputmode="numeric" value=per_day.clone() required {..approve_error.on("per_day")}/></label>
                                <label>"Note" <input name="note" placeholder="optional" value=approve_note.clone() {..approve_error.on("note")}/></label>
                                <button type="submit" data-testid="approve">"Approve"</button>
                            </div>
                        </ActionForm>
                        </div>
                    })}
                    <div on:submit=move |_| decided.set(Some((request_id, Kind::Deny)))>
                    <ActionForm action=deny>
                        <input type="hidden" name="id" value=id2.clone()/>
                        <div class="inline-form">
                            <label>"Why not" <input name="note" required value=deny_note.clone() data-testid="deny-note" {..deny_error.on("note")}/></label>
                            <button type="submit" class="danger" data-testid="deny">"Deny"</button>
                        </div>
                    </ActionForm>
                    </div>
                </div>
            })}
        </section>
    }
}

/// On a key's page, for admins: its quota set without a request (the owner is told, the audit
/// trail keeps it). A form, so that it also works without JavaScript.
#[component]
pub fn SetQuota(key: KeyView, action: ServerAction<AdminSetQuota>) -> impl IntoView {
    let error = FormError::of("set-quota-error", action);
    // Without JavaScript the page comes back: what was refused, or a confirmation.
    let typed = |field| plain_form::kept::<AdminSetQuota>(field).get_untracked();
    let (per_hour, per_day, burst, reason) = (
        typed("per_hour").unwrap_or_else(|| key.requests_per_hour.to_string()),
        typed("per_day").unwrap_or_else(|| key.requests_per_day.to_string()),
        typed("burst").unwrap_or_else(|| key.burst_per_second.map(|b| b.to_string()).unwrap_or_default()),
        typed("reason").unwrap_or_default(),
    );
    let set_without_script = plain_form::done(QUOTA_SET);
    let done = move || action.value().get().map_or_else(|| set_without_script.get(), |r| r.is_ok());
    view! {
        <section class="card" id=crate::api::SET_QUOTA_AT data-testid="set-quota">
            <h2>"Set this key's quota"</h2>
            <p class="muted">"It applies to the key's next request. The owner is told, and the audit trail keeps the change."</p>
            <ActionForm action>
                <input type="hidden" name="key_id" value=key.id.clone()/>
                <div class="inline-form">
                    <label>"Per hour" <input name="per_hour" inputmode="numeric" value=per_hour required data-testid="set-per-hour" {..error.on("per_hour")}/></label>
                    <label>"Per day" <input name="per_day" inputmode="numeric" value=per_day required data-testid="set-per-day" {..error.on("per_day")}/></label>
                    <label>"Burst per second" <input name="burst" inputmode="numeric" value=burst placeholder="none" data-testid="set-burst" {..error.on("burst")}/></label>
                </div>
                <p class="hint">"The burst limit caps requests in any one second; leave it empty for none."</p>
                <label>"Reason" <input name="reason" value=reason required data-testid="set-reason" {..error.on("reason")}/></label>
                // Not disabled while it is sent: a disabled button drops the keyboard's focus.
                <button type="submit">"Set quota"</button>
            </ActionForm>
            // The page is fetched again with the new quota: the keyboard's place is here.
            {move || done().then(|| view! {
                <Confirmation text="Quota set; it applies to the key's next request." testid="set-done"/>
            })}
            {error.message("set-quota-error")}
        </section>
    }
}

/// `/admin/quota-changes`: every decision on a quota, newest first: who changed which key's
/// quota, from what to what, when and why, and which requests were denied, by whom and why.
#[component]
pub fn AdminQuotaChangesPage() -> impl IntoView {
    let query = use_query_map();
    let before = move || query.read().get("before");
    let entries = Resource::new(before, |before| {
        once_per_render("admin/quota-changes", &before, admin_quota_audit(before.clone()))
    });
    view! {
        <PageTitle text="Quota changes · keymeter"/>
        <h1>"Quota changes and decisions"</h1>
        <section class="card">
            <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let paged = before().is_some();
                    match entries.await {
                        Ok(AuditPage { entries: list, older }) => view! {
                            <div class="table-scroll"><table class="stacked" data-testid="audit-trail">
                                <thead><tr><th>"When"</th><th>"Key"</th><th>"By"</th><th>"Decision"</th><th>"From"</th><th>"To"</th><th>"Why"</th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|e| {
                                        let denied = e.decision == "denied";
                                        let key_page = format!("/dashboard/developers/api-keys/{}", e.key_id);
                                        let key_name = e.key_name.clone();
                                        view! {
                                            <tr data-testid="audit-row" data-decision=e.decision.clone()>
                                                <td class="when" data-label="When">{format::time(&e.changed_at)}</td>
                                                // Names repeat across owners: the key's page tells them apart.
                                                <td data-label="Key"><A href=key_page>{key_name}</A></td>
                                                <td data-label="By">{audit_actor(&e)}</td>
                                                <td data-label="Decision"><span class=format!("badge {}", e.decision)>{e.decision.clone()}</span></td>
                                                <td class="num" data-label="From">{limits_with_burst(e.old_per_hour, e.old_per_day, e.old_burst)}</td>
                                                // A denial's limits were asked for, never applied.
                                                <td class="num" data-label="To">{if denied {
                                                    format!("asked {}", limits(e.new_per_hour, e.new_per_day))
                                                } else {
                                                    limits_with_burst(e.new_per_hour, e.new_per_day, e.new_burst)
                                                }}</td>
                                                <td data-label="Why">{e.reason.clone()}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                            <nav class="pager">
                                {paged.then(|| view! { <A href="/admin/quota-changes">"Newest"</A> })}
                                {older.map(|cursor| view! {
                                    <A href=format!("/admin/quota-changes?before={cursor}") attr:data-testid="older">"Older"</A>
                                })}
                            </nav>
                        }.into_any(),
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

/// Who decided: the admin (with the request, if one was decided), the operator's CLI, or an
/// account deleted since.
fn audit_actor(e: &AuditView) -> String {
    let by = match (&e.changed_by, e.source.as_str()) {
        (Some(by), _) => by.clone(),
        (None, "operator") => return "operator (CLI)".to_owned(),
        (None, _) => "a deleted account".to_owned(),
    };
    match e.quota_request_id {
        Some(id) if e.source == "request" => format!("{by} (request #{id})"),
        _ => by,
    }
}
