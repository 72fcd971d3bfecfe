//! The byte stream of one connection: plain TCP, or TLS over it. Everything above (the socket
//! wrapper, hyper, WebSocket sessions) reads and writes it the same way; only plain TCP can
//! send a file with `sendfile` (TLS must encrypt the bytes).

use crate::conn::send_file::SendFile;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Socket {
    Plain(TcpStream),
    /// Boxed: a TLS session's buffers are large, and most servers hold plain sockets.
    Tls(Box<TlsStream<TcpStream>>),
    /// What a wrapper keeps once its socket was handed to an event stream
    /// (`conn::handoff`): reads see the end, writes fail.
    Gone,
}

impl Socket {
    /// The protocol ALPN settled on, for a TLS connection that negotiated one.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Socket::Plain(_) | Socket::Gone => None,
            Socket::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }
}

macro_rules! each {
    ($self:ident, $inner:ident => $body:expr, $gone:expr) => {
        match $self.get_mut() {
            Socket::Gone => $gone,
            Socket::Plain($inner) => {
                let $inner = Pin::new($inner);
                $body
            }
            Socket::Tls(tls) => {
                let $inner = Pin::new(tls.as_mut());
                $body
            }
        }
    };
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the socket was handed over")
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, inner => inner.poll_read(cx, buf), Poll::Ready(Ok(())))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, inner => inner.poll_write(cx, buf), Poll::Ready(Err(gone())))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, inner => inner.poll_write_vectored(cx, bufs), Poll::Ready(Err(gone())))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(inner) => inner.is_write_vectored(),
            Socket::Tls(tls) => tls.is_write_vectored(),
            Socket::Gone => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, inner => inner.poll_flush(cx), Poll::Ready(Ok(())))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, inner => inner.poll_shutdown(cx), Poll::Ready(Ok(())))
    }
}

impl SendFile for Socket {
    fn can_send_file(&self) -> bool {
        match self {
            Socket::Plain(inner) => inner.can_send_file(),
            Socket::Tls(_) | Socket::Gone => false,
        }
    }

    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        count: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Socket::Plain(inner) => inner.poll_send_file(cx, file, offset, count),
            Socket::Tls(_) | Socket::Gone => Poll::Ready(Err(io::ErrorKind::Unsupported.into())),
        }
    }
}
