//! The dashboard's frames: what the server is doing now, one frame a second. A frame is read
//! from the same counters as `stats()` and the metrics and differenced against the previous
//! one, so rates (requests, bytes, refusals by reason) and the latency quantiles are those of
//! the last interval, not since start.
//!
//! A frame costs the number of series — the rejection reasons, the apps' histogram buckets
//! and the top of the (bounded) offenders table — never the number of connections.

use crate::metrics::{Metrics, Rejection, Snapshot};
use crate::observe::histogram::SECONDS;
use crate::observe::offenders::Offender;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One frame, serialized for the page as camelCase JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Frame {
    /// ms since the Unix epoch.
    pub time: f64,
    /// Seconds since the previous frame (the rates' divisor); 0 for the first one.
    pub interval: f64,
    /// Open TCP connections, event streams and WebSocket sessions now.
    pub connections: i64,
    pub event_streams: i64,
    pub websockets: i64,
    /// Per second over the interval.
    pub connections_per_second: f64,
    pub requests_per_second: f64,
    pub bytes_in_per_second: f64,
    pub bytes_out_per_second: f64,
    /// Refusals per second over the interval, by reason (reasons seen in the interval only).
    pub rejections_per_second: BTreeMap<&'static str, f64>,
    /// Refusals since start, by reason (reasons seen only).
    pub rejections: BTreeMap<&'static str, u64>,
    /// Totals since start.
    pub requests: u64,
    pub connections_accepted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Request duration over the interval, in seconds, all apps together, estimated within
    /// the histogram's buckets (`Buckets::estimate`); `None` when no request ended in it.
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    /// Requests that ended in the interval (the quantiles' population).
    pub latency_count: u64,
    /// The most refused clients (the head of `stats().topOffenders`).
    pub top_offenders: Vec<Offender>,
}

/// The totals of the previous frame.
#[derive(Debug, Clone, Default)]
struct Totals {
    requests: u64,
    connections: u64,
    bytes_in: u64,
    bytes_out: u64,
    rejections: Vec<u64>,
    durations: Vec<u64>,
}

impl Totals {
    /// The totals now; the request durations of the apps mounted at a prefix in `skip` are
    /// left out.
    fn read(metrics: &Metrics, snapshot: &Snapshot, skip: &[String]) -> Self {
        let mut durations = vec![0; SECONDS.bounds.len() + 1];
        for app in metrics
            .apps
            .iter()
            .filter(|app| !skip.contains(&app.prefix))
        {
            for (sum, count) in durations.iter_mut().zip(app.duration.counts()) {
                *sum += count;
            }
        }
        Self {
            requests: snapshot.requests_total,
            connections: snapshot.connections_total,
            bytes_in: snapshot.bytes_received,
            bytes_out: snapshot.bytes_sent,
            // In `Rejection::ALL`'s order, as the snapshot's map is not.
            rejections: Rejection::ALL
                .iter()
                .map(|reason| snapshot.rejections[reason.as_str()])
                .collect(),
            durations,
        }
    }
}

/// Makes frames, remembering the previous one's totals.
#[derive(Debug, Default)]
pub struct Sampler {
    previous: Option<(Instant, Totals)>,
}

impl Sampler {
    /// The next frame, with the `top` most refused clients. The latency leaves out the apps
    /// mounted at a prefix in `skip`: the dashboard's own, whose endless stream would count,
    /// when a viewer leaves, as one request lasting minutes.
    pub fn frame(&mut self, metrics: &Metrics, top: usize, skip: &[String]) -> Frame {
        let now = Instant::now();
        let mut snapshot = metrics.snapshot();
        let totals = Totals::read(metrics, &snapshot, skip);
        let previous = self.previous.replace((now, totals.clone()));
        let (interval, before) = match &previous {
            Some((then, before)) => (now.duration_since(*then).as_secs_f64(), before.clone()),
            // The first frame has no interval: rates 0, quantiles of nothing.
            None => (0.0, totals.clone()),
        };
        let rate = |now: u64, then: u64| {
            if interval > 0.0 {
                now.saturating_sub(then) as f64 / interval
            } else {
                0.0
            }
        };
        let mut rejections_per_second = BTreeMap::new();
        let mut rejections = BTreeMap::new();
        for (index, reason) in Rejection::ALL.iter().enumerate() {
            let (now, then) = (totals.rejections[index], before.rejections[index]);
            if now > then && interval > 0.0 {
                rejections_per_second.insert(reason.as_str(), rate(now, then));
            }
            if now > 0 {
                rejections.insert(reason.as_str(), now);
            }
        }
        let window: Vec<u64> = totals
            .durations
            .iter()
            .zip(&before.durations)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        snapshot.top_offenders.truncate(top);
        Frame {
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_millis() as f64),
            interval,
            connections: snapshot.connections_live,
            event_streams: metrics
                .apps
                .iter()
                .map(|app| app.sse_streams.load(Relaxed))
                .sum(),
            websockets: snapshot.ws_connections,
            connections_per_second: rate(totals.connections, before.connections),
            requests_per_second: rate(totals.requests, before.requests),
            bytes_in_per_second: rate(totals.bytes_in, before.bytes_in),
            bytes_out_per_second: rate(totals.bytes_out, before.bytes_out),
            rejections_per_second,
            rejections,
            requests: totals.requests,
            connections_accepted: totals.connections,
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            latency_p50: SECONDS.estimate(&window, 0.5),
            latency_p99: SECONDS.estimate(&window, 0.99),
            latency_count: window.iter().sum(),
            top_offenders: snapshot.top_offenders,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::app::AppMetrics;
    use crate::observe::reject::Refusal;
    use std::sync::Arc;

    #[test]
    fn rates_and_quantiles_are_those_of_the_interval() {
        let app = AppMetrics::new("/api");
        let dashboard = AppMetrics::new("/_floodgate");
        let metrics = Metrics::new(0, 8, None, vec![Arc::clone(&app), Arc::clone(&dashboard)]);
        let skip = ["/_floodgate".to_string()];
        app.duration.observe(9_000_000); // before the first frame: not in any interval
        let mut sampler = Sampler::default();
        let first = sampler.frame(&metrics, 10, &skip);
        assert_eq!(first.interval, 0.0);
        assert_eq!(first.requests_per_second, 0.0);
        assert_eq!(first.latency_p50, None);

        std::thread::sleep(std::time::Duration::from_millis(20));
        for _ in 0..4 {
            metrics.request();
            app.duration.observe(2_000);
        }
        let client: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            metrics.refuse(Refusal::new(Rejection::ConnectionLimit).client(client));
        }
        metrics.refuse(Refusal::new(Rejection::HeaderTimeout).client(client));
        dashboard.duration.observe(600_000_000); // a dashboard stream ended: left out
        let second = sampler.frame(&metrics, 10, &skip);
        assert!(second.interval > 0.0);
        let per = |n: f64| n / second.interval;
        assert!((second.requests_per_second - per(4.0)).abs() < 1e-9);
        assert!((second.rejections_per_second["connection_limit"] - per(3.0)).abs() < 1e-9);
        assert_eq!(second.rejections_per_second.len(), 2);
        assert_eq!(second.rejections["header_timeout"], 1);
        // All four in (1 ms, 2.5 ms]: interpolated within it.
        assert!((second.latency_p50.unwrap() - 0.00175).abs() < 1e-12);
        assert!((second.latency_p99.unwrap() - 0.002485).abs() < 1e-12);
        assert_eq!(second.latency_count, 4);
        assert_eq!(second.top_offenders.len(), 1);
        assert_eq!(
            second.top_offenders[0].address.as_deref(),
            Some("127.0.0.2")
        );
        assert_eq!(second.top_offenders[0].count, 4);

        let third = sampler.frame(&metrics, 0, &skip);
        assert!(third.rejections_per_second.is_empty());
        assert_eq!(third.rejections["connection_limit"], 3, "totals stay");
        assert_eq!(third.latency_p50, None);
        assert!(third.top_offenders.is_empty());
    }
}
