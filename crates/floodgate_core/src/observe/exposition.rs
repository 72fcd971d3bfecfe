//! The metrics as text for a scrape: OpenMetrics from prometheus-client's encoder, or the
//! Prometheus text format (0.0.4: the same lines without OpenMetrics' `# EOF`).
//!
//! A scrape builds a registry holding one collector over the live counters and encodes it:
//! its cost is the number of series (a fixed set, a few per mounted app, and the non-zero
//! rejection counts per app), never the number of connections.

use crate::metrics::{Metrics, Rejection, Snapshot};
use crate::observe::app::AppMetrics;
use crate::observe::histogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// OpenMetrics (`application/openmetrics-text; version=1.0.0`) when `openmetrics`, else the
/// Prometheus text format (`text/plain; version=0.0.4`).
pub fn encode(metrics: Arc<Metrics>, snapshot: Snapshot, openmetrics: bool) -> String {
    let mut registry = Registry::with_prefix("floodgate");
    registry.register_collector(Box::new(Scrape { metrics, snapshot }));
    let mut text = String::with_capacity(16 * 1024);
    let encoded = if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, &registry)
    } else {
        prometheus_client::encoding::text::encode_registry(&mut text, &registry)
    };
    encoded.expect("writing to a String does not fail");
    text
}

struct Scrape {
    metrics: Arc<Metrics>,
    snapshot: Snapshot,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

type Result = std::result::Result<(), std::fmt::Error>;
/// One of an app's histograms, or one of its gauges' values.
type PickHistogram = fn(&AppMetrics) -> &Histogram;
type PickGauge = fn(&AppMetrics) -> i64;

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn histogram(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: &Histogram) -> Result {
    value.encode(encoder.encode_descriptor(name, help, None, MetricType::Histogram)?)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
        let s = &self.snapshot;
        let e = &mut encoder;
        gauge(
            e,
            "connections",
            "Open TCP connections.",
            s.connections_live,
        )?;
        counter(
            e,
            "accepted_connections",
            "Accepted TCP connections.",
            s.connections_total,
        )?;
        counter(e, "requests", "HTTP requests.", s.requests_total)?;
        counter(e, "sent_bytes", "Bytes written to clients.", s.bytes_sent)?;
        counter(
            e,
            "sent_zero_copy_bytes",
            "File bytes the kernel sent itself (sendfile), also in sent_bytes_total.",
            s.bytes_sent_zero_copy,
        )?;
        counter(
            e,
            "received_bytes",
            "Bytes read from clients.",
            s.bytes_received,
        )?;
        gauge(
            e,
            "websockets",
            "Open WebSocket sessions.",
            s.ws_connections,
        )?;
        counter(
            e,
            "websocket_messages_received",
            "WebSocket messages received.",
            s.ws_messages_in,
        )?;
        counter(
            e,
            "websocket_messages_sent",
            "WebSocket messages sent.",
            s.ws_messages_out,
        )?;
        counter(
            e,
            "stale_uploads_removed",
            "Temporary files of interrupted uploads removed at start.",
            s.stale_uploads_removed,
        )?;
        counter(
            e,
            "reject_events_dropped",
            "Rejection events left out by rejectEventsPerSecond.",
            s.reject_events_dropped,
        )?;
        counter(
            e,
            "access_log_lines",
            "Access log lines written (or handed to the accessLog function).",
            s.access_log_lines,
        )?;
        counter(
            e,
            "access_log_dropped",
            "Access log lines dropped: the writer's queue full, past accessLogPerSecond, or a failed write.",
            s.access_log_dropped,
        )?;
        histogram(
            e,
            "websocket_message_bytes",
            "Sizes of WebSocket messages received.",
            &self.metrics.ws_message_bytes,
        )?;
        histogram(
            e,
            "sse_queue_depth",
            "Events queued for an event stream, seen as each event is queued.",
            &self.metrics.sse_queue_depth,
        )?;
        self.encode_apps(e)?;
        if let Some(bans) = &s.bans {
            gauge(
                e,
                "bans",
                "Addresses and users banned now.",
                bans.in_force as i64,
            )?;
        }
        self.encode_cluster(e)?;
        let mut family = e.encode_descriptor(
            "rejections",
            "Clients refused or cut off, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in &s.rejections {
            ConstCounter::new(*count).encode(family.encode_family(&[("reason", *reason)])?)?;
        }
        Ok(())
    }
}

impl Scrape {
    fn encode_apps(&self, e: &mut DescriptorEncoder) -> Result {
        let apps = &self.metrics.apps;
        let histograms: [(&str, &str, PickHistogram); 3] = [
            (
                "request_duration_seconds",
                "Requests from arrival to the end of the response body, by app.",
                |app| &app.duration,
            ),
            (
                "time_to_first_byte_seconds",
                "Requests from arrival to the response head, by app.",
                |app| &app.ttfb,
            ),
            ("response_bytes", "Response body bytes, by app.", |app| {
                &app.response_bytes
            }),
        ];
        for (name, help, pick) in histograms {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for app in apps {
                pick(app).encode(family.encode_family(&[("app", app.prefix.as_str())])?)?;
            }
        }
        let gauges: [(&str, &str, PickGauge); 2] = [
            ("app_event_streams", "Open event streams, by app.", |app| {
                app.sse_streams.load(Relaxed)
            }),
            (
                "app_websockets",
                "Open WebSocket sessions, by app.",
                |app| app.websockets.load(Relaxed),
            ),
        ];
        for (name, help, pick) in gauges {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for app in apps {
                ConstGauge::new(pick(app))
                    .encode(family.encode_family(&[("app", app.prefix.as_str())])?)?;
            }
        }
        let mut family = e.encode_descriptor(
            "app_rejections",
            "Refusals by app and reason (reasons seen only).",
            None,
            MetricType::Counter,
        )?;
        for app in apps {
            for reason in Rejection::ALL {
                let count = app.rejections(reason);
                if count > 0 {
                    let labels = [("app", app.prefix.as_str()), ("reason", reason.as_str())];
                    ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    fn encode_cluster(&self, e: &mut DescriptorEncoder) -> Result {
        let Some(cluster) = &self.snapshot.cluster else {
            return Ok(());
        };
        gauge(
            e,
            "cluster_degraded",
            "1 while Redis fails and limits follow the failure policy.",
            i64::from(cluster.degraded),
        )?;
        gauge(
            e,
            "cluster_leases",
            "Connections holding a cluster-wide lease.",
            cluster.leases as i64,
        )?;
        counter(
            e,
            "cluster_recoveries",
            "Times Redis answered again after failing.",
            cluster.recoveries,
        )?;
        counter(
            e,
            "cluster_events_lost",
            "Events other instances may have missed while Redis failed.",
            cluster.events_lost,
        )?;
        gauge(
            e,
            "cluster_patterns",
            "Topic patterns subscribed in Redis.",
            cluster.patterns as i64,
        )?;
        let mut family = e.encode_descriptor(
            "cluster_fallbacks",
            "Limit decisions made without Redis, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in &cluster.fallbacks {
            ConstCounter::new(*count).encode(family.encode_family(&[("reason", *reason)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::reject::Refusal;

    fn metrics() -> Arc<Metrics> {
        let app = AppMetrics::new("/api");
        let metrics = Arc::new(Metrics::new(0, 0, None, vec![Arc::clone(&app)]));
        metrics.refuse(Refusal::new(Rejection::HeaderTimeout));
        metrics.refuse(Refusal::new(Rejection::RateLimited).app(&app));
        app.duration.observe(1_500);
        app.response_bytes.observe(100);
        metrics.ws_message_bytes.observe(10);
        metrics
    }

    #[test]
    fn openmetrics_has_counters_histograms_and_labelled_rejections() {
        let metrics = metrics();
        let text = encode(Arc::clone(&metrics), metrics.snapshot(), true);
        assert!(
            text.contains("# TYPE floodgate_connections gauge\nfloodgate_connections 0\n"),
            "{text}"
        );
        assert!(text.contains("floodgate_rejections_total{reason=\"header_timeout\"} 1\n"));
        assert!(text.contains("floodgate_rejections_total{reason=\"not_found\"} 0\n"));
        assert!(text
            .contains("floodgate_app_rejections_total{app=\"/api\",reason=\"rate_limited\"} 1\n"));
        assert!(
            text.contains(
                "floodgate_request_duration_seconds_bucket{le=\"0.0025\",app=\"/api\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("floodgate_request_duration_seconds_count{app=\"/api\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("floodgate_response_bytes_sum{app=\"/api\"} 100.0\n"),
            "{text}"
        );
        assert!(
            text.contains("floodgate_websocket_message_bytes_count 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert!(
            !text.contains("floodgate_cluster"),
            "no cluster, no cluster lines"
        );
        let prometheus = encode(Arc::clone(&metrics), metrics.snapshot(), false);
        assert!(!prometheus.contains("# EOF"));
        assert_eq!(prometheus, text.trim_end_matches("# EOF\n"));
    }

    #[test]
    fn the_cluster_state_when_there_is_one() {
        let health = crate::cluster::health::Health::default();
        health.failed();
        health.fell_back(crate::cluster::health::Failure::Timeout);
        let metrics = Arc::new(Metrics::default());
        let mut snapshot = metrics.snapshot();
        snapshot.cluster = Some(health.snapshot(7));
        let text = encode(metrics, snapshot, true);
        assert!(text.contains("floodgate_cluster_degraded 1\n"), "{text}");
        assert!(text.contains("floodgate_cluster_leases 7\n"), "{text}");
        assert!(text.contains("floodgate_cluster_fallbacks_total{reason=\"timeout\"} 1\n"));
        assert!(text.contains("floodgate_cluster_fallbacks_total{reason=\"degraded\"} 0\n"));
    }
}
