//! Typed configuration. The `Default` impls here are the single source of every default;
//! the TypeScript layer and the CLI pass user options through unchanged.
//!
//! Options arrive as JSON (camelCase keys). Unknown keys, negative sizes and unparseable
//! strings are rejected with a message that starts with the option's name, which the
//! TypeScript layer rethrows as a `TypeError` at construction time.

pub(crate) mod units;

use crate::config::units::{number_to_u64, parse_duration, parse_size};
use crate::error::Error;
use crate::files::FilesMount;
use crate::upload::UploadsMount;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::net::IpAddr;
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Options of `new Server(...)`: connection-level protections shared by every mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Concurrent TCP connections per client address (IPv6: per /64). 0 disables the cap.
    pub max_connections_per_ip: u32,
    /// The whole request head must arrive within this, counted from accept (first request)
    /// or from its first byte (later requests on a keep-alive connection).
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    #[serde(deserialize_with = "duration")]
    pub keep_alive_timeout: Duration,
    /// Request line plus headers; larger heads get 431.
    #[serde(deserialize_with = "size")]
    pub max_header_size: u64,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-For` / `Forwarded` headers are believed.
    #[serde(deserialize_with = "cidrs")]
    pub trust_proxy: Vec<IpNet>,
    /// Accept cleartext HTTP/2 (h2c, prior knowledge) beside HTTP/1.1.
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// SETTINGS, PING and PRIORITY frames an HTTP/2 client may send per second; past it the
    /// connection gets GOAWAY. 0 disables.
    pub http2_max_control_frames_per_second: u32,
    /// Streams an HTTP/2 client may open and reset before the server has seen them (the rapid
    /// reset attack); past it the connection gets GOAWAY `ENHANCE_YOUR_CALM`.
    pub http2_max_pending_resets: u32,
    /// Send file bodies with `sendfile(2)` on HTTP/1.1 connections where the system has it
    /// (Linux); off, they are read and written as over HTTP/2.
    pub sendfile: bool,
    /// Serve TLS (every connection) with these certificates.
    pub tls: Option<TlsOptions>,
    /// Every connection starts with a PROXY protocol header from one of these sources.
    pub proxy_protocol: Option<ProxyProtocolOptions>,
    /// Share caps, request rates and the topic bus with other instances through Redis.
    /// Absent: everything is per process, as without it.
    pub cluster: Option<ClusterConfig>,
    /// Rejection events handed to JS (`server.on('reject')`) per second at most; the rest are
    /// counted and reported as `dropped` by the next one. 0: no events.
    pub reject_events_per_second: u32,
    /// Size of the top offenders table in `stats()` (clients refused most often). 0: none.
    pub top_offenders: u32,
    /// New JS-handler requests are answered `503` + `Retry-After` without reaching JS while
    /// the JS thread has left work waiting longer than this (its event loop is stuck or
    /// behind). 0: never.
    #[serde(deserialize_with = "duration")]
    pub max_event_loop_delay: Duration,
    /// New connections per second per client address (IPv6: per /64), checked at accept
    /// before the per-IP cap: past it the connection is closed before a byte is read. 0
    /// disables.
    pub max_connection_rate_per_ip: u32,
    /// Connections an address may open at once beyond that rate (GCRA burst); 0 means the
    /// rate itself.
    pub connection_rate_burst: u32,
    /// Offender bans: an address (or user) refused `after` times within `within` is refused
    /// at accept for `for`. Absent: no bans.
    pub ban: Option<BanConfig>,
    /// The access log (`observe::access`): `"stdout"`, a file path, or `{ "callback": true }`
    /// (the JS layer's function). Absent: no access log.
    pub access_log: Option<AccessLogTarget>,
    /// Lines handed to the `accessLog` callback per second at most; the rest are counted.
    pub access_log_per_second: u32,
    /// Lines queued for the access log's writer; past it lines are dropped and counted.
    pub access_log_queue: u32,
    /// Histograms (request duration, time to first byte, sizes, queue depth) and rejection
    /// events. `false` keeps only the counters of `stats()` (for the benchmark's A/B).
    pub metrics: bool,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(std::path::PathBuf),
    /// Batches to the JS callback.
    Callback,
}

impl<'de> Deserialize<'de> for AccessLogTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Named(String),
            Callback { callback: bool },
        }
        let bad = || {
            serde::de::Error::custom(
                "must be 'stdout', a file path, or a function receiving each entry",
            )
        };
        match Raw::deserialize(deserializer).map_err(|_| bad())? {
            Raw::Named(name) if name == "stdout" => Ok(Self::Stdout),
            Raw::Named(path) if !path.is_empty() && !path.contains('\0') => {
                Ok(Self::File(path.into()))
            }
            Raw::Callback { callback: true } => Ok(Self::Callback),
            _ => Err(bad()),
        }
    }
}

/// `ban`: when an offender is banned, for how long, who never is, and how many are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BanConfig {
    /// Refusals (of any reason but a ban) that ban their address or user.
    pub after: u32,
    /// ... counted within this window from the first of them.
    #[serde(deserialize_with = "duration")]
    pub within: Duration,
    /// How long a ban lasts.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
    /// Addresses (CIDRs) never banned; the trusted proxies and load balancers never are either.
    #[serde(deserialize_with = "cidrs")]
    pub exempt: Vec<IpNet>,
    /// Bans (and, apart, offenders being counted) kept at most; past it the least recently
    /// banned is forgotten first, so a storm of spoofed addresses cannot grow the table.
    pub max_entries: u32,
}

impl Default for BanConfig {
    fn default() -> Self {
        Self {
            after: 50,
            within: Duration::from_secs(10),
            duration: Duration::from_secs(300),
            exempt: Vec::new(),
            max_entries: 10_000,
        }
    }
}

impl BanConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.after == 0 {
            return Err("ban.after: must be at least 1".into());
        }
        if self.within.is_zero() {
            return Err("ban.within: must be greater than 0".into());
        }
        if self.duration.is_zero() {
            return Err("ban.for: must be greater than 0".into());
        }
        if self.max_entries == 0 {
            return Err("ban.maxEntries: must be at least 1".into());
        }
        Ok(())
    }
}

/// `proxyProtocol`: who may send PROXY protocol headers (v1 or v2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyProtocolOptions {
    /// Load balancers (CIDRs or addresses); a connection from anywhere else is closed.
    #[serde(deserialize_with = "cidrs")]
    pub trusted: Vec<IpNet>,
}

/// `tls`: the default certificate chain and key, and more chosen by SNI name. Each is PEM
/// text, or the path of a PEM file (read when the options are checked, and again by
/// `setTls`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsOptions {
    pub cert: String,
    pub key: String,
    /// Certificates by the host name a client asks for (`*.example.com` matches one label).
    #[serde(default)]
    pub sni: std::collections::BTreeMap<String, TlsPair>,
    /// Offer HTTP/2 by ALPN (`h2`), as browsers expect over TLS. Cleartext HTTP/2 is the
    /// separate `http2` option.
    #[serde(default = "offer_http2")]
    pub http2: bool,
}

fn offer_http2() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsPair {
    pub cert: String,
    pub key: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections_per_ip: 100,
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_header_size: 16 * KIB,
            trust_proxy: Vec::new(),
            http2: false,
            http2_max_concurrent_streams: 100,
            http2_max_control_frames_per_second: 100,
            http2_max_pending_resets: 20,
            sendfile: true,
            tls: None,
            proxy_protocol: None,
            cluster: None,
            reject_events_per_second: 100,
            top_offenders: 32,
            max_event_loop_delay: Duration::ZERO,
            max_connection_rate_per_ip: 0,
            connection_rate_burst: 0,
            ban: None,
            access_log: None,
            access_log_per_second: 1000,
            access_log_queue: 16384,
            metrics: true,
        }
    }
}

/// What a cluster-wide limit does while Redis is down or slower than `cluster.timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicy {
    /// Each instance applies its share of every limit (the limit divided by `instances`).
    #[default]
    Local,
    /// Allow: connections and requests pass uncounted.
    Open,
    /// Refuse: `503` with `Retry-After` until Redis answers again.
    Closed,
}

/// Options of `new Server({ cluster: {...} })`: Redis behind the caps, rates and bus.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`. Required.
    pub redis: String,
    /// Prefix of every Redis key and channel, so several services can share one Redis.
    pub prefix: String,
    /// A connection's lease expires this long after its instance last renewed it (every third
    /// of it): an instance that dies gives its connections back within this.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// A Redis call slower than this counts as a failure: the failure policy applies.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub on_failure: FailurePolicy,
    /// Instances sharing the limits; under the `local` policy each applies 1/`instances` of
    /// every cluster-wide limit (rounded up).
    pub instances: u32,
    /// Events kept per topic in Redis for `Last-Event-ID` resume on any instance; 0 keeps
    /// none (each instance resumes from its own recent events).
    pub history: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: String::new(),
            prefix: "floodgate".into(),
            lease_ttl: Duration::from_secs(15),
            timeout: Duration::from_millis(250),
            on_failure: FailurePolicy::Local,
            instances: 1,
            history: 256,
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        let url = self.redis.as_str();
        if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            return Err("cluster.redis: must be a redis:// URL".into());
        }
        redis::Client::open(url).map_err(|err| format!("cluster.redis: {err}"))?;
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err("cluster.prefix: must be non-empty, without spaces".into());
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err("cluster.leaseTtl: must be at least 1s".into());
        }
        if self.timeout.is_zero() || self.timeout * 3 > self.lease_ttl {
            return Err("cluster.timeout: must be greater than 0 and at most leaseTtl / 3".into());
        }
        if self.instances == 0 {
            return Err("cluster.instances: must be at least 1".into());
        }
        Ok(())
    }

    /// This instance's share of a cluster-wide `limit` (0 stays 0: no limit).
    pub fn share(&self, limit: u32) -> u32 {
        limit.div_ceil(self.instances.max(1))
    }
}

/// Options of `new StreamingApp(...)`: the limits of one streaming mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct StreamingConfig {
    /// Bytes read from a file and written per step; also the largest burst of the shaper.
    #[serde(deserialize_with = "size")]
    pub chunk_size: u64,
    /// A client that takes no bytes for this long is disconnected (slow reader).
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    /// A whole response must be delivered within this. 0 disables.
    #[serde(deserialize_with = "duration")]
    pub download_timeout: Duration,
    /// Bytes per second per connection. 0 disables shaping.
    #[serde(deserialize_with = "size")]
    pub rate_limit_bandwidth: u64,
    /// Bytes per second summed over all connections of one client. 0 disables.
    #[serde(deserialize_with = "size")]
    pub per_client_bandwidth: u64,
    /// Largest request body; a larger Content-Length is refused before reading (413).
    #[serde(deserialize_with = "size")]
    pub max_upload_size: u64,
    /// A whole upload must arrive within this.
    #[serde(deserialize_with = "duration")]
    pub upload_timeout: Duration,
    /// No body bytes for this long ends the upload (408).
    #[serde(deserialize_with = "duration")]
    pub read_timeout: Duration,
    /// After `minUploadRateGrace`, an upload averaging less than this many bytes per second is
    /// cut off (408), so a trickle cannot hold a slot for hours. 0 disables.
    #[serde(deserialize_with = "size")]
    pub min_upload_rate: u64,
    #[serde(deserialize_with = "duration")]
    pub min_upload_rate_grace: Duration,
    /// Bytes per second read from one connection's request body. 0 disables.
    #[serde(deserialize_with = "size")]
    pub rate_limit_upload_bandwidth: u64,
    /// Bytes per second read summed over one client's connections. 0 disables.
    #[serde(deserialize_with = "size")]
    pub per_client_upload_bandwidth: u64,
    /// Requests per `rateLimitWindow` per client (user id, else address). 0 disables.
    pub rate_limit_requests: u32,
    #[serde(deserialize_with = "duration")]
    pub rate_limit_window: Duration,
    /// Requests a client may make at once before the rate applies; 0 means `rateLimitRequests`.
    pub rate_limit_burst: u32,
    /// A JS handler that has not answered within this gets its request 503.
    #[serde(deserialize_with = "duration")]
    pub handler_timeout: Duration,
    /// JS requests in flight for this app; beyond it, 503 + Retry-After without calling JS.
    pub max_inflight: u32,
    /// A comment line is sent on a quiet event stream this often, so proxies keep it open.
    #[serde(deserialize_with = "duration")]
    pub sse_keep_alive: Duration,
    /// Event streams one user (or address) may hold at once; more get 429.
    pub sse_max_connections_per_user: u32,
    /// Event streams the app holds at once; more get 503.
    pub sse_max_connections: u32,
    /// Largest WebSocket message (and frame); a larger one closes the socket with 1009.
    #[serde(deserialize_with = "size")]
    pub ws_max_message_size: u64,
    /// A WebSocket with no message from its client for this long is closed (1000, "Idle
    /// timeout"). 0 disables.
    #[serde(deserialize_with = "duration")]
    pub ws_idle_timeout: Duration,
    /// Whether the client's pings (and pongs) keep a WebSocket from being idle. Off: only
    /// messages do, so a client that merely pings is still closed at `wsIdleTimeout`.
    pub ws_idle_counts_pings: bool,
    /// WebSockets one user (or, when anonymous, one address) may hold; more get 429. 0: no cap.
    pub ws_max_connections_per_user: u32,
    /// WebSockets one client address (IPv6: /64) may hold; more get 429. 0: no cap.
    pub ws_max_connections_per_ip: u32,
    /// WebSockets the app holds at once; more get 503.
    pub ws_max_connections: u32,
    /// Messages per second one WebSocket may send (burst: one second's worth). 0: no cap.
    pub ws_max_messages_per_second: u32,
    /// Message bytes per second one WebSocket may send. 0: no cap.
    #[serde(deserialize_with = "size")]
    pub ws_max_bytes_per_second: u64,
    /// The server pings each WebSocket this often; 0 disables.
    #[serde(deserialize_with = "duration")]
    pub ws_ping_interval: Duration,
    /// A ping unanswered for this long means a dead peer: the connection is dropped.
    #[serde(deserialize_with = "duration")]
    pub ws_pong_timeout: Duration,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            chunk_size: 64 * KIB,
            send_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(600),
            rate_limit_bandwidth: 10 * MIB,
            per_client_bandwidth: 0,
            max_upload_size: 100 * MIB,
            upload_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(30),
            min_upload_rate: KIB,
            min_upload_rate_grace: Duration::from_secs(10),
            rate_limit_upload_bandwidth: 0,
            per_client_upload_bandwidth: 0,
            rate_limit_requests: 100,
            rate_limit_window: Duration::from_secs(60),
            rate_limit_burst: 0,
            handler_timeout: Duration::from_secs(30),
            max_inflight: 1024,
            sse_keep_alive: Duration::from_secs(15),
            sse_max_connections_per_user: 10,
            sse_max_connections: 10_000,
            ws_max_message_size: MIB,
            ws_idle_timeout: Duration::from_secs(60),
            ws_idle_counts_pings: false,
            ws_max_connections_per_user: 10,
            ws_max_connections_per_ip: 100,
            ws_max_connections: 10_000,
            ws_max_messages_per_second: 100,
            ws_max_bytes_per_second: 0,
            ws_ping_interval: Duration::from_secs(30),
            ws_pong_timeout: Duration::from_secs(10),
        }
    }
}

/// How `Content-Disposition` presents served files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Disposition {
    #[default]
    Inline,
    Attachment,
}

/// Options of `streaming.files(prefix, {...})`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilesConfig {
    /// Folder served; must exist. Nothing outside it is ever served.
    pub root: String,
    #[serde(default)]
    pub disposition: Disposition,
    /// `Cache-Control` value sent with files, if any.
    #[serde(default)]
    pub cache_control: Option<String>,
}

/// Options of `streaming.uploads(prefix, {...})`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UploadsConfig {
    /// Folder uploads are written to; must exist.
    pub dir: String,
    /// Replace an existing file (atomically) or answer 409.
    #[serde(default = "yes")]
    pub overwrite: bool,
    /// Sync the file to disk before renaming it into place, so a crash can never leave a
    /// complete-looking name with incomplete content. Off trades that for throughput.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// `multipart/form-data` POSTed to the mount itself: its limits and how files are named.
    #[serde(default)]
    pub multipart: MultipartConfig,
    /// Resumable uploads with the tus 1.0 protocol at the mount. Absent: off.
    #[serde(default)]
    pub resumable: Option<ResumableConfig>,
}

/// `uploads(prefix, { resumable: {...} })`: tus uploads (`Upload-Length` is capped by the
/// app's `maxUploadSize`; each `PATCH` body reads under its `readTimeout`, `uploadTimeout` and
/// `minUploadRate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ResumableConfig {
    /// An unfinished upload is removed this long after its creation or last `PATCH`.
    #[serde(deserialize_with = "duration")]
    pub expiration: Duration,
    /// Unfinished uploads one user (else address) may have (429 past it). 0: no cap.
    pub max_uploads_per_user: u32,
    /// Sum of the `Upload-Length`s of one user's unfinished uploads (429 past it). 0: no cap.
    #[serde(deserialize_with = "size")]
    pub max_bytes_per_user: u64,
}

impl Default for ResumableConfig {
    fn default() -> Self {
        Self {
            expiration: Duration::from_secs(24 * 3600),
            max_uploads_per_user: 10,
            max_bytes_per_user: 10 * 1024 * MIB,
        }
    }
}

impl ResumableConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.expiration < Duration::from_secs(1) {
            return Err("resumable.expiration: must be at least 1s".into());
        }
        Ok(())
    }
}

/// When the files of one multipart request appear under their names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Atomicity {
    /// Only once the whole request arrived: all its files, or none.
    #[default]
    Request,
    /// Each file as soon as its own part ended; a later failure keeps the earlier files.
    Part,
}

/// How a multipart file part's stored name is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Naming {
    /// The client's file name, sanitised (no path, no leading dot, no control characters,
    /// at most 200 bytes).
    #[default]
    Sanitized,
    /// 32 random hexadecimal characters plus the sanitised extension.
    Random,
}

/// `uploads(prefix, { multipart: {...} })`: every limit of one multipart request (the whole
/// body stays under the app's `maxUploadSize`, `readTimeout`, `uploadTimeout` and
/// `minUploadRate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MultipartConfig {
    /// File parts per request (413 past it).
    pub max_files: u32,
    /// Non-file parts per request (413).
    pub max_fields: u32,
    /// Bytes of one field's value (413).
    #[serde(deserialize_with = "size")]
    pub max_field_size: u64,
    /// Parts of any kind per request (413).
    pub max_parts: u32,
    /// Bytes of one part's header block (431).
    #[serde(deserialize_with = "size")]
    pub max_part_header_size: u64,
    /// Bytes of one file (413 as soon as passed). 0: only `maxUploadSize` applies.
    #[serde(deserialize_with = "size")]
    pub max_file_size: u64,
    /// Media types a file part may declare (`image/png`, `image/*`); others get 415. Empty:
    /// any.
    pub allowed_types: Vec<String>,
    pub atomic: Atomicity,
    pub naming: Naming,
}

impl Default for MultipartConfig {
    fn default() -> Self {
        Self {
            max_files: 100,
            max_fields: 100,
            max_field_size: 64 * KIB,
            max_parts: 1000,
            max_part_header_size: 8 * KIB,
            max_file_size: 0,
            allowed_types: Vec::new(),
            atomic: Atomicity::Request,
            naming: Naming::Sanitized,
        }
    }
}

impl MultipartConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_part_header_size < 256 {
            return Err("multipart.maxPartHeaderSize: must be at least 256 bytes".into());
        }
        if self.max_parts == 0 {
            return Err("multipart.maxParts: must be at least 1".into());
        }
        for media in &self.allowed_types {
            let valid = media
                .split_once('/')
                .is_some_and(|(kind, sub)| !kind.is_empty() && !sub.is_empty() && kind != "*");
            if !valid {
                return Err(format!(
                    "multipart.allowedTypes: {media:?} is not a media type (type/subtype or type/*)"
                ));
            }
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

/// What a full event-stream queue does with one more event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Overflow {
    /// Drop the oldest queued event (counted).
    #[default]
    DropOldest,
    /// Drop the new event (counted).
    DropNewest,
    /// End the stream.
    Close,
}

/// Options of `streaming.sse(prefix, {...})` (its JS functions are registered as handlers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SseConfig {
    /// Events queued per connection for a slow reader.
    pub queue_events: u32,
    #[serde(deserialize_with = "size")]
    pub queue_bytes: u64,
    pub overflow: Overflow,
    /// `retry:` sent when the stream opens, in milliseconds.
    pub retry: Option<u32>,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            queue_events: 256,
            queue_bytes: MIB,
            overflow: Overflow::DropOldest,
            retry: None,
        }
    }
}

/// What a WebSocket over its message or byte rate gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateAction {
    /// Close with 1008 (policy violation).
    #[default]
    Close,
    /// Stop reading until the rate allows more (TCP backpressure on the client).
    Pause,
}

/// Options of `streaming.ws(prefix, {...})` (its JS functions are registered as handlers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WsConfig {
    /// Messages queued per connection for a slow reader.
    pub queue_messages: u32,
    #[serde(deserialize_with = "size")]
    pub queue_bytes: u64,
    /// On a full queue: drop the oldest or the new message (counted), or close with 1013.
    pub overflow: Overflow,
    pub rate_limit_action: RateAction,
    /// Messages checked in Rust before JS hears them (`ws::validate`). Absent: any message.
    pub messages: Option<MessagesConfig>,
    /// Subprotocols the route speaks, in the server's order of preference: the first the client
    /// offers is answered in `Sec-WebSocket-Protocol`.
    pub protocols: Vec<String>,
    /// A client that offers none of them (or none `selectProtocol` takes) gets 400 before the
    /// upgrade; `false` lets it in without a subprotocol. Unset: required when the route names
    /// subprotocols (`protocols` or `selectProtocol`).
    pub require_protocol: Option<bool>,
    /// permessage-deflate (RFC 7692): `true` for the defaults, or the settings. Off by default.
    pub compression: CompressionOption,
}

/// `compression: true | false | { ... }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum CompressionOption {
    Enabled(bool),
    Settings(CompressionSettings),
}

impl Default for CompressionOption {
    fn default() -> Self {
        Self::Enabled(false)
    }
}

/// permessage-deflate settings. The defaults keep no deflate context per socket: the server
/// compresses each message on its own with its worker's shared compressor, and asks the
/// client to do the same, so the worker's shared inflater reads it (see `ws::deflate`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CompressionSettings {
    /// Each message compressed on its own (`true`, shared compressor), or with the socket's
    /// own compressor keeping its context (better ratio, ~256 KiB per socket at 15 bits).
    pub server_no_context_takeover: bool,
    /// Ask the client to compress each message on its own (`true`, shared inflater), or keep
    /// an inflater per socket (~40 KiB).
    pub client_no_context_takeover: bool,
    /// The server's largest deflate window, 9 to 15 bits.
    pub server_max_window_bits: u8,
    /// The window asked of clients that offer to limit theirs, 9 to 15 bits.
    pub client_max_window_bits: u8,
    /// Messages shorter than this are sent uncompressed.
    #[serde(deserialize_with = "size")]
    pub threshold: u64,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            threshold: 128,
        }
    }
}

impl CompressionOption {
    /// The settings when compression is on.
    pub fn settings(&self) -> Option<CompressionSettings> {
        match self {
            Self::Enabled(false) => None,
            Self::Enabled(true) => Some(CompressionSettings::default()),
            Self::Settings(settings) => Some(*settings),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            queue_messages: 1024,
            queue_bytes: MIB,
            overflow: Overflow::DropOldest,
            rate_limit_action: RateAction::Close,
            messages: None,
            protocols: Vec::new(),
            require_protocol: None,
            compression: CompressionOption::default(),
        }
    }
}

/// The form a route's messages must have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MessageFormat {
    /// One JSON value per message (text, or binary holding UTF-8 JSON).
    #[default]
    Json,
}

/// What becomes of a message that breaks the route's `messages` rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InvalidAction {
    /// Dropped and counted; the socket is closed with 1007 after `maxInvalid` of them.
    #[default]
    Drop,
    /// The socket is closed with 1007 at the first.
    Close,
}

/// `messages` on a WebSocket route: JSON, with bounds on its shape, optionally a JSON Schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MessagesConfig {
    pub format: MessageFormat,
    /// Nesting of arrays and objects (a scalar is depth 0). At most 128.
    pub max_depth: u32,
    /// Members of any one object.
    pub max_keys: u32,
    /// Characters of any one string (keys included). 0: no cap beyond the message size.
    pub max_string_length: u32,
    /// A JSON Schema (draft 2020-12 unless it names another with `$schema`), compiled once.
    pub schema: Option<serde_json::Value>,
    pub on_invalid: InvalidAction,
    /// Invalid messages a socket may send before it is closed (1007); 0: never closed for it.
    pub max_invalid: u32,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            format: MessageFormat::Json,
            max_depth: 32,
            max_keys: 1000,
            max_string_length: 0,
            schema: None,
            on_invalid: InvalidAction::Drop,
            max_invalid: 10,
        }
    }
}

/// One route inside a streaming app.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteSpec {
    Files {
        prefix: String,
        options: FilesConfig,
    },
    Uploads {
        prefix: String,
        options: UploadsConfig,
        /// The JS `onUpload(files, fields, req)` hook of multipart requests, as a handler.
        #[serde(default, rename = "onUpload")]
        on_upload: Option<u32>,
    },
    /// A JS handler: `method` (any when absent) and a path pattern with `:param` segments and
    /// an optional trailing `*`.
    Handler {
        method: Option<String>,
        path: String,
        handler: u32,
    },
    Sse {
        prefix: String,
        options: SseConfig,
        handlers: SseHandlers,
    },
    Ws {
        prefix: String,
        options: WsConfig,
        handlers: WsHandlers,
    },
}

/// The JS handlers of an event stream route, registered by the TypeScript layer: authenticate
/// and name the topics, build the snapshot, hear the close. Part of the route, not of its
/// options, so a user cannot set them.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SseHandlers {
    pub setup: u32,
    pub snapshot: Option<u32>,
    pub close: Option<u32>,
}

/// What JS knows of a WebSocket route: its id in JS, its `authenticate` handler, and whether
/// JS hears its sockets at all (open, message, close or batch handlers): without any, its
/// sockets cost JS nothing and their messages are only counted.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WsHandlers {
    pub route: u32,
    pub authenticate: Option<u32>,
    /// `selectProtocol(offered, req)`: answers the chosen subprotocol (empty: none).
    #[serde(default)]
    pub select_protocol: Option<u32>,
    #[serde(default = "yes")]
    pub js_events: bool,
}

/// A streaming app with its routes, as mounted on a server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StreamingSpec {
    #[serde(default)]
    pub options: StreamingConfig,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The app's `identify(req)` handler, when it has one: the user id per-user limits key on
    /// (the client address otherwise).
    #[serde(default)]
    pub identify: Option<u32>,
}

/// One mount of the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountSpec {
    pub prefix: String,
    pub app: StreamingSpec,
}

/// Everything `listen` needs: the server options and its mount table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    #[serde(default)]
    pub options: ServerConfig,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// `listen({ reusePort: true })`: bind with `SO_REUSEPORT` (Linux), so several processes
    /// can listen on one port and the kernel spreads connections over them.
    #[serde(default)]
    pub reuse_port: bool,
}

/// Checks one options object of `kind` (`server`, `streaming`, `files`, `uploads`, `sse`,
/// `ws`) as the user wrote it; the error names the offending option.
pub fn validate_options(kind: &str, options: serde_json::Value) -> Result<(), Error> {
    fn check<T: serde::de::DeserializeOwned>(
        options: serde_json::Value,
        validate: impl Fn(&T) -> Result<(), String>,
    ) -> Result<(), String> {
        let parsed: T = from_json(options)?;
        validate(&parsed)
    }
    match kind {
        "server" => check::<ServerConfig>(options, ServerConfig::validate),
        "streaming" => check::<StreamingConfig>(options, StreamingConfig::validate),
        "files" => check::<FilesConfig>(options, |files| FilesMount::new(files.clone()).map(drop)),
        "sse" => check::<SseConfig>(options, SseConfig::validate),
        "ws" => check::<WsConfig>(options, WsConfig::validate),
        "uploads" => check::<UploadsConfig>(options, |uploads| {
            UploadsMount::new(uploads.clone(), None).map(drop)
        }),
        other => Err(format!("unknown options kind {other:?}")),
    }
    .map_err(Error::option)
}

impl ServerSpec {
    /// The spec `listen` takes, from JSON; the error names the offending option.
    pub fn from_json(value: serde_json::Value) -> Result<Self, Error> {
        from_json(value).map_err(Error::option)
    }
}

/// Deserializes `T` from JSON; the error names the option (`"chunkSize: invalid size ..."`).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, String> {
    let parsed: T = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })?;
    Ok(parsed)
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout.is_zero() {
            return Err("headerTimeout: must be greater than 0".into());
        }
        if self.keep_alive_timeout.is_zero() {
            return Err("keepAliveTimeout: must be greater than 0".into());
        }
        if self.max_header_size < KIB {
            return Err("maxHeaderSize: must be at least 1kb".into());
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err("http2MaxConcurrentStreams: must be at least 1".into());
        }
        if self.http2_max_pending_resets == 0 {
            return Err("http2MaxPendingResets: must be at least 1".into());
        }
        // Each refusal scans the table once: keep it a table, not a database.
        if self.top_offenders > 1024 {
            return Err("topOffenders: must be at most 1024".into());
        }
        if self.access_log_queue == 0 {
            return Err("accessLogQueue: must be at least 1".into());
        }
        if let Some(tls) = &self.tls {
            crate::tls::server_config(tls)?;
        }
        if self
            .proxy_protocol
            .as_ref()
            .is_some_and(|proxy| proxy.trusted.is_empty())
        {
            return Err("proxyProtocol.trusted: name at least one address or CIDR".into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if let Some(ban) = &self.ban {
            ban.validate()?;
        }
        Ok(())
    }
}

impl StreamingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(KIB..=16 * MIB).contains(&self.chunk_size) {
            return Err("chunkSize: must be between 1kb and 16mb".into());
        }
        if self.send_timeout.is_zero() {
            return Err("sendTimeout: must be greater than 0".into());
        }
        for (name, duration) in [
            ("uploadTimeout", self.upload_timeout),
            ("readTimeout", self.read_timeout),
            ("rateLimitWindow", self.rate_limit_window),
            ("handlerTimeout", self.handler_timeout),
            ("sseKeepAlive", self.sse_keep_alive),
            ("wsPongTimeout", self.ws_pong_timeout),
        ] {
            if duration.is_zero() {
                return Err(format!("{name}: must be greater than 0"));
            }
        }
        if !(125..=64 * MIB).contains(&self.ws_max_message_size) {
            return Err("wsMaxMessageSize: must be between 125 bytes and 64mb".into());
        }
        if self.ws_max_bytes_per_second != 0
            && self.ws_max_bytes_per_second < self.ws_max_message_size
        {
            return Err("wsMaxBytesPerSecond: must be 0 (off) or at least wsMaxMessageSize".into());
        }
        if self.rate_limit_window < Duration::from_secs(1) {
            return Err("rateLimitWindow: must be at least 1s".into());
        }
        for (name, rate) in [
            ("rateLimitBandwidth", self.rate_limit_bandwidth),
            ("perClientBandwidth", self.per_client_bandwidth),
            ("rateLimitUploadBandwidth", self.rate_limit_upload_bandwidth),
            ("perClientUploadBandwidth", self.per_client_upload_bandwidth),
        ] {
            if rate != 0 && rate < KIB {
                return Err(format!(
                    "{name}: must be 0 (off) or at least 1kb per second"
                ));
            }
            if rate > u32::MAX as u64 {
                return Err(format!("{name}: must be at most 4gb per second"));
            }
        }
        Ok(())
    }
}

/// Checks a mount prefix: starts with `/`, no trailing `/` (except the root), no `..`.
pub fn normalize_prefix(name: &str, prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("{name}: prefix {prefix:?} must start with '/'"));
    }
    if prefix
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(format!(
            "{name}: prefix {prefix:?} must not contain '.' or '..' segments"
        ));
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

impl ServerSpec {
    pub fn validate(&mut self) -> Result<(), String> {
        self.options.validate()?;
        if self.reuse_port && !cfg!(target_os = "linux") {
            return Err("listen: reusePort is supported on Linux only".into());
        }
        for mount in &mut self.mounts {
            mount.prefix = normalize_prefix("mount", &mount.prefix)?;
            mount.app.options.validate()?;
            for route in &mut mount.app.routes {
                match route {
                    RouteSpec::Files { prefix, .. } => *prefix = normalize_prefix("files", prefix)?,
                    RouteSpec::Uploads { prefix, .. } => {
                        *prefix = normalize_prefix("uploads", prefix)?
                    }
                    RouteSpec::Handler { path, .. } => *path = normalize_prefix("route", path)?,
                    RouteSpec::Ws {
                        prefix, options, ..
                    } => {
                        *prefix = normalize_prefix("ws", prefix)?;
                        options.validate()?;
                    }
                    RouteSpec::Sse {
                        prefix, options, ..
                    } => {
                        *prefix = normalize_prefix("sse", prefix)?;
                        options.validate()?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl SseConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_events == 0 {
            return Err("sse: queueEvents must be at least 1".into());
        }
        if self.queue_bytes < KIB {
            return Err("sse: queueBytes must be at least 1kb".into());
        }
        Ok(())
    }
}

impl WsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_messages == 0 {
            return Err("ws: queueMessages must be at least 1".into());
        }
        if self.queue_bytes < KIB {
            return Err("ws: queueBytes must be at least 1kb".into());
        }
        if let Some(messages) = &self.messages {
            crate::ws::validate::MessageRules::new(messages)?;
        }
        for (index, protocol) in self.protocols.iter().enumerate() {
            // RFC 6455 section 4.1: each subprotocol is an RFC 7230 token.
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if protocol.is_empty() || !protocol.chars().all(token) {
                return Err(format!(
                    "ws: protocols[{index}] must be a token (letters, digits, !#$%&'*+-.^_`|~), got {protocol:?}"
                ));
            }
            if self.protocols[..index].contains(protocol) {
                return Err(format!("ws: protocols lists {protocol:?} twice"));
            }
        }
        if let Some(settings) = self.compression.settings() {
            for (name, bits) in [
                ("serverMaxWindowBits", settings.server_max_window_bits),
                ("clientMaxWindowBits", settings.client_max_window_bits),
            ] {
                if !(9..=15).contains(&bits) {
                    return Err(format!(
                        "ws: compression.{name} must be 9 to 15 (bits), got {bits}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(f64),
    Text(String),
}

fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    match NumberOrText::deserialize(deserializer)? {
        NumberOrText::Number(n) => number_to_u64(n),
        NumberOrText::Text(text) => parse_size(&text),
    }
    .map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match NumberOrText::deserialize(deserializer)? {
        NumberOrText::Number(n) => number_to_u64(n).map(Duration::from_millis),
        NumberOrText::Text(text) => parse_duration(&text),
    }
    .map_err(serde::de::Error::custom)
}

fn cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("invalid CIDR or address {text:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_apply_to_missing_keys() {
        let config: StreamingConfig = from_json(json!({ "chunkSize": "128kb" })).unwrap();
        assert_eq!(config.chunk_size, 128 * KIB);
        assert_eq!(config.send_timeout, StreamingConfig::default().send_timeout);
    }

    #[test]
    fn errors_name_the_option() {
        let err = from_json::<ServerConfig>(json!({ "maxHeaderSize": "10 parsecs" })).unwrap_err();
        assert!(err.starts_with("maxHeaderSize:"), "{err}");
        let err = from_json::<ServerConfig>(json!({ "headerTimeout": -1 })).unwrap_err();
        assert!(err.starts_with("headerTimeout:"), "{err}");
        let err = from_json::<ServerConfig>(json!({ "maxConections": 1 })).unwrap_err();
        assert!(err.contains("maxConections"), "{err}");
        let err = from_json::<ServerConfig>(json!({ "trustProxy": ["10.0.0.0/33"] })).unwrap_err();
        assert!(err.starts_with("trustProxy"), "{err}");
    }

    #[test]
    fn trust_proxy_accepts_cidrs_and_addresses() {
        let config: ServerConfig =
            from_json(json!({ "trustProxy": ["10.0.0.0/8", "::1", "127.0.0.1"] })).unwrap();
        assert_eq!(config.trust_proxy.len(), 3);
    }

    #[test]
    fn cluster_options_are_checked() {
        let check = |cluster: serde_json::Value| {
            from_json::<ServerConfig>(json!({ "cluster": cluster }))
                .and_then(|config| config.validate())
        };
        assert!(check(json!({ "redis": "redis://127.0.0.1:6379" })).is_ok());
        let err = check(json!({})).unwrap_err();
        assert!(err.starts_with("cluster.redis:"), "{err}");
        let err = check(json!({ "redis": "http://x" })).unwrap_err();
        assert!(err.starts_with("cluster.redis:"), "{err}");
        let err = check(json!({ "redis": "redis://h", "onFailure": "maybe" })).unwrap_err();
        assert!(err.starts_with("cluster.onFailure:"), "{err}");
        let err = check(json!({ "redis": "redis://h", "leaseTtl": "1s", "timeout": "500ms" }))
            .unwrap_err();
        assert!(err.starts_with("cluster.timeout:"), "{err}");
        let err = check(json!({ "redis": "redis://h", "instances": 0 })).unwrap_err();
        assert!(err.starts_with("cluster.instances:"), "{err}");
        let err = check(json!({ "redis": "redis://h", "bogus": 1 })).unwrap_err();
        assert!(err.starts_with("cluster"), "{err}");
        let config: ClusterConfig =
            from_json(json!({ "redis": "redis://h", "instances": 3 })).unwrap();
        assert_eq!(
            (config.share(10), config.share(0), config.share(2)),
            (4, 0, 1)
        );
    }

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(normalize_prefix("mount", "/stream/").unwrap(), "/stream");
        assert_eq!(normalize_prefix("mount", "/").unwrap(), "/");
        assert!(normalize_prefix("mount", "stream").is_err());
        assert!(normalize_prefix("mount", "/a/../b").is_err());
    }
}
