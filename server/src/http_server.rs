//! The HTTP server: accepts client connections and serves the app on each, within limits that
//! keep a crowd of slow or idle clients from holding the instance (`axum::serve` has none: a
//! half-sent request or a silent connection stays open for good, and at the open-file limit
//! the instance stops accepting anyone, its load balancer's health checks included).
//!
//! - At most `max_connections` at once; beyond that, new ones wait in the kernel's backlog.
//! - A request's headers must arrive within `client_timeout` of the connection being ready
//!   for one, which also closes a keep-alive connection idle that long (hyper's header timer
//!   runs while it waits for the next request).
//! - A connection on which nothing moves either way for `client_timeout` (a stalled request
//!   body, a client that stopped reading its response) is dropped. Every response of this app
//!   sends something well within a minute: the live stream a keep-alive every 15 s, pages
//!   within their 30 s deadline, `/api/v1/delay` at most 10 s.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

/// The limits on client connections (`KEYMETER_MAX_CONNECTIONS`, `KEYMETER_CLIENT_TIMEOUT_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub client_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_connections: 10_000, client_timeout: Duration::from_secs(60) }
    }
}

impl ConnectionLimits {
    /// The cap that fits the process' open-file limit, keeping `reserved` descriptors for
    /// everything else (pools, the listener, mail, logs): past the limit, `accept` fails and
    /// the pools cannot reconnect either.
    pub fn fitting_file_limit(self, reserved: usize) -> Self {
        let Some(limit) = raise_open_file_limit() else {
            return self;
        };
        let fits = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(reserved).max(1);
        if self.max_connections > fits {
            tracing::warn!(
                configured = self.max_connections,
                open_file_limit = limit,
                serving = fits,
                "KEYMETER_MAX_CONNECTIONS is more than the open-file limit allows; raise the limit (ulimit -n) to serve more"
            );
            return Self { max_connections: fits, ..self };
        }
        self
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

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for the
/// connections to finish their requests in flight (idle ones close at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.client_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut full_since: Option<Instant> = None;
    let mut accept_errors = Throttled::default();
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Not accepting is the gentlest refusal: the clients wait in the backlog (or
                // their connect times out) instead of being reset.
                if full_since.is_none_or(|since| since.elapsed() >= Duration::from_secs(60)) {
                    full_since = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
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
                    accept_errors.warn(|| tracing::warn!(error = %e, "cannot accept connections"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed responses (the live view, CSV) write in pieces: Nagle's algorithm would hold
        // each small piece until the client acknowledged the previous one.
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(app.clone().map_request(move |mut request: axum::http::Request<Incoming>| {
                // The sign-in throttle counts per client address.
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            }));
        let (io, progress) = Watched::new(stream);
        let connection = graceful.watcher().watch(http.serve_connection(TokioIo::new(io), service));
        let timeout = limits.client_timeout;
        tokio::spawn(async move {
            tokio::select! {
                // Client errors (a reset, a malformed request, a header timeout) end only
                // their own connection: nothing to report.
                _ = connection => {}
                () = progress.stalled(timeout) => {
                    tracing::debug!(%peer, "closing a connection on which nothing moved for {timeout:?}");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A warning at most once every 10 seconds.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
}

impl Throttled {
    fn warn(&mut self, log: impl FnOnce()) {
        if self.last.is_none_or(|last| last.elapsed() >= Duration::from_secs(10)) {
            self.last = Some(Instant::now());
            log();
        }
    }
}

/// A client connection that counts every read or write that moved bytes, so that a watchdog
/// can tell a silent connection from a busy one without a clock read per I/O.
struct Watched {
    stream: TcpStream,
    progress: Arc<AtomicU64>,
}

/// The watchdog's side of a [`Watched`] connection.
struct Progress(Arc<AtomicU64>);

impl Watched {
    fn new(stream: TcpStream) -> (Self, Progress) {
        let progress = Arc::new(AtomicU64::new(0));
        (Self { stream, progress: progress.clone() }, Progress(progress))
    }

    fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

impl Progress {
    /// Completes once a whole `timeout` has passed without a byte read or written.
    async fn stalled(self, timeout: Duration) {
        let mut seen = self.0.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(timeout).await;
            let now = self.0.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
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
