//! The backing services as deployments run them. Redis behind TLS (`rediss://`), as managed
//! Redis services with encryption in transit offer it, and PostgreSQL asking for TLS
//! (`sslmode=require`): the server trusts the certificate authorities of `SSL_CERT_FILE` (the
//! system's by default) and refuses a server whose certificate it cannot verify. Redis as a
//! user whose ACL allows only what the README lists.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::processes::{fixture, free_port, OwnRedis, ServerProcess};
use common::{client, TestApp};
use services::accounts::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_behind_tls_counts_quotas_and_carries_the_usage_stream() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(3, 100).await;
    let redis = OwnRedis::start_tls();
    let ca = fixture("smtp-test-ca.pem");
    let server = ServerProcess::start(&app, &redis.url(), &[("SSL_CERT_FILE", ca.to_str().unwrap())]).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let res = client().get(format!("{}/api/v1/ping", server.base)).bearer_auth(&secret).send().await.unwrap();
        let remaining = res.headers().get("x-ratelimit-remaining").map(|v| v.to_str().unwrap().to_owned());
        seen.push((res.status().as_u16(), remaining.unwrap_or_default()));
    }
    let expected = [(200, "2"), (200, "1"), (200, "0"), (429, "0")].map(|(s, r)| (s, r.to_owned()));
    assert_eq!(seen, expected);
    // Counted in the Redis behind TLS, and the usage stream there reached PostgreSQL.
    let counted = redis.cli(&["HGET", &format!("km:{{{}}}:quota", id.0), "hc"]).unwrap_or_default();
    assert_eq!(counted.trim(), "3");
    assert_eq!(app.wait_for_events(id, 4).await, 4);
}

/// Waits for the server `cmd` starts to give up; what it said on stderr.
async fn refused_to_start(mut cmd: std::process::Command) -> String {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the server kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_that_cannot_be_verified_stops_the_server() {
    let app = TestApp::spawn().await;
    let redis = OwnRedis::start_tls();
    // The system's authorities do not know the test CA.
    let untrusted = [("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")];
    let stderr = refused_to_start(ServerProcess::command(&app, &redis.url(), free_port(), &untrusted)).await;
    assert!(stderr.contains("Redis"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "refused for its certificate: {stderr}");
}

/// Managed PostgreSQL services ask for TLS: with `sslmode=require` the server's connections to
/// its database are TLS ones, the certificate verified against `SSL_CERT_FILE`'s authority, and
/// usage is stored through them; a certificate it cannot verify stops it (libpq's `require`
/// would take any).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_asking_for_tls_gets_it_verified() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(100, 1_000).await;
    let url = format!("{}?sslmode=require", app.config.database_url);
    let redis = common::env("KEYMETER_TEST_REDIS");
    let ca = fixture("smtp-test-ca.pem");
    let settings = [("DATABASE_URL", url.as_str()), ("SSL_CERT_FILE", ca.to_str().unwrap())];
    let server = ServerProcess::start(&app, &redis, &settings).await;
    for _ in 0..3 {
        let res = client().get(format!("{}/api/v1/ping", server.base)).bearer_auth(&secret).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(app.wait_for_events(id, 3).await, 3);
    // The test's own connections are plain ones (no `sslmode`): the TLS ones are the server's.
    let over_tls = format!(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = '{}' AND s.ssl AND s.version LIKE 'TLSv1.%'",
        app.db_name
    );
    assert!(app.count(&over_tls).await >= 1, "no TLS connection from the server");
    drop(server);

    // The system's authorities do not know the test CA.
    let untrusted = [("DATABASE_URL", url.as_str()), ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")];
    let stderr = refused_to_start(ServerProcess::command(&app, &redis, free_port(), &untrusted)).await;
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "refused for its certificate: {stderr}");
}

/// libpq's `verify-ca` takes a certificate that a known authority signed whatever name it
/// carries (a database reached under a private name), where `verify-full` and `require` refuse
/// it; a URL without a host name to check is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_checks_the_certificates_authority_and_verify_full_its_name_too() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(100, 1_000).await;
    let redis = common::env("KEYMETER_TEST_REDIS");
    let ca = fixture("smtp-test-ca.pem");
    let ca = ca.to_str().unwrap();
    // The test certificate is for 127.0.0.1 and localhost; the database is reached at
    // 127.0.0.1 under another name.
    let url = app.config.database_url.replacen("@127.0.0.1:", "@db.internal.example:", 1);
    let authority_only = format!("{url}?hostaddr=127.0.0.1&sslmode=verify-ca");
    let server = ServerProcess::start(&app, &redis, &[("DATABASE_URL", &authority_only), ("SSL_CERT_FILE", ca)]).await;
    let res = client().get(format!("{}/api/v1/ping", server.base)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.wait_for_events(id, 1).await, 1);
    drop(server);

    for mode in ["verify-full", "require"] {
        let with_name = format!("{url}?hostaddr=127.0.0.1&sslmode={mode}");
        let settings = [("DATABASE_URL", with_name.as_str()), ("SSL_CERT_FILE", ca)];
        let stderr = refused_to_start(ServerProcess::command(&app, &redis, free_port(), &settings)).await;
        assert!(
            stderr.contains("certificate not valid for name"),
            "{mode}: refused for the certificate's name: {stderr}"
        );
    }
    let no_name = app.config.database_url.replacen("@127.0.0.1:", "@:", 1) + "?hostaddr=127.0.0.1&sslmode=verify-ca";
    let settings = [("DATABASE_URL", no_name.as_str()), ("SSL_CERT_FILE", ca)];
    let stderr = refused_to_start(ServerProcess::command(&app, &redis, free_port(), &settings)).await;
    assert!(stderr.contains("hostaddr but no host"), "{stderr}");
}

/// The `ACL SETUSER` rules the README gives (Configuration, "A Redis user of its own"), read
/// from it: keys under `km:`, the commands listed and no others.
fn documented_acl() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let rules = readme.split("ACL SETUSER keymeter on >PASSWORD resetkeys").nth(1).expect("the README's ACL");
    let rules = &rules[..rules.find("```").expect("the end of the README's ACL block")];
    rules.split_whitespace().map(str::to_owned).collect()
}

/// An operator gives keymeter a Redis user of its own, limited to what the README lists: every
/// part that uses Redis works (each denial would be in Redis' `ACL LOG`, which stays empty).
/// (The README's list is what the test applies: a command missing there fails it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_user_with_only_the_documented_permissions_runs_everything() {
    let redis = OwnRedis::start();
    let rules = documented_acl();
    assert!(rules.len() > 30 && rules.contains(&"+xadd".to_owned()), "{rules:?}");
    let mut setuser = vec!["ACL", "SETUSER", "keymeter", "on", ">keymeter-redis-password", "resetkeys"];
    setuser.extend(rules.iter().map(String::as_str));
    // As the README says for Redis 7.2 and later (the client library names its connections).
    let info = redis.cli(&["INFO", "server"]).expect("redis-cli");
    let version = info.lines().find_map(|l| l.trim().strip_prefix("redis_version:")).unwrap_or("0").to_owned();
    let numbers: Vec<u32> = version.split('.').map(|n| n.parse().unwrap_or(0)).collect();
    if numbers.as_slice() >= [7, 2].as_slice() {
        setuser.push("+client|setinfo");
    }
    assert_eq!(redis.cli(&setuser).expect("redis-cli").trim(), "OK");
    let url = format!("redis://keymeter:keymeter-redis-password@127.0.0.1:{}", redis.port);
    // The default namespace (tests share a Redis, each its own namespace; this one is its own).
    let app = TestApp::spawn_with(&[
        ("REDIS_URL", url),
        ("KEYMETER_REDIS_NAMESPACE", "km".into()),
        ("KEYMETER_METRICS_LISTEN", "127.0.0.1:0".into()),
    ])
    .await;

    // Sign-in throttling: a wrong password is counted, the right one clears it.
    let ann = app.user("ann@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let c = client();
    assert_ne!(app.login(&c, "ann@example.com", "not the password").await.status(), 200);
    let merchant = app.signed_in("ann@example.com").await;
    // A password-reset link asked for (each client's asks are counted), and a lockout lifted.
    assert_eq!(app.rpc(&client(), "auth/password-reset/ask", &[("email", "ann@example.com")]).await.status(), 200);
    let redis_pool = &app.services.redis;
    services::accounts::lift_sign_in_lockout(redis_pool, "km", "ann@example.com").await.unwrap();
    let admin = app.signed_in("root@example.com").await;
    // A key created in the dashboard (its secret handed over once), metered by Redis' quota.
    let created: serde_json::Value = app.rpc(&merchant, "keys/create", &[("name", "shop")]).await.json().await.unwrap();
    let (key_id, secret) = (created["key"]["id"].as_str().unwrap(), created["secret"].as_str().unwrap());
    let id = services::keys::ApiKeyId::parse(key_id).unwrap();
    // The hand-off that brings a secret created without JavaScript to its page, once.
    let parsed = services::keys::ApiKeySecret::parse(secret).unwrap();
    let token = services::keys::secret_handoff::hold(redis_pool, ann.id, id, &parsed).await.unwrap();
    let taken = services::keys::secret_handoff::take(redis_pool, ann.id, &token).await.unwrap();
    assert_eq!(taken.map(|(key, secret)| (key, secret.expose().to_owned())), Some((id, secret.to_owned())));
    app.set_quota(id, 2, 100).await;
    let statuses = [(); 3].map(|_| app.call("/api/v1/ping", secret));
    let mut seen = Vec::new();
    for res in statuses {
        let res = res.await;
        seen.push((res.status().as_u16(), res.headers()["x-ratelimit-limit"].to_str().unwrap().to_owned()));
    }
    assert_eq!(seen, [200, 200, 429].map(|s| (s, "2".to_owned())), "decided by Redis");
    // An increase approved: the next call is admitted.
    let asked = app
        .rpc(
            &merchant,
            "quota-requests/create",
            &[("key_id", key_id), ("per_hour", "10"), ("per_day", ""), ("reason", "sale")],
        )
        .await;
    let asked: serde_json::Value = asked.json().await.unwrap();
    let decided = app
        .rpc(
            &admin,
            "admin/quota-requests/approve",
            &[("id", &asked["id"].to_string()), ("per_hour", "10"), ("per_day", "100"), ("note", "")],
        )
        .await;
    assert_eq!(decided.status(), 200, "{}", decided.text().await.unwrap());
    assert_eq!(app.call("/api/v1/ping", secret).await.status(), 200);
    // The usage stream reached PostgreSQL; the live charts read Redis.
    assert_eq!(app.wait_for_events(id, 4).await, 4);
    let overview: serde_json::Value =
        app.rpc(&merchant, "usage/overview", &[("id", key_id)]).await.json().await.unwrap();
    let live = &overview["live"];
    assert_eq!((live["from_storage"].as_bool(), live["hour"]["used"].as_i64()), (Some(false), Some(3)), "{live}");
    // Readiness and the metrics see a working Redis.
    let ready: serde_json::Value = client().get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["redis"], "ok", "{ready}");
    let m = common::scrape(app.metrics_url.as_deref().unwrap()).await;
    assert_eq!(common::sample(&m, "keymeter_backend_up{backend=\"redis\"}"), 1.0);
    // The writers' group forgets a writer gone for good (as every instance's writer does now and
    // then).
    let stream = services::usage::recorder::stream_name("km");
    let group = services::usage::writer::GROUP;
    assert_eq!(redis.cli(&["XGROUP", "CREATECONSUMER", &stream, group, "gone"]).expect("redis-cli").trim(), "1");
    let forgotten = services::usage::writer::forget_departed_consumers(redis_pool, &stream, "", 0).await.unwrap();
    assert!(forgotten >= 1, "{forgotten}");
    // An operator's `keymeter usage set-aside --replay` (nothing set aside here).
    services::usage::set_aside::replay(redis_pool, "km").await.unwrap();

    assert_eq!(redis.cli(&["ACL", "LOG"]).expect("redis-cli").trim(), "", "commands or keys Redis refused");
}
