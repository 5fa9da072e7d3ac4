//! Client connections as the server limits them: slow or silent clients are let go, and the
//! number served at once is capped (without this, half-sent requests held an instance until it
//! ran out of file descriptors and stopped accepting anyone).

mod common;

use std::time::{Duration, Instant};

use common::processes::ServerProcess;
use common::{env, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server whose clients get one second.
async fn impatient_app(extra: &[(&'static str, String)]) -> TestApp {
    let mut settings = vec![("KEYMETER_CLIENT_TIMEOUT_SECS", "1".to_owned())];
    settings.extend_from_slice(extra);
    TestApp::spawn_with(&settings).await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.expect("connect")
}

/// Reads until the server closes the connection (end of stream or a reset) and returns how long
/// that took and what was received; fails the test if it is still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Duration, String) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}; received {:?}", String::from_utf8_lossy(&received)),
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// One request on an open connection; returns the response's head (up to its blank line).
async fn exchange(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert_eq!(n, 1, "closed mid-answer: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ASCII head");
    // /healthz answers a short body with a length: read it so the next answer starts clean.
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("body");
    head
}

const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: keymeter\r\n\r\n";

/// The head of a metered upload of `length` bytes to `/api/v1/echo`.
fn echo_head(secret: &str, length: usize) -> String {
    format!(
        "POST /api/v1/echo HTTP/1.1\r\nHost: keymeter\r\nAuthorization: Bearer {secret}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// The statuses stored for the key's calls, in order.
async fn stored_statuses(app: &TestApp, id: services::keys::ApiKeyId) -> Vec<String> {
    let query = format!("SELECT status::text AS t FROM api_key_usage WHERE api_key_id = '{}' ORDER BY status", id.0);
    app.texts(&query).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_headers_never_finish_is_closed() {
    let app = impatient_app(&[]).await;
    let mut stalled = connect(&app).await;
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHost: keymeter\r\n").await.unwrap();
    let (took, _) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the timeout");

    // Headers sent a byte at a time, each well within the timeout, still have to be complete
    // within it: moving bytes does not keep a request's head open.
    let mut dripping = connect(&app).await;
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().chain([b'a'; 64].iter()) {
        if dripping.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A closed connection shows up on the next read as the end of the stream.
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), dripping.read(&mut probe)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a dripped request head was still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(4), "closed after {:?}", started.elapsed());

    // The server itself is fine.
    let mut fresh = connect(&app).await;
    assert!(exchange(&mut fresh, HEALTH).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_stays() {
    let app = impatient_app(&[]).await;
    let mut idle = connect(&app).await;
    assert!(exchange(&mut idle, HEALTH).await.starts_with("HTTP/1.1 200"));
    let (took, rest) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the timeout");
    assert_eq!(rest, "", "nothing is sent on closing an idle connection");

    // Requests every 400 ms keep one connection for three times the timeout.
    let mut busy = connect(&app).await;
    for round in 0..8 {
        let head = exchange(&mut busy, HEALTH).await;
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// A request body that stops arriving: the connection is dropped, and the metered call is
/// stored as the client's hang-up (499), since its quota was counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_dropped_and_stored_as_a_hang_up() {
    let app = impatient_app(&[]).await;
    let (secret, id) = app.key_with_quota(100, 1000).await;
    let mut stalled = connect(&app).await;
    let head = echo_head(&secret, 1000);
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&[b'x'; 100]).await.unwrap();
    let (took, received) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the timeout");
    assert_eq!(received, "", "no answer to a request that never arrived");
    assert_eq!(app.wait_for_events(id, 1).await, 1);
    assert_eq!(stored_statuses(&app, id).await, ["499"]);
}

/// A client that hangs up halfway through its upload never hears the handler's answer: its call
/// is stored as the client's hang-up (499), not as the 400 the handler gave the cut-off body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_client_abandons_is_stored_as_a_hang_up() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(100, 1000).await;
    let mut upload = connect(&app).await;
    let head = echo_head(&secret, 1000);
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(&[b'x'; 100]).await.unwrap();
    // The handler is reading the body by now; then the client leaves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    upload.shutdown().await.unwrap();
    drop(upload);
    assert_eq!(app.wait_for_events(id, 1).await, 1);
    assert_eq!(stored_statuses(&app, id).await, ["499"]);
}

/// A body sent a byte at a time, each well within the timeout, still has to be complete within
/// it: trickling does not hold a connection for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_trickled_a_byte_at_a_time_is_cut_off_at_the_timeout() {
    let app = impatient_app(&[]).await;
    let (secret, id) = app.key_with_quota(100, 1000).await;
    let mut trickle = connect(&app).await;
    let head = echo_head(&secret, 1000);
    trickle.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(6) {
        if trickle.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), trickle.read(&mut probe)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("answered: {:?}", String::from_utf8_lossy(&probe[..n])),
            Err(_) => {}
        }
    }
    assert!(closed, "a trickled body was still being taken after {:?}", started.elapsed());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "cut off after {took:?}");
    assert_eq!(app.wait_for_events(id, 1).await, 1);
    assert_eq!(stored_statuses(&app, id).await, ["499"]);
}

/// A client reading its responses slowly but steadily is not stalled: the kernel takes the
/// server's next write only once a good part of its send buffer (megabytes) has drained, long
/// after the client last read, so what counts is what the client acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_slowly_but_steadily_keeps_its_connection() {
    let app = impatient_app(&[]).await;
    let (secret, _) = app.key_with_quota(100, 1000).await;
    let (mut reader, mut writer) = connect(&app).await.into_split();
    const RESPONSES: usize = 6;
    const SIZE: usize = 1_000_000;
    let request = echo_head(&secret, SIZE);
    let sending = tokio::spawn(async move {
        for _ in 0..RESPONSES {
            writer.write_all(request.as_bytes()).await?;
            writer.write_all(&[b'x'; SIZE]).await?;
        }
        Ok::<_, std::io::Error>(writer)
    });
    // About 800 KB/s: six 1 MB answers take several times the one-second timeout.
    let started = Instant::now();
    let mut received = 0;
    let mut buf = vec![0u8; 48 * 1024];
    while received < RESPONSES * SIZE {
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await.expect("data").unwrap();
        assert!(n > 0, "cut off after {:?}, {received} bytes in", started.elapsed());
        received += n;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(3), "read too fast to show anything: {:?}", started.elapsed());
    let _writer = sending.await.unwrap().unwrap();
}

/// Only the client's delays count: a handler slower than the timeout still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_client_timeout_is_still_sent() {
    let app = impatient_app(&[]).await;
    let (secret, _) = app.key_with_quota(100, 1000).await;
    let mut slow = connect(&app).await;
    let request =
        format!("GET /api/v1/delay/2500 HTTP/1.1\r\nHost: keymeter\r\nAuthorization: Bearer {secret}\r\n\r\n");
    let head = exchange(&mut slow, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// On SIGTERM, connections without a request in progress close at once (an idle one, one that
/// sent half a request head), a request in progress is answered, one whose client holds it up
/// is cut off after the drain time and stored as a 499, and the process then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_waiting_connections_at_once_and_answers_requests_in_progress() {
    let app = TestApp::spawn().await;
    let (secret, id) = app.key_with_quota(100, 1000).await;
    let mut server = ServerProcess::start(&app, &env("KEYMETER_TEST_REDIS"), &[]).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut idle = TcpStream::connect(&address).await.unwrap();
    assert!(exchange(&mut idle, HEALTH).await.starts_with("HTTP/1.1 200"));
    let mut half_sent = TcpStream::connect(&address).await.unwrap();
    half_sent.write_all(b"GET /healthz HTTP/1.1\r\nHost: keymeter\r\n").await.unwrap();
    let mut in_progress = TcpStream::connect(&address).await.unwrap();
    let delay = format!("GET /api/v1/delay/2000 HTTP/1.1\r\nHost: keymeter\r\nAuthorization: Bearer {secret}\r\n\r\n");
    in_progress.write_all(delay.as_bytes()).await.unwrap();
    let mut trickle = TcpStream::connect(&address).await.unwrap();
    let upload = echo_head(&secret, 1000) + "x";
    trickle.write_all(upload.as_bytes()).await.unwrap();
    let trickling = tokio::spawn(async move {
        while trickle.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.terminate();
    let (took, _) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "the idle connection closed after {took:?}");
    let (took, _) = read_until_closed(&mut half_sent, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "the half-sent request's connection closed after {took:?}");
    let (_, answer) = read_until_closed(&mut in_progress, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    // The trickling upload is cut off once the drain time is up, and then the process exits.
    assert!(server.exits_within(keymeter::http_server::DRAIN + Duration::from_secs(15)).await, "still running");
    trickling.await.unwrap();
    let stored = app.wait_for_events(id, 2).await;
    assert_eq!(stored, 2, "the answered delay and the cut-off upload");
    assert_eq!(stored_statuses(&app, id).await, ["200", "499"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let app = TestApp::spawn_with(&[("KEYMETER_MAX_CONNECTIONS", "2".to_owned())]).await;
    let mut first = connect(&app).await;
    assert!(exchange(&mut first, HEALTH).await.starts_with("HTTP/1.1 200"));
    let mut second = connect(&app).await;
    assert!(exchange(&mut second, HEALTH).await.starts_with("HTTP/1.1 200"));

    // The kernel completes the third handshake, but the server does not take the connection
    // while both slots are held.
    let mut third = connect(&app).await;
    third.write_all(HEALTH.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;
    assert!(early.is_err(), "answered beyond the cap: {early:?}");

    // A slot frees when a client leaves; the waiting request is then answered.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("answered once a slot was free")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    // The connection that held its slot all along still works.
    assert!(exchange(&mut second, HEALTH).await.starts_with("HTTP/1.1 200"));
}
