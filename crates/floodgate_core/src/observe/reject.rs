//! Rejection events: every refusal the protections make is one [`Refusal`] given to
//! `Metrics::refuse`, which counts it, enters the client in the top offenders and, within the
//! per-second bound, hands a [`RejectEvent`] to the sink (the JS bridge) to be batched to JS.
//!
//! The bound is per wall-clock second (`rejectEventsPerSecond`): past it events are only
//! counted, and the next event that passes carries how many were left out (`dropped`), so a
//! flood of refusals never becomes a flood of work for the JS thread.

use crate::metrics::Rejection;
use crate::observe::app::AppMetrics;
use crate::observe::offenders::{Offender, Offenders};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest `route` an event carries: the path is the client's, so it is cut.
const MAX_ROUTE: usize = 256;

/// What the client was told: an HTTP status, or a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Status(u16),
    Close(u16),
}

/// One refusal, as its site knows it. Only `reason` is required; the site adds what it has.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    pub reason: Rejection,
    pub client: Option<IpAddr>,
    pub user: Option<&'a str>,
    pub route: Option<&'a str>,
    pub code: Option<Code>,
    /// The mounted app that refused, for its own counts.
    pub app: Option<&'a AppMetrics>,
}

impl<'a> Refusal<'a> {
    /// A refusal with the reason's usual answer (`Rejection::code`).
    pub fn new(reason: Rejection) -> Self {
        Self {
            reason,
            client: None,
            user: None,
            route: None,
            code: reason.code(),
            app: None,
        }
    }

    pub fn client(mut self, client: impl Into<Option<IpAddr>>) -> Self {
        self.client = client.into();
        self
    }

    pub fn user(mut self, user: Option<&'a str>) -> Self {
        self.user = user;
        self
    }

    pub fn route(mut self, route: &'a str) -> Self {
        self.route = Some(route);
        self
    }

    pub fn app(mut self, app: &'a AppMetrics) -> Self {
        self.app = Some(app);
        self
    }

    pub fn status(mut self, status: u16) -> Self {
        self.code = Some(Code::Status(status));
        self
    }
}

/// A refusal as JS receives it (`server.on('reject')`).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectEvent {
    pub reason: &'static str,
    pub address: Option<String>,
    pub user: Option<String>,
    pub route: Option<String>,
    pub code: Option<Code>,
    /// ms since the Unix epoch.
    pub time: f64,
    /// Events left out by the per-second bound since the previous one that passed.
    pub dropped: u64,
}

/// Where events go: the JS bridge. Must not block; batching is the sink's business.
pub trait RejectSink: Send + Sync {
    fn reject_event(&self, event: RejectEvent);
}

struct Window {
    second: u64,
    passed: u32,
    /// Left out since the last event that passed.
    dropped: u64,
    dropped_total: u64,
    offenders: Offenders,
}

/// The bound, the offenders table and the sink of one server.
pub struct RejectEvents {
    per_second: u32,
    sink: Option<Arc<dyn RejectSink>>,
    window: Mutex<Window>,
}

impl Default for RejectEvents {
    fn default() -> Self {
        let config = crate::config::ServerConfig::default();
        Self::new(config.reject_events_per_second, config.top_offenders, None)
    }
}

impl RejectEvents {
    pub fn new(per_second: u32, top_offenders: u32, sink: Option<Arc<dyn RejectSink>>) -> Self {
        Self {
            per_second,
            sink,
            window: Mutex::new(Window {
                second: 0,
                passed: 0,
                dropped: 0,
                dropped_total: 0,
                offenders: Offenders::new(top_offenders as usize),
            }),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, refusal: &Refusal<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let time = now.as_millis() as f64;
        let address = refusal.client.map(|ip| ip.to_string());
        let reason = refusal.reason.as_str();
        let dropped = {
            let mut window = self.window();
            window
                .offenders
                .record(address.as_deref(), refusal.user, reason, time);
            if self.sink.is_none() || self.per_second == 0 {
                return;
            }
            if window.second != now.as_secs() {
                window.second = now.as_secs();
                window.passed = 0;
            }
            if window.passed >= self.per_second {
                window.dropped += 1;
                window.dropped_total += 1;
                return;
            }
            window.passed += 1;
            std::mem::take(&mut window.dropped)
        };
        let event = RejectEvent {
            reason,
            address,
            user: refusal.user.map(str::to_owned),
            route: refusal.route.map(|route| cut(route, MAX_ROUTE).to_owned()),
            code: refusal.code,
            time,
            dropped,
        };
        if let Some(sink) = &self.sink {
            sink.reject_event(event);
        }
    }

    pub fn top_offenders(&self) -> Vec<Offender> {
        self.window().offenders.top()
    }

    /// Events left out by the per-second bound, in all.
    pub fn dropped_total(&self) -> u64 {
        self.window().dropped_total
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<RejectEvent>>);

    impl RejectSink for Collect {
        fn reject_event(&self, event: RejectEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn events_past_the_bound_are_counted_and_reported_by_the_next_one() {
        let sink = Arc::new(Collect::default());
        let events = RejectEvents::new(5, 8, Some(sink.clone() as Arc<dyn RejectSink>));
        let client: IpAddr = "127.0.0.2".parse().unwrap();
        let started = SystemTime::now();
        for _ in 0..50 {
            events.record(&Refusal::new(Rejection::ConnectionLimit).client(client));
        }
        let seconds = started.elapsed().unwrap().as_secs() + 1;
        let got = sink.0.lock().unwrap().clone();
        assert!(
            got.len() >= 5 && got.len() as u64 <= 5 * (seconds + 1),
            "{}",
            got.len()
        );
        assert_eq!(got[0].reason, "connection_limit");
        assert_eq!(got[0].address.as_deref(), Some("127.0.0.2"));
        assert_eq!(got[0].code, Some(Code::Status(429)));
        assert_eq!(got[0].dropped, 0);
        assert_eq!(events.dropped_total(), 50 - got.len() as u64);
        let top = events.top_offenders();
        assert_eq!(top[0].count, 50);
        // A second later the next event carries what was left out.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        events.record(&Refusal::new(Rejection::HeaderTimeout).route(&"x".repeat(1000)));
        let got = sink.0.lock().unwrap().clone();
        let last = got.last().unwrap();
        assert_eq!(last.reason, "header_timeout");
        assert_eq!(last.route.as_ref().unwrap().len(), MAX_ROUTE);
        let reported: u64 = got.iter().map(|event| event.dropped).sum();
        assert_eq!(reported, events.dropped_total());
    }

    #[test]
    fn without_a_sink_only_the_offenders_are_kept() {
        let events = RejectEvents::new(5, 8, None);
        events.record(&Refusal::new(Rejection::RateLimited).user(Some("mallory")));
        assert_eq!(events.dropped_total(), 0);
        assert_eq!(events.top_offenders()[0].user.as_deref(), Some("mallory"));
    }
}
