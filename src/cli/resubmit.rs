//! `hubrelay resubmit`: ask every hub of the site to redeliver a storage group's dumpster window.

use std::io::IsTerminal;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{print_json, Failure};
use crate::client::{encode, AdminClient};
use crate::config::Site;
use crate::wire::hub::{ResubmitBody, ResubmitState};
use store::hub::ResubmitFilter;

/// How long the CLI follows a hub's progress before reporting it as still running.
const FOLLOW_LIMIT: Duration = Duration::from_secs(120);

/// One hub's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct HubResult {
    /// The hub.
    pub hub: String,
    /// "done", "running" (still going when the CLI stopped following) or "unreachable".
    pub status: String,
    /// Dumpster entries it put back in its queue for this request.
    pub messages: u64,
}

/// `resubmit --json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResubmitReport {
    /// The storage group.
    pub storage_group: String,
    /// Window start (RFC 3339).
    pub low: String,
    /// Window end (RFC 3339).
    pub high: String,
    /// The filters and the test-only flag (`recipient`, `sender`, `message_id`, `test_only`).
    #[serde(flatten)]
    pub filter: ResubmitFilter,
    /// One entry per hub of the site.
    pub requests: Vec<HubResult>,
}

/// Parses a `--since`/`--until` value: RFC 3339, or a duration back from `now`.
pub fn parse_when(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(value).map_err(|_| {
        format!("`{value}` is neither an RFC 3339 time nor a duration like \"30m\"")
    })?;
    let d = chrono::Duration::from_std(d).map_err(|_| format!("`{value}` is too long ago"))?;
    Ok(now - d)
}

/// What `hubrelay resubmit` asks for: a storage group's window, optionally narrowed like
/// Exchange 2013's `Add-ResubmitRequest`.
#[derive(Debug, clap::Args)]
pub struct ResubmitArgs {
    /// The storage group (may be left out with --recipient: that mailbox's storage group).
    #[arg(
        long = "storage-group",
        value_name = "SG",
        required_unless_present = "recipient"
    )]
    pub storage_group: Option<String>,
    /// Window start: RFC 3339, or a duration back from now ("30m"). Default: now - MaxDumpsterTime.
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Window end: RFC 3339, or a duration back from now. Default: now.
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only messages delivered to this mailbox, redelivered to it alone.
    #[arg(long, value_name = "ADDRESS")]
    pub recipient: Option<String>,
    /// Only messages from this sender ("" for bounces, the null sender).
    #[arg(long, value_name = "ADDRESS")]
    pub sender: Option<String>,
    /// Only the message with this Message-ID (angle brackets optional).
    #[arg(long = "message-id", value_name = "ID")]
    pub message_id: Option<String>,
    /// Count, per hub, what would be redelivered; send nothing.
    #[arg(long = "test-only")]
    pub test_only: bool,
}

/// The storage group a request is for: given, or the recipient's; both must agree.
fn storage_group(site: &Site, args: &ResubmitArgs) -> Result<String, Failure> {
    let of_recipient = match &args.recipient {
        Some(r) => Some(
            site.route(r)
                .map(|route| route.storage_group)
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "--recipient {r} is no mailbox of any storage group in {}",
                        site.file.display()
                    ))
                })?,
        ),
        None => None,
    };
    match (&args.storage_group, of_recipient) {
        (Some(sg), _) if site.cms_of_storage_group(sg).is_none() => Err(Failure::Usage(format!(
            "no storage group named `{sg}` in {}",
            site.file.display()
        ))),
        (Some(sg), Some(other)) if *sg != other => Err(Failure::Usage(format!(
            "--recipient is a mailbox of {other}, not of {sg}"
        ))),
        (Some(sg), _) => Ok(sg.clone()),
        (None, Some(sg)) => Ok(sg),
        (None, None) => Err(Failure::Usage(
            "give --storage-group (or --recipient)".into(),
        )),
    }
}

/// Runs `hubrelay resubmit`.
pub async fn run(site: &Site, args: &ResubmitArgs, json: bool) -> Result<(), Failure> {
    let sg = storage_group(site, args)?;
    let sg = sg.as_str();
    let (since, until) = (args.since.as_deref(), args.until.as_deref());
    let now = Utc::now();
    let max_age =
        chrono::Duration::from_std(site.max_dumpster_time).unwrap_or(chrono::Duration::days(7));
    let low = match since {
        Some(v) => parse_when(v, now).map_err(|e| Failure::Usage(format!("--since: {e}")))?,
        None => now - max_age,
    };
    let high = match until {
        Some(v) => parse_when(v, now).map_err(|e| Failure::Usage(format!("--until: {e}")))?,
        None => now,
    };
    if low > high {
        return Err(Failure::Usage("--since is after --until".into()));
    }
    let body = ResubmitBody {
        id: format!(
            "cli-{}-{:08x}",
            now.timestamp_millis(),
            rand::random::<u32>()
        ),
        storage_group: sg.to_string(),
        // The operator's window, both bounds given: served as asked (on the hubs' delivery
        // clocks, read as this host's).
        low: low.to_rfc3339(),
        high: Some(high.to_rfc3339()),
        recipient: args.recipient.clone(),
        sender: args.sender.clone(),
        message_id: args.message_id.clone(),
        test_only: args.test_only,
        epoch: None,
    };
    let client = super::cluster::admin_client(site)?;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg}").expect("static template is valid"),
        );
        b.enable_steady_tick(Duration::from_millis(100));
        b
    });
    let mut requests = Vec::new();
    for hub in &site.hubs {
        let result = match client
            .post::<_, ResubmitState>(hub.admin, "/api/resubmit", &body)
            .await
        {
            Ok(state) => follow(&client, hub.admin, &hub.name, state, bar.as_ref()).await,
            Err(_) => HubResult {
                hub: hub.name.clone(),
                status: "unreachable".into(),
                messages: 0,
            },
        };
        requests.push(result);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = ResubmitReport {
        storage_group: sg.to_string(),
        low: low.to_rfc3339(),
        high: high.to_rfc3339(),
        filter: ResubmitFilter {
            recipient: body.recipient,
            sender: body.sender,
            message_id: body.message_id,
            test_only: body.test_only,
        },
        requests,
    };
    if json {
        print_json(&report)?;
    } else {
        print_text(&report);
    }
    let unreachable: Vec<&str> = report
        .requests
        .iter()
        .filter(|r| r.status == "unreachable")
        .map(|r| r.hub.as_str())
        .collect();
    if unreachable.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "hubs that did not answer: {}",
            unreachable.join(", ")
        )))
    }
}

fn print_text(report: &ResubmitReport) {
    let f = &report.filter;
    let mut what = format!(
        "{} from {} to {}",
        report.storage_group, report.low, report.high
    );
    if let Some(r) = &f.recipient {
        what.push_str(&format!(", to {r} only"));
    }
    if let Some(s) = &f.sender {
        what.push_str(&format!(", from sender <{s}>"));
    }
    if let Some(m) = &f.message_id {
        what.push_str(&format!(", Message-ID {m}"));
    }
    if f.test_only {
        println!("Test only (nothing is sent): resubmission of {what}");
    } else {
        println!("Resubmission of {what}");
    }
    for r in &report.requests {
        if f.test_only && r.status == "done" {
            println!("  {}: {} messages would be resubmitted", r.hub, r.messages);
        } else {
            println!("  {}: {} ({} messages)", r.hub, r.status, r.messages);
        }
    }
}

/// Polls a hub until its request is done, updating the progress line.
async fn follow(
    client: &AdminClient,
    addr: std::net::SocketAddr,
    hub: &str,
    mut state: ResubmitState,
    bar: Option<&ProgressBar>,
) -> HubResult {
    let started = tokio::time::Instant::now();
    let path = format!("/api/resubmit/{}", encode(&state.id));
    while !state.done && started.elapsed() < FOLLOW_LIMIT {
        if let Some(b) = bar {
            b.set_message(format!("{hub}: {} messages queued again", state.messages));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match client.get::<ResubmitState>(addr, &path).await {
            Ok(s) => state = s,
            Err(_) => break,
        }
    }
    HubResult {
        hub: hub.to_string(),
        status: if state.done { "done" } else { "running" }.to_string(),
        messages: state.messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_accepts_rfc3339_and_durations() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_when("30m", now).unwrap().to_rfc3339(),
            "2026-11-22T09:30:00+00:00"
        );
        assert_eq!(
            parse_when("2026-11-22T09:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-22T09:00:00+00:00"
        );
        assert!(parse_when("yesterday-ish", now)
            .unwrap_err()
            .contains("neither"));
    }
}
