//! floodgate's engine: a protected HTTP streaming server on tokio and hyper 1.
//!
//! This crate has no napi: `floodgate_napi` is a thin binding over it. Entry point:
//! [`server::listen`] with a [`config::ServerSpec`].

pub mod app;
pub mod body;
pub mod bridge;
pub mod bus;
pub mod config;
pub mod conn_state;
pub mod delivery;
pub mod disposition;
pub mod file_body;
pub mod files;
pub mod guarded_io;
pub mod js_call;
pub mod js_stream;
pub mod limit;
pub mod metrics;
pub mod proxy;
pub mod range;
pub mod route_pattern;
pub mod router;
pub mod safe_path;
pub mod server;
pub mod sse;
pub mod units;
pub mod upload;
pub mod upload_sink;
pub mod ws;
pub mod ws_frame;
pub mod ws_hub;
pub mod ws_session;

pub use config::ServerSpec;
pub use server::{listen, RunningServer};
