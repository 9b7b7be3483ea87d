//! A latency histogram of atomics: `prometheus_client`'s own histogram takes a mutex per
//! observation, and the delivery path observes once per delivered recipient.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) of the delivery latency buckets: 5 ms to 1 h, about ×2–2.5 apart, so
/// a healthy site (milliseconds) and a retrying one (minutes) both land in distinct buckets.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// A histogram over fixed bounds whose observations are three atomic increments. Cloning shares it.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus the overflow bucket last.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum of observations in microseconds, so it can be an integer atomic.
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    /// An empty histogram over `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            inner: Arc::new(Inner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                count: AtomicU64::new(0),
                sum_micros: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let i = &self.inner;
        let secs = d.as_secs_f64();
        let bucket = i
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(i.bounds.len());
        i.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        i.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        i.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let i = &self.inner;
        // The encoder accumulates the buckets itself; these are per-bucket counts.
        let buckets: Vec<(f64, u64)> = i
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(i.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // Read after the buckets: a concurrent observation may show in the count but not yet in
        // a bucket, never the other way round (the `+Inf` bucket never exceeds the count).
        let count = i.count.load(Ordering::Relaxed);
        let sum = i.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_fall_in_cumulative_buckets() {
        let h = AtomicHistogram::new(&LATENCY_BUCKETS);
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(7200));
        let mut r = Registry::default();
        r.register("latency_seconds", "test", h.clone());
        let text = crate::telemetry::encode(&r).unwrap();
        assert!(text.contains("# TYPE latency_seconds histogram"), "{text}");
        assert!(text.contains("latency_seconds_count 3\n"), "{text}");
        assert!(text.contains("latency_seconds_sum 7200.01\n"), "{text}");
        assert!(
            text.contains("latency_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"0.01\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"3600.0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
    }
}
