//! What a hub's admin API answers and takes: dumpster statistics, resubmission requests, the queue
//! summary.

use serde::{Deserialize, Serialize};
use store::hub::ResubmitFilter;

/// One hub's dumpster statistics for one storage group (`GET /api/dumpster`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HubDumpsterStats {
    /// The hub.
    pub hub: String,
    /// The storage group.
    pub storage_group: String,
    /// Hub receive time of the oldest entry (RFC 3339), as Exchange reports it.
    pub oldest: Option<String>,
    /// Delivery time of the oldest entry.
    pub oldest_delivered: Option<String>,
    /// Entries held.
    pub items: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Entries evicted by MaxDumpsterSizePerStorageGroup.
    pub evicted: u64,
    /// Entries removed by MaxDumpsterTime.
    pub expired: u64,
    /// Messages larger than the bound, never kept.
    pub too_large: u64,
}

/// Query of `GET /api/dumpster`.
#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    /// One storage group; all of the site's when absent.
    pub storage_group: Option<String>,
}

/// Body of `POST /api/resubmit`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResubmitBody {
    /// Request id: the same id again redelivers nothing more.
    pub id: String,
    /// The storage group.
    pub storage_group: String,
    /// Window start (RFC 3339) on the hub's delivery clock. A mailbox node sends a time the hub
    /// stamped itself, less the margin, or the epoch for the whole dumpster
    /// (`crate::clock::window`), never one of its own clock.
    pub low: String,
    /// Window end (RFC 3339); absent: the hub's own now, plus the margin, when it first records
    /// the request (what a mailbox node asks for, so no bound rests on the node's clock). Given,
    /// as an operator or a node of the previous release sends it, it must not be before `low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<String>,
    /// Only entries delivered to this recipient, redelivered to it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Only entries from this sender (`""`: the null sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Only entries with this Message-ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Count what would be redelivered, queue nothing.
    #[serde(default)]
    pub test_only: bool,
    /// The epoch of the mailbox node asking (a node's request after a failover): from then on the
    /// hub delivers again whatever an older epoch of that CMS acknowledges late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A resubmission request's state, as the API reports it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResubmitState {
    /// The hub.
    pub hub: String,
    /// The request id.
    pub id: String,
    /// The storage group.
    pub storage_group: String,
    /// Window start.
    pub low: String,
    /// Window end.
    pub high: String,
    /// The request's filters and test-only flag.
    #[serde(default)]
    pub filter: ResubmitFilter,
    /// Whether every entry of the window has been queued (or counted).
    pub done: bool,
    /// Entries queued again (test-only: that would be) so far.
    pub messages: u64,
}

/// Queue summary (`GET /api/queue`).
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueSummary {
    /// The hub.
    pub hub: String,
    /// Messages waiting for at least one recipient.
    pub messages: usize,
    /// Seconds since the hub received the oldest of them (null when the queue is empty).
    #[serde(default)]
    pub oldest_age_seconds: Option<u64>,
}
