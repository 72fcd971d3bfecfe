//! Node binding of floodgate: a thin layer over `floodgate_core`.
//!
//! Options cross the boundary as plain JSON objects and are validated by the core's typed
//! config (one source of defaults and error messages). No protection logic lives here.

use floodgate_core::config::{
    self, FilesConfig, ServerConfig, ServerSpec, StreamingConfig, UploadsConfig,
};
use floodgate_core::files::FilesMount;
use floodgate_core::upload::UploadsMount;
use floodgate_core::RunningServer;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Arc;
use std::time::Duration;

fn invalid(message: String) -> Error {
    Error::new(Status::InvalidArg, message)
}

/// Checks one options object (`kind`: `server`, `streaming`, `files` or `uploads`) and throws naming the
/// offending option. Returns the options with every default filled in.
#[napi]
pub fn validate_options(kind: String, options: serde_json::Value) -> Result<serde_json::Value> {
    fn check<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        options: serde_json::Value,
        validate: impl Fn(&T) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let parsed: T = config::from_json(options)?;
        validate(&parsed)
    }
    match kind.as_str() {
        "server" => check::<ServerConfig>(options.clone(), ServerConfig::validate),
        "streaming" => check::<StreamingConfig>(options.clone(), StreamingConfig::validate),
        "files" => check::<FilesConfig>(options.clone(), |files| {
            FilesMount::new(files.clone()).map(drop)
        }),
        "uploads" => check::<UploadsConfig>(options.clone(), |uploads| {
            UploadsMount::new(uploads.clone()).map(drop)
        }),
        other => Err(format!("unknown options kind {other:?}")),
    }
    .map_err(invalid)?;
    Ok(options)
}

/// A listening server.
#[napi]
pub struct NativeServer {
    inner: Arc<RunningServer>,
}

/// Binds `host:port` (port 0 picks a free one) and serves `spec` (options and mounts).
#[napi]
pub async fn listen(spec: serde_json::Value, host: String, port: u32) -> Result<NativeServer> {
    let spec: ServerSpec = config::from_json(spec).map_err(invalid)?;
    let port = u16::try_from(port).map_err(|_| invalid(format!("port: {port} is out of range")))?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|err| Error::from_reason(format!("listen: cannot resolve {host:?}: {err}")))?
        .next()
        .ok_or_else(|| Error::from_reason(format!("listen: {host:?} has no address")))?;
    let server = floodgate_core::listen(spec, addr)
        .await
        .map_err(Error::from_reason)?;
    Ok(NativeServer {
        inner: Arc::new(server),
    })
}

#[napi]
impl NativeServer {
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.inner.local_addr().port() as u32
    }

    #[napi(getter)]
    pub fn address(&self) -> String {
        self.inner.local_addr().ip().to_string()
    }

    /// Counters and gauges, see `floodgate_core::metrics::Snapshot`.
    #[napi]
    pub fn stats(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self.inner.stats()).map_err(|err| Error::from_reason(err.to_string()))
    }

    /// Stops accepting and drains for up to `drainMs` before aborting what is left.
    #[napi]
    pub async fn close(&self, drain_ms: u32) -> Result<()> {
        let server = Arc::clone(&self.inner);
        server.close(Duration::from_millis(drain_ms as u64)).await;
        Ok(())
    }
}
