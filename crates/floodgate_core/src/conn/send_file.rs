//! `sendfile(2)` on a tokio socket: the kernel copies a file range to the socket, with the
//! socket's readiness driven by tokio as for any write.
//!
//! Linux, Android, macOS, iOS and FreeBSD have it (through `nix`); elsewhere (Windows, other
//! BSDs) `can_send_file` is false and no body asks for it: files are read and written. A
//! `sendfile` that must read from disk blocks the worker thread for that read, as nginx's
//! `sendfile on` without `aio threads` does; served files are expected in the page cache.
//!
//! No read-ahead advice (`posix_fadvise(SEQUENTIAL)`) is given: measured on a cold cache (1 GiB,
//! `sendfile` in 2 MiB pieces to a loopback reader, device read-ahead 8 MiB), it made reading
//! slower, 0.32–0.39 GB/s against 0.58–0.63 GB/s without it; the kernel's own read-ahead
//! already follows a sequential reader.

use std::fs::File;
use std::io;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// A socket that can send a file range itself.
pub trait SendFile {
    /// Whether [`SendFile::poll_send_file`] works here; when false it is never called.
    fn can_send_file(&self) -> bool;

    /// Sends up to `count` (> 0) bytes of `file` from `offset`; `Ok(0)` when the file ends
    /// there.
    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        count: usize,
    ) -> Poll<io::Result<usize>>;
}

impl SendFile for TcpStream {
    fn can_send_file(&self) -> bool {
        sys::SUPPORTED
    }

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
                sys::send_file(self, file, offset, count)
            });
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::fs::File;
    use std::io;
    use tokio::net::TcpStream;

    pub const SUPPORTED: bool = true;

    pub fn send_file(
        socket: &TcpStream,
        file: &File,
        offset: u64,
        count: usize,
    ) -> io::Result<usize> {
        let mut offset = offset as i64;
        Ok(nix::sys::sendfile::sendfile64(
            socket,
            file,
            Some(&mut offset),
            count,
        )?)
    }
}

/// The BSD form: the count sent is reported even when the call fails part way (`EAGAIN` on a
/// full non-blocking socket, `EINTR`), and that progress counts.
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
mod sys {
    use std::fs::File;
    use std::io;
    use tokio::net::TcpStream;

    pub const SUPPORTED: bool = true;

    pub fn send_file(
        socket: &TcpStream,
        file: &File,
        offset: u64,
        count: usize,
    ) -> io::Result<usize> {
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        let (result, sent) = nix::sys::sendfile::sendfile(
            file,
            socket,
            offset as i64,
            Some(count as i64),
            None,
            None,
        );
        #[cfg(target_os = "freebsd")]
        let (result, sent) = nix::sys::sendfile::sendfile(
            file,
            socket,
            offset as i64,
            Some(count),
            None,
            None,
            nix::sys::sendfile::SfFlags::empty(),
            0,
        );
        match result {
            Ok(()) => Ok(sent as usize),
            Err(_) if sent > 0 => Ok(sent as usize),
            Err(errno) => Err(errno.into()),
        }
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
)))]
mod sys {
    use std::fs::File;
    use std::io;
    use tokio::net::TcpStream;

    pub const SUPPORTED: bool = false;

    pub fn send_file(_: &TcpStream, _: &File, _: u64, _: usize) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
