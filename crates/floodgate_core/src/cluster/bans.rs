//! Offender bans across instances: a ban decided on one instance (or lifted by `unban`) is
//! written to Redis — `<prefix>:ban:<client>` with the ban's duration as its expiry — and
//! published on `<prefix>:bans`, which every instance subscribes to and applies to its own
//! table. An instance that starts, or whose pub/sub connection comes back, reads the bans in
//! force from the keys (after subscribing, so none is missed in between). Strikes stay
//! per instance: only the verdict is shared, one small message per ban.
//!
//! Messages are `<origin> <milliseconds> <client>` (0 ms: lifted); an instance skips its own.

use crate::cluster::Cluster;
use crate::limit::ban::{self, BanChange, Bans};
use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Changes sent per pipeline.
const BATCH: usize = 256;
/// Keys read per `SCAN` step when loading the bans in force.
const SCAN_COUNT: usize = 1000;
/// Wait before a broken pub/sub connection is made again.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Shares `bans` with the other instances of `cluster`.
pub(crate) fn attach(cluster: &Arc<Cluster>, bans: &Arc<Bans>) {
    let (changes, queued) = mpsc::unbounded_channel();
    bans.share_with(changes);
    cluster.finish_with(tokio::spawn(send(Arc::clone(cluster), queued)));
    tokio::spawn(listen(
        Arc::downgrade(cluster),
        Arc::downgrade(bans),
        cluster.stopped.clone(),
    ));
}

/// Writes and publishes the bans decided here, in pipelines. A ban that cannot reach Redis
/// stays local (it is in this instance's table already).
async fn send(cluster: Arc<Cluster>, mut queued: mpsc::UnboundedReceiver<BanChange>) {
    let channel = cluster.key("bans");
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            _ = cluster.stopped.cancelled() => return,
            received = queued.recv_many(&mut batch, BATCH) => received,
        };
        if received == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for change in batch.drain(..) {
            let (client, ms) = match change {
                BanChange::Imposed { client, duration } => {
                    let ms = duration.as_millis().max(1) as u64;
                    pipe.cmd("SET")
                        .arg(cluster.key(&format!("ban:{client}")))
                        .arg(1)
                        .arg("PX")
                        .arg(ms)
                        .ignore();
                    (client, ms)
                }
                BanChange::Lifted { client } => {
                    pipe.cmd("DEL")
                        .arg(cluster.key(&format!("ban:{client}")))
                        .ignore();
                    (client, 0)
                }
            };
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(format!("{} {ms} {client}", cluster.instance))
                .ignore();
        }
        let _ = cluster
            .call(|mut redis| async move { pipe.query_async::<()>(&mut redis).await })
            .await;
    }
}

/// Keeps one pub/sub connection on the bans channel, made again when it breaks.
async fn listen(cluster: Weak<Cluster>, bans: Weak<Bans>, stopped: CancellationToken) {
    loop {
        let (Some(cluster), Some(bans)) = (cluster.upgrade(), bans.upgrade()) else {
            return;
        };
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = session(&cluster, &bans) => {}
        }
        drop((cluster, bans));
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

/// One pub/sub connection's life: subscribe, load the bans in force, then apply what other
/// instances publish until the connection breaks.
async fn session(cluster: &Cluster, bans: &Bans) {
    let timeout = cluster.config().timeout;
    let Ok(client) = redis::Client::open(cluster.config().redis.as_str()) else {
        return;
    };
    let Ok(Ok(pubsub)) = tokio::time::timeout(timeout, client.get_async_pubsub()).await else {
        return;
    };
    let (mut sink, mut stream) = pubsub.split();
    if !matches!(
        tokio::time::timeout(timeout, sink.subscribe(cluster.key("bans"))).await,
        Ok(Ok(()))
    ) {
        return;
    }
    if load(cluster, bans).await.is_err() {
        return;
    }
    while let Some(message) = stream.next().await {
        let Ok(text) = std::str::from_utf8(message.get_payload_bytes()) else {
            continue;
        };
        let mut fields = text.splitn(3, ' ');
        let (Some(origin), Some(ms), Some(client)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if origin == cluster.instance {
            continue;
        }
        let (Ok(ms), Some(key)) = (ms.parse::<u64>(), ban::parse_client(client)) else {
            continue;
        };
        match ms {
            0 => bans.lift(&key),
            ms => bans.impose(key, Duration::from_millis(ms)),
        }
    }
}

/// Reads every ban in force (`SCAN` over the ban keys, their remaining time by `PTTL`).
async fn load(cluster: &Cluster, bans: &Bans) -> Result<(), ()> {
    let prefix = cluster.key("ban:");
    let pattern = format!("{prefix}*");
    let mut cursor = 0u64;
    loop {
        let pattern = pattern.clone();
        let (next, keys): (u64, Vec<String>) = cluster
            .call(|mut redis| async move {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut redis)
                    .await
            })
            .await
            .map_err(drop)?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("PTTL").arg(key);
            }
            let remaining: Vec<i64> = cluster
                .call(|mut redis| async move { pipe.query_async(&mut redis).await })
                .await
                .map_err(drop)?;
            for (key, ms) in keys.iter().zip(remaining) {
                let client = key.strip_prefix(&prefix).and_then(ban::parse_client);
                if let (Some(client), true) = (client, ms > 0) {
                    bans.impose(client, Duration::from_millis(ms as u64));
                }
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
