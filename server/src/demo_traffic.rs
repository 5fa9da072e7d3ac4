//! Light, varied traffic on the demo key while `make run` serves, so that a new user sees
//! moving charts at once. Requests go through the full router in process (key check, quota,
//! tracker), exactly like outside calls. Off unless configured (`KEYMETER_DEMO_TRAFFIC_KEY_FILE`).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// Runs until `closing` turns true. A request under way then finishes normally: aborting the
/// task instead dropped it mid-flight, after its quota check, and its usage event came after the
/// recorder had closed (one event lost per stop).
pub fn spawn(router: Router, secret: String, mut closing: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !*closing.borrow() {
            let (pause, method, path, body) = {
                let mut rng = rand::thread_rng();
                // About 13 calls a minute: the charts move, and the demo key stays well inside its own
                // quota (5,000/hour, 50,000/day) instead of firing its alerts every hour.
                let pause = Duration::from_millis(rng.gen_range(2_000..7_000));
                let (method, path, body) = match rng.gen_range(0..100) {
                    0..=49 => (Method::GET, "/api/v1/ping".to_owned(), Vec::new()),
                    50..=64 => (Method::POST, "/api/v1/echo".to_owned(), vec![b'k'; rng.gen_range(100..4_000)]),
                    65..=84 => {
                        let code = [200, 200, 200, 201, 404, 404, 422, 500, 503][rng.gen_range(0..9)];
                        (Method::GET, format!("/api/v1/status/{code}"), Vec::new())
                    }
                    _ => (Method::GET, format!("/api/v1/delay/{}", rng.gen_range(5..300)), Vec::new()),
                };
                (pause, method, path, body)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = closing.wait_for(|&closing| closing) => break,
            }
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::AUTHORIZATION, format!("Bearer {secret}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(body));
            let Ok(request) = request else { continue };
            let Ok(response) = router.clone().oneshot(request).await;
            // Reading the body to its end is what completes the usage event.
            let _ = axum::body::to_bytes(response.into_body(), usize::MAX).await;
        }
    })
}
