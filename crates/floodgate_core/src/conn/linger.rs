//! The lingering close (nginx's `lingering_close`): send FIN, then read and discard what the
//! client is still sending for a short while, so that closing with unread input (a refused
//! connection's request, a body refused with 413, a WebSocket's last frames) does not reset
//! the connection before the client has read the answer.
//!
//! One drain rule for every path: the socket wrapper polls [`Lingering`] from its
//! `poll_shutdown`; a refused connection and an ended WebSocket session await [`linger`].

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// How long input is drained after FIN.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much input is drained after FIN before giving up.
const LINGER_BYTES: usize = 8 << 20;

/// A drain in progress: its deadline and what it has read so far.
pub(crate) struct Lingering {
    deadline: Instant,
    drained: usize,
}

impl Lingering {
    /// Starts a drain now (after the caller has sent FIN).
    pub(crate) fn start() -> Self {
        Self {
            deadline: Instant::now() + LINGER_TIME,
            drained: 0,
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Reads and discards input until the client closes, errs, passes the byte budget or the
    /// deadline passes. `Pending` means no input is ready: the caller waits for more input or
    /// its timer at [`deadline`](Self::deadline), whichever comes first.
    pub(crate) fn poll_drain<R: AsyncRead + ?Sized>(
        &mut self,
        mut reader: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut sink = [0u8; 8192];
        loop {
            if self.drained > LINGER_BYTES || Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut sink);
            match ready!(reader.as_mut().poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(()),
                Ok(()) => self.drained += buf.filled().len(),
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

/// Writes `farewell` (if any), sends FIN, then drains input as [`Lingering`] does, for at most
/// [`LINGER_TIME`] in all.
pub(crate) async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, farewell: &[u8]) {
    let drain = async {
        stream.write_all(farewell).await?;
        stream.shutdown().await?;
        let mut lingering = Lingering::start();
        std::future::poll_fn(|cx| lingering.poll_drain(Pin::new(&mut stream), cx)).await;
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_the_farewell_then_drains_until_the_client_closes() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let lingering = tokio::spawn(linger(server, b"bye"));
        client.write_all(&[0u8; 10_000]).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        drop(client);
        lingering.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_linger_time() {
        let (server, _client) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        linger(server, b"").await;
        assert!(started.elapsed() >= LINGER_TIME);
        assert!(started.elapsed() < LINGER_TIME + Duration::from_millis(100));
    }
}
