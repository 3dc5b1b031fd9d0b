//! A response body the handler reads under the tenant's caps: at most
//! `http.max_response_bytes` in all, and no longer than `http.timeout_ms`
//! between two pieces of it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error as HttpError;

/// `hyper`'s body with a byte cap and an idle timeout.
pub(super) struct CappedBody {
    inner: hyper::body::Incoming,
    remaining: u64,
    limit: u64,
    idle: Pin<Box<Sleep>>,
    between_bytes: Duration,
}

impl CappedBody {
    pub(super) fn new(inner: hyper::body::Incoming, limit: u64, between_bytes: Duration) -> CappedBody {
        CappedBody {
            inner,
            remaining: limit,
            limit,
            idle: Box::pin(tokio::time::sleep(between_bytes)),
            between_bytes,
        }
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let size = data.len() as u64;
                    if size > self.remaining {
                        let limit = self.limit;
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(limit)))));
                    }
                    self.remaining -= size;
                }
                let next = Instant::now() + self.between_bytes;
                self.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(HttpError::from(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
