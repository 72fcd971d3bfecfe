//! The topic bus across instances. A publish here is delivered here at once, then relayed:
//! one message (`wire`) on the Redis channel `<prefix>:bus:<topic>` and appended to the
//! topic's capped history stream `<prefix>:hist:<topic>` (`Last-Event-ID` resume on any
//! instance), in pipelined batches from one task, so events of one instance stay in order.
//!
//! Each instance `PSUBSCRIBE`s once per pattern its subscribers use (not per subscriber), on a
//! connection of its own: NATS `*` and `>` become the glob `*`, which matches more (dots
//! included), and the local bus then matches the topic exactly. A message reaching several of
//! an instance's patterns arrives once per pattern; it is delivered once (the origin's sequence
//! numbers only grow). An instance ignores its own messages. While Redis fails, publishes are
//! counted as lost for the other instances; a new pub/sub connection subscribes every current
//! pattern again.

use crate::cluster::health::Health;
use crate::cluster::wire::{self, Relayed};
use crate::cluster::Cluster;
use crate::events::bus::{Bus, Relay, SharedEvent};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting to be relayed; past it a publish is counted lost rather than held.
const OUTGOING: usize = 65_536;
/// Events relayed per pipeline.
const BATCH: usize = 256;
/// Pause before a broken pub/sub connection is made again.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// Patterns per `PSUBSCRIBE` when a new pub/sub connection subscribes them all.
const PSUBSCRIBE_BATCH: usize = 1000;

/// The patterns Redis confirmed on this instance's pub/sub connection: an event stream waits
/// for its own before it takes its snapshot, so an event published on another instance after
/// that reaches it (as a local one does from its subscription on).
#[derive(Default)]
pub(crate) struct Confirmed {
    patterns: std::sync::Mutex<HashSet<String>>,
    changed: tokio::sync::Notify,
}

impl Confirmed {
    fn table(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.patterns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reset(&self, patterns: impl Iterator<Item = String>, health: &Health) {
        let mut table = self.table();
        table.clear();
        table.extend(patterns);
        health.set_patterns(table.len());
        drop(table);
        self.changed.notify_waiters();
    }

    fn add(&self, pattern: String, health: &Health) {
        let mut table = self.table();
        table.insert(pattern);
        health.set_patterns(table.len());
        drop(table);
        self.changed.notify_waiters();
    }

    fn remove(&self, pattern: &str, health: &Health) {
        let mut table = self.table();
        table.remove(pattern);
        health.set_patterns(table.len());
    }

    fn has_all(&self, patterns: &[String]) -> bool {
        let table = self.table();
        patterns.iter().all(|pattern| table.contains(pattern))
    }
}

impl Cluster {
    /// Waits until Redis confirmed every one of `patterns` for this instance, for at most
    /// `cluster.timeout` (not at all while degraded: the stream then hears this instance only).
    pub(crate) async fn until_subscribed(&self, patterns: &[String]) {
        if self.health().is_degraded() {
            return;
        }
        let _ = tokio::time::timeout(self.config().timeout, async {
            loop {
                let notified = self.confirmed.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.confirmed.has_all(patterns) {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

enum Change {
    Add(String),
    Remove(String),
}

/// The bus's [`Relay`]: queues what the relay and subscriber tasks send.
struct ClusterRelay {
    cluster: Arc<Cluster>,
    outgoing: mpsc::Sender<(String, bytes::Bytes)>,
    changes: mpsc::UnboundedSender<Change>,
}

impl Relay for ClusterRelay {
    fn published(&self, topic: &str, event: &SharedEvent) {
        let message = wire::encode(&self.cluster.instance, topic, event);
        if self
            .outgoing
            .try_send((topic.to_string(), message))
            .is_err()
        {
            self.cluster.health().events_lost(1);
        }
    }

    fn pattern_added(&self, pattern: &str) {
        let _ = self.changes.send(Change::Add(pattern.to_string()));
    }

    fn pattern_removed(&self, pattern: &str) {
        let _ = self.changes.send(Change::Remove(pattern.to_string()));
    }
}

/// Joins `bus` to the cluster: starts the relay and the subscriber tasks.
pub(crate) fn attach(cluster: &Arc<Cluster>, bus: &Arc<Bus>) {
    let (outgoing, queued) = mpsc::channel(OUTGOING);
    let (changes, changed) = mpsc::unbounded_channel();
    let relay = ClusterRelay {
        cluster: Arc::clone(cluster),
        outgoing,
        changes,
    };
    bus.set_relay(Arc::new(relay), &cluster.instance);
    cluster.finish_with(tokio::spawn(relay_out(Arc::clone(cluster), queued)));
    tokio::spawn(subscribe(
        Arc::downgrade(cluster),
        Arc::downgrade(bus),
        changed,
        cluster.stopped.clone(),
    ));
}

/// Sends queued events in pipelines: `PUBLISH`, `XADD` (capped) and the topic's name in the
/// set of topics with history.
async fn relay_out(cluster: Arc<Cluster>, mut queued: mpsc::Receiver<(String, bytes::Bytes)>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last = false;
    while !last {
        tokio::select! {
            _ = cluster.stopped.cancelled() => {
                // The server closed: what was published before goes out with this batch.
                last = true;
                while let Ok(event) = queued.try_recv() {
                    batch.push(event);
                }
                if batch.is_empty() {
                    return;
                }
            }
            count = queued.recv_many(&mut batch, BATCH) => if count == 0 { return },
        }
        let count = batch.len() as u64;
        let history = cluster.config().history;
        let topics_key = cluster.key("topics");
        let mut pipe = redis::pipe();
        for (topic, message) in batch.drain(..) {
            pipe.cmd("PUBLISH")
                .arg(cluster.key(&format!("bus:{topic}")))
                .arg(&message[..])
                .ignore();
            if history > 0 {
                pipe.cmd("XADD")
                    .arg(cluster.key(&format!("hist:{topic}")))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(history)
                    .arg("*")
                    .arg("p")
                    .arg(&message[..])
                    .ignore();
                pipe.cmd("SADD").arg(&topics_key).arg(&topic).ignore();
            }
        }
        let sent = cluster
            .call(|mut redis| async move { pipe.query_async::<()>(&mut redis).await })
            .await;
        if sent.is_err() {
            cluster.health().events_lost(count);
        }
    }
}

/// Keeps one pub/sub connection subscribed to every pattern of the bus, delivering what
/// other instances publish; made again (and every pattern subscribed again) when it breaks.
async fn subscribe(
    cluster: Weak<Cluster>,
    bus: Weak<Bus>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    stopped: CancellationToken,
) {
    let mut last_seen: HashMap<String, u64> = HashMap::new();
    loop {
        let (Some(cluster), Some(bus)) = (cluster.upgrade(), bus.upgrade()) else {
            return;
        };
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = session(&cluster, &bus, &mut changes, &mut last_seen) => {}
        }
        cluster
            .confirmed
            .reset(std::iter::empty(), cluster.health());
        drop((cluster, bus));
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

/// One pub/sub connection's life: subscribe every pattern, then follow changes and messages
/// until it breaks.
async fn session(
    cluster: &Cluster,
    bus: &Bus,
    changes: &mut mpsc::UnboundedReceiver<Change>,
    last_seen: &mut HashMap<String, u64>,
) {
    let timeout = cluster.config().timeout;
    let client = match redis::Client::open(cluster.config().redis.as_str()) {
        Ok(client) => client,
        Err(_) => return,
    };
    let Ok(Ok(pubsub)) = tokio::time::timeout(timeout, client.get_async_pubsub()).await else {
        return;
    };
    let (mut sink, mut stream) = pubsub.split();
    // Changes queued before now are covered by subscribing to the bus's current patterns.
    while changes.try_recv().is_ok() {}
    let channel_prefix = cluster.key("bus:");
    let patterns = bus.patterns();
    for chunk in patterns.chunks(PSUBSCRIBE_BATCH) {
        let globs: Vec<String> = chunk.iter().map(|p| glob(&channel_prefix, p)).collect();
        if !matches!(
            tokio::time::timeout(timeout, sink.psubscribe(globs)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    let mut subscribed: HashSet<String> = patterns.into_iter().collect();
    cluster
        .confirmed
        .reset(subscribed.iter().cloned(), cluster.health());
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { return };
                let done = match &change {
                    Change::Add(pattern) if subscribed.insert(pattern.clone()) => {
                        tokio::time::timeout(timeout, sink.psubscribe(glob(&channel_prefix, pattern))).await
                    }
                    Change::Remove(pattern) if subscribed.remove(pattern) => {
                        tokio::time::timeout(timeout, sink.punsubscribe(glob(&channel_prefix, pattern))).await
                    }
                    _ => Ok(Ok(())),
                };
                if !matches!(done, Ok(Ok(()))) {
                    return;
                }
                match change {
                    Change::Add(pattern) => cluster.confirmed.add(pattern, cluster.health()),
                    Change::Remove(pattern) => cluster.confirmed.remove(&pattern, cluster.health()),
                }
            }
            message = stream.next() => {
                let Some(message) = message else { return };
                let Some(topic) = message.get_channel_name().strip_prefix(&channel_prefix) else {
                    continue;
                };
                let payload = bytes::Bytes::copy_from_slice(message.get_payload_bytes());
                let Some(relayed) = wire::decode(payload) else { continue };
                if relayed.origin == cluster.instance || !first_time(last_seen, &relayed) {
                    continue;
                }
                let Relayed { id, frame, data, .. } = relayed;
                bus.deliver_remote(topic, id, frame, data);
            }
        }
    }
}

/// Whether this message of its origin was not delivered yet: an origin's messages arrive in
/// the order it published them, once per matching pattern.
fn first_time(last_seen: &mut HashMap<String, u64>, relayed: &Relayed) -> bool {
    match last_seen.get_mut(&relayed.origin) {
        Some(last) if *last >= relayed.seq => false,
        Some(last) => {
            *last = relayed.seq;
            true
        }
        None => {
            last_seen.insert(relayed.origin.clone(), relayed.seq);
            true
        }
    }
}

/// The Redis glob of a NATS pattern on this cluster's bus channels: `*` and `>` become `*`
/// (which also matches dots: the local bus matches exactly), glob characters are escaped.
fn glob(channel_prefix: &str, pattern: &str) -> String {
    let mut glob = String::new();
    escape_into(&mut glob, channel_prefix);
    for (index, token) in pattern.split('.').enumerate() {
        if index > 0 {
            glob.push('.');
        }
        match token {
            "*" | ">" => glob.push('*'),
            literal => escape_into(&mut glob, literal),
        }
    }
    glob
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Events after `last_id` on the topics matching `patterns`, from the history every instance
/// appends to; `Ok(None)` when `last_id` is no longer (or never was) there.
pub(crate) async fn since(
    cluster: &Cluster,
    patterns: &[String],
    last_id: &str,
) -> Result<Option<Vec<wire::Relayed>>, crate::cluster::health::Failure> {
    let exact: Vec<&String> = patterns
        .iter()
        .filter(|p| !p.contains(['*', '>']))
        .collect();
    let mut topics: Vec<String> = exact.iter().map(|t| t.to_string()).collect();
    if exact.len() < patterns.len() {
        let key = cluster.key("topics");
        let all: Vec<String> = cluster
            .call(|mut redis| async move {
                redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
            })
            .await?;
        topics.extend(all.into_iter().filter(|topic| {
            patterns
                .iter()
                .any(|pattern| crate::events::bus::matches(pattern, topic))
        }));
    }
    topics.sort_unstable();
    topics.dedup();
    if topics.is_empty() {
        return Ok(None);
    }
    let mut pipe = redis::pipe();
    for topic in &topics {
        pipe.cmd("XRANGE")
            .arg(cluster.key(&format!("hist:{topic}")))
            .arg("-")
            .arg("+");
    }
    type Entries = Vec<(String, Vec<Vec<u8>>)>;
    let ranges: Vec<Entries> = cluster
        .call(|mut redis| async move { pipe.query_async(&mut redis).await })
        .await?;
    let mut entries: Vec<((u64, u64), Relayed)> = ranges
        .into_iter()
        .flatten()
        .filter_map(|(stream_id, fields)| {
            let payload = fields
                .chunks(2)
                .find(|pair| pair[0] == b"p")?
                .get(1)?
                .clone();
            Some((stream_order(&stream_id)?, wire::decode(payload.into())?))
        })
        .collect();
    entries.sort_by_key(|(order, _)| *order);
    let Some(at) = entries.iter().position(|(_, event)| event.id == last_id) else {
        return Ok(None);
    };
    Ok(Some(
        entries
            .into_iter()
            .skip(at + 1)
            .map(|(_, event)| event)
            .collect(),
    ))
}

/// A stream entry id (`<ms>-<n>`) as a sortable pair.
fn stream_order(id: &str) -> Option<(u64, u64)> {
    let (ms, n) = id.split_once('-')?;
    Some((ms.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_deliver_each_message_once() {
        let mut seen = HashMap::new();
        let message = |origin: &str, seq| Relayed {
            origin: origin.into(),
            seq,
            id: String::new(),
            frame: bytes::Bytes::new(),
            data: bytes::Bytes::new().try_into().unwrap(),
        };
        assert!(first_time(&mut seen, &message("a", 1)));
        assert!(!first_time(&mut seen, &message("a", 1)), "a second pattern");
        assert!(first_time(&mut seen, &message("b", 1)));
        assert!(first_time(&mut seen, &message("a", 2)));
        assert!(!first_time(&mut seen, &message("a", 2)));
    }

    #[test]
    fn globs_cover_nats_patterns_and_escape_the_rest() {
        assert_eq!(glob("p:bus:", "a.*.c"), "p:bus:a.*.c");
        assert_eq!(glob("p:bus:", "a.>"), "p:bus:a.*");
        assert_eq!(glob("p?:bus:", "x[1].y"), "p\\?:bus:x\\[1\\].y");
    }

    #[test]
    fn stream_ids_sort_numerically() {
        assert!(stream_order("9-1") < stream_order("10-0"));
        assert!(stream_order("10-2") < stream_order("10-10"));
        assert_eq!(stream_order("x"), None);
    }
}
