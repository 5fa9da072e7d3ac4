//! Redis behind TLS (`rediss://`), as managed Redis services with encryption in transit offer
//! it: the server meters through it, trusting the certificate authorities of `SSL_CERT_FILE`
//! (the system's by default), and refuses a Redis whose certificate it cannot verify.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::processes::{fixture, free_port, OwnRedis, ServerProcess};
use common::{client, TestApp};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_that_cannot_be_verified_stops_the_server() {
    let app = TestApp::spawn().await;
    let redis = OwnRedis::start_tls();
    // The system's authorities do not know the test CA.
    let mut cmd = ServerProcess::command(
        &app,
        &redis.url(),
        free_port(),
        &[("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")],
    );
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the server kept running against a Redis it cannot verify");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("Redis"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "refused for its certificate: {stderr}");
}
