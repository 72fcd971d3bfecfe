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

    /// The count of each bucket (the last one is +Inf), read once each.
    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|count| count.load(Relaxed))
            .collect()
    }

    /// The value under which `quantile` of the observations fall, as a bucket bound in the
    /// exposed unit: `None` before any observation.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        self.buckets.quantile(&self.counts(), quantile)
    }
}

impl Buckets {
    /// The bound under which `quantile` of the observations counted in `counts` (one per
    /// bucket, as [`Histogram::counts`], or the difference of two such readings: the
    /// dashboard's p50 / p99 of the last second) fall, in the exposed unit. Observations past
    /// the last bound report that bound. `None` when `counts` holds none.
    pub fn quantile(&self, counts: &[u64], quantile: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (quantile * total as f64).ceil().max(1.0) as u64;
        let last = *self.bounds.last().expect("bounds");
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bound = self.bounds.get(index).copied().unwrap_or(last);
                return Some(bound as f64 * self.scale);
            }
        }
        None
    }

    /// `quantile` of the observations counted in `counts`, estimated as Prometheus's
    /// `histogram_quantile` does: linearly within the bucket it falls in (from the bucket below's
    /// bound, 0 for the first), in the exposed unit. Past the last bound it reports that bound.
    /// The dashboard's p50 / p99, which would otherwise jump between bounds 2.5× apart.
    pub fn estimate(&self, counts: &[u64], quantile: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = quantile.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (index, count) in counts.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let Some(upper) = self.bounds.get(index) else {
                    break; // the +Inf bucket
                };
                let lower = index.checked_sub(1).map_or(0, |i| self.bounds[i]);
                let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
                let value = lower as f64 + (*upper - lower) as f64 * within;
                return Some(value * self.scale);
            }
            below += count;
        }
        self.bounds.last().map(|last| *last as f64 * self.scale)
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

    #[test]
    fn quantiles_of_the_difference_of_two_readings() {
        let histogram = Histogram::new(&SECONDS);
        histogram.observe(100_000);
        let before = histogram.counts();
        for value in [300, 400, 2_000, 2_000_000] {
            histogram.observe(value);
        }
        let window: Vec<u64> = histogram
            .counts()
            .iter()
            .zip(&before)
            .map(|(now, then)| now - then)
            .collect();
        assert_eq!(SECONDS.quantile(&window, 0.5), Some(0.0005));
        assert_eq!(SECONDS.quantile(&window, 0.99), Some(2.5));
        assert_eq!(SECONDS.quantile(&vec![0; window.len()], 0.5), None);
    }

    #[test]
    fn estimates_interpolate_within_the_bucket_as_prometheus_does() {
        let histogram = Histogram::new(&SECONDS);
        // Four in (5 ms, 10 ms], none elsewhere: the median half-way through that bucket.
        for _ in 0..4 {
            histogram.observe(8_000);
        }
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
        assert!(close(SECONDS.estimate(&histogram.counts(), 0.5), 0.0075));
        assert!(close(SECONDS.estimate(&histogram.counts(), 1.0), 0.010));
        // The first bucket starts at 0; past the last bound, the last bound.
        histogram.observe(100);
        histogram.observe(90_000_000);
        assert!(close(SECONDS.estimate(&histogram.counts(), 0.0), 0.0));
        assert!(close(SECONDS.estimate(&histogram.counts(), 0.99), 60.0));
        assert_eq!(SECONDS.estimate(&[0; 17], 0.5), None);
    }
}
