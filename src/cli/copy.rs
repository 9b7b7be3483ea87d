//! `hubrelay copy suspend|resume|update|restore`: Suspend-, Resume-, Update- and
//! Restore-StorageGroupCopy, sent to the node that holds the copy.
//!
//! The node decides whether a command is safe (see `node::copy_admin`); this side picks the
//! node, says what happened, and for a restore follows the mount it triggers.

use std::time::Duration;

use serde::Serialize;

use super::cluster::admin_client;
use super::{print_json, Failure};
use crate::client::cms::cms_status;
use crate::client::{encode, AdminClient, ClientError};
use crate::config::Site;
use crate::wire::cluster::{CopyBody, NodeStatus, SgCopyStatus};

/// How long a restore is followed until the node reports itself active.
const RESTORE_WAIT: Duration = Duration::from_secs(30);

/// The four copy commands, as the CLI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CopyAction {
    /// Stop copying and replaying logs into the passive copy (Suspend-StorageGroupCopy).
    Suspend,
    /// Copy and replay again (Resume-StorageGroupCopy).
    Resume,
    /// Reseed the passive copy from the active node (Update-StorageGroupCopy).
    Update,
    /// Mount the passive copy after the active node was lost, even beyond
    /// AutoDatabaseMountDial; lossy, so the hubs are asked to resubmit (Restore-StorageGroupCopy).
    Restore,
}

impl CopyAction {
    fn name(self) -> &'static str {
        match self {
            CopyAction::Suspend => "suspend",
            CopyAction::Resume => "resume",
            CopyAction::Update => "update",
            CopyAction::Restore => "restore",
        }
    }
}

/// `copy --json`.
#[derive(Debug, Serialize)]
pub struct CopyReport {
    /// The CMS.
    pub cms: String,
    /// The storage group.
    pub storage_group: String,
    /// "suspend", "resume", "update" or "restore".
    pub command: String,
    /// The node that carried it out.
    pub node: String,
    /// The node's role afterwards ("Active" after a restore).
    pub role: String,
    /// The storage group's counters on that node afterwards.
    pub status: Option<SgCopyStatus>,
}

/// Runs `hubrelay copy ACTION --cms CMS --storage-group SG [--comment TEXT]`.
pub async fn run(
    site: &Site,
    action: CopyAction,
    cms: &str,
    sg: &str,
    comment: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let c = site.cms_named(cms).ok_or_else(|| {
        Failure::Usage(format!("no CMS named `{cms}` in {}", site.file.display()))
    })?;
    if !c.storage_groups.iter().any(|s| s.name == sg) {
        return Err(Failure::Usage(format!(
            "`{sg}` is not a storage group of {cms}"
        )));
    }
    let client = admin_client(site)?;
    let status = cms_status(&client, c).await;
    let target = pick_node(action, &status)?;
    let node = c
        .nodes
        .iter()
        .find(|n| n.name == target)
        .expect("status only names nodes of the CMS");
    let path = format!("/api/copy/{}/{}", encode(sg), action.name());
    let body = CopyBody {
        comment: comment.map(String::from),
    };
    let mut after: NodeStatus =
        client
            .post(node.admin, &path, &body)
            .await
            .map_err(|e| match e {
                ClientError::Status { message, .. } => {
                    Failure::Failed(format!("{target} refused to {}: {message}", action.name()))
                }
                e => Failure::Failed(format!("{target}: {e}")),
            })?;
    if action == CopyAction::Restore {
        after = follow_restore(&client, node.admin, &target).await?;
    }
    let report = CopyReport {
        cms: cms.to_string(),
        storage_group: sg.to_string(),
        command: action.name().to_string(),
        node: target,
        role: after.role.clone(),
        status: after.storage_groups.into_iter().find(|g| g.name == sg),
    };
    if json {
        return print_json(&report);
    }
    match action {
        CopyAction::Restore => println!(
            "{}: {} mounted {sg} (and every storage group of {cms}) by restore; the hubs are asked to resubmit what it missed",
            report.cms, report.node
        ),
        _ => {
            let copy = report
                .status
                .as_ref()
                .and_then(|s| s.summary_copy_status)
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{cms}: {} of {sg} on {}: SummaryCopyStatus {copy}",
                action.name(),
                report.node
            );
        }
    }
    Ok(())
}

/// The node a command goes to: the one holding the copy, or for a restore the reachable node
/// that is not active (the one with the most logs copied, if both are up and neither active).
fn pick_node(
    action: CopyAction,
    status: &crate::wire::cluster::CmsStatus,
) -> Result<String, Failure> {
    let standby: Vec<&NodeStatus> = status.nodes.iter().filter(|n| !n.mounted).collect();
    if action == CopyAction::Restore {
        if let Some(active) = &status.active_node {
            return Err(Failure::Failed(format!(
                "{active} is active for {}: nothing is lost to restore; use `hubrelay move` for a lossless switchover",
                status.cms
            )));
        }
        let copied = |n: &NodeStatus| {
            n.storage_groups
                .iter()
                .filter_map(|g| g.last_log_copied)
                .sum::<u64>()
        };
        return standby
            .into_iter()
            .max_by_key(|n| copied(n))
            .map(|n| n.node.clone())
            .ok_or_else(|| {
                Failure::Failed(format!(
                    "no node of {} answers: nothing to restore on ({} unreachable)",
                    status.cms,
                    status.unreachable.join(", ")
                ))
            });
    }
    let with_copy: Vec<&NodeStatus> = standby
        .into_iter()
        .filter(|n| n.storage_groups.iter().any(|g| g.last_log_copied.is_some()))
        .collect();
    match with_copy.as_slice() {
        [one] => Ok(one.node.clone()),
        [] => Err(Failure::Failed(format!(
            "no passive copy of {} answers{}",
            status.cms,
            if status.unreachable.is_empty() {
                String::new()
            } else {
                format!(" ({} unreachable)", status.unreachable.join(", "))
            }
        ))),
        _ => Err(Failure::Failed(format!(
            "neither node of {} is active: start or restore one before changing a copy",
            status.cms
        ))),
    }
}

/// Polls the restored node until it reports itself active; its dismount reason otherwise.
async fn follow_restore(
    client: &AdminClient,
    admin: std::net::SocketAddr,
    node: &str,
) -> Result<NodeStatus, Failure> {
    let deadline = tokio::time::Instant::now() + RESTORE_WAIT;
    loop {
        let status: Result<NodeStatus, _> = client.get(admin, "/api/status").await;
        match status {
            Ok(s) if s.mounted => return Ok(s),
            Ok(s) if tokio::time::Instant::now() >= deadline => {
                return Err(Failure::Failed(format!(
                    "{node} did not mount within {}s: {}",
                    RESTORE_WAIT.as_secs(),
                    s.reason.unwrap_or_else(|| s.role.clone())
                )))
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(Failure::Failed(format!("{node}: {e}")))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
