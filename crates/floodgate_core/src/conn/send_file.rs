//! `sendfile(2)` on a tokio socket: the kernel copies a file range to the socket, with the
//! socket's readiness driven by tokio as for any write.
//!
//! Linux only for now: other systems keep the read + write path (`SUPPORTED` is false, so no
//! body asks for it). A `sendfile` that must read from disk blocks the worker thread for that
//! read, as nginx's `sendfile on` without `aio threads` does; served files are expected to be
//! in the page cache, and the read-ahead advice on open (`advise_sequential`) keeps them ahead.

use std::fs::File;
use std::io;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// A socket that can send a file range itself.
pub trait SendFile {
    /// Whether [`SendFile::poll_send_file`] works here; when false it is never called.
    const SUPPORTED: bool;

    /// Sends up to `count` bytes of `file` from `offset`; `Ok(0)` when the file ends there.
    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        count: usize,
    ) -> Poll<io::Result<usize>>;
}

#[cfg(target_os = "linux")]
impl SendFile for TcpStream {
    const SUPPORTED: bool = true;

    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        count: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            // `try_io` clears the readiness when the send would block, so the loop then parks.
            let sent = self.try_io(tokio::io::Interest::WRITABLE, || {
                let mut at = offset;
                Ok(rustix::fs::sendfile(self, file, Some(&mut at), count)?)
            });
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl SendFile for TcpStream {
    const SUPPORTED: bool = false;

    fn poll_send_file(
        &self,
        _cx: &mut Context<'_>,
        _file: &File,
        _offset: u64,
        _count: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// Tells the kernel `file` will be read from `offset` to its end in order, so it reads ahead
/// further (Linux doubles the read-ahead window). Advice only: a failure changes nothing.
pub fn advise_sequential(file: &File, offset: u64) {
    #[cfg(target_os = "linux")]
    let _ = rustix::fs::fadvise(file, offset, None, rustix::fs::Advice::Sequential);
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset);
}
