//! Server-wide counters and gauges: connections, bytes, and rejections by reason.
//!
//! Everything is a relaxed atomic: counters are read for `server.stats()` and tests, never used
//! to make decisions, so no ordering between them is needed.

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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
    /// A connection (or, behind a trusted proxy, a request: `403`) from a banned address or
    /// user (`ban`), refused at accept before any TLS or HTTP work.
    Banned,
    /// A new connection over `maxConnectionRatePerIp`, closed at accept before a byte is read.
    ConnectionRate,
    /// A WebSocket message that broke its route's `messages` rules: dropped before JS (one
    /// count per message; the socket is closed with 1007 under `onInvalid: 'close'` or past
    /// `maxInvalid`).
    WsInvalidMessage,
}

impl Rejection {
    pub const ALL: [Rejection; 42] = [
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
        Rejection::Banned,
        Rejection::ConnectionRate,
        Rejection::WsInvalidMessage,
    ];

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
            Rejection::Banned => "banned",
            Rejection::ConnectionRate => "connection_rate",
            Rejection::WsInvalidMessage => "ws_invalid_message",
        }
    }

    /// Whether this refusal is a strike toward a ban: the client's doing, not a consequence
    /// of a ban itself, of a slow consumer's queue (counted per event, not per client act), or
    /// of the server's own state.
    pub fn counts_toward_ban(self) -> bool {
        !matches!(
            self,
            Rejection::Banned
                | Rejection::OutOfFiles
                | Rejection::SseEventDropped
                | Rejection::WsMessageDropped
        )
    }
}

#[derive(Default)]
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

    pub fn ws_received(&self) {
        self.ws_messages_in.fetch_add(1, Relaxed);
    }

    pub fn ws_sent(&self, messages: u64) {
        self.ws_messages_out.fetch_add(messages, Relaxed);
    }

    pub fn stale_uploads_removed(&self, count: u64) {
        self.stale_uploads_removed.fetch_add(count, Relaxed);
    }

    pub fn reject(&self, reason: Rejection) {
        self.reject_many(reason, 1);
    }

    pub fn reject_many(&self, reason: Rejection, count: usize) {
        self.rejections.0[reason as usize].fetch_add(count as u64, Relaxed);
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
            cluster: None,
            bans: None,
        }
    }
}

impl Snapshot {
    /// The counters in the Prometheus text exposition format (version 0.0.4), for a
    /// `/metrics` endpoint the application mounts where it sees fit.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP floodgate_{name} {help}");
            let _ = writeln!(out, "# TYPE floodgate_{name} {kind}");
            let _ = writeln!(out, "floodgate_{name} {value}");
        };
        metric(
            "connections",
            "gauge",
            "Open TCP connections.",
            self.connections_live as f64,
        );
        metric(
            "connections_total",
            "counter",
            "Accepted TCP connections.",
            self.connections_total as f64,
        );
        metric(
            "requests_total",
            "counter",
            "HTTP requests.",
            self.requests_total as f64,
        );
        metric(
            "sent_bytes_total",
            "counter",
            "Bytes written to clients.",
            self.bytes_sent as f64,
        );
        metric(
            "sent_zero_copy_bytes_total",
            "counter",
            "File bytes the kernel sent itself (sendfile), also in sent_bytes_total.",
            self.bytes_sent_zero_copy as f64,
        );
        metric(
            "received_bytes_total",
            "counter",
            "Bytes read from clients.",
            self.bytes_received as f64,
        );
        metric(
            "websockets",
            "gauge",
            "Open WebSocket sessions.",
            self.ws_connections as f64,
        );
        metric(
            "websocket_messages_received_total",
            "counter",
            "WebSocket messages received.",
            self.ws_messages_in as f64,
        );
        metric(
            "websocket_messages_sent_total",
            "counter",
            "WebSocket messages sent.",
            self.ws_messages_out as f64,
        );
        metric(
            "stale_uploads_removed_total",
            "counter",
            "Temporary files of interrupted uploads removed at start.",
            self.stale_uploads_removed as f64,
        );
        if let Some(bans) = &self.bans {
            metric(
                "bans",
                "gauge",
                "Addresses and users banned now.",
                bans.in_force as f64,
            );
        }
        if let Some(cluster) = &self.cluster {
            metric(
                "cluster_degraded",
                "gauge",
                "1 while Redis fails and limits follow the failure policy.",
                u8::from(cluster.degraded) as f64,
            );
            metric(
                "cluster_leases",
                "gauge",
                "Connections holding a cluster-wide lease.",
                cluster.leases as f64,
            );
            metric(
                "cluster_recoveries_total",
                "counter",
                "Times Redis answered again after failing.",
                cluster.recoveries as f64,
            );
            metric(
                "cluster_events_lost_total",
                "counter",
                "Events other instances may have missed while Redis failed.",
                cluster.events_lost as f64,
            );
            metric(
                "cluster_patterns",
                "gauge",
                "Topic patterns subscribed in Redis.",
                cluster.patterns as f64,
            );
            let _ = writeln!(
                out,
                "# HELP floodgate_cluster_fallbacks_total Limit decisions made without Redis, by reason."
            );
            let _ = writeln!(out, "# TYPE floodgate_cluster_fallbacks_total counter");
            for (reason, count) in &cluster.fallbacks {
                let _ = writeln!(
                    out,
                    "floodgate_cluster_fallbacks_total{{reason=\"{reason}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP floodgate_rejections_total Clients refused or cut off, by reason."
        );
        let _ = writeln!(out, "# TYPE floodgate_rejections_total counter");
        for (reason, count) in &self.rejections {
            let _ = writeln!(
                out,
                "floodgate_rejections_total{{reason=\"{reason}\"}} {count}"
            );
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_counters_and_labelled_rejections() {
        let metrics = Metrics::default();
        metrics.reject(Rejection::HeaderTimeout);
        let text = metrics.snapshot().prometheus();
        assert!(text.contains("# TYPE floodgate_connections gauge\nfloodgate_connections 0\n"));
        assert!(text.contains("floodgate_rejections_total{reason=\"header_timeout\"} 1\n"));
        assert!(text.contains("floodgate_rejections_total{reason=\"not_found\"} 0\n"));
        assert!(
            !text.contains("floodgate_cluster"),
            "no cluster, no cluster lines"
        );
    }

    #[test]
    fn prometheus_text_has_the_cluster_state_when_there_is_one() {
        let health = crate::cluster::health::Health::default();
        health.failed();
        health.fell_back(crate::cluster::health::Failure::Timeout);
        let mut snapshot = Metrics::default().snapshot();
        snapshot.cluster = Some(health.snapshot(7));
        let text = snapshot.prometheus();
        assert!(text.contains("floodgate_cluster_degraded 1\n"), "{text}");
        assert!(text.contains("floodgate_cluster_leases 7\n"), "{text}");
        assert!(text.contains("floodgate_cluster_fallbacks_total{reason=\"timeout\"} 1\n"));
        assert!(text.contains("floodgate_cluster_fallbacks_total{reason=\"degraded\"} 0\n"));
    }
}
