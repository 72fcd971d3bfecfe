//! `multipart/form-data` POSTed to an uploads mount: each file part streamed to its own
//! temporary file beside its destination (hashed on the way, `FormSink`), fields collected up
//! to a cap, every file renamed into place only once the whole request arrived (or each at the
//! end of its own part with `atomic: 'part'`).
//!
//! Parsing is `multer`'s. It reads its input greedily into one buffer and has no limit on a
//! part's header block, so the body reaches it through `feed`: one piece per poll (the parser
//! takes what it has before more is read, so its buffer stays about one frame), and while the
//! parser looks for the next part's headers, pieces of at most `HEADER_SLICE` bytes counted
//! against `maxPartHeaderSize` — the only way to bound a header block that never ends without
//! writing the parser ourselves. The body's own limits (size, deadlines, minimum rate,
//! shaping) are `BodyReader`'s, as for raw uploads.

use crate::config::{Atomicity, Naming};
use crate::delivery::body::{self, Body};
use crate::delivery::Delivery;
use crate::files::safe_path;
use crate::js::call::{call_js, JsLimits, JsTarget};
use crate::metrics::Rejection;
use crate::upload::reader::{BodyReader, Stop};
use crate::upload::sink::{FormSink, SinkError, Written};
use crate::upload::{temp_prefix, UploadLimits, UploadsMount, TEMP_RANDOM_LEN, TEMP_SUFFIX};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Full};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Bytes handed to the parser per poll while it looks for a part's headers.
const HEADER_SLICE: usize = 1024;
/// Largest piece handed to the parser at once while it reads part data.
const DATA_SLICE: usize = 64 * 1024;
/// Bytes fed to the parser and not yet handed on (as part data or parsed headers) past which
/// no more is fed unless the parser is starving (see `feed`).
const WINDOW: u64 = 256 * 1024;
/// RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
const MAX_BOUNDARY: usize = 70;

/// The JS `onUpload(files, fields, req)` hook: called once the files are in place; its answer
/// is the response.
pub struct UploadHook<'a> {
    pub target: JsTarget<'a>,
    pub limits: JsLimits<'a>,
    pub delivery: Delivery,
}

/// Whether `content_type` is `multipart/form-data` (with or without a boundary).
pub fn is_form_data(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// How a multipart request failed.
enum Fail {
    Stop(Stop),
    /// Two files of the request with one name, or a name taken with `overwrite: false`.
    Conflict,
}

impl From<Stop> for Fail {
    fn from(stop: Stop) -> Self {
        Fail::Stop(stop)
    }
}

fn rejected(reason: Rejection) -> Fail {
    Fail::Stop(Stop::Rejected(reason))
}

/// A stop carried through the parser as its input stream's error.
#[derive(Debug)]
struct Stopped(Stop);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upload stopped: {:?}", self.0)
    }
}

impl std::error::Error for Stopped {}

/// What `feed` and the request's reader share.
struct Control {
    /// The parser is looking for the next part's headers.
    header_mode: AtomicBool,
    /// Bytes fed since it started looking.
    header_fed: AtomicU64,
    /// Past this many, the header block (with the boundary line before it) is too large.
    header_cap: u64,
    /// The first `--boundary` went by: past the cap before it, the boundary never came
    /// (malformed); after it, a header block is too large.
    delimiter_seen: AtomicBool,
    /// Why the body stopped, as `feed` saw it (the parser may report it as an error of its own).
    stopped: std::sync::Mutex<Option<Stop>>,
    /// Bytes fed to the parser, and bytes it handed on (part data, header blocks and their
    /// boundary lines, counted as sent).
    fed: AtomicU64,
    consumed: AtomicU64,
    /// The parser's last poll could not produce anything with what it had.
    starving: AtomicBool,
}

impl Control {
    fn record(&self, stop: Stop) -> Stopped {
        *self
            .stopped
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(stop);
        Stopped(stop)
    }

    /// What a parser error means: the body's own stop if there was one, else malformed input.
    fn fail(&self, _error: multer::Error) -> Fail {
        match *self
            .stopped
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
        {
            Some(stop) => Fail::Stop(stop),
            None => rejected(Rejection::MultipartMalformed),
        }
    }
}

/// The body as the parser's input: one piece per poll (see the module docs).
fn feed<'r, B>(
    reader: BodyReader<'r, B>,
    control: &'r Control,
    delimiter: Vec<u8>,
) -> impl Stream<Item = Result<Bytes, Stopped>> + Send + 'r
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'r,
{
    // Before the first delimiter is seen, what was fed is kept (at most `header_cap` bytes) to
    // tell a boundary that never comes (malformed) from a first header block that is too large.
    let start = (reader, Bytes::new(), BytesMut::new(), delimiter);
    futures_util::stream::unfold(Some(start), move |state| async move {
        let (mut reader, mut pending, mut preamble, delimiter) = state?;
        // The parser reads until its input is pending: this hands it one piece per poll. And
        // its buffer is a `BytesMut` used as a queue, which doubles its allocation whenever
        // more arrives while more is unread than was consumed: fed faster than it parses
        // (small parts: a step per poll), it grew by about the body's size. So past `WINDOW`
        // unread, nothing more is fed until it starves.
        loop {
            tokio::task::yield_now().await;
            let unread = control
                .fed
                .load(Relaxed)
                .saturating_sub(control.consumed.load(Relaxed));
            if unread < WINDOW || control.starving.swap(false, Relaxed) {
                break;
            }
        }
        if pending.is_empty() {
            match reader.next().await {
                Ok(Some(data)) => pending = data,
                Ok(None) => return None,
                Err(stop) => return Some((Err(control.record(stop)), None)),
            }
        }
        let piece = if control.header_mode.load(Relaxed) {
            let piece = pending.split_to(pending.len().min(HEADER_SLICE));
            let fed =
                control.header_fed.fetch_add(piece.len() as u64, Relaxed) + piece.len() as u64;
            if !control.delimiter_seen.load(Relaxed) {
                preamble.extend_from_slice(&piece);
                if preamble
                    .windows(delimiter.len())
                    .any(|window| window == delimiter.as_slice())
                {
                    control.delimiter_seen.store(true, Relaxed);
                    preamble = BytesMut::new();
                }
            }
            if fed > control.header_cap {
                let reason = if control.delimiter_seen.load(Relaxed) {
                    Rejection::MultipartHeaderTooLarge
                } else {
                    Rejection::MultipartMalformed
                };
                return Some((Err(control.record(Stop::Rejected(reason))), None));
            }
            piece
        } else {
            control.delimiter_seen.store(true, Relaxed);
            pending.split_to(pending.len().min(DATA_SLICE))
        };
        control.fed.fetch_add(piece.len() as u64, Relaxed);
        Some((Ok(piece), Some((reader, pending, preamble, delimiter))))
    })
}

/// Awaits a parser step, noting when a poll of it could not produce anything (`starving`).
async fn step<F: std::future::Future>(control: &Control, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Pending => {
            control.starving.store(true, Relaxed);
            std::task::Poll::Pending
        }
        ready => ready,
    })
    .await
}

/// One file of the request.
struct FileEntry {
    field: String,
    name: String,
    original: String,
    media: String,
    target: PathBuf,
    size: u64,
    sha256: String,
    /// Written but not yet renamed (`atomic: 'request'`); dropping it deletes the temporary.
    pending: Option<Written>,
}

#[derive(Default)]
struct Form {
    files: Vec<FileEntry>,
    fields: Vec<(String, String)>,
}

pub async fn receive<B>(
    mount: &UploadsMount,
    request: Request<B>,
    limits: UploadLimits,
    hook: Option<UploadHook<'_>>,
) -> Response<Body>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin,
{
    let metrics = &limits.metrics;
    let boundary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok())
        .filter(|boundary| (1..=MAX_BOUNDARY).contains(&boundary.len()));
    let Some(boundary) = boundary else {
        return refuse(metrics, Rejection::MultipartMalformed);
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_size) {
        return refuse(metrics, Rejection::BodyTooLarge);
    }
    let (parts, body) = request.into_parts();
    let control = Control {
        header_mode: AtomicBool::new(true),
        header_fed: AtomicU64::new(0),
        // The boundary line (`--`, boundary, CRLF) and two slices of slack: the parser takes
        // one more piece before it looks at the last. The block itself is measured exactly
        // once parsed (`read_form`).
        header_cap: mount.multipart.max_part_header_size
            + boundary.len() as u64
            + 4
            + 2 * HEADER_SLICE as u64,
        delimiter_seen: AtomicBool::new(false),
        stopped: std::sync::Mutex::new(None),
        fed: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        starving: AtomicBool::new(false),
    };
    let mut form = Form::default();
    let sink = FormSink::start(mount.fsync);
    let read = read_form(mount, &sink, body, &boundary, &limits, &control, &mut form).await;
    // Waits until an unfinished temporary is gone, so nothing is left once the answer leaves.
    sink.close().await;
    let stored = match read {
        Ok(()) => match mount.multipart.atomic {
            Atomicity::Part => Ok(form),
            Atomicity::Request => persist_all(form, mount.overwrite).await,
        },
        Err(fail) => Err(fail),
    };
    let form = match stored {
        Ok(form) => form,
        Err(Fail::Conflict) => {
            return body::closing(
                StatusCode::CONFLICT,
                "A file with that name exists, or two files of the form share one\n",
            )
        }
        Err(Fail::Stop(Stop::Rejected(reason))) => return refuse(metrics, reason),
        Err(Fail::Stop(Stop::ClientGone)) => {
            return body::text(StatusCode::BAD_REQUEST, "Upload aborted\n")
        }
        Err(Fail::Stop(Stop::Disk)) => {
            return body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
        }
    };
    let listing = listing(&form).to_string();
    match hook {
        None => {
            let mut response = Response::new(body::full(listing));
            *response.status_mut() = StatusCode::CREATED;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Some(hook) => {
            // The hook sees the request's method, URL and headers, with the listing as its body.
            let mut headers = parts.headers;
            headers.remove(header::TRANSFER_ENCODING);
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(listing.len()));
            let json = Full::new(Bytes::from(listing)).map_err(|never| match never {});
            let mut js = Request::new(json);
            *js.method_mut() = parts.method;
            *js.uri_mut() = parts.uri;
            *js.headers_mut() = headers;
            call_js(js, hook.target, hook.limits, hook.delivery).await
        }
    }
}

/// `{ files: [{ field, name, originalName, size, sha256, type }], fields: { name: value } }`; a
/// field sent more than once has an array of its values.
fn listing(form: &Form) -> serde_json::Value {
    let files: Vec<_> = form
        .files
        .iter()
        .map(|file| {
            serde_json::json!({
                "field": file.field,
                "name": file.name,
                "originalName": file.original,
                "size": file.size,
                "sha256": file.sha256,
                "type": file.media,
            })
        })
        .collect();
    let mut fields = serde_json::Map::new();
    for (name, value) in &form.fields {
        match fields.get_mut(name) {
            None => {
                fields.insert(name.clone(), value.clone().into());
            }
            Some(serde_json::Value::Array(values)) => values.push(value.clone().into()),
            Some(first) => *first = serde_json::json!([first.take(), value]),
        }
    }
    serde_json::json!({ "files": files, "fields": fields })
}

async fn read_form<B>(
    mount: &UploadsMount,
    sink: &FormSink,
    body: B,
    boundary: &str,
    limits: &UploadLimits,
    control: &Control,
    form: &mut Form,
) -> Result<(), Fail>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin,
{
    let config = &mount.multipart;
    let delimiter = format!("--{boundary}").into_bytes();
    let input = feed(BodyReader::new(body, limits), control, delimiter);
    let mut parser = multer::Multipart::new(input, boundary);
    let (mut parts, mut files, mut fields) = (0u32, 0u32, 0u32);
    let mut names = HashSet::new();
    loop {
        control.header_fed.store(0, Relaxed);
        control.header_mode.store(true, Relaxed);
        let next = parser
            .next_field()
            .await
            .map_err(|error| control.fail(error))?;
        control.header_mode.store(false, Relaxed);
        let Some(mut field) = next else {
            return Ok(());
        };
        // The header block as sent (`name: value` CRLF each): `feed` bounds what is buffered
        // while it is looked for, this the block itself, however it arrived.
        let header_size: usize = field
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if header_size as u64 > config.max_part_header_size {
            return Err(rejected(Rejection::MultipartHeaderTooLarge));
        }
        // CRLF `--boundary` CRLF, the block, CRLF.
        control
            .consumed
            .fetch_add((header_size + boundary.len() + 8) as u64, Relaxed);
        parts += 1;
        if parts > config.max_parts {
            return Err(rejected(Rejection::MultipartTooManyParts));
        }
        let form_data = field
            .headers()
            .get(header::CONTENT_DISPOSITION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("form-data"));
        let Some(name) = field.name().filter(|_| form_data).map(str::to_string) else {
            return Err(rejected(Rejection::MultipartMalformed));
        };
        match field.file_name().map(str::to_string) {
            // A file input left empty: browsers send the part with an empty file name.
            Some(original) if original.is_empty() => {
                drain(&mut field, config.max_field_size, control).await?;
            }
            Some(original) => {
                files += 1;
                if files > config.max_files {
                    return Err(rejected(Rejection::MultipartTooManyFiles));
                }
                let media = field
                    .content_type()
                    .map(|media| media.essence_str().to_ascii_lowercase())
                    .unwrap_or_else(|| "application/octet-stream".to_string());
                if !media_allowed(&config.allowed_types, &media) {
                    return Err(rejected(Rejection::UnsupportedMediaType));
                }
                let stored = match config.naming {
                    Naming::Sanitized => sanitize(&original),
                    Naming::Random => random_name(&original),
                };
                if !names.insert(stored.clone()) {
                    return Err(Fail::Conflict);
                }
                let target = mount.dir.join(&stored);
                match std::fs::symlink_metadata(&target) {
                    Ok(meta) if !mount.overwrite || !meta.is_file() => return Err(Fail::Conflict),
                    _ => {}
                }
                let (size, written) =
                    receive_file(mount, sink, &mut field, &target, limits, control).await?;
                let mut entry = FileEntry {
                    field: name,
                    name: stored,
                    original,
                    media,
                    target,
                    size,
                    sha256: written.sha256.clone(),
                    pending: Some(written),
                };
                if config.atomic == Atomicity::Part {
                    let written = entry.pending.take().expect("just written");
                    let (target, overwrite) = (entry.target.clone(), mount.overwrite);
                    tokio::task::spawn_blocking(move || written.persist(&target, overwrite))
                        .await
                        .unwrap_or(Err(SinkError::Io))
                        .map_err(sink_fail)?;
                }
                form.files.push(entry);
            }
            None => {
                fields += 1;
                if fields > config.max_fields {
                    return Err(rejected(Rejection::MultipartTooManyFields));
                }
                let mut value = BytesMut::new();
                while let Some(chunk) = step(control, field.chunk())
                    .await
                    .map_err(|error| control.fail(error))?
                {
                    control.consumed.fetch_add(chunk.len() as u64, Relaxed);
                    if (value.len() + chunk.len()) as u64 > config.max_field_size {
                        return Err(rejected(Rejection::MultipartFieldTooLarge));
                    }
                    value.extend_from_slice(&chunk);
                }
                form.fields
                    .push((name, String::from_utf8_lossy(&value).into_owned()));
            }
        }
    }
}

/// Reads and drops a part's data (at most `cap` bytes).
async fn drain(field: &mut multer::Field<'_>, cap: u64, control: &Control) -> Result<(), Fail> {
    let mut size = 0u64;
    while let Some(chunk) = step(control, field.chunk())
        .await
        .map_err(|error| control.fail(error))?
    {
        control.consumed.fetch_add(chunk.len() as u64, Relaxed);
        size += chunk.len() as u64;
        if size > cap {
            return Err(rejected(Rejection::MultipartFieldTooLarge));
        }
    }
    Ok(())
}

fn sink_fail(error: SinkError) -> Fail {
    match error {
        SinkError::Exists => Fail::Conflict,
        SinkError::Io | SinkError::Abandoned => Fail::Stop(Stop::Disk),
    }
}

/// Streams one file part to a temporary file beside `target` through the request's sink; on a
/// failure the caller closes the sink, which removes the temporary.
async fn receive_file(
    mount: &UploadsMount,
    sink: &FormSink,
    field: &mut multer::Field<'_>,
    target: &std::path::Path,
    limits: &UploadLimits,
    control: &Control,
) -> Result<(u64, Written), Fail> {
    let temp = tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .rand_bytes(TEMP_RANDOM_LEN)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&mount.dir)
        .map_err(|_| Fail::Stop(Stop::Disk))?;
    sink.open(temp).await.map_err(sink_fail)?;
    let batch_size = (limits.chunk_size * 4) as usize;
    let max_file = mount.multipart.max_file_size;
    let mut size = 0u64;
    let mut batch = BytesMut::new();
    while let Some(chunk) = step(control, field.chunk())
        .await
        .map_err(|error| control.fail(error))?
    {
        control.consumed.fetch_add(chunk.len() as u64, Relaxed);
        size += chunk.len() as u64;
        if max_file > 0 && size > max_file {
            return Err(rejected(Rejection::FileTooLarge));
        }
        if batch.is_empty() && chunk.len() >= batch_size {
            sink.write(chunk).await.map_err(sink_fail)?;
        } else {
            batch.extend_from_slice(&chunk);
            if batch.len() >= batch_size {
                sink.write(batch.split().freeze())
                    .await
                    .map_err(sink_fail)?;
            }
        }
    }
    if !batch.is_empty() {
        sink.write(batch.freeze()).await.map_err(sink_fail)?;
    }
    Ok((size, sink.finish().await.map_err(sink_fail)?))
}

/// Renames every file of the request into place (`atomic: 'request'`), on a blocking worker.
/// If one rename fails, the files this request created before it are removed again (names it
/// replaced with `overwrite` cannot be given back their old content).
async fn persist_all(mut form: Form, overwrite: bool) -> Result<Form, Fail> {
    let pending: Vec<(PathBuf, Written)> = form
        .files
        .iter_mut()
        .filter_map(|file| Some((file.target.clone(), file.pending.take()?)))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut created = Vec::new();
        for (target, written) in pending {
            let existed = target.exists();
            if let Err(error) = written.persist(&target, overwrite) {
                for path in created {
                    let _ = std::fs::remove_file(path);
                }
                return Err(sink_fail(error));
            }
            if !existed {
                created.push(target);
            }
        }
        Ok(())
    })
    .await
    .unwrap_or(Err(Fail::Stop(Stop::Disk)))?;
    Ok(form)
}

/// Whether `media` (lowercase `type/subtype`) is one of `allowed` (`type/subtype` or
/// `type/*`); an empty list allows every type.
fn media_allowed(allowed: &[String], media: &str) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_suffix("/*") {
                Some(kind) => media
                    .split_once('/')
                    .is_some_and(|(media_kind, _)| media_kind == kind),
                None => pattern == media,
            }
        })
}

/// Longest stored name, in bytes (most file systems allow 255; the temporary adds a dot,
/// eight random characters and `.upload`).
const MAX_NAME: usize = 200;

/// A client's file name made safe to store: its last path segment (either separator), without
/// control characters (NUL among them) or characters Windows refuses, without leading dots or
/// surrounding spaces, at most `MAX_NAME` bytes (the extension kept); `file` when nothing is
/// left.
pub fn sanitize(original: &str) -> String {
    let last = original.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*'))
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim_start();
    let name = if trimmed.len() <= MAX_NAME {
        trimmed.to_string()
    } else {
        let extension = trimmed
            .rsplit_once('.')
            .map(|(_, ext)| ext)
            .filter(|ext| ext.len() <= 16)
            .unwrap_or_default();
        let keep = MAX_NAME
            - if extension.is_empty() {
                0
            } else {
                extension.len() + 1
            };
        let mut cut = keep;
        while !trimmed.is_char_boundary(cut) {
            cut -= 1;
        }
        let stem = trimmed[..cut].trim_end();
        if extension.is_empty() {
            stem.to_string()
        } else {
            format!("{stem}.{extension}")
        }
    };
    if safe_path::is_plain_segment(&name) {
        name
    } else {
        "file".to_string()
    }
}

/// 32 random hexadecimal characters, plus the original's extension when it is short and
/// alphanumeric.
fn random_name(original: &str) -> String {
    let mut bytes = [0u8; 16];
    // The system's generator; should it fail, a clock-derived name still differs per request.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    let mut name: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let extension = sanitize(original)
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|ext| {
            (1..=16).contains(&ext.len()) && ext.chars().all(|c| c.is_ascii_alphanumeric())
        });
    if let Some(extension) = extension {
        name.push('.');
        name.push_str(&extension);
    }
    name
}

/// A refusal that ends the connection (the rest of the body is not read), counted by reason.
fn refuse(metrics: &crate::metrics::Metrics, reason: Rejection) -> Response<Body> {
    metrics.reject(reason);
    let (status, message) = match reason {
        Rejection::BodyTooLarge
        | Rejection::FileTooLarge
        | Rejection::MultipartFieldTooLarge
        | Rejection::MultipartTooManyFiles
        | Rejection::MultipartTooManyFields
        | Rejection::MultipartTooManyParts => (StatusCode::PAYLOAD_TOO_LARGE, reason_text(reason)),
        Rejection::MultipartHeaderTooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason_text(reason),
        ),
        Rejection::UnsupportedMediaType => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, reason_text(reason))
        }
        Rejection::MultipartMalformed | Rejection::BadRequest => {
            (StatusCode::BAD_REQUEST, reason_text(reason))
        }
        _ => (StatusCode::REQUEST_TIMEOUT, reason_text(reason)),
    };
    body::closing(status, message)
}

fn reason_text(reason: Rejection) -> &'static str {
    match reason {
        Rejection::BodyTooLarge => "Payload Too Large\n",
        Rejection::FileTooLarge => "File too large\n",
        Rejection::MultipartFieldTooLarge => "Form field too large\n",
        Rejection::MultipartTooManyFiles => "Too many files\n",
        Rejection::MultipartTooManyFields => "Too many form fields\n",
        Rejection::MultipartTooManyParts => "Too many form parts\n",
        Rejection::MultipartHeaderTooLarge => "Form part header too large\n",
        Rejection::UnsupportedMediaType => "Unsupported file type\n",
        Rejection::MultipartMalformed => "Malformed multipart body\n",
        Rejection::BadRequest => "Bad Request\n",
        _ => "Request Timeout\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_sanitised() {
        for (original, stored) in [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
            (".htaccess", "htaccess"),
            ("...", "file"),
            ("", "file"),
            ("a\0b\r\n.txt", "ab.txt"),
            ("  spaced .txt ", "spaced .txt"),
            ("what?<>|*\".txt", "what.txt"),
            ("dir/", "file"),
            ("été.png", "été.png"),
        ] {
            assert_eq!(sanitize(original), stored, "{original:?}");
        }
        let long = format!("{}.tar", "é".repeat(300));
        let stored = sanitize(&long);
        assert!(stored.len() <= MAX_NAME, "{}", stored.len());
        assert!(stored.ends_with(".tar"));
        assert!(safe_path::is_plain_segment(&stored));
    }

    #[test]
    fn random_names_keep_a_plain_extension_only() {
        let a = random_name("photo.JPG");
        assert_eq!(a.len(), 32 + 4);
        assert!(a.ends_with(".jpg"));
        assert_ne!(random_name("x"), random_name("x"));
        assert_eq!(random_name("evil.ph p").len(), 32);
    }

    #[test]
    fn media_types_match_exactly_or_by_kind() {
        let allowed = vec!["image/*".to_string(), "application/PDF".to_string()];
        assert!(media_allowed(&allowed, "image/png"));
        assert!(media_allowed(&allowed, "application/pdf"));
        assert!(!media_allowed(&allowed, "text/html"));
        assert!(!media_allowed(&allowed, "imagex/png"));
        assert!(media_allowed(&[], "text/html"));
    }

    #[test]
    fn form_data_is_recognised() {
        let value = |text: &'static str| HeaderValue::from_static(text);
        assert!(is_form_data(Some(&value(
            "multipart/form-data; boundary=x"
        ))));
        assert!(is_form_data(Some(&value("Multipart/Form-Data"))));
        assert!(!is_form_data(Some(&value("multipart/mixed; boundary=x"))));
        assert!(!is_form_data(None));
    }
}
