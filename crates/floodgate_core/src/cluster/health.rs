//! Whether Redis is answering, and what was decided without it: the `degraded` flag the
//! cluster's calls check first, the fallbacks counted by reason, recoveries and lost events.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Why a Redis call did not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Redis did not answer within `cluster.timeout`.
    Timeout,
    /// Redis answered with an error, or could not be reached.
    Error,
    /// Not asked: Redis failed earlier and has not answered a probe since.
    Degraded,
}

impl Failure {
    const ALL: [Failure; 3] = [Failure::Timeout, Failure::Error, Failure::Degraded];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Error => "error",
            Failure::Degraded => "degraded",
        }
    }
}

#[derive(Default)]
pub(crate) struct Health {
    degraded: AtomicBool,
    fallbacks: [AtomicU64; Failure::ALL.len()],
    recoveries: AtomicU64,
    events_lost: AtomicU64,
    patterns: AtomicU64,
}

/// What `stats().cluster` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSnapshot {
    /// Redis failed and has not answered since: limits follow the failure policy.
    pub degraded: bool,
    /// Connections of this instance holding a lease (renewed by its heartbeat).
    pub leases: u64,
    /// Limit decisions made by the failure policy instead of Redis, by reason.
    pub fallbacks: BTreeMap<&'static str, u64>,
    /// Times Redis answered again after a failure (leases and subscriptions re-registered).
    pub recoveries: u64,
    /// Events published here that other instances may not have received (Redis failing).
    pub events_lost: u64,
    /// Topic patterns this instance is subscribed to in Redis (confirmed), one per distinct
    /// pattern of its subscribers; 0 while its pub/sub connection is down.
    pub patterns: u64,
}

impl Health {
    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }

    pub(crate) fn failed(&self) {
        self.degraded.store(true, Relaxed);
    }

    /// Redis answers again; `true` when it had failed.
    pub(crate) fn recovered(&self) -> bool {
        let was = self.degraded.swap(false, Relaxed);
        if was {
            self.recoveries.fetch_add(1, Relaxed);
        }
        was
    }

    pub(crate) fn fell_back(&self, reason: Failure) {
        self.fallbacks[reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn set_patterns(&self, count: usize) {
        self.patterns.store(count as u64, Relaxed);
    }

    pub(crate) fn events_lost(&self, count: u64) {
        self.events_lost.fetch_add(count, Relaxed);
    }

    pub(crate) fn snapshot(&self, leases: u64) -> ClusterSnapshot {
        ClusterSnapshot {
            degraded: self.is_degraded(),
            leases,
            fallbacks: Failure::ALL
                .iter()
                .map(|reason| {
                    (
                        reason.as_str(),
                        self.fallbacks[*reason as usize].load(Relaxed),
                    )
                })
                .collect(),
            recoveries: self.recoveries.load(Relaxed),
            events_lost: self.events_lost.load(Relaxed),
            patterns: self.patterns.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fallbacks_and_recoveries() {
        let health = Health::default();
        assert!(!health.recovered());
        health.failed();
        health.fell_back(Failure::Timeout);
        health.fell_back(Failure::Degraded);
        health.fell_back(Failure::Degraded);
        let snapshot = health.snapshot(3);
        assert!(snapshot.degraded);
        assert_eq!(snapshot.fallbacks["timeout"], 1);
        assert_eq!(snapshot.fallbacks["degraded"], 2);
        assert_eq!(snapshot.fallbacks["error"], 0);
        assert!(health.recovered());
        assert_eq!(health.snapshot(0).recoveries, 1);
    }
}
