//! The relay path end to end, with real processes and sockets: SMTP in, durable queue, delivery to
//! the active node, dedup by Message-ID, crash recovery, retries and DSNs (with the RFC 3461
//! parameters that decide them).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{message, metric, smtplib_send, smtplib_send_with, wait_queue_empty, Raw, TestSite};
use mailparse::{MailHeaderMap, ParsedMail};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn smtplib_message_lands_with_received_and_message_id() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &message(None, "first"),
    );
    assert_eq!(code, 0, "{out}");
    let ids = site.wait_mailbox("alice@example.test", WAIT, |ids| ids.len() == 1);
    let mid = &ids[0];
    assert!(
        mid.starts_with('<') && mid.ends_with('>') && mid.contains('@'),
        "generated Message-ID: {mid}"
    );

    let stored = site.stored_message("alice@example.test", mid);
    let raw = String::from_utf8_lossy(&stored);
    assert!(raw.starts_with("Received: "), "{raw}");
    assert!(raw.contains("by hub1.test"), "the hub stamped it: {raw}");
    assert!(raw.contains(&format!("Message-ID: {mid}")), "{raw}");
    assert!(raw.contains("Hello from first."), "{raw}");
}

#[test]
fn same_message_twice_is_stored_once_a_reused_message_id_is_not_and_pipelining_works() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let msg = message(Some("<twice@client.test>"), "twice");
    for port in [site.ports.hub1, site.ports.hub2] {
        let (code, out) = smtplib_send(port, "bob@example.test", &["alice@example.test"], &msg);
        assert_eq!(code, 0, "{out}");
    }
    // A different message that reuses a Message-ID is not a duplicate: it is stored too.
    let reused = message(Some("<reused@client.test>"), "first of two");
    let other = message(Some("<reused@client.test>"), "second of two");
    for m in [&reused, &other] {
        let (code, out) = smtplib_send(
            site.ports.hub1,
            "bob@example.test",
            &["alice@example.test"],
            m,
        );
        assert_eq!(code, 0, "{out}");
    }
    // A pipelined session (RFC 2920): the whole transaction in one write, replies in order.
    let mut raw = Raw::connect(site.ports.hub1);
    let ehlo = raw.cmd("EHLO client.test");
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    let body = message(Some("<piped@client.test>"), "piped");
    raw.send(b"MAIL FROM:<bob@example.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n");
    assert!(raw.reply().starts_with("250"), "MAIL");
    assert!(raw.reply().starts_with("250"), "RCPT alice");
    assert!(raw.reply().starts_with("550 5.1.1"), "RCPT unknown mailbox");
    assert!(raw.reply().starts_with("354"), "DATA");
    raw.send(format!("{body}.\r\nQUIT\r\n").as_bytes());
    assert!(raw.reply().starts_with("250"), "accepted");
    assert!(raw.reply().starts_with("221"), "QUIT");

    let ids = site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids.iter().any(|i| i == "<piped@client.test>")
    });
    // The duplicate went through the other hub; both have delivered once the piped one is in, but the
    // second copy may still be in flight: wait until both hubs' queues are empty.
    for admin in [site.ports.hub1_admin, site.ports.hub2_admin] {
        wait_queue_empty(admin);
    }
    let ids_after = site.mailbox_ids("alice@example.test");
    assert_eq!(
        ids_after
            .iter()
            .filter(|i| *i == "<twice@client.test>")
            .count(),
        1,
        "{ids:?}"
    );
    assert_eq!(
        ids_after
            .iter()
            .filter(|i| *i == "<reused@client.test>")
            .count(),
        2,
        "{ids_after:?}"
    );
    assert_eq!(ids_after.len(), 4, "{ids_after:?}");
}

#[test]
fn rejections_and_limits_keep_the_server_serving() {
    let site = TestSite::new("max_message_size = \"2KB\"\nmax_recipients = 2", &[]);
    let _s = site.start(&["site"]);
    let mut raw = Raw::connect(site.ports.hub1);
    assert!(raw.cmd("EHLO client.test").contains("SIZE 2000"));
    assert!(raw
        .cmd("MAIL FROM:<bob@example.test> SIZE=5000")
        .starts_with("552"));
    assert!(raw.cmd("MAIL FROM:<bob@example.test>").starts_with("250"));
    assert!(raw
        .cmd("RCPT TO:<nobody@example.test>")
        .starts_with("550 5.1.1"));
    assert!(raw
        .cmd("RCPT TO:<someone@elsewhere.test>")
        .starts_with("550 5.7.1"));
    assert!(raw.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<bob@example.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<carol@example.test>").starts_with("452"));
    assert!(raw
        .cmd(&format!("NOOP {}", "x".repeat(600)))
        .starts_with("500"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(3000)).as_bytes());
    assert!(
        raw.reply().starts_with("552"),
        "message over max_message_size"
    );
    // The session still works, and a good message still goes through.
    assert!(raw.cmd("MAIL FROM:<bob@example.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(b"Message-ID: <after-limits@client.test>\r\nSubject: ok\r\n\r\nfine\r\n.\r\n");
    assert!(raw.reply().starts_with("250"));
    let ids = site.wait_mailbox("alice@example.test", WAIT, |ids| !ids.is_empty());
    assert_eq!(
        ids,
        vec!["<after-limits@client.test>".to_string()],
        "nothing from the refused message was stored"
    );
}

#[test]
fn smuggled_terminators_do_not_end_data() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let mut raw = Raw::connect(site.ports.hub1);
    raw.cmd("EHLO client.test");
    assert!(raw.cmd("MAIL FROM:<bob@example.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(
        b"Message-ID: <smuggle@client.test>\r\nSubject: s\r\n\r\nline\n.\nMAIL FROM:<evil@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
          a\r.\rb\n.\r\nc\r\n.\r\r\nstill body\r\n.\r\n",
    );
    let r = raw.reply();
    assert!(
        r.starts_with("250"),
        "only the real terminator ends DATA: {r}"
    );
    assert!(
        raw.cmd("NOOP").starts_with("250"),
        "no smuggled command replies are pending"
    );
    site.wait_mailbox("alice@example.test", WAIT, |ids| ids.len() == 1);
    let bob = site.mailbox_ids("bob@example.test");
    assert!(
        bob.is_empty(),
        "the smuggled transaction must not deliver: {bob:?}"
    );
}

#[test]
fn kill9_after_250_loses_nothing() {
    let site = TestSite::new("", &[]);
    // Only the hub runs: the 250 is given, delivery cannot happen yet.
    let hub = site.start(&["hub", "--name", "hub1"]);
    let ids: Vec<String> = (0..5).map(|i| format!("<crash{i}@client.test>")).collect();
    for id in &ids {
        let (code, out) = smtplib_send(
            site.ports.hub1,
            "bob@example.test",
            &["alice@example.test"],
            &message(Some(id), "crash"),
        );
        assert_eq!(code, 0, "{out}");
    }
    hub.kill9();
    let _node1 = site.start(&["node", "--name", "node1"]);
    let _node2 = site.start(&["node", "--name", "node2"]);
    let _hub = site.start(&["hub", "--name", "hub1"]);
    let got = site.wait_mailbox("alice@example.test", WAIT, |got| got.len() == ids.len());
    let mut got = got;
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn node_down_then_up_is_retried_and_rejected_recipient_gets_a_dsn() {
    // The hub's config knows dave; the nodes' (older) config does not, so the node refuses him for good.
    let site = TestSite::new("", &["dave@example.test"]);
    let node_config = site.write_config("node.toml", "", &[]);
    let hub = site.start(&["hub", "--name", "hub1"]);
    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test", "dave@example.test"],
        &message(Some("<partial@client.test>"), "partial"),
    );
    assert_eq!(code, 0, "{out}");
    // Nodes come up after the hub has already failed at least once.
    let start = std::time::Instant::now();
    while !hub.log().contains("deferred") {
        assert!(start.elapsed() < WAIT, "the hub never tried: {}", hub.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let _n1 = site.start_with(&node_config, &["node", "--name", "node1"]);
    let _n2 = site.start_with(&node_config, &["node", "--name", "node2"]);
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids == ["<partial@client.test>".to_string()]
    });
    let bob = site.wait_mailbox("bob@example.test", WAIT, |ids| ids.len() == 1);
    let stored = site.stored_message("bob@example.test", &bob[0]);
    let reported: Vec<_> = dsn_fields(&stored)[1..]
        .iter()
        .map(|r| field(r, "Final-Recipient").map(str::to_string))
        .collect();
    assert_eq!(
        reported,
        [Some("rfc822; dave@example.test".to_string())],
        "only the refused recipient"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_bad_config_exits_2() {
    let site = TestSite::new("", &[]);
    let s = site.start(&["site"]);
    assert_eq!(s.terminate(), Some(0));

    let bad = site.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[site]\nname = \"x\"\naccepted_domains = [\"a.test\"]\nadmin_token = \"t\"\nbogus = 1\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["site", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5") && err.contains("bogus"), "{err}");

    // The example site with its example token, one admin address opened to every interface.
    let example = include_str!("../config/site.toml");
    let open = site.dir.path().join("open.toml");
    std::fs::write(
        &open,
        example.replace("admin = \"127.0.0.1:8025\"", "admin = \"0.0.0.0:8025\""),
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["hub", "--name", "hub1", "--config"])
        .arg(&open)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("site.admin_token: is the example token")
            && err.contains("hub1's admin API listens on 0.0.0.0:8025"),
        "{err}"
    );
}

#[test]
fn fixture_messages_arrive_intact() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/messages");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/messages")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for (i, path) in names.iter().enumerate() {
        let original = std::fs::read(path).expect("fixture");
        let text = String::from_utf8(original.clone()).expect("fixtures are UTF-8");
        let (code, out) = smtplib_send(
            site.ports.hub1,
            "bob@example.test",
            &["alice@example.test"],
            &text,
        );
        assert_eq!(code, 0, "{}: {out}", path.display());
        let ids = site.wait_mailbox("alice@example.test", WAIT, |ids| ids.len() == i + 1);
        let id = ids.last().expect("listed");
        let stored = site.stored_message("alice@example.test", id);
        assert!(
            stored.ends_with(&original),
            "{}: the original arrives byte for byte after the added headers:\n{}",
            path.display(),
            String::from_utf8_lossy(&stored)
        );
        if !text.contains("Message-ID:") {
            assert!(String::from_utf8_lossy(&stored).contains(&format!("Message-ID: {id}")));
        }
    }
}

/// The `message/delivery-status` part of a stored DSN as field blocks: the per-message fields
/// first, then one block per recipient.
fn dsn_fields(raw: &[u8]) -> Vec<Vec<(String, String)>> {
    let report = mailparse::parse_mail(raw).expect("a DSN is valid MIME");
    assert_eq!(report.ctype.mimetype, "multipart/report");
    let status: &ParsedMail = report
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "message/delivery-status")
        .expect("a message/delivery-status part");
    let text = status.get_body().expect("readable status");
    text.split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            b.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn dsn_is_advertised_by_the_hub_only_and_bad_parameters_get_501() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let mut hub = Raw::connect(site.ports.hub1);
    assert!(hub.cmd("EHLO client.test").contains("250-DSN\r\n"));
    assert!(hub
        .cmd("MAIL FROM:<bob@example.test> RET=FULL RET=HDRS")
        .starts_with("501 5.5.4"));
    assert!(hub
        .cmd("MAIL FROM:<bob@example.test> RET=HDRS ENVID=x+2By")
        .starts_with("250"));
    assert!(hub
        .cmd("RCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS")
        .starts_with("501 5.5.4"));
    assert!(hub
        .cmd("RCPT TO:<alice@example.test> ORCPT=rfc822;bad+xx")
        .starts_with("501 5.5.4"));
    assert!(hub
        .cmd("RCPT TO:<alice@example.test> NOTIFY=DELAY ORCPT=rfc822;alice+40example.test")
        .starts_with("250"));
    // The mailbox nodes are final delivery behind the hub, which reports for them.
    let mut node = Raw::connect(site.ports.node1);
    assert!(!node.cmd("EHLO client.test").contains("DSN"));
}

#[test]
fn notify_success_sends_a_delivered_dsn_with_the_senders_ids() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let (code, out) = smtplib_send_with(
        site.ports.hub1,
        "bob@example.test",
        &["RET=FULL", "ENVID=env+2B1"],
        &[
            (
                "alice@example.test",
                &["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice+40old.test"],
            ),
            // No NOTIFY: reported only if it fails, so not in this report.
            ("carol@example.test", &[]),
        ],
        &message(Some("<success@client.test>"), "success"),
    );
    assert_eq!(code, 0, "{out}");
    site.wait_mailbox("alice@example.test", WAIT, |ids| ids.len() == 1);
    site.wait_mailbox("carol@example.test", WAIT, |ids| ids.len() == 1);
    let bob = site.wait_mailbox("bob@example.test", WAIT, |ids| ids.len() == 1);
    let raw = site.stored_message("bob@example.test", &bob[0]);
    let blocks = dsn_fields(&raw);
    assert_eq!(blocks.len(), 2, "one recipient reported: {blocks:?}");
    assert_eq!(field(&blocks[0], "Original-Envelope-Id"), Some("env+1"));
    assert_eq!(field(&blocks[0], "Reporting-MTA"), Some("dns; hub1.test"));
    let r = &blocks[1];
    assert_eq!(
        field(r, "Final-Recipient"),
        Some("rfc822; alice@example.test")
    );
    assert_eq!(
        field(r, "Original-Recipient"),
        Some("rfc822;Alice@old.test")
    );
    assert_eq!(field(r, "Action"), Some("delivered"));
    assert_eq!(field(r, "Status"), Some("2.0.0"));
    let remote = field(r, "Remote-MTA").unwrap_or_default();
    assert!(
        remote == "dns; node1" || remote == "dns; node2",
        "the node that took it: {r:?}"
    );
    let report = mailparse::parse_mail(&raw).expect("valid MIME");
    assert_eq!(
        report.headers.get_first_value("In-Reply-To").as_deref(),
        Some("<success@client.test>")
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("Subject: success"),
        "the original's header: {text}"
    );
    assert!(
        !text.contains("Hello from success."),
        "RET=FULL returns the body with failures only: {text}"
    );
    wait_queue_empty(site.ports.hub1_admin);
    assert_eq!(metric(site.ports.hub1_admin, "hubrelay_dsn_total"), 1);
}

#[test]
fn notify_never_sends_no_failure_dsn_and_notify_failure_does() {
    // The hub's config knows dave, erin and frank; the nodes' config does not, so the node
    // refuses them for good.
    let extra = [
        "dave@example.test",
        "erin@example.test",
        "frank@example.test",
    ];
    let site = TestSite::new("", &extra);
    let node_config = site.write_config("node.toml", "", &[]);
    let _hub = site.start(&["hub", "--name", "hub1"]);
    let _n1 = site.start_with(&node_config, &["node", "--name", "node1"]);
    let _n2 = site.start_with(&node_config, &["node", "--name", "node2"]);

    let (code, out) = smtplib_send_with(
        site.ports.hub1,
        "bob@example.test",
        &[],
        &[("dave@example.test", &["NOTIFY=NEVER"])],
        &message(Some("<never@client.test>"), "never"),
    );
    assert_eq!(code, 0, "{out}");
    // Its one attempt is over once the queue is empty; a DSN would have been queued right after.
    wait_queue_empty(site.ports.hub1_admin);

    let (code, out) = smtplib_send_with(
        site.ports.hub1,
        "bob@example.test",
        &["RET=FULL", "ENVID=second"],
        &[
            ("dave@example.test", &["NOTIFY=NEVER"]),
            (
                "erin@example.test",
                &["NOTIFY=FAILURE", "ORCPT=rfc822;erin+40old.test"],
            ),
            ("frank@example.test", &["NOTIFY=SUCCESS"]),
        ],
        &message(Some("<failure@client.test>"), "failure"),
    );
    assert_eq!(code, 0, "{out}");
    let bob = site.wait_mailbox("bob@example.test", WAIT, |ids| !ids.is_empty());
    wait_queue_empty(site.ports.hub1_admin);
    assert_eq!(
        site.mailbox_ids("bob@example.test"),
        bob,
        "one DSN only: none for the NOTIFY=NEVER message"
    );
    assert_eq!(metric(site.ports.hub1_admin, "hubrelay_dsn_total"), 1);
    let raw = site.stored_message("bob@example.test", &bob[0]);
    let blocks = dsn_fields(&raw);
    assert_eq!(blocks.len(), 2, "only erin asked for failures: {blocks:?}");
    assert_eq!(field(&blocks[0], "Original-Envelope-Id"), Some("second"));
    let r = &blocks[1];
    assert_eq!(
        field(r, "Final-Recipient"),
        Some("rfc822; erin@example.test")
    );
    assert_eq!(field(r, "Original-Recipient"), Some("rfc822;erin@old.test"));
    assert_eq!(field(r, "Action"), Some("failed"));
    assert!(
        field(r, "Status").is_some_and(|s| s.starts_with("5.")),
        "{r:?}"
    );
    let remote = field(r, "Remote-MTA").unwrap_or_default();
    assert!(
        remote.starts_with("dns; node"),
        "the node that refused: {r:?}"
    );
    assert!(field(r, "Diagnostic-Code").is_some_and(|d| d.starts_with("smtp; 5")));
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("Hello from failure."),
        "RET=FULL returns the whole message with a failure: {text}"
    );
}
