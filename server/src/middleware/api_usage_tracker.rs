//! The usage tracker: a tower layer that meters every request of the router it wraps.
//!
//! For each request it authenticates the API key (401 and nothing counted if that fails), asks
//! the quota manager (429 with `Retry-After` if any window is full), runs the handler, adds the
//! rate-limit headers, measures latency and request/response bytes (streamed bodies included),
//! and records one usage event with the endpoint as its route template. The event is stored
//! durably (Redis stream, or PostgreSQL if Redis is down) before the client has the complete
//! answer, so a crashed instance loses no answered request's usage; concurrent requests share
//! the hand-off's round trips (see the recorder).
//!
//! A client that hangs up does not make usage vanish: once its request may have been counted
//! in the quota, its event is recorded whatever happens (status 499 if admitted, as the client
//! never got the answer), so the admitted events of a window always add up to its counter.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use services::keys::{AuthenticatedKey, QuotaDecision, Verdict};
use services::usage::{UsageEvent, UsageRecorder};
use services::Services;
use tower::{Layer, Service};
use uuid::Uuid;

use super::api_key_auth::{authenticate, RequestArrived};
use super::counting_body::{CountingBody, Transfer};

#[derive(Clone)]
pub struct UsageTrackerLayer {
    services: Services,
}

impl UsageTrackerLayer {
    pub fn new(services: Services) -> Self {
        Self { services }
    }
}

impl<S> Layer<S> for UsageTrackerLayer {
    type Service = UsageTracker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UsageTracker { inner, services: self.services.clone() }
    }
}

#[derive(Clone)]
pub struct UsageTracker<S> {
    inner: S,
    services: Services,
}

impl<S> Service<Request> for UsageTracker<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was driven to readiness handles this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(track(self.services.clone(), inner, request))
    }
}

async fn track<S>(services: Services, mut inner: S, mut request: Request) -> Result<Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let started = request.extensions().get::<RequestArrived>().map_or_else(Instant::now, |arrived| arrived.0);
    let key = match identify(&services, &mut request).await {
        Ok(key) => key,
        Err(response) => return Ok(response),
    };
    let request_id = Uuid::now_v7();
    let mut event = new_event(&request, &key, request_id);
    let decision = check_quota(&services, &key, &mut event, started).await;
    if let Some(refusal) = refusal(&services, &key, decision.as_ref()) {
        return Ok(refuse(&services, request.headers(), refusal, event, started).await);
    }

    let before_handler = started.elapsed();
    let received = Arc::new(Transfer::default());
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, Body::new(CountingBody::new(body, received.clone(), None)));
    let unanswered = Unanswered { event: Some(event), usage: &services.usage, started, received: &received };
    let mut response = inner.call(request).await?;
    let after_handler = Instant::now();
    let mut event = unanswered.answered();

    if let Some(decision) = &decision {
        add_rate_limit_headers(response.headers_mut(), decision);
    }
    add_request_id(response.headers_mut(), request_id);
    // A client that hung up mid-body never hears the handler's complaint about it.
    event.status =
        if received.client_gone.load(Ordering::Relaxed) { CLIENT_CLOSED_REQUEST } else { response.status().as_u16() };
    let response = record_when_sent(&services.usage, response, event, started, received).await;
    // The hand-off of a body of known size is the tracker's time too: the client waits for it.
    OVERHEAD.observe(before_handler + after_handler.elapsed());
    Ok(response)
}

/// The request's key: already resolved by `require_api_key` in front of the router, or resolved
/// here; either way handlers find it in the request's extensions. A request without a valid key
/// gets its 401 (nothing is counted).
async fn identify(services: &Services, request: &mut Request) -> Result<AuthenticatedKey, Response> {
    if let Some(key) = request.extensions().get::<AuthenticatedKey>() {
        return Ok(*key);
    }
    match authenticate(services, request.headers()).await {
        Ok(key) => {
            request.extensions_mut().insert(key);
            Ok(key)
        }
        Err(err) => {
            let mut response = err.into_response();
            super::close_if_body_unread(request.headers(), &mut response);
            Err(response)
        }
    }
}

/// The request's usage event, its outcome still to be filled in.
fn new_event(request: &Request, key: &AuthenticatedKey, request_id: Uuid) -> UsageEvent {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    UsageEvent {
        request_id,
        key_id: key.id.0,
        at_ms: 0,
        method: request.method().as_str().to_owned(),
        endpoint,
        status: 0,
        latency_us: 0,
        bytes_in: 0,
        bytes_out: 0,
        throttled: false,
        enforced: true,
        alerts: Vec::new(),
    }
}

/// Asks the quota manager and takes its verdict into `event`; the decision, if there was one.
/// Dropped while the check is out (client gone), the check still finishes elsewhere and its
/// outcome is recorded: Redis may have counted it.
async fn check_quota(
    services: &Services,
    key: &AuthenticatedKey,
    event: &mut UsageEvent,
    started: Instant,
) -> Option<QuotaDecision> {
    let on_abandon = {
        let (mut event, services) = (event.clone(), services.clone());
        move |verdict: Verdict| {
            let decision = apply_verdict(&mut event, verdict, &services);
            event.status = match &decision {
                Some(d) if d.admitted => CLIENT_CLOSED_REQUEST,
                Some(_) => StatusCode::TOO_MANY_REQUESTS.as_u16(),
                None => StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            };
            event.throttled = event.status != CLIENT_CLOSED_REQUEST;
            event.latency_us = micros(started.elapsed());
            services.usage.record(event);
        }
    };
    let verdict = FinishOnDrop::new(services.quota.decide(key), on_abandon).await;
    apply_verdict(event, verdict, services)
}

/// The answer to a refused request, with its body's length, if it is refused: by the quota
/// (429), or because the quota cannot be checked and the policy is fail-closed (503; its
/// rate-limit headers say the key's limits and its use as last seen from Redis).
fn refusal(services: &Services, key: &AuthenticatedKey, decision: Option<&QuotaDecision>) -> Option<(Response, u64)> {
    match decision {
        Some(d) if d.admitted => None,
        Some(d) => {
            let (mut response, len) = quota_exceeded(d);
            add_rate_limit_headers(response.headers_mut(), d);
            Some((response, len))
        }
        None => {
            let (mut response, len) = quota_unavailable();
            add_rate_limit_headers(response.headers_mut(), &services.quota.last_seen(key));
            Some((response, len))
        }
    }
}

/// Stores a refused request's usage, then hands back its answer.
async fn refuse(
    services: &Services,
    request_headers: &HeaderMap,
    (mut response, body_len): (Response, u64),
    mut event: UsageEvent,
    started: Instant,
) -> Response {
    add_request_id(response.headers_mut(), event.request_id);
    super::close_if_body_unread(request_headers, &mut response);
    event.status = response.status().as_u16();
    event.throttled = true;
    // The body of a refused request is never read, so none of it was received; a claimed
    // `Content-Length` is the client's word, not bytes (and not something to bill).
    event.bytes_in = 0;
    event.latency_us = micros(started.elapsed());
    event.bytes_out = if event.method == "HEAD" { 0 } else { body_len };
    services.usage.record_durably(event).await;
    response
}

/// Stores the usage of an answered request before the client has all of the answer: at once
/// for a body of known size (it is complete now), or, for a streamed body, when it ends, before
/// its final chunk is sent.
async fn record_when_sent(
    usage: &UsageRecorder,
    response: Response,
    mut event: UsageEvent,
    started: Instant,
    received: Arc<Transfer>,
) -> Response {
    if let Some(size) = http_body::Body::size_hint(response.body()).exact() {
        event.latency_us = micros(started.elapsed());
        event.bytes_in = received.bytes.load(Ordering::Relaxed);
        // HTTP sends no body with these, whatever the handler produced.
        let bodiless = matches!(event.status, 100..=199 | 204 | 304) || event.method == "HEAD";
        event.bytes_out = if bodiless { 0 } else { size };
        usage.record_durably(event).await;
        return response;
    }
    let recorder = usage.clone();
    let on_done = Box::new(move |bytes_out: u64| {
        let mut event = event;
        event.latency_us = micros(started.elapsed());
        event.bytes_in = received.bytes.load(Ordering::Relaxed);
        event.bytes_out = bytes_out;
        let recorder = recorder.clone();
        Box::pin(async move {
            recorder.record_durably(event).await;
        }) as Pin<Box<dyn Future<Output = ()> + Send>>
    });
    let (parts, body) = response.into_parts();
    let body = CountingBody::new(body, Arc::default(), Some(on_done));
    Response::from_parts(parts, Body::new(body))
}

/// Takes the quota manager's verdict into the event, with the alert thresholds it reached;
/// the decision, if there was one.
fn apply_verdict(event: &mut UsageEvent, verdict: Verdict, services: &Services) -> Option<QuotaDecision> {
    event.alerts = services.alert_crossings.reached(event.key_id, &verdict);
    let (decision, enforced) = match verdict {
        Verdict::Enforced(d) => (Some(d), true),
        Verdict::Fallback { decision, .. } => (Some(decision), false),
        Verdict::Unavailable => (None, false),
    };
    event.at_ms = decision.as_ref().map_or_else(|| chrono::Utc::now().timestamp_millis(), |d| d.now_ms);
    event.enforced = enforced;
    decision
}

/// Recorded for an admitted request whose client went away before its answer (nginx's code).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A future that, dropped before it is done, is finished in a task of its own, its output
/// handed to `on_abandon`.
struct FinishOnDrop<F, G>
where
    F: Future + Send + 'static,
    G: FnOnce(F::Output) + Send + 'static,
{
    future: Option<Pin<Box<F>>>,
    on_abandon: Option<G>,
}

impl<F, G> FinishOnDrop<F, G>
where
    F: Future + Send + 'static,
    G: FnOnce(F::Output) + Send + 'static,
{
    fn new(future: F, on_abandon: G) -> Self {
        Self { future: Some(Box::pin(future)), on_abandon: Some(on_abandon) }
    }
}

impl<F, G> Future for FinishOnDrop<F, G>
where
    F: Future + Send + 'static,
    G: FnOnce(F::Output) + Send + Unpin + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(future) = self.future.as_mut() else { return Poll::Pending };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<F, G> Drop for FinishOnDrop<F, G>
where
    F: Future + Send + 'static,
    G: FnOnce(F::Output) + Send + 'static,
{
    fn drop(&mut self) {
        if let (Some(future), Some(on_abandon)) = (self.future.take(), self.on_abandon.take()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { on_abandon(future.await) });
            }
        }
    }
}

/// An admitted request waiting for its handler. Dropped before it is answered (the client went
/// away and the server dropped the request), it records the event as a 499: the quota counted
/// the request, so its usage must exist.
struct Unanswered<'a> {
    event: Option<UsageEvent>,
    usage: &'a UsageRecorder,
    started: Instant,
    received: &'a Transfer,
}

impl Unanswered<'_> {
    fn answered(mut self) -> UsageEvent {
        self.event.take().expect("an unanswered request holds its event until answered")
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            event.status = CLIENT_CLOSED_REQUEST;
            event.latency_us = micros(self.started.elapsed());
            event.bytes_in = self.received.bytes.load(Ordering::Relaxed);
            event.bytes_out = 0;
            self.usage.record(event);
        }
    }
}

/// The tracker's own time per admitted request (everything but the handler), sampled only when
/// enabled, for `make bench`.
pub static OVERHEAD: OverheadProbe = OverheadProbe::new();

pub struct OverheadProbe {
    enabled: std::sync::atomic::AtomicBool,
    // Nanoseconds, in the same log buckets as latencies.
    samples: std::sync::Mutex<services::usage::LatencyHistogram>,
}

impl OverheadProbe {
    const fn new() -> Self {
        Self {
            enabled: std::sync::atomic::AtomicBool::new(false),
            samples: std::sync::Mutex::new(services::usage::LatencyHistogram::new()),
        }
    }

    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    fn observe(&self, d: Duration) {
        if self.enabled.load(Ordering::Relaxed) {
            if let Ok(mut h) = self.samples.lock() {
                h.record(d.as_nanos().min(u64::MAX as u128) as u64);
            }
        }
    }

    /// (count, p50 µs, p99 µs) since the last reset; then resets.
    pub fn take(&self) -> (u64, f64, f64) {
        let h = self.samples.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        let q = |q| h.quantile_us(q).unwrap_or(0.0) / 1000.0;
        (h.count(), q(0.5), q(0.99))
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// The id of the request's usage event: every response the tracker gives has it, so a response
/// without it was not metered.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn add_request_id(headers: &mut HeaderMap, id: Uuid) {
    let mut buffer = Uuid::encode_buffer();
    if let Ok(value) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer)) {
        headers.insert(REQUEST_ID, value);
    }
}

fn header_value(value: String) -> HeaderValue {
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `RateLimit-Policy`, `RateLimit` (IETF draft) and `X-RateLimit-*` for the window that refused
/// the request, or else the one with the least remaining.
pub fn add_rate_limit_headers(headers: &mut HeaderMap, d: &QuotaDecision) {
    let mut policy = format!("\"hour\";q={};w=3600, \"day\";q={};w=86400", d.hour.limit, d.day.limit);
    if let Some(burst) = d.burst_per_second {
        policy.push_str(&format!(", \"burst\";q={burst};w=1"));
    }
    let w = d.reported_window();
    let seconds = w.seconds_to_reset(d.now_ms);
    headers.insert(HeaderName::from_static("ratelimit-policy"), header_value(policy));
    headers.insert(
        HeaderName::from_static("ratelimit"),
        header_value(format!("\"{}\";r={};t={}", w.window.as_str(), w.remaining(), seconds)),
    );
    headers.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(w.limit));
    headers.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(w.remaining()));
    headers.insert(HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(w.reset_at().timestamp()));
}

/// The 429: which window refused, its limit and use, when it resets, and `Retry-After`; with
/// the body's length, for the usage event.
fn quota_exceeded(d: &QuotaDecision) -> (Response, u64) {
    let retry_after = d.retry_after_secs.unwrap_or(1);
    let w = d.reported_window();
    let (window, limit, used, reset_at) = (w.window.as_str(), w.limit, w.used, w.reset_at());
    let body = json!({
        "error": {
            "code": "quota_exceeded",
            "message": format!("the {window} quota of this API key is used up; retry in {retry_after} s"),
            "window": window,
            "limit": limit,
            "used": used,
            "reset_at": reset_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "retry_after": retry_after,
        }
    });
    let body = body.to_string();
    let len = body.len() as u64;
    let mut response =
        (StatusCode::TOO_MANY_REQUESTS, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header_value(retry_after.to_string()));
    (response, len)
}

/// The 503 of fail-closed mode while Redis is unavailable; with the body's length.
fn quota_unavailable() -> (Response, u64) {
    let body = json!({
        "error": {
            "code": "quota_unavailable",
            "message": "usage limits cannot be checked right now; retry in a moment",
            "retry_after": 1,
        }
    })
    .to_string();
    let len = body.len() as u64;
    let mut response =
        (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    (response, len)
}

/// The key the request was authenticated with, for handlers.
pub type CurrentKey = axum::Extension<AuthenticatedKey>;
