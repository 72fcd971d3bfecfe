//! SHA-256 of uploads, on threads of their own beside the disk writes.
//!
//! A raw upload's or a multipart request's files are hashed by a `HashLane`: the disk worker
//! hands each batch to it before writing it, so hashing one batch and writing it run at once
//! instead of one after the other (which bounded an upload to 1 / (1/hash + 1/write)).
//!
//! A resumable upload's running hash is handed from each `PATCH` to the next, so that the
//! completion does not read the whole file again.
//!
//! A `PATCH` without `Upload-Checksum` counts every byte it writes, so its bytes are hashed
//! *behind* the writes, by a hasher of its own (`HashChain::behind`): the `PATCH` is answered
//! once its bytes are written, and the hasher catches up while the client sends the next one.
//! Hashing in line made the disk worker both hash and write, and left it idle during every
//! request's round trip: 8 MiB `PATCH`es lost about a tenth of one `PUT`'s throughput.
//!
//! The hash goes along a chain: each `PATCH` takes the link the previous one will hand the
//! hash through and leaves a new one for the next, so hashers run in order even when one
//! starts before the previous has caught up. A link dropped without a hash (an I/O error, a
//! restart) hands over nothing, and so does a hash that covers another length than the data
//! the next `PATCH` appends to: the completion then reads the file again, which is always right.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

/// Batches a file's hasher may be behind its writes (about 1 MiB): hashing and writing the
/// same stream run at once; more would only hold memory.
const LANE_LAG: usize = 4;

/// Batches a `PATCH`'s hasher may be behind its writes (about 4 MiB): the `PATCH` is answered
/// without waiting for them, and they are hashed while the client sends the next one. On
/// loopback, 256 MiB in 8 MiB `PATCH`es reached 0.81 of one `PUT` with 2 batches, 0.89 with
/// 4, 0.93 with 16 and no more with 64. The lag only fills while the data arrives faster than
/// one core hashes (~2 GB/s with SHA extensions); over a real network it stays near empty.
const PATCH_LAG: usize = 16;

/// The hash of an upload's first `covered` bytes.
#[derive(Clone, Default)]
pub struct Running {
    covered: u64,
    hasher: Sha256,
}

impl Running {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.covered += bytes.len() as u64;
    }

    pub fn hex(self) -> String {
        format!("{:x}", self.hasher.finalize())
    }
}

/// Where the next `PATCH` takes the running hash from.
pub struct HashChain {
    next: Mutex<Receiver<Option<Running>>>,
}

/// The hand-over of one `PATCH`: what it gives the next one, once it has the hash.
pub struct Handover(SyncSender<Option<Running>>);

impl Handover {
    pub fn give(self, running: Option<Running>) {
        // The receiver is gone only when the upload is: nothing to hand the hash to.
        let _ = self.0.send(running);
    }
}

/// A hasher running behind one `PATCH`'s writes; dropping it ends the `PATCH`'s bytes.
pub struct Behind {
    feed: Option<SyncSender<Bytes>>,
}

impl Behind {
    /// Hands written bytes to the hasher; waits while it is `PATCH_LAG` batches behind.
    pub fn feed(&mut self, bytes: Bytes) {
        if let Some(feed) = &self.feed {
            if feed.send(bytes).is_err() {
                // The hasher had no hash covering this data (it handed over nothing): the
                // completion reads the file again.
                self.feed = None;
            }
        }
    }
}

impl HashChain {
    /// A chain whose next `PATCH` finds `running` at once.
    pub fn new(running: Option<Running>) -> Self {
        let (give, next) = sync_channel(1);
        let _ = give.send(running);
        Self {
            next: Mutex::new(next),
        }
    }

    /// Takes this `PATCH`'s place in the chain: the receiver of the hash as the previous one
    /// leaves it, and the hand-over to the next.
    fn link(&self) -> (Receiver<Option<Running>>, Handover) {
        let (give, next) = sync_channel(1);
        let mut slot = self
            .next
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let previous = std::mem::replace(&mut *slot, next);
        (previous, Handover(give))
    }

    /// The hash of the data's first `offset` bytes, once every earlier hasher is done
    /// (blocking), or `None` if it was lost; the caller hands on what it makes of it.
    pub fn take(&self, offset: u64) -> (Option<Running>, Handover) {
        let (previous, handover) = self.link();
        let running = previous
            .recv()
            .ok()
            .flatten()
            .filter(|running| running.covered == offset);
        (running, handover)
    }

    /// Starts a hasher (on the blocking pool) that continues the hash of the first `offset`
    /// bytes with what `Behind::feed` gets, and hands it on when the `Behind` is dropped.
    pub fn behind(&self, offset: u64) -> Behind {
        let (previous, handover) = self.link();
        let (feed, bytes) = sync_channel::<Bytes>(PATCH_LAG);
        tokio::task::spawn_blocking(move || {
            let running = previous
                .recv()
                .ok()
                .flatten()
                .filter(|running| running.covered == offset);
            let Some(mut running) = running else {
                // Dropping `bytes` tells the writer to stop feeding.
                handover.give(None);
                return;
            };
            while let Ok(piece) = bytes.recv() {
                running.update(&piece);
            }
            handover.give(Some(running));
        });
        Behind { feed: Some(feed) }
    }
}

/// A hasher on the blocking pool for one file after another: fed the bytes of the open file,
/// asked for its digest at its end.
pub struct HashLane {
    feed: SyncSender<Lane>,
}

enum Lane {
    Bytes(Bytes),
    /// The open file ended: its digest, and the next bytes start a new one.
    Finish(SyncSender<String>),
    /// The open file was abandoned: the next bytes start a new one.
    Reset,
}

impl HashLane {
    pub fn start() -> Self {
        let (feed, lane) = sync_channel(LANE_LAG);
        tokio::task::spawn_blocking(move || {
            let mut running = Running::default();
            while let Ok(message) = lane.recv() {
                match message {
                    Lane::Bytes(bytes) => running.update(&bytes),
                    Lane::Finish(reply) => {
                        let _ = reply.send(std::mem::take(&mut running).hex());
                    }
                    Lane::Reset => running = Running::default(),
                }
            }
        });
        Self { feed }
    }

    /// Hands bytes to the hasher (blocking while it is `LANE_LAG` batches behind).
    pub fn feed(&self, bytes: Bytes) {
        let _ = self.feed.send(Lane::Bytes(bytes));
    }

    /// The digest of everything fed since the last `finish` or `reset` (blocking until the
    /// hasher has caught up); `None` only if the hasher is gone (a panic).
    pub fn finish(&self) -> Option<String> {
        let (reply, digest) = sync_channel(1);
        self.feed.send(Lane::Finish(reply)).ok()?;
        digest.recv().ok()
    }

    pub fn reset(&self) {
        let _ = self.feed.send(Lane::Reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashers_behind_continue_in_order() {
        let chain = std::sync::Arc::new(HashChain::new(Some(Running::default())));
        let data: Vec<u8> = (0..3_000_000u32).map(|n| (n % 251) as u8).collect();
        let worker = {
            let (chain, data) = (chain.clone(), data.clone());
            tokio::task::spawn_blocking(move || {
                let mut offset = 0;
                for part in data.chunks(1_000_000) {
                    let mut behind = chain.behind(offset as u64);
                    for piece in part.chunks(64 * 1024) {
                        behind.feed(Bytes::copy_from_slice(piece));
                    }
                    offset += part.len();
                }
                chain.take(offset as u64)
            })
        };
        let (running, _) = worker.await.unwrap();
        assert_eq!(running.map(Running::hex), Some(sha256(&data)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_of_another_length_is_not_handed_on() {
        let chain = std::sync::Arc::new(HashChain::new(Some(Running::default())));
        let chained = chain.clone();
        let (running, handover) = tokio::task::spawn_blocking(move || {
            let mut behind = chained.behind(0);
            behind.feed(Bytes::from_static(b"abc"));
            drop(behind);
            // The data was cut back to 2 bytes: the 3-byte hash must not continue.
            let mut behind = chained.behind(2);
            behind.feed(Bytes::from_static(b"d"));
            behind.feed(Bytes::from_static(b"e"));
            drop(behind);
            chained.take(4)
        })
        .await
        .unwrap();
        assert!(running.is_none());
        handover.give(None);
        let (running, _) = tokio::task::spawn_blocking(move || chain.take(0))
            .await
            .unwrap();
        assert!(running.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_hashes_one_file_after_another() {
        let digests = tokio::task::spawn_blocking(|| {
            let lane = HashLane::start();
            lane.feed(Bytes::from_static(b"ab"));
            lane.feed(Bytes::from_static(b"c"));
            let first = lane.finish();
            lane.feed(Bytes::from_static(b"left behind"));
            lane.reset();
            lane.feed(Bytes::from_static(b"xyz"));
            (first, lane.finish())
        })
        .await
        .unwrap();
        assert_eq!(digests, (Some(sha256(b"abc")), Some(sha256(b"xyz"))));
    }

    #[test]
    fn a_dropped_handover_hands_on_nothing() {
        let chain = HashChain::new(Some(Running::default()));
        let (running, handover) = chain.take(0);
        assert_eq!(running.map(|running| running.covered), Some(0));
        drop(handover);
        assert!(chain.take(0).0.is_none());
    }
}
