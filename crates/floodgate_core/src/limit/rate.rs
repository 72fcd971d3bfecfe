//! Requests per period per client (GCRA via governor), with the IETF `RateLimit` headers.
//!
//! Keys are the user id when the app's `identify` gives one, else the client address. The key
//! table is a governor keyed store; keys whose bucket is full again (idle) are evicted now and
//! then, and at once when the table passes its size bound, so memory follows active clients.

use crate::limit::clock::{TokioClock, TokioInstant};
use crate::limit::key::ClientKey;
use governor::clock::Clock;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Keys held before idle ones are evicted eagerly.
const MAX_KEYS: usize = 100_000;

type Limiter = RateLimiter<
    ClientKey,
    DefaultKeyedStateStore<ClientKey>,
    TokioClock,
    StateInformationMiddleware,
>;

pub struct RequestLimiter {
    limiter: Limiter,
    checks: AtomicU32,
}

/// The outcome of one check, with what the response headers report.
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the current window.
    pub remaining: u32,
    /// Seconds until the bucket is full again (allowed) or until the next request may pass.
    pub reset_seconds: u64,
}

impl RequestLimiter {
    /// `limit` requests per `window`, with bursts of up to `burst` requests.
    pub fn new(limit: u32, window: Duration, burst: u32) -> Option<Self> {
        let limit_nz = NonZeroU32::new(limit)?;
        let period = window / limit_nz.get();
        let quota =
            Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst).unwrap_or(limit_nz));
        Some(Self {
            limiter: RateLimiter::<_, _, _, NoOpMiddleware<TokioInstant>>::new(
                quota,
                DefaultKeyedStateStore::default(),
                TokioClock,
            )
            .with_middleware::<StateInformationMiddleware>(),
            checks: AtomicU32::new(0),
        })
    }

    pub fn check(&self, key: &ClientKey) -> Decision {
        self.evict_idle_now_and_then();
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let quota = snapshot.quota();
                let used = quota.burst_size().get().saturating_sub(remaining);
                let reset = quota.replenish_interval() * used;
                Decision {
                    allowed: true,
                    remaining,
                    reset_seconds: reset.as_secs_f64().ceil() as u64,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            }
        }
    }

    /// `RateLimit` value: `"default";r=42;t=3`.
    pub fn state_header(decision: &Decision) -> String {
        format!(
            "\"default\";r={};t={}",
            decision.remaining, decision.reset_seconds
        )
    }

    fn evict_idle_now_and_then(&self) {
        let calls = self.checks.fetch_add(1, Ordering::Relaxed);
        if calls.is_multiple_of(4096) || self.limiter.len() > MAX_KEYS {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// `RateLimit-Policy` value of `limit` requests per `window`: `"default";q=100;w=60`.
pub fn policy_header(limit: u32, window: Duration) -> String {
    format!("\"default\";q={limit};w={}", window.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> ClientKey {
        ClientKey::User(name.into())
    }

    #[test]
    fn allows_the_burst_then_refuses() {
        let limiter = RequestLimiter::new(5, Duration::from_secs(60), 5).unwrap();
        for expected_remaining in (0..5).rev() {
            let decision = limiter.check(&user("a"));
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
        }
        let refused = limiter.check(&user("a"));
        assert!(!refused.allowed);
        assert!(
            (1..=12).contains(&refused.reset_seconds),
            "{}",
            refused.reset_seconds
        );
        assert!(
            limiter.check(&user("b")).allowed,
            "other keys have their own bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refills_one_request_per_period() {
        // 60 per minute: one more request every second once the burst is spent.
        let limiter = RequestLimiter::new(60, Duration::from_secs(60), 2).unwrap();
        let key = user("a");
        assert!(limiter.check(&key).allowed);
        assert!(limiter.check(&key).allowed);
        let refused = limiter.check(&key);
        assert!(!refused.allowed);
        assert_eq!(refused.reset_seconds, 1);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!limiter.check(&key).allowed);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(limiter.check(&key).allowed);
    }

    #[test]
    fn zero_disables() {
        assert!(RequestLimiter::new(0, Duration::from_secs(60), 0).is_none());
    }
}
