//! Streams parts of an open file as a response body, paced by the shaper, bounded by the
//! download deadline. Over HTTP/1.1 on Linux each piece is a stand-in the socket wrapper sends
//! with `sendfile` (`delivery::zero_copy`); elsewhere it is read into memory, one chunk at a
//! time.
//!
//! Reads are plain blocking reads on the runtime thread, as nginx does without `aio`: served
//! files are expected in the page cache, where a 64 KiB read costs microseconds, far less than
//! a hop to a blocking pool per chunk would.

use crate::conn::state::ConnState;
use crate::delivery::body::Body;
use crate::delivery::zero_copy::MAX_PIECE;
use crate::delivery::Pacing;
use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

/// One piece of the body: literal bytes (multipart framing) or an inclusive file range.
pub enum Segment {
    Bytes(Bytes),
    File { start: u64, end: u64 },
}

pub struct FileStream {
    pub file: Arc<File>,
    pub segments: VecDeque<Segment>,
    pub pacing: Pacing,
    /// The connection whose socket wrapper sends the file pieces (`sendfile`); `None` reads
    /// them here.
    pub zero_copy: Option<Arc<ConnState>>,
}

struct Cursor {
    stream: FileStream,
    /// Position and end (exclusive) within the file segment being sent.
    position: u64,
    end: u64,
}

impl FileStream {
    pub fn into_body(self) -> Body {
        let cursor = Cursor {
            stream: self,
            position: 0,
            end: 0,
        };
        let frames = stream::unfold(Some(cursor), |cursor| async move {
            let mut cursor = cursor?;
            match cursor.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok(Frame::data(bytes)), Some(cursor))),
                Ok(None) => None,
                Err(err) => Some((Err(err), None)),
            }
        });
        StreamBody::new(frames).boxed_unsync()
    }
}

impl Cursor {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.position >= self.end {
            match self.stream.segments.pop_front() {
                None => return Ok(None),
                Some(Segment::Bytes(bytes)) => return Ok(Some(bytes)),
                Some(Segment::File { start, end }) => {
                    if self.stream.zero_copy.is_none() {
                        (&*self.stream.file).seek(SeekFrom::Start(start))?;
                    }
                    self.position = start;
                    self.end = end + 1;
                }
            }
        }
        let piece = self.piece_size().min(self.end - self.position);
        self.stream.pacing.admit(piece).await?;
        if let Some(conn) = &self.stream.zero_copy {
            let stand_in = conn
                .file_pieces()
                .stand_in_for(&self.stream.file, self.position, piece);
            self.position += piece;
            return Ok(Some(stand_in));
        }
        // `read_to_end` fills spare capacity without zeroing it first (a memset per chunk).
        let mut buffer = Vec::with_capacity(piece as usize);
        (&*self.stream.file).take(piece).read_to_end(&mut buffer)?;
        if buffer.len() as u64 != piece {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being served",
            ));
        }
        self.position += piece;
        Ok(Some(Bytes::from(buffer)))
    }

    /// The most to send at once: what the shaper lets through, or when unshaped a chunk to
    /// read, and with `sendfile` (no buffer to fill) the largest stand-in.
    fn piece_size(&self) -> u64 {
        match (&self.stream.zero_copy, self.stream.pacing.is_shaped()) {
            (Some(_), false) => MAX_PIECE,
            (Some(_), true) => self.stream.pacing.piece().min(MAX_PIECE),
            (None, _) => self.stream.pacing.piece(),
        }
    }
}
