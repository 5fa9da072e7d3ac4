//! The usage page's data paths: CSV exports (exact sums, validation), the live stream, and who
//! may see them.

mod common;

use std::collections::HashMap;

use chrono::Datelike;
use common::{client, TestApp};
use reqwest::StatusCode;
use services::accounts::Role;

fn parse_csv(text: &str) -> Vec<HashMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(str::to_owned)).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_sum_exactly_to_what_was_sent_over_two_utc_days() {
    let app = TestApp::spawn().await;
    let owner = app.user("ann@example.com", Role::Merchant).await;
    let (key, secret) = services::keys::api_keys::create(
        &app.services.db,
        owner.id,
        &services::keys::KeyName::parse("Checkout, \"EU\"").unwrap(),
    )
    .await
    .unwrap();
    app.set_quota(key.id, 7, 100_000).await;
    let secret = secret.expose().to_owned();
    let c = client();

    // Day one ends at `midnight`; day two starts there. A week back, so both days are history.
    let now = app.services.quota.now_ms().await.unwrap();
    let midnight = (now / 86_400_000 - 6) * 86_400_000;
    let day1 = chrono::DateTime::from_timestamp_millis(midnight - 1).unwrap().date_naive();
    let day2 = day1.succ_opt().unwrap();

    // Day one, last minute (hour quota 7): 5 pings, 2 404s, then 3 more pings refused.
    app.set_clock(midnight - 50_000).await;
    let mut sent: HashMap<(String, &str, &str), i64> = HashMap::new();
    for (path, endpoint, class) in [
        ("/api/v1/ping", "/api/v1/ping", "ok"),
        ("/api/v1/ping", "/api/v1/ping", "ok"),
        ("/api/v1/ping", "/api/v1/ping", "ok"),
        ("/api/v1/ping", "/api/v1/ping", "ok"),
        ("/api/v1/ping", "/api/v1/ping", "ok"),
        ("/api/v1/status/404", "/api/v1/status/{code}", "4xx"),
        ("/api/v1/status/404", "/api/v1/status/{code}", "4xx"),
        ("/api/v1/ping", "/api/v1/ping", "throttled"),
        ("/api/v1/ping", "/api/v1/ping", "throttled"),
        ("/api/v1/ping", "/api/v1/ping", "throttled"),
    ] {
        let status = app.call(path, &secret).await.status().as_u16();
        assert_eq!(status == 429, class == "throttled", "{path} -> {status}");
        *sent.entry((day1.to_string(), endpoint, class)).or_default() += 1;
    }
    // Day two, first minute: a new hour and day, the quota starts over.
    app.set_clock(midnight + 5_000).await;
    for (path, endpoint, class) in [
        ("/api/v1/ping", "/api/v1/ping", "ok"),
        ("/api/v1/status/500", "/api/v1/status/{code}", "5xx"),
        ("/api/v1/status/503", "/api/v1/status/{code}", "5xx"),
        ("/api/v1/status/201", "/api/v1/status/{code}", "ok"),
        ("/api/v1/delay/150", "/api/v1/delay/{ms}", "ok"),
    ] {
        assert_ne!(app.call(path, &secret).await.status().as_u16(), 429);
        *sent.entry((day2.to_string(), endpoint, class)).or_default() += 1;
    }
    // Known sizes and a known latency, for the bytes and latency columns.
    let mut echoed_out = 0;
    for size in [1_000, 3_000] {
        let res = c.post(app.url("/api/v1/echo")).bearer_auth(&secret).body(vec![b'x'; size]).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        echoed_out += res.bytes().await.unwrap().len() as i64;
        *sent.entry((day2.to_string(), "/api/v1/echo", "ok")).or_default() += 1;
    }
    assert_eq!(app.wait_for_events(key.id, 17).await, 17);

    let session = app.signed_in("ann@example.com").await;
    for granularity in ["day", "hour", "week", "month"] {
        let res = session
            .get(app.url(&format!("/dashboard/developers/api-keys/{}/usage.csv", key.id)))
            .query(&[("from", day1.to_string()), ("to", day2.to_string()), ("granularity", granularity.to_owned())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{granularity}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
        let text = res.text().await.unwrap();
        assert!(text.starts_with("period_start,key_id,key_name,method,endpoint,requests,errors_4xx,errors_5xx,throttled,bytes_in,bytes_out,p50_ms,p95_ms\r\n"));
        // The name is quoted as CSV requires; split the rest naively after removing it.
        assert!(text.contains("\"Checkout, \"\"EU\"\"\""), "{text}");
        let rows = parse_csv(&text.replace("\"Checkout, \"\"EU\"\"\"", "Checkout EU"));
        let total = |f: &dyn Fn(&HashMap<String, String>) -> i64| rows.iter().map(f).sum::<i64>();
        let num = |r: &HashMap<String, String>, col: &str| r[col].parse::<i64>().unwrap();
        assert_eq!(total(&|r| num(r, "requests")), 14, "{granularity}: admitted calls");
        assert_eq!(total(&|r| num(r, "throttled")), 3, "{granularity}");
        assert_eq!(total(&|r| num(r, "errors_4xx")), 2, "{granularity}");
        assert_eq!(total(&|r| num(r, "errors_5xx")), 2, "{granularity}");
        // Each period starts where the granularity says: the UTC day, its ISO week's Monday,
        // the first of its month, the hour; a first period cut by `from` starts there.
        let starts: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["period_start"].as_str()).collect();
        let start_of = |d: chrono::NaiveDate| match granularity {
            "week" => d.week(chrono::Weekday::Mon).first_day(),
            "month" => d.with_day(1).unwrap(),
            _ => d,
        };
        if granularity != "hour" {
            let expected: std::collections::BTreeSet<String> =
                [day1, day2].into_iter().map(|d| format!("{}T00:00:00Z", start_of(d).max(day1))).collect();
            assert_eq!(starts, expected.iter().map(String::as_str).collect(), "{granularity}");
        } else {
            let hours = [format!("{day1}T23:00:00Z"), format!("{day2}T00:00:00Z")];
            assert_eq!(starts, hours.iter().map(String::as_str).collect(), "{granularity}");
        }
        // Bytes as they went over the wire (bodies), latency as the handler took it.
        let echo: Vec<_> = rows.iter().filter(|r| r["endpoint"] == "/api/v1/echo").collect();
        assert_eq!(echo.len(), 1, "{granularity}: {echo:?}");
        assert_eq!((num(echo[0], "bytes_in"), num(echo[0], "bytes_out")), (4_000, echoed_out), "{granularity}");
        let slow: Vec<_> = rows.iter().filter(|r| r["endpoint"] == "/api/v1/delay/{ms}").collect();
        assert_eq!(slow.len(), 1, "{granularity}: {slow:?}");
        for column in ["p50_ms", "p95_ms"] {
            // One call of 150 ms: a histogram bucket is within 1 %; a loaded machine adds a
            // little, a wrong unit a factor of 1,000.
            let ms: f64 = slow[0][column].parse().unwrap();
            assert!((148.0..300.0).contains(&ms), "{granularity} {column}: {ms}");
        }
        if granularity == "day" {
            for r in &rows {
                let day = &r["period_start"][..10];
                assert!(r["period_start"].ends_with("T00:00:00Z"));
                let expect =
                    |class: &str| sent.get(&(day.to_owned(), r["endpoint"].as_str(), class)).copied().unwrap_or(0);
                assert_eq!(num(r, "throttled"), expect("throttled"), "{r:?}");
                assert_eq!(num(r, "errors_4xx"), expect("4xx"), "{r:?}");
                assert_eq!(num(r, "errors_5xx"), expect("5xx"), "{r:?}");
                assert_eq!(num(r, "requests"), expect("ok") + expect("4xx") + expect("5xx"), "{r:?}");
                assert_eq!(r["key_id"], key.id.to_string());
            }
            // Per day, admitted requests equal that day's quota counter.
            let day_sum = |d: &str| {
                rows.iter().filter(|r| r["period_start"].starts_with(d)).map(|r| num(r, "requests")).sum::<i64>()
            };
            assert_eq!(day_sum(&day1.to_string()), 7);
            assert_eq!(day_sum(&day2.to_string()), 7);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_export_ranges_get_400_with_a_message() {
    let app = TestApp::spawn().await;
    let owner = app.user("ann@example.com", Role::Merchant).await;
    let (key, _) =
        services::keys::api_keys::create(&app.services.db, owner.id, &services::keys::KeyName::parse("k").unwrap())
            .await
            .unwrap();
    let session = app.signed_in("ann@example.com").await;
    let url = app.url(&format!("/dashboard/developers/api-keys/{}/usage.csv", key.id));
    for (query, needle) in [
        (vec![("from", "2026-11-20"), ("to", "2026-11-01")], "after"),
        (vec![("from", "2026-02-30"), ("to", "2026-03-01")], "a day the calendar does not have"),
        (vec![("from", "2026-3-1"), ("to", "2026-03-02")], "YYYY-MM-DD"),
        (vec![("from", "yesterday"), ("to", "2026-03-01")], "YYYY-MM-DD"),
        (vec![("from", "2024-01-01"), ("to", "2026-01-01")], "366"),
        (vec![("from", "2026-11-01"), ("to", "2026-11-02"), ("granularity", "minute")], "granularity"),
        (vec![("to", "2026-11-02")], "required"),
        // Given twice: which one would count? Refused, in the same JSON as the rest.
        (
            vec![("from", "2026-11-01"), ("to", "2026-11-02"), ("granularity", "day"), ("granularity", "hour")],
            "invalid_query",
        ),
    ] {
        let res = session.get(&url).query(&query).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{query:?}");
        assert_eq!(res.headers()["content-type"], "application/json", "{query:?}");
        let body = res.text().await.unwrap();
        assert!(body.contains(needle), "{query:?}: {body}");
    }
    app.user("root@example.com", Role::Admin).await;
    let admin = app.signed_in("root@example.com").await;
    for month in ["0000-01", "1969-12", "2026-13"] {
        let res = admin.get(app.url(&format!("/admin/usage.csv?month={month}"))).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{month}");
        assert!(res.text().await.unwrap().contains("invalid_month"), "{month}");
    }
    let res = admin.get(app.url("/admin/usage.csv?month=2026-11&month=2026-10")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_or_an_admin_sees_a_keys_usage() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com", Role::Merchant).await;
    app.user("mallory@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let (key, _) =
        services::keys::api_keys::create(&app.services.db, ann.id, &services::keys::KeyName::parse("k").unwrap())
            .await
            .unwrap();
    let base = format!("/dashboard/developers/api-keys/{}", key.id);
    let csv = format!("{base}/usage.csv?from=2026-11-01&to=2026-11-02");
    let live = format!("{base}/usage/live");
    let page = format!("{base}/usage");

    let mallory = app.signed_in("mallory@example.com").await;
    for path in [&csv, &live] {
        assert_eq!(mallory.get(app.url(path)).send().await.unwrap().status(), StatusCode::NOT_FOUND, "{path}");
    }
    // Signed out: told to sign in (JSON), whether or not the key exists.
    let missing = format!("/dashboard/developers/api-keys/{}/usage/live", uuid::Uuid::new_v4());
    for path in [&csv, &live, &missing, &"/admin/usage.csv?month=2026-11".to_owned()] {
        let res = client().get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
    }
    assert_eq!(app.page(&mallory, &page).await.status(), StatusCode::NOT_FOUND);
    let rpc = app.rpc(&mallory, "usage/overview", &[("id", &key.id.to_string())]).await;
    assert_eq!(rpc.status(), StatusCode::NOT_FOUND);
    let rpc = app.rpc(&mallory, "usage/top", &[("id", &key.id.to_string()), ("days", "7")]).await;
    assert_eq!(rpc.status(), StatusCode::NOT_FOUND);

    let ann = app.signed_in("ann@example.com").await;
    let own_page = app.page(&ann, &page).await;
    assert_eq!(own_page.status(), StatusCode::OK);
    assert!(own_page.text().await.unwrap().contains("No traffic yet"));
    assert_eq!(ann.get(app.url(&csv)).send().await.unwrap().status(), StatusCode::OK);
    // The live stream answers with a first event at once.
    let mut stream = ann.get(app.url(&live)).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let first = stream.chunk().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: live") && text.contains("\"points\""), "{text}");
    // Signed out (here, or in another tab): the open stream ends at its next update.
    let out = app.rpc(&ann, "auth/logout", &[]).await.status();
    assert!(out.is_success() || out.is_redirection(), "{out}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the live stream ends once its session is gone");

    let root = app.signed_in("root@example.com").await;
    assert_eq!(root.get(app.url(&csv)).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.page(&root, &page).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_export_every_key_for_a_month() {
    let app = TestApp::spawn().await;
    app.user("root@example.com", Role::Admin).await;
    app.user("ann@example.com", Role::Merchant).await;
    let (s1, k1) = app.key_with_quota(100, 1_000).await;
    let (s2, k2) = app.key_with_quota(100, 1_000).await;
    for _ in 0..3 {
        app.call("/api/v1/ping", &s1).await;
    }
    app.call("/api/v1/ping", &s2).await;
    app.wait_for_events(k1, 3).await;
    app.wait_for_events(k2, 1).await;
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let root = app.signed_in("root@example.com").await;
    let res = root.get(app.url("/admin/usage.csv")).query(&[("month", &month)]).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let rows = parse_csv(&res.text().await.unwrap());
    let requests = |k: &services::keys::ApiKeyId| {
        rows.iter().filter(|r| r["key_id"] == k.to_string()).map(|r| r["requests"].parse::<i64>().unwrap()).sum::<i64>()
    };
    assert_eq!((requests(&k1), requests(&k2)), (3, 1));
    // Each row names the key's owner, whom the invoice goes to.
    let keys = services::keys::api_keys::list_all(&app.services.db).await.unwrap();
    for row in &rows {
        let key = keys.iter().find(|k| k.id.to_string() == row["key_id"]).unwrap();
        assert_eq!(row["owner_email"], key.owner_email, "{row:?}");
    }
    assert!(rows.iter().all(|r| r["owner_email"].starts_with("owner-")), "{rows:?}");
    let bad = root.get(app.url("/admin/usage.csv")).query(&[("month", "2026-13")]).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let ann = app.signed_in("ann@example.com").await;
    let refused = ann.get(app.url("/admin/usage.csv")).query(&[("month", &month)]).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

/// A database that cannot be asked who is signed in is an outage (503), not a missing key
/// (404). The instance here has a pool pointing at a closed port; the session cookie is well
/// formed and was never seen, so no recently confirmed session can stand in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_during_the_session_lookup_is_a_503_not_a_404() {
    let app = TestApp::spawn().await;
    let mut config = app.config.clone();
    config.database_url = "postgres://postgres@127.0.0.1:1/keymeter".into();
    config.redis_namespace = format!("{}_down", config.redis_namespace);
    let pool = services::db::pool(&config.database_url, 2).unwrap();
    let services = services::Services::new(
        pool,
        app.services.redis.clone(),
        &config.redis_namespace,
        app.services.settings.clone(),
    );
    let down = keymeter::startup::Application::with_services(&config, services).await.unwrap();
    let base = format!("http://{}", down.local_addr());
    tokio::spawn(down.run_until_stopped());

    let cookie = format!("km_session={}", "ab".repeat(32));
    let key = format!("/dashboard/developers/api-keys/{}", uuid::Uuid::new_v4());
    for path in [
        format!("{key}/usage.csv?from=2026-11-01&to=2026-11-02"),
        format!("{key}/usage/live"),
        "/admin/usage.csv?month=2026-11".to_owned(),
    ] {
        let res = client().get(format!("{base}{path}")).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{path}");
    }
}

/// "24 h" on the usage page's top endpoints and status codes means the last 24 hours (in the
/// small hours of a UTC day: yesterday evening included), not the calendar day so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_24_hour_range_is_the_last_24_hours_not_today() {
    use chrono::{Duration, Utc};
    use diesel::sql_types::{Text, Timestamptz, Uuid as SqlUuid};
    use diesel_async::RunQueryDsl;
    use services::usage::periods::Granularity;

    let app = TestApp::spawn().await;
    let owner = app.user("ann@example.com", Role::Merchant).await;
    let (key, _) =
        services::keys::api_keys::create(&app.services.db, owner.id, &services::keys::KeyName::parse("k").unwrap())
            .await
            .unwrap();
    let hour = Granularity::Hour.period_start(Utc::now());
    // 22 hours ago is inside the last 24 hours even if the hour turns during the test; 25 hours
    // ago is outside.
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    for (at, endpoint, n) in
        [(hour - Duration::hours(22), "/api/v1/recent", 7i64), (hour - Duration::hours(25), "/api/v1/old", 5)]
    {
        diesel::sql_query(
            "INSERT INTO api_key_usage_hour (api_key_id, period_start, method, endpoint, status, requests, \
             throttled, bytes_in, bytes_out, latency_hist) VALUES ($1, $2, 'GET', $3, 200, $4, 0, 0, 0, '{}')",
        )
        .bind::<SqlUuid, _>(key.id.0)
        .bind::<Timestamptz, _>(at)
        .bind::<Text, _>(endpoint)
        .bind::<diesel::sql_types::BigInt, _>(n)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let ann = app.signed_in("ann@example.com").await;
    let top = |days: &'static str| {
        let (ann, id) = (&ann, key.id.to_string());
        let app = &app;
        async move {
            let res = app.rpc(ann, "usage/top", &[("id", &id), ("days", days)]).await;
            assert_eq!(res.status(), StatusCode::OK);
            let body: serde_json::Value = res.json().await.unwrap();
            let rows = body["endpoints"].as_array().unwrap().clone();
            rows.iter()
                .map(|r| (r["endpoint"].as_str().unwrap().to_owned(), r["requests"].as_i64().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(top("1").await, [("/api/v1/recent".to_owned(), 7)]);
    let week = top("7").await;
    assert!(week.contains(&("/api/v1/old".to_owned(), 5)) && week.len() == 2, "{week:?}");
}

/// The usage page's chosen range: the history over any days, per hour, day, week or month,
/// through real calls made at known past times; periods before the key existed that hold no
/// calls, and periods still to come, are not shown; bad ranges get a 400 on their field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_over_a_chosen_range_sums_what_was_sent_per_period() {
    use chrono::{DateTime, Duration, NaiveDate, Utc};

    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    app.user("bob@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let ann = app.signed_in("ann@example.com").await;
    let created: serde_json::Value = app.rpc(&ann, "keys/create", &[("name", "Checkout")]).await.json().await.unwrap();
    let (id, secret) =
        (created["key"]["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned());
    let key_id = services::keys::ApiKeyId::parse(&id).unwrap();

    // Six days ago at 10:20 UTC: three pings and a 500; three days ago at 15:40: two pings.
    let now = app.services.quota.now_ms().await.unwrap();
    let day_a = (now / 86_400_000 - 6) * 86_400_000;
    let day_b = (now / 86_400_000 - 3) * 86_400_000;
    app.set_clock(day_a + (10 * 60 + 20) * 60_000).await;
    for path in ["/api/v1/ping", "/api/v1/ping", "/api/v1/ping", "/api/v1/status/500"] {
        app.call(path, &secret).await;
    }
    app.set_clock(day_b + (15 * 60 + 40) * 60_000).await;
    for _ in 0..2 {
        app.call("/api/v1/ping", &secret).await;
    }
    app.services.quota.set_test_clock_offset_ms(0);
    assert_eq!(app.wait_for_events(key_id, 6).await, 6);

    let date = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap().date_naive();
    let (a, b) = (date(day_a), date(day_b));
    let history = |who: &reqwest::Client, from: NaiveDate, to: NaiveDate, per: &str| {
        let args = [("id", id.clone()), ("from", from.to_string()), ("to", to.to_string()), ("per", per.to_owned())];
        let (who, app) = (who.clone(), &app);
        async move {
            let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.rpc(&who, "usage/history", &args).await
        }
    };
    let rows = |res: reqwest::Response| async move {
        assert_eq!(res.status(), StatusCode::OK);
        let rows: Vec<serde_json::Value> = res.json().await.unwrap();
        rows.iter()
            .map(|r| {
                let start: DateTime<Utc> = r["start"].as_str().unwrap().parse().unwrap();
                (start, r["requests"].as_i64().unwrap(), r["errors_5xx"].as_i64().unwrap())
            })
            .collect::<Vec<_>>()
    };

    // Per day, from two days before the first call to three days ahead: from the first call's
    // day (the empty days before the key are left out) to today (no days to come).
    let today_before = Utc::now().date_naive();
    let days = rows(history(&ann, a - Duration::days(2), today_before + Duration::days(3), "day").await).await;
    let today_after = Utc::now().date_naive();
    assert_eq!(days.first().map(|r| r.0.date_naive()), Some(a), "{days:?}");
    assert!((today_before..=today_after).contains(&days.last().unwrap().0.date_naive()), "{days:?}");
    assert!(days.windows(2).all(|w| w[1].0 - w[0].0 == Duration::days(1)), "{days:?}");
    assert_eq!((days[0].1, days[0].2), (4, 1));
    let on_b: Vec<_> = days.iter().filter(|r| r.0.date_naive() == b).collect();
    assert_eq!(on_b.iter().map(|r| r.1).collect::<Vec<_>>(), [2]);
    assert_eq!(days.iter().map(|r| r.1).sum::<i64>(), 6);

    // Per hour, the first call's day: from its hour to the day's end.
    let hours = rows(history(&ann, a, a, "hour").await).await;
    assert_eq!(hours.len(), 14, "{hours:?}");
    assert_eq!((hours[0].0, hours[0].1, hours[0].2), (a.and_hms_opt(10, 0, 0).unwrap().and_utc(), 4, 1));
    assert_eq!(hours[1..].iter().map(|r| r.1).sum::<i64>(), 0);

    // Per week and per month the same calls, summed: one row per calendar period the range
    // touches, the first named by the range's first day when the range starts inside it (as the
    // CSV export names it).
    use services::usage::periods::Granularity;
    for (per, g) in [("week", Granularity::Week), ("month", Granularity::Month)] {
        let periods = rows(history(&ann, a, b, per).await).await;
        assert_eq!(periods.iter().map(|r| r.1).sum::<i64>(), 6, "{per}: {periods:?}");
        let start = |d: NaiveDate| g.period_start(d.and_hms_opt(0, 0, 0).unwrap().and_utc());
        let (first, last) = (start(a), start(b));
        let mut expected = vec![a.and_hms_opt(0, 0, 0).unwrap().and_utc()];
        let mut next = g.next_start(first);
        while next <= last {
            expected.push(next);
            next = g.next_start(next);
        }
        assert_eq!(periods.iter().map(|r| r.0).collect::<Vec<_>>(), expected, "{per}");
    }

    // The page's first load carries the chosen range when its address names one; a range
    // it cannot show is said in its place and the rest of the page still comes.
    let overview = |from: String, to: String| {
        let args = [("id", id.clone()), ("from", from), ("to", to), ("per", "day".to_owned())];
        let (ann, app) = (&ann, &app);
        async move {
            let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let res = app.rpc(ann, "usage/overview", &args).await;
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<serde_json::Value>().await.unwrap()
        }
    };
    let page = overview(a.to_string(), b.to_string()).await;
    let chosen = page["chosen"]["Ok"].as_array().unwrap_or_else(|| panic!("{}", page["chosen"]));
    assert_eq!(chosen.len() as i64, (b - a).num_days() + 1);
    let reversed = overview(b.to_string(), a.to_string()).await;
    assert_eq!(reversed["chosen"]["Err"]["BadRequest"]["field"], "to", "{}", reversed["chosen"]);
    assert!(reversed["daily"].as_array().is_some_and(|d| !d.is_empty()));
    let plain: serde_json::Value = app.rpc(&ann, "usage/overview", &[("id", &id)]).await.json().await.unwrap();
    assert!(plain["chosen"].is_null());

    // Bad ranges: a 400 naming the field at fault.
    for (from, to, per, field, says) in [
        (b.to_string(), a.to_string(), "day", "to", "must not be after"),
        (a.to_string(), (a + Duration::days(7)).to_string(), "hour", "to", "at most 7 days"),
        (a.to_string(), (a + Duration::days(400)).to_string(), "day", "to", "at most 366 days"),
        (a.to_string(), b.to_string(), "minute", "per", "granularity"),
        ("yesterday".to_owned(), b.to_string(), "day", "from", "YYYY-MM-DD"),
        (a.to_string(), "2026-02-30".to_owned(), "day", "to", "calendar does not have"),
    ] {
        let args = [("id", id.as_str()), ("from", &from), ("to", &to), ("per", per)];
        let res = app.rpc(&ann, "usage/history", &args).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{from} {to} {per}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
    }
    // Seven days per hour is the most: the empty day before the first call is left out.
    let week = rows(history(&ann, a - Duration::days(1), a + Duration::days(5), "hour").await).await;
    assert_eq!(week.len(), 14 + 5 * 24);

    // Another merchant sees nothing of it; an admin does.
    let bob = app.signed_in("bob@example.com").await;
    assert_eq!(history(&bob, a, b, "day").await.status(), StatusCode::NOT_FOUND);
    let root = app.signed_in("root@example.com").await;
    assert_eq!(rows(history(&root, a, b, "day").await).await.iter().map(|r| r.1).sum::<i64>(), 6);

    // A key without calls shows only what it lived through: from the day it was made (today,
    // unless midnight passed since) on.
    let other: serde_json::Value = app.rpc(&ann, "keys/create", &[("name", "Fresh")]).await.json().await.unwrap();
    let fresh = other["key"]["id"].as_str().unwrap();
    let made: DateTime<Utc> = other["key"]["created_at"].as_str().unwrap().parse().unwrap();
    let from = (made.date_naive() - Duration::days(9)).to_string();
    let to = (made.date_naive() + Duration::days(1)).to_string();
    let res = app.rpc(&ann, "usage/history", &[("id", fresh), ("from", &from), ("to", &to), ("per", "day")]).await;
    let fresh_rows = rows(res).await;
    assert_eq!(fresh_rows.first().map(|r| r.0.date_naive()), Some(made.date_naive()), "{fresh_rows:?}");
    assert!(fresh_rows.len() <= 2 && fresh_rows.iter().all(|r| r.1 == 0), "{fresh_rows:?}");
}
