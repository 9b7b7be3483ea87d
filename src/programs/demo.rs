//! `hubrelay demo`: a private site ([`super::private_site`]: four processes of this binary, hub1,
//! hub2, node1 and node2, in a temporary directory on free 127.0.0.1 ports). It sends mail, makes
//! the passive node fall behind, kills the active node (`kill -9`) before its newest logs ship,
//! and narrates the automatic lossy failover and the dumpster recovery, ending with a verdict.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Serialize;

use super::private_site::{fail, until_interrupted, PrivateSite, SiteSpec};
use super::{print_json, ProgramError};
use crate::client::cms::cms_status;
use crate::telemetry::logging::LogFormat;
use crate::wire::mailbox::MailboxListing;

const WAIT: Duration = Duration::from_secs(30);

/// The demo's verdict.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// Messages accepted by the hubs.
    pub sent: usize,
    /// Messages missing from the mailbox right after the failover.
    pub lost_before_recovery: usize,
    /// Of those, how many the dumpster brought back.
    pub recovered: usize,
    /// Message-IDs listed more than once at the end.
    pub duplicates: usize,
    /// From the kill to the new active node mounted.
    pub failover_seconds: f64,
    /// True when every message is there exactly once.
    pub ok: bool,
}

/// The demo's site: STARTTLS between hubs and nodes, small log generations (4 KiB) so that a few
/// messages close several, and quick retries.
const SITE: SiteSpec<'static> = SiteSpec {
    name: "demo",
    admin_token: "demo-token",
    site_keys: r#"accepted_domains = ["example.test"]
retry_min = "200ms"
retry_max = "2s"
"#,
    tls: true,
    log_file_size: "4KiB",
    storage_groups: r#"[[cms.storage_group]]
name = "SG1"
mailboxes = ["alice@example.test", "bob@example.test"]
"#,
};

struct Demo {
    ps: PrivateSite,
    json: bool,
}

impl Demo {
    fn say(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    async fn wait_active(&self, node: &str) -> Result<(), ProgramError> {
        let start = Instant::now();
        while cms_status(&self.ps.client, &self.ps.site.cms[0])
            .await
            .active_node
            .as_deref()
            != Some(node)
        {
            if start.elapsed() > WAIT {
                return Err(ProgramError::Failed(format!(
                    "{node} did not become active"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn send(&self, hub: usize, ids: &[String]) -> Result<(), ProgramError> {
        let port = self.ps.site.hubs[hub].smtp.port();
        let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .build();
        let from = "bob@example.test".parse().map_err(fail)?;
        let to = "alice@example.test".parse().map_err(fail)?;
        let envelope = Envelope::new(Some(from), vec![to]).map_err(fail)?;
        for id in ids {
            let msg = format!("From: bob@example.test\r\nTo: alice@example.test\r\nSubject: demo\r\nMessage-ID: {id}\r\n\r\n{}\r\n", "hubrelay demo ".repeat(20));
            smtp.send_raw(&envelope, msg.as_bytes())
                .await
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Alice's Message-IDs on whichever node is active.
    async fn listed(&self) -> Vec<String> {
        for n in &self.ps.site.cms[0].nodes {
            if let Ok(l) = self
                .ps
                .client
                .get::<MailboxListing>(n.admin, "/api/mailbox?address=alice%40example.test")
                .await
            {
                return l.messages.into_iter().map(|m| m.message_id).collect();
            }
        }
        Vec::new()
    }

    async fn wait_listed(&self, want: &BTreeSet<String>) -> Result<Vec<String>, ProgramError> {
        let start = Instant::now();
        loop {
            let got = self.listed().await;
            if want.iter().all(|w| got.contains(w)) {
                return Ok(got);
            }
            if start.elapsed() > WAIT {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_copied_up(&self) -> Result<(), ProgramError> {
        let start = Instant::now();
        loop {
            let s = cms_status(&self.ps.client, &self.ps.site.cms[0]).await;
            if s.storage_groups
                .first()
                .and_then(|g| g.copy_queue_length)
                .is_some_and(|q| q <= 1)
            {
                return Ok(());
            }
            if start.elapsed() > WAIT {
                return Err(ProgramError::Failed("node2 did not catch up".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("<{prefix}-{i}@demo.test>"))
        .collect()
}

/// Runs `hubrelay demo`; its processes log (to files in the private site) in `log` format.
pub async fn run(json: bool, log: LogFormat) -> Result<(), ProgramError> {
    let verdict = until_interrupted(run_site(json, log)).await?;
    if json {
        print_json(&verdict)?;
    } else {
        println!(
            "\nVerdict: {} sent, {} lost before recovery, {} recovered, {} duplicates: {}",
            verdict.sent,
            verdict.lost_before_recovery,
            verdict.recovered,
            verdict.duplicates,
            if verdict.ok {
                "nothing lost, nothing doubled"
            } else {
                "MAIL LOST OR DOUBLED"
            }
        );
    }
    if verdict.ok {
        Ok(())
    } else {
        Err(ProgramError::Failed("the demo lost or doubled mail".into()))
    }
}

async fn run_site(json: bool, log: LogFormat) -> Result<Verdict, ProgramError> {
    let mut demo = Demo {
        ps: PrivateSite::start(&SITE, log).await?,
        json,
    };
    demo.say(&format!(
        "Started a private site in {} (hub1, hub2, node1, node2: four processes; the hubs deliver \
         to the nodes over STARTTLS with a self-signed certificate)",
        demo.ps.dir().display()
    ));
    demo.wait_active("node1").await?;
    demo.say("node1 is active, node2 copies its closed transaction logs (4 KiB each here).");

    let first = ids("demo", 60);
    demo.send(0, &first[..30]).await?;
    demo.send(1, &first[30..]).await?;
    let mut all: BTreeSet<String> = first.iter().cloned().collect();
    demo.wait_listed(&all).await?;
    demo.wait_copied_up().await?;
    demo.say("Sent 60 messages through both hubs; all are in alice's mailbox and node2 has copied every closed log.");

    let admin2 = demo.ps.site.cms[0].nodes[1].admin;
    demo.ps
        .client
        .post::<_, serde_json::Value>(admin2, "/api/copy/SG1/suspend", &serde_json::json!({}))
        .await
        .map_err(fail)?;
    let last = ids("demo-late", 8);
    demo.send(0, &last[..4]).await?;
    demo.send(1, &last[4..]).await?;
    all.extend(last.iter().cloned());
    demo.wait_listed(&all).await?;
    demo.say("node2 falls behind (its copy is suspended) while 8 more messages arrive; node1 holds them in logs node2 never gets.");

    demo.say("kill -9 node1.");
    demo.ps.kill9("node1");
    let killed = Instant::now();
    demo.wait_active("node2").await?;
    let failover_seconds = killed.elapsed().as_secs_f64();
    let s = cms_status(&demo.ps.client, &demo.ps.site.cms[0]).await;
    let present = demo.listed().await;
    let lost: Vec<&String> = all.iter().filter(|m| !present.contains(m)).collect();
    demo.say(&format!(
        "node2 lost its peer, took the file share witness and mounted in {failover_seconds:.1} s ({}); {} message(s) are missing from the mailbox.",
        if s.quorum == "Witness" { "quorum by the witness vote" } else { "quorum" },
        lost.len()
    ));
    demo.say("The mount was lossy, so node2 asked every hub to resubmit its dumpster for SG1; duplicates are dropped by Message-ID.");
    let end = demo.wait_listed(&all).await?;
    let unique: BTreeSet<&String> = end.iter().collect();
    let recovered = lost.iter().filter(|m| end.contains(m)).count();
    let duplicates = end.len() - unique.len();
    let ok = all.iter().all(|m| end.contains(m)) && duplicates == 0;
    demo.say(&format!("The mailbox lists {} messages.", end.len()));
    Ok(Verdict {
        sent: all.len(),
        lost_before_recovery: lost.len(),
        recovered,
        duplicates,
        failover_seconds,
        ok,
    })
}
