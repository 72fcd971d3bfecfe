//! Resumable uploads with the tus 1.0 protocol (core, creation, expiration and checksum
//! extensions) at an uploads mount with `resumable` set: `POST` creates an upload, `HEAD` says
//! how much arrived, `PATCH` appends at that offset, `OPTIONS` lists what the server does.
//!
//! Each upload is two files in the mount's `.tus` folder (a dotfolder, never served): its data
//! (`<id>.bin`) and its state (`<id>.json` or `<id>.1.json`: length, offset, metadata, owner,
//! expiry), the state written after the data it counts was written, into the other of the two
//! names, the old one removed after it (see `save`), so the recorded offset never passes the
//! data. Bytes of an interrupted `PATCH` that reached the file
//! are kept (the point of resuming), unless the `PATCH` carried `Upload-Checksum`: then only a
//! whole, matching body counts (`460` otherwise) and the rest is cut off at once. The complete
//! file is renamed from the `.tus` folder to its name under the mount (same file system, so
//! atomic). One `PATCH` at a time per upload: another one meanwhile gets `423 Locked`. The
//! state is read back from the `.tus` folder at `listen`; a sweeper removes uploads past their
//! expiry.
//!
//! The whole file's SHA-256 runs from `PATCH` to `PATCH` (`running_hash`): without
//! `Upload-Checksum` a `PATCH`'s bytes are hashed behind its writes and the `PATCH` is answered
//! once they are written; with one they are hashed in line, and count only if it matches.
//!
//! Durability (`fsync`, the default): the data and the state are synced once, when the upload
//! completes — the data before its rename, the folder after it (so the name survives a power
//! loss), then the final state — not at every `PATCH`, which cost a sync of the data and one of
//! the state per `PATCH`. A process crash (`kill -9`) loses nothing: both files are in the page
//! cache. After a power loss either file may be older than the client was told; the offset read
//! back is the smaller of the recorded one and the data's length (`recover`), so it may go
//! back (the client resumes from there, as tus clients do after a `HEAD`), never past the data.
//! Bytes past the recorded offset are cut off before the next `PATCH` appends (`open_at`).

use crate::config::ResumableConfig;
use crate::delivery::body::{self, Body};
use crate::metrics::{Metrics, Rejection};
use crate::upload::multipart::sanitize;
use crate::upload::reader::{BodyReader, Stop};
use crate::upload::running_hash::{Behind, Handover, HashChain, Running};
use crate::upload::UploadLimits;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

const VERSION: &str = "1.0.0";
const STATE_DIR: &str = ".tus";
/// Longest `Upload-Metadata` accepted.
const MAX_METADATA: usize = 4096;
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Batches in flight between the socket and the disk.
const QUEUE_DEPTH: usize = 4;

/// An upload's state as kept on disk beside its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    length: u64,
    offset: u64,
    metadata: Option<String>,
    /// The name the complete file gets under the mount.
    name: String,
    /// `ClientKey` text of the creator: what the per-user caps count.
    owner: String,
    /// Milliseconds since the epoch after which the upload is removed.
    expires: u64,
    /// Set once the file is in place.
    sha256: Option<String>,
}

struct Upload {
    info: Mutex<Info>,
    /// A `PATCH` is being received.
    busy: AtomicBool,
    /// Which of the two state files holds the state (`Resumable::save`).
    slot: AtomicBool,
    /// SHA-256 of the data so far, handed from `PATCH` to `PATCH` (lost after a restart:
    /// the file is then read again when it completes).
    hash: HashChain,
}

/// Resets `busy` when the `PATCH` ends, however it ends: held by its disk worker once that
/// runs, so a `PATCH` whose connection went away keeps the upload until its bytes are written
/// and counted, and the next `PATCH` cannot interleave with them.
struct Busy(Arc<Upload>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

pub struct Resumable {
    dir: PathBuf,
    state: PathBuf,
    config: ResumableConfig,
    overwrite: bool,
    fsync: bool,
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
    /// Set once the uploads a previous run left are read back (shortly after `listen`, which
    /// does not wait for it): tus requests wait for it, so a client resuming right after a
    /// restart finds its upload instead of a `404` that would make it start again.
    loaded: tokio::sync::watch::Sender<bool>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A tus response: `Tus-Resumable` on every one.
fn reply(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(VERSION));
    response
}

fn refuse(metrics: &Metrics, status: StatusCode, reason: Option<Rejection>) -> Response<Body> {
    if let Some(reason) = reason {
        metrics.reject(reason);
    }
    reply(status)
}

fn expires_header(ms: u64) -> HeaderValue {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from_static(""))
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Whether `request` is for the tus side of the mount.
pub fn is_tus(request: &Request<impl Sized>) -> bool {
    request.method() == Method::OPTIONS
        || request.method() == Method::PATCH
        || request.headers().contains_key("tus-resumable")
}

/// The `filename` (or `name`) of `Upload-Metadata` (`key base64,key base64`), decoded.
fn metadata_filename(metadata: &str) -> Option<Result<String, ()>> {
    metadata.split(',').find_map(|pair| {
        let mut parts = pair.trim().splitn(2, ' ');
        let key = parts.next()?;
        if key != "filename" && key != "name" {
            return None;
        }
        let value = parts.next().unwrap_or_default();
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(()),
        )
    })
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
#[derive(Clone)]
enum Checksum {
    Sha1(Vec<u8>),
    Sha256(Vec<u8>),
}

fn parse_checksum(value: &HeaderValue) -> Option<Checksum> {
    let (algorithm, digest) = value.to_str().ok()?.trim().split_once(' ')?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .ok()?;
    match algorithm {
        "sha1" => Some(Checksum::Sha1(digest)),
        "sha256" => Some(Checksum::Sha256(digest)),
        _ => None,
    }
}

impl Resumable {
    pub fn new(dir: PathBuf, config: ResumableConfig, overwrite: bool, fsync: bool) -> Self {
        Self {
            state: dir.join(STATE_DIR),
            dir,
            config,
            overwrite,
            fsync,
            uploads: Mutex::new(HashMap::new()),
            loaded: tokio::sync::watch::channel(false).0,
        }
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.state.join(format!("{id}.bin"))
    }

    /// The state's two files, written in turn (`save`): `<id>.json` and `<id>.1.json`.
    fn info_path(&self, id: &str, slot: bool) -> PathBuf {
        match slot {
            false => self.state.join(format!("{id}.json")),
            true => self.state.join(format!("{id}.1.json")),
        }
    }

    /// At `listen`: reads back the uploads a previous run left (removing expired ones and
    /// data without state), then sweeps expired uploads every quarter of `expiration` (at
    /// most every minute) for as long as the mount lives.
    pub fn start(self: &Arc<Self>) {
        let store = Arc::clone(self);
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval =
            (self.config.expiration / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        tokio::spawn(async move {
            let loader = Arc::clone(&store);
            let _ = tokio::task::spawn_blocking(move || loader.load()).await;
            // Also after a panic in `load`: what was not read back is unknown (`404`).
            store.loaded.send_replace(true);
            drop(store);
            loop {
                tokio::time::sleep(interval).await;
                let Some(store) = weak.upgrade() else { break };
                let _ = tokio::task::spawn_blocking(move || store.sweep()).await;
            }
        });
    }

    fn load(&self) {
        if std::fs::create_dir_all(&self.state).is_err() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.state) else {
            return;
        };
        let now = now_ms();
        // Every upload's states as read (a crash between writing one and removing the other
        // leaves both; one cut short by a power loss does not parse).
        let mut states: HashMap<String, Vec<(bool, Option<Info>)>> = HashMap::new();
        let mut data = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(".json") {
                let (id, slot) = match stem.strip_suffix(".1") {
                    Some(id) => (id, true),
                    None => (stem, false),
                };
                if is_id(id) {
                    let info = std::fs::read(&path)
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<Info>(&bytes).ok());
                    states.entry(id.to_string()).or_default().push((slot, info));
                }
            } else if let Some(id) = name.strip_suffix(".bin").filter(|id| is_id(id)) {
                data.push(id.to_string());
            } else if name.ends_with(".json.tmp") {
                // An earlier version's temporary.
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut uploads = HashMap::new();
        for (id, found) in states {
            // The newest state that parses: offsets and expiries only grow.
            let newest = found
                .iter()
                .filter_map(|(slot, info)| Some((*slot, info.as_ref()?)))
                .max_by_key(|(_, info)| (info.offset, info.sha256.is_some(), info.expires))
                .map(|(slot, info)| (slot, info.clone()));
            let Some((slot, info)) = newest else {
                self.remove_files(&id);
                continue;
            };
            match self.recover(&id, info) {
                Some(info) if info.expires > now => {
                    let _ = std::fs::remove_file(self.info_path(&id, !slot));
                    uploads.insert(id, Arc::new(Upload::new(info, None, slot)));
                }
                _ => self.remove_files(&id),
            }
        }
        for id in data {
            if !uploads.contains_key(&id) {
                let _ = std::fs::remove_file(self.data_path(&id));
            }
        }
        let mut live = lock(&self.uploads);
        for (id, upload) in uploads {
            live.entry(id).or_insert(upload);
        }
    }

    /// An unfinished upload's state as read back: the recorded offset, unless the data is
    /// shorter (the state is not synced per `PATCH`, so after a power loss it may count bytes
    /// the disk lost); `None` when its data is gone.
    fn recover(&self, id: &str, mut info: Info) -> Option<Info> {
        if info.sha256.is_none() {
            let length = std::fs::metadata(self.data_path(id)).ok()?.len();
            info.offset = info.offset.min(length);
        }
        Some(info)
    }

    fn sweep(&self) {
        let now = now_ms();
        let expired: Vec<String> = lock(&self.uploads)
            .iter()
            .filter(|(_, upload)| {
                !upload.busy.load(Ordering::Acquire) && lock(&upload.info).expires <= now
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.forget(&id);
        }
    }

    fn forget(&self, id: &str) {
        lock(&self.uploads).remove(id);
        self.remove_files(id);
    }

    fn remove_files(&self, id: &str) {
        let _ = std::fs::remove_file(self.data_path(id));
        let _ = std::fs::remove_file(self.info_path(id, false));
        let _ = std::fs::remove_file(self.info_path(id, true));
    }

    /// Writes `info` beside the data, into the state file not in use, then removes the one in
    /// use: a crash leaves the old state, the new one or both (`load` takes the newest that
    /// parses), never a torn one alone. Two files taken in turn rather than a temporary
    /// renamed over the state: on ext4 a rename over an existing file starts the new file's
    /// write-back at once (`auto_da_alloc`), 80 µs alone and a median 0.27 ms per `PATCH`
    /// under load, against ~10 µs to create a new file and remove the old.
    fn save(&self, id: &str, upload: &Upload, info: &Info, sync: bool) -> std::io::Result<()> {
        let current = upload.slot.load(Ordering::Acquire);
        write_state(&self.info_path(id, !current), info, sync)?;
        upload.slot.store(!current, Ordering::Release);
        let _ = std::fs::remove_file(self.info_path(id, current));
        Ok(())
    }

    /// The upload `id`, unless unknown or expired (an expired one is removed).
    fn find(&self, id: &str) -> Option<Arc<Upload>> {
        let upload = lock(&self.uploads).get(id).cloned()?;
        if lock(&upload.info).expires <= now_ms() && !upload.busy.load(Ordering::Acquire) {
            self.forget(id);
            return None;
        }
        Some(upload)
    }

    pub async fn handle<B>(
        self: &Arc<Self>,
        request: Request<B>,
        rel: &str,
        limits: UploadLimits,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin,
    {
        let metrics = Arc::clone(&limits.metrics);
        if request.method() == Method::OPTIONS {
            let mut response = reply(StatusCode::NO_CONTENT);
            let headers = response.headers_mut();
            headers.insert("tus-version", HeaderValue::from_static(VERSION));
            headers.insert(
                "tus-extension",
                HeaderValue::from_static("creation,expiration,checksum"),
            );
            headers.insert("tus-max-size", HeaderValue::from(limits.max_size));
            headers.insert(
                "tus-checksum-algorithm",
                HeaderValue::from_static("sha1,sha256"),
            );
            return response;
        }
        if !*self.loaded.borrow() {
            let _ = self.loaded.subscribe().wait_for(|loaded| *loaded).await;
        }
        if request
            .headers()
            .get("tus-resumable")
            .is_none_or(|version| version.as_bytes() != VERSION.as_bytes())
        {
            let mut response = refuse(&metrics, StatusCode::PRECONDITION_FAILED, None);
            response
                .headers_mut()
                .insert("tus-version", HeaderValue::from_static(VERSION));
            return response;
        }
        let id = rel.trim_matches('/');
        match (request.method().clone(), id.is_empty()) {
            (Method::POST, true) => self.create(&request, &limits).await,
            (Method::HEAD, false) => match self.find(id) {
                None => refuse(&metrics, StatusCode::NOT_FOUND, Some(Rejection::NotFound)),
                Some(upload) => {
                    let info = lock(&upload.info).clone();
                    let mut response = reply(StatusCode::OK);
                    let headers = response.headers_mut();
                    headers.insert("upload-offset", HeaderValue::from(info.offset));
                    headers.insert("upload-length", HeaderValue::from(info.length));
                    if let Some(metadata) = info
                        .metadata
                        .as_deref()
                        .and_then(|value| HeaderValue::from_str(value).ok())
                    {
                        headers.insert("upload-metadata", metadata);
                    }
                    if info.sha256.is_none() {
                        headers.insert("upload-expires", expires_header(info.expires));
                    }
                    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
            },
            (Method::PATCH, false) => match self.find(id) {
                None => refuse(&metrics, StatusCode::NOT_FOUND, Some(Rejection::NotFound)),
                Some(upload) => self.patch(id, &upload, request, limits).await,
            },
            _ => {
                metrics.reject(Rejection::MethodNotAllowed);
                let mut response = reply(StatusCode::METHOD_NOT_ALLOWED);
                let allow = if id.is_empty() {
                    "OPTIONS, POST"
                } else {
                    "HEAD, PATCH"
                };
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                response
            }
        }
    }

    async fn create<B>(
        self: &Arc<Self>,
        request: &Request<B>,
        limits: &UploadLimits,
    ) -> Response<Body> {
        let metrics = &limits.metrics;
        let headers = request.headers();
        let Some(length) = number(headers, "upload-length") else {
            // No `creation-defer-length`: the length is required.
            return refuse(
                metrics,
                StatusCode::BAD_REQUEST,
                Some(Rejection::BadRequest),
            );
        };
        if length > limits.max_size {
            return refuse(
                metrics,
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(Rejection::BodyTooLarge),
            );
        }
        let metadata = match headers.get("upload-metadata").map(|value| value.to_str()) {
            None => None,
            Some(Ok(value)) if value.len() <= MAX_METADATA => Some(value.to_string()),
            Some(_) => {
                return refuse(
                    metrics,
                    StatusCode::BAD_REQUEST,
                    Some(Rejection::BadRequest),
                )
            }
        };
        let id = new_id();
        let name = match metadata.as_deref().and_then(metadata_filename) {
            None => id.clone(),
            Some(Ok(filename)) => sanitize(&filename),
            Some(Err(())) => {
                return refuse(
                    metrics,
                    StatusCode::BAD_REQUEST,
                    Some(Rejection::BadRequest),
                )
            }
        };
        if !self.overwrite && self.dir.join(&name).exists() {
            return reply(StatusCode::CONFLICT);
        }
        let info = Info {
            length,
            offset: 0,
            metadata,
            name,
            owner: limits.owner.clone(),
            expires: now_ms() + self.config.expiration.as_millis() as u64,
            sha256: None,
        };
        // Counted and reserved under one lock, so simultaneous creations cannot pass a cap.
        {
            let mut uploads = lock(&self.uploads);
            let (mut open, mut bytes) = (0u32, 0u64);
            for upload in uploads.values() {
                let other = lock(&upload.info);
                if other.owner == info.owner && other.sha256.is_none() {
                    open += 1;
                    bytes += other.length;
                }
            }
            if self.config.max_uploads_per_user > 0 && open >= self.config.max_uploads_per_user {
                drop(uploads);
                return refuse(
                    metrics,
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(Rejection::ResumableUploadsLimit),
                );
            }
            if self.config.max_bytes_per_user > 0 && bytes + length > self.config.max_bytes_per_user
            {
                drop(uploads);
                return refuse(
                    metrics,
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(Rejection::ResumableBytesLimit),
                );
            }
            uploads.insert(
                id.clone(),
                Arc::new(Upload::new(info.clone(), Some(Running::default()), false)),
            );
        }
        let store = Arc::clone(self);
        let (created_id, created_info) = (id.clone(), info.clone());
        let created = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&store.state)?;
            std::fs::File::create_new(store.data_path(&created_id))?;
            write_state(
                &store.info_path(&created_id, false),
                &created_info,
                store.fsync,
            )
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|result| result);
        if created.is_err() {
            self.forget(&id);
            return reply(StatusCode::INTERNAL_SERVER_ERROR);
        }
        let location = format!("{}/{id}", request.uri().path().trim_end_matches('/'));
        let mut response = reply(StatusCode::CREATED);
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, location);
        }
        headers.insert("upload-expires", expires_header(info.expires));
        response
    }

    async fn patch<B>(
        self: &Arc<Self>,
        id: &str,
        upload: &Arc<Upload>,
        request: Request<B>,
        mut limits: UploadLimits,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Unpin,
    {
        let metrics = Arc::clone(&limits.metrics);
        if upload.busy.swap(true, Ordering::AcqRel) {
            return refuse(
                &metrics,
                StatusCode::LOCKED,
                Some(Rejection::ResumableLocked),
            );
        }
        let busy = Busy(Arc::clone(upload));
        let headers = request.headers();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::trim);
        if content_type != Some(OFFSET_OCTET_STREAM) {
            return refuse(
                &metrics,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some(Rejection::UnsupportedMediaType),
            );
        }
        let Some(offset) = number(headers, "upload-offset") else {
            return refuse(
                &metrics,
                StatusCode::BAD_REQUEST,
                Some(Rejection::BadRequest),
            );
        };
        let checksum = match headers.get("upload-checksum") {
            None => None,
            Some(value) => match parse_checksum(value) {
                Some(checksum) => Some(checksum),
                None => {
                    return refuse(
                        &metrics,
                        StatusCode::BAD_REQUEST,
                        Some(Rejection::BadRequest),
                    )
                }
            },
        };
        let info = lock(&upload.info).clone();
        if offset != info.offset {
            return refuse(
                &metrics,
                StatusCode::CONFLICT,
                Some(Rejection::ResumableOffsetConflict),
            );
        }
        let remaining = info.length - info.offset;
        if number(headers, header::CONTENT_LENGTH.as_str()).is_some_and(|length| length > remaining)
        {
            return refuse(
                &metrics,
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(Rejection::BodyTooLarge),
            );
        }
        if let Some(sha256) = &info.sha256 {
            // Complete already (the offset matched its length): nothing to append.
            return done(&info, sha256);
        }
        limits.max_size = info.length - info.offset;
        // One blocking worker per `PATCH` does all of its disk work — opening the data, writing
        // and hashing as the body arrives, the state, and at completion the sync and the
        // rename — so reading starts at once and the `PATCH` costs one trip to the blocking
        // pool.
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let store = Arc::clone(self);
        let (worker_id, worker_upload) = (id.to_string(), Arc::clone(upload));
        let worker = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            store.append(&worker_id, &worker_upload, info, checksum, receiver)
        });
        let read = read_into(request.into_body(), &sender, &limits).await;
        let _ = sender.send(Piece::End(read.is_ok())).await;
        drop(sender);
        let info = match worker.await.unwrap_or(Patched::Io) {
            Patched::Saved(info) => info,
            Patched::Mismatch => {
                metrics.reject(Rejection::ChecksumMismatch);
                return reply(StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST));
            }
            Patched::Exists => return reply(StatusCode::CONFLICT),
            Patched::Io => return reply(StatusCode::INTERNAL_SERVER_ERROR),
        };
        if let Err(stop) = read {
            return match stop {
                Stop::Rejected(reason) => {
                    metrics.reject(reason);
                    let status = match reason {
                        Rejection::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                        Rejection::BadRequest => StatusCode::BAD_REQUEST,
                        _ => StatusCode::REQUEST_TIMEOUT,
                    };
                    let mut response = reply(status);
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    response
                }
                Stop::ClientGone => reply(StatusCode::BAD_REQUEST),
                Stop::Disk => reply(StatusCode::INTERNAL_SERVER_ERROR),
            };
        }
        match &info.sha256 {
            Some(sha256) => done(&info, sha256),
            None => {
                let mut response = reply(StatusCode::NO_CONTENT);
                let headers = response.headers_mut();
                headers.insert("upload-offset", HeaderValue::from(info.offset));
                headers.insert("upload-expires", expires_header(info.expires));
                response
            }
        }
    }

    /// The disk side of one `PATCH` (blocking): appends what `pieces` brings at the recorded
    /// offset, hashing it (the whole file's SHA-256, and the body's own digest when it carries
    /// `Upload-Checksum`), then records the new offset — or, with a checksum that did not
    /// match or a body that did not arrive whole, cuts the data back and records nothing.
    /// The last `PATCH` also places the file. See the module docs for what is synced when.
    fn append(
        &self,
        id: &str,
        upload: &Upload,
        mut info: Info,
        checksum: Option<Checksum>,
        mut pieces: mpsc::Receiver<Piece>,
    ) -> Patched {
        let offset = info.offset;
        let Ok(mut file) = self.open_at(id, offset) else {
            return Patched::Io;
        };
        // Without `Upload-Checksum` every byte written counts: the running hash follows the
        // writes on a hasher of its own. With one, nothing counts until the body matched, so
        // the hash is kept here, to be handed on as it was if the body does not count.
        let mut lane = match &checksum {
            None => Lane::Behind(upload.hash.behind(offset)),
            Some(checksum) => {
                let (running, handover) = upload.hash.take(offset);
                let body = match checksum {
                    Checksum::Sha1(_) => BodyHash::Sha1(Sha1::new()),
                    Checksum::Sha256(_) => BodyHash::Sha256(Sha256::new()),
                };
                Lane::InLine(Box::new(InLine {
                    before: running.clone(),
                    running,
                    handover,
                    body,
                }))
            }
        };
        let mut written = 0u64;
        let whole = loop {
            match pieces.blocking_recv() {
                Some(Piece::Data(bytes)) => {
                    if file.write_all(&bytes).is_err() {
                        // Whatever went in is past the recorded offset: cut at the next `PATCH`
                        // (which then finds no hash of that length, and reads the file again).
                        return Patched::Io;
                    }
                    written += bytes.len() as u64;
                    match &mut lane {
                        Lane::Behind(behind) => behind.feed(bytes),
                        Lane::InLine(inline) => {
                            let InLine { running, body, .. } = &mut **inline;
                            if let Some(running) = running {
                                running.update(&bytes);
                            }
                            body.update(&bytes);
                        }
                    }
                }
                Some(Piece::End(whole)) => break whole,
                None => break false,
            }
        };
        match lane {
            // The hasher hands the hash on once it has caught up with these bytes.
            Lane::Behind(behind) => drop(behind),
            Lane::InLine(inline) => {
                let InLine {
                    before,
                    running,
                    handover,
                    body,
                } = *inline;
                if whole && body.matches(checksum.as_ref()) {
                    handover.give(running);
                } else {
                    // Nothing of this body counts: cut it off now; the hash is as it was.
                    handover.give(before);
                    if file.set_len(offset).is_err() {
                        return Patched::Io;
                    }
                    if whole {
                        return Patched::Mismatch;
                    }
                    written = 0;
                }
            }
        }
        info.offset += written;
        info.expires = now_ms() + self.config.expiration.as_millis() as u64;
        if info.offset < info.length {
            // Not synced (see the module docs): a count the disk may not hold yet is bounded
            // by the data's length when read back.
            if self.save(id, upload, &info, false).is_err() {
                return Patched::Io;
            }
            *lock(&upload.info) = info.clone();
            return Patched::Saved(info);
        }
        // Complete: hashed (again, if the running hash was lost), synced, renamed, recorded.
        let (running, handover) = upload.hash.take(info.offset);
        handover.give(None);
        let sha256 = match running {
            Some(running) => running.hex(),
            None => match hash_file(&self.data_path(id)) {
                Ok(sha256) => sha256,
                Err(_) => return Patched::Io,
            },
        };
        if self.fsync && file.sync_data().is_err() {
            return Patched::Io;
        }
        drop(file);
        if let Err(failed) = self.place(id, &info.name) {
            return failed;
        }
        if self.fsync && sync_dir(&self.dir).is_err() {
            return Patched::Io;
        }
        info.sha256 = Some(sha256);
        if self.save(id, upload, &info, self.fsync).is_err() {
            return Patched::Io;
        }
        *lock(&upload.info) = info.clone();
        Patched::Saved(info)
    }

    /// The upload's data, open for writing at `offset`; bytes past it were never counted
    /// (a `PATCH` cut short with a checksum, a crash before the state was written): dropped.
    fn open_at(&self, id: &str, offset: u64) -> std::io::Result<std::fs::File> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.data_path(id))?;
        if file.metadata()?.len() != offset {
            file.set_len(offset)?;
        }
        file.seek(SeekFrom::Start(offset))?;
        Ok(file)
    }

    /// Renames the complete data to its name under the mount (blocking).
    fn place(&self, id: &str, name: &str) -> Result<(), Patched> {
        let target = self.dir.join(name);
        let data = self.data_path(id);
        if self.overwrite {
            std::fs::rename(&data, &target).map_err(|_| Patched::Io)
        } else {
            // Link-then-unlink: fails if the name appeared meanwhile.
            match std::fs::hard_link(&data, &target) {
                Ok(()) => std::fs::remove_file(&data).map_err(|_| Patched::Io),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Err(Patched::Exists),
                Err(_) => Err(Patched::Io),
            }
        }
    }
}

/// The last answer of an upload: not tus headers, what the complete file became, as a raw
/// upload reports it.
fn done(info: &Info, sha256: &str) -> Response<Body> {
    let mut response = reply(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    headers.insert("upload-offset", HeaderValue::from(info.offset));
    if let Ok(name) = HeaderValue::from_str(&info.name) {
        headers.insert("upload-name", name);
    }
    if let Ok(sha256) = HeaderValue::from_str(sha256) {
        headers.insert("upload-sha256", sha256);
    }
    response
}

/// Writes an upload's state to a file of its own (blocking).
fn write_state(path: &Path, info: &Info, sync: bool) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&serde_json::to_vec(info).map_err(std::io::Error::other)?)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Makes a rename in `dir` durable (blocking).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// From the socket side of a `PATCH` to its disk worker.
enum Piece {
    Data(Bytes),
    /// The body ended: all of it arrived (`true`) or it was cut short.
    End(bool),
}

/// What the disk worker made of a `PATCH`.
enum Patched {
    /// The state recorded after it.
    Saved(Info),
    /// The body does not match its `Upload-Checksum`: nothing appended.
    Mismatch,
    /// Complete, but the name was taken meanwhile (`overwrite: false`).
    Exists,
    Io,
}

impl Upload {
    fn new(info: Info, hash: Option<Running>, slot: bool) -> Self {
        Self {
            info: Mutex::new(info),
            busy: AtomicBool::new(false),
            slot: AtomicBool::new(slot),
            hash: HashChain::new(hash),
        }
    }
}

/// 32 random hexadecimal characters.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default()
            .to_le_bytes();
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn is_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Reads a `PATCH` body to the disk worker under the upload limits; small frames are gathered
/// into batches of a few chunks, large ones go as they are (as a raw upload's do).
async fn read_into<B>(
    body: B,
    sender: &mpsc::Sender<Piece>,
    limits: &UploadLimits,
) -> Result<(), Stop>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    let batch_size = (limits.chunk_size * 4) as usize;
    let send = |bytes: Bytes| async move {
        sender
            .send(Piece::Data(bytes))
            .await
            .map_err(|_| Stop::Disk)
    };
    let mut batch = BytesMut::new();
    let mut reader = BodyReader::new(body, limits);
    let result = async {
        while let Some(data) = reader.next().await? {
            if batch.is_empty() && data.len() >= batch_size {
                send(data).await?;
            } else {
                batch.extend_from_slice(&data);
                if batch.len() >= batch_size {
                    send(batch.split().freeze()).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    // What arrived before a stop is written too: without a checksum it counts.
    if !batch.is_empty() {
        send(batch.freeze()).await?;
    }
    result
}

/// The digest a `PATCH` body is checked against.
enum BodyHash {
    Sha1(Sha1),
    Sha256(Sha256),
}

impl BodyHash {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            BodyHash::Sha1(hasher) => hasher.update(bytes),
            BodyHash::Sha256(hasher) => hasher.update(bytes),
        }
    }

    fn matches(self, expected: Option<&Checksum>) -> bool {
        let digest = match self {
            BodyHash::Sha1(hasher) => hasher.finalize().to_vec(),
            BodyHash::Sha256(hasher) => hasher.finalize().to_vec(),
        };
        match expected {
            Some(Checksum::Sha1(expected) | Checksum::Sha256(expected)) => digest == *expected,
            None => false,
        }
    }
}

/// How one `PATCH` keeps the running hash (see `running_hash`).
enum Lane {
    /// No `Upload-Checksum`: hashed behind the writes.
    Behind(Behind),
    /// With one: kept here until the body matched.
    InLine(Box<InLine>),
}

/// The hash as it was, the hash with this body, and the body's own digest.
struct InLine {
    before: Option<Running>,
    running: Option<Running>,
    handover: Handover,
    body: BodyHash,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filename_is_decoded() {
        assert_eq!(
            metadata_filename("filename cmVwb3J0LnBkZg==,type dGV4dA=="),
            Some(Ok("report.pdf".into()))
        );
        assert_eq!(
            metadata_filename("type dGV4dA==, name YS50eHQ="),
            Some(Ok("a.txt".into()))
        );
        assert_eq!(metadata_filename("type dGV4dA=="), None);
        assert_eq!(metadata_filename("filename !!!"), Some(Err(())));
    }

    #[test]
    fn checksums_name_their_algorithm() {
        let value = |text: &'static str| HeaderValue::from_static(text);
        assert!(
            matches!(parse_checksum(&value("sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=")), Some(Checksum::Sha1(digest)) if digest.len() == 20)
        );
        assert!(
            matches!(parse_checksum(&value("sha256 LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=")), Some(Checksum::Sha256(digest)) if digest.len() == 32)
        );
        assert!(parse_checksum(&value("md5 abc=")).is_none());
        assert!(parse_checksum(&value("sha1")).is_none());
    }

    #[test]
    fn ids_are_32_hex_characters() {
        let id = new_id();
        assert!(is_id(&id), "{id}");
        assert_ne!(id, new_id());
        assert!(!is_id("../../etc/passwd"));
    }
}
