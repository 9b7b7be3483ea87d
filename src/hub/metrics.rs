//! Counters a hub serves at `/metrics`, kept as atomics so the delivery path never locks for them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters since the hub started.
#[derive(Debug, Default)]
pub struct HubMetrics {
    received: AtomicU64,
    delivered: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    dsn: AtomicU64,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Messages accepted (250 after DATA).
    pub received: u64,
    /// Recipient deliveries the nodes accepted.
    pub delivered: u64,
    /// Recipient attempts that failed temporarily.
    pub deferred: u64,
    /// Recipients that failed permanently or expired.
    pub failed: u64,
    /// Delivery status notifications queued.
    pub dsn: u64,
}

impl HubMetrics {
    /// One message accepted.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
    /// One recipient delivered.
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    /// One recipient deferred.
    pub fn deferred(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }
    /// One recipient failed for good.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    /// One DSN queued.
    pub fn dsn(&self) {
        self.dsn.fetch_add(1, Ordering::Relaxed);
    }
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dsn: self.dsn.load(Ordering::Relaxed),
        }
    }
}
