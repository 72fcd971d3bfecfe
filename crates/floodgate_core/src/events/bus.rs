//! Topic publish/subscribe shared by SSE and WebSocket subscribers, NATS-style:
//! topics are dot-separated tokens, `*` matches one token, a trailing `>` one or more.
//!
//! An event is framed once and shared (one `Arc`) by every subscriber whose patterns match;
//! each event gets a bus-wide sequence number, and recent events are kept per topic so a
//! reconnecting client can resume from its `Last-Event-ID`. Subscriptions are indexed by
//! pattern: a publish matches each distinct pattern once, however many subscribers share it.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// Recent events kept per topic for `Last-Event-ID` resume.
const RING_SIZE: usize = 256;

/// A published event, framed for delivery; shared by its subscribers as [`SharedEvent`].
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    /// The `id:` clients see: the publisher's, or the sequence number.
    pub id: String,
    /// The SSE frame (`id:`, `event:`, `data:` lines).
    pub frame: Bytes,
    /// The data as published: what a WebSocket subscriber receives as a text message
    /// (checked as UTF-8 once here, not once per subscriber).
    pub data: Utf8Bytes,
}

/// What each subscriber's queue holds: one allocation per event, whatever the fan-out.
pub type SharedEvent = Arc<Event>;

/// Where a subscriber's events go; implemented by each connection's bounded queue.
pub trait Sink: Send + Sync {
    fn deliver(&self, event: &SharedEvent);
    /// The server is shutting down ([`Bus::is_shutting_down`]): look at it now.
    fn wake(&self) {}
}

/// Does `pattern` (possibly with `*` and a trailing `>`) match `topic`?
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    let mut pattern_tokens = pattern.split('.').peekable();
    while let Some(token) = pattern_tokens.next() {
        if token == ">" && pattern_tokens.peek().is_none() {
            return topic_tokens.next().is_some();
        }
        match topic_tokens.next() {
            Some(actual) if token == "*" || token == actual => {}
            _ => return false,
        }
    }
    topic_tokens.next().is_none()
}

/// A valid topic: non-empty tokens, no wildcards. Patterns may also use `*` and a final `>`.
pub fn validate(text: &str, pattern: bool) -> Result<(), String> {
    let tokens: Vec<&str> = text.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        let wildcard = *token == "*" || (*token == ">" && index + 1 == tokens.len());
        if token.is_empty() || token.contains(char::is_whitespace) || (!pattern && wildcard) {
            return Err(format!("invalid topic {text:?}"));
        }
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return Err(format!("invalid topic {text:?}"));
        }
    }
    Ok(())
}

/// Frames one SSE event: `id:`, optional `event:`, and `data:` lines (multi-line data split).
pub fn frame(id: &str, event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    out.push_str("id: ");
    out.push_str(id);
    out.push('\n');
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The published data as bytes: for one-line data a view into its SSE frame (`data: ...\n\n`
/// ends it), so the event is held once, not twice; a copy otherwise.
fn data_within(frame: &Bytes, data: &str) -> Utf8Bytes {
    let one_line = !data.contains('\n') && !data.ends_with('\r');
    let end = frame.len().saturating_sub(2);
    let view = match end.checked_sub(data.len()) {
        Some(start) if one_line && &frame[start..end] == data.as_bytes() => {
            Utf8Bytes::try_from(frame.slice(start..end)).ok()
        }
        _ => None,
    };
    view.unwrap_or_else(|| Utf8Bytes::from(data))
}

/// One event and the subscribers it goes to.
type Delivery = (SharedEvent, Vec<Arc<dyn Sink>>);

/// Every subscription, by pattern: the subscribers sharing a pattern are matched once.
#[derive(Default)]
struct Subscriptions {
    by_pattern: HashMap<String, HashMap<u64, Arc<dyn Sink>>>,
    /// Subscriptions with more than one pattern, which one event may reach twice.
    multi_pattern: usize,
}

#[derive(Default)]
pub struct Bus {
    /// The server is closing: every subscriber ends its stream.
    shutting_down: AtomicBool,
    watching: AtomicBool,
    seq: AtomicU64,
    subscriptions: RwLock<Subscriptions>,
    next_subscription: AtomicU64,
    recent: Mutex<HashMap<String, VecDeque<SharedEvent>>>,
    fanout: OnceLock<mpsc::UnboundedSender<Delivery>>,
}

/// Unsubscribes when dropped.
pub struct SubscriptionGuard {
    bus: Arc<Bus>,
    id: u64,
    patterns: Vec<String>,
}

impl SubscriptionGuard {
    /// Whether this subscription is to exactly `pattern` (and nothing else).
    pub fn is_for(&self, pattern: &str) -> bool {
        matches!(self.patterns.as_slice(), [only] if only == pattern)
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let mut subscriptions = self.bus.subscriptions();
        for pattern in &self.patterns {
            if let Some(sinks) = subscriptions.by_pattern.get_mut(pattern) {
                sinks.remove(&self.id);
                if sinks.is_empty() {
                    subscriptions.by_pattern.remove(pattern);
                }
            }
        }
        if self.patterns.len() > 1 {
            subscriptions.multi_pattern -= 1;
        }
    }
}

impl Bus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follows the server's shutdown: sets the flag and wakes every subscriber once, so that
    /// streams need no cancellation future of their own (one registration per stream on one
    /// shared token, re-made at every event). One watcher per bus, started by the first stream.
    pub fn watch(self: &Arc<Self>, shutdown: &CancellationToken) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let bus = Arc::downgrade(self);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let Some(bus) = bus.upgrade() else { return };
            bus.shutting_down.store(true, Ordering::Release);
            let subscriptions = bus.subscriptions.read().unwrap_or_else(|p| p.into_inner());
            for sink in subscriptions
                .by_pattern
                .values()
                .flat_map(|sinks| sinks.values())
            {
                sink.wake();
            }
        });
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The sequence number of the last published event.
    pub fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    pub fn subscribe(
        self: &Arc<Self>,
        patterns: Vec<String>,
        sink: Arc<dyn Sink>,
    ) -> SubscriptionGuard {
        let id = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        let mut patterns = patterns;
        patterns.sort_unstable();
        patterns.dedup();
        {
            let mut subscriptions = self.subscriptions();
            for pattern in &patterns {
                subscriptions
                    .by_pattern
                    .entry(pattern.clone())
                    .or_default()
                    .insert(id, Arc::clone(&sink));
            }
            if patterns.len() > 1 {
                subscriptions.multi_pattern += 1;
            }
        }
        SubscriptionGuard {
            bus: Arc::clone(self),
            id,
            patterns,
        }
    }

    fn subscriptions(&self) -> std::sync::RwLockWriteGuard<'_, Subscriptions> {
        self.subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `data` on `topic`; returns how many subscribers it reached.
    pub fn publish(&self, topic: &str, data: &str, event: Option<&str>, id: Option<&str>) -> usize {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let id = id.map(str::to_string).unwrap_or_else(|| seq.to_string());
        let frame = frame(&id, event, data);
        let event = Arc::new(Event {
            seq,
            data: data_within(&frame, data),
            frame,
            id,
        });
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let ring = recent.entry(topic.to_string()).or_default();
            if ring.len() == RING_SIZE {
                ring.pop_front();
            }
            ring.push_back(Arc::clone(&event));
        }
        let sinks = self.sinks_for(topic);
        let reached = sinks.len();
        match self.fanout.get() {
            // Delivered from a runtime task: waking thousands of streams from a worker thread
            // uses its local run queue, where waking them from the publishing (JS) thread goes
            // through the runtime's shared injection queue, one wake-up at a time.
            Some(fanout) => {
                if let Err(mpsc::error::SendError((event, sinks))) = fanout.send((event, sinks)) {
                    sinks.iter().for_each(|sink| sink.deliver(&event));
                }
            }
            None => sinks.iter().for_each(|sink| sink.deliver(&event)),
        }
        reached
    }

    /// The subscribers of `topic`, each once.
    fn sinks_for(&self, topic: &str) -> Vec<Arc<dyn Sink>> {
        let subscriptions = self.subscriptions.read().unwrap_or_else(|p| p.into_inner());
        let matching: Vec<&HashMap<u64, Arc<dyn Sink>>> = subscriptions
            .by_pattern
            .iter()
            .filter(|(pattern, _)| matches(pattern, topic))
            .map(|(_, sinks)| sinks)
            .collect();
        if matching.len() > 1 && subscriptions.multi_pattern > 0 {
            let mut unique: HashMap<u64, &Arc<dyn Sink>> = HashMap::new();
            for (id, sink) in matching.iter().flat_map(|sinks| sinks.iter()) {
                unique.insert(*id, sink);
            }
            return unique.into_values().map(Arc::clone).collect();
        }
        let mut sinks = Vec::with_capacity(matching.iter().map(|sinks| sinks.len()).sum());
        for group in matching {
            sinks.extend(group.values().cloned());
        }
        sinks
    }

    /// Moves delivery onto a task of the current tokio runtime (in order, one event at a time).
    pub fn start_fanout(self: &Arc<Self>) {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Delivery>();
        if self.fanout.set(sender).is_ok() {
            tokio::spawn(async move {
                while let Some((event, sinks)) = receiver.recv().await {
                    for sink in &sinks {
                        sink.deliver(&event);
                    }
                }
            });
        }
    }

    /// Events after `last_id` on topics matching `patterns`, in order; `None` when `last_id` is
    /// no longer (or never was) held.
    pub fn since(&self, patterns: &[String], last_id: &str) -> Option<Vec<SharedEvent>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let rings: Vec<&VecDeque<SharedEvent>> = recent
            .iter()
            .filter(|(topic, _)| patterns.iter().any(|pattern| matches(pattern, topic)))
            .map(|(_, ring)| ring)
            .collect();
        let after = rings
            .iter()
            .flat_map(|ring| ring.iter())
            .find(|event| event.id == last_id)?
            .seq;
        let mut events: Vec<SharedEvent> = rings
            .iter()
            .flat_map(|ring| ring.iter())
            .filter(|event| event.seq > after)
            .cloned()
            .collect();
        events.sort_by_key(|event| event.seq);
        Some(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_rules() {
        assert!(matches("a.b.c", "a.b.c"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*.c", "a.x.c"));
        assert!(!matches("a.*.c", "a.x.y.c"));
        assert!(matches("attacker.42.>", "attacker.42.observation"));
        assert!(matches("attacker.42.>", "attacker.42.a.b"));
        assert!(!matches("attacker.42.>", "attacker.42"));
        assert!(!matches("attacker.42.>", "attacker.43.x"));
        assert!(matches(">", "anything.at.all"));
        assert!(matches("*", "one"));
        assert!(!matches("*", "one.two"));
    }

    #[test]
    fn validation() {
        assert!(validate("a.b", false).is_ok());
        assert!(validate("a.*", false).is_err());
        assert!(validate("a.*.>", true).is_ok());
        assert!(validate("a.>.b", true).is_err());
        assert!(validate("a..b", true).is_err());
        assert!(validate("a.b*", true).is_err());
    }

    #[test]
    fn websocket_data_is_the_published_text() {
        for data in ["one line", "", "two\nlines", "cr\r", "ends\n"] {
            let framed = frame("1", None, data);
            assert_eq!(data_within(&framed, data).as_str(), data);
        }
    }

    #[test]
    fn framing_splits_lines() {
        assert_eq!(
            &frame("7", Some("update"), "one\ntwo")[..],
            b"id: 7\nevent: update\ndata: one\ndata: two\n\n"
        );
    }

    struct Collect(Mutex<Vec<u64>>);
    impl Sink for Collect {
        fn deliver(&self, event: &SharedEvent) {
            self.0.lock().unwrap().push(event.seq);
        }
    }

    #[test]
    fn publish_reaches_matching_subscribers_and_resume_replays() {
        let bus = Bus::new();
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        let guard = bus.subscribe(vec!["a.>".into()], sink.clone());
        assert_eq!(bus.publish("a.x", "1", None, None), 1);
        assert_eq!(bus.publish("b.x", "2", None, None), 0);
        assert_eq!(bus.publish("a.y", "3", None, None), 1);
        assert_eq!(*sink.0.lock().unwrap(), vec![1, 3]);
        let replay = bus.since(&["a.>".into()], "1").unwrap();
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
        assert!(bus.since(&["a.>".into()], "999").is_none());
        drop(guard);
        assert_eq!(bus.publish("a.x", "4", None, None), 0);
    }

    #[test]
    fn an_event_reaches_each_subscriber_once_whatever_its_patterns() {
        let bus = Bus::new();
        let both = Arc::new(Collect(Mutex::new(Vec::new())));
        let one = Arc::new(Collect(Mutex::new(Vec::new())));
        let _both = bus.subscribe(vec!["a.>".into(), "a.x".into(), "a.x".into()], both.clone());
        let one_guard = bus.subscribe(vec!["a.x".into()], one.clone());
        assert_eq!(bus.publish("a.x", "1", None, None), 2);
        assert_eq!(bus.publish("a.y", "2", None, None), 1);
        assert_eq!(*both.0.lock().unwrap(), vec![1, 2]);
        assert_eq!(*one.0.lock().unwrap(), vec![1]);
        drop(one_guard);
        assert_eq!(bus.publish("a.x", "3", None, None), 1);
        drop(_both);
        assert_eq!(bus.publish("a.x", "4", None, None), 0);
        assert!(bus.subscriptions().by_pattern.is_empty());
    }
}
