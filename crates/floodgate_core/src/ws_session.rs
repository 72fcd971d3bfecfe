//! One WebSocket session: a single task that reads frames, writes the session's queue as the
//! client takes it, and keeps the session's timers (idle, ping/pong, rate pauses, closing).
//!
//! tungstenite is configured to be safe with untrusted peers: frame and message caps equal to
//! `wsMaxMessageSize` (it checks a frame's declared length before buffering it), small read
//! and write buffers, and a bounded write buffer. It reports an oversize message as an error
//! and would just drop the connection; the session sends the `1009` close frame itself.
//! permessage-deflate is never negotiated, so no inflated size can exceed what was read.

use crate::bridge::Bridge;
use crate::config::RateAction;
use crate::limit::bucket::{direct_limiter, DirectLimiter};
use crate::metrics::{Metrics, Rejection};
use crate::ws::Held;
use crate::ws_hub::{QueueLimits, Registration, SessionHandle, WsEvent, RETAINED_QUEUE};
use bytes::Bytes;
use futures_util::{Sink, Stream};
use governor::clock::Clock;
use governor::Quota;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// tungstenite zeroes and reads into this much per read, and an idle socket keeps it: 512 B
/// (not its 128 KiB default) saves 1.6 KiB per idle socket. Messages larger than it grow the
/// buffer only while they arrive, at the cost of one read call per 512 B for them.
const READ_BUFFER: usize = 512;
/// Frames are gathered up to this size before a write: one syscall for a burst of messages.
const WRITE_BUFFER: usize = 16 * 1024;
/// After a close frame, how long the peer has to answer before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages read (or written) in one go before the task yields to others.
const BATCH: usize = 64;

const NO_STATUS: u16 = 1005;
const ABNORMAL: u16 = 1006;

/// The limits of one session, from the app and the route.
#[derive(Clone)]
pub struct SessionLimits {
    pub max_message_size: usize,
    pub idle_timeout: Duration,
    pub idle_counts_pings: bool,
    pub messages_per_second: u32,
    pub bytes_per_second: u64,
    pub rate_action: RateAction,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub queue: QueueLimits,
    pub route: u32,
}

/// Everything a session needs, handed over by the upgrade.
pub struct SessionStart {
    pub on_upgrade: OnUpgrade,
    /// Shared by every session of the route.
    pub limits: Arc<SessionLimits>,
    pub user: Option<String>,
    pub client: IpAddr,
    pub url: String,
    pub bridge: Arc<Bridge>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub abort: CancellationToken,
    pub held: Held,
}

/// Runs a session from the upgrade to its end; JS hears `open` and exactly one `close`.
pub async fn run(start: SessionStart) {
    let SessionStart {
        on_upgrade,
        limits,
        user,
        client,
        url,
        bridge,
        metrics,
        shutdown,
        abort,
        held,
    } = start;
    let upgraded = tokio::select! {
        upgraded = on_upgrade => match upgraded {
            Ok(upgraded) => upgraded,
            Err(_) => return,
        },
        _ = abort.cancelled() => return,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + limits.max_message_size + 1024)
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size));
    // Boxed: the handshake's state lives only while it runs, not in every session's task.
    let ws = Box::pin(WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(config),
    ))
    .await;
    let registration = bridge.ws_hub().register(limits.queue, Arc::clone(&metrics));
    let id = registration.handle.id;
    bridge.ws_event(WsEvent::Open {
        id,
        route: limits.route,
        user,
        client: client.to_string(),
        url,
    });
    // Boxed, so the task's own state stays small (an async fn's state keeps such values
    // more than once); an idle socket's memory is mostly this.
    let mut session = Box::new(Session::new(
        ws,
        &registration,
        &bridge,
        metrics,
        limits,
        shutdown,
    ));
    let end = tokio::select! {
        end = poll_fn(|cx| session.poll(cx)) => end,
        _ = abort.cancelled() => End::dropped(),
    };
    bridge.ws_event(WsEvent::Close {
        id,
        code: end.code,
        reason: end.reason,
    });
    // The caps' slots are free as soon as JS hears of the close.
    drop(registration);
    drop(held);
    if end.graceful {
        session.linger(&abort).await;
    }
}

/// How a session ended, as JS's `close(ws, code, reason)` reports it.
struct End {
    code: u16,
    reason: String,
    /// The close handshake completed: shut the socket down politely.
    graceful: bool,
}

impl End {
    fn dropped() -> Self {
        Self {
            code: ABNORMAL,
            reason: String::new(),
            graceful: false,
        }
    }
}

enum State {
    Open,
    /// A close frame was sent (or answered); waiting for the handshake to finish.
    Closing {
        deadline: Instant,
        code: u16,
        reason: String,
    },
}

/// The per-connection rate limits (governor's GCRA, burst of one second's worth).
struct Rates {
    messages: Option<DirectLimiter>,
    bytes: Option<DirectLimiter>,
}

impl Rates {
    fn new(limits: &SessionLimits) -> Option<Self> {
        let limiter = |per_second: u64| {
            let rate = NonZeroU32::new(per_second.min(u32::MAX as u64) as u32)?;
            Some(direct_limiter(Quota::per_second(rate)))
        };
        let rates = Self {
            messages: limiter(limits.messages_per_second as u64),
            bytes: limiter(limits.bytes_per_second),
        };
        (rates.messages.is_some() || rates.bytes.is_some()).then_some(rates)
    }

    /// `None` when the message may pass now, else how long until it may.
    fn check(&self, size: usize) -> Option<Duration> {
        if let Some(messages) = &self.messages {
            if let Err(not_until) = messages.check() {
                return Some(not_until.wait_time_from(messages.clock().now()));
            }
        }
        let bytes = self.bytes.as_ref()?;
        let cells = NonZeroU32::new(size.min(u32::MAX as usize) as u32)?;
        match bytes.check_n(cells) {
            Ok(Err(not_until)) => Some(not_until.wait_time_from(bytes.clock().now())),
            // Larger than a second's worth: config validation keeps messages under it.
            Err(_) => Some(Duration::from_secs(1)),
            Ok(Ok(())) => None,
        }
    }
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

struct Session {
    ws: Socket,
    handle: Arc<SessionHandle>,
    bridge: Arc<Bridge>,
    metrics: Arc<Metrics>,
    limits: Arc<SessionLimits>,
    /// Only when a rate limit is set: most sessions carry none.
    rates: Option<Box<Rates>>,
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    shutting_down: bool,
    state: State,
    /// Messages taken from the queue, waiting for room in the socket.
    outgoing: VecDeque<Message>,
    unflushed: bool,
    reading_done: bool,
    last_activity: Instant,
    last_ping: Instant,
    ping_sent: Option<Instant>,
    /// A message over the rate under `pause`, delivered once the rate allows.
    held_back: Option<(Bytes, bool)>,
    paused_until: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
}

impl Session {
    fn new(
        ws: Socket,
        registration: &Registration,
        bridge: &Arc<Bridge>,
        metrics: Arc<Metrics>,
        limits: Arc<SessionLimits>,
        shutdown: CancellationToken,
    ) -> Self {
        let now = Instant::now();
        Self {
            ws,
            handle: Arc::clone(&registration.handle),
            bridge: Arc::clone(bridge),
            metrics,
            rates: Rates::new(&limits).map(Box::new),
            limits,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            shutting_down: false,
            state: State::Open,
            outgoing: VecDeque::new(),
            unflushed: false,
            reading_done: false,
            last_activity: now,
            last_ping: now,
            ping_sent: None,
            held_back: None,
            paused_until: None,
            timer: Box::pin(tokio::time::sleep_until(now)),
            timer_at: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.handle.waker.register(cx.waker());
        if !self.shutting_down && self.shutdown.as_mut().poll(cx).is_ready() {
            self.shutting_down = true;
            self.begin_close(1001, "Server closing");
        }
        for _ in 0..BATCH {
            let wrote = match self.poll_write(cx) {
                Ok(wrote) => wrote,
                Err(end) => return Poll::Ready(end),
            };
            let read = match self.poll_read(cx) {
                Ok(read) => read,
                Err(end) => return Poll::Ready(end),
            };
            if let Some(end) = self.poll_timers(cx) {
                return Poll::Ready(end);
            }
            // After a read error tungstenite reads no more, so no close reply can arrive: the
            // session is over once its own close frame is out.
            if self.reading_done && !self.unflushed && matches!(self.state, State::Closing { .. }) {
                return Poll::Ready(self.finished());
            }
            if !wrote && !read {
                return Poll::Pending;
            }
        }
        // Busy: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// FIN, then a short drain of what the client still sends (the socket wrapper's lingering
    /// close) rather than a reset; bounded by the session's own timer, not a new one.
    async fn linger(&mut self, abort: &CancellationToken) {
        self.timer
            .as_mut()
            .reset(Instant::now() + Duration::from_secs(2));
        let Self { ws, timer, .. } = self;
        tokio::select! {
            _ = ws.get_mut().shutdown() => {}
            _ = timer.as_mut() => {}
            _ = abort.cancelled() => {}
        }
    }

    /// Moves queued messages into the socket as it takes them; `true` if anything moved.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut progressed = false;
        // After a close frame nothing more may be sent (`begin_close` emptied the queue).
        for _ in 0..BATCH {
            if !matches!(self.state, State::Open) {
                break;
            }
            if self.outgoing.is_empty() {
                if self.outgoing.capacity() > RETAINED_QUEUE {
                    self.outgoing.shrink_to(RETAINED_QUEUE);
                }
                if let Some(close) = self.handle.drain(&mut self.outgoing, BATCH) {
                    if self.outgoing.is_empty() {
                        self.begin_close(close.code, &close.reason);
                        progressed = true;
                    }
                }
            }
            if self.outgoing.is_empty() {
                break;
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Pending => return Ok(progressed),
                Poll::Ready(Err(_)) => return Err(self.end_abnormally()),
                Poll::Ready(Ok(())) => {}
            }
            let sent = self.outgoing.len();
            while let Some(message) = self.outgoing.pop_front() {
                if Pin::new(&mut self.ws).start_send(message).is_err() {
                    return Err(self.end_abnormally());
                }
                self.unflushed = true;
                progressed = true;
                // Over the write buffer: wait for the socket before queuing more.
                if Pin::new(&mut self.ws).poll_ready(cx).is_pending() {
                    break;
                }
            }
            self.metrics.ws_sent((sent - self.outgoing.len()) as u64);
        }
        if self.unflushed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Err(self.end_abnormally()),
                Poll::Pending => {}
            }
        }
        Ok(progressed)
    }

    /// Reads what the client sent, up to a batch; `true` if anything was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        if self.reading_done {
            return Ok(false);
        }
        if let Some((data, binary)) = self.held_back.take() {
            if !self.admit(data, binary) {
                return Ok(false);
            }
        }
        let mut progressed = false;
        for _ in 0..BATCH {
            if self.paused_until.is_some() || self.handle.js_backlogged() {
                return Ok(progressed);
            }
            let message = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Ok(progressed),
                Poll::Ready(None) => return Err(self.finished()),
                Poll::Ready(Some(Err(err))) => {
                    self.reading_done = true;
                    self.on_read_error(err)?;
                    return Ok(true);
                }
                Poll::Ready(Some(Ok(message))) => message,
            };
            progressed = true;
            match message {
                Message::Text(text) => {
                    self.admit(Bytes::from(text), false);
                }
                Message::Binary(bytes) => {
                    self.admit(bytes, true);
                }
                // tungstenite has queued the pong; the next write step flushes it.
                Message::Ping(_) => {
                    self.unflushed = true;
                    if self.limits.idle_counts_pings {
                        self.last_activity = Instant::now();
                    }
                }
                Message::Pong(_) => {
                    self.ping_sent = None;
                    if self.limits.idle_counts_pings {
                        self.last_activity = Instant::now();
                    }
                }
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((NO_STATUS, String::new()), |frame| {
                        (u16::from(frame.code), frame.reason.to_string())
                    });
                    if matches!(self.state, State::Open) {
                        self.handle.stop_sending();
                        self.state = State::Closing {
                            deadline: Instant::now() + CLOSE_TIMEOUT,
                            code,
                            reason,
                        };
                    }
                    // The reply close frame is queued inside tungstenite.
                    self.unflushed = true;
                }
                Message::Frame(_) => {}
            }
        }
        Ok(progressed)
    }

    /// A data message arrived: rate-check it, then hand it to JS. `false` when held back.
    fn admit(&mut self, data: Bytes, binary: bool) -> bool {
        self.last_activity = Instant::now();
        if !matches!(self.state, State::Open) {
            return true;
        }
        if let Some(wait) = self
            .rates
            .as_ref()
            .and_then(|rates| rates.check(data.len()))
        {
            match self.limits.rate_action {
                RateAction::Close => {
                    self.metrics.reject(Rejection::WsRateLimited);
                    self.begin_close(1008, "Rate limit exceeded");
                    return true;
                }
                RateAction::Pause => {
                    self.held_back = Some((data, binary));
                    self.paused_until = Some(Instant::now() + wait);
                    return false;
                }
            }
        }
        self.metrics.ws_received();
        let backlog = self.handle.to_js(data.len());
        self.bridge.ws_event(WsEvent::Message {
            id: self.handle.id,
            data,
            binary,
            backlog,
        });
        true
    }

    fn on_read_error(&mut self, err: WsError) -> Result<(), End> {
        match err {
            WsError::Capacity(_) => {
                self.metrics.reject(Rejection::WsMessageTooLarge);
                self.begin_close(1009, "Message too big");
                Ok(())
            }
            WsError::Utf8(_) => {
                self.metrics.reject(Rejection::WsProtocolError);
                self.begin_close(1007, "Invalid UTF-8");
                Ok(())
            }
            // The peer closed the TCP connection without a close frame.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Err(self.end_abnormally())
            }
            WsError::Protocol(_) => {
                self.metrics.reject(Rejection::WsProtocolError);
                self.begin_close(1002, "Protocol error");
                Ok(())
            }
            _ => Err(self.end_abnormally()),
        }
    }

    /// Sends a close frame (once) and starts waiting for the client's.
    fn begin_close(&mut self, code: u16, reason: &str) {
        if !matches!(self.state, State::Open) {
            return;
        }
        self.outgoing.clear();
        self.handle.stop_sending();
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = Pin::new(&mut self.ws).start_send(Message::Close(Some(frame)));
        self.unflushed = true;
        self.state = State::Closing {
            deadline: Instant::now() + CLOSE_TIMEOUT,
            code,
            reason: reason.to_string(),
        };
    }

    /// The stream ended: the close handshake finished (the code is whoever closed first), or
    /// the peer went away without one.
    fn finished(&mut self) -> End {
        match &self.state {
            State::Closing { code, reason, .. } => End {
                code: *code,
                reason: reason.clone(),
                graceful: true,
            },
            State::Open => End::dropped(),
        }
    }

    fn end_abnormally(&mut self) -> End {
        match &self.state {
            State::Closing { code, reason, .. } => End {
                code: *code,
                reason: reason.clone(),
                graceful: false,
            },
            State::Open => End::dropped(),
        }
    }

    /// Idle, ping, pong and closing deadlines; `Some` when the session must end now.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Option<End> {
        let now = Instant::now();
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
            self.handle.waker.wake();
        }
        match &self.state {
            State::Closing { deadline, .. } if now >= *deadline => {
                return Some(self.end_abnormally());
            }
            State::Closing { .. } => {}
            State::Open => {
                let limits = &self.limits;
                if !limits.idle_timeout.is_zero() && now >= self.last_activity + limits.idle_timeout
                {
                    self.metrics.reject(Rejection::WsIdleTimeout);
                    self.begin_close(1000, "Idle timeout");
                    self.handle.waker.wake();
                } else if let Some(sent) = self.ping_sent {
                    if now >= sent + limits.pong_timeout {
                        self.metrics.reject(Rejection::WsPongTimeout);
                        return Some(End::dropped());
                    }
                } else if !limits.ping_interval.is_zero()
                    && now >= self.last_ping + limits.ping_interval
                {
                    let _ = Pin::new(&mut self.ws).start_send(Message::Ping(Bytes::new()));
                    self.unflushed = true;
                    self.last_ping = now;
                    self.ping_sent = Some(now);
                    self.handle.waker.wake();
                }
            }
        }
        let deadline = self.next_deadline();
        if deadline != self.timer_at {
            if let Some(at) = deadline {
                self.timer.as_mut().reset(at);
            }
            self.timer_at = deadline;
        }
        if self.timer_at.is_some() && self.timer.as_mut().poll(cx).is_ready() {
            // Fired between the checks above and now: look again on the next poll.
            self.timer_at = None;
            cx.waker().wake_by_ref();
        }
        None
    }

    fn next_deadline(&self) -> Option<Instant> {
        let limits = &self.limits;
        let candidates = match &self.state {
            State::Closing { deadline, .. } => [Some(*deadline), None, None],
            State::Open => [
                (!limits.idle_timeout.is_zero()).then(|| self.last_activity + limits.idle_timeout),
                match self.ping_sent {
                    Some(sent) => Some(sent + limits.pong_timeout),
                    None => (!limits.ping_interval.is_zero())
                        .then(|| self.last_ping + limits.ping_interval),
                },
                self.paused_until,
            ],
        };
        candidates.into_iter().flatten().min()
    }
}
