//! What each mounted app counts for the metrics: its requests (duration, time to first byte,
//! response bytes), its open event streams and WebSockets, and its refusals by reason. One per
//! mount, reached through the request's context, so recording is a few relaxed atomics and
//! never a lookup by name.

use crate::metrics::Rejection;
use crate::observe::histogram::{Histogram, BYTES, SECONDS};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
pub struct AppMetrics {
    /// The mount prefix: the `app` label.
    pub prefix: String,
    pub duration: Histogram,
    pub ttfb: Histogram,
    pub response_bytes: Histogram,
    pub sse_streams: AtomicI64,
    pub websockets: AtomicI64,
    rejections: [AtomicU64; Rejection::ALL.len()],
}

impl AppMetrics {
    pub fn new(prefix: &str) -> Arc<Self> {
        Arc::new(Self {
            prefix: prefix.to_string(),
            duration: Histogram::new(&SECONDS),
            ttfb: Histogram::new(&SECONDS),
            response_bytes: Histogram::new(&BYTES),
            sse_streams: AtomicI64::new(0),
            websockets: AtomicI64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }

    pub fn rejected(&self, reason: Rejection) {
        self.rejections[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn rejections(&self, reason: Rejection) -> u64 {
        self.rejections[reason as usize].load(Relaxed)
    }
}

/// Which gauge a [`Live`] guard holds up.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    SseStream,
    WebSocket,
}

/// Counts one open event stream or WebSocket of an app for as long as it is held.
#[derive(Debug)]
pub struct Live(Arc<AppMetrics>, Kind);

impl Live {
    pub fn new(app: &Arc<AppMetrics>, kind: Kind) -> Self {
        app.gauge(kind).fetch_add(1, Relaxed);
        Self(Arc::clone(app), kind)
    }

    pub fn app(&self) -> &AppMetrics {
        &self.0
    }
}

impl AppMetrics {
    fn gauge(&self, kind: Kind) -> &AtomicI64 {
        match kind {
            Kind::SseStream => &self.sse_streams,
            Kind::WebSocket => &self.websockets,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.gauge(self.1).fetch_sub(1, Relaxed);
    }
}

/// One response on its way out: its duration and bytes are observed when its body ends (or is
/// dropped, when the client leaves).
#[derive(Debug)]
pub struct Timing {
    app: Arc<AppMetrics>,
    started: Instant,
    bytes: u64,
}

impl Timing {
    /// Starts at `started` (the request's arrival); the head is ready now: that is its time to
    /// first byte.
    pub fn head_ready(app: Arc<AppMetrics>, started: Instant) -> Self {
        app.ttfb.observe(started.elapsed().as_micros() as u64);
        Self {
            app,
            started,
            bytes: 0,
        }
    }

    pub fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    pub fn finish(self) {
        self.app
            .duration
            .observe(self.started.elapsed().as_micros() as u64);
        self.app.response_bytes.observe(self.bytes);
    }
}
