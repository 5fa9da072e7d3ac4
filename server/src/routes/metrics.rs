//! `/metrics`, in Prometheus' text format, on a listener of its own (`KEYMETER_METRICS_LISTEN`,
//! never the app's: the numbers are for the operator). This instance's counters (see
//! `services::metrics`), its connections and quota mode, and deployment-wide gauges read when
//! scraped: usage handed off but not yet in PostgreSQL, and the mail outbox. A backing service
//! that does not answer within [`READ_WITHIN`] leaves its gauges out, and
//! `keymeter_backend_up` says which.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use services::metrics::Exposition;
use services::Services;

use super::health::within;
use crate::http_server::Connections;

/// Prometheus' scrape timeout is 10 s by default; a hung service must not hold the counters.
const READ_WITHIN: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Sources {
    services: Services,
    /// The app's listener (not this one).
    connections: Connections,
}

pub fn router(services: Services, connections: Connections) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(Sources { services, connections })
}

async fn metrics(State(Sources { services, connections }): State<Sources>) -> impl IntoResponse {
    let (backlog, outbox, redis_answers) = tokio::join!(
        within(READ_WITHIN, services::usage::writer::backlog(&services.redis, &services.namespace)),
        within(READ_WITHIN, services::mailer::counts(&services.db)),
        // All of it: the backlog's stream lives on one node of a cluster (`/readyz` counts a
        // cluster that answers only in part as up, `partial`; this gauge as down).
        within(READ_WITHIN, services::redis_pool::ping(&services.hot_path)),
    );
    let redis_up = backlog.is_ok() && redis_answers.is_ok();
    let mut out = Exposition::default();
    out.family("keymeter_build_info", "gauge", "The running version.");
    out.sample("keymeter_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    services.metrics.expose(&mut out);
    out.single(
        "keymeter_connections_open",
        "gauge",
        "Client connections open on the app's listener.",
        connections.open(),
    );
    out.single(
        "keymeter_connections_max",
        "gauge",
        "Client connections the app's listener serves at once; more wait in its backlog.",
        connections.max(),
    );
    // Its last quota check failed, and Redis does not take a write now either: an idle instance's
    // last failure must not keep the alert on after Redis is back (its next call finds out).
    let fallback = services.quota.redis_down() && !redis_up;
    out.single(
        "keymeter_quota_fallback",
        "gauge",
        "1 while this instance's quota checks fail (it decides without Redis) and Redis does not take writes, else 0.",
        u8::from(fallback),
    );
    out.family(
        "keymeter_backend_up",
        "gauge",
        "Whether the backing service answered this scrape (Redis: took a write).",
    );
    out.sample("keymeter_backend_up", &[("backend", "redis")], u8::from(redis_up));
    out.sample("keymeter_backend_up", &[("backend", "postgres")], u8::from(outbox.is_ok()));
    match backlog {
        Ok(backlog) => {
            out.single(
                "keymeter_usage_backlog_entries",
                "gauge",
                "Usage batches handed off to the Redis stream and not yet stored in PostgreSQL (every instance's).",
                backlog.entries,
            );
            out.single(
                "keymeter_usage_backlog_oldest_seconds",
                "gauge",
                "How long the oldest of those has waited, 0 when none waits.",
                backlog.oldest_wait_ms as f64 / 1000.0,
            );
            out.single(
                "keymeter_usage_set_aside_entries",
                "gauge",
                "Usage batches PostgreSQL refused, kept in the set-aside stream for an operator.",
                backlog.set_aside,
            );
        }
        Err(e) => tracing::debug!(error = %e, "metrics: usage backlog not read"),
    }
    match outbox {
        Ok(counts) => {
            out.family("keymeter_mail_outbox_messages", "gauge", "Unsent messages in the mail outbox, by state.");
            out.sample("keymeter_mail_outbox_messages", &[("state", "waiting")], counts.waiting);
            out.sample("keymeter_mail_outbox_messages", &[("state", "given_up")], counts.failed);
        }
        Err(e) => tracing::debug!(error = %e, "metrics: mail outbox not read"),
    }
    ([(header::CONTENT_TYPE, Exposition::CONTENT_TYPE)], out.into_text())
}
