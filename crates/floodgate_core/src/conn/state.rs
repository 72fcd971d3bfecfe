//! State one connection's request handling shares with its socket wrapper (`guarded_io`).
//!
//! The wrapper only sees bytes; these counters tell it whether a request is in flight (no
//! head deadline then) and which send deadlines the current response has.

use crate::delivery::zero_copy::FilePieces;
use crate::limit::bucket::{ConnectionBucket, DirectLimiter};
use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;
use tokio::time::Instant;

pub struct ConnState {
    /// When the connection was accepted: the origin of the millisecond fields below.
    pub accepted_at: Instant,
    requests_started: AtomicU64,
    responses_done: AtomicU64,
    send_timeout_ms: AtomicU64,
    /// Deadline of the whole current response, in ms after `accepted_at`; 0 when none.
    response_deadline_ms: AtomicU64,
    /// The socket reader parked while a request was in flight: it must re-arm its head
    /// deadline when the response ends, even if no byte arrives to wake it.
    reader: AtomicWaker,
    /// The socket writer parked on a full send buffer, and whether the connection must end
    /// anyway (a slow event-stream reader over its queue bound).
    writer: AtomicWaker,
    aborted: std::sync::atomic::AtomicBool,
    /// The connection was handed to a WebSocket session: no more HTTP heads or deadlines.
    upgraded: std::sync::atomic::AtomicBool,
    /// The connection speaks HTTP/2 (its preface arrived).
    http2: std::sync::atomic::AtomicBool,
    /// When the last response ended, in ms after `accepted_at` (an HTTP/2 connection's idle
    /// time starts there).
    last_response_ms: AtomicU64,
    /// The connection's own bandwidth buckets (responses, request bodies), made on first use.
    download_bucket: Mutex<Option<ConnectionBucket>>,
    upload_bucket: Mutex<Option<ConnectionBucket>>,
    /// The head the wrapper last read had both `Content-Length` and `Transfer-Encoding` lines
    /// (hyper drops the first from the head it hands over); taken by the request it belongs to.
    length_and_chunks: std::sync::atomic::AtomicBool,
    /// File bodies may go out with `sendfile` (`delivery::zero_copy`): the socket can, and
    /// the server's `sendfile` option allows it. HTTP/2 turns it off (`zero_copy`).
    sendfile: bool,
    /// The file pieces whose stand-ins hyper is writing.
    file_pieces: FilePieces,
    /// The peer (or the address a PROXY protocol header named): who refusals of this
    /// connection are reported against.
    client: Option<std::net::IpAddr>,
}

impl ConnState {
    pub fn new(accepted_at: Instant, send_timeout: Duration) -> Self {
        Self {
            accepted_at,
            requests_started: AtomicU64::new(0),
            responses_done: AtomicU64::new(0),
            send_timeout_ms: AtomicU64::new(send_timeout.as_millis() as u64),
            response_deadline_ms: AtomicU64::new(0),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
            aborted: std::sync::atomic::AtomicBool::new(false),
            upgraded: std::sync::atomic::AtomicBool::new(false),
            http2: std::sync::atomic::AtomicBool::new(false),
            last_response_ms: AtomicU64::new(0),
            download_bucket: Mutex::new(None),
            upload_bucket: Mutex::new(None),
            length_and_chunks: std::sync::atomic::AtomicBool::new(false),
            sendfile: false,
            file_pieces: FilePieces::default(),
            client: None,
        }
    }

    /// The client refusals of this connection name (`observe::reject`).
    pub fn with_client(mut self, client: std::net::IpAddr) -> Self {
        self.client = Some(client);
        self
    }

    pub fn client(&self) -> Option<std::net::IpAddr> {
        self.client
    }

    /// Lets file bodies of this connection go out with `sendfile` while it speaks HTTP/1.1.
    pub fn with_sendfile(mut self, sendfile: bool) -> Self {
        self.sendfile = sendfile;
        self
    }

    /// Where a file body queues its pieces for `sendfile`, when it may: only on HTTP/1.1,
    /// whose frames hyper writes with the stand-ins' memory as it is.
    pub fn zero_copy(&self) -> Option<&FilePieces> {
        (self.sendfile && !self.is_http2() && !self.is_upgraded()).then_some(&self.file_pieces)
    }

    /// The queue the socket wrapper fulfils stand-ins from.
    pub fn file_pieces(&self) -> &FilePieces {
        &self.file_pieces
    }

    pub fn request_started(&self) {
        self.requests_started.fetch_add(1, Relaxed);
    }

    pub fn response_done(&self) {
        let now = Instant::now().saturating_duration_since(self.accepted_at);
        self.last_response_ms.store(now.as_millis() as u64, Relaxed);
        self.response_deadline_ms.store(0, Relaxed);
        self.responses_done.fetch_add(1, Relaxed);
        self.reader.wake();
    }

    /// Ends the connection even while its writes are blocked on a client that does not read.
    pub fn abort(&self) {
        self.aborted.store(true, Relaxed);
        self.writer.wake();
    }

    /// The response being sent is a `101 Switching Protocols`: after it the socket carries
    /// WebSocket frames, which the session bounds with its own timers.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Relaxed);
    }

    /// The connection's bucket for responses at `bytes_per_second`.
    pub fn download_bucket(&self, bytes_per_second: u64, chunk_size: u64) -> Arc<DirectLimiter> {
        let mut slot = self
            .download_bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ConnectionBucket::for_rate(&mut slot, bytes_per_second, chunk_size)
    }

    /// The connection's bucket for request bodies at `bytes_per_second`.
    pub fn upload_bucket(&self, bytes_per_second: u64, chunk_size: u64) -> Arc<DirectLimiter> {
        let mut slot = self.upload_bucket.lock().unwrap_or_else(|p| p.into_inner());
        ConnectionBucket::for_rate(&mut slot, bytes_per_second, chunk_size)
    }

    /// The socket wrapper saw the HTTP/2 preface.
    pub fn mark_http2(&self) {
        self.http2.store(true, Relaxed);
    }

    pub fn is_http2(&self) -> bool {
        self.http2.load(Relaxed)
    }

    /// When the last response ended (accept time when none has).
    pub fn last_response_at(&self) -> Instant {
        self.accepted_at + Duration::from_millis(self.last_response_ms.load(Relaxed))
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Relaxed)
    }

    /// Called by the socket wrapper when a head it read declared both `Content-Length` and
    /// `Transfer-Encoding`.
    pub fn note_length_and_chunks(&self) {
        self.length_and_chunks.store(true, Relaxed);
    }

    /// Whether the head of the request now being handled declared both lengths (read once).
    pub fn take_length_and_chunks(&self) -> bool {
        self.length_and_chunks.swap(false, Relaxed)
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Relaxed)
    }

    /// Called by the socket writer when a write must wait for the client.
    pub fn park_writer(&self, waker: &Waker) {
        self.writer.register(waker);
    }

    /// Called by the socket reader when it parks during a request.
    pub fn park_reader(&self, waker: &Waker) {
        self.reader.register(waker);
    }

    /// (requests started, responses done) so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.requests_started.load(Relaxed),
            self.responses_done.load(Relaxed),
        )
    }

    pub fn set_send_timeout(&self, timeout: Duration) {
        self.send_timeout_ms
            .store(timeout.as_millis() as u64, Relaxed);
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms.load(Relaxed))
    }

    pub fn set_response_deadline(&self, deadline: Instant) {
        let ms = deadline
            .saturating_duration_since(self.accepted_at)
            .as_millis() as u64;
        self.response_deadline_ms.store(ms.max(1), Relaxed);
    }

    pub fn response_deadline(&self) -> Option<Instant> {
        match self.response_deadline_ms.load(Relaxed) {
            0 => None,
            ms => Some(self.accepted_at + Duration::from_millis(ms)),
        }
    }
}
