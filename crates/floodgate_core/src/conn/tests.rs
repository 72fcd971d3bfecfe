//! The core served over real sockets on 127.0.0.1: files, limits and deadlines end to end.

use crate::test_support::serve_route;
use crate::RunningServer;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(root: &std::path::Path, options: serde_json::Value) -> RunningServer {
    start_with(root, options, json!({ "rateLimitRequests": 100 })).await
}

async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello world").unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_files_and_ranges() {
    let dir = folder();
    let server = start(dir.path(), json!({})).await;
    let addr = server.local_addr();
    let full = exchange(
        addr,
        "GET /stream/files/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(full.starts_with("HTTP/1.1 200 OK\r\n"), "{full}");
    assert!(full.ends_with("\r\n\r\nhello world"));
    let range = exchange(
        addr,
        "GET /stream/files/hello.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=6-\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        range.starts_with("HTTP/1.1 206 Partial Content\r\n"),
        "{range}"
    );
    assert!(range.contains("content-range: bytes 6-10/11\r\n"));
    assert!(range.ends_with("\r\n\r\nworld"));
    let escape = exchange(addr, "GET /stream/files/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(escape.starts_with("HTTP/1.1 404 "), "{escape}");
    server.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_head_gets_408_at_header_timeout() {
    let dir = folder();
    let server = start(dir.path(), json!({ "headerTimeout": 300 })).await;
    let started = Instant::now();
    let response = exchange(server.local_addr(), "GET /stream/files/hel").await;
    let elapsed = started.elapsed();
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    assert!(
        elapsed >= Duration::from_millis(280) && elapsed < Duration::from_millis(1300),
        "{elapsed:?}"
    );
    server.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_over_the_per_ip_cap_gets_429_and_slots_come_back() {
    let dir = folder();
    let server = start(dir.path(), json!({ "maxConnectionsPerIp": 2 })).await;
    let addr = server.local_addr();
    let held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    while server.limiter().open_for(addr.ip()) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = exchange(
        addr,
        "GET /stream/files/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{refused}"
    );
    assert!(refused.contains("Retry-After: 1\r\n"));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.limiter().tracked_clients() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.limiter().tracked_clients(), 0, "slots freed");
    let ok = exchange(
        addr,
        "GET /stream/files/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    server.close(Duration::from_secs(1)).await;
}

// The protections on tokio's paused clock: every deadline fires as soon as the runtime is idle,
// so a 10 s header timeout takes no real time, and the moment it fires is exact.

/// Starts a files mount with these server and app options (unshaped unless the app says so).
async fn start_with(
    root: &std::path::Path,
    options: serde_json::Value,
    app_options: serde_json::Value,
) -> RunningServer {
    let files = json!({ "kind": "files", "prefix": "/files", "options": { "root": root } });
    serve_route(options, "/stream", app_options, files, None)
}

const HELLO: &str = "GET /stream/files/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n";

/// Asks for `hello.txt` on a kept-alive connection, checks it is served, returns the response.
async fn get_hello(stream: &mut TcpStream) -> String {
    stream.write_all(HELLO.as_bytes()).await.unwrap();
    let response = read_response(stream).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    response
}

/// Asserts `elapsed` (on the paused clock) is `expected`, give or take less than a second late.
#[track_caller]
fn assert_at(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_secs(1),
        "after {elapsed:?}, expected {expected:?}"
    );
}

/// Everything the server sends until it closes (an error, a reset say, ends it too).
async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut received))
        .await
        .expect("the server closes within 120 s");
    received
}

/// What is left of a large response, read on the real clock: with the clock paused, the
/// runtime jumps to its next timer (`read_all`'s bound) whenever every task waits, also while
/// the kernel still has data on its way over a small window, which would end the read early.
/// Called once the paused-clock assertions are done.
async fn read_rest_in_real_time(stream: &mut TcpStream) -> Vec<u8> {
    tokio::time::resume();
    read_all(stream).await
}

/// Reads one response (its head and a `Content-Length` body) off a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("a response head"));
    }
    let head = String::from_utf8(head).unwrap();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8(body).unwrap()
}

fn rejections(server: &RunningServer, reason: &str) -> u64 {
    server.stats().rejections[reason]
}

/// Waits (on the paused clock, 10 ms a step) until `reason` has been counted; returns when.
async fn counted(server: &RunningServer, reason: &str) -> tokio::time::Instant {
    for _ in 0..12_000 {
        if rejections(server, reason) > 0 {
            return tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{reason} not counted within 120 s");
}

/// A folder with `big.bin`, larger than any socket buffer on loopback.
fn big_folder(size: usize) -> tempfile::TempDir {
    let dir = folder();
    std::fs::write(dir.path().join("big.bin"), vec![b'x'; size]).unwrap();
    dir
}

/// A client socket with a small receive buffer, so a client that does not read stalls the
/// server's writes soon.
async fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn no_head_gets_408_at_header_timeout() {
    let dir = folder();
    let server = start_with(dir.path(), json!({ "headerTimeout": "10s" }), json!({})).await;
    let started = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert_at(started.elapsed(), Duration::from_secs(10));
    assert_eq!(
        response,
        "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(rejections(&server, "header_timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_head_trickled_past_header_timeout_gets_408() {
    let dir = folder();
    let server = start_with(dir.path(), json!({ "headerTimeout": "10s" }), json!({})).await;
    let started = tokio::time::Instant::now();
    let stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 500 ms: 48 bytes would take 24 s, each one before any read timeout.
    let trickle = tokio::spawn(async move {
        for byte in HELLO.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut response = Vec::new();
    let _ = reader.read_to_end(&mut response).await;
    assert_at(started.elapsed(), Duration::from_secs(10));
    let response = String::from_utf8(response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    assert_eq!(rejections(&server, "header_timeout"), 1);
    trickle.abort();
}

#[tokio::test(start_paused = true)]
async fn a_head_over_max_header_size_gets_431() {
    let dir = folder();
    let server = start_with(dir.path(), json!({ "maxHeaderSize": "1kb" }), json!({})).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let head = format!(
        "GET /stream/files/hello.txt HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(2000)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );
    assert_eq!(rejections(&server, "header_too_large"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_closes_silently_at_keep_alive_timeout() {
    let dir = folder();
    let server = start_with(dir.path(), json!({ "keepAliveTimeout": "5s" }), json!({})).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    get_hello(&mut stream).await;
    let idle_since = tokio::time::Instant::now();
    let rest = read_all(&mut stream).await;
    assert_at(idle_since.elapsed(), Duration::from_secs(5));
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "",
        "closed without a response"
    );
    assert_eq!(rejections(&server, "header_timeout"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_second_request_inside_keep_alive_timeout_is_served() {
    let dir = folder();
    let server = start_with(dir.path(), json!({ "keepAliveTimeout": "5s" }), json!({})).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    get_hello(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let second = get_hello(&mut stream).await;
    assert!(second.ends_with("\r\n\r\nhello world"), "{second}");
    assert_eq!(server.stats().requests_total, 2);
}

#[tokio::test(start_paused = true)]
async fn over_the_per_ip_cap_the_429_is_written_and_slots_free_on_close() {
    let dir = folder();
    let server = start_with(dir.path(), json!({ "maxConnectionsPerIp": 2 }), json!({})).await;
    let addr = server.local_addr();
    let held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    while server.limiter().open_for(addr.ip()) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut refused = TcpStream::connect(addr).await.unwrap();
    refused.write_all(HELLO.as_bytes()).await.unwrap();
    let response = String::from_utf8(read_all(&mut refused).await).unwrap();
    assert_eq!(
        response,
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: 35\r\n\r\n\
         Too many connections from your IP.\n"
    );
    assert_eq!(rejections(&server, "connection_limit"), 1);
    drop(held);
    let freed_by = tokio::time::Instant::now() + Duration::from_secs(1);
    while server.limiter().tracked_clients() > 0 {
        assert!(tokio::time::Instant::now() < freed_by, "slots freed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut again = TcpStream::connect(addr).await.unwrap();
    again.write_all(HELLO.as_bytes()).await.unwrap();
    let ok = read_response(&mut again).await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_cut_off_at_send_timeout() {
    const SIZE: usize = 16 << 20;
    let dir = big_folder(SIZE);
    let server = start_with(dir.path(), json!({}), json!({ "sendTimeout": "3s" })).await;
    let mut stream = connect_small_window(server.local_addr()).await;
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"GET /stream/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let cut_at = counted(&server, "send_timeout").await;
    assert_at(cut_at - started, Duration::from_secs(3));
    assert_eq!(rejections(&server, "download_timeout"), 0);
    let received = read_rest_in_real_time(&mut stream).await;
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        received.len() < SIZE,
        "cut off after {} bytes",
        received.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_response_over_download_timeout_is_cut_off() {
    const SIZE: usize = 1 << 20;
    let dir = big_folder(SIZE);
    // 64 KiB/s: the whole file would take 16 s; the client reads all the while.
    let app = json!({ "downloadTimeout": "2s", "rateLimitBandwidth": "64kb", "chunkSize": "16kb" });
    let server = start_with(dir.path(), json!({}), app).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"GET /stream/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let received = read_rest_in_real_time(&mut stream).await;
    assert_at(started.elapsed(), Duration::from_secs(2));
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        received.len() < SIZE,
        "cut off after {} bytes",
        received.len()
    );
    assert_eq!(rejections(&server, "download_timeout"), 1);
    assert_eq!(rejections(&server, "send_timeout"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_blocked_write_is_cut_off_at_download_timeout() {
    const SIZE: usize = 16 << 20;
    let dir = big_folder(SIZE);
    let app = json!({ "downloadTimeout": "2s", "sendTimeout": "30s" });
    let server = start_with(dir.path(), json!({}), app).await;
    let mut stream = connect_small_window(server.local_addr()).await;
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"GET /stream/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let cut_at = counted(&server, "download_timeout").await;
    assert_at(cut_at - started, Duration::from_secs(2));
    assert_eq!(rejections(&server, "send_timeout"), 0);
    let received = read_rest_in_real_time(&mut stream).await;
    assert!(
        received.len() < SIZE,
        "cut off after {} bytes",
        received.len()
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_lets_two_servers_share_a_port_and_both_accept() {
    use crate::config::{from_json, ServerSpec};
    use crate::conn::server::listen;
    let spec = |reuse: bool| -> ServerSpec { from_json(json!({ "reusePort": reuse })).unwrap() };
    let first = listen(spec(true), "127.0.0.1:0".parse().unwrap(), None).unwrap();
    let addr = first.local_addr();
    let refused = listen(spec(false), addr, None)
        .err()
        .expect("the port is taken");
    assert_eq!(refused.code(), "EADDRINUSE");
    let second = listen(spec(true), addr, None).unwrap();
    // The kernel spreads connections by their addresses: some reach each server.
    for _ in 0..64 {
        exchange(
            addr,
            "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
    }
    let (a, b) = (first.stats().requests_total, second.stats().requests_total);
    assert_eq!(a + b, 64);
    assert!(a > 0 && b > 0, "{a} and {b}");
    first.close(Duration::ZERO).await;
    second.close(Duration::ZERO).await;
}
