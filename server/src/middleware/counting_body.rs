//! A body wrapper that counts the bytes that pass through it and, when the body ends, runs a
//! completion (the usage hand-off) *before* reporting the end: a chunked response's final chunk
//! leaves only once its usage is stored. A body dropped early (the client hung up) still runs
//! the completion, detached.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};

type Completion = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type OnDone = Box<dyn FnOnce(u64) -> Completion + Send + 'static>;

/// What passed through a body, shared with whoever needs it after the body is gone.
#[derive(Default)]
pub(crate) struct Transfer {
    pub(crate) bytes: AtomicU64,
    /// The body broke off because the client went away.
    pub(crate) client_gone: AtomicBool,
}

pub(crate) struct CountingBody {
    inner: Body,
    transfer: Arc<Transfer>,
    on_done: Option<OnDone>,
    finishing: Option<Completion>,
    ended: bool,
}

impl CountingBody {
    pub(crate) fn new(inner: Body, transfer: Arc<Transfer>, on_done: Option<OnDone>) -> Self {
        Self { inner, transfer, on_done, finishing: None, ended: false }
    }

    fn start_finishing(&mut self) {
        if let Some(done) = self.on_done.take() {
            self.finishing = Some(done(self.transfer.bytes.load(Ordering::Relaxed)));
        }
    }
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(finishing) = this.finishing.as_mut() {
                if finishing.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.finishing = None;
                this.ended = true;
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.transfer.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    this.start_finishing();
                    this.ended = this.finishing.is_none();
                }
                Poll::Ready(Some(Err(e))) => {
                    if breaks_off_the_connection(&e) {
                        this.transfer.client_gone.store(true, Ordering::Relaxed);
                    }
                    this.start_finishing();
                    if let Some(finishing) = this.finishing.take() {
                        tokio::spawn(finishing);
                    }
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not over while a completion is still to run.
        self.ended || (self.on_done.is_none() && self.finishing.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.start_finishing();
        if let Some(finishing) = self.finishing.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(finishing);
            }
        }
    }
}

/// Whether a body error means the connection is gone (it ended or was reset before the body
/// did), so no answer can reach the client, rather than a malformed body it will hear about.
fn breaks_off_the_connection(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled() {
                return true;
            }
        }
        if err.is::<std::io::Error>() {
            return true;
        }
        cause = err.source();
    }
    false
}
