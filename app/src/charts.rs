//! Charts drawn in the browser with charming's WasmRenderer (ECharts). On the server each chart
//! is an empty, fixed-size container; once hydrated, an effect draws it and then updates it in
//! place whenever its data changes (no flicker, no chart re-created per tick).

use leptos::prelude::*;

use crate::api::{LiveData, PeriodRow};
use calendar::Granularity;

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
    draw::keep_drawn(kind.id(), container, draw::Redraw::Merge, move || draw::live_chart(kind, &live.get()));
    #[cfg(not(feature = "hydrate"))]
    let _ = live;
    view! { <div class="chart needs-script" id=kind.id() data-testid=kind.id() role="img" aria-label=kind.label() node_ref=container></div> }
}

#[component]
pub fn BreakdownChart(rows: Signal<Vec<PeriodRow>>, per: Signal<Granularity>) -> impl IntoView {
    let container = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    draw::keep_drawn("chart-breakdown", container, draw::Redraw::Replace, move || {
        draw::breakdown_chart(&rows.get(), per.get())
    });
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
    use charming::datatype::{CompositeValue, DataPoint, DataPointItem};
    use charming::element::{
        AxisLabel, AxisTick, AxisType, ItemStyle, LineStyle, LineStyleType, TextStyle, Tooltip, Trigger,
    };
    use charming::series::{Bar, Line};
    use charming::{Chart, Echarts, WasmRenderer};
    use leptos::prelude::*;

    use super::LiveChartKind;
    use crate::api::{short_period_label, LiveData, PeriodRow};
    use calendar::Granularity;

    // Colours with at least 3:1 contrast on white; admitted/throttled (indigo/amber) and
    // p50/p95 (blue/brown, dashed) stay apart for colour-blind readers too.
    const ADMITTED: &str = "#4f46e5";
    const THROTTLED: &str = "#d97706";
    const ERRORS: &str = "#c62828";
    const P50: &str = "#1d4ed8";
    const P95: &str = "#b45309";

    /// How a drawn chart takes new options.
    #[derive(Clone, Copy, PartialEq)]
    pub enum Redraw {
        /// Merged into the drawn ones: the live charts, whose shape stays, move smoothly.
        Merge,
        /// In place of them: options left out are gone (ECharts would keep the last range's
        /// bars when a range has none, since charming leaves empty lists out).
        Replace,
    }

    /// ECharts' `setOption(options, notMerge = true)` (charming's binding has no `notMerge`).
    fn replace(echarts: &Echarts, chart: &Chart) {
        use wasm_bindgen::{JsCast, JsValue};
        let this: &JsValue = echarts.unchecked_ref();
        let json = serde_json::to_string(chart).unwrap_or_default();
        let set_option = js_sys::Reflect::get(this, &JsValue::from_str("setOption"));
        if let (Ok(options), Ok(set_option)) = (js_sys::JSON::parse(&json), set_option) {
            let _ = set_option.unchecked_ref::<js_sys::Function>().call2(this, &options, &JsValue::TRUE);
        }
    }

    /// Draws the chart once its container is in the page (after client-side navigation that
    /// is a moment after this runs: the node ref tells), then updates the same ECharts instance,
    /// and fits it to its container when the window's size changes (a phone turned, a window
    /// narrowed), or the canvas would keep its first width and push the page sideways.
    pub fn keep_drawn(
        id: &'static str,
        container: NodeRef<leptos::html::Div>,
        redraw: Redraw,
        chart: impl Fn() -> Chart + 'static,
    ) {
        let instance = StoredValue::new_local(None::<Echarts>);
        let resized = window_event_listener(leptos::ev::resize, move |_| {
            instance.try_with_value(|slot| slot.as_ref().map(|e| e.resize(wasm_bindgen::JsValue::UNDEFINED)));
        });
        on_cleanup(move || resized.remove());
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
                    match redraw {
                        Redraw::Merge => WasmRenderer::update(echarts, &chart),
                        Redraw::Replace => replace(echarts, &chart),
                    }
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
    fn gappy_line(name: &str, color: &str, values: impl Iterator<Item = Option<f64>>) -> Line {
        Line::new()
            .name(name)
            .show_symbol(true)
            .symbol_size(2.5)
            .item_style(ItemStyle::new().color(color))
            .line_style(LineStyle::new().color(color))
            .data(values.map(point).collect::<Vec<_>>())
    }

    fn calls<D: Into<DataPoint>>(name: &str, color: &str, values: Vec<D>) -> Bar {
        Bar::new().name(name).stack("calls").item_style(ItemStyle::new().color(color)).data(values)
    }

    /// Counts per minute whose last minute is still under way: its bar is faded and its
    /// tooltip says "so far" (at full strength a minute's first seconds read as traffic
    /// dropping).
    fn minutes_so_far(values: impl ExactSizeIterator<Item = i64>, color: &str, current: &str) -> Vec<DataPoint> {
        let last = values.len().saturating_sub(1);
        let so_far = |count: i64| {
            let faded = ItemStyle::new().color(color).opacity(0.45);
            DataPointItem::new(count).name(format!("So far in {current}")).item_style(faded).into()
        };
        values.enumerate().map(|(i, count)| if i < last { count.into() } else { so_far(count) }).collect()
    }

    fn hundredths(x: f64) -> f64 {
        (x * 100.0).round() / 100.0
    }

    fn minute_label(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%H:%M").to_string()).unwrap_or_default()
    }

    /// Labels and ticks only at `at` (category indices): ECharts' own choice of every n-th
    /// label starts from the oldest, so it moves each minute and can skip the newest period.
    fn labels_at(axis: Axis, at: &[usize]) -> Axis {
        let values = || at.iter().map(|&i| CompositeValue::from(i as f64));
        let label = values().fold(AxisLabel::new(), AxisLabel::custom_values);
        axis.axis_label(label).axis_tick(AxisTick::new().custom_values(values().collect::<Vec<_>>()))
    }

    /// A chart with its title, a tooltip (an ECharts string template: the page's
    /// Content-Security-Policy allows no JavaScript built from strings, so no formatter
    /// functions), a note in its middle when it has nothing to show, and its category axis.
    fn base(title: &str, tooltip: &str, empty: Option<&str>, x_axis: Axis) -> Chart {
        Chart::new()
            .title(Title::new().text(title).left("left").text_style(TextStyle::new().font_size(14)))
            // Always there, empty when there is data: an update merges into the drawn chart, so
            // a note left out would stay.
            .title(
                Title::new()
                    .text(empty.unwrap_or_default())
                    .left("center")
                    .top("middle")
                    .text_style(TextStyle::new().font_size(13).color("#6b7280")),
            )
            .tooltip(Tooltip::new().trigger(Trigger::Axis).formatter(tooltip))
            // Room for the legend on its own line under the title: side by side they overlap
            // in a phone-wide chart. The value axis' labels (with units) size the left margin.
            .grid(Grid::new().left(8).right(24).top(56).bottom(28).contain_label(true))
            .x_axis(x_axis.type_(AxisType::Category))
    }

    /// The smallest of a few round percentages at or above `max`: an error rate of 2 % drawn
    /// on a 0–100 % axis would lie on the axis.
    fn percent_axis_top(max: f64) -> f64 {
        [1.0, 2.0, 5.0, 10.0, 20.0, 25.0, 50.0].into_iter().find(|&top| max <= top).unwrap_or(100.0)
    }

    pub fn live_chart(kind: LiveChartKind, live: &LiveData) -> Chart {
        let labels: Vec<String> = live.points.iter().map(|p| minute_label(p.minute_ms)).collect();
        // Labels on the quarter hours, which stay put as the minutes pass.
        let quarters: Vec<usize> = live
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.minute_ms.rem_euclid(15 * 60_000) == 0)
            .map(|(i, _)| i)
            .collect();
        let x_axis = labels_at(Axis::new().data(labels), &quarters);
        let quiet = live.points.iter().all(|p| p.requests + p.throttled == 0);
        let empty = quiet.then_some("No requests in the last 60 minutes");
        match kind {
            LiveChartKind::Requests => {
                let current = live.points.last().map(|p| minute_label(p.minute_ms)).unwrap_or_default();
                let current = current.as_str();
                let admitted = live.points.iter().map(|p| p.requests as i64);
                let throttled = live.points.iter().map(|p| p.throttled as i64);
                base("Requests per minute", "{b0} UTC<br/>{a0}: {c0}<br/>{a1}: {c1}", empty, x_axis)
                    .legend(Legend::new().right(8).top(26))
                    .y_axis(Axis::new().type_(AxisType::Value).min_interval(1))
                    .series(calls("admitted", ADMITTED, minutes_so_far(admitted, ADMITTED, current)))
                    .series(calls("throttled", THROTTLED, minutes_so_far(throttled, THROTTLED, current)))
            }
            LiveChartKind::ErrorRate => {
                // A minute without admitted requests has no error rate: a gap, not 0.
                let rate: Vec<Option<f64>> = live
                    .points
                    .iter()
                    .map(|p| (p.requests > 0).then(|| (p.errors as f64 * 1000.0 / p.requests as f64).round() / 10.0))
                    .collect();
                let top = percent_axis_top(rate.iter().flatten().copied().fold(0.0, f64::max));
                // The tooltip tells how many requests a rate is of (25 % of 4 is no outage),
                // from a line that is not drawn, on an axis of its own that is not shown.
                let requests = live.points.iter().map(|p| p.requests as i64).collect::<Vec<_>>();
                base("Error rate", "{b0} UTC<br/>{a0}: {c0}%<br/>{a1}: {c1}", empty, x_axis)
                    .y_axis(
                        Axis::new()
                            .type_(AxisType::Value)
                            .min(0)
                            .max(top)
                            .axis_label(AxisLabel::new().formatter("{value}%")),
                    )
                    .y_axis(Axis::new().type_(AxisType::Value).show(false))
                    .series(gappy_line("errors", ERRORS, rate.into_iter()))
                    .series(
                        Line::new()
                            .name("requests")
                            .y_axis_index(1)
                            .symbol(charming::element::Symbol::None)
                            .line_style(LineStyle::new().opacity(0))
                            .data(requests),
                    )
            }
            LiveChartKind::Latency => {
                // Seconds once a p95 reaches one: "2,100 ms" reads worse than "2.1 s".
                let slowest = live.points.iter().filter_map(|p| p.p95_ms).fold(0.0, f64::max);
                let (unit, per_unit) = if slowest >= 1000.0 { ("s", 1000.0) } else { ("ms", 1.0) };
                let in_unit = |ms: Option<f64>| ms.map(|ms| hundredths(ms / per_unit));
                let tooltip = format!("{{b0}} UTC<br/>{{a0}}: {{c0}} {unit}<br/>{{a1}}: {{c1}} {unit}");
                base(&format!("Latency ({unit})"), &tooltip, empty, x_axis)
                    .legend(Legend::new().right(8).top(26))
                    .y_axis(
                        Axis::new()
                            .type_(AxisType::Value)
                            .min(0)
                            .axis_label(AxisLabel::new().formatter(format!("{{value}} {unit}").as_str())),
                    )
                    // Nor a latency: quiet minutes are gaps in the lines.
                    .series(gappy_line("p50", P50, live.points.iter().map(|p| in_unit(p.p50_ms))))
                    .series(
                        gappy_line("p95", P95, live.points.iter().map(|p| in_unit(p.p95_ms)))
                            .line_style(LineStyle::new().color(P95).type_(LineStyleType::Dashed).width(2)),
                    )
            }
        }
    }

    pub fn breakdown_chart(rows: &[PeriodRow], per: Granularity) -> Chart {
        let labels: Vec<String> = rows.iter().map(|r| short_period_label(per, &r.start)).collect();
        // As many labels as fit a phone-wide chart, counted back from the newest period so
        // that it always has one.
        // (Six daily labels touched at a phone's 300 px.)
        let fit = match per {
            Granularity::Hour => 3,
            Granularity::Day | Granularity::Week | Granularity::Month => 5,
        };
        let step = rows.len().div_ceil(fit).max(1);
        let at: Vec<usize> = (0..rows.len()).rev().step_by(step).collect();
        let quiet = rows.iter().all(|r| r.requests + r.throttled == 0);
        let title = format!("Requests per {} (UTC)", per.as_str());
        // A few periods (a key made this week) would otherwise be bars as wide as the chart.
        let width = |bar: Bar| if rows.len() < 8 { bar.bar_width(40) } else { bar };
        base(
            &title,
            "{b0}<br/>{a0}: {c0}<br/>{a1}: {c1}",
            quiet.then_some("No usage in this range"),
            labels_at(Axis::new().data(labels), &at),
        )
        .legend(Legend::new().right(8).top(26))
        .y_axis(Axis::new().type_(AxisType::Value).min_interval(1))
        .series(width(calls("admitted", ADMITTED, rows.iter().map(|r| r.requests).collect())))
        .series(width(calls("throttled", THROTTLED, rows.iter().map(|r| r.throttled).collect())))
    }
}
