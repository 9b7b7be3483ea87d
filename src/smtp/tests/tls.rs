//! STARTTLS at the session level (RFC 3207): offered only with a certificate, nothing pipelined
//! behind it survives the upgrade, nothing learnt before it is kept, `require_tls`, and
//! certificate reloads. The client is tokio-rustls over the same duplex pipe.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, DuplexStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{config, Client, Harness, TestBackend, HOST};
use crate::smtp::tls::crypto_provider;
use crate::smtp::{ServerTls, SmtpConfig, TlsFiles};

/// A self-signed certificate for `localhost`, written under `dir` as `<stem>.crt`/`<stem>.key`.
fn certificate(dir: &Path, stem: &str) -> (TlsFiles, CertificateDer<'static>) {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("rcgen makes a certificate");
    let files = TlsFiles {
        certificate: dir.join(format!("{stem}.crt")),
        private_key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.certificate, pair.cert.pem()).expect("write certificate");
    std::fs::write(&files.private_key, pair.key_pair.serialize_pem()).expect("write key");
    (files, pair.cert.der().clone())
}

/// A server config with STARTTLS, and the certificate a client must trust.
fn tls_config(dir: &Path) -> (SmtpConfig, CertificateDer<'static>) {
    let (files, der) = certificate(dir, "server");
    let mut c = config();
    c.tls = Some(ServerTls::load(files).expect("the generated pair loads"));
    (c, der)
}

/// A client trusting only `trusted`, as a hub verifying a node against `tls_ca` would.
fn connector(trusted: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).expect("a valid root");
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Runs the client side of the handshake on what the client has left of the pipe; the
/// server must have sent nothing after its 220 (the client's buffer is empty).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    client: Client<S>,
    trusted: &CertificateDer<'static>,
) -> Client<TlsStream<S>> {
    assert!(
        client.stream.buffer().is_empty(),
        "bytes after the 220: {:?}",
        String::from_utf8_lossy(client.stream.buffer())
    );
    let guard = client.guard;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let tls = tokio::time::timeout(
        guard,
        connector(trusted).connect(name, client.stream.into_inner()),
    )
    .await
    .expect("handshake in time")
    .expect("handshake succeeds");
    Client::new(tls)
}

/// Sends `line` and asserts the reply starts with `prefix`.
async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    line: &str,
    prefix: &str,
) -> String {
    client.send(format!("{line}\r\n")).await;
    client.expect(prefix).await
}

/// Starts a session with `config` and takes its greeting; the handles stay with the caller.
async fn greeted(config: SmtpConfig) -> (Client<DuplexStream>, Harness) {
    let mut h = Harness::greeted(config, TestBackend::default()).await;
    let (spare, _) = tokio::io::duplex(1);
    let client = std::mem::replace(&mut h.client, Client::new(spare));
    (client, h)
}

#[tokio::test]
async fn starttls_is_offered_only_with_a_certificate() {
    let mut plain = Harness::greeted(config(), TestBackend::default()).await;
    let ehlo = plain.cmd("EHLO client.test", "250").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    plain.cmd("STARTTLS", "502 5.5.1").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) = tls_config(dir.path());
    let mut offered = Harness::greeted(config, TestBackend::default()).await;
    let ehlo = offered.cmd("EHLO client.test", "250").await;
    assert!(ehlo.contains("\r\n250 STARTTLS\r\n"), "{ehlo}");
    offered.cmd("STARTTLS now", "501 5.5.4").await;
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, trusted) = tls_config(dir.path());
    let (mut client, h) = greeted(config).await;
    cmd(&mut client, "EHLO client.test", "250").await;
    // The injection of CVE-2011-0411: clear-text commands behind STARTTLS in one write.
    client
        .send("STARTTLS\r\nMAIL FROM:<mallory@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        .await;
    let ready = client.reply().await;
    assert_eq!(ready, "220 2.0.0 Ready to start TLS\r\n");

    let mut tls = handshake(client, &trusted).await;
    let ehlo = cmd(&mut tls, "EHLO client.test", "250").await;
    assert!(!ehlo.contains("STARTTLS"), "not offered twice: {ehlo}");
    // Had the pipelined MAIL been run, this RCPT would be accepted into mallory's envelope.
    cmd(&mut tls, "RCPT TO:<alice@example.test>", "503 5.5.1").await;
    cmd(&mut tls, "STARTTLS", "503 5.5.1").await;

    cmd(&mut tls, "MAIL FROM:<sender@remote.test>", "250 2.1.0").await;
    cmd(&mut tls, "RCPT TO:<alice@example.test>", "250 2.1.5").await;
    cmd(&mut tls, "DATA", "354").await;
    tls.send("Subject: over TLS\r\n\r\nhello\r\n.\r\n").await;
    tls.expect("250 2.0.0").await;
    cmd(&mut tls, "QUIT", "221").await;

    let delivered = h.backend.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].sender, "sender@remote.test");
    let data = String::from_utf8_lossy(&delivered[0].data);
    assert!(
        data.starts_with(&format!(
            "Received: from client.test ([127.0.0.1])\r\n\tby {HOST} (hubrelay) with ESMTPS id "
        )),
        "{data}"
    );
    h.finished().await;
}

#[tokio::test]
async fn the_session_starts_over_after_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, trusted) = tls_config(dir.path());
    let (mut client, h) = greeted(config).await;
    cmd(&mut client, "EHLO before.test", "250").await;
    cmd(&mut client, "MAIL FROM:<before@remote.test>", "250 2.1.0").await;
    cmd(&mut client, "RCPT TO:<alice@example.test>", "250 2.1.5").await;
    cmd(&mut client, "STARTTLS", "220 2.0.0").await;

    let mut tls = handshake(client, &trusted).await;
    // Neither the greeting nor the envelope crossed into the encrypted session.
    cmd(&mut tls, "MAIL FROM:<after@remote.test>", "503 5.5.1").await;
    cmd(&mut tls, "EHLO after.test", "250").await;
    cmd(&mut tls, "DATA", "503 5.5.1").await;
    cmd(&mut tls, "RCPT TO:<alice@example.test>", "503 5.5.1").await;
    cmd(&mut tls, "MAIL FROM:<after@remote.test>", "250 2.1.0").await;
    cmd(&mut tls, "RCPT TO:<bob@example.test>", "250 2.1.5").await;
    cmd(&mut tls, "DATA", "354").await;
    tls.send("Subject: s\r\n\r\nbody\r\n.\r\n").await;
    tls.expect("250 2.0.0").await;
    cmd(&mut tls, "QUIT", "221").await;

    let delivered = h.backend.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].sender, "after@remote.test");
    assert_eq!(delivered[0].recipients, ["bob@example.test"]);
    let data = String::from_utf8_lossy(&delivered[0].data);
    assert!(data.starts_with("Received: from after.test "), "{data}");
    h.finished().await;
}

#[tokio::test]
async fn require_tls_refuses_mail_in_clear_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut config, trusted) = tls_config(dir.path());
    config.require_tls = true;
    let (mut client, h) = greeted(config).await;
    cmd(&mut client, "EHLO client.test", "250").await;
    let refused = cmd(&mut client, "MAIL FROM:<sender@remote.test>", "530").await;
    assert_eq!(refused, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    cmd(&mut client, "STARTTLS", "220 2.0.0").await;

    let mut tls = handshake(client, &trusted).await;
    cmd(&mut tls, "EHLO client.test", "250").await;
    cmd(&mut tls, "MAIL FROM:<sender@remote.test>", "250 2.1.0").await;
    cmd(&mut tls, "QUIT", "221").await;
    h.finished().await;
}

#[tokio::test]
async fn a_failed_handshake_closes_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) = tls_config(dir.path());
    let (mut client, h) = greeted(config).await;
    cmd(&mut client, "EHLO client.test", "250").await;
    cmd(&mut client, "STARTTLS", "220 2.0.0").await;
    client.send("EHLO still-in-clear-text.test\r\n").await;
    // The server may answer with a TLS alert, but never with SMTP, and it ends the session.
    let mut rest = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut client.stream, &mut rest);
    tokio::time::timeout(client.guard, read)
        .await
        .expect("the server closes the connection")
        .expect("read to the end");
    assert!(!rest.starts_with(b"250"), "{rest:?}");
    h.finished().await;
}

/// The certificate `tls` presents in a handshake now (a client that trusts anything it is
/// asked to, as it only looks).
async fn served(tls: &ServerTls, trusted: &[&CertificateDer<'static>]) -> CertificateDer<'static> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let acceptor = tls.acceptor();
    let accept = tokio::spawn(async move { acceptor.accept(server).await.map(|_| ()) });
    let mut roots = RootCertStore::empty();
    for t in trusted {
        roots.add((*t).clone()).expect("a valid root");
    }
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, client)
        .await
        .expect("handshake");
    accept.await.expect("accept task").expect("server side");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_a_failed_one_keeps_the_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (files, first) = certificate(dir.path(), "live");
    let (next_files, next) = certificate(dir.path(), "next");
    let trusted = [&first, &next];
    let tls = ServerTls::load(files.clone()).expect("loads");
    assert_eq!(served(&tls, &trusted).await, first);

    std::fs::copy(&next_files.certificate, &files.certificate).expect("replace certificate");
    std::fs::copy(&next_files.private_key, &files.private_key).expect("replace key");
    tls.reload().expect("the replaced pair loads");
    assert_eq!(served(&tls, &trusted).await, next);

    // A certificate whose key is still the old one: refused, and the pair in use stays.
    let (third_files, _) = certificate(dir.path(), "third");
    std::fs::copy(&third_files.certificate, &files.certificate).expect("replace certificate");
    let e = tls
        .reload()
        .expect_err("mismatched pair refused")
        .to_string();
    assert!(
        e.contains("tls_certificate") && e.contains("tls_private_key"),
        "{e}"
    );
    assert_eq!(served(&tls, &trusted).await, next);

    std::fs::remove_file(&files.private_key).expect("remove key");
    let e = tls.reload().expect_err("missing key refused").to_string();
    assert!(e.starts_with("tls_private_key "), "{e}");
    assert_eq!(served(&tls, &trusted).await, next);
}

/// A site CA (as `hubrelay tls generate --site-dir` makes it) with a node's certificate under `dir`,
/// and a node listener that requires AUTH, STARTTLS and a client certificate from that CA.
fn mutual_node(dir: &Path) -> (SmtpConfig, crate::smtp::SiteCa, CertificateDer<'static>) {
    let ca = crate::smtp::SiteCa::new("test", 30).expect("a CA");
    let node = ca
        .issue("node1", &["localhost".into()], crate::smtp::Usage::Role)
        .expect("a node certificate");
    let files = TlsFiles {
        certificate: dir.join("node1.pem"),
        private_key: dir.join("node1.key"),
    };
    std::fs::write(&files.certificate, &node.cert_pem).expect("write");
    std::fs::write(&files.private_key, &node.key_pem).expect("write");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write");
    let mut c = config();
    c.tls = Some(ServerTls::load_verifying(files, Some(dir.join("ca.pem"))).expect("loads"));
    c.require_tls = true;
    c.auth = Some(crate::smtp::DeliveryAuth {
        secret: crate::smtp::DeliverySecret::new(b"site secret".to_vec()),
        users: vec!["hub1".into()],
    });
    let root = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("the CA in DER");
    (c, ca, root)
}

/// A client trusting `root` and presenting `identity` (a PEM pair), if any.
fn presenting(
    root: &CertificateDer<'static>,
    identity: Option<&crate::smtp::PemPair>,
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).expect("a valid root");
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(pair) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).expect("key"),
            )
            .expect("a client config"),
    };
    TlsConnector::from(Arc::new(config))
}

/// STARTTLS on a fresh session of `config` with `connector`: the encrypted client, or the error
/// the session ended with (the server's alert reaches a TLS 1.3 client at its first read).
async fn certified_session(
    config: SmtpConfig,
    connector: TlsConnector,
) -> (Result<Client<TlsStream<DuplexStream>>, String>, Harness) {
    let (mut client, h) = greeted(config).await;
    cmd(&mut client, "EHLO hub1.test", "250").await;
    cmd(&mut client, "STARTTLS", "220").await;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let stream = match connector.connect(name, client.stream.into_inner()).await {
        Ok(s) => s,
        Err(e) => return (Err(e.to_string()), h),
    };
    let mut tls = Client::new(stream);
    tls.send("EHLO hub1.test\r\n".to_string()).await;
    // The whole EHLO reply, or the error a refused handshake shows at the first read.
    let mut ehlo = Vec::new();
    loop {
        let start = ehlo.len();
        let read = tokio::time::timeout(tls.guard, tls.stream.read_until(b'\n', &mut ehlo))
            .await
            .expect("an answer or an alert in time");
        match read {
            Err(e) => return (Err(e.to_string()), h),
            Ok(0) => return (Err("closed".into()), h),
            Ok(_) if ehlo.get(start + 3) == Some(&b'-') => continue,
            Ok(_) => break,
        }
    }
    let ehlo = String::from_utf8_lossy(&ehlo).to_string();
    assert!(ehlo.starts_with("250"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "a certified client is not asked to AUTH: {ehlo}"
    );
    (Ok(tls), h)
}

/// Waits for the session to end (after a refused handshake).
async fn ended(h: Harness) {
    tokio::time::timeout(std::time::Duration::from_secs(10), h.task)
        .await
        .expect("the session ends")
        .expect("the session task did not panic")
        .expect("a refused handshake ends the session without an error");
}

#[tokio::test]
async fn a_verifying_listener_takes_mail_from_a_certified_client_without_auth_and_refuses_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, ca, root) = mutual_node(dir.path());
    let hub = ca
        .issue("hub1", &["hub1".into()], crate::smtp::Usage::Role)
        .expect("a hub certificate");
    let (session, h) = certified_session(config.clone(), presenting(&root, Some(&hub))).await;
    let mut tls = session.expect("a certified hub completes STARTTLS");
    cmd(&mut tls, "MAIL FROM:<a@remote.test>", "250").await;
    cmd(&mut tls, "RCPT TO:<alice@example.test>", "250").await;
    assert!(h.backend.refused.lock().expect("lock").is_empty());

    // Without a certificate, and with one another CA signed: the session ends at the handshake.
    let (session, h) = certified_session(config.clone(), presenting(&root, None)).await;
    assert!(session.is_err(), "no certificate must not get in");
    let backend = h.backend.clone();
    ended(h).await;
    assert_eq!(
        backend.refused.lock().expect("lock").clone(),
        ["certificate"]
    );
    let other = crate::smtp::SiteCa::new("other", 30).expect("another CA");
    let stranger = other
        .issue("hub1", &["hub1".into()], crate::smtp::Usage::Role)
        .expect("a certificate of another CA");
    let (session, h) = certified_session(config.clone(), presenting(&root, Some(&stranger))).await;
    assert!(session.is_err(), "another CA's certificate must not get in");
    let backend = h.backend.clone();
    ended(h).await;
    assert_eq!(
        backend.refused.lock().expect("lock").clone(),
        ["certificate"]
    );

    // In clear text nothing is taken, and it is counted.
    let (mut plain, h) = greeted(config).await;
    cmd(&mut plain, "EHLO stranger.test", "250").await;
    cmd(&mut plain, "MAIL FROM:<a@remote.test>", "530 5.7.0").await;
    assert_eq!(h.backend.refused.lock().expect("lock").clone(), ["missing"]);
}
