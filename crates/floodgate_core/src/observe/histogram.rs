//! A histogram of integer observations (µs, bytes, queue lengths) on relaxed atomics: three
//! `fetch_add`s per observation and no lock, so it can sit on every request. prometheus-client's
//! own `Histogram` takes a lock per observation; this one is encoded through the same crate
//! (`EncodeMetric`), so only the recording is ours.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (inclusive) in the unit observed, and the factor to the exposed unit.
#[derive(Debug)]
pub struct Buckets {
    pub bounds: &'static [u64],
    /// Exposed value = observed × `scale` (µs → seconds: 1e-6).
    pub scale: f64,
}

/// Request durations and times to first byte, in µs (exposed in seconds).
pub const SECONDS: Buckets = Buckets {
    bounds: &[
        250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000, 60_000_000,
    ],
    scale: 1e-6,
};

/// Response bodies and WebSocket messages, in bytes.
pub const BYTES: Buckets = Buckets {
    bounds: &[
        64,
        256,
        1 << 10,
        4 << 10,
        16 << 10,
        64 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
        16 << 20,
        64 << 20,
        256 << 20,
        1 << 30,
    ],
    scale: 1.0,
};

/// Queue lengths, in events.
pub const DEPTH: Buckets = Buckets {
    bounds: &[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096],
    scale: 1.0,
};

#[derive(Debug)]
pub struct Histogram {
    buckets: &'static Buckets,
    /// One per bound, and the last for +Inf.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(buckets: &'static Buckets) -> Self {
        Self {
            buckets,
            counts: (0..=buckets.bounds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let index = self.buckets.bounds.partition_point(|bound| *bound < value);
        self.counts[index].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|count| count.load(Relaxed)).sum()
    }

    /// The value under which `quantile` of the observations fall, as a bucket bound in the
    /// exposed unit (the dashboard's p50 / p99): `None` before any observation.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (quantile * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bound = self.buckets.bounds.get(index).copied();
                let last = *self.buckets.bounds.last().expect("bounds");
                return Some(bound.unwrap_or(last) as f64 * self.buckets.scale);
            }
        }
        None
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Counts are read once each; a scrape racing observations may see a sum a few
        // observations ahead of the buckets, as with any lock-free histogram.
        let mut count = 0;
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(index, bucket)| {
                let n = bucket.load(Relaxed);
                count += n;
                let bound = self
                    .buckets
                    .bounds
                    .get(index)
                    .map_or(f64::INFINITY, |b| *b as f64 * self.buckets.scale);
                (bound, n)
            })
            .collect();
        let sum = self.sum.load(Relaxed) as f64 * self.buckets.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_pass() {
        let histogram = Histogram::new(&DEPTH);
        for value in [0, 1, 3, 4, 5000] {
            histogram.observe(value);
        }
        assert_eq!(histogram.count(), 5);
        assert_eq!(histogram.quantile(0.2), Some(0.0));
        assert_eq!(histogram.quantile(0.6), Some(4.0));
        assert_eq!(histogram.quantile(1.0), Some(4096.0));
        assert_eq!(Histogram::new(&SECONDS).quantile(0.5), None);
    }
}
