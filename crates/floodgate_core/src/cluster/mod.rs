//! Many instances, one set of limits: the Redis side of floodgate (`new Server({ cluster })`).
//!
//! `Cluster` owns one Redis connection (redis-rs's `ConnectionManager`, multiplexed, which
//! reconnects by itself) and runs every call under `cluster.timeout`: Redis down or slow is a
//! [`Failure`], never a request that waits. The first failure marks the cluster degraded; from
//! then on limits skip Redis and follow the failure policy (`local`, `open`, `closed`) until the
//! upkeep task's probe gets an answer, re-registers the live leases and clears the flag.
//!
//! `lease`: connection caps as leases in sorted sets; `rate`: GCRA request rates; `bus`: the
//! topic bus across instances and its history, `wire` the form of an event between them;
//! `bans`: offender bans shared by every instance;
//! `health`: the degraded flag and the counters `stats().cluster` reports; `upkeep`: the one
//! task that renews and releases leases and probes Redis while degraded.

mod acquire;
pub(crate) mod bans;
pub(crate) mod bus;
pub(crate) mod health;
pub(crate) mod lease;
pub(crate) mod rate;
mod upkeep;
pub(crate) mod wire;

use crate::config::{ClusterConfig, FailurePolicy};
use health::{ClusterSnapshot, Failure, Health};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) struct Cluster {
    config: ClusterConfig,
    redis: ConnectionManager,
    /// Names this instance's leases (`<instance>:<n>`), unique per process start.
    instance: String,
    health: Health,
    leases: lease::Registry,
    /// Lease acquires waiting for the next batched call (`acquire`).
    acquires: mpsc::UnboundedSender<acquire::Request>,
    /// The bus's patterns Redis confirmed (`bus::Confirmed`).
    confirmed: bus::Confirmed,
    /// Ends the upkeep task once the server has closed (after its connections released).
    stopped: CancellationToken,
    /// The tasks `stop` waits for: the upkeep task (queued releases) and the bus's relay
    /// (queued events).
    finishing: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// Connects lazily (the first call connects) and starts the upkeep task; must be called
    /// within a tokio runtime.
    pub(crate) fn start(config: ClusterConfig) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(config.redis.as_str())
            .map_err(|err| format!("cluster.redis: {err}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(config.timeout);
        let redis = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|err| format!("cluster.redis: {err}"))?;
        let (ops, receiver) = mpsc::unbounded_channel();
        let (acquires, acquire_requests) = mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            instance: instance_id(),
            leases: lease::Registry::new(ops),
            acquires,
            health: Health::default(),
            confirmed: bus::Confirmed::default(),
            stopped: CancellationToken::new(),
            finishing: std::sync::Mutex::new(Vec::new()),
            redis,
            config,
        });
        let upkeep = tokio::spawn(upkeep::run(
            Arc::downgrade(&cluster),
            receiver,
            cluster.stopped.clone(),
        ));
        cluster.finish_with(upkeep);
        tokio::spawn(acquire::run(
            Arc::downgrade(&cluster),
            acquire_requests,
            cluster.stopped.clone(),
        ));
        Ok(cluster)
    }

    /// `<prefix>:<rest>`: every key and channel of this cluster.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
    }

    pub(crate) fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub(crate) fn policy(&self) -> FailurePolicy {
        self.config.on_failure
    }

    pub(crate) fn health(&self) -> &Health {
        &self.health
    }

    /// Runs one Redis call under `cluster.timeout`. While degraded it is not made at all. A
    /// failure marks the cluster degraded; the caller counts its fallback.
    pub(crate) async fn call<T, F>(
        &self,
        call: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, Failure>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if self.health.is_degraded() {
            return Err(Failure::Degraded);
        }
        self.call_anyway(call).await
    }

    /// As [`Cluster::call`], degraded or not (the upkeep task's probe and re-registration).
    async fn call_anyway<T, F>(
        &self,
        call: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, Failure>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.config.timeout, call(self.redis.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => {
                self.health.failed();
                Err(Failure::Error)
            }
            Err(_) => {
                self.health.failed();
                Err(Failure::Timeout)
            }
        }
    }

    pub(crate) fn snapshot(&self) -> ClusterSnapshot {
        self.health.snapshot(self.leases.live() as u64)
    }

    /// A task `stop` lets finish.
    fn finish_with(&self, task: tokio::task::JoinHandle<()>) {
        self.finishing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// The server has closed: the releases and events still queued are sent (for at most a few
    /// timeouts), then every task of the cluster ends.
    pub(crate) async fn stop(&self) {
        self.stopped.cancel();
        let tasks = std::mem::take(&mut *self.finishing.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::time::timeout(self.config.timeout * 4, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
    }
}

/// A name for this process's leases: its pid and start time, in hex.
fn instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}.{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}
