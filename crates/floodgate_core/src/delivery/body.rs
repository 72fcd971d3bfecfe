//! Response body type and small response helpers.

use crate::conn::h2_stream::{self, StreamWatch};
use crate::conn::state::ConnState;
use crate::observe::access::{AccessRecord, CURRENT};
use crate::observe::app::Timing;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Every response body floodgate produces.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A short plain-text response, as the error pages of floodgate are.
pub fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = Response::new(full(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A short plain-text response with one more header (`Allow`, `Retry-After`, ...).
pub fn text_with(
    status: StatusCode,
    message: &'static str,
    name: header::HeaderName,
    value: HeaderValue,
) -> Response<Body> {
    let mut response = text(status, message);
    response.headers_mut().insert(name, value);
    response
}

/// A short plain-text refusal that closes the connection (`Connection: close`): after it, the
/// rest of the request cannot be trusted to frame the next one.
pub fn closing(status: StatusCode, message: &'static str) -> Response<Body> {
    text_with(
        status,
        message,
        header::CONNECTION,
        HeaderValue::from_static("close"),
    )
}

/// `405` with the methods the route takes in `Allow`.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    text_with(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed\n",
        header::ALLOW,
        HeaderValue::from_static(allow),
    )
}

/// Tells the connection's `ConnState` when the response body ends (or is dropped unfinished),
/// so the socket wrapper starts the keep-alive / next-head deadline only then.
/// Over HTTP/2 it also reports to the stream's watch (`conn::h2_stream`) when it hands hyper
/// a frame and when it waits on its own source, so a stream the client's window keeps shut
/// can be told from a quiet one.
pub struct Tracked {
    inner: Body,
    state: Option<Arc<ConnState>>,
    stream: Option<Arc<StreamWatch>>,
    /// The request's duration and bytes, observed for its app when the body ends.
    timing: Option<Timing>,
    /// The request's access log record: bytes out, and the reason of a refusal made while
    /// the body is sent (`downloadTimeout`).
    access: Option<Arc<AccessRecord>>,
}

impl Tracked {
    pub fn new(inner: Body, state: Arc<ConnState>) -> Self {
        let stream = h2_stream::current();
        if let Some(stream) = &stream {
            stream.responding();
        }
        Self {
            inner,
            state: Some(state),
            stream,
            timing: None,
            access: None,
        }
    }

    pub fn with_access(mut self, access: Option<Arc<AccessRecord>>) -> Self {
        self.access = access;
        self
    }

    pub fn with_timing(mut self, timing: Option<Timing>) -> Self {
        self.timing = timing;
        self
    }

    fn finish(&mut self) {
        if let Some(timing) = self.timing.take() {
            timing.finish();
        }
        self.access = None;
        if let Some(state) = self.state.take() {
            state.response_done();
        }
        if let Some(stream) = &self.stream {
            stream.finished();
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = match &this.access {
            None => Pin::new(&mut this.inner).poll_frame(cx),
            Some(record) => {
                let polled = CURRENT.sync_scope(Arc::clone(record), || {
                    Pin::new(&mut this.inner).poll_frame(cx)
                });
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    record.sent(frame.data_ref().map_or(0, |data| data.len()));
                }
                polled
            }
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(timing)) = (&polled, &mut this.timing) {
            timing.sent(frame.data_ref().map_or(0, |data| data.len()));
        }
        match (&polled, &this.stream) {
            (Poll::Ready(None) | Poll::Ready(Some(Err(_))), _) => this.finish(),
            (Poll::Ready(Some(Ok(_))), Some(stream)) => stream.handed(),
            (Poll::Pending, Some(stream)) => stream.body_idle(),
            _ => {}
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

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}
