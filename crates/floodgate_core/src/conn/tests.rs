//! The core served over real sockets on 127.0.0.1: files, limits and deadlines end to end.

use crate::config::{from_json, ServerSpec};
use crate::{listen, RunningServer};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(root: &std::path::Path, options: serde_json::Value) -> RunningServer {
    let spec: ServerSpec = from_json(json!({
        "options": options,
        "mounts": [{
            "prefix": "/stream",
            "app": {
                "options": { "rateLimitBandwidth": 0 },
                "routes": [{ "kind": "files", "prefix": "/files", "options": { "root": root } }]
            }
        }]
    }))
    .unwrap();
    listen(spec, "127.0.0.1:0".parse().unwrap(), None).unwrap()
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
