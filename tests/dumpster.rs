//! The transport dumpster end to end, with real processes and sockets: the size and time bounds,
//! one entry per storage group, persistence across a restart, `hubrelay stats` with a hub down,
//! resubmission after the mailbox servers lost their data, and the admin API's refusals.

mod common;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use common::{api, api_json, metric, wait_for, wait_queue_empty, Smtplib, TestSite, TOKEN};

const WAIT: Duration = Duration::from_secs(20);
const ALICE: &str = "alice@example.test";
const CAROL: &str = "carol@example.test";

/// A message of exactly `len` bytes (CRLF line ends), with the given Message-ID and `To:`.
fn sized(message_id: &str, to: &[&str], len: usize) -> String {
    let head = format!(
        "From: bob@example.test\r\nTo: {}\r\nSubject: {message_id}\r\nMessage-ID: {message_id}\r\n\r\n",
        to.join(", ")
    );
    let mut text = head;
    while text.len() < len {
        let line = (len - text.len()).min(78);
        if line <= 2 {
            text.push_str(&"\r\n"[..line]);
            continue;
        }
        text.push_str(&"x".repeat(line - 2));
        text.push_str("\r\n");
    }
    assert_eq!(text.len(), len, "message size");
    text
}

/// Sends `msg` through the hub listening on `port` and checks every recipient was accepted.
fn send(client: &mut Smtplib, port: u16, to: &[&str], msg: &str) {
    let out = client.send(port, "bob@example.test", to, msg);
    assert_eq!(out.trim_end(), "refused {}", "{out}");
}

/// Milliseconds since the epoch on the test's clock (the same machine's clock as the hubs').
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms_of(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("`{rfc3339}` is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn rfc3339_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .expect("a time of this century")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A point strictly after every hub-side timestamp taken so far: one millisecond after now, returned
/// only once the clock has passed it, so anything that happens next is later still.
fn instant_between() -> i64 {
    let t = now_ms() + 1;
    wait_for(WAIT, "the clock to pass the window bound", || {
        (now_ms() > t).then_some(())
    });
    t
}

/// The line of `hub` in one storage group's `stats --json` object.
fn hub_line<'a>(sg_stats: &'a Value, hub: &str) -> &'a Value {
    sg_stats["dumpster_statistics"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["hub"] == hub))
        .unwrap_or_else(|| panic!("no line for {hub} in {sg_stats}"))
}

/// `hubrelay stats --storage-group SG --json`, which must succeed.
fn stats_sg(site: &TestSite, sg: &str) -> Value {
    let (code, v) = site.cli_json(&["stats", "--storage-group", sg]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["storage_group"], sg, "{v}");
    v
}

/// `GET /api/dumpster?storage_group=SG` of one hub: the full record, with the counters.
fn dumpster(admin_port: u16, sg: &str) -> Value {
    let v = api_json(
        admin_port,
        "GET",
        &format!("/api/dumpster?storage_group={sg}"),
        None,
    );
    let all = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(all.len(), 1, "{v}");
    assert_eq!(all[0]["storage_group"], sg, "{v}");
    all[0].clone()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn size_bound_evicts_oldest_first_and_is_never_exceeded() {
    const N: usize = 30;
    const LEN: usize = 2000;
    const BOUND: u64 = 20_000;
    let site = TestSite::new("max_dumpster_size_per_storage_group = \"20KB\"", &[]);
    let mut smtp = Smtplib::start();
    let _s = site.start(&["site"]);
    // Each message is delivered before the next is sent, so delivery order is receive order and
    // the entries the bound keeps are exactly the newest ones.
    let mut received_between = Vec::new();
    for i in 0..N {
        let before = now_ms();
        send(
            &mut smtp,
            site.ports.hub1,
            &[ALICE],
            &sized(&format!("<size{i}@client.test>"), &[ALICE], LEN),
        );
        received_between.push((before, now_ms()));
        wait_queue_empty(site.ports.hub1_admin);
    }
    site.wait_mailbox(ALICE, WAIT, |ids| ids.len() == N);

    let v = stats_sg(&site, "SG1");
    let hub1 = hub_line(&v, "hub1");
    let items = hub1["items"].as_u64().expect("items");
    let bytes = hub1["bytes"].as_u64().expect("bytes");
    assert!(bytes <= BOUND, "bytes over the bound: {v}");
    assert!(items > 0, "{v}");
    // Every entry is one message plus the hub's Received header (a few hundred bytes).
    let each = bytes / items;
    assert!(
        each > LEN as u64 && each < LEN as u64 + 500,
        "entry size {each}: {v}"
    );
    assert_eq!(items, BOUND / each, "as many entries as fit, no fewer: {v}");
    // The oldest kept is the first message not evicted, received by the hub while it was sent.
    let evicted = N - items as usize;
    let oldest = ms_of(hub1["oldest"].as_str().expect("oldest"));
    let (from, to) = received_between[evicted];
    assert!(
        from <= oldest && oldest <= to,
        "oldest {oldest} is message {evicted}'s receive time, in [{from}, {to}]: {v}"
    );
    assert!(
        oldest > received_between[0].1,
        "the first messages went first"
    );
    let hub2 = hub_line(&v, "hub2");
    assert_eq!(
        (hub2["items"].as_u64(), hub2["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(hub2["oldest"].is_null(), "{v}");

    let d = dumpster(site.ports.hub1_admin, "SG1");
    assert_eq!(d["evicted"].as_u64(), Some(evicted as u64), "{d}");
    assert_eq!(d["too_large"].as_u64(), Some(0), "{d}");
    assert_eq!(
        (d["items"].as_u64(), d["bytes"].as_u64()),
        (Some(items), Some(bytes))
    );
}

#[test]
fn message_larger_than_the_bound_is_delivered_counted_and_not_kept() {
    let site = TestSite::new("max_dumpster_size_per_storage_group = \"5KB\"", &[]);
    let mut smtp = Smtplib::start();
    let _s = site.start(&["site"]);
    send(
        &mut smtp,
        site.ports.hub1,
        &[ALICE],
        &sized("<small@client.test>", &[ALICE], 1000),
    );
    wait_queue_empty(site.ports.hub1_admin);
    let before = dumpster(site.ports.hub1_admin, "SG1");
    assert_eq!(before["items"].as_u64(), Some(1), "{before}");
    assert_eq!(before["too_large"].as_u64(), Some(0), "{before}");

    send(
        &mut smtp,
        site.ports.hub1,
        &[ALICE],
        &sized("<big@client.test>", &[ALICE], 6000),
    );
    site.wait_mailbox(ALICE, WAIT, |ids| {
        ids.iter().any(|i| i == "<big@client.test>")
    });
    wait_queue_empty(site.ports.hub1_admin);
    let after = dumpster(site.ports.hub1_admin, "SG1");
    for field in ["items", "bytes", "oldest", "oldest_delivered"] {
        assert_eq!(after[field], before[field], "{field}: {before} → {after}");
    }
    assert_eq!(
        after["evicted"].as_u64(),
        Some(0),
        "nothing was evicted to make room: {after}"
    );
    assert_eq!(after["too_large"].as_u64(), Some(1), "{after}");
    assert_eq!(
        sorted(site.mailbox_ids(ALICE)),
        ["<big@client.test>", "<small@client.test>"]
    );
}

#[test]
fn time_bound_expires_entries_and_leaves_nothing_to_resubmit() {
    let site = TestSite::new("max_dumpster_time = \"2s\"", &[]);
    let mut smtp = Smtplib::start();
    let _s = site.start(&["site"]);
    let since = rfc3339_ms(now_ms() - 60_000);
    for i in 0..2 {
        send(
            &mut smtp,
            site.ports.hub1,
            &[ALICE],
            &sized(&format!("<aged{i}@client.test>"), &[ALICE], 500),
        );
    }
    wait_queue_empty(site.ports.hub1_admin);
    let fresh = stats_sg(&site, "SG1");
    assert_eq!(
        hub_line(&fresh, "hub1")["items"].as_u64(),
        Some(2),
        "{fresh}"
    );

    let gone = wait_for(WAIT, "the entries to pass MaxDumpsterTime", || {
        let v = stats_sg(&site, "SG1");
        (hub_line(&v, "hub1")["items"].as_u64() == Some(0)).then_some(v)
    });
    let hub1 = hub_line(&gone, "hub1");
    assert_eq!(hub1["bytes"].as_u64(), Some(0), "{gone}");
    assert!(hub1["oldest"].is_null(), "{gone}");
    let d = dumpster(site.ports.hub1_admin, "SG1");
    assert_eq!(d["expired"].as_u64(), Some(2), "{d}");
    assert_eq!(d["evicted"].as_u64(), Some(0), "{d}");

    let (code, r) = site.cli_json(&["resubmit", "--storage-group", "SG1", "--since", &since]);
    assert_eq!(code, 0, "{r}");
    let requests = r["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 2, "{r}");
    for req in requests {
        assert_eq!(req["status"], "done", "{r}");
        assert_eq!(req["messages"].as_u64(), Some(0), "{r}");
    }
    assert_eq!(
        api_json(site.ports.hub1_admin, "GET", "/api/queue", None)["messages"].as_u64(),
        Some(0)
    );
    assert_eq!(site.mailbox_ids(ALICE).len(), 2, "the mail itself stays");
}

#[test]
fn one_message_to_two_storage_groups_is_kept_once_per_storage_group() {
    let site = TestSite::new("", &[]);
    let mut smtp = Smtplib::start();
    let _s = site.start(&["site"]);
    send(
        &mut smtp,
        site.ports.hub1,
        &[ALICE, CAROL],
        &sized("<both@client.test>", &[ALICE, CAROL], 1500),
    );
    site.wait_mailbox(ALICE, WAIT, |ids| ids == ["<both@client.test>"]);
    site.wait_mailbox(CAROL, WAIT, |ids| ids == ["<both@client.test>"]);
    wait_queue_empty(site.ports.hub1_admin);

    let (code, all) = site.cli_json(&["stats"]);
    assert_eq!(code, 0, "{all}");
    let per_sg = |sg: &str| {
        all.as_array()
            .and_then(|a| a.iter().find(|s| s["storage_group"] == sg))
            .unwrap_or_else(|| panic!("no {sg} in {all}"))
            .clone()
    };
    let (sg1, sg2) = (per_sg("SG1"), per_sg("SG2"));
    let (a, c) = (hub_line(&sg1, "hub1"), hub_line(&sg2, "hub1"));
    assert_eq!(a["items"].as_u64(), Some(1), "{all}");
    assert_eq!(c["items"].as_u64(), Some(1), "{all}");
    let size = a["bytes"].as_u64().expect("bytes");
    assert!(size > 1500, "{all}");
    assert_eq!(c["bytes"].as_u64(), Some(size), "the same message: {all}");
    assert_eq!(a["oldest"], c["oldest"], "{all}");
    for sg in [&sg1, &sg2] {
        assert_eq!(hub_line(sg, "hub2")["items"].as_u64(), Some(0), "{all}");
    }
}

#[test]
fn dumpster_and_its_counters_survive_a_restart() {
    let site = TestSite::new("max_dumpster_size_per_storage_group = \"5KB\"", &[]);
    let mut smtp = Smtplib::start();
    let _n1 = site.start(&["node", "--name", "node1"]);
    let _n2 = site.start(&["node", "--name", "node2"]);
    let _hub2 = site.start(&["hub", "--name", "hub2"]);
    let hub1 = site.start(&["hub", "--name", "hub1"]);
    // Three 2 KB messages (one gets evicted), one too large, one for SG2.
    for i in 0..3 {
        send(
            &mut smtp,
            site.ports.hub1,
            &[ALICE],
            &sized(&format!("<keep{i}@client.test>"), &[ALICE], 2000),
        );
        wait_queue_empty(site.ports.hub1_admin);
    }
    send(
        &mut smtp,
        site.ports.hub1,
        &[ALICE],
        &sized("<huge@client.test>", &[ALICE], 6000),
    );
    send(
        &mut smtp,
        site.ports.hub1,
        &[CAROL],
        &sized("<carol@client.test>", &[CAROL], 800),
    );
    site.wait_mailbox(CAROL, WAIT, |ids| ids.len() == 1);
    site.wait_mailbox(ALICE, WAIT, |ids| ids.len() == 4);
    wait_queue_empty(site.ports.hub1_admin);

    let (code, before) = site.cli_json(&["stats"]);
    assert_eq!(code, 0, "{before}");
    let api_before = api_json(site.ports.hub1_admin, "GET", "/api/dumpster", None);
    let sg1 = dumpster(site.ports.hub1_admin, "SG1");
    assert_eq!(
        (
            sg1["items"].as_u64(),
            sg1["evicted"].as_u64(),
            sg1["too_large"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{sg1}"
    );
    assert_eq!(
        dumpster(site.ports.hub1_admin, "SG2")["items"].as_u64(),
        Some(1)
    );

    assert_eq!(hub1.terminate(), Some(0), "SIGTERM ends the hub cleanly");
    let down = stats_sg(&site, "SG1");
    assert_eq!(
        down["dumpster_statistics_not_available"],
        json!(["hub1"]),
        "{down}"
    );
    let _hub1 = site.start(&["hub", "--name", "hub1"]);

    let (code, after) = site.cli_json(&["stats"]);
    assert_eq!(code, 0, "{after}");
    assert_eq!(after, before, "stats before and after the restart");
    let api_after = api_json(site.ports.hub1_admin, "GET", "/api/dumpster", None);
    assert_eq!(
        api_after, api_before,
        "counters before and after the restart"
    );
}

#[test]
fn stats_reports_hubs_that_do_not_answer_and_still_succeeds() {
    let site = TestSite::new("", &[]);
    let _hub1 = site.start(&["hub", "--name", "hub1"]);

    let v = stats_sg(&site, "SG1");
    assert_eq!(
        v["dumpster_statistics_not_available"],
        json!(["hub2"]),
        "{v}"
    );
    let lines = v["dumpster_statistics"].as_array().expect("lines");
    assert_eq!(lines.len(), 1, "{v}");
    assert_eq!(lines[0]["hub"], "hub1", "{v}");
    assert_eq!(lines[0]["items"].as_u64(), Some(0), "{v}");

    let hub2 = site.start(&["hub", "--name", "hub2"]);
    let v = stats_sg(&site, "SG1");
    assert_eq!(v["dumpster_statistics_not_available"], json!([]), "{v}");
    hub_line(&v, "hub2");

    hub2.kill9();
    let (code, all) = site.cli_json(&["stats"]);
    assert_eq!(code, 0, "{all}");
    let all = all.as_array().unwrap_or_else(|| panic!("an array: {all}"));
    assert_eq!(all.len(), 2, "one object per storage group");
    for sg in all {
        assert_eq!(
            sg["dumpster_statistics_not_available"],
            json!(["hub2"]),
            "{sg}"
        );
        hub_line(sg, "hub1");
        assert_eq!(sg["dumpster_statistics"].as_array().map(Vec::len), Some(1));
    }
}

#[test]
fn resubmission_after_data_loss_restores_exactly_the_window_once() {
    let site = TestSite::new("", &[]);
    let mut smtp = Smtplib::start();
    let node1 = site.start(&["node", "--name", "node1"]);
    let node2 = site.start(&["node", "--name", "node2"]);
    let _hub1 = site.start(&["hub", "--name", "hub1"]);
    let _hub2 = site.start(&["hub", "--name", "hub2"]);
    let (hub1_smtp, hub2_smtp) = (site.ports.hub1, site.ports.hub2);
    let admins = [site.ports.hub1_admin, site.ports.hub2_admin];
    let mut alice_total = 0;
    // Sends a phase to alice (and carol where asked), waits until it is delivered and every
    // dumpster entry is written (the queues are empty), and returns alice's Message-IDs.
    let mut phase = |name: &str, sends: &[(u16, &[&str])]| -> Vec<String> {
        let mut ids = Vec::new();
        for (i, (port, to)) in sends.iter().enumerate() {
            let id = format!("<{name}{i}@client.test>");
            send(&mut smtp, *port, to, &sized(&id, to, 700));
            if to.contains(&ALICE) {
                ids.push(id);
            }
        }
        alice_total += ids.len();
        site.wait_mailbox(ALICE, WAIT, |got| got.len() == alice_total);
        admins.iter().for_each(|&a| wait_queue_empty(a));
        ids
    };

    let a = phase("phase-a", &[(hub1_smtp, &[ALICE]), (hub2_smtp, &[ALICE])]);
    let t1 = instant_between();
    let b = phase(
        "phase-b",
        &[
            (hub1_smtp, &[ALICE]),
            (hub1_smtp, &[ALICE]),
            (hub2_smtp, &[ALICE]),
            (hub1_smtp, &[CAROL]),
            (hub1_smtp, &[ALICE, CAROL]),
            (hub2_smtp, &[ALICE]),
        ],
    );
    let t2 = instant_between();
    let c = phase("phase-c", &[(hub2_smtp, &[ALICE]), (hub1_smtp, &[ALICE])]);
    assert_eq!((a.len(), b.len(), c.len()), (2, 5, 2));
    assert_eq!(site.mailbox_ids(CAROL).len(), 2);

    // The whole CMS loses everything (both nodes and its witness: a re-provisioned CMS, so no
    // failover resubmission; only the administrator's request below brings mail back).
    node1.kill9();
    node2.kill9();
    for dir in ["node1", "node2", "witness"] {
        let dir = site.data().join(dir);
        assert!(dir.is_dir(), "{}", dir.display());
        std::fs::remove_dir_all(&dir).expect("remove node data");
    }
    let _node1 = site.start(&["node", "--name", "node1"]);
    let _node2 = site.start(&["node", "--name", "node2"]);
    // An active node answers, and alice has lost her mail.
    site.wait_mailbox(ALICE, Duration::from_secs(20), |ids| ids.is_empty());
    assert_eq!(
        site.mailbox_ids(CAROL),
        Vec::<String>::new(),
        "carol lost her mail"
    );

    let (t1s, t2s) = (rfc3339_ms(t1), rfc3339_ms(t2));
    let (code, r) = site.cli_json(&[
        "resubmit",
        "--storage-group",
        "SG1",
        "--since",
        &t1s,
        "--until",
        &t2s,
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["storage_group"], "SG1", "{r}");
    assert_eq!(ms_of(r["low"].as_str().expect("low")), t1, "{r}");
    assert_eq!(ms_of(r["high"].as_str().expect("high")), t2, "{r}");
    let messages = |hub: &str| {
        let req = r["requests"]
            .as_array()
            .and_then(|a| a.iter().find(|q| q["hub"] == hub))
            .unwrap_or_else(|| panic!("no request for {hub}: {r}"));
        assert_eq!(req["status"], "done", "{r}");
        req["messages"].as_u64().expect("messages")
    };
    // Phase B for SG1: three through hub1 (one of them also to carol), two through hub2.
    let (m1, m2) = (messages("hub1"), messages("hub2"));
    assert_eq!(m1 + m2, b.len() as u64, "{r}");
    assert_eq!((m1, m2), (3, 2), "{r}");

    site.wait_mailbox(ALICE, WAIT, |ids| ids.len() >= b.len());
    admins.iter().for_each(|&a| wait_queue_empty(a));
    assert_eq!(
        sorted(site.mailbox_ids(ALICE)),
        sorted(b.clone()),
        "exactly phase B, each once"
    );
    assert_eq!(
        site.mailbox_ids(CAROL),
        Vec::<String>::new(),
        "an SG1 resubmission never goes to SG2's recipients"
    );

    // The same request id twice redelivers once.
    let hub1_admin = site.ports.hub1_admin;
    let body = json!({"id": "dup-1", "storage_group": "SG1", "low": t1s, "high": t2s}).to_string();
    let delivered_before = metric(hub1_admin, "hubrelay_recipients_delivered_total");
    let first = api_json(hub1_admin, "POST", "/api/resubmit", Some(&body));
    assert_eq!(first["id"], "dup-1", "{first}");
    let first = wait_for(WAIT, "request dup-1 to be done", || {
        let s = api_json(hub1_admin, "GET", "/api/resubmit/dup-1", None);
        (s["done"] == true).then_some(s)
    });
    let count = first["messages"].as_u64().expect("messages");
    assert_eq!(count, m1, "{first}");
    wait_queue_empty(hub1_admin);
    let delivered_once = metric(hub1_admin, "hubrelay_recipients_delivered_total");
    assert_eq!(delivered_once - delivered_before, count);

    let second = api_json(hub1_admin, "POST", "/api/resubmit", Some(&body));
    assert_eq!(second["messages"].as_u64(), Some(count), "{second}");
    assert_eq!(second["done"], true, "{second}");
    wait_queue_empty(hub1_admin);
    let state = api_json(hub1_admin, "GET", "/api/resubmit/dup-1", None);
    assert_eq!(state["messages"].as_u64(), Some(count), "{state}");
    assert_eq!(
        metric(hub1_admin, "hubrelay_recipients_delivered_total"),
        delivered_once,
        "the repeated request redelivered nothing"
    );
    assert_eq!(sorted(site.mailbox_ids(ALICE)), sorted(b));
}

#[test]
fn admin_api_refuses_bad_requests_and_changes_nothing() {
    let site = TestSite::new("", &[]);
    let mut smtp = Smtplib::start();
    let _s = site.start(&["site"]);
    let port = site.ports.hub1_admin;
    send(
        &mut smtp,
        site.ports.hub1,
        &[ALICE],
        &sized("<kept@client.test>", &[ALICE], 600),
    );
    site.wait_mailbox(ALICE, WAIT, |ids| ids.len() == 1);
    wait_queue_empty(port);

    let snapshot = || {
        let (code, stats) = site.cli_json(&["stats"]);
        assert_eq!(code, 0, "{stats}");
        (
            stats,
            api_json(port, "GET", "/api/dumpster", None),
            api_json(port, "GET", "/api/queue", None),
            metric(port, "hubrelay_recipients_delivered_total"),
        )
    };
    let before = snapshot();
    assert_eq!(before.1[0]["items"].as_u64(), Some(1), "{}", before.1);

    let now = Utc::now();
    let low = rfc3339_ms(now.timestamp_millis() - 3_600_000);
    let high = rfc3339_ms(now.timestamp_millis() + 60_000);
    let valid =
        json!({"id": "unauthorised", "storage_group": "SG1", "low": low, "high": high}).to_string();
    let error_of = |status: u16, text: &str, want: u16| -> String {
        assert_eq!(status, want, "{text}");
        let v: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string: {text}"))
            .to_string()
    };

    for token in [None, Some("wrong-token"), Some("test-token-but-longer")] {
        for (method, path, body) in [
            ("GET", "/api/dumpster", None),
            ("GET", "/api/queue", None),
            ("GET", "/metrics", None),
            ("GET", "/api/resubmit/unauthorised", None),
            ("POST", "/api/resubmit", Some(valid.as_str())),
        ] {
            let (status, text) = api(port, method, path, token, body);
            let e = error_of(status, &text, 401);
            assert!(e.contains("token"), "{method} {path} {token:?}: {e}");
        }
    }

    let cases = [
        ("{not json".to_string(), 400, vec!["JSON"]),
        (
            r#"{"id": "x", "storage_group": "SG1"}"#.to_string(),
            400,
            vec!["low"],
        ),
        (
            json!({"id": "unknown-sg", "storage_group": "SG9", "low": low, "high": high})
                .to_string(),
            404,
            vec!["SG9"],
        ),
        (
            json!({"id": "reversed", "storage_group": "SG1", "low": high, "high": low}).to_string(),
            400,
            vec!["low", "high"],
        ),
        (
            json!({"id": "bad-time", "storage_group": "SG1", "low": "yesterday", "high": high})
                .to_string(),
            400,
            vec!["low", "yesterday"],
        ),
        (
            json!({"id": "typo", "storage_group": "SG1", "low": low, "high": high, "hihg": high})
                .to_string(),
            400,
            vec!["hihg"],
        ),
        (
            json!({"id": "", "storage_group": "SG1", "low": low, "high": high}).to_string(),
            400,
            vec!["id"],
        ),
    ];
    for (body, want, words) in &cases {
        let (status, text) = api(port, "POST", "/api/resubmit", Some(TOKEN), Some(body));
        let e = error_of(status, &text, *want);
        for w in words {
            assert!(e.contains(w), "{body}: error `{e}` should name {w}");
        }
    }
    let (status, text) = api(
        port,
        "GET",
        "/api/dumpster?storage_group=SG9",
        Some(TOKEN),
        None,
    );
    assert!(error_of(status, &text, 404).contains("SG9"));

    for id in ["unauthorised", "unknown-sg", "reversed", "bad-time", "typo"] {
        let (status, text) = api(
            port,
            "GET",
            &format!("/api/resubmit/{id}"),
            Some(TOKEN),
            None,
        );
        assert!(
            error_of(status, &text, 404).contains(id),
            "request {id} must not exist"
        );
    }
    wait_queue_empty(port);
    assert_eq!(snapshot(), before, "stats, queue and deliveries unchanged");
}

#[test]
fn a_resubmitted_copy_that_fails_is_not_returned_to_the_sender() {
    // The hubs know dave; after his mailbox is delivered to, the nodes restart without him, so a
    // resubmitted copy of his message fails for good, like a fresh message to him.
    let site = TestSite::new("", &["dave@example.test"]);
    let without_dave = site.write_config("node.toml", "", &[]);
    let hub = site.start(&["hub", "--name", "hub1"]);
    let n1 = site.start(&["node", "--name", "node1"]);
    let n2 = site.start(&["node", "--name", "node2"]);
    let mut client = Smtplib::start();
    send(
        &mut client,
        site.ports.hub1,
        &["dave@example.test"],
        &sized("<delivered@client.test>", &["dave@example.test"], 600),
    );
    site.wait_mailbox("dave@example.test", WAIT, |ids| ids.len() == 1);
    wait_queue_empty(site.ports.hub1_admin);
    n1.kill9();
    n2.kill9();
    let _n1 = site.start_with(&without_dave, &["node", "--name", "node1"]);
    let _n2 = site.start_with(&without_dave, &["node", "--name", "node2"]);
    // hub2 is not running: the request to it is reported unreachable (exit 1); hub1 serves it.
    let (_, r) = site.cli_json(&["resubmit", "--storage-group", "SG1", "--since", "1h"]);
    assert_eq!(r["requests"][0]["hub"], "hub1", "{r}");
    assert_eq!(r["requests"][0]["status"], "done", "{r}");
    assert_eq!(r["requests"][0]["messages"], 1, "{r}");
    send(
        &mut client,
        site.ports.hub1,
        &["dave@example.test"],
        &sized("<fresh@client.test>", &["dave@example.test"], 600),
    );
    let bob = site.wait_mailbox("bob@example.test", WAIT, |ids| !ids.is_empty());
    wait_queue_empty(site.ports.hub1_admin);
    let warning = wait_for(WAIT, "the resubmitted copy to fail", || {
        hub.log()
            .lines()
            .find(|l| l.contains("not returned to the sender"))
            .map(str::to_string)
    });
    // The operator learns which message of which request failed, and for whom.
    for part in ["<delivered@client.test>", "request=", "dave@example.test"] {
        assert!(warning.contains(part), "{warning}");
    }
    // Exactly one DSN, for the fresh message; none for the copy bob had delivered before.
    assert_eq!(metric(site.ports.hub1_admin, "hubrelay_dsn_total"), 1);
    assert_eq!(site.mailbox_ids("bob@example.test"), bob);
    assert_eq!(bob.len(), 1, "{bob:?}");
    let dsn =
        String::from_utf8_lossy(&site.stored_message("bob@example.test", &bob[0])).into_owned();
    assert!(dsn.contains("<fresh@client.test>"), "{dsn}");
    assert!(!dsn.contains("<delivered@client.test>"), "{dsn}");
}

#[test]
fn targeted_resubmission_filters_and_test_only_sends_nothing() {
    const BOB: &str = "bob@example.test";
    let site = TestSite::new("", &[]);
    let _site = site.start(&["site"]);
    let (smtp, admin) = (site.ports.hub1, site.ports.hub1_admin);
    let mut client = Smtplib::start();
    let sent = [
        ("<t0@client.test>", "x@remote.test", &[ALICE, BOB][..]),
        ("<t1@client.test>", "y@remote.test", &[ALICE][..]),
        ("<t2@client.test>", "x@remote.test", &[BOB][..]),
    ];
    for (id, from, to) in sent {
        let out = client.send(smtp, from, to, &sized(id, to, 300));
        assert_eq!(out.trim_end(), "refused {}", "{out}");
    }
    site.wait_mailbox(ALICE, WAIT, |ids| ids.len() == 2);
    site.wait_mailbox(BOB, WAIT, |ids| ids.len() == 2);
    wait_queue_empty(admin);
    let delivered = || metric(admin, "hubrelay_recipients_delivered_total");
    let before = delivered();
    assert_eq!(before, 4);

    // (arguments, recipient deliveries hub1 would make) for each filter.
    let cases: [(&[&str], u64); 4] = [
        (&["--recipient", ALICE], 2),
        (&["--storage-group", "SG1", "--sender", "x@remote.test"], 3),
        (
            &["--storage-group", "SG1", "--message-id", "t1@client.test"],
            1,
        ),
        (
            &[
                "--recipient",
                BOB,
                "--sender",
                "x@remote.test",
                "--message-id",
                "<t2@client.test>",
            ],
            1,
        ),
    ];
    let entries = |report: &Value| -> Vec<(String, u64)> {
        report["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .map(|r| {
                assert_eq!(r["status"], "done", "{report}");
                (
                    r["hub"].as_str().unwrap().to_string(),
                    r["messages"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let mut expected_total = before;
    for (args, rcpt_deliveries) in cases {
        let mut test_only: Vec<&str> = vec!["resubmit"];
        test_only.extend(args);
        test_only.push("--test-only");
        let (code, report) = site.cli_json(&test_only);
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["test_only"], true, "{report}");
        let counted = entries(&report);
        assert_eq!(
            counted[1],
            ("hub2".to_string(), 0),
            "{args:?}: hub2 delivered none"
        );
        // Test-only never queues, so nothing can have been sent once the request is done.
        assert_eq!(api_json(admin, "GET", "/api/queue", None)["messages"], 0);
        assert_eq!(
            delivered(),
            expected_total,
            "{args:?}: test-only sent something"
        );

        let mut real: Vec<&str> = vec!["resubmit"];
        real.extend(args);
        let (code, report) = site.cli_json(&real);
        assert_eq!(code, 0, "{report}");
        assert_eq!(
            entries(&report),
            counted,
            "{args:?}: test-only counted what is sent"
        );
        expected_total += rcpt_deliveries;
        wait_for(WAIT, "the resubmitted copies to be delivered", || {
            (delivered() >= expected_total).then_some(())
        });
        wait_queue_empty(admin);
        assert_eq!(
            delivered(),
            expected_total,
            "{args:?}: only the filtered recipients"
        );
    }
    // The mailboxes dropped every resubmitted copy as a duplicate.
    assert_eq!(site.mailbox_ids(ALICE).len(), 2);
    assert_eq!(site.mailbox_ids(BOB).len(), 2);

    for (args, why) in [
        (
            &["resubmit", "--recipient", "nobody@example.test"][..],
            "no mailbox",
        ),
        (
            &["resubmit", "--recipient", ALICE, "--storage-group", "SG2"][..],
            "not of SG2",
        ),
        (&["resubmit"][..], "--storage-group"),
    ] {
        let (code, out) = site.cli_json(args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.to_string().contains(why), "{args:?}: {out}");
    }
}

/// The old active node of a failover, played by a fake: it holds its `250` to the first message
/// until released and then names epoch 1; anything later it acknowledges at once in epoch 2 (as
/// the new active would). Records the Message-ID of every message it acknowledged.
struct HeldNode {
    release: std::sync::mpsc::Sender<()>,
    holding: std::sync::mpsc::Receiver<()>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HeldNode {
    fn start(port: u16) -> HeldNode {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::{mpsc, Arc, Mutex};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let (release, released) = mpsc::channel::<()>();
        let (held, holding) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(50) {
                let Ok(stream) = stream else { continue };
                let (released, held, record) = (released.clone(), held.clone(), record.clone());
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().expect("clone");
                    let mut lines = BufReader::new(stream);
                    let _ = out.write_all(b"220 old-active.test ESMTP\r\n");
                    let (mut in_data, mut message_id) = (false, String::new());
                    let mut line = String::new();
                    while lines.read_line(&mut line).unwrap_or(0) > 0 {
                        let answer: Vec<u8> = if in_data {
                            if let Some(id) = line.strip_prefix("Message-ID: ") {
                                message_id = id.trim().to_string();
                            }
                            if line != ".\r\n" {
                                line.clear();
                                continue;
                            }
                            in_data = false;
                            let mut seen = record.lock().expect("lock");
                            let epoch = if seen.is_empty() {
                                let _ = held.send(());
                                let _ = released.lock().expect("lock").recv();
                                1
                            } else {
                                2
                            };
                            seen.push(std::mem::take(&mut message_id));
                            format!("250 2.0.0 stored (epoch {epoch})\r\n").into_bytes()
                        } else {
                            match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                                "EHLO" => b"250-old-active.test\r\n250 8BITMIME\r\n".to_vec(),
                                "AUTH" => b"502 5.5.1 not here\r\n".to_vec(),
                                "DATA" => {
                                    in_data = true;
                                    b"354 go ahead\r\n".to_vec()
                                }
                                "QUIT" => return,
                                _ => b"250 ok\r\n".to_vec(),
                            }
                        };
                        if out.write_all(&answer).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        HeldNode {
            release,
            holding,
            seen,
        }
    }
}

#[test]
fn an_acknowledgement_from_an_epoch_a_resubmission_request_superseded_is_delivered_again() {
    let site = TestSite::new("", &[]);
    let node = HeldNode::start(site.ports.node1);
    let _hub = site.start(&["hub", "--name", "hub1"]);
    let mut client = Smtplib::start();
    send(
        &mut client,
        site.ports.hub1,
        &["alice@example.test"],
        &sized("<late@client.test>", &[ALICE], 300),
    );
    node.holding
        .recv_timeout(Duration::from_secs(20))
        .expect("the hub delivers to the old active");
    // The new active (epoch 2) asks for everything: the dumpster does not hold the message yet.
    let (status, body) = api(
        site.ports.hub1_admin,
        "POST",
        "/api/resubmit",
        Some(TOKEN),
        Some(
            &json!({"id": "cms1-epoch2-SG1", "storage_group": "SG1",
                    "low": "1970-01-01T00:00:00Z", "epoch": 2})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{body}");
    // Its scan ends before the held 250 is let go, so the one delivery again is the late
    // acknowledgement's own. (Had the scan still been running when the 250 came, it could have met
    // the entry too and sent a copy of its own: a second resend, which the node drops by its
    // Message-ID; that race made this test see three sends once in CI, stop 33.)
    wait_for(
        Duration::from_secs(20),
        "the epoch-2 request's scan to end",
        || {
            let (status, body) = api(
                site.ports.hub1_admin,
                "GET",
                "/api/resubmit/cms1-epoch2-SG1",
                Some(TOKEN),
                None,
            );
            let state: Value = serde_json::from_str(&body).unwrap_or_default();
            (status == 200 && state["done"] == true).then_some(())
        },
    );
    node.release.send(()).expect("release the held 250");
    let seen = wait_for(
        Duration::from_secs(20),
        "the message delivered again",
        || {
            let seen = node.seen.lock().expect("lock").clone();
            (seen.len() >= 2).then_some(seen)
        },
    );
    assert_eq!(seen, ["<late@client.test>", "<late@client.test>"]);
    // Once more would be a loop: the copy acknowledged in epoch 2 is the end of it.
    wait_queue_empty(site.ports.hub1_admin);
    assert_eq!(node.seen.lock().expect("lock").len(), 2);
}
