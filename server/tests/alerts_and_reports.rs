//! Quota alerts and the monthly summary, delivered over real SMTP conversations to a sink on
//! loopback: exactly once across instances, and nothing lost while the SMTP server is down.

mod common;

use std::collections::HashMap;

use common::smtp_sink::{subject, SmtpSink};
use common::{client, ping_event, TestApp};
use diesel_async::RunQueryDsl;
use serde_json::Value;
use services::accounts::Role;
use services::keys::{api_keys, ApiKeyId, KeyName};
use services::monthly_report::{self, send_monthly_reports};
use services::usage::histogram::exact_quantile;
use services::usage::periods::Month;
use services::usage::writer::UsageWriter;
use uuid::Uuid;

/// A merchant (signed in) with one key of the given hourly limit.
async fn merchant_with_key(app: &TestApp, per_hour: i64) -> (String, reqwest::Client, String, ApiKeyId) {
    let email = format!("m-{}@example.com", Uuid::new_v4().simple());
    let owner = app.user(&email, Role::Merchant).await;
    let (key, secret) =
        api_keys::create(&app.services.db, owner.id, &KeyName::parse("checkout").unwrap()).await.unwrap();
    app.set_quota(key.id, per_hour, 1_000_000).await;
    let session = app.signed_in(&email).await;
    (email, session, secret.expose().to_owned(), key.id)
}

/// Puts every instance's quota clock at minute 20 of the current hour, so a test never
/// straddles an hour boundary.
/// Puts the instances' quota clock 20 minutes into the current hour; returns the offset, for an
/// instance started later to join the same clock (calling this again near the top of a real
/// hour would move to the next hour: another period, and alerts of its own).
async fn mid_hour(apps: &[&TestApp]) -> i64 {
    apps[0].services.quota.set_test_clock_offset_ms(0);
    let now = apps[0].services.quota.now_ms().await.unwrap();
    let target = now - now.rem_euclid(3_600_000) + 20 * 60_000;
    for app in apps {
        app.services.quota.set_test_clock_offset_ms(target - now);
    }
    target - now
}

async fn ping_alternating(apps: &[&TestApp], secret: &str, n: usize) -> HashMap<u16, usize> {
    let c = client();
    let mut statuses = HashMap::new();
    for i in 0..n {
        let app = apps[i % apps.len()];
        let res = c.get(app.url("/api/v1/ping")).bearer_auth(secret).send().await.unwrap();
        *statuses.entry(res.status().as_u16()).or_default() += 1;
    }
    statuses
}

/// The messages to `email`, with quoted-printable soft line breaks joined.
fn to(email: &str, messages: &[String]) -> Vec<String> {
    messages.iter().filter(|m| m.contains(&format!("To: {email}"))).map(|m| m.replace("=\n", "")).collect()
}

/// The plain-text part of a message as its reader sees it (quoted-printable decoded).
fn text_part(message: &str) -> String {
    let start = message.find("Content-Type: text/plain").expect("a text part");
    let body = &message[start..];
    let body = &body[body.find("\n\n").expect("part headers end") + 2..];
    let body = &body[..body.find("\n--").unwrap_or(body.len())];
    let mut bytes = Vec::new();
    let raw = body.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        match (raw[i], raw.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'=', Some(byte)) => {
                bytes.push(byte);
                i += 3;
            }
            (b, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(bytes).expect("UTF-8 text")
}

async fn notifications(app: &TestApp, session: &reqwest::Client) -> Vec<serde_json::Value> {
    let res = app.rpc(session, "notifications/list", &[]).await;
    assert!(res.status().is_success());
    let list: Vec<serde_json::Value> = res.json().await.unwrap();
    list.into_iter().filter(|n| n["title"].as_str().unwrap_or_default().contains("quota")).collect()
}

async fn wait_for_notifications(app: &TestApp, session: &reqwest::Client, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let list = notifications(app, session).await;
        if list.len() >= n {
            return list;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    notifications(app, session).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_50_80_and_100_percent_alerts_exactly_once_across_two_instances() {
    let sink = SmtpSink::start().await;
    let a = TestApp::spawn_with(&[("SMTP_URL", sink.url())]).await;
    let b = a.spawn_sibling_with(&[("SMTP_URL", sink.url())]).await;
    let clock = mid_hour(&[&a, &b]).await;
    let (email, session, secret, id) = merchant_with_key(&a, 10).await;

    // 10 admitted, then refused; the refusals cross nothing more.
    let statuses = ping_alternating(&[&a, &b], &secret, 14).await;
    assert_eq!(statuses.get(&200), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&4), "{statuses:?}");

    let mail = to(&email, &sink.wait_for(3, 20).await);
    let mut subjects: Vec<String> = mail.iter().map(|m| subject(m)).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        vec![
            "checkout: 50% of the hourly quota used",
            "checkout: 80% of the hourly quota used",
            "checkout: hourly quota used up"
        ],
    );
    assert!(mail.iter().all(|m| m.contains(&format!("/dashboard/developers/api-keys/{id}/usage"))));
    assert!(mail.iter().all(|m| m.contains("text/plain") && m.contains("text/html")));

    let bell = wait_for_notifications(&a, &session, 3).await;
    assert_eq!(bell.len(), 3, "{bell:?}");
    let unread =
        a.rpc(&session, "nav/counts", &[]).await.json::<serde_json::Value>().await.unwrap()["unread"].as_i64().unwrap();
    assert_eq!(unread, 3);

    // More traffic, restarts of the writer (a third instance) and time: still three.
    let c = b.spawn_sibling_with(&[("SMTP_URL", sink.url())]).await;
    c.services.quota.set_test_clock_offset_ms(clock);
    ping_alternating(&[&a, &b, &c], &secret, 6).await;
    a.wait_for_events(id, 20).await;
    a.wait_until_usage_stored().await;
    a.wait_until_mail_sent().await;
    assert_eq!(to(&email, &sink.messages()).len(), 3);
    assert_eq!(notifications(&a, &session).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_lowered_below_the_use_alerts_for_every_threshold_it_passed() {
    let app = TestApp::spawn().await;
    mid_hour(&[&app]).await;
    let (_, session, secret, id) = merchant_with_key(&app, 10).await;
    // 3 of 10: below every threshold.
    assert_eq!(ping_alternating(&[&app], &secret, 3).await.get(&200), Some(&3));
    app.wait_for_events(id, 3).await;
    assert!(notifications(&app, &session).await.is_empty());

    // Lowered to 4: the next request takes the hour to 4 of 4, past 50 % (2), 80 % (4) and
    // 100 % at once; no request ever had exactly the 50 % count.
    app.set_quota(id, 4, 1_000_000).await;
    assert_eq!(ping_alternating(&[&app], &secret, 2).await.get(&200), Some(&1));
    let bell = wait_for_notifications(&app, &session, 3).await;
    let mut titles: Vec<&str> = bell.iter().filter_map(|n| n["title"].as_str()).collect();
    titles.sort_unstable();
    assert_eq!(
        titles,
        [
            "checkout: 50% of the hourly quota used",
            "checkout: 80% of the hourly quota used",
            "checkout: hourly quota used up"
        ]
    );
}

/// One request used up the hour and the day: the hour's alert does not promise requests back
/// at the next hour (they stay refused until midnight UTC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_used_up_with_its_day_names_the_days_reset() {
    let app = TestApp::spawn().await;
    mid_hour(&[&app]).await;
    let (_, session, secret, id) = merchant_with_key(&app, 10).await;
    app.set_quota(id, 10, 10).await;
    let refused = client().get(app.url("/api/v1/ping")).bearer_auth(&secret);
    assert_eq!(ping_alternating(&[&app], &secret, 10).await.get(&200), Some(&10));
    let refused = refused.send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["window"], "day", "{body}");
    let day_reset = chrono::DateTime::parse_from_rfc3339(body["error"]["reset_at"].as_str().unwrap()).unwrap();

    // Six alerts: 50, 80 and 100 % of the hour and of the day.
    let bell = wait_for_notifications(&app, &session, 6).await;
    let hour_used_up = bell.iter().find(|n| n["title"] == "checkout: hourly quota used up").expect("the hour's alert");
    let expected = format!(
        "The daily quota is used up too: further requests get 429 Too Many Requests until it resets at {} UTC.",
        day_reset.format("%Y-%m-%d %H:%M")
    );
    assert!(hour_used_up["body"].as_str().unwrap().ends_with(&expected), "{hour_used_up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_choose_which_alerts_email_them_and_the_bell_shows_all() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(&[("SMTP_URL", sink.url())]).await;
    mid_hour(&[&app]).await;
    let (email, session, secret, id) = merchant_with_key(&app, 4).await;

    let res = app.rpc(&session, "keys/alert-emails", &[("id", &id.to_string()), ("email_100", "on")]).await;
    assert!(res.status().is_success(), "{}", res.status());
    let view: serde_json::Value = res.json().await.unwrap();
    assert_eq!(view["alert_emails"], serde_json::json!([100]));
    // Nonsense is refused and changes nothing.
    let bad = app.rpc(&session, "keys/alert-emails", &[("id", "not-a-key"), ("email_50", "on")]).await;
    assert_eq!(bad.status().as_u16(), 404);
    let bad = app.rpc(&session, "keys/alert-emails", &[("id", &id.to_string()), ("email_50", "maybe")]).await;
    assert_eq!(bad.status().as_u16(), 400);
    // An admin sees the choice but cannot make it for the owner; another merchant cannot see it.
    app.user("root@example.com", Role::Admin).await;
    let admin = app.signed_in("root@example.com").await;
    let refused = app.rpc(&admin, "keys/alert-emails", &[("id", &id.to_string()), ("email_50", "on")]).await;
    assert_eq!(refused.status().as_u16(), 403);
    let admin_view: serde_json::Value =
        app.rpc(&admin, "keys/get", &[("id", &id.to_string())]).await.json().await.unwrap();
    assert_eq!(admin_view["alert_emails"], serde_json::json!([100]));
    app.user("eve@example.com", Role::Merchant).await;
    let eve = app.signed_in("eve@example.com").await;
    let refused = app.rpc(&eve, "keys/alert-emails", &[("id", &id.to_string()), ("email_50", "on")]).await;
    assert_eq!(refused.status().as_u16(), 404);
    let view: serde_json::Value = app.rpc(&session, "keys/get", &[("id", &id.to_string())]).await.json().await.unwrap();
    assert_eq!(view["alert_emails"], serde_json::json!([100]));

    ping_alternating(&[&app], &secret, 4).await;
    assert_eq!(wait_for_notifications(&app, &session, 3).await.len(), 3);
    let mail = to(&email, &sink.wait_for(1, 20).await);
    app.wait_until_usage_stored().await;
    app.wait_until_mail_sent().await;
    let mail_now = to(&email, &sink.messages());
    assert_eq!(mail.len(), 1);
    assert_eq!(mail_now.len(), 1, "only the 100% alert emails");
    assert_eq!(subject(&mail[0]), "checkout: hourly quota used up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_wait_while_smtp_is_down_and_are_delivered_when_it_is_back() {
    let port = common::processes::free_port();
    let app = TestApp::spawn_with(&[("SMTP_URL", format!("smtp://127.0.0.1:{port}"))]).await;
    mid_hour(&[&app]).await;
    let (email, session, secret, _) = merchant_with_key(&app, 2).await;
    ping_alternating(&[&app], &secret, 2).await;
    // In the app at once; the emails fail and wait.
    assert_eq!(wait_for_notifications(&app, &session, 3).await.len(), 3);
    assert_eq!(wait_for_pending_with_errors(&app, 3).await, 3, "three alert emails tried, failed and kept");

    let sink = SmtpSink::start_on(port).await;
    // Skip the backoff's wait, as time passing would.
    app.make_mail_due().await;
    let mail = to(&email, &sink.wait_for(3, 20).await);
    assert_eq!(mail.len(), 3);
    // The sink has the message a moment before the mailer records it as sent.
    assert_eq!(wait_for_pending_with_errors(&app, 0).await, 0);
}

/// Polls until `n` emails are failed-and-kept (or 10 s pass), returning the last count.
async fn wait_for_pending_with_errors(app: &TestApp, n: i64) -> i64 {
    let mut count = pending_with_errors(app).await;
    for _ in 0..50 {
        if count == n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        count = pending_with_errors(app).await;
    }
    count
}

async fn pending_with_errors(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM outbound_emails WHERE sent_at IS NULL AND attempts > 0 AND last_error IS NOT NULL")
        .await
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_monthly_summary_has_the_right_totals_and_csv_and_is_sent_once_when_two_instances_race() {
    let sink = SmtpSink::start().await;
    let a = TestApp::spawn_with(&[("SMTP_URL", sink.url())]).await;
    let b = a.spawn_sibling_with(&[("SMTP_URL", sink.url())]).await;
    let month = Month::parse("2026-09").unwrap();

    let email = format!("m-{}@example.com", Uuid::new_v4().simple());
    let owner = a.user(&email, Role::Merchant).await;
    let mut keys = Vec::new();
    for name in ["checkout", "refunds"] {
        let (key, _) = api_keys::create(&a.services.db, owner.id, &KeyName::parse(name).unwrap()).await.unwrap();
        api_keys::backdate(
            &a.services.db,
            key.id,
            chrono::DateTime::parse_from_rfc3339("2026-08-15T00:00:00Z").unwrap().into(),
        )
        .await
        .unwrap();
        keys.push(key.id.0);
    }
    // Limits of 100/h from before September, raised since: September is measured against 100.
    a.set_quota(ApiKeyId(keys[0]), 100, 1_000).await;
    let mut conn = services::db::conn(&a.services.db).await.unwrap();
    diesel::sql_query("UPDATE quota_changes SET changed_at = '2026-08-20T00:00:00Z' WHERE api_key_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(keys[0])
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    a.set_quota(ApiKeyId(keys[0]), 2_000, 20_000).await;

    // September for "checkout": day d has d calls (d ms each), day 5 five 500s more, day 10 three
    // refused; plus calls just outside the month, which must not count.
    let mut events = Vec::new();
    for d in 1..=30i64 {
        let day = ms(&format!("2026-09-{d:02}T12:00:00Z"));
        for i in 0..d {
            events.push(ping_event(keys[0], day + i * 1000, 200, d as u64 * 1000, false));
        }
    }
    for i in 0..5 {
        events.push(ping_event(keys[0], ms("2026-09-05T13:00:00Z") + i, 500, 2_000, false));
    }
    for i in 0..3 {
        events.push(ping_event(keys[0], ms("2026-09-10T14:00:00Z") + i, 429, 50, true));
    }
    events.push(ping_event(keys[0], ms("2026-08-31T23:59:59Z"), 200, 1_000, false));
    events.push(ping_event(keys[0], ms("2026-10-01T00:00:00Z"), 200, 1_000, false));
    for i in 0..7 {
        events.push(ping_event(keys[1], ms("2026-09-20T08:00:00Z") + i, 200, 3_000, false));
    }
    let mut writer = UsageWriter::new(&a.services);
    writer.write(&events).await.unwrap();

    // The job on both instances at the same moment.
    let (ra, rb) =
        tokio::join!(send_monthly_reports(&a.services, month, false), send_monthly_reports(&b.services, month, false));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.sent + rb.sent, 1, "{ra:?} {rb:?}");

    let mail = to(&email, &sink.wait_for(1, 20).await);
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert_eq!(subject(m), "Your keymeter usage for September 2026");
    assert!(m.contains("filename=\"keymeter-usage-2026-09.csv\""), "{m}");
    assert!(m.contains("checkout") && m.contains("refunds"));
    // 465 + 5 admitted calls on checkout, 7 on refunds.
    let checkout_total: i64 = (1..=30).sum::<i64>() + 5;
    // What the merchant reads: the month's total, and each key's figures.
    let text = text_part(m);
    assert!(text.starts_with("Your API keys made 477 requests in September 2026 (UTC)."), "{text}");
    for line in [
        "  requests        470",
        "  throttled       3",
        "  error rate      1.1%",
        "  busiest day     Wed 30 Sep (30 requests)",
        "  peak quota use  3% of the daily, 30% of the hourly quota",
        "  requests        7",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
    }

    // The summary's figures, exactly.
    let key = api_keys::list_for_owner(&a.services.db, owner.id).await.unwrap();
    let checkout = key.iter().find(|k| k.name == "checkout").unwrap().clone();
    let s = monthly_report::summarise_key(&a.services.db, checkout, month).await.unwrap();
    assert_eq!(s.totals.requests, checkout_total);
    assert_eq!(s.totals.throttled, 3);
    assert_eq!(s.totals.errors_5xx, 5);
    assert_eq!(s.busiest_day.map(|(d, n)| (d.to_string(), n)), Some(("2026-09-30".to_owned(), 30)));
    assert_eq!(s.per_day.len(), 30);
    // Peak hour: 30 calls of the 100 allowed then (not of today's 2,000); peak day 30 of 1,000.
    assert!((s.peak_hour_use_pct - 30.0).abs() < 1e-9, "{}", s.peak_hour_use_pct);
    assert!((s.peak_day_use_pct - 3.0).abs() < 1e-9, "{}", s.peak_day_use_pct);
    let mut latencies: Vec<u64> =
        (1..=30u64).flat_map(|d| std::iter::repeat_n(d * 1000, d as usize)).chain([2_000; 5]).collect();
    let exact = exact_quantile(&mut latencies, 0.95).unwrap() as f64 / 1000.0;
    let p95 = s.totals.p95_ms().unwrap();
    assert!((p95 - exact).abs() / exact < 0.02, "p95 {p95} vs exact {exact}");

    // The attachment: every September call of both keys, and nothing else.
    let csv = attachment(&a).await;
    let mut sums: HashMap<String, (i64, i64)> = HashMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        assert!(f[0].starts_with("2026-09-"), "{line}");
        let e = sums.entry(f[2].to_owned()).or_default();
        e.0 += f[5].parse::<i64>().unwrap();
        e.1 += f[8].parse::<i64>().unwrap();
    }
    assert_eq!(sums.get("checkout"), Some(&(checkout_total, 3)));
    assert_eq!(sums.get("refunds"), Some(&(7, 0)));

    // Never twice; --force sends again.
    assert_eq!(send_monthly_reports(&b.services, month, false).await.unwrap().sent, 0);
    assert_eq!(send_monthly_reports(&a.services, month, true).await.unwrap().sent, 1);
    assert_eq!(to(&email, &sink.wait_for(2, 20).await).len(), 2);
    // A month that has not ended is refused.
    assert!(send_monthly_reports(&a.services, Month::containing(chrono::Utc::now()), false).await.is_err());
}

async fn attachment(app: &TestApp) -> String {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        content: Vec<u8>,
    }
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let row: Row = diesel::sql_query("SELECT content FROM outbound_email_attachments ORDER BY id LIMIT 1")
        .get_result(&mut conn)
        .await
        .unwrap();
    String::from_utf8(row.content).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_summary_waits_until_the_months_usage_is_stored() {
    // Services only: no writer of its own moves this stream.
    let app = TestApp::spawn_without_mailer().await;
    let month = Month::parse("2026-09").unwrap();
    let owner = app.user(&format!("m-{}@example.com", Uuid::new_v4().simple()), Role::Merchant).await;
    let (key, _) = api_keys::create(&app.services.db, owner.id, &KeyName::parse("checkout").unwrap()).await.unwrap();
    let created = chrono::DateTime::parse_from_rfc3339("2026-08-15T00:00:00Z").unwrap().into();
    api_keys::backdate(&app.services.db, key.id, created).await.unwrap();
    let mut writer = UsageWriter::new(&app.services);
    writer.write(&[ping_event(key.id.0, ms("2026-09-10T12:00:00Z"), 200, 1_000, false)]).await.unwrap();

    // Just after the month, on the Redis clock every request was counted on: its last requests
    // may still be lingering in a recorder. Not yet.
    app.set_clock(ms("2026-10-01T00:05:00Z")).await;
    let waiting = send_monthly_reports(&app.services, month, false).await;
    assert!(
        matches!(&waiting, Err(services::ServiceError::Conflict(m)) if m.contains("go out from 2026-10-01 00:10 UTC")),
        "{waiting:?}"
    );
    app.set_clock(ms("2026-10-01T00:10:01Z")).await;

    // Usage from the month's last second still in the stream (PostgreSQL was down at midnight,
    // say), an entry added in the first minutes after it (it may hold the month's last
    // requests), and one from later.
    let stream = services::usage::recorder::stream_name(&app.services.namespace);
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let late = format!("{}-0", ms("2026-09-30T23:59:59Z"));
    let lingering = format!("{}-0", ms("2026-10-01T00:00:05Z"));
    let after = format!("{}-0", ms("2026-10-01T00:10:05Z"));
    for id in [&late, &lingering, &after] {
        let _: String = deadpool_redis::redis::cmd("XADD")
            .arg(&stream)
            .arg(id)
            .arg("b")
            .arg("[]")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let waiting = send_monthly_reports(&app.services, month, false).await;
    assert!(matches!(waiting, Err(services::ServiceError::Conflict(_))), "{waiting:?}");
    assert_eq!(pending_reports(&app, month).await, 0, "nothing sent while September is incomplete");

    let _: i64 = deadpool_redis::redis::cmd("XDEL").arg(&stream).arg(&late).query_async(&mut conn).await.unwrap();
    let waiting = send_monthly_reports(&app.services, month, false).await;
    assert!(matches!(waiting, Err(services::ServiceError::Conflict(_))), "{waiting:?}");

    // Stored now: the summary goes; usage from after the month does not hold it up.
    let _: i64 = deadpool_redis::redis::cmd("XDEL").arg(&stream).arg(&lingering).query_async(&mut conn).await.unwrap();
    assert_eq!(send_monthly_reports(&app.services, month, false).await.unwrap().sent, 1);
    assert_eq!(pending_reports(&app, month).await, 1);
}

async fn pending_reports(app: &TestApp, month: Month) -> i64 {
    app.count(&format!("SELECT count(*) FROM monthly_reports WHERE month = '{}'", month.first_day())).await
}

/// Opening the bell's list marks read what it showed, not what arrived after it was listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bell_marks_read_only_what_the_list_showed() {
    let app = TestApp::spawn().await;
    let user = app.user("ann@example.com", Role::Merchant).await;
    let session = app.signed_in("ann@example.com").await;
    let tell = |title: &'static str| {
        let db = app.services.db.clone();
        async move {
            let mut conn = services::db::conn(&db).await.unwrap();
            let note = services::notifications::NewNotification {
                user_id: user.id,
                kind: "test",
                title,
                body: "body",
                link: None,
                dedupe_key: None,
            };
            assert!(services::notifications::notify(&mut conn, &note).await.unwrap());
        }
    };
    tell("first").await;
    tell("second").await;
    let shown: Vec<Value> = app.rpc(&session, "notifications/list", &[]).await.json().await.unwrap();
    let ids = || shown.iter().map(|n| n["id"].as_i64().unwrap());
    let (oldest, newest) = (ids().min().unwrap().to_string(), ids().max().unwrap().to_string());
    tell("arrived meanwhile").await;

    let res = app.rpc(&session, "notifications/read", &[("oldest_shown", &oldest), ("newest_shown", &newest)]).await;
    assert_eq!(res.status(), 200);
    let unread = app.rpc(&session, "nav/counts", &[]).await.json::<serde_json::Value>().await.unwrap()["unread"]
        .as_i64()
        .unwrap();
    assert_eq!(unread, 1, "the one that arrived after the list stays unread");
    let now: Vec<Value> = app.rpc(&session, "notifications/list", &[]).await.json().await.unwrap();
    let unread_titles: Vec<&str> =
        now.iter().filter(|n| n["unread"] == true).map(|n| n["title"].as_str().unwrap()).collect();
    assert_eq!(unread_titles, ["arrived meanwhile"]);
}

/// The list shows 50 at a time: opening it marks those read, not the older ones it does not
/// show (they used to be marked read unseen: 4,000 alerts lost behind a page of 50), and those
/// are on the next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_beyond_the_first_page_stay_unread_until_their_page_is_shown() {
    let app = TestApp::spawn().await;
    let user = app.user("ann@example.com", Role::Merchant).await;
    let session = app.signed_in("ann@example.com").await;
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    for i in 0..55 {
        let title = format!("alert {i}");
        let note = services::notifications::NewNotification {
            user_id: user.id,
            kind: "test",
            title: &title,
            body: "body",
            link: None,
            dedupe_key: None,
        };
        assert!(services::notifications::notify(&mut conn, &note).await.unwrap());
    }
    let show = |before: Option<i64>| {
        let (app, session) = (&app, &session);
        async move {
            let before = before.map(|b| b.to_string());
            let args: Vec<(&str, &str)> = before.iter().map(|b| ("before", b.as_str())).collect();
            let page: Vec<Value> = app.rpc(session, "notifications/list", &args).await.json().await.unwrap();
            let ids: Vec<i64> = page.iter().map(|n| n["id"].as_i64().unwrap()).collect();
            let (oldest, newest) = (ids.iter().min().unwrap().to_string(), ids.iter().max().unwrap().to_string());
            let res =
                app.rpc(session, "notifications/read", &[("oldest_shown", &oldest), ("newest_shown", &newest)]).await;
            assert_eq!(res.status(), 200);
            page
        }
    };
    let first = show(None).await;
    assert_eq!(first.len(), 50);
    assert_eq!(first[0]["title"], "alert 54", "newest first");
    let unread = app.rpc(&session, "nav/counts", &[]).await.json::<serde_json::Value>().await.unwrap()["unread"]
        .as_i64()
        .unwrap();
    assert_eq!(unread, 5, "the five older ones were not shown");
    let oldest_shown = first.iter().map(|n| n["id"].as_i64().unwrap()).min();
    let second = show(oldest_shown).await;
    let titles: Vec<&str> = second.iter().map(|n| n["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["alert 4", "alert 3", "alert 2", "alert 1", "alert 0"]);
    assert!(second.iter().all(|n| n["unread"] == true), "still unread when their page came");
    let unread = app.rpc(&session, "nav/counts", &[]).await.json::<serde_json::Value>().await.unwrap()["unread"]
        .as_i64()
        .unwrap();
    assert_eq!(unread, 0);
}

/// A month whose summary never went out during the month after it (every instance down, Redis
/// unreachable) is not skipped: the scheduler sends it when it next runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_missed_for_a_whole_month_is_sent_when_the_scheduler_next_runs() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(&[("SMTP_URL", sink.url())]).await;
    let missed = Month::containing(chrono::Utc::now()).previous().previous();
    let owner = app.user(&format!("m-{}@example.com", Uuid::new_v4().simple()), Role::Merchant).await;
    let (key, _) = api_keys::create(&app.services.db, owner.id, &KeyName::parse("checkout").unwrap()).await.unwrap();
    api_keys::backdate(&app.services.db, key.id, missed.previous().days().start()).await.unwrap();
    let noon = missed.days().start().timestamp_millis() + 12 * 3_600_000;
    let events: Vec<_> = (0..4).map(|i| ping_event(key.id.0, noon + i, 200, 1_000, false)).collect();
    UsageWriter::new(&app.services).write(&events).await.unwrap();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(monthly_report::run_scheduler(app.services.clone(), stopped));
    let mail = sink.wait_for(2, 20).await;
    stop.send(true).unwrap();
    scheduler.await.unwrap();
    let missed_name = missed.days().start().format("%B %Y").to_string();
    let for_missed: Vec<&String> =
        mail.iter().filter(|m| m.contains(&format!("Subject: Your keymeter usage for {missed_name}"))).collect();
    let subjects: Vec<&str> = mail.iter().filter_map(|m| m.lines().find(|l| l.starts_with("Subject:"))).collect();
    assert_eq!(for_missed.len(), 1, "{missed_name}: {subjects:?}");
    assert!(for_missed[0].contains("made 4 requests"), "{}", for_missed[0]);
}

/// Every summary links to a page that stops it, and names that page in `List-Unsubscribe` with
/// one-click POST (RFC 8058). Opening the link changes nothing (mail scanners open links); the
/// POST stops it without signing in; later summaries leave the owner out. Turned on again in
/// the app, it starts with the months that end from then on, not every month missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_stops_the_monthly_summary_from_its_email_and_turns_it_on_again_in_the_app() {
    let sink = SmtpSink::start().await;
    let app =
        TestApp::spawn_with(&[("SMTP_URL", sink.url()), ("KEYMETER_PUBLIC_URL", "https://keymeter.example".into())])
            .await;
    // Two months back: last month's summaries wait for its last calls to be stored (the first
    // minutes of a month refuse them), which this test is not about.
    let last = Month::containing(chrono::Utc::now()).previous().previous();
    let before_last = last.previous();
    let email = format!("m-{}@example.com", Uuid::new_v4().simple());
    let owner = app.user(&email, Role::Merchant).await;
    let (key, _) = api_keys::create(&app.services.db, owner.id, &KeyName::parse("checkout").unwrap()).await.unwrap();
    api_keys::backdate(&app.services.db, key.id, before_last.previous().days().start()).await.unwrap();
    let gets_it = format!("SELECT count(*) FROM users WHERE id = {} AND monthly_summary", owner.id);

    let outcome = send_monthly_reports(&app.services, before_last, false).await.unwrap();
    assert_eq!((outcome.sent, outcome.opted_out), (1, 0));
    let mail = sink.wait_for(1, 20).await;
    let token = app.texts(&format!("SELECT email_token::text AS t FROM users WHERE id = {}", owner.id)).await.remove(0);
    let path = format!("/email/unsubscribe/{token}");
    let header = |line: &str| mail[0].lines().any(|l| l == line);
    assert!(header(&format!("List-Unsubscribe: <https://keymeter.example{path}>")), "{}", mail[0]);
    assert!(header("List-Unsubscribe-Post: List-Unsubscribe=One-Click"), "{}", mail[0]);
    assert!(mail[0].contains("To stop it:"), "{}", mail[0]);

    // Opening the link asks and changes nothing; it shows the address only in part.
    let page = client().get(app.url(&path)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    assert!(text.contains("m-***@example.com") && text.contains("Stop these summaries"), "{text}");
    assert!(!text.contains(&email), "{text}");
    assert_eq!(app.count(&gets_it).await, 1);
    // A mail reader's one-click unsubscribe: a POST without cookies or Origin, whatever its
    // body. Twice is fine.
    for body in ["List-Unsubscribe=One-Click", ""] {
        let stop = client()
            .post(app.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(stop.status(), 200);
        assert!(stop.text().await.unwrap().contains("is stopped"));
    }
    assert_eq!(app.count(&gets_it).await, 0);
    // Links that are not one of ours: 404 either way.
    for bad in ["not-a-token".to_owned(), Uuid::new_v4().to_string()] {
        let url = app.url(&format!("/email/unsubscribe/{bad}"));
        assert_eq!(client().get(&url).send().await.unwrap().status(), 404, "{bad}");
        assert_eq!(client().post(&url).send().await.unwrap().status(), 404, "{bad}");
    }

    // Last month's summary (as the scheduler sends it), and a forced resend: left out.
    let outcome = send_monthly_reports(&app.services, last, false).await.unwrap();
    assert_eq!((outcome.sent, outcome.opted_out), (0, 1));
    let outcome = send_monthly_reports(&app.services, before_last, true).await.unwrap();
    assert_eq!((outcome.sent, outcome.opted_out), (0, 1));

    // On again, in the app: not for the months that ended while it was off.
    let session = app.signed_in(&email).await;
    let shown: bool = app.rpc(&session, "notifications/monthly-summary", &[]).await.json().await.unwrap();
    assert!(!shown);
    let bad = app.rpc(&session, "notifications/monthly-summary/set", &[("monthly_summary", "maybe")]).await;
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(app.count(&gets_it).await, 0, "a refused choice changes nothing");
    let set = app.rpc(&session, "notifications/monthly-summary/set", &[("monthly_summary", "on")]).await;
    assert!(set.status().is_success(), "{}", set.status());
    assert_eq!(app.count(&gets_it).await, 1);
    // With a new link: whoever stopped it with a forwarded summary's link cannot again.
    assert_eq!(client().get(app.url(&path)).send().await.unwrap().status(), 404);
    assert_eq!(client().post(app.url(&path)).send().await.unwrap().status(), 404);
    assert_eq!(app.count(&gets_it).await, 1, "the old link stops nothing");
    let new_token = app.texts(&format!("SELECT email_token::text AS t FROM users WHERE id = {}", owner.id)).await;
    assert_ne!(new_token, std::slice::from_ref(&token));
    let outcome = send_monthly_reports(&app.services, last, false).await.unwrap();
    assert_eq!((outcome.sent, outcome.opted_out), (0, 1), "last month ended while it was off");
    // Had it been turned on before last month ended, last month's would go.
    let on_in_time =
        format!("UPDATE users SET monthly_summary_since = '{}' WHERE id = {}", last.days().start(), owner.id);
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    assert_eq!(diesel::sql_query(on_in_time).execute(&mut conn).await.unwrap(), 1);
    let outcome = send_monthly_reports(&app.services, last, false).await.unwrap();
    assert_eq!((outcome.sent, outcome.opted_out), (1, 0));
    let mail = sink.wait_for(2, 20).await;
    let link = format!("List-Unsubscribe: <https://keymeter.example/email/unsubscribe/{}>", new_token[0]);
    assert!(mail[1].lines().any(|l| l == link), "{}", mail[1]);
}

#[tokio::test]
async fn a_summary_still_waiting_in_the_outbox_when_its_owner_stops_it_is_not_sent() {
    // The mail server turns recipients away for now: the summary stays queued, retried later.
    let sink = SmtpSink::start_refusing_recipients("451 4.3.0 try again later").await;
    let app = TestApp::spawn_with(&[("SMTP_URL", sink.url())]).await;
    // Two months back, settled whenever the test runs (see above).
    let last = Month::containing(chrono::Utc::now()).previous().previous();
    let email = format!("m-{}@example.com", Uuid::new_v4().simple());
    let owner = app.user(&email, Role::Merchant).await;
    let (key, _) = api_keys::create(&app.services.db, owner.id, &KeyName::parse("checkout").unwrap()).await.unwrap();
    api_keys::backdate(&app.services.db, key.id, last.previous().days().start()).await.unwrap();
    let outcome = send_monthly_reports(&app.services, last, false).await.unwrap();
    assert_eq!(outcome.sent, 1);
    let tried = format!("SELECT count(*) FROM outbound_emails WHERE to_address = '{email}' AND attempts > 0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.count(&tried).await == 0 {
        assert!(std::time::Instant::now() < deadline, "the sender never tried the summary");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Its owner stops the summary with the link of an earlier one.
    let token = app.texts(&format!("SELECT email_token::text AS t FROM users WHERE id = {}", owner.id)).await.remove(0);
    let stop = client().post(app.url(&format!("/email/unsubscribe/{token}"))).send().await.unwrap();
    assert_eq!(stop.status(), 200);
    let unsent = format!("SELECT count(*) FROM outbound_emails WHERE to_address = '{email}' AND sent_at IS NULL");
    assert_eq!(app.count(&unsent).await, 0, "the waiting summary is withdrawn");
    let recorded = format!("SELECT count(*) FROM monthly_reports WHERE user_id = {} AND email_id IS NULL", owner.id);
    assert_eq!(app.count(&recorded).await, 1, "the month stays done");

    // The mail server takes mail again, and whatever waits is due now: other mail to the owner
    // goes, the summary does not.
    sink.accept_recipients();
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let due = format!("UPDATE outbound_emails SET next_attempt_at = now() WHERE to_address = '{email}'");
    diesel::sql_query(due).execute(&mut conn).await.unwrap();
    let notice = services::mailer::Email {
        to: &email,
        subject: "Your key is close to its quota",
        text: "text",
        html: "<p>html</p>",
        attachments: &[],
        list_unsubscribe: None,
        credential_until: None,
    };
    assert!(services::mailer::enqueue(&mut conn, &notice, None).await.unwrap());
    // The notice is sent before any bulk mail that is due; then the sender has nothing left.
    let mail = sink.wait_for(1, 20).await;
    let due = format!(
        "SELECT count(*) FROM outbound_emails WHERE sent_at IS NULL AND failed_at IS NULL AND to_address = '{email}'"
    );
    assert_eq!(app.count(&due).await, 0);
    assert_eq!(subject(&mail[0]), "Your key is close to its quota");
    assert_eq!(app.count(&unsent).await, 0);
    assert_eq!(sink.messages().len(), 1, "{:?}", sink.subjects());
}
