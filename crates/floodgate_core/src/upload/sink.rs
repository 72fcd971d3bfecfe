//! The disk side of an upload: a blocking worker that writes the body to its temporary file,
//! then flushes (and by default syncs) it — pipelined with reading the socket, and with hashing
//! on a `HashLane` of its own — and renames it into place (at once, or later for a multipart
//! request's files together).
//!
//! Reading, hashing and writing on one task would leave the network idle during every disk
//! write; a bounded channel lets the next frames arrive meanwhile while memory stays a few
//! batches. The worker only commits on an explicit `Commit`; if the sender goes away (limit
//! hit, client gone, server closing) it drops the temporary file, which deletes it.

use crate::upload::running_hash::HashLane;
use bytes::Bytes;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Batches in flight between the socket and the disk.
const QUEUE_DEPTH: usize = 4;

enum Message {
    Data(Bytes),
    Commit,
}

pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

pub enum SinkError {
    /// `overwrite: false` and the name exists.
    Exists,
    /// Writing, syncing or renaming failed (disk full, permissions).
    Io,
    /// The upload ended without a commit; the temporary file is gone.
    Abandoned,
}

pub struct UploadSink {
    sender: mpsc::Sender<Message>,
    worker: JoinHandle<Result<Written, SinkError>>,
}

/// A body written and flushed (and synced) to its temporary file, not yet under its name.
pub struct Written {
    temp: tempfile::NamedTempFile,
    pub size: u64,
    pub sha256: String,
}

impl UploadSink {
    pub fn start(temp: tempfile::NamedTempFile, fsync: bool) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let worker = tokio::task::spawn_blocking(move || store(temp, receiver, fsync));
        Self { sender, worker }
    }

    /// Queues bytes for the disk; waits while the queue is full (backpressure on the socket).
    pub async fn write(&self, bytes: Bytes) -> Result<(), SinkError> {
        self.sender
            .send(Message::Data(bytes))
            .await
            .map_err(|_| SinkError::Abandoned)
    }

    /// The upload failed: stop the worker and wait until it has removed the temporary file, so
    /// the refusal the client gets is only sent once nothing is left on disk.
    pub async fn abandon(self) {
        drop(self.sender);
        let _ = self.worker.await;
    }

    /// Everything arrived: flush and sync the temporary file; it is not renamed yet.
    pub async fn finish(self) -> Result<Written, SinkError> {
        if self.sender.send(Message::Commit).await.is_err() {
            return self.worker.await.unwrap_or(Err(SinkError::Abandoned));
        }
        drop(self.sender);
        self.worker.await.unwrap_or(Err(SinkError::Abandoned))
    }

    /// Everything arrived: flush, sync and rename into place.
    pub async fn commit(self, target: PathBuf, overwrite: bool) -> Result<Stored, SinkError> {
        let written = self.finish().await?;
        tokio::task::spawn_blocking(move || written.persist(&target, overwrite))
            .await
            .unwrap_or(Err(SinkError::Io))
    }
}

impl Written {
    /// Renames the temporary file to `target` (blocking): over an existing file with
    /// `overwrite`, else only if the name is free.
    pub fn persist(self, target: &Path, overwrite: bool) -> Result<Stored, SinkError> {
        let persisted = if overwrite {
            self.temp.persist(target).map(drop)
        } else {
            // Link-then-unlink: fails atomically if the name appeared meanwhile.
            self.temp.persist_noclobber(target).map(drop)
        };
        match persisted {
            Ok(()) => Ok(Stored {
                size: self.size,
                sha256: self.sha256,
            }),
            Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Err(SinkError::Exists),
            Err(_) => Err(SinkError::Io),
        }
    }
}

fn store(
    mut temp: tempfile::NamedTempFile,
    mut receiver: mpsc::Receiver<Message>,
    fsync: bool,
) -> Result<Written, SinkError> {
    let mut lane = HashLane::default();
    let mut size = 0u64;
    loop {
        match receiver.blocking_recv() {
            None => return Err(SinkError::Abandoned),
            Some(Message::Data(bytes)) => {
                // Hashed while it is written.
                lane.feed(bytes.clone());
                temp.write_all(&bytes).map_err(|_| SinkError::Io)?;
                size += bytes.len() as u64;
            }
            Some(Message::Commit) => break,
        }
    }
    temp.flush().map_err(|_| SinkError::Io)?;
    if fsync {
        temp.as_file().sync_data().map_err(|_| SinkError::Io)?;
    }
    let sha256 = lane.finish().ok_or(SinkError::Io)?;
    Ok(Written { temp, size, sha256 })
}

/// The disk side of a multipart request: one blocking worker for all its files, one after the
/// other (a worker per file part made the blocking pool start a thread for most of a thousand
/// small files, each with its own allocator cache: +20 MiB of peak memory on 1,000 × 64 KiB).
pub struct FormSink {
    sender: mpsc::Sender<FormMessage>,
    worker: JoinHandle<()>,
}

enum FormMessage {
    /// A new file; the previous one, if not finished, is dropped (deleted).
    Open(tempfile::NamedTempFile),
    Data(Bytes),
    Finish(oneshot::Sender<Result<Written, SinkError>>),
}

impl FormSink {
    pub fn start(fsync: bool) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let worker = tokio::task::spawn_blocking(move || store_form(receiver, fsync));
        Self { sender, worker }
    }

    pub async fn open(&self, temp: tempfile::NamedTempFile) -> Result<(), SinkError> {
        self.send(FormMessage::Open(temp)).await
    }

    pub async fn write(&self, bytes: Bytes) -> Result<(), SinkError> {
        self.send(FormMessage::Data(bytes)).await
    }

    /// The open file is complete: flushed and synced, not renamed yet.
    pub async fn finish(&self) -> Result<Written, SinkError> {
        let (reply, answer) = oneshot::channel();
        self.send(FormMessage::Finish(reply)).await?;
        answer.await.unwrap_or(Err(SinkError::Abandoned))
    }

    /// Stops the worker and waits until it has removed an unfinished file.
    pub async fn close(self) {
        drop(self.sender);
        let _ = self.worker.await;
    }

    async fn send(&self, message: FormMessage) -> Result<(), SinkError> {
        self.sender
            .send(message)
            .await
            .map_err(|_| SinkError::Abandoned)
    }
}

fn store_form(mut receiver: mpsc::Receiver<FormMessage>, fsync: bool) {
    // The open file and its size; `None` after a write failed (the file is dropped and
    // `Finish` answers `Io`). Its hash is on the lane.
    let mut lane = HashLane::default();
    let mut open: Option<(tempfile::NamedTempFile, u64)> = None;
    let mut failed = false;
    while let Some(message) = receiver.blocking_recv() {
        match message {
            FormMessage::Open(temp) => {
                // Whatever the lane holds of an earlier file (abandoned, failed) is not this one.
                lane.reset();
                open = Some((temp, 0));
                failed = false;
            }
            FormMessage::Data(bytes) => {
                if let Some((temp, size)) = &mut open {
                    lane.feed(bytes.clone());
                    *size += bytes.len() as u64;
                    if temp.write_all(&bytes).is_err() {
                        open = None;
                        failed = true;
                    }
                }
            }
            FormMessage::Finish(reply) => {
                let result = match open.take() {
                    None if failed => Err(SinkError::Io),
                    None => Err(SinkError::Abandoned),
                    Some((mut temp, size)) => (|| {
                        temp.flush()?;
                        if fsync {
                            temp.as_file().sync_data()?;
                        }
                        let sha256 = lane.finish().ok_or_else(|| io::Error::other("hasher"))?;
                        Ok(Written { temp, size, sha256 })
                    })()
                    .map_err(|_: io::Error| SinkError::Io),
                };
                let _ = reply.send(result);
            }
        }
    }
}
