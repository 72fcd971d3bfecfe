//! `StreamingApp.uploads(prefix, { dir })`: a raw PUT/POST body streamed to a file, atomically.
//!
//! The body goes to a temporary dotfile beside the target (never served: dotfiles are refused)
//! and is renamed into place only after the last byte arrived and was flushed to disk. Any
//! failure — too large, too slow, client gone, server closing — drops the temporary file, which
//! removes it. Memory stays one body frame, whatever the size.

use crate::body::{self, Body};
use crate::config::UploadsConfig;
use crate::limit::bucket::{piece_size, Shaper};
use crate::metrics::{Metrics, Rejection};
use crate::safe_path;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct UploadsMount {
    dir: PathBuf,
    overwrite: bool,
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
        })
    }

    pub async fn receive<B>(
        &self,
        request: Request<B>,
        rel: &str,
        limits: UploadLimits,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Unpin,
    {
        if request.method() != Method::PUT && request.method() != Method::POST {
            limits.metrics.reject(Rejection::MethodNotAllowed);
            let mut response = body::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("PUT, POST"));
            return response;
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
        let Some(folder) = target.parent() else {
            return reject(&limits.metrics, Rejection::NotFound);
        };
        let temp = match tempfile::Builder::new()
            .prefix(&temp_prefix(&target))
            .suffix(".upload")
            .tempfile_in(folder)
        {
            Ok(temp) => temp,
            Err(_) => {
                return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            }
        };
        match receive_body(request.into_body(), temp, &limits).await {
            Ok((temp, size, sha256)) => self.commit(temp, &target, size, sha256).await,
            Err(Stop::Rejected(reason)) => reject(&limits.metrics, reason),
            Err(Stop::ClientGone) => body::text(StatusCode::BAD_REQUEST, "Upload aborted\n"),
            Err(Stop::Disk) => {
                body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            }
        }
    }

    /// Flushes the complete temporary file to disk and renames it into place.
    async fn commit(
        &self,
        temp: tempfile::NamedTempFile,
        target: &Path,
        size: u64,
        sha256: String,
    ) -> Response<Body> {
        let destination = target.to_path_buf();
        let overwrite = self.overwrite;
        let persisted = tokio::task::spawn_blocking(move || {
            temp.as_file().sync_data()?;
            if overwrite {
                temp.persist(&destination)
                    .map(drop)
                    .map_err(|err| err.error)
            } else {
                // Link-then-unlink: fails atomically if the name appeared meanwhile.
                temp.persist_noclobber(&destination)
                    .map(drop)
                    .map_err(|err| err.error)
            }
        })
        .await;
        match persisted {
            Ok(Ok(())) => {}
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::AlreadyExists => return conflict(),
            _ => return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n"),
        }
        let name = self.relative_name(target);
        let json = serde_json::json!({ "name": name, "size": size, "sha256": sha256 }).to_string();
        let mut response = Response::new(body::full(json));
        *response.status_mut() = StatusCode::CREATED;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    fn relative_name(&self, target: &Path) -> String {
        let relative = target.strip_prefix(&self.dir).unwrap_or(target);
        relative
            .iter()
            .map(|part| part.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Reads the body frame by frame into `temp`, enforcing size, time, minimum rate and shaping.
async fn receive_body<B>(
    mut body: B,
    mut temp: tempfile::NamedTempFile,
    limits: &UploadLimits,
) -> Result<(tempfile::NamedTempFile, u64, String), Stop>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let started = Instant::now();
    let whole_deadline = started + limits.upload_timeout;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    loop {
        let now = Instant::now();
        let read_deadline = now + limits.read_timeout;
        // With no more bytes, the average rate falls under the minimum at this instant.
        let rate_deadline = (limits.min_rate > 0).then(|| {
            let allowed = Duration::from_secs_f64(size as f64 / limits.min_rate as f64)
                .max(limits.min_rate_grace);
            started + allowed
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
            Ok(Some(Err(_))) => return Err(Stop::ClientGone),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limits.max_size {
            return Err(Stop::Rejected(Rejection::BodyTooLarge));
        }
        hasher.update(&data);
        temp.write_all(&data).map_err(|_| Stop::Disk)?;
        if limits.shaper.is_active() {
            let piece = piece_size(limits.chunk_size, limits.bandwidth);
            let mut owed = data.len() as u64;
            while owed > 0 {
                let take = owed.min(piece);
                limits.shaper.take(take).await;
                owed -= take;
            }
        }
    }
    temp.flush().map_err(|_| Stop::Disk)?;
    Ok((temp, size, format!("{:x}", hasher.finalize())))
}

fn conflict() -> Response<Body> {
    body::text(StatusCode::CONFLICT, "A file with that name exists\n")
}

/// A refusal that ends the connection: the rest of the body is not read.
fn reject(metrics: &Metrics, reason: Rejection) -> Response<Body> {
    metrics.reject(reason);
    let (status, message) = match reason {
        Rejection::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n"),
        Rejection::NotFound => (StatusCode::NOT_FOUND, "Not Found\n"),
        _ => (StatusCode::REQUEST_TIMEOUT, "Request Timeout\n"),
    };
    let mut response = body::text(status, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
