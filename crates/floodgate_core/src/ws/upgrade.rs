//! `StreamingApp.ws(prefix, {...})`: the WebSocket upgrade, with everything checked before the
//! `101`: the handshake headers, `authenticate` in JS, and the per-user, per-address and
//! per-app caps (the per-user and per-address ones cluster-wide with the `cluster` option). The
//! session itself runs in `ws_session`.

use crate::cluster::lease::{self, Lease, Refusal};
use crate::cluster::Cluster;
use crate::config::{StreamingConfig, WsConfig, WsHandlers};
use crate::context::RequestContext;
use crate::delivery::body::{self, Body};
use crate::js::bridge::Bridge;
use crate::js::call::{ask, identify, JsTarget};
use crate::limit::conn::{ConnectionLimiter, Slot};
use crate::limit::key::{address_key, ClientKey};
use crate::limit::queue::QueueLimits;
use crate::metrics::Rejection;
use crate::observe::app::{Kind, Live};
use crate::observe::reject;
use crate::ws::deflate::{self, DeflateConfig};
use crate::ws::session::{self, MessagePolicy, SessionLimits, SessionStart, Validation};
use crate::ws::validate::MessageRules;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A WebSocket route with its caps.
pub struct WsRoute {
    handlers: WsHandlers,
    limits: Arc<SessionLimits>,
    per_user: Arc<ConnectionLimiter<ClientKey>>,
    per_ip: Arc<ConnectionLimiter<IpAddr>>,
    total: Arc<Semaphore>,
    /// The per-user and per-address caps, cluster-wide: the Redis keys name the route by
    /// `path` (mount and route prefix), so every instance counts the same.
    cluster: Option<Arc<Cluster>>,
    path: String,
    per_user_cap: u32,
    per_ip_cap: u32,
    /// The route's subprotocols, in its order of preference.
    protocols: Vec<String>,
    /// Refuse (400) a client that ends up without a subprotocol.
    require_protocol: bool,
    /// permessage-deflate, when the route turns it on.
    deflate: Option<DeflateConfig>,
}

/// What an open session holds until it ends: its slots under every cap.
pub struct Held {
    _user: Slot<ClientKey>,
    _ip: Slot<IpAddr>,
    _permit: OwnedSemaphorePermit,
    _lease: Option<Lease>,
    /// The app's open-socket gauge, held up while the session lives.
    live: Option<Live>,
    /// The upgrade request's access log record: the session is logged when it ends.
    pub(crate) access: Option<Arc<crate::observe::access::AccessRecord>>,
}

impl Held {
    /// A refusal of the session's client and user (`observe::reject`).
    pub(crate) fn refusal(&self, reason: Rejection) -> reject::Refusal<'_> {
        let refusal = reject::Refusal::new(reason)
            .client(*self._ip.key())
            .user(self._user.key().user());
        match &self.live {
            Some(live) => refusal.app(live.app()),
            None => refusal,
        }
    }
}

impl WsRoute {
    /// A route at `path` (mount prefix and route prefix).
    pub fn new(
        config: WsConfig,
        handlers: WsHandlers,
        app: &StreamingConfig,
        cluster: Option<&Arc<Cluster>>,
        path: String,
    ) -> Result<Self, String> {
        let messages = match &config.messages {
            Some(messages) => Some(Arc::new(MessagePolicy {
                rules: MessageRules::new(messages)?,
                on_invalid: messages.on_invalid,
                max_invalid: messages.max_invalid,
            })),
            None => None,
        };
        let limits = Arc::new(SessionLimits {
            max_message_size: app.ws_max_message_size as usize,
            idle_timeout: app.ws_idle_timeout,
            idle_counts_pings: app.ws_idle_counts_pings,
            messages_per_second: app.ws_max_messages_per_second,
            bytes_per_second: app.ws_max_bytes_per_second,
            rate_action: config.rate_limit_action,
            ping_interval: app.ws_ping_interval,
            pong_timeout: app.ws_pong_timeout,
            send_timeout: app.send_timeout,
            queue: QueueLimits {
                items: config.queue_messages as usize,
                bytes: config.queue_bytes as usize,
                overflow: config.overflow,
            },
            route: handlers.route,
            js_events: handlers.js_events,
            messages,
        });
        let names_protocols = !config.protocols.is_empty() || handlers.select_protocol.is_some();
        let require_protocol = config.require_protocol.unwrap_or(names_protocols);
        let deflate = config.compression.settings().map(|settings| DeflateConfig {
            server_no_context_takeover: settings.server_no_context_takeover,
            client_no_context_takeover: settings.client_no_context_takeover,
            server_max_window_bits: settings.server_max_window_bits,
            client_max_window_bits: settings.client_max_window_bits,
            threshold: settings.threshold.min(usize::MAX as u64) as usize,
        });
        // With a cluster, local slots are capped only at this instance's share, and only
        // while Redis fails under the `local` policy.
        let local = |cap: u32| cluster.map_or(cap, |cluster| cluster.config().share(cap));
        Ok(Self {
            per_user: ConnectionLimiter::new(local(app.ws_max_connections_per_user)),
            per_ip: ConnectionLimiter::new(local(app.ws_max_connections_per_ip)),
            total: Arc::new(Semaphore::new(app.ws_max_connections as usize)),
            limits,
            handlers,
            cluster: cluster.cloned(),
            path,
            per_user_cap: app.ws_max_connections_per_user,
            per_ip_cap: app.ws_max_connections_per_ip,
            protocols: config.protocols,
            require_protocol,
            deflate,
        })
    }

    /// Checks and answers an upgrade request; `url` is what `authenticate` sees.
    pub async fn upgrade<B>(
        &self,
        mut request: Request<B>,
        context: &RequestContext,
        bridge: &Arc<Bridge>,
        handler_timeout: Duration,
        url: String,
    ) -> Response<Body> {
        let accept_key = match handshake_key(request.method(), request.headers()) {
            Ok(key) => key,
            Err(response) => {
                // Refused before the 101: no session, so not a protocol close.
                let status = response.status().as_u16();
                context.metrics.refuse(
                    context
                        .refusal(Rejection::WsBadHandshake)
                        .route(request.uri().path())
                        .status(status),
                );
                return *response;
            }
        };
        let offered = offered_protocols(request.headers());
        if self.require_protocol && offered.is_empty() {
            context.metrics.reject(Rejection::WsBadHandshake);
            return no_protocol();
        }
        let mut user = context.user.clone();
        if let Some(handler) = self.handlers.authenticate {
            let target = JsTarget {
                bridge,
                handler,
                params: Vec::new(),
                url: url.clone(),
                client: context.client,
            };
            match identify(&request, target, handler_timeout, &context.metrics).await {
                Ok(named) => user = named.or(user),
                Err(response) => return response,
            }
        }
        let protocol = match self.handlers.select_protocol {
            Some(handler) => {
                let target = JsTarget {
                    bridge,
                    handler,
                    params: Vec::new(),
                    url: url.clone(),
                    client: context.client,
                };
                let chosen = match ask(&request, target, handler_timeout, &context.metrics).await {
                    Ok(chosen) => chosen,
                    Err(response) => return response,
                };
                match std::str::from_utf8(&chosen) {
                    Ok("") => None,
                    // A protocol the client did not offer would make it fail the connection.
                    Ok(name) if offered.contains(&name) => Some(name.to_string()),
                    _ => {
                        return body::text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "selectProtocol chose a subprotocol the client did not offer\n",
                        )
                    }
                }
            }
            None => self
                .protocols
                .iter()
                .find(|name| offered.contains(&name.as_str()))
                .cloned(),
        };
        if protocol.is_none() && self.require_protocol {
            context.metrics.reject(Rejection::WsBadHandshake);
            return no_protocol();
        }
        let mut held = match self.acquire(user.as_deref(), context.client).await {
            Ok(held) => held,
            Err(response) => {
                let status = response.status().as_u16();
                context.metrics.refuse(
                    reject::Refusal::new(Rejection::WsLimit)
                        .app(&context.app)
                        .client(context.client)
                        .user(user.as_deref())
                        .route(request.uri().path())
                        .status(status),
                );
                return *response;
            }
        };
        held.live = Some(Live::new(&context.app, Kind::WebSocket));
        if let Some(record) = &context.access {
            record.websocket();
            record.user(user.as_deref());
        }
        held.access = context.access.clone();
        let compression = self
            .deflate
            .as_ref()
            .and_then(|config| deflate::negotiate(request.headers(), config));
        let on_upgrade = hyper::upgrade::on(&mut request);
        context.conn.mark_upgraded();
        bridge.ws_hub().watch(&context.shutdown, &context.abort);
        let validation = self.limits.messages.as_ref().map(|_| {
            let offender = context.bans.as_ref().map(|bans| {
                (
                    Arc::clone(bans),
                    ClientKey::new(user.as_deref(), context.client),
                )
            });
            Box::new(Validation::new(offender))
        });
        let start = Box::new(SessionStart {
            on_upgrade,
            limits: Arc::clone(&self.limits),
            validation,
            user,
            client: context.client,
            url,
            bridge: Arc::clone(bridge),
            metrics: Arc::clone(&context.metrics),
            abort: context.abort.clone(),
            held,
            protocol: protocol.clone(),
            deflate: compression.as_ref().map(|(negotiated, _)| *negotiated),
        });
        // Refusals of the session's task note their reason on its record.
        match &context.access {
            Some(record) => context.tracker.spawn(
                crate::observe::access::CURRENT.scope(Arc::clone(record), session::run(start)),
            ),
            None => context.tracker.spawn(session::run(start)),
        };

        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept_key) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        if let Some((_, extension)) = compression {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extension);
        }
        response
    }

    async fn acquire(
        &self,
        user: Option<&str>,
        client: IpAddr,
    ) -> Result<Held, Box<Response<Body>>> {
        let address = address_key(client);
        let user_key = ClientKey::new(user, client);
        let per_user = || {
            too_many(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many WebSockets for this user\n",
            )
        };
        let per_ip = || {
            too_many(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many WebSockets from your address\n",
            )
        };
        let admission = match &self.cluster {
            None => None,
            Some(cluster) => {
                let caps = [
                    (format!("ws:{}:{user_key}", self.path), self.per_user_cap),
                    (format!("ws-ip:{}:a:{address}", self.path), self.per_ip_cap),
                ];
                match lease::admit(cluster, &caps).await {
                    Ok(admission) => admission,
                    Err(Refusal::AtCap(0)) => return Err(per_user()),
                    Err(Refusal::AtCap(_)) => return Err(per_ip()),
                    Err(Refusal::Unavailable) => return Err(unavailable()),
                }
            }
        };
        let capped = admission
            .as_ref()
            .is_none_or(|admission| admission.local_cap);
        let Some(user_slot) = self.per_user.acquire_key(user_key, capped) else {
            return Err(per_user());
        };
        let Some(ip_slot) = self.per_ip.acquire_key(address, capped) else {
            return Err(per_ip());
        };
        let Ok(permit) = Arc::clone(&self.total).try_acquire_owned() else {
            return Err(too_many(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many WebSockets\n",
            ));
        };
        Ok(Held {
            _user: user_slot,
            _ip: ip_slot,
            _permit: permit,
            _lease: admission.map(|admission| admission.lease),
            live: None,
            access: None,
        })
    }
}

/// The subprotocols the client offers (`Sec-WebSocket-Protocol`, one or more header lines of
/// comma-separated tokens), in its order.
fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect()
}

/// The route requires a subprotocol and the client offers none it speaks.
fn no_protocol() -> Response<Body> {
    body::text(
        StatusCode::BAD_REQUEST,
        "No supported WebSocket subprotocol offered\n",
    )
}

/// The cluster's caps cannot be checked (Redis failing under the `closed` policy).
fn unavailable() -> Box<Response<Body>> {
    too_many(
        StatusCode::SERVICE_UNAVAILABLE,
        "Connection limits are unavailable, try again shortly\n",
    )
}

fn too_many(status: StatusCode, message: &'static str) -> Box<Response<Body>> {
    Box::new(body::text_with(
        status,
        message,
        header::RETRY_AFTER,
        HeaderValue::from_static("5"),
    ))
}

/// Checks an upgrade request (RFC 6455 section 4.2.1) and returns its `Sec-WebSocket-Accept`.
fn handshake_key(method: &Method, headers: &HeaderMap) -> Result<String, Box<Response<Body>>> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|text| {
                text.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err(Box::new(body::text_with(
            StatusCode::UPGRADE_REQUIRED,
            "This is a WebSocket endpoint\n",
            header::UPGRADE,
            HeaderValue::from_static("websocket"),
        )));
    }
    if method != Method::GET || !has_token(header::CONNECTION, "upgrade") {
        return Err(Box::new(body::text(
            StatusCode::BAD_REQUEST,
            "Bad WebSocket upgrade\n",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|version| version != "13")
    {
        return Err(Box::new(body::text_with(
            StatusCode::BAD_REQUEST,
            "Unsupported WebSocket version\n",
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        )));
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(derive_accept_key(key.as_bytes())),
        _ => Err(Box::new(body::text(
            StatusCode::BAD_REQUEST,
            "Missing Sec-WebSocket-Key\n",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        headers
    }

    #[test]
    fn reads_offered_subprotocols_from_every_header_line() {
        let mut headers = upgrade_headers();
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("graphql-transport-ws, mqtt"),
        );
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(" chat ,,"),
        );
        assert_eq!(
            offered_protocols(&headers),
            ["graphql-transport-ws", "mqtt", "chat"]
        );
        assert!(offered_protocols(&upgrade_headers()).is_empty());
    }

    #[test]
    fn accepts_the_rfc_example() {
        let key = handshake_key(&Method::GET, &upgrade_headers()).unwrap();
        assert_eq!(key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refuses_plain_and_malformed_requests() {
        let status = |method: Method, headers: &HeaderMap| {
            handshake_key(&method, headers).unwrap_err().status()
        };
        assert_eq!(
            status(Method::GET, &HeaderMap::new()),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(
            status(Method::POST, &upgrade_headers()),
            StatusCode::BAD_REQUEST
        );
        let mut old = upgrade_headers();
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(status(Method::GET, &old), StatusCode::BAD_REQUEST);
    }
}
