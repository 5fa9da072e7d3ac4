//! `/dashboard/notifications`: the bell's list.

use leptos::prelude::*;
use leptos_router::components::A;

use super::layout::{ErrorPanel, PageTitle};
use crate::api::{mark_notifications_read, my_notifications};
use crate::render_memo::once_per_render;

/// `/dashboard/notifications`: the bell's list; opening it marks what it shows read.
#[component]
pub fn NotificationsPage() -> impl IntoView {
    let items = Resource::new(|| (), |_| once_per_render("notifications/list", &(), my_notifications()));
    // Once the list is here, and only up to its newest item: one that arrives meanwhile stays
    // unread for the bell.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let newest = items.with(|list| {
            list.as_ref().and_then(|list| list.as_ref().ok()).and_then(|list| list.iter().map(|n| n.id).max())
        });
        if let Some(newest) = newest {
            leptos::task::spawn_local(async move {
                let _ = mark_notifications_read(newest).await;
            });
        }
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = mark_notifications_read;
    view! {
        <PageTitle text="Notifications · keymeter"/>
        <h1>"Notifications"</h1>
        <section class="card">
            <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match items.await {
                        Ok(list) if list.is_empty() => view! { <p class="empty">"Nothing yet."</p> }.into_any(),
                        Ok(list) => view! {
                            <ul class="notifications" data-testid="notifications">
                                {list.into_iter().map(|n| view! {
                                    <li class:unread=n.unread>
                                        <strong>{n.title.clone()}</strong>
                                        <span class="hint">{format!(" · {}", format::time(&n.created_at))}</span>
                                        <p>{n.body.clone()}</p>
                                        {n.link.clone().map(|l| view! { <A href=l>"Open"</A> })}
                                    </li>
                                }).collect_view()}
                            </ul>
                        }.into_any(),
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
