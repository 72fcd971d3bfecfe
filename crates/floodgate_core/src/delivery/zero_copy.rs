//! Zero-copy file bodies: a file range goes from the page cache to the socket with
//! `sendfile(2)`, never through a buffer of ours, while hyper still frames the response.
//!
//! hyper writes every body through its own write buffer, and a `Body` yields bytes, so a file
//! range cannot be handed to hyper as such. Instead the file body yields a *stand-in*: a
//! `Bytes` of the range's length that points into one region of memory reserved for that
//! (never read, never written), and queues the range itself ([`FilePiece`]) in the
//! connection's [`FilePieces`]. hyper frames and counts the stand-in like any chunk
//! (`Content-Length`, chunked framing, pipelining all unchanged) and, writing vectored, passes
//! its memory through to the socket wrapper untouched. The wrapper (`conn::guarded_io`)
//! recognises the stand-in by its address, writes what precedes it as usual, and fulfils the
//! stand-in with `sendfile` from the queued range: the same bytes, sent by the kernel. A
//! partial `sendfile` is a partial write to hyper, which comes back with the rest of the
//! stand-in; its offset in the region says where in the piece that is.
//!
//! The same idea as Go's `net/http` (`io.ReaderFrom` on the connection turns a file copy into
//! `sendfile`) and nginx's file buffers in its output chain; actix-files and may_minihttp write
//! file bodies outside the framing layer instead, which hyper does not allow.
//!
//! Only HTTP/1.1 over plain TCP uses it (`ConnState::zero_copy`): HTTP/2 frames and encrypted
//! streams must see the bytes, so they keep the read + write path.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

/// The largest stand-in, so the largest file piece one body frame carries when unshaped (as
/// nginx's `sendfile_max_chunk` default): large enough that hyper and the body are involved a
/// few times per socket buffer, small enough that one response does not hold a worker long.
pub const MAX_PIECE: u64 = 2 * 1024 * 1024;

/// Smaller file bodies are read and written: below about this size one `writev` of head and
/// body costs less than `writev` + `sendfile`, and puts them in one segment (measured with
/// `wrk -c50` on 4–256 KiB files: server CPU per request even at 16 KiB, sendfile ahead from
/// 32 KiB, 1.5× the requests per second at 256 KiB).
pub const MIN_BODY: u64 = 32 * 1024;

/// The region every stand-in points into. Reserved on first use and never touched: calloc'd
/// pages that are never read stay unmapped, so it costs address space, not memory.
static REGION: OnceLock<&'static [u8]> = OnceLock::new();

fn region() -> &'static [u8] {
    REGION.get_or_init(|| Box::leak(vec![0u8; MAX_PIECE as usize].into_boxed_slice()))
}

/// A stand-in for a file piece of `len` bytes (at most [`MAX_PIECE`]).
fn stand_in(len: u64) -> Bytes {
    Bytes::from_static(&region()[..len as usize])
}

/// Where `slice` starts within a stand-in, when it is (part of) one.
pub fn stand_in_position(slice: &[u8]) -> Option<usize> {
    let region = REGION.get()?;
    let base = region.as_ptr() as usize;
    let start = slice.as_ptr() as usize;
    (!slice.is_empty() && start >= base && start < base + region.len()).then(|| start - base)
}

/// A file range a stand-in stands for, and how much of it has been sent.
struct FilePiece {
    file: Arc<File>,
    offset: u64,
    len: u64,
    sent: u64,
}

/// The file pieces of one connection whose stand-ins hyper holds, in the order it will write
/// them (HTTP/1.1 writes one response at a time, in order).
#[derive(Default)]
pub struct FilePieces {
    queue: Mutex<VecDeque<FilePiece>>,
}

impl FilePieces {
    /// Queues `len` bytes of `file` from `offset` and returns the stand-in the body yields.
    pub fn stand_in_for(&self, file: &Arc<File>, offset: u64, len: u64) -> Bytes {
        debug_assert!(len > 0 && len <= MAX_PIECE);
        self.lock().push_back(FilePiece {
            file: Arc::clone(file),
            offset,
            len,
            sent: 0,
        });
        stand_in(len)
    }

    /// Sends up to `max` bytes of the next piece, whose stand-in hyper now writes from
    /// `position`, with `send(file, offset, count)`. `Ok(0)` never: a file that ends before
    /// its piece (truncated while being served) is an `UnexpectedEof` error, which ends the
    /// connection: the response cannot be completed, and nothing else may fill it.
    pub fn send_next(
        &self,
        position: usize,
        max: usize,
        send: impl FnOnce(&File, u64, usize) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut queue = self.lock();
        let Some(piece) = queue.front_mut() else {
            return Err(broken("a file stand-in without its piece"));
        };
        if piece.sent != position as u64 {
            return Err(broken("a file stand-in out of step with its piece"));
        }
        let count = (piece.len - piece.sent).min(max as u64) as usize;
        let sent = send(&piece.file, piece.offset + piece.sent, count)?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being served",
            ));
        }
        piece.sent += sent as u64;
        if piece.sent == piece.len {
            queue.pop_front();
        }
        Ok(sent)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<FilePiece>> {
        // Only the connection's task uses it (body and socket wrapper poll in turn).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn broken(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(len: usize) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; len]).unwrap();
        Arc::new(file)
    }

    #[test]
    fn stand_ins_are_recognised_with_their_position_and_nothing_else_is() {
        let pieces = FilePieces::default();
        let stand_in = pieces.stand_in_for(&file_of(10), 0, 10);
        assert_eq!(stand_in.len(), 10);
        assert_eq!(stand_in_position(&stand_in), Some(0));
        assert_eq!(stand_in_position(&stand_in[4..]), Some(4));
        assert_eq!(stand_in_position(&stand_in[10..]), None, "empty");
        assert_eq!(stand_in_position(&[0u8; 10][..]), None);
        assert_eq!(stand_in_position(&Bytes::from(vec![0u8; 10])), None);
    }

    #[test]
    fn pieces_are_sent_in_order_and_resumed_where_a_partial_send_stopped() {
        let pieces = FilePieces::default();
        let file = file_of(100);
        let _first = pieces.stand_in_for(&file, 10, 30);
        let _second = pieces.stand_in_for(&file, 60, 20);
        let mut calls = Vec::new();
        let mut send = |position, max, sent| {
            pieces.send_next(position, max, |_: &File, offset, count| {
                calls.push((offset, count));
                Ok(count.min(sent))
            })
        };
        assert_eq!(send(0, 30, 12).unwrap(), 12);
        assert_eq!(send(12, 18, 100).unwrap(), 18);
        assert_eq!(send(0, 20, 100).unwrap(), 20);
        assert_eq!(calls, [(10, 30), (22, 18), (60, 20)]);
        assert!(pieces.lock().is_empty());
    }

    #[test]
    fn a_stand_in_out_of_step_or_without_a_piece_is_an_error_never_a_send() {
        let pieces = FilePieces::default();
        let never = |_: &File, _, _| -> io::Result<usize> { panic!("must not send") };
        let err = pieces.send_next(0, 5, never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let _stand_in = pieces.stand_in_for(&file_of(10), 0, 10);
        let err = pieces.send_next(3, 5, never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_file_that_ends_before_its_piece_ends_the_response_with_an_error() {
        let pieces = FilePieces::default();
        let _stand_in = pieces.stand_in_for(&file_of(10), 0, 10);
        let err = pieces.send_next(0, 10, |_, _, _| Ok(0)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
