//! Server-wide counters and gauges: connections, bytes, and rejections by reason.
//!
//! Everything is a relaxed atomic: counters are read for `server.stats()` and tests, never used
//! to make decisions, so no ordering between them is needed. Every refusal goes through
//! [`Metrics::refuse`], which counts it and hands it to the rejection events
//! (`observe::reject`).

use crate::observe::app::AppMetrics;
use crate::observe::histogram::{self, Histogram};
use crate::observe::offenders::Offender;
use crate::observe::reject::{Code, Refusal, RejectEvents, RejectSink};
use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Why the server refused or cut off a client. The `as_str` names are the public labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    ConnectionLimit,
    HeaderTimeout,
    HeaderTooLarge,
    SendTimeout,
    DownloadTimeout,
    NotFound,
    MethodNotAllowed,
    RangeNotSatisfiable,
    BodyTooLarge,
    ReadTimeout,
    UploadTimeout,
    UploadTooSlow,
    RateLimited,
    HandlerTimeout,
    InflightLimit,
    SseLimit,
    SseOverflow,
    SseEventDropped,
    WsLimit,
    WsMessageTooLarge,
    WsRateLimited,
    WsIdleTimeout,
    WsPongTimeout,
    WsMessageDropped,
    WsOverflow,
    /// A session closed by the server for the client's input: `1002`, or `1007` for text or
    /// a close reason that is not UTF-8. One per session, only when that refusal is what
    /// closes it.
    WsProtocolError,
    /// An upgrade request refused before the `101` for its handshake: `426` without
    /// `Upgrade: websocket`, `400` for another method, no `Connection: Upgrade`, a version
    /// other than 13 or no `Sec-WebSocket-Key`.
    WsBadHandshake,
    /// `accept` failed for want of file descriptors (EMFILE / ENFILE): the accept loop backs
    /// off; the kernel keeps the connection queued (or refuses it once its backlog is full).
    OutOfFiles,
    /// A request that breaks HTTP/1.1's message rules (`conn/conformance.rs`: Host,
    /// Transfer-Encoding, Content-Length with Transfer-Encoding; `400`, or `501` for a transfer
    /// coding other than `chunked`), or a request body whose framing is broken (`400`).
    BadRequest,
    /// A TLS handshake not finished within `headerTimeout` of accept.
    TlsHandshakeTimeout,
    /// A TLS client offering only versions older than TLS 1.2.
    TlsBadVersion,
    /// A TLS client with no cipher suite, key exchange group or signature scheme in common.
    TlsNoSharedCipher,
    /// Bytes that are not a TLS handshake (plain HTTP to a TLS port, garbage).
    TlsBadMessage,
    /// Any other failed handshake: the client's alert (it does not trust the certificate),
    /// or the connection closed during the handshake.
    TlsHandshakeFailed,
    /// `proxyProtocol` is on and the connection came from a source it does not trust.
    ProxyProtocolUntrusted,
    /// `proxyProtocol` is on and the connection did not start with a valid header.
    ProxyProtocolInvalid,
    /// An HTTP/2 client over `http2MaxControlFramesPerSecond` (SETTINGS, PING, PRIORITY).
    H2ControlFlood,
    /// h2 ended an HTTP/2 connection with GOAWAY `ENHANCE_YOUR_CALM`: rapid resets, a
    /// CONTINUATION flood, a header list over its limit, a flood of empty DATA frames.
    H2Flood,
    /// h2 ended an HTTP/2 connection with GOAWAY for a protocol violation (malformed frames,
    /// flow-control or compression errors).
    H2ProtocolError,
    /// A JS-handler request shed before reaching JS: the JS thread had left a batch waiting
    /// longer than `maxEventLoopDelay` (`503` + `Retry-After`).
    EventLoopOverload,
    /// A connection (or, behind a trusted proxy, a request: `403`) from a banned address or
    /// user (`ban`), refused at accept before any TLS or HTTP work.
    Banned,
    /// A new connection over `maxConnectionRatePerIp`, closed at accept before a byte is read.
    ConnectionRate,
    /// A WebSocket message that broke its route's `messages` rules: dropped before JS (one
    /// count per message; the socket is closed with 1007 under `onInvalid: 'close'` or past
    /// `maxInvalid`).
    WsInvalidMessage,
    /// A multipart upload that is not one: no or a bad boundary, a part without
    /// `Content-Disposition: form-data; name=...`, a body cut short or never reaching a
    /// boundary (`400`).
    MultipartMalformed,
    /// A multipart upload past `multipart.maxParts` (`413`).
    MultipartTooManyParts,
    /// Past `multipart.maxFiles` (`413`).
    MultipartTooManyFiles,
    /// Past `multipart.maxFields` (`413`).
    MultipartTooManyFields,
    /// A form field's value past `multipart.maxFieldSize` (`413`).
    MultipartFieldTooLarge,
    /// A part's header block past `multipart.maxPartHeaderSize` (`431`).
    MultipartHeaderTooLarge,
    /// One file of a multipart upload past `multipart.maxFileSize` (`413`).
    FileTooLarge,
    /// A file part whose media type `multipart.allowedTypes` does not list, or a tus `PATCH`
    /// that is not `application/offset+octet-stream` (`415`).
    UnsupportedMediaType,
    /// A tus creation past `resumable.maxUploadsPerUser` (`429`).
    ResumableUploadsLimit,
    /// A tus creation past `resumable.maxBytesPerUser` (`429`).
    ResumableBytesLimit,
    /// A tus `PATCH` while another one to the same upload is running (`423`).
    ResumableLocked,
    /// A tus `PATCH` at an offset other than the upload's (`409`).
    ResumableOffsetConflict,
    /// A tus `PATCH` whose body does not match its `Upload-Checksum` (`460`).
    ChecksumMismatch,
}

impl Rejection {
    pub const ALL: [Rejection; 56] = [
        Rejection::ConnectionLimit,
        Rejection::HeaderTimeout,
        Rejection::HeaderTooLarge,
        Rejection::SendTimeout,
        Rejection::DownloadTimeout,
        Rejection::NotFound,
        Rejection::MethodNotAllowed,
        Rejection::RangeNotSatisfiable,
        Rejection::BodyTooLarge,
        Rejection::ReadTimeout,
        Rejection::UploadTimeout,
        Rejection::UploadTooSlow,
        Rejection::RateLimited,
        Rejection::HandlerTimeout,
        Rejection::InflightLimit,
        Rejection::SseLimit,
        Rejection::SseOverflow,
        Rejection::SseEventDropped,
        Rejection::WsLimit,
        Rejection::WsMessageTooLarge,
        Rejection::WsRateLimited,
        Rejection::WsIdleTimeout,
        Rejection::WsPongTimeout,
        Rejection::WsMessageDropped,
        Rejection::WsOverflow,
        Rejection::WsProtocolError,
        Rejection::WsBadHandshake,
        Rejection::OutOfFiles,
        Rejection::BadRequest,
        Rejection::TlsHandshakeTimeout,
        Rejection::TlsBadVersion,
        Rejection::TlsNoSharedCipher,
        Rejection::TlsBadMessage,
        Rejection::TlsHandshakeFailed,
        Rejection::ProxyProtocolUntrusted,
        Rejection::ProxyProtocolInvalid,
        Rejection::H2ControlFlood,
        Rejection::H2Flood,
        Rejection::H2ProtocolError,
        Rejection::EventLoopOverload,
        Rejection::Banned,
        Rejection::ConnectionRate,
        Rejection::WsInvalidMessage,
        Rejection::MultipartMalformed,
        Rejection::MultipartTooManyParts,
        Rejection::MultipartTooManyFiles,
        Rejection::MultipartTooManyFields,
        Rejection::MultipartFieldTooLarge,
        Rejection::MultipartHeaderTooLarge,
        Rejection::FileTooLarge,
        Rejection::UnsupportedMediaType,
        Rejection::ResumableUploadsLimit,
        Rejection::ResumableBytesLimit,
        Rejection::ResumableLocked,
        Rejection::ResumableOffsetConflict,
        Rejection::ChecksumMismatch,
    ];

    /// What the client is usually told for this reason; a site that answers otherwise says so
    /// (`Refusal::status`). `None`: the connection is cut without an answer.
    pub fn code(self) -> Option<Code> {
        use Rejection::*;
        let status = match self {
            ConnectionLimit | RateLimited | SseLimit | WsLimit => 429,
            HeaderTimeout | ReadTimeout | UploadTimeout | UploadTooSlow => 408,
            HeaderTooLarge => 431,
            NotFound => 404,
            MethodNotAllowed => 405,
            RangeNotSatisfiable => 416,
            BodyTooLarge => 413,
            HandlerTimeout | InflightLimit | EventLoopOverload => 503,
            BadRequest | WsBadHandshake | MultipartMalformed => 400,
            MultipartTooManyParts
            | MultipartTooManyFiles
            | MultipartTooManyFields
            | MultipartFieldTooLarge
            | FileTooLarge => 413,
            MultipartHeaderTooLarge => 431,
            UnsupportedMediaType => 415,
            ResumableUploadsLimit | ResumableBytesLimit => 429,
            ResumableLocked => 423,
            ResumableOffsetConflict => 409,
            ChecksumMismatch => 460,
            WsInvalidMessage => return Some(Code::Close(1007)),
            WsMessageTooLarge => return Some(Code::Close(1009)),
            WsRateLimited => return Some(Code::Close(1008)),
            WsIdleTimeout => return Some(Code::Close(1000)),
            WsProtocolError => return Some(Code::Close(1002)),
            WsOverflow => return Some(Code::Close(1013)),
            WsPongTimeout => return Some(Code::Close(1006)),
            _ => return None,
        };
        Some(Code::Status(status))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::SendTimeout => "send_timeout",
            Rejection::DownloadTimeout => "download_timeout",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::RangeNotSatisfiable => "range_not_satisfiable",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::ReadTimeout => "read_timeout",
            Rejection::UploadTimeout => "upload_timeout",
            Rejection::UploadTooSlow => "upload_too_slow",
            Rejection::RateLimited => "rate_limited",
            Rejection::HandlerTimeout => "handler_timeout",
            Rejection::InflightLimit => "inflight_limit",
            Rejection::SseLimit => "sse_limit",
            Rejection::SseOverflow => "sse_overflow",
            Rejection::SseEventDropped => "sse_event_dropped",
            Rejection::WsLimit => "ws_limit",
            Rejection::WsMessageTooLarge => "ws_message_too_large",
            Rejection::WsRateLimited => "ws_rate_limited",
            Rejection::WsIdleTimeout => "ws_idle_timeout",
            Rejection::WsPongTimeout => "ws_pong_timeout",
            Rejection::WsMessageDropped => "ws_message_dropped",
            Rejection::WsOverflow => "ws_overflow",
            Rejection::WsProtocolError => "ws_protocol_error",
            Rejection::WsBadHandshake => "ws_bad_handshake",
            Rejection::OutOfFiles => "out_of_files",
            Rejection::BadRequest => "bad_request",
            Rejection::TlsHandshakeTimeout => "tls_handshake_timeout",
            Rejection::TlsBadVersion => "tls_bad_version",
            Rejection::TlsNoSharedCipher => "tls_no_shared_cipher",
            Rejection::TlsBadMessage => "tls_bad_message",
            Rejection::TlsHandshakeFailed => "tls_handshake_failed",
            Rejection::ProxyProtocolUntrusted => "proxy_protocol_untrusted",
            Rejection::ProxyProtocolInvalid => "proxy_protocol_invalid",
            Rejection::H2ControlFlood => "h2_control_flood",
            Rejection::H2Flood => "h2_flood",
            Rejection::H2ProtocolError => "h2_protocol_error",
            Rejection::EventLoopOverload => "event_loop_overload",
            Rejection::Banned => "banned",
            Rejection::ConnectionRate => "connection_rate",
            Rejection::WsInvalidMessage => "ws_invalid_message",
            Rejection::MultipartMalformed => "multipart_malformed",
            Rejection::MultipartTooManyParts => "multipart_too_many_parts",
            Rejection::MultipartTooManyFiles => "multipart_too_many_files",
            Rejection::MultipartTooManyFields => "multipart_too_many_fields",
            Rejection::MultipartFieldTooLarge => "multipart_field_too_large",
            Rejection::MultipartHeaderTooLarge => "multipart_header_too_large",
            Rejection::FileTooLarge => "file_too_large",
            Rejection::UnsupportedMediaType => "unsupported_media_type",
            Rejection::ResumableUploadsLimit => "resumable_uploads_limit",
            Rejection::ResumableBytesLimit => "resumable_bytes_limit",
            Rejection::ResumableLocked => "resumable_locked",
            Rejection::ResumableOffsetConflict => "resumable_offset_conflict",
            Rejection::ChecksumMismatch => "checksum_mismatch",
        }
    }

    /// Whether this refusal is a strike toward a ban: the client's doing, not a consequence
    /// of a ban itself, of a slow consumer's queue (counted per event, not per client act), of
    /// the server's own state, or one invalid WebSocket message (the close they lead to is
    /// the strike).
    pub fn counts_toward_ban(self) -> bool {
        !matches!(
            self,
            Rejection::Banned
                | Rejection::WsInvalidMessage
                | Rejection::EventLoopOverload
                | Rejection::OutOfFiles
                | Rejection::SseEventDropped
                | Rejection::WsMessageDropped
        )
    }
}

pub struct Metrics {
    connections_live: AtomicI64,
    connections_total: AtomicU64,
    requests_total: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_sent_zero_copy: AtomicU64,
    bytes_received: AtomicU64,
    ws_live: AtomicI64,
    ws_messages_in: AtomicU64,
    ws_messages_out: AtomicU64,
    stale_uploads_removed: AtomicU64,
    rejections: RejectionCounts,
    events: RejectEvents,
    /// Sizes of WebSocket messages received, in bytes.
    pub ws_message_bytes: Histogram,
    /// An event stream's queue length as each event is queued.
    pub sse_queue_depth: Histogram,
    /// What each mounted app counts (requests, streams, sockets, refusals).
    pub apps: Vec<Arc<AppMetrics>>,
    /// Offender bans (`ban`): every refusal that names its client is a strike.
    bans: std::sync::OnceLock<Arc<crate::limit::ban::Bans>>,
    /// Histograms observed (`metrics: true`, the default); off, only counters are kept.
    histograms: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_live: AtomicI64::default(),
            connections_total: AtomicU64::default(),
            requests_total: AtomicU64::default(),
            bytes_sent: AtomicU64::default(),
            bytes_sent_zero_copy: AtomicU64::default(),
            bytes_received: AtomicU64::default(),
            ws_live: AtomicI64::default(),
            ws_messages_in: AtomicU64::default(),
            ws_messages_out: AtomicU64::default(),
            stale_uploads_removed: AtomicU64::default(),
            rejections: RejectionCounts::default(),
            events: RejectEvents::default(),
            ws_message_bytes: Histogram::new(&histogram::BYTES),
            sse_queue_depth: Histogram::new(&histogram::DEPTH),
            apps: Vec::new(),
            bans: std::sync::OnceLock::new(),
            histograms: true,
        }
    }
}

/// One counter per [`Rejection`] (an array this long has no derived `Default`).
struct RejectionCounts([AtomicU64; Rejection::ALL.len()]);

impl Default for RejectionCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// A point-in-time copy of the metrics, serialized for JS as camelCase.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub connections_live: i64,
    pub connections_total: u64,
    pub requests_total: u64,
    pub bytes_sent: u64,
    /// The part of `bytes_sent` the kernel sent from files itself (`sendfile`).
    pub bytes_sent_zero_copy: u64,
    pub bytes_received: u64,
    /// Open WebSocket sessions.
    pub ws_connections: i64,
    pub ws_messages_in: u64,
    pub ws_messages_out: u64,
    /// Temporary files of uploads cut by a crash, removed by uploads mounts when they started.
    pub stale_uploads_removed: u64,
    pub rejections: std::collections::BTreeMap<&'static str, u64>,
    /// The clients refused most often (bounded table, `topOffenders`), most refused first.
    pub top_offenders: Vec<Offender>,
    /// Rejection events left out by `rejectEventsPerSecond` (counted, not sent to JS).
    pub reject_events_dropped: u64,
    /// Access log lines written (or handed to the callback), and lines dropped: the writer's
    /// queue was full, the callback's `accessLogPerSecond` was reached, or a write failed.
    pub access_log_lines: u64,
    pub access_log_dropped: u64,
    /// Present with the `cluster` option: Redis's state and what was decided without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::health::ClusterSnapshot>,
    /// Present with the `ban` option.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bans: Option<BanSnapshot>,
}

/// The ban tables' sizes (each bounded by `ban.maxEntries`).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BanSnapshot {
    /// Bans in force.
    pub in_force: usize,
    /// Clients with refusals counted toward a ban.
    pub offenders: usize,
}

impl Metrics {
    /// Metrics whose rejection events go to `sink`, at most `per_second` a second, with a top
    /// offenders table of `top_offenders` entries.
    pub fn new(
        per_second: u32,
        top_offenders: u32,
        sink: Option<Arc<dyn RejectSink>>,
        apps: Vec<Arc<AppMetrics>>,
    ) -> Self {
        Self {
            events: RejectEvents::new(per_second, top_offenders, sink),
            apps,
            ..Self::default()
        }
    }

    /// Without histograms (and, from the caller, without rejection events): `metrics: false`.
    pub fn without_histograms(mut self) -> Self {
        self.histograms = false;
        self
    }

    /// Whether histograms are observed.
    pub fn histograms(&self) -> bool {
        self.histograms
    }

    /// The queue length of an event stream as an event is queued.
    pub fn sse_queued(&self, depth: usize) {
        if self.histograms {
            self.sse_queue_depth.observe(depth as u64);
        }
    }

    pub fn connection_opened(&self) {
        self.connections_live.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_live.fetch_sub(1, Relaxed);
    }

    pub fn request(&self) {
        self.requests_total.fetch_add(1, Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    /// File bytes sent with `sendfile` (counted in `sent` too).
    pub fn sent_zero_copy(&self, bytes: usize) {
        self.bytes_sent_zero_copy.fetch_add(bytes as u64, Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    pub fn ws_opened(&self) {
        self.ws_live.fetch_add(1, Relaxed);
    }

    pub fn ws_closed(&self) {
        self.ws_live.fetch_sub(1, Relaxed);
    }

    /// A WebSocket message of `bytes` received.
    pub fn ws_received(&self, bytes: usize) {
        self.ws_messages_in.fetch_add(1, Relaxed);
        if self.histograms {
            self.ws_message_bytes.observe(bytes as u64);
        }
    }

    pub fn ws_sent(&self, messages: u64) {
        self.ws_messages_out.fetch_add(messages, Relaxed);
    }

    pub fn stale_uploads_removed(&self, count: u64) {
        self.stale_uploads_removed.fetch_add(count, Relaxed);
    }

    /// Refusals that name their client count as strikes toward `bans` from now on.
    pub(crate) fn strike_into(&self, bans: Arc<crate::limit::ban::Bans>) {
        let _ = self.bans.set(bans);
    }

    /// Counts a refusal known only by its reason (no client at hand).
    pub fn reject(&self, reason: Rejection) {
        self.refuse(Refusal::new(reason));
    }

    /// The one path of every refusal: counted by reason, the client entered in the top
    /// offenders, and an event for JS within the per-second bound.
    pub fn refuse(&self, refusal: Refusal<'_>) {
        if let (Some(bans), Some(client)) = (self.bans.get(), refusal.client) {
            if refusal.reason.counts_toward_ban() {
                bans.strike(crate::limit::key::ClientKey::new(refusal.user, client));
            }
        }
        self.rejections.0[refusal.reason as usize].fetch_add(1, Relaxed);
        crate::observe::access::note_refusal(refusal.reason);
        if let Some(app) = refusal.app {
            app.rejected(refusal.reason);
        }
        self.events.record(&refusal);
    }

    /// `count` refusals of one kind at once (events dropped from a slow reader's queue): all
    /// counted, one event.
    pub fn reject_many(&self, reason: Rejection, count: usize) {
        if count == 0 {
            return;
        }
        self.rejections.0[reason as usize].fetch_add(count as u64 - 1, Relaxed);
        self.refuse(Refusal::new(reason));
    }

    pub fn rejections(&self, reason: Rejection) -> u64 {
        self.rejections.0[reason as usize].load(Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections_live: self.connections_live.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            requests_total: self.requests_total.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_sent_zero_copy: self.bytes_sent_zero_copy.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            ws_connections: self.ws_live.load(Relaxed),
            ws_messages_in: self.ws_messages_in.load(Relaxed),
            ws_messages_out: self.ws_messages_out.load(Relaxed),
            stale_uploads_removed: self.stale_uploads_removed.load(Relaxed),
            rejections: Rejection::ALL
                .iter()
                .map(|reason| (reason.as_str(), self.rejections(*reason)))
                .collect(),
            top_offenders: self.events.top_offenders(),
            reject_events_dropped: self.events.dropped_total(),
            access_log_lines: 0,
            access_log_dropped: 0,
            cluster: None,
            bans: None,
        }
    }
}

/// Counts one live connection for as long as it is held, so every exit path closes it.
pub struct LiveConnection(std::sync::Arc<Metrics>);

impl LiveConnection {
    pub fn new(metrics: &std::sync::Arc<Metrics>) -> Self {
        metrics.connection_opened();
        Self(std::sync::Arc::clone(metrics))
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}
