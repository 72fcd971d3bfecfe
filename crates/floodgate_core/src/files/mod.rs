//! `StreamingApp.files(prefix, { root })`: GET/HEAD of files under a root folder, with
//! conditional requests, single and multiple ranges, Content-Disposition, and the app's
//! shaping and deadlines applied while streaming.

pub(crate) mod disposition;
pub(crate) mod range;
pub(crate) mod safe_path;

use crate::config::{Disposition, FilesConfig};
use crate::delivery::body::{self, Body};
use crate::delivery::file_body::Segment;
use crate::delivery::Delivery;
use crate::files::disposition::{content_disposition, DispositionKind};
use crate::metrics::Rejection;
use crate::observe::reject::Refusal;
use bytes::Bytes;
use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, IfRange, LastModified};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use range::{Multipart, RangeOutcome};
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct FilesMount {
    root: PathBuf,
    options: FileOptions,
}

/// How one file is presented: disposition, name, type, caching.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    pub disposition: Disposition,
    /// The name in Content-Disposition; the file's own name when absent.
    pub filename: Option<String>,
    /// Content-Type; guessed from the extension when absent.
    pub media_type: Option<String>,
    pub cache_control: Option<String>,
}

/// What the validators of one file are.
struct Validators {
    etag: ETag,
    etag_value: HeaderValue,
    last_modified: SystemTime,
}

impl FilesMount {
    pub fn new(config: FilesConfig) -> Result<Self, String> {
        let root = std::fs::canonicalize(&config.root)
            .map_err(|err| format!("files: root {:?} cannot be used: {err}", config.root))?;
        if !root.is_dir() {
            return Err(format!("files: root {:?} is not a folder", config.root));
        }
        let options = FileOptions {
            disposition: config.disposition,
            filename: None,
            media_type: None,
            cache_control: config.cache_control,
        };
        Ok(Self { root, options })
    }

    pub fn serve(
        &self,
        method: &Method,
        headers: &HeaderMap,
        rel: &str,
        delivery: Delivery,
    ) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            delivery
                .metrics
                .refuse(Refusal::new(Rejection::MethodNotAllowed).client(delivery.conn.client()));
            return body::method_not_allowed("GET, HEAD");
        }
        match safe_path::resolve(&self.root, rel) {
            Ok(path) => serve_file(&path, &self.options, method, headers, delivery),
            Err(_) => not_found(&delivery),
        }
    }
}

/// Serves the file at `path` (already chosen and trusted: a files mount resolved it, or a JS
/// handler's `FileResponse` named it) with validators, ranges and the delivery's limits.
pub fn serve_file(
    path: &Path,
    options: &FileOptions,
    method: &Method,
    headers: &HeaderMap,
    delivery: Delivery,
) -> Response<Body> {
    let Ok(file) = File::open(path) else {
        return not_found(&delivery);
    };
    let Ok(meta) = file.metadata() else {
        return not_found(&delivery);
    };
    if !meta.is_file() {
        return not_found(&delivery);
    }
    let len = meta.len();
    let validators = validators(len, meta.modified().unwrap_or(UNIX_EPOCH));
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::ETAG, validators.etag_value.clone());
    response_headers.typed_insert(LastModified::from(validators.last_modified));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(cache_control) = options
        .cache_control
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        response_headers.insert(header::CACHE_CONTROL, cache_control);
    }

    if is_not_modified(headers, &validators) {
        return with_headers(
            Response::new(body::empty()),
            StatusCode::NOT_MODIFIED,
            response_headers,
        );
    }

    let content_type = match options
        .media_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        Some(media_type) => media_type,
        None => content_type(path),
    };
    response_headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let filename = options
        .filename
        .as_deref()
        .or_else(|| path.file_name().and_then(|name| name.to_str()));
    let kind = match options.disposition {
        Disposition::Inline => DispositionKind::Inline,
        Disposition::Attachment => DispositionKind::Attachment,
    };
    response_headers.insert(
        header::CONTENT_DISPOSITION,
        content_disposition(kind, filename),
    );

    let range_header = headers
        .get(header::RANGE)
        .filter(|_| range_applies(headers, &validators));
    let (status, content_length, segments) = match range::evaluate(range_header, len) {
        RangeOutcome::Full => {
            response_headers.insert(header::CONTENT_TYPE, content_type);
            let segments = if len == 0 {
                vec![]
            } else {
                vec![Segment::File {
                    start: 0,
                    end: len - 1,
                }]
            };
            (StatusCode::OK, len, segments)
        }
        RangeOutcome::Partial(ranges) if ranges.len() == 1 => {
            let (start, end) = ranges[0];
            response_headers.insert(header::CONTENT_TYPE, content_type);
            response_headers.insert(
                header::CONTENT_RANGE,
                header_value(range::content_range(start, end, len)),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                end - start + 1,
                vec![Segment::File { start, end }],
            )
        }
        RangeOutcome::Partial(ranges) => {
            let multipart = Multipart {
                boundary: new_boundary(),
                content_type: content_type
                    .to_str()
                    .unwrap_or("application/octet-stream")
                    .to_string(),
                len,
            };
            let content_length = multipart.body_len(&ranges);
            response_headers.insert(
                header::CONTENT_TYPE,
                header_value(format!(
                    "multipart/byteranges; boundary={}",
                    multipart.boundary
                )),
            );
            let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
            for (index, (start, end)) in ranges.iter().copied().enumerate() {
                segments.push(Segment::Bytes(Bytes::from(multipart.part_header(
                    index == 0,
                    start,
                    end,
                ))));
                segments.push(Segment::File { start, end });
            }
            segments.push(Segment::Bytes(Bytes::from(multipart.trailer())));
            (StatusCode::PARTIAL_CONTENT, content_length, segments)
        }
        RangeOutcome::Unsatisfiable => {
            delivery.metrics.refuse(
                Refusal::new(Rejection::RangeNotSatisfiable).client(delivery.conn.client()),
            );
            response_headers.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes */{len}")),
            );
            let response = body::text(StatusCode::RANGE_NOT_SATISFIABLE, "Range Not Satisfiable\n");
            return with_headers(
                response,
                StatusCode::RANGE_NOT_SATISFIABLE,
                response_headers,
            );
        }
    };
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));

    let body = if method == Method::HEAD || segments.is_empty() {
        body::empty()
    } else {
        delivery.stream_file(file, VecDeque::from(segments))
    };
    with_headers(Response::new(body), status, response_headers)
}

fn not_found(delivery: &Delivery) -> Response<Body> {
    delivery
        .metrics
        .refuse(Refusal::new(Rejection::NotFound).client(delivery.conn.client()));
    body::text(StatusCode::NOT_FOUND, "Not Found\n")
}

fn with_headers(
    mut response: Response<Body>,
    status: StatusCode,
    headers: HeaderMap,
) -> Response<Body> {
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A strong validator from size and modification time (nanoseconds), as nginx does (seconds).
fn validators(len: u64, modified: SystemTime) -> Validators {
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let text = format!("\"{len:x}-{nanos:x}\"");
    let etag = text
        .parse::<ETag>()
        .unwrap_or_else(|_| "\"0\"".parse().expect("static etag"));
    Validators {
        etag,
        etag_value: header_value(text),
        last_modified: modified,
    }
}

/// RFC 9110 §13.2.2: If-None-Match decides when present; If-Modified-Since only otherwise.
fn is_not_modified(headers: &HeaderMap, validators: &Validators) -> bool {
    if let Some(if_none_match) = headers.typed_get::<IfNoneMatch>() {
        return !if_none_match.precondition_passes(&validators.etag);
    }
    headers
        .typed_get::<IfModifiedSince>()
        .is_some_and(|since| !since.is_modified(validators.last_modified))
}

/// `If-Range`: ranges apply only while the client's copy is still current.
fn range_applies(headers: &HeaderMap, validators: &Validators) -> bool {
    match headers.typed_get::<IfRange>() {
        None => true,
        Some(if_range) => {
            let last_modified = LastModified::from(validators.last_modified);
            !if_range.is_modified(Some(&validators.etag), Some(&last_modified))
        }
    }
}

fn content_type(path: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let text = if mime.type_() == mime_guess::mime::TEXT && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    header_value(text)
}

fn new_boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "floodgate-{:x}-{:x}",
        nanos as u64,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
