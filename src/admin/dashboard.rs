//! The site dashboard on every role's admin address: a read-only page (`/`, with its script and
//! style embedded in the binary) and the one document it polls, `GET /api/site`, which gathers the
//! whole site through the admin API as the CLI's `stats` and `status` do.
//!
//! The page and its assets hold no data, so they are served without the token; `/api/site` sits
//! behind it like every other call. The page keeps the token in the browser session only.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::DateTime;
use serde::Serialize;
use tokio::task::JoinSet;

use super::coverage::{self, Dumpster, SgCoverage, Window};
use super::ApiError;
use crate::client::cms::cms_status;
use crate::client::{AdminClient, ClientError};
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::config::{Cms, Site};
use crate::smtp::TlsFiles;
use crate::space::Reading;
use crate::wire::cluster::{NodeStatus, OutstandingView, SgCopyStatus};
use crate::wire::hub::{HubDumpsterStats, QueueSummary};

/// How long `/api/site` waits for one role: short, so a hung role shows as down on the next
/// refresh instead of holding the page.
const ROLE_TIMEOUT: Duration = Duration::from_millis(1_500);

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The whole site as the dashboard shows it (`GET /api/site`).
#[derive(Debug, Serialize)]
pub struct SiteDocument {
    /// The site's name.
    pub site: String,
    /// When it was gathered (milliseconds since the epoch): the timelines' right edge.
    pub now_ms: u64,
    /// The same, RFC 3339.
    pub generated: String,
    /// Every hub, in site order.
    pub hubs: Vec<HubView>,
    /// Every clustered mailbox server, in site order.
    pub cms: Vec<CmsView>,
    /// Per storage group, each hub's dumpster reach against the unreplicated window.
    pub coverage: Vec<SgCoverage>,
}

/// One hub: up or down, its queue and its dumpster per storage group.
#[derive(Debug, Serialize)]
pub struct HubView {
    /// The hub.
    pub name: String,
    /// Whether its admin API answered.
    pub up: bool,
    /// Why not, if it did not.
    pub error: Option<String>,
    /// Messages in its delivery queue.
    pub queue_messages: Option<usize>,
    /// Age of the oldest queued message.
    pub queue_oldest_age_seconds: Option<u64>,
    /// Its dumpster statistics, one per storage group.
    pub dumpster: Vec<HubDumpsterStats>,
    /// Free space where its store is (`min_free_space`): "disk full" with the path.
    pub disk: Vec<Reading>,
}

/// One node of a CMS as the page lists it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// The node.
    pub name: String,
    /// Whether it answered.
    pub up: bool,
    /// "Active", "Passive" or "Dismounted" as it reports itself; null when down.
    pub role: Option<String>,
    /// Whether it sees the other node.
    pub sees_peer: bool,
    /// Whether the witness answered its last operation.
    pub witness_ok: bool,
    /// Its epoch.
    pub epoch: Option<u64>,
    /// Free space where its store and logs are (`min_free_space`).
    pub disk: Vec<Reading>,
}

/// One clustered mailbox server: `hubrelay status` plus its outstanding resubmission requests.
#[derive(Debug, Serialize)]
pub struct CmsView {
    /// The CMS.
    pub name: String,
    /// The node that holds the databases (null when none does).
    pub active_node: Option<String>,
    /// The other node.
    pub passive_node: Option<String>,
    /// "Healthy", "Witness" or "Lost".
    pub quorum: String,
    /// "Online" or "Unavailable".
    pub witness: String,
    /// Why a node is dismounted, if one is.
    pub dismounted_reason: Option<String>,
    /// Storage groups whose log fails on the active node.
    pub failed_databases: Vec<String>,
    /// Both nodes, in site order.
    pub nodes: Vec<NodeView>,
    /// Per storage group, the passive copy's counters (as `status`).
    pub storage_groups: Vec<SgCopyStatus>,
    /// Dumpster requests its nodes still wait on.
    pub outstanding: Vec<OutstandingView>,
    /// Nodes that did not answer.
    pub unreachable: Vec<String>,
}

/// Mounts a role's admin app: its `router` and `/api/site` behind the site's token, and the
/// dashboard page in front of it without one.
///
/// `identity` is the role's certificate, which the page's calls to the other roles present under
/// `admin_tls = "mutual"`.
pub fn mount(router: Router, site: Arc<Site>, identity: Option<TlsFiles>) -> Router {
    let token = site.admin_token.clone();
    let api = router.route(
        "/api/site",
        get(site_document).with_state((site, identity.map(Arc::new))),
    );
    super::with_auth(api, token).merge(page_router())
}

fn page_router() -> Router {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/dashboard.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
}

/// An embedded asset. The policy keeps the page to its own script and style and its own
/// origin's API, and no referrer leaves it.
async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn site_document(
    State((site, identity)): State<(Arc<Site>, Option<Arc<TlsFiles>>)>,
) -> Result<Json<SiteDocument>, ApiError> {
    gather(site, identity.as_deref())
        .await
        .map(Json)
        .map_err(ApiError::internal)
}

/// Asks every hub and node of `site` at once, presenting `identity`; a role that does not answer
/// within [`ROLE_TIMEOUT`] is shown down.
async fn gather(site: Arc<Site>, identity: Option<&TlsFiles>) -> Result<SiteDocument, ClientError> {
    let client = AdminClient::presenting(&site, identity, ROLE_TIMEOUT)?;
    let mut hub_calls = JoinSet::new();
    for (i, h) in site.hubs.iter().enumerate() {
        let (client, name, addr) = (client.clone(), h.name.clone(), h.admin);
        hub_calls.spawn(async move { (i, hub_view(&client, name, addr).await) });
    }
    let mut cms_calls = JoinSet::new();
    for i in 0..site.cms.len() {
        let (client, site) = (client.clone(), site.clone());
        cms_calls.spawn(async move { (i, cms_view(&client, &site.cms[i]).await) });
    }
    let mut hubs: Vec<Option<HubView>> = site.hubs.iter().map(|_| None).collect();
    while let Some(done) = hub_calls.join_next().await {
        if let Ok((i, h)) = done {
            hubs[i] = Some(h);
        }
    }
    let mut cms: Vec<Option<(CmsView, Vec<NodeStatus>)>> = site.cms.iter().map(|_| None).collect();
    while let Some(done) = cms_calls.join_next().await {
        if let Ok((i, c)) = done {
            cms[i] = Some(c);
        }
    }
    // A call that panicked shows its hub down rather than leaving it off the page.
    let hubs: Vec<HubView> = hubs
        .into_iter()
        .zip(&site.hubs)
        .map(|(h, cfg)| h.unwrap_or_else(|| down(cfg.name.clone(), "not asked".into())))
        .collect();
    let cms: Vec<(CmsView, Vec<NodeStatus>)> = cms.into_iter().flatten().collect();
    let now = now_ms();
    let coverage = site
        .storage_group_names()
        .iter()
        .map(|sg| sg_coverage(sg, &hubs, &cms, now))
        .collect();
    Ok(SiteDocument {
        site: site.name.clone(),
        now_ms: now,
        generated: rfc3339(now),
        hubs,
        cms: cms.into_iter().map(|(c, _)| c).collect(),
        coverage,
    })
}

async fn hub_view(client: &AdminClient, name: String, addr: std::net::SocketAddr) -> HubView {
    let (queue, dumpster, disk) = tokio::join!(
        client.get::<QueueSummary>(addr, "/api/queue"),
        client.get::<Vec<HubDumpsterStats>>(addr, "/api/dumpster"),
        client.get::<Vec<Reading>>(addr, "/api/disk")
    );
    match (queue, dumpster) {
        (Ok(q), Ok(d)) => HubView {
            name,
            up: true,
            error: None,
            queue_messages: Some(q.messages),
            queue_oldest_age_seconds: q.oldest_age_seconds,
            dumpster: d,
            disk: disk.unwrap_or_default(),
        },
        (Err(e), _) | (_, Err(e)) => down(name, e.to_string()),
    }
}

fn down(name: String, error: String) -> HubView {
    HubView {
        name,
        up: false,
        error: Some(error),
        queue_messages: None,
        queue_oldest_age_seconds: None,
        dumpster: Vec::new(),
        disk: Vec::new(),
    }
}

/// `hubrelay status` of one CMS, with the outstanding requests of the nodes that answered. The
/// nodes' own reports come back too, for the coverage of its storage groups.
async fn cms_view(client: &AdminClient, cms: &Cms) -> (CmsView, Vec<NodeStatus>) {
    let s = cms_status(client, cms).await;
    let mut outstanding: Vec<OutstandingView> = Vec::new();
    for n in cms
        .nodes
        .iter()
        .filter(|n| !s.unreachable.contains(&n.name))
    {
        let list = client
            .get::<Vec<(String, OutstandingView)>>(n.admin, "/api/outstanding")
            .await
            .unwrap_or_default();
        for (_, o) in list {
            if !outstanding.contains(&o) {
                outstanding.push(o);
            }
        }
    }
    let mut nodes = Vec::new();
    for n in &cms.nodes {
        let own = s.nodes.iter().find(|r| r.node == n.name);
        let disk = match own {
            Some(_) => client
                .get::<Vec<Reading>>(n.admin, "/api/disk")
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        nodes.push(NodeView {
            name: n.name.clone(),
            up: own.is_some(),
            role: own.map(|r| r.role.clone()),
            sees_peer: own.is_some_and(|r| r.sees_peer),
            witness_ok: own.is_some_and(|r| r.witness_ok),
            epoch: own.map(|r| r.epoch),
            disk,
        });
    }
    let view = CmsView {
        name: s.cms,
        active_node: s.active_node,
        passive_node: s.passive_node,
        quorum: s.quorum,
        witness: s.witness,
        dismounted_reason: s.dismounted_reason,
        failed_databases: s.failed_databases,
        nodes,
        storage_groups: s.storage_groups,
        outstanding,
        unreachable: s.unreachable,
    };
    (view, s.nodes)
}

/// The window of `sg` is the passive node's (one that answers and is not mounted): the newest
/// record it replayed.
fn sg_coverage(
    sg: &str,
    hubs: &[HubView],
    cms: &[(CmsView, Vec<NodeStatus>)],
    now: u64,
) -> SgCoverage {
    let passive = cms
        .iter()
        .flat_map(|(_, nodes)| nodes)
        .filter(|n| n.role == "Passive")
        .find_map(|n| n.storage_groups.iter().find(|g| g.name == sg));
    let window = match passive {
        Some(g) => Window::Since(g.newest_replayed.as_deref().and_then(millis)),
        None => Window::NoPassive,
    };
    let reach: Vec<(&str, Option<Dumpster>)> = hubs
        .iter()
        .map(|h| {
            let d = h.dumpster.iter().find(|d| d.storage_group == sg);
            let d = d.map(|d| Dumpster {
                oldest_delivered: d.oldest_delivered.as_deref().and_then(millis),
                let_go: d.evicted > 0 || d.expired > 0,
            });
            (h.name.as_str(), d)
        })
        .collect();
    coverage::coverage(sg, window, &reach, now)
}

fn millis(rfc3339: &str) -> Option<u64> {
    DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A site whose roles listen nowhere (port 1 refuses at once), served by `mount` alone.
    async fn serve() -> std::net::SocketAddr {
        let text = r#"
[site]
name = "t"
accepted_domains = ["example.test"]
admin_token = "secret"

[[hub]]
name = "hub1"
smtp = "127.0.0.1:1"
admin = "127.0.0.1:1"

[[cms]]
name = "cms1"
witness = "witness/cms1"

[[cms.node]]
name = "node1"
smtp = "127.0.0.1:1"
admin = "127.0.0.1:1"

[[cms.node]]
name = "node2"
smtp = "127.0.0.1:1"
admin = "127.0.0.1:1"

[[cms.storage_group]]
name = "SG1"
mailboxes = ["alice@example.test"]
"#;
        let site = Arc::new(Site::parse(Path::new("site.toml"), text).expect("site"));
        let app = mount(Router::new(), site, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn the_page_and_its_assets_need_no_token() {
        let addr = serve().await;
        for (path, kind, marker) in [
            ("/", "text/html", "dashboard.js"),
            ("/dashboard.js", "text/javascript", "sessionStorage"),
            ("/dashboard.css", "text/css", "data-up"),
        ] {
            let r = client()
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .expect(path);
            assert_eq!(r.status(), 200, "{path}");
            let ct = r.headers()[header::CONTENT_TYPE].to_str().expect("ascii");
            assert!(ct.starts_with(kind), "{path}: {ct}");
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
            let body = r.text().await.expect("body");
            assert!(body.contains(marker), "{path}");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path} loads nothing from elsewhere"
            );
        }
    }

    #[tokio::test]
    async fn the_site_document_needs_the_token() {
        let addr = serve().await;
        let url = format!("http://{addr}/api/site");
        let none = client().get(&url).send().await.expect("no token");
        assert_eq!(none.status(), 401);
        let wrong = client()
            .get(&url)
            .bearer_auth("guess")
            .send()
            .await
            .expect("wrong token");
        assert_eq!(wrong.status(), 401);
        let doc: serde_json::Value = client()
            .get(&url)
            .bearer_auth("secret")
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        // Nothing of this site listens: every role is shown down, not an error.
        assert_eq!(doc["hubs"][0]["name"], "hub1");
        assert_eq!(doc["hubs"][0]["up"], false);
        assert_eq!(doc["cms"][0]["nodes"][1]["up"], false);
        assert_eq!(doc["cms"][0]["quorum"], "Lost");
        assert_eq!(doc["coverage"][0]["storage_group"], "SG1");
        assert_eq!(doc["coverage"][0]["state"], "unknown");
    }
}
