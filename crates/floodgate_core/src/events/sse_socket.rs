//! An event stream on the bare socket, once its connection left hyper (`conn::handoff`).
//!
//! One task per stream, polled by hand like a WebSocket session: it holds the socket, its
//! slot, the stream's source (queue, keepalive timer, caps, subscription) and at most the one
//! chunk being written, so an idle stream keeps no buffer. It writes the head, then each chunk
//! the source gives (chunked framing for HTTP/1.1, the bytes as they are for HTTP/1.0, whose
//! body ends at the close), and flushes (TLS holds records until then). It ends when:
//! - the client closes, or sends anything (an event stream's client sends nothing after its
//!   request; no further request is served on this connection);
//! - a write makes no progress for the app's `sendTimeout` (counted `send_timeout`), as the
//!   socket wrapper ends hyper's blocked writes;
//! - the queue overflows under the `close` policy (at once, even mid-write);
//! - the server shuts down: the body's last chunk is written when the socket takes it, else
//!   the connection just closes.
//!
//! Hand-written: hyper writes bodies only inside its own connection (whose buffers are what
//! this avoids), and no maintained crate frames a chunked body onto a bare socket.

use crate::conn::guarded_io::SocketGuard;
use crate::conn::socket::Socket;
use crate::events::sse::EventSource;
use crate::metrics::Rejection;
use bytes::Bytes;
use std::future::Future;
use std::io::{IoSlice, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The last chunk of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The one chunk being written: its size line, its bytes, its CR LF.
#[derive(Default)]
struct Outgoing {
    size_line: [u8; 18],
    size_len: usize,
    body: Bytes,
    tail: &'static [u8],
    /// Bytes of the three already written.
    done: usize,
}

impl Outgoing {
    fn raw(body: Bytes) -> Self {
        Self {
            body,
            ..Self::default()
        }
    }

    fn chunk(body: Bytes) -> Self {
        let mut size_line = [0u8; 18];
        let mut cursor = &mut size_line[..];
        let _ = write!(cursor, "{:x}\r\n", body.len());
        let size_len = 18 - cursor.len();
        Self {
            size_line,
            size_len,
            body,
            tail: b"\r\n",
            done: 0,
        }
    }

    fn len(&self) -> usize {
        self.size_len + self.body.len() + self.tail.len()
    }

    fn is_empty(&self) -> bool {
        self.done >= self.len()
    }

    /// What is left to write, as up to three slices.
    fn slices(&self) -> [IoSlice<'_>; 3] {
        let size = &self.size_line[..self.size_len];
        let mut skip = self.done;
        let size_rest = &size[skip.min(size.len())..];
        skip = skip.saturating_sub(size.len());
        let body_rest = &self.body[skip.min(self.body.len())..];
        skip = skip.saturating_sub(self.body.len());
        let tail_rest = &self.tail[skip.min(self.tail.len())..];
        [
            IoSlice::new(size_rest),
            IoSlice::new(body_rest),
            IoSlice::new(tail_rest),
        ]
    }
}

pub(crate) struct SocketStream {
    source: EventSource,
    socket: Socket,
    _guard: SocketGuard,
    out: Outgoing,
    chunked: bool,
    /// Written since the last flush.
    unflushed: bool,
    /// The body's end is written (or being written): close once it is out.
    ending: bool,
    /// While a write waits: the deadline past which the client is too slow, and its timer
    /// (made at the first stall, kept after).
    stall_at: Option<Instant>,
    stall: Option<Pin<Box<Sleep>>>,
}

impl SocketStream {
    pub(crate) fn new(
        source: EventSource,
        socket: Socket,
        guard: SocketGuard,
        head: Bytes,
        chunked: bool,
    ) -> Self {
        Self {
            source,
            socket,
            _guard: guard,
            out: Outgoing::raw(head),
            chunked,
            unflushed: false,
            ending: false,
            stall_at: None,
            stall: None,
        }
    }

    /// Whether the client hung up or sent something: either ends the stream.
    fn poll_client(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 64];
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut self.socket).poll_read(cx, &mut buf) {
            Poll::Pending => false,
            Poll::Ready(Ok(())) => {
                self.source.metrics().received(buf.filled().len());
                true
            }
            Poll::Ready(Err(_)) => true,
        }
    }

    /// A write is waiting for the client: `true` once it has waited `sendTimeout`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = *self
            .stall_at
            .get_or_insert_with(|| Instant::now() + self.source.send_timeout());
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.source.metrics().reject(Rejection::SendTimeout);
            return true;
        }
        false
    }

    /// Writes and flushes what there is; `Ready(())` when the stream is over.
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.poll_client(cx) {
            return Poll::Ready(());
        }
        if !self.out.is_empty() && self.source.must_end(cx) {
            // Blocked on a client while the stream must end: no waiting for it.
            return Poll::Ready(());
        }
        loop {
            if self.out.is_empty() {
                if !self.ending {
                    match self.source.poll_next(cx) {
                        Poll::Ready(Some(bytes)) => {
                            self.out = if self.chunked {
                                Outgoing::chunk(bytes)
                            } else {
                                Outgoing::raw(bytes)
                            };
                            continue;
                        }
                        Poll::Ready(None) => {
                            if self.source.overflowed() {
                                // As hyper's connection is aborted: no orderly end.
                                return Poll::Ready(());
                            }
                            self.ending = true;
                            if self.chunked {
                                self.out = Outgoing::raw(Bytes::from_static(LAST_CHUNK));
                                continue;
                            }
                        }
                        Poll::Pending => {}
                    }
                }
                if self.unflushed {
                    match Pin::new(&mut self.socket).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => {
                            return if self.stalled(cx) {
                                Poll::Ready(())
                            } else {
                                Poll::Pending
                            };
                        }
                    }
                }
                self.stall_at = None;
                if self.ending {
                    let _ = Pin::new(&mut self.socket).poll_shutdown(cx);
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
            let slices = self.out.slices();
            match Pin::new(&mut self.socket).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(written)) => {
                    self.source.sent(written);
                    self.out.done += written;
                    self.unflushed = true;
                    self.stall_at = None;
                    if self.out.is_empty() {
                        // Its memory is not kept while the stream is idle.
                        self.out = Outgoing::default();
                    }
                }
                Poll::Pending => {
                    return if self.stalled(cx) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }
}

impl Future for SocketStream {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_stream(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::Outgoing;
    use bytes::Bytes;

    fn rest(out: &Outgoing) -> Vec<u8> {
        out.slices().iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn a_chunk_is_framed_and_resumes_where_a_write_stopped() {
        let mut out = Outgoing::chunk(Bytes::from_static(b"data: x\n\n"));
        assert_eq!(rest(&out), b"9\r\ndata: x\n\n\r\n");
        out.done = 2;
        assert_eq!(rest(&out), b"\ndata: x\n\n\r\n");
        out.done = 12;
        assert_eq!(rest(&out), b"\r\n");
        out.done = 14;
        assert!(out.is_empty());
        let big = Outgoing::chunk(Bytes::from(vec![b'a'; 0x4000]));
        assert!(rest(&big).starts_with(b"4000\r\naaa"));
    }
}
