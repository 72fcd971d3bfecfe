//! The socket wrapper hyper reads and writes through: head deadlines, head size, send stalls.
//!
//! hyper has no write timeout, its header timeout closes without a response, and hyper-util's
//! protocol detection has no timeout at all. Wrapping the IO closes those gaps in one place,
//! for HTTP/1 and h2c alike, without touching hyper:
//! - the request head must arrive within `headerTimeout` (from accept for the first request,
//!   from its first byte on a keep-alive connection) → `408` written here, then close;
//! - an idle keep-alive connection closes after `keepAliveTimeout`, silently;
//! - a head larger than `maxHeaderSize`, or of more than 100 header fields → `431`, then close;
//! - a head line ended by a bare LF → `400`, then close (counted `bad_request`);
//! - a write that makes no progress for `sendTimeout`, or passes the response deadline, ends
//!   the connection.
//!
//! It is also where zero-copy file bodies are sent: a stand-in chunk hyper writes is fulfilled
//! with `sendfile` from the file piece queued for it (`delivery::zero_copy`), under the same
//! send deadlines and byte counts as any write.

use crate::conn::h2_frames::FrameCounter;
use crate::conn::linger::Lingering;
use crate::conn::send_file::SendFile;
use crate::conn::state::ConnState;
use crate::delivery::zero_copy::stand_in_position;
use crate::limit::conn::Slot;
use crate::metrics::{LiveConnection, Metrics, Rejection};
use crate::observe::reject::Refusal;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio::time::Sleep;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
/// How long, and how much input, a closing connection drains after its last response.
const RESPONSE_400: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Why a request head is refused while it arrives.
enum HeadRefusal {
    /// Over `maxHeaderSize`, or more header fields than hyper takes → 431.
    TooLarge,
    /// A line ended by LF alone → 400.
    BareLf,
    /// The HTTP/2 preface while `http2` is off → closed.
    Http2Off,
    /// An HTTP/2 client over `http2MaxControlFramesPerSecond` → GOAWAY, closed.
    H2ControlFlood,
}

/// The request line and hyper's default limit of 100 header fields.
const MAX_HEAD_LINES: usize = 101;
const RESPONSE_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

#[derive(Clone, Copy)]
pub struct HeadLimits {
    pub header_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_header_size: usize,
    pub http2: bool,
    /// SETTINGS, PING and PRIORITY frames an HTTP/2 client may send per second (0: no limit).
    pub http2_max_control_frames: u32,
}

enum Phase {
    /// Waiting for (the rest of) a request head.
    Head(HeadProgress),
    /// A request is being handled; no head deadline.
    InRequest,
    /// HTTP/2 after its preface: streams have no head deadline here; its control frames are
    /// counted (`h2_frames`).
    Http2(FrameCounter),
    /// A WebSocket session owns the socket (its own idle and ping timers apply).
    Upgraded,
}

struct HeadProgress {
    /// The first request of the connection (deadline counts from accept).
    first: bool,
    /// When this wait began: accept, or the end of the previous response.
    since: Instant,
    first_byte_at: Option<Instant>,
    head_bytes: usize,
    /// Lines of the head so far (request line and header fields).
    head_lines: usize,
    /// The head's blank line was seen (a request will follow); stops the size count.
    terminated: bool,
    previous_was_lf: bool,
    /// The byte before was CR: a line must end with CR LF.
    previous_was_cr: bool,
    /// The first bytes of the connection, while they may still be the h2 preface.
    preface_matched: usize,
    /// Which framing headers the head declares (see `FramingScan`).
    framing: FramingScan,
}

/// Notes whether a head has `Content-Length` and `Transfer-Encoding` lines, from the bytes as
/// they are counted: hyper keeps only `Transfer-Encoding` in the head it hands over when both
/// came, and the pair must be refused (`conformance`). Only each line's name is looked at.
#[derive(Default)]
struct FramingScan {
    /// The current line's name so far (longer names are not kept: they match neither).
    name: [u8; FramingScan::LONGEST],
    name_len: usize,
    /// Past the current line's `:`: the rest of the line is its value, not a name.
    in_value: bool,
    content_length: bool,
    transfer_encoding: bool,
}

impl FramingScan {
    const LONGEST: usize = "transfer-encoding".len();

    fn byte(&mut self, byte: u8) {
        match byte {
            b'\n' => {
                self.in_value = false;
                self.name_len = 0;
            }
            _ if self.in_value => {}
            b':' => {
                let name = &self.name[..self.name_len.min(Self::LONGEST)];
                if self.name_len <= Self::LONGEST {
                    self.content_length |= name.eq_ignore_ascii_case(b"content-length");
                    self.transfer_encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
                }
                self.in_value = true;
            }
            _ => {
                if self.name_len < Self::LONGEST {
                    self.name[self.name_len] = byte;
                }
                self.name_len = self.name_len.saturating_add(1);
            }
        }
    }
}

impl HeadProgress {
    fn new(first: bool, since: Instant) -> Self {
        Self {
            first,
            since,
            first_byte_at: None,
            head_bytes: 0,
            head_lines: 0,
            terminated: false,
            previous_was_lf: false,
            previous_was_cr: false,
            preface_matched: 0,
            framing: FramingScan::default(),
        }
    }
}

enum Expiry {
    /// A partial (or absent) head ran out of time: 408.
    HeaderTimeout,
    /// An idle keep-alive connection: close quietly.
    Idle,
}

pub struct GuardedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    metrics: Arc<Metrics>,
    limits: HeadLimits,
    phase: Phase,
    /// `ConnState::progress()` as last seen, to notice requests starting and responses ending.
    seen_progress: (u64, u64),
    read_timer: Pin<Box<Sleep>>,
    read_timer_at: Option<Instant>,
    write_timer: Option<Pin<Box<Sleep>>>,
    write_timer_at: Option<Instant>,
    /// Set once the write side is shut: draining input until this deadline.
    linger: Option<Lingering>,
    /// An HTTP/2 client flooded control frames: it was sent GOAWAY and reads see its end.
    flooded: bool,
    /// The last byte read was CR (a head that starts in the next read continues its line).
    last_read_was_cr: bool,
    /// The client's connection slot and the live-connection count, held by the socket itself
    /// so they last exactly as long as it does, upgraded sessions included.
    _slot: Slot,
    _live: LiveConnection,
}

/// What an upgraded socket keeps of its wrapper: the client's slot and the live count.
pub struct SocketGuard {
    _slot: Slot,
    _live: LiveConnection,
}

impl<S> GuardedIo<S> {
    /// Unwraps the socket for a WebSocket session, which keeps its own deadlines: the head
    /// deadlines, timers and connection state go, the slot stays with the socket.
    pub fn into_upgraded(self) -> (S, SocketGuard) {
        let Self {
            inner,
            _slot,
            _live,
            ..
        } = self;
        (inner, SocketGuard { _slot, _live })
    }
}

impl<S> GuardedIo<S> {
    pub fn new(
        inner: S,
        state: Arc<ConnState>,
        metrics: Arc<Metrics>,
        limits: HeadLimits,
        slot: Slot,
    ) -> Self {
        let accepted_at = state.accepted_at;
        Self {
            _slot: slot,
            _live: LiveConnection::new(&metrics),
            inner,
            state,
            metrics,
            limits,
            phase: Phase::Head(HeadProgress::new(true, accepted_at)),
            seen_progress: (0, 0),
            read_timer: Box::pin(tokio::time::sleep_until(accepted_at)),
            read_timer_at: None,
            write_timer: None,
            write_timer_at: None,
            linger: None,
            flooded: false,
            last_read_was_cr: false,
        }
    }

    /// Follows the request handling: a started request leaves the head phase, a finished
    /// response (with nothing else in flight) starts waiting for the next head.
    fn sync_phase(&mut self) {
        if matches!(self.phase, Phase::Http2(_) | Phase::Upgraded) {
            return;
        }
        if self.state.is_upgraded() {
            self.phase = Phase::Upgraded;
            return;
        }
        let progress = self.state.progress();
        if progress == self.seen_progress {
            return;
        }
        self.seen_progress = progress;
        let (started, done) = progress;
        self.phase = if started > done {
            Phase::InRequest
        } else {
            let mut head = HeadProgress::new(false, Instant::now());
            // Pipelined requests: hyper may already hold the start of this head, read with
            // the previous request, so this read can begin between a CR and its LF.
            head.previous_was_cr = self.last_read_was_cr;
            Phase::Head(head)
        };
    }

    /// Accounts bytes read while waiting for a head; `Err` when the head is too large.
    fn on_head_bytes(&mut self, bytes: &[u8]) -> Result<(), HeadRefusal> {
        let Phase::Head(head) = &mut self.phase else {
            return Ok(());
        };
        if head.first_byte_at.is_none() {
            head.first_byte_at = Some(Instant::now());
        }
        if head.first && head.preface_matched == head.head_bytes {
            let offset = head.preface_matched;
            let wanted = &H2_PREFACE[offset.min(H2_PREFACE.len())..];
            let common = wanted.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            if common == bytes.len().min(wanted.len()) {
                head.preface_matched += common;
                if head.preface_matched == H2_PREFACE.len() {
                    if !self.limits.http2 {
                        // hyper-util would serve it (see `conn::server`): HTTP/2 is off.
                        return Err(HeadRefusal::Http2Off);
                    }
                    self.state.mark_http2();
                    let mut frames = FrameCounter::new(self.limits.http2_max_control_frames);
                    let flood = frames.feed(&bytes[common..], Instant::now());
                    self.phase = Phase::Http2(frames);
                    return flood.map_err(|()| HeadRefusal::H2ControlFlood);
                }
            }
        }
        if head.terminated {
            return Ok(());
        }
        // A head ends at an empty line. Lines end with CR LF: httparse also takes a bare LF,
        // and a front end that does not would see other header lines (`X: a\nContent-Length:
        // 5`), which is how requests are smuggled past it; Node's parser refuses them too.
        let mut counted = bytes.len();
        for (index, byte) in bytes.iter().enumerate() {
            head.framing.byte(*byte);
            if *byte == b'\n' && !head.previous_was_cr {
                self.metrics
                    .refuse(Refusal::new(Rejection::BadRequest).client(self.state.client()));
                return Err(HeadRefusal::BareLf);
            }
            head.previous_was_cr = *byte == b'\r';
            match byte {
                b'\n' if head.previous_was_lf => {
                    head.terminated = true;
                    counted = index + 1;
                    if head.framing.content_length && head.framing.transfer_encoding {
                        self.state.note_length_and_chunks();
                    }
                    break;
                }
                b'\n' => {
                    head.previous_was_lf = true;
                    head.head_lines += 1;
                }
                b'\r' => {}
                _ => head.previous_was_lf = false,
            }
        }
        head.head_bytes += counted;
        // hyper refuses more than `MAX_HEAD_LINES - 1` header fields with a 431 of its own,
        // which nothing would count: the wrapper refuses them first, as it refuses bytes.
        let too_many_lines = head.head_lines > MAX_HEAD_LINES;
        if (head.head_bytes > self.limits.max_header_size || too_many_lines)
            && head.preface_matched < head.head_bytes
        {
            self.metrics
                .refuse(Refusal::new(Rejection::HeaderTooLarge).client(self.state.client()));
            return Err(HeadRefusal::TooLarge);
        }
        Ok(())
    }

    fn head_deadline(&self) -> Option<(Instant, Expiry)> {
        let Phase::Head(head) = &self.phase else {
            return None;
        };
        if head.first {
            return Some((
                head.since + self.limits.header_timeout,
                Expiry::HeaderTimeout,
            ));
        }
        match head.first_byte_at {
            Some(first_byte) => Some((
                first_byte + self.limits.header_timeout,
                Expiry::HeaderTimeout,
            )),
            None => Some((head.since + self.limits.keep_alive_timeout, Expiry::Idle)),
        }
    }

    fn speaks_http1(&self) -> bool {
        match &self.phase {
            Phase::Head(head) => {
                !(head.first && head.preface_matched > 0 && head.preface_matched == head.head_bytes)
            }
            Phase::InRequest => true,
            Phase::Http2(_) | Phase::Upgraded => false,
        }
    }
}

impl<S: AsyncWrite + SendFile + Unpin> GuardedIo<S> {
    /// Best-effort write of a short error response: one attempt, never waits.
    fn write_final_response(&mut self, cx: &mut Context<'_>, response: &[u8]) {
        if self.speaks_http1() {
            let _ = Pin::new(&mut self.inner).poll_write(cx, response);
        }
    }

    /// Polls the send deadlines while a write is blocked; `Ready(Err)` when one passed.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.state.park_writer(cx.waker());
        if self.state.is_aborted() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection aborted",
            ));
        }
        let stall_deadline = Instant::now() + self.state.send_timeout();
        let response_deadline = self.state.response_deadline();
        let deadline = match (self.write_timer_at, response_deadline) {
            (Some(at), Some(response)) => at.min(response),
            (Some(at), None) => at,
            (None, Some(response)) => stall_deadline.min(response),
            (None, None) => stall_deadline,
        };
        if self.write_timer_at != Some(deadline) {
            match &mut self.write_timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.write_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.write_timer_at = Some(deadline);
        }
        let timer = self.write_timer.as_mut().expect("write timer armed above");
        ready!(timer.as_mut().poll(cx));
        let reason = match response_deadline {
            Some(response) if Instant::now() >= response => Rejection::DownloadTimeout,
            _ => Rejection::SendTimeout,
        };
        self.metrics
            .refuse(Refusal::new(reason).client(self.state.client()));
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, reason.as_str()))
    }

    /// Counts an HTTP/2 control-frame flood and tells the client with GOAWAY
    /// (`ENHANCE_YOUR_CALM`), written between hyper's frames at best: the connection ends.
    fn end_h2_flood(&mut self, cx: &mut Context<'_>) {
        self.metrics
            .refuse(Refusal::new(Rejection::H2ControlFlood).client(self.state.client()));
        self.flooded = true;
        if let Phase::Http2(frames) = &self.phase {
            let goaway = frames.goaway();
            let _ = Pin::new(&mut self.inner).poll_write(cx, &goaway);
            // TLS holds it until flushed.
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }

    fn wrote(&mut self, written: usize) {
        self.metrics.sent(written);
        if written > 0 {
            self.write_timer_at = None;
        }
    }

    /// Writes `bufs` as hyper queued them: ordinary chunks with `writev`, file stand-ins with
    /// `sendfile`. A write stops before a stand-in, and a run of stand-ins ends the write at
    /// the first one not sent whole: hyper comes back with the rest.
    fn poll_write_chunks(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first_stand_in = bufs.iter().position(|buf| stand_in_position(buf).is_some());
        match first_stand_in {
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Some(0) => self.poll_send_stand_ins(cx, bufs),
            Some(ordinary) => Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..ordinary]),
        }
    }

    /// Sends the stand-ins `bufs` starts with from their file pieces.
    fn poll_send_stand_ins(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut total = 0;
        for buf in bufs {
            let Some(position) = stand_in_position(buf) else {
                break;
            };
            let (inner, state) = (&self.inner, &self.state);
            let mut pending = false;
            let sent = state
                .file_pieces()
                .send_next(position, buf.len(), |file, offset, count| {
                    match inner.poll_send_file(cx, file, offset, count) {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            pending = true;
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                    }
                });
            match sent {
                Ok(sent) => {
                    self.metrics.sent_zero_copy(sent);
                    total += sent;
                    if sent < buf.len() {
                        break;
                    }
                }
                // What was sent is reported now; the wait (or the error) comes back on the
                // next write, which starts at this stand-in again.
                Err(_) if total > 0 => break,
                Err(_) if pending => return Poll::Pending,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        Poll::Ready(Ok(total))
    }
}

impl<S: AsyncRead + AsyncWrite + SendFile + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flooded {
            return Poll::Ready(Ok(()));
        }
        this.sync_phase();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let bytes = &buf.filled()[before..];
                this.metrics.received(bytes.len());
                if let Some(last) = bytes.last() {
                    this.last_read_was_cr = *last == b'\r';
                }
                let refused = match &mut this.phase {
                    Phase::Head(_) if !bytes.is_empty() => this.on_head_bytes(bytes).err(),
                    Phase::Http2(frames) => frames
                        .feed(bytes, Instant::now())
                        .err()
                        .map(|()| HeadRefusal::H2ControlFlood),
                    _ => None,
                };
                if let Some(refusal) = refused {
                    let (response, message) = match refusal {
                        HeadRefusal::TooLarge => (RESPONSE_431, "request head too large"),
                        HeadRefusal::BareLf => (RESPONSE_400, "bare LF in the request head"),
                        // Not an HTTP/1 client: nothing it could read is written.
                        HeadRefusal::Http2Off => (&b""[..], "HTTP/2 is off"),
                        HeadRefusal::H2ControlFlood => {
                            this.end_h2_flood(cx);
                            // The flood is not handed over: to h2 the client has hung up, and
                            // the connection ends through `poll_shutdown`'s lingering close, so
                            // the GOAWAY is read before the socket closes on unread input.
                            buf.set_filled(before);
                            return Poll::Ready(Ok(()));
                        }
                    };
                    this.write_final_response(cx, response);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, message)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // Any change of phase (a response ending) must wake this read to re-arm.
                this.state.park_reader(cx.waker());
                let Some((deadline, expiry)) = this.head_deadline() else {
                    return Poll::Pending;
                };
                if this.read_timer_at != Some(deadline) {
                    this.read_timer.as_mut().reset(deadline);
                    this.read_timer_at = Some(deadline);
                }
                ready!(this.read_timer.as_mut().poll(cx));
                match expiry {
                    Expiry::Idle => Poll::Ready(Ok(())),
                    Expiry::HeaderTimeout => {
                        this.metrics.refuse(
                            Refusal::new(Rejection::HeaderTimeout).client(this.state.client()),
                        );
                        this.write_final_response(cx, RESPONSE_408);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "header timeout",
                        )))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + SendFile + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = if stand_in_position(buf).is_some() {
            this.poll_send_stand_ins(cx, &[io::IoSlice::new(buf)])
        } else {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        };
        match written {
            Poll::Ready(Ok(written)) => {
                this.wrote(written);
                Poll::Ready(Ok(written))
            }
            Poll::Pending => this.poll_write_stall(cx).map(Err),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_write_chunks(cx, bufs) {
            Poll::Ready(Ok(written)) => {
                this.wrote(written);
                Poll::Ready(Ok(written))
            }
            Poll::Pending => this.poll_write_stall(cx).map(Err),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// Closes like nginx's lingering close: send FIN, then read and discard what the client is
    /// still sending (a body refused with 413, say) for a short while, so that closing with
    /// unread input does not reset the connection before the client has read the response.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let lingering = Lingering::start();
            this.read_timer.as_mut().reset(lingering.deadline());
            this.read_timer_at = Some(lingering.deadline());
            this.linger = Some(lingering);
        }
        let linger = this.linger.as_mut().expect("set above");
        if linger
            .poll_drain(Pin::new(&mut this.inner), cx)
            .is_pending()
        {
            // No input yet: done at the deadline if none comes.
            ready!(this.read_timer.as_mut().poll(cx));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod framing_tests {
    use super::FramingScan;

    fn scan(head: &[u8]) -> (bool, bool) {
        let mut framing = FramingScan::default();
        head.iter().for_each(|byte| framing.byte(*byte));
        (framing.content_length, framing.transfer_encoding)
    }

    #[test]
    fn both_framing_headers_are_noted_in_any_case_and_order() {
        let both = b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ntransfer-ENCODING: chunked\r\n\r\n";
        assert_eq!(scan(both), (true, true));
        let reversed = b"PUT /a HTTP/1.1\nTransfer-Encoding: chunked\ncontent-length: 5\n\n";
        assert_eq!(scan(reversed), (true, true));
    }

    #[test]
    fn names_in_values_or_the_request_line_do_not_count() {
        let head = b"GET /content-length: HTTP/1.1\r\nX-Note: transfer-encoding: chunked\r\nContent-Lengths: 1\r\nTransfer-Encoding-X: 1\r\n\r\n";
        assert_eq!(scan(head), (false, false));
        let long = b"GET / HTTP/1.1\r\nX-Very-Long-Header-Name-Transfer-Encoding: 1\r\n\r\n";
        assert_eq!(scan(long), (false, false));
    }
}
