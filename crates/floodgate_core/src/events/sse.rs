//! `StreamingApp.sse(prefix, {...})`: Server-Sent Events with per-user caps, a snapshot on
//! connect, keepalive comments, bounded per-connection queues and `Last-Event-ID` resume.
//!
//! Opening a stream: JS authenticates and names the topics (one exchange), the per-user and
//! global caps are checked, the connection subscribes to the bus (so nothing published from
//! now on is lost), then JS builds the snapshot (a second exchange). Events already queued with
//! a sequence number up to the snapshot's are dropped: the snapshot includes them.

use crate::cluster::lease::{self, Lease, Refusal};
use crate::cluster::Cluster;
use crate::config::{SseConfig, SseHandlers};
use crate::conn::guarded_io::SocketGuard;
use crate::conn::handoff::{HandOff, HandOffSlot};
use crate::conn::socket::Socket;
use crate::conn::state::ConnState;
use crate::delivery::body::{self, Body};
use crate::events::bus::{self, Bus, SharedEvent, Sink};
use crate::events::sse_socket::SocketStream;
use crate::js::bridge::Bridge;
use crate::js::call::{ask, JsTarget};
use crate::limit::conn::ConnectionLimiter;
use crate::limit::key::ClientKey;
use crate::limit::queue::{BoundedQueue, Pushed, QueueLimits, Weighed};
use crate::metrics::{Metrics, Rejection};
use crate::observe::access::{AccessRecord, CURRENT};
use crate::observe::app::{AppMetrics, Kind, Live};
use crate::observe::reject;
use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use serde::Deserialize;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Queued events written together as one body chunk, at most.
const COALESCE: usize = 16 * 1024;

/// An SSE route with its caps.
pub struct SseRoute {
    config: SseConfig,
    handlers: SseHandlers,
    per_user: Arc<ConnectionLimiter<ClientKey>>,
    total: Arc<Semaphore>,
    /// The per-user cap, cluster-wide (keys name the route by `path`).
    cluster: Option<Arc<Cluster>>,
    path: String,
    per_user_cap: u32,
}

/// What the app and the server lend an SSE connection.
pub struct SseContext<'a> {
    pub conn: &'a Arc<ConnState>,
    /// The app's counts: the stream is one of its open streams.
    pub app: &'a Arc<AppMetrics>,
    pub bridge: &'a Arc<Bridge>,
    pub bus: &'a Arc<Bus>,
    pub metrics: &'a Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub keep_alive: Duration,
    pub handler_timeout: Duration,
    pub client: IpAddr,
    pub url: String,
    /// The request's access log record: kept until the stream ends.
    pub access: Option<Arc<AccessRecord>>,
}

#[derive(Deserialize)]
struct Setup {
    user: Option<String>,
    topics: Vec<String>,
}

#[derive(Deserialize)]
struct Snapshot {
    seq: u64,
    data: String,
    event: Option<String>,
}

/// Why a stream ended, as `onClose` reports it.
#[derive(Clone, Copy)]
enum CloseReason {
    Client,
    Overflow,
    Shutdown,
}

impl CloseReason {
    fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Overflow => "overflow",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl SseRoute {
    /// A route at `path` (mount and route prefix) with `per_user` streams per user and `total`.
    pub fn new(
        config: SseConfig,
        handlers: SseHandlers,
        (per_user, total): (u32, u32),
        cluster: Option<&Arc<Cluster>>,
        path: String,
    ) -> Self {
        let local = cluster.map_or(per_user, |cluster| cluster.config().share(per_user));
        Self {
            config,
            handlers,
            per_user: ConnectionLimiter::new(local),
            total: Arc::new(Semaphore::new(total as usize)),
            cluster: cluster.cloned(),
            path,
            per_user_cap: per_user,
        }
    }

    pub async fn open<B>(&self, request: &Request<B>, context: SseContext<'_>) -> Response<Body> {
        if request.method() != Method::GET {
            context.metrics.reject(Rejection::MethodNotAllowed);
            return body::method_not_allowed("GET");
        }
        let setup = match ask_js(request, &context, self.handlers.setup, Vec::new()).await {
            Ok(answer) => answer,
            Err(response) => return response,
        };
        let Ok(setup) = serde_json::from_slice::<Setup>(&setup) else {
            return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n");
        };
        if setup
            .topics
            .iter()
            .any(|topic| bus::validate(topic, true).is_err())
        {
            return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n");
        }
        if let Some(record) = &context.access {
            record.user(setup.user.as_deref());
        }
        let key = ClientKey::new(setup.user.as_deref(), context.client);
        let refuse = |status: u16| {
            context.metrics.refuse(
                reject::Refusal::new(Rejection::SseLimit)
                    .app(context.app)
                    .client(context.client)
                    .user(setup.user.as_deref())
                    .route(request.uri().path())
                    .status(status),
            )
        };
        let per_user = || {
            refuse(429);
            too_many(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many event streams for this user\n",
            )
        };
        let admission = match &self.cluster {
            None => None,
            Some(cluster) => {
                let caps = [(format!("sse:{}:{key}", self.path), self.per_user_cap)];
                match lease::admit(cluster, &caps).await {
                    Ok(admission) => admission,
                    Err(Refusal::AtCap(_)) => return per_user(),
                    Err(Refusal::Unavailable) => {
                        refuse(503);
                        return too_many(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Connection limits are unavailable, try again shortly\n",
                        );
                    }
                }
            }
        };
        let capped = admission
            .as_ref()
            .is_none_or(|admission| admission.local_cap);
        let Some(slot) = self.per_user.acquire_key(key, capped) else {
            return per_user();
        };
        let Ok(permit) = Arc::clone(&self.total).try_acquire_owned() else {
            refuse(503);
            return too_many(StatusCode::SERVICE_UNAVAILABLE, "Too many event streams\n");
        };
        let queue = Arc::new(EventQueue::new(
            &self.config,
            Arc::clone(context.metrics),
            Arc::clone(context.conn),
        ));
        let subscription = context
            .bus
            .subscribe(setup.topics.clone(), queue.clone() as Arc<dyn Sink>);
        if let Some(cluster) = &self.cluster {
            // Subscribed on every instance too before the snapshot (or the replay) is taken.
            cluster.until_subscribed(&setup.topics).await;
        }

        let mut opening = Vec::new();
        if let Some(retry) = self.config.retry {
            opening.push(Bytes::from(format!("retry: {retry}\n\n")));
        }
        let last_id = request
            .headers()
            .get("last-event-id")
            .and_then(|value| value.to_str().ok());
        let resumed = match last_id {
            Some(last) => self.resume(context.bus, &setup.topics, last, &queue).await,
            None => None,
        };
        match (resumed, self.handlers.snapshot) {
            (Some(missed), _) => opening.extend(missed),
            (None, Some(handler)) => {
                let params = vec!["user".to_string(), setup.user.clone().unwrap_or_default()];
                let answer = match ask_js(request, &context, handler, params).await {
                    Ok(answer) => answer,
                    Err(response) => return response,
                };
                let Ok(snapshot) = serde_json::from_slice::<Snapshot>(&answer) else {
                    return body::text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal Server Error\n",
                    );
                };
                queue.skip_through(snapshot.seq);
                let event = snapshot.event.as_deref().or(Some("snapshot"));
                opening.push(bus::frame(&snapshot.seq.to_string(), event, &snapshot.data));
            }
            (None, None) => {}
        }

        let on_close = self.handlers.close.map(|handler| OnClose {
            queue: Arc::clone(&queue),
            bridge: Arc::clone(context.bridge),
            handler,
            user: setup.user.unwrap_or_default(),
            client: context.client,
            reason: CloseReason::Client,
        });
        if let Some(record) = &context.access {
            record.event_stream();
            record.status(200);
        }
        let held = Held {
            access: context.access.clone(),
            _live: Live::new(context.app, Kind::SseStream),
            _lease: admission.map(|admission| admission.lease),
            _slot: slot,
            _permit: permit,
            _subscription: subscription,
            on_close,
        };
        context.bus.watch(&context.shutdown);
        let stream = EventSource {
            opening: opening.into(),
            queue,
            bus: Arc::clone(context.bus),
            keep_alive: context.keep_alive,
            held,
            quiet: Box::pin(tokio::time::sleep(context.keep_alive)),
            last_write: tokio::time::Instant::now(),
            send_timeout: context.conn.send_timeout(),
            metrics: Arc::clone(context.metrics),
        };
        // The body is the stream, written by hyper or (the connection handed over, see
        // `conn::handoff`) by its own task on the bare socket.
        let mut response = Response::new(body::empty());
        response
            .extensions_mut()
            .insert(HandOffSlot::new(Box::new(stream)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

impl SseRoute {
    /// The frames a client missed since `last`, on `topics`, with the queue told to skip them;
    /// `None` when `last` is not held (the snapshot is sent instead). With a cluster, from the
    /// history every instance appends to (so a client may resume on any instance), else, or
    /// when Redis fails, from this instance's recent events.
    async fn resume(
        &self,
        bus: &Bus,
        topics: &[String],
        last: &str,
        queue: &EventQueue,
    ) -> Option<Vec<Bytes>> {
        if let Some(cluster) = self.cluster.as_ref().filter(|c| c.config().history > 0) {
            match crate::cluster::bus::since(cluster, topics, last).await {
                Ok(Some(missed)) => {
                    queue.skip_ids(missed.iter().map(|event| event.id.clone()).collect());
                    return Some(missed.into_iter().map(|event| event.frame).collect());
                }
                Ok(None) => return None,
                Err(failure) => cluster.health().fell_back(failure),
            }
        }
        let missed = bus.since(topics, last)?;
        queue.skip_through(missed.last().map_or(0, |event| event.seq));
        Some(missed.iter().map(|event| event.frame.clone()).collect())
    }
}

fn too_many(status: StatusCode, message: &'static str) -> Response<Body> {
    body::text_with(
        status,
        message,
        header::RETRY_AFTER,
        HeaderValue::from_static("5"),
    )
}

/// One JS exchange whose answer is a JSON body.
async fn ask_js<B>(
    request: &Request<B>,
    context: &SseContext<'_>,
    handler: u32,
    params: Vec<String>,
) -> Result<Bytes, Response<Body>> {
    let target = JsTarget {
        bridge: context.bridge,
        handler,
        params,
        url: context.url.clone(),
        client: context.client,
    };
    ask(request, target, context.handler_timeout, context.metrics).await
}

/// A connection's bounded queue of events not yet written.
struct EventQueue {
    state: Mutex<QueueState>,
    /// The stream's body, parked while the queue is empty.
    waker: AtomicWaker,
    metrics: Arc<Metrics>,
}

struct QueueState {
    events: BoundedQueue<SharedEvent>,
    /// Events up to this sequence number are already covered (snapshot or replay).
    skip_through: u64,
    /// Ids of events a replay from the cluster's history covered; each is skipped (and
    /// forgotten) when it arrives live too.
    skip_ids: HashSet<String>,
    overflowed: bool,
    /// The stream's connection while hyper writes it: ended at once on overflow under the
    /// `close` policy, since a reader that stopped reading would otherwise keep hyper's
    /// blocked write open. A stream on the bare socket (`sse_socket`) ends itself.
    conn: Option<Arc<ConnState>>,
}

impl Weighed for SharedEvent {
    fn weight(&self) -> usize {
        self.frame.len()
    }
}

impl EventQueue {
    fn new(config: &SseConfig, metrics: Arc<Metrics>, conn: Arc<ConnState>) -> Self {
        let limits = QueueLimits {
            items: config.queue_events as usize,
            bytes: config.queue_bytes as usize,
            overflow: config.overflow,
        };
        Self {
            state: Mutex::new(QueueState {
                events: BoundedQueue::new(limits),
                skip_through: 0,
                skip_ids: HashSet::new(),
                overflowed: false,
                conn: Some(conn),
            }),
            waker: AtomicWaker::new(),
            metrics,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn skip_through(&self, seq: u64) {
        let mut state = self.state();
        state.skip_through = seq;
        while state.events.front().is_some_and(|event| event.seq <= seq) {
            state.events.pop();
        }
    }

    /// Skips the events with these ids: those queued already, and those still to come.
    fn skip_ids(&self, ids: HashSet<String>) {
        let mut state = self.state();
        let mut kept = Vec::new();
        while let Some(event) = state.events.pop() {
            if !ids.contains(&event.id) {
                kept.push(event);
            }
        }
        for event in kept {
            state.events.push(event);
        }
        state.skip_ids = ids;
    }

    /// The stream left hyper: its connection's state is not needed any more.
    fn detach_conn(&self) {
        self.state().conn = None;
    }

    /// Whether the queue overflowed under the `close` policy.
    fn overflowed(&self) -> bool {
        self.state().overflowed
    }

    /// The queued events' frames as one chunk (at most `COALESCE` bytes, or a single larger
    /// event); `Err` once the queue overflowed under the `close` policy.
    fn pop(&self) -> Result<Option<Bytes>, ()> {
        let mut state = self.state();
        if state.overflowed {
            return Err(());
        }
        let Some(first) = state.events.pop() else {
            return Ok(None);
        };
        let fits = |state: &QueueState, taken: usize| {
            state
                .events
                .front()
                .is_some_and(|next| taken + next.frame.len() <= COALESCE)
        };
        if !fits(&state, first.frame.len()) {
            return Ok(Some(first.frame.clone()));
        }
        // A reader that fell behind gets its backlog in one body chunk, not one per event:
        // hyper frames and queues each chunk, which costs more than copying small events.
        let queued = state.events.bytes();
        let mut chunk = BytesMut::with_capacity(COALESCE.min(queued + first.frame.len()));
        chunk.extend_from_slice(&first.frame);
        while fits(&state, chunk.len()) {
            if let Some(event) = state.events.pop() {
                chunk.extend_from_slice(&event.frame);
            }
        }
        Ok(Some(chunk.freeze()))
    }
}

impl Sink for EventQueue {
    fn deliver(&self, event: &SharedEvent) {
        let mut state = self.state();
        if state.overflowed || event.seq <= state.skip_through {
            return;
        }
        if !state.skip_ids.is_empty() && state.skip_ids.remove(&event.id) {
            return;
        }
        match state.events.push(event.clone()) {
            Pushed::Queued { dropped } => {
                let depth = state.events.len();
                drop(state);
                self.metrics.sse_queued(depth);
                self.metrics
                    .reject_many(Rejection::SseEventDropped, dropped);
                self.waker.wake();
            }
            Pushed::Refused => self.metrics.reject(Rejection::SseEventDropped),
            Pushed::Overflow => {
                state.overflowed = true;
                let conn = state.conn.clone();
                drop(state);
                self.metrics.reject(Rejection::SseOverflow);
                if let Some(conn) = conn {
                    conn.abort();
                }
                self.waker.wake();
            }
        }
    }

    fn wake(&self) {
        self.waker.wake();
    }
}

/// Calls `onClose(user, reason)` in JS exactly once, when the stream's resources are dropped.
struct OnClose {
    queue: Arc<EventQueue>,
    bridge: Arc<Bridge>,
    handler: u32,
    user: String,
    client: IpAddr,
    reason: CloseReason,
}

impl Drop for OnClose {
    fn drop(&mut self) {
        let reason = if self.queue.overflowed() {
            CloseReason::Overflow
        } else {
            self.reason
        };
        let params = vec![
            "user".into(),
            self.user.clone(),
            "reason".into(),
            reason.as_str().into(),
        ];
        self.bridge
            .notify(self.handler, params, self.client.to_string());
    }
}

/// What an open stream holds: its slots, its subscription, its close notice.
struct Held {
    /// Logged when the stream ends (and its last holder lets go).
    access: Option<Arc<AccessRecord>>,
    _live: Live,
    _lease: Option<Lease>,
    _slot: crate::limit::conn::Slot<ClientKey>,
    _permit: OwnedSemaphorePermit,
    _subscription: bus::SubscriptionGuard,
    on_close: Option<OnClose>,
}

impl Held {
    fn closing(&mut self, reason: CloseReason) {
        if let Some(on_close) = &mut self.on_close {
            on_close.reason = reason;
        }
    }
}

/// An event stream's source of chunks: the opening (retry, replay or snapshot), then queued
/// events, with a keepalive comment after `keep_alive` without a write. Polled by hand: an
/// idle stream waits on its queue's waker and one timer, and a delivery costs one wake, not a
/// new registration per event with the queue and the shutdown token. Written by hyper as a
/// body (`EventBody`) or by its own task on the bare socket (`sse_socket`).
pub(crate) struct EventSource {
    opening: VecDeque<Bytes>,
    queue: Arc<EventQueue>,
    bus: Arc<Bus>,
    keep_alive: Duration,
    held: Held,
    /// One timer per stream. Writes only note their time; the timer, when it fires, moves
    /// itself to a keepalive after the last write (no timer update per event).
    quiet: Pin<Box<tokio::time::Sleep>>,
    last_write: tokio::time::Instant,
    /// The app's `sendTimeout`, for the bare socket's writes.
    send_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl EventSource {
    /// The next chunk to write; `None` once the stream ends (shutdown, overflow).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(bytes) = self.opening.pop_front() {
            if self.opening.is_empty() {
                // Its buffer is not kept for the stream's life.
                self.opening = VecDeque::new();
            }
            return Poll::Ready(Some(bytes));
        }
        loop {
            // Registered before looking, so a delivery in between is not missed.
            self.queue.waker.register(cx.waker());
            if self.bus.is_shutting_down() {
                self.held.closing(CloseReason::Shutdown);
                return Poll::Ready(None);
            }
            match self.queue.pop() {
                Err(()) => {
                    if let Some(record) = &self.held.access {
                        record.refused(Rejection::SseOverflow);
                    }
                    return Poll::Ready(None);
                }
                Ok(Some(chunk)) => {
                    self.last_write = tokio::time::Instant::now();
                    return Poll::Ready(Some(chunk));
                }
                Ok(None) => {}
            }
            std::task::ready!(self.quiet.as_mut().poll(cx));
            let now = tokio::time::Instant::now();
            let due = self.last_write + self.keep_alive;
            if now < due {
                self.quiet.as_mut().reset(due);
                continue;
            }
            self.last_write = now;
            self.quiet.as_mut().reset(now + self.keep_alive);
            return Poll::Ready(Some(Bytes::from_static(b":\n\n")));
        }
    }

    /// Whether the stream must end now, without writing what is left: its queue overflowed
    /// under the `close` policy, or the server is shutting down.
    pub(crate) fn must_end(&mut self, cx: &mut Context<'_>) -> bool {
        self.queue.waker.register(cx.waker());
        if self.bus.is_shutting_down() {
            self.held.closing(CloseReason::Shutdown);
            return true;
        }
        self.queue.overflowed()
    }

    /// The queue overflowed under the `close` policy.
    pub(crate) fn overflowed(&self) -> bool {
        self.queue.overflowed()
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        self.send_timeout
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `bytes` of the stream written on the bare socket (head and chunk framing included).
    pub(crate) fn sent(&self, bytes: usize) {
        self.metrics.sent(bytes);
        if let Some(record) = &self.held.access {
            record.sent(bytes);
        }
    }
}

/// The stream as a body hyper writes (HTTP/2, or an HTTP/1.1 connection that could not be
/// handed over).
struct EventBody(EventSource);

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_next(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

impl HandOff for EventSource {
    fn into_body(self: Box<Self>) -> Body {
        EventBody(*self).boxed_unsync()
    }

    fn start(
        self: Box<Self>,
        socket: Socket,
        guard: SocketGuard,
        head: Bytes,
        chunked: bool,
        tracker: &TaskTracker,
    ) {
        self.queue.detach_conn();
        let access = self.held.access.clone();
        let stream = SocketStream::new(*self, socket, guard, head, chunked);
        // Refusals of the stream's task (a send stall) note their reason on its record.
        match access {
            Some(record) => tracker.spawn(CURRENT.scope(record, stream)),
            None => tracker.spawn(stream),
        };
    }
}
