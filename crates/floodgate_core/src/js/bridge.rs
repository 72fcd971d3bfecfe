//! The JS handler bridge, napi-free: requests handed to a `JsHost` (the binding), responses and
//! request-body reads coming back by exchange id.
//!
//! Rust never waits on JS while holding a lock: a request is registered, dispatched, and its
//! response awaited on a oneshot. Every exchange is owned by a `Call` guard; when the client goes
//! away or the handler times out, dropping the guard unregisters the exchange and tells JS to
//! abort (`req.signal`, the generator's `return()`).

use crate::conn::conformance::malformed_body;
use crate::js::stream::{self, StreamReader, StreamWriter};
use crate::metrics::{Metrics, Rejection};
use crate::observe::reject::{RejectEvent, RejectSink};
use crate::ws::hub::{WsEvent, WsHub};
use bytes::Bytes;
use http_body::Body as HttpBody;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// What JS is given for one request.
#[derive(Debug, Clone)]
pub struct JsRequest {
    pub id: u64,
    pub handler: u32,
    pub method: String,
    /// Path (prefix stripped) and query.
    pub url: String,
    /// `name\0value\0name\0value` as received (values may not be UTF-8): one buffer per
    /// request rather than two `String`s per header.
    pub headers: Vec<u8>,
    /// Flat `[name, value, ...]` of `:param` segments.
    pub params: Vec<String>,
    pub client: String,
    pub has_body: bool,
}

/// A response body produced by JS.
pub enum JsBody {
    Empty,
    Bytes(Bytes),
    /// Chunks written by JS as the socket takes them (bounded queue: backpressure).
    Stream(StreamReader),
    /// A file chosen by JS, streamed by Rust like a files mount would.
    File(JsFile),
}

#[derive(Debug, Clone, Default)]
pub struct JsFile {
    pub path: PathBuf,
    pub filename: Option<String>,
    pub media_type: Option<String>,
    pub attachment: bool,
}

pub struct JsResponse {
    pub status: u16,
    /// `name\0value\0name\0value` as JS sent it (one byte per character: header values are
    /// ByteStrings): parsed into the response head on the connection's thread, values as
    /// slices of these bytes, not on the JS thread.
    pub headers: Bytes,
    pub body: JsBody,
}

/// The JS side, as the binding implements it.
pub trait JsHost: Send + Sync + 'static {
    /// Hands a request to JS. Must not block; batching is the host's business.
    fn dispatch(&self, request: JsRequest);
    /// The exchange is over before JS finished it (client gone, timeout): abort its work.
    fn abort(&self, id: u64);
    /// A WebSocket session opened, received a message, or closed. Must not block; events of
    /// one session must reach JS in the order given.
    fn ws_event(&self, event: WsEvent);
    /// A refusal, within the per-second bound (`observe::reject`). Must not block.
    fn reject_event(&self, _event: RejectEvent) {}
    /// An access log line for the `accessLog` callback, within its per-second bound. Must
    /// not block.
    fn access_line(&self, _line: String) {}
    /// How long the oldest work handed to JS and not yet taken by the JS thread has waited;
    /// `None` when nothing waits (or the host cannot tell). Must be cheap.
    fn js_delay(&self) -> Option<Duration> {
        None
    }
}

/// Why reading a request body for JS failed. `TooLarge`, `Timeout` and `Malformed` are the
/// client's fault: the bridge has already answered the exchange (413, 408, 400, each with
/// `Connection: close`) and counted it, so whatever JS answers after its read failed (a 500 from
/// a throw, or even a 200) does not reach the client.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The exchange is gone (answered, aborted, or never existed).
    Gone,
    TooLarge,
    Timeout,
    /// The client stopped sending mid-body.
    Aborted,
    /// The body's framing is broken (a chunk-size line that is not hex, say). JS sees it as
    /// `Aborted` (`ERR_FLOODGATE_BODY_ABORTED`).
    Malformed,
}

type RequestBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A request body JS pulls from, with the app's size cap and read timeout, and the counters
/// its refusals go to.
pub struct BodySource {
    body: RequestBody,
    received: u64,
    max: u64,
    read_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl BodySource {
    pub fn new<B>(body: B, max: u64, read_timeout: Duration, metrics: Arc<Metrics>) -> Self
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + 'static,
    {
        Self {
            body: body.boxed_unsync(),
            received: 0,
            max,
            read_timeout,
            metrics,
        }
    }
}

struct Exchange {
    respond: Option<oneshot::Sender<JsResponse>>,
    body: Option<Arc<tokio::sync::Mutex<BodySource>>>,
}

/// Exchanges in flight between Rust and JS.
pub struct Bridge {
    host: Arc<dyn JsHost>,
    exchanges: Mutex<HashMap<u64, Exchange>>,
    /// Streamed responses JS is still writing, by exchange id.
    streams: Mutex<HashMap<u64, StreamWriter>>,
    next_id: AtomicU64,
    /// Open WebSocket sessions, which JS sends to by id.
    ws: Arc<WsHub>,
    /// `maxEventLoopDelay` in µs (0: off), set at `listen`.
    max_js_delay_us: AtomicU64,
}

/// The exchange is over: the client left, the handler timed out, or it was already answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone;

impl RejectSink for Bridge {
    fn reject_event(&self, event: RejectEvent) {
        self.host.reject_event(event);
    }
}

impl crate::observe::access::AccessSink for Bridge {
    fn access_line(&self, line: String) {
        self.host.access_line(line);
    }
}

impl Bridge {
    pub fn new(host: Arc<dyn JsHost>) -> Arc<Self> {
        Arc::new(Self {
            host,
            exchanges: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            ws: WsHub::new(),
            max_js_delay_us: AtomicU64::new(0),
        })
    }

    /// New JS requests are shed while JS leaves work waiting longer than `max` (0: never).
    pub(crate) fn set_max_js_delay(&self, max: Duration) {
        self.max_js_delay_us
            .store(max.as_micros() as u64, Ordering::Relaxed);
    }

    /// The JS thread is behind by more than `maxEventLoopDelay`: new requests must not wait
    /// for it.
    pub(crate) fn overloaded(&self) -> bool {
        let max = self.max_js_delay_us.load(Ordering::Relaxed);
        max > 0
            && self
                .host
                .js_delay()
                .is_some_and(|delay| delay.as_micros() as u64 > max)
    }

    pub fn ws_hub(&self) -> &Arc<WsHub> {
        &self.ws
    }

    pub fn ws_event(&self, event: WsEvent) {
        self.host.ws_event(event);
    }

    fn exchanges(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Exchange>> {
        self.exchanges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers and dispatches a request; the returned guard receives the response.
    pub fn start(
        self: &Arc<Self>,
        mut request: JsRequest,
        body: Option<BodySource>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Call {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        request.has_body = body.is_some();
        let (sender, receiver) = oneshot::channel();
        let exchange = Exchange {
            respond: Some(sender),
            body: body.map(|b| Arc::new(tokio::sync::Mutex::new(b))),
        };
        self.exchanges().insert(id, exchange);
        self.host.dispatch(request);
        Call {
            id,
            bridge: Arc::clone(self),
            receiver: Some(receiver),
            finished: false,
            _permit: permit,
        }
    }

    /// Tells JS something without waiting for an answer (`onClose`, say): a request with
    /// exchange id 0, which no response can match.
    pub fn notify(&self, handler: u32, params: Vec<String>, client: String) {
        let request = JsRequest {
            id: 0,
            handler,
            method: "NOTIFY".into(),
            url: "/".into(),
            headers: Vec::new(),
            params,
            client,
            has_body: false,
        };
        self.host.dispatch(request);
    }

    /// JS answered exchange `id`. `false` when nobody waits for it any more.
    pub fn respond(&self, id: u64, response: JsResponse) -> bool {
        let sender = self
            .exchanges()
            .get_mut(&id)
            .and_then(|exchange| exchange.respond.take());
        match sender {
            Some(sender) => sender.send(response).is_ok(),
            None => false,
        }
    }

    /// Answers many exchanges with complete responses under one lock (a batch from JS, as the
    /// binding decoded it). Exchanges that are gone are skipped.
    pub fn respond_all(&self, responses: Vec<(u64, JsResponse)>) {
        let senders: Vec<_> = {
            let mut exchanges = self.exchanges();
            responses
                .into_iter()
                .filter_map(|(id, response)| {
                    let sender = exchanges.get_mut(&id)?.respond.take()?;
                    Some((sender, response))
                })
                .collect()
        };
        // Sent outside the lock: each send wakes the connection's task.
        for (sender, response) in senders {
            let _ = sender.send(response);
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, StreamWriter>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// JS answers `id` with a head and a body it will write chunk by chunk.
    pub fn respond_stream(&self, id: u64, status: u16, headers: Bytes) -> bool {
        let (writer, reader) = stream::channel();
        let response = JsResponse {
            status,
            headers,
            body: JsBody::Stream(reader),
        };
        // Registered first, so a write right after this call finds it.
        self.streams().insert(id, writer);
        let answered = self.respond(id, response);
        if !answered {
            self.streams().remove(&id);
        }
        answered
    }

    /// Queues a chunk without waiting: `Ok(false)` when the queue is full; the chunk is then
    /// held, and queued by `drain`, which the writer awaits before writing again.
    pub fn try_write(&self, id: u64, chunk: Bytes) -> Result<bool, Gone> {
        let mut streams = self.streams();
        let writer = streams.get_mut(&id).ok_or(Gone)?;
        writer.try_write(chunk).map_err(|_| Gone)
    }

    /// Resolves once the client has taken enough of the queue and the held chunk is queued.
    pub async fn drain(&self, id: u64) -> Result<(), Gone> {
        let drain = self.streams().get_mut(&id).ok_or(Gone)?.drain();
        drain.wait().await.map_err(|_| Gone)
    }

    /// The streamed response is complete.
    pub fn end(&self, id: u64) {
        self.streams().remove(&id);
    }

    /// The next chunk of exchange `id`'s request body, `None` at its end.
    pub async fn read_body(&self, id: u64) -> Result<Option<Bytes>, BodyError> {
        let source = {
            let exchanges = self.exchanges();
            let exchange = exchanges.get(&id).ok_or(BodyError::Gone)?;
            Arc::clone(exchange.body.as_ref().ok_or(BodyError::Gone)?)
        };
        let mut source = source.lock().await;
        loop {
            let read_timeout = source.read_timeout;
            let frame = match tokio::time::timeout(read_timeout, source.body.frame()).await {
                Err(_) => {
                    source.metrics.reject(Rejection::ReadTimeout);
                    drop(source);
                    self.refuse(id, 408, b"Request Timeout\n");
                    return Err(BodyError::Timeout);
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(err))) if malformed_body(&err) => {
                    source.metrics.reject(Rejection::BadRequest);
                    drop(source);
                    self.refuse(id, 400, b"Bad Request\n");
                    return Err(BodyError::Malformed);
                }
                Ok(Some(Err(_))) => return Err(BodyError::Aborted),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                source.received += data.len() as u64;
                if source.received > source.max {
                    source.metrics.reject(Rejection::BodyTooLarge);
                    drop(source);
                    self.refuse(id, 413, b"Payload Too Large\n");
                    return Err(BodyError::TooLarge);
                }
                return Ok(Some(data));
            }
        }
    }

    /// The client is at fault in the middle of its body (too large, too slow, malformed):
    /// answer `status` and close, whatever JS does after its read failed. A response JS sent
    /// before is left alone (the sender is taken by whichever answers first).
    fn refuse(&self, id: u64, status: u16, message: &'static [u8]) {
        let headers =
            Bytes::from_static(b"content-type\0text/plain; charset=utf-8\0connection\0close");
        let body = JsBody::Bytes(Bytes::from_static(message));
        self.respond(
            id,
            JsResponse {
                status,
                headers,
                body,
            },
        );
    }

    /// Exchanges currently registered (for tests and stats).
    pub fn in_flight(&self) -> usize {
        self.exchanges().len()
    }

    fn finish(&self, id: u64, aborted: bool) {
        self.streams().remove(&id);
        let removed = self.exchanges().remove(&id);
        if aborted && removed.is_some() {
            self.host.abort(id);
        }
    }
}

/// One exchange, from dispatch to the end of its response. Dropping it unfinished aborts it.
pub struct Call {
    id: u64,
    bridge: Arc<Bridge>,
    receiver: Option<oneshot::Receiver<JsResponse>>,
    finished: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Call {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for JS's response; `None` if JS dropped the exchange without answering.
    pub async fn response(&mut self) -> Option<JsResponse> {
        self.receiver.take()?.await.ok()
    }

    /// The exchange completed normally (the whole response was sent).
    pub fn finish(mut self) {
        self.finished = true;
        self.bridge.finish(self.id, false);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.bridge.finish(self.id, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHost;
    impl JsHost for NoHost {
        fn dispatch(&self, _: JsRequest) {}
        fn abort(&self, _: u64) {}
        fn ws_event(&self, _: WsEvent) {}
    }

    fn request() -> JsRequest {
        JsRequest {
            id: 0,
            handler: 0,
            method: "GET".into(),
            url: "/".into(),
            headers: Vec::new(),
            params: Vec::new(),
            client: "127.0.0.1".into(),
            has_body: false,
        }
    }

    #[tokio::test]
    async fn respond_all_answers_each_exchange_still_there() {
        let bridge = Bridge::new(Arc::new(NoHost));
        let mut first = bridge.start(request(), None, None);
        let mut second = bridge.start(request(), None, None);
        let answer = |status, body| JsResponse {
            status,
            headers: Bytes::from_static(b"x-a\x001"),
            body,
        };
        bridge.respond_all(vec![
            (
                first.id(),
                answer(200, JsBody::Bytes(Bytes::from_static(b"{}"))),
            ),
            (999, answer(200, JsBody::Empty)), // gone: skipped
            (second.id(), answer(204, JsBody::Empty)),
        ]);
        let got = first.response().await.unwrap();
        assert_eq!(got.status, 200);
        assert!(matches!(got.body, JsBody::Bytes(ref b) if &b[..] == b"{}"));
        let got = second.response().await.unwrap();
        assert_eq!(got.status, 204);
        assert!(matches!(got.body, JsBody::Empty));
    }
}
