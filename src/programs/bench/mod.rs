//! `hubrelay bench`: a private site as `demo` starts it (two hubs and the two replicating nodes of
//! one CMS, four processes of this binary, durable queue and dumpster on, the example site's
//! defaults: 1 MiB log generations, clear-text SMTP) driven by the built-in load generator
//! ([`load`]), and a report of what it measured ([`report`]), for sizing a site on its hardware.
//!
//! "Delivered" is read from the nodes' `hubrelay_messages_stored_total` while the run goes on (no
//! mailbox is read per message); at the end every mailbox is listed once, and each message the
//! client got a 250 for must be in each of its mailboxes exactly once. The listing's delivery time
//! of a message (the active node's log record, in ms) against the client's start of the
//! transaction gives its end-to-end latency.

pub mod load;
pub mod report;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::DateTime;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use self::load::{Plan, DOMAIN};
use self::report::{Listed, Report};
use super::private_site::{fail, until_interrupted, PrivateSite, SiteSpec};
use super::{print_json, ProgramError};
use crate::client::{encode, AdminClient};
use crate::clock::now_ms;
use crate::config::Size;
use crate::telemetry::logging::LogFormat;
use crate::wire::cluster::NodeStatus;
use crate::wire::hub::QueueSummary;
use crate::wire::mailbox::MailboxListing;

/// The largest `--size`: each session holds a message in memory.
const SIZE_LIMIT: u64 = 64 << 20;
/// How often the progress display polls the nodes' metrics.
const POLL: Duration = Duration::from_millis(200);
/// How long the site may take to have an active node and a healthy passive copy.
const SETTLE: Duration = Duration::from_secs(30);
/// How long delivery may make no progress before the run stops waiting and counts what is missing.
const STALL: Duration = Duration::from_secs(30);

/// Options of `hubrelay bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Messages to send in all.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub messages: u64,
    /// Body bytes of each message, as sizes are written in the site file ("4KiB", "64KiB", "1MB"
    /// or a number of bytes; at most 64MiB); about 200 bytes of header come on top.
    #[arg(long, value_name = "S", default_value = "4KiB")]
    pub size: Size,
    /// Concurrent SMTP sessions, spread evenly over the two hubs; each stays open for the whole
    /// run and sends its next message as soon as the last one is answered (1 to 1000).
    #[arg(long, value_name = "C", default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrency: u16,
    /// Recipients of each message, distinct mailboxes in both storage groups of the site (1 to
    /// 100, the hubs' max_recipients).
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub recipients: u8,
}

/// Runs `hubrelay bench`: the report on stdout (text, or one JSON document), exit 1 unless every
/// message was accepted and stored exactly once.
pub async fn run(args: &BenchArgs, json: bool, log: LogFormat) -> Result<(), ProgramError> {
    if args.size.0 > SIZE_LIMIT {
        return Err(ProgramError::Usage(format!(
            "--size {} is too large (at most 64MiB)",
            args.size.0
        )));
    }
    let report = until_interrupted(bench(args, json, log)).await?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", report.text());
    }
    match report.problem() {
        None => Ok(()),
        Some(p) => Err(ProgramError::Failed(p)),
    }
}

async fn bench(args: &BenchArgs, json: bool, log: LogFormat) -> Result<Report, ProgramError> {
    let plan = Arc::new(Plan::new(
        usize::try_from(args.messages).map_err(fail)?,
        usize::try_from(args.size.0).map_err(fail)?,
        args.concurrency.into(),
        args.recipients.into(),
        format!("bench{}x{}", std::process::id(), now_ms()),
    ));
    // Room for the header above the body, and a dumpster bound the sizing rule accepts.
    let max_message = args.size.0.saturating_add(64 << 10).max(10_000_000);
    let keys = format!(
        "accepted_domains = [\"{DOMAIN}\"]\nmax_message_size = {max_message}\n\
         max_dumpster_size_per_storage_group = {}\n",
        (max_message * 3 / 2).max(18_000_000)
    );
    let groups = plan.storage_groups_toml();
    let spec = SiteSpec {
        name: "bench",
        admin_token: "bench-token",
        site_keys: &keys,
        tls: false,
        log_file_size: "1MiB",
        storage_groups: &groups,
    };
    if !json {
        eprintln!("Starting a private site (hub1, hub2, node1, node2: four processes) ...");
    }
    let ps = PrivateSite::start(&spec, log).await?;
    settle(&ps).await?;
    if !json {
        eprintln!(
            "Site ready in {}; sending {} messages over {} sessions",
            ps.dir().display(),
            plan.messages,
            plan.concurrency.min(plan.messages)
        );
    }

    let bars = Bars::new(plan.messages);
    let accepted = Arc::new(AtomicUsize::new(0));
    let hubs: Vec<SocketAddr> = ps.site.hubs.iter().map(|h| h.smtp).collect();
    let load = load::run(Arc::clone(&plan), &hubs, Arc::clone(&accepted));
    tokio::pin!(load);
    let mut tick = tokio::time::interval(POLL);
    let outcome = loop {
        tokio::select! {
            o = &mut load => break o,
            _ = tick.tick() => {
                let stored = stored_copies(&ps).await;
                bars.show(accepted.load(Ordering::Relaxed), stored / plan.recipients);
            }
        }
    };
    bars.show(
        outcome.accepted.len(),
        stored_copies(&ps).await / plan.recipients,
    );
    let stalled = wait_delivered(&ps, outcome.accepted.len() * plan.recipients, &bars, &plan).await;
    bars.finish();

    let statuses = node_statuses(&ps).await;
    let active = statuses.iter().find(|s| s.mounted);
    let passive = statuses.iter().find(|s| !s.mounted);
    let replication = report::replication(active, passive);
    let listed = list_mailboxes(&ps, &plan).await?;
    let peak_rss_bytes: BTreeMap<String, Option<u64>> = ps
        .pids()
        .into_iter()
        .map(|(name, pid)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
            (name, status.as_deref().and_then(report::peak_rss))
        })
        .collect();
    drop(ps);
    Ok(Report::compose(
        &plan,
        outcome,
        &listed,
        replication,
        peak_rss_bytes,
        stalled,
    ))
}

/// Waits until a node is active and the other's copy of every storage group is Healthy, so the
/// run measures a settled site.
async fn settle(ps: &PrivateSite) -> Result<(), ProgramError> {
    let start = Instant::now();
    loop {
        let s = node_statuses(ps).await;
        let active = s.iter().any(|n| n.mounted);
        let healthy = s.iter().any(|n| {
            !n.mounted
                && n.storage_groups.iter().all(|g| {
                    g.summary_copy_status == Some(crate::wire::cluster::SummaryCopyStatus::Healthy)
                })
        });
        if active && healthy {
            return Ok(());
        }
        if start.elapsed() > SETTLE {
            return Err(ProgramError::Failed(format!(
                "the private site did not settle (an active node and a healthy passive copy) in {} s; logs in {}",
                SETTLE.as_secs(),
                ps.dir().join("data").display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until the nodes have stored `expected` mailbox copies and the hubs' queues are empty; true if
/// it gave up because nothing moved for [`STALL`].
async fn wait_delivered(ps: &PrivateSite, expected: usize, bars: &Bars, plan: &Plan) -> bool {
    let mut seen = None;
    let mut moved = Instant::now();
    loop {
        let stored = stored_copies(ps).await;
        bars.show_delivered(stored / plan.recipients);
        let queued = if stored >= expected {
            let q = queued(ps).await;
            if q == Some(0) {
                return false;
            }
            q
        } else {
            None
        };
        if seen != Some((stored, queued)) {
            seen = Some((stored, queued));
            moved = Instant::now();
        } else if moved.elapsed() > STALL {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Mailbox copies stored by deliveries, over both nodes (a node that does not answer counts 0).
async fn stored_copies(ps: &PrivateSite) -> usize {
    let mut total = 0;
    for n in &ps.site.cms[0].nodes {
        if let Ok(text) = ps.client.get_bytes(n.admin, "/metrics").await {
            total += report::stored_total(&String::from_utf8_lossy(&text));
        }
    }
    usize::try_from(total).unwrap_or(usize::MAX)
}

/// Messages in the hubs' queues; `None` if a hub did not answer.
async fn queued(ps: &PrivateSite) -> Option<usize> {
    let mut total = 0;
    for h in &ps.site.hubs {
        total += ps
            .client
            .get::<QueueSummary>(h.admin, "/api/queue")
            .await
            .ok()?
            .messages;
    }
    Some(total)
}

async fn node_statuses(ps: &PrivateSite) -> Vec<NodeStatus> {
    let mut out = Vec::new();
    for n in &ps.site.cms[0].nodes {
        if let Ok(s) = ps.client.get::<NodeStatus>(n.admin, "/api/status").await {
            out.push(s);
        }
    }
    out
}

/// Every mailbox of the plan, listed once on the active node: the copies of this run's messages.
async fn list_mailboxes(ps: &PrivateSite, plan: &Plan) -> Result<Vec<Listed>, ProgramError> {
    // A listing of a large run takes longer than the CLI's usual 3 s.
    let client = AdminClient::with_timeout(&ps.site, Duration::from_secs(120)).map_err(fail)?;
    let mut out = Vec::new();
    for k in 0..plan.mailboxes {
        let address = plan.mailbox(k);
        let path = format!("/api/mailbox?address={}", encode(&address));
        let mut listing = None;
        for n in &ps.site.cms[0].nodes {
            if let Ok(l) = client.get::<MailboxListing>(n.admin, &path).await {
                listing = Some(l);
                break;
            }
        }
        let listing = listing.ok_or_else(|| {
            ProgramError::Failed(format!(
                "no active node answered the listing of {address}: cannot verify delivery"
            ))
        })?;
        for m in listing.messages {
            let (Some(index), Ok(t)) = (
                plan.index_of(&m.message_id),
                DateTime::parse_from_rfc3339(&m.delivered),
            ) else {
                continue;
            };
            out.push(Listed {
                mailbox: k,
                index,
                delivered_ms: u64::try_from(t.timestamp_millis()).unwrap_or(0),
            });
        }
    }
    Ok(out)
}

/// The progress display on stderr: accepted and delivered, each against the messages asked for,
/// with the rate since the load started (hidden when stderr is not a terminal).
struct Bars {
    accepted: ProgressBar,
    delivered: ProgressBar,
    started: Instant,
}

impl Bars {
    fn new(messages: usize) -> Bars {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos:>8}/{len} {msg}")
            .expect("static template is valid")
            .progress_chars("=> ");
        let bar = |name: &'static str| {
            let b = multi.add(ProgressBar::new(messages as u64));
            b.set_style(style.clone());
            b.set_prefix(name);
            b
        };
        Bars {
            accepted: bar("accepted"),
            delivered: bar("delivered"),
            started: Instant::now(),
        }
    }

    fn show(&self, accepted: usize, delivered: usize) {
        self.set(&self.accepted, accepted);
        self.show_delivered(delivered);
    }

    fn show_delivered(&self, delivered: usize) {
        self.set(&self.delivered, delivered);
    }

    fn set(&self, bar: &ProgressBar, n: usize) {
        bar.set_position(n as u64);
        let seconds = self.started.elapsed().as_secs_f64();
        if seconds > 0.0 {
            bar.set_message(format!("{:.0} msg/s", n as f64 / seconds));
        }
    }

    fn finish(&self) {
        self.accepted.finish();
        self.delivered.finish();
    }
}
