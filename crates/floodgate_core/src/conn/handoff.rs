//! Handing an HTTP/1.1 connection out of hyper once a response's head is decided: how event
//! streams leave hyper as WebSocket sessions do after `101`.
//!
//! hyper keeps a connection's read buffer (grown to 16 KiB while the request head still
//! holds the first one) and its 8 KiB header write buffer for the connection's life, which
//! was nearly all of an idle event stream's ~24 KiB. hyper hands a connection over only after
//! `101` (or a `CONNECT`), so an event stream takes it another way: the route answers with a
//! response that carries a [`HandOffSlot`]; the request handling (`conn::server`) writes no
//! such response through hyper but parks it in the connection's state, and the connection
//! task then drops hyper's connection. The socket wrapper, dropped with it, gives its socket
//! and slot back ([`crate::conn::guarded_io::GuardedIo`]'s `Drop`), and the stream runs as a
//! task of its own on the bare socket, head first.
//!
//! Only a connection with nothing else in flight is handed over: one HTTP/1.x request, every
//! earlier response ended and flushed out of hyper's buffer (the wrapper notes hyper's flush,
//! which hyper calls only with its buffer empty). Otherwise, and over HTTP/2, the stream is a
//! body hyper writes, as before.

use crate::conn::guarded_io::SocketGuard;
use crate::conn::socket::Socket;
use crate::delivery::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use http::response::Parts;
use http::Version;
use std::sync::{Arc, Mutex};
use tokio_util::task::TaskTracker;

/// A response that would rather run on the bare socket.
pub trait HandOff: Send {
    /// The response's body through hyper, when the connection cannot be handed over.
    fn into_body(self: Box<Self>) -> Body;
    /// Starts writing on the bare socket: `head` first, the body chunked when `chunked` (an
    /// HTTP/1.1 request), else delimited by the connection's close.
    fn start(
        self: Box<Self>,
        socket: Socket,
        guard: SocketGuard,
        head: Bytes,
        chunked: bool,
        tracker: &TaskTracker,
    );
}

/// The response extension that carries a [`HandOff`] (extensions must be `Clone`).
#[derive(Clone)]
pub struct HandOffSlot(Arc<Mutex<Option<Box<dyn HandOff>>>>);

impl HandOffSlot {
    pub fn new(handoff: Box<dyn HandOff>) -> Self {
        Self(Arc::new(Mutex::new(Some(handoff))))
    }

    pub fn take(&self) -> Option<Box<dyn HandOff>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A handed-over response waiting for its socket, in the connection's state.
pub struct Pending {
    pub handoff: Box<dyn HandOff>,
    pub head: Bytes,
    pub chunked: bool,
    /// Set by the socket wrapper as it is dropped with hyper's connection.
    pub socket: Option<(Socket, SocketGuard)>,
}

/// The response head as hyper would have written it (status line, the response's headers,
/// `date`), with the framing of a body of unknown length: chunked for HTTP/1.1, delimited by
/// the close for HTTP/1.0; the connection closes after the stream either way.
pub fn head(parts: &Parts, request_version: Version) -> (Bytes, bool) {
    let chunked = request_version == Version::HTTP_11;
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(parts.status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    head.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(
            *name,
            http::header::CONTENT_LENGTH
                | http::header::TRANSFER_ENCODING
                | http::header::CONNECTION
                | http::header::DATE
        ) {
            continue;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    head.put_slice(b"date: ");
    head.put_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.put_slice(b"\r\nconnection: close\r\n");
    if chunked {
        head.put_slice(b"transfer-encoding: chunked\r\n");
    }
    head.put_slice(b"\r\n");
    (head.freeze(), chunked)
}

#[cfg(test)]
mod tests {
    use super::head;
    use crate::conn::state::ConnState;
    use http::{Response, Version};
    use std::time::Duration;

    #[tokio::test]
    async fn only_a_lone_flushed_http1_request_may_take_the_socket() {
        let conn = ConnState::new(tokio::time::Instant::now(), Duration::from_secs(1));
        conn.request_started();
        assert!(conn.may_hand_off());
        // hyper wrote and has not flushed yet: its buffer may hold an earlier response's end.
        conn.set_flushed(false);
        assert!(!conn.may_hand_off());
        conn.set_flushed(true);
        // An earlier response still going (pipelined requests).
        conn.request_started();
        assert!(!conn.may_hand_off());
        conn.response_done();
        assert!(conn.may_hand_off());
        conn.mark_http2();
        assert!(!conn.may_hand_off());
    }

    #[test]
    fn the_head_frames_by_version_and_drops_framing_headers() {
        let (parts, ()) = Response::builder()
            .header("content-type", "text/event-stream")
            .header("content-length", "5")
            .header("connection", "keep-alive")
            .body(())
            .unwrap()
            .into_parts();
        let (bytes, chunked) = head(&parts, Version::HTTP_11);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(chunked);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        assert!(text.contains("\r\ndate: "));
        assert!(text.ends_with("connection: close\r\ntransfer-encoding: chunked\r\n\r\n"));
        assert!(!text.contains("content-length") && !text.contains("keep-alive"));
        let (bytes, chunked) = head(&parts, Version::HTTP_10);
        assert!(!chunked);
        assert!(!std::str::from_utf8(&bytes).unwrap().contains("chunked"));
    }
}
