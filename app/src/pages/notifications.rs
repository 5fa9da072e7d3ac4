//! `/dashboard/notifications`: the bell's list.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::use_query_map;

use super::layout::{ErrorPanel, PageTitle};
use crate::api::plain_form;
use crate::api::{
    mark_notifications_read, monthly_summary_setting, my_notifications, MarkNotificationsRead, SetMonthlySummary,
    MARKED_READ, MONTHLY_SUMMARY_OFF, MONTHLY_SUMMARY_ON, NOTIFICATIONS_AT, NOTIFICATIONS_PER_PAGE,
};
use crate::render_memo::once_per_render;

/// `/dashboard/notifications`: the bell's list, a page at a time (`?before=<id>` for older
/// ones); opening a page marks what it shows read, and nothing else.
#[component]
pub fn NotificationsPage() -> impl IntoView {
    let query = use_query_map();
    let before = move || query.read().get("before").and_then(|b| b.parse::<i64>().ok());
    let items =
        Resource::new(before, |before| once_per_render("notifications/list", &before, my_notifications(before)));
    // Once the page is here, and only its own range: one that arrives meanwhile, or one on an
    // older page, stays unread for the bell.
    // The bell then counts what is left.
    let counts = use_context::<super::layout::TopBarCounts>();
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let shown = items.with(|list| {
            let ids = || list.as_ref().and_then(|list| list.as_ref().ok()).into_iter().flatten().map(|n| n.id);
            ids().min().zip(ids().max())
        });
        if let Some((oldest, newest)) = shown {
            leptos::task::spawn_local(async move {
                if mark_notifications_read(oldest, newest).await.is_ok() {
                    counts.into_iter().for_each(|b| b.0.refetch());
                }
            });
        }
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = (mark_notifications_read, counts.map(|b| b.0));
    // Without JavaScript a button marks them read instead.
    let mark_read = ServerAction::<MarkNotificationsRead>::new();
    let marked = plain_form::done(MARKED_READ);
    view! {
        <PageTitle text="Notifications · keymeter"/>
        <h1>"Notifications"</h1>
        <section class="card" id=NOTIFICATIONS_AT>
            <p class="ok without-script" role="status" data-testid="marked-read">{move || marked.get().then_some("Marked read.")}</p>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let paged = before().is_some();
                    match items.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty">{if paged { "No older notifications." } else { "Nothing yet." }}</p>
                            {paged.then(|| view! { <A href="/dashboard/notifications">"Newest"</A> })}
                        }.into_any(),
                        Ok(list) => {
                            // A full page may have older ones behind it.
                            let older = (list.len() == NOTIFICATIONS_PER_PAGE)
                                .then(|| list.last().map(|n| format!("/dashboard/notifications?before={}", n.id)))
                                .flatten();
                            let unread = list.iter().filter(|n| n.unread).map(|n| n.id);
                            let range = unread.clone().min().zip(unread.max());
                            view! {
                                {range.map(|(oldest, newest)| view! {
                                    <ActionForm action=mark_read attr:class="without-script">
                                        <input type="hidden" name="oldest_shown" value=oldest/>
                                        <input type="hidden" name="newest_shown" value=newest/>
                                        <button type="submit" data-testid="mark-read">"Mark these read"</button>
                                    </ActionForm>
                                })}
                                <ul class="notifications" data-testid="notifications">
                                    {list.into_iter().map(|n| view! {
                                        <li class:unread=n.unread>
                                            <strong>{n.title.clone()}</strong>
                                            <span class="hint">{format!(" · {}", format::time(&n.created_at))}</span>
                                            <p>{n.body.clone()}</p>
                                            {n.link.clone().map(|l| view! { <A href=l attr:aria-label=format!("Open: {}", n.title)>"Open"</A> })}
                                        </li>
                                    }).collect_view()}
                                </ul>
                                <nav class="pager">
                                    {paged.then(|| view! { <A href="/dashboard/notifications">"Newest"</A> })}
                                    {older.map(|href| view! { <A href=href attr:data-testid="older">"Older"</A> })}
                                </nav>
                            }.into_any()
                        }
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Transition>
        </section>
        <MonthlySummaryCard/>
    }
}

/// The monthly usage summary by email, on or off (its emails link here for turning it on
/// again). A form, so that it also works without JavaScript.
#[component]
fn MonthlySummaryCard() -> impl IntoView {
    let action = ServerAction::<SetMonthlySummary>::new();
    // Read once: the box already shows what was saved, and a refetch would rebuild the form
    // and drop the keyboard's focus from "Save".
    let setting =
        Resource::new(|| (), |()| once_per_render("notifications/monthly-summary", &(), monthly_summary_setting()));
    // Saved without JavaScript: the page was loaded anew, saying what was saved.
    let (on_without_script, off_without_script) =
        (plain_form::done(MONTHLY_SUMMARY_ON), plain_form::done(MONTHLY_SUMMARY_OFF));
    let saved_choice = move || match action.value().get() {
        Some(result) => result.ok(),
        None if on_without_script.get() => Some(true),
        None if off_without_script.get() => Some(false),
        None => None,
    };
    // In the page from the start, so that screen readers announce what appears in it.
    let saved = move || match saved_choice() {
        Some(true) => "Saved: the summary comes after each month.",
        Some(false) => "Saved: no monthly summary.",
        None => "",
    };
    view! {
        <section class="card" id=crate::api::MONTHLY_SUMMARY_AT data-testid="monthly-summary">
            <h2>"Monthly usage summary"</h2>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match setting.await {
                        Ok(on) => view! {
                            <ActionForm action>
                                <div class="inline-form">
                                    <label>
                                        <input type="checkbox" name="monthly_summary" checked=on data-testid="monthly-summary-on"/>
                                        " Email me a summary of my keys' usage after each month, with its CSV"
                                    </label>
                                    <button type="submit" data-testid="monthly-summary-save">"Save"</button>
                                </div>
                            </ActionForm>
                        }.into_any(),
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Transition>
            <p class="ok" role="status" data-testid="monthly-summary-saved">{saved}</p>
            {move || action.value().get().and_then(Result::err).map(|e| view! { <p class="error" role="alert">{e.to_string()}</p> })}
        </section>
    }
}
