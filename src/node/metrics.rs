//! A mailbox node's Prometheus metrics (`GET /metrics`).
//!
//! Events (mail stored, a duplicate dropped, a failover, a move) bump counters as they happen; the
//! per-storage-group counters are created for every storage group at start, so the delivery path
//! increments an atomic and never takes the family's lock. Replication state (role, epoch, log
//! generations, queues, copy status) is what `GET /api/status` reports, set from that same report
//! at scrape time so the two never disagree.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use chrono::DateTime;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::space::Reading;
use crate::telemetry::disk::DiskGauges;
use crate::telemetry::{self, seconds, SgLabels};
use crate::wire::cluster::NodeStatus;
use crate::wire::cluster::SummaryCopyStatus;

/// Every SummaryCopyStatus, so the status gauge reports 0 for the states a copy is not in.
const COPY_STATUSES: [SummaryCopyStatus; 8] = [
    SummaryCopyStatus::Healthy,
    SummaryCopyStatus::Initializing,
    SummaryCopyStatus::Synchronizing,
    SummaryCopyStatus::Suspended,
    SummaryCopyStatus::Failed,
    SummaryCopyStatus::ServiceDown,
    SummaryCopyStatus::Seeding,
    SummaryCopyStatus::FailedAndSuspended,
];

/// Labels of the copy status gauge: one series per storage group and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CopyStatusLabels {
    /// The storage group.
    pub storage_group: String,
    /// A SummaryCopyStatus (`Healthy`, `Suspended`, …).
    pub status: String,
}

/// Labels of the failover counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailoverLabels {
    /// `lossy` (logs known lost, within AutoDatabaseMountDial) or `lossless` (none known lost;
    /// the hubs are asked to resubmit all the same).
    pub kind: &'static str,
}

/// Labels of the AUTH refusal counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthLabels {
    /// `missing` (MAIL without AUTH) or `invalid` (a wrong answer).
    pub reason: &'static str,
}

/// The per-storage-group counters of the delivery path.
#[derive(Debug, Clone)]
struct SgCounters {
    stored: Counter,
    duplicates: Counter,
    truncated: Counter,
}

/// Every metric of one node, in a registry labelled `node="<name>"`, `cms="<cms>"`.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    per_sg: BTreeMap<String, SgCounters>,
    lossy: Counter,
    lossless: Counter,
    moves: Counter,
    auth_missing: Counter,
    auth_invalid: Counter,
    auth_certificate: Counter,
    active: Gauge,
    epoch: Gauge,
    last_generated: Family<SgLabels, Gauge>,
    last_copied: Family<SgLabels, Gauge>,
    last_replayed: Family<SgLabels, Gauge>,
    copy_queue: Family<SgLabels, Gauge>,
    replay_queue: Family<SgLabels, Gauge>,
    since_replayed: Family<SgLabels, Gauge<f64, AtomicU64>>,
    behind: Family<SgLabels, Gauge<f64, AtomicU64>>,
    copy_status: Family<CopyStatusLabels, Gauge>,
    disk: DiskGauges,
    /// One scrape at a time: a scrape sets the state gauges and then encodes them.
    scrape: Mutex<()>,
}

impl NodeMetrics {
    /// The metrics of node `node` of CMS `cms`, with counters for each of `storage_groups`.
    pub fn new(node: &str, cms: &str, storage_groups: &[String]) -> NodeMetrics {
        let stored: Family<SgLabels, Counter> = Family::default();
        let duplicates: Family<SgLabels, Counter> = Family::default();
        let truncated: Family<SgLabels, Counter> = Family::default();
        let failovers: Family<FailoverLabels, Counter> = Family::default();
        let auth_refused: Family<AuthLabels, Counter> = Family::default();
        let per_sg = storage_groups
            .iter()
            .map(|sg| {
                let l = SgLabels::new(sg);
                let c = SgCounters {
                    stored: stored.get_or_create_owned(&l),
                    duplicates: duplicates.get_or_create_owned(&l),
                    truncated: truncated.get_or_create_owned(&l),
                };
                (sg.clone(), c)
            })
            .collect();
        let mut m = NodeMetrics {
            registry: telemetry::registry(&[("node", node), ("cms", cms)]),
            per_sg,
            lossy: failovers.get_or_create_owned(&FailoverLabels { kind: "lossy" }),
            lossless: failovers.get_or_create_owned(&FailoverLabels { kind: "lossless" }),
            moves: Counter::default(),
            auth_missing: auth_refused.get_or_create_owned(&AuthLabels { reason: "missing" }),
            auth_invalid: auth_refused.get_or_create_owned(&AuthLabels { reason: "invalid" }),
            auth_certificate: auth_refused.get_or_create_owned(&AuthLabels {
                reason: "certificate",
            }),
            active: Gauge::default(),
            epoch: Gauge::default(),
            last_generated: Family::default(),
            last_copied: Family::default(),
            last_replayed: Family::default(),
            copy_queue: Family::default(),
            replay_queue: Family::default(),
            since_replayed: Family::default(),
            behind: Family::default(),
            copy_status: Family::default(),
            disk: DiskGauges::default(),
            scrape: Mutex::new(()),
        };
        m.disk = DiskGauges::register(&mut m.registry);
        let r = &mut m.registry;
        r.register(
            "messages_stored",
            "Mailbox copies stored by deliveries to this node (one per recipient and message)",
            stored,
        );
        r.register(
            "duplicates_dropped",
            "Mailbox copies not stored because the mailbox holds the same Message-ID and content",
            duplicates,
        );
        r.register(
            "log_truncated_bytes",
            "Bytes of log generations this node deleted behind its checkpoint (and the copy's)",
            truncated,
        );
        r.register(
            "failovers",
            "Automatic failovers that mounted the databases on this node, by whether logs were known lost",
            failovers,
        );
        r.register(
            "moves",
            "Scheduled moves (and handovers at shutdown) away from this node",
            m.moves.clone(),
        );
        r.register(
            "smtp_auth_refused",
            "SMTP clients refused by this node before MAIL: without AUTH (reason missing: not one of the site's hubs), with a wrong answer (reason invalid: a wrong delivery secret), or at STARTTLS without a certificate from the site's CA (reason certificate, delivery_tls = \"mutual\")",
            auth_refused,
        );
        r.register(
            "node_active",
            "1 while this node holds the databases and takes deliveries, else 0",
            m.active.clone(),
        );
        r.register(
            "node_epoch",
            "The node's cluster epoch (bumped at every mount)",
            m.epoch.clone(),
        );
        r.register(
            "last_log_generated",
            "LastLogGenerated per storage group (the active node's, as this node knows it)",
            m.last_generated.clone(),
        );
        r.register(
            "last_log_copied",
            "LastLogCopied of this node's passive copy",
            m.last_copied.clone(),
        );
        r.register(
            "last_log_replayed",
            "LastLogReplayed of this node's passive copy",
            m.last_replayed.clone(),
        );
        r.register(
            "copy_queue_length",
            "CopyQueueLength of this node's passive copy: generations generated but not copied",
            m.copy_queue.clone(),
        );
        r.register(
            "replay_queue_length",
            "ReplayQueueLength of this node's passive copy: generations copied but not replayed",
            m.replay_queue.clone(),
        );
        r.register(
            "seconds_since_last_replayed",
            "Seconds since the newest record this node's store holds (replayed or, on the active, written) was logged",
            m.since_replayed.clone(),
        );
        r.register(
            "copy_behind_seconds",
            "How long this node's passive copy has been behind (0 while Healthy): the dumpster must reach back this far",
            m.behind.clone(),
        );
        r.register(
            "copy_status",
            "SummaryCopyStatus of this node's passive copy: 1 for the status it is in, 0 for the others",
            m.copy_status.clone(),
        );
        m
    }

    /// Log generations of `sg` holding `bytes` were deleted behind the checkpoint.
    pub fn log_truncated(&self, sg: &str, bytes: u64) {
        if let Some(c) = self.per_sg.get(sg) {
            c.truncated.inc_by(bytes);
        }
    }

    /// A delivery to storage group `sg` stored `stored` mailbox copies and dropped `duplicates`.
    pub fn delivered(&self, sg: &str, stored: usize, duplicates: usize) {
        if let Some(c) = self.per_sg.get(sg) {
            c.stored.inc_by(stored as u64);
            c.duplicates.inc_by(duplicates as u64);
        }
    }

    /// The databases were mounted here after a failover.
    pub fn failover(&self, logs_lost: bool) {
        if logs_lost {
            self.lossy.inc();
        } else {
            self.lossless.inc();
        }
    }

    /// An SMTP client was refused for want of AUTH (`missing`), a wrong answer (`invalid`) or
    /// a certificate from the site's CA (`certificate`).
    pub fn auth_refused(&self, reason: &str) {
        match reason {
            "missing" => self.auth_missing.inc(),
            "certificate" => self.auth_certificate.inc(),
            _ => self.auth_invalid.inc(),
        };
    }

    /// A scheduled move away from this node completed.
    pub fn moved(&self) {
        self.moves.inc();
    }

    /// The OpenMetrics text: the counters as they are, the replication state from `status`
    /// (read at `now_ms`).
    pub fn encode(
        &self,
        status: &NodeStatus,
        disk: &[Reading],
        now_ms: u64,
    ) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.active.set(i64::from(status.mounted));
        self.epoch.set(int(status.epoch));
        // Cleared first: a copy's series disappear when the node becomes active, and back.
        self.last_generated.clear();
        self.last_copied.clear();
        self.last_replayed.clear();
        self.copy_queue.clear();
        self.replay_queue.clear();
        self.since_replayed.clear();
        self.behind.clear();
        self.copy_status.clear();
        let age = |rfc3339: &Option<String>| {
            rfc3339
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| seconds(now_ms.saturating_sub(t.timestamp_millis().max(0) as u64)))
        };
        for g in &status.storage_groups {
            let l = SgLabels::new(&g.name);
            self.last_generated
                .get_or_create(&l)
                .set(int(g.last_log_generated));
            for (family, value) in [
                (&self.last_copied, g.last_log_copied),
                (&self.last_replayed, g.last_log_replayed),
                (&self.copy_queue, g.copy_queue_length),
                (&self.replay_queue, g.replay_queue_length),
            ] {
                if let Some(v) = value {
                    family.get_or_create(&l).set(int(v));
                }
            }
            if let Some(s) = age(&g.newest_replayed) {
                self.since_replayed.get_or_create(&l).set(s);
            }
            if let Some(current) = g.summary_copy_status {
                self.behind
                    .get_or_create(&l)
                    .set(age(&g.behind_since).unwrap_or(0.0));
                for s in COPY_STATUSES {
                    let labels = CopyStatusLabels {
                        storage_group: g.name.clone(),
                        status: format!("{s:?}"),
                    };
                    self.copy_status
                        .get_or_create(&labels)
                        .set(i64::from(s == current));
                }
            }
        }
        self.disk.set(disk);
        telemetry::encode(&self.registry)
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
