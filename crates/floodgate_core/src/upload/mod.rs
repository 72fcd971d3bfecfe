//! `StreamingApp.uploads(prefix, { dir })`: a raw PUT/POST body streamed to a file, atomically;
//! a `multipart/form-data` POST to the mount itself is a form whose files are stored the same
//! way (`multipart.rs`).
//!
//! The body goes to a temporary dotfile beside the target (never served: dotfiles are refused)
//! and is renamed into place only after the last byte arrived and was flushed to disk
//! (`upload_sink`). Any failure — too large, too slow, client gone, server closing — drops the
//! temporary file, which removes it. Memory stays a few batches, whatever the size.
//!
//! A crash (`kill -9`, power loss) leaves its temporary behind: when the server listens, each
//! uploads mount removes the temporaries in its folder that match its own name pattern exactly
//! and are older than `uploadTimeout` (`remove_stale`), counted in `staleUploadsRemoved`.

pub(crate) mod multipart;
pub(crate) mod reader;
pub(crate) mod running_hash;
pub(crate) mod sink;
pub(crate) mod tus;

use crate::config::{MultipartConfig, UploadsConfig};
use crate::delivery::body::{self, Body};
use crate::files::safe_path;
use crate::limit::bucket::Shaper;
use crate::metrics::{Metrics, Rejection};
use crate::upload::multipart::UploadHook;
use crate::upload::reader::{BodyReader, Stop};
use crate::upload::sink::{SinkError, Stored, UploadSink};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct UploadsMount {
    dir: PathBuf,
    overwrite: bool,
    fsync: bool,
    multipart: MultipartConfig,
    on_upload: Option<u32>,
    resumable: Option<Arc<tus::Resumable>>,
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
    /// `ClientKey` text of who is uploading: what per-user caps count.
    pub owner: String,
}

impl UploadsMount {
    pub fn new(config: UploadsConfig, on_upload: Option<u32>) -> Result<Self, String> {
        config.multipart.validate()?;
        if let Some(resumable) = &config.resumable {
            resumable.validate()?;
        }
        let dir = std::fs::canonicalize(&config.dir)
            .map_err(|err| format!("uploads: dir {:?} cannot be used: {err}", config.dir))?;
        if !dir.is_dir() {
            return Err(format!("uploads: dir {:?} is not a folder", config.dir));
        }
        Ok(Self {
            overwrite: config.overwrite,
            fsync: config.fsync,
            multipart: config.multipart,
            on_upload,
            resumable: config.resumable.map(|resumable| {
                Arc::new(tus::Resumable::new(
                    dir.clone(),
                    resumable,
                    config.overwrite,
                    config.fsync,
                ))
            }),
            dir,
        })
    }

    /// The JS `onUpload` hook of multipart requests, as a handler id.
    pub fn on_upload(&self) -> Option<u32> {
        self.on_upload
    }

    /// A raw body to `rel`, or a `multipart/form-data` POST to the mount itself.
    pub async fn receive<B>(
        &self,
        request: Request<B>,
        rel: &str,
        limits: UploadLimits,
        hook: Option<UploadHook<'_>>,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin,
    {
        if let Some(resumable) = self.resumable.as_ref().filter(|_| tus::is_tus(&request)) {
            return resumable.handle(request, rel, limits).await;
        }
        if request.method() == Method::POST
            && rel.trim_matches('/').is_empty()
            && multipart::is_form_data(request.headers().get(header::CONTENT_TYPE))
        {
            return multipart::receive(self, request, limits, hook).await;
        }
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
                .rand_bytes(TEMP_RANDOM_LEN)
                .suffix(TEMP_SUFFIX)
                .tempfile_in(folder)
                .ok()
        }) else {
            return server_error();
        };
        let sink = UploadSink::start(temp, self.fsync);
        if let Err(stop) = receive_body(request.into_body(), &sink, &limits).await {
            sink.abandon().await;
            return match stop {
                Stop::Rejected(reason) => reject(&limits.metrics, reason),
                Stop::ClientGone => body::text(StatusCode::BAD_REQUEST, "Upload aborted\n"),
                Stop::Disk => server_error(),
            };
        }
        match sink.commit(target.clone(), self.overwrite).await {
            Ok(stored) => self.created(&target, stored),
            Err(SinkError::Exists) => conflict(),
            Err(SinkError::Io | SinkError::Abandoned) => server_error(),
        }
    }

    /// Removes, on a blocking worker, the temporaries a crashed instance left in this mount's
    /// folder: regular files named exactly as `receive` names them (`is_own_temp`) whose last
    /// write is older than `upload_timeout`. No live upload's temporary is that old: an upload
    /// ends at `upload_timeout` and writes its file as bytes arrive. Subfolders, other files
    /// and fresh temporaries (an instance sharing the folder) are left alone. The count reaches
    /// `metrics` when the scan is done, shortly after `listen`: a large folder never holds up
    /// listening (the binding's `listen` is synchronous on the JS thread).
    pub fn remove_stale(&self, upload_timeout: Duration, metrics: Arc<Metrics>) {
        if let Some(resumable) = &self.resumable {
            resumable.start();
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            metrics.stale_uploads_removed(remove_stale_temps(&dir, upload_timeout));
        });
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

/// A temporary file is `.NAME.` + this many of tempfile's random characters (ASCII letters and
/// digits) + `.upload`; set here rather than left to tempfile's default, since
/// `is_own_temp` must recognize exactly these names.
pub(crate) const TEMP_RANDOM_LEN: usize = 6;
pub(crate) const TEMP_SUFFIX: &str = ".upload";

/// Whether `name` is one of the temporaries `receive` makes: `.NAME.XXXXXX.upload`, NAME a
/// name an upload can have (`safe_path::is_plain_segment`: no leading dot, no separators).
fn is_own_temp(name: &str) -> bool {
    let Some(inner) = name
        .strip_prefix('.')
        .and_then(|name| name.strip_suffix(TEMP_SUFFIX))
    else {
        return false;
    };
    let Some(split) = inner.len().checked_sub(TEMP_RANDOM_LEN) else {
        return false;
    };
    if !inner.as_bytes()[split..]
        .iter()
        .all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    // The random part is ASCII, so `split` is a character boundary.
    inner[..split]
        .strip_suffix('.')
        .is_some_and(safe_path::is_plain_segment)
}

/// Removes the files of `dir` (not its subfolders) that `is_own_temp` recognizes and that were
/// last written more than `older_than` ago; returns how many went.
fn remove_stale_temps(dir: &Path, older_than: Duration) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_own_temp) {
            continue;
        }
        // Not followed: a symbolic link named like a temporary is not one.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let stale = meta.file_type().is_file()
            && meta
                .modified()
                .ok()
                .and_then(|written| now.duration_since(written).ok())
                .is_some_and(|age| age > older_than);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

pub(crate) fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Reads the body into the sink; small frames are gathered into batches of a few chunks to
/// spare write calls.
async fn receive_body<B>(body: B, sink: &UploadSink, limits: &UploadLimits) -> Result<(), Stop>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    let batch_size = (limits.chunk_size * 4) as usize;
    let mut batch = BytesMut::new();
    let mut reader = BodyReader::new(body, limits);
    while let Some(data) = reader.next().await? {
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
    body::closing(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_temporaries_are_recognized_exactly() {
        for ours in [
            ".report.pdf.Ab3xZ9.upload",
            ".a.000000.upload",
            ".été.zzzzzz.upload",
        ] {
            assert!(is_own_temp(ours), "{ours}");
        }
        for other in [
            ".hidden",
            ".report.pdf.Ab3xZ.upload",
            ".report.pdf.Ab3xZ99.upload",
            ".report.pdf.Ab-xZ9.upload",
            ".report.pdf.Ab3xZ9.uploads",
            "..report.pdf.Ab3xZ9.upload",
            "report.pdf.Ab3xZ9.upload",
            ".Ab3xZ9.upload",
            "..Ab3xZ9.upload",
            ".reportAb3xZ9.upload",
            ".a:b.Ab3xZ9.upload",
            ".upload",
        ] {
            assert!(!is_own_temp(other), "{other}");
        }
    }

    #[test]
    fn a_temporary_made_by_receive_matches() {
        let dir = tempfile::tempdir().unwrap();
        let temp = tempfile::Builder::new()
            .prefix(&temp_prefix(&dir.path().join("name.bin")))
            .rand_bytes(TEMP_RANDOM_LEN)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir.path())
            .unwrap();
        let name = temp.path().file_name().unwrap().to_str().unwrap();
        assert!(is_own_temp(name), "{name}");
    }

    #[test]
    fn only_stale_own_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let make = |name: &str, stale: bool| {
            let path = dir.path().join(name);
            let file = std::fs::File::create(&path).unwrap();
            if stale {
                file.set_modified(old).unwrap();
            }
        };
        make(".a.bin.Ab3xZ9.upload", true);
        make(".b.bin.Ab3xZ9.upload", false);
        make(".hidden", true);
        make("plain.Ab3xZ9.upload", true);
        std::fs::create_dir(dir.path().join(".c.bin.Ab3xZ9.upload")).unwrap();
        assert_eq!(remove_stale_temps(dir.path(), Duration::from_secs(60)), 1);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".b.bin.Ab3xZ9.upload",
                ".c.bin.Ab3xZ9.upload",
                ".hidden",
                "plain.Ab3xZ9.upload"
            ]
        );
        assert_eq!(
            remove_stale_temps(&dir.path().join("missing"), Duration::ZERO),
            0
        );
    }
}
