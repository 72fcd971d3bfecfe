//! The WebSocket (and SSE) load client of `npm run bench`: one single-threaded process (the
//! workloads pin it to one core) that drives a server and prints one JSON line with what it measured.
//!
//!   ws-load echo   --url ws://127.0.0.1:PORT/ws/echo  --connections 50 --inflight 16 --size 32 [--payload TEXT] [--json 1] --seconds 5
//!   ws-load fanout --url ws://127.0.0.1:PORT/ws/bench --connections 10000 --expect 5000000 [--idle-ms 2000] [--timeout-ms 60000]
//!   ws-load idle   --url ws://127.0.0.1:PORT/ws/idle  --connections 10000 [--deflate 1 --json 1]
//!   ws-load sse    --url http://127.0.0.1:PORT/stream/sse --connections 10000 [--expect 10000000] [--idle-ms 2000] [--timeout-ms 60000]
//!
//! `sse` without `--expect` (or with 0) holds its idle streams until a line arrives on stdin.
//!
//! `fanout`, `idle` and `sse` print `CONNECTED <n>` once every connection is open (for `sse`: once
//! every subscriber has its response head), then the JSON line when done: `fanout` and `sse` once
//! `--expect` messages (events) arrived in all, or none for `--idle-ms`, or `--timeout-ms` passed;
//! `idle` once a line (or end of input) arrives on stdin. `--sources N` binds the client sockets
//! round-robin to 127.0.0.1..127.0.0.N, so 10,000+ connections never run short of ephemeral ports.
//!
//! `--deflate 1` (echo, fanout, idle) offers permessage-deflate as browsers do (Chrome and Firefox
//! send `permessage-deflate; client_max_window_bits` and keep their contexts unless the server
//! asks otherwise) and speaks what the server answers: with context takeover the inflater keeps
//! its window from message to message, without it the inflater is reset per message. Messages
//! the client sends are compressed once (a message compressed on its own is valid under either
//! setting: the client never refers back to earlier ones) and sent compressed every time, so
//! the server inflates each one; it deflates each reply. Replies are inflated on every
//! `--inflate-every`-th socket (default: all), which checks the server's output and, for
//! fan-out, gives the latencies; the other sockets count compressed messages unread, so a
//! single-core client can keep up with a million messages a second. `--json 1` makes the echo
//! (and idle) message 1 KiB of JSON-like text instead of `--size` bytes of "x".

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{spawn_local, LocalSet};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

type Ws = WebSocketStream<TcpStream>;

struct Args {
    mode: String,
    url: String,
    addr: SocketAddr,
    /// The request target of `--url` (`/` when it names none).
    path: String,
    connections: usize,
    inflight: usize,
    size: usize,
    /// The echo mode's message text instead of `size` × "x" (e.g. JSON for a validated route).
    payload: Option<String>,
    seconds: f64,
    expect: u64,
    idle_ms: u64,
    timeout_ms: u64,
    sources: u8,
    concurrency: usize,
    /// `fanout` against a Socket.IO server (Engine.IO 4 over WebSocket): join the default
    /// namespace (`40`), answer pings (`2` → `3`), count only event packets (`42[...]`).
    socketio: bool,
    /// `fanout` against Centrifugo (its JSON client protocol): connect, subscribe to the
    /// channel `bench`, answer pings (`{}` → `{}`), count only publications (`"push"`).
    centrifugo: bool,
    /// `fanout` / `sse`: add the latencies to the JSON line as `latencyHist`, [[0.1 ms, count], …]
    /// run-length, so the bench can merge the figures of several client processes exactly.
    histogram: bool,
    /// Offer permessage-deflate (see the module doc).
    deflate: bool,
    /// With `deflate`: every n-th socket inflates what it receives.
    inflate_every: usize,
    /// The echo message is 1 KiB of JSON-like text.
    json: bool,
}

fn parse_args() -> Args {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let mut get = std::collections::HashMap::new();
    while let Some(flag) = argv.next() {
        let flag = flag.trim_start_matches("--").to_string();
        match flag.split_once('=') {
            Some((key, value)) => get.insert(key.to_string(), value.to_string()),
            None => get.insert(flag, argv.next().unwrap_or_default()),
        };
    }
    let num = |key: &str, default: f64| {
        get.get(key)
            .map(|v| {
                v.parse::<f64>()
                    .unwrap_or_else(|_| die(&format!("--{key}: not a number")))
            })
            .unwrap_or(default)
    };
    let url = get
        .get("url")
        .cloned()
        .unwrap_or_else(|| die("--url ws://127.0.0.1:PORT/path (sse: http://) is required"));
    if !["echo", "fanout", "idle", "sse"].contains(&mode.as_str()) {
        die("usage: ws-load echo|fanout|idle --url ws://127.0.0.1:PORT/path [options]\n       ws-load sse --url http://127.0.0.1:PORT/path [options]");
    }
    let scheme = if mode == "sse" { "http://" } else { "ws://" };
    let rest = url
        .strip_prefix(scheme)
        .unwrap_or_else(|| die(&format!("--url must be {scheme}")));
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = authority
        .parse()
        .unwrap_or_else(|_| die("--url must name an IPv4 address and port"));
    Args {
        mode,
        url,
        addr,
        path,
        connections: num("connections", 50.0) as usize,
        inflight: num("inflight", 16.0) as usize,
        size: num("size", 32.0) as usize,
        payload: get.get("payload").cloned(),
        seconds: num("seconds", 5.0),
        expect: num("expect", 0.0) as u64,
        idle_ms: num("idle-ms", 2000.0) as u64,
        timeout_ms: num("timeout-ms", 60_000.0) as u64,
        sources: num("sources", 1.0).clamp(1.0, 250.0) as u8,
        concurrency: num("concurrency", 256.0).max(1.0) as usize,
        socketio: num("socketio", 0.0) != 0.0,
        centrifugo: num("centrifugo", 0.0) != 0.0,
        histogram: num("histogram", 0.0) != 0.0,
        deflate: num("deflate", 0.0) != 0.0,
        inflate_every: num("inflate-every", 1.0).max(1.0) as usize,
        json: num("json", 0.0) != 0.0,
    }
}

fn die(message: &str) -> ! {
    eprintln!("ws-load: {message}");
    std::process::exit(2)
}

/// utime + stime of this process in seconds, from /proc (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn now_epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// p-quantile of microsecond samples, in milliseconds (null when there are none).
fn quantile_ms(sorted: &[u32], q: f64) -> String {
    if sorted.is_empty() {
        return "null".into();
    }
    let at = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
    format!("{:.3}", sorted[at] as f64 / 1000.0)
}

/// Sorted microsecond samples as `[[tenths of a ms, count], …]`: a few thousand pairs where the
/// samples are millions.
fn histogram_json(sorted: &[u32]) -> String {
    let mut out = String::from("[");
    let mut i = 0;
    while i < sorted.len() {
        let bucket = sorted[i] / 100;
        let start = i;
        while i < sorted.len() && sorted[i] / 100 == bucket {
            i += 1;
        }
        if start > 0 {
            out.push(',');
        }
        out.push_str(&format!("[{bucket},{}]", i - start));
    }
    out.push(']');
    out
}

fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A TCP connection to `args.addr`, from source address `index % sources` (see `--sources`).
async fn tcp_connect(args: &Args, index: usize) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if args.sources > 1 {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (index % args.sources as usize) as u8);
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = socket.connect(args.addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

async fn connect(args: Rc<Args>, index: usize, config: WebSocketConfig) -> Result<Ws, String> {
    let stream = tcp_connect(&args, index).await?;
    let (ws, _response) = client_async_with_config(args.url.as_str(), stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// WebSocket handshakes, for `open_all`.
fn ws_open(config: WebSocketConfig) -> impl Fn(Rc<Args>, usize) -> WsOpening {
    move |args, index| Box::pin(connect(args, index, config))
}

type WsOpening = std::pin::Pin<Box<dyn Future<Output = Result<Ws, String>>>>;

/// Opens `args.connections` connections with `open`, at most `args.concurrency` handshakes at a
/// time; each open one is handed to `each`. Resolves (opened, failed, first error).
async fn open_all<T, O, Fut, F>(args: &Rc<Args>, open: O, each: F) -> (usize, usize, Option<String>)
where
    T: 'static,
    O: Fn(Rc<Args>, usize) -> Fut,
    Fut: Future<Output = Result<T, String>> + 'static,
    F: Fn(usize, T) + 'static,
{
    let gate = std::sync::Arc::new(Semaphore::new(args.concurrency));
    let each = Rc::new(each);
    let opened = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(0usize));
    let first_error = Rc::new(RefCell::new(None::<String>));
    let mut handles = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (each, opened, failed, first_error) = (
            each.clone(),
            opened.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let opening = open(args.clone(), index);
        handles.push(spawn_local(async move {
            let result = tokio::time::timeout(Duration::from_secs(15), opening).await;
            drop(permit);
            match result {
                Ok(Ok(ws)) => {
                    opened.set(opened.get() + 1);
                    each(index, ws);
                }
                Ok(Err(error)) => {
                    failed.set(failed.get() + 1);
                    first_error.borrow_mut().get_or_insert(error);
                }
                Err(_) => {
                    failed.set(failed.get() + 1);
                    first_error
                        .borrow_mut()
                        .get_or_insert("handshake timed out".into());
                }
            }
        }));
    }
    for handle in handles {
        let _ = handle.await;
    }
    let error = first_error.borrow().clone();
    (opened.get(), failed.get(), error)
}

fn json_error(error: &Option<String>) -> String {
    match error {
        Some(e) => format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "'")),
        None => "null".into(),
    }
}

/// 1 KiB of JSON-like text (`--json 1`): a batch of records, as a feed or an API would send.
fn json_message() -> String {
    let mut text = String::from(r#"{"type":"update","channel":"prices","seq":4812,"items":["#);
    let mut i = 0;
    loop {
        let item = format!(
            r#"{{"id":{},"symbol":"SYM{}","bid":{}.{:02},"ask":{}.{:02},"volume":{}}},"#,
            1000 + i,
            i * 7 % 97,
            100 + i * 13 % 41,
            i * 37 % 100,
            101 + i * 13 % 41,
            i * 53 % 100,
            i * 7919 % 100_000,
        );
        if text.len() + item.len() + 40 > 1024 {
            break;
        }
        text.push_str(&item);
        i += 1;
    }
    text.pop();
    text.push_str(r#"],"note":""#);
    while text.len() < 1024 - 2 {
        text.push('-');
    }
    text.push_str(r#""}"#);
    text
}

/// The echo's message: `--payload`, else 1 KiB of JSON (`--json`), else `--size` × "x".
fn echo_message(args: &Args) -> String {
    match (&args.payload, args.json) {
        (Some(payload), _) => payload.clone(),
        (None, true) => json_message(),
        (None, false) => "x".repeat(args.size),
    }
}

/// A client's frame of one whole message, masked; RSV1 marks a compressed payload.
fn client_frame(payload: &[u8], compressed: bool) -> Vec<u8> {
    const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![if compressed { 0xc1 } else { 0x81 }];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// `echo --deflate 1`: the echo over hand-made handshakes with permessage-deflate (tungstenite
/// has no compression). Each connection sends the same compressed frame (see the module doc)
/// and inflates every echo, checking its size.
async fn echo_deflate(args: Rc<Args>) {
    let sockets = Rc::new(RefCell::new(Vec::new()));
    let collect = sockets.clone();
    let (opened, failed, error) = open_all(&args, raw_ws_connect, move |index, raw| {
        collect.borrow_mut().push((index, raw))
    })
    .await;
    let message = echo_message(&args);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let cpu_before = cpu_seconds();
    let received = Rc::new(Cell::new(0u64));
    let broken = Rc::new(Cell::new(0usize));
    let wrong = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for (index, raw) in sockets.borrow_mut().drain(..) {
        let RawWs {
            mut stream,
            early,
            pmd,
        } = raw;
        let frame = match pmd {
            Some(pmd) => client_frame(&pmd.compress(message.as_bytes()), true),
            None => client_frame(message.as_bytes(), false),
        };
        let mut frames = WsFrames {
            inflater: pmd
                .filter(|_| index % args.inflate_every == 0)
                .map(|pmd| Box::new(Inflater::new(pmd))),
            count_messages: true,
            expect_len: message.len(),
            ..WsFrames::default()
        };
        let (received, broken, wrong, inflight) = (
            received.clone(),
            broken.clone(),
            wrong.clone(),
            args.inflight,
        );
        tasks.push(spawn_local(async move {
            let mut sent_at = VecDeque::with_capacity(inflight);
            let mut rtts: Vec<u32> = Vec::with_capacity(1 << 16);
            let run = async {
                let mut out = frame.repeat(inflight);
                for _ in 0..inflight {
                    sent_at.push_back(Instant::now());
                }
                let mut buf = vec![0u8; 64 * 1024];
                let mut input = early;
                loop {
                    stream.write_all(&out).await?;
                    out.clear();
                    if input.is_empty() {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        input.extend_from_slice(&buf[..n]);
                    }
                    let now = Instant::now();
                    let mut pong = false;
                    let open = frames.feed(&input, &mut pong, &mut |_| {
                        if let Some(at) = sent_at.pop_front() {
                            rtts.push(
                                now.duration_since(at).as_micros().min(u32::MAX as u128) as u32
                            );
                        }
                        received.set(received.get() + 1);
                        out.extend_from_slice(&frame);
                        sent_at.push_back(now);
                    });
                    input.clear();
                    if !open {
                        return Err(std::io::ErrorKind::ConnectionAborted.into());
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), std::io::Error>(())
            };
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline.into(), run).await {
                broken.set(broken.get() + 1);
            }
            wrong.set(wrong.get() + frames.wrong);
            rtts
        }));
    }
    let echoed = Echoed {
        opened,
        failed,
        broken,
        received,
        start,
        cpu_before,
    };
    echoed.report(tasks, Some(wrong), &error).await;
}

/// Each connection keeps `inflight` messages outstanding: sends that many, then one more per echo.
async fn echo(args: Rc<Args>) {
    if args.deflate {
        return echo_deflate(args).await;
    }
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let sockets = Rc::new(RefCell::new(Vec::new()));
    let collect = sockets.clone();
    let (opened, failed, error) = open_all(&args, ws_open(config), move |_, ws| {
        collect.borrow_mut().push(ws)
    })
    .await;
    let payload = Utf8Bytes::from(echo_message(&args));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let cpu_before = cpu_seconds();
    let received = Rc::new(Cell::new(0u64));
    let broken = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    for mut ws in sockets.borrow_mut().drain(..) {
        let (payload, received, broken, inflight) = (
            payload.clone(),
            received.clone(),
            broken.clone(),
            args.inflight,
        );
        tasks.push(spawn_local(async move {
            let mut sent_at = VecDeque::with_capacity(inflight);
            let mut rtts: Vec<u32> = Vec::with_capacity(1 << 16);
            let run = async {
                for _ in 0..inflight {
                    ws.feed(Message::Text(payload.clone())).await?;
                    sent_at.push_back(Instant::now());
                }
                ws.flush().await?;
                let mut next = ws.next().await;
                loop {
                    // Take every message already here, answer each, then write them in one flush.
                    loop {
                        match next {
                            Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                                let now = Instant::now();
                                if let Some(at) = sent_at.pop_front() {
                                    rtts.push(
                                        now.duration_since(at).as_micros().min(u32::MAX as u128)
                                            as u32,
                                    );
                                }
                                received.set(received.get() + 1);
                                ws.feed(Message::Text(payload.clone())).await?;
                                sent_at.push_back(now);
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(e),
                            None => {
                                return Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)
                            }
                        }
                        match ws.next().now_or_never() {
                            Some(message) => next = message,
                            None => break,
                        }
                    }
                    ws.flush().await?;
                    next = ws.next().await;
                }
                #[allow(unreachable_code)]
                Ok::<(), tokio_tungstenite::tungstenite::Error>(())
            };
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline.into(), run).await {
                broken.set(broken.get() + 1);
            }
            rtts
        }));
    }
    let echoed = Echoed {
        opened,
        failed,
        broken,
        received,
        start,
        cpu_before,
    };
    echoed.report(tasks, None, &error).await;
}

/// What an echo run counts, reported as its JSON line once its tasks' round trips are in (the
/// tasks still count until then).
struct Echoed {
    opened: usize,
    failed: usize,
    broken: Rc<Cell<usize>>,
    received: Rc<Cell<u64>>,
    start: Instant,
    cpu_before: f64,
}

impl Echoed {
    async fn report(
        self,
        tasks: Vec<tokio::task::JoinHandle<Vec<u32>>>,
        wrong: Option<Rc<Cell<u64>>>,
        error: &Option<String>,
    ) {
        let mut rtts = Vec::new();
        for task in tasks {
            rtts.extend(task.await.unwrap_or_default());
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - self.cpu_before;
        rtts.sort_unstable();
        let wrong = wrong.map_or(String::new(), |wrong| format!("\"wrong\":{},", wrong.get()));
        let received = self.received.get();
        emit(format!(
            "{{\"mode\":\"echo\",\"connected\":{},\"failed\":{},\"broken\":{},{wrong}\"messages\":{},\"seconds\":{elapsed:.3},\"msgPerSec\":{:.1},\"p50Ms\":{},\"p99Ms\":{},\"clientCpuS\":{cpu:.2},\"error\":{}}}",
            self.opened,
            self.failed,
            self.broken.get(),
            received,
            received as f64 / elapsed,
            quantile_ms(&rtts, 0.5),
            quantile_ms(&rtts, 0.99),
            json_error(error),
        ));
    }
}

/// Counts the events the subscribed sockets receive (one `"t":<epoch ms>` stamp each, which gives
/// its latency). Read raw after a hand-made handshake (`raw_ws_connect`): frames are parsed in
/// place from one buffer per thread, and each socket is read once per readiness (see
/// `read_each`), which costs a fraction of tungstenite's stream per message. Socket.IO keeps the
/// tungstenite path (`fanout_tungstenite`).
async fn fanout(args: Rc<Args>) {
    if args.socketio {
        return fanout_tungstenite(args).await;
    }
    let stats = Deliveries::new(args.expect);
    let shared = stats.clone();
    let every = args.inflate_every;
    let (opened, failed, error) = open_all(&args, raw_ws_connect, move |index, raw| {
        let stats = shared.clone();
        let RawWs { stream, early, pmd } = raw;
        spawn_local(async move {
            let mut frames = WsFrames {
                inflater: pmd
                    .filter(|_| index % every == 0)
                    .map(|pmd| Box::new(Inflater::new(pmd))),
                ..WsFrames::default()
            };
            let mut pong = false;
            let mut take = |bytes: &[u8], socket: &mut &std::net::TcpStream| -> bool {
                let now_ms = now_epoch_ms();
                let mut count = 0u64;
                let mut latencies = stats.latencies.borrow_mut();
                let open = frames.feed(bytes, &mut pong, &mut |t: f64| {
                    count += 1;
                    if t.is_finite() {
                        latencies.push(((now_ms - t) * 1000.0).clamp(0.0, u32::MAX as f64) as u32);
                    }
                });
                drop(latencies);
                if count > 0 {
                    stats.arrived(count);
                }
                // Centrifugo's ping is `{}`; its pong is `{}` too (masked, as a client's frame must be).
                if std::mem::take(&mut pong) {
                    let _ = std::io::Write::write_all(socket, &masked_text(b"{}"));
                }
                open
            };
            let Ok(stream) = stream.into_std() else {
                stats.closed.set(stats.closed.get() + 1);
                return;
            };
            if take(&early, &mut &stream) {
                read_each(stream, take).await;
            }
            stats.closed.set(stats.closed.get() + 1);
        });
    })
    .await;
    emit(format!("CONNECTED {opened}"));
    if failed > 0 {
        emit(format!(
            "{{\"mode\":\"fanout\",\"connected\":{opened},\"failed\":{failed},\"error\":{}}}",
            json_error(&error)
        ));
        return;
    }
    stats.report("fanout", &args, opened, failed, &error).await;
}

thread_local! {
    /// The one read buffer of every socket of this thread: reads never wait holding it.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// Reads `stream` whenever it is readable, handing each read's bytes and the socket (for a
/// reply) to `take` (false: stop). A read shorter than the buffer drained the
/// socket, so readiness is cleared without the extra read that would only say "would block"
/// (tokio's own `read` makes that second call): one `recv` per wake-up, not two.
async fn read_each(
    stream: std::net::TcpStream,
    mut take: impl FnMut(&[u8], &mut &std::net::TcpStream) -> bool,
) {
    // `new` is deprecated for any `AsRawFd`; a `TcpStream` owns its descriptor, so it is sound.
    #[allow(deprecated)]
    let Ok(fd) = tokio::io::unix::AsyncFd::new(stream) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let open = READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            match std::io::Read::read(&mut guard.get_inner(), &mut buf) {
                Ok(0) => false,
                Ok(n) => {
                    if n < buf.len() {
                        guard.clear_ready();
                    }
                    take(&buf[..n], &mut guard.get_inner())
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    true
                }
                Err(_) => false,
            }
        });
        if !open {
            return;
        }
    }
}

/// A client's text frame (masked, as RFC 6455 requires of clients), for short payloads.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// permessage-deflate as the server answered it.
#[derive(Clone, Copy)]
struct Pmd {
    /// The server compresses each message on its own: inflate each on its own too.
    server_no_context_takeover: bool,
    /// The window the client's compressor may use.
    client_max_window_bits: u8,
}

impl Pmd {
    /// From the `101`'s head (lower case): `None` when the server declined compression.
    fn answered(head: &str) -> Option<Pmd> {
        let line = head
            .lines()
            .find(|line| line.starts_with("sec-websocket-extensions:"))?;
        if !line.contains("permessage-deflate") {
            return None;
        }
        let client_max_window_bits = line
            .split(';')
            .filter_map(|param| param.trim().strip_prefix("client_max_window_bits="))
            .find_map(|bits| bits.trim().trim_matches('"').parse().ok())
            .unwrap_or(15);
        Some(Pmd {
            server_no_context_takeover: line.contains("server_no_context_takeover"),
            client_max_window_bits,
        })
    }

    /// `message` compressed on its own, as one message's payload (the trailing
    /// `00 00 ff ff` taken off, RFC 7692 section 7.2.1).
    fn compress(&self, message: &[u8]) -> Vec<u8> {
        let mut z = flate2::Compress::new_with_window_bits(
            flate2::Compression::default(),
            false,
            self.client_max_window_bits.clamp(9, 15),
        );
        let mut out = Vec::with_capacity(message.len() + 64);
        z.compress_vec(message, &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        while out.capacity() == out.len() {
            out.reserve(256);
            z.compress_vec(&[], &mut out, flate2::FlushCompress::Sync)
                .expect("deflate");
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        out
    }
}

/// A socket after a hand-made handshake.
struct RawWs {
    stream: TcpStream,
    /// Frame bytes that came with the `101`.
    early: Vec<u8>,
    pmd: Option<Pmd>,
}

/// The WebSocket handshake by hand (the path of `--url`, permessage-deflate offered with
/// `--deflate`), and for Centrifugo its connect and subscribe commands.
async fn raw_ws_connect(args: Rc<Args>, index: usize) -> Result<RawWs, String> {
    let mut stream = tcp_connect(&args, index).await?;
    // What Chrome and Firefox offer.
    let extensions = if args.deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n",
        args.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the 101".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 16 * 1024 {
            return Err("response head over 16 KiB".into());
        }
    };
    let status =
        String::from_utf8_lossy(&head[..head.iter().position(|&b| b == b'\r').unwrap_or(0)])
            .into_owned();
    if status.split(' ').nth(1) != Some("101") {
        return Err(format!("answered {status:?}"));
    }
    let pmd = Pmd::answered(&String::from_utf8_lossy(&head[..end]).to_ascii_lowercase());
    if args.deflate && pmd.is_none() {
        return Err("the server declined permessage-deflate".into());
    }
    if args.centrifugo {
        for command in [
            &br#"{"id":1,"connect":{"name":"ws-load"}}"#[..],
            &br#"{"id":2,"subscribe":{"channel":"bench"}}"#[..],
        ] {
            stream
                .write_all(&masked_text(command))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(RawWs {
        stream,
        early: head[end..].to_vec(),
        pmd,
    })
}

/// Server frames parsed as they arrive, however reads split them: each data frame's payload is
/// scanned for stamps; a close frame ends the stream. A compressed message (RSV1) is inflated
/// as it arrives when the socket has an `inflater`, and counted unread otherwise.
#[derive(Default)]
struct WsFrames {
    header: [u8; 10],
    have: usize,
    /// Payload bytes of the current frame still to come (None: reading a header).
    left: Option<u64>,
    opcode: u8,
    /// The current frame ends its message.
    fin: bool,
    /// The current message was sent compressed.
    compressed: bool,
    /// The current frame's payload is exactly `{}` so far (Centrifugo's ping).
    ping: Vec<u8>,
    stamps: Stamps,
    inflater: Option<Box<Inflater>>,
    /// Count whole data messages (as `found(NaN)`) instead of stamps (the echo).
    count_messages: bool,
    /// Inflated bytes of the current message, and messages whose inflated size was not
    /// `expect_len` (the echo's check of the server's output).
    inflated: usize,
    expect_len: usize,
    wrong: u64,
    /// A ping arrived (the idle sockets answer it).
    pinged: bool,
}

impl WsFrames {
    /// False once the server closed; sets `pong` when a `{}` message arrived.
    fn feed(&mut self, mut input: &[u8], pong: &mut bool, found: &mut impl FnMut(f64)) -> bool {
        while !input.is_empty() {
            match self.left {
                None => {
                    self.header[self.have] = input[0];
                    self.have += 1;
                    input = &input[1..];
                    if self.have < 2 {
                        continue;
                    }
                    let need = match self.header[1] & 0x7f {
                        126 => 4,
                        127 => 10,
                        _ => 2,
                    };
                    if self.have < need {
                        continue;
                    }
                    let len = match need {
                        4 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                        10 => u64::from_be_bytes(self.header[2..10].try_into().unwrap()),
                        _ => (self.header[1] & 0x7f) as u64,
                    };
                    self.opcode = self.header[0] & 0x0f;
                    self.fin = self.header[0] & 0x80 != 0;
                    if self.opcode == 8 {
                        return false;
                    }
                    if matches!(self.opcode, 1 | 2) {
                        self.compressed = self.header[0] & 0x40 != 0;
                        self.inflated = 0;
                    }
                    self.have = 0;
                    self.ping.clear();
                    self.left = Some(len);
                    if len == 0 {
                        self.left = None;
                        self.frame_done(pong, found);
                    }
                }
                Some(left) => {
                    let n = left.min(input.len() as u64) as usize;
                    let (payload, rest) = input.split_at(n);
                    input = rest;
                    if matches!(self.opcode, 0..=2) {
                        self.data(payload, found);
                    }
                    let left = left - n as u64;
                    self.left = (left > 0).then_some(left);
                    if left == 0 {
                        self.frame_done(pong, found);
                    }
                }
            }
        }
        true
    }

    fn data(&mut self, payload: &[u8], found: &mut impl FnMut(f64)) {
        if self.compressed {
            if let Some(inflater) = self.inflater.as_mut() {
                let (stamps, inflated, scan) =
                    (&mut self.stamps, &mut self.inflated, !self.count_messages);
                inflater.feed(payload, false, &mut |out| {
                    *inflated += out.len();
                    if scan {
                        stamps.feed(out, found);
                    }
                });
            }
            return;
        }
        self.inflated += payload.len();
        if !self.count_messages {
            self.stamps.feed(payload, found);
        }
        if self.ping.len() + payload.len() <= 2 {
            self.ping.extend_from_slice(payload);
        }
    }

    fn frame_done(&mut self, pong: &mut bool, found: &mut impl FnMut(f64)) {
        if self.opcode == 9 {
            self.pinged = true;
        }
        if !matches!(self.opcode, 0..=2) {
            return;
        }
        if !self.fin {
            return;
        }
        if self.compressed {
            match self.inflater.as_mut() {
                Some(inflater) => {
                    let (stamps, inflated, scan) =
                        (&mut self.stamps, &mut self.inflated, !self.count_messages);
                    inflater.feed(&[0, 0, 0xff, 0xff], true, &mut |out| {
                        *inflated += out.len();
                        if scan {
                            stamps.feed(out, found);
                        }
                    });
                    inflater.message_done();
                }
                // Not inflated on this socket: counted, without a latency.
                None if !self.count_messages => found(f64::NAN),
                None => {}
            }
        }
        if self.count_messages {
            if self.expect_len > 0
                && (self.inflater.is_some() || !self.compressed)
                && self.inflated != self.expect_len
            {
                self.wrong += 1;
            }
            found(f64::NAN);
        }
        if self.ping == b"{}" {
            *pong = true;
        }
    }
}

/// A socket's permessage-deflate inflater (RFC 7692): raw deflate, fed as payload arrives.
struct Inflater {
    z: flate2::Decompress,
    /// The server keeps no context: each message is inflated on its own.
    reset_each: bool,
}

impl Inflater {
    fn new(pmd: Pmd) -> Self {
        Self {
            z: flate2::Decompress::new(false),
            reset_each: pmd.server_no_context_takeover,
        }
    }

    /// Inflates `input`, handing each piece of output to `out`.
    fn feed(&mut self, mut input: &[u8], sync: bool, out: &mut impl FnMut(&[u8])) {
        let mut buf = [0u8; 4096];
        let flush = if sync {
            flate2::FlushDecompress::Sync
        } else {
            flate2::FlushDecompress::None
        };
        loop {
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let status = self.z.decompress(input, &mut buf, flush);
            let used = (self.z.total_in() - before_in) as usize;
            let made = (self.z.total_out() - before_out) as usize;
            out(&buf[..made]);
            input = &input[used..];
            if status.is_err() || (used == 0 && made == 0) {
                return;
            }
            if input.is_empty() && made < buf.len() {
                return;
            }
        }
    }

    fn message_done(&mut self) {
        if self.reset_each {
            self.z.reset(false);
        }
    }
}

/// `fanout --socketio 1`: counts every message the subscribed sockets receive; a `"t":<epoch ms>` in it gives a latency.
async fn fanout_tungstenite(args: Rc<Args>) {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let stats = Deliveries::new(args.expect);
    let shared = stats.clone();
    let socketio = args.socketio;
    let centrifugo = args.centrifugo;
    let (opened, failed, error) = open_all(&args, ws_open(config), move |_, mut ws| {
        let stats = shared.clone();
        spawn_local(async move {
            if socketio && ws.send(Message::text("40")).await.is_err() {
                return;
            }
            if centrifugo {
                let commands = [
                    r#"{"id":1,"connect":{"name":"ws-load"}}"#,
                    r#"{"id":2,"subscribe":{"channel":"bench"}}"#,
                ];
                for command in commands {
                    if ws.send(Message::text(command)).await.is_err() {
                        return;
                    }
                }
            }
            while let Some(message) = ws.next().await {
                let text = match message {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Binary(_)) => Utf8Bytes::from_static(""),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                if socketio && !text.as_str().starts_with("42") {
                    if text.as_str() == "2" && ws.send(Message::text("3")).await.is_err() {
                        break;
                    }
                    continue;
                }
                if centrifugo && !text.as_str().contains("\"push\"") {
                    if text.as_str().trim() == "{}" && ws.send(Message::text("{}")).await.is_err() {
                        break;
                    }
                    continue;
                }
                // Centrifugo may put several publications in one frame, one JSON per line;
                // other servers send one event per message (split at NUL: never in JSON).
                let events = text
                    .as_str()
                    .split(if centrifugo { '\n' } else { '\0' })
                    .filter(|line| !centrifugo || line.contains("\"push\""));
                for event in events {
                    stats.arrived(1);
                    if let Some(t) = event
                        .split_once("\"t\":")
                        .and_then(|(_, rest)| rest.split(['}', ',']).next()?.parse::<f64>().ok())
                    {
                        let micros =
                            ((now_epoch_ms() - t) * 1000.0).clamp(0.0, u32::MAX as f64) as u32;
                        stats.latencies.borrow_mut().push(micros);
                    }
                }
            }
            stats.closed.set(stats.closed.get() + 1);
        });
    })
    .await;
    emit(format!("CONNECTED {opened}"));
    if failed > 0 {
        emit(format!(
            "{{\"mode\":\"fanout\",\"connected\":{opened},\"failed\":{failed},\"error\":{}}}",
            json_error(&error)
        ));
        return;
    }
    stats.report("fanout", &args, opened, failed, &error).await;
}

/// `idle --deflate 1`: hand-made handshakes offering permessage-deflate; with `--json 1` each
/// socket first sends one compressed message and waits for its echo (so the server has
/// compressed and inflated once: contexts of their own are created), then holds the socket,
/// answering pings, until stdin says stop.
async fn idle_deflate(args: Rc<Args>) {
    let closed = Rc::new(Cell::new(0usize));
    let c = closed.clone();
    let start = Instant::now();
    let message = Rc::new(args.json.then(json_message));
    let open = move |args: Rc<Args>, index: usize| {
        let message = message.clone();
        async move {
            let mut raw = raw_ws_connect(args, index).await?;
            let (Some(message), Some(pmd)) = (message.as_ref(), raw.pmd) else {
                return Ok::<_, String>((raw, WsFrames::default()));
            };
            let frame = client_frame(&pmd.compress(message.as_bytes()), true);
            raw.stream
                .write_all(&frame)
                .await
                .map_err(|e| e.to_string())?;
            let mut frames = WsFrames {
                count_messages: true,
                ..WsFrames::default()
            };
            let mut echoed = false;
            let mut pong = false;
            let mut input = std::mem::take(&mut raw.early);
            let mut buf = [0u8; 4096];
            while !echoed {
                if input.is_empty() {
                    let n = raw.stream.read(&mut buf).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("closed before the echo".into());
                    }
                    input.extend_from_slice(&buf[..n]);
                }
                if !frames.feed(&input, &mut pong, &mut |_| echoed = true) {
                    return Err("closed before the echo".into());
                }
                input.clear();
            }
            Ok((raw, frames))
        }
    };
    let (opened, failed, error) = open_all(&args, open, move |_, (raw, mut frames)| {
        let closed = c.clone();
        spawn_local(async move {
            let RawWs { stream, early, .. } = raw;
            let mut pong = false;
            let mut take = |bytes: &[u8], socket: &mut &std::net::TcpStream| -> bool {
                let open = frames.feed(bytes, &mut pong, &mut |_| {});
                if std::mem::take(&mut frames.pinged) {
                    let _ = std::io::Write::write_all(socket, &[0x8a, 0x80, 1, 2, 3, 4]);
                }
                open
            };
            if let Ok(stream) = stream.into_std() {
                if take(&early, &mut &stream) {
                    read_each(stream, take).await;
                }
            }
            closed.set(closed.get() + 1);
        });
    })
    .await;
    idle_report(&args, opened, failed, error, &closed, start).await;
}

/// Once every socket is open: `CONNECTED`, then the result line when stdin says stop.
async fn idle_report(
    args: &Args,
    opened: usize,
    failed: usize,
    error: Option<String>,
    closed: &Cell<usize>,
    start: Instant,
) {
    let connect_seconds = start.elapsed().as_secs_f64();
    emit(format!("CONNECTED {opened}"));
    let mut line = String::new();
    if failed > 0 {
        emit(format!(
            "{{\"mode\":\"idle\",\"connected\":{opened},\"failed\":{failed},\"error\":{}}}",
            json_error(&error)
        ));
        return;
    }
    let _ = tokio::time::timeout(
        Duration::from_millis(args.timeout_ms),
        tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line),
    )
    .await;
    emit(format!(
        "{{\"mode\":\"idle\",\"connected\":{opened},\"failed\":{failed},\"closed\":{},\"connectSeconds\":{connect_seconds:.3},\"error\":{}}}",
        closed.get(),
        json_error(&error),
    ));
}

/// Opens the connections and holds them, reading (to answer pings), until stdin says stop.
async fn idle(args: Rc<Args>) {
    if args.deflate {
        return idle_deflate(args).await;
    }
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let closed = Rc::new(Cell::new(0usize));
    let c = closed.clone();
    let start = Instant::now();
    let (opened, failed, error) = open_all(&args, ws_open(config), move |_, mut ws| {
        let closed = c.clone();
        spawn_local(async move {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
            }
            closed.set(closed.get() + 1);
        });
    })
    .await;
    idle_report(&args, opened, failed, error, &closed, start).await;
}

/// An SSE subscription whose response head has arrived: the socket, any body bytes that came
/// with the head, and whether the body is chunked.
struct Subscriber {
    stream: TcpStream,
    early: Vec<u8>,
    chunked: bool,
}

/// Sends `GET <path>` for an event stream and reads the response head (a status other than 200
/// is an error).
async fn subscribe(args: Rc<Args>, index: usize) -> Result<Subscriber, String> {
    let mut stream = tcp_connect(&args, index).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        args.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 16 * 1024 {
            return Err("response head over 16 KiB".into());
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let status_line = text.lines().next().unwrap_or_default();
    if status_line.split(' ').nth(1) != Some("200") {
        return Err(format!("answered {status_line:?}"));
    }
    let chunked = text
        .lines()
        .any(|line| line.starts_with("transfer-encoding:") && line.contains("chunked"));
    Ok(Subscriber {
        stream,
        early: head[end..].to_vec(),
        chunked,
    })
}

/// Undoes chunked transfer coding as bytes arrive, however the reads split it.
enum Chunked {
    /// In a chunk-size line; `ext` once past the hex digits (extensions, CR).
    Size { size: u64, ext: bool },
    /// This many data bytes of the chunk still to come.
    Data(u64),
    /// After a chunk's data, up to the end of its CRLF.
    Crlf,
    /// The last (zero-size) chunk arrived: the body is over.
    Done,
}

impl Chunked {
    fn feed(&mut self, mut input: &[u8], mut data: impl FnMut(&[u8])) {
        while !input.is_empty() {
            match self {
                Chunked::Size { size, ext } => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        *self = match *size {
                            0 => Chunked::Done,
                            size => Chunked::Data(size),
                        };
                    } else if let (false, Some(digit)) = (*ext, (b as char).to_digit(16)) {
                        *size = size.saturating_mul(16).saturating_add(digit as u64);
                    } else {
                        *ext = true;
                    }
                }
                Chunked::Data(left) => {
                    let n = (*left).min(input.len() as u64) as usize;
                    data(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Chunked::Crlf;
                    }
                }
                Chunked::Crlf => match input.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        input = &input[at + 1..];
                        *self = Chunked::Size {
                            size: 0,
                            ext: false,
                        };
                    }
                    None => return,
                },
                Chunked::Done => return,
            }
        }
    }
}

const STAMP: &[u8] = b"\"t\":";

/// Finds every `"t":<number>` in the event data, however the reads split it, without allocating.
#[derive(Default)]
struct Stamps {
    /// How much of `STAMP` the last bytes matched.
    matched: usize,
    /// After a whole `STAMP`: the number so far.
    in_number: bool,
    number: [u8; 32],
    len: usize,
}

impl Stamps {
    /// Calls `found` with each timestamp once it is complete (NaN for one that does not parse).
    fn feed(&mut self, input: &[u8], found: &mut impl FnMut(f64)) {
        let mut i = 0;
        while i < input.len() {
            if !self.in_number && self.matched == 0 {
                match input[i..].iter().position(|&b| b == b'"') {
                    Some(at) => i += at,
                    None => return,
                }
            }
            let b = input[i];
            i += 1;
            if self.in_number {
                if b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E') {
                    if self.len < self.number.len() {
                        self.number[self.len] = b;
                        self.len += 1;
                    }
                    continue;
                }
                if b == b' ' && self.len == 0 {
                    continue;
                }
                self.in_number = false;
                found(
                    std::str::from_utf8(&self.number[..self.len])
                        .ok()
                        .and_then(|text| text.parse::<f64>().ok())
                        .unwrap_or(f64::NAN),
                );
            }
            if b == STAMP[self.matched] {
                self.matched += 1;
                if self.matched == STAMP.len() {
                    self.matched = 0;
                    self.in_number = true;
                    self.len = 0;
                }
            } else {
                self.matched = usize::from(b == b'"');
            }
        }
    }
}

/// What the subscribers (fan-out sockets or event streams) received, all told.
struct Deliveries {
    origin: Instant,
    delivered: Cell<u64>,
    first_ns: Cell<u64>,
    last_ns: Cell<u64>,
    closed: Cell<usize>,
    /// Publish-to-receive latencies, microseconds.
    latencies: RefCell<Vec<u32>>,
}

impl Deliveries {
    fn new(expect: u64) -> Rc<Self> {
        Rc::new(Self {
            origin: Instant::now(),
            delivered: Cell::new(0),
            first_ns: Cell::new(0),
            last_ns: Cell::new(0),
            closed: Cell::new(0),
            latencies: RefCell::new(Vec::with_capacity(expect.min(1 << 26) as usize)),
        })
    }

    /// `count` messages arrived just now.
    fn arrived(&self, count: u64) {
        let at = self.origin.elapsed().as_nanos() as u64;
        if self.delivered.get() == 0 {
            self.first_ns.set(at);
        }
        self.last_ns.set(at);
        self.delivered.set(self.delivered.get() + count);
    }

    /// Waits until everything expected arrived, deliveries went quiet for `--idle-ms`, every
    /// subscriber closed, or `--timeout-ms` passed; then prints the one result line.
    async fn report(
        &self,
        mode: &str,
        args: &Args,
        opened: usize,
        failed: usize,
        error: &Option<String>,
    ) {
        let cpu_before = cpu_seconds();
        let connected_at = Instant::now();
        let timeout = Duration::from_millis(args.timeout_ms);
        if args.expect == 0 {
            // Nothing to count (idle streams): hold them until stdin says stop, as `idle` does.
            let mut line = String::new();
            let _ = tokio::time::timeout(
                timeout,
                tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line),
            )
            .await;
        }
        let idle = Duration::from_millis(args.idle_ms);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let delivered = self.delivered.get();
            if delivered >= args.expect {
                break;
            }
            let since_last = self
                .origin
                .elapsed()
                .saturating_sub(Duration::from_nanos(self.last_ns.get()));
            if delivered > 0 && since_last > idle {
                break;
            }
            if connected_at.elapsed() > timeout || (opened > 0 && self.closed.get() >= opened) {
                break;
            }
        }
        let cpu = cpu_seconds() - cpu_before;
        let span = (self.last_ns.get().saturating_sub(self.first_ns.get())) as f64 / 1e9;
        let delivered = self.delivered.get();
        let mut latencies = self.latencies.take();
        latencies.sort_unstable();
        let histogram = if args.histogram {
            format!(",\"latencyHist\":{}", histogram_json(&latencies))
        } else {
            String::new()
        };
        emit(format!(
            "{{\"mode\":\"{mode}\",\"connected\":{opened},\"failed\":{failed},\"closed\":{},\"delivered\":{delivered},\"seconds\":{span:.3},\"msgPerSec\":{:.1},\"p50Ms\":{},\"p99Ms\":{},\"maxMs\":{},\"clientCpuS\":{cpu:.2},\"error\":{}{histogram}}}",
            self.closed.get(),
            if span > 0.0 { delivered as f64 / span } else { 0.0 },
            quantile_ms(&latencies, 0.5),
            quantile_ms(&latencies, 0.99),
            quantile_ms(&latencies, 1.0),
            json_error(error),
        ));
    }
}

/// One subscriber's body: its chunked decoding and timestamp scan.
struct SseBody {
    chunked: Option<Chunked>,
    stamps: Stamps,
}

impl SseBody {
    /// Takes the bytes of one read, just received; false once the body is over.
    fn take(&mut self, bytes: &[u8], stats: &Deliveries) -> bool {
        let now_ms = now_epoch_ms();
        let mut count = 0u64;
        let mut latencies = stats.latencies.borrow_mut();
        let mut found = |t: f64| {
            count += 1;
            if t.is_finite() {
                latencies.push(((now_ms - t) * 1000.0).clamp(0.0, u32::MAX as f64) as u32);
            }
        };
        let stamps = &mut self.stamps;
        let open = match &mut self.chunked {
            Some(chunked) => {
                chunked.feed(bytes, |data| stamps.feed(data, &mut found));
                !matches!(chunked, Chunked::Done)
            }
            None => {
                stamps.feed(bytes, &mut found);
                true
            }
        };
        if count > 0 {
            stats.arrived(count);
        }
        open
    }
}

/// Subscribes raw HTTP/1.1 sockets to an event stream and counts the events each receives; the
/// `"t":<epoch ms>` the publisher puts in every event gives its latency.
async fn sse(args: Rc<Args>) {
    let stats = Deliveries::new(args.expect);
    let shared = stats.clone();
    let (opened, failed, error) = open_all(&args, subscribe, move |_, subscriber| {
        let stats = shared.clone();
        spawn_local(async move {
            let Subscriber {
                stream,
                early,
                chunked,
            } = subscriber;
            let mut body = SseBody {
                chunked: chunked.then_some(Chunked::Size {
                    size: 0,
                    ext: false,
                }),
                stamps: Stamps::default(),
            };
            if body.take(&early, &stats) {
                if let Ok(stream) = stream.into_std() {
                    read_each(stream, |bytes, _| body.take(bytes, &stats)).await;
                }
            }
            stats.closed.set(stats.closed.get() + 1);
        });
    })
    .await;
    emit(format!("CONNECTED {opened}"));
    if failed > 0 {
        emit(format!(
            "{{\"mode\":\"sse\",\"connected\":{opened},\"failed\":{failed},\"error\":{}}}",
            json_error(&error)
        ));
        return;
    }
    stats.report("sse", &args, opened, failed, &error).await;
}

fn main() {
    let args = Rc::new(parse_args());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    LocalSet::new().block_on(&runtime, async move {
        match args.mode.as_str() {
            "echo" => echo(args).await,
            "fanout" => fanout(args).await,
            "sse" => sse(args).await,
            _ => idle(args).await,
        }
    });
    // Sockets are left to the kernel to close: no need to wait for 10,000 close handshakes.
    std::process::exit(0);
}
