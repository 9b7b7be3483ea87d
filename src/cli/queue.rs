//! `hubrelay queue`: the hub queues, like `postqueue -p`/`postsuper` and Exchange's
//! `Get-Queue`/`Get-Message`/`Retry-Queue`/`Suspend-Message`/`Resume-Message`/`Remove-Message`.
//!
//! Queue ids are per hub. An action on an id without `--hub` asks every hub and acts on the one
//! that has it; it refuses (exit 2) when several do, and fails (exit 1) when none does or when a
//! hub that did not answer might.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Subcommand;
use tokio::task::JoinSet;

use super::{print_json, Failure};
use crate::client::{AdminClient, ClientError};
use crate::config::{Hub, Site};
use crate::hub::queue::QueueId;
use crate::wire::queue::{DeleteBody, DeleteReport, MessageView, RetryAllReport};

/// The `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Every queued message: id, size, arrival, sender, held flag, each recipient with its state
    /// and last error, attempts and next attempt.
    List {
        /// Only this hub's queue.
        #[arg(long, value_name = "HUB")]
        hub: Option<String>,
    },
    /// One queued message in full.
    Show {
        /// Its queue id (hex, as in "250 2.0.0 queued as 1a2b").
        id: String,
        /// The hub that holds it (needed when several hubs have the id).
        #[arg(long, value_name = "HUB")]
        hub: Option<String>,
    },
    /// Attempt a message, or with --all every message that is not held, now.
    Retry {
        /// Its queue id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every message that is not held.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// The hub that holds it; with --all, only this hub.
        #[arg(long, value_name = "HUB")]
        hub: Option<String>,
    },
    /// Hold a message: it is neither attempted nor expired until released, across restarts.
    Hold {
        /// Its queue id.
        id: String,
        /// The hub that holds it.
        #[arg(long, value_name = "HUB")]
        hub: Option<String>,
    },
    /// Release a held message and attempt it now; its expiry moves on by the time it was held.
    Release {
        /// Its queue id.
        id: String,
        /// The hub that holds it.
        #[arg(long, value_name = "HUB")]
        hub: Option<String>,
    },
    /// Delete a message from the queue; the hub logs who and why.
    Delete {
        /// Its queue id.
        id: String,
        /// The hub that holds it.
        #[arg(long, value_name = "HUB")]
        hub: Option<String>,
        /// Return it to its sender as failed ("deleted by the administrator"); never for the null
        /// sender or a resubmitted copy.
        #[arg(long)]
        dsn: bool,
        /// Why, for the hub's log.
        #[arg(long, value_name = "TEXT", default_value = crate::hub::queue::DELETED)]
        reason: String,
    },
}

/// Runs `hubrelay queue ...`.
pub async fn run(site: &Site, command: QueueCommand, json: bool) -> Result<(), Failure> {
    let client = super::cluster::admin_client(site)?;
    match command {
        QueueCommand::List { hub } => list(site, &client, hub.as_deref(), json).await,
        QueueCommand::Show { id, hub } => {
            let (_, m) = locate(site, &client, &id, hub.as_deref()).await?;
            if json {
                print_json(&m)
            } else {
                print!("{}", details(&m));
                Ok(())
            }
        }
        QueueCommand::Retry { all: true, hub, .. } => {
            retry_all(site, &client, hub.as_deref(), json).await
        }
        QueueCommand::Retry { id, hub, .. } => {
            let id = id.ok_or_else(|| Failure::Usage("give a queue id or --all".into()))?;
            act(site, &client, &id, hub.as_deref(), "retry", json).await
        }
        QueueCommand::Hold { id, hub } => {
            act(site, &client, &id, hub.as_deref(), "hold", json).await
        }
        QueueCommand::Release { id, hub } => {
            act(site, &client, &id, hub.as_deref(), "release", json).await
        }
        QueueCommand::Delete {
            id,
            hub,
            dsn,
            reason,
        } => {
            let (h, m) = locate(site, &client, &id, hub.as_deref()).await?;
            let body = DeleteBody {
                dsn,
                reason: Some(reason),
                by: who(),
            };
            let path = format!("/api/queue/messages/{}", m.id);
            let r: DeleteReport = client
                .delete(h.admin, &path, &body)
                .await
                .map_err(|e| failed(&h.name, e))?;
            if json {
                return print_json(&r);
            }
            let dsn = if r.dsn {
                format!("; a DSN goes to {}", sender_text(&r.message.sender))
            } else {
                String::new()
            };
            println!(
                "{}: deleted {} ({}){dsn}",
                h.name, r.message.id, r.message.message_id
            );
            Ok(())
        }
    }
}

/// The hubs a command addresses: `--hub`, or every hub of the site.
fn hubs<'a>(site: &'a Site, only: Option<&str>) -> Result<Vec<&'a Hub>, Failure> {
    match only {
        None => Ok(site.hubs.iter().collect()),
        Some(name) => site.hub(name).map(|h| vec![h]).ok_or_else(|| {
            let known: Vec<&str> = site.hubs.iter().map(|h| h.name.as_str()).collect();
            Failure::Usage(format!(
                "--hub: no hub named `{name}` in {} (known: {})",
                site.file.display(),
                known.join(", ")
            ))
        }),
    }
}

/// A failed request to hub `hub`, as the one-line error of exit status 1.
fn failed(hub: &str, e: ClientError) -> Failure {
    match e {
        ClientError::Status { message, .. } => Failure::Failed(format!("{hub}: {message}")),
        e => Failure::Failed(format!("{hub}: {e}")),
    }
}

/// Who runs the command, for the hub's log: `$USER@hostname`.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

async fn list(
    site: &Site,
    client: &AdminClient,
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let hubs = hubs(site, only)?;
    let mut calls = JoinSet::new();
    for (i, h) in hubs.iter().enumerate() {
        let (client, addr) = (client.clone(), h.admin);
        calls.spawn(async move {
            let answer = client
                .get::<Vec<MessageView>>(addr, "/api/queue/messages")
                .await;
            (i, answer)
        });
    }
    let mut answers: Vec<Option<Result<Vec<MessageView>, ClientError>>> =
        hubs.iter().map(|_| None).collect();
    while let Some(done) = calls.join_next().await {
        let (i, answer) = done.map_err(|e| Failure::Failed(e.to_string()))?;
        answers[i] = Some(answer);
    }
    let mut messages = Vec::new();
    let mut silent = Vec::new();
    let mut text = String::new();
    for (h, answer) in hubs.iter().zip(answers) {
        match answer {
            Some(Ok(list)) => {
                text.push_str(&listing(&h.name, &list));
                messages.extend(list);
            }
            Some(Err(e)) => silent.push(format!("{} ({e})", h.name)),
            None => silent.push(h.name.clone()),
        }
    }
    if json {
        print_json(&messages)?;
    } else {
        print!("{text}");
    }
    if silent.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "hubs that did not answer: {}",
            silent.join(", ")
        )))
    }
}

/// The hub that holds `raw` and the message: `--hub`'s, or the one hub of the site that has it.
async fn locate<'a>(
    site: &'a Site,
    client: &AdminClient,
    raw: &str,
    only: Option<&str>,
) -> Result<(&'a Hub, MessageView), Failure> {
    let id = raw
        .parse::<QueueId>()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let hubs = hubs(site, only)?;
    let path = format!("/api/queue/messages/{id}");
    let mut found = Vec::new();
    let mut silent = Vec::new();
    for h in &hubs {
        match client.get::<MessageView>(h.admin, &path).await {
            Ok(m) => found.push((*h, m)),
            Err(ClientError::Status { status: 404, .. }) => {}
            Err(e) if only.is_some() => return Err(failed(&h.name, e)),
            Err(e) => silent.push(format!("{} ({e})", h.name)),
        }
    }
    match (found.len(), silent.is_empty()) {
        (1, true) => Ok(found.remove(0)),
        (0, true) if only.is_some() => Err(Failure::Failed(format!(
            "no message {id} in the queue of {}",
            hubs[0].name
        ))),
        (0, true) => Err(Failure::Failed(format!(
            "no message {id} in any hub's queue"
        ))),
        (0 | 1, false) => Err(Failure::Failed(format!(
            "id {id} may be queued on hubs that did not answer: {}; give --hub",
            silent.join(", ")
        ))),
        _ => {
            let names: Vec<&str> = found.iter().map(|(h, _)| h.name.as_str()).collect();
            Err(Failure::Usage(format!(
                "id {id} is queued on {}: give --hub",
                names.join(" and ")
            )))
        }
    }
}

/// `retry`, `hold` or `release` of one message.
async fn act(
    site: &Site,
    client: &AdminClient,
    raw: &str,
    only: Option<&str>,
    verb: &str,
    json: bool,
) -> Result<(), Failure> {
    let (h, m) = locate(site, client, raw, only).await?;
    let path = format!("/api/queue/messages/{}/{verb}", m.id);
    let after: MessageView = client
        .post(h.admin, &path, &serde_json::json!({}))
        .await
        .map_err(|e| failed(&h.name, e))?;
    if json {
        return print_json(&after);
    }
    let done = match verb {
        "hold" => "held",
        "release" => "released; attempting it now",
        _ => "attempting it now",
    };
    println!("{}: {} ({}) {done}", h.name, after.id, after.message_id);
    Ok(())
}

async fn retry_all(
    site: &Site,
    client: &AdminClient,
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let mut reports = Vec::new();
    let mut silent = Vec::new();
    for h in hubs(site, only)? {
        match client
            .post::<_, RetryAllReport>(h.admin, "/api/queue/retry", &serde_json::json!({}))
            .await
        {
            Ok(r) => reports.push(r),
            Err(e) => silent.push(format!("{} ({e})", h.name)),
        }
    }
    if json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            println!(
                "{}: attempting {} messages now; {} held left alone",
                r.hub,
                r.retried.len(),
                r.held.len()
            );
        }
    }
    if silent.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "hubs that did not answer: {}",
            silent.join(", ")
        )))
    }
}

fn sender_text(sender: &str) -> &str {
    if sender.is_empty() {
        "<>"
    } else {
        sender
    }
}

fn age(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// One hub's queue as `postqueue -p` prints it: a block per message (`!` after the id: held),
/// then a summary line.
fn listing(hub: &str, messages: &[MessageView]) -> String {
    let mut out = String::new();
    if messages.is_empty() {
        let _ = writeln!(out, "-- {hub}: queue is empty");
        return out;
    }
    for m in messages {
        let mark = if m.held { "!" } else { "" };
        let _ = writeln!(
            out,
            "{hub}/{}{mark}  {} bytes  {}  {}",
            m.id,
            m.size,
            m.arrival,
            sender_text(&m.sender)
        );
        let next = match &m.next_attempt {
            Some(t) => format!("next attempt {t}"),
            None => "held".to_string(),
        };
        let _ = writeln!(
            out,
            "    {}  attempts {}, {next}, age {}",
            m.message_id,
            m.attempts,
            age(m.age_seconds)
        );
        for r in &m.recipients {
            let _ = write!(out, "    {}: {}", r.address, r.state);
            match &r.last_error {
                Some(e) => {
                    let _ = writeln!(out, " ({e})");
                }
                None => out.push('\n'),
            }
        }
        out.push('\n');
    }
    let held = messages.iter().filter(|m| m.held).count();
    let bytes: u64 = messages.iter().map(|m| m.size).sum();
    let _ = writeln!(
        out,
        "-- {hub}: {} messages ({held} held), {bytes} bytes",
        messages.len()
    );
    out
}

/// One message in full (`queue show`).
fn details(m: &MessageView) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "{:<14}{value}", format!("{name}:"));
    };
    line("Hub", &m.hub);
    line("Queue ID", &m.id);
    line("Message-ID", &m.message_id);
    line("Sender", sender_text(&m.sender));
    line("Size", &format!("{} bytes", m.size));
    line(
        "Arrival",
        &format!("{} (age {})", m.arrival, age(m.age_seconds)),
    );
    line("Expires", &m.expires);
    line("Attempts", &m.attempts.to_string());
    match (&m.next_attempt, &m.held_since) {
        (Some(t), _) => line("Next attempt", t),
        (None, Some(since)) => line("Held", &format!("since {since}; release to deliver")),
        (None, None) => line("Held", "yes"),
    }
    if let Some(r) = &m.resubmission {
        line("Resubmission", r);
    }
    line("Recipients", "");
    for r in &m.recipients {
        let _ = write!(out, "  {}  {}", r.address, r.state);
        match &r.last_error {
            Some(e) => {
                let _ = writeln!(out, "  {e}");
            }
            None => out.push('\n'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::queue::RecipientView;

    fn view(held: bool) -> MessageView {
        MessageView {
            hub: "hub1".into(),
            id: "1a".into(),
            message_id: "<m@x>".into(),
            sender: String::new(),
            size: 42,
            arrival: "2026-11-22T10:00:00.000Z".into(),
            age_seconds: 65,
            attempts: 2,
            next_attempt: (!held).then(|| "2026-11-22T10:01:10.000Z".to_string()),
            last_error: Some("connection refused".into()),
            expires: "2026-11-24T10:00:00.000Z".into(),
            held,
            held_since: held.then(|| "2026-11-22T10:00:30.000Z".to_string()),
            resubmission: None,
            recipients: vec![
                RecipientView {
                    address: "alice@example.test".into(),
                    storage_group: "SG1".into(),
                    state: "deferred".into(),
                    last_error: Some("connection refused".into()),
                },
                RecipientView {
                    address: "carol@example.test".into(),
                    storage_group: "SG2".into(),
                    state: "delivered".into(),
                    last_error: None,
                },
            ],
        }
    }

    #[test]
    fn listing_is_a_block_per_message_and_a_summary() {
        let text = listing("hub1", &[view(true), view(false)]);
        assert!(
            text.starts_with("hub1/1a!  42 bytes  2026-11-22T10:00:00.000Z  <>\n"),
            "{text}"
        );
        assert!(
            text.contains("    <m@x>  attempts 2, held, age 1m 5s\n"),
            "{text}"
        );
        assert!(text.contains("    alice@example.test: deferred (connection refused)\n"));
        assert!(text.contains("    carol@example.test: delivered\n"));
        assert!(text.contains("\nhub1/1a  42 bytes"), "{text}");
        assert!(
            text.ends_with("-- hub1: 2 messages (1 held), 84 bytes\n"),
            "{text}"
        );
        assert_eq!(listing("hub2", &[]), "-- hub2: queue is empty\n");
    }

    #[test]
    fn details_say_when_the_next_attempt_is_or_that_it_is_held() {
        assert!(details(&view(false)).contains("Next attempt: 2026-11-22T10:01:10.000Z\n"));
        let held = details(&view(true));
        assert!(
            held.contains("Held:         since 2026-11-22T10:00:30.000Z"),
            "{held}"
        );
        assert!(held.contains("  alice@example.test  deferred  connection refused\n"));
    }
}
