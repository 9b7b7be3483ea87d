//! What a node's cluster routes answer and take, and what `status` shows per CMS: node and copy
//! status (Get-ClusteredMailboxServerStatus, Get-StorageGroupCopyStatus), copy commands, moves and
//! the outstanding dumpster requests.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// SummaryCopyStatus, as Get-StorageGroupCopyStatus reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SummaryCopyStatus {
    /// Copying and replaying normally.
    Healthy,
    /// Not yet in contact with the active node.
    Initializing,
    /// Catching up (logs to copy).
    Synchronizing,
    /// Suspended by the administrator.
    Suspended,
    /// A log was refused; replication stopped at it.
    Failed,
    /// The active node does not answer.
    ServiceDown,
    /// Being reseeded from a snapshot of the active node's database (`copy update`).
    Seeding,
    /// The active node no longer keeps the logs this copy needs (it fell further behind than
    /// `max_log_backlog`, or its store lost them): replication stopped until `copy update`.
    FailedAndSuspended,
}

/// One storage group's replication counters (Get-StorageGroupCopyStatus).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SgCopyStatus {
    /// The storage group.
    pub name: String,
    /// LastLogGenerated (the active's).
    pub last_log_generated: u64,
    /// LastLogCopied (this copy's; null on the active).
    pub last_log_copied: Option<u64>,
    /// LastLogReplayed (this copy's; null on the active).
    pub last_log_replayed: Option<u64>,
    /// CopyQueueLength = generated − copied.
    pub copy_queue_length: Option<u64>,
    /// ReplayQueueLength = copied − replayed.
    pub replay_queue_length: Option<u64>,
    /// SummaryCopyStatus of this copy (null on the active).
    pub summary_copy_status: Option<SummaryCopyStatus>,
    /// Why the copy failed, if it did.
    pub error: Option<String>,
    /// Hub receive-time horizon: the newest record replayed here (RFC 3339).
    pub newest_replayed: Option<String>,
    /// Since when this copy has been behind (RFC 3339; null when Healthy, and on the active): the
    /// later of when it stopped being Healthy and its newest replayed record, since everything
    /// written after that may be missing here. `health` warns when it is older than
    /// max_dumpster_time.
    #[serde(default)]
    pub behind_since: Option<String>,
    /// The administrator's last copy command on this storage group, with its comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_command: Option<CopyCommandView>,
    /// Resubmission requests for this storage group that a hub answered with an error: the
    /// mail only that hub's dumpster holds is not redelivered until it accepts (`health` FAILs).
    #[serde(default)]
    pub resubmission_errors: Vec<ResubmissionError>,
    /// A reseed from the active's snapshot under way on this copy, with its progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedProgress>,
}

/// How far a reseed (`copy update`) has come: a snapshot of the active's database, then its logs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeedProgress {
    /// Records of the snapshot installed so far.
    pub records: u64,
    /// Records the snapshot holds.
    pub records_total: u64,
    /// Bytes of the snapshot received so far.
    pub bytes: u64,
    /// Milliseconds since the reseed started.
    pub elapsed_ms: u64,
    /// Bytes per second so far.
    pub bytes_per_s: u64,
    /// Seconds left at the rate so far (by records), once there is a rate.
    pub eta_s: Option<u64>,
    /// The snapshot is installed (the copy then copies the logs after it as usual).
    #[serde(default)]
    pub done: bool,
}

/// A resubmission request a hub refused, as `status` and `health` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResubmissionError {
    /// The hub that refused.
    pub hub: String,
    /// The request id.
    pub request: String,
    /// The node that made the request and asks again.
    pub node: String,
    /// The hub's answer: HTTP status and reason.
    pub error: String,
    /// Since when it refuses (RFC 3339, the node's clock; shown only).
    pub since: String,
}

/// A copy command as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopyCommandView {
    /// "suspend", "resume", "update" or "restore".
    pub command: String,
    /// The administrator's comment.
    pub comment: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    /// Whether the copy is still suspended by it.
    pub suspended: bool,
    /// The node it was given to.
    pub node: String,
}

/// Body of `POST /api/copy/:sg/:command` (optional).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyBody {
    /// Why, kept with the copy and shown by `status`.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A node's view of its CMS (`GET /api/status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node: String,
    /// Its CMS.
    pub cms: String,
    /// "Active", "Passive" or "Dismounted".
    pub role: String,
    /// Why it is dismounted.
    pub reason: Option<String>,
    /// Whether it takes deliveries now.
    pub mounted: bool,
    /// Its epoch.
    pub epoch: u64,
    /// Whether it sees the other node.
    pub sees_peer: bool,
    /// Whether the witness answered its last operation.
    pub witness_ok: bool,
    /// Who holds the witness lease, as last seen.
    pub lease_holder: Option<String>,
    /// Per storage group counters.
    pub storage_groups: Vec<SgCopyStatus>,
}

/// One dumpster request not completed yet (`GET /api/outstanding`). Its bounds are on the hub's
/// clock: as the hub recorded them once it answered, before that as asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutstandingView {
    /// The hub that has not completed it.
    pub hub: String,
    /// The storage group.
    pub storage_group: String,
    /// Window start (the epoch: the start of the hub's dumpster).
    pub low: String,
    /// Window end (null: the hub's now when it records the request, not known yet).
    pub high: Option<String>,
    /// The hub's error answer, while it refuses the request (then it is not outstanding but
    /// refused: `stats`, `status` and `health` show it as such).
    #[serde(default)]
    pub error: Option<String>,
}

/// Body of `POST /api/cluster/move`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The target node (the other node; checked).
    pub target: Option<String>,
    /// Why, for the log.
    pub comment: Option<String>,
}

/// Answer of a scheduled move.
#[derive(Debug, Serialize, Deserialize)]
pub struct MoveResult {
    /// The node that was active.
    pub from: String,
    /// The node that is active now.
    pub to: String,
    /// Generations closed and shipped, per storage group.
    pub last_closed: BTreeMap<String, u64>,
    /// How long it took.
    pub millis: u64,
}

/// `status --json`, per CMS.
#[derive(Debug, Serialize, Deserialize)]
pub struct CmsStatus {
    /// The CMS.
    pub cms: String,
    /// The node that holds the databases (null when none does).
    pub active_node: Option<String>,
    /// The other node.
    pub passive_node: Option<String>,
    /// "Healthy" (both nodes see each other), "Witness" (active by the file share witness
    /// vote), or "Lost" (no node has quorum).
    pub quorum: String,
    /// "Online" or "Unavailable".
    pub witness: String,
    /// Per storage group, the passive copy's counters.
    pub storage_groups: Vec<SgCopyStatus>,
    /// Why a node is dismounted, if one is.
    pub dismounted_reason: Option<String>,
    /// Storage groups whose log fails on the active node ("SG: error"): deliveries get 451.
    pub failed_databases: Vec<String>,
    /// Every node's own report; nodes that did not answer are missing.
    pub nodes: Vec<NodeStatus>,
    /// Nodes that did not answer.
    pub unreachable: Vec<String>,
}
