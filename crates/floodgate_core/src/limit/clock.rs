//! governor's clock on tokio's time, so limiters follow the runtime's clock: the real one in
//! production (tokio's `Instant::now` is the monotonic clock, cheap to read and to create,
//! unlike quanta's, whose creation runs CPUID and exits to the hypervisor on virtual
//! machines), and the paused, auto-advancing one in `#[tokio::test(start_paused = true)]`,
//! where rate and bandwidth limits are tested without real sleeps.

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use std::ops::Add;
use std::time::Duration;

/// A point on tokio's clock, as governor counts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TokioInstant(tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        Self(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

/// The clock every limiter of floodgate reads.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;

    #[tokio::test(start_paused = true)]
    async fn limiters_follow_paused_time() {
        let limiter = RateLimiter::direct_with_clock(
            Quota::per_second(NonZeroU32::new(2).unwrap()),
            TokioClock,
        );
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
    }
}
