//! What the tests over real sockets share: a server on 127.0.0.1 (port 0) with one streaming
//! app holding one route.

use crate::config::{from_json, ServerSpec};
use crate::conn::server::{listen, RunningServer};
use crate::js::bridge::Bridge;
use serde_json::{json, Value};
use std::sync::Arc;

/// Serves `route` in an app mounted at `prefix`: server options `options`, app options
/// `app_options` over defaults that keep tests unthrottled (no request rate limit, no shaping;
/// an app option given wins).
pub(crate) fn serve_route(
    options: Value,
    prefix: &str,
    app_options: Value,
    route: Value,
    bridge: Option<Arc<Bridge>>,
) -> RunningServer {
    let mut app = json!({ "rateLimitRequests": 0, "rateLimitBandwidth": 0 });
    for (key, value) in app_options.as_object().expect("app options are an object") {
        app[key] = value.clone();
    }
    let spec: ServerSpec = from_json(json!({
        "options": options,
        "mounts": [{ "prefix": prefix, "app": { "options": app, "routes": [route] } }]
    }))
    .unwrap();
    listen(spec, "127.0.0.1:0".parse().unwrap(), bridge).unwrap()
}
