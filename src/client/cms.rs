//! A CMS as its nodes report it: both nodes asked, their answers merged into one
//! [`CmsStatus`] (what `status`, `health`, the dashboard and the demo show).

use super::AdminClient;
use crate::config::Cms;
use crate::wire::cluster::{
    CmsStatus, CopyCommandView, NodeStatus, SgCopyStatus, SummaryCopyStatus,
};

/// Asks both nodes of `cms`.
pub async fn cms_status(client: &AdminClient, cms: &Cms) -> CmsStatus {
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    for n in &cms.nodes {
        match client.get::<NodeStatus>(n.admin, "/api/status").await {
            Ok(s) => nodes.push(s),
            Err(_) => unreachable.push(n.name.clone()),
        }
    }
    let active = nodes.iter().find(|n| n.mounted);
    let active_node = active.map(|n| n.node.clone());
    let passive_node = cms
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| Some(n) != active_node.as_ref());
    let quorum = match active {
        Some(a) if a.sees_peer => "Healthy",
        Some(_) => "Witness",
        None => "Lost",
    }
    .to_string();
    let witness = if nodes.iter().all(|n| n.witness_ok) && !nodes.is_empty() {
        "Online"
    } else {
        "Unavailable"
    }
    .to_string();
    let passive = nodes
        .iter()
        .find(|n| Some(&n.node) == passive_node.as_ref());
    let storage_groups = match (passive, active) {
        // The active node's own LastLogGenerated is the truth; the passive's is as of its last
        // copy round, and a queue measured against it would look shorter than it is.
        (Some(p), Some(a)) => p
            .storage_groups
            .iter()
            .map(|s| {
                let generated = a
                    .storage_groups
                    .iter()
                    .find(|g| g.name == s.name)
                    .map_or(s.last_log_generated, |g| g.last_log_generated)
                    .max(s.last_log_generated);
                SgCopyStatus {
                    last_log_generated: generated,
                    copy_queue_length: s.last_log_copied.map(|c| generated.saturating_sub(c)),
                    ..s.clone()
                }
            })
            .collect(),
        (Some(p), None) => p.storage_groups.clone(),
        (None, Some(a)) => a
            .storage_groups
            .iter()
            .map(|s| SgCopyStatus {
                summary_copy_status: Some(SummaryCopyStatus::ServiceDown),
                ..s.clone()
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    // A restore leaves its note on the node it mounted; other commands on the passive. Show
    // the latest either node has. Refused resubmission requests live on the node that made them,
    // which need not be the active one any more: show every node's.
    let storage_groups = storage_groups
        .into_iter()
        .map(|g| {
            let mut copy_command: Option<CopyCommandView> = None;
            let mut resubmission_errors = Vec::new();
            let reports = nodes.iter().flat_map(|n| &n.storage_groups);
            for s in reports.filter(|s| s.name == g.name) {
                if let Some(c) = &s.copy_command {
                    if copy_command.as_ref().is_none_or(|latest| c.at >= latest.at) {
                        copy_command = Some(c.clone());
                    }
                }
                for e in &s.resubmission_errors {
                    if !resubmission_errors.contains(e) {
                        resubmission_errors.push(e.clone());
                    }
                }
            }
            SgCopyStatus {
                copy_command,
                resubmission_errors,
                ..g
            }
        })
        .collect();
    CmsStatus {
        cms: cms.name.clone(),
        active_node,
        passive_node,
        quorum,
        witness,
        storage_groups,
        dismounted_reason: nodes.iter().find_map(|n| n.reason.clone()),
        failed_databases: active
            .map(|a| {
                a.storage_groups
                    .iter()
                    .filter_map(|g| g.error.as_ref().map(|e| format!("{}: {e}", g.name)))
                    .collect()
            })
            .unwrap_or_default(),
        nodes,
        unreachable,
    }
}
