//! The WebSocket load client of `npm run bench`: one single-threaded process (the workloads pin it
//! to one core) that drives a server and prints one JSON line with what it measured.
//!
//!   ws-load echo   --url ws://127.0.0.1:PORT/ws/echo  --connections 50 --inflight 16 --size 32 --seconds 5
//!   ws-load fanout --url ws://127.0.0.1:PORT/ws/bench --connections 10000 --expect 5000000 [--idle-ms 2000] [--timeout-ms 60000]
//!   ws-load idle   --url ws://127.0.0.1:PORT/ws/idle  --connections 10000
//!
//! `fanout` and `idle` print `CONNECTED <n>` once every connection is open, then the JSON line when
//! done: `fanout` once `--expect` messages arrived in all (or none for `--idle-ms`), `idle` once a
//! line (or end of input) arrives on stdin. `--sources N` binds the client sockets round-robin to
//! 127.0.0.1..127.0.0.N, so 10,000+ connections never run short of ephemeral ports.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
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
    connections: usize,
    inflight: usize,
    size: usize,
    seconds: f64,
    expect: u64,
    idle_ms: u64,
    timeout_ms: u64,
    sources: u8,
    concurrency: usize,
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
        .unwrap_or_else(|| die("--url ws://127.0.0.1:PORT/path is required"));
    let authority = url
        .strip_prefix("ws://")
        .unwrap_or_else(|| die("--url must be ws://"))
        .split('/')
        .next()
        .unwrap();
    let addr = authority
        .parse()
        .unwrap_or_else(|_| die("--url must name an IPv4 address and port"));
    if !["echo", "fanout", "idle"].contains(&mode.as_str()) {
        die("usage: ws-load echo|fanout|idle --url ws://127.0.0.1:PORT/path [options]");
    }
    Args {
        mode,
        url,
        addr,
        connections: num("connections", 50.0) as usize,
        inflight: num("inflight", 16.0) as usize,
        size: num("size", 32.0) as usize,
        seconds: num("seconds", 5.0),
        expect: num("expect", 0.0) as u64,
        idle_ms: num("idle-ms", 2000.0) as u64,
        timeout_ms: num("timeout-ms", 60_000.0) as u64,
        sources: num("sources", 1.0).clamp(1.0, 250.0) as u8,
        concurrency: num("concurrency", 256.0).max(1.0) as usize,
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

fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn connect(args: &Args, index: usize, config: WebSocketConfig) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if args.sources > 1 {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (index % args.sources as usize) as u8);
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = socket.connect(args.addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ws, _response) = client_async_with_config(args.url.as_str(), stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Opens `args.connections` sockets, at most `args.concurrency` handshakes at a time; each open one
/// is handed to `each`. Resolves (opened, failed, first error).
async fn open_all<F>(
    args: &Rc<Args>,
    config: WebSocketConfig,
    each: F,
) -> (usize, usize, Option<String>)
where
    F: Fn(usize, Ws) + 'static,
{
    let gate = std::sync::Arc::new(Semaphore::new(args.concurrency));
    let each = Rc::new(each);
    let opened = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(0usize));
    let first_error = Rc::new(RefCell::new(None::<String>));
    let mut handles = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (args, each, opened, failed, first_error) = (
            args.clone(),
            each.clone(),
            opened.clone(),
            failed.clone(),
            first_error.clone(),
        );
        handles.push(spawn_local(async move {
            let result =
                tokio::time::timeout(Duration::from_secs(15), connect(&args, index, config)).await;
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

/// Each connection keeps `inflight` messages outstanding: sends that many, then one more per echo.
async fn echo(args: Rc<Args>) {
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let sockets = Rc::new(RefCell::new(Vec::new()));
    let collect = sockets.clone();
    let (opened, failed, error) =
        open_all(&args, config, move |_, ws| collect.borrow_mut().push(ws)).await;
    let payload = Utf8Bytes::from("x".repeat(args.size));
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
    let mut rtts = Vec::new();
    for task in tasks {
        rtts.extend(task.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    rtts.sort_unstable();
    emit(format!(
        "{{\"mode\":\"echo\",\"connected\":{opened},\"failed\":{failed},\"broken\":{},\"messages\":{},\"seconds\":{elapsed:.3},\"msgPerSec\":{:.1},\"p50Ms\":{},\"p99Ms\":{},\"clientCpuS\":{cpu:.2},\"error\":{}}}",
        broken.get(),
        received.get(),
        received.get() as f64 / elapsed,
        quantile_ms(&rtts, 0.5),
        quantile_ms(&rtts, 0.99),
        json_error(&error),
    ));
}

/// Counts every message the subscribed sockets receive; a `"t":<epoch ms>` in it gives a latency.
async fn fanout(args: Rc<Args>) {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let origin = Instant::now();
    let delivered = Rc::new(Cell::new(0u64));
    let first_ns = Rc::new(Cell::new(0u64));
    let last_ns = Rc::new(Cell::new(0u64));
    let closed = Rc::new(Cell::new(0usize));
    let latencies = Rc::new(RefCell::new(Vec::<u32>::new()));
    let (d, f, l, c, lat) = (
        delivered.clone(),
        first_ns.clone(),
        last_ns.clone(),
        closed.clone(),
        latencies.clone(),
    );
    let (opened, failed, error) = open_all(&args, config, move |_, mut ws| {
        let (delivered, first_ns, last_ns, closed, latencies) =
            (d.clone(), f.clone(), l.clone(), c.clone(), lat.clone());
        spawn_local(async move {
            while let Some(message) = ws.next().await {
                let text = match message {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Binary(_)) => Utf8Bytes::from_static(""),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                let at = origin.elapsed().as_nanos() as u64;
                if delivered.get() == 0 {
                    first_ns.set(at);
                }
                last_ns.set(at);
                delivered.set(delivered.get() + 1);
                if let Some(t) = text
                    .as_str()
                    .split_once("\"t\":")
                    .and_then(|(_, rest)| rest.split(['}', ',']).next()?.parse::<f64>().ok())
                {
                    let micros = ((now_epoch_ms() - t) * 1000.0).clamp(0.0, u32::MAX as f64) as u32;
                    latencies.borrow_mut().push(micros);
                }
            }
            closed.set(closed.get() + 1);
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
    let cpu_before = cpu_seconds();
    let connected_at = Instant::now();
    let timeout = Duration::from_millis(args.timeout_ms);
    let idle = Duration::from_millis(args.idle_ms);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = origin.elapsed();
        if args.expect > 0 && delivered.get() >= args.expect {
            break;
        }
        if delivered.get() > 0 && now.saturating_sub(Duration::from_nanos(last_ns.get())) > idle {
            break;
        }
        if connected_at.elapsed() > timeout || (opened > 0 && closed.get() >= opened) {
            break;
        }
    }
    let cpu = cpu_seconds() - cpu_before;
    let span = (last_ns.get().saturating_sub(first_ns.get())) as f64 / 1e9;
    let mut latencies = latencies.take();
    latencies.sort_unstable();
    emit(format!(
        "{{\"mode\":\"fanout\",\"connected\":{opened},\"failed\":{failed},\"closed\":{},\"delivered\":{},\"seconds\":{span:.3},\"msgPerSec\":{:.1},\"p50Ms\":{},\"p99Ms\":{},\"clientCpuS\":{cpu:.2},\"error\":{}}}",
        closed.get(),
        delivered.get(),
        if span > 0.0 { delivered.get() as f64 / span } else { 0.0 },
        quantile_ms(&latencies, 0.5),
        quantile_ms(&latencies, 0.99),
        json_error(&error),
    ));
}

/// Opens the connections and holds them, reading (to answer pings), until stdin says stop.
async fn idle(args: Rc<Args>) {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let closed = Rc::new(Cell::new(0usize));
    let c = closed.clone();
    let start = Instant::now();
    let (opened, failed, error) = open_all(&args, config, move |_, mut ws| {
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
            _ => idle(args).await,
        }
    });
    // Sockets are left to the kernel to close: no need to wait for 10,000 close handshakes.
    std::process::exit(0);
}
