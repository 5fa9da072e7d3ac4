//! The usage pipeline's guarantees: replays add nothing twice, retention drops old raw events
//! but keeps rollups, a graceful shutdown leaves nothing behind, a dropped server's writer stops,
//! revocation reaches every instance within seconds.

mod common;

use std::time::Duration;

use common::{client, sample, scrape_until, TestApp};
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use services::usage::set_aside;
use services::usage::writer::UsageWriter;
use services::usage::UsageEvent;
use uuid::Uuid;

#[derive(diesel::QueryableByName)]
struct Totals {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    events: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    requests: i64,
}

async fn totals(app: &TestApp, key: Uuid) -> (i64, i64) {
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let t: Totals = diesel::sql_query(
        "SELECT (SELECT count(*) FROM api_key_usage WHERE api_key_id = $1) AS events, \
         (SELECT coalesce(sum(requests), 0)::bigint FROM api_key_usage_minute WHERE api_key_id = $1) AS requests",
    )
    .bind::<diesel::sql_types::Uuid, _>(key)
    .get_result(&mut conn)
    .await
    .unwrap();
    (t.events, t.requests)
}

fn event(key: Uuid, at_ms: i64) -> UsageEvent {
    common::ping_event(key, at_ms, 200, 1234, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_adds_nothing_twice() {
    let app = TestApp::spawn().await;
    let (_, id) = app.key_with_quota(10, 10).await;
    let now = chrono::Utc::now().timestamp_millis();
    let batch: Vec<UsageEvent> = (0..25).map(|i| event(id.0, now - i * 1000)).collect();
    let mut writer = UsageWriter::new(&app.services);
    writer.write(&batch).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (25, 25));
    // The same batch again (a writer that crashed before acknowledging), and overlapping ones.
    writer.write(&batch).await.unwrap();
    writer.write(&batch[10..]).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (25, 25));
    let more: Vec<UsageEvent> = (0..5).map(|i| event(id.0, now - i)).collect();
    writer.write(&[&batch[..3], &more[..]].concat()).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (30, 30));
    // One batch holding the same new request twice (a hand-off retried after a lost reply).
    let twice = event(id.0, now - 7);
    writer.write(&[twice.clone(), twice]).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (31, 31));
}

/// The usage page's breakdowns read the daily rollups: each day's row must be its hours' rows
/// added up, counts, bytes and latency histogram alike, replays included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_rollups_add_up_the_hourly_ones() {
    #[derive(diesel::QueryableByName)]
    struct Gap {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        days: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        mismatched: i64,
    }
    let app = TestApp::spawn().await;
    let (_, id) = app.key_with_quota(10, 10).await;
    let hour = 3_600_000i64;
    let start = chrono::Utc::now().timestamp_millis() - 72 * hour;
    let events: Vec<UsageEvent> = (0..300)
        .map(|i| {
            let status = [200, 200, 404, 500][i as usize % 4];
            common::ping_event(id.0, start + i * 13 * 60_000, status, 100 + (i as u64 * 7919) % 90_000, i % 9 == 0)
        })
        .collect();
    let mut writer = UsageWriter::new(&app.services);
    for chunk in events.chunks(37) {
        writer.write(chunk).await.unwrap();
    }
    writer.write(&events[100..150]).await.unwrap();
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let gap: Gap = diesel::sql_query(
        "WITH h AS (SELECT date_trunc('day', period_start, 'UTC') AS period_start, method, endpoint, status, \
                           sum(requests) AS requests, sum(throttled) AS throttled, sum(bytes_in) AS bytes_in, \
                           sum(bytes_out) AS bytes_out, km_hist_sum(latency_hist) AS latency_hist \
                    FROM api_key_usage_hour WHERE api_key_id = $1 GROUP BY 1, 2, 3, 4), \
              d AS (SELECT period_start, method, endpoint, status, requests, throttled, bytes_in, bytes_out, \
                           latency_hist FROM api_key_usage_day WHERE api_key_id = $1) \
         SELECT (SELECT count(DISTINCT period_start) FROM d) AS days, count(*) AS mismatched \
         FROM h FULL JOIN d USING (period_start, method, endpoint, status) \
         WHERE (h.requests, h.throttled, h.bytes_in, h.bytes_out, h.latency_hist) \
               IS DISTINCT FROM (d.requests, d.throttled, d.bytes_in, d.bytes_out, d.latency_hist)",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .get_result(&mut conn)
    .await
    .unwrap();
    assert!(gap.days >= 3, "{} days", gap.days);
    assert_eq!(gap.mismatched, 0);
    // Every event once (34 of them throttled, so not among the admitted requests).
    assert_eq!(totals(&app, id.0).await, (300, 266));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_the_stream_is_written_round_after_round_without_pausing() {
    // Services only: no server, so no writer of its own moves this stream.
    let app = TestApp::spawn_without_mailer().await;
    let (_, id) = app.key_with_quota(10, 10).await;
    let now = chrono::Utc::now().timestamp_millis();
    // 1,050 small stream entries, as many recorders under load leave them.
    let stream = services::usage::recorder::stream_name(&app.services.namespace);
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    for chunk in 0..21 {
        let mut pipe = deadpool_redis::redis::pipe();
        for i in 0..50 {
            let n = chunk * 50 + i;
            let events = vec![event(id.0, now - 2 * n), event(id.0, now - 2 * n - 1)];
            pipe.cmd("XADD").arg(&stream).arg("*").arg("b").arg(serde_json::to_string(&events).unwrap()).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let mut writer = UsageWriter::new(&app.services);
    let mut rounds = Vec::new();
    loop {
        let round = writer.step(0).await.unwrap();
        rounds.push((round.events, round.caught_up));
        if round.caught_up {
            break;
        }
    }
    // A round takes 100 entries and says there is more, so `run` goes straight on; only the
    // last round, with what was left, is caught up (where `run` may pause to gather).
    let mut expected = vec![(200, false); 10];
    expected.push((100, true));
    assert_eq!(rounds, expected);
    assert_eq!(totals(&app, id.0).await, (2_100, 2_100));
}

/// A stream entry that PostgreSQL refuses (here: it breaks a rule added to the table)
/// is set aside with the error after a few tries, and the usage behind it is stored. It used to
/// be retried forever, ahead of everything else: no usage reached PostgreSQL again. Once the
/// cause is fixed, a replay stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_postgres_refuses_is_set_aside_and_later_usage_is_stored() {
    use deadpool_redis::redis;
    // Services only: no server, so no writer of its own moves this stream.
    let app = TestApp::spawn_without_mailer().await;
    let (_, poisoned) = app.key_with_quota(10, 10).await;
    let (_, healthy) = app.key_with_quota(10, 10).await;
    let now = chrono::Utc::now().timestamp_millis();
    let stream = services::usage::recorder::stream_name(&app.services.namespace);
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let add = |events: Vec<UsageEvent>| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*").arg("b").arg(serde_json::to_string(&events).unwrap());
        cmd
    };
    // A rule this usage breaks, as a faulty migration might add one. (Usage itself gives
    // PostgreSQL nothing to refuse: measures are capped, so no sum overflows.)
    let rule = "ALTER TABLE api_key_usage ADD CONSTRAINT not_blocked CHECK (endpoint <> '/blocked')";
    app.run_sql(rule).await;
    let mut writer = UsageWriter::new(&app.services);
    let mut blocked = event(poisoned.0, now);
    blocked.endpoint = "/blocked".into();
    let refused_id: String = add(vec![blocked]).query_async(&mut conn).await.unwrap();
    let _: String = add(vec![event(healthy.0, now), event(healthy.0, now + 1)]).query_async(&mut conn).await.unwrap();

    let round = writer.step(0).await.unwrap();
    assert_eq!(round.events, 3, "{round:?}");
    assert_eq!(totals(&app, healthy.0).await, (2, 2), "the usage behind the refused entry is stored");
    assert_eq!(totals(&app, poisoned.0).await, (0, 0));
    // The refused entry waits in the set-aside stream with its error; the usage stream is empty.
    let aside = services::usage::set_aside::stream_name(&stream);
    let kept: Vec<(String, Vec<(String, String)>)> = {
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(&aside).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        reply
            .ids
            .into_iter()
            .map(|e| {
                let fields = e.map.iter().map(|(k, v)| (k.clone(), redis::from_redis_value(v).unwrap())).collect();
                (e.id, fields)
            })
            .collect()
    };
    assert_eq!(kept.len(), 1, "{kept:?}");
    let fields: std::collections::HashMap<_, _> = kept[0].1.iter().cloned().collect();
    assert_eq!(fields["entry"], refused_id);
    assert!(fields["error"].contains("not_blocked"), "{fields:?}");
    let kept_events: Vec<UsageEvent> = serde_json::from_str(&fields["b"]).unwrap();
    assert_eq!(kept_events[0].endpoint, "/blocked");
    let left: i64 = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0);
    assert!(writer.step(0).await.unwrap().caught_up);

    // What the operator sees (`keymeter usage set-aside`), and the replay once the cause is
    // fixed (here: the rule dropped).
    let namespace = &app.services.namespace;
    let (total, listed) = set_aside::list(&app.services.redis, namespace, 10).await.unwrap();
    assert_eq!((total, listed.len()), (1, 1));
    assert_eq!((listed[0].entry.as_str(), listed[0].events.as_ref().map(Vec::len)), (refused_id.as_str(), Ok(1)));
    assert!(listed[0].error.contains("not_blocked"), "{listed:?}");
    assert_eq!(set_aside::replay(&app.services.redis, namespace).await.unwrap().entries, 1);
    writer.step(0).await.unwrap();
    assert_eq!(totals(&app, poisoned.0).await, (0, 0), "refused again: the cause is still there");
    assert_eq!(set_aside::list(&app.services.redis, namespace, 10).await.unwrap().0, 1, "set aside again");
    app.run_sql("ALTER TABLE api_key_usage DROP CONSTRAINT not_blocked").await;
    let replayed = set_aside::replay(&app.services.redis, namespace).await.unwrap();
    assert_eq!((replayed.entries, replayed.events), (1, 1));
    assert_eq!(writer.step(0).await.unwrap().events, 1);
    assert_eq!(totals(&app, poisoned.0).await, (1, 1), "the refused usage is stored, once");
    assert_eq!(set_aside::list(&app.services.redis, namespace, 10).await.unwrap(), (0, Vec::new()));
    assert_eq!(set_aside::replay(&app.services.redis, namespace).await.unwrap(), Default::default());
}

/// A stream entry that is not a batch of events (written by something else, or damaged) cannot
/// be stored, and would block the stream; it is set aside as it was, for an operator, instead of
/// being dropped, and the usage beside it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stream_entry_is_set_aside_as_it_was() {
    use deadpool_redis::redis;
    // Services only: no server, so no writer of its own moves this stream.
    let app = TestApp::spawn_without_mailer().await;
    let (_, id) = app.key_with_quota(10, 10).await;
    let stream = services::usage::recorder::stream_name(&app.services.namespace);
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let mut pipe = redis::pipe();
    pipe.cmd("XADD").arg(&stream).arg("*").arg("b").arg("not json").ignore();
    pipe.cmd("XADD").arg(&stream).arg("*").arg("other").arg("field").ignore();
    let valid = serde_json::to_string(&vec![event(id.0, chrono::Utc::now().timestamp_millis())]).unwrap();
    pipe.cmd("XADD").arg(&stream).arg("*").arg("b").arg(valid).ignore();
    let _: () = pipe.query_async(&mut conn).await.unwrap();

    let round = UsageWriter::new(&app.services).step(0).await.unwrap();
    assert_eq!(round.events, 1);
    assert_eq!(app.event_count(id).await, 1);
    let (total, listed) = set_aside::list(&app.services.redis, &app.services.namespace, 10).await.unwrap();
    assert_eq!(total, 2, "{listed:?}");
    assert!(listed.iter().all(|e| e.events.is_err() && e.error.starts_with("unreadable: ")), "{listed:?}");
    let left: i64 = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_raw_events_and_keeps_rollups() {
    let app = TestApp::spawn().await;
    let (_, id) = app.key_with_quota(10, 10).await;
    let day = 86_400_000i64;
    let now = chrono::Utc::now().timestamp_millis();
    let old: Vec<UsageEvent> = (0..4).map(|i| event(id.0, now - 120 * day + i)).collect();
    let recent: Vec<UsageEvent> = (0..3).map(|i| event(id.0, now - 2 * day + i)).collect();
    let mut writer = UsageWriter::new(&app.services);
    writer.write(&[old, recent].concat()).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (7, 7));
    assert_eq!(hourly_requests(&app, id.0).await, 7);
    // As the server runs it: today by PostgreSQL's clock.
    housekeeping(&app).apply_today().await.unwrap();
    // Raw events and minute rollups of the old day are gone; hourly rollups stay.
    assert_eq!(totals(&app, id.0).await, (3, 3));
    assert_eq!(hourly_requests(&app, id.0).await, 7);
}

async fn hourly_requests(app: &TestApp, key: Uuid) -> i64 {
    app.count(&format!("SELECT sum(requests) FROM api_key_usage_hour WHERE api_key_id = '{key}'")).await
}

/// A writer remembers which days' partitions exist. When retention dropped one and an event of
/// that day came late (a replayed stream), the writer kept trying the missing partition until
/// the entry was set aside: usage lost. It now makes the partition again on the next try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_of_a_dropped_day_is_stored_on_the_next_try() {
    let app = TestApp::spawn().await;
    let (_, id) = app.key_with_quota(10, 10).await;
    let old = chrono::Utc::now().timestamp_millis() - 120 * 86_400_000;
    let mut writer = UsageWriter::new(&app.services);
    writer.write(&[event(id.0, old)]).await.unwrap();
    housekeeping(&app).apply(chrono::Utc::now().date_naive()).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (0, 0));
    let late = [event(id.0, old + 1)];
    // The first try may find the partition gone; the entry's next try (the writer tries an
    // entry three times before setting it aside) stores it.
    if writer.write(&late).await.is_err() {
        writer.write(&late).await.expect("stored on the next try");
    }
    assert_eq!(totals(&app, id.0).await, (1, 1));
    assert_eq!(hourly_requests(&app, id.0).await, 2);
}

/// What is past its keeping time goes; what must stay, stays: unsent mail that is still being
/// tried, live sessions, monthly summary records (they make a summary go out once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_forgets_records_past_their_keeping_time() {
    use services::alerts::{AlertWindow, QuotaCrossing};
    let app = TestApp::spawn().await;
    let (_, key) = app.key_with_quota(10, 10).await;
    let merchant = app.user("kept@example.com", services::accounts::Role::Merchant).await;
    let client = app.signed_in("kept@example.com").await;
    let _expired = app.signed_in("kept@example.com").await;
    let _idle = app.signed_in("kept@example.com").await;
    let m = merchant.id;
    let k = key.0;
    let nth_newest_session = |n: usize| {
        format!("(SELECT token_hash FROM sessions WHERE user_id = {m} ORDER BY created_at DESC OFFSET {n} LIMIT 1)")
    };
    for statement in [
        // The second session has expired; the third has not been used for longer than the idle limit.
        format!("UPDATE sessions SET expires_at = now() - interval '1 minute' WHERE token_hash = {}", nth_newest_session(1)),
        format!("UPDATE sessions SET last_seen_at = now() - interval '12 hours 1 minute' WHERE token_hash = {}", nth_newest_session(0)),
        // One of the three browsers last signed in 61 days ago: it is known no longer.
        format!("UPDATE known_devices SET last_sign_in_at = now() - interval '61 days' WHERE token_hash = \
                 (SELECT token_hash FROM known_devices WHERE user_id = {m} LIMIT 1)"),
        format!("INSERT INTO notifications (user_id, kind, title, body, created_at) VALUES \
                 ({m}, 'quota_alert', 'old', 'b', now() - interval '100 days'), ({m}, 'quota_alert', 'new', 'b', now() - interval '80 days')"),
        "INSERT INTO outbound_emails (to_address, subject, text_body, html_body, created_at, sent_at, failed_at) VALUES \
         ('a@example.com', 'sent long ago', 't', 'h', now() - interval '101 days', now() - interval '100 days', NULL), \
         ('a@example.com', 'sent lately', 't', 'h', now() - interval '11 days', now() - interval '10 days', NULL), \
         ('a@example.com', 'given up long ago', 't', 'h', now() - interval '104 days', NULL, now() - interval '100 days'), \
         ('a@example.com', 'still tried', 't', 'h', now() - interval '100 days', NULL, NULL)".to_owned(),
        "INSERT INTO outbound_email_attachments (email_id, filename, content_type, content) \
         SELECT id, 'usage.csv', 'text/csv', 'x' FROM outbound_emails WHERE subject = 'sent long ago'".to_owned(),
        format!("INSERT INTO monthly_reports (user_id, month, email_id) \
                 SELECT {m}, date '2026-07-01', id FROM outbound_emails WHERE subject = 'sent long ago'"),
        format!("INSERT INTO quota_alerts (api_key_id, quota_window, period_start, threshold, quota_limit, crossed_at, emailed) VALUES \
                 ('{k}', 'day', date_trunc('day', now()) - interval '100 days', 50, 10, now() - interval '100 days', true), \
                 ('{k}', 'day', date_trunc('day', now()) - interval '1 day', 50, 10, now() - interval '1 day', true)"),
    ] {
        app.run_sql(&statement).await;
    }

    housekeeping(&app).apply(chrono::Utc::now().date_naive()).await.unwrap();

    let sessions = app.count(&format!("SELECT count(*) FROM sessions WHERE user_id = {m}")).await;
    assert_eq!(sessions, 1, "the expired and the idle sessions went, the live one stayed");
    let devices = app.count(&format!("SELECT count(*) FROM known_devices WHERE user_id = {m}")).await;
    assert_eq!(devices, 2, "the browser unused for 61 days is forgotten");
    let res = app.page(&client, "/dashboard/developers/api-keys").await;
    assert_eq!(res.status(), StatusCode::OK, "still signed in");
    // (The second and third sign-ins, from new browsers, told the owner: recent, so kept.)
    let told = "'New sign-in to your keymeter account'";
    let notifications =
        format!("SELECT title AS t FROM notifications WHERE user_id = {m} AND title <> {told} ORDER BY id");
    assert_eq!(app.texts(&notifications).await, ["new"]);
    let emails = format!("SELECT subject AS t FROM outbound_emails WHERE subject <> {told} ORDER BY id");
    assert_eq!(app.texts(&emails).await, ["sent lately", "still tried"]);
    assert_eq!(app.count("SELECT count(*) FROM outbound_email_attachments").await, 0);
    let summary_records =
        app.count(&format!("SELECT count(*) FROM monthly_reports WHERE user_id = {m} AND email_id IS NULL")).await;
    assert_eq!(summary_records, 1, "the summary record stays: July's summary is not sent again");
    assert_eq!(app.count(&format!("SELECT count(*) FROM quota_alerts WHERE api_key_id = '{k}'")).await, 1);

    // A crossing of a period whose record may be gone is not alerted again.
    let old_day = (chrono::Utc::now() - chrono::Duration::days(100)).timestamp_millis() / 86_400_000 * 86_400_000;
    let crossing = QuotaCrossing { window: AlertWindow::Day, period_start_ms: old_day, threshold: 50, limit: 10 };
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let new = services::alerts::record(&mut conn, &[(k, old_day + 1, crossing)], &app.services.settings.public_url)
        .await
        .unwrap();
    assert_eq!(new, 0);
}

/// Housekeeping as a server runs it, with the default usage retention.
fn housekeeping(app: &TestApp) -> services::housekeeping::Housekeeping {
    services::housekeeping::Housekeeping::new(app.services.db.clone(), 90)
}

/// Dropping an old partition, or making a new one, needs the events table to itself. Behind a
/// long read of the events (an analyst's query) retention used to wait as long as the read, and
/// PostgreSQL queued the writer's inserts behind it: usage stopped reaching PostgreSQL. The
/// same held the writer up at midnight, when it made the new day's partition. Housekeeping now
/// gives up after a short wait and tries again later, and makes the coming days' partitions
/// ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_gives_way_to_a_long_read_of_the_events() {
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    let app = TestApp::spawn().await;
    let (_, id) = app.key_with_quota(10, 10).await;
    let now = chrono::Utc::now().timestamp_millis();
    let today = chrono::Utc::now().date_naive();
    let mut writer = UsageWriter::new(&app.services);
    writer.write(&[event(id.0, now - 120 * 86_400_000), event(id.0, now)]).await.unwrap();
    housekeeping(&app).apply(today).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (1, 1));
    let tomorrow = today.succ_opt().unwrap();
    let next_midnight = tomorrow.and_hms_opt(0, 0, 1).unwrap().and_utc().timestamp_millis();
    // Another old event, from a writer that has not seen its day's partition dropped.
    UsageWriter::new(&app.services).write(&[event(id.0, now - 120 * 86_400_000)]).await.unwrap();

    let mut reader = AsyncPgConnection::establish(&app.config.database_url).await.unwrap();
    diesel::sql_query("BEGIN").execute(&mut reader).await.unwrap();
    diesel::sql_query("SELECT count(*) FROM api_key_usage").execute(&mut reader).await.unwrap();
    let started = std::time::Instant::now();
    let tried = tokio::time::timeout(Duration::from_secs(20), housekeeping(&app).apply(today))
        .await
        .expect("housekeeping waited for the reader");
    assert!(tried.is_err(), "nothing could be dropped while the table was read");
    assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
    // Meanwhile new usage is stored, also past midnight (the partition was made ahead).
    let stored = tokio::time::timeout(
        Duration::from_secs(20),
        writer.write(&[event(id.0, now + 1), event(id.0, next_midnight)]),
    )
    .await
    .expect("the writer waited for the reader");
    stored.unwrap();
    assert_eq!(totals(&app, id.0).await, (4, 4));

    diesel::sql_query("COMMIT").execute(&mut reader).await.unwrap();
    housekeeping(&app).apply(today).await.unwrap();
    assert_eq!(totals(&app, id.0).await, (3, 3));
}

/// Instances started together each make the coming days' partitions. The second waits for the
/// first and then finds them made: it used to fail ("already exists") and left its housekeeping
/// to try again ten minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_making_the_same_partition_at_once_both_succeed() {
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    let app = TestApp::spawn().await;
    let make = "SELECT km_ensure_usage_partition('2031-01-01')";
    let mut first = AsyncPgConnection::establish(&app.config.database_url).await.unwrap();
    diesel::sql_query("BEGIN").execute(&mut first).await.unwrap();
    diesel::sql_query(make).execute(&mut first).await.unwrap();
    let url = app.config.database_url.clone();
    let second = tokio::spawn(async move {
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        diesel::sql_query(make).execute(&mut conn).await
    });
    // Until the second waits for the first (not any other lock wait in the database).
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND query LIKE '%km_ensure_usage_partition(''2031-01-01'')%'";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.count(waiting).await < 1 {
        assert!(std::time::Instant::now() < deadline, "the second never waited for the first");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    diesel::sql_query("COMMIT").execute(&mut first).await.unwrap();
    second.await.unwrap().expect("the second instance finds the partition made");
    let made = "SELECT count(*) FROM pg_class WHERE relname = 'api_key_usage_p20310101'";
    assert_eq!(app.count(made).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_leaves_no_usage_behind() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(1_000, 10_000).await;
    // A second instance that we stop ourselves, with a usage stream of its own so that only its
    // own writer can move its usage.
    let mut config = app.config.clone();
    config.redis_namespace = format!("{}-solo", app.db_name);
    let services = keymeter::startup::connect(&config).await.unwrap();
    let instance = keymeter::startup::Application::with_services(&config, services).await.unwrap();
    let base = format!("http://{}", instance.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(instance.run_until(async move {
        let _ = stopped.await;
    }));
    // A dashboard left open on its live stream must not hold the stop up.
    let admin = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
    app.user(&admin, services::accounts::Role::Admin).await;
    let watcher = app.signed_in(&admin).await;
    let live = watcher.get(format!("{base}/dashboard/developers/api-keys/{id}/usage/live")).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let c = client();
    for _ in 0..40 {
        let res = c.get(format!("{base}/api/v1/delay/1")).bearer_auth(&secret).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("the server stops with a live stream open")
        .unwrap()
        .unwrap();
    drop(live);
    // Everything is in PostgreSQL the moment the instance has stopped.
    assert_eq!(app.event_count(id).await, 40);
}

/// The writer runs on a thread of its own: if its server is dropped without a graceful stop
/// (a test ending, a failed start), it must not go on polling Redis and PostgreSQL forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_writer_stops_when_its_server_is_gone() {
    let app = TestApp::spawn().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(UsageWriter::new(&app.services).run(stopped));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running.is_finished(), "the writer runs as long as its server does");
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the writer stops once its server is gone")
        .unwrap();
}

/// A stopping writer stores what the stream held when the stop came, and stops, though other
/// instances go on adding usage: it used to go on storing their traffic until the 30 s a stop
/// allows it ran out (a warning at every rolling restart under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_writer_stores_what_was_there_and_leaves_the_rest_to_the_others() {
    // Services only: no server, so no writer of its own moves this stream.
    let app = TestApp::spawn_without_mailer().await;
    let (_, before) = app.key_with_quota(10, 10).await;
    let (_, others) = app.key_with_quota(10, 10).await;
    let stream = services::usage::recorder::stream_name(&app.services.namespace);
    let now = chrono::Utc::now().timestamp_millis();
    let entry = move |key: Uuid, n: i64| serde_json::to_string(&vec![event(key, now + n)]).unwrap();
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let mut pipe = deadpool_redis::redis::pipe();
    for n in 0..300 {
        pipe.cmd("XADD").arg(&stream).arg("*").arg("b").arg(entry(before.0, n)).ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    // Other instances' recorders: ten entries a millisecond, as long as the test runs.
    let feeder = {
        let (redis, stream) = (app.services.redis.clone(), stream.clone());
        tokio::spawn(async move {
            let mut conn = services::redis_pool::conn(&redis).await.unwrap();
            for n in 0.. {
                let mut pipe = deadpool_redis::redis::pipe();
                for i in 0..10 {
                    pipe.cmd("XADD").arg(&stream).arg("*").arg("b").arg(entry(others.0, n * 10 + i)).ignore();
                }
                let _: () = pipe.query_async(&mut conn).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_stop, stopped) = tokio::sync::watch::channel(true);
    let ran = tokio::time::timeout(Duration::from_secs(10), UsageWriter::new(&app.services).run(stopped)).await;
    feeder.abort();
    assert!(ran.is_ok(), "the writer kept storing the others' usage after its stop");
    assert_eq!(app.event_count(before).await, 300, "what was there at the stop is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_on_every_instance_within_seconds() {
    let a = TestApp::spawn().await;
    let b = a.spawn_sibling().await;
    let (secret, id) = a.key_with_quota(1_000, 10_000).await;
    let c = client();
    for app in [&a, &b] {
        let res = c.get(app.url("/api/v1/ping")).bearer_auth(&secret).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    services::keys::api_keys::revoke(&a.services.db, id, &a.services.settings.public_url).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let res = c.get(b.url("/api/v1/ping")).bearer_auth(&secret).send().await.unwrap();
        if res.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still admitted after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two writers (two instances, or a writer and the recorder's fallback) storing batches that add
/// to the same rollup rows at the same moment: both succeed, neither waiting for the other in a
/// circle (a deadlock: PostgreSQL aborts one after a second), and the rollups count every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_adding_to_the_same_rollups_at_once_both_succeed() {
    let app = TestApp::spawn().await;
    let (_, id) = app.key_with_quota(1_000_000, 10_000_000).await;
    let now = chrono::Utc::now().timestamp_millis();
    // 300 endpoints: 300 rows in each rollup table that both batches add to.
    let batch = || -> Vec<UsageEvent> {
        (0..300)
            .map(|i| UsageEvent {
                endpoint: format!("/api/v1/e{i}"),
                ..common::ping_event(id.0, now, 200, 1_000, false)
            })
            .collect()
    };
    for round in 0..5 {
        let (mut a, mut b) = (UsageWriter::new(&app.services), UsageWriter::new(&app.services));
        let (first, second) = (batch(), batch());
        let (wrote_a, wrote_b) = tokio::join!(a.write(&first), b.write(&second));
        assert!(wrote_a.is_ok() && wrote_b.is_ok(), "round {round}: {wrote_a:?} {wrote_b:?}");
    }
    assert_eq!(totals(&app, id.0).await, (3_000, 3_000));
}

/// Each instance leaves a consumer in the writers' group; those long silent with nothing pending
/// are removed, one still holding an entry is not (its entry must stay claimable), nor the
/// caller's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_writers_leave_the_group_unless_they_hold_entries() {
    use deadpool_redis::redis;
    use services::usage::writer::{forget_departed_consumers, GROUP};
    let app = TestApp::spawn().await;
    let stream = format!("{}:consumers-test", app.db_name);
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let run = |args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd
    };
    let _: () = run(&["XGROUP", "CREATE", &stream, GROUP, "0", "MKSTREAM"]).query_async(&mut conn).await.unwrap();
    for name in ["gone", "holding", "me"] {
        let _: i64 = run(&["XGROUP", "CREATECONSUMER", &stream, GROUP, name]).query_async(&mut conn).await.unwrap();
    }
    let _: String = run(&["XADD", &stream, "*", "b", "[]"]).query_async(&mut conn).await.unwrap();
    let _: redis::Value =
        run(&["XREADGROUP", "GROUP", GROUP, "holding", "STREAMS", &stream, ">"]).query_async(&mut conn).await.unwrap();
    // Not silent long enough yet: all stay.
    assert_eq!(forget_departed_consumers(&app.services.redis, &stream, "me", 60_000).await.unwrap(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(forget_departed_consumers(&app.services.redis, &stream, "me", 200).await.unwrap(), 1);
    let consumers: Vec<std::collections::HashMap<String, redis::Value>> =
        run(&["XINFO", "CONSUMERS", &stream, GROUP]).query_async(&mut conn).await.unwrap();
    let mut names: Vec<String> = consumers.iter().map(|c| redis::from_redis_value(&c["name"]).unwrap()).collect();
    names.sort();
    assert_eq!(names, ["holding", "me"]);
}

/// `/metrics`, on its own listener: the calls this instance recorded by status class, where
/// their usage went, and the usage not yet stored, which grows and ages while PostgreSQL is
/// away and drains once it is back. The app's own port does not serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_calls_and_show_usage_waiting_while_postgres_is_away() {
    let app = TestApp::spawn_with(&[
        ("KEYMETER_METRICS_LISTEN", "127.0.0.1:0".into()),
        ("KEYMETER_MAX_CONNECTIONS", "40".into()),
    ])
    .await;
    let metrics = app.metrics_url.clone().expect("metrics are served when a listener is set");
    assert_eq!(client().get(app.url("/metrics")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let (secret, id) = app.key_with_quota(4, 100).await;
    // Calls on connections that close after each answer, and one connection held open (a
    // client's pool may keep one or two, depending on timing).
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let held = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
    let call = |path: &'static str, secret: String| {
        let (c, url) = (c.clone(), app.url(path));
        async move { c.get(url).bearer_auth(secret).send().await.unwrap().status().as_u16() }
    };
    let mut statuses = Vec::new();
    for path in ["/api/v1/ping", "/api/v1/status/404", "/api/v1/status/503", "/api/v1/ping", "/api/v1/ping"] {
        statuses.push(call(path, secret.clone()).await);
    }
    assert_eq!(statuses, [200, 404, 503, 200, 429]);
    // Not authenticated, so not counted anywhere.
    assert_eq!(call("/api/v1/ping", "km_live_nobody".into()).await, 401);
    app.wait_until_usage_stored().await;

    let m = scrape_until(&metrics, |m| {
        sample(m, "keymeter_usage_events_written_total") == 5.0 && sample(m, "keymeter_connections_open") == 1.0
    })
    .await;
    for (name, expected) in [
        ("keymeter_metered_requests_total{class=\"2xx\"}", 2.0),
        ("keymeter_metered_requests_total{class=\"4xx\"}", 2.0),
        ("keymeter_metered_requests_total{class=\"5xx\"}", 1.0),
        ("keymeter_throttled_requests_total", 1.0),
        ("keymeter_usage_events_handed_off_total{to=\"redis\"}", 5.0),
        ("keymeter_usage_events_handed_off_total{to=\"postgres\"}", 0.0),
        ("keymeter_usage_events_dropped_total", 0.0),
        ("keymeter_usage_backlog_entries", 0.0),
        ("keymeter_usage_backlog_oldest_seconds", 0.0),
        ("keymeter_usage_set_aside_entries", 0.0),
        ("keymeter_backend_up{backend=\"redis\"}", 1.0),
        ("keymeter_backend_up{backend=\"postgres\"}", 1.0),
        ("keymeter_mail_outbox_messages{state=\"given_up\"}", 0.0),
        ("keymeter_connections_max", 40.0),
        ("keymeter_quota_fallback", 0.0),
        ("keymeter_metered_request_duration_seconds_count", 5.0),
        ("keymeter_metered_request_duration_seconds_bucket{le=\"+Inf\"}", 5.0),
    ] {
        assert_eq!(sample(&m, name), expected, "{name}");
    }
    assert_eq!(app.event_count(id).await, 5, "the counters match what was stored");
    let stored =
        app.count(&format!("SELECT sum(latency_us)::bigint FROM api_key_usage WHERE api_key_id = '{id}'")).await;
    let sum = sample(&m, "keymeter_metered_request_duration_seconds_sum");
    assert!((sum - stored as f64 / 1e6).abs() < 1e-6, "the latency sum {sum} s is the stored events' {stored} µs");

    // PostgreSQL away: the call is answered (the key is cached), its usage waits in Redis.
    app.set_database_reachable(false).await;
    assert_eq!(call("/api/v1/ping", secret.clone()).await, 429);
    let m = scrape_until(&metrics, |m| sample(m, "keymeter_usage_backlog_oldest_seconds") >= 1.0).await;
    assert_eq!(sample(&m, "keymeter_backend_up{backend=\"postgres\"}"), 0.0);
    assert!(!m.contains_key("keymeter_mail_outbox_messages{state=\"waiting\"}"), "unknown, so left out");
    assert_eq!(sample(&m, "keymeter_usage_backlog_entries"), 1.0);
    assert!(sample(&m, "keymeter_usage_backlog_oldest_seconds") < 30.0);
    assert_eq!(sample(&m, "keymeter_usage_events_written_total"), 5.0);

    app.set_database_reachable(true).await;
    app.wait_until_usage_stored().await;
    let m = scrape_until(&metrics, |m| sample(m, "keymeter_usage_events_written_total") == 6.0).await;
    assert_eq!(sample(&m, "keymeter_usage_backlog_entries"), 0.0);
    assert_eq!(sample(&m, "keymeter_throttled_requests_total"), 2.0);
    assert_eq!(app.event_count(id).await, 6);

    // The held connection closed: none is open.
    drop(held);
    scrape_until(&metrics, |m| sample(m, "keymeter_connections_open") == 0.0).await;
}
