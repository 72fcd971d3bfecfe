//! Cluster-wide connection caps as leases: one sorted set per capped key (a route and a
//! user, or a route and an address), one member per connection, scored by its expiry on
//! Redis's clock (`TIME`, so the instances' clocks never matter).
//!
//! Acquiring is one Lua call for every key of a connection (and for every connection whose
//! acquire queued meanwhile, `acquire`): expired members are dropped, and only when each key is
//! under its cap is the member added to all of them. The upkeep task
//! renews the live leases every third of the TTL (re-adding any Redis lost, so a restarted
//! Redis learns them again) and removes released ones; a dead instance's leases expire.

use crate::cluster::acquire;
use crate::cluster::health::Failure;
use crate::cluster::Cluster;
use crate::config::FailurePolicy;
use redis::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use tokio::sync::{mpsc, oneshot};

/// KEYS: keys; ARGV: TTL (ms), then the member of each key. Sets each member's expiry to
/// now + TTL, adding it if Redis lost it.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
",
    )
});

/// Leases renewed per Lua call.
const RENEW_BATCH: usize = 512;

/// What the upkeep task is asked to do.
pub(crate) enum Op {
    /// Remove `member` from `keys` (a lease released, or an attempt refused after a timeout).
    Release { member: String, keys: Box<[String]> },
}

/// The live leases of this instance: renewed by the upkeep task, released when dropped.
pub(crate) struct Registry {
    live: Mutex<HashMap<u64, Box<[String]>>>,
    next: AtomicU64,
    ops: mpsc::UnboundedSender<Op>,
}

impl Registry {
    pub(crate) fn new(ops: mpsc::UnboundedSender<Op>) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            ops,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<[String]>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn live(&self) -> usize {
        self.table().len()
    }

    /// Every live lease as (key, member) pairs, in batches for [`renew`].
    fn pairs(&self, instance: &str) -> Vec<(String, String)> {
        self.table()
            .iter()
            .flat_map(|(id, keys)| {
                let member = member(instance, *id);
                keys.iter().map(move |key| (key.clone(), member.clone()))
            })
            .collect()
    }

    pub(super) fn release(&self, member: String, keys: Box<[String]>) {
        // The upkeep task is gone only once the server closed; the lease then expires.
        let _ = self.ops.send(Op::Release { member, keys });
    }
}

fn member(instance: &str, id: u64) -> String {
    format!("{instance}:{id}")
}

/// A connection's place under its cluster-wide caps; dropping it gives the place back.
pub(crate) struct Lease {
    cluster: Arc<Cluster>,
    id: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let registry = &self.cluster.leases;
        if let Some(keys) = registry.table().remove(&self.id) {
            registry.release(member(&self.cluster.instance, self.id), keys);
        }
    }
}

/// An attempt Redis did not decide: admitted under the failure policy ([`Pending::admit`]),
/// its lease is renewed like any other (so Redis learns it once it answers); dropped, its
/// member is removed in case the timed-out call was carried out after all.
struct Pending {
    cluster: Arc<Cluster>,
    id: u64,
    keys: Option<Box<[String]>>,
}

impl Pending {
    fn admit(mut self) -> Lease {
        if let Some(keys) = self.keys.take() {
            self.cluster.leases.table().insert(self.id, keys);
        }
        Lease {
            cluster: Arc::clone(&self.cluster),
            id: self.id,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(keys) = self.keys.take() {
            self.cluster
                .leases
                .release(member(&self.cluster.instance, self.id), keys);
        }
    }
}

/// A connection the cluster admitted: its lease, and whether this instance's share caps its
/// local slots (the `local` policy while Redis fails); else local slots only count.
pub(crate) struct Admission {
    pub(crate) lease: Lease,
    pub(crate) local_cap: bool,
}

/// Why the cluster refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The key at this index (of those asked) is at its cap: 429.
    AtCap(usize),
    /// Redis failed and the policy is `closed`: 503.
    Unavailable,
}

/// The cluster's answer for a connection under `caps` ((key, cap) pairs; a cap of 0 is no
/// cap and costs Redis nothing); `Ok(None)` when no cap applies, local caps then alone.
pub(crate) async fn admit(
    cluster: &Arc<Cluster>,
    caps: &[(String, u32)],
) -> Result<Option<Admission>, Refusal> {
    let asked: Vec<usize> = (0..caps.len()).filter(|i| caps[*i].1 > 0).collect();
    if asked.is_empty() {
        return Ok(None);
    }
    let keys: Box<[String]> = asked.iter().map(|i| cluster.key(&caps[*i].0)).collect();
    let id = cluster.leases.next.fetch_add(1, Ordering::Relaxed);
    // Made before the call: if this future is dropped while Redis decides (the client left),
    // the member is removed in case it was added.
    let mut pending = Pending {
        cluster: Arc::clone(cluster),
        id,
        keys: Some(keys.clone()),
    };
    let outcome = if cluster.health().is_degraded() {
        Err(Failure::Degraded)
    } else {
        let (reply, answer) = oneshot::channel();
        let request = acquire::Request {
            keys,
            member: member(&cluster.instance, id),
            caps: asked.iter().map(|i| caps[*i].1).collect(),
            reply,
        };
        let _ = cluster.acquires.send(request);
        // Bounded even behind a slow batch: one timeout, as a call of its own would be.
        match tokio::time::timeout(cluster.config.timeout, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Failure::Error),
            Err(_) => {
                cluster.health().failed();
                Err(Failure::Timeout)
            }
        }
    };
    let failure = match outcome {
        Ok(0) => {
            return Ok(Some(Admission {
                lease: pending.admit(),
                local_cap: false,
            }))
        }
        Ok(index) => {
            // Refused by the script: nothing was added, nothing to remove.
            pending.keys = None;
            return Err(Refusal::AtCap(asked[index.clamp(1, asked.len()) - 1]));
        }
        Err(failure) => failure,
    };
    cluster.health.fell_back(failure);
    match cluster.policy() {
        FailurePolicy::Local => Ok(Some(Admission {
            lease: pending.admit(),
            local_cap: true,
        })),
        FailurePolicy::Open => Ok(Some(Admission {
            lease: pending.admit(),
            local_cap: false,
        })),
        FailurePolicy::Closed => Err(Refusal::Unavailable),
    }
}

impl Cluster {
    /// Renews (or re-adds) every live lease; `Err` at the first failed batch.
    pub(crate) async fn renew(&self) -> Result<(), Failure> {
        let pairs = self.leases.pairs(&self.instance);
        let ttl = self.config.lease_ttl.as_millis() as u64;
        for batch in pairs.chunks(RENEW_BATCH) {
            self.call_anyway(|mut redis| {
                let mut invocation = RENEW.prepare_invoke();
                for (key, _) in batch {
                    invocation.key(key);
                }
                invocation.arg(ttl);
                for (_, member) in batch {
                    invocation.arg(member);
                }
                async move { invocation.invoke_async::<usize>(&mut redis).await }
            })
            .await?;
        }
        Ok(())
    }

    /// Carries out queued [`Op`]s in one pipeline; not while degraded. Failed ones are handed
    /// back, to be sent once Redis answers again.
    pub(crate) async fn apply(&self, ops: Vec<Op>) -> Result<(), Vec<Op>> {
        let mut pipe = redis::pipe();
        for Op::Release { member, keys } in &ops {
            for key in keys.iter() {
                pipe.zrem(key, member).ignore();
            }
        }
        let done = self
            .call(|mut redis| async move { pipe.query_async::<()>(&mut redis).await })
            .await;
        done.map_err(|_| ops)
    }
}
