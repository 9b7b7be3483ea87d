//! `hubrelay stats`: DumpsterStatistics per hub, DumpsterStatisticsNotAvailable,
//! OutstandingDumpsterRequests and the requests hubs refuse, per storage group (SPEC §4).

use serde::{Deserialize, Serialize};

use super::{print_json, Failure};
use crate::client::AdminClient;
use crate::config::Site;
use crate::wire::cluster::OutstandingView;
use crate::wire::hub::HubDumpsterStats;

/// One hub's line of DumpsterStatistics.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpsterStatistics {
    /// The hub.
    pub hub: String,
    /// Hub receive time of the oldest entry.
    pub oldest: Option<String>,
    /// Entries.
    pub items: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A resubmission request a hub has not completed yet; its bounds are on the hub's clock.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutstandingRequest {
    /// The hub.
    pub hub: String,
    /// Window start.
    pub low: String,
    /// Window end (null until the hub has recorded the request: it closes the window with its
    /// own now).
    pub high: Option<String>,
    /// The hub's error answer (only in `refused_dumpster_requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The statistics of one storage group across the site.
#[derive(Debug, Serialize, Deserialize)]
pub struct SgStatistics {
    /// The storage group.
    pub storage_group: String,
    /// Hubs that answered.
    pub dumpster_statistics: Vec<DumpsterStatistics>,
    /// Hubs that did not answer.
    pub dumpster_statistics_not_available: Vec<String>,
    /// Resubmission requests still outstanding.
    pub outstanding_dumpster_requests: Vec<OutstandingRequest>,
    /// Resubmission requests a hub answered with an error (asked again; `health` FAILs on them).
    #[serde(default)]
    pub refused_dumpster_requests: Vec<OutstandingRequest>,
}

/// Gathers statistics from every hub of the site at once.
pub async fn gather(site: &Site, client: &AdminClient, sgs: &[String]) -> Vec<SgStatistics> {
    let mut calls = tokio::task::JoinSet::new();
    for (i, h) in site.hubs.iter().enumerate() {
        let (client, addr) = (client.clone(), h.admin);
        calls.spawn(async move {
            (
                i,
                client
                    .get::<Vec<HubDumpsterStats>>(addr, "/api/dumpster")
                    .await,
            )
        });
    }
    let mut answers: Vec<Option<Vec<HubDumpsterStats>>> = vec![None; site.hubs.len()];
    while let Some(done) = calls.join_next().await {
        if let Ok((i, Ok(stats))) = done {
            answers[i] = Some(stats);
        }
    }
    let mut outstanding: Vec<(String, OutstandingView)> = Vec::new();
    for node in site.cms.iter().flat_map(|c| c.nodes.iter()) {
        if let Ok(list) = client
            .get::<Vec<(String, OutstandingView)>>(node.admin, "/api/outstanding")
            .await
        {
            for item in list {
                if !outstanding.contains(&item) {
                    outstanding.push(item);
                }
            }
        }
    }
    sgs.iter()
        .map(|sg| {
            let mut stats = SgStatistics {
                storage_group: sg.clone(),
                dumpster_statistics: Vec::new(),
                dumpster_statistics_not_available: Vec::new(),
                outstanding_dumpster_requests: Vec::new(),
                refused_dumpster_requests: Vec::new(),
            };
            for (hub, answer) in site.hubs.iter().zip(&answers) {
                let hub = &hub.name;
                match answer
                    .as_ref()
                    .and_then(|all| all.iter().find(|s| &s.storage_group == sg))
                {
                    Some(s) => stats.dumpster_statistics.push(DumpsterStatistics {
                        hub: hub.clone(),
                        oldest: s.oldest.clone(),
                        items: s.items,
                        bytes: s.bytes,
                    }),
                    None => stats.dumpster_statistics_not_available.push(hub.clone()),
                }
            }
            for (_, o) in outstanding.iter().filter(|(s, _)| s == sg) {
                let request = OutstandingRequest {
                    hub: o.hub.clone(),
                    low: o.low.clone(),
                    high: o.high.clone(),
                    error: o.error.clone(),
                };
                if request.error.is_some() {
                    stats.refused_dumpster_requests.push(request);
                } else {
                    stats.outstanding_dumpster_requests.push(request);
                }
            }
            stats
        })
        .collect()
}

/// Runs `hubrelay stats`.
pub async fn run(site: &Site, storage_group: Option<&str>, json: bool) -> Result<(), Failure> {
    let sgs = match storage_group {
        Some(sg) if site.cms_of_storage_group(sg).is_some() => vec![sg.to_string()],
        Some(sg) => {
            return Err(Failure::Usage(format!(
                "no storage group named `{sg}` in {}",
                site.file.display()
            )))
        }
        None => site.storage_group_names(),
    };
    let all = gather(site, &super::cluster::admin_client(site)?, &sgs).await;
    if json {
        return match (storage_group, all.as_slice()) {
            (Some(_), [one]) => print_json(one),
            _ => print_json(&all),
        };
    }
    for s in &all {
        println!("StorageGroup: {}", s.storage_group);
        println!("  DumpsterStatistics:");
        if s.dumpster_statistics.is_empty() {
            println!("    (none)");
        }
        for d in &s.dumpster_statistics {
            println!(
                "    {} (oldest {}; {} items; {} bytes)",
                d.hub,
                d.oldest.as_deref().unwrap_or("-"),
                d.items,
                d.bytes
            );
        }
        println!(
            "  DumpsterStatisticsNotAvailable: {{{}}}",
            s.dumpster_statistics_not_available.join(",")
        );
        let window = |r: &OutstandingRequest| {
            format!("{};{}", r.low, r.high.as_deref().unwrap_or("when served"))
        };
        let out: Vec<String> = s
            .outstanding_dumpster_requests
            .iter()
            .map(|r| format!("{} ({})", r.hub, window(r)))
            .collect();
        println!("  OutstandingDumpsterRequests: {{{}}}", out.join(", "));
        if !s.refused_dumpster_requests.is_empty() {
            let refused: Vec<String> = s
                .refused_dumpster_requests
                .iter()
                .map(|r| {
                    let error = r.error.as_deref().unwrap_or_default();
                    format!("{} ({}): {error}", r.hub, window(r))
                })
                .collect();
            println!("  RefusedDumpsterRequests: {{{}}}", refused.join(", "));
        }
    }
    Ok(())
}
