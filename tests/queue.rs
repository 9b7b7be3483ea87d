//! `hubrelay queue` against running processes: list and show a deferred message, retry one or
//! all, hold (which survives `kill -9` and outlasts the message expiry), release, delete with and
//! without a DSN, and the ids the CLI refuses.
//!
//! To keep a message queued, the hub runs without nodes (its delivery is deferred) and retries only
//! after an hour, so any delivery in these tests is one an administrator's command caused.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{api, message, smtplib_send, wait_for, wait_queue_empty, Proc, TestSite, TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A test site whose hubs retry a deferred message only after an hour; `site_extra` as in
/// [`TestSite::new`].
fn slow_retry_site(site_extra: &str) -> TestSite {
    let site = TestSite::new(site_extra, &[]);
    let text = std::fs::read_to_string(site.config()).expect("config");
    let text = text
        .replace("retry_min = \"200ms\"", "retry_min = \"1h\"")
        .replace("retry_max = \"1s\"", "retry_max = \"1h\"");
    std::fs::write(site.config(), text).expect("write config");
    site
}

/// Runs the CLI without `--json`: (exit code, stdout, stderr).
fn cli_text(site: &TestSite, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::bin())
        .args(args)
        .arg("--config")
        .arg(site.config())
        .output()
        .expect("run hubrelay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `queue list --hub HUB --json`, which must succeed.
fn list(site: &TestSite, hub: &str) -> Vec<Value> {
    let (code, v) = site.cli_json(&["queue", "list", "--hub", hub]);
    assert_eq!(code, 0, "queue list: {v}");
    v.as_array().expect("an array").clone()
}

/// The entry of `message_id` in `hub`'s queue listing, if it is queued.
fn entry(site: &TestSite, hub: &str, message_id: &str) -> Option<Value> {
    list(site, hub)
        .into_iter()
        .find(|m| m["message_id"] == message_id)
}

/// Sends `message_id` from bob to `to` through `port` and waits until its first attempt is
/// deferred; returns its queue entry.
fn send_deferred(site: &TestSite, port: u16, hub: &str, message_id: &str, to: &[&str]) -> Value {
    let (code, out) = smtplib_send(
        port,
        "bob@example.test",
        to,
        &message(Some(message_id), message_id),
    );
    assert_eq!(code, 0, "{out}");
    wait_for(WAIT, &format!("{message_id} deferred on {hub}"), || {
        entry(site, hub, message_id).filter(|m| m["attempts"].as_u64() >= Some(1))
    })
}

/// Starts both nodes and waits until one of them is active, so a delivery now succeeds.
fn start_nodes(site: &TestSite) -> [Proc; 2] {
    let nodes = [
        site.start(&["node", "--name", "node1"]),
        site.start(&["node", "--name", "node2"]),
    ];
    wait_for(WAIT, "an active node", || {
        let (_, v) = site.cli_json(&["status", "--cms", "cms1"]);
        v["active_node"].as_str().map(|_| ())
    });
    nodes
}

/// Runs a `queue` action with `--json`, which must succeed; returns its document.
fn queue_ok(site: &TestSite, args: &[&str]) -> Value {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    let (code, v) = site.cli_json(&all);
    assert_eq!(code, 0, "queue {args:?}: {v}");
    v
}

fn id_of(m: &Value) -> String {
    m["id"].as_str().expect("a hex id").to_string()
}

#[test]
fn list_and_show_report_a_deferred_message_with_its_recipients() {
    let site = slow_retry_site("");
    let _hub1 = site.start(&["hub", "--name", "hub1"]);
    let _hub2 = site.start(&["hub", "--name", "hub2"]);
    let before = std::time::SystemTime::now();
    let m = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<listed@client.test>",
        &["alice@example.test", "carol@example.test"],
    );

    let id = id_of(&m);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{m}");
    assert_eq!(m["hub"], "hub1");
    assert_eq!(m["sender"], "bob@example.test");
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["held"], false);
    assert!(m["size"].as_u64().is_some_and(|s| s > 0), "{m}");
    assert!(m["age_seconds"].as_u64().is_some_and(|a| a < 60), "{m}");
    let next = m["next_attempt"].as_str().expect("next_attempt");
    let next = chrono::DateTime::parse_from_rfc3339(next).expect("RFC 3339");
    assert!(
        next > chrono::DateTime::<chrono::Utc>::from(before) + chrono::Duration::minutes(50),
        "the next attempt is after retry_min (1h): {m}"
    );
    let rcpts = m["recipients"].as_array().expect("recipients");
    let addresses: Vec<&str> = rcpts.iter().filter_map(|r| r["address"].as_str()).collect();
    assert_eq!(addresses, ["alice@example.test", "carol@example.test"]);
    for r in rcpts {
        assert_eq!(r["state"], "deferred", "{m}");
        assert!(
            r["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "a deferred recipient says why: {m}"
        );
    }
    assert_eq!(m["last_error"], rcpts[0]["last_error"]);

    // Without --hub, every hub is listed.
    let (code, v) = site.cli_json(&["queue", "list"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");

    let (code, out, err) = cli_text(&site, &["queue", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("hub1/{id}  ")), "{out}");
    assert!(out.contains("bob@example.test"), "{out}");
    assert!(
        out.contains("<listed@client.test>  attempts 1, next attempt "),
        "{out}"
    );
    assert!(out.contains("    alice@example.test: deferred ("), "{out}");
    assert!(out.contains("    carol@example.test: deferred ("), "{out}");
    assert!(out.contains("-- hub1: 1 messages (0 held), "), "{out}");
    assert!(out.contains("-- hub2: queue is empty"), "{out}");

    // `show` without --hub finds the one hub that has the id.
    let shown = queue_ok(&site, &["show", &id]);
    assert_eq!(shown["message_id"], "<listed@client.test>");
    assert_eq!(shown["recipients"], m["recipients"]);
    let (code, out, err) = cli_text(&site, &["queue", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hub:          hub1\n"), "{out}");
    assert!(out.contains(&format!("Queue ID:     {id}\n")), "{out}");
    assert!(
        out.contains("Message-ID:   <listed@client.test>\n"),
        "{out}"
    );
    assert!(out.contains("Attempts:     1\n"), "{out}");
    assert!(out.contains("  carol@example.test  deferred  "), "{out}");
}

#[test]
fn retry_delivers_now_and_a_held_message_survives_kill9_and_retry_all_until_released() {
    let site = slow_retry_site("");
    let hub = site.start(&["hub", "--name", "hub1"]);
    let held = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<held@client.test>",
        &["alice@example.test"],
    );
    let one = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<one@client.test>",
        &["alice@example.test"],
    );
    let all = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<all@client.test>",
        &["alice@example.test"],
    );
    let held_id = id_of(&held);

    let v = queue_ok(&site, &["hold", &held_id, "--hub", "hub1"]);
    assert_eq!(v["held"], true, "{v}");
    assert_eq!(v["next_attempt"], Value::Null, "{v}");
    let (code, _, err) = cli_text(&site, &["queue", "hold", &held_id, "--hub", "hub1"]);
    assert_eq!((code, err.contains("already held")), (1, true), "{err}");

    // The hold is on disk before the command answers.
    hub.kill9();
    let _hub = site.start(&["hub", "--name", "hub1"]);
    let after = entry(&site, "hub1", "<held@client.test>").expect("still queued");
    assert_eq!(after["held"], true, "a hold survives kill -9: {after}");
    let (code, out, _) = cli_text(&site, &["queue", "list", "--hub", "hub1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("hub1/{held_id}!  ")),
        "`!` marks it held: {out}"
    );
    assert!(out.contains("(1 held)"), "{out}");

    let _nodes = start_nodes(&site);
    // A held message cannot be retried, only released.
    let (code, _, err) = cli_text(&site, &["queue", "retry", &held_id, "--hub", "hub1"]);
    assert_eq!((code, err.contains("release it")), (1, true), "{err}");

    queue_ok(&site, &["retry", &id_of(&one), "--hub", "hub1"]);
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids == ["<one@client.test>".to_string()]
    });
    assert!(
        entry(&site, "hub1", "<all@client.test>").is_some(),
        "retry of one id retries only it"
    );

    let v = queue_ok(&site, &["retry", "--all", "--hub", "hub1"]);
    assert_eq!(v[0]["retried"], serde_json::json!([id_of(&all)]), "{v}");
    assert_eq!(v[0]["held"], serde_json::json!([held_id]), "{v}");
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids.contains(&"<all@client.test>".to_string())
    });
    let still = entry(&site, "hub1", "<held@client.test>").expect("the held message stays queued");
    assert_eq!(still["held"], true);
    assert_eq!(
        still["attempts"], held["attempts"],
        "never attempted while held: {still}"
    );
    assert!(!site
        .mailbox_ids("alice@example.test")
        .contains(&"<held@client.test>".to_string()));

    let (code, out, err) = cli_text(&site, &["queue", "release", &held_id, "--hub", "hub1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("released"), "{out}");
    wait_queue_empty(site.ports.hub1_admin);
    let ids = site.mailbox_ids("alice@example.test");
    let copies = ids.iter().filter(|m| *m == "<held@client.test>").count();
    assert_eq!(copies, 1, "released and delivered exactly once: {ids:?}");
    assert_eq!(ids.len(), 3, "{ids:?}");
}

#[test]
fn a_held_message_is_not_expired_and_is_delivered_once_released() {
    // Retried every second at most, so an attempt would expire a message that is not held; the
    // expiry is long enough for the hold to land first, even on a busy machine.
    let site = TestSite::new("message_expiry = \"3s\"", &[]);
    let _hub = site.start(&["hub", "--name", "hub1"]);
    let kept = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<kept@client.test>",
        &["alice@example.test"],
    );
    let id = id_of(&kept);
    let held = queue_ok(&site, &["hold", &id, "--hub", "hub1"]);
    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &message(Some("<expires@client.test>"), "expires"),
    );
    assert_eq!(code, 0, "{out}");
    let expires = chrono::DateTime::parse_from_rfc3339(kept["expires"].as_str().expect("expires"))
        .expect("RFC 3339");
    // The message that is not held expires and leaves the queue; the held one outlives its expiry.
    let past = wait_for(WAIT, "the other message to expire", || {
        let queued = list(&site, "hub1");
        let kept = queued
            .iter()
            .find(|m| m["message_id"] == "<kept@client.test>");
        let kept = kept.expect("the held message stays queued");
        let other_gone = !queued
            .iter()
            .any(|m| m["message_id"] == "<expires@client.test>");
        (other_gone && kept["age_seconds"].as_u64() >= Some(4)).then(|| kept.clone())
    });
    assert!(chrono::Utc::now() > expires);
    assert_eq!(past["held"], true);
    assert_eq!(
        past["attempts"], held["attempts"],
        "never attempted while held: {past}"
    );
    assert_eq!(
        past["recipients"][0]["state"], "deferred",
        "not expired: {past}"
    );

    let _nodes = start_nodes(&site);
    let released = queue_ok(&site, &["release", &id, "--hub", "hub1"]);
    let new_expiry =
        chrono::DateTime::parse_from_rfc3339(released["expires"].as_str().expect("expires"))
            .expect("RFC 3339");
    assert!(
        new_expiry > chrono::Utc::now(),
        "the time held is added: {released}"
    );
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids == ["<kept@client.test>".to_string()]
    });
    wait_queue_empty(site.ports.hub1_admin);
}

#[test]
fn delete_without_dsn_removes_the_message_and_logs_who_and_why() {
    let site = slow_retry_site("");
    let hub = site.start(&["hub", "--name", "hub1"]);
    let m = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<doomed@client.test>",
        &["alice@example.test"],
    );
    let id = id_of(&m);

    let (code, out, err) = cli_text(
        &site,
        &[
            "queue",
            "delete",
            &id,
            "--hub",
            "hub1",
            "--reason",
            "test cleanup",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("hub1: deleted {id} (<doomed@client.test>)")),
        "{out}"
    );
    assert!(list(&site, "hub1").is_empty(), "gone, and no DSN queued");

    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("message deleted from the queue by the administrator"))
        .unwrap_or_else(|| panic!("no deletion line in:\n{log}"));
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    for part in [
        "WARN".to_string(),
        format!("queue_id={id}"),
        "message_id=<doomed@client.test>".to_string(),
        "sender=bob@example.test".to_string(),
        "recipients=alice@example.test".to_string(),
        format!("by={user}@"),
        "reason=test cleanup".to_string(),
        "dsn=no".to_string(),
    ] {
        assert!(line.contains(&part), "`{part}` in: {line}");
    }

    let (code, _, err) = cli_text(&site, &["queue", "delete", &id, "--hub", "hub1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("no message {id} in the queue of hub1")),
        "{err}"
    );

    // With the nodes up, a later message arrives and the deleted one never does.
    let _nodes = start_nodes(&site);
    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &message(Some("<after@client.test>"), "after"),
    );
    assert_eq!(code, 0, "{out}");
    site.wait_mailbox("alice@example.test", WAIT, |ids| !ids.is_empty());
    wait_queue_empty(site.ports.hub1_admin);
    assert_eq!(
        site.mailbox_ids("alice@example.test"),
        ["<after@client.test>"]
    );
    assert!(site.mailbox_ids("bob@example.test").is_empty(), "no DSN");
}

#[test]
fn delete_with_dsn_returns_the_message_to_its_sender_but_never_to_the_null_sender() {
    let site = slow_retry_site("");
    let _hub = site.start(&["hub", "--name", "hub1"]);
    let m = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<returned@client.test>",
        &["alice@example.test"],
    );
    let (code, out) = smtplib_send(
        site.ports.hub1,
        "",
        &["alice@example.test"],
        &message(Some("<bounce@client.test>"), "bounce"),
    );
    assert_eq!(code, 0, "{out}");
    let bounce = wait_for(WAIT, "the null-sender message deferred", || {
        entry(&site, "hub1", "<bounce@client.test>").filter(|m| m["attempts"].as_u64() >= Some(1))
    });
    let _nodes = start_nodes(&site);

    let v = queue_ok(
        &site,
        &["delete", &id_of(&bounce), "--hub", "hub1", "--dsn"],
    );
    assert_eq!(v["dsn"], true, "{v}");
    let v = queue_ok(&site, &["delete", &id_of(&m), "--hub", "hub1", "--dsn"]);
    assert_eq!(
        (v["dsn"].clone(), v["reason"].clone()),
        (
            Value::Bool(true),
            Value::from("deleted by the administrator")
        ),
        "{v}"
    );
    let bob = site.wait_mailbox("bob@example.test", WAIT, |ids| !ids.is_empty());
    wait_queue_empty(site.ports.hub1_admin);
    assert_eq!(
        site.mailbox_ids("bob@example.test").len(),
        1,
        "one DSN, none for <>"
    );
    let raw = site.stored_message("bob@example.test", &bob[0]);
    let text = String::from_utf8_lossy(&raw);
    for part in [
        "In-Reply-To: <returned@client.test>",
        "Final-Recipient: rfc822; alice@example.test",
        "Action: failed",
        "Status: 5.3.0",
        "Diagnostic-Code: smtp; 550 5.3.0 deleted by the administrator",
    ] {
        assert!(text.contains(part), "`{part}` in the DSN:\n{text}");
    }
    assert!(
        site.mailbox_ids("alice@example.test").is_empty(),
        "neither deleted message was delivered"
    );
}

#[test]
fn unknown_ambiguous_and_bad_ids_are_refused_with_their_exit_status() {
    let site = slow_retry_site("");
    let _hub1 = site.start(&["hub", "--name", "hub1"]);
    let hub2 = site.start(&["hub", "--name", "hub2"]);
    let a = send_deferred(
        &site,
        site.ports.hub1,
        "hub1",
        "<a@client.test>",
        &["alice@example.test"],
    );
    let b = send_deferred(
        &site,
        site.ports.hub2,
        "hub2",
        "<b@client.test>",
        &["alice@example.test"],
    );
    // Each hub numbers its own queue, from the same start.
    let id = id_of(&a);
    assert_eq!(
        id,
        id_of(&b),
        "both hubs gave their first message the same id"
    );

    for action in ["show", "retry", "hold", "release", "delete"] {
        let (code, _, err) = cli_text(&site, &["queue", action, &id]);
        assert_eq!(code, 2, "{action}: {err}");
        assert!(
            err.contains(&format!("id {id} is queued on hub1 and hub2: give --hub")),
            "{action}: {err}"
        );
    }
    let on2 = queue_ok(&site, &["show", &id, "--hub", "hub2"]);
    assert_eq!(on2["message_id"], "<b@client.test>");

    for action in ["show", "retry", "hold", "release", "delete"] {
        let (code, _, err) = cli_text(&site, &["queue", action, "ffffff"]);
        assert_eq!(code, 1, "{action}: {err}");
        assert!(
            err.contains("no message ffffff in any hub's queue"),
            "{action}: {err}"
        );
    }
    let (code, _, err) = cli_text(&site, &["queue", "release", &id, "--hub", "hub1"]);
    assert_eq!((code, err.contains("is not held")), (1, true), "{err}");
    let (code, _, err) = cli_text(&site, &["queue", "show", "xyz"]);
    assert_eq!(
        (code, err.contains("`xyz` is not a queue id")),
        (2, true),
        "{err}"
    );
    let (code, _, err) = cli_text(&site, &["queue", "list", "--hub", "hub9"]);
    assert_eq!(
        (code, err.contains("no hub named `hub9`")),
        (2, true),
        "{err}"
    );
    let (code, _, err) = cli_text(&site, &["queue", "retry"]);
    assert_eq!(code, 2, "an id or --all: {err}");

    // The API's own answers.
    let port = site.ports.hub1_admin;
    let get = |path: &str| api(port, "GET", path, Some(TOKEN), None);
    assert_eq!(get("/api/queue/messages/xyz").0, 400);
    assert_eq!(get("/api/queue/messages/ffffff").0, 404);
    let (status, body) = api(
        port,
        "POST",
        &format!("/api/queue/messages/{id}/release"),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 409, "{body}");
    let delete = |body: &str| {
        api(
            port,
            "DELETE",
            &format!("/api/queue/messages/{id}"),
            Some(TOKEN),
            Some(body),
        )
    };
    for bad in [
        r#"{"dsn": true}"#,
        r#"{"by": " "}"#,
        r#"{"by": "x", "why": "y"}"#,
        r#"{"by": "x", "reason": "a\nb"}"#,
    ] {
        let (status, body) = delete(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
    assert_eq!(api(port, "GET", "/api/queue/messages", None, None).0, 401);
    assert_eq!(
        list(&site, "hub1").len(),
        1,
        "nothing was deleted by a bad request"
    );

    // A hub that does not answer might hold the id: no guessing.
    drop(hub2);
    let (code, _, err) = cli_text(&site, &["queue", "show", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("did not answer") && err.contains("hub2"),
        "{err}"
    );
    let started = Instant::now();
    let (code, _, err) = cli_text(&site, &["queue", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("hubs that did not answer: hub2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
