//! Token-bucket bandwidth shaping, per connection and per client, on top of `governor`'s GCRA.
//!
//! governor counts in cells and times them in whole nanoseconds, so one cell per byte would
//! round the replenish interval badly at high rates (100 MiB/s → 9.5 ns → 9 ns, +6 %). Cells
//! here are 1 KiB, which keeps the rounding error under 0.1 % up to 1 GiB/s. The bucket holds
//! one chunk, so after an idle pause a client gets at most one chunk of burst.

use crate::limit::clock::{TokioClock, TokioInstant};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const CELL: u64 = 1024;

type KeyedLimiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, TokioClock, NoOpMiddleware<TokioInstant>>;
/// A limiter made per response or per connection, on tokio's clock (`limit::clock`).
pub type DirectLimiter =
    RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// A limiter of `quota` on tokio's clock.
pub fn direct_limiter(quota: Quota) -> DirectLimiter {
    RateLimiter::direct_with_clock(quota, TokioClock)
}

fn quota(bytes_per_second: u64, burst_bytes: u64) -> Quota {
    let rate = cells(bytes_per_second);
    let burst = cells(burst_bytes.min(bytes_per_second).max(CELL));
    Quota::per_second(rate).allow_burst(burst)
}

fn cells(bytes: u64) -> NonZeroU32 {
    let cells = bytes.div_ceil(CELL).clamp(1, u32::MAX as u64) as u32;
    NonZeroU32::new(cells).unwrap_or(NonZeroU32::MIN)
}

/// The slowest of the rates that are on (0: off); 0 when none is.
pub fn slowest_rate(rates: impl IntoIterator<Item = u64>) -> u64 {
    rates
        .into_iter()
        .filter(|rate| *rate > 0)
        .min()
        .unwrap_or(0)
}

/// The largest piece the shaper lets through at once: one chunk, or one second of rate if less.
pub fn piece_size(chunk_size: u64, bytes_per_second: u64) -> u64 {
    if bytes_per_second == 0 {
        chunk_size
    } else {
        chunk_size.min(bytes_per_second).max(CELL)
    }
}

/// Buckets shared by all connections of a streaming app, one per client key.
pub struct ClientBuckets {
    limiter: KeyedLimiter,
    calls: AtomicU32,
}

impl ClientBuckets {
    pub fn new(bytes_per_second: u64, chunk_size: u64) -> Arc<Self> {
        Arc::new(Self {
            limiter: RateLimiter::new(
                quota(bytes_per_second, chunk_size),
                DefaultKeyedStateStore::default(),
                TokioClock,
            ),
            calls: AtomicU32::new(0),
        })
    }

    /// Drops idle clients' state now and then, so the table stays bounded by active clients.
    fn evict_idle_now_and_then(&self) {
        if self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// A connection's own bucket: every response (or request body) on the connection draws from
/// it, so over HTTP/2 the streams of one connection share its rate, as over HTTP/1.1 the
/// responses one after another do.
pub struct ConnectionBucket {
    bytes_per_second: u64,
    limiter: Arc<DirectLimiter>,
}

impl ConnectionBucket {
    pub fn new(bytes_per_second: u64, chunk_size: u64) -> Self {
        Self {
            bytes_per_second,
            limiter: Arc::new(direct_limiter(quota(bytes_per_second, chunk_size))),
        }
    }

    /// The bucket for `bytes_per_second`: this one when it has that rate (the mounts of one
    /// server may shape differently; a connection moving between them starts afresh).
    pub fn for_rate(
        slot: &mut Option<Self>,
        bytes_per_second: u64,
        chunk_size: u64,
    ) -> Arc<DirectLimiter> {
        match slot {
            Some(bucket) if bucket.bytes_per_second == bytes_per_second => {
                Arc::clone(&bucket.limiter)
            }
            _ => Arc::clone(&slot.insert(Self::new(bytes_per_second, chunk_size)).limiter),
        }
    }
}

/// The shaping of one response: its connection's bucket, and its client's shared one.
pub struct Shaper {
    connection: Option<Arc<DirectLimiter>>,
    client: Option<(Arc<ClientBuckets>, IpAddr)>,
}

impl Shaper {
    pub fn new(
        connection: Option<Arc<DirectLimiter>>,
        client: Option<(Arc<ClientBuckets>, IpAddr)>,
    ) -> Self {
        Self { connection, client }
    }

    pub fn is_active(&self) -> bool {
        self.connection.is_some() || self.client.is_some()
    }

    /// Waits until `bytes` may be sent. `bytes` must not exceed `piece_size`.
    pub async fn take(&self, bytes: u64) {
        let n = cells(bytes);
        if let Some(limiter) = &self.connection {
            while let Ok(Err(not_until)) = limiter.check_n(n) {
                tokio::time::sleep(not_until.wait_time_from(limiter.clock().now())).await;
            }
        }
        if let Some((buckets, key)) = &self.client {
            buckets.evict_idle_now_and_then();
            let clock = buckets.limiter.clock();
            while let Ok(Err(not_until)) = buckets.limiter.check_key_n(key, n) {
                tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    // On paused time: the shaper's sleeps advance the clock, so the test takes no real second
    // and measures the rate exactly.
    #[tokio::test(start_paused = true)]
    async fn paces_to_the_configured_rate() {
        let rate = 4 * 1024 * 1024;
        let chunk = 64 * 1024;
        let shaper = Shaper::new(Some(Arc::new(direct_limiter(quota(rate, chunk)))), None);
        let started = Instant::now();
        let total = rate; // one second's worth after the initial burst
        let mut sent = 0;
        while sent < total + chunk {
            shaper.take(chunk).await;
            sent += chunk;
        }
        let elapsed = started.elapsed().as_secs_f64();
        // tokio timers round up to the millisecond: up to 1 ms per wait.
        assert!((0.99..1.07).contains(&elapsed), "elapsed {elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn clients_share_their_bucket_across_connections() {
        let rate = 1024 * 1024;
        let chunk = 64 * 1024;
        let buckets = ClientBuckets::new(rate, chunk);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = Shaper::new(None, Some((Arc::clone(&buckets), ip)));
        let second = Shaper::new(None, Some((Arc::clone(&buckets), ip)));
        let other = Shaper::new(None, Some((buckets, "10.0.0.2".parse().unwrap())));
        let started = Instant::now();
        // Two connections of one client take one second's worth between them (after the
        // burst): together they get the client's rate, not twice it.
        let half = async |shaper: &Shaper| {
            for _ in 0..(rate / chunk / 2) {
                shaper.take(chunk).await;
            }
        };
        tokio::join!(half(&first), half(&second));
        let shared = started.elapsed().as_secs_f64();
        assert!((0.9..1.05).contains(&shared), "shared {shared}");
        // Another client is not slowed by them.
        let started = Instant::now();
        other.take(chunk).await;
        assert!(started.elapsed() < std::time::Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn responses_of_one_connection_share_its_bucket() {
        let rate = 1024 * 1024;
        let chunk = 64 * 1024;
        let mut slot = None;
        let first = Shaper::new(
            Some(ConnectionBucket::for_rate(&mut slot, rate, chunk)),
            None,
        );
        let second = Shaper::new(
            Some(ConnectionBucket::for_rate(&mut slot, rate, chunk)),
            None,
        );
        let started = Instant::now();
        let half = async |shaper: &Shaper| {
            for _ in 0..(rate / chunk / 2) {
                shaper.take(chunk).await;
            }
        };
        tokio::join!(half(&first), half(&second));
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.9..1.05).contains(&elapsed), "elapsed {elapsed}");
    }

    #[test]
    fn pieces_never_exceed_one_second_of_rate() {
        assert_eq!(piece_size(65536, 0), 65536);
        assert_eq!(piece_size(65536, 8192), 8192);
        assert_eq!(piece_size(65536, 10 << 20), 65536);
    }
}
