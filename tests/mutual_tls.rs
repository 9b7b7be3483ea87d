//! Mutual TLS inside a site made by `hubrelay tls generate --site-dir … --update-config`, with four
//! separate processes: a node takes mail only over TLS from a client whose certificate the site's
//! CA signed (a stranger is refused in clear text, without a certificate and with a certificate of
//! another CA, and nothing of it is stored); the admin APIs refuse a client without a certificate
//! even with the token, while the CLI (the operator's certificate) and the roles (their own) get
//! through; the CCR failover test holds on such a site; and a hub whose certificate the nodes
//! refuse keeps its mail and delivers it exactly once when the right files are in place and
//! SIGHUP reloads them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::cluster::{active_is, cms_site, one_at_a_time, start_all, wait_status};
use common::load::load;
use common::{bin, wait_for, TestSite, TOKEN};

const WAIT: Duration = Duration::from_secs(30);

/// A four-process test site (logs close at 4 KiB, lossy failover allowed) made mutual-TLS by
/// `hubrelay tls generate --site-dir tls --update-config`.
fn mutual_site() -> TestSite {
    let site = cms_site("auto_database_mount_dial = \"BestAvailability\"");
    let out = Command::new(bin())
        .args(["tls", "generate", "--site-dir"])
        .arg(site.dir.path().join("tls"))
        .arg("--update-config")
        .arg("--config")
        .arg(site.config())
        .output()
        .expect("run hubrelay tls generate");
    assert!(
        out.status.success(),
        "tls generate --site-dir: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(site.config()).expect("config");
    for line in [
        "delivery_tls = \"mutual\"",
        "admin_tls = \"mutual\"",
        "tls_ca = \"tls/ca.pem\"",
        "admin_client_certificate = \"tls/operator.pem\"",
        "tls_certificate = \"tls/node2.pem\"",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    site
}

/// Python's ssl against `port` (SMTP on a node, or an admin API): what a client without the
/// site's certificate (none, or one of `cert`/`key` from another CA) gets.
fn stranger(port: u16, ca: &Path, identity: Option<(&Path, &Path)>, admin: bool) -> Value {
    let script = r#"
import json, smtplib, ssl, sys, urllib.request
port, ca, what = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=ca)
context.check_hostname = False
if len(sys.argv) > 5:
    context.load_cert_chain(sys.argv[4], sys.argv[5])
verdict = {}
if what == "admin":
    request = urllib.request.Request("https://127.0.0.1:%d/api/status" % port,
                                     headers={"Authorization": "Bearer " + sys.argv[-1]})
    try:
        verdict["status"] = urllib.request.urlopen(request, context=context, timeout=10).status
    except Exception as e:
        verdict["refused"] = str(e)
    print(json.dumps(verdict))
    sys.exit(0)
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("stranger.test")
    verdict["clear"] = s.mail("attacker@evil.test")[0]
    s.rset()
    try:
        s.starttls(context=context)
        s.ehlo("stranger.test")
        s.sendmail("attacker@evil.test", ["alice@example.test"],
                   b"Message-ID: <stranger@evil.test>\r\nSubject: in\r\n\r\nhello\r\n")
        verdict["tls"] = 250
    except smtplib.SMTPSenderRefused as e:
        verdict["tls"] = e.smtp_code
    except Exception as e:
        verdict["refused"] = str(e)
print(json.dumps(verdict))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &port.to_string()])
        .arg(ca)
        .arg(if admin { "admin" } else { "smtp" });
    if let Some((cert, key)) = identity {
        cmd.arg(cert).arg(key);
    }
    if admin {
        cmd.arg(TOKEN);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}

/// A node's `hubrelay_smtp_auth_refused_total{reason}`, read over HTTPS with the operator's
/// certificate.
fn refused(site: &TestSite, node_admin: u16, reason: &str) -> u64 {
    let tls = site.dir.path().join("tls");
    let out = Command::new("python3")
        .args([
            "-c",
            r#"
import ssl, sys, urllib.request
port, tls, token = sys.argv[1], sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=tls + "/ca.pem")
context.load_cert_chain(tls + "/operator.pem", tls + "/operator.key")
request = urllib.request.Request("https://127.0.0.1:%s/metrics" % port,
                                 headers={"Authorization": "Bearer " + token})
print(urllib.request.urlopen(request, context=context, timeout=10).read().decode())
"#,
            &node_admin.to_string(),
        ])
        .arg(&tls)
        .arg(TOKEN)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::auth_refused_in(&String::from_utf8_lossy(&out.stdout), reason)
}

/// A self-signed pair of another CA, `dir/stem.pem` and `dir/stem.key`.
fn foreign_pair(dir: &Path, stem: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).expect("dir");
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    let out = Command::new(bin())
        .args([
            "tls",
            "generate",
            "--force",
            "--name",
            "127.0.0.1",
            "--cert",
        ])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("tls generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[test]
fn only_clients_certified_by_the_site_ca_get_in_and_nothing_of_a_stranger_is_stored() {
    let _turn = one_at_a_time();
    let site = mutual_site();
    let _procs = start_all(&site);
    // The CLI reaches every role with the operator's certificate.
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let ca = site.dir.path().join("tls/ca.pem");
    let (node, admin) = (site.ports.node1, site.ports.node1_admin);

    let plain = stranger(node, &ca, None, false);
    assert_eq!(plain["clear"], 530, "MAIL in clear text: {plain}");
    assert!(plain["refused"].is_string(), "no certificate: {plain}");
    let (cert, key) = foreign_pair(&site.dir.path().join("foreign"), "stranger");
    let foreign = stranger(node, &ca, Some((&cert, &key)), false);
    assert!(
        foreign["refused"].is_string(),
        "a certificate of another CA: {foreign}"
    );
    // A certificate from the site's CA is what lets a hub in (the operator's stands in for one).
    let tls = site.dir.path().join("tls");
    let certified = stranger(
        node,
        &ca,
        Some((&tls.join("operator.pem"), &tls.join("operator.key"))),
        false,
    );
    assert_eq!(certified["tls"], 250, "{certified}");
    // Each of the three tried MAIL in clear text first; two had no certificate of the site's.
    assert_eq!(refused(&site, admin, "missing"), 3);
    assert_eq!(refused(&site, admin, "certificate"), 2);

    // The admin API: the token alone does not open it.
    let no_cert = stranger(admin, &ca, None, true);
    assert!(no_cert["refused"].is_string(), "{no_cert}");
    let foreign_admin = stranger(admin, &ca, Some((&cert, &key)), true);
    assert!(foreign_admin["refused"].is_string(), "{foreign_admin}");
    let operator = stranger(
        admin,
        &ca,
        Some((&tls.join("operator.pem"), &tls.join("operator.key"))),
        true,
    );
    assert_eq!(operator["status"], 200, "{operator}");

    common::through_hub(site.ports.hub1, "<hub1@client.test>");
    common::through_hub(site.ports.hub2, "<hub2@client.test>");
    let want = [
        "<stranger@evil.test>".to_string(),
        "<hub1@client.test>".to_string(),
        "<hub2@client.test>".to_string(),
    ];
    // Only the certified session's message and the hubs' arrive; the strangers' were never taken.
    common::wait_alice_exactly(&site, &want, WAIT);
}

#[test]
fn a_mutual_tls_site_fails_over_under_load_with_every_250_delivered_once() {
    let _turn = one_at_a_time();
    let site = mutual_site();
    let mut procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let load = load(&site, "mutual", 3_000);
    load.wait_acked(30);
    procs[0].take().expect("node1").kill9();
    let started = Instant::now();
    wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    load.wait_acked(30);
    let acked = load.finish(&site);
    let node2 = procs[1].as_ref().expect("node2").log();
    assert!(
        node2.contains("client_certificate=true"),
        "the hubs delivered with their certificates:\n{node2}"
    );
    eprintln!(
        "mutual TLS failover in {:.1} s; {acked} acknowledged, each once",
        took.as_secs_f64()
    );
}

#[test]
fn a_hub_whose_certificate_the_nodes_refuse_keeps_its_mail_and_delivers_it_once_reloaded() {
    let _turn = one_at_a_time();
    let site = mutual_site();
    // hub1 runs from a copy of the site file that names a pair of another CA for it.
    let wrong = site.dir.path().join("wrong");
    foreign_pair(&wrong, "hub1");
    let text = std::fs::read_to_string(site.config()).expect("config");
    let hub1_config = site.dir.path().join("hub1.toml");
    std::fs::write(
        &hub1_config,
        text.replace("\"tls/hub1.pem\"", "\"wrong/hub1.pem\"")
            .replace("\"tls/hub1.key\"", "\"wrong/hub1.key\""),
    )
    .expect("hub1.toml");
    let _n1 = site.start(&["node", "--name", "node1"]);
    let _n2 = site.start(&["node", "--name", "node2"]);
    let hub1 = site.start_with(&hub1_config, &["hub", "--name", "hub1"]);
    let _hub2 = site.start(&["hub", "--name", "hub2"]);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));

    let ids: Vec<String> = (0..5)
        .map(|i| format!("<uncertified-{i}@client.test>"))
        .collect();
    for id in &ids {
        common::through_hub(site.ports.hub1, id);
    }
    wait_for(WAIT, "the node to refuse hub1's certificate", || {
        (refused(&site, site.ports.node1_admin, "certificate") > 0).then_some(())
    });
    wait_for(WAIT, "hub1 to defer", || {
        hub1.log()
            .lines()
            .any(|l| l.contains("deferred") && l.contains("STARTTLS"))
            .then_some(())
    });
    assert!(site.mailbox_ids("alice@example.test").is_empty());
    common::through_hub(site.ports.hub2, "<hub2@client.test>");
    site.wait_mailbox("alice@example.test", WAIT, |got| {
        got == ["<hub2@client.test>"]
    });

    // The operator puts hub1's own pair in place and signals it.
    for ext in ["pem", "key"] {
        std::fs::copy(
            site.dir.path().join(format!("tls/hub1.{ext}")),
            wrong.join(format!("hub1.{ext}")),
        )
        .expect("copy");
    }
    hub1.sighup();
    let mut want = ids.clone();
    want.push("<hub2@client.test>".into());
    common::wait_alice_exactly(&site, &want, WAIT);
    assert!(
        hub1.log().contains("delivery TLS files reloaded"),
        "{}",
        hub1.log()
    );
}
