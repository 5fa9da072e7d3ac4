//! `/dashboard/developers/api-keys/{id}/usage`: live charts, quota gauges with a projection,
//! breakdowns by day, week and month, top endpoints and status codes, CSV export, and the
//! quota-increase form.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_params_map, use_query_map};

use super::form_error::FormError;
use super::layout::{ErrorPanel, PageTitle};
use super::quota_requests::{KeyQuotaRequests, QuotaRequestsState};
use crate::api::{
    get_top_calls, get_usage_history, get_usage_overview, period_label, ChosenRange, Gauge, LiveData, PeriodRow,
    TopCalls, UsageOverview, DEFAULT_RANGE, RANGES,
};
use crate::charts::{BreakdownChart, LiveChart, LiveChartKind, LiveLink};
use crate::error::AppError;
use crate::render_memo::once_per_render;
use calendar::{DayRange, Granularity, RangeError};

#[component]
pub fn UsagePage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    // Created here, before any await (see layout.rs).
    let requests = QuotaRequestsState::new(move || params.read().get("id").unwrap_or_default());
    // The top tables' range as the address chose it when the page (or another key's) loads;
    // choosing another later fetches only those tables.
    let overview = Resource::new(
        move || params.read().get("id").unwrap_or_default(),
        move |id| {
            let top_days = query.with_untracked(top_days_in);
            // The chosen history comes with the page only when the address shows it.
            let chosen = query.with_untracked(|q| {
                let shown = history_in(q) == Breakdown::Chosen;
                shown.then(|| chosen_in(q)).flatten()
            });
            let (from, to, per) = match chosen {
                Some(c) => (Some(c.from.to_string()), Some(c.to.to_string()), Some(c.per.as_str().to_owned())),
                None => (None, None, None),
            };
            once_per_render(
                "usage/overview",
                &(id.clone(), top_days, chosen),
                get_usage_overview(id, top_days, from, to, per),
            )
        },
    );
    view! {
        <Transition fallback=|| view! { <p class="loading">"Loading usage…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Ok(overview) => view! { <UsageDashboard overview requests/> }.into_any(),
                    Err(err) => view! { <ErrorPanel err/> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn UsageDashboard(overview: UsageOverview, requests: QuotaRequestsState) -> impl IntoView {
    let key = overview.key.clone();
    let live = RwSignal::new(overview.live.clone());
    let link = RwSignal::new(LiveLink::Live);
    // Subscribed in an effect, which runs after hydration: an update arriving while the page is
    // still being hydrated would change text the hydration is about to match.
    #[cfg(feature = "hydrate")]
    {
        let key_id = key.id.clone();
        Effect::new(move |_| crate::charts::subscribe_live(&key_id, live, link));
    }
    // The empty state goes as soon as the live stream shows a first call.
    // The limits as the live view reports them: a quota changed meanwhile (an admin's decision)
    // shows in the request form too, and the key's requests are read again.
    let limits = Memo::new(move |_| live.with(|l| (l.hour.limit, l.day.limit)));
    requests.refetch_on(move || limits.get());
    let had_traffic = overview.has_traffic();
    let has_traffic = move || had_traffic || live.with(|l| l.points.iter().any(|p| p.requests + p.throttled > 0));
    let revoked_at = key.revoked_at;
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
    let csv_error = RwSignal::new(None::<AppError>);
    let csv_form_error = FormError::new("csv-error", move || csv_error.get());
    // The browser's own checks of the date fields stay for pages without JavaScript; with it,
    // the message shows in the page instead.
    let scripted = RwSignal::new(false);
    Effect::new(move |_| scripted.set(true));
    let check_csv = move |ev: leptos::ev::SubmitEvent| {
        let problem = range_problem(&csv_from.get_untracked(), &csv_to.get_untracked(), "export range");
        if problem.is_some() {
            ev.prevent_default();
        }
        csv_error.set(problem);
    };

    // Its own (type-erased) view: one nested type for the whole page overflows the compiler's
    // query depth in the browser build.
    // Which history and which range of top calls are shown: in the address, so that their
    // links work without JavaScript too.
    let query = use_query_map();
    let default_range = ChosenRange { from: month_ago, to: today, per: Granularity::Day };
    let views = UsageViews {
        path: format!("/dashboard/developers/api-keys/{}/usage", key.id),
        history: Memo::new(move |_| query.with(history_in)),
        top_days: Memo::new(move |_| query.with(top_days_in).unwrap_or(DEFAULT_RANGE)),
        chosen: Memo::new(move |_| query.with(chosen_in).unwrap_or(default_range)),
    };
    let top = view! {
        <PageTitle text=format!("Usage of {} · keymeter", key.name)/>
        <TopCallsCard key_id=key.id.clone() initial=overview.top.clone() views=views.clone()/>
    }
    .into_any();
    let try_it = format!("curl -H \"X-API-Key: {}…\" {}/api/v1/ping", key.prefix, overview.api_base);
    view! {
        <p class="crumbs">
            <super::api_keys::KeysCrumb yours=key.yours/>" / "
            <A href=key_page exact=true>{key_name.clone()}</A>" / usage"
        </p>
        <div class="page-head">
            <h1 data-testid="usage-title">
                {title}
                {revoked_at.is_some().then(|| view! { " " <span class="badge revoked" data-testid="usage-revoked">"revoked"</span> })}
            </h1>
            <form class="export" method="get" action=csv_action data-testid="csv-form" novalidate=move || scripted.get() on:submit=check_csv>
                <label>"From (UTC)" <input type="date" name="from" value=month_ago.to_string() required data-testid="csv-from" {..csv_form_error.on("from")}
                    min=move || shift(&csv_to.get(), -(DayRange::MAX_DAYS - 1)) max=move || csv_to.get()
                    on:input=move |ev| { csv_from.set(event_target_value(&ev)); csv_error.set(None); }/></label>
                <label>"To (UTC)" <input type="date" name="to" value=today.to_string() required data-testid="csv-to" {..csv_form_error.on("to")}
                    min=move || csv_from.get() max=move || shift(&csv_from.get(), DayRange::MAX_DAYS - 1)
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
        {csv_form_error.message("csv-error")}
        {revoked_at.map(|at| view! {
            <p class="notice" data-testid="revoked-notice">
                {format!("This key was revoked on {}: calls with it are refused and no longer counted. Its history stays here.", format::time(&at))}
            </p>
        })}
        <p class="notice" role="status" data-testid="live-link" hidden=move || link.get() == LiveLink::Live>
            {move || match link.get() {
                LiveLink::Live => String::new(),
                LiveLink::Delayed => "Live data delayed: showing the last figures received.".to_owned(),
                LiveLink::Reconnecting => "Connection to keymeter lost: reconnecting… The figures below stop at the time shown.".to_owned(),
                LiveLink::Stopped => "Live updates stopped (signed out, or the server refused the stream). Reload the page to resume.".to_owned(),
            }}
        </p>
        <p class="notice" role="status" data-testid="live-from-storage" hidden=move || !live.with(|l| l.from_storage)>
            "Live counters are unavailable right now: the gauges and charts show the usage stored so far, which may be a little behind."
        </p>
        {move || (!has_traffic() && revoked_at.is_none()).then(|| view! {
            <section class="card empty-state" data-testid="usage-empty">
                <h2>"No traffic yet"</h2>
                <p>"Charts fill in as soon as this key calls the API, for example:"</p>
                <code>{try_it.clone()}</code>
            </section>
        })}
        // A revoked key has no quota left to spend: no gauges, no projection.
        {revoked_at.is_none().then(|| view! {
            <section class="gauges">
                <GaugeCard title="This hour" gauge=Signal::derive(move || live.get().hour) now=Signal::derive(move || live.get().now) testid="gauge-hour" ask_more=key.yours/>
                <GaugeCard title="Today (UTC)" gauge=Signal::derive(move || live.get().day) now=Signal::derive(move || live.get().now) testid="gauge-day" ask_more=key.yours/>
            </section>
        })}
        <section class="card">
            <div class="card-head">
                <h2>"Last 60 minutes"</h2>
                // Without JavaScript nothing updates: the figures are as of the page's loading.
                <span class="hint" data-testid="live-updated">
                    <span class="needs-script">
                        {move || match link.get() {
                            _ if revoked_at.is_some() => "revoked · ",
                            LiveLink::Reconnecting => "reconnecting… · ",
                            LiveLink::Stopped => "stopped · ",
                            _ if live.with(|l| l.from_storage) => "from stored usage · ",
                            _ => "live · ",
                        }}
                    </span>
                    <span class="without-script">"as of "</span>
                    {move || format!("{} · {}", format::time_seconds(&live.get().now), rate_text(&live.get()))}
                </span>
            </div>
            <p class="hint without-script">"The charts need JavaScript. The gauges above and the tables below show the figures as of this page's loading."</p>
            <div class="charts">
                <LiveChart kind=LiveChartKind::Requests live/>
                <LiveChart kind=LiveChartKind::ErrorRate live/>
                <LiveChart kind=LiveChartKind::Latency live/>
            </div>
            <p class="hint" data-testid="latest-minute">
                {move || live.get().points.last().map(|p| format!("This minute: {}, {} throttled", format::counted(p.requests as i64, "request", "requests"), format::count(p.throttled as i64))).unwrap_or_default()}
            </p>
        </section>
        <Breakdowns key_id=key.id.clone() daily=overview.daily.clone() weekly=overview.weekly.clone() monthly=overview.monthly.clone()
            chosen=overview.chosen.clone() views/>
        {top}
        // Where a merchant sees the quota running out, they can ask for more.
        <KeyQuotaRequests key=overview.key.clone() state=requests quota=Signal::from(limits)/>
    }
}

fn day(raw: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").ok()
}

/// `raw` moved by `days`, for the date fields' bounds (empty when `raw` is no date).
fn shift(raw: &str, days: i64) -> String {
    day(raw).and_then(|d| d.checked_add_signed(chrono::Duration::days(days))).map(|d| d.to_string()).unwrap_or_default()
}

/// What is wrong with a range of days as typed (`what`: "export range", "range"), by the
/// server's own rule; `None` when the server will take it.
fn range_problem(from: &str, to: &str, what: &str) -> Option<AppError> {
    DayRange::parse(from, to).err().map(|problem| range_refusal(&problem, what))
}

/// [`range_problem`]'s message for `problem`, on the field at fault.
fn range_refusal(problem: &RangeError, what: &str) -> AppError {
    let message = match problem {
        RangeError::NotADate { .. } => format!("Choose both dates of the {what}."),
        other => {
            let mut what = what.to_owned();
            what[..1].make_ascii_uppercase();
            format!("{what}: {other}.")
        }
    };
    AppError::BadRequest { message, field: problem.field().map(str::to_owned) }
}

fn rate_text(live: &LiveData) -> String {
    format!("{:.1} requests/min (15-minute average)", live.rate_per_minute)
}

/// The page's choice of history and of range for the top calls, read from its address.
#[derive(Clone)]
struct UsageViews {
    path: String,
    history: Memo<Breakdown>,
    top_days: Memo<u32>,
    /// The chosen range of the history (the last 30 days per day until one is chosen).
    chosen: Memo<ChosenRange>,
}

impl UsageViews {
    /// This page showing `history` and the top calls of `top_days`, at the section `at`.
    fn href(&self, history: Breakdown, top_days: u32, at: &str) -> String {
        self.href_chosen(history, self.chosen.get(), top_days, at)
    }

    /// The same, with `chosen` as the chosen range.
    fn href_chosen(&self, history: Breakdown, chosen: ChosenRange, top_days: u32, at: &str) -> String {
        let range = match history {
            Breakdown::Chosen => format!("&from={}&to={}&per={}", chosen.from, chosen.to, chosen.per.as_str()),
            _ => String::new(),
        };
        format!("{}?history={}{range}&top={top_days}#{at}", self.path, history.param())
    }
}

/// The history the page's address chooses; a chosen range only when the address names one
/// whole (an address cut short shows the daily history, not an empty range).
fn history_in(query: &leptos_router::params::ParamsMap) -> Breakdown {
    match Breakdown::from_param(query.get("history").as_deref()) {
        Breakdown::Chosen if chosen_in(query).is_none() => Breakdown::Daily,
        shown => shown,
    }
}

/// The history's range named by the page's address (`from`, `to`, `per`), if it names one
/// whole: two dates and a period length (the range's own rules are checked where it is shown).
fn chosen_in(query: &leptos_router::params::ParamsMap) -> Option<ChosenRange> {
    Some(ChosenRange {
        from: day(&query.get("from")?)?,
        to: day(&query.get("to")?)?,
        per: Granularity::parse(&query.get("per")?).ok()?,
    })
}

/// A link choosing one of the page's views (`active`: the one shown). A plain link, which the
/// router still follows within the page, without scrolling: `<A>` would mark every one of them
/// as the current page, as they share its path.
fn view_link(
    href: impl Fn() -> String + Send + Sync + 'static,
    active: impl Fn() -> bool + Copy + Send + Sync + 'static,
    text: String,
) -> AnyView {
    view! {
        <a href=href data-noscroll="" class=move || if active() { "active" } else { "" }
            aria-current=move || active().then_some("true")>{text}</a>
    }
    .into_any()
}

/// The top tables' range named by the page's address (`top`), if it names one of [`RANGES`].
fn top_days_in(query: &leptos_router::params::ParamsMap) -> Option<u32> {
    query.get("top").and_then(|d| d.parse().ok()).filter(|d| RANGES.contains(d))
}

/// Top endpoints and status codes over a chosen range (a link: without JavaScript the page
/// comes with it). A new range fetches only these tables, so the rest of the page (history,
/// export fields, live charts) stays as it is.
#[component]
fn TopCallsCard(key_id: String, initial: TopCalls, views: UsageViews) -> impl IntoView {
    let days = views.top_days;
    let top = RwSignal::new(initial);
    let loading = RwSignal::new(false);
    let failed = RwSignal::new(None::<String>);
    // Only what the page does not hold yet is fetched (the first run finds the page's own).
    Effect::new(move |_| {
        let d = days.get();
        if top.with_untracked(|t| t.range_days) == d {
            // Back to what is shown before another range's answer came: nothing is pending.
            loading.set(false);
            failed.set(None);
            return;
        }
        loading.set(true);
        let key_id = key_id.clone();
        leptos::task::spawn_local(async move {
            let result = get_top_calls(key_id, d).await;
            // A later choice wins over an answer that arrives late (and a page left meanwhile
            // has nothing to show it in).
            if days.try_get_untracked() != Some(d) {
                return;
            }
            loading.set(false);
            match result {
                Ok(calls) => {
                    failed.set(None);
                    top.set(calls);
                }
                Err(err) => failed.set(Some(err.to_string())),
            }
        });
    });
    // Type-erased parts: one nested type for the whole card overflows the compiler's query depth
    // in the browser build.
    let links = RANGES
        .iter()
        .map(|&d| {
            let views = views.clone();
            let href = move || views.href(views.history.get(), d, "top-calls");
            let text = if d == 1 { "24 h".to_owned() } else { format!("{d} days") };
            view_link(href, move || days.get() == d, text)
        })
        .collect_view()
        .into_any();
    let tables = view! {
            <div class="two-col" class:stale=move || loading.get() aria-busy=move || loading.get().to_string()>
                <div class="table-scroll"><table data-testid="top-endpoints">
                    <thead><tr><th>"Endpoint"</th><th class="num">"Requests"</th><th class="num">"Error rate"</th><th class="num">"p95"</th></tr></thead>
                    <tbody>
                        {move || top.with(|t| t.endpoints.is_empty()).then(|| view! {
                            <tr><td colspan="4" class="muted" data-testid="top-endpoints-empty">"No admitted calls in this range."</td></tr>
                        })}
                        {move || top.get().endpoints.into_iter().map(|e| view! {
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
                        {move || top.with(|t| t.statuses.is_empty()).then(|| view! {
                            <tr><td colspan="2" class="muted" data-testid="status-codes-empty">"No calls."</td></tr>
                        })}
                        {move || top.get().statuses.into_iter().map(|(code, n)| view! {
                            <tr><td><span class=format!("status s{}", code / 100)>{code}</span></td><td class="num">{format::count(n)}</td></tr>
                        }).collect_view()}
                    </tbody>
                </table></div>
            </div>
    }
    .into_any();
    view! {
        <section class="card" id="top-calls">
            <div class="card-head">
                <h2>"Top endpoints and status codes"</h2>
                <nav class="range" aria-label="Range">{links}</nav>
            </div>
            {move || failed.get().map(|message| view! { <p class="error" role="alert">{message}</p> })}
            {tables}
            <p class="hint">"Requests count admitted calls; status codes count every call, throttled ones (429) too."</p>
        </section>
    }
}

#[component]
fn GaugeCard(
    title: &'static str,
    gauge: Signal<Gauge>,
    now: Signal<chrono::DateTime<chrono::Utc>>,
    testid: &'static str,
    /// Whether the viewer can ask for more (the key's owner): offered once the quota is at 80%.
    ask_more: bool,
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
            {move || (ask_more && share() >= 0.8).then(|| view! {
                <p><a href=format!("#{}", crate::api::REQUESTS_AT) data-testid=format!("{testid}-ask")>"Ask for a higher quota"</a></p>
            })}
        </div>
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Breakdown {
    Daily,
    Weekly,
    Monthly,
    /// Over a range of days the merchant chose.
    Chosen,
}

impl Breakdown {
    /// From the page's `history` parameter; daily unless it names another.
    fn from_param(param: Option<&str>) -> Self {
        match param {
            Some("weekly") => Self::Weekly,
            Some("monthly") => Self::Monthly,
            Some("range") => Self::Chosen,
            _ => Self::Daily,
        }
    }

    fn param(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Chosen => "range",
        }
    }
}

/// The chosen range's history as last fetched: for which range, and its rows or why not.
type ChosenRows = Option<(ChosenRange, Result<Vec<PeriodRow>, AppError>)>;

#[component]
fn Breakdowns(
    key_id: String,
    daily: Vec<PeriodRow>,
    weekly: Vec<PeriodRow>,
    monthly: Vec<PeriodRow>,
    /// The chosen range's rows, when the page came with the address choosing one.
    chosen: Option<Result<Vec<PeriodRow>, AppError>>,
    views: UsageViews,
) -> impl IntoView {
    let shown = views.history;
    let chosen_range = views.chosen;
    let held: RwSignal<ChosenRows> = RwSignal::new(chosen.map(|rows| (chosen_range.get_untracked(), rows)));
    let loading = RwSignal::new(false);
    // Bumped by each "Show": the same range again is fetched again if its last answer failed.
    let shows = RwSignal::new(0u32);
    // As the top tables: only a range the page does not hold yet is fetched (or one whose
    // answer was a failure rather than a refusal of the range itself).
    Effect::new(move |_| {
        let range = chosen_range.get();
        shows.track();
        let held_already = held.with_untracked(|h| match h {
            Some((r, Ok(_))) | Some((r, Err(AppError::BadRequest { .. }))) => *r == range,
            _ => false,
        });
        if shown.get() != Breakdown::Chosen || held_already {
            loading.set(false);
            return;
        }
        // The server's rules, checked here first.
        let problem = match DayRange::new(range.from, range.to) {
            Err(problem) => Some(range_refusal(&problem, "range")),
            Ok(days) => calendar::history_range_problem(&days, range.per)
                .map(|message| AppError::BadRequest { message, field: Some("to".to_owned()) }),
        };
        if let Some(problem) = problem {
            loading.set(false);
            held.set(Some((range, Err(problem))));
            return;
        }
        loading.set(true);
        let key_id = key_id.clone();
        leptos::task::spawn_local(async move {
            let (from, to) = (range.from.to_string(), range.to.to_string());
            let result = get_usage_history(key_id, from, to, range.per.as_str().to_owned()).await;
            if chosen_range.try_get_untracked() != Some(range) {
                return;
            }
            loading.set(false);
            held.set(Some((range, result)));
        });
    });
    // The rows' period length: for a chosen range, that of the rows held (while another
    // range loads, the rows shown are still the last range's).
    let per = Signal::derive(move || match shown.get() {
        Breakdown::Daily => Granularity::Day,
        Breakdown::Weekly => Granularity::Week,
        Breakdown::Monthly => Granularity::Month,
        Breakdown::Chosen => held.with(|h| h.as_ref().map(|(r, _)| r.per)).unwrap_or(chosen_range.get().per),
    });
    let rows = Signal::derive(move || match shown.get() {
        Breakdown::Daily => daily.clone(),
        Breakdown::Weekly => weekly.clone(),
        Breakdown::Monthly => monthly.clone(),
        Breakdown::Chosen => {
            held.with(|h| h.as_ref().and_then(|(_, rows)| rows.as_ref().ok().cloned()).unwrap_or_default())
        }
    });
    let error = FormError::new("range-error", move || {
        (shown.get() == Breakdown::Chosen)
            .then(|| held.with(|h| h.as_ref().and_then(|(_, r)| r.clone().err())))
            .flatten()
    });
    let tab = {
        let views = views.clone();
        move |b: Breakdown, text: &'static str| {
            let views = views.clone();
            let href = move || views.href(b, views.top_days.get(), "history");
            view_link(href, move || shown.get() == b, text.to_owned())
        }
    };
    let tabs = view! {
        {tab(Breakdown::Daily, "Daily · 30 days")}
        {tab(Breakdown::Weekly, "Weekly · 12 ISO weeks")}
        {tab(Breakdown::Monthly, "Monthly · 12 months")}
        {tab(Breakdown::Chosen, "Chosen range")}
    }
    .into_any();
    // The range shown, as a CSV export of the same periods (per endpoint).
    let csv = format!("{}.csv", views.path);
    let export = move || {
        let range = chosen_range.get();
        let shown_ok = held.with(|h| matches!(h, Some((r, Ok(_))) if *r == range));
        (shown.get() == Breakdown::Chosen && shown_ok).then(|| {
            let href = format!("{csv}?from={}&to={}&granularity={}", range.from, range.to, range.per.as_str());
            view! { <p class="hint"><a href=href rel="external" data-testid="range-csv">"Export this range as CSV"</a></p> }
        })
    };
    let range_form = move || {
        (shown.get() == Breakdown::Chosen)
            .then(|| view! { <RangeForm views=views.clone() error shows/> {export.clone()} })
    };
    // Type-erased: one nested type for the whole page overflows the compiler's query depth.
    view! {
        <section class="card" id="history">
            <div class="card-head">
                <h2>"History"</h2>
                <nav class="range" aria-label="Breakdown">{tabs}</nav>
            </div>
            {range_form}
            <BreakdownChart rows per/>
            <div class="table-scroll" class:stale=move || loading.get() aria-busy=move || loading.get().to_string()><table class="breakdown" data-testid="breakdown-table">
                <thead><tr>
                    <th>"Period (UTC)"</th><th class="num">"Requests"</th><th class="num">"4xx"</th><th class="num">"5xx"</th>
                    <th class="num">"Throttled"</th><th class="num">"p50"</th><th class="num">"p95"</th><th class="num">"Out"</th>
                </tr></thead>
                <tbody>
                    {move || rows.get().is_empty().then(|| view! {
                        <tr><td colspan="8" class="muted" data-testid="breakdown-empty">"No usage in this range."</td></tr>
                    })}
                    {move || rows.get().into_iter().rev().map(|r| view! {
                        <tr>
                            <td>{period_label(per.get(), &r.start)}</td>
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
    .into_any()
}

/// The chosen range's fields. A plain form to the page itself: without JavaScript the page
/// comes back with the range; with it, the address changes and only the history is fetched.
/// The fields follow the address (the browser's Back and Forward change it too).
#[component]
fn RangeForm(views: UsageViews, error: FormError, shows: RwSignal<u32>) -> impl IntoView {
    let chosen = views.chosen;
    let first = chosen.get_untracked();
    let (from, to, per) =
        (RwSignal::new(first.from.to_string()), RwSignal::new(first.to.to_string()), RwSignal::new(first.per));
    Effect::new(move |_| {
        let c = chosen.get();
        from.set(c.from.to_string());
        to.set(c.to.to_string());
        per.set(c.per);
    });
    let navigate = leptos_router::hooks::use_navigate();
    let path = views.path.clone();
    let top_days = views.top_days;
    let submit = move |ev: leptos::ev::SubmitEvent| {
        let (Some(from), Some(to)) = (day(&from.get_untracked()), day(&to.get_untracked())) else {
            // The browser's own check of an empty date field has already spoken.
            return;
        };
        ev.prevent_default();
        let chosen = ChosenRange { from, to, per: per.get_untracked() };
        let href = views.href_chosen(Breakdown::Chosen, chosen, views.top_days.get_untracked(), "history");
        shows.update(|n| *n += 1);
        navigate(&href, leptos_router::NavigateOptions { scroll: false, ..Default::default() });
    };
    // `value` for the page as the server sends it, `prop:value` to follow the address after.
    view! {
        <form class="export range-form" method="get" action=format!("{path}#history") on:submit=submit data-testid="range-form">
            <input type="hidden" name="history" value="range"/>
            <label>"From (UTC)" <input type="date" name="from" required value=first.from.to_string() prop:value=move || from.get()
                data-testid="range-from" {..error.on("from")} on:input=move |ev| from.set(event_target_value(&ev))/></label>
            <label>"To (UTC)" <input type="date" name="to" required value=first.to.to_string() prop:value=move || to.get()
                data-testid="range-to" {..error.on("to")} on:input=move |ev| to.set(event_target_value(&ev))/></label>
            <label>"Per"
                <select name="per" data-testid="range-per" prop:value=move || per.get().as_str() {..error.on("per")}
                    on:change=move |ev| per.set(Granularity::parse(&event_target_value(&ev)).unwrap_or(Granularity::Day))>
                    {Granularity::ALL.into_iter().map(|p| view! { <option value=p.as_str() selected=p == first.per>{p.as_str()}</option> }).collect_view()}
                </select>
            </label>
            <input type="hidden" name="top" value=move || top_days.get().to_string()/>
            <button type="submit">"Show"</button>
        </form>
        {error.message("range-error")}
    }
}
