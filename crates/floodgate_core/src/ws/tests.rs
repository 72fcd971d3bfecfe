//! WebSocket sessions over real sockets on 127.0.0.1, with a Rust stand-in for JS: the host
//! echoes every message back through the hub, as `ws.send` in a handler would.

use crate::js::bridge::{Bridge, JsHost, JsRequest};
use crate::test_support::serve_route;
use crate::ws::hub::{CloseRequest, WsEvent, WsSend};
use crate::RunningServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

/// Echoes messages and records opens and closes.
#[derive(Default)]
struct EchoHost {
    bridge: OnceLock<Weak<Bridge>>,
    closes: Mutex<Vec<(u64, u16, String)>>,
}

impl JsHost for EchoHost {
    fn dispatch(&self, _: JsRequest) {}
    fn abort(&self, _: u64) {}
    fn ws_event(&self, event: WsEvent) {
        let Some(bridge) = self.bridge.get().and_then(Weak::upgrade) else {
            return;
        };
        match event {
            WsEvent::Message {
                id, data, binary, ..
            } => {
                let send = if binary {
                    WsSend::Binary(data)
                } else {
                    WsSend::Text(data.try_into().unwrap())
                };
                bridge.ws_hub().send_all([(id, send)]);
            }
            WsEvent::Close { id, code, reason } => {
                self.closes.lock().unwrap().push((id, code, reason));
            }
            // As ws.ts does: the close goes back behind the replies sent so far.
            WsEvent::Refused { id, code, reason } => {
                let close = CloseRequest { code, reason };
                bridge.ws_hub().send_all([(id, WsSend::Close(close))]);
            }
            WsEvent::Open { .. } => {}
        }
    }
}

async fn start(options: serde_json::Value) -> (RunningServer, Arc<EchoHost>) {
    start_route(options, json!({})).await
}

/// `options` are the app's, `route_options` the WebSocket route's.
async fn start_route(
    options: serde_json::Value,
    route_options: serde_json::Value,
) -> (RunningServer, Arc<EchoHost>) {
    let host = Arc::new(EchoHost::default());
    let bridge = Bridge::new(host.clone());
    host.bridge.set(Arc::downgrade(&bridge)).ok();
    let route = json!({ "kind": "ws", "prefix": "/raw", "options": route_options, "handlers": { "route": 0 } });
    let server = serve_route(json!({}), "/ws", options, route, Some(bridge));
    (server, host)
}

async fn connect(server: &RunningServer) -> WebSocketStream<TcpStream> {
    let addr = server.local_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (socket, response) = client_async(format!("ws://{addr}/ws/raw"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// The close frame the server sends, or `None` if the stream ends without one.
async fn close_code(socket: &mut WebSocketStream<TcpStream>) -> Option<(CloseCode, String)> {
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("the server closes within 10 s")
    {
        if let Ok(Message::Close(frame)) = message {
            return frame.map(|frame| (frame.code, frame.reason.to_string()));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_and_binary_and_reports_the_clients_close() {
    let (server, host) = start(json!({})).await;
    let mut socket = connect(&server).await;
    socket.send(Message::text("hello")).await.unwrap();
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    socket.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.closes.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closes = host.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].1, 1005, "no status code given");
    assert_eq!(server.stats().ws_messages_in, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_gets_1009() {
    let (server, _host) = start(json!({ "wsMaxMessageSize": "1kb" })).await;
    let mut socket = connect(&server).await;
    socket.send(Message::binary(vec![0u8; 512])).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap().len(), 512);
    socket.send(Message::binary(vec![0u8; 4096])).await.unwrap();
    let (code, _) = close_code(&mut socket).await.expect("a close frame");
    assert_eq!(code, CloseCode::Size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_gets_1000_idle_timeout() {
    let (server, _host) = start(json!({ "wsIdleTimeout": 300 })).await;
    let mut socket = connect(&server).await;
    let started = Instant::now();
    let (code, reason) = close_code(&mut socket).await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (CloseCode::Normal, "Idle timeout"));
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_cap_refuses_before_the_upgrade_and_frees_on_close() {
    let (server, _host) = start(json!({ "wsMaxConnectionsPerUser": 1 })).await;
    let mut first = connect(&server).await;
    let addr = server.local_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    let refused = client_async(format!("ws://{addr}/ws/raw"), stream).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 429, got {other:?}"),
    }
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().ws_connections > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _second = connect(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_close_sends_1001() {
    let (server, _host) = start(json!({})).await;
    let mut socket = connect(&server).await;
    let closing = tokio::spawn(async move {
        server.close(Duration::from_secs(5)).await;
    });
    let (code, _) = close_code(&mut socket).await.expect("a close frame");
    assert_eq!(code, CloseCode::Away);
    drop(socket);
    closing.await.unwrap();
}

/// A client frame, masked as the protocol requires (tungstenite masks while formatting).
fn masked_frame(opcode: Data, payload: &[u8]) -> Vec<u8> {
    let mut frame = Frame::message(payload.to_vec(), OpCode::Data(opcode), true);
    frame.header_mut().mask = Some([0x12, 0x34, 0x56, 0x78]);
    let mut bytes = Vec::new();
    frame.format(&mut bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_behind_the_upgrade_request_and_frames_in_pieces_arrive_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let (server, _host) = start(json!({ "wsMaxMessagesPerSecond": 0 })).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    // The upgrade request and a first frame in one write: the frame sits in hyper's buffer
    // when the session takes the socket over.
    let mut first = b"GET /ws/raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    first.extend(masked_frame(Data::Text, b"early"));
    stream.write_all(&first).await.unwrap();
    // Then a 100 KiB message, a few hundred bytes per write (headers split too).
    let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    for piece in masked_frame(Data::Binary, &big).chunks(700) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Many small messages in one write.
    let burst: Vec<u8> = (0..200)
        .flat_map(|i| masked_frame(Data::Text, format!("m{i}").as_bytes()))
        .collect();
    stream.write_all(&burst).await.unwrap();

    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let mut socket = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let mut echoes = Vec::new();
    while echoes.len() < 202 {
        let echo = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an echo within 10 s");
        let Some(echo) = echo else {
            panic!(
                "stream ended after {} echoes: {:?}",
                echoes.len(),
                echoes.last()
            );
        };
        echoes.push(echo.unwrap());
    }
    assert_eq!(echoes[0], Message::text("early"));
    assert_eq!(echoes[1], Message::binary(big));
    for (i, echo) in echoes[2..].iter().enumerate() {
        assert_eq!(*echo, Message::text(format!("m{i}")));
    }
}

// The session's timers and rate on tokio's paused clock: each deadline fires as soon as the
// runtime is idle, at its exact time.

/// Asserts `elapsed` (on the paused clock) is `expected`, give or take less than a second late.
#[track_caller]
fn assert_at(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_secs(1),
        "after {elapsed:?}, expected {expected:?}"
    );
}

fn rejections(server: &RunningServer, reason: &str) -> u64 {
    server.stats().rejections[reason]
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_closes_1000_at_ws_idle_timeout() {
    let (server, host) = start(json!({ "wsIdleTimeout": "5s", "wsPingInterval": 0 })).await;
    let started = tokio::time::Instant::now();
    let mut socket = connect(&server).await;
    let (code, reason) = close_code(&mut socket).await.expect("a close frame");
    assert_at(started.elapsed(), Duration::from_secs(5));
    assert_eq!((code, reason.as_str()), (CloseCode::Normal, "Idle timeout"));
    assert_eq!(rejections(&server, "ws_idle_timeout"), 1);
    // The client answered the close: JS hears the server's code.
    while host.closes.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let closes = host.closes.lock().unwrap().clone();
    assert_eq!((closes[0].1, closes[0].2.as_str()), (1000, "Idle timeout"));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_pings_is_dropped_after_the_pong_timeout() {
    use tokio::io::AsyncReadExt;
    let options = json!({ "wsIdleTimeout": 0, "wsPingInterval": "2s", "wsPongTimeout": "1s" });
    let (server, host) = start(options).await;
    let started = tokio::time::Instant::now();
    // A raw client: it reads what the server sends and never answers.
    let mut stream = raw_session(&server).await;
    let mut ping = [0u8; 2];
    stream.read_exact(&mut ping).await.unwrap();
    assert_eq!(ping, [0x89, 0x00], "an empty ping");
    assert_at(started.elapsed(), Duration::from_secs(2));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest))
        .await
        .expect("dropped within 60 s");
    assert_at(started.elapsed(), Duration::from_secs(3));
    assert!(rest.is_empty(), "dropped without a close frame: {rest:?}");
    assert_eq!(rejections(&server, "ws_pong_timeout"), 1);
    let closes = host.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].1, 1006, "abnormal closure");
}

#[tokio::test(start_paused = true)]
async fn a_message_flood_over_the_rate_closes_1008() {
    let (server, _host) = start(json!({ "wsMaxMessagesPerSecond": 10 })).await;
    let mut socket = connect(&server).await;
    for i in 0..30 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    let mut echoes = 0;
    let closed = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the server answers within 10 s");
        match message {
            Some(Ok(Message::Text(_))) => echoes += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| (f.code, f.reason.to_string())),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        closed,
        Some((CloseCode::Policy, "Rate limit exceeded".to_string()))
    );
    // One second's worth reaches JS; echoes still queued when the close begins are dropped.
    assert_eq!(server.stats().ws_messages_in, 10, "the burst passes");
    assert!(echoes <= 10, "{echoes} echoes");
    assert_eq!(rejections(&server, "ws_rate_limited"), 1);
}

#[tokio::test(start_paused = true)]
async fn traffic_under_the_limits_stays_open_across_intervals() {
    let options = json!({
        "wsMaxMessagesPerSecond": 10,
        "wsIdleTimeout": "3s",
        "wsPingInterval": "1s",
        "wsPongTimeout": "500ms",
    });
    let (server, host) = start(options).await;
    let mut socket = connect(&server).await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    // Five messages a second for ten seconds: half the rate, well inside every timeout.
    for i in 0..50 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("an echo within 10 s");
            match message {
                Some(Ok(Message::Text(text))) => {
                    assert_eq!(text.as_str(), format!("m{i}"));
                    break;
                }
                // tungstenite queues the pong and sends it with the next write.
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("message {i}: expected its echo, got {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert!(pings >= 8, "pinged every second: {pings}");
    let stats = server.stats();
    for reason in ["ws_rate_limited", "ws_idle_timeout", "ws_pong_timeout"] {
        assert_eq!(stats.rejections[reason], 0, "{reason}");
    }
    assert_eq!(stats.ws_messages_in, 50);
    assert_eq!(stats.ws_connections, 1);
    assert!(host.closes.lock().unwrap().is_empty());
    socket.close(None).await.unwrap();
}

// Pings: answered with one coalesced pong, and counted toward `wsMaxMessagesPerSecond`.

/// A raw client past the handshake (it never answers anything on its own).
async fn raw_session(server: &RunningServer) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(
            b"GET /ws/raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream
}

/// A masked client control frame.
fn masked_control(opcode: Control, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        opcode: OpCode::Control(opcode),
        mask: Some([0x12, 0x34, 0x56, 0x78]),
        ..FrameHeader::default()
    };
    let frame = Frame::from_payload(header, payload.to_vec().into());
    let mut bytes = Vec::new();
    frame.format(&mut bytes).unwrap();
    bytes
}

/// A 125-byte ping payload (the largest a control frame carries) that ends in `n`.
fn ping_payload(n: usize) -> Vec<u8> {
    let mut payload = vec![b'p'; 125];
    payload[117..].copy_from_slice(format!("{n:08}").as_bytes());
    payload
}

/// Reads server frames (unmasked, short) until `stop` says so or the stream ends; returns them
/// as (opcode byte, payload).
async fn read_frames(
    stream: &mut TcpStream,
    mut stop: impl FnMut(u8, &[u8]) -> bool,
) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 2];
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut head))
            .await
            .expect("a frame within 60 s");
        if read.is_err() {
            return frames;
        }
        let len = match head[1] & 0x7f {
            126 => stream.read_u16().await.unwrap() as usize,
            127 => stream.read_u64().await.unwrap() as usize,
            len => len as usize,
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        let opcode = head[0] & 0x0f;
        let done = stop(opcode, &payload);
        frames.push((opcode, payload));
        if done {
            return frames;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pings_from_a_client_that_does_not_read_get_one_coalesced_pong() {
    use tokio::io::AsyncWriteExt;
    let options = json!({ "wsMaxMessagesPerSecond": 0, "wsPingInterval": 0, "wsIdleTimeout": 0 });
    let (server, _host) = start(options).await;
    let mut stream = raw_session(&server).await;
    const PINGS: usize = 20_000;
    // 2.6 MB of pings, written before anything is read.
    let flood: Vec<u8> = (0..PINGS)
        .flat_map(|n| masked_control(Control::Ping, &ping_payload(n)))
        .collect();
    stream.write_all(&flood).await.unwrap();
    let last = ping_payload(PINGS - 1);
    let frames = read_frames(&mut stream, |opcode, payload| {
        opcode == 0xA && payload == last.as_slice()
    })
    .await;
    assert!(
        frames.iter().all(|(opcode, _)| *opcode == 0xA),
        "only pongs"
    );
    assert_eq!(
        frames.last().unwrap().1,
        last,
        "the latest ping is answered"
    );
    // A few pongs per read of the socket at most (16 KiB, ~125 pings; the latest 16 are
    // answered), not one per ping.
    assert!(
        frames.len() <= PINGS * 16 / 100,
        "{} pongs for {PINGS} pings",
        frames.len()
    );
    let mut payloads: Vec<&[u8]> = frames.iter().map(|(_, p)| p.as_slice()).collect();
    let answered = payloads.len();
    payloads.dedup();
    assert_eq!(payloads.len(), answered, "each pong answers a newer ping");
    assert_eq!(rejections(&server, "ws_rate_limited"), 0);
}

#[tokio::test(start_paused = true)]
async fn pings_and_pongs_count_toward_the_message_rate_and_close_1008() {
    use tokio::io::AsyncWriteExt;
    let options = json!({ "wsMaxMessagesPerSecond": 10, "wsPingInterval": 0 });
    let (server, _host) = start(options).await;
    for control in [Control::Ping, Control::Pong] {
        let mut stream = raw_session(&server).await;
        // 4 messages and 8 control frames: 12, over a burst of 10.
        let mut burst: Vec<u8> = (0..4)
            .flat_map(|i| masked_frame(Data::Text, format!("m{i}").as_bytes()))
            .collect();
        burst.extend((0..8).flat_map(|n| masked_control(control, &ping_payload(n))));
        stream.write_all(&burst).await.unwrap();
        let frames = read_frames(&mut stream, |opcode, _| opcode == 0x8).await;
        let (opcode, close) = frames.last().unwrap();
        assert_eq!(*opcode, 0x8, "{control:?}: a close frame");
        assert_eq!(&close[..2], &1008u16.to_be_bytes(), "{control:?}");
    }
    assert_eq!(rejections(&server, "ws_rate_limited"), 2);
    assert_eq!(rejections(&server, "ws_protocol_error"), 0);
}

#[tokio::test(start_paused = true)]
async fn pings_over_the_rate_under_pause_are_answered_at_the_rate() {
    use tokio::io::AsyncWriteExt;
    let options = json!({ "wsMaxMessagesPerSecond": 10, "wsPingInterval": 0, "wsIdleTimeout": 0 });
    let (server, _host) = start_route(options, json!({ "rateLimitAction": "pause" })).await;
    let mut stream = raw_session(&server).await;
    let started = tokio::time::Instant::now();
    let flood: Vec<u8> = (0..30)
        .flat_map(|n| masked_control(Control::Ping, &ping_payload(n)))
        .collect();
    stream.write_all(&flood).await.unwrap();
    let last = ping_payload(29);
    let frames = read_frames(&mut stream, |opcode, payload| {
        opcode == 0xA && payload == last.as_slice()
    })
    .await;
    // The burst of 10 at once (a pong each), then one ping every 100 ms.
    assert_at(started.elapsed(), Duration::from_secs(2));
    assert!(
        frames.iter().all(|(opcode, _)| *opcode == 0xA),
        "only pongs"
    );
    assert!(frames.len() <= 30, "{} pongs", frames.len());
    assert_eq!(
        rejections(&server, "ws_rate_limited"),
        0,
        "a pause is not a rejection"
    );
    assert_eq!(server.stats().ws_connections, 1);
}

#[tokio::test(start_paused = true)]
async fn input_after_the_servers_close_is_not_counted_as_a_protocol_error() {
    use tokio::io::AsyncWriteExt;
    let (server, _host) = start(json!({ "wsMaxMessagesPerSecond": 5, "wsPingInterval": 0 })).await;
    let mut stream = raw_session(&server).await;
    let mut input: Vec<u8> = (0..10)
        .flat_map(|i| masked_frame(Data::Text, format!("m{i}").as_bytes()))
        .collect();
    // Unmasked: a protocol error, but the session is already closing (1008).
    input.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    stream.write_all(&input).await.unwrap();
    let frames = read_frames(&mut stream, |opcode, _| opcode == 0x8).await;
    let (_, close) = frames.last().unwrap();
    assert_eq!(&close[..2], &1008u16.to_be_bytes());
    assert_eq!(rejections(&server, "ws_rate_limited"), 1);
    assert_eq!(rejections(&server, "ws_protocol_error"), 0);
}

// Strictness: replies to what came before a bad frame go out before the close frame; text
// fails at the fragment (or the piece of a frame) where it stops being UTF-8.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_messages_before_a_bad_frame_go_out_before_the_close() {
    use tokio::io::AsyncWriteExt;
    let (server, _host) = start(json!({ "wsPingInterval": 0 })).await;
    for bad in [
        // A reserved bit, a reserved opcode, a ping with FIN unset, close codes 5000 and 65535.
        vec![0xC1, 0x80, 0, 0, 0, 0],
        vec![0x83, 0x80, 0, 0, 0, 0],
        vec![0x09, 0x80, 0, 0, 0, 0],
        masked_control(Control::Close, &5000u16.to_be_bytes()),
        masked_control(Control::Close, &65535u16.to_be_bytes()),
    ] {
        let mut stream = raw_session(&server).await;
        let mut input = masked_frame(Data::Text, b"first");
        input.extend(masked_frame(Data::Binary, b"second"));
        input.extend(&bad);
        stream.write_all(&input).await.unwrap();
        let frames = read_frames(&mut stream, |opcode, _| opcode == 0x8).await;
        let kinds: Vec<(u8, &[u8])> = frames.iter().map(|(o, p)| (*o, &p[..])).collect();
        assert_eq!(kinds.len(), 3, "{bad:?}: {kinds:?}");
        assert_eq!(kinds[0], (0x1, &b"first"[..]));
        assert_eq!(kinds[1], (0x2, &b"second"[..]));
        assert_eq!(kinds[2].0, 0x8);
        assert_eq!(&kinds[2].1[..2], &1002u16.to_be_bytes(), "{bad:?}");
    }
    assert_eq!(rejections(&server, "ws_protocol_error"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_utf8_fails_at_the_fragment_and_inside_a_frame_still_arriving() {
    use tokio::io::AsyncWriteExt;
    let (server, _host) = start(json!({ "wsPingInterval": 0 })).await;
    let close_within = |stream: TcpStream| async move {
        let mut stream = stream;
        let started = Instant::now();
        let frames = read_frames(&mut stream, |opcode, _| opcode == 0x8).await;
        let (opcode, payload) = frames.last().expect("a close frame").clone();
        assert_eq!(opcode, 0x8);
        assert_eq!(&payload[..2], &1007u16.to_be_bytes());
        assert!(started.elapsed() < Duration::from_secs(3), "failed fast");
    };
    // Fragments: "κόσμε" then a sequence past U+10FFFF; the final fragment never comes.
    let mut stream = raw_session(&server).await;
    let mut first = Frame::message("κόσμε".as_bytes().to_vec(), OpCode::Data(Data::Text), false);
    first.header_mut().mask = Some([1, 2, 3, 4]);
    let mut second = Frame::message(
        b"\xf4\x90\x80\x80".to_vec(),
        OpCode::Data(Data::Continue),
        false,
    );
    second.header_mut().mask = Some([5, 6, 7, 8]);
    let mut bytes = Vec::new();
    first.format(&mut bytes).unwrap();
    second.format(&mut bytes).unwrap();
    stream.write_all(&bytes).await.unwrap();
    close_within(stream).await;
    // One frame declared 100 bytes, of which only a bad prefix arrives.
    let mut stream = raw_session(&server).await;
    let mut payload = b"ab\xf4\x90".to_vec();
    payload.resize(100, b'x');
    let whole = masked_frame(Data::Text, &payload);
    stream.write_all(&whole[..whole.len() - 90]).await.unwrap();
    close_within(stream).await;
    // The same prefix as valid text, cut inside a sequence: no close, the rest completes it.
    let mut stream = raw_session(&server).await;
    let text = "ab🦀".repeat(20);
    let whole = masked_frame(Data::Text, text.as_bytes());
    stream.write_all(&whole[..9]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&whole[9..]).await.unwrap();
    let frames = read_frames(&mut stream, |opcode, _| opcode == 0x1).await;
    assert_eq!(frames.last().unwrap().1, text.as_bytes());
    assert_eq!(rejections(&server, "ws_protocol_error"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_pings_gets_ten_pongs_in_order() {
    use tokio::io::AsyncWriteExt;
    let (server, _host) = start(json!({ "wsPingInterval": 0 })).await;
    let mut stream = raw_session(&server).await;
    let burst: Vec<u8> = (0..10)
        .flat_map(|n| masked_control(Control::Ping, format!("payload-{n}").as_bytes()))
        .collect();
    stream.write_all(&burst).await.unwrap();
    let frames = read_frames(&mut stream, |_, payload| payload == b"payload-9").await;
    let expected: Vec<(u8, Vec<u8>)> = (0..10)
        .map(|n| (0xA, format!("payload-{n}").into_bytes()))
        .collect();
    assert_eq!(frames, expected);
}
