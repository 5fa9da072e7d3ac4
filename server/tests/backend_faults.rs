//! A PostgreSQL that hangs or is gone, as the metered API and the readiness probe see it.

mod common;

use std::time::{Duration, Instant};

use common::{client, TestApp};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use reqwest::StatusCode;
use serde_json::{json, Value};
use services::keys::{ApiKeySecret, KeyAuthenticator, KeyCheck};

/// A metered call, given up after `limit` (a hang is a failure here, not a stuck test).
async fn ping_within(app: &TestApp, secret: &str, limit: Duration) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let call = client().get(app.url("/api/v1/ping")).bearer_auth(secret).send();
    let res = tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: the key lookup waits for PostgreSQL"))
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null), started.elapsed())
}

/// PostgreSQL accepts the key lookup and does not answer (here: a lock the test holds on
/// `api_keys`, as a long migration or a stuck transaction would): a key whose cache entry has
/// expired is answered from its last known state, and an unknown key gets a JSON 503, both
/// within the lookup timeout, not when the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_does_not_hold_metered_requests() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(1000, 10_000).await;
    let bound = KeyAuthenticator::LOOKUP_TIMEOUT + Duration::from_secs(2);
    assert_eq!(ping_within(&app, &secret, bound).await.0, StatusCode::OK);
    // Past the cache entry's life: the next call asks PostgreSQL again.
    tokio::time::sleep(KeyAuthenticator::TTL + Duration::from_millis(200)).await;

    let mut locker = lock_api_keys(&app).await;

    let (status, _, took) = ping_within(&app, &secret, Duration::from_secs(10)).await;
    assert_eq!(status, StatusCode::OK, "the last known state stands in");
    assert!(took < bound, "answered after {took:?}");
    // Within the next TTL the stale answer serves without asking PostgreSQL again (which
    // would take the whole lookup timeout).
    let (status, _, took) = ping_within(&app, &secret, Duration::from_secs(10)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(took < KeyAuthenticator::LOOKUP_TIMEOUT, "answered after {took:?}");

    let unknown = ApiKeySecret::generate();
    let (status, body, took) = ping_within(&app, unknown.expose(), Duration::from_secs(10)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(took < bound, "answered after {took:?}");

    diesel::sql_query("ROLLBACK").execute(&mut locker).await.unwrap();
    // Once PostgreSQL answers again, so does the lookup: the unknown key is a 401 again.
    let mut last = StatusCode::OK;
    for _ in 0..50 {
        last = ping_within(&app, unknown.expose(), Duration::from_secs(10)).await.0;
        if last == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, StatusCode::UNAUTHORIZED);

    // The call that waited for the lookup is stored with that wait in its latency: it is what
    // its client saw.
    assert_eq!(app.wait_for_events(id, 3).await, 3);
    let slowest = format!("SELECT max(latency_us) FROM api_key_usage WHERE api_key_id = '{}'", id.0);
    let slowest = Duration::from_micros(u64::try_from(app.count(&slowest).await).unwrap());
    assert!(slowest >= KeyAuthenticator::LOOKUP_TIMEOUT, "stored latency {slowest:?}");
}

/// Takes an exclusive lock on `api_keys` in a transaction of its own: key lookups queue behind
/// it as behind a long migration. Dropped or rolled back, the lock goes.
async fn lock_api_keys(app: &TestApp) -> AsyncPgConnection {
    let mut locker = AsyncPgConnection::establish(&app.config.database_url).await.unwrap();
    diesel::sql_query("BEGIN").execute(&mut locker).await.unwrap();
    diesel::sql_query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await.unwrap();
    locker
}

/// A key's last known state stands in for PostgreSQL for a limited time from when PostgreSQL
/// last confirmed it, however busy the key is meanwhile: a key revoked while this instance
/// cannot reach PostgreSQL stops working here. (Each failed lookup used to restart the limit,
/// so a key used every few seconds stood in for as long as the outage lasted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_known_state_stands_in_for_a_limited_time_however_busy_the_key() {
    use services::ServiceError;
    let app = TestApp::spawn().await;
    let (secret, _) = app.key_with_quota(1000, 10_000).await;
    let secret = ApiKeySecret::parse(&secret).unwrap();
    // Longer than a TTL and a lookup's timeout: a failed lookup restarting it kept it alive.
    let limit = KeyAuthenticator::TTL + KeyAuthenticator::LOOKUP_TIMEOUT + Duration::from_secs(1);
    let keys = KeyAuthenticator::new(app.services.db.clone()).with_stale_limit(limit);
    assert!(matches!(keys.check(&secret).await, Ok(KeyCheck::Active(_))));
    let confirmed = Instant::now();

    let mut locker = lock_api_keys(&app).await;
    let refused_after = loop {
        match keys.check(&secret).await {
            Ok(KeyCheck::Active(_)) => {
                let stood_in = confirmed.elapsed();
                assert!(stood_in < limit * 3, "still standing in after {stood_in:?} (limit {limit:?})");
            }
            Err(ServiceError::DatabaseUnavailable(_)) => break confirmed.elapsed(),
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(refused_after >= limit, "refused after {refused_after:?}, within the limit {limit:?}");
    diesel::sql_query("ROLLBACK").execute(&mut locker).await.unwrap();
    assert!(matches!(keys.check(&secret).await, Ok(KeyCheck::Active(_))), "confirmed again once PostgreSQL answers");
}

/// Anyone can send well-formed made-up keys, each a lookup in PostgreSQL. While PostgreSQL is
/// slow to answer them (here: hung on a lock), a flood of them holds at most half of the
/// database pool; the rest stays for pages, sign-in and the usage writer (it took them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_keys_hold_at_most_half_of_the_database_pool() {
    let app = TestApp::spawn_with(&[("KEYMETER_DB_POOL_SIZE", "8".into())]).await;
    app.user("ann@example.com", services::accounts::Role::Merchant).await;
    let mut locker = lock_api_keys(&app).await;
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let url = app.url("/api/v1/ping");
            tokio::spawn(async move {
                let made_up = ApiKeySecret::generate();
                client().get(url).bearer_auth(made_up.expose()).send().await.map(|res| res.status())
            })
        })
        .collect();
    // Lookups stuck behind the lock, seen from a connection of the test's own.
    let mut watcher = AsyncPgConnection::establish(&app.config.database_url).await.unwrap();
    let mut most = 0;
    for _ in 0..12 {
        #[derive(diesel::QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let waiting: Waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE '%api_keys%'",
        )
        .get_result(&mut watcher)
        .await
        .unwrap();
        most = most.max(waiting.n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((1..=4).contains(&most), "{most} lookups held connections of a pool of 8");
    // Sign-in still gets a connection meanwhile (pages of keys would wait for the lock).
    let signed_in = app.login(&client(), "ann@example.com", common::PASSWORD).await;
    assert_eq!(signed_in.status(), StatusCode::FOUND);

    diesel::sql_query("ROLLBACK").execute(&mut locker).await.unwrap();
    for call in flood {
        let status = call.await.unwrap().unwrap();
        assert!(status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::UNAUTHORIZED, "{status}");
    }
}

/// Made-up keys past the bound of lookups are shed as such, not reported as PostgreSQL failing:
/// a flood must not read in the log as a database outage (and each is logged once in a while,
/// not per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_past_their_bound_are_shed_not_blamed_on_the_database() {
    use services::ServiceError;
    let app = TestApp::spawn_with(&[("KEYMETER_DB_POOL_SIZE", "2".into())]).await;
    let keys = std::sync::Arc::new(KeyAuthenticator::new(app.services.db.clone()));
    let mut locker = lock_api_keys(&app).await;
    // One place (half a pool of 2): the first lookup takes it and hangs on the lock.
    let lookups: Vec<_> = (0..10)
        .map(|_| {
            let keys = keys.clone();
            tokio::spawn(async move { keys.check(&ApiKeySecret::generate()).await })
        })
        .collect();
    let (mut shed, mut unavailable) = (0, 0);
    for lookup in lookups {
        match lookup.await.unwrap() {
            Err(ServiceError::Overloaded(_)) => shed += 1,
            Err(ServiceError::DatabaseUnavailable(_)) => unavailable += 1,
            other => panic!("a made-up key's lookup during the hang: {other:?}"),
        }
    }
    assert!(unavailable >= 1 && shed >= 5, "{unavailable} timed out in PostgreSQL, {shed} shed");
    diesel::sql_query("ROLLBACK").execute(&mut locker).await.unwrap();
}

/// Many requests at once with a key whose cache entry expired, while PostgreSQL hangs: one
/// lookup goes to PostgreSQL for all of them (not one per request, which would tie up a pooled
/// connection each and pile up behind the lock), and all are answered from the last known state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_share_its_lookup() {
    let app = TestApp::spawn().await;
    let (secret, _id) = app.key_with_quota(1000, 10_000).await;
    assert_eq!(ping_within(&app, &secret, Duration::from_secs(5)).await.0, StatusCode::OK);
    tokio::time::sleep(KeyAuthenticator::TTL + Duration::from_millis(200)).await;

    let locker = lock_api_keys(&app).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let (app_url, secret) = (app.url("/api/v1/ping"), secret.clone());
            tokio::spawn(async move { client().get(app_url).bearer_auth(secret).send().await.map(|r| r.status()) })
        })
        .collect();
    // Watched while the lookup waits: the most key lookups waiting in PostgreSQL at once.
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%secret_hash%'";
    let mut most = 0;
    while started.elapsed() < KeyAuthenticator::LOOKUP_TIMEOUT * 9 / 10 {
        most = most.max(app.count(waiting).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 1, "key lookups waiting in PostgreSQL at once");
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), StatusCode::OK, "the last known state stands in");
    }
    drop(locker);
}

/// PostgreSQL gone while calls come in: they are answered, and their usage, held meanwhile,
/// is all stored once PostgreSQL is back (DESIGN: nothing lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_made_while_postgresql_is_gone_is_stored_when_it_returns() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(1000, 10_000).await;
    assert_eq!(ping_within(&app, &secret, Duration::from_secs(5)).await.0, StatusCode::OK);
    app.wait_until_usage_stored().await;
    assert_eq!(app.event_count(id).await, 1);

    app.set_database_reachable(false).await;
    for _ in 0..20 {
        let (status, body, _) = ping_within(&app, &secret, Duration::from_secs(10)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // They wait in Redis: the writer has read them and could not store them (read, not
    // acknowledged).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if app.usage_stream_groups().await.iter().any(|(pending, _)| pending.is_some_and(|n| n > 0)) {
            break;
        }
        assert!(Instant::now() < deadline, "the writer never tried to store the outage's usage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.set_database_reachable(true).await;

    app.wait_until_usage_stored().await;
    assert_eq!(app.event_count(id).await, 21);
    let hourly = format!("SELECT sum(requests) FROM api_key_usage_hour WHERE api_key_id = '{}'", id.0);
    assert_eq!(app.count(&hourly).await, 21, "the rollups count them too");
}

/// A flood of made-up keys (each one looked up once and remembered as unknown) fills the
/// cache; it must not push out what this instance knows of real keys, which stands in while
/// PostgreSQL cannot answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_keys_do_not_push_real_keys_out_of_the_cache() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(1000, 10_000).await;
    let secret = ApiKeySecret::parse(&secret).unwrap();
    let keys = KeyAuthenticator::with_capacity(app.services.db.clone(), 8);
    assert!(matches!(keys.check(&secret).await.unwrap(), KeyCheck::Active(k) if k.id == id));
    for _ in 0..40 {
        assert_eq!(keys.check(&ApiKeySecret::generate()).await.unwrap(), KeyCheck::Unknown);
    }
    tokio::time::sleep(KeyAuthenticator::TTL + Duration::from_millis(200)).await;

    let _locker = lock_api_keys(&app).await;
    let started = Instant::now();
    let check = keys.check(&secret).await;
    assert!(matches!(check, Ok(KeyCheck::Active(k)) if k.id == id), "{check:?}");
    assert!(started.elapsed() < KeyAuthenticator::LOOKUP_TIMEOUT + Duration::from_secs(2));
    // A made-up key has no last known state: PostgreSQL's silence is an error, not a 401.
    assert!(keys.check(&ApiKeySecret::generate()).await.is_err());
}

/// Anyone may call `/readyz`: it says which dependency is down and nothing about why (the
/// error, with host names and users, goes to the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_what_is_down_without_details() {
    let app = TestApp::spawn().await;
    let ready = client().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap(), json!({ "status": "ok", "postgres": "ok", "redis": "ok" }));

    // This test's database goes away: no new connections, the open ones ended.
    app.set_database_reachable(false).await;

    // Still in rotation (metered calls with known keys keep being answered), but it says so.
    let res = client().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    let degraded = json!({ "status": "degraded", "postgres": "down", "redis": "ok" });
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), degraded, "{text}");

    app.set_database_reachable(true).await;
    let mut last = Value::Null;
    for _ in 0..50 {
        last = client().get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
        if last["status"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"], "ok");
}

/// A pooled connection whose caller gave up on a hung query, then closed (as the pool does
/// when its check fails): PostgreSQL ends its backend within a couple of seconds instead of
/// letting it wait for the lock as long as the lock lasts, so a long hang cannot use up the
/// server's connection slots one abandoned lookup at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_given_up_on_does_not_keep_waiting_in_postgresql() {
    #[derive(diesel::QueryableByName)]
    struct Number {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let app = TestApp::spawn().await;
    let url = &app.config.database_url;
    let mut locker = lock_api_keys(&app).await;

    let pool = services::db::pool(url, 1).unwrap();
    let mut conn = pool.get().await.unwrap();
    let pid =
        diesel::sql_query("SELECT pg_backend_pid()::bigint AS n").get_result::<Number>(&mut conn).await.unwrap().n;
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        diesel::sql_query("SELECT count(*) FROM api_keys").execute(&mut conn),
    )
    .await;
    assert!(waited.is_err(), "the query waits for the lock");
    drop(services::db::DbConn::take(conn));

    let mut alive = 1;
    for _ in 0..40 {
        alive = app.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).await;
        if alive == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alive, 0, "the backend still waits for a lock its client gave up on");
    diesel::sql_query("ROLLBACK").execute(&mut locker).await.unwrap();
}

/// A change to one key on this instance (a raised quota, a revocation) used to empty the whole
/// key cache: a PostgreSQL outage soon after then answered 503 to every other key, which had
/// nothing left to stand in for the database. Only the changed key's entry changes now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_one_key_leaves_the_others_working_through_a_database_outage() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", services::accounts::Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let mut keys = Vec::new();
    for name in ["untouched", "raised", "revoked"] {
        let created: Value = app.rpc(&ann, "keys/create", &[("name", name)]).await.json().await.unwrap();
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert_eq!(ping_within(&app, &secret, Duration::from_secs(10)).await.0, StatusCode::OK);
        keys.push((secret, created["key"]["id"].as_str().unwrap().to_owned()));
    }
    let [(untouched, _), (raised, raised_id), (revoked, revoked_id)] = &keys[..] else { unreachable!() };
    app.set_quota(services::keys::ApiKeyId::parse(raised_id).unwrap(), 5_000, 50_000).await;
    assert!(app.rpc(&ann, "keys/revoke", &[("id", revoked_id)]).await.status().is_success());

    app.set_database_reachable(false).await;
    let outage = Duration::from_secs(10);
    let (status, body, _) = ping_within(&app, untouched, outage).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ping_within(&app, raised, outage).await.0, StatusCode::OK);
    assert_eq!(ping_within(&app, revoked, outage).await.0, StatusCode::UNAUTHORIZED);
    // Past the cache entries' life the last known states still stand in.
    tokio::time::sleep(KeyAuthenticator::TTL + Duration::from_millis(200)).await;
    assert_eq!(ping_within(&app, untouched, outage).await.0, StatusCode::OK);
    assert_eq!(ping_within(&app, revoked, outage).await.0, StatusCode::UNAUTHORIZED);
    app.set_database_reachable(true).await;
}
