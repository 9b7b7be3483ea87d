//! Only the site's hubs deliver to its mailbox nodes, with real processes and Python's smtplib as
//! the stranger: a client that is not a hub gets `530 5.7.0` at MAIL on a node (in clear text and
//! after STARTTLS), nothing of it is stored and the node counts it; a hub whose delivery secret is
//! wrong is refused at AUTH, keeps the mail queued (its clients still got their 250), and delivers
//! it exactly once when the secret file is fixed and SIGHUP reloads it.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::{api_json, bin, metric, wait_for, TestSite};

const WAIT: Duration = Duration::from_secs(30);

/// One session from Python's smtplib straight to `port` (STARTTLS first if `tls`, not verifying):
/// whether EHLO offered AUTH, and the code the server answered the message with (250 if sent).
fn stranger(port: u16, tls: bool) -> Value {
    let script = r#"
import json, smtplib, ssl, sys
port, tls = int(sys.argv[1]), sys.argv[2] == "tls"
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("stranger.test")
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        s.starttls(context=context)
        s.ehlo("stranger.test")
    verdict = {"auth": s.has_extn("auth"), "auth_mechanisms": s.esmtp_features.get("auth", "")}
    try:
        s.sendmail("attacker@evil.test", ["alice@example.test"],
                   b"Message-ID: <stranger@evil.test>\r\nSubject: in\r\n\r\nhello\r\n")
        verdict["code"] = 250
    except smtplib.SMTPSenderRefused as e:
        verdict["code"] = e.smtp_code
        verdict["text"] = e.smtp_error.decode()
print(json.dumps(verdict))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &port.to_string(),
            if tls { "tls" } else { "plain" },
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}

/// The active node's SMTP and admin ports, once there is one.
fn active_node(site: &TestSite) -> (u16, u16) {
    let p = &site.ports;
    wait_for(WAIT, "an active node", || {
        [(p.node1, p.node1_admin), (p.node2, p.node2_admin)]
            .into_iter()
            .find(|(_, admin)| api_json(*admin, "GET", "/api/status", None)["mounted"] == true)
    })
}

fn refused(node_admin: u16, reason: &str) -> u64 {
    let text = common::api(node_admin, "GET", "/metrics", Some(common::TOKEN), None).1;
    common::auth_refused_in(&text, reason)
}

#[test]
fn a_client_that_is_not_a_hub_is_refused_at_the_node_and_nothing_reaches_a_mailbox() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let (node_port, admin) = active_node(&site);
    let v = stranger(node_port, false);
    assert_eq!(v["auth"], true, "{v}");
    assert_eq!(
        v["auth_mechanisms"].as_str().map(str::trim),
        Some("CRAM-SHA256"),
        "{v}"
    );
    assert_eq!(v["code"], 530, "{v}");
    assert!(
        v["text"].as_str().unwrap_or_default().contains("hubs only"),
        "{v}"
    );
    assert_eq!(refused(admin, "missing"), 1);
    // Mail through a hub still arrives (the hub authenticates), and only that.
    common::through_hub(site.ports.hub1, "<through-hub@client.test>");
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids == ["<through-hub@client.test>"]
    });
    assert_eq!(refused(admin, "invalid"), 0);
    // A hub takes mail from anyone: it does not ask for AUTH.
    let hub = stranger(site.ports.hub1, false);
    assert_eq!(hub["auth"], false, "{hub}");
    assert_eq!(hub["code"], 250, "{hub}");
}

#[test]
fn with_starttls_a_stranger_is_refused_all_the_same() {
    let site = TestSite::new(
        "tls_certificate = \"site.crt\"\ntls_private_key = \"site.key\"\n",
        &[],
    );
    let out = Command::new(bin())
        .args(["tls", "generate", "--cert"])
        .arg(site.dir.path().join("site.crt"))
        .arg("--key")
        .arg(site.dir.path().join("site.key"))
        .output()
        .expect("tls generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _s = site.start(&["site"]);
    let (node_port, admin) = active_node(&site);
    let v = stranger(node_port, true);
    assert_eq!(v["code"], 530, "{v}");
    assert_eq!(refused(admin, "missing"), 1);
    common::through_hub(site.ports.hub2, "<tls-hub@client.test>");
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids == ["<tls-hub@client.test>"]
    });
}

#[test]
fn a_hub_with_a_wrong_secret_keeps_its_mail_queued_and_delivers_it_once_the_secret_is_reloaded() {
    // The nodes and hub2 read `secret`; hub1 reads `hub1-secret`, wrong at first.
    let site = TestSite::new("delivery_secret_file = \"secret\"", &[]);
    std::fs::write(site.dir.path().join("secret"), "the site's secret\n").expect("secret");
    std::fs::write(site.dir.path().join("hub1-secret"), "a stale secret\n").expect("secret");
    let hub1_config = site.write_config("hub1.toml", "delivery_secret_file = \"hub1-secret\"", &[]);
    let _n1 = site.start(&["node", "--name", "node1"]);
    let _n2 = site.start(&["node", "--name", "node2"]);
    let hub1 = site.start_with(&hub1_config, &["hub", "--name", "hub1"]);
    let _hub2 = site.start(&["hub", "--name", "hub2"]);
    let (_, admin) = active_node(&site);

    let ids: Vec<String> = (0..5).map(|i| format!("<stale-{i}@client.test>")).collect();
    for id in &ids {
        common::through_hub(site.ports.hub1, id);
    }
    wait_for(WAIT, "the node to refuse hub1's AUTH", || {
        (refused(admin, "invalid") > 0).then_some(())
    });
    wait_for(WAIT, "hub1 to defer for the refused AUTH", || {
        hub1.log()
            .lines()
            .any(|l| l.contains("deferred") && l.contains("AUTH refused"))
            .then_some(())
    });
    let queue = api_json(site.ports.hub1_admin, "GET", "/api/queue", None);
    assert_eq!(queue["messages"], 5, "every message is kept: {queue}");
    assert!(site.mailbox_ids("alice@example.test").is_empty());
    // hub2 has the right secret: its mail goes through meanwhile.
    common::through_hub(site.ports.hub2, "<hub2@client.test>");
    site.wait_mailbox("alice@example.test", WAIT, |got| {
        got == ["<hub2@client.test>"]
    });

    std::fs::write(site.dir.path().join("hub1-secret"), "the site's secret\n").expect("fix");
    hub1.sighup();
    let mut want = ids.clone();
    want.push("<hub2@client.test>".into());
    common::wait_alice_exactly(&site, &want, WAIT);
    common::wait_queue_empty(site.ports.hub1_admin);
    assert!(
        hub1.log().contains("delivery secret reloaded"),
        "{}",
        hub1.log()
    );
    assert_eq!(
        metric(site.ports.hub1_admin, "hubrelay_recipients_delivered_total"),
        5
    );
}

/// A node of another make in the nodes' place: it takes no AUTH (502) and answers MAIL with `530`.
fn demanding_node(port: u16) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the fake node");
    std::thread::spawn(move || {
        listener.set_nonblocking(false).expect("blocking");
        let deadline = std::time::Instant::now() + WAIT;
        for stream in listener.incoming() {
            if std::time::Instant::now() > deadline {
                return;
            }
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut out = stream.try_clone().expect("clone");
                let mut lines = BufReader::new(stream);
                let _ = out.write_all(b"220 demanding.test ESMTP\r\n");
                let mut line = String::new();
                while lines.read_line(&mut line).unwrap_or(0) > 0 {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-demanding.test\r\n250 8BITMIME\r\n",
                        "AUTH" => b"502 5.5.1 not here\r\n",
                        "MAIL" => b"530 5.7.0 Authentication required\r\n",
                        "QUIT" => return,
                        _ => b"250 ok\r\n",
                    };
                    if out.write_all(answer).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    })
}

#[test]
fn a_node_that_wants_authentication_the_hub_cannot_give_defers_the_mail_and_bounces_nothing() {
    let site = TestSite::new("", &[]);
    let _n1 = demanding_node(site.ports.node1);
    let _n2 = demanding_node(site.ports.node2);
    let hub = site.start(&["hub", "--name", "hub1"]);
    common::through_hub(site.ports.hub1, "<kept@client.test>");
    wait_for(WAIT, "a deferral for the 530", || {
        hub.log()
            .lines()
            .any(|l| l.contains("deferred") && l.contains("the node refused this hub"))
            .then_some(())
    });
    let queue = api_json(site.ports.hub1_admin, "GET", "/api/queue", None);
    assert_eq!(
        queue["messages"], 1,
        "the message is kept and no bounce was made: {queue}"
    );
    assert!(!hub.log().contains("bounce"), "{}", hub.log());
}
