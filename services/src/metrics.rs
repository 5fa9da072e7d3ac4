//! What one instance has done since it started, for an operator's monitoring: counters kept by
//! the parts doing the work (the usage recorder and writer), in atomics because the recorder's
//! is on every metered request. The server serves them in Prometheus' text format, with gauges
//! it reads when scraped (see `server/src/routes/metrics.rs`).

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::usage::UsageEvent;

/// Upper bounds, in µs, of the metered latency histogram's buckets (and `+Inf` after them).
const LATENCY_BUCKETS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Metered calls recorded (authenticated, so counted), by status class 1xx..5xx.
    by_class: [AtomicU64; 5],
    /// Of those, refused before running: by their quota (429), or because it could not be
    /// checked and quotas fail closed (503).
    throttled: AtomicU64,
    /// Their latency (arrival to answer, as stored): calls per bucket of [`LATENCY_BUCKETS_US`]
    /// (not cumulative; the last is beyond them), and the sum.
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    /// Events this instance could not queue (the queue was full or closed): lost.
    dropped: AtomicU64,
    /// Events handed off to the Redis stream, and straight to PostgreSQL while Redis could not
    /// take them.
    to_redis: AtomicU64,
    to_postgres: AtomicU64,
    /// Events this instance's writer took from the stream and stored in PostgreSQL (new ones:
    /// an event stored before, by a replay or a writer that took an entry over, is not counted).
    written: AtomicU64,
    /// Stream entries PostgreSQL refused, set aside for an operator.
    set_aside: AtomicU64,
}

/// Where a batch of usage went from the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOff {
    Redis,
    Postgres,
}

impl Metrics {
    pub fn recorded(&self, event: &UsageEvent) {
        let class = usize::from(event.status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        if event.throttled {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < event.latency_us);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(event.latency_us, Ordering::Relaxed);
    }

    /// Returns the number dropped so far, this one included.
    pub fn dropped(&self) -> u64 {
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn handed_off(&self, to: HandOff, events: usize) {
        let counter = match to {
            HandOff::Redis => &self.to_redis,
            HandOff::Postgres => &self.to_postgres,
        };
        counter.fetch_add(events as u64, Ordering::Relaxed);
    }

    pub fn written(&self, events: usize) {
        self.written.fetch_add(events as u64, Ordering::Relaxed);
    }

    pub fn set_aside(&self) {
        self.set_aside.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the counters to `out`.
    pub fn expose(&self, out: &mut Exposition) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.family(
            "keymeter_metered_requests_total",
            "counter",
            "Metered API calls recorded by this instance (authenticated, so counted), by status class.",
        );
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().enumerate() {
            out.sample("keymeter_metered_requests_total", &[("class", class)], get(&self.by_class[i]));
        }
        out.family(
            "keymeter_throttled_requests_total",
            "counter",
            "Metered calls refused before running: 429 by their quota, or 503 when it could not be checked (fail-closed).",
        );
        out.sample("keymeter_throttled_requests_total", &[], get(&self.throttled));
        let duration = "keymeter_metered_request_duration_seconds";
        out.family(
            duration,
            "histogram",
            "Metered calls' latency, from arrival to answer, as stored with their usage.",
        );
        let mut calls = 0;
        for (i, bucket) in self.latency.iter().enumerate() {
            calls += get(bucket);
            let le = LATENCY_BUCKETS_US.get(i).map_or_else(|| "+Inf".to_owned(), |&us| (us as f64 / 1e6).to_string());
            out.sample(&format!("{duration}_bucket"), &[("le", &le)], calls);
        }
        out.sample(&format!("{duration}_sum"), &[], get(&self.latency_sum_us) as f64 / 1e6);
        out.sample(&format!("{duration}_count"), &[], calls);
        out.family(
            "keymeter_usage_events_dropped_total",
            "counter",
            "Usage events this instance could not queue (queue full or closed): lost.",
        );
        out.sample("keymeter_usage_events_dropped_total", &[], get(&self.dropped));
        out.family(
            "keymeter_usage_events_handed_off_total",
            "counter",
            "Usage events handed off durably: to the Redis stream, or straight to PostgreSQL while Redis could not take them.",
        );
        out.sample("keymeter_usage_events_handed_off_total", &[("to", "redis")], get(&self.to_redis));
        out.sample("keymeter_usage_events_handed_off_total", &[("to", "postgres")], get(&self.to_postgres));
        out.family(
            "keymeter_usage_events_written_total",
            "counter",
            "Usage events this instance's writer took from the Redis stream and stored in PostgreSQL (each event once).",
        );
        out.sample("keymeter_usage_events_written_total", &[], get(&self.written));
        out.family(
            "keymeter_usage_entries_set_aside_total",
            "counter",
            "Stream entries PostgreSQL refused, moved to the set-aside stream by this instance's writer.",
        );
        out.sample("keymeter_usage_entries_set_aside_total", &[], get(&self.set_aside));
    }
}

/// Prometheus' text exposition format (version 0.0.4): a `# HELP` and `# TYPE` line per
/// family, then its samples.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.0, "{label}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn into_text(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_written_in_the_text_format_with_escaped_label_values() {
        let mut out = Exposition::default();
        out.family("x_total", "counter", "Things.\nMore");
        out.sample("x_total", &[("a", "1"), ("b", "q\"\\\n")], 3);
        out.sample("x_total", &[], 0.5);
        assert_eq!(
            out.into_text(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"\\\\\\n\"} 3\nx_total 0.5\n"
        );
    }

    #[test]
    fn recorded_calls_are_counted_by_status_class_and_latency() {
        let metrics = Metrics::default();
        let event = |status, throttled, latency_us| UsageEvent {
            request_id: uuid::Uuid::new_v4(),
            key_id: uuid::Uuid::new_v4(),
            at_ms: 0,
            method: "GET".into(),
            endpoint: "/api/v1/ping".into(),
            status,
            latency_us,
            bytes_in: 0,
            bytes_out: 0,
            throttled,
            enforced: true,
            alerts: Vec::new(),
        };
        // Latencies on a bucket's bound count in it (`le`), beyond the last in +Inf.
        let calls = [
            (200, false, 1_000),
            (204, false, 2_500),
            (429, true, 4_000),
            (404, false, 6_000),
            (503, false, 9_000),
            (101, false, 20_000_000),
        ];
        for (status, throttled, latency_us) in calls {
            metrics.recorded(&event(status, throttled, latency_us));
        }
        let mut out = Exposition::default();
        metrics.expose(&mut out);
        let text = out.into_text();
        for line in [
            "keymeter_metered_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "keymeter_metered_request_duration_seconds_bucket{le=\"0.0025\"} 2",
            "keymeter_metered_request_duration_seconds_bucket{le=\"0.005\"} 3",
            "keymeter_metered_request_duration_seconds_bucket{le=\"10\"} 5",
            "keymeter_metered_request_duration_seconds_bucket{le=\"+Inf\"} 6",
            "keymeter_metered_request_duration_seconds_count 6",
            "keymeter_metered_request_duration_seconds_sum 20.0225",
            "keymeter_metered_requests_total{class=\"1xx\"} 1",
            "keymeter_metered_requests_total{class=\"2xx\"} 2",
            "keymeter_metered_requests_total{class=\"4xx\"} 2",
            "keymeter_metered_requests_total{class=\"5xx\"} 1",
            "keymeter_throttled_requests_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
