//! One WebSocket session: a single task that reads frames, writes the session's queue as the
//! client takes it, and keeps the session's timers (idle, ping/pong, rate pauses, send stalls,
//! closing).
//!
//! An idle session holds no buffer: the task owns the bare socket (hyper's upgrade wrapper and
//! the HTTP socket wrapper are taken off), reads into the worker's stack and parses frames in
//! place (`ws_frame`), and keeps bytes only while a frame is incomplete or the client has not
//! taken what was written. Messages wait in the hub's bounded queue, not here, until the
//! socket has room. Frames and messages over `wsMaxMessageSize` are refused from their headers
//! with `1009`; permessage-deflate is never negotiated, so no inflated size can exceed what
//! was read.

use crate::config::{InvalidAction, RateAction};
use crate::conn::guarded_io::{GuardedIo, SocketGuard};
use crate::conn::linger::linger;
use crate::conn::socket::Socket;
use crate::js::bridge::Bridge;
use crate::limit::ban::Bans;
use crate::limit::bucket::{direct_limiter, DirectLimiter};
use crate::limit::key::ClientKey;
use crate::limit::queue::QueueLimits;
use crate::metrics::{Metrics, Rejection};
use crate::observe::reject::{Code, Refusal as RejectRefusal};
use crate::ws::deadlines::Tick;
use crate::ws::deflate::{Inflated, Negotiated, SessionDeflate};
use crate::ws::frame::{self, Assembler, Incoming, IncompleteCheck, ReadError};
use crate::ws::hub::{Registration, WsEvent};
use crate::ws::upgrade::Held;
use crate::ws::validate::MessageRules;
use bytes::{Buf, Bytes, BytesMut};
use governor::clock::Clock;
use governor::Quota;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// One read from the socket, on the worker's stack: a burst of small messages is parsed from
/// here without touching the heap.
const READ_CHUNK: usize = 16 * 1024;
/// Payload bytes taken from the queue for one write: one syscall for a burst of messages.
const WRITE_BATCH: usize = 16 * 1024;
/// Pings kept unanswered at most: past this, the oldest is dropped (RFC 6455 section 5.5.3
/// asks an answer to the most recent ping only). Enough to answer a client's burst one by one.
const PENDING_PONGS: usize = 16;
/// After a close frame, how long the peer has to answer before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads (or writes) in one go before the task yields to others.
const BATCH: usize = 16;

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
    /// A write that makes no progress for this long ends the session (`sendTimeout`).
    pub send_timeout: Duration,
    pub queue: QueueLimits,
    pub route: u32,
    /// JS hears this route's sockets (see `WsConfig::js_events`).
    pub js_events: bool,
    /// The route's `messages` rules, checked before JS hears a message.
    pub messages: Option<Arc<MessagePolicy>>,
}

/// A route's `messages` rules and what an invalid message costs the socket.
pub struct MessagePolicy {
    pub rules: MessageRules,
    pub on_invalid: InvalidAction,
    pub max_invalid: u32,
}

/// A session's invalid messages so far, and whom closing it for them strikes toward a ban.
pub struct Validation {
    invalid: u32,
    offender: Option<(Arc<Bans>, ClientKey)>,
}

impl Validation {
    pub fn new(offender: Option<(Arc<Bans>, ClientKey)>) -> Self {
        Self {
            invalid: 0,
            offender,
        }
    }
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
    /// The server's abort after its drain deadline. Sessions see it through the hub's flag;
    /// the token itself bounds the wait for the upgrade and the lingering close.
    pub abort: CancellationToken,
    pub held: Held,
    /// Present on routes with `messages` rules.
    pub validation: Option<Box<Validation>>,
    /// The subprotocol answered in the `101`, if any.
    pub protocol: Option<String>,
    /// permessage-deflate as the handshake agreed it, if it did.
    pub deflate: Option<Negotiated>,
}

/// The socket as the HTTP side hands it over (see `server::serve_connection`).
type HttpIo = TokioIo<GuardedIo>;

/// Runs a session from the upgrade to its end; JS hears `open` and exactly one `close`.
///
/// Every open socket keeps this task, so its future is kept to a few pointers: the opening
/// and the ending run in boxes of their own, and the session's state is one box.
pub async fn run(start: Box<SessionStart>) {
    let Some(mut session) = Box::pin(open(start)).await else {
        return;
    };
    let end = poll_fn(|cx| session.poll(cx)).await;
    Box::pin(finish(session, end)).await;
}

/// Waits for the upgrade, unwraps the socket and tells JS the session is open.
async fn open(mut start: Box<SessionStart>) -> Option<Box<Session>> {
    let upgraded = tokio::select! {
        upgraded = &mut start.on_upgrade => upgraded.ok()?,
        _ = start.abort.cancelled() => return None,
    };
    let parts = hyper_util::server::conn::auto::upgrade::downcast::<HttpIo>(upgraded).ok()?;
    let (io, read_buf) = (parts.io, parts.read_buf);
    let (socket, guard) = io.into_inner().into_upgraded();
    let SessionStart {
        on_upgrade,
        limits,
        user,
        client,
        url,
        bridge,
        metrics,
        held,
        abort,
        validation,
        protocol,
        deflate,
    } = *start;
    drop(on_upgrade);
    let registration = bridge.ws_hub().register(
        limits.queue,
        metrics,
        deflate.and_then(|negotiated| negotiated.shared()),
    );
    if limits.js_events {
        bridge.ws_event(WsEvent::Open {
            id: registration.handle.id,
            route: limits.route,
            user,
            client: client.to_string(),
            url,
            protocol,
        });
    }
    let now = registration.hub.deadlines().millis(Instant::now());
    Some(Box::new(Session {
        socket,
        registration,
        guards: Guards {
            socket: guard,
            held,
            abort,
        },
        bridge,
        extras: Extras::new(
            deflate.map(SessionDeflate::new),
            Rates::new(&limits),
            validation.map(|validation| *validation),
        ),
        limits,
        assembler: Assembler::default(),
        // Bytes the client sent right behind its upgrade request.
        busy: (!read_buf.is_empty()).then(|| {
            Box::new(Busy {
                read_buf: BytesMut::from(&read_buf[..]),
                ..Busy::default()
            })
        }),
        state: State::Open,
        last_activity: now,
        last_ping: now,
        filed: 0,
        awaiting_pong: false,
        shutting_down: false,
        reading_done: false,
    }))
}

/// Tells JS, frees the caps' slots, and closes the socket politely after a close handshake.
async fn finish(session: Box<Session>, end: End) {
    let Session {
        socket,
        registration,
        guards,
        bridge,
        limits,
        ..
    } = *session;
    if limits.js_events {
        bridge.ws_event(WsEvent::Close {
            id: registration.handle.id,
            code: end.code,
            reason: end.reason,
        });
    }
    let Guards {
        // Held until the end: the client's slot lasts as long as the socket, lingering included.
        socket: _socket_guard,
        held,
        abort,
    } = guards;
    if let Some(record) = &held.access {
        record.close_code(end.code);
    }
    // The caps' slots are free as soon as JS hears of the close.
    drop(registration);
    drop(held);
    if end.graceful {
        tokio::select! {
            _ = linger(socket, b"") => {}
            _ = abort.cancelled() => {}
        }
    }
}

/// What a session holds for its whole life and gives up at its end.
struct Guards {
    /// The client's connection slot, with the socket.
    socket: SocketGuard,
    /// The slots under the route's caps.
    held: Held,
    /// The server's abort after its drain deadline (bounds the lingering close).
    abort: CancellationToken,
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
    /// The client's input was refused (`code`): JS has been told, behind the messages it has
    /// not answered yet, and hands the refusal back as a close once it has replied to them, so
    /// those replies go out before the close frame. At `deadline` the close goes out anyway.
    Failing {
        /// Milliseconds since the hub's epoch, like every instant of a session.
        deadline: u64,
        code: u16,
    },
    /// A close frame was sent (or answered); waiting for the handshake to finish.
    Closing {
        deadline: u64,
        code: u16,
        reason: Box<str>,
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

/// Whether the parser may go on to the next frame.
enum Flow {
    Continue,
    /// A message is held back (rate pause) or JS is behind: keep the rest unparsed.
    Stop,
}

/// An open session: what an idle socket holds. Buffers and the state of a burst live in
/// `busy`, created when the socket has something in flight and dropped once it has not
/// (see `Busy`), so an idle socket costs this box and no other of its own.
struct Session {
    socket: Socket,
    /// The session in the hub: its queue, waker, JS backlog and metrics (`handle`).
    registration: Registration,
    guards: Guards,
    bridge: Arc<Bridge>,
    /// Shared by every session of the route.
    limits: Arc<SessionLimits>,
    assembler: Assembler,
    /// Compression, rate limits, message rules: only on routes that have them.
    extras: Option<Box<Extras>>,
    /// Buffers and per-burst state; `None` while the socket is idle.
    busy: Option<Box<Busy>>,
    state: State,
    /// Instants are kept as milliseconds since the hub's epoch (`Deadlines::millis`): 8 bytes
    /// each instead of 16.
    last_activity: u64,
    /// When the last ping went out; its pong is awaited while `awaiting_pong`.
    last_ping: u64,
    /// The tick of this session's earliest entry in the hub's deadlines (0: none), so an
    /// entry is filed only when the nearest deadline moves earlier or the last one was due.
    filed: Tick,
    awaiting_pong: bool,
    shutting_down: bool,
    /// Nothing more will be read: the client's close frame arrived, or its input was refused.
    reading_done: bool,
}

/// What only some routes' sessions carry, boxed as one: most carry none of it.
struct Extras {
    /// permessage-deflate, when negotiated (its contexts, if the socket keeps its own).
    deflate: Option<SessionDeflate>,
    /// Only when a rate limit is set.
    rates: Option<Rates>,
    /// Only on routes with `messages` rules.
    validation: Option<Validation>,
}

impl Extras {
    fn new(
        deflate: Option<SessionDeflate>,
        rates: Option<Rates>,
        validation: Option<Validation>,
    ) -> Option<Box<Self>> {
        (deflate.is_some() || rates.is_some() || validation.is_some()).then(|| {
            Box::new(Self {
                deflate,
                rates,
                validation,
            })
        })
    }
}

/// What a session holds only while something is in flight: dropped whenever every part of it
/// is empty again.
#[derive(Default)]
struct Busy {
    /// Unparsed input: an incomplete frame, or frames left while reading is paused.
    read_buf: BytesMut,
    /// How far the text of an incomplete frame at the start of `read_buf` has been checked.
    incomplete_check: Option<Box<IncompleteCheck>>,
    /// Frames the socket has not taken yet.
    write_buf: BytesMut,
    /// The latest pings' payloads (at most `PENDING_PONGS`), not answered yet. Pongs are
    /// coalesced past that (RFC 6455 section 5.5.3 asks an answer to the most recent ping
    /// only): a newer ping pushes out the oldest, and they go into `write_buf` only once the
    /// socket has taken what was there, so a client that pings without reading costs a few
    /// payloads, not a pong per ping.
    pending_pongs: Vec<Bytes>,
    /// Since when a write has been waiting for the client without progress.
    stalled_since: Option<Instant>,
    /// A message, ping or pong over the rate under `pause`, handled once the rate allows.
    held_back: Option<Incoming>,
    paused_until: Option<Instant>,
}

impl Busy {
    fn is_idle(&self) -> bool {
        self.read_buf.is_empty()
            && self.write_buf.is_empty()
            && self.incomplete_check.is_none()
            && self.pending_pongs.is_empty()
            && self.stalled_since.is_none()
            && self.held_back.is_none()
            && self.paused_until.is_none()
    }
}

impl Session {
    /// An instant as the session keeps it (see `last_activity`).
    fn millis(&self, at: Instant) -> u64 {
        self.registration.hub.deadlines().millis(at)
    }

    /// A kept instant back as an `Instant`.
    fn at(&self, millis: u64) -> Instant {
        self.registration.hub.deadlines().at(millis)
    }

    fn metrics(&self) -> &Metrics {
        self.registration.handle.metrics()
    }

    /// The burst state, created on demand.
    fn busy(&mut self) -> &mut Busy {
        self.busy.get_or_insert_with(Box::default)
    }

    fn write_pending(&self) -> bool {
        self.busy
            .as_ref()
            .is_some_and(|busy| !busy.write_buf.is_empty())
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.registration.handle.waker.register(cx.waker());
        let hub = &self.registration.hub;
        if hub.is_aborted() {
            return Poll::Ready(self.end_abnormally());
        }
        if !self.shutting_down && hub.is_shutting_down() {
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
            if let Some(end) = self.poll_timers() {
                return Poll::Ready(end);
            }
            // Nothing more can arrive (the client's close, or refused input): the session is
            // over once its own close frame is out.
            if self.reading_done
                && !self.write_pending()
                && matches!(self.state, State::Closing { .. })
            {
                return Poll::Ready(self.finished());
            }
            if !wrote && !read {
                // Idle again: give the burst's memory back.
                if self.busy.as_ref().is_some_and(|busy| busy.is_idle()) {
                    self.busy = None;
                }
                return Poll::Pending;
            }
        }
        // Busy: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what is buffered, then formats more from the queue while the socket takes it;
    /// `true` if anything moved.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut progressed = false;
        for _ in 0..BATCH {
            if let Some(busy) = self.busy.as_mut().filter(|busy| !busy.write_buf.is_empty()) {
                match Pin::new(&mut self.socket).poll_write(cx, &busy.write_buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(self.end_abnormally()),
                    Poll::Ready(Ok(written)) => {
                        busy.write_buf.advance(written);
                        busy.stalled_since = None;
                        let drained = busy.write_buf.is_empty();
                        if drained {
                            // Give the memory back: an idle socket holds no buffer.
                            busy.write_buf = BytesMut::new();
                        }
                        self.metrics().sent(written);
                        if let Some(record) = &self.guards.held.access {
                            record.sent(written);
                        }
                        progressed = true;
                        if !drained {
                            continue;
                        }
                    }
                    Poll::Pending => {
                        busy.stalled_since.get_or_insert_with(Instant::now);
                        return Ok(progressed);
                    }
                }
            }
            // After a close frame nothing more may be sent (`begin_close` emptied the queue).
            if !self.sending() {
                break;
            }
            // The socket took everything: the latest ping's answer goes first.
            if let Some(busy) = self.busy.as_mut() {
                for payload in std::mem::take(&mut busy.pending_pongs) {
                    frame::write_frame(
                        &mut busy.write_buf,
                        OpCode::Control(Control::Pong),
                        &payload,
                    );
                }
            }
            let mut sent = 0u64;
            let busy = &mut self.busy;
            let mut deflate = self
                .extras
                .as_mut()
                .and_then(|extras| extras.deflate.as_mut());
            let close = self.registration.handle.drain(WRITE_BATCH, |message| {
                let write_buf = &mut busy.get_or_insert_with(Box::default).write_buf;
                let (opcode, payload): (_, &[u8]) = match &message {
                    Message::Text(text) => (OpCode::Data(Data::Text), text.as_ref()),
                    Message::Binary(bytes) => (OpCode::Data(Data::Binary), bytes),
                    // A published event, compressed once for every socket sharing it.
                    Message::Frame(frame) => {
                        frame::write_formatted(write_buf, frame.header(), frame.payload());
                        sent += 1;
                        return;
                    }
                    _ => return,
                };
                match &mut deflate {
                    Some(deflate) if deflate.compresses(payload.len()) => {
                        frame::write_compressed(write_buf, opcode, payload, deflate)
                    }
                    _ => frame::write_frame(write_buf, opcode, payload),
                }
                sent += 1;
            });
            if sent > 0 {
                self.metrics().ws_sent(sent);
            }
            if let Some(close) = close {
                self.begin_close(close.code, &close.reason);
                progressed = true;
            }
            if !self.write_pending() {
                break;
            }
        }
        Ok(progressed)
    }

    /// Reads and handles what the client sent, up to a batch; `true` if anything was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        if self.reading_done {
            return Ok(false);
        }
        let mut progressed = false;
        if let Some(incoming) = self.busy.as_mut().and_then(|busy| busy.held_back.take()) {
            if let Flow::Stop = self.on_incoming(incoming) {
                return Ok(false);
            }
            // Handled now: a pong it left must be written on the next turn.
            progressed = true;
        }
        for _ in 0..BATCH {
            if self.paused() {
                return Ok(progressed);
            }
            // What is already buffered first: frames left by a pause, or a partial frame.
            let buffered = match self.busy.as_mut() {
                Some(busy) if !busy.read_buf.is_empty() => Some(std::mem::take(&mut busy.read_buf)),
                _ => None,
            };
            if let Some(mut buffered) = buffered {
                let consumed = self.parse(&mut buffered);
                buffered.advance(consumed);
                self.busy().read_buf = buffered;
                if self.reading_done || self.paused() {
                    return Ok(true);
                }
            }
            let incomplete = self
                .busy
                .as_ref()
                .is_some_and(|busy| !busy.read_buf.is_empty());
            let read = if incomplete {
                self.read_more(cx)
            } else {
                self.read_fresh(cx)
            };
            match read {
                Poll::Pending => return Ok(progressed),
                Poll::Ready(Err(_)) => return Err(self.end_abnormally()),
                // The client closed its side: after our close frame that ends the handshake,
                // otherwise it went away without one.
                Poll::Ready(Ok(0)) => return Err(self.finished()),
                Poll::Ready(Ok(_)) => progressed = true,
            }
            if self.reading_done {
                return Ok(true);
            }
        }
        Ok(progressed)
    }

    fn received(&self, bytes: usize) {
        self.metrics().received(bytes);
        if let Some(record) = &self.guards.held.access {
            record.received(bytes);
        }
    }

    /// Reads into the stack and parses there; only an unparsed tail is copied to the heap.
    fn read_fresh(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        std::task::ready!(Pin::new(&mut self.socket).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        self.received(read);
        let filled = buf.filled_mut();
        let consumed = self.parse(filled);
        if consumed < read && !self.reading_done {
            self.busy().read_buf.extend_from_slice(&filled[consumed..]);
            self.check_incomplete();
        }
        Poll::Ready(Ok(read))
    }

    /// Reads the rest of an incomplete frame straight into the heap buffer that holds it.
    fn read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let busy = self.busy.get_or_insert_with(Box::default);
        let wanted = frame::frame_len(&busy.read_buf).unwrap_or(0);
        let missing = wanted.saturating_sub(busy.read_buf.len());
        busy.read_buf.reserve(missing.clamp(64, READ_CHUNK * 4));
        let read = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.socket),
            cx,
            &mut busy.read_buf
        ))?;
        self.received(read);
        self.check_incomplete();
        Poll::Ready(Ok(read))
    }

    /// Checks the text of a frame still arriving, so bad UTF-8 fails it at the piece where it
    /// appears rather than when the frame completes.
    fn check_incomplete(&mut self) {
        if self.reading_done {
            return;
        }
        let Some(busy) = self.busy.as_mut() else {
            return;
        };
        let checked = self
            .assembler
            .check_incomplete(&busy.read_buf, &mut busy.incomplete_check);
        if let Err(err) = checked {
            busy.incomplete_check = None;
            self.refuse(err);
        }
    }

    fn paused(&self) -> bool {
        self.busy
            .as_ref()
            .is_some_and(|busy| busy.held_back.is_some() || busy.paused_until.is_some())
            || self.registration.handle.js_backlogged()
    }

    /// Handles the complete frames at the start of `data`; returns how many bytes they took.
    fn parse(&mut self, data: &mut [u8]) -> usize {
        let mut consumed = 0;
        while !self.reading_done && !self.paused() {
            let rest = &mut data[consumed..];
            let at = match frame::next_frame(rest, self.limits.max_message_size) {
                Ok(Some(at)) => at,
                Ok(None) => break,
                Err(err) => {
                    self.refuse(err);
                    break;
                }
            };
            consumed += at.end;
            let incoming = self.assembler.frame(
                &at.header,
                &mut rest[at.payload],
                self.limits.max_message_size,
                self.extras
                    .as_ref()
                    .is_some_and(|extras| extras.deflate.is_some()),
            );
            match incoming {
                Ok(incoming) => {
                    if let Flow::Stop = self.on_incoming(incoming) {
                        break;
                    }
                }
                Err(err) => self.refuse(err),
            }
        }
        if consumed > 0 {
            // The frame whose text was checked ahead (if any) is complete now.
            if let Some(busy) = self.busy.as_mut() {
                busy.incomplete_check = None;
            }
        }
        if self.reading_done {
            // Nothing more is read: drop whatever else the client sent.
            return data.len();
        }
        consumed
    }

    fn on_incoming(&mut self, incoming: Incoming) -> Flow {
        let incoming = match incoming {
            Incoming::Compressed { data, binary } => match self.inflate(&data, binary) {
                Ok(message) => message,
                Err(err) => {
                    self.refuse(err);
                    return Flow::Continue;
                }
            },
            other => other,
        };
        let incoming = match incoming {
            Incoming::Fragment => {
                self.last_activity = self.millis(Instant::now());
                return Flow::Continue;
            }
            Incoming::Close(frame) => {
                self.on_close(frame);
                return Flow::Continue;
            }
            other => other,
        };
        if matches!(incoming, Incoming::Message { .. }) || self.limits.idle_counts_pings {
            self.last_activity = self.millis(Instant::now());
        }
        if !matches!(self.state, State::Open) {
            // Closing: nothing more reaches JS or is answered.
            return Flow::Continue;
        }
        // Messages, pings and pongs alike count toward the rate: a ping flood is a flood.
        if let Some(wait) = self.over_rate(&incoming) {
            match self.limits.rate_action {
                RateAction::Close => {
                    self.metrics()
                        .refuse(self.guards.held.refusal(Rejection::WsRateLimited));
                    self.begin_close(1008, "Rate limit exceeded");
                    return Flow::Continue;
                }
                RateAction::Pause => {
                    let busy = self.busy();
                    busy.held_back = Some(incoming);
                    busy.paused_until = Some(Instant::now() + wait);
                    return Flow::Stop;
                }
            }
        }
        match incoming {
            Incoming::Message { data, binary } => self.deliver(data, binary),
            // Past the last few, the oldest is dropped: only the latest ping needs its pong.
            Incoming::Ping(payload) => {
                let pongs = &mut self.busy().pending_pongs;
                if pongs.len() == PENDING_PONGS {
                    pongs.remove(0);
                }
                pongs.push(payload);
            }
            Incoming::Pong => self.awaiting_pong = false,
            // Inflated above; fragments and closes are handled before the rate.
            Incoming::Fragment | Incoming::Close(_) | Incoming::Compressed { .. } => {}
        }
        Flow::Continue
    }

    /// A compressed message, inflated (bounded by `wsMaxMessageSize`) and, for text, checked.
    fn inflate(&mut self, data: &[u8], binary: bool) -> Result<Incoming, ReadError> {
        let Some(deflate) = self
            .extras
            .as_mut()
            .and_then(|extras| extras.deflate.as_mut())
        else {
            return Err(ReadError::Protocol);
        };
        let data = deflate
            .inflate(data, self.limits.max_message_size)
            .map_err(|err| match err {
                Inflated::TooBig => ReadError::TooBig,
                Inflated::Corrupt => ReadError::BadUtf8,
            })?;
        if !binary && simdutf8::basic::from_utf8(&data).is_err() {
            return Err(ReadError::BadUtf8);
        }
        Ok(Incoming::Message { data, binary })
    }

    /// `None` when a message, ping or pong may pass now, else how long until it may.
    fn over_rate(&self, incoming: &Incoming) -> Option<Duration> {
        let size = match incoming {
            Incoming::Message { data, .. } => data.len(),
            Incoming::Ping(payload) => payload.len(),
            _ => 0,
        };
        self.extras.as_ref()?.rates.as_ref()?.check(size)
    }

    /// No pong is owed any more: the session is closing.
    fn drop_pongs(&mut self) {
        if let Some(busy) = self.busy.as_mut() {
            busy.pending_pongs = Vec::new();
        }
    }

    /// The client's close frame: echo it (RFC 6455 section 5.5.1) unless ours went first.
    fn on_close(&mut self, frame: Option<(u16, String)>) {
        self.reading_done = true;
        if !matches!(self.state, State::Open) {
            return;
        }
        let (code, reason) = frame.unwrap_or((NO_STATUS, String::new()));
        self.registration.handle.stop_sending();
        self.drop_pongs();
        let write_buf = &mut self.busy().write_buf;
        if code == NO_STATUS {
            frame::write_frame(write_buf, OpCode::Control(Control::Close), &[]);
        } else {
            frame::write_close(write_buf, code, &reason);
        }
        self.state = State::Closing {
            deadline: self.millis(Instant::now() + CLOSE_TIMEOUT),
            code,
            reason: reason.into(),
        };
    }

    /// A data message within the rate: count it and, valid under the route's `messages`
    /// rules, hand it to JS.
    fn deliver(&mut self, data: Bytes, binary: bool) {
        self.metrics().ws_received(data.len());
        if !self.valid(&data) {
            return;
        }
        if !self.limits.js_events {
            return;
        }
        let backlog = self.registration.handle.to_js(data.len());
        self.bridge.ws_event(WsEvent::Message {
            id: self.registration.handle.id,
            data,
            binary,
            backlog,
        });
    }

    /// Whether `data` passes the route's `messages` rules; an invalid message is counted, and
    /// closes the session (1007, a strike toward a ban) when the policy says so.
    fn valid(&mut self, data: &[u8]) -> bool {
        let validation = self
            .extras
            .as_mut()
            .and_then(|extras| extras.validation.as_mut());
        let (Some(policy), Some(validation)) = (&self.limits.messages, validation) else {
            return true;
        };
        if policy.rules.check(data).is_ok() {
            return true;
        }
        self.registration
            .handle
            .metrics()
            .reject(Rejection::WsInvalidMessage);
        validation.invalid = validation.invalid.saturating_add(1);
        let close = policy.on_invalid == InvalidAction::Close
            || (policy.max_invalid > 0 && validation.invalid > policy.max_invalid);
        if close && matches!(self.state, State::Open) {
            if let Some((bans, client)) = validation.offender.take() {
                bans.strike(client);
            }
            self.reading_done = true;
            self.begin_close(1007, "Invalid message");
        }
        false
    }

    /// The client's input broke a rule: close with its code and read no more.
    ///
    /// Counted only when this refusal is what closes the session: input after the server's
    /// own close frame (a rate close, an idle close, shutdown) is dropped, not counted again.
    ///
    /// When JS hears the route, the close frame waits for JS (`State::Failing`): what JS sends
    /// in reply to the messages read before the bad input goes out first (RFC 6455 section
    /// 7.1.7 fails the connection, but messages already accepted were valid and are answered).
    fn refuse(&mut self, err: ReadError) {
        self.reading_done = true;
        if !matches!(self.state, State::Open) {
            return;
        }
        let (rejection, code) = match err {
            ReadError::TooBig => (Rejection::WsMessageTooLarge, 1009),
            ReadError::BadUtf8 => (Rejection::WsProtocolError, 1007),
            ReadError::Protocol => (Rejection::WsProtocolError, 1002),
        };
        let refusal = self.guards.held.refusal(rejection);
        self.metrics().refuse(RejectRefusal {
            code: Some(Code::Close(code)),
            ..refusal
        });
        if !self.limits.js_events {
            self.begin_close(code, refusal_reason(code));
            return;
        }
        self.bridge.ws_event(WsEvent::Refused {
            id: self.registration.handle.id,
            code,
            reason: refusal_reason(code).to_string(),
        });
        self.drop_pongs();
        self.state = State::Failing {
            deadline: self.millis(Instant::now() + CLOSE_TIMEOUT),
            code,
        };
    }

    /// Whether messages may still be written (no close frame sent yet).
    fn sending(&self) -> bool {
        matches!(self.state, State::Open | State::Failing { .. })
    }

    /// Sends a close frame (once) and starts waiting for the client's.
    fn begin_close(&mut self, code: u16, reason: &str) {
        if !self.sending() {
            return;
        }
        self.registration.handle.stop_sending();
        self.drop_pongs();
        frame::write_close(&mut self.busy().write_buf, code, reason);
        self.state = State::Closing {
            deadline: self.millis(Instant::now() + CLOSE_TIMEOUT),
            code,
            reason: reason.into(),
        };
        self.registration.handle.waker.wake();
    }

    /// The close handshake finished (the code is whoever closed first), or the peer went
    /// away without one.
    fn finished(&mut self) -> End {
        match &self.state {
            State::Closing { code, reason, .. } => End {
                code: *code,
                reason: reason.to_string(),
                graceful: true,
            },
            State::Failing { .. } => self.end_abnormally(),
            State::Open => End::dropped(),
        }
    }

    fn end_abnormally(&mut self) -> End {
        match &self.state {
            State::Closing { code, reason, .. } => End {
                code: *code,
                reason: reason.to_string(),
                graceful: false,
            },
            // The server refused the input first: JS hears that code.
            State::Failing { code, .. } => End {
                code: *code,
                reason: refusal_reason(*code).to_string(),
                graceful: false,
            },
            State::Open => End::dropped(),
        }
    }

    /// Idle, ping, pong, send-stall and closing deadlines; `Some` when the session must end
    /// now. The nearest one left is filed with the hub's deadlines, which wake the session then.
    fn poll_timers(&mut self) -> Option<End> {
        let now = Instant::now();
        if let Some(busy) = self.busy.as_mut() {
            if busy.paused_until.is_some_and(|until| now >= until) {
                busy.paused_until = None;
                self.registration.handle.waker.wake();
            }
        }
        if self.stall_deadline().is_some_and(|at| now >= at) {
            self.metrics()
                .refuse(self.guards.held.refusal(Rejection::SendTimeout));
            return Some(self.end_abnormally());
        }
        match &self.state {
            State::Closing { deadline, .. } if now >= self.at(*deadline) => {
                return Some(self.end_abnormally());
            }
            State::Closing { .. } => {}
            State::Failing { deadline, code } => {
                if now >= self.at(*deadline) {
                    // JS did not hand the refusal back in time: close without its replies.
                    let code = *code;
                    self.begin_close(code, refusal_reason(code));
                }
            }
            State::Open => {
                let limits = &self.limits;
                let last_ping = self.at(self.last_ping);
                if !limits.idle_timeout.is_zero()
                    && now >= self.at(self.last_activity) + limits.idle_timeout
                {
                    self.metrics()
                        .refuse(self.guards.held.refusal(Rejection::WsIdleTimeout));
                    self.begin_close(1000, "Idle timeout");
                } else if self.awaiting_pong {
                    if now >= last_ping + limits.pong_timeout {
                        self.metrics()
                            .refuse(self.guards.held.refusal(Rejection::WsPongTimeout));
                        return Some(End::dropped());
                    }
                } else if !limits.ping_interval.is_zero() && now >= last_ping + limits.ping_interval
                {
                    frame::write_frame(
                        &mut self.busy().write_buf,
                        OpCode::Control(Control::Ping),
                        &[],
                    );
                    self.last_ping = self.millis(now);
                    self.awaiting_pong = true;
                    self.registration.handle.waker.wake();
                }
            }
        }
        if let Some(at) = self.next_deadline() {
            let hub = &self.registration.hub;
            let tick = hub.deadlines().tick(at);
            // An entry still to come at or before this tick wakes the session in time.
            if self.filed == 0 || tick < self.filed || self.filed <= hub.deadlines().now() {
                hub.wake_at(tick, self.registration.handle.id);
                self.filed = tick;
            }
        }
        None
    }

    fn stall_deadline(&self) -> Option<Instant> {
        let timeout = self.limits.send_timeout;
        let since = self.busy.as_ref()?.stalled_since?;
        (!timeout.is_zero()).then(|| since + timeout)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let limits = &self.limits;
        let candidates = match &self.state {
            State::Closing { deadline, .. } | State::Failing { deadline, .. } => {
                [Some(self.at(*deadline)), self.stall_deadline(), None, None]
            }
            State::Open => [
                (!limits.idle_timeout.is_zero())
                    .then(|| self.at(self.last_activity) + limits.idle_timeout),
                if self.awaiting_pong {
                    Some(self.at(self.last_ping) + limits.pong_timeout)
                } else {
                    (!limits.ping_interval.is_zero())
                        .then(|| self.at(self.last_ping) + limits.ping_interval)
                },
                self.busy.as_ref().and_then(|busy| busy.paused_until),
                self.stall_deadline(),
            ],
        };
        candidates.into_iter().flatten().min()
    }
}

/// The close reason sent with a refusal's code.
fn refusal_reason(code: u16) -> &'static str {
    match code {
        1009 => "Message too big",
        1007 => "Invalid UTF-8",
        _ => "Protocol error",
    }
}
