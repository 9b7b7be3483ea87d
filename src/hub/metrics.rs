//! A hub's Prometheus metrics (`GET /metrics`).
//!
//! Events (a message received, a recipient delivered, …) bump counters the moment they happen;
//! they are atomics, so the delivery path never locks for them. What is the store's state (queue
//! depth and age, the dumpster per storage group) is read from the store at scrape time by the
//! admin handler and set here just before encoding, so it can never drift from the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use store::hub::{DumpsterStats, Millis};
use store::SegmentUsage;

use crate::space::Reading;
use crate::telemetry::disk::DiskGauges;
use crate::telemetry::histogram::{AtomicHistogram, LATENCY_BUCKETS};
use crate::telemetry::{self, seconds, SgLabels};

/// The store's state a scrape reports, read by the caller.
#[derive(Debug, Clone, Default)]
pub struct HubState {
    /// When it was read (ms since the epoch).
    pub now_ms: Millis,
    /// Messages in the delivery queue.
    pub queue_messages: u64,
    /// Hub receive time of the oldest queued message.
    pub oldest_queued_ms: Option<Millis>,
    /// Dumpster statistics per storage group of the site.
    pub dumpster: Vec<(String, DumpsterStats)>,
    /// Free space where the store is.
    pub disk: Vec<Reading>,
    /// The body segments on disk.
    pub bodies: SegmentUsage,
}

/// Every metric of one hub, in a registry labelled `hub="<name>"`.
#[derive(Debug)]
pub struct HubMetrics {
    registry: Registry,
    received: Counter,
    delivered: Counter,
    deferred: Counter,
    failed: Counter,
    dsn: Counter,
    resubmitted: Counter,
    in_flow_delayed: Counter,
    latency: AtomicHistogram,
    queue_messages: Gauge,
    queue_oldest_age: Gauge<f64, AtomicU64>,
    dumpster_items: Family<SgLabels, Gauge>,
    dumpster_bytes: Family<SgLabels, Gauge>,
    dumpster_coverage: Family<SgLabels, Gauge<f64, AtomicU64>>,
    dumpster_evictions: Family<SgLabels, Counter>,
    dumpster_expired: Family<SgLabels, Counter>,
    dumpster_too_large: Family<SgLabels, Counter>,
    disk: DiskGauges,
    body_bytes: Gauge,
    body_live_bytes: Gauge,
    /// One scrape at a time: a scrape sets the state gauges and then encodes them.
    scrape: Mutex<()>,
}

impl HubMetrics {
    /// The metrics of hub `hub`, all at zero.
    pub fn new(hub: &str) -> HubMetrics {
        let mut m = HubMetrics {
            registry: telemetry::registry(&[("hub", hub)]),
            received: Counter::default(),
            delivered: Counter::default(),
            deferred: Counter::default(),
            failed: Counter::default(),
            dsn: Counter::default(),
            resubmitted: Counter::default(),
            in_flow_delayed: Counter::default(),
            latency: AtomicHistogram::new(&LATENCY_BUCKETS),
            queue_messages: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            dumpster_items: Family::default(),
            dumpster_bytes: Family::default(),
            dumpster_coverage: Family::default(),
            dumpster_evictions: Family::default(),
            dumpster_expired: Family::default(),
            dumpster_too_large: Family::default(),
            disk: DiskGauges::default(),
            body_bytes: Gauge::default(),
            body_live_bytes: Gauge::default(),
            scrape: Mutex::new(()),
        };
        m.disk = DiskGauges::register(&mut m.registry);
        let r = &mut m.registry;
        r.register(
            "messages_received",
            "Messages accepted with 250 (DSNs this hub generated included)",
            m.received.clone(),
        );
        r.register(
            "body_segment_bytes",
            "Bytes of the body segment files (queued and dumpster bodies, and space not yet given back)",
            m.body_bytes.clone(),
        );
        r.register(
            "body_live_bytes",
            "Bytes of those segments that queued messages or dumpster entries still use",
            m.body_live_bytes.clone(),
        );
        r.register(
            "in_flow_delayed",
            "Messages whose acceptance waited for a delivery to end (in_flow_delay: intake slowed to the delivery rate)",
            m.in_flow_delayed.clone(),
        );
        r.register(
            "recipients_delivered",
            "Recipient deliveries a mailbox node accepted",
            m.delivered.clone(),
        );
        r.register(
            "recipients_deferred",
            "Recipient delivery attempts that failed temporarily (retried)",
            m.deferred.clone(),
        );
        r.register(
            "recipients_failed",
            "Recipients that failed permanently or expired",
            m.failed.clone(),
        );
        r.register(
            "dsn",
            "Delivery status notifications queued for senders",
            m.dsn.clone(),
        );
        r.register(
            "resubmitted_entries",
            "Dumpster entries put back in the queue by resubmission requests",
            m.resubmitted.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "Hub receive to mailbox node acceptance, per delivered recipient (resubmitted copies excluded)",
            m.latency.clone(),
        );
        r.register(
            "queue_messages",
            "Messages in the delivery queue",
            m.queue_messages.clone(),
        );
        r.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued message by hub receive time (0 when the queue is empty)",
            m.queue_oldest_age.clone(),
        );
        r.register(
            "dumpster_items",
            "Dumpster entries per storage group",
            m.dumpster_items.clone(),
        );
        r.register(
            "dumpster_bytes",
            "Dumpster bytes per storage group",
            m.dumpster_bytes.clone(),
        );
        r.register(
            "dumpster_coverage_seconds",
            "How far back the dumpster reaches: now minus the hub receive time of its oldest entry (0 when empty)",
            m.dumpster_coverage.clone(),
        );
        r.register(
            "dumpster_evictions",
            "Dumpster entries evicted by max_dumpster_size_per_storage_group",
            m.dumpster_evictions.clone(),
        );
        r.register(
            "dumpster_expired",
            "Dumpster entries removed by max_dumpster_time",
            m.dumpster_expired.clone(),
        );
        r.register(
            "dumpster_too_large",
            "Messages larger than the dumpster bound, never kept (no failover protection)",
            m.dumpster_too_large.clone(),
        );
        m
    }

    /// One message accepted.
    pub fn received(&self) {
        self.received.inc();
    }
    /// One message's acceptance waited for a delivery (in_flow_delay).
    pub fn in_flow_delayed(&self) {
        self.in_flow_delayed.inc();
    }
    /// One recipient delivered.
    pub fn delivered(&self) {
        self.delivered.inc();
    }
    /// One recipient deferred.
    pub fn deferred(&self) {
        self.deferred.inc();
    }
    /// One recipient failed for good.
    pub fn failed(&self) {
        self.failed.inc();
    }
    /// One DSN queued.
    pub fn dsn(&self) {
        self.dsn.inc();
    }
    /// `n` dumpster entries queued again for a resubmission request.
    pub fn resubmitted(&self, n: usize) {
        self.resubmitted.inc_by(n as u64);
    }
    /// How long a recipient took from hub receipt to the node's 250.
    pub fn latency(&self, d: Duration) {
        self.latency.observe(d);
    }

    /// The OpenMetrics text: the counters as they are, the state gauges from `state`.
    pub fn encode(&self, state: &HubState) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.queue_messages
            .set(i64::try_from(state.queue_messages).unwrap_or(i64::MAX));
        self.queue_oldest_age.set(
            state
                .oldest_queued_ms
                .map_or(0.0, |t| seconds(state.now_ms.saturating_sub(t))),
        );
        // Cleared first, so a storage group removed from the site file stops being reported.
        self.dumpster_items.clear();
        self.dumpster_bytes.clear();
        self.dumpster_coverage.clear();
        self.dumpster_evictions.clear();
        self.dumpster_expired.clear();
        self.dumpster_too_large.clear();
        for (sg, s) in &state.dumpster {
            let l = SgLabels::new(sg);
            let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.dumpster_items.get_or_create(&l).set(int(s.items));
            self.dumpster_bytes.get_or_create(&l).set(int(s.bytes));
            self.dumpster_coverage.get_or_create(&l).set(
                s.oldest_received_ms
                    .map_or(0.0, |t| seconds(state.now_ms.saturating_sub(t))),
            );
            // The store keeps these counts (they survive restarts); the counters mirror them.
            for (f, v) in [
                (&self.dumpster_evictions, s.evicted),
                (&self.dumpster_expired, s.expired),
                (&self.dumpster_too_large, s.too_large),
            ] {
                f.get_or_create(&l).inner().store(v, Ordering::Relaxed);
            }
        }
        self.disk.set(&state.disk);
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.body_bytes.set(int(state.bodies.bytes));
        self.body_live_bytes.set(int(state.bodies.live));
        telemetry::encode(&self.registry)
    }
}
