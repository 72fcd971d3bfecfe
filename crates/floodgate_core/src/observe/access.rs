//! The access log (`accessLog`): one JSON line per request in pino's shape, written from Rust
//! without blocking a request task or the JS thread.
//!
//! A request's [`AccessRecord`] is made when its head arrives and shared (an `Arc`) by what
//! serves it: the request body (bytes in), the response body (status, bytes out), and, for an
//! event stream or a WebSocket session, the stream's task. The line is formatted when the last
//! holder lets go (`Drop`), so a session is logged when it ends, with its duration and bytes.
//! Formatted lines go to a bounded queue read by one writer thread, which writes whatever has
//! queued in one `write` call; with the queue full a line is dropped and counted, never waited
//! for. The callback form hands lines to the JS bridge instead, at most `accessLogPerSecond`
//! a second (the rest counted, and reported by the next line as `dropped`), as rejection
//! events are bounded.
//!
//! Why a refusal is logged comes from `Metrics::refuse`: while a request's handling (or its
//! response body) is polled, its record is the task-local [`CURRENT`], and a refusal made then
//! notes its reason on it. Refusals of a connection before any request (accept-time caps,
//! TLS, header timeouts, HTTP/2 floods) have no line: they are rejection events and metrics.

use crate::config::AccessLogTarget;
use crate::metrics::Rejection;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest `url` a line carries: the target is the client's, so it is cut.
const MAX_URL: usize = 2048;
/// Lines joined into one write at most.
const BATCH: usize = 512;
/// How long the writer lets lines gather after a write (see `write_lines`).
const PAUSE: Duration = Duration::from_millis(5);

tokio::task_local! {
    /// The record of the request whose handling is being polled (see the module docs).
    pub static CURRENT: Arc<AccessRecord>;
}

/// Notes `reason` on the record of the request being handled, if there is one.
pub fn note_refusal(reason: Rejection) {
    let _ = CURRENT.try_with(|record| record.refused(reason));
}

/// Where lines go from JS's side: the bridge batches them to the callback. Must not block.
pub trait AccessSink: Send + Sync {
    fn access_line(&self, line: String);
}

enum Msg {
    Lines(Vec<u8>),
    /// Wakes the writer to take a reopened file now.
    Reopen,
    /// Answered once everything queued before it is written.
    Flush(mpsc::Sender<()>),
}

enum Output {
    Writer {
        queue: SyncSender<Msg>,
        /// A file opened by `reopen`, taken by the writer before its next write.
        reopened: Arc<Mutex<Option<File>>>,
        path: Option<PathBuf>,
    },
    Callback {
        sink: Arc<dyn AccessSink>,
        per_second: u32,
        /// (second, lines passed in it, left out since the last that passed)
        window: Mutex<(u64, u32, u64)>,
    },
}

/// One server's access log.
pub struct AccessLog {
    output: Output,
    pid: u32,
    hostname: String,
    written: AtomicU64,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the log (the file, in append mode) and starts its writer. `sink`: the JS bridge,
    /// for the callback form.
    pub fn open(
        target: &AccessLogTarget,
        queue: u32,
        per_second: u32,
        sink: Option<Arc<dyn AccessSink>>,
    ) -> Result<Arc<Self>, String> {
        let dropped = Arc::new(AtomicU64::new(0));
        let output = match target {
            AccessLogTarget::Callback => Output::Callback {
                sink: sink.ok_or("accessLog: a callback needs the JS bridge")?,
                per_second,
                window: Mutex::new((0, 0, 0)),
            },
            AccessLogTarget::Stdout | AccessLogTarget::File(_) => {
                let path = match target {
                    AccessLogTarget::File(path) => Some(path.clone()),
                    _ => None,
                };
                let sink: Box<dyn Write + Send> = match &path {
                    Some(path) => Box::new(append(path)?),
                    None => Box::new(std::io::stdout()),
                };
                let (queue, lines) = mpsc::sync_channel(queue as usize);
                let reopened = Arc::new(Mutex::new(None));
                let taken = Arc::clone(&reopened);
                let failed = Arc::clone(&dropped);
                std::thread::Builder::new()
                    .name("floodgate-access-log".into())
                    .spawn(move || write_lines(lines, sink, taken, failed))
                    .map_err(|err| format!("accessLog: cannot start its writer: {err}"))?;
                Output::Writer {
                    queue,
                    reopened,
                    path,
                }
            }
        };
        Ok(Arc::new(Self {
            output,
            pid: std::process::id(),
            hostname: hostname(),
            written: AtomicU64::new(0),
            dropped,
        }))
    }

    /// A record for a request that arrived now.
    pub fn start(self: &Arc<Self>, request: RequestLine) -> Arc<AccessRecord> {
        Arc::new(AccessRecord {
            log: Arc::clone(self),
            started: Instant::now(),
            request,
            status: AtomicU16::new(0),
            close_code: AtomicU16::new(0),
            reason: AtomicU8::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            user: OnceLock::new(),
            session: AtomicU8::new(0), // a plain request
        })
    }

    /// Reopens the file at its path (after log rotation renamed it): lines logged after this
    /// returns go to the new file. Nothing to do for stdout and the callback.
    pub fn reopen(&self) -> Result<(), String> {
        if let Output::Writer {
            queue,
            reopened,
            path: Some(path),
        } = &self.output
        {
            let file = append(path)?;
            *reopened.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
            let _ = queue.try_send(Msg::Reopen);
        }
        Ok(())
    }

    /// Waits (up to `timeout`) until every line queued so far is written. Blocking: call it
    /// off the runtime's workers.
    pub fn flush(&self, timeout: Duration) {
        if let Output::Writer { queue, .. } = &self.output {
            let (done, written) = mpsc::channel();
            let deadline = Instant::now() + timeout;
            let mut msg = Msg::Flush(done);
            loop {
                match queue.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                        msg = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => return,
                }
            }
            let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Lines handed to the writer (or the callback), and lines dropped (queue full, over the
    /// callback's rate, or a failed write).
    pub fn counts(&self) -> (u64, u64) {
        (self.written.load(Relaxed), self.dropped.load(Relaxed))
    }

    fn emit(&self, record: &AccessRecord) {
        let mut dropped_before = None;
        if let Output::Callback {
            per_second, window, ..
        } = &self.output
        {
            let second = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let mut window = window.lock().unwrap_or_else(|p| p.into_inner());
            if window.0 != second {
                *window = (second, 0, window.2);
            }
            if window.1 >= *per_second {
                window.2 += 1;
                self.dropped.fetch_add(1, Relaxed);
                return;
            }
            window.1 += 1;
            dropped_before = Some(std::mem::take(&mut window.2)).filter(|n| *n > 0);
        }
        // A line is ~300 bytes with a short url: one allocation, no regrowth.
        let mut line = Vec::with_capacity(512);
        record.format(&self.pid, &self.hostname, dropped_before, &mut line);
        match &self.output {
            Output::Writer { queue, .. } => match queue.try_send(Msg::Lines(line)) {
                Ok(()) => {
                    self.written.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    self.dropped.fetch_add(1, Relaxed);
                }
            },
            Output::Callback { sink, .. } => {
                line.pop();
                // Formatted by serde_json from `&str` fields: UTF-8.
                if let Ok(line) = String::from_utf8(line) {
                    self.written.fetch_add(1, Relaxed);
                    sink.access_line(line);
                }
            }
        }
    }
}

fn append(path: &PathBuf) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| format!("accessLog: cannot open {}: {err}", path.display()))
}

/// The writer thread: waits for a line, takes whatever else has queued (up to `BATCH` lines a
/// write) and writes it at once; then pauses for `PAUSE` before looking again, so that under
/// load lines gather in the queue and a request task's send finds no parked receiver to wake
/// (a futex call per line otherwise). It parks on the queue only once it is empty, and ends
/// when the log is dropped.
fn write_lines(
    lines: Receiver<Msg>,
    mut sink: Box<dyn Write + Send>,
    reopened: Arc<Mutex<Option<File>>>,
    dropped: Arc<AtomicU64>,
) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut flushes = Vec::new();
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while next.is_some() {
            let mut count = 0u64;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Lines(line) => {
                        buffer.extend_from_slice(&line);
                        count += 1;
                    }
                    Msg::Reopen => {}
                    Msg::Flush(done) => flushes.push(done),
                }
                if count < BATCH as u64 {
                    next = lines.try_recv().ok();
                }
            }
            if let Some(file) = reopened.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = sink.flush();
                sink = Box::new(file);
            }
            if !buffer.is_empty() {
                if sink.write_all(&buffer).and_then(|()| sink.flush()).is_err() {
                    dropped.fetch_add(count, Relaxed);
                }
                buffer.clear();
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if count >= BATCH as u64 {
                next = lines.try_recv().ok();
            } else {
                std::thread::sleep(PAUSE);
                next = lines.try_recv().ok();
            }
        }
    }
}

fn hostname() -> String {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd"
    ))]
    if let Ok(name) = nix::unistd::gethostname() {
        return name.to_string_lossy().into_owned();
    }
    std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

/// What a request's head said, kept for its line.
#[derive(Debug)]
pub struct RequestLine {
    pub method: http::Method,
    pub url: String,
    pub version: http::Version,
    pub tls: bool,
    pub client: IpAddr,
    pub port: u16,
}

impl RequestLine {
    pub fn new(head: &http::request::Parts, tls: bool, client: IpAddr, port: u16) -> RequestLine {
        let url = head
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str());
        RequestLine {
            method: head.method.clone(),
            url: crate::observe::reject::cut(url, MAX_URL).to_owned(),
            version: head.version,
            tls,
            client,
            port,
        }
    }
}

/// What kind of exchange a record ended as (0: a plain request).
const EVENT_STREAM: u8 = 1;
const WEBSOCKET: u8 = 2;

/// One request's line in the making; written when the last holder drops it.
#[derive(Debug)]
pub struct AccessRecord {
    log: Arc<AccessLog>,
    started: Instant,
    request: RequestLine,
    status: AtomicU16,
    close_code: AtomicU16,
    /// `Rejection as u8 + 1`, 0 for none: the last refusal noted.
    reason: AtomicU8,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    user: OnceLock<String>,
    session: AtomicU8,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessRecord {
    pub fn status(&self, status: u16) {
        self.status.store(status, Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    pub fn refused(&self, reason: Rejection) {
        self.reason.store(reason as u8 + 1, Relaxed);
    }

    pub fn user(&self, user: Option<&str>) {
        if let Some(user) = user {
            let _ = self.user.set(user.to_owned());
        }
    }

    /// The request became an event stream: logged when it ends.
    pub fn event_stream(&self) {
        self.session.store(EVENT_STREAM, Relaxed);
    }

    /// The request became a WebSocket session: logged when it ends, with its close code.
    pub fn websocket(&self) {
        self.session.store(WEBSOCKET, Relaxed);
    }

    pub fn close_code(&self, code: u16) {
        self.close_code.store(code, Relaxed);
    }

    fn format(&self, pid: &u32, hostname: &str, dropped: Option<u64>, out: &mut Vec<u8>) {
        let status = self.status.load(Relaxed);
        let reason = match self.reason.load(Relaxed) {
            0 => None,
            n => Rejection::ALL
                .get(n as usize - 1)
                .map(|reason| reason.as_str()),
        };
        // As pino-http's default levels: 5xx error, 4xx warn; a refusal is at least a warning.
        let level = match status {
            500.. => 50,
            400.. => 40,
            _ if reason.is_some() => 40,
            _ => 30,
        };
        let session = self.session.load(Relaxed);
        let msg = match (status, session) {
            (0, _) => "request aborted",
            (_, EVENT_STREAM) => "event stream ended",
            (_, WEBSOCKET) => "websocket closed",
            _ if reason.is_some() => "request refused",
            _ => "request completed",
        };
        let line = Line {
            level,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            pid: *pid,
            hostname,
            req: Req {
                method: self.request.method.as_str(),
                url: &self.request.url,
                protocol: match self.request.version {
                    http::Version::HTTP_2 => "h2",
                    http::Version::HTTP_10 => "http/1.0",
                    _ => "http/1.1",
                },
                tls: self.request.tls,
                remote_address: self.request.client,
                remote_port: self.request.port,
            },
            res: Res {
                // nginx's 499: the client left before a response was decided.
                status_code: if status == 0 { 499 } else { status },
            },
            response_time: (self.started.elapsed().as_micros() as f64) / 1000.0,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            user: self.user.get().map(String::as_str),
            reason,
            close_code: match self.close_code.load(Relaxed) {
                0 => None,
                code => Some(code),
            },
            dropped,
            msg,
        };
        // Serializing plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        self.log.emit(self);
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    level: u8,
    time: u64,
    pid: u32,
    hostname: &'a str,
    req: Req<'a>,
    res: Res,
    response_time: f64,
    bytes_in: u64,
    bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
    msg: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Req<'a> {
    method: &'a str,
    url: &'a str,
    protocol: &'static str,
    tls: bool,
    remote_address: IpAddr,
    remote_port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Res {
    status_code: u16,
}

/// A request body that counts its bytes into the request's record (when it has one).
pub struct CountedBody<B> {
    inner: B,
    record: Option<Arc<AccessRecord>>,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, record: Option<Arc<AccessRecord>>) -> Self {
        Self { inner, record }
    }
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let (std::task::Poll::Ready(Some(Ok(frame))), Some(record)) = (&polled, &this.record) {
            record.received(frame.data_ref().map_or(0, |data| data.len()));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestLine {
        let (head, ()) = http::Request::get("/a?b=1").body(()).unwrap().into_parts();
        RequestLine::new(&head, false, "127.0.0.2".parse().unwrap(), 4000)
    }

    #[test]
    fn a_record_becomes_one_json_line_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&AccessLogTarget::File(path.clone()), 16, 0, None).unwrap();
        let record = log.start(request());
        record.status(429);
        record.refused(Rejection::RateLimited);
        record.sent(18);
        drop(record);
        log.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], 40);
        assert_eq!(line["req"]["url"], "/a?b=1");
        assert_eq!(line["req"]["remoteAddress"], "127.0.0.2");
        assert_eq!(line["res"]["statusCode"], 429);
        assert_eq!(line["reason"], "rate_limited");
        assert_eq!(line["bytesOut"], 18);
        assert_eq!(log.counts(), (1, 0));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&AccessLogTarget::File(path), 1, 0, None).unwrap();
        for _ in 0..10_000 {
            log.start(request()).status(200);
        }
        let (written, dropped) = log.counts();
        assert_eq!(written + dropped, 10_000);
    }
}
