//! API keys through the server functions and the metered API, as merchants and clients use them.

mod common;

use common::{client, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use services::accounts::Role;
use services::keys::{ApiKeyId, ApiKeySecret, KeyAuthenticator, KeyCheck, Quota, QuotaLimit};

async fn create_key(app: &TestApp, c: &reqwest::Client, name: &str) -> (String, String) {
    let res = app.rpc(c, "keys/create", &[("name", name)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    (body["key"]["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
}

async fn ping(app: &TestApp, header: (&str, String)) -> reqwest::Response {
    client().get(app.url("/api/v1/ping")).header(header.0, header.1).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_works_until_revoked() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let c = app.signed_in("ann@example.com").await;
    let (id, secret) = create_key(&app, &c, "Checkout server").await;
    assert!(secret.starts_with("km_live_"));

    // Listed with the default quota, the secret nowhere in sight.
    let list = app.rpc(&c, "keys/list", &[]).await.text().await.unwrap();
    assert!(!list.contains(&secret));
    let keys = app.key_list(&c).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], "Checkout server");
    assert_eq!(keys[0]["requests_per_hour"], 1000);
    assert_eq!(keys[0]["requests_per_day"], 10000);
    assert!(secret.starts_with(keys[0]["prefix"].as_str().unwrap()));

    let ok = ping(&app, ("authorization", format!("Bearer {secret}"))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = ping(&app, ("x-api-key", secret.clone())).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["key_id"], id.as_str());

    // Stored only as its SHA-256: no column of any table holds the secret, as text or bytes.
    let key_id = ApiKeyId::parse(&id).unwrap();
    assert_eq!(stored_secret_hash(&app, key_id, &secret).await, (true, 32));
    for (table, rows) in every_table_as_text(&app).await {
        assert!(!rows.contains(&secret) && !rows.contains(&hex(&secret)), "the secret is stored in {table}: {rows}");
    }
    // And the password only as an Argon2 hash.
    let users = app.texts("SELECT password_hash AS t FROM users").await;
    assert_eq!(users.len(), 1);
    assert!(users[0].starts_with("$argon2"), "{}", users[0]);
    assert!(!users[0].contains(common::PASSWORD), "{}", users[0]);

    assert_eq!(app.wait_for_events(key_id, 2).await, 2);
    let revoked = app.rpc(&c, "keys/revoke", &[("id", &id)]).await;
    assert_eq!(revoked.status(), StatusCode::OK);
    for header in [("authorization", format!("Bearer {secret}")), ("x-api-key", secret.clone())] {
        for _ in 0..3 {
            let denied = ping(&app, header.clone()).await;
            assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
            let body: Value = denied.json().await.unwrap();
            assert_eq!(body["error"]["code"], "revoked_api_key");
        }
    }
    // Refused, so counted nowhere: once a call of another key (made after them) is stored,
    // everything handed to the usage pipeline is, and the revoked key still has its two.
    let (other, other_secret) = create_key(&app, &c, "Other").await;
    assert_eq!(ping(&app, ("x-api-key", other_secret)).await.status(), StatusCode::OK);
    assert_eq!(app.wait_for_events(ApiKeyId::parse(&other).unwrap(), 1).await, 1);
    app.wait_until_usage_stored().await;
    assert_eq!(app.event_count(key_id).await, 2);
    let (hour, day, _) = app.services.quota.snapshot(key_id, &quota(1000, 10_000), 0).await.unwrap();
    assert_eq!((hour.used, day.used), (2, 2));
}

/// Whether the key's stored `secret_hash` is the SHA-256 of `secret` (as PostgreSQL computes
/// it), and its length in bytes.
async fn stored_secret_hash(app: &TestApp, id: ApiKeyId, secret: &str) -> (bool, i32) {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        matches: bool,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        len: i32,
    }
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let row: Row = diesel::sql_query(
        "SELECT secret_hash = sha256(convert_to($2, 'UTF8')) AS matches, length(secret_hash) AS len \
         FROM api_keys WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .bind::<diesel::sql_types::Text, _>(secret)
    .get_result(&mut conn)
    .await
    .unwrap();
    (row.matches, row.len)
}

/// Every table of the database with all its rows as text (bytes as `\x` and hex).
async fn every_table_as_text(app: &TestApp) -> Vec<(String, String)> {
    let tables = app
        .texts(
            "SELECT quote_ident(table_name) AS t FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .await;
    assert!(tables.contains(&"api_keys".to_owned()), "{tables:?}");
    let mut all = Vec::new();
    for table in tables {
        let rows = app.texts(&format!("SELECT coalesce(string_agg(r::text, E'\\n'), '') AS t FROM {table} r")).await;
        all.push((table, rows.concat()));
    }
    all
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_get_a_json_401() {
    let app = TestApp::spawn().await;
    let missing = client().get(app.url("/api/v1/ping")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["code"], "missing_api_key");

    let cases = [
        ("authorization", "Bearer nope".to_owned(), "malformed_api_key"),
        ("authorization", "Basic dXNlcjpwYXNz".to_owned(), "malformed_api_key"),
        ("x-api-key", format!("km_live_{}", "A".repeat(40)), "invalid_api_key"),
        ("x-api-key", format!("km_live_{}", "x".repeat(4000)), "malformed_api_key"),
    ];
    for (header, value, code) in cases {
        let res = ping(&app, (header, value.clone())).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{header}: {value:.40}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], code, "{header}: {value:.40}");
    }

    // Bytes that are not UTF-8 in the key header.
    let raw = reqwest::header::HeaderValue::from_bytes(b"km_live_\xc3\x28\xff").unwrap();
    let res = client().get(app.url("/api/v1/ping")).header("x-api-key", raw).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_cannot_touch_each_others_keys() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    app.user("mallory@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let mallory = app.signed_in("mallory@example.com").await;
    let (id, secret) = create_key(&app, &ann, "Ann's key").await;

    for path in ["keys/get", "keys/revoke"] {
        let res = app.rpc(&mallory, path, &[("id", &id)]).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let listed = app.key_list(&mallory).await;
    assert!(listed.is_empty());
    // The name shows nowhere on Mallory's page, however it might be escaped.
    let shown = ["Ann's key", "Ann&#x27;s key", "Ann&#39;s key", "Ann&apos;s key"];
    let page = app.page(&mallory, &format!("/dashboard/developers/api-keys/{id}")).await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    let html = page.text().await.unwrap();
    assert!(!shown.iter().any(|name| html.contains(name)), "{html}");

    // Still Ann's, still working; her page does show the name.
    let ok = ping(&app, ("authorization", format!("Bearer {secret}"))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let own = app.page(&ann, &format!("/dashboard/developers/api-keys/{id}")).await;
    assert_eq!(own.status(), StatusCode::OK);
    let html = own.text().await.unwrap();
    assert!(shown.iter().any(|name| html.contains(name)), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_calls_are_refused() {
    let app = TestApp::spawn().await;
    for path in ["keys/list", "keys/create", "admin/keys/search"] {
        let res = app.rpc(&client(), path, &[("name", "x")]).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_a_4xx_with_a_message_and_changes_nothing() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let c = app.signed_in("ann@example.com").await;

    let too_long = "n".repeat(101);
    for (args, expected) in [
        (vec![("name", "   ")], "Give the key a name."),
        (vec![("name", too_long.as_str())], "A key name can have at most 100 characters."),
        (vec![], "Invalid request: missing field `name`"),
    ] {
        let res = app.rpc(&c, "keys/create", &args).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{args:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["message"], expected, "{args:?}: {body}");
    }
    for id in ["not-a-uuid", "", "'; DROP TABLE api_keys; --"] {
        let res = app.rpc(&c, "keys/revoke", &[("id", id)]).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{id:?}");
    }
    // Bodies that cannot be read at all: not UTF-8, or over the 2 MB limit. Signed in or not.
    let huge = format!("name={}", "a".repeat(2_100_000));
    for (client, path, body, expected) in [
        (&c, "keys/create", b"name=\xff\xfe".to_vec(), "not valid form data"),
        (&client(), "auth/login", b"email=\xff\xfe".to_vec(), "not valid form data"),
        (&c, "keys/create", huge.into_bytes(), "too large"),
    ] {
        let res = client
            .post(app.url(&format!("/rpc/{path}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        let text = res.text().await.unwrap();
        assert!(text.contains(expected), "{path}: {text}");
    }
    let listed = app.key_list(&c).await;
    assert!(listed.is_empty());
}

fn row<'a>(keys: &'a [Value], name: &str) -> &'a Value {
    keys.iter().find(|k| k["name"] == name).unwrap_or_else(|| panic!("{name} listed: {keys:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_list_shows_the_current_use_of_each_quota() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let c = app.signed_in("ann@example.com").await;
    let (busy, secret) = create_key(&app, &c, "Busy").await;
    create_key(&app, &c, "Idle").await;
    let (old, _) = create_key(&app, &c, "Old").await;
    assert_eq!(app.rpc(&c, "keys/revoke", &[("id", &old)]).await.status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(ping(&app, ("authorization", format!("Bearer {secret}"))).await.status(), StatusCode::OK);
    }

    let keys = app.key_list(&c).await;
    assert_eq!(row(&keys, "Busy")["current_use"], serde_json::json!({ "hour": 3, "day": 3 }));
    assert_eq!(row(&keys, "Idle")["current_use"], serde_json::json!({ "hour": 0, "day": 0 }));
    assert_eq!(row(&keys, "Old")["current_use"], Value::Null, "a revoked key has no use to show");
    let page = app.page(&c, "/dashboard/developers/api-keys").await.text().await.unwrap();
    assert!(page.contains("3 / 1,000 this hour · 3 / 10,000 today"), "{page}");

    // Redis failing to answer for a key (here: its quota hash replaced by a string) leaves
    // that key with its quota alone; the list still loads.
    let quota_key = services::keys::quota_manager::quota_redis_key(services::keys::ApiKeyId::parse(&busy).unwrap());
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let _: () = deadpool_redis::redis::cmd("SET").arg(&quota_key).arg("broken").query_async(&mut conn).await.unwrap();
    let keys = app.key_list(&c).await;
    assert_eq!(row(&keys, "Busy")["current_use"], Value::Null);
    assert_eq!(row(&keys, "Busy")["requests_per_hour"], 1000);
    assert_eq!(row(&keys, "Idle")["current_use"], serde_json::json!({ "hour": 0, "day": 0 }));
    let page = app.page(&c, "/dashboard/developers/api-keys");
    let page = page.await.text().await.unwrap();
    assert!(page.contains("1,000/h · 10,000/day"), "{page}");
    let _: () = deadpool_redis::redis::cmd("DEL").arg(&quota_key).query_async(&mut conn).await.unwrap();
}

/// A key's quota version as PostgreSQL holds it (`updated_at` in ms, as the authenticator
/// reads it), after setting `updated_at` to `set` if given (to stamp it as a skewed node would).
async fn stored_version_ms(app: &TestApp, id: ApiKeyId, set: Option<&str>) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ms: i64,
    }
    const MS: &str = "floor(extract(epoch FROM updated_at) * 1000)::bigint AS ms";
    let sql = match set {
        Some(expr) => format!("UPDATE api_key_quotas SET updated_at = {expr} WHERE api_key_id = $1 RETURNING {MS}"),
        None => format!("SELECT {MS} FROM api_key_quotas WHERE api_key_id = $1"),
    };
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let row: Version =
        diesel::sql_query(sql).bind::<diesel::sql_types::Uuid, _>(id.0).get_result(&mut conn).await.unwrap();
    row.ms
}

fn quota(per_hour: i64, per_day: i64) -> Quota {
    Quota {
        per_hour: QuotaLimit::new(per_hour).unwrap(),
        per_day: QuotaLimit::new(per_day).unwrap(),
        burst_per_second: None,
    }
}

/// Two app nodes whose clocks differ: a change made on the one running behind must still win
/// over the older limits it replaces, on the very next request of every instance, even one
/// whose cache still holds the older limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_quota_wins_everywhere_after_a_change_stamped_by_a_clock_running_ahead() {
    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    let (secret, id) = app.key_with_quota(1000, 10_000).await;

    // The last change as a node whose clock runs an hour ahead stamped it (as every node did
    // while versions came from the app's clock), in PostgreSQL and in Redis.
    let ahead_ms = stored_version_ms(&app, id, Some("updated_at + interval '1 hour'")).await;
    app.services.quota.publish_limits(id, &quota(1000, 10_000), ahead_ms).await.unwrap();
    // The sibling has cached the key with those limits.
    let secret_parsed = ApiKeySecret::parse(&secret).unwrap();
    let KeyCheck::Active(stale) = sibling.services.keys.check(&secret_parsed).await.unwrap() else {
        panic!("the key is active")
    };
    assert_eq!((stale.quota.per_hour.get(), stale.quota_version_ms), (1000, ahead_ms));

    // Lowered on this node, whose clock is an hour behind that one.
    app.set_quota(id, 2, 10_000).await;

    // The sibling, still on its cached limits, is held to the new ones at once.
    let mut admitted = Vec::new();
    for _ in 0..3 {
        let d = sibling.services.quota.check_and_count(id, &stale.quota, stale.quota_version_ms).await.unwrap();
        assert_eq!(d.hour.limit, 2, "the newer limits win over the cached ones");
        admitted.push(d.admitted);
    }
    assert_eq!(admitted, [true, true, false]);
    // And so is every instance over HTTP (the stale limits were not written back).
    for instance in [&app, &sibling] {
        let res = ping(instance, ("authorization", format!("Bearer {secret}"))).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["x-ratelimit-limit"], "2");
    }
    // The version came from PostgreSQL, after the one it replaced.
    assert!(stored_version_ms(&app, id, None).await > ahead_ms);
}

/// Versions grow with every change of a key, however quickly they follow each other; and
/// limits published late (an older change, from a slower instance) leave newer ones alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_versions_grow_with_each_change_and_an_older_publish_leaves_newer_limits_alone() {
    let app = TestApp::spawn().await;
    let (_secret, id) = app.key_with_quota(1000, 10_000).await;
    let mut versions = vec![stored_version_ms(&app, id, None).await];
    for per_hour in [900, 800, 2] {
        app.set_quota(id, per_hour, 10_000).await;
        versions.push(stored_version_ms(&app, id, None).await);
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions must grow: {versions:?}");
    let newest = versions[3];

    // The 800 change, published only now.
    app.services.quota.publish_limits(id, &quota(800, 10_000), versions[2]).await.unwrap();
    // A caller with limits older still: the stored ones (2 per hour) win.
    let d = app.services.quota.check_and_count(id, &quota(1000, 10_000), versions[0]).await.unwrap();
    assert_eq!((d.hour.limit, d.admitted), (2, true));
    // Publishing the newest again changes nothing either.
    app.services.quota.publish_limits(id, &quota(2, 10_000), newest).await.unwrap();
    let d = app.services.quota.check_and_count(id, &quota(1000, 10_000), versions[0]).await.unwrap();
    assert_eq!((d.hour.limit, d.admitted), (2, true));
    let d = app.services.quota.check_and_count(id, &quota(1000, 10_000), versions[0]).await.unwrap();
    assert_eq!((d.hour.limit, d.admitted), (2, false));
}

/// Without JavaScript the create form's post is answered with a redirect: the secret reaches
/// the list page it lands on through a one-time token, never through a URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_without_javascript_shows_its_secret_once_on_the_list() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    app.user("bob@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let list_url = app.url("/dashboard/developers/api-keys");
    let post = ann
        .post(app.url("/rpc/keys/create"))
        .header("accept", "text/html")
        .header("referer", &list_url)
        .form(&[("name", "No script")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::FOUND);
    let location = post.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/dashboard/developers/api-keys?created="), "{location}");
    assert!(!location.contains("km_live_"), "{location}");
    let post_body = post.text().await.unwrap();
    // A whole secret in a page, if any (the key list also shows each key's short prefix).
    let secret_in = |html: &str| {
        html.match_indices("km_live_")
            .map(|(at, _)| {
                html[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>()
            })
            .find(|s| s.len() == "km_live_".len() + 40)
    };

    // Someone else with the URL gets nothing (and uses nothing up).
    let bob = app.signed_in("bob@example.com").await;
    assert_eq!(secret_in(&app.page(&bob, &location).await.text().await.unwrap()), None);

    let page = app.page(&ann, &location).await;
    assert_eq!(page.status(), StatusCode::OK);
    // A page with a secret on it is not kept by any cache, and no other site may frame it.
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let secret = secret_in(&page.text().await.unwrap()).expect("the new secret is on the page");
    assert_eq!(ping(&app, ("x-api-key", secret.clone())).await.status(), StatusCode::OK);
    assert!(!post_body.contains(&secret), "the redirect's body carries no secret");

    // Once only: the same URL again says the secret was shown already.
    let again = app.page(&ann, &location).await.text().await.unwrap();
    assert!(!again.contains(&secret));
    assert!(again.contains("shown only once"));
}

/// The list page a plain form post returns to shows the new secret every time, however the
/// server renders it (Leptos may render a page's parts twice; the secret is taken only once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_created_without_javascript_shows_its_secret() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let list_url = app.url("/dashboard/developers/api-keys");
    for round in 0..40 {
        let post = ann
            .post(app.url("/rpc/keys/create"))
            .header("accept", "text/html")
            .header("referer", &list_url)
            .form(&[("name", format!("No script {round}"))])
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::FOUND, "round {round}");
        let location = post.headers()["location"].to_str().unwrap().to_owned();
        let html = app.page(&ann, &location).await.text().await.unwrap();
        assert!(html.contains("data-testid=\"new-secret\""), "round {round}: the secret is missing");
        assert!(!html.contains("shown only once"), "round {round}");
    }
}

/// A merchant renames a key: the list, its page and the billing CSV name it anew. Bad names,
/// other people (an admin included: it is the owner's choice) and revoked keys change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_renames_a_key_and_the_new_name_shows_everywhere() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    app.user("mallory@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let ann = app.signed_in("ann@example.com").await;
    let (id, secret) = create_key(&app, &ann, "Checkout").await;
    assert_eq!(ping(&app, ("x-api-key", secret.clone())).await.status(), StatusCode::OK);

    let res = app.rpc(&ann, "keys/rename", &[("id", &id), ("name", "  Checkout (production) ")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let view: Value = res.json().await.unwrap();
    assert_eq!(view["name"], "Checkout (production)");
    assert_eq!(app.key_list(&ann).await[0]["name"], "Checkout (production)");
    let html = app.page(&ann, &format!("/dashboard/developers/api-keys/{id}")).await.text().await.unwrap();
    assert!(html.contains("<title>Checkout (production) · API keys · keymeter</title>"), "{html}");
    // The CSV names the key as it is called now, including the usage from before the rename.
    app.wait_until_usage_stored().await;
    let today = chrono::Utc::now().date_naive();
    let csv = ann
        .get(app.url(&format!("/dashboard/developers/api-keys/{id}/usage.csv?from={today}&to={today}&granularity=day")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv.lines().nth(1).unwrap_or_else(|| panic!("a row: {csv}"));
    assert!(row.contains(&format!(",{id},Checkout (production),GET,/api/v1/ping,1,")), "{csv}");

    let too_long = "n".repeat(101);
    let (mallory, admin) = (app.signed_in("mallory@example.com").await, app.signed_in("root@example.com").await);
    let refusals: [(&reqwest::Client, &str, &str, StatusCode, &str); 7] = [
        (&ann, &id, "   ", StatusCode::BAD_REQUEST, "Give the key a name."),
        (&ann, &id, "", StatusCode::BAD_REQUEST, "Give the key a name."),
        (&ann, &id, &too_long, StatusCode::BAD_REQUEST, "A key name can have at most 100 characters."),
        (&ann, &id, "two\nlines", StatusCode::BAD_REQUEST, "A key name is one line, without control characters."),
        (&ann, "not-a-key", "Other", StatusCode::NOT_FOUND, "Not found."),
        (&mallory, &id, "Mallory's now", StatusCode::NOT_FOUND, "Not found."),
        (&admin, &id, "Renamed by an admin", StatusCode::FORBIDDEN, "not allowed"),
    ];
    for (who, key, name, status, message) in refusals {
        assert_refused(app.rpc(who, "keys/rename", &[("id", key), ("name", name)]).await, status, message, "name")
            .await;
    }
    assert_eq!(app.key_list(&ann).await[0]["name"], "Checkout (production)");

    // A revoked key keeps the name it was revoked under.
    assert_eq!(app.rpc(&ann, "keys/revoke", &[("id", &id)]).await.status(), StatusCode::OK);
    let res = app.rpc(&ann, "keys/rename", &[("id", &id), ("name", "Old checkout")]).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["message"], "\u{201c}Checkout (production)\u{201d} is revoked: it keeps its name.");
    assert_eq!(app.key_list(&ann).await[0]["name"], "Checkout (production)");
}

/// A key's name is the merchant's text: in a page's `<title>` as anywhere else it must stay text.
/// (leptos_meta writes titles unescaped; an admin opening the key would have run the script.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_name_cannot_inject_markup_into_the_page_title() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let ann = app.signed_in("ann@example.com").await;
    let (id, _) = create_key(&app, &ann, "t</title><script>alert(7)</script>").await;
    let admin = app.signed_in("root@example.com").await;
    for path in [format!("/dashboard/developers/api-keys/{id}"), format!("/dashboard/developers/api-keys/{id}/usage")] {
        for who in [&ann, &admin] {
            let html = app.page(who, &path).await.text().await.unwrap();
            assert!(!html.contains("<script>alert(7)"), "{path}: {html}");
            let title = &html[html.find("<title>").unwrap()..html.find("</title>").unwrap()];
            assert!(title.contains("t&lt;/title&gt;&lt;script&gt;alert(7)&lt;/script&gt;"), "{path}: {title}");
        }
    }
}

/// Each page's Content-Security-Policy names a fresh nonce, and every script the page carries
/// has it: a script smuggled into the page without it would not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_run_only_their_own_scripts() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let mut nonces = Vec::new();
    for path in ["/login", "/dashboard/developers/api-keys", "/dashboard/developers/api-keys"] {
        let res = app.page(&ann, path).await;
        let policy = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
        let nonce = policy.split("'nonce-").nth(1).and_then(|rest| rest.split('\'').next()).unwrap().to_owned();
        assert!(policy.contains("'strict-dynamic'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        let html = res.text().await.unwrap();
        let scripts = html.matches("<script").count();
        assert!(scripts >= 2, "{path}: {html}");
        assert_eq!(html.matches(&format!("nonce=\"{nonce}\"")).count(), scripts, "{path}: {html}");
        nonces.push(nonce);
    }
    assert_ne!(nonces[1], nonces[2], "a nonce is never reused");
}

/// Pages keep answering while another instance starts in the same process. Building an instance
/// walks the app for its routes, which in Leptos parks any page resource first polled meanwhile
/// (process-wide, forever): a page would never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_answer_while_another_instance_starts_in_the_same_process() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Stops the starting thread however the test ends.
    struct Starting(std::sync::Arc<AtomicBool>);
    impl Drop for Starting {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }

    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let (id, _) = create_key(&app, &ann, "Checkout server").await;
    let starting = Starting(std::sync::Arc::new(AtomicBool::new(true)));
    let starter = {
        let (config, services, flag) = (app.config.clone(), app.services.clone(), starting.0.clone());
        std::thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                drop(keymeter::startup::router(&config, services.clone()));
            }
        })
    };
    let path = format!("/dashboard/developers/api-keys/{id}");
    for round in 0..60 {
        let html = tokio::time::timeout(Duration::from_secs(10), async {
            app.page(&ann, &path).await.text().await.expect("page body")
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: the key page did not answer within 10 s"));
        assert!(html.contains("Checkout server"), "round {round}: {html}");
    }
    drop(starting);
    starter.join().expect("starting thread");
}

/// Admins find keys among many: by owner, name or prefix, 100 a page. Before, `/admin` listed
/// every key of every merchant on one page (about 1 MB for 700 keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_find_keys_by_owner_name_or_prefix_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com", Role::Merchant).await;
    let bob = app.user("bob_smith@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let admin = app.signed_in("root@example.com").await;
    for i in 0..130 {
        let name = services::keys::KeyName::parse(&format!("Ann checkout {i}")).unwrap();
        services::keys::api_keys::create(&app.services.db, ann.id, &name).await.unwrap();
    }
    let name = services::keys::KeyName::parse("Bob 100% live").unwrap();
    let (bobs, _) = services::keys::api_keys::create(&app.services.db, bob.id, &name).await.unwrap();

    let search = |q: &str, page: u32| {
        let (app, admin) = (&app, &admin);
        let (q, page) = (q.to_owned(), page.to_string());
        async move {
            let found: Value =
                app.rpc(admin, "admin/keys/search", &[("q", &q), ("page", &page)]).await.json().await.unwrap();
            let names: Vec<String> =
                found["keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_owned()).collect();
            (names, found["more"] == true)
        }
    };
    let (first, more) = search("", 1).await;
    assert_eq!((first.len(), more), (100, true));
    let (second, more) = search("", 2).await;
    assert_eq!((second.len(), more), (31, false));
    assert!(second.contains(&"Bob 100% live".to_owned()), "by owner: Bob's after Ann's");
    assert_eq!(search("BOB_SMITH", 1).await, (vec!["Bob 100% live".to_owned()], false));
    assert_eq!(search("100%", 1).await.0, ["Bob 100% live"], "% is text, not a wildcard");
    assert_eq!(search("ann_example", 1).await.0, Vec::<String>::new(), "_ is text, not a wildcard");
    assert_eq!(search(&bobs.prefix, 1).await.0, ["Bob 100% live"]);
    // Once rolled, the old prefix still finds the key: a report of a leaked secret names it.
    let at_once = services::keys::RollOverlap::parse("0").unwrap();
    let (rolled, _) = services::keys::api_keys::roll_for(&app.services, bobs.id, &bob, at_once).await.unwrap();
    assert_ne!(rolled.prefix, bobs.prefix);
    assert_eq!(search(&bobs.prefix, 1).await.0, ["Bob 100% live"]);
    assert_eq!(search(&rolled.prefix, 1).await.0, ["Bob 100% live"]);
    assert_eq!(search("checkout 12", 1).await.0.len(), 11, "12 and 120–129");
    assert_eq!(search("nobody", 1).await, (vec![], false));
    // The page without JavaScript: the search form's GET.
    let page = app.page(&admin, "/admin?q=bob_smith").await.text().await.unwrap();
    assert!(page.contains("Bob 100% live") && !page.contains("Ann checkout"), "{page}");
    // The list says why an old prefix found the key.
    assert!(page.contains(&format!("rolled from <code>{}…</code>", bobs.prefix)), "{page}");
    // Text PostgreSQL cannot hold is bad input, on the page too.
    let nul = app.rpc(&admin, "admin/keys/search", &[("q", "abc\0def")]).await;
    assert_eq!(nul.status(), StatusCode::BAD_REQUEST);
    assert!(nul.text().await.unwrap().contains("The search cannot contain control characters."));
    assert_eq!(app.page(&admin, "/admin?q=%00").await.status(), StatusCode::BAD_REQUEST);
    let merchant = app.signed_in("ann@example.com").await;
    assert_eq!(app.rpc(&merchant, "admin/keys/search", &[]).await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_keys_come_a_page_at_a_time_the_active_ones_first() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com", Role::Merchant).await;
    let c = app.signed_in("ann@example.com").await;
    let mut ids = Vec::new();
    for i in 0..55 {
        let name = services::keys::KeyName::parse(&format!("Key {i}")).unwrap();
        ids.push(services::keys::api_keys::create(&app.services.db, ann.id, &name).await.unwrap().0.id);
    }
    for i in [3, 54] {
        services::keys::api_keys::revoke(&app.services.db, ids[i], &app.services.settings.public_url).await.unwrap();
    }

    let page = |n: &str| {
        let (app, c, n) = (&app, &c, n.to_owned());
        async move {
            let found: Value = app.rpc(c, "keys/list", &[("page", &n)]).await.json().await.unwrap();
            let names: Vec<String> =
                found["keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_owned()).collect();
            (names, found["more"] == true)
        }
    };
    let (first, more) = page("1").await;
    assert_eq!((first.len(), more), (50, true));
    assert_eq!(first[0], "Key 53", "the newest active key first, the newer revoked one behind");
    let (second, more) = page("2").await;
    assert_eq!(second, ["Key 2", "Key 1", "Key 0", "Key 54", "Key 3"].map(String::from));
    assert!(!more);
    assert_eq!(page("0").await.0, first, "page 0 is the first");
    assert_eq!(page("3").await, (vec![], false));
    assert_eq!(app.key_list(&c).await.len(), 50, "no page given: the first");
    assert_eq!(app.rpc(&c, "keys/list", &[("page", "two")]).await.status(), StatusCode::BAD_REQUEST);

    // The page, without JavaScript: links to the next and the previous page.
    let html = app.page(&c, "/dashboard/developers/api-keys").await.text().await.unwrap();
    assert!(html.contains("Key 53") && !html.contains("Key 54"), "{html}");
    assert!(html.contains(r#"href="/dashboard/developers/api-keys?page=2""#), "{html}");
    let html = app.page(&c, "/dashboard/developers/api-keys?page=2").await.text().await.unwrap();
    assert!(html.contains("Key 54") && !html.contains("Key 53"), "{html}");
    assert!(html.contains(r#"href="/dashboard/developers/api-keys""#) && !html.contains("?page=3"), "{html}");
    // Past the end (an old link): the way back to the first page, not an empty list.
    let html = app.page(&c, "/dashboard/developers/api-keys?page=9").await.text().await.unwrap();
    let past = html.split(r#"data-testid="past-end""#).nth(1).unwrap_or_else(|| panic!("{html}"));
    assert!(past[..past.find("</p>").unwrap()].contains(r#"href="/dashboard/developers/api-keys""#), "{past}");
    assert!(!html.contains("?page=8"), "no link to another empty page: {html}");
}

/// A server function's refusal: its status, a message containing `message`, and for bad input
/// (400) the form field it is about.
async fn assert_refused(res: reqwest::Response, status: StatusCode, message: &str, field: &str) {
    assert_eq!(res.status(), status, "{message}");
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains(message), "{message}: {body}");
    if status == StatusCode::BAD_REQUEST {
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}

/// Calls `/api/v1/ping` with `secret`: its status and, when refused, the error code.
async fn ping_as(app: &TestApp, secret: &str) -> (StatusCode, String) {
    let res = app.call("/api/v1/ping", secret).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
    (status, code)
}

async fn roll(app: &TestApp, c: &reqwest::Client, id: &str, hours: &str) -> Value {
    let res = app.rpc(c, "keys/roll", &[("id", id), ("old_secret_hours", hours)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

const ROLLED: (StatusCode, &str) = (StatusCode::UNAUTHORIZED, "rolled_api_key");

/// Rolling gives a key a new secret and keeps the key: its id, its quota count and its usage.
/// The old secret works for the overlap chosen, then gets its own 401, and is counted nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_key_keeps_its_quota_and_usage_and_its_old_secret_works_until_it_stops() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let (id, old) = create_key(&app, &ann, "Checkout").await;
    let key_id = ApiKeyId::parse(&id).unwrap();
    assert_eq!(ping_as(&app, &old).await.0, StatusCode::OK);

    let rolled = roll(&app, &ann, &id, "1").await;
    let new = rolled["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("km_live_") && new != old);
    assert_eq!(rolled["key"]["id"], id.as_str());
    assert!(new.starts_with(rolled["key"]["prefix"].as_str().unwrap()));
    let previous = &rolled["key"]["previous_secret"];
    assert!(old.starts_with(previous["prefix"].as_str().unwrap()), "{previous}");
    assert_eq!(previous["works"], true);
    assert!(previous["last_used_at"].is_null(), "{previous}");
    let stops = chrono::DateTime::parse_from_rfc3339(previous["expires_at"].as_str().unwrap()).unwrap();
    let in_an_hour = (stops.timestamp() - chrono::Utc::now().timestamp() - 3600).abs();
    assert!(in_an_hour < 60, "stops at {stops}");

    // Both secrets are the one key: same id, one count.
    for secret in [&new, &old] {
        let res = app.call("/api/v1/ping", secret).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.json::<Value>().await.unwrap()["key_id"], id.as_str());
    }
    let (hour, day, _) = app.services.quota.snapshot(key_id, &quota(1000, 10_000), 0).await.unwrap();
    assert_eq!((hour.used, day.used), (3, 3));
    // The key's page tells its owner that something still calls with the old secret.
    let started = std::time::Instant::now();
    let last_used = loop {
        let key: Value = app.rpc(&ann, "keys/get", &[("id", &id)]).await.json().await.unwrap();
        if let Some(at) = key["previous_secret"]["last_used_at"].as_str() {
            break chrono::DateTime::parse_from_rfc3339(at).unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the old secret's use is not shown: {key}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!((chrono::Utc::now().timestamp() - last_used.timestamp()).abs() < 60, "{last_used}");

    // Its time is up (as if an hour had passed): every instance reads the key again within the
    // cache's TTL and refuses it from then on, with a code that says what happened.
    app.run_sql("UPDATE api_keys SET previous_expires_at = now() - interval '1 second'").await;
    tokio::time::sleep(KeyAuthenticator::TTL + std::time::Duration::from_millis(100)).await;
    for _ in 0..3 {
        let (status, code) = ping_as(&app, &old).await;
        assert_eq!((status, code.as_str()), ROLLED);
    }
    assert_eq!(ping_as(&app, &new).await.0, StatusCode::OK);
    let key: Value = app.rpc(&ann, "keys/get", &[("id", &id)]).await.json().await.unwrap();
    assert_eq!(key["previous_secret"]["works"], false);
    assert!(key["rolled_at"].is_string(), "{key}");

    // Refused calls count nowhere: 4 admitted, 4 stored.
    let (hour, day, _) = app.services.quota.snapshot(key_id, &quota(1000, 10_000), 0).await.unwrap();
    assert_eq!((hour.used, day.used), (4, 4));
    assert_eq!(app.wait_for_events(key_id, 4).await, 4);
    app.wait_until_usage_stored().await;
    assert_eq!(app.event_count(key_id).await, 4);
}

/// A secret that leaked is rolled with no overlap: the instance that rolled it refuses it at
/// once, the others within seconds, though each had it cached as working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_at_once_stops_the_old_secret_here_at_once_and_everywhere_within_seconds() {
    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    app.user("ann@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let (id, old) = create_key(&app, &ann, "Checkout").await;
    assert_eq!(ping_as(&app, &old).await.0, StatusCode::OK);
    assert_eq!(ping_as(&sibling, &old).await.0, StatusCode::OK);

    let rolled = roll(&app, &ann, &id, "0").await;
    let new = rolled["secret"].as_str().unwrap().to_owned();
    assert_eq!(rolled["key"]["previous_secret"]["works"], false);
    let (status, code) = ping_as(&app, &old).await;
    assert_eq!((status, code.as_str()), ROLLED);

    let started = std::time::Instant::now();
    let refused_there = loop {
        let (status, code) = ping_as(&sibling, &old).await;
        if (status, code.as_str()) == ROLLED {
            break started.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the other instance still admits it");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(refused_there <= KeyAuthenticator::TTL + std::time::Duration::from_secs(1), "{refused_there:?}");
    assert_eq!(ping_as(&sibling, &new).await.0, StatusCode::OK);
    assert_eq!(ping_as(&app, &new).await.0, StatusCode::OK);
}

/// An instance that has read a previous secret's end enforces it itself: the secret stops on
/// time while PostgreSQL cannot be asked (the last known state of other keys stands in then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_secret_stops_on_time_while_postgresql_is_away() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let (id, old) = create_key(&app, &ann, "Checkout").await;
    let new = roll(&app, &ann, &id, "1").await["secret"].as_str().unwrap().to_owned();
    app.run_sql("UPDATE api_keys SET previous_expires_at = now() + interval '6 seconds'").await;
    let stops = std::time::Instant::now() + std::time::Duration::from_secs(6);
    // Read again (its cached entry is older than the TTL): it works, and ends in 6 s.
    tokio::time::sleep(KeyAuthenticator::TTL + std::time::Duration::from_millis(100)).await;
    assert_eq!(ping_as(&app, &old).await.0, StatusCode::OK);
    assert_eq!(ping_as(&app, &new).await.0, StatusCode::OK);

    app.set_database_reachable(false).await;
    tokio::time::sleep_until((stops + std::time::Duration::from_millis(300)).into()).await;
    let (status, code) = ping_as(&app, &old).await;
    assert_eq!((status, code.as_str()), ROLLED);
    assert_eq!(ping_as(&app, &new).await.0, StatusCode::OK, "the new secret goes on through the outage");
    app.set_database_reachable(true).await;
}

/// Only the owner rolls an active key, with an overlap of 0 to 168 hours; anything else is
/// refused and changes nothing. The owner can stop the previous secret early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_rolls_an_active_key_and_can_stop_the_old_secret_early() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    app.user("mallory@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let ann = app.signed_in("ann@example.com").await;
    let (mallory, admin) = (app.signed_in("mallory@example.com").await, app.signed_in("root@example.com").await);
    let (id, secret) = create_key(&app, &ann, "Checkout").await;

    let choice = "Choose how long the old secret keeps working: 0 to 168 whole hours.";
    let refusals: [(&reqwest::Client, &str, &str, StatusCode, &str); 8] = [
        (&ann, &id, "169", StatusCode::BAD_REQUEST, choice),
        (&ann, &id, "-1", StatusCode::BAD_REQUEST, choice),
        (&ann, &id, "soon", StatusCode::BAD_REQUEST, choice),
        (&ann, &id, "", StatusCode::BAD_REQUEST, choice),
        (&ann, &id, "1.5", StatusCode::BAD_REQUEST, choice),
        (&ann, "not-a-key", "1", StatusCode::NOT_FOUND, "Not found."),
        (&mallory, &id, "0", StatusCode::NOT_FOUND, "Not found."),
        (&admin, &id, "0", StatusCode::FORBIDDEN, "not allowed"),
    ];
    for (who, key, hours, status, message) in refusals {
        let res = app.rpc(who, "keys/roll", &[("id", key), ("old_secret_hours", hours)]).await;
        assert_refused(res, status, message, "old_secret_hours").await;
    }
    let key: Value = app.rpc(&ann, "keys/get", &[("id", &id)]).await.json().await.unwrap();
    assert!(key["rolled_at"].is_null() && key["previous_secret"].is_null(), "{key}");
    assert_eq!(ping_as(&app, &secret).await.0, StatusCode::OK);

    // A day's overlap. Nobody else can end it or roll again (an admin sees the key: 403).
    let first = roll(&app, &ann, &id, "24").await["secret"].as_str().unwrap().to_owned();
    let shown = &secret[..14];
    for (who, status) in [(&mallory, StatusCode::NOT_FOUND), (&admin, StatusCode::FORBIDDEN)] {
        assert_eq!(app.rpc(who, "keys/end-overlap", &[("id", &id), ("prefix", shown)]).await.status(), status);
        let res = app.rpc(who, "keys/roll", &[("id", &id), ("old_secret_hours", "0")]).await;
        assert_eq!(res.status(), status);
    }
    assert_eq!(ping_as(&app, &secret).await.0, StatusCode::OK);
    assert_eq!(ping_as(&app, &first).await.0, StatusCode::OK);

    // The owner stops it early: refused at once.
    let res = app.rpc(&ann, "keys/end-overlap", &[("id", &id), ("prefix", shown)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["previous_secret"]["works"], false);
    let (status, code) = ping_as(&app, &secret).await;
    assert_eq!((status, code.as_str()), ROLLED);
    let again = app.rpc(&ann, "keys/end-overlap", &[("id", &id), ("prefix", shown)]).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(ping_as(&app, &first).await.0, StatusCode::OK);

    // Rolling again while the previous secret still works stops that one: a key answers to two
    // secrets at most.
    let second = roll(&app, &ann, &id, "24").await["secret"].as_str().unwrap().to_owned();
    assert_eq!(ping_as(&app, &first).await.0, StatusCode::OK);
    let third = roll(&app, &ann, &id, "24").await["secret"].as_str().unwrap().to_owned();
    // The one discarded stops at once here, though this instance had it as working for a day
    // (once read again it is unknown, so which 401 depends on timing).
    assert_eq!(ping_as(&app, &first).await.0, StatusCode::UNAUTHORIZED);
    tokio::time::sleep(KeyAuthenticator::TTL + std::time::Duration::from_millis(100)).await;
    let (status, code) = ping_as(&app, &first).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid_api_key"));
    for secret in [&second, &third] {
        assert_eq!(ping_as(&app, secret).await.0, StatusCode::OK);
    }
    // "Stop it now" names the secret it was shown: once the key was rolled again, it is gone,
    // and the one now previous is not touched.
    let stale = app.rpc(&ann, "keys/end-overlap", &[("id", &id), ("prefix", &first[..14])]).await;
    assert_refused(stale, StatusCode::CONFLICT, "is no longer this key's previous secret", "").await;
    assert_eq!(ping_as(&app, &second).await.0, StatusCode::OK);

    // A revoked key cannot be rolled, and none of its secrets works.
    assert_eq!(app.rpc(&ann, "keys/revoke", &[("id", &id)]).await.status(), StatusCode::OK);
    let res = app.rpc(&ann, "keys/roll", &[("id", &id), ("old_secret_hours", "0")]).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["message"], "\u{201c}Checkout\u{201d} is revoked: it cannot be rolled.");
    for secret in [&second, &third] {
        let (status, code) = ping_as(&app, secret).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "revoked_api_key"));
    }
}

/// Without JavaScript the roll's post is redirected to the key's page, which shows the new
/// secret once (it never goes into the URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rolled_without_javascript_shows_its_new_secret_once_on_its_page() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let ann = app.signed_in("ann@example.com").await;
    let (id, old) = create_key(&app, &ann, "Checkout").await;
    let page_url = app.url(&format!("/dashboard/developers/api-keys/{id}"));
    let post = ann
        .post(app.url("/rpc/keys/roll"))
        .header("accept", "text/html")
        .header("referer", &page_url)
        .form(&[("id", id.as_str()), ("old_secret_hours", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::FOUND);
    let location = post.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("/dashboard/developers/api-keys/{id}?rolled=")), "{location}");
    assert!(!location.contains("km_live_"), "{location}");

    let html = app.page(&ann, &location).await.text().await.unwrap();
    let at = html.find("data-testid=\"new-secret\">").expect("the new secret is on the page") + 25;
    let secret: String = html[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    assert_eq!(ping_as(&app, &secret).await.0, StatusCode::OK);
    let (status, code) = ping_as(&app, &old).await;
    assert_eq!((status, code.as_str()), ROLLED);

    let again = app.page(&ann, &location).await.text().await.unwrap();
    assert!(!again.contains(&secret));
    assert!(again.contains("this one is not shown again"), "{again}");
}
