//! The metered API end to end: quotas exact under concurrency and across instances, calendar
//! window boundaries on the Redis clock, headers, and usage landing in PostgreSQL.

mod common;

use std::collections::HashMap;

use common::{client, env, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use services::keys::{ApiKeyId, Quota, QuotaLimit};
use services::quota_changes::{ChangeSource, QuotaChange};
use services::usage::histogram::{exact_quantile, LatencyHistogram};

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_is_admitted_across_three_instances() {
    exactly_the_limit_across_three_instances(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_is_admitted_across_three_instances_on_a_redis_cluster() {
    exactly_the_limit_across_three_instances(&[("REDIS_URL", env("KEYMETER_TEST_REDIS_CLUSTER"))]).await;
}

/// Three instances (with `settings`), 96 concurrent clients, three rounds of limits: exactly
/// the limit is admitted, every answered request reaches PostgreSQL as an event, and the live
/// counters count admitted and throttled requests alike.
async fn exactly_the_limit_across_three_instances(settings: &[(&'static str, String)]) {
    let first = TestApp::spawn_with(settings).await;
    let second = first.spawn_sibling_with(settings).await;
    let third = first.spawn_sibling_with(settings).await;
    let bases = [first.base.clone(), second.base.clone(), third.base.clone()];

    for (round, limit) in [(1, 50i64), (2, 137), (3, 1)] {
        let (secret, id) = first.key_with_quota(limit, 100_000).await;
        let clients = 96;
        let per_client = 3;
        let c = client();
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (c, secret, bases) = (c.clone(), secret.clone(), bases.clone());
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for j in 0..per_client {
                    let base = &bases[(i + j) % bases.len()];
                    let res = c.get(format!("{base}/api/v1/ping")).bearer_auth(&secret).send().await.unwrap();
                    statuses.push(res.status().as_u16());
                }
                statuses
            }));
        }
        let mut counts: HashMap<u16, i64> = HashMap::new();
        for t in tasks {
            for s in t.await.unwrap() {
                *counts.entry(s).or_default() += 1;
            }
        }
        let attempts = (clients * per_client) as i64;
        assert_eq!(counts.get(&200).copied().unwrap_or(0), limit, "round {round}: {counts:?}");
        assert_eq!(counts.get(&429).copied().unwrap_or(0), attempts - limit, "round {round}: {counts:?}");

        assert_eq!(first.wait_for_events(id, attempts).await, attempts, "round {round}: events in PostgreSQL");
        let first_minute = first.services.quota.now_ms().await.unwrap() / 60_000 * 60_000 - 5 * 60_000;
        // (On a cluster the counters follow each batch's stream entry: a moment later.)
        let mut live = Vec::new();
        for _ in 0..50 {
            live = services::usage::live::read_minutes(&first.services.redis, id.0, first_minute, 7).await.unwrap();
            if live.iter().map(|(_, m)| m.requests + m.throttled).sum::<u64>() >= attempts as u64 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(live.iter().map(|(_, m)| m.requests).sum::<u64>(), limit as u64, "round {round}: live");
        assert_eq!(live.iter().map(|(_, m)| m.throttled).sum::<u64>(), (attempts - limit) as u64, "round {round}");
    }
}

/// (hourly limit, daily limit, period in ms) for the boundary tests of `window`: 3 in it.
fn limits(window: &str) -> (i64, i64, i64) {
    match window {
        "hour" => (3, 10_000, 3_600_000),
        _ => (1_000, 3, 86_400_000),
    }
}

async fn boundary(window: &str) {
    let app = TestApp::spawn().await;
    let (per_hour, per_day, period_ms) = limits(window);
    let (secret, _) = app.key_with_quota(per_hour, per_day).await;
    let now = app.services.quota.now_ms().await.unwrap();
    // A window end two periods ahead of the real clock; two periods later for another
    // attempt, if a slow moment of the machine made one tell nothing (see below).
    for attempt in 0..3 {
        let end = (now.div_euclid(period_ms) + 2 + 2 * attempt) * period_ms;
        if last_second_and_next_window(&app, &secret, window, end).await {
            return;
        }
    }
    panic!("three times, the request sent 950 ms before a window's end was answered only after it");
}

/// Fills the window ending at `end` and checks its refusals, its last second and the first
/// second of the next window. False if the request sent in the last second was answered
/// after the end (by the Redis clock) and admitted: it may have landed in the next window, so
/// it tells nothing, and the next window is no longer fresh.
async fn last_second_and_next_window(app: &TestApp, secret: &str, window: &str, end: i64) -> bool {
    let (per_hour, per_day, period_ms) = limits(window);
    // The last 10.5 seconds of the window: three requests count in it, the fourth is refused.
    app.set_clock(end - 10_500).await;
    for i in 0..3 {
        let res = app.call("/api/v1/ping", secret).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
    }
    let before = app.services.quota.now_ms().await.unwrap();
    let refused = app.call("/api/v1/ping", secret).await;
    let after = app.services.quota.now_ms().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = header(&refused, "retry-after").parse().unwrap();
    let (lo, hi) = ((end - after + 999) / 1000, (end - before + 999) / 1000);
    assert!(lo <= retry && retry <= hi, "Retry-After {retry} not in [{lo}, {hi}]");
    // The headers describe the window that refused: nothing left, free again at its reset.
    let policy = format!("\"hour\";q={per_hour};w=3600, \"day\";q={per_day};w=86400");
    assert_eq!(header(&refused, "ratelimit-policy"), policy);
    assert_eq!(header(&refused, "ratelimit"), format!("\"{window}\";r=0;t={retry}"));
    assert_eq!(header(&refused, "x-ratelimit-limit"), "3");
    assert_eq!(header(&refused, "x-ratelimit-reset"), (end / 1000).to_string());
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["window"], window);
    assert_eq!(body["error"]["limit"], 3);
    assert_eq!(body["error"]["used"], 3);
    assert_eq!(body["error"]["retry_after"], retry);
    let reset_at = chrono::DateTime::parse_from_rfc3339(body["error"]["reset_at"].as_str().unwrap()).unwrap();
    assert_eq!(reset_at.timestamp_millis(), end);

    // The last second still belongs to the old window: a request landing in it is refused
    // with `Retry-After: 1` (sent 950 ms before the end: unless the machine is very slow, it
    // lands before it).
    app.set_clock(end - 950).await;
    let refused = app.call("/api/v1/ping", secret).await;
    let after = app.services.quota.now_ms().await.unwrap();
    if refused.status() == StatusCode::OK && after >= end {
        return false;
    }
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "ratelimit"), format!("\"{window}\";r=0;t=1"));
    assert_eq!(header(&refused, "x-ratelimit-reset"), (end / 1000).to_string());

    // The first second of the next window starts from zero.
    app.set_clock(end + 50).await;
    let before = app.services.quota.now_ms().await.unwrap();
    let res = app.call("/api/v1/ping", secret).await;
    let after = app.services.quota.now_ms().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "2");
    let next_end = end + period_ms;
    seconds_until(&header(&res, "ratelimit"), &format!("\"{window}\";r=2;t="), next_end, before, after);
    assert_eq!(header(&res, "x-ratelimit-reset"), (next_end / 1000).to_string());
    true
}

/// The `t=` of a `RateLimit` header that must start with `prefix`, checked to be the seconds
/// (rounded up) from some moment between `before_ms` and `after_ms` to `reset_ms`.
fn seconds_until(ratelimit: &str, prefix: &str, reset_ms: i64, before_ms: i64, after_ms: i64) {
    let t: i64 = ratelimit
        .strip_prefix(prefix)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("RateLimit {ratelimit:?} is not {prefix}<seconds>"));
    let (lo, hi) = ((reset_ms - after_ms + 999).div_euclid(1000), (reset_ms - before_ms + 999).div_euclid(1000));
    assert!(lo <= t && t <= hi, "RateLimit {ratelimit:?}: t not in [{lo}, {hi}]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hour_window_is_a_calendar_hour_on_the_redis_clock() {
    boundary("hour").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_day_window_is_a_utc_day_on_the_redis_clock() {
    boundary("day").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_on_its_unix_socket_meters_and_limits_the_same() {
    let app = TestApp::spawn_with(&[("REDIS_URL", env("KEYMETER_TEST_REDIS_SOCKET"))]).await;
    let (secret, id) = app.key_with_quota(3, 100).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.call("/api/v1/ping", &secret).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(app.wait_for_events(id, 4).await, 4, "every call stored, the refused one too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_on_every_metered_response() {
    let app = TestApp::spawn().await;
    let (secret, _) = app.key_with_quota(5, 100).await;
    let before = app.services.quota.now_ms().await.unwrap();
    let res = app.call("/api/v1/status/503", &secret).await;
    let after = app.services.quota.now_ms().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&res, "ratelimit-policy"), "\"hour\";q=5;w=3600, \"day\";q=100;w=86400");
    assert_eq!(header(&res, "x-ratelimit-limit"), "5");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "4");
    // The hour's reset, in epoch seconds: the top of the next hour on the Redis clock.
    let reset: i64 = header(&res, "x-ratelimit-reset").parse().unwrap();
    let top_of_next_hour = |ms: i64| (ms.div_euclid(3_600_000) + 1) * 3_600;
    assert!([top_of_next_hour(before), top_of_next_hour(after)].contains(&reset), "X-RateLimit-Reset {reset}");
    seconds_until(&header(&res, "ratelimit"), "\"hour\";r=4;t=", reset * 1000, before, after);
    assert!(!header(&res, "x-request-id").is_empty());
}

/// A key of `per_hour` and `per_day` with a burst limit of `burst` requests per second.
async fn key_with_burst(app: &TestApp, per_hour: i64, per_day: i64, burst: i64) -> (String, ApiKeyId) {
    let (secret, id) = app.key_with_quota(per_hour, per_day).await;
    let quota = Quota {
        per_hour: QuotaLimit::new(per_hour).unwrap(),
        per_day: QuotaLimit::new(per_day).unwrap(),
        burst_per_second: Some(QuotaLimit::burst(burst).unwrap()),
    };
    let change = QuotaChange { actor: None, source: ChangeSource::Operator, reason: "test setup" };
    services::quota_changes::set_quota(&app.services, id, &quota, &change).await.unwrap();
    (secret, id)
}

/// The burst limit (GCRA) over HTTP: `BURST` quick calls are admitted at once, the ones right
/// after are refused as `burst` with `Retry-After: 1` (nothing counted), and one more is
/// admitted once an emission interval (1/`BURST` s) has passed since the first, by the Redis
/// clock, not a whole second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_limit_admits_a_burst_then_one_request_per_emission_interval() {
    const BURST: i64 = 2;
    const INTERVAL_MS: i64 = 1000 / BURST;
    let app = TestApp::spawn().await;
    let (secret, id) = key_with_burst(&app, 1_000, 10_000, BURST).await;
    // Half past some hour ahead: no hour or day resets while the test runs.
    let now = app.services.quota.now_ms().await.unwrap();
    let hour_end = (now.div_euclid(3_600_000) + 3) * 3_600_000;
    app.set_clock(hour_end - 1_800_000).await;

    let policy = format!("\"hour\";q=1000;w=3600, \"day\";q=10000;w=86400, \"burst\";q={BURST};w=1");
    let first_ms = app.services.quota.now_ms().await.unwrap();
    let (mut admitted, mut refused, mut last_admitted_ms) = (0i64, 0i64, first_ms);
    let mut statuses = Vec::new();
    for call in 0..7i64 {
        if call == 5 {
            // One emission interval after the first admission (at most `last_admitted_ms`
            // with a burst of 2 sent quickly), one more request is admitted.
            app.set_clock(last_admitted_ms + INTERVAL_MS).await;
        }
        let before = app.services.quota.now_ms().await.unwrap();
        let res = app.call("/api/v1/ping", &secret).await;
        let after = app.services.quota.now_ms().await.unwrap();
        statuses.push(res.status().as_u16());
        assert_eq!(header(&res, "ratelimit-policy"), policy, "call {call}");
        if res.status() == StatusCode::OK {
            admitted += 1;
            last_admitted_ms = after;
            let remaining = 1_000 - admitted;
            assert_eq!(header(&res, "x-ratelimit-limit"), "1000", "call {call}");
            assert_eq!(header(&res, "x-ratelimit-remaining"), remaining.to_string(), "call {call}");
            assert_eq!(header(&res, "x-ratelimit-reset"), (hour_end / 1000).to_string(), "call {call}");
            seconds_until(&header(&res, "ratelimit"), &format!("\"hour\";r={remaining};t="), hour_end, before, after);
        } else {
            refused += 1;
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "call {call}");
            // Free again within one interval: rounded up, a second.
            assert_eq!(header(&res, "retry-after"), "1", "call {call}");
            assert_eq!(header(&res, "ratelimit"), "\"burst\";r=0;t=1", "call {call}");
            assert_eq!(header(&res, "x-ratelimit-limit"), BURST.to_string(), "call {call}");
            assert_eq!(header(&res, "x-ratelimit-remaining"), "0", "call {call}");
            // In whole seconds rounded up: never before a retry can succeed (within a second).
            let reset: i64 = header(&res, "x-ratelimit-reset").parse().unwrap();
            let (lo, hi) = ((before + 1999).div_euclid(1000), (after + 1999).div_euclid(1000));
            assert!(lo <= reset && reset <= hi, "call {call}: X-RateLimit-Reset {reset} not in [{lo}, {hi}]");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "quota_exceeded", "call {call}");
            assert_eq!(body["error"]["window"], "burst", "call {call}");
            assert_eq!(body["error"]["limit"], BURST, "call {call}");
            assert_eq!(body["error"]["used"], BURST, "call {call}");
            assert_eq!(body["error"]["retry_after"], 1, "call {call}");
            let reset_at = chrono::DateTime::parse_from_rfc3339(body["error"]["reset_at"].as_str().unwrap()).unwrap();
            assert!((lo..=hi).contains(&reset_at.timestamp()), "call {call}: {body}");
        }
        // GCRA: the burst at once, then one more per interval since the first request
        // (exact while the calls come quicker than an interval, as they do).
        let allowed = BURST + (after - first_ms) / INTERVAL_MS;
        assert!(admitted <= allowed, "call {call}: {admitted} admitted, at most {allowed} allowed: {statuses:?}");
        if call < BURST || call == 5 {
            assert_eq!(statuses[call as usize], 200, "call {call}: {statuses:?}");
        }
    }

    // Refusals count in no window, and are stored as throttled.
    let quota = Quota {
        per_hour: QuotaLimit::new(1_000).unwrap(),
        per_day: QuotaLimit::new(10_000).unwrap(),
        burst_per_second: Some(QuotaLimit::burst(BURST).unwrap()),
    };
    let (hour, day, _) = app.services.quota.snapshot(id, &quota, 0).await.unwrap();
    assert_eq!((hour.used, day.used), (admitted, admitted));
    assert_eq!(app.wait_for_events(id, 7).await, 7);
    let stored = stored_statuses(&app, id).await;
    assert_eq!(stored.iter().filter(|s| **s == (429, true)).count() as i64, refused, "{stored:?}");
    assert_eq!(stored.iter().filter(|s| **s == (200, false)).count() as i64, admitted, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_quota_admits_the_very_next_request_on_every_instance() {
    let a = TestApp::spawn().await;
    let b = a.spawn_sibling().await;
    let (secret, id) = a.key_with_quota(2, 1_000).await;
    assert_eq!(a.call("/api/v1/ping", &secret).await.status(), StatusCode::OK);
    assert_eq!(b.call("/api/v1/ping", &secret).await.status(), StatusCode::OK);
    assert_eq!(a.call("/api/v1/ping", &secret).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.call("/api/v1/ping", &secret).await.status(), StatusCode::TOO_MANY_REQUESTS);

    a.set_quota(id, 4, 1_000).await;
    let res = b.call("/api/v1/ping", &secret).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-limit"), "4");
    assert_eq!(a.call("/api/v1/ping", &secret).await.status(), StatusCode::OK);
    assert_eq!(b.call("/api/v1/ping", &secret).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[derive(diesel::QueryableByName, Debug)]
struct EventRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    method: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    endpoint: String,
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    status: i16,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    latency_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_in: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_out: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    throttled: bool,
}

#[derive(diesel::QueryableByName, Debug)]
struct RollupRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    endpoint: String,
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    status: i16,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    requests: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    throttled: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_in: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_out: i64,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    latency_hist: serde_json::Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_lands_in_postgres_with_its_fields_and_rollups_agree() {
    use diesel_async::RunQueryDsl;

    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    let (secret, id) = app.key_with_quota(60, 10_000).await;
    let c = client();

    // (path, method, body size, expected status); 64 attempts, 60 admitted, 4 throttled.
    let mut plan: Vec<(String, &str, usize, u16)> = Vec::new();
    for _ in 0..20 {
        plan.push(("/api/v1/ping".into(), "GET", 0, 200));
    }
    let echo_sizes = [0usize, 1, 10, 100, 1000, 5000, 20_000, 65_536, 100_000, 1_000_000];
    for size in echo_sizes {
        plan.push(("/api/v1/echo".into(), "POST", size, 200));
    }
    for code in [201u16, 204, 404, 404, 422, 500, 503, 503, 302, 418] {
        plan.push((format!("/api/v1/status/{code}"), "GET", 0, code));
    }
    for ms in [0u64, 5, 10, 20, 30, 40, 50, 60, 5, 15, 25, 35, 45, 55, 1, 2, 3, 4, 6, 7] {
        plan.push((format!("/api/v1/delay/{ms}"), "GET", 0, 200));
    }
    let admitted = plan.len();
    assert_eq!(admitted, 60);
    for _ in 0..3 {
        plan.push(("/api/v1/ping".into(), "GET", 0, 429));
    }
    // A refused upload: its body is never read, so it records no bytes in (not its Content-Length).
    plan.push(("/api/v1/echo".into(), "POST", 5000, 429));

    let mut bytes_out_by_endpoint: HashMap<String, i64> = HashMap::new();
    for (i, (path, method, size, expected)) in plan.iter().enumerate() {
        let target = if i % 2 == 0 { &app } else { &sibling };
        let req = if *method == "POST" {
            c.post(target.url(path)).body(vec![b'x'; *size]).header("content-type", "application/octet-stream")
        } else {
            c.get(target.url(path))
        };
        let res = req.header("x-api-key", &secret).send().await.unwrap();
        assert_eq!(res.status().as_u16(), *expected, "{method} {path}");
        let template = if path.starts_with("/api/v1/status/") {
            "/api/v1/status/{code}".to_owned()
        } else if path.starts_with("/api/v1/delay/") {
            "/api/v1/delay/{ms}".to_owned()
        } else {
            path.clone()
        };
        let body = res.bytes().await.unwrap();
        if *method == "POST" && *expected == 200 {
            assert_eq!(body.len(), *size, "echoed");
        }
        *bytes_out_by_endpoint.entry(format!("{template} {expected}")).or_default() += body.len() as i64;
    }

    assert_eq!(app.wait_for_events(id, plan.len() as i64).await, plan.len() as i64);
    // Everything handed off is stored: a duplicate would be here by now.
    app.wait_until_usage_stored().await;
    assert_eq!(app.event_count(id).await, plan.len() as i64);

    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let events: Vec<EventRow> = diesel::sql_query(
        "SELECT method, endpoint, status, latency_us, bytes_in, bytes_out, throttled \
         FROM api_key_usage WHERE api_key_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .load(&mut conn)
    .await
    .unwrap();

    // Endpoints are route templates, statuses and sizes are as sent.
    let mut by_endpoint: HashMap<(String, i16), i64> = HashMap::new();
    for e in &events {
        *by_endpoint.entry((e.endpoint.clone(), e.status)).or_default() += 1;
    }
    assert_eq!(by_endpoint[&("/api/v1/ping".to_owned(), 200)], 20);
    assert_eq!(by_endpoint[&("/api/v1/ping".to_owned(), 429)], 3);
    assert_eq!(by_endpoint[&("/api/v1/echo".to_owned(), 429)], 1);
    assert!(events.iter().filter(|e| e.throttled).all(|e| e.bytes_in == 0), "{events:?}");
    assert_eq!(by_endpoint[&("/api/v1/echo".to_owned(), 200)], 10);
    assert_eq!(by_endpoint[&("/api/v1/status/{code}".to_owned(), 503)], 2);
    assert_eq!(by_endpoint[&("/api/v1/delay/{ms}".to_owned(), 200)], 20);
    assert!(events.iter().all(|e| !e.endpoint.contains("/status/5") && !e.endpoint.contains("/delay/1")));
    let echo_in: i64 =
        events.iter().filter(|e| e.endpoint == "/api/v1/echo" && e.status == 200).map(|e| e.bytes_in).sum();
    assert_eq!(echo_in, echo_sizes.iter().sum::<usize>() as i64);
    for (key, expected) in &bytes_out_by_endpoint {
        let actual: i64 =
            events.iter().filter(|e| format!("{} {}", e.endpoint, e.status) == *key).map(|e| e.bytes_out).sum();
        assert_eq!(actual, *expected, "bytes out of {key}");
    }
    assert_eq!(events.iter().filter(|e| e.throttled).count(), 4);
    for e in &events {
        let method = if e.endpoint == "/api/v1/echo" { "POST" } else { "GET" };
        assert_eq!(e.method, method, "{e:?}");
    }
    let delays: Vec<i64> = events.iter().filter(|e| e.endpoint == "/api/v1/delay/{ms}").map(|e| e.latency_us).collect();
    assert!(delays.iter().any(|&l| l >= 60_000), "the 60 ms delay took {delays:?}");

    // Rollups count exactly what the events count.
    let rollups: Vec<RollupRow> = diesel::sql_query(
        "SELECT endpoint, status, sum(requests)::bigint AS requests, sum(throttled)::bigint AS throttled, \
         sum(bytes_in)::bigint AS bytes_in, sum(bytes_out)::bigint AS bytes_out, km_hist_sum(latency_hist) AS latency_hist \
         FROM api_key_usage_minute WHERE api_key_id = $1 GROUP BY endpoint, status",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .load(&mut conn)
    .await
    .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Sum {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let hourly: Sum = diesel::sql_query(
        "SELECT coalesce(sum(requests), 0)::bigint AS n FROM api_key_usage_hour WHERE api_key_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(hourly.n, admitted as i64);
    let total_requests: i64 = rollups.iter().map(|r| r.requests).sum();
    let total_throttled: i64 = rollups.iter().map(|r| r.throttled).sum();
    assert_eq!(total_requests, admitted as i64);
    assert_eq!(total_throttled, 4);
    for r in &rollups {
        let matching: Vec<&EventRow> =
            events.iter().filter(|e| e.endpoint == r.endpoint && e.status == r.status).collect();
        assert_eq!(r.requests, matching.iter().filter(|e| !e.throttled).count() as i64, "{}", r.endpoint);
        assert_eq!(r.bytes_in, matching.iter().map(|e| e.bytes_in).sum::<i64>());
        assert_eq!(r.bytes_out, matching.iter().map(|e| e.bytes_out).sum::<i64>());
    }

    // p50 and p95 from the merged histograms are within 1% of the exact values.
    let mut merged = LatencyHistogram::default();
    for r in &rollups {
        let h: LatencyHistogram = serde_json::from_value(r.latency_hist.clone()).unwrap();
        merged.merge(&h);
    }
    let mut latencies: Vec<u64> = events.iter().filter(|e| !e.throttled).map(|e| e.latency_us as u64).collect();
    assert_eq!(merged.count(), latencies.len() as u64);
    for q in [0.5, 0.95] {
        let exact = exact_quantile(&mut latencies, q).unwrap() as f64;
        let approx = merged.quantile_us(q).unwrap();
        assert!((approx - exact).abs() / exact <= 0.01, "p{}: {approx} vs exact {exact}", q * 100.0);
    }

    // The live per-minute counters in Redis agree too.
    let first_minute = app.services.quota.now_ms().await.unwrap() / 60_000 * 60_000 - 5 * 60_000;
    let live = services::usage::live::read_minutes(&app.services.redis, id.0, first_minute, 7).await.unwrap();
    assert_eq!(live.iter().map(|(_, m)| m.requests).sum::<u64>(), admitted as u64);
    assert_eq!(live.iter().map(|(_, m)| m.throttled).sum::<u64>(), 4);

    // last_used_at follows from the pipeline.
    let keys = services::keys::api_keys::list_all(&app.services.db).await.unwrap();
    assert!(keys.iter().find(|k| k.id == id).unwrap().last_used_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_are_never_counted() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(100, 1_000).await;
    let c = client();

    for path in [
        "/api/v1/status/abc",
        "/api/v1/status/99999999999999999999999",
        "/api/v1/status/-1",
        "/api/v1/status/600",
        "/api/v1/status/199",
        "/api/v1/delay/-5",
        "/api/v1/delay/1e9",
        "/api/v1/delay/10001",
        "/api/v1/delay/%F0%9F%92%A5",
    ] {
        let res = app.call(path, &secret).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        // Not counted, yet the key's current use is reported as on every answer to it.
        assert_eq!(header(&res, "x-ratelimit-remaining"), "100", "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter", "{path}");
    }
    // Headers over the server's limit: a 431 before the key is even looked at (not counted),
    // and the server goes on serving.
    let huge = "x".repeat(512 * 1024);
    let res = c.get(app.url("/api/v1/ping")).bearer_auth(&secret).header("x-padding", huge).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let ok = app.call("/api/v1/ping", &secret).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(header(&ok, "x-ratelimit-remaining"), "99", "the 431 counted nothing");
    let res = c.get(app.url("/api/v1/ping")).header("authorization", "Bearer").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let raw = reqwest::header::HeaderValue::from_bytes(b"Bearer km_live_\xff\xfe\xfd").unwrap();
    let res = c.get(app.url("/api/v1/ping")).header("authorization", raw).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for path in ["/api/v1/no-such-route", "/api/v1/", "/api/v1"] {
        let res = c.get(app.url(path)).bearer_auth(&secret).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "not_found",
            "{path}: the API's JSON, not a page"
        );
    }
    // The key comes first: without one, any path under /api/v1 is a 401.
    for path in ["/api/v1/status/abc", "/api/v1/no-such-route", "/api/v1/delay/%FF", "/api/v1/", "/api/v1"] {
        let res = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "missing_api_key", "{path}");
    }
    // Every refusal is the same JSON shape.
    let res = app.call("/api/v1/status/%FF%FE", &secret).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "invalid_parameter");
    let res = c.post(app.url("/api/v1/ping")).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "method_not_allowed");

    // One more good request, to know when the pipeline has caught up: the two are the only
    // ones counted.
    let ok = app.call("/api/v1/ping", &secret).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(header(&ok, "x-ratelimit-remaining"), "98");
    for (method, path, status) in [
        (reqwest::Method::GET, "/api/v1/status/abc", StatusCode::BAD_REQUEST),
        (reqwest::Method::GET, "/api/v1/no-such-route", StatusCode::NOT_FOUND),
        (reqwest::Method::DELETE, "/api/v1/ping", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let res = c.request(method, app.url(path)).bearer_auth(&secret).send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert_eq!(header(&res, "ratelimit-policy"), "\"hour\";q=100;w=3600, \"day\";q=1000;w=86400", "{path}");
        assert!(header(&res, "ratelimit").starts_with("\"hour\";r=98;t="), "{path}: {}", header(&res, "ratelimit"));
        assert_eq!(header(&res, "x-ratelimit-limit"), "100", "{path}");
        assert_eq!(header(&res, "x-ratelimit-remaining"), "98", "{path}");
        assert!(header(&res, "x-request-id").is_empty(), "{path}: no usage event, no request id");
    }
    app.wait_for_events(id, 2).await;
    app.wait_until_usage_stored().await;
    assert_eq!(app.event_count(id).await, 2);
}

/// Statuses of a key's stored events, sorted, with whether each was throttled.
async fn stored_statuses(app: &TestApp, id: services::keys::ApiKeyId) -> Vec<(i32, bool)> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        status: i32,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        throttled: bool,
    }
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT status::int4 AS status, throttled FROM api_key_usage WHERE api_key_id = $1 ORDER BY status",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .load(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.status, r.throttled)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_its_answer_still_has_its_usage_recorded() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(100, 1_000).await;
    let impatient = reqwest::Client::builder().timeout(std::time::Duration::from_millis(200)).build().unwrap();
    for _ in 0..3 {
        let gave_up = impatient.get(app.url("/api/v1/delay/1500")).bearer_auth(&secret).send().await;
        assert!(gave_up.is_err(), "the client should have given up before the answer");
    }
    assert_eq!(app.call("/api/v1/ping", &secret).await.status(), StatusCode::OK);

    // The quota counted all four; so does the stored usage: the three as 499 (client closed).
    assert_eq!(app.wait_for_events(id, 4).await, 4);
    assert_eq!(stored_statuses(&app, id).await, [(200, false), (499, false), (499, false), (499, false)]);
    let quota = services::keys::Quota {
        per_hour: services::keys::QuotaLimit::new(100).unwrap(),
        per_day: services::keys::QuotaLimit::new(1_000).unwrap(),
        burst_per_second: None,
    };
    let (hour, day, _) = app.services.quota.snapshot(id, &quota, 0).await.unwrap();
    assert_eq!((hour.used, day.used), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_without_content_are_sent_without_content() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(100, 1_000).await;
    for code in [204u16, 205, 304] {
        let res = app.call(&format!("/api/v1/status/{code}"), &secret).await;
        assert_eq!(res.status().as_u16(), code);
        if code == 204 || code == 304 {
            assert!(res.headers().get("content-length").is_none(), "{code}: {:?}", res.headers());
        }
        assert!(res.headers().get("content-type").is_none(), "{code}: {:?}", res.headers());
        assert!(res.bytes().await.unwrap().is_empty(), "{code}");
    }
    app.wait_for_events(id, 3).await;
    assert_eq!(stored_statuses(&app, id).await, [(204, false), (205, false), (304, false)]);
}

/// The usage page's gauges and the headers of uncounted answers read the limits Redis keeps.
/// When a change of the limits did not reach Redis (it was down at that moment), they showed
/// the old limits until the key's next counted request; the newer limits now win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_that_did_not_reach_redis_are_not_hidden_by_the_old_ones() {
    use diesel_async::RunQueryDsl;
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(10, 100).await;
    assert_eq!(app.call("/api/v1/ping", &secret).await.status(), StatusCode::OK);
    // A change stored in PostgreSQL that Redis never heard of.
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    diesel::sql_query(
        "UPDATE api_key_quotas SET requests_per_hour = 20, requests_per_day = 200, updated_at = now() WHERE api_key_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .execute(&mut conn)
    .await
    .unwrap();
    let key =
        services::keys::api_keys::list_all(&app.services.db).await.unwrap().into_iter().find(|k| k.id == id).unwrap();
    let (hour, day, _) = app.services.quota.snapshot(id, &key.quota, key.quota_version_ms).await.unwrap();
    assert_eq!((hour.limit, day.limit), (20, 200));
    assert_eq!((hour.used, day.used), (1, 1));
}

/// Limits published for a key that has had no request (a quota set on a new or idle key)
/// expire like its counters do, a little after the day ends: idle keys leave nothing in Redis
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_published_for_an_idle_key_expire_after_the_day() {
    let app = TestApp::spawn().await;
    let (_, id) = app.key_with_quota(5, 50).await;
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let ttl: i64 = deadpool_redis::redis::cmd("TTL")
        .arg(services::keys::quota_manager::quota_redis_key(id))
        .query_async(&mut conn)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let day_end_plus_an_hour = now - now.rem_euclid(86_400) + 86_400 + 3_600;
    assert!((day_end_plus_an_hour - now - ttl).abs() <= 2, "TTL {ttl}, expected about {}", day_end_plus_an_hour - now);
}

/// A refused request's body is not read, and the server then closes the connection: a large
/// body's refusal says `Connection: close`, so that the client's next request goes on a new
/// connection instead of into a reset. A small body's refusal keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_large_unread_body_tells_the_client_the_connection_closes() {
    let app = TestApp::spawn().await;
    let (secret, _) = app.key_with_quota(1, 100).await;
    let http = client();
    let echo = |body: Vec<u8>| http.post(app.url("/api/v1/echo")).bearer_auth(&secret).body(body).send();
    assert_eq!(echo(b"first".to_vec()).await.unwrap().status(), StatusCode::OK);
    for round in 0..3 {
        let refused = echo(vec![b'x'; 65_000]).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "round {round}");
        assert_eq!(refused.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
        // The next request on the same client goes through (on a new connection).
        let small = echo(vec![b'x'; 100]).await.unwrap();
        assert_eq!(small.status(), StatusCode::TOO_MANY_REQUESTS, "round {round}");
        assert!(small.headers().get("connection").is_none(), "{:?}", small.headers());
    }
    // The same without a valid key.
    let unknown = http.post(app.url("/api/v1/echo")).bearer_auth("km_live_unknown").body(vec![b'x'; 65_000]).send();
    let unknown = unknown.await.unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
}
