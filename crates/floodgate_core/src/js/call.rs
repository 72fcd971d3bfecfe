//! Serving a request through a JS handler: limits before JS is called, then the response JS
//! gives back — bytes, a stream JS writes into, or a file Rust streams itself.

use crate::config::Disposition;
use crate::delivery::body::{self, Body};
use crate::delivery::Delivery;
use crate::files::{serve_file, FileOptions};
use crate::js::bridge::{BodySource, Bridge, Call, JsBody, JsFile, JsRequest, JsResponse};
use crate::metrics::{Metrics, Rejection};
use crate::observe::reject::Refusal;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The app's limits for JS-handled requests.
pub struct JsLimits<'a> {
    pub max_body: u64,
    pub read_timeout: Duration,
    pub handler_timeout: Duration,
    pub inflight: &'a Arc<Semaphore>,
    pub metrics: &'a Arc<Metrics>,
    /// The app's own counts of its refusals.
    pub app: &'a crate::observe::app::AppMetrics,
}

pub struct JsTarget<'a> {
    pub bridge: &'a Arc<Bridge>,
    pub handler: u32,
    pub params: Vec<String>,
    /// Path relative to the app, plus the query.
    pub url: String,
    pub client: IpAddr,
}

pub async fn call_js<B>(
    request: Request<B>,
    target: JsTarget<'_>,
    limits: JsLimits<'_>,
    delivery: Delivery,
) -> Response<Body>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let refusal = |reason| {
        Refusal::new(reason)
            .app(limits.app)
            .client(target.client)
            .route(request.uri().path())
    };
    if declared.is_some_and(|length| length > limits.max_body) {
        limits.metrics.refuse(refusal(Rejection::BodyTooLarge));
        return body::closing(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n");
    }
    if target.bridge.overloaded() {
        limits.metrics.refuse(refusal(Rejection::EventLoopOverload));
        return body::text_with(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable\n",
            header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
    }
    let Ok(permit) = Arc::clone(limits.inflight).try_acquire_owned() else {
        limits.metrics.refuse(refusal(Rejection::InflightLimit));
        return body::text_with(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable\n",
            header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
    };
    let route = request.uri().path().to_owned();
    let (parts, body) = request.into_parts();
    let has_body = !matches!(parts.method, Method::GET | Method::HEAD)
        && (declared.is_some_and(|length| length > 0)
            || parts.headers.contains_key(header::TRANSFER_ENCODING));
    let js_request = JsRequest {
        id: 0,
        handler: target.handler,
        method: parts.method.as_str().to_string(),
        url: target.url,
        headers: joined_headers(&parts.headers),
        params: target.params,
        client: target.client.to_string(),
        has_body,
    };
    let source = has_body.then(|| {
        BodySource::new(
            body,
            limits.max_body,
            limits.read_timeout,
            Arc::clone(limits.metrics),
        )
    });
    let target_client = target.client;
    let mut call = target.bridge.start(js_request, source, Some(permit));
    let js_response = match tokio::time::timeout(limits.handler_timeout, call.response()).await {
        Err(_) => {
            limits.metrics.refuse(
                Refusal::new(Rejection::HandlerTimeout)
                    .app(limits.app)
                    .client(target_client)
                    .route(&route),
            );
            return body::text(StatusCode::SERVICE_UNAVAILABLE, "Handler timed out\n");
        }
        Ok(None) => {
            return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
        }
        Ok(Some(response)) => response,
    };
    build_response(js_response, call, &parts.method, &parts.headers, delivery)
}

/// Asks JS something about `request` (its body is not passed): the bytes of a 200 answer; a
/// 4xx answer goes to the client as that status; a failure or timeout is a 500 or 503.
pub async fn ask<B>(
    request: &Request<B>,
    target: JsTarget<'_>,
    handler_timeout: Duration,
    metrics: &Metrics,
) -> Result<Bytes, Response<Body>> {
    let client = target.client;
    let js_request = JsRequest {
        id: 0,
        handler: target.handler,
        method: request.method().as_str().to_string(),
        url: target.url,
        headers: joined_headers(request.headers()),
        params: target.params,
        client: target.client.to_string(),
        has_body: false,
    };
    let mut call = target.bridge.start(js_request, None, None);
    let Ok(answer) = tokio::time::timeout(handler_timeout, call.response()).await else {
        metrics.refuse(
            Refusal::new(Rejection::HandlerTimeout)
                .client(client)
                .route(request.uri().path()),
        );
        return Err(body::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Handler timed out\n",
        ));
    };
    call.finish();
    match answer {
        Some(JsResponse {
            status: 200,
            body: JsBody::Bytes(bytes),
            ..
        }) => Ok(bytes),
        Some(JsResponse { status: 200, .. }) => Ok(Bytes::new()),
        Some(JsResponse { status: 401, .. }) => {
            Err(body::text(StatusCode::UNAUTHORIZED, "Unauthorized\n"))
        }
        Some(JsResponse { status: 403, .. }) => {
            Err(body::text(StatusCode::FORBIDDEN, "Forbidden\n"))
        }
        Some(JsResponse { status, .. }) if (400..500).contains(&status) => Err(body::text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            "Refused\n",
        )),
        _ => Err(body::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error\n",
        )),
    }
}

/// Asks the app's `identify(req)` who is asking: `Ok(None)` when it names nobody.
pub async fn identify<B>(
    request: &Request<B>,
    target: JsTarget<'_>,
    handler_timeout: Duration,
    metrics: &Metrics,
) -> Result<Option<String>, Response<Body>> {
    let user = ask(request, target, handler_timeout, metrics).await?;
    Ok((!user.is_empty()).then(|| String::from_utf8_lossy(&user).into_owned()))
}

/// `name\0value\0...` of a request's headers, values as received.
fn joined_headers(headers: &http::HeaderMap) -> Vec<u8> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 2)
        .sum();
    let mut joined = Vec::with_capacity(size);
    for (name, value) in headers {
        if !joined.is_empty() {
            joined.push(0);
        }
        joined.extend_from_slice(name.as_str().as_bytes());
        joined.push(0);
        joined.extend_from_slice(value.as_bytes());
    }
    joined
}

fn build_response(
    js: JsResponse,
    call: Call,
    method: &Method,
    request_headers: &http::HeaderMap,
    delivery: Delivery,
) -> Response<Body> {
    let Ok(status) = StatusCode::from_u16(js.status) else {
        return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n");
    };
    let Some(headers) = parse_headers(&js.headers) else {
        return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n");
    };
    let mut response = match js.body {
        JsBody::Empty => {
            call.finish();
            Response::new(body::empty())
        }
        JsBody::Bytes(bytes) => {
            call.finish();
            Response::new(body::full(bytes))
        }
        JsBody::Stream(reader) => Response::new(delivery.stream_js(reader, call)),
        JsBody::File(file) => {
            call.finish();
            let served = serve_file(
                &file.path,
                &file_options(&file),
                method,
                request_headers,
                delivery,
            );
            if !served.status().is_success() && served.status() != StatusCode::NOT_MODIFIED {
                return served;
            }
            // The file's own headers (length, ranges, validators) win over the handler's.
            let (mut parts, body) = served.into_parts();
            for (name, value) in headers.iter() {
                if !parts.headers.contains_key(name) {
                    parts.headers.insert(name.clone(), value.clone());
                }
            }
            if status != StatusCode::OK && parts.status == StatusCode::OK {
                parts.status = status;
            }
            return Response::from_parts(parts, body);
        }
    };
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A `name\0value\0...` list as a header map, each value a slice of `joined` (no copy);
/// `None` when a name or value is invalid or the list is cut short.
fn parse_headers(joined: &Bytes) -> Option<http::HeaderMap> {
    let mut headers = http::HeaderMap::new();
    if joined.is_empty() {
        return Some(headers);
    }
    let mut parts = joined.split(|byte| *byte == 0);
    while let Some(name) = parts.next() {
        let value = parts.next()?;
        let name = HeaderName::from_bytes(name).ok()?;
        let value = HeaderValue::from_maybe_shared(joined.slice_ref(value)).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

fn file_options(file: &JsFile) -> FileOptions {
    FileOptions {
        disposition: if file.attachment {
            Disposition::Attachment
        } else {
            Disposition::Inline
        },
        filename: file.filename.clone(),
        media_type: file.media_type.clone(),
        cache_control: None,
    }
}
