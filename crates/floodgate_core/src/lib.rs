//! floodgate's engine: a protected HTTP streaming server on tokio and hyper 1.
//!
//! This crate has no napi: `floodgate_napi` is a thin binding over it. Entry point:
//! [`listen`] with a [`ServerSpec`]. Every module is private to the crate; what a binding
//! needs is re-exported here.
//!
//! One folder per concern: `conn` (accept loop, socket wrapper, connection state), `app`
//! (a mounted streaming app, its router), `files`, `delivery` (shaping and bounding any
//! response body), `upload`, `js` (the JS bridge), `ws`, `events` (bus, SSE), `limit`
//! (connection caps, request rates, bandwidth, bounded queues), `cluster` (the same limits and
//! the bus shared through Redis), `config`, `metrics`, `observe` (rejection events, top
//! offenders).

mod app;
mod cluster;
mod config;
mod conn;
mod context;
mod delivery;
mod error;
mod events;
mod files;
mod js;
mod limit;
mod metrics;
mod observe;
#[cfg(test)]
mod test_support;
mod tls;
mod upload;
mod ws;

pub use cluster::health::ClusterSnapshot;
pub use config::{validate_options, ServerSpec};
pub use conn::server::{listen, RunningServer};
pub use error::{Error, ErrorKind};
pub use events::bus::{validate as validate_topic, validate_field as validate_event_field};
pub use js::bridge::{BodyError, Bridge, JsBody, JsFile, JsHost, JsRequest, JsResponse};
pub use metrics::Snapshot;
pub use observe::reject::{Code as RejectCode, RejectEvent, RejectSink};
pub use observe::sample::Frame;
pub use ws::hub::{CloseRequest, HubError, JsBacklog, WsEvent, WsSend};
