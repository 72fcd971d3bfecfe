//! `StreamingApp.uploads(prefix, { dir })`: a raw PUT/POST body streamed to a file, atomically.
//!
//! The body goes to a temporary dotfile beside the target (never served: dotfiles are refused)
//! and is renamed into place only after the last byte arrived and was flushed to disk
//! (`upload_sink`). Any failure — too large, too slow, client gone, server closing — drops the
//! temporary file, which removes it. Memory stays a few batches, whatever the size.

pub(crate) mod sink;

use crate::config::UploadsConfig;
use crate::conn::conformance::malformed_body;
use crate::delivery::body::{self, Body};
use crate::files::safe_path;
use crate::limit::bucket::{piece_size, Shaper};
use crate::metrics::{Metrics, Rejection};
use crate::upload::sink::{SinkError, Stored, UploadSink};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct UploadsMount {
    dir: PathBuf,
    overwrite: bool,
    fsync: bool,
}

/// The app's limits for one upload.
pub struct UploadLimits {
    pub max_size: u64,
    pub read_timeout: Duration,
    pub upload_timeout: Duration,
    pub min_rate: u64,
    pub min_rate_grace: Duration,
    pub chunk_size: u64,
    pub bandwidth: u64,
    pub shaper: Shaper,
    pub metrics: Arc<Metrics>,
}

/// Why an upload stopped early.
enum Stop {
    Rejected(Rejection),
    ClientGone,
    Disk,
}

impl UploadsMount {
    pub fn new(config: UploadsConfig) -> Result<Self, String> {
        let dir = std::fs::canonicalize(&config.dir)
            .map_err(|err| format!("uploads: dir {:?} cannot be used: {err}", config.dir))?;
        if !dir.is_dir() {
            return Err(format!("uploads: dir {:?} is not a folder", config.dir));
        }
        Ok(Self {
            dir,
            overwrite: config.overwrite,
            fsync: config.fsync,
        })
    }

    pub async fn receive<B>(
        &self,
        request: Request<B>,
        rel: &str,
        limits: UploadLimits,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
    {
        if request.method() != Method::PUT && request.method() != Method::POST {
            limits.metrics.reject(Rejection::MethodNotAllowed);
            return body::method_not_allowed("PUT, POST");
        }
        let Ok(target) = safe_path::resolve_new(&self.dir, rel) else {
            limits.metrics.reject(Rejection::NotFound);
            return body::text(StatusCode::NOT_FOUND, "Not Found\n");
        };
        if !self.overwrite && target.exists() {
            return conflict();
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limits.max_size) {
            // Answered before a byte of the body is read; with `Expect: 100-continue` the client
            // gets this instead of `100 Continue`, since hyper only sends that on the first read.
            return reject(&limits.metrics, Rejection::BodyTooLarge);
        }
        let Some(temp) = target.parent().and_then(|folder| {
            tempfile::Builder::new()
                .prefix(&temp_prefix(&target))
                .suffix(".upload")
                .tempfile_in(folder)
                .ok()
        }) else {
            return server_error();
        };
        let sink = UploadSink::start(temp, target.clone(), self.overwrite, self.fsync);
        if let Err(stop) = receive_body(request.into_body(), &sink, &limits).await {
            sink.abandon().await;
            return match stop {
                Stop::Rejected(reason) => reject(&limits.metrics, reason),
                Stop::ClientGone => body::text(StatusCode::BAD_REQUEST, "Upload aborted\n"),
                Stop::Disk => server_error(),
            };
        }
        match sink.commit().await {
            Ok(stored) => self.created(&target, stored),
            Err(SinkError::Exists) => conflict(),
            Err(SinkError::Io | SinkError::Abandoned) => server_error(),
        }
    }

    fn created(&self, target: &Path, stored: Stored) -> Response<Body> {
        let relative = target.strip_prefix(&self.dir).unwrap_or(target);
        let name = relative
            .iter()
            .map(|part| part.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let json =
            serde_json::json!({ "name": name, "size": stored.size, "sha256": stored.sha256 });
        let mut response = Response::new(body::full(json.to_string()));
        *response.status_mut() = StatusCode::CREATED;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Reads the body frame by frame into the sink, enforcing size, time, minimum rate and
/// shaping. Small frames are gathered into batches of a few chunks to spare write calls.
async fn receive_body<B>(mut body: B, sink: &UploadSink, limits: &UploadLimits) -> Result<(), Stop>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    let started = Instant::now();
    let whole_deadline = started + limits.upload_timeout;
    let batch_size = (limits.chunk_size * 4) as usize;
    let mut batch = BytesMut::new();
    let mut size: u64 = 0;
    loop {
        let read_deadline = Instant::now() + limits.read_timeout;
        // With no more bytes, the average rate falls under the minimum at this instant.
        let rate_deadline = (limits.min_rate > 0).then(|| {
            let allowed = Duration::from_secs_f64(size as f64 / limits.min_rate as f64);
            started + allowed.max(limits.min_rate_grace)
        });
        let (deadline, reason) = [
            (read_deadline, Rejection::ReadTimeout),
            (whole_deadline, Rejection::UploadTimeout),
        ]
        .into_iter()
        .chain(rate_deadline.map(|at| (at, Rejection::UploadTooSlow)))
        .min_by_key(|(at, _)| *at)
        .expect("at least one deadline");
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Stop::Rejected(reason)),
            Ok(None) => break,
            Ok(Some(Err(err))) if malformed_body(&err) => {
                return Err(Stop::Rejected(Rejection::BadRequest))
            }
            Ok(Some(Err(_))) => return Err(Stop::ClientGone),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let received = data.len() as u64;
        size += received;
        if size > limits.max_size {
            return Err(Stop::Rejected(Rejection::BodyTooLarge));
        }
        if batch.is_empty() && data.len() >= batch_size {
            sink.write(data).await.map_err(|_| Stop::Disk)?;
        } else {
            batch.extend_from_slice(&data);
            if batch.len() >= batch_size {
                sink.write(batch.split().freeze())
                    .await
                    .map_err(|_| Stop::Disk)?;
            }
        }
        if limits.shaper.is_active() {
            let piece = piece_size(limits.chunk_size, limits.bandwidth);
            let mut owed = received;
            while owed > 0 {
                let take = owed.min(piece);
                limits.shaper.take(take).await;
                owed -= take;
            }
        }
    }
    if !batch.is_empty() {
        sink.write(batch.freeze()).await.map_err(|_| Stop::Disk)?;
    }
    Ok(())
}

fn conflict() -> Response<Body> {
    body::text(StatusCode::CONFLICT, "A file with that name exists\n")
}

fn server_error() -> Response<Body> {
    body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

/// A refusal that ends the connection: the rest of the body is not read.
fn reject(metrics: &Metrics, reason: Rejection) -> Response<Body> {
    metrics.reject(reason);
    let (status, message) = match reason {
        Rejection::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n"),
        Rejection::BadRequest => (StatusCode::BAD_REQUEST, "Bad Request\n"),
        _ => (StatusCode::REQUEST_TIMEOUT, "Request Timeout\n"),
    };
    body::text_with(
        status,
        message,
        header::CONNECTION,
        HeaderValue::from_static("close"),
    )
}
