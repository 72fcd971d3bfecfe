//! The chunk queue between JS writing a streamed response and the socket taking it.
//!
//! Bounded in chunks ([`DEPTH`]), and refilled in bursts: a writer that found the queue full
//! waits until the socket has taken it down to [`REFILL`] chunks before it may write again,
//! as a Node stream's `drain` waits for its buffer to empty. Waking the JS thread each time
//! one chunk left the queue cost a pair of thread switches per chunk, which was most of the
//! cost of a streamed response; now one wake moves `DEPTH - REFILL` chunks. A full queue keeps
//! the chunk that did not fit (`held`), so JS hands each chunk over once.

use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Chunks queued between JS and the socket at most: JS runs this far ahead of the client.
pub const DEPTH: usize = 6;
/// A waiting writer resumes once the queue is down to this many chunks.
pub const REFILL: usize = 2;

/// The stream is over: the client left or the response was dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// The writing end, kept by the bridge for JS.
pub struct StreamWriter {
    sender: mpsc::Sender<Bytes>,
    drained: Arc<Notify>,
    /// The chunk a full queue refused, queued by [`Drain::wait`].
    held: Option<Bytes>,
}

/// The reading end: the response body's source.
pub struct StreamReader {
    receiver: mpsc::Receiver<Bytes>,
    drained: Arc<Notify>,
}

pub fn channel() -> (StreamWriter, StreamReader) {
    let (sender, receiver) = mpsc::channel(DEPTH);
    let drained = Arc::new(Notify::new());
    let writer = StreamWriter {
        sender,
        drained: Arc::clone(&drained),
        held: None,
    };
    (writer, StreamReader { receiver, drained })
}

impl StreamWriter {
    /// Queues `chunk` if there is room: `Ok(true)`. `Ok(false)`: the queue is full, and the
    /// chunk is held until the socket takes enough ([`StreamWriter::drain`]); the writer awaits
    /// that before offering another (one offered meanwhile is refused, so order is kept).
    pub fn try_write(&mut self, chunk: Bytes) -> Result<bool, Closed> {
        if self.held.is_some() || self.sender.is_closed() {
            return Err(Closed);
        }
        match self.sender.try_send(chunk) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(chunk)) => {
                self.held = Some(chunk);
                Ok(false)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// What queues the held chunk once there is room; taken without holding the bridge's lock.
    pub fn drain(&mut self) -> Drain {
        Drain {
            sender: self.sender.clone(),
            drained: Arc::clone(&self.drained),
            chunk: self.held.take(),
        }
    }
}

/// A wait for room in the queue (see [`StreamWriter::drain`]).
pub struct Drain {
    sender: mpsc::Sender<Bytes>,
    drained: Arc<Notify>,
    chunk: Option<Bytes>,
}

impl Drain {
    /// Waits until the queue is down to [`REFILL`] chunks, then queues the held chunk.
    pub async fn wait(self) -> Result<(), Closed> {
        let Some(mut chunk) = self.chunk else {
            return if self.sender.is_closed() {
                Err(Closed)
            } else {
                Ok(())
            };
        };
        loop {
            // Registered before the queue is looked at, so a take in between is not missed.
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.sender.capacity() >= DEPTH - REFILL {
                match self.sender.try_send(chunk) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::TrySendError::Full(back)) => chunk = back,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed),
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = self.sender.closed() => return Err(Closed),
            }
        }
    }
}

impl StreamReader {
    /// The next chunk, `None` once JS has ended the stream.
    pub async fn next(&mut self) -> Option<Bytes> {
        let chunk = self.receiver.recv().await;
        if self.receiver.len() <= REFILL {
            self.drained.notify_waiters();
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_holds_the_chunk_and_refills_after_the_reader_takes_enough() {
        let (mut writer, mut reader) = channel();
        for i in 0..DEPTH {
            assert_eq!(writer.try_write(Bytes::from(vec![i as u8])), Ok(true));
        }
        assert_eq!(writer.try_write(Bytes::from_static(b"held")), Ok(false));
        let drain = tokio::spawn(writer.drain().wait());
        // One chunk taken leaves DEPTH - 1 queued: above REFILL, the writer still waits.
        assert_eq!(reader.next().await.unwrap()[0], 0);
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        for i in 1..DEPTH - REFILL {
            assert_eq!(reader.next().await.unwrap()[0], i as u8);
        }
        drain.await.unwrap().unwrap();
        for i in DEPTH - REFILL..DEPTH {
            assert_eq!(reader.next().await.unwrap()[0], i as u8);
        }
        assert_eq!(reader.next().await.unwrap(), Bytes::from_static(b"held"));
        drop(writer);
        assert_eq!(reader.next().await, None);
    }

    #[tokio::test]
    async fn a_waiting_writer_learns_when_the_reader_is_gone() {
        let (mut writer, reader) = channel();
        for _ in 0..DEPTH {
            writer.try_write(Bytes::from_static(b"x")).unwrap();
        }
        assert_eq!(writer.try_write(Bytes::from_static(b"x")), Ok(false));
        let drain = tokio::spawn(writer.drain().wait());
        drop(reader);
        assert_eq!(drain.await.unwrap(), Err(Closed));
        assert_eq!(writer.try_write(Bytes::from_static(b"x")), Err(Closed));
    }
}
