//! `hubrelay status`, `health` and `move`: the clustered mailbox server commands
//! (Get-ClusteredMailboxServerStatus + Get-StorageGroupCopyStatus, Test-ReplicationHealth,
//! Move-ClusteredMailboxServer).

use serde::{Deserialize, Serialize};

use super::{print_json, Failure};
use crate::client::cms::cms_status;
use crate::client::AdminClient;
use crate::config::{exposure, sanity, Cms, Site, WitnessConfig};
use crate::space::Reading;
use crate::wire::cluster::{MoveBody, MoveResult, SgCopyStatus};
use crate::wire::hub::HubDumpsterStats;

/// The admin client for `site`; a CA that cannot be used is a configuration problem.
pub fn admin_client(site: &Site) -> Result<AdminClient, Failure> {
    AdminClient::new(site).map_err(|e| Failure::Usage(e.to_string()))
}

fn selected<'a>(site: &'a Site, cms: Option<&str>) -> Result<Vec<&'a Cms>, Failure> {
    match cms {
        Some(name) => site.cms_named(name).map(|c| vec![c]).ok_or_else(|| {
            Failure::Usage(format!("no CMS named `{name}` in {}", site.file.display()))
        }),
        None => Ok(site.cms.iter().collect()),
    }
}

/// Runs `hubrelay status`.
pub async fn status(site: &Site, cms: Option<&str>, json: bool) -> Result<(), Failure> {
    let mut all = Vec::new();
    let client = admin_client(site)?;
    let mut kinds = Vec::new();
    for c in selected(site, cms)? {
        all.push(cms_status(&client, c).await);
        kinds.push(c.witness.kind());
    }
    if json {
        return match (cms, all.as_slice()) {
            (Some(_), [one]) => print_json(one),
            _ => print_json(&all),
        };
    }
    for (s, kind) in all.iter().zip(kinds) {
        println!("ClusteredMailboxServer: {}", s.cms);
        println!(
            "  ActiveNode: {}",
            s.active_node.as_deref().unwrap_or("(none)")
        );
        println!(
            "  PassiveNode: {}",
            s.passive_node.as_deref().unwrap_or("(none)")
        );
        println!("  Quorum: {}   {kind}: {}", s.quorum, s.witness);
        if let Some(r) = &s.dismounted_reason {
            println!("  Dismounted: {r}");
        }
        for f in &s.failed_databases {
            println!("  DatabaseFailed: {f}");
        }
        if !s.unreachable.is_empty() {
            println!("  Unreachable: {}", s.unreachable.join(", "));
        }
        for g in &s.storage_groups {
            let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "  {}: SummaryCopyStatus {}  LastLogGenerated {}  LastLogCopied {}  LastLogReplayed {}  CopyQueueLength {}  ReplayQueueLength {}",
                g.name,
                g.summary_copy_status.map(|s| format!("{s:?}")).unwrap_or_else(|| "-".into()),
                g.last_log_generated,
                opt(g.last_log_copied),
                opt(g.last_log_replayed),
                opt(g.copy_queue_length),
                opt(g.replay_queue_length)
            );
            if let Some(e) = &g.error {
                println!("    error: {e}");
            }
            if let Some(c) = &g.copy_command {
                let held = if c.suspended {
                    " (still suspended)"
                } else {
                    ""
                };
                let comment = c
                    .comment
                    .as_deref()
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default();
                println!(
                    "    copy {} on {} at {}{held}{comment}",
                    c.command, c.node, c.at
                );
            }
            for e in &g.resubmission_errors {
                println!(
                    "    resubmission refused by {} since {} (request {} of {}): {}",
                    e.hub, e.since, e.request, e.node, e.error
                );
            }
        }
    }
    Ok(())
}

/// One Test-ReplicationHealth line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// PASS, WARN or FAIL.
    pub result: String,
    /// Details.
    pub detail: String,
}

fn check(check: &str, result: &str, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        result: result.into(),
        detail: detail.into(),
    }
}

/// Runs `hubrelay health`; exit 1 if any check FAILs.
pub async fn health(site: &Site, json: bool) -> Result<(), Failure> {
    let client = admin_client(site)?;
    let mut hub_stats = Vec::new();
    for h in &site.hubs {
        if let Ok(s) = client
            .get::<Vec<HubDumpsterStats>>(h.admin, "/api/dumpster")
            .await
        {
            hub_stats.extend(s);
        }
    }
    let mut checks = vec![dumpster_size_check(site)];
    checks.extend(exposure_checks(site));
    checks.extend(disk_checks(site, &client).await);
    for c in &site.cms {
        let s = cms_status(&client, c).await;
        let name = &s.cms;
        checks.push(match (s.active_node.as_ref(), s.quorum.as_str()) {
            (None, _) => check("Quorum", "FAIL", format!("{name}: no node holds the databases (quorum {})", s.quorum)),
            (Some(a), "Healthy") => check("Quorum", "PASS", format!("{name}: {a} active, both nodes in contact")),
            (Some(a), q) => check("Quorum", "WARN", format!("{name}: {a} active by the witness vote only ({q}); the other node is not in contact")),
        });
        let (result, detail) = if s.witness == "Online" {
            ("PASS", format!("{name}: witness reachable"))
        } else {
            (
                "WARN",
                format!(
                    "{name}: witness unavailable to a node; a second failure would stop the CMS"
                ),
            )
        };
        checks.push(match c.witness {
            WitnessConfig::Share(_) => check("FileShareWitness", result, detail),
            WitnessConfig::Etcd(_) => check("EtcdWitness", result, detail),
        });
        checks.push(if s.unreachable.is_empty() {
            check("NodeState", "PASS", format!("{name}: both nodes answer"))
        } else {
            check(
                "NodeState",
                "WARN",
                format!("{name}: not answering: {}", s.unreachable.join(", ")),
            )
        });
        checks.push(match &s.dismounted_reason {
            Some(r) => check(
                "DatabasesDismountedAfterFailover",
                "FAIL",
                format!("{name}: {r}"),
            ),
            None => check(
                "DatabasesDismountedAfterFailover",
                "PASS",
                format!("{name}: no dismounted databases"),
            ),
        });
        checks.push(if s.failed_databases.is_empty() {
            check(
                "DatabaseFailed",
                "PASS",
                format!("{name}: databases writable"),
            )
        } else {
            check(
                "DatabaseFailed",
                "FAIL",
                format!("{name}: {}", s.failed_databases.join("; ")),
            )
        });
        for g in &s.storage_groups {
            use crate::wire::cluster::SummaryCopyStatus as S;
            let sg = &g.name;
            checks.push(match g.summary_copy_status {
                Some(S::Suspended) => check(
                    "CopySuspended",
                    "WARN",
                    format!(
                        "{sg}: copy suspended{}",
                        g.error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                ),
                _ => check("CopySuspended", "PASS", format!("{sg}: copy not suspended")),
            });
            checks.push(match g.summary_copy_status {
                Some(S::Failed) => check(
                    "CopyFailed",
                    "FAIL",
                    format!("{sg}: {}", g.error.as_deref().unwrap_or("copy failed")),
                ),
                Some(S::FailedAndSuspended) => check(
                    "CopyFailed",
                    "FAIL",
                    format!(
                        "{sg}: {}; reseed it: hubrelay copy update --cms {} --storage-group {sg}",
                        g.error.as_deref().unwrap_or("the copy needs a reseed"),
                        name
                    ),
                ),
                Some(S::ServiceDown) => check(
                    "CopyFailed",
                    "WARN",
                    format!("{sg}: the copy cannot reach the active node"),
                ),
                _ => check("CopyFailed", "PASS", format!("{sg}: copy not failed")),
            });
            let q = g.copy_queue_length.unwrap_or(0);
            checks.push(match q {
                0..=2 => check(
                    "ReplicationQueueLength",
                    "PASS",
                    format!("{sg}: copy queue {q}"),
                ),
                3..=5 => check(
                    "ReplicationQueueLength",
                    "WARN",
                    format!("{sg}: copy queue {q} logs"),
                ),
                _ => check(
                    "ReplicationQueueLength",
                    "FAIL",
                    format!("{sg}: copy queue {q} logs"),
                ),
            });
            checks.extend(resubmission_checks(g));
            // Only a passive copy's own report says how long it has been behind.
            if g.last_log_copied.is_some() {
                checks.push(dumpster_time_check(site, g));
            }
            for h in hub_stats.iter().filter(|h| &h.storage_group == sg) {
                let covered = match (&h.oldest_delivered, &g.newest_replayed) {
                    (Some(oldest), Some(replayed)) => oldest <= replayed,
                    (None, _) => h.evicted == 0 && h.expired == 0,
                    (Some(_), None) => true,
                };
                checks.push(if covered {
                    check("DumpsterCoverage", "PASS", format!("{sg}: {}'s dumpster reaches back past the oldest unreplicated record", h.hub))
                } else {
                    check(
                        "DumpsterCoverage",
                        "WARN",
                        format!(
                            "{sg}: {}'s dumpster starts at {}, after the newest replicated record ({}): a failover now could lose mail no dumpster holds",
                            h.hub,
                            h.oldest_delivered.as_deref().unwrap_or("-"),
                            g.newest_replayed.as_deref().unwrap_or("-")
                        ),
                    )
                });
            }
        }
    }
    let failed = checks.iter().any(|c| c.result == "FAIL");
    if json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            println!("{:<4} {:<34} {}", c.result, c.check, c.detail);
        }
    }
    if failed {
        Err(Failure::Failed(
            "replication health has failed checks".into(),
        ))
    } else {
        Ok(())
    }
}

/// One DiskSpace line per role that answers: FAIL while a directory has less than
/// `min_free_space` free (the role refuses new mail), WARN below twice that.
async fn disk_checks(site: &Site, client: &AdminClient) -> Vec<Check> {
    let roles = site.hubs.iter().map(|h| (h.name.clone(), h.admin)).chain(
        site.cms
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| (n.name.clone(), n.admin))),
    );
    let mut checks = Vec::new();
    for (role, admin) in roles {
        let Ok(readings) = client.get::<Vec<Reading>>(admin, "/api/disk").await else {
            continue;
        };
        for r in readings {
            checks.push(if r.low() {
                check(
                    "DiskSpace",
                    "FAIL",
                    format!("{role}: disk full: {}; new mail is refused with 452 4.3.1 until there is room (free space there, or grow the file system); it resumes by itself", r.describe()),
                )
            } else if r.free_bytes < r.reserve_bytes.saturating_mul(2) {
                check(
                    "DiskSpace",
                    "WARN",
                    format!(
                        "{role}: {} has {} free, less than twice min_free_space ({})",
                        r.path.display(),
                        bytesize::ByteSize(r.free_bytes),
                        bytesize::ByteSize(r.reserve_bytes)
                    ),
                )
            } else {
                check(
                    "DiskSpace",
                    "PASS",
                    format!(
                        "{role}: {} has {} free",
                        r.path.display(),
                        bytesize::ByteSize(r.free_bytes)
                    ),
                )
            });
        }
    }
    checks
}

/// One FAIL per resubmission request a hub refuses: what only its dumpster holds of a lossy
/// failover stays lost until it accepts (the node asks again every round).
fn resubmission_checks(g: &SgCopyStatus) -> Vec<Check> {
    if g.resubmission_errors.is_empty() {
        return vec![check(
            "DumpsterResubmission",
            "PASS",
            format!("{}: no hub refuses a resubmission request", g.name),
        )];
    }
    g.resubmission_errors
        .iter()
        .map(|e| {
            check(
                "DumpsterResubmission",
                "FAIL",
                format!(
                    "{}: {} refuses resubmission request {} of {} since {} ({}); what only its dumpster holds is not redelivered until it accepts",
                    g.name, e.hub, e.request, e.node, e.since, e.error
                ),
            )
        })
        .collect()
}

/// What the site file leaves open beyond loopback, from the site file: a WARN each.
fn exposure_checks(site: &Site) -> Vec<Check> {
    let warnings = exposure::exposure(site);
    if warnings.is_empty() {
        return vec![check(
            "Exposure",
            "PASS",
            "no clear-text delivery or plain-HTTP admin API beyond loopback",
        )];
    }
    warnings
        .iter()
        .map(|w| check("Exposure", "WARN", w.to_string()))
        .collect()
}

/// The seeds' sizing rule for the dumpster bound, from the site file.
fn dumpster_size_check(site: &Site) -> Check {
    match sanity::dumpster_size(
        site.max_dumpster_size_per_storage_group,
        site.max_message_size,
    ) {
        Some(w) => check("DumpsterSize", "WARN", w.to_string()),
        None => check(
            "DumpsterSize",
            "PASS",
            format!(
                "max_dumpster_size_per_storage_group ({} bytes) is at least 1.5 × max_message_size ({} bytes)",
                site.max_dumpster_size_per_storage_group, site.max_message_size
            ),
        ),
    }
}

/// Whether the dumpster still reaches back as far as a passive copy has been behind.
fn dumpster_time_check(site: &Site, g: &SgCopyStatus) -> Check {
    let behind = g
        .behind_since
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            (chrono::Utc::now() - t.to_utc())
                .to_std()
                .unwrap_or_default()
        });
    match sanity::copy_lag(&g.name, behind, site.max_dumpster_time) {
        Some(w) => check("DumpsterTime", "WARN", w.to_string()),
        None => check(
            "DumpsterTime",
            "PASS",
            format!(
                "{}: the copy has been behind for {}, within max_dumpster_time ({})",
                g.name,
                humantime::format_duration(std::time::Duration::from_secs(
                    behind.unwrap_or_default().as_secs()
                )),
                humantime::format_duration(site.max_dumpster_time)
            ),
        ),
    }
}

/// Runs `hubrelay move`.
pub async fn move_cms(
    site: &Site,
    cms: &str,
    target: Option<&str>,
    comment: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let c = selected(site, Some(cms))?[0];
    if let Some(t) = target {
        if !c.nodes.iter().any(|n| n.name == t) {
            return Err(Failure::Usage(format!("`{t}` is not a node of {cms}")));
        }
    }
    let s = cms_status(&admin_client(site)?, c).await;
    let Some(active) = s.active_node.clone() else {
        return Err(Failure::Failed(format!(
            "{cms} has no active node to move from"
        )));
    };
    if target == Some(active.as_str()) {
        return Err(Failure::Failed(format!(
            "{active} is already the active node"
        )));
    }
    let node = c
        .nodes
        .iter()
        .find(|n| n.name == active)
        .expect("active node is in the config");
    let client = AdminClient::with_timeout(site, std::time::Duration::from_secs(60))
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let body = MoveBody {
        target: target.map(String::from),
        comment: comment.map(String::from),
    };
    let r: MoveResult = client
        .post(node.admin, "/api/cluster/move", &body)
        .await
        .map_err(|e| Failure::Failed(format!("move failed: {e}")))?;
    if json {
        print_json(&r)
    } else {
        println!(
            "{cms} moved from {} to {} in {} ms (logs shipped: {:?})",
            r.from, r.to, r.millis, r.last_closed
        );
        Ok(())
    }
}
