//! `/admin`: every key of every merchant.

use leptos::prelude::*;
use leptos_router::components::A;

use super::layout::ErrorPanel;
use crate::api::admin_list_keys;
use crate::format;

#[component]
pub fn AdminKeysPage() -> impl IntoView {
    let keys = Resource::new(|| (), |_| admin_list_keys());
    view! {
        <h1>"All API keys"</h1>
        <section class="card">
            <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match keys.await {
                        Ok(keys) if keys.is_empty() => view! { <p class="empty">"No keys yet."</p> }.into_any(),
                        Ok(keys) => view! {
                            <table class="keys" data-testid="admin-keys">
                                <thead><tr><th>"Owner"</th><th>"Name"</th><th>"Key"</th><th>"Status"</th><th>"Quota"</th><th>"Last used"</th></tr></thead>
                                <tbody>
                                    {keys.into_iter().map(|key| {
                                        let status = if key.is_revoked() { "revoked" } else { "active" };
                                        view! {
                                            <tr>
                                                <td>{key.owner_email.clone()}</td>
                                                <td><A href=format!("/dashboard/developers/api-keys/{}", key.id)>{key.name.clone()}</A></td>
                                                <td><code>{format!("{}…", key.prefix)}</code></td>
                                                <td><span class=format!("badge {status}")>{status}</span></td>
                                                <td class="num">{format!("{}/h · {}/day", format::count(key.requests_per_hour), format::count(key.requests_per_day))}</td>
                                                <td>{format::time_or(key.last_used_at.as_ref(), "never")}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                        Err(err) => view! { <ErrorPanel err/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
