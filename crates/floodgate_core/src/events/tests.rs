//! Event streams over real sockets on 127.0.0.1, on tokio's paused clock, with a Rust stand-in
//! for JS: the setup handler names the user from the query (`?user=alice`; anonymous without)
//! and subscribes every stream to one topic.

use crate::js::bridge::{Bridge, JsBody, JsHost, JsRequest, JsResponse};
use crate::test_support::serve_route;
use crate::ws::hub::WsEvent;
use crate::RunningServer;
use bytes::Bytes;
use serde_json::json;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Answers the setup exchange at once, as an `async` setup handler that resolves would.
#[derive(Default)]
struct SetupHost {
    bridge: OnceLock<Weak<Bridge>>,
}

impl JsHost for SetupHost {
    fn dispatch(&self, request: JsRequest) {
        // Exchange 0 is a notice (`onClose`): nothing to answer.
        if request.id == 0 {
            return;
        }
        let Some(bridge) = self.bridge.get().and_then(Weak::upgrade) else {
            return;
        };
        let user = request
            .url
            .split_once('?')
            .and_then(|(_, query)| query.strip_prefix("user="));
        let answer = json!({ "user": user, "topics": ["news"] });
        let response = JsResponse {
            status: 200,
            headers: Bytes::new(),
            body: JsBody::Bytes(Bytes::from(answer.to_string())),
        };
        bridge.respond(request.id, response);
    }
    fn abort(&self, _: u64) {}
    fn ws_event(&self, _: WsEvent) {}
}

async fn start(options: serde_json::Value) -> RunningServer {
    let host = Arc::new(SetupHost::default());
    let bridge = Bridge::new(host.clone());
    host.bridge.set(Arc::downgrade(&bridge)).ok();
    let route =
        json!({ "kind": "sse", "prefix": "/events", "options": {}, "handlers": { "setup": 1 } });
    serve_route(json!({}), "/ev", options, route, Some(bridge))
}

/// Opens a stream (`query` such as `?user=alice`) and reads its response head.
async fn open(server: &RunningServer, query: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let request = format!("GET /ev/events{query} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(Duration::from_secs(60), stream.read_u8())
            .await
            .expect("a response head within 60 s")
            .expect("a response head");
        head.push(byte);
    }
    (stream, String::from_utf8(head).unwrap())
}

/// Asserts `elapsed` (on the paused clock) is `expected`, give or take less than a second late.
#[track_caller]
fn assert_at(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_secs(1),
        "after {elapsed:?}, expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_quiet_stream_gets_a_keepalive_comment_every_sse_keep_alive() {
    let server = start(json!({ "sseKeepAlive": "5s" })).await;
    let started = Instant::now();
    let (mut stream, head) = open(&server, "").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    for beat in 1..=3 {
        // One chunk holding the comment `:\n\n`.
        let mut chunk = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut chunk))
            .await
            .expect("a keepalive within 60 s")
            .unwrap();
        assert_eq!(&chunk, b"3\r\n:\n\n\r\n");
        assert_at(started.elapsed(), Duration::from_secs(5 * beat));
    }
}

#[tokio::test(start_paused = true)]
async fn the_stream_over_the_per_user_cap_gets_429() {
    let server = start(json!({ "sseMaxConnectionsPerUser": 2 })).await;
    let (_first, head) = open(&server, "?user=alice").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (_second, head) = open(&server, "?user=alice").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (_third, head) = open(&server, "?user=alice").await;
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    assert!(head.contains("retry-after: 5\r\n"), "{head}");
    assert_eq!(server.stats().rejections["sse_limit"], 1);
    // The cap is alice's, not everyone's.
    let (_other, head) = open(&server, "?user=bob").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
}

#[tokio::test(start_paused = true)]
async fn a_user_named_like_an_anonymous_clients_address_has_a_cap_of_its_own() {
    let server = start(json!({ "sseMaxConnectionsPerUser": 1 })).await;
    let address = server.local_addr().ip().to_string();
    let (_anonymous, head) = open(&server, "").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (_again, head) = open(&server, "").await;
    assert!(
        head.starts_with("HTTP/1.1 429 "),
        "the address is capped: {head}"
    );
    let (_named, head) = open(&server, &format!("?user={address}")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
}
