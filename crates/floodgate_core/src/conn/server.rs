//! The accept loop and per-connection tasks: connection slots, hyper (HTTP/1.1, optional
//! h2c) over the guarded socket, mount dispatch, graceful shutdown.

use crate::app::router::MountTable;
use crate::app::StreamingApp;
use crate::cluster::Cluster;
use crate::config::{ServerConfig, ServerSpec, StreamingConfig, TlsOptions};
use crate::conn::conformance;
use crate::conn::guarded_io::{GuardedIo, HeadLimits};
use crate::conn::h2_stream::StreamExecutor;
use crate::conn::handoff::{self, HandOffSlot};
use crate::conn::linger::linger;
use crate::conn::proxy::client_ip;
use crate::conn::proxy_protocol;
use crate::conn::send_file::SendFile;
use crate::conn::socket::Socket;
use crate::conn::state::ConnState;
use crate::context::RequestContext;
use crate::delivery::body::{self, Body, Tracked};
use crate::error::Error;
use crate::events::bus::Bus;
use crate::js::bridge::Bridge;
use crate::limit::ban::{self, BanEntry, Bans};
use crate::limit::conn::{ConnectionLimiter, Slot};
use crate::limit::key::{address_key, ClientKey};
use crate::limit::rate::RequestLimiter;
use crate::metrics::{Metrics, Rejection, Snapshot};
use crate::observe::access::{self, AccessLog, AccessRecord, CountedBody, RequestLine};
use crate::observe::app::Timing;
use crate::observe::reject::Refusal;
use crate::observe::sample::{Frame, Sampler};
use crate::tls::{handshake, TlsConfig};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const RESPONSE_429: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 35\r\n\r\nToo many connections from your IP.\n";

/// Everything a connection task needs, shared by all of them.
struct Shared {
    config: ServerConfig,
    mounts: MountTable<Arc<StreamingApp>>,
    metrics: Arc<Metrics>,
    limiter: Arc<ConnectionLimiter>,
    /// New connections per address per second (`maxConnectionRatePerIp`).
    connection_rate: Option<RequestLimiter>,
    bans: Option<Arc<Bans>>,
    builder: auto::Builder<StreamExecutor>,
    default_send_timeout: Duration,
    bus: Arc<Bus>,
    /// Redis behind the caps, rates and bus, with the `cluster` option.
    cluster: Option<Arc<Cluster>>,
    /// The certificates of new handshakes, when the server speaks TLS.
    tls: Option<TlsConfig>,
    /// The access log, with the `accessLog` option.
    access: Option<Arc<AccessLog>>,
    shutdown: CancellationToken,
    /// Upgraded (WebSocket) sessions outlive their HTTP connection task: they are spawned
    /// here, so `close` drains and then aborts them like any connection.
    tracker: TaskTracker,
    abort: CancellationToken,
}

/// A listening server. Dropping it does not stop it; call `close`.
pub struct RunningServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop_accepting: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    /// The dashboard's previous frame (`observe::sample`).
    sampler: Mutex<Sampler>,
}

/// Binds `addr` and starts serving `spec`; JS handler routes go through `bridge`. Must be
/// called within a tokio runtime (it spawns the accept loop).
pub fn listen(
    mut spec: ServerSpec,
    addr: SocketAddr,
    bridge: Option<Arc<Bridge>>,
) -> Result<RunningServer, Error> {
    spec.validate().map_err(Error::option)?;
    let cluster = match &spec.options.cluster {
        Some(config) => Some(Cluster::start(config.clone()).map_err(Error::option)?),
        None => None,
    };
    let mut mounts = MountTable::default();
    for mount in spec.mounts {
        let app = StreamingApp::build(mount.app, bridge.clone(), cluster.as_ref(), &mount.prefix)
            .map_err(Error::option)?;
        mounts.insert(mount.prefix, Arc::new(app));
    }
    let tls = match &spec.options.tls {
        Some(options) => Some(TlsConfig::new(options).map_err(Error::option)?),
        None => None,
    };
    let listener = bind(addr, spec.reuse_port).map_err(|err| Error::listen(addr, &err))?;
    if let Some(bridge) = &bridge {
        bridge.set_max_js_delay(spec.options.max_event_loop_delay);
    }
    let sink = bridge
        .clone()
        .map(|bridge| bridge as Arc<dyn crate::observe::reject::RejectSink>);
    let apps = mounts
        .values()
        .map(|app| Arc::clone(app.metrics()))
        .collect();
    let metrics = Metrics::new(
        if spec.options.metrics {
            spec.options.reject_events_per_second
        } else {
            0
        },
        spec.options.top_offenders,
        sink,
        apps,
    );
    let metrics = Arc::new(if spec.options.metrics {
        metrics
    } else {
        metrics.without_histograms()
    });
    let access = match &spec.options.access_log {
        Some(target) => Some(
            AccessLog::open(
                target,
                spec.options.access_log_queue,
                spec.options.access_log_per_second,
                bridge
                    .clone()
                    .map(|bridge| bridge as Arc<dyn access::AccessSink>),
            )
            .map_err(Error::option)?,
        ),
        None => None,
    };
    // Bound: this instance owns its folders now; leftovers of a crashed one can go.
    for app in mounts.values() {
        app.remove_stale_uploads(&metrics);
    }
    let local_addr = listener
        .local_addr()
        .map_err(|err| Error::listen(addr, &err))?;
    let stop_accepting = CancellationToken::new();
    let bus = Bus::new();
    bus.start_fanout();
    if let Some(cluster) = &cluster {
        crate::cluster::bus::attach(cluster, &bus);
    }
    let bans = spec.options.ban.clone().map(|ban| {
        let mut trusted = spec.options.trust_proxy.clone();
        if let Some(proxy) = &spec.options.proxy_protocol {
            trusted.extend_from_slice(&proxy.trusted);
        }
        Arc::new(Bans::new(ban, &trusted))
    });
    if let Some(bans) = &bans {
        metrics.strike_into(Arc::clone(bans));
    }
    if let (Some(cluster), Some(bans)) = (&cluster, &bans) {
        crate::cluster::bans::attach(cluster, bans);
    }
    let abort = CancellationToken::new();
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        bus,
        cluster,
        tls,
        access,
        shutdown: stop_accepting.clone(),
        tracker: tracker.clone(),
        abort: abort.clone(),
        builder: hyper_builder(&spec.options, &metrics),
        limiter: ConnectionLimiter::new(spec.options.max_connections_per_ip),
        connection_rate: RequestLimiter::new(
            spec.options.max_connection_rate_per_ip,
            Duration::from_secs(1),
            spec.options.connection_rate_burst,
        ),
        bans,
        metrics,
        mounts,
        config: spec.options,
        default_send_timeout: StreamingConfig::default().send_timeout,
    });
    let accept_task = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&shared),
        stop_accepting.clone(),
        abort.clone(),
        tracker.clone(),
    ));
    Ok(RunningServer {
        local_addr,
        shared,
        stop_accepting,
        abort,
        tracker,
        accept_task: Mutex::new(Some(accept_task)),
        sampler: Mutex::new(Sampler::default()),
    })
}

/// Pending connections the kernel queues before `accept`, as nginx and Node (511) allow; the
/// default of `TcpListener::bind` (128) drops connection bursts, which then retry after 1 s.
const LISTEN_BACKLOG: u32 = 1024;

fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As every server on Unix does: a restart can bind while old connections are in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    // Several processes on one port (Node's cluster, PM2): the kernel balances new connections
    // over every socket bound with it. `ServerSpec::validate` refuses it elsewhere.
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bytes hyper may buffer per HTTP/2 stream beyond what the client's window lets out (h2's
/// default is 400 KiB): with a hundred streams whose windows a client keeps shut, this is
/// what one connection can pin in memory until the streams' deadlines end them.
const H2_SEND_BUFFER: usize = 128 * 1024;

/// hyper-util's auto builder, whatever `http2` says: on upgradable connections it sniffs the
/// HTTP/2 preface even under `http1_only`, so with `http2: false` the socket wrapper refuses
/// the preface itself (`GuardedIo`). (hyper's HTTP/1-only builder was tried: upgraded sockets
/// then cost 0.3 KiB more each in `ws-idle-10k`, from how its buffers were laid out.)
fn hyper_builder(config: &ServerConfig, metrics: &Arc<Metrics>) -> auto::Builder<StreamExecutor> {
    let mut builder = auto::Builder::new(StreamExecutor::new(Arc::clone(metrics)));
    builder
        .http1()
        .timer(TokioTimer::new())
        // Head deadlines live in `GuardedIo`, which answers 408 where hyper would only close.
        .header_read_timeout(None)
        // Vectored writes, whatever the socket says: zero-copy file bodies rely on hyper
        // passing each body chunk's memory through as it is (`delivery::zero_copy`), which
        // its flattening strategy would copy instead.
        .writev(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        // `maxHeaderSize` over HTTP/2 too: h2 answers a larger header list with 431.
        .max_header_list_size(config.max_header_size as u32)
        .max_pending_accept_reset_streams(config.http2_max_pending_resets as usize)
        .max_local_error_reset_streams(1024)
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> Snapshot {
        let mut snapshot = self.shared.metrics.snapshot();
        snapshot.cluster = self
            .shared
            .cluster
            .as_ref()
            .map(|cluster| cluster.snapshot());
        snapshot.bans = self.shared.bans.as_ref().map(|bans| bans.snapshot());
        if let Some(access) = &self.shared.access {
            (snapshot.access_log_lines, snapshot.access_log_dropped) = access.counts();
        }
        snapshot
    }

    /// The metrics as OpenMetrics text, or as Prometheus text (0.0.4) when `openmetrics` is
    /// false (`observe::exposition`).
    pub fn metrics_text(&self, openmetrics: bool) -> String {
        crate::observe::exposition::encode(
            Arc::clone(&self.shared.metrics),
            self.stats(),
            openmetrics,
        )
    }

    /// The dashboard's next frame: gauges now, rates and latency quantiles since the previous
    /// frame (without the apps mounted at `skip`), the `top` most refused clients
    /// (`observe::sample`).
    pub fn frame(&self, top: usize, skip: &[String]) -> Frame {
        self.sampler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .frame(&self.shared.metrics, top, skip)
    }

    /// Reopens the access log's file at its path (after log rotation moved it).
    pub fn reopen_logs(&self) -> Result<(), Error> {
        match &self.shared.access {
            Some(access) => access.reopen().map_err(Error::option),
            None => Ok(()),
        }
    }

    /// The per-address connection slots (tests watch slots come back).
    #[cfg(test)]
    pub(crate) fn limiter(&self) -> &ConnectionLimiter {
        &self.shared.limiter
    }

    /// Replaces the certificates for new TLS handshakes (`tls` options as JSON); open
    /// connections keep theirs.
    pub fn set_tls(&self, options: serde_json::Value) -> Result<(), Error> {
        let Some(tls) = &self.shared.tls else {
            return Err(Error::option("tls: the server was started without tls"));
        };
        let options: TlsOptions = serde_path_to_error::deserialize(options)
            .map_err(|err| Error::option(format!("tls.{}: {}", err.path(), err.inner())))?;
        tls.replace(&options).map_err(Error::option)
    }

    /// The bans in force (`ban`), most recently banned first; empty without the option.
    pub fn bans(&self) -> Vec<BanEntry> {
        self.shared
            .bans
            .as_ref()
            .map(|bans| bans.list())
            .unwrap_or_default()
    }

    /// Lifts the ban of `client` (an address, an IPv6 `/64`, or `user:<id>`); `Ok(true)` if
    /// one was in force.
    pub fn unban(&self, client: &str) -> Result<bool, Error> {
        let key = ban::parse_client(client).ok_or_else(|| {
            Error::option(format!(
                "unban: {client:?} is not an address, an IPv6 /64 or user:<id>"
            ))
        })?;
        Ok(self
            .shared
            .bans
            .as_ref()
            .is_some_and(|bans| bans.unban(&key)))
    }

    /// The topic bus event streams subscribe to.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.shared.bus
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain`, then aborts the rest.
    /// Calling it again (or concurrently) waits for the same shutdown.
    pub async fn close(&self, drain: Duration) {
        self.stop_accepting.cancel();
        let accept_task = self
            .accept_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = accept_task {
            let _ = task.await;
        }
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            self.abort.cancel();
            self.tracker.wait().await;
        }
        if let Some(cluster) = &self.shared.cluster {
            // Every connection has ended: its lease release is queued; send them, then stop.
            cluster.stop().await;
        }
        if let Some(access) = self.shared.access.clone() {
            // Every request has ended: its line is queued; let the writer catch up.
            let flushed = tokio::task::spawn_blocking(move || {
                access.flush(Duration::from_secs(2));
            });
            let _ = flushed.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop_accepting: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop_accepting.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                if let Some(pause) = accept_error_pause(&err, &shared.metrics) {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        let accepted_at = Instant::now();
        let _ = stream.set_nodelay(true);
        if shared.config.proxy_protocol.is_some() {
            // The per-address slot waits for the address the header carries.
            let task = serve_proxied(
                stream,
                peer,
                accepted_at,
                Arc::clone(&shared),
                stop_accepting.clone(),
                abort.clone(),
            );
            tracker.spawn(task);
            continue;
        }
        match shared.admit(peer.ip()) {
            Ok(slot) => {
                let task = serve_connection(
                    stream,
                    peer,
                    accepted_at,
                    slot,
                    Arc::clone(&shared),
                    stop_accepting.clone(),
                    abort.clone(),
                );
                tracker.spawn(task);
            }
            Err(Rejection::ConnectionLimit) => {
                tracker.spawn(refuse_connection(stream, abort.clone()));
            }
            // Closed at once, before a byte is read.
            Err(_) => drop(stream),
        }
    }
}

impl Shared {
    /// The checks of a new connection from `ip`, cheapest first: a ban and the connection
    /// rate close it at once (`Err` with their reason), the per-address cap answers 429
    /// (`Err(ConnectionLimit)`); each refusal is counted (the last two strike, as every
    /// refusal naming its client does).
    fn admit(&self, ip: IpAddr) -> Result<Slot, Rejection> {
        if self
            .bans
            .as_ref()
            .is_some_and(|bans| bans.is_banned_address(ip))
        {
            self.metrics
                .refuse(Refusal::new(Rejection::Banned).client(ip));
            return Err(Rejection::Banned);
        }
        let rate_exceeded = self
            .connection_rate
            .as_ref()
            .is_some_and(|rate| !rate.check(&ClientKey::Address(address_key(ip))).allowed);
        let refusal = if rate_exceeded {
            Rejection::ConnectionRate
        } else {
            match self.limiter.try_acquire(ip) {
                Some(slot) => return Ok(slot),
                None => Rejection::ConnectionLimit,
            }
        };
        self.metrics.refuse(Refusal::new(refusal).client(ip));
        Err(refusal)
    }
}

/// What to do after a failed `accept` (as axum's `handle_accept_error`): an error of that one
/// connection (reset or aborted before it was accepted) is skipped at once; running out of
/// file descriptors is counted and backs off, since every retry would fail the same way
/// until a connection closes; anything else backs off briefly instead of spinning.
fn accept_error_pause(err: &io::Error, metrics: &Metrics) -> Option<Duration> {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    match err.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused => None,
        _ if matches!(err.raw_os_error(), Some(EMFILE | ENFILE)) => {
            metrics.reject(Rejection::OutOfFiles);
            Some(Duration::from_millis(100))
        }
        _ => Some(Duration::from_millis(10)),
    }
}

/// A connection behind a load balancer: its PROXY protocol header (from a trusted source,
/// within `headerTimeout` of accept) names the client, whose per-address slot it then takes.
async fn serve_proxied(
    mut stream: TcpStream,
    balancer: SocketAddr,
    accepted_at: Instant,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let trusted = &shared
        .config
        .proxy_protocol
        .as_ref()
        .expect("checked by the caller")
        .trusted;
    if !proxy_protocol::trusted(balancer.ip(), trusted) {
        shared
            .metrics
            .refuse(Refusal::new(Rejection::ProxyProtocolUntrusted).client(balancer.ip()));
        return;
    }
    let deadline = accepted_at + shared.config.header_timeout;
    let header = tokio::select! {
        header = proxy_protocol::read_header(&mut stream, balancer, deadline) => header,
        _ = abort.cancelled() => return,
    };
    let client = match header {
        Ok(client) => client,
        Err(reason) => {
            shared
                .metrics
                .refuse(Refusal::new(reason).client(balancer.ip()));
            return;
        }
    };
    match shared.admit(client.ip()) {
        Ok(slot) => {
            serve_connection(stream, client, accepted_at, slot, shared, shutdown, abort).await
        }
        Err(Rejection::ConnectionLimit) => refuse_connection(stream, abort).await,
        Err(_) => {}
    }
}

/// Answers 429 on a connection over the per-IP cap, then lingers briefly and closes.
async fn refuse_connection(stream: TcpStream, abort: CancellationToken) {
    tokio::select! {
        _ = linger(stream, RESPONSE_429) => {}
        _ = abort.cancelled() => {}
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
    slot: Slot,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let socket = match &shared.tls {
        None => Socket::Plain(stream),
        // The handshake is part of the head: it shares its `headerTimeout` from accept.
        Some(tls) => {
            let deadline = accepted_at + shared.config.header_timeout;
            let handshake = handshake::accept(stream, tls.current(), deadline, &shared.metrics);
            let stream = tokio::select! {
                stream = handshake => stream,
                _ = abort.cancelled() => None,
            };
            match stream {
                Some(stream) => Socket::Tls(Box::new(stream)),
                None => return,
            }
        }
    };
    let http2 = match &socket {
        Socket::Plain(_) => shared.config.http2,
        Socket::Tls(_) | Socket::Gone => socket.alpn_protocol() == Some(b"h2"),
    };
    let conn = Arc::new(
        ConnState::new(accepted_at, shared.default_send_timeout)
            .with_client(peer.ip())
            .with_sendfile(shared.config.sendfile && socket.can_send_file()),
    );
    let limits = HeadLimits {
        header_timeout: shared.config.header_timeout,
        keep_alive_timeout: shared.config.keep_alive_timeout,
        max_header_size: shared.config.max_header_size as usize,
        http2,
        http2_max_control_frames: shared.config.http2_max_control_frames_per_second,
    };
    let io = TokioIo::new(GuardedIo::new(
        socket,
        Arc::clone(&conn),
        Arc::clone(&shared.metrics),
        limits,
        slot,
    ));
    let idle = h2_idle(Arc::clone(&conn), &shared);
    let service = {
        let shared = Arc::clone(&shared);
        let conn = Arc::clone(&conn);
        service_fn(move |request: Request<Incoming>| {
            // Counted before the handler's future first runs: the socket wrapper must leave its
            // head deadline as soon as hyper has the head.
            conn.request_started();
            let shared = Arc::clone(&shared);
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(handle(&shared, request, peer, &conn).await) }
        })
    };
    // Finished gracefully when the server closes or an HTTP/2 connection idles out (GOAWAY),
    // dropped at the server's abort, or dropped when a response takes the socket out of
    // hyper (`conn::handoff`): the socket wrapper, dropped with it, gives the socket back.
    let handed_off = {
        let connection = shared.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let first = tokio::select! {
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    count_h2_goaway(err.as_ref(), &shared.metrics, Some(peer.ip()));
                }
                Some(false)
            }
            _ = conn.handoff_asked() => Some(true),
            _ = shutdown.cancelled() => { connection.as_mut().graceful_shutdown(); None }
            _ = idle => { connection.as_mut().graceful_shutdown(); None }
        };
        match first {
            Some(asked) => asked,
            None => tokio::select! {
                _ = connection.as_mut() => false,
                _ = conn.handoff_asked() => true,
                _ = abort.cancelled() => false,
            },
        }
    };
    // Taken whatever happened: a response parked just as the client left would otherwise keep
    // its stream (caps, subscription) alive in `ConnState`, which the stream's queue points to.
    let pending = conn.take_handoff();
    if let (true, Some(pending)) = (handed_off, pending) {
        if let Some((socket, guard)) = pending.socket {
            pending.handoff.start(
                socket,
                guard,
                pending.head,
                pending.chunked,
                &shared.tracker,
            );
        }
    }
}

/// Counts an HTTP/2 connection that h2 ended with a GOAWAY of its own, by its reason: h2
/// bounds rapid resets, CONTINUATION floods, header lists and empty DATA frames itself.
fn count_h2_goaway(
    err: &(dyn std::error::Error + 'static),
    metrics: &Metrics,
    client: Option<std::net::IpAddr>,
) {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_go_away() && h2.is_library() {
                let reason = match h2.reason() {
                    Some(h2::Reason::ENHANCE_YOUR_CALM) => Rejection::H2Flood,
                    _ => Rejection::H2ProtocolError,
                };
                metrics.refuse(Refusal::new(reason).client(client));
            }
            return;
        }
        source = err.source();
    }
}

/// Resolves when an HTTP/2 connection should be told GOAWAY: no request within
/// `headerTimeout` of accept (counted as `header_timeout`, as a silent HTTP/1.1 connection
/// is), or no open stream for `keepAliveTimeout` (nginx's `keepalive_timeout` for h2).
/// HTTP/1.1 connections are bounded by the socket wrapper; for them this never resolves.
async fn h2_idle(conn: Arc<ConnState>, shared: &Shared) {
    let (header_timeout, keep_alive) = (
        shared.config.header_timeout,
        shared.config.keep_alive_timeout,
    );
    if !shared.config.http2 {
        return std::future::pending().await;
    }
    let first_request_by = conn.accepted_at + header_timeout;
    let mut at = conn.accepted_at + header_timeout.min(keep_alive);
    loop {
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        if !conn.is_http2() {
            if now >= first_request_by {
                // HTTP/1.1: the socket wrapper's deadlines apply.
                return std::future::pending().await;
            }
            at = first_request_by;
            continue;
        }
        let (started, done) = conn.progress();
        if started == 0 {
            if now >= first_request_by {
                shared
                    .metrics
                    .refuse(Refusal::new(Rejection::HeaderTimeout).client(conn.client()));
                return;
            }
            at = first_request_by;
            continue;
        }
        if started > done {
            // Streams open: look again once they may have ended.
            at = now + keep_alive;
            continue;
        }
        let idle_until = conn.last_response_at() + keep_alive;
        if now >= idle_until {
            return;
        }
        at = idle_until;
    }
}

/// One request: logged (`accessLog`) when whatever serves it lets go of its record.
async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
    peer: SocketAddr,
    conn: &Arc<ConnState>,
) -> Response<Tracked> {
    let Some(log) = &shared.access else {
        let request = request.map(|body| CountedBody::new(body, None));
        let (response, timing) = respond(shared, request, peer, conn, None).await;
        return response.map(|body: Body| Tracked::new(body, Arc::clone(conn)).with_timing(timing));
    };
    let client = client_ip(peer.ip(), request.headers(), &shared.config.trust_proxy);
    let (head, body) = request.into_parts();
    let line = RequestLine::new(&head, shared.tls.is_some(), client, peer.port());
    let record = log.start(line);
    let request = Request::from_parts(head, CountedBody::new(body, Some(Arc::clone(&record))));
    // Refusals made while the request is handled note their reason on its record.
    let responding = respond(shared, request, peer, conn, Some(Arc::clone(&record)));
    let (response, timing) = access::CURRENT.scope(Arc::clone(&record), responding).await;
    record.status(response.status().as_u16());
    response.map(|body: Body| {
        Tracked::new(body, Arc::clone(conn))
            .with_timing(timing)
            .with_access(Some(record))
    })
}

async fn respond(
    shared: &Shared,
    request: Request<CountedBody<Incoming>>,
    peer: SocketAddr,
    conn: &Arc<ConnState>,
    access: Option<Arc<AccessRecord>>,
) -> (Response<Body>, Option<Timing>) {
    shared.metrics.request();
    let version = request.version();
    let started = std::time::Instant::now();
    // Read for every request, so a note about one head never applies to a later one.
    let length_and_chunks = conn.take_length_and_chunks();
    if matches!(request.version(), Version::HTTP_10 | Version::HTTP_11) {
        let refusal = conformance::check(request.version(), request.headers(), length_and_chunks)
            .or_else(|| conformance::check_target(request.uri(), request.headers()));
        if let Some(refusal) = refusal {
            let status = refusal.status().as_u16();
            shared.metrics.refuse(
                Refusal::new(Rejection::BadRequest)
                    .client(peer.ip())
                    .route(request.uri().path())
                    .status(status),
            );
            return (refusal, None);
        }
    }
    let path = request.uri().path().to_string();
    let mut timing = None;
    let response = match shared.mounts.find(&path) {
        Some((app, rel)) => {
            let app_metrics = Arc::clone(app.metrics());
            let client = client_ip(peer.ip(), request.headers(), &shared.config.trust_proxy);
            // An address banned while its connection was open, or one known only from a
            // trusted proxy's headers (that connection carries other clients too).
            if shared
                .bans
                .as_ref()
                .is_some_and(|bans| bans.is_banned_address(client))
            {
                shared.metrics.refuse(
                    Refusal::new(Rejection::Banned)
                        .client(client)
                        .route(&path)
                        .status(403),
                );
                return (body::text(StatusCode::FORBIDDEN, "Forbidden\n"), None);
            }
            let context = RequestContext {
                client,
                user: None,
                conn: Arc::clone(conn),
                metrics: Arc::clone(&shared.metrics),
                app: Arc::clone(app.metrics()),
                bus: Arc::clone(&shared.bus),
                shutdown: shared.shutdown.clone(),
                tracker: shared.tracker.clone(),
                abort: shared.abort.clone(),
                bans: shared.bans.clone(),
                access,
            };
            let response = app.handle(request, rel, context).await;
            if shared.metrics.histograms() {
                timing = Some(Timing::head_ready(app_metrics, started));
            }
            response
        }
        None => {
            let client = client_ip(peer.ip(), request.headers(), &shared.config.trust_proxy);
            shared.metrics.refuse(
                Refusal::new(Rejection::NotFound)
                    .client(client)
                    .route(&path),
            );
            body::text(StatusCode::NOT_FOUND, "Not Found\n")
        }
    };
    let response = match response.extensions().get::<HandOffSlot>().cloned() {
        Some(slot) => hand_off(response, slot, version, conn).await,
        None => response,
    };
    (response, timing)
}

/// A response that asked to leave hyper (`conn::handoff`): parked for the connection task,
/// which drops hyper's connection (and this future with it) and starts it on the bare
/// socket; or, when the connection cannot be handed over, the same response through hyper.
async fn hand_off(
    response: Response<Body>,
    slot: HandOffSlot,
    version: Version,
    conn: &ConnState,
) -> Response<Body> {
    let Some(handoff) = slot.take() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.extensions.remove::<HandOffSlot>();
    if matches!(version, Version::HTTP_10 | Version::HTTP_11) && conn.may_hand_off() {
        let (head, chunked) = handoff::head(&parts, version);
        conn.hand_off(handoff, head, chunked);
        return std::future::pending().await;
    }
    Response::from_parts(parts, handoff.into_body())
}
