//! What a node persists besides its logs and mailboxes: its cluster state, the epoch history, which
//! epoch its copy follows, and the dumpster requests still outstanding after a lossy mount.
//!
//! One small JSON file, replaced atomically (temporary file, fsync, rename, directory fsync), so a
//! crash leaves either the old or the new state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::machine::Persisted;

/// Where each epoch's logs began, per storage group: a returning node discards what it holds from
/// the first epoch it did not follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: u64,
    /// First generation written in it, per storage group.
    pub starts: BTreeMap<String, u64>,
}

/// A resubmission request a hub has not completed yet.
///
/// Its window is on the hub's clock only (`crate::clock::window`). A request persisted by the
/// previous release carried `low_ms`/`high_ms` on this node's clock; those are ignored when it is
/// loaded, and it asks for the hub's whole dumpster instead, which is always safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outstanding {
    /// Request id (the same for every hub; idempotent per hub).
    pub id: String,
    /// The hub asked.
    pub hub: String,
    /// The storage group.
    pub storage_group: String,
    /// Window start on the hub's clock: its own stamp on the newest record from it this node held,
    /// less the margin; 0: the hub's whole dumpster. The end is left to the hub.
    #[serde(default)]
    pub hub_low_ms: u64,
    /// When the request was made (this node's clock); it is dropped once MaxDumpsterTime has
    /// passed since. Only ever compared with this node's own clock.
    pub created_ms: u64,
    /// The window as the hub recorded it (RFC 3339, its clock), once it answered.
    #[serde(default)]
    pub recorded: Option<RecordedWindow>,
    /// The hub's error answer while it refuses the request; asked again every round all the
    /// same (a hub whose configuration or release is fixed then serves it).
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// The epoch this node mounted at, for a request after a failover: the hub then treats a
    /// late `250` of an older epoch as not delivered. None for deliveries a passive discarded.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// A window as a hub recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedWindow {
    /// Start (RFC 3339).
    pub low: String,
    /// End (RFC 3339).
    pub high: String,
}

/// A hub's error answer to a resubmission request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// HTTP status and the hub's reason.
    pub error: String,
    /// When it was first given (this node's clock; shown only).
    pub since_ms: u64,
}

/// The administrator's last copy command on one storage group of this node, kept across
/// restarts and shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyNote {
    /// Whether the copy is suspended (Suspend-StorageGroupCopy) until resumed.
    pub suspended: bool,
    /// The command: "suspend", "resume", "update" or "restore".
    pub command: String,
    /// The administrator's comment, if any.
    pub comment: Option<String>,
    /// When it was given (ms since the Unix epoch).
    pub at_ms: u64,
}

/// The persisted state of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The cluster machine's persisted part.
    pub cluster: Persisted,
    /// Epoch history, oldest first.
    pub epochs: Vec<EpochStart>,
    /// Per storage group, the epoch of the active node this copy last followed.
    pub copied_epoch: BTreeMap<String, u64>,
    /// Dumpster requests not yet completed.
    pub outstanding: Vec<Outstanding>,
    /// Per storage group, the administrator's last copy command.
    #[serde(default)]
    pub copy_notes: BTreeMap<String, CopyNote>,
    /// Storage groups whose copy is being reseeded: one still listed at start-up was cut short,
    /// and its copy is incomplete until reseeded again.
    #[serde(default)]
    pub seeding: std::collections::BTreeSet<String>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StateError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

impl NodeState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Loads the state (default when the node is new).
    pub fn load(dir: &Path) -> Result<NodeState, StateError> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError {
                path,
                reason: format!("corrupt node state: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(e) => Err(StateError {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Replaces the state file atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let err = |e: std::io::Error| StateError {
            path: path.clone(),
            reason: e.to_string(),
        };
        let tmp = dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("plain data always serializes");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    /// The first generation of storage group `sg` written in an epoch later than `epoch`, if any:
    /// everything a copy holds from there on diverged.
    pub fn diverged_from(&self, sg: &str, epoch: u64) -> Option<u64> {
        self.epochs
            .iter()
            .filter(|e| e.epoch > epoch)
            .filter_map(|e| e.starts.get(sg).copied())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_divergence_point() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeState::load(dir.path()).unwrap(), NodeState::default());
        let mut s = NodeState::default();
        s.epochs.push(EpochStart {
            epoch: 1,
            starts: BTreeMap::from([("SG1".into(), 1)]),
        });
        s.epochs.push(EpochStart {
            epoch: 2,
            starts: BTreeMap::from([("SG1".into(), 9)]),
        });
        s.epochs.push(EpochStart {
            epoch: 3,
            starts: BTreeMap::from([("SG1".into(), 14)]),
        });
        s.save(dir.path()).unwrap();
        let back = NodeState::load(dir.path()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.diverged_from("SG1", 1), Some(9));
        assert_eq!(back.diverged_from("SG1", 2), Some(14));
        assert_eq!(back.diverged_from("SG1", 3), None);
        std::fs::write(dir.path().join("state.json"), b"{nope").unwrap();
        assert!(NodeState::load(dir.path())
            .unwrap_err()
            .reason
            .contains("corrupt"));
    }

    /// A request the previous release persisted had its window on the node's clock (the clock
    /// that turned windows inside out); it loads as a request for the hub's whole dumpster.
    #[test]
    fn a_request_of_the_previous_release_asks_for_the_whole_dumpster() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"cluster": {"epoch": 3, "was_active": true, "peer_generated": {}},
            "epochs": [], "copied_epoch": {},
            "outstanding": [{"id": "cms1-epoch3-SG1", "hub": "hub1", "storage_group": "SG1",
                             "low_ms": 1795345200000, "high_ms": 1795341600000, "created_ms": 1795341600000}]}"#;
        std::fs::write(dir.path().join("state.json"), old).unwrap();
        let loaded = NodeState::load(dir.path()).unwrap();
        let o = &loaded.outstanding[0];
        assert_eq!((o.hub.as_str(), o.hub_low_ms), ("hub1", 0));
        assert_eq!((&o.recorded, &o.refused), (&None, &None));
    }
}
