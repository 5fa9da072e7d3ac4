//! The HTTP server: accepts client connections and serves the app on each, within limits that
//! keep slow, silent or half-finished clients from holding the instance (`axum::serve` has
//! none: a half-sent request stayed open for good, and at the open-file limit the instance
//! stopped accepting anyone, its load balancer's health checks included).
//!
//! With `T` the client timeout:
//! - a request's head must arrive within `T` (hyper's header timer, which also closes a
//!   keep-alive connection idle for `T`: it runs while hyper waits for the next request);
//! - a request's body must arrive in full within `T` of the handler asking for it;
//! - a connection waiting on its client (a body that stopped arriving, a response the client
//!   stopped reading: nothing read, nothing acknowledged) for `T` is dropped. Time the server
//!   itself takes (a slow page, a quiet live stream) never counts against the client;
//! - at most `max_connections` at once; beyond that, new ones wait in the listen backlog;
//! - on shutdown, connections without a request in progress close at once (half-sent heads
//!   included), the rest may finish within [`DRAIN`], and are then dropped. A metered call cut
//!   short this way is stored as a 499, like any the client gave up on.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// How long requests in progress may take to finish once shutdown begins.
pub const DRAIN: Duration = Duration::from_secs(15);

/// Connections the kernel holds for us while every slot is taken (the default, 128, overflowed
/// with a few hundred clients waiting: their handshakes were retried a second later).
const LISTEN_BACKLOG: u32 = 1024;

/// The limits on client connections (`KEYMETER_MAX_CONNECTIONS`, `KEYMETER_CLIENT_TIMEOUT_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Set by the operator, or `None`: as many as the open-file limit allows, up to
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Option<usize>,
    pub client_timeout: Duration,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_connections: None, client_timeout: Duration::from_secs(60) }
    }
}

impl ConnectionLimits {
    /// The cap that fits the process' open-file limit, keeping `reserved` descriptors for
    /// everything else (pools, the listener, mail, logs) and one more per connection for a file
    /// it may be sending (the browser bundle): past the limit `accept` fails, and so does every
    /// static file and reconnecting pool. Lowering a cap the operator set is worth a warning.
    pub fn fitting_file_limit(self, reserved: usize) -> Self {
        let wanted = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let Some(limit) = raise_open_file_limit() else {
            return Self { max_connections: Some(wanted), ..self };
        };
        let fits = (usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(reserved) / 2).max(1);
        if wanted > fits && self.max_connections.is_some() {
            tracing::warn!(
                configured = wanted,
                open_file_limit = limit,
                serving = fits,
                "KEYMETER_MAX_CONNECTIONS is more than the open-file limit allows; raise the limit (ulimit -n) to serve more"
            );
        }
        Self { max_connections: Some(wanted.min(fits)), ..self }
    }
}

/// A listener's connection slots, under its [`ConnectionLimits`], and how many connections it
/// has open (for the metrics: the accept loop holds a slot while it waits for the next one).
#[derive(Debug, Clone)]
pub struct Connections {
    limits: ConnectionLimits,
    max: usize,
    slots: Arc<Semaphore>,
    open: Arc<AtomicUsize>,
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Self {
        let max = limits.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        Self { limits, max, slots: Arc::new(Semaphore::new(max)), open: Arc::default() }
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }
}

/// One connection in [`Connections::open`], until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the soft open-file limit to the hard one (the soft default, often 1,024, is a
/// leftover of `select(2)`, which nothing here uses) and returns the limit now in force.
fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

/// A listener on `address` with a backlog long enough for clients waiting on a full server.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server binds again at once, past its predecessor's connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What the accept loop tells the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown has begun: finish the request in progress, then close.
    Draining,
    /// The drain took too long: close now.
    Closing,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and lets the
/// requests in progress finish (see the module's notes).
pub async fn serve(listener: TcpListener, app: Router, connections: Connections, shutdown: impl Future<Output = ()>) {
    let Connections { limits, max: max_connections, slots, open } = connections;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.client_timeout);
    let (phase, phase_seen) = watch::channel(Phase::Serving);
    let mut full_warned: Option<Instant> = None;
    let mut accept_warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Not accepting is the gentlest refusal: clients wait in the backlog (or their
                // connect times out) instead of being reset.
                if once_a_minute(&mut full_warned) {
                    tracing::warn!(
                        address = ?listener.local_addr().ok(),
                        max_connections,
                        "every connection slot is taken: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: retry shortly, without a line per attempt.
                    if once_a_minute(&mut accept_warned) {
                        tracing::warn!(error = %e, "cannot accept connections");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed responses (the live view, CSV) write in pieces: Nagle's algorithm would hold
        // each small piece until the client acknowledged the previous one.
        let _ = stream.set_nodelay(true);
        let counted = OpenConnection::new(&open);
        let client = Arc::new(ClientState::new(&stream));
        let io = TokioIo::new(WatchedStream { stream, client: client.clone() });
        let connection =
            http.serve_connection(io, ConnectionService { app: app.clone(), peer, client: client.clone() });
        let timeout = limits.client_timeout;
        let mut phase_seen = phase_seen.clone();
        tokio::spawn(async move {
            let mut connection = Box::pin(connection);
            let watchdog = client.watch(timeout, phase_seen.clone());
            tokio::pin!(watchdog);
            let mut draining = false;
            loop {
                tokio::select! {
                    // Client errors (a reset, a malformed request, a header timeout) end only
                    // their own connection: nothing to report.
                    _ = connection.as_mut() => break,
                    () = watchdog.as_mut() => break,
                    // Any change is the end of serving: what is in progress is answered with
                    // `Connection: close`, and the connection ends.
                    _ = phase_seen.changed(), if !draining => {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            // The request in progress, if any, is dropped (its usage recorded) before the slot
            // says the connection is gone: the stop waits for the slots, then closes the
            // usage queue.
            drop(connection);
            drop(counted);
            drop(slot);
        });
    }
    drop(listener);
    let _ = phase.send(Phase::Draining);
    let every = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(every)).await.is_err() {
        tracing::warn!(
            open = max_connections - slots.available_permits(),
            "requests still in progress {DRAIN:?} after the stop: closing their connections"
        );
        let _ = phase.send(Phase::Closing);
        let _ = slots.acquire_many(every).await;
    }
}

fn once_a_minute(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// What the watchdog knows of a connection, kept up to date by its stream, its service and the
/// bodies of its request and response. One request at a time: HTTP/1.
struct ClientState {
    /// The socket, to ask the kernel how much of what was sent the client has acknowledged.
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    /// Reads and writes that moved bytes.
    progress: AtomicU64,
    /// A write to the client is waiting for it to read.
    write_blocked: AtomicBool,
    /// The handler is waiting for the request body.
    body_awaited: AtomicBool,
    /// When the handler first asked for the request body, in ms since `epoch` (0: not yet).
    body_asked_ms: AtomicU64,
    /// Requests given to the app whose response has not been sent in full.
    open_requests: AtomicUsize,
    epoch: Instant,
}

impl ClientState {
    fn new(stream: &TcpStream) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = stream;
        Self {
            #[cfg(target_os = "linux")]
            fd: std::os::fd::AsRawFd::as_raw_fd(stream),
            progress: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            body_awaited: AtomicBool::new(false),
            body_asked_ms: AtomicU64::new(0),
            open_requests: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the connection came, never 0 (0 means "not yet" above).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn waiting_on_client(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed) || self.body_awaited.load(Ordering::Relaxed)
    }

    /// Bytes of the response the client has acknowledged, while a write waits for it: a client
    /// reading slowly but steadily drains the kernel's send buffer (up to megabytes) long before
    /// the buffer has room for the server's next write, so completed writes alone would call
    /// it stalled (an 8 KB/s reader was cut at 60 s).
    fn acknowledged(&self) -> Option<u64> {
        if !self.write_blocked.load(Ordering::Relaxed) {
            return None;
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: `fd` is this connection's socket, open while its watchdog runs (both are
            // dropped together); the kernel writes at most `len` bytes into `info`.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let asked = unsafe {
                libc::getsockopt(
                    self.fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&mut info as *mut libc::tcp_info).cast(),
                    &mut len,
                )
            };
            (asked == 0).then_some(info.tcpi_bytes_acked)
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Completes when the connection should be dropped: its client held it up (see the module's
    /// notes), or shutdown found no request in progress, or the drain ran out.
    async fn watch(self: Arc<Self>, timeout: Duration, mut phase: watch::Receiver<Phase>) {
        let tick = (timeout / 4).max(Duration::from_millis(50));
        let mut seen = (self.progress.load(Ordering::Relaxed), self.acknowledged());
        let mut still_since = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                changed = phase.changed() => if changed.is_err() { return },
            }
            match *phase.borrow() {
                Phase::Closing => return,
                Phase::Draining if self.open_requests.load(Ordering::Acquire) == 0 => return,
                _ => {}
            }
            let now = Instant::now();
            let progress = (self.progress.load(Ordering::Relaxed), self.acknowledged());
            if progress != seen || !self.waiting_on_client() {
                (seen, still_since) = (progress, now);
            } else if now.duration_since(still_since) >= timeout {
                tracing::debug!("closing a connection whose client kept it waiting for {timeout:?}");
                return;
            }
            let asked = self.body_asked_ms.load(Ordering::Relaxed);
            let body_for = Duration::from_millis(self.now_ms().saturating_sub(asked));
            if self.body_awaited.load(Ordering::Relaxed) && asked != 0 && body_for >= timeout {
                tracing::debug!("closing a connection whose request body took longer than {timeout:?}");
                return;
            }
        }
    }
}

/// The app as one connection's service: tells the app the client's address (the sign-in
/// throttle counts per client) and the watchdog what the request and response are doing.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    peer: SocketAddr,
    client: Arc<ClientState>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let open = OpenRequest::new(self.client.clone());
        let client = self.client.clone();
        let mut request = request.map(|body| RequestBody { body, client, asked: false });
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.app.clone().oneshot(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| ResponseBody { body, _open: open }))
        })
    }
}

/// A request from its arrival until its response is sent (or dropped).
struct OpenRequest(Arc<ClientState>);

impl OpenRequest {
    fn new(client: Arc<ClientState>) -> Self {
        client.body_asked_ms.store(0, Ordering::Relaxed);
        client.open_requests.fetch_add(1, Ordering::AcqRel);
        Self(client)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request body, telling the watchdog while the handler waits for it.
struct RequestBody {
    body: Incoming,
    client: Arc<ClientState>,
    asked: bool,
}

impl http_body::Body for RequestBody {
    type Data = <Incoming as http_body::Body>::Data;
    type Error = <Incoming as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if !self.asked {
            // The body's clock starts when the handler wants it (with `Expect: 100-continue`,
            // when the client is told to send it), not while the server checks the key.
            self.asked = true;
            self.client.body_asked_ms.store(self.client.now_ms(), Ordering::Relaxed);
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.client.body_awaited.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.client.body_awaited.store(false, Ordering::Relaxed);
    }
}

/// The app's response body, holding its request open until it is sent.
struct ResponseBody {
    body: Body,
    _open: OpenRequest,
}

impl http_body::Body for ResponseBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client connection that tells the watchdog when bytes move and when a write waits for the
/// client, without a clock read per I/O.
struct WatchedStream {
    stream: TcpStream,
    client: Arc<ClientState>,
}

impl WatchedStream {
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        self.client.write_blocked.store(polled.is_pending(), Ordering::Relaxed);
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.client.moved();
        }
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.client.moved();
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
