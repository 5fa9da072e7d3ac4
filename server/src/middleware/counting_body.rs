//! A body wrapper that counts the bytes that pass through it and runs a callback once, when
//! the body ends or is dropped (a client that hangs up mid-stream still gets recorded).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};

type OnDone = Box<dyn FnOnce(u64) + Send + 'static>;

pub(crate) struct CountingBody {
    inner: Body,
    count: Arc<AtomicU64>,
    on_done: Option<OnDone>,
}

impl CountingBody {
    pub(crate) fn new(inner: Body, count: Arc<AtomicU64>, on_done: Option<OnDone>) -> Self {
        Self { inner, count, on_done }
    }

    fn finish(&mut self) {
        if let Some(done) = self.on_done.take() {
            done(self.count.load(Ordering::Relaxed));
        }
    }
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.finish();
    }
}
