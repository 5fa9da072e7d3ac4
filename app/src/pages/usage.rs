//! `/dashboard/developers/api-keys/{id}/usage`: live charts, quota gauges with a projection,
//! breakdowns by day, week and month, top endpoints and status codes, CSV export, and the
//! quota-increase form.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::A;
use leptos_router::hooks::use_params_map;

use super::layout::ErrorPanel;
use super::quota_requests::{KeyQuotaRequests, QuotaRequestsState};
use crate::api::{get_usage_overview, Gauge, LiveData, PeriodRow, UsageOverview, RANGES};
use crate::charts::{BreakdownChart, LiveChart, LiveChartKind};

#[component]
pub fn UsagePage() -> impl IntoView {
    let params = use_params_map();
    let days = RwSignal::new(30u32);
    // Created here, before any await (see layout.rs).
    let requests = QuotaRequestsState::new(move || params.read().get("id").unwrap_or_default());
    let overview = Resource::new(
        move || (params.read().get("id").unwrap_or_default(), days.get()),
        |(id, d)| get_usage_overview(id, d),
    );
    view! {
        <Transition fallback=|| view! { <p class="loading">"Loading usage…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Ok(overview) => view! { <UsageDashboard overview days requests/> }.into_any(),
                    Err(err) => view! { <ErrorPanel err/> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn UsageDashboard(overview: UsageOverview, days: RwSignal<u32>, requests: QuotaRequestsState) -> impl IntoView {
    let key = overview.key.clone();
    let live = RwSignal::new(overview.live.clone());
    let delayed = RwSignal::new(false);
    // Subscribed in an effect, which runs after hydration: an update arriving while the page is
    // still being hydrated would change text the hydration is about to match.
    #[cfg(feature = "hydrate")]
    {
        let key_id = key.id.clone();
        Effect::new(move |_| crate::charts::subscribe_live(&key_id, live, delayed));
    }
    let has_traffic = overview.has_traffic();
    let today = overview.live.now.date_naive();
    let month_ago = today - chrono::Duration::days(29);
    let csv_action = format!("/dashboard/developers/api-keys/{}/usage.csv", key.id);
    let key_name = key.name.clone();
    let title = format!("Usage of \u{201c}{}\u{201d}", key.name);
    let key_page = format!("/dashboard/developers/api-keys/{}", key.id);
    // The export range is checked here before the browser leaves the page (the server answers a
    // bad range with a 400 in JSON, which is no page for a merchant to land on).
    let csv_from = RwSignal::new(month_ago.to_string());
    let csv_to = RwSignal::new(today.to_string());
    let csv_error = RwSignal::new(None::<String>);
    // The browser's own checks of the date fields stay for pages without JavaScript; with it,
    // the message shows in the page instead.
    let scripted = RwSignal::new(false);
    Effect::new(move |_| scripted.set(true));
    let check_csv = move |ev: leptos::ev::SubmitEvent| {
        let problem = csv_range_problem(&csv_from.get_untracked(), &csv_to.get_untracked());
        if problem.is_some() {
            ev.prevent_default();
        }
        csv_error.set(problem);
    };

    // Its own (type-erased) view: one nested type for the whole page overflows the compiler's
    // query depth in the browser build.
    let top = view! {
        <Title text=format!("Usage of {} · keymeter", key.name)/>
            <section class="card">
                <div class="card-head">
                    <h2>"Top endpoints and status codes"</h2>
                    <div class="range" role="group" aria-label="Range">
                        {RANGES.iter().map(|&d| view! {
                            <button type="button" class:active=move || days.get() == d on:click=move |_| days.set(d)>
                                {if d == 1 { "24 h".to_owned() } else { format!("{d} days") }}
                            </button>
                        }).collect_view()}
                    </div>
                </div>
                <div class="two-col">
                    <div class="table-scroll"><table data-testid="top-endpoints">
                        <thead><tr><th>"Endpoint"</th><th class="num">"Requests"</th><th class="num">"Errors"</th><th class="num">"p95"</th></tr></thead>
                        <tbody>
                            {overview.endpoints.iter().map(|e| view! {
                                <tr>
                                    <td><code>{format!("{} {}", e.method, e.endpoint)}</code></td>
                                    <td class="num">{format::count(e.requests)}</td>
                                    <td class="num">{format::percent(e.error_rate)}</td>
                                    <td class="num">{format::millis(e.p95_ms)}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table></div>
                    <div class="table-scroll"><table data-testid="status-codes">
                        <thead><tr><th>"Status"</th><th class="num">"Calls"</th></tr></thead>
                        <tbody>
                            {overview.statuses.iter().map(|(code, n)| view! {
                                <tr><td><span class=format!("status s{}", code / 100)>{*code}</span></td><td class="num">{format::count(*n)}</td></tr>
                            }).collect_view()}
                        </tbody>
                    </table></div>
                </div>
            </section>
    }
    .into_any();
    view! {
        <p class="crumbs">
            <A href="/dashboard/developers/api-keys">"API keys"</A>" / "
            <A href=key_page>{key_name.clone()}</A>" / usage"
        </p>
        <div class="page-head">
            <h1 data-testid="usage-title">{title}</h1>
            <form class="export" method="get" action=csv_action data-testid="csv-form" novalidate=move || scripted.get() on:submit=check_csv>
                <label>"From" <input type="date" name="from" value=month_ago.to_string() required data-testid="csv-from"
                    min=move || shift(&csv_to.get(), -(MAX_RANGE_DAYS - 1)) max=move || csv_to.get()
                    on:input=move |ev| { csv_from.set(event_target_value(&ev)); csv_error.set(None); }/></label>
                <label>"To" <input type="date" name="to" value=today.to_string() required data-testid="csv-to"
                    min=move || csv_from.get() max=move || shift(&csv_from.get(), MAX_RANGE_DAYS - 1)
                    on:input=move |ev| { csv_to.set(event_target_value(&ev)); csv_error.set(None); }/></label>
                <label>"Per"
                    <select name="granularity">
                        <option value="hour">"hour"</option>
                        <option value="day" selected>"day"</option>
                        <option value="week">"week"</option>
                        <option value="month">"month"</option>
                    </select>
                </label>
                <button type="submit">"Export CSV"</button>
            </form>
        </div>
        {move || csv_error.get().map(|message| view! {
            <p class="error" role="alert" data-testid="csv-error">{message}</p>
        })}
        {move || delayed.get().then(|| view! {
            <p class="notice" role="status">"Live data delayed: showing the last figures received."</p>
        })}
        {(!has_traffic).then(|| view! {
            <section class="card empty-state" data-testid="usage-empty">
                <h2>"No traffic yet"</h2>
                <p>"Charts fill in as soon as this key calls the API, for example:"</p>
                <code>{format!("curl -H \"X-API-Key: {}…\" http://127.0.0.1:3000/api/v1/ping", key.prefix)}</code>
            </section>
        })}
        <section class="gauges">
            <GaugeCard title="This hour" gauge=Signal::derive(move || live.get().hour) now=Signal::derive(move || live.get().now) testid="gauge-hour"/>
            <GaugeCard title="Today (UTC)" gauge=Signal::derive(move || live.get().day) now=Signal::derive(move || live.get().now) testid="gauge-day"/>
        </section>
        <section class="card">
            <div class="card-head">
                <h2>"Last 60 minutes"</h2>
                <span class="hint" data-testid="live-updated">
                    {move || format!("live · {} · {}", format::time_seconds(&live.get().now), rate_text(&live.get()))}
                </span>
            </div>
            <div class="charts">
                <LiveChart kind=LiveChartKind::Requests live/>
                <LiveChart kind=LiveChartKind::ErrorRate live/>
                <LiveChart kind=LiveChartKind::Latency live/>
            </div>
            <p class="hint" data-testid="latest-minute">
                {move || live.get().points.last().map(|p| format!("This minute: {} requests, {} throttled", p.requests, p.throttled)).unwrap_or_default()}
            </p>
        </section>
        <Breakdowns daily=overview.daily.clone() weekly=overview.weekly.clone() monthly=overview.monthly.clone()/>
        {top}
        // Where a merchant sees the quota running out, they can ask for more.
        <KeyQuotaRequests key=overview.key.clone() state=requests/>
    }
}

/// The most days one export covers (the server's limit, `DayRange::MAX_DAYS`).
const MAX_RANGE_DAYS: i64 = 366;

fn day(raw: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").ok()
}

/// `raw` moved by `days`, for the date fields' bounds (empty when `raw` is no date).
fn shift(raw: &str, days: i64) -> String {
    day(raw).and_then(|d| d.checked_add_signed(chrono::Duration::days(days))).map(|d| d.to_string()).unwrap_or_default()
}

/// What is wrong with an export range, in the merchant's words; `None` when the server will take it.
fn csv_range_problem(from: &str, to: &str) -> Option<String> {
    use chrono::Datelike;
    let (Some(from), Some(to)) = (day(from), day(to)) else {
        return Some("Choose both dates of the export range.".to_owned());
    };
    if !(1970..=9999).contains(&from.year()) || !(1970..=9999).contains(&to.year()) {
        return Some("Dates must lie between 1970-01-01 and 9999-12-31.".to_owned());
    }
    if from > to {
        return Some(format!("\u{201c}From\u{201d} ({from}) must not be after \u{201c}To\u{201d} ({to})."));
    }
    let days = (to - from).num_days() + 1;
    if days > MAX_RANGE_DAYS {
        return Some(format!("An export covers at most {MAX_RANGE_DAYS} days; this range has {days}."));
    }
    None
}

fn rate_text(live: &LiveData) -> String {
    format!("{:.1} requests/min", live.rate_per_minute)
}

#[component]
fn GaugeCard(
    title: &'static str,
    gauge: Signal<Gauge>,
    now: Signal<chrono::DateTime<chrono::Utc>>,
    testid: &'static str,
) -> impl IntoView {
    let share = move || {
        let g = gauge.get();
        if g.limit > 0 {
            (g.used as f64 / g.limit as f64).min(1.0)
        } else {
            0.0
        }
    };
    let level = move || match share() {
        s if s >= 1.0 => "full",
        s if s >= 0.8 => "high",
        s if s >= 0.5 => "mid",
        _ => "low",
    };
    view! {
        <div class="card gauge" data-testid=testid>
            <h2>{title}</h2>
            <div class="bar"><div class=move || format!("fill {}", level()) style=move || format!("width: {:.1}%", share() * 100.0)></div></div>
            <p class="figures">
                <strong>{move || format::count(gauge.get().used)}</strong>
                {move || format!(" of {} requests ({})", format::count(gauge.get().limit), format::percent(share()))}
            </p>
            <p class="hint">
                {move || { let g = gauge.get(); format!("Resets in {} (at {})", format::duration_until(&now.get(), &g.reset_at), format::clock(&g.reset_at)) }}
            </p>
            <p class="projection" data-testid=format!("{testid}-projection")>
                {move || match gauge.get().runs_out_at {
                    Some(at) => format!("At the current rate this quota runs out at {}.", format::clock(&at)),
                    None if share() >= 1.0 => "Used up until the reset.".to_owned(),
                    None => "At the current rate this quota lasts until the reset.".to_owned(),
                }}
            </p>
        </div>
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Breakdown {
    Daily,
    Weekly,
    Monthly,
}

#[component]
fn Breakdowns(daily: Vec<PeriodRow>, weekly: Vec<PeriodRow>, monthly: Vec<PeriodRow>) -> impl IntoView {
    let shown = RwSignal::new(Breakdown::Daily);
    let rows = Signal::derive(move || match shown.get() {
        Breakdown::Daily => daily.clone(),
        Breakdown::Weekly => weekly.clone(),
        Breakdown::Monthly => monthly.clone(),
    });
    let label = move |start: &chrono::DateTime<chrono::Utc>| match shown.get() {
        Breakdown::Daily => start.format("%a %d %b").to_string(),
        Breakdown::Weekly => start.format("week %G-W%V").to_string(),
        Breakdown::Monthly => start.format("%B %Y").to_string(),
    };
    let tab = move |b: Breakdown, text: &'static str| {
        view! {
            <button type="button" class:active=move || shown.get() == b on:click=move |_| shown.set(b)>{text}</button>
        }
    };
    view! {
        <section class="card">
            <div class="card-head">
                <h2>"History"</h2>
                <div class="range" role="tablist">
                    {tab(Breakdown::Daily, "Daily · 30 days")}
                    {tab(Breakdown::Weekly, "Weekly · 12 ISO weeks")}
                    {tab(Breakdown::Monthly, "Monthly · 12 months")}
                </div>
            </div>
            <BreakdownChart rows/>
            <div class="table-scroll"><table class="breakdown" data-testid="breakdown-table">
                <thead><tr>
                    <th>"Period (UTC)"</th><th class="num">"Requests"</th><th class="num">"4xx"</th><th class="num">"5xx"</th>
                    <th class="num">"Throttled"</th><th class="num">"p50"</th><th class="num">"p95"</th><th class="num">"Out"</th>
                </tr></thead>
                <tbody>
                    {move || rows.get().into_iter().rev().map(|r| view! {
                        <tr>
                            <td>{label(&r.start)}</td>
                            <td class="num">{format::count(r.requests)}</td>
                            <td class="num">{format::count(r.errors_4xx)}</td>
                            <td class="num">{format::count(r.errors_5xx)}</td>
                            <td class="num">{format::count(r.throttled)}</td>
                            <td class="num">{format::millis(r.p50_ms)}</td>
                            <td class="num">{format::millis(r.p95_ms)}</td>
                            <td class="num">{format::bytes(r.bytes_out)}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table></div>
        </section>
    }
}
