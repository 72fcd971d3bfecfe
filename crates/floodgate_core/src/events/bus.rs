//! Topic publish/subscribe shared by SSE and WebSocket subscribers, NATS-style:
//! topics are dot-separated tokens, `*` matches one token, a trailing `>` one or more.
//!
//! An event is framed once and shared (one `Arc`) by every subscriber whose patterns match;
//! each event gets a bus-wide sequence number, and recent events are kept per topic so a
//! reconnecting client can resume from its `Last-Event-ID`. Subscriptions are indexed by
//! pattern: a publish matches each distinct pattern once, however many subscribers share it.
//!
//! With the `cluster` option a [`Relay`] hears every publish and every pattern gained or lost,
//! and events other instances published arrive through [`Bus::deliver_remote`].

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
    /// The data compressed for WebSocket subscribers with permessage-deflate, once per
    /// window size, by the first of them it reaches.
    pub deflated: crate::ws::deflate::DeflatedOnce,
}

/// What each subscriber's queue holds: one allocation per event, whatever the fan-out.
pub type SharedEvent = Arc<Event>;

/// Where a subscriber's events go; implemented by each connection's bounded queue.
pub trait Sink: Send + Sync {
    fn deliver(&self, event: &SharedEvent);
    /// The server is shutting down ([`Bus::is_shutting_down`]): look at it now.
    fn wake(&self) {}
}

/// What carries the bus beyond this process (`cluster::bus`): told of each local publish, and
/// of each pattern the first subscriber takes or the last one leaves. Called under the bus's
/// locks: it only queues.
pub trait Relay: Send + Sync {
    fn published(&self, topic: &str, event: &SharedEvent);
    fn pattern_added(&self, pattern: &str);
    fn pattern_removed(&self, pattern: &str);
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
    push_field_value(&mut out, id);
    out.push('\n');
    if let Some(event) = event {
        out.push_str("event: ");
        push_field_value(&mut out, event);
        out.push('\n');
    }
    for line in data_lines(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// Characters a field value cannot hold: a line end would start a field or an event of its
/// own, and a client ignores an `id` holding NUL. `publish` refuses them in ids and event
/// names (`validate_field`); `frame` drops them too, so no caller can inject a field.
const FIELD_UNSAFE: [char; 3] = ['\r', '\n', '\0'];

fn push_field_value(out: &mut String, value: &str) {
    if value.contains(FIELD_UNSAFE) {
        out.extend(value.chars().filter(|c| !FIELD_UNSAFE.contains(c)));
    } else {
        out.push_str(value);
    }
}

/// Checks an event id or event name for `publish`.
pub fn validate_field(name: &str, value: &str) -> Result<(), String> {
    if value.contains(FIELD_UNSAFE) {
        return Err(format!("{name} must not contain CR, LF or NUL: {value:?}"));
    }
    Ok(())
}

/// The lines of event data as a client splits them: at `\r\n`, `\n` or a lone `\r` (the
/// WHATWG rules), so data cannot end a line the frame does not end itself.
fn data_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(text)
            }
            Some(at) => {
                let skip = if text[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[at + skip..]);
                Some(&text[..at])
            }
        }
    })
}

/// The published data as bytes: for one-line data a view into its SSE frame (`data: ...\n\n`
/// ends it), so the event is held once, not twice; a copy otherwise.
fn data_within(frame: &Bytes, data: &str) -> Utf8Bytes {
    let one_line = !data.contains(['\n', '\r']);
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
    /// The cluster's side of the bus, with the `cluster` option.
    relay: OnceLock<Arc<dyn Relay>>,
    /// Appended to the sequence number in default event ids (`<seq>-<instance>`) with the
    /// `cluster` option, so ids are unique across instances (`Last-Event-ID` resume anywhere).
    id_suffix: OnceLock<String>,
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
                    if let Some(relay) = self.bus.relay.get() {
                        relay.pattern_removed(pattern);
                    }
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
                let sinks = subscriptions.by_pattern.entry(pattern.clone()).or_default();
                if sinks.is_empty() {
                    if let Some(relay) = self.relay.get() {
                        relay.pattern_added(pattern);
                    }
                }
                sinks.insert(id, Arc::clone(&sink));
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

    /// Joins the bus to a cluster: `relay` hears what is published and subscribed here, and
    /// default event ids end with `-<instance>`. Patterns subscribed before are announced.
    pub fn set_relay(&self, relay: Arc<dyn Relay>, instance: &str) {
        let _ = self.id_suffix.set(instance.to_string());
        if self.relay.set(Arc::clone(&relay)).is_ok() {
            for pattern in self.subscriptions().by_pattern.keys() {
                relay.pattern_added(pattern);
            }
        }
    }

    /// The patterns subscribed here (the cluster subscribes to each once).
    pub fn patterns(&self) -> Vec<String> {
        self.subscriptions().by_pattern.keys().cloned().collect()
    }

    /// Publishes `data` on `topic`; returns how many subscribers it reached here.
    pub fn publish(&self, topic: &str, data: &str, event: Option<&str>, id: Option<&str>) -> usize {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let id = match (id, self.id_suffix.get()) {
            (Some(id), _) => id.to_string(),
            (None, Some(instance)) => format!("{seq}-{instance}"),
            (None, None) => seq.to_string(),
        };
        let frame = frame(&id, event, data);
        let event = Arc::new(Event {
            seq,
            data: data_within(&frame, data),
            frame,
            id,
            deflated: Default::default(),
        });
        if let Some(relay) = self.relay.get() {
            relay.published(topic, &event);
        }
        self.dispatch(topic, event)
    }

    /// Delivers an event another instance published (framed there) to the subscribers here,
    /// and keeps it for resume like a local one; returns how many it reached.
    pub fn deliver_remote(&self, topic: &str, id: String, frame: Bytes, data: Utf8Bytes) -> usize {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.dispatch(
            topic,
            Arc::new(Event {
                seq,
                id,
                frame,
                data,
                deflated: Default::default(),
            }),
        )
    }

    /// Keeps `event` for resume and hands it to the subscribers of `topic`.
    fn dispatch(&self, topic: &str, event: SharedEvent) -> usize {
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

    mod proptests {
        //! `frame` against a parser that follows the WHATWG rules for `text/event-stream`
        //! (HTML, "9.2.6 Interpreting an event stream").

        use super::super::*;
        use proptest::prelude::*;

        /// One dispatched event: its last event ID, type and data.
        #[derive(Debug, PartialEq, Eq)]
        struct Parsed {
            id: String,
            event: String,
            data: String,
        }

        /// The lines of a stream: CRLF, LF and CR each end one.
        fn lines(text: &str) -> Vec<&str> {
            let mut lines = Vec::new();
            let mut rest = text;
            while let Some(at) = rest.find(['\r', '\n']) {
                lines.push(&rest[..at]);
                rest = if rest[at..].starts_with("\r\n") {
                    &rest[at + 2..]
                } else {
                    &rest[at + 1..]
                };
            }
            // A final line without its end is never processed.
            lines
        }

        /// The events a client dispatches from `stream`.
        fn parse(stream: &str) -> Vec<Parsed> {
            let mut events = Vec::new();
            let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
            for line in lines(stream) {
                if line.is_empty() {
                    if !data.is_empty() {
                        data.pop();
                        let event = std::mem::take(&mut event);
                        events.push(Parsed {
                            id: id.clone(),
                            event: if event.is_empty() {
                                "message".into()
                            } else {
                                event
                            },
                            data: std::mem::take(&mut data),
                        });
                    }
                    data.clear();
                    event.clear();
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                    None => (line, ""),
                };
                match field {
                    "event" => event = value.to_string(),
                    "data" => {
                        data.push_str(value);
                        data.push('\n');
                    }
                    "id" if !value.contains('\0') => id = value.to_string(),
                    _ => {}
                }
            }
            events
        }

        /// The lines of published data: what the line ends separate, the last piece included.
        fn data_lines(text: &str) -> Vec<&str> {
            let ends = text.rfind(['\r', '\n']).map_or(0, |at| at + 1);
            let mut lines = lines(&text[..ends]);
            lines.push(&text[ends..]);
            lines
        }

        /// `text` as a client should see it: its lines (any of the three ends) joined by `\n`.
        fn normalized(text: &str) -> String {
            data_lines(text).join("\n")
        }

        /// The frame's structure: one id line, at most one event line, then only data lines up
        /// to the blank line that ends it (nothing in the data starts a field or an event), and
        /// a client reads back the same id and event.
        fn check_fields(id: &str, event: Option<&str>, data: &str) -> Result<(), TestCaseError> {
            let framed = frame(id, event, data);
            let text = std::str::from_utf8(&framed).unwrap();
            prop_assert!(text.ends_with("\n\n"), "{:?}", text);
            let lines = lines(text);
            let mut fields = lines
                .iter()
                .map(|line| line.split_once(':').map_or(*line, |(field, _)| field));
            prop_assert_eq!(fields.next(), Some("id"), "{:?}", text);
            let mut rest: Vec<&str> = fields.collect();
            if event.is_some() {
                prop_assert_eq!(rest.first().copied(), Some("event"), "{:?}", text);
                rest.remove(0);
            }
            prop_assert_eq!(rest.pop(), Some(""), "{:?}", text);
            prop_assert!(
                rest.iter().all(|field| *field == "data"),
                "a field from the data: {:?}",
                text
            );
            let parsed = parse(text);
            prop_assert_eq!(parsed.len(), 1, "{:?}", text);
            prop_assert_eq!(&parsed[0].id, id, "{:?}", text);
            let event = event.filter(|e| !e.is_empty()).unwrap_or("message");
            prop_assert_eq!(&parsed[0].event, event, "{:?}", text);
            Ok(())
        }

        /// The fields, and the data reads back: its lines (whatever ended them) joined by `\n`.
        fn check(id: &str, event: Option<&str>, data: &str) -> Result<(), TestCaseError> {
            check_fields(id, event, data)?;
            let framed = frame(id, event, data);
            let text = std::str::from_utf8(&framed).unwrap();
            prop_assert_eq!(&parse(text)[0].data, &normalized(data), "{:?}", text);
            Ok(())
        }

        /// Text rich in line ends, field names and non-ASCII.
        fn text(without: &'static [char]) -> impl Strategy<Value = String> {
            let pieces = prop::sample::select(vec![
                "\n",
                "\r\n",
                "\r",
                "\n\n",
                "",
                " ",
                ":",
                "data:",
                "id:",
                "event:",
                "id: 9",
                "event: x",
                "retry: 1",
                ": c",
                "é",
                "日本",
                "🦀",
                "\u{feff}",
                "\u{2028}",
                "a",
                "plain words",
            ]);
            prop_oneof![
                3 => prop::collection::vec(pieces, 0..12).prop_map(|p| p.concat()),
                1 => any::<String>(),
            ]
            .prop_map(move |text: String| text.chars().filter(|c| !without.contains(c)).collect())
        }

        /// A name that is safe in a field: no line end (nor NUL, for an id).
        fn name(without: &'static [char]) -> impl Strategy<Value = String> {
            text(without).prop_map(|name| name.chars().take(20).collect())
        }

        const LINE_ENDS: &[char] = &['\r', '\n'];
        const ID_UNSAFE: &[char] = &['\r', '\n', '\0'];
        const BARE_CR: &[char] = &['\r'];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Data with `\n` and `\r\n` line ends (no lone `\r`) reads back exactly.
            #[test]
            fn frames_read_back(
                id in name(ID_UNSAFE),
                event in prop::option::of(name(LINE_ENDS)),
                data in text(&[]).prop_map(|d| d.replace("\r\n", "\n").replace('\r', "")),
                crlf in any::<bool>(),
            ) {
                let data = if crlf { data.replace('\n', "\r\n") } else { data };
                check(&id, event.as_deref(), &data)?;
            }

            /// Any data at all, lone `\r` included: CR alone ends a line for a client, so data
            /// must not be able to start a field (`x\rid: 1`).
            #[test]
            fn no_field_from_any_data(
                id in name(ID_UNSAFE),
                event in prop::option::of(name(LINE_ENDS)),
                data in text(&[]),
            ) {
                check_fields(&id, event.as_deref(), &data)?;
            }

            /// Any data at all reads back, its line ends (a lone `\r` too) as `\n`.
            #[test]
            fn any_data_reads_back(
                id in name(ID_UNSAFE),
                event in prop::option::of(name(LINE_ENDS)),
                data in text(&[]),
            ) {
                check(&id, event.as_deref(), &data)?;
            }

            /// Ids and event names with line ends or NUL (which `publish` refuses): `frame`
            /// drops those characters, so they cannot add fields or events.
            #[test]
            fn any_id_or_event_cannot_add_fields(
                id in name(&[]),
                event in prop::option::of(name(&[])),
                data in text(BARE_CR),
            ) {
                let safe = |text: &str| text.replace(FIELD_UNSAFE, "");
                let framed = frame(&id, event.as_deref(), &data);
                let text = std::str::from_utf8(&framed).unwrap();
                let parsed = parse(text);
                prop_assert_eq!(parsed.len(), 1, "{:?}", text);
                prop_assert_eq!(&parsed[0].id, &safe(&id), "{:?}", text);
                let event = event.map(|e| safe(&e)).filter(|e| !e.is_empty());
                prop_assert_eq!(&parsed[0].event, event.as_deref().unwrap_or("message"), "{:?}", text);
                prop_assert_eq!(&parsed[0].data, &normalized(&data), "{:?}", text);
            }
        }

        #[test]
        fn the_parser_follows_the_spec() {
            let stream = "id: 1\r\nevent: a\rdata:x\ndata:  y\n: comment\nretry: 5\nbogus\n\n\
                          data\n\nevent: lost\n\nid\ndata: z\r\n\r\nid: a\0b\ndata: n\n\ndata: tail";
            assert_eq!(
                parse(stream),
                vec![
                    Parsed {
                        id: "1".into(),
                        event: "a".into(),
                        data: "x\n y".into()
                    },
                    Parsed {
                        id: "1".into(),
                        event: "message".into(),
                        data: "".into()
                    },
                    Parsed {
                        id: "".into(),
                        event: "message".into(),
                        data: "z".into()
                    },
                    Parsed {
                        id: "".into(),
                        event: "message".into(),
                        data: "n".into()
                    },
                ]
            );
            assert_eq!(normalized("a\r\nb\rc\n"), "a\nb\nc\n");
            assert_eq!(normalized("a\r"), "a\n");
            assert_eq!(normalized(""), "");
        }

        fn framed(id: &str, event: Option<&str>, data: &str) -> String {
            String::from_utf8(frame(id, event, data).to_vec()).unwrap()
        }

        /// The smallest failures found, as plain cases: a lone CR in data ends the line for a
        /// client, so what follows it is a field.
        #[test]
        fn minimal_lone_cr_starts_a_field() {
            let text = framed("1", None, "x\rid: 2");
            assert_eq!(parse(&text)[0].id, "1", "{text:?}");
        }

        /// A final lone CR ends a last, empty line, but `frame` drops it.
        #[test]
        fn minimal_final_lone_cr_is_a_line_end() {
            let text = framed("1", None, "\r");
            assert_eq!(parse(&text)[0].data, "\n", "{text:?}");
        }

        /// An event name (or an id) with a line end cannot add fields of its own.
        #[test]
        fn minimal_line_end_in_event_or_id_adds_no_field() {
            let text = framed("1", Some("a\ndata: x"), "");
            assert_eq!(parse(&text)[0].data, "", "{text:?}");
            let text = framed("1\ndata: a\n", None, "y");
            assert_eq!(parse(&text).len(), 1, "{text:?}");
        }

        /// Clients ignore an `id:` line holding NUL: the NUL is dropped, the id kept.
        #[test]
        fn minimal_nul_in_id_is_dropped() {
            let text = framed("a\0b", None, "y");
            assert_eq!(parse(&text)[0].id, "ab", "{text:?}");
        }

        #[test]
        fn publish_refuses_unsafe_ids_and_event_names() {
            assert!(validate_field("id", "a\nb").is_err());
            assert!(validate_field("event", "a\rb").is_err());
            assert!(validate_field("id", "a\0b").is_err());
            assert!(validate_field("event", "update").is_ok());
        }
    }
}
