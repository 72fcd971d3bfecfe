//! Streams parts of an open file as a response body: one chunk in memory at a time, paced by
//! the shaper, bounded by the download deadline.
//!
//! Reads are plain blocking reads on the runtime thread, as nginx does without `aio`: served
//! files are expected in the page cache, where a 64 KiB read costs microseconds, far less than
//! a hop to a blocking pool per chunk would.

use crate::delivery::body::Body;
use crate::delivery::Pacing;
use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

/// One piece of the body: literal bytes (multipart framing) or an inclusive file range.
pub enum Segment {
    Bytes(Bytes),
    File { start: u64, end: u64 },
}

pub struct FileStream {
    pub file: File,
    pub segments: VecDeque<Segment>,
    pub pacing: Pacing,
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
                    self.stream.file.seek(SeekFrom::Start(start))?;
                    self.position = start;
                    self.end = end + 1;
                }
            }
        }
        let piece = self.stream.pacing.piece().min(self.end - self.position);
        self.stream.pacing.admit(piece).await?;
        // `read_to_end` fills spare capacity without zeroing it first (a memset per chunk).
        let mut buffer = Vec::with_capacity(piece as usize);
        (&mut self.stream.file)
            .take(piece)
            .read_to_end(&mut buffer)?;
        if buffer.len() as u64 != piece {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being served",
            ));
        }
        self.position += piece;
        Ok(Some(Bytes::from(buffer)))
    }
}
