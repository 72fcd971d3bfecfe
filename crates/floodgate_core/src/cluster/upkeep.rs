//! The cluster's one background task: releases leases in the order they were dropped,
//! renews the live ones every third of the lease TTL, and while degraded probes Redis every
//! half second; the first answer re-registers every live lease and clears the flag.
//!
//! Releases and renewals share this task so a renewal can never re-add a lease released
//! before it (the registry forgets a lease before its release is queued). Releases Redis
//! could not take are kept (up to `DEFERRED`) and sent once it answers again: a call that timed
//! out may still be carried out when Redis resumes, so its member must go after it.

use crate::cluster::lease::Op;
use crate::cluster::Cluster;
use futures_util::FutureExt;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How often a degraded cluster asks Redis whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Releases kept while Redis fails; past it they are left to expire with their TTL.
const DEFERRED: usize = 100_000;
/// Releases sent in one pipeline: whatever queued while the last one was sent, up to this.
const RELEASE_BATCH: usize = 512;

pub(super) async fn run(
    cluster: Weak<Cluster>,
    mut ops: UnboundedReceiver<Op>,
    stopped: CancellationToken,
) {
    let Some(renew_every) = cluster.upgrade().map(|c| c.config().lease_ttl / 3) else {
        return;
    };
    let mut tick = tokio::time::interval(PROBE_EVERY.min(renew_every));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_renewal = Instant::now() + renew_every;
    let mut deferred: Vec<Op> = Vec::new();
    let mut batch: Vec<Op> = Vec::with_capacity(RELEASE_BATCH);
    loop {
        tokio::select! {
            _ = stopped.cancelled() => {
                let Some(cluster) = cluster.upgrade() else { return };
                while ops.recv_many(&mut batch, RELEASE_BATCH).now_or_never().is_some_and(|n| n > 0) {
                    let _ = cluster.apply(std::mem::take(&mut batch)).await;
                }
                return;
            }
            count = ops.recv_many(&mut batch, RELEASE_BATCH) => {
                let (true, Some(cluster)) = (count > 0, cluster.upgrade()) else { return };
                if let Err(failed) = cluster.apply(std::mem::take(&mut batch)).await {
                    let room = DEFERRED.saturating_sub(deferred.len());
                    deferred.extend(failed.into_iter().take(room));
                }
            }
            _ = tick.tick() => {
                let Some(cluster) = cluster.upgrade() else { return };
                let now = Instant::now();
                if cluster.health().is_degraded() {
                    if cluster.probe().await {
                        next_renewal = now + renew_every;
                        let mut waiting = std::mem::take(&mut deferred);
                        while !waiting.is_empty() {
                            let rest = waiting.split_off(waiting.len().min(RELEASE_BATCH));
                            let _ = cluster.apply(waiting).await;
                            waiting = rest;
                        }
                    }
                } else if now >= next_renewal {
                    let _ = cluster.renew().await;
                    next_renewal = now + renew_every;
                }
            }
        }
    }
}

impl Cluster {
    /// One probe of a degraded cluster: `PING`, then every live lease re-registered; only
    /// when both succeed is the cluster healthy again.
    async fn probe(&self) -> bool {
        let pong = self
            .call_anyway(|mut redis| async move {
                redis::cmd("PING").query_async::<String>(&mut redis).await
            })
            .await;
        if pong.is_err() || self.renew().await.is_err() {
            return false;
        }
        self.health().recovered();
        true
    }
}
