//! WebSocket sessions as JS and the topic bus reach them: a registry by id, each session's
//! bounded outbound queue, and the events a session hands to JS.
//!
//! JS never touches a socket. `ws.send` and `ws.close` calls are gathered in JS and cross in
//! one call per turn of its event loop ([`WsHub::send_batch`]); `server.publish` reaches a
//! session through its queue, which the bus sees as a [`Sink`]. The session task drains the
//! queue into the socket as fast as the client reads, and not faster: a full queue drops
//! messages (counted) or closes the socket with 1013, as the route says.

use crate::events::bus::{self, Bus, SharedEvent, Sink, SubscriptionGuard};
use crate::limit::queue::{BoundedQueue, Pushed, QueueLimits, Weighed};
use crate::metrics::{Metrics, Rejection};
use crate::ws::deadlines::{Deadlines, Tick};
use crate::ws::deflate::SharedDeflate;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Close code for "try again later", sent when a slow reader's queue overflows.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// What a session tells JS, in order per session.
pub enum WsEvent {
    Open {
        id: u64,
        route: u32,
        user: Option<String>,
        client: String,
        url: String,
        /// The subprotocol answered in the `101`, if any.
        protocol: Option<String>,
    },
    Message {
        id: u64,
        data: Bytes,
        binary: bool,
        /// Counts the message against the session's backlog until the host hands it to JS.
        backlog: JsBacklog,
    },
    /// The client's input was refused with `code`: JS closes the socket with it once it has
    /// sent its replies to the messages before (see `session::State::Failing`).
    Refused {
        id: u64,
        code: u16,
        reason: String,
    },
    Close {
        id: u64,
        code: u16,
        reason: String,
    },
}

/// A message on its way to JS. Dropping it (once the host has passed it to the JS thread)
/// takes it off the session's backlog, so a session paused on a busy JS thread reads again.
pub struct JsBacklog {
    session: Arc<SessionHandle>,
    bytes: usize,
}

impl Drop for JsBacklog {
    fn drop(&mut self) {
        let before = self
            .session
            .js_backlog
            .fetch_sub(self.bytes, Ordering::AcqRel);
        if before >= JS_BACKLOG_LIMIT && before - self.bytes < JS_BACKLOG_LIMIT {
            self.session.waker.wake();
        }
    }
}

/// Message bytes a session may have on their way to JS before it stops reading its socket:
/// a flood cannot pile up work for a JS thread that is not keeping up.
pub const JS_BACKLOG_LIMIT: usize = 1 << 20;

/// Queue slots a session keeps allocated between bursts.
pub const RETAINED_QUEUE: usize = 8;

/// A close the session should send (from JS, or after an overflow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: String,
}

struct Outbound {
    messages: BoundedQueue<Message>,
    /// Boxed: almost every socket has none, almost all the time.
    close: Option<Box<CloseRequest>>,
}

impl Weighed for Message {
    fn weight(&self) -> usize {
        payload_len(self)
    }
}

/// One session as the rest of the server sees it.
pub struct SessionHandle {
    pub id: u64,
    outbound: Mutex<Outbound>,
    /// The session task, woken when there is something to send or it may read again.
    pub waker: AtomicWaker,
    metrics: Arc<Metrics>,
    js_backlog: AtomicUsize,
    /// Bytes queued but not yet handed to the socket (`ws.bufferedAmount`).
    queued_bytes: AtomicUsize,
    closed: AtomicBool,
    /// One guard per pattern (a list: sockets hold few, and an empty one costs nothing).
    /// A boxed slice, not a `Vec`: 8 bytes less on every socket, and subscribing is rare.
    subscriptions: Mutex<Box<[SubscriptionGuard]>>,
    /// permessage-deflate with the worker's shared compressor: published events arrive
    /// compressed once for all such sockets (`Message::Frame`, RSV1 set).
    shared_deflate: Option<SharedDeflate>,
}

fn payload_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        Message::Frame(frame) => frame.payload().len(),
        _ => 0,
    }
}

impl SessionHandle {
    fn outbound(&self) -> std::sync::MutexGuard<'_, Outbound> {
        self.outbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message for the socket, applying the overflow policy when the queue is full.
    pub fn enqueue(&self, message: Message) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut outbound = self.outbound();
        if outbound.close.is_some() {
            return;
        }
        match outbound.messages.push(message) {
            Pushed::Queued { dropped } => {
                self.queued_bytes
                    .store(outbound.messages.bytes(), Ordering::Relaxed);
                drop(outbound);
                self.metrics
                    .reject_many(Rejection::WsMessageDropped, dropped);
                self.waker.wake();
            }
            Pushed::Refused => self.metrics.reject(Rejection::WsMessageDropped),
            Pushed::Overflow => {
                outbound.messages.clear();
                outbound.close = Some(Box::new(CloseRequest {
                    code: CLOSE_TRY_AGAIN_LATER,
                    reason: "Send queue overflow".into(),
                }));
                self.queued_bytes.store(0, Ordering::Relaxed);
                drop(outbound);
                self.metrics.reject(Rejection::WsOverflow);
                self.waker.wake();
            }
        }
    }

    /// Asks the session to close with `code` after what is already queued.
    pub fn request_close(&self, request: CloseRequest) {
        let mut outbound = self.outbound();
        if outbound.close.is_none() {
            outbound.close = Some(Box::new(request));
        }
        drop(outbound);
        self.waker.wake();
    }

    /// Hands queued messages to `each` until about `budget` payload bytes have gone (at least
    /// one message), and returns the close request once the queue is empty.
    pub fn drain(&self, budget: usize, mut each: impl FnMut(Message)) -> Option<CloseRequest> {
        let mut outbound = self.outbound();
        let mut taken = 0usize;
        while taken < budget {
            let Some(message) = outbound.messages.pop() else {
                break;
            };
            taken += payload_len(&message).max(1);
            each(message);
        }
        self.queued_bytes
            .store(outbound.messages.bytes(), Ordering::Relaxed);
        if !outbound.messages.is_empty() {
            return None;
        }
        // A burst should not leave a large queue allocated for the rest of the session.
        outbound.messages.shrink_to(RETAINED_QUEUE);
        outbound.close.take().map(|close| *close)
    }

    /// The session is closing: what is queued is dropped, and nothing more is taken.
    pub fn stop_sending(&self) {
        self.closed.store(true, Ordering::Release);
        self.outbound().messages.clear();
        self.queued_bytes.store(0, Ordering::Relaxed);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn buffered_amount(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// A message of `size` bytes leaves for JS: the returned guard keeps it on the backlog
    /// until dropped. Each message counts a little more than its bytes, so a flood of empty
    /// messages is bounded too.
    pub fn to_js(self: &Arc<Self>, size: usize) -> JsBacklog {
        let bytes = size + 64;
        self.js_backlog.fetch_add(bytes, Ordering::AcqRel);
        JsBacklog {
            session: Arc::clone(self),
            bytes,
        }
    }

    /// Too many bytes are waiting for JS: stop reading until the backlog drains.
    pub fn js_backlogged(&self) -> bool {
        self.js_backlog.load(Ordering::Acquire) >= JS_BACKLOG_LIMIT
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, Box<[SubscriptionGuard]>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sink for SessionHandle {
    fn deliver(&self, event: &SharedEvent) {
        match self.shared_deflate {
            Some(shared) if event.data.len() >= shared.threshold as usize => {
                let header = FrameHeader {
                    opcode: OpCode::Data(Data::Text),
                    rsv1: true,
                    ..FrameHeader::default()
                };
                let payload = event.deflated.get(shared.window, event.data.as_bytes());
                self.enqueue(Message::Frame(Frame::from_payload(header, payload)));
            }
            _ => self.enqueue(Message::Text(event.data.clone())),
        }
    }
}

/// Every open session of a server, by id.
#[derive(Default)]
pub struct WsHub {
    sessions: RwLock<HashMap<u64, Arc<SessionHandle>>>,
    next_id: AtomicU64,
    /// The server is closing: every session sends 1001 and winds down.
    shutting_down: AtomicBool,
    /// The drain deadline passed: every session ends now.
    aborted: AtomicBool,
    watching: AtomicBool,
    /// Every session's next deadline, swept by one task (see `deadlines`).
    deadlines: Deadlines,
}

#[derive(Clone, Copy)]
enum Flag {
    ShuttingDown,
    Aborted,
}

/// Removes its session from the hub (and the bus) when the session ends, however it ends.
pub struct Registration {
    pub hub: Arc<WsHub>,
    pub handle: Arc<SessionHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.handle.closed.store(true, Ordering::Release);
        // The bus holds the handle as a sink: dropping the guards breaks that cycle.
        *self.handle.subscriptions() = Box::default();
        self.hub
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.handle.id);
        self.handle.metrics.ws_closed();
    }
}

/// Why `subscribe` could not be carried out.
#[derive(Debug, PartialEq, Eq)]
pub enum HubError {
    InvalidTopic(String),
}

/// One `ws.send` or `ws.close` call from JS.
#[derive(Debug, PartialEq, Eq)]
pub enum WsSend {
    Text(Utf8Bytes),
    Binary(Bytes),
    Close(CloseRequest),
}

impl WsHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn register(
        self: &Arc<Self>,
        limits: QueueLimits,
        metrics: Arc<Metrics>,
        shared_deflate: Option<SharedDeflate>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = Arc::new(SessionHandle {
            id,
            outbound: Mutex::new(Outbound {
                messages: BoundedQueue::new(limits),
                close: None,
            }),
            waker: AtomicWaker::new(),
            metrics: Arc::clone(&metrics),
            js_backlog: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            subscriptions: Mutex::default(),
            shared_deflate,
        });
        metrics.ws_opened();
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&handle));
        Registration {
            hub: Arc::clone(self),
            handle,
        }
    }

    /// Follows the server's shutdown (every session closes with 1001) and abort (every session
    /// ends at once). One watcher per hub, started by the first upgrade: sessions then need no
    /// cancellation future of their own, only these two flags.
    pub fn watch(self: &Arc<Self>, shutdown: &CancellationToken, abort: &CancellationToken) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let hub = Arc::downgrade(self);
        let (shutdown, abort) = (shutdown.clone(), abort.clone());
        tokio::spawn(async move {
            for (token, flag) in [(shutdown, Flag::ShuttingDown), (abort, Flag::Aborted)] {
                token.cancelled().await;
                let Some(hub) = hub.upgrade() else { return };
                hub.raise(flag);
            }
        });
    }

    /// Wakes session `id` at `tick` (see `deadlines`); the first call starts the sweeper.
    pub fn wake_at(self: &Arc<Self>, tick: Tick, id: u64) {
        if self.deadlines.file(tick, id) {
            tokio::spawn(sweep(Arc::downgrade(self), self.deadlines.earlier()));
        }
    }

    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    fn raise(&self, flag: Flag) {
        match flag {
            Flag::ShuttingDown => self.shutting_down.store(true, Ordering::Release),
            Flag::Aborted => self.aborted.store(true, Ordering::Release),
        }
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        for session in sessions.values() {
            session.waker.wake();
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    pub fn get(&self, id: u64) -> Option<Arc<SessionHandle>> {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Carries out a batch of `ws.send` / `ws.close` calls (as the binding decoded them).
    /// Calls on sessions that are gone are skipped.
    pub fn send_all(&self, sends: impl IntoIterator<Item = (u64, WsSend)>) {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        for (id, send) in sends {
            let Some(session) = sessions.get(&id) else {
                continue;
            };
            match send {
                WsSend::Text(text) => session.enqueue(Message::Text(text)),
                WsSend::Binary(bytes) => session.enqueue(Message::Binary(bytes)),
                WsSend::Close(request) => session.request_close(request),
            }
        }
    }

    /// Subscribes session `id` to a topic pattern; `false` when the session is gone.
    pub fn subscribe(&self, bus: &Arc<Bus>, id: u64, pattern: &str) -> Result<bool, HubError> {
        bus::validate(pattern, true).map_err(HubError::InvalidTopic)?;
        let Some(session) = self.get(id) else {
            return Ok(false);
        };
        let mut subscriptions = session.subscriptions();
        if session.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        if !subscriptions.iter().any(|guard| guard.is_for(pattern)) {
            let sink: Arc<dyn Sink> = Arc::clone(&session) as Arc<dyn Sink>;
            let guard = bus.subscribe(vec![pattern.to_string()], sink);
            let mut list = std::mem::take(&mut *subscriptions).into_vec();
            list.push(guard);
            *subscriptions = list.into_boxed_slice();
        }
        Ok(true)
    }

    pub fn unsubscribe(&self, id: u64, pattern: &str) -> bool {
        match self.get(id) {
            Some(session) => {
                let mut subscriptions = session.subscriptions();
                let found = subscriptions.iter().position(|guard| guard.is_for(pattern));
                let Some(index) = found else {
                    return false;
                };
                let mut list = std::mem::take(&mut *subscriptions).into_vec();
                list.swap_remove(index);
                *subscriptions = list.into_boxed_slice();
                true
            }
            None => false,
        }
    }

    /// Open sessions (for stats and tests).
    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wakes sessions as their filed deadlines come, until the hub is gone.
async fn sweep(hub: Weak<WsHub>, earlier: Arc<tokio::sync::Notify>) {
    loop {
        let next = {
            let Some(hub) = hub.upgrade() else { return };
            let (due, next) = hub.deadlines.due();
            if !due.is_empty() {
                let sessions = hub.sessions.read().unwrap_or_else(|p| p.into_inner());
                for id in due {
                    if let Some(session) = sessions.get(&id) {
                        session.waker.wake();
                    }
                }
            }
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = earlier.notified() => {}
                }
            }
            None => earlier.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;

    fn limits(overflow: Overflow) -> QueueLimits {
        QueueLimits {
            items: 2,
            bytes: 1024,
            overflow,
        }
    }

    #[test]
    fn send_all_queues_per_session_and_skips_the_gone() {
        let hub = WsHub::new();
        let registration = hub.register(limits(Overflow::DropOldest), Arc::default(), None);
        let id = registration.handle.id;
        hub.send_all([
            (id, WsSend::Text("hi".into())),
            (id + 100, WsSend::Text("nobody".into())),
            (id, WsSend::Binary(Bytes::from_static(b"abc"))),
        ]);
        let mut out = Vec::new();
        assert_eq!(registration.handle.drain(1024, |m| out.push(m)), None);
        assert_eq!(out, vec![Message::text("hi"), Message::binary(&b"abc"[..])]);
    }

    #[test]
    fn full_queue_drops_oldest_or_closes() {
        let hub = WsHub::new();
        let metrics = Arc::new(Metrics::default());
        let dropping = hub.register(limits(Overflow::DropOldest), Arc::clone(&metrics), None);
        for text in ["1", "2", "3"] {
            dropping.handle.enqueue(Message::text(text));
        }
        let mut out = Vec::new();
        dropping.handle.drain(1024, |m| out.push(m));
        assert_eq!(out, vec![Message::text("2"), Message::text("3")]);
        assert_eq!(metrics.rejections(Rejection::WsMessageDropped), 1);

        let closing = hub.register(limits(Overflow::Close), Arc::clone(&metrics), None);
        for text in ["1", "2", "3"] {
            closing.handle.enqueue(Message::text(text));
        }
        let mut out = Vec::new();
        let close = closing.handle.drain(1024, |m| out.push(m));
        assert!(out.is_empty());
        assert_eq!(close.map(|c| c.code), Some(CLOSE_TRY_AGAIN_LATER));
    }

    #[test]
    fn registration_drop_unsubscribes_and_unregisters() {
        let hub = WsHub::new();
        let bus = Bus::new();
        let registration = hub.register(limits(Overflow::DropOldest), Arc::default(), None);
        let id = registration.handle.id;
        assert_eq!(hub.subscribe(&bus, id, "a.>"), Ok(true));
        assert!(hub.subscribe(&bus, id, "a..b").is_err());
        assert_eq!(bus.publish("a.x", "1", None, None), 1);
        drop(registration);
        assert_eq!(bus.publish("a.x", "2", None, None), 0);
        assert!(hub.is_empty());
        assert_eq!(hub.subscribe(&bus, id, "a.>"), Ok(false));
    }
}
