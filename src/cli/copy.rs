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
use crate::wire::cluster::{CopyBody, NodeStatus, SeedProgress, SgCopyStatus};

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
    /// For `update`: the snapshot installed, as last seen while it was (records, bytes, time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeded: Option<SeedProgress>,
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
    let mut seeded = None;
    if action == CopyAction::Restore {
        after = follow_restore(&client, node.admin, &target).await?;
    }
    if action == CopyAction::Update {
        let (status, seed) = follow_seed(&client, node.admin, &target, sg, json).await?;
        after = status;
        seeded = seed;
    }
    let report = CopyReport {
        cms: cms.to_string(),
        storage_group: sg.to_string(),
        command: action.name().to_string(),
        node: target,
        role: after.role.clone(),
        status: after.storage_groups.into_iter().find(|g| g.name == sg),
        seeded,
    };
    if json {
        return print_json(&report);
    }
    match action {
        CopyAction::Restore => println!(
            "{}: {} mounted {sg} (and every storage group of {cms}) by restore; the hubs are asked to resubmit what it missed",
            report.cms, report.node
        ),
        CopyAction::Update => {
            let seeded = report.seeded.clone().unwrap_or_default();
            println!(
                "{cms}: {sg} on {} reseeded from a snapshot of {} records ({}) in {:.1} s, then its logs; SummaryCopyStatus Healthy",
                report.node,
                seeded.records,
                human_bytes(seeded.bytes),
                seeded.elapsed_ms as f64 / 1000.0
            );
        }
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

/// How long a reseeded copy may take to copy the logs after its snapshot before `update` gives up
/// waiting (the copy goes on).
const CATCH_UP_WAIT: Duration = Duration::from_secs(600);
/// How many status polls in a row may fail before `update` stops following.
const POLL_FAILURES: u32 = 10;

/// Follows a reseed: progress on stderr while the snapshot is installed (unless `--json`), then
/// until the copy is Healthy. Fails with the node's reason if the reseed fails.
async fn follow_seed(
    client: &AdminClient,
    admin: std::net::SocketAddr,
    node: &str,
    sg: &str,
    json: bool,
) -> Result<(NodeStatus, Option<SeedProgress>), Failure> {
    use crate::wire::cluster::SummaryCopyStatus as S;
    let mut last = None;
    let mut failures = 0;
    let mut printed = tokio::time::Instant::now();
    let mut catch_up: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status: NodeStatus = match client.get(admin, "/api/status").await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures >= POLL_FAILURES {
                    return Err(Failure::Failed(format!(
                        "{node} stopped answering during the reseed ({e}); `hubrelay status` shows where it stands"
                    )));
                }
                continue;
            }
        };
        failures = 0;
        let Some(g) = status.storage_groups.iter().find(|g| g.name == sg) else {
            return Err(Failure::Failed(format!("{node} no longer reports {sg}")));
        };
        match (g.summary_copy_status, g.seed.as_ref().filter(|p| !p.done)) {
            (_, Some(p)) => {
                if !json && printed.elapsed() >= Duration::from_secs(1) {
                    printed = tokio::time::Instant::now();
                    eprintln!("{}", progress_line(sg, node, p));
                }
                last = Some(p.clone());
            }
            (Some(S::Healthy), None) => {
                let seed = g.seed.clone().or(last);
                return Ok((status, seed));
            }
            (Some(S::FailedAndSuspended | S::Failed), None) => {
                return Err(Failure::Failed(format!(
                    "reseed of {sg} on {node} failed: {}",
                    g.error.as_deref().unwrap_or("no reason given")
                )))
            }
            (_, None) => {
                let since = *catch_up.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > CATCH_UP_WAIT {
                    return Err(Failure::Failed(format!(
                        "{sg} on {node} was seeded but is not Healthy after {} s of copying logs ({:?}); `hubrelay status` shows its queues",
                        CATCH_UP_WAIT.as_secs(),
                        g.summary_copy_status
                    )));
                }
            }
        }
    }
}

/// One line of reseed progress.
fn progress_line(sg: &str, node: &str, p: &SeedProgress) -> String {
    let eta = p
        .eta_s
        .map(|s| format!(", about {s} s left"))
        .unwrap_or_default();
    format!(
        "seeding {sg} on {node}: {}/{} records, {} at {}/s{eta}",
        p.records,
        p.records_total,
        human_bytes(p.bytes),
        human_bytes(p.bytes_per_s)
    )
}

fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).to_string()
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
