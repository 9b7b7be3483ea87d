//! `site`, `hub` and `node`: run roles until Ctrl-C or SIGTERM (an active node with a healthy peer
//! hands over to it first).

use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Failure;
use crate::config::{exposure, sanity, Site};
use crate::node::MailboxNode;
use crate::runtime::{self, Endpoint, StartError};
use crate::telemetry::logging::{self, LogFormat};

/// Installs logging, then warns about sizing rules the site file breaks and what it leaves open
/// to the network (once per process).
fn start_up(site: &Site, log: LogFormat) {
    logging::init(log);
    for w in sanity::site_warnings(site) {
        warn!(config = %site.file.display(), "{w}");
    }
    for w in exposure::exposure(site) {
        warn!(config = %site.file.display(), "{w}");
    }
}

fn start_failed(e: StartError) -> Failure {
    match e {
        StartError::UnknownRole { .. } => Failure::Usage(e.to_string()),
        _ => Failure::Failed(e.to_string()),
    }
}

/// Prints the endpoints, one line each, so scripts and tests can wait for them.
fn banner(endpoints: &[Endpoint]) {
    for e in endpoints {
        println!("{} {} listening on {}", e.role, e.what, e.addr);
    }
    println!("ready");
}

async fn serve(
    endpoints: Vec<Endpoint>,
    shutdown: CancellationToken,
    mut tasks: JoinSet<()>,
    hand_over: Option<Arc<MailboxNode>>,
) -> Result<(), Failure> {
    // Registered before "ready" is printed: a supervisor may signal as soon as it reads it.
    let signal = runtime::shutdown_signal()
        .map_err(|e| Failure::Failed(format!("cannot handle signals: {e}")))?;
    banner(&endpoints);
    tokio::select! {
        _ = signal => {
            // A routine stop of the active node is a handover, not a lossy failover.
            if let Some(node) = hand_over {
                node.hand_over_before_exit().await;
            }
        }
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Runs every hub and node of the site in this process.
pub async fn site(site: Arc<Site>, data: &Path, log: LogFormat) -> Result<(), Failure> {
    start_up(&site, log);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut endpoints = Vec::new();
    for c in &site.cms {
        for n in &c.nodes {
            let (e, _) = runtime::start_node(&site, &n.name, data, &shutdown, &mut tasks)
                .await
                .map_err(start_failed)?;
            endpoints.extend(e);
        }
    }
    for h in &site.hubs {
        endpoints.extend(
            runtime::start_hub(&site, &h.name, data, &shutdown, &mut tasks)
                .await
                .map_err(start_failed)?,
        );
    }
    // Both nodes of each CMS stop with this process: there is no one to hand over to.
    serve(endpoints, shutdown, tasks, None).await
}

/// Runs one hub.
pub async fn hub(site: Arc<Site>, name: &str, data: &Path, log: LogFormat) -> Result<(), Failure> {
    start_up(&site, log);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let endpoints = runtime::start_hub(&site, name, data, &shutdown, &mut tasks)
        .await
        .map_err(start_failed)?;
    serve(endpoints, shutdown, tasks, None).await
}

/// Runs one mailbox node.
pub async fn node(site: Arc<Site>, name: &str, data: &Path, log: LogFormat) -> Result<(), Failure> {
    start_up(&site, log);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (endpoints, node) = runtime::start_node(&site, name, data, &shutdown, &mut tasks)
        .await
        .map_err(start_failed)?;
    serve(endpoints, shutdown, tasks, Some(node)).await
}
