//! SHA-256 of uploads, on threads of their own beside the disk writes.
//!
//! A raw upload's or a multipart request's files are hashed by a `HashLane`: past its first
//! MiB, the disk worker hands each batch of a file to a hasher before writing it, so hashing
//! and writing run at once instead of one after the other (which bounded an upload to
//! 1 / (1/hash + 1/write)).
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
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
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

/// The running hash of one `PATCH`: in line while the hash before it was ready and the
/// `PATCH` is small, else on a hasher behind its writes. Dropping it hands the hash on.
pub struct Behind {
    stage: Stage,
}

enum Stage {
    /// Hashed here: `start` is where this `PATCH` began.
    InLine {
        running: Option<Running>,
        start: u64,
        handover: Option<Handover>,
    },
    /// On a hasher; `None` once it had no hash to continue.
    Feeding(Option<SyncSender<Bytes>>),
}

impl Behind {
    /// Hashes written bytes: in line up to `IN_LINE_UP_TO` of this `PATCH`, then on a hasher
    /// that may be `PATCH_LAG` batches behind (waiting when it is).
    pub fn feed(&mut self, bytes: Bytes) {
        if let Stage::InLine {
            running,
            start,
            handover,
        } = &mut self.stage
        {
            let Some(hash) = running else {
                // No hash covers this data: the completion reads the file again.
                return;
            };
            if hash.covered + bytes.len() as u64 - *start <= IN_LINE_UP_TO {
                hash.update(&bytes);
                return;
            }
            let (Some(running), Some(handover)) = (running.take(), handover.take()) else {
                return;
            };
            let offset = running.covered;
            let (give, ready) = sync_channel(1);
            let _ = give.send(Some(running));
            self.stage = Stage::Feeding(Some(hasher(ready, offset, handover)));
        }
        if let Stage::Feeding(Some(feed)) = &self.stage {
            if feed.send(bytes).is_err() {
                // The hasher had no hash covering this data (it handed over nothing): the
                // completion reads the file again.
                self.stage = Stage::Feeding(None);
            }
        }
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        // On a hasher, the closed feed makes it hand the hash on once it has caught up.
        if let Stage::InLine {
            running, handover, ..
        } = &mut self.stage
        {
            if let Some(handover) = handover.take() {
                handover.give(running.take());
            }
        }
    }
}

/// Starts a hasher on the blocking pool: it waits for the hash of the first `offset` bytes
/// from `previous`, continues it with what the returned feed brings, and hands it on when the
/// feed closes (nothing, and the feed closed early, if no such hash came).
fn hasher(
    previous: Receiver<Option<Running>>,
    offset: u64,
    handover: Handover,
) -> SyncSender<Bytes> {
    let (feed, bytes) = sync_channel::<Bytes>(PATCH_LAG);
    tokio::task::spawn_blocking(move || {
        let running = previous
            .recv()
            .ok()
            .flatten()
            .filter(|running| running.covered == offset);
        let Some(mut running) = running else {
            handover.give(None);
            return;
        };
        while let Ok(piece) = bytes.recv() {
            running.update(&piece);
        }
        handover.give(Some(running));
    });
    feed
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

    /// The running hash of a `PATCH` appending at `offset`: in line if the previous `PATCH`'s
    /// hasher is done, else on a hasher that waits for it. See `Behind`.
    pub fn behind(&self, offset: u64) -> Behind {
        let (previous, handover) = self.link();
        let stage = match previous.try_recv() {
            Ok(running) => Stage::InLine {
                running: running.filter(|running| running.covered == offset),
                start: offset,
                handover: Some(handover),
            },
            Err(TryRecvError::Disconnected) => Stage::InLine {
                running: None,
                start: offset,
                handover: Some(handover),
            },
            Err(TryRecvError::Empty) => Stage::Feeding(Some(hasher(previous, offset, handover))),
        };
        Behind { stage }
    }
}

/// Bytes of each file hashed in line, before it moves to a lane: a small file's hash is over
/// before a hand-over to another thread and back would pay off, and those trips can only add
/// (1,000 × 64 KiB files in one form: 0.40–0.50 s of server CPU with a lane for every byte
/// against 0.23–0.27 s in line in one A/B pair, the same in others; this machine's swings).
const IN_LINE_UP_TO: u64 = 1024 * 1024;

/// A file's hash for one file after another: in line up to `IN_LINE_UP_TO`, then on a hasher
/// of its own on the blocking pool (started once, for the first file that needs it).
#[derive(Default)]
pub struct HashLane {
    /// The open file's hash while it is hashed in line.
    in_line: Running,
    /// The open file outgrew `IN_LINE_UP_TO`: its hash is on the lane.
    on_lane: bool,
    lane: Option<SyncSender<Lane>>,
}

enum Lane {
    /// A file's hash so far: the bytes that follow continue it.
    Continue(Running),
    Bytes(Bytes),
    /// The file ended: its digest.
    Finish(SyncSender<String>),
}

impl HashLane {
    /// Hashes bytes of the open file (on the lane: blocking while it is `LANE_LAG` batches
    /// behind).
    pub fn feed(&mut self, bytes: Bytes) {
        if !self.on_lane {
            if self.in_line.covered + bytes.len() as u64 <= IN_LINE_UP_TO {
                self.in_line.update(&bytes);
                return;
            }
            self.on_lane = true;
            let running = std::mem::take(&mut self.in_line);
            self.send(Lane::Continue(running));
        }
        self.send(Lane::Bytes(bytes));
    }

    fn send(&mut self, message: Lane) {
        let lane = self.lane.get_or_insert_with(|| {
            let (feed, lane) = sync_channel(LANE_LAG);
            tokio::task::spawn_blocking(move || {
                let mut running = Running::default();
                while let Ok(message) = lane.recv() {
                    match message {
                        Lane::Continue(from) => running = from,
                        Lane::Bytes(bytes) => running.update(&bytes),
                        Lane::Finish(reply) => {
                            let _ = reply.send(std::mem::take(&mut running).hex());
                        }
                    }
                }
            });
            feed
        });
        // A lane that is gone (a panic) answers no `Finish`: the file fails.
        let _ = lane.send(message);
    }

    /// The digest of the open file (blocking until the lane has caught up with it); `None`
    /// only if the lane is gone. The next bytes start a new file.
    pub fn finish(&mut self) -> Option<String> {
        if !self.on_lane {
            return Some(std::mem::take(&mut self.in_line).hex());
        }
        self.on_lane = false;
        let (reply, digest) = sync_channel(1);
        self.send(Lane::Finish(reply));
        digest.recv().ok()
    }

    /// The open file was abandoned: the next bytes start a new one.
    pub fn reset(&mut self) {
        self.in_line = Running::default();
        self.on_lane = false;
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
        let data: Vec<u8> = (0..9_000_000u32).map(|n| (n % 251) as u8).collect();
        let worker = {
            let (chain, data) = (chain.clone(), data.clone());
            tokio::task::spawn_blocking(move || {
                let pieces = |range: std::ops::Range<usize>| -> Vec<Bytes> {
                    data[range]
                        .chunks(64 * 1024)
                        .map(Bytes::copy_from_slice)
                        .collect()
                };
                // A: in line for its first MiB, then on a hasher.
                let mut first = chain.behind(0);
                for piece in pieces(0..3_000_000) {
                    first.feed(piece);
                }
                // B starts while A's hasher may still run: B's waits for A's hash.
                let mut second = chain.behind(3_000_000);
                let rest = pieces(3_000_000..6_000_000);
                for piece in &rest[..4] {
                    second.feed(piece.clone());
                }
                drop(first);
                for piece in &rest[4..] {
                    second.feed(piece.clone());
                }
                drop(second);
                // C: small pieces, in line or behind, whichever the timing gives.
                for (at, part) in data[6_000_000..].chunks(500_000).enumerate() {
                    let mut behind = chain.behind((6_000_000 + at * 500_000) as u64);
                    behind.feed(Bytes::copy_from_slice(part));
                }
                chain.take(data.len() as u64)
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
        // Small files stay in line; big ones move to the lane part way through.
        let big: Vec<u8> = (0..3_000_000u32).map(|n| (n % 253) as u8).collect();
        let pieces = |bytes: &[u8]| -> Vec<Bytes> {
            bytes
                .chunks(256 * 1024)
                .map(Bytes::copy_from_slice)
                .collect()
        };
        let (small_pieces, big_pieces) = (pieces(b"abc"), pieces(&big));
        let digests = tokio::task::spawn_blocking(move || {
            let mut lane = HashLane::default();
            let file = |lane: &mut HashLane, pieces: &[Bytes]| {
                for piece in pieces {
                    lane.feed(piece.clone());
                }
                lane.finish()
            };
            let first = file(&mut lane, &small_pieces);
            let second = file(&mut lane, &big_pieces);
            let third = file(&mut lane, &small_pieces);
            // Abandoned part way, in line and on the lane: the next file starts afresh.
            for piece in &big_pieces[..6] {
                lane.feed(piece.clone());
            }
            lane.reset();
            lane.feed(Bytes::from_static(b"xyz"));
            let fourth = lane.finish();
            for piece in &big_pieces[..2] {
                lane.feed(piece.clone());
            }
            lane.reset();
            let fifth = file(&mut lane, &big_pieces);
            (first, second, third, fourth, fifth)
        })
        .await
        .unwrap();
        let (abc, big) = (Some(sha256(b"abc")), Some(sha256(&big)));
        assert_eq!(
            digests,
            (abc.clone(), big.clone(), abc, Some(sha256(b"xyz")), big)
        );
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
