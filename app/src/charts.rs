//! Charts drawn in the browser with charming's WasmRenderer (ECharts). On the server each chart
//! is an empty, fixed-size container; once hydrated, an effect draws it and then updates it in
//! place whenever its data changes (no flicker, no chart re-created per tick).

use leptos::prelude::*;

use crate::api::{LiveData, Per, PeriodRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveChartKind {
    Requests,
    ErrorRate,
    Latency,
}

impl LiveChartKind {
    fn id(self) -> &'static str {
        match self {
            Self::Requests => "chart-requests",
            Self::ErrorRate => "chart-errors",
            Self::Latency => "chart-latency",
        }
    }

    /// What the chart shows, for screen readers (the canvas itself says nothing).
    fn label(self) -> &'static str {
        match self {
            Self::Requests => "Chart: admitted and throttled requests per minute, last 60 minutes",
            Self::ErrorRate => "Chart: error rate per minute, last 60 minutes",
            Self::Latency => "Chart: p50 and p95 latency per minute, last 60 minutes",
        }
    }
}

#[component]
pub fn LiveChart(kind: LiveChartKind, live: RwSignal<LiveData>) -> impl IntoView {
    let container = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    draw::keep_drawn(kind.id(), container, move || draw::live_chart(kind, &live.get()));
    #[cfg(not(feature = "hydrate"))]
    let _ = live;
    view! { <div class="chart needs-script" id=kind.id() data-testid=kind.id() role="img" aria-label=kind.label() node_ref=container></div> }
}

#[component]
pub fn BreakdownChart(rows: Signal<Vec<PeriodRow>>, per: Signal<Per>) -> impl IntoView {
    let container = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    draw::keep_drawn("chart-breakdown", container, move || draw::breakdown_chart(&rows.get(), per.get()));
    #[cfg(not(feature = "hydrate"))]
    let _ = (rows, per);
    view! {
        <div class="chart wide needs-script" id="chart-breakdown" data-testid="chart-breakdown" role="img"
            aria-label="Chart: requests per period, as in the table below" node_ref=container></div>
    }
}

/// How the page's live stream is doing, as the merchant is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))] // only the browser learns of trouble
pub enum LiveLink {
    /// Updates arrive.
    Live,
    /// The server is up but has no fresh figures (its Redis is away).
    Delayed,
    /// The connection dropped; the browser is trying again.
    Reconnecting,
    /// The server refused the stream (signed out, key gone); no more updates without a reload.
    Stopped,
}

/// Listens to the key's live usage stream and feeds `live`; `link` follows the stream's state.
#[cfg(feature = "hydrate")]
pub fn subscribe_live(key_id: &str, live: RwSignal<LiveData>, link: RwSignal<LiveLink>) {
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use web_sys::{Event, EventSource, MessageEvent};

    let Ok(source) = EventSource::new(&format!("/dashboard/developers/api-keys/{key_id}/usage/live")) else {
        link.set(LiveLink::Stopped);
        return;
    };
    // `try_`: an event can arrive after the page was left.
    let on_live = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        if let Some(text) = event.data().as_string() {
            if let Ok(data) = serde_json::from_str::<LiveData>(&text) {
                _ = link.try_set(LiveLink::Live);
                _ = live.try_set(data);
            }
        }
    });
    let on_delayed =
        Closure::<dyn FnMut(MessageEvent)>::new(move |_: MessageEvent| _ = link.try_set(LiveLink::Delayed));
    // The browser retries a dropped connection by itself (readyState CONNECTING) but gives up
    // for good on a refusal such as a 401 (readyState CLOSED).
    let watched = source.clone();
    let on_error = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
        let state =
            if watched.ready_state() == EventSource::CLOSED { LiveLink::Stopped } else { LiveLink::Reconnecting };
        _ = link.try_set(state);
    });
    let _ = source.add_event_listener_with_callback("live", on_live.as_ref().unchecked_ref());
    let _ = source.add_event_listener_with_callback("delayed", on_delayed.as_ref().unchecked_ref());
    let _ = source.add_event_listener_with_callback("error", on_error.as_ref().unchecked_ref());
    on_live.forget();
    on_delayed.forget();
    on_error.forget();
    let source = send_wrapper::SendWrapper::new(source);
    on_cleanup(move || source.close());
}

#[cfg(feature = "hydrate")]
mod draw {
    use charming::component::{Axis, Grid, Legend, Title};
    use charming::datatype::CompositeValue;
    use charming::element::{AxisType, ItemStyle, Tooltip, Trigger};
    use charming::series::{Bar, Line};
    use charming::{Chart, Echarts, WasmRenderer};
    use leptos::prelude::*;

    use super::LiveChartKind;
    use crate::api::{LiveData, Per, PeriodRow};

    /// Draws the chart once its container is in the page (after client-side navigation that
    /// is a moment after this runs: the node ref tells), then updates the same ECharts instance.
    pub fn keep_drawn(id: &'static str, container: NodeRef<leptos::html::Div>, chart: impl Fn() -> Chart + 'static) {
        let instance = StoredValue::new_local(None::<Echarts>);
        // Bumped to try again when the container was not attached yet.
        let retry = RwSignal::new(0u32);
        Effect::new(move |_| {
            let chart = chart();
            retry.track();
            if container.get().is_none() {
                return;
            }
            let drawn = instance.try_update_value(|slot| match slot {
                Some(echarts) => {
                    WasmRenderer::update(echarts, &chart);
                    true
                }
                None => {
                    *slot = WasmRenderer::new_opt(None, None).render(id, &chart).ok();
                    slot.is_some()
                }
            });
            if drawn == Some(false) && retry.get_untracked() < 50 {
                // `try_`: the chart may be gone by then (navigation).
                set_timeout(move || _ = retry.try_update(|n| *n += 1), std::time::Duration::from_millis(100));
            }
        });
    }

    /// A value, or ECharts' mark for a missing one (a gap in a line). `None` itself would reach
    /// the browser as `undefined`, which ECharts does not document as missing.
    fn point(value: Option<f64>) -> CompositeValue {
        value.map_or_else(|| CompositeValue::from("-"), CompositeValue::from)
    }

    /// A line of `values` where `None` is a gap. ECharts draws a point's dot only when every dot
    /// fits (or at label positions): small dots fit 60 minutes, so a busy minute between quiet
    /// ones, which has no line to draw, still shows.
    fn gappy_line(name: &str, values: impl Iterator<Item = Option<f64>>) -> Line {
        Line::new().name(name).show_symbol(true).symbol_size(2.5).data(values.map(point).collect::<Vec<_>>())
    }

    fn hundredths(x: f64) -> f64 {
        (x * 100.0).round() / 100.0
    }

    fn minute_label(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%H:%M").to_string()).unwrap_or_default()
    }

    fn base(title: &str, labels: Vec<String>) -> Chart {
        Chart::new()
            .title(Title::new().text(title).left("left").text_style(charming::element::TextStyle::new().font_size(14)))
            .tooltip(Tooltip::new().trigger(Trigger::Axis))
            // Room for the legend on its own line under the title: side by side they overlap
            // in a phone-wide chart.
            .grid(Grid::new().left(48).right(16).top(56).bottom(28))
            .x_axis(Axis::new().type_(AxisType::Category).data(labels))
    }

    pub fn live_chart(kind: LiveChartKind, live: &LiveData) -> Chart {
        let labels: Vec<String> = live.points.iter().map(|p| minute_label(p.minute_ms)).collect();
        match kind {
            LiveChartKind::Requests => base("Requests per minute", labels)
                .legend(Legend::new().right(8).top(26))
                .y_axis(Axis::new().type_(AxisType::Value).min_interval(1))
                .series(
                    Bar::new()
                        .name("admitted")
                        .stack("calls")
                        .item_style(ItemStyle::new().color("#4f46e5"))
                        .data(live.points.iter().map(|p| p.requests as i64).collect::<Vec<_>>()),
                )
                .series(
                    Bar::new()
                        .name("throttled")
                        .stack("calls")
                        .item_style(ItemStyle::new().color("#f59e0b"))
                        .data(live.points.iter().map(|p| p.throttled as i64).collect::<Vec<_>>()),
                ),
            LiveChartKind::ErrorRate => {
                // A minute without admitted requests has no error rate: a gap, not 0.
                let rate = live
                    .points
                    .iter()
                    .map(|p| (p.requests > 0).then(|| (p.errors as f64 * 1000.0 / p.requests as f64).round() / 10.0));
                base("Error rate (%)", labels)
                    .y_axis(Axis::new().type_(AxisType::Value).min(0).max(100))
                    .series(gappy_line("errors %", rate).item_style(ItemStyle::new().color("#c62828")))
            }
            LiveChartKind::Latency => base("Latency (ms)", labels)
                .legend(Legend::new().right(8).top(26))
                .y_axis(Axis::new().type_(AxisType::Value))
                // Nor a latency: quiet minutes are gaps in the lines.
                .series(gappy_line("p50", live.points.iter().map(|p| p.p50_ms.map(hundredths))))
                .series(gappy_line("p95", live.points.iter().map(|p| p.p95_ms.map(hundredths)))),
        }
    }

    pub fn breakdown_chart(rows: &[PeriodRow], per: Per) -> Chart {
        let labels: Vec<String> = rows.iter().map(|r| per.axis_label(&r.start)).collect();
        base("Requests per period", labels)
            .legend(Legend::new().right(8).top(26))
            .y_axis(Axis::new().type_(AxisType::Value))
            .series(
                Bar::new()
                    .name("admitted")
                    .stack("calls")
                    .item_style(ItemStyle::new().color("#4f46e5"))
                    .data(rows.iter().map(|r| r.requests).collect::<Vec<_>>()),
            )
            .series(
                Bar::new()
                    .name("throttled")
                    .stack("calls")
                    .item_style(ItemStyle::new().color("#f59e0b"))
                    .data(rows.iter().map(|r| r.throttled).collect::<Vec<_>>()),
            )
    }
}
