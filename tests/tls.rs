//! TLS inside the site, end to end with real processes: Python's smtplib does STARTTLS with a hub
//! whose certificate `hubrelay tls generate` made; the hub delivers to the nodes over STARTTLS;
//! `delivery_tls = "required"` refuses a node its CA did not sign and keeps the message queued;
//! SIGHUP makes a running process serve replaced certificate files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{api_json, bin, message, smtplib_send, wait_for, Raw, TestSite};

const WAIT: Duration = Duration::from_secs(20);

/// The site lines naming `stem.crt`/`stem.key` (relative: resolved beside the config file).
fn tls_keys(stem: &str) -> String {
    format!("tls_certificate = \"{stem}.crt\"\ntls_private_key = \"{stem}.key\"\n")
}

/// Runs `hubrelay tls generate` for `dir/stem.crt` and `dir/stem.key` (replacing them).
fn generate(dir: &Path, stem: &str) -> PathBuf {
    let cert = dir.join(format!("{stem}.crt"));
    let out = Command::new(bin())
        .args(["tls", "generate", "--force", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(dir.join(format!("{stem}.key")))
        .output()
        .expect("run hubrelay tls generate");
    assert!(
        out.status.success(),
        "tls generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

/// One SMTP session from Python's smtplib with STARTTLS; the script's JSON verdict.
///
/// The client does not verify (CERT_NONE) but reports whether the certificate the hub presented is
/// byte for byte the one in `cert`, which is the stronger check for a self-signed certificate.
fn smtplib_starttls(port: u16, cert: &Path, send: bool) -> Value {
    let script = r#"
import json, smtplib, ssl, sys
port, cert, send = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "send"
expected = ssl.PEM_cert_to_DER_cert(open(cert).read())
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("client.test")
    offered = s.has_extn("starttls")
    s.starttls(context=context)
    peer = s.sock.getpeercert(binary_form=True)
    s.ehlo("client.test")
    verdict = {
        "offered": offered,
        "offered_again": s.has_extn("starttls"),
        "same_certificate": peer == expected,
        "version": s.sock.version(),
        "cipher": s.sock.cipher()[0],
    }
    if send:
        msg = "Message-ID: <tls@client.test>\r\nSubject: over TLS\r\n\r\nHello over TLS.\r\n"
        verdict["refused"] = s.sendmail("bob@example.test", ["alice@example.test"], msg)
print(json.dumps(verdict))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(cert)
        .arg(if send { "send" } else { "look" })
        .stdin(Stdio::null())
        .output()
        .expect("python3 must be installed for the tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib STARTTLS failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn smtplib_starttls_session_is_delivered_over_tls_to_the_node() {
    let site = TestSite::new(&tls_keys("site"), &[]);
    let cert = generate(site.dir.path(), "site");
    let s = site.start(&["site"]);

    let verdict = smtplib_starttls(site.ports.hub1, &cert, true);
    assert_eq!(verdict["offered"], true, "{verdict}");
    assert_eq!(verdict["offered_again"], false, "{verdict}");
    assert_eq!(verdict["same_certificate"], true, "{verdict}");
    assert!(
        verdict["version"] == "TLSv1.3" || verdict["version"] == "TLSv1.2",
        "{verdict}"
    );
    assert_eq!(verdict["refused"], serde_json::json!({}), "{verdict}");

    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids.iter().any(|i| i == "<tls@client.test>")
    });
    let stored = site.stored_message("alice@example.test", "<tls@client.test>");
    let raw = String::from_utf8_lossy(&stored);
    // The node's stamp is on top: the hub delivered to it over STARTTLS (opportunistic default).
    let node = raw.lines().take(2).collect::<Vec<_>>().join("\n");
    assert!(
        node.contains("by node") && node.contains("with ESMTPS"),
        "hub to node: {raw}"
    );
    assert!(
        raw.contains("by hub1.test (hubrelay) with ESMTPS"),
        "client to hub: {raw}"
    );
    assert!(s.log().contains("TLS established"), "{}", s.log());
}

#[test]
fn without_a_certificate_starttls_is_not_offered_and_delivery_stays_in_clear_text() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let mut raw = Raw::connect(site.ports.hub1);
    let ehlo = raw.cmd("EHLO client.test");
    assert!(
        ehlo.contains("PIPELINING") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(raw.cmd("STARTTLS").starts_with("502 5.5.1"));
    assert!(raw.cmd("QUIT").starts_with("221"));

    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &message(Some("<clear@client.test>"), "clear"),
    );
    assert_eq!(code, 0, "{out}");
    site.wait_mailbox("alice@example.test", WAIT, |ids| ids.len() == 1);
    let stored = site.stored_message("alice@example.test", "<clear@client.test>");
    let raw = String::from_utf8_lossy(&stored);
    assert!(!raw.contains("ESMTPS"), "{raw}");
    assert_eq!(raw.matches(" with ESMTP id ").count(), 2, "{raw}");
}

#[test]
fn required_delivery_tls_waits_for_a_node_the_ca_signed_and_loses_nothing() {
    // The nodes (and hubs) present `site`; the hubs trust only `ca`.
    let extra = format!(
        "{}delivery_tls = \"required\"\ntls_ca = \"ca.crt\"\n",
        tls_keys("site")
    );
    let site = TestSite::new(&extra, &[]);
    generate(site.dir.path(), "site");
    generate(site.dir.path(), "ca");
    let s = site.start(&["site"]);

    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &message(Some("<verified@client.test>"), "verified"),
    );
    assert_eq!(code, 0, "the hub acknowledges: {out}");
    wait_for(WAIT, "a deferral for the node's certificate", || {
        let log = s.log();
        log.lines()
            .any(|l| l.contains("deferred") && l.contains("invalid peer certificate"))
            .then_some(())
    });
    let queue = api_json(site.ports.hub1_admin, "GET", "/api/queue", None);
    assert_eq!(queue["messages"], 1, "the message is kept: {queue}");
    site.wait_mailbox("alice@example.test", WAIT, |ids| ids.is_empty());

    // The nodes get a certificate the CA signed (the CA's own, self-signed) and reload it.
    for ext in ["crt", "key"] {
        std::fs::copy(
            site.dir.path().join(format!("ca.{ext}")),
            site.dir.path().join(format!("site.{ext}")),
        )
        .expect("replace the certificate files");
    }
    s.sighup();
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids == ["<verified@client.test>"]
    });
    let stored = site.stored_message("alice@example.test", "<verified@client.test>");
    let raw = String::from_utf8_lossy(&stored);
    let node = raw.lines().take(2).collect::<Vec<_>>().join("\n");
    assert!(
        node.contains("by node") && node.contains("with ESMTPS"),
        "{raw}"
    );
}

#[test]
fn sighup_serves_replaced_certificate_files_and_a_bad_reload_keeps_the_old() {
    let site = TestSite::new(&tls_keys("hub"), &[]);
    let first = generate(site.dir.path(), "hub");
    let first_pem = std::fs::read(&first).expect("read certificate");
    let s = site.start(&["hub", "--name", "hub1"]);
    let look = || smtplib_starttls(site.ports.hub1, &first, false);
    assert_eq!(look()["same_certificate"], true);

    generate(site.dir.path(), "hub");
    assert_ne!(std::fs::read(&first).expect("read"), first_pem);
    // Not before the signal: the running hub still presents the certificate it loaded.
    assert_eq!(look()["same_certificate"], false);
    s.sighup();
    wait_for(WAIT, "the new certificate to be served", || {
        (look()["same_certificate"] == true).then_some(())
    });

    // A key that is not PEM: the reload fails, is logged, and the hub serves on unchanged.
    std::fs::write(site.dir.path().join("hub.key"), "not a key\n").expect("break the key");
    s.sighup();
    wait_for(WAIT, "the failed reload to be logged", || {
        s.log()
            .contains("TLS certificate reload failed")
            .then_some(())
    });
    let verdict = look();
    assert_eq!(verdict["same_certificate"], true, "{verdict}");
    assert!(s.log().contains("tls_private_key"), "{}", s.log());
}

#[test]
fn tls_generate_keeps_the_key_private_and_replaces_files_only_with_force() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = generate(dir.path(), "pair");
    let key = dir.path().join("pair.key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(&cert).expect("certificate");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    let out = Command::new(bin())
        .args(["tls", "generate", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("run hubrelay tls generate");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("use --force"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&cert).expect("certificate"), pem);
}

#[test]
fn admin_tls_carries_the_cli_heartbeats_and_log_shipping_over_https() {
    let extra = format!(
        "{}admin_tls = true\ntls_ca = \"site.crt\"\n",
        tls_keys("site")
    );
    let site = TestSite::new(&extra, &[]);
    generate(site.dir.path(), "site");
    // Small logs, so that one message closes a generation the passive must pull over HTTPS.
    let config = std::fs::read_to_string(site.config()).expect("read config");
    let config = config.replacen(
        "witness = \"witness/cms1\"\n",
        "witness = \"witness/cms1\"\nlog_file_size = \"4KiB\"\n",
        1,
    );
    std::fs::write(site.config(), config).expect("write config");
    let _s = site.start(&["site"]);

    let big = format!(
        "{}{}\r\n",
        message(Some("<big@client.test>"), "big"),
        format!("{}\r\n", "x".repeat(70)).repeat(90)
    );
    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &big,
    );
    assert_eq!(code, 0, "{out}");
    // `mailbox` is an admin call: it works only over HTTPS with the CA.
    site.wait_mailbox("alice@example.test", WAIT, |ids| {
        ids == ["<big@client.test>"]
    });
    // Heartbeats (quorum Healthy: the active sees its peer) and log shipping (a closed log copied).
    wait_for(WAIT, "a healthy copy of the closed log", || {
        let (code, v) = site.cli_json(&["status", "--cms", "cms1"]);
        let sg = &v["storage_groups"][0];
        (code == 0
            && v["quorum"] == "Healthy"
            && sg["last_log_copied"].as_u64().is_some_and(|n| n >= 1)
            && sg["summary_copy_status"] == "Healthy")
            .then_some(())
    });

    // Clear-text HTTP gets no HTTP answer from an admin port.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", site.ports.hub1_admin))
        .expect("connect to the admin port");
    plain.set_read_timeout(Some(WAIT)).expect("read timeout");
    std::io::Write::write_all(
        &mut plain,
        b"GET /api/dumpster HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-token\r\n\r\n",
    )
    .expect("write");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}
