//! The disk side of an upload: a blocking worker that hashes and writes the body to its
//! temporary file, then flushes (and by default syncs) it — pipelined with reading the socket —
//! and renames it into place (at once, or later for a multipart request's files together).
//!
//! Reading, hashing and writing on one task would leave the network idle during every disk
//! write; a bounded channel lets the next frames arrive meanwhile while memory stays a few
//! batches. The worker only commits on an explicit `Commit`; if the sender goes away (limit
//! hit, client gone, server closing) it drops the temporary file, which deletes it.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
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
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match receiver.blocking_recv() {
            None => return Err(SinkError::Abandoned),
            Some(Message::Data(bytes)) => {
                hasher.update(&bytes);
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
    Ok(Written {
        temp,
        size,
        sha256: format!("{:x}", hasher.finalize()),
    })
}
