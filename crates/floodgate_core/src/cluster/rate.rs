//! `rateLimitRequests` across the cluster: GCRA in one Lua call on Redis's clock. One key per
//! client holds its theoretical arrival time (µs) and expires once the client is idle. When
//! Redis fails, the policy decides: `local` checks a local limiter with this instance's share.

use crate::cluster::Cluster;
use crate::config::FailurePolicy;
use crate::limit::key::ClientKey;
use crate::limit::rate::{Decision, RequestLimiter};
use redis::Script;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// KEYS: the client's key; ARGV: emission interval (µs), burst. Returns {allowed, remaining,
/// µs until full again (allowed) or until the next request may pass (refused)}.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then tat = math.max(tonumber(stored), now) end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), new_tat - now}
",
    )
});

/// The outcome of one check.
pub(crate) enum RateOutcome {
    Decided(Decision),
    /// Redis failed and the policy is `closed`.
    Unavailable,
}

pub(crate) struct ClusterRate {
    cluster: Arc<Cluster>,
    /// `rate:<mount>:`, the start of every client's key.
    scope: String,
    interval_us: u64,
    burst: u32,
    /// This instance's share, for the `local` policy.
    local: Option<RequestLimiter>,
}

impl ClusterRate {
    /// `limit` requests per `window` (bursts of `burst`, 0: `limit`) per client of `mount`.
    pub(crate) fn new(
        cluster: &Arc<Cluster>,
        mount: &str,
        limit: u32,
        window: Duration,
        burst: u32,
    ) -> Option<Self> {
        if limit == 0 {
            return None;
        }
        let config = cluster.config();
        let burst = if burst == 0 { limit } else { burst };
        Some(Self {
            cluster: Arc::clone(cluster),
            scope: format!("rate:{mount}:"),
            interval_us: (window.as_micros() as u64 / limit as u64).max(1),
            burst,
            local: RequestLimiter::new(config.share(limit), window, config.share(burst)),
        })
    }

    pub(crate) async fn check(&self, client: &ClientKey) -> RateOutcome {
        let key = self.cluster.key(&format!("{}{client}", self.scope));
        let (interval, burst) = (self.interval_us, self.burst);
        let answer = self
            .cluster
            .call(|mut redis| async move {
                GCRA.key(&key)
                    .arg(interval)
                    .arg(burst)
                    .invoke_async::<(u32, u32, u64)>(&mut redis)
                    .await
            })
            .await;
        match answer {
            Ok((allowed, remaining, micros)) => {
                let seconds = Duration::from_micros(micros).as_secs_f64().ceil() as u64;
                RateOutcome::Decided(Decision {
                    allowed: allowed == 1,
                    remaining,
                    reset_seconds: if allowed == 1 {
                        seconds
                    } else {
                        seconds.max(1)
                    },
                })
            }
            Err(failure) => {
                self.cluster.health().fell_back(failure);
                match self.cluster.policy() {
                    FailurePolicy::Local => match &self.local {
                        Some(local) => RateOutcome::Decided(local.check(client)),
                        None => RateOutcome::Decided(open()),
                    },
                    FailurePolicy::Open => RateOutcome::Decided(open()),
                    FailurePolicy::Closed => RateOutcome::Unavailable,
                }
            }
        }
    }
}

/// A request let through uncounted (`open` policy).
fn open() -> Decision {
    Decision {
        allowed: true,
        remaining: 0,
        reset_seconds: 0,
    }
}
