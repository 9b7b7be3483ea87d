//! DSN (RFC 3461) at the SMTP layer: advertised only by a backend that offers it, its
//! parameters validated with their reply codes, and what the client asked for handed to the
//! backend with the message, recipient by recipient.

use store::hub::{MessageDsn, Notify, RcptDsn, Ret};

use super::{config, Harness, TestBackend};
use crate::smtp::Dsn;

fn dsn_backend() -> TestBackend {
    TestBackend {
        dsn: true,
        ..TestBackend::default()
    }
}

#[tokio::test]
async fn ehlo_advertises_dsn_when_the_backend_offers_it() {
    let mut h = Harness::greeted(config(), dsn_backend()).await;
    let reply = h.cmd("EHLO client.test", "250").await;
    assert!(
        reply.ends_with("250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 CHUNKING\r\n"),
        "{reply:?}"
    );
}

/// Each command after a fresh EHLO (and MAIL, for RCPT lines) with the reply it must get.
#[tokio::test]
async fn parameters_and_their_replies() {
    let mail = "MAIL FROM:<sender@remote.test>";
    let table: &[(bool, &str, &str)] = &[
        // (backend offers DSN, command, expected reply prefix)
        (
            true,
            "MAIL FROM:<sender@remote.test> RET=FULL ENVID=QQ+2B1",
            "250 2.1.0",
        ),
        (true, "MAIL FROM:<sender@remote.test> RET=HDRS", "250 2.1.0"),
        (true, "MAIL FROM:<> ENVID=x", "250 2.1.0"),
        (
            true,
            "MAIL FROM:<sender@remote.test> RET=FULL RET=HDRS",
            "501 5.5.4",
        ),
        (
            true,
            "MAIL FROM:<sender@remote.test> RET=FULL RET=FULL",
            "501 5.5.4",
        ),
        (true, "MAIL FROM:<sender@remote.test> RET=NONE", "501 5.5.4"),
        (
            true,
            "MAIL FROM:<sender@remote.test> ENVID=a ENVID=b",
            "501 5.5.4",
        ),
        (
            true,
            "MAIL FROM:<sender@remote.test> ENVID=a+2",
            "501 5.5.4",
        ),
        (
            true,
            "MAIL FROM:<sender@remote.test> ENVID=a+0A",
            "501 5.5.4",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> NOTIFY=NEVER",
            "250 2.1.5",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE,DELAY",
            "250 2.1.5",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> ORCPT=rfc822;alice+40example.test",
            "250 2.1.5",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS",
            "501 5.5.4",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> NOTIFY=FAILURE,NEVER",
            "501 5.5.4",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> NOTIFY=SUCCESS NOTIFY=FAILURE",
            "501 5.5.4",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> NOTIFY=SOMETIMES",
            "501 5.5.4",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> ORCPT=alice@example.test",
            "501 5.5.4",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> ORCPT=rfc822;a+zz",
            "501 5.5.4",
        ),
        (
            true,
            "RCPT TO:<alice@example.test> ORCPT=rfc822;a ORCPT=rfc822;b",
            "501 5.5.4",
        ),
        // A backend without DSN (a mailbox node) refuses the parameters as unknown.
        (
            false,
            "MAIL FROM:<sender@remote.test> RET=FULL",
            "555 5.5.4",
        ),
        (false, "MAIL FROM:<sender@remote.test> ENVID=x", "555 5.5.4"),
        (
            false,
            "RCPT TO:<alice@example.test> NOTIFY=SUCCESS",
            "555 5.5.4",
        ),
        (
            false,
            "RCPT TO:<alice@example.test> ORCPT=rfc822;a@b.test",
            "555 5.5.4",
        ),
    ];
    for &(dsn, line, expected) in table {
        let backend = TestBackend {
            dsn,
            ..TestBackend::default()
        };
        let mut h = Harness::greeted(config(), backend).await;
        h.cmd("EHLO client.test", "250").await;
        if line.starts_with("RCPT") {
            h.cmd(mail, "250 2.1.0").await;
        }
        let reply = h.cmd(line, "").await;
        assert!(
            reply.starts_with(expected),
            "{line} (DSN offered: {dsn}): expected {expected}, got {reply:?}"
        );
        // A refused parameter leaves the session usable.
        h.cmd("RSET", "250 2.0.0").await;
    }
}

#[tokio::test]
async fn the_backend_gets_each_recipients_request() {
    let mut h = Harness::greeted(config(), dsn_backend()).await;
    h.cmd("EHLO client.test", "250").await;
    h.cmd(
        "MAIL FROM:<sender@remote.test> RET=FULL ENVID=env+2B1",
        "250 2.1.0",
    )
    .await;
    h.cmd(
        "RCPT TO:<alice@example.test> NOTIFY=SUCCESS ORCPT=rfc822;Alice+40Old.test",
        "250 2.1.5",
    )
    .await;
    h.cmd("RCPT TO:<unknown@example.test> NOTIFY=NEVER", "550 5.1.1")
        .await;
    h.cmd("RCPT TO:<bob@example.test>", "250 2.1.5").await;
    h.cmd("DATA", "354").await;
    h.client.send("Subject: s\r\n\r\nbody\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    let msg = h.backend.delivered().remove(0);
    assert_eq!(msg.recipients, ["alice@example.test", "bob@example.test"]);
    assert_eq!(
        msg.dsn,
        Dsn {
            message: MessageDsn {
                ret: Some(Ret::Full),
                envid: Some("env+1".into()),
            },
            recipients: vec![
                RcptDsn {
                    notify: Some(Notify {
                        success: true,
                        failure: false,
                        delay: false,
                    }),
                    orcpt: Some("rfc822;Alice@Old.test".into()),
                },
                RcptDsn::default(),
            ],
        },
        "the refused recipient's request is not kept"
    );
}
