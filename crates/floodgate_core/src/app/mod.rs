//! A mounted streaming app: its limits and its routes (JS handlers, files, uploads).
//!
//! Every request first passes the app's request-rate limiter (keyed by user, else address;
//! cluster-wide with the `cluster` option); then the route's own protections apply.

pub(crate) mod route_pattern;
pub(crate) mod router;

use crate::app::route_pattern::RoutePattern;
use crate::app::router::MountTable;
use crate::cluster::rate::{ClusterRate, RateOutcome};
use crate::cluster::Cluster;
use crate::config::{RouteSpec, StreamingConfig, StreamingSpec};
use crate::conn::h2_stream;
use crate::context::RequestContext;
use crate::delivery::body::{self, Body};
use crate::delivery::Delivery;
use crate::events::sse::{SseContext, SseRoute};
use crate::files::FilesMount;
use crate::js::bridge::Bridge;
use crate::js::call::{call_js, identify, JsLimits, JsTarget};
use crate::limit::bucket::{slowest_rate, ClientBuckets, Shaper};
use crate::limit::key::{address_key, ClientKey};
use crate::limit::rate::{policy_header, Decision, RequestLimiter};
use crate::metrics::{Metrics, Rejection};
use crate::observe::app::AppMetrics;
use crate::upload::multipart::UploadHook;
use crate::upload::{UploadLimits, UploadsMount};
use crate::ws::upgrade::WsRoute;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;

enum Route {
    Files(FilesMount),
    Uploads(UploadsMount),
    Sse(SseRoute),
    Ws(WsRoute),
}

struct JsRoute {
    pattern: RoutePattern,
    handler: u32,
}

pub struct StreamingApp {
    config: StreamingConfig,
    routes: MountTable<Route>,
    download_buckets: Option<Arc<ClientBuckets>>,
    upload_buckets: Option<Arc<ClientBuckets>>,
    requests: Option<RequestLimiter>,
    /// `rateLimitRequests` across the cluster, in place of `requests`.
    cluster_requests: Option<ClusterRate>,
    js_routes: Vec<JsRoute>,
    bridge: Option<Arc<Bridge>>,
    inflight: Arc<Semaphore>,
    /// The JS handler that names the user (`identify`), when the app has one.
    identify: Option<u32>,
    /// What the app counts for the metrics (`app` label: its mount prefix).
    metrics: Arc<AppMetrics>,
}

impl StreamingApp {
    pub fn metrics(&self) -> &Arc<AppMetrics> {
        &self.metrics
    }

    /// The app mounted at `mount`; with a `cluster`, its caps and request rate are shared.
    pub fn build(
        spec: StreamingSpec,
        bridge: Option<Arc<Bridge>>,
        cluster: Option<&Arc<Cluster>>,
        mount: &str,
    ) -> Result<Self, String> {
        let config = spec.options;
        let mut routes = MountTable::default();
        let mut js_routes = Vec::new();
        for route in spec.routes {
            match route {
                RouteSpec::Files { prefix, options } => {
                    routes.insert(prefix, Route::Files(FilesMount::new(options)?))
                }
                RouteSpec::Uploads {
                    prefix,
                    options,
                    on_upload,
                } => {
                    if on_upload.is_some() && bridge.is_none() {
                        return Err("uploads: onUpload needs the JS bridge".into());
                    }
                    let mount = UploadsMount::new(options, on_upload)?;
                    routes.insert(prefix, Route::Uploads(mount))
                }
                RouteSpec::Sse {
                    prefix,
                    options,
                    handlers,
                } => {
                    if bridge.is_none() {
                        return Err("sse: event streams need the JS bridge".into());
                    }
                    let caps = (
                        config.sse_max_connections_per_user,
                        config.sse_max_connections,
                    );
                    let path = route_path(mount, &prefix);
                    let route = SseRoute::new(options, handlers, caps, cluster, path);
                    routes.insert(prefix, Route::Sse(route))
                }
                RouteSpec::Ws {
                    prefix,
                    options,
                    handlers,
                } => {
                    if bridge.is_none() {
                        return Err("ws: WebSockets need the JS bridge".into());
                    }
                    let path = route_path(mount, &prefix);
                    let route = WsRoute::new(options, handlers, &config, cluster, path)?;
                    routes.insert(prefix, Route::Ws(route))
                }
                RouteSpec::Handler {
                    method,
                    path,
                    handler,
                } => {
                    if bridge.is_none() {
                        return Err("route: JS handlers need the JS bridge".into());
                    }
                    js_routes.push(JsRoute {
                        pattern: RoutePattern::parse(method.as_deref(), &path)?,
                        handler,
                    });
                }
            }
        }
        let buckets = |rate: u64| (rate > 0).then(|| ClientBuckets::new(rate, config.chunk_size));
        Ok(Self {
            metrics: AppMetrics::new(mount),
            download_buckets: buckets(config.per_client_bandwidth),
            upload_buckets: buckets(config.per_client_upload_bandwidth),
            requests: match cluster {
                Some(_) => None,
                None => RequestLimiter::new(
                    config.rate_limit_requests,
                    config.rate_limit_window,
                    config.rate_limit_burst,
                ),
            },
            cluster_requests: cluster.and_then(|cluster| {
                ClusterRate::new(
                    cluster,
                    mount,
                    config.rate_limit_requests,
                    config.rate_limit_window,
                    config.rate_limit_burst,
                )
            }),
            inflight: Arc::new(Semaphore::new(config.max_inflight as usize)),
            config,
            routes,
            js_routes,
            bridge,
            identify: spec.identify,
        })
    }

    /// Starts each uploads mount's removal of the temporaries a crashed instance left
    /// (`UploadsMount::remove_stale`), counted in `metrics` once done.
    pub fn remove_stale_uploads(&self, metrics: &Arc<Metrics>) {
        for route in self.routes.values() {
            if let Route::Uploads(uploads) = route {
                uploads.remove_stale(self.config.upload_timeout, Arc::clone(metrics));
            }
        }
    }

    pub async fn handle<B>(
        &self,
        request: Request<B>,
        rel: &str,
        context: RequestContext,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static,
    {
        context.conn.set_send_timeout(self.config.send_timeout);
        h2_stream::set_send_timeout(self.config.send_timeout);
        let mut context = context;
        if let (Some(handler), Some(bridge)) = (self.identify, &self.bridge) {
            let target = JsTarget {
                bridge,
                handler,
                params: Vec::new(),
                url: relative_url(rel, request.uri()),
                client: context.client,
            };
            match identify(
                &request,
                target,
                self.config.handler_timeout,
                &context.metrics,
            )
            .await
            {
                Ok(user) => {
                    if let Some(record) = &context.access {
                        record.user(user.as_deref());
                    }
                    context.user = user
                }
                Err(response) => return response,
            }
            if context.user_banned() {
                context.metrics.reject(Rejection::Banned);
                return body::text(StatusCode::FORBIDDEN, "Forbidden\n");
            }
        }
        let client = || ClientKey::new(context.user.as_deref(), context.client);
        let decision = match (&self.cluster_requests, &self.requests) {
            (Some(cluster), _) => match cluster.check(&client()).await {
                RateOutcome::Decided(decision) => Some(decision),
                RateOutcome::Unavailable => {
                    context.metrics.refuse(
                        context
                            .refusal(Rejection::RateLimited)
                            .route(request.uri().path())
                            .status(503),
                    );
                    return body::text_with(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Rate limits are unavailable, try again shortly\n",
                        header::RETRY_AFTER,
                        HeaderValue::from_static("1"),
                    );
                }
            },
            (None, Some(limiter)) => Some(limiter.check(&client())),
            (None, None) => None,
        };
        if let Some(decision) = decision.as_ref().filter(|decision| !decision.allowed) {
            context.refuse_with(
                context
                    .refusal(Rejection::RateLimited)
                    .route(request.uri().path()),
            );
            let mut response = body::text_with(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests\n",
                header::RETRY_AFTER,
                HeaderValue::from(decision.reset_seconds),
            );
            self.add_rate_headers(&mut response, decision);
            return response;
        }
        let js_route = self.js_routes.iter().find_map(|route| {
            route
                .pattern
                .matches(request.method(), rel)
                .map(|params| (route.handler, params))
        });
        let mut response = match (js_route, &self.bridge) {
            (Some((handler, params)), Some(bridge)) => {
                let target = JsTarget {
                    bridge,
                    handler,
                    params,
                    url: relative_url(rel, request.uri()),
                    client: context.client,
                };
                let limits = self.js_limits(&context);
                let delivery = self.delivery(&context);
                call_js(request, target, limits, delivery).await
            }
            _ => self.route(request, rel, &context).await,
        };
        if let Some(decision) = &decision {
            self.add_rate_headers(&mut response, decision);
        }
        response
    }

    /// The limits of a call into JS from this app (a handler, or an upload's `onUpload`).
    fn js_limits<'a>(&'a self, context: &'a RequestContext) -> JsLimits<'a> {
        JsLimits {
            max_body: self.config.max_upload_size,
            read_timeout: self.config.read_timeout,
            handler_timeout: self.config.handler_timeout,
            inflight: &self.inflight,
            metrics: &context.metrics,
            app: &context.app,
        }
    }

    async fn route<B>(
        &self,
        request: Request<B>,
        rel: &str,
        context: &RequestContext,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin,
    {
        match self.routes.find(rel) {
            None => {
                context.refuse_with(
                    context
                        .refusal(Rejection::NotFound)
                        .route(request.uri().path()),
                );
                body::text(StatusCode::NOT_FOUND, "Not Found\n")
            }
            Some((Route::Files(files), rest)) => files.serve(
                request.method(),
                request.headers(),
                rest,
                self.delivery(context),
            ),
            Some((Route::Uploads(uploads), rest)) => {
                let rest = rest.to_string();
                let hook = match (uploads.on_upload(), &self.bridge) {
                    (Some(handler), Some(bridge)) => Some(UploadHook {
                        target: JsTarget {
                            bridge,
                            handler,
                            params: Vec::new(),
                            url: relative_url(rel, request.uri()),
                            client: context.client,
                        },
                        limits: self.js_limits(context),
                        delivery: self.delivery(context),
                    }),
                    _ => None,
                };
                uploads
                    .receive(request, &rest, self.upload_limits(context), hook)
                    .await
            }
            Some((Route::Ws(ws), _)) => {
                let Some(bridge) = &self.bridge else {
                    return body::text(StatusCode::NOT_FOUND, "Not Found\n");
                };
                let url = relative_url(rel, request.uri());
                ws.upgrade(request, context, bridge, self.config.handler_timeout, url)
                    .await
            }
            Some((Route::Sse(sse), _)) => {
                let Some(bridge) = &self.bridge else {
                    return body::text(StatusCode::NOT_FOUND, "Not Found\n");
                };
                let sse_context = SseContext {
                    conn: &context.conn,
                    bridge,
                    bus: &context.bus,
                    metrics: &context.metrics,
                    app: &context.app,
                    shutdown: context.shutdown.clone(),
                    keep_alive: self.config.sse_keep_alive,
                    handler_timeout: self.config.handler_timeout,
                    client: context.client,
                    url: relative_url(rel, request.uri()),
                    access: context.access.clone(),
                };
                sse.open(&request, sse_context).await
            }
        }
    }

    fn add_rate_headers(&self, response: &mut Response<Body>, decision: &Decision) {
        if self.requests.is_none() && self.cluster_requests.is_none() {
            return;
        }
        let policy = policy_header(
            self.config.rate_limit_requests,
            self.config.rate_limit_window,
        );
        let headers = response.headers_mut();
        if let Ok(policy) = HeaderValue::from_str(&policy) {
            headers.insert("ratelimit-policy", policy);
        }
        if let Ok(state) = HeaderValue::from_str(&RequestLimiter::state_header(decision)) {
            headers.insert("ratelimit", state);
        }
    }

    fn client_bucket(
        buckets: &Option<Arc<ClientBuckets>>,
        context: &RequestContext,
    ) -> Option<(Arc<ClientBuckets>, IpAddr)> {
        buckets
            .as_ref()
            .map(|buckets| (Arc::clone(buckets), address_key(context.client)))
    }

    fn delivery(&self, context: &RequestContext) -> Delivery {
        Delivery {
            metrics: Arc::clone(&context.metrics),
            conn: Arc::clone(&context.conn),
            chunk_size: self.config.chunk_size,
            per_connection: self.config.rate_limit_bandwidth,
            client: Self::client_bucket(&self.download_buckets, context),
            client_rate: self.config.per_client_bandwidth,
            download_timeout: self.config.download_timeout,
        }
    }

    fn upload_limits(&self, context: &RequestContext) -> UploadLimits {
        let config = &self.config;
        let slowest = slowest_rate([
            config.rate_limit_upload_bandwidth,
            config.per_client_upload_bandwidth,
        ]);
        UploadLimits {
            max_size: config.max_upload_size,
            read_timeout: config.read_timeout,
            upload_timeout: config.upload_timeout,
            min_rate: config.min_upload_rate,
            min_rate_grace: config.min_upload_rate_grace,
            chunk_size: config.chunk_size,
            bandwidth: slowest,
            shaper: Shaper::new(
                (config.rate_limit_upload_bandwidth > 0).then(|| {
                    context
                        .conn
                        .upload_bucket(config.rate_limit_upload_bandwidth, config.chunk_size)
                }),
                Self::client_bucket(&self.upload_buckets, context),
            ),
            metrics: Arc::clone(&context.metrics),
            owner: ClientKey::new(context.user.as_deref(), context.client).to_string(),
        }
    }
}

/// A route's full path (`/stream` + `/events`): what names it in the cluster's keys.
fn route_path(mount: &str, prefix: &str) -> String {
    match (mount, prefix) {
        ("/", prefix) => prefix.to_string(),
        (mount, "/") => mount.to_string(),
        (mount, prefix) => format!("{mount}{prefix}"),
    }
}

/// The path relative to the app, with the query: what JS sees as the request URL.
fn relative_url(rel: &str, uri: &http::Uri) -> String {
    match uri.query() {
        Some(query) => format!("{rel}?{query}"),
        None => rel.to_string(),
    }
}
