//! Node binding of floodgate: a thin layer over `floodgate_core`.
//!
//! Options cross the boundary as plain JSON objects and are validated by the core's typed
//! config (one source of defaults and error messages). JS handlers are reached through
//! `host::NapiHost` (batched ThreadsafeFunction calls). No protection logic lives here.

mod alloc;
mod host;
mod wire;

use floodgate_core::{
    BodyError, Bridge, ErrorKind, HubError, JsBody, JsFile, JsResponse, RunningServer, ServerSpec,
};
use host::{NapiHost, OnRejects, OnRequests, OnWsEvents};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A JS error whose `code` is the core error's stable code (`err.code` in JS). Only
/// synchronous calls throw these: napi-rs rejects promises with its own status codes, so the
/// async calls (`drain`, `readBody`) resolve with what happened instead.
type Coded = Error<String>;

fn coded(error: floodgate_core::Error) -> Coded {
    Error::new(error.code().to_string(), error.message())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Coded {
    coded(floodgate_core::Error::new(kind, message))
}

fn not_listening(what: &str) -> Coded {
    error(
        ErrorKind::NotListening,
        format!("{what}: the server is not listening"),
    )
}

/// Checks one options object (`kind`: `server`, `streaming`, `files`, `uploads`, `sse` or
/// `ws`) and throws naming the offending option (`err.code` `ERR_FLOODGATE_OPTION`).
#[napi]
pub fn validate_options(kind: String, options: serde_json::Value) -> Result<(), String> {
    floodgate_core::validate_options(&kind, options).map_err(coded)
}

/// A file a handler answers with (`FileResponse`).
#[napi(object)]
pub struct NativeFile {
    pub path: String,
    pub filename: Option<String>,
    pub media_type: Option<String>,
    pub attachment: Option<bool>,
}

#[napi(object)]
pub struct BoundAddress {
    pub port: u32,
    pub address: String,
}

/// A server: its JS bridge, and once listening, the running core server.
#[napi]
pub struct NativeServer {
    bridge: Arc<Bridge>,
    host: Arc<NapiHost>,
    running: Mutex<Option<Arc<RunningServer>>>,
}

fn exchange_id(id: f64) -> u64 {
    id as u64
}

#[napi]
impl NativeServer {
    /// `onRequests(numbers, bytes)` receives JS-handled requests in batches, flattened
    /// (`host.rs` has the layout); `onAborts(ids)` lists exchanges that ended before JS
    /// finished them; `onWsEvents(numbers, strings, payload)` WebSocket opens, messages and
    /// closes, in order.
    #[napi(constructor)]
    pub fn new(
        #[napi(ts_arg_type = "(numbers: Float64Array, bytes: Buffer) => void")]
        on_requests: OnRequests,
        on_aborts: Function<Vec<f64>, ()>,
        #[napi(
            ts_arg_type = "(numbers: Float64Array, strings: string[], payload: Buffer) => void"
        )]
        on_ws_events: OnWsEvents,
    ) -> Result<Self> {
        let host = Arc::new(NapiHost::new(&on_requests, &on_aborts, &on_ws_events)?);
        Ok(Self {
            bridge: Bridge::new(Arc::clone(&host) as Arc<dyn floodgate_core::JsHost>),
            host,
            running: Mutex::new(None),
        })
    }

    /// Binds `host:port` (port 0 picks a free one) and serves `spec` (options and mounts).
    /// Synchronous, so a failure throws with its code (`EADDRINUSE`, `ERR_FLOODGATE_OPTION`,
    /// ...); `host` is an address or a name in the hosts file (resolved here, blocking).
    #[napi]
    pub fn listen(
        &self,
        spec: serde_json::Value,
        host: String,
        port: u32,
    ) -> Result<BoundAddress, String> {
        use std::net::ToSocketAddrs;
        let spec = ServerSpec::from_json(spec).map_err(coded)?;
        let port = u16::try_from(port)
            .map_err(|_| error(ErrorKind::Option, format!("port: {port} is out of range")))?;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|err| coded(floodgate_core::Error::listen(format!("{host:?}"), &err)))?
            .next()
            .ok_or_else(|| {
                error(
                    ErrorKind::AddrNotAvailable,
                    format!("listen: {host:?} has no address"),
                )
            })?;
        let bridge = Arc::clone(&self.bridge);
        let server = napi::bindgen_prelude::within_runtime_if_available(|| {
            floodgate_core::listen(spec, addr, Some(bridge))
        })
        .map_err(coded)?;
        let bound = BoundAddress {
            port: server.local_addr().port() as u32,
            address: server.local_addr().ip().to_string(),
        };
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(server));
        Ok(bound)
    }

    fn running(&self) -> Option<Arc<RunningServer>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rejection events (at most `rejectEventsPerSecond`) go to `onRejects`, in batches.
    #[napi]
    pub fn on_rejects(
        &self,
        #[napi(ts_arg_type = "(events: JsRejectEvent[]) => void")] on_rejects: OnRejects,
    ) -> Result<()> {
        self.host.on_rejects(&on_rejects)
    }

    /// Access log lines (the `accessLog` callback, at most `accessLogPerSecond`) go to
    /// `onLines`, newline-separated, in batches.
    #[napi]
    pub fn on_access_lines(
        &self,
        #[napi(ts_arg_type = "(lines: string) => void")] on_lines: crate::host::OnAccessLines,
    ) -> Result<()> {
        self.host.on_access_lines(&on_lines)
    }

    /// Reopens the access log's file at its path (log rotation).
    #[napi]
    pub fn reopen_logs(&self) -> Result<(), String> {
        let server = self.running().ok_or_else(|| not_listening("reopenLogs"))?;
        server.reopen_logs().map_err(coded)
    }

    /// Counters and gauges, see `floodgate_core::metrics::Snapshot`.
    #[napi]
    pub fn stats(&self) -> Result<serde_json::Value, String> {
        let server = self.running().ok_or_else(|| not_listening("stats"))?;
        let mut stats = serde_json::to_value(server.stats())
            .map_err(|err| Error::new("ERR_FLOODGATE_STATS".to_string(), err.to_string()))?;
        stats["jsInFlight"] = self.bridge.in_flight().into();
        Ok(stats)
    }

    /// New certificates for new TLS handshakes (`tls` options); open connections keep theirs.
    #[napi]
    pub fn set_tls(&self, options: serde_json::Value) -> Result<(), String> {
        let server = self.running().ok_or_else(|| not_listening("setTls"))?;
        server.set_tls(options).map_err(coded)
    }

    /// The bans in force (`ban`), most recently banned first.
    #[napi]
    pub fn bans(&self) -> Result<serde_json::Value, String> {
        let server = self.running().ok_or_else(|| not_listening("bans"))?;
        serde_json::to_value(server.bans())
            .map_err(|err| Error::new("ERR_FLOODGATE_STATS".to_string(), err.to_string()))
    }

    /// Lifts a ban; `true` if one was in force.
    #[napi]
    pub fn unban(&self, client: String) -> Result<bool, String> {
        let server = self.running().ok_or_else(|| not_listening("unban"))?;
        server.unban(&client).map_err(coded)
    }

    /// The counters, gauges and histograms in the Prometheus text exposition format (0.0.4),
    /// or as OpenMetrics when `openmetrics` is true.
    #[napi]
    pub fn prometheus(&self, openmetrics: Option<bool>) -> Result<String, String> {
        let server = self.running().ok_or_else(|| not_listening("prometheus"))?;
        Ok(server.metrics_text(openmetrics.unwrap_or(false)))
    }

    /// The dashboard's next frame (`floodgate_core::Frame`): gauges now, rates and latency
    /// quantiles since the previous frame (the apps mounted at `skip` left out of the latency),
    /// the `top` most refused clients; as JSON text, which is what the dashboard's event stream
    /// sends.
    #[napi]
    pub fn dashboard_frame(&self, top: u32, skip: Vec<String>) -> Result<String, String> {
        let server = self.running().ok_or_else(|| not_listening("dashboard"))?;
        serde_json::to_string(&server.frame(top as usize, &skip))
            .map_err(|err| Error::new("ERR_FLOODGATE_STATS".to_string(), err.to_string()))
    }

    /// Stops accepting and drains for up to `drainMs` before aborting what is left.
    #[napi]
    pub async fn close(&self, drain_ms: u32) -> Result<()> {
        if let Some(server) = self.running() {
            server.close(Duration::from_millis(drain_ms as u64)).await;
        }
        Ok(())
    }

    /// Publishes `data` on `topic` to every matching event stream; returns how many it reached.
    #[napi]
    pub fn publish(
        &self,
        topic: String,
        data: String,
        event: Option<String>,
        id: Option<String>,
    ) -> Result<u32, String> {
        let fields = [("event", event.as_deref()), ("id", id.as_deref())];
        floodgate_core::validate_topic(&topic, false)
            .and(fields.into_iter().try_for_each(|(name, value)| {
                value.map_or(Ok(()), |value| {
                    floodgate_core::validate_event_field(name, value)
                })
            }))
            .map_err(|message| error(ErrorKind::Option, format!("publish: {message}")))?;
        let server = self.running().ok_or_else(|| not_listening("publish"))?;
        Ok(server
            .bus()
            .publish(&topic, &data, event.as_deref(), id.as_deref()) as u32)
    }

    /// The sequence number of the last published event (snapshots are taken as of it).
    #[napi]
    pub fn bus_seq(&self) -> f64 {
        self.running()
            .map_or(0.0, |server| server.bus().current_seq() as f64)
    }

    /// Answers exchange `id` with a complete body. `false` when the exchange is gone. Header
    /// lists (here and below) are `name\0value\0...` bytes, one per character (`handlers.ts`).
    #[napi]
    pub fn respond(
        &self,
        id: f64,
        status: u32,
        headers: Buffer,
        body: Option<Either<Buffer, String>>,
    ) -> bool {
        let body = match body {
            None => JsBody::Empty,
            Some(Either::A(buffer)) => JsBody::Bytes(Vec::<u8>::from(buffer).into()),
            Some(Either::B(text)) => JsBody::Bytes(text.into()),
        };
        let response = JsResponse {
            status: status as u16,
            headers: Vec::<u8>::from(headers).into(),
            body,
        };
        self.bridge.respond(exchange_id(id), response)
    }

    /// Answers a batch of exchanges with complete bodies (`wire::decode_responses` has the
    /// layout).
    #[napi]
    pub fn respond_batch(&self, entries: Float64Array, payload: Buffer) -> Result<(), String> {
        let responses = wire::decode_responses(&entries, &payload)
            .map_err(|_| error(ErrorKind::Malformed, "respondBatch: malformed batch"))?;
        self.bridge.respond_all(responses);
        Ok(())
    }

    /// Answers exchange `id` with a head; the body follows through `tryWrite`/`drain`/`end`.
    #[napi]
    pub fn respond_stream(&self, id: f64, status: u32, headers: Buffer) -> bool {
        self.bridge.respond_stream(
            exchange_id(id),
            status as u16,
            Vec::<u8>::from(headers).into(),
        )
    }

    /// Answers exchange `id` with a file Rust streams (Range, validators, shaping, timeouts).
    #[napi]
    pub fn respond_file(&self, id: f64, status: u32, headers: Buffer, file: NativeFile) -> bool {
        let file = JsFile {
            path: file.path.into(),
            filename: file.filename,
            media_type: file.media_type,
            attachment: file.attachment.unwrap_or(false),
        };
        let response = JsResponse {
            status: status as u16,
            headers: Vec::<u8>::from(headers).into(),
            body: JsBody::File(file),
        };
        self.bridge.respond(exchange_id(id), response)
    }

    /// Queues a chunk if there is room: `true`. `false`: the queue is full and the chunk is
    /// held; await `drain` before writing again. Throws when the client is gone.
    #[napi]
    pub fn try_write(&self, id: f64, chunk: Buffer) -> Result<bool, String> {
        self.bridge
            .try_write(exchange_id(id), Vec::<u8>::from(chunk).into())
            .map_err(|_| gone())
    }

    /// Resolves `true` once the client has taken most of the queue (the held chunk queued
    /// then), `false` when it is gone.
    #[napi]
    pub async fn drain(&self, id: f64) -> Result<bool> {
        Ok(self.bridge.drain(exchange_id(id)).await.is_ok())
    }

    /// Ends a streamed response.
    #[napi]
    pub fn end(&self, id: f64) {
        self.bridge.end(exchange_id(id));
    }

    /// The next chunk of the request body, `null` at its end, or the error code (a string)
    /// that ended it: `ERR_FLOODGATE_BODY_TOO_LARGE`, `_BODY_TIMEOUT`, `_BODY_ABORTED` or
    /// `_CLIENT_GONE` (`wire.ts` turns it into an error).
    #[napi]
    pub async fn read_body(&self, id: f64) -> Result<Option<Either<Buffer, String>>> {
        let kind = match self.bridge.read_body(exchange_id(id)).await {
            Ok(chunk) => return Ok(chunk.map(|bytes| Either::A(bytes.to_vec().into()))),
            Err(BodyError::TooLarge) => ErrorKind::BodyTooLarge,
            Err(BodyError::Timeout) => ErrorKind::BodyTimeout,
            Err(BodyError::Aborted | BodyError::Malformed) => ErrorKind::BodyAborted,
            Err(BodyError::Gone) => ErrorKind::ClientGone,
        };
        let code = floodgate_core::Error::new(kind, "").code();
        Ok(Some(Either::B(code.to_string())))
    }
}

#[napi]
impl NativeServer {
    /// Carries out a batch of `ws.send` / `ws.close` calls (`wire::decode_ws_sends` has the
    /// layout).
    #[napi]
    pub fn ws_send(&self, entries: Float64Array, payload: Buffer) -> Result<(), String> {
        let sends = wire::decode_ws_sends(&entries, &payload)
            .map_err(|_| error(ErrorKind::Malformed, "wsSend: malformed batch"))?;
        self.bridge.ws_hub().send_all(sends);
        Ok(())
    }

    /// Subscribes WebSocket `id` to a topic pattern; `false` when the socket is gone.
    #[napi]
    pub fn ws_subscribe(&self, id: f64, topic: String) -> Result<bool, String> {
        let server = self.running().ok_or_else(|| not_listening("subscribe"))?;
        match self
            .bridge
            .ws_hub()
            .subscribe(server.bus(), exchange_id(id), &topic)
        {
            Ok(subscribed) => Ok(subscribed),
            Err(HubError::InvalidTopic(message)) => {
                Err(error(ErrorKind::Option, format!("subscribe: {message}")))
            }
        }
    }

    #[napi]
    pub fn ws_unsubscribe(&self, id: f64, topic: String) -> bool {
        self.bridge.ws_hub().unsubscribe(exchange_id(id), &topic)
    }

    /// Bytes queued for WebSocket `id` and not yet written to its socket.
    #[napi]
    pub fn ws_buffered_amount(&self, id: f64) -> f64 {
        self.bridge
            .ws_hub()
            .get(exchange_id(id))
            .map_or(0.0, |session| session.buffered_amount() as f64)
    }
}

fn gone() -> Coded {
    error(ErrorKind::ClientGone, "the client is gone")
}
