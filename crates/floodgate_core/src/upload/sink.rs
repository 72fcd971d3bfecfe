//! The disk side of an upload: a blocking worker that hashes and writes the body to its
//! temporary file, then flushes (and by default syncs) it and renames it into place — pipelined with reading the socket.
//!
//! Reading, hashing and writing on one task would leave the network idle during every disk
//! write; a bounded channel lets the next frames arrive meanwhile while memory stays a few
//! batches. The worker only commits on an explicit `Commit`; if the sender goes away (limit
//! hit, client gone, server closing) it drops the temporary file, which deletes it.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::path::PathBuf;
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
    worker: JoinHandle<Result<Stored, SinkError>>,
}

impl UploadSink {
    pub fn start(
        temp: tempfile::NamedTempFile,
        target: PathBuf,
        overwrite: bool,
        fsync: bool,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let worker =
            tokio::task::spawn_blocking(move || store(temp, receiver, target, overwrite, fsync));
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

    /// Everything arrived: flush, sync and rename into place.
    pub async fn commit(self) -> Result<Stored, SinkError> {
        if self.sender.send(Message::Commit).await.is_err() {
            return self.worker.await.unwrap_or(Err(SinkError::Abandoned));
        }
        drop(self.sender);
        self.worker.await.unwrap_or(Err(SinkError::Abandoned))
    }
}

fn store(
    mut temp: tempfile::NamedTempFile,
    mut receiver: mpsc::Receiver<Message>,
    target: PathBuf,
    overwrite: bool,
    fsync: bool,
) -> Result<Stored, SinkError> {
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
    let persisted = if overwrite {
        temp.persist(&target).map(drop)
    } else {
        // Link-then-unlink: fails atomically if the name appeared meanwhile.
        temp.persist_noclobber(&target).map(drop)
    };
    match persisted {
        Ok(()) => Ok(Stored {
            size,
            sha256: format!("{:x}", hasher.finalize()),
        }),
        Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Err(SinkError::Exists),
        Err(_) => Err(SinkError::Io),
    }
}
