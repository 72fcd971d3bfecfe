//! Node binding of floodgate: a thin layer over `floodgate_core`.
//!
//! Options cross the boundary as plain JSON objects and are validated by the core's typed
//! config (one source of defaults and error messages). JS handlers are reached through
//! `host::NapiHost` (batched ThreadsafeFunction calls). No protection logic lives here.

mod host;

use floodgate_core::bridge::{BodyError, Bridge, JsBody, JsFile, JsResponse};
use floodgate_core::config::{
    self, FilesConfig, ServerConfig, ServerSpec, SseConfig, StreamingConfig, UploadsConfig,
    WsConfig,
};
use floodgate_core::files::FilesMount;
use floodgate_core::upload::UploadsMount;
use floodgate_core::ws_hub::HubError;
use floodgate_core::RunningServer;
use host::{NapiHost, OnRequests, OnWsEvents};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn invalid(message: String) -> Error {
    Error::new(Status::InvalidArg, message)
}

/// Checks one options object (`kind`: `server`, `streaming`, `files` or `uploads`) and throws
/// naming the offending option.
#[napi]
pub fn validate_options(kind: String, options: serde_json::Value) -> Result<()> {
    fn check<T: serde::de::DeserializeOwned>(
        options: serde_json::Value,
        validate: impl Fn(&T) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let parsed: T = config::from_json(options)?;
        validate(&parsed)
    }
    match kind.as_str() {
        "server" => check::<ServerConfig>(options, ServerConfig::validate),
        "streaming" => check::<StreamingConfig>(options, StreamingConfig::validate),
        "files" => check::<FilesConfig>(options, |files| FilesMount::new(files.clone()).map(drop)),
        "sse" => check::<SseConfig>(options, |_| Ok(())),
        "ws" => check::<WsConfig>(options, WsConfig::validate),
        "uploads" => check::<UploadsConfig>(options, |uploads| {
            UploadsMount::new(uploads.clone()).map(drop)
        }),
        other => Err(format!("unknown options kind {other:?}")),
    }
    .map_err(invalid)
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
        let host = NapiHost::new(&on_requests, &on_aborts, &on_ws_events)?;
        Ok(Self {
            bridge: Bridge::new(Arc::new(host)),
            running: Mutex::new(None),
        })
    }

    /// Binds `host:port` (port 0 picks a free one) and serves `spec` (options and mounts).
    #[napi]
    pub async fn listen(
        &self,
        spec: serde_json::Value,
        host: String,
        port: u32,
    ) -> Result<BoundAddress> {
        let spec: ServerSpec = config::from_json(spec).map_err(invalid)?;
        let port =
            u16::try_from(port).map_err(|_| invalid(format!("port: {port} is out of range")))?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|err| Error::from_reason(format!("listen: cannot resolve {host:?}: {err}")))?
            .next()
            .ok_or_else(|| Error::from_reason(format!("listen: {host:?} has no address")))?;
        let server = floodgate_core::listen(spec, addr, Some(Arc::clone(&self.bridge)))
            .await
            .map_err(Error::from_reason)?;
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

    /// Counters and gauges, see `floodgate_core::metrics::Snapshot`.
    #[napi]
    pub fn stats(&self) -> Result<serde_json::Value> {
        let server = self
            .running()
            .ok_or_else(|| Error::from_reason("the server is not listening"))?;
        let mut stats = serde_json::to_value(server.stats())
            .map_err(|err| Error::from_reason(err.to_string()))?;
        stats["jsInFlight"] = self.bridge.in_flight().into();
        Ok(stats)
    }

    /// The same counters in the Prometheus text exposition format.
    #[napi]
    pub fn prometheus(&self) -> Result<String> {
        let server = self
            .running()
            .ok_or_else(|| Error::from_reason("the server is not listening"))?;
        Ok(server.stats().prometheus())
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
    ) -> Result<u32> {
        floodgate_core::bus::validate(&topic, false)
            .map_err(|message| invalid(format!("publish: {message}")))?;
        let server = self
            .running()
            .ok_or_else(|| Error::from_reason("publish: the server is not listening"))?;
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

    /// Answers a batch of exchanges with complete bodies: `entries` holds `id, status,
    /// headersLength, bodyLength` per response (`bodyLength` -1: no body), `payload` each one's
    /// `name\0value\0...` headers and body end to end (`Bridge::respond_batch`).
    #[napi]
    pub fn respond_batch(&self, entries: Float64Array, payload: Buffer) -> Result<()> {
        self.bridge
            .respond_batch(&entries, &payload)
            .map_err(|_| invalid("respondBatch: malformed batch".into()))
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
    pub fn try_write(&self, id: f64, chunk: Buffer) -> Result<bool> {
        self.bridge
            .try_write(exchange_id(id), Vec::<u8>::from(chunk).into())
            .map_err(|_| gone())
    }

    /// Resolves once the client has taken most of the queue (the held chunk queued then).
    /// Rejects when it is gone.
    #[napi]
    pub async fn drain(&self, id: f64) -> Result<()> {
        self.bridge.drain(exchange_id(id)).await.map_err(|_| gone())
    }

    /// Ends a streamed response.
    #[napi]
    pub fn end(&self, id: f64) {
        self.bridge.end(exchange_id(id));
    }

    /// The next chunk of the request body, or null at its end.
    #[napi]
    pub async fn read_body(&self, id: f64) -> Result<Option<Buffer>> {
        match self.bridge.read_body(exchange_id(id)).await {
            Ok(chunk) => Ok(chunk.map(|bytes| bytes.to_vec().into())),
            Err(BodyError::TooLarge) => {
                Err(Error::new(Status::GenericFailure, "request body too large"))
            }
            Err(BodyError::Timeout) => Err(Error::new(
                Status::GenericFailure,
                "request body read timed out",
            )),
            Err(BodyError::Aborted) => Err(Error::new(
                Status::GenericFailure,
                "client aborted the request body",
            )),
            Err(BodyError::Gone) => Err(gone()),
        }
    }
}

#[napi]
impl NativeServer {
    /// Carries out a batch of `ws.send` / `ws.close` calls: `entries` holds `id, kind, length,
    /// code` per call (kind 0 text, 1 binary, 2 close), `payload` their bytes end to end.
    #[napi]
    pub fn ws_send(&self, entries: Float64Array, payload: Buffer) -> Result<()> {
        self.bridge
            .ws_hub()
            .send_batch(&entries, &payload)
            .map_err(|_| invalid("wsSend: malformed batch".into()))
    }

    /// Subscribes WebSocket `id` to a topic pattern; `false` when the socket is gone.
    #[napi]
    pub fn ws_subscribe(&self, id: f64, topic: String) -> Result<bool> {
        let server = self
            .running()
            .ok_or_else(|| Error::from_reason("subscribe: the server is not listening"))?;
        match self
            .bridge
            .ws_hub()
            .subscribe(server.bus(), exchange_id(id), &topic)
        {
            Ok(subscribed) => Ok(subscribed),
            Err(HubError::InvalidTopic(message)) => Err(invalid(format!("subscribe: {message}"))),
            Err(HubError::Malformed) => Err(invalid("subscribe: malformed".into())),
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

fn gone() -> Error {
    Error::new(Status::Cancelled, "the client is gone")
}
