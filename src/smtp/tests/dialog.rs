//! Table-driven dialogs: every command, error and limit with its reply, and the session
//! still working afterwards; plus what the backend receives.

use std::sync::atomic::Ordering;

use super::{config, Harness, TestBackend, HOST};
use crate::smtp::{BareNewline, SmtpConfig};

/// One write to the server and the reply prefixes it must produce, in order.
type Step = (Vec<u8>, Vec<&'static str>);

fn step(input: impl AsRef<[u8]>, replies: &[&'static str]) -> Step {
    (input.as_ref().to_vec(), replies.to_vec())
}

fn ehlo() -> Step {
    step("EHLO client.test\r\n", &["250-mx.example.test"])
}

/// A transaction for alice up to the 354, pipelined.
fn open() -> Step {
    step(
        "MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
        &["250 2.1.0", "250 2.1.5", "354"],
    )
}

struct Case {
    name: &'static str,
    config: SmtpConfig,
    backend: TestBackend,
    steps: Vec<Step>,
    /// Recipient count of each message the backend must have received.
    delivered: Vec<usize>,
    /// The server must close after the last step; otherwise a final NOOP must get its own
    /// reply, proving no stray replies are pending.
    closes: bool,
}

impl Case {
    fn new(name: &'static str, steps: Vec<Step>, delivered: Vec<usize>) -> Case {
        Case {
            name,
            config: config(),
            backend: TestBackend::default(),
            steps,
            delivered,
            closes: false,
        }
    }

    fn closing(mut self) -> Case {
        self.closes = true;
        self
    }
}

fn cases() -> Vec<Case> {
    let long_command = format!("NOOP {}\r\n", "x".repeat(600));
    let long_data_line = format!("Subject: s\r\n\r\n{}\r\n.\r\n", "y".repeat(1200));
    let big_message = format!(
        "Subject: s\r\n\r\n{}.\r\n",
        format!("{}\r\n", "z".repeat(98)).repeat(120)
    );
    let mut cases = vec![
        Case::new(
            "happy path",
            vec![
                ehlo(),
                step("MAIL FROM:<sender@remote.test>\r\n", &["250 2.1.0"]),
                step("RCPT TO:<alice@example.test>\r\n", &["250 2.1.5"]),
                step("DATA\r\n", &["354 end data"]),
                step("Subject: hi\r\n\r\nhello\r\n.\r\n", &["250 2.0.0 queued as <"]),
                step("QUIT\r\n", &["221 2.0.0"]),
            ],
            vec![1],
        )
        .closing(),
        Case::new(
            "HELO has no extensions",
            vec![
                step("HELO client.test\r\n", &["250 mx.example.test\r\n"]),
                step("MAIL FROM:<sender@remote.test>\r\n", &["250 2.1.0"]),
            ],
            vec![],
        ),
        Case::new(
            "pipelined transaction",
            vec![
                ehlo(),
                step(
                    "MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
                    &["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"],
                ),
                step("Subject: s\r\n\r\nbody\r\n.\r\nNOOP\r\n", &["250 2.0.0 queued", "250 2.0.0 ok"]),
            ],
            vec![2],
        ),
        Case::new(
            "command line too long",
            vec![step(&long_command, &["500 5.5.6"]), step("NOOP\r\n", &["250 2.0.0"])],
            vec![],
        ),
        Case::new(
            "command line too long across writes",
            vec![
                step(&long_command[..550], &[]),
                step(format!("{}NOOP\r\n", &long_command[550..]), &["500 5.5.6", "250 2.0.0"]),
            ],
            vec![],
        ),
        Case::new(
            "command line at the limit",
            vec![step(format!("NOOP {}\r\n", "x".repeat(505)), &["250 2.0.0"])],
            vec![],
        ),
        Case::new(
            "data line too long",
            vec![ehlo(), open(), step(&long_data_line, &["552 5.3.4"]), step("MAIL FROM:<s@remote.test>\r\n", &["250 2.1.0"])],
            vec![],
        ),
        Case::new(
            "SIZE over the limit",
            vec![
                ehlo(),
                step("MAIL FROM:<sender@remote.test> SIZE=10001\r\n", &["552 5.3.4"]),
                step("MAIL FROM:<sender@remote.test> SIZE=10000\r\n", &["250 2.1.0"]),
            ],
            vec![],
        ),
        Case::new(
            "message over the limit",
            vec![ehlo(), open(), step(&big_message, &["552 5.3.4"]), open(), step("\r\n.\r\n", &["250 2.0.0"])],
            vec![1],
        ),
        Case::new(
            "bad sequence",
            vec![
                step("MAIL FROM:<sender@remote.test>\r\n", &["503 5.5.1"]),
                ehlo(),
                step("RCPT TO:<alice@example.test>\r\n", &["503 5.5.1"]),
                step("DATA\r\n", &["503 5.5.1"]),
                step("MAIL FROM:<sender@remote.test>\r\n", &["250 2.1.0"]),
                step("DATA\r\n", &["503 5.5.1"]),
                step("MAIL FROM:<sender@remote.test>\r\n", &["503 5.5.1"]),
                step("RCPT TO:<alice@example.test>\r\nDATA\r\n", &["250 2.1.5", "354"]),
                step(".\r\n", &["250 2.0.0"]),
            ],
            vec![1],
        ),
        Case::new(
            "unknown and unimplemented commands",
            vec![
                step("FOO bar\r\n", &["500 5.5.1"]),
                step("\r\n", &["500 5.5.1"]),
                step("EXPN staff\r\n", &["502 5.5.1"]),
                step("EXPN\r\n", &["502 5.5.1"]),
                step("STARTTLS\r\n", &["502 5.5.1"]),
                step("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", &["502 5.5.1"]),
            ],
            vec![],
        ),
        Case::new(
            "syntax errors",
            vec![
                step("EHLO\r\n", &["501 5.5.4"]),
                ehlo(),
                step("MAIL FROM:sender@remote.test\r\n", &["501"]),
                step("MAIL TO:<sender@remote.test>\r\n", &["501"]),
                step("MAIL FROM:<sender@remote.test> BODY=NONSENSE\r\n", &["501 5.5.4"]),
                step("MAIL FROM:<sender@remote.test> SMTPUTF8\r\n", &["555 5.5.4"]),
                step("MAIL FROM:<sender@remote.test> XFOO=1\r\n", &["555 5.5.4"]),
                step("MAIL FROM:<sender@remote.test> BODY=8BITMIME SIZE=20\r\n", &["250 2.1.0"]),
                step("RCPT TO:<>\r\n", &["553 5.1.3"]),
                step("RCPT TO:<bob@example.test> NOTIFY=NEVER\r\n", &["555 5.5.4"]),
                step("RCPT TO:<bob@example.test>\r\n", &["250 2.1.5"]),
            ],
            vec![],
        ),
        Case::new(
            "malformed paths, sender and recipient",
            vec![
                ehlo(),
                step("MAIL FROM:<user@>\r\n", &["553 5.1.7"]),
                step("MAIL FROM:<@remote.test>\r\n", &["553 5.1.7"]),
                step("MAIL FROM:<sender@remote.test\r\n", &["501 5.1.7"]),
                step("MAIL FROM:<send er@remote.test>\r\n", &["501 5.1.7"]),
                step("MAIL FROM:<sender@remote..test>\r\n", &["553 5.1.7"]),
                step("MAIL FROM:<sender@remote.test>x\r\n", &["501 5.1.7"]),
                step("MAIL FROM:<@relay.test:sender@remote.test>\r\n", &["250 2.1.0"]),
                step("RCPT TO:<alice@>\r\n", &["553 5.1.3"]),
                step("RCPT TO:<@example.test>\r\n", &["553 5.1.3"]),
                step("RCPT TO:<ali\x01ce@example.test>\r\n", &["501 5.1.3"]),
                step("RCPT TO:<alice@example.test>>\r\n", &["501 5.1.3"]),
                step("RCPT TO:<alice@example.test> \r\n", &["250 2.1.5"]),
                step("RCPT TO:<\"bob\"@example.test>\r\nDATA\r\n", &["250 2.1.5", "354"]),
                step("\r\n.\r\n", &["250 2.0.0"]),
            ],
            vec![2],
        ),
        Case::new(
            "backend refusals per recipient",
            vec![
                ehlo(),
                step("MAIL FROM:<sender@remote.test>\r\n", &["250 2.1.0"]),
                step("RCPT TO:<unknown@example.test>\r\n", &["550 5.1.1"]),
                step("RCPT TO:<someone@elsewhere.test>\r\n", &["550 5.7.1"]),
                step("RCPT TO:<carol@example.test>\r\nDATA\r\n", &["250 2.1.5", "354"]),
                step("\r\n.\r\n", &["250 2.0.0"]),
            ],
            vec![1],
        ),
        Case::new(
            "failed delivery leaves the session usable",
            vec![
                ehlo(),
                step(
                    "MAIL FROM:<sender@remote.test>\r\nRCPT TO:<tempfail@example.test>\r\nDATA\r\n",
                    &["250 2.1.0", "250 2.1.5", "354"],
                ),
                step("\r\n.\r\n", &["451 4.3.0"]),
                open(),
                step("\r\n.\r\n", &["250 2.0.0"]),
            ],
            vec![1],
        ),
        Case::new(
            "null sender",
            vec![
                ehlo(),
                step("MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n", &["250 2.1.0", "250 2.1.5", "354"]),
                step("\r\n.\r\n", &["250 2.0.0"]),
            ],
            vec![1],
        ),
        Case::new(
            "RSET and EHLO drop the transaction",
            vec![
                ehlo(),
                step("MAIL FROM:<sender@remote.test>\r\nRSET\r\n", &["250 2.1.0", "250 2.0.0"]),
                step("RCPT TO:<alice@example.test>\r\n", &["503 5.5.1"]),
                step("MAIL FROM:<sender@remote.test>\r\n", &["250 2.1.0"]),
                ehlo(),
                step("RCPT TO:<alice@example.test>\r\n", &["503 5.5.1"]),
            ],
            vec![],
        ),
        Case::new(
            "VRFY HELP NOOP",
            vec![
                step("VRFY alice\r\n", &["252 2.1.5"]),
                step("HELP\r\n", &["214 2.0.0"]),
                step("NOOP hello\r\n", &["250 2.0.0"]),
            ],
            vec![],
        ),
        Case::new(
            "two messages in one session",
            vec![ehlo(), open(), step(".\r\n", &["250 2.0.0"]), open(), step("x\r\n.\r\n", &["250 2.0.0"])],
            vec![1, 1],
        ),
    ];

    let mut capped = Case::new(
        "too many recipients",
        vec![
            ehlo(),
            step(
                "MAIL FROM:<sender@remote.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n",
                &["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354"],
            ),
            step(".\r\n", &["250 2.0.0"]),
        ],
        vec![2],
    );
    capped.config.max_recipients = 2;
    cases.push(capped);

    let mut passive = Case::new(
        "passive node refuses MAIL",
        vec![
            ehlo(),
            step("MAIL FROM:<sender@remote.test>\r\n", &["451 4.3.2"]),
            step("RCPT TO:<alice@example.test>\r\n", &["503 5.5.1"]),
        ],
        vec![],
    );
    passive.backend.passive = true;
    cases.push(passive);

    let mut errors = Case::new(
        "too many errors",
        vec![
            step("FOO\r\nBAR\r\n", &["500 5.5.1", "500 5.5.1"]),
            step("BAZ\r\nNOOP\r\n", &["421 4.7.0"]),
        ],
        vec![],
    );
    errors.config.max_errors = 3;
    cases.push(errors.closing());

    cases.push(
        Case::new(
            "QUIT closes",
            vec![step("QUIT\r\nNOOP\r\n", &["221 2.0.0"])],
            vec![],
        )
        .closing(),
    );
    cases
}

#[tokio::test]
async fn dialogs() {
    for case in cases() {
        let name = case.name;
        let mut h = Harness::greeted(case.config, case.backend).await;
        for (input, replies) in &case.steps {
            h.client.send(input).await;
            for prefix in replies {
                let reply = h.client.reply().await;
                assert!(
                    reply.starts_with(prefix),
                    "{name}: expected {prefix:?}, got {reply:?}"
                );
            }
        }
        if case.closes {
            h.client.expect_eof().await;
        } else {
            let reply = h.cmd("NOOP", "").await;
            assert_eq!(
                reply, "250 2.0.0 ok\r\n",
                "{name}: a stray reply was pending"
            );
        }
        let counts: Vec<usize> = h
            .backend
            .delivered()
            .iter()
            .map(|m| m.recipients.len())
            .collect();
        assert_eq!(counts, case.delivered, "{name}: delivered messages");
    }
}

#[tokio::test]
async fn ehlo_advertises_extensions() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    let reply = h.cmd("EHLO client.test", "250").await;
    assert_eq!(
        reply,
        "250-mx.example.test\r\n250-SIZE 10000\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
    );
}

#[tokio::test]
async fn pipelined_replies_leave_in_one_write() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.cmd("EHLO client.test", "250").await;
    let before = h.writes.load(Ordering::SeqCst);
    h.client
        .send("MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    for prefix in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"] {
        h.client.expect(prefix).await;
    }
    assert_eq!(
        h.writes.load(Ordering::SeqCst) - before,
        1,
        "the group's replies must be one write"
    );
}

#[tokio::test]
async fn delivered_message_is_stamped() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.begin("sender@remote.test", &["alice@example.test"]).await;
    let body = "Subject: hi\r\n\r\nhello\r\n";
    h.client.send(format!("{body}.\r\n")).await;
    let reply = h.client.expect("250 2.0.0").await;
    let msgs = h.backend.delivered();
    let [msg] = msgs.as_slice() else {
        panic!("expected one message, got {}", msgs.len())
    };
    assert_eq!(msg.sender, "sender@remote.test");
    assert_eq!(msg.recipients, ["alice@example.test"]);
    assert_eq!(
        msg.peer,
        "127.0.0.1:40000".parse().expect("literal socket address")
    );
    assert!(
        reply.contains(&msg.message_id),
        "backend saw the same id it replied with"
    );
    let data = String::from_utf8(msg.data.clone()).expect("UTF-8 test message");
    let received = format!(
        "Received: from client.test ([127.0.0.1])\r\n\tby {HOST} (hubrelay) with ESMTP id "
    );
    assert!(
        data.starts_with(&received),
        "no Received header first: {data:?}"
    );
    assert!(
        data.contains("\r\n\tfor <alice@example.test>; "),
        "{data:?}"
    );
    let id_header = format!("\r\nMessage-ID: {}\r\n{body}", msg.message_id);
    assert!(
        data.ends_with(&id_header),
        "generated Message-ID must follow Received: {data:?}"
    );
    assert!(msg.message_id.starts_with('<') && msg.message_id.ends_with(&format!("@{HOST}>")));
}

#[tokio::test]
async fn message_id_is_kept() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.begin("sender@remote.test", &["alice@example.test"]).await;
    let body = "Message-ID: <own@remote.test>\r\nSubject: hi\r\n\r\nhello\r\n";
    h.client.send(format!("{body}.\r\n")).await;
    h.client
        .expect("250 2.0.0 queued as <own@remote.test>")
        .await;
    let msg = h.backend.delivered().remove(0);
    assert_eq!(msg.message_id, "<own@remote.test>");
    let data = String::from_utf8(msg.data).expect("UTF-8 test message");
    assert_eq!(data.matches("Message-ID:").count(), 1, "{data:?}");
    assert!(data.ends_with(body));
}

#[tokio::test]
async fn dot_stuffing_is_removed() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.begin("sender@remote.test", &["alice@example.test"]).await;
    h.client
        .send("Subject: s\r\n\r\n..leading dot\r\n..\r\n...\r\n.x\r\n.\r\n")
        .await;
    h.client.expect("250 2.0.0").await;
    let data = h.backend.delivered().remove(0).data;
    assert!(
        data.ends_with(b"\r\n\r\n.leading dot\r\n.\r\n..\r\n.x\r\n"),
        "{:?}",
        String::from_utf8_lossy(&data)
    );
}

#[tokio::test]
async fn smuggled_commands_are_body_text() {
    let smuggled =
        "MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nforged\r\n";
    // Each fake end of data, and what it becomes once normalised: no bare CR or LF is left
    // for a lenient next hop to misread.
    let fake_ends = [
        ("\n.\n", "\r\n.\r\n"),
        ("\r.\r", "."),
        ("\n.\r\n", "\r\n.\r\n"),
        ("\r\n.\r\r\n", "\r\n.\r\n"),
        ("\r.\r\n", ".\r\n"),
    ];
    for (fake_end, normalised) in fake_ends {
        for policy in [BareNewline::Normalize, BareNewline::Reject] {
            let mut cfg = config();
            cfg.bare_newline = policy;
            let mut h = Harness::greeted(cfg, TestBackend::default()).await;
            h.begin("sender@remote.test", &["alice@example.test"]).await;
            let body = format!("Subject: s\r\n\r\nbefore{fake_end}{smuggled}");
            h.client.send(format!("{body}.\r\n")).await;
            let expected = match policy {
                BareNewline::Normalize => "250 2.0.0 queued",
                BareNewline::Reject => "550 5.5.2",
            };
            h.client.expect(expected).await;
            let reply = h.cmd("NOOP", "").await;
            assert_eq!(
                reply, "250 2.0.0 ok\r\n",
                "{fake_end:?} {policy:?}: the smuggled commands were executed"
            );
            let msgs = h.backend.delivered();
            if policy == BareNewline::Reject {
                assert!(msgs.is_empty(), "{fake_end:?}: refused yet delivered");
                continue;
            }
            assert_eq!(msgs.len(), 1, "{fake_end:?}");
            assert_eq!(msgs[0].recipients, ["alice@example.test"], "{fake_end:?}");
            let expected = format!("Subject: s\r\n\r\nbefore{normalised}{smuggled}");
            assert!(
                msgs[0].data.ends_with(expected.as_bytes()),
                "{fake_end:?}: {:?}",
                String::from_utf8_lossy(&msgs[0].data)
            );
        }
    }
}

#[tokio::test]
async fn reject_policy_refuses_command_lines_with_bare_lf() {
    let mut cfg = config();
    cfg.bare_newline = BareNewline::Reject;
    let mut h = Harness::greeted(cfg, TestBackend::default()).await;
    h.client.send("EHLO client.test\n").await;
    h.client.expect("500 5.5.2").await;
    h.cmd("EHLO client.test", "250").await;
    h.cmd("QUIT", "221").await;
    h.finished().await;
}

#[tokio::test]
async fn source_route_is_dropped_and_quotes_kept() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.begin(
        "@relay.test,@b.test:sender@remote.test",
        &["\"j doe\"@example.test"],
    )
    .await;
    h.client.send("\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    let msgs = h.backend.delivered();
    assert_eq!(msgs[0].sender, "sender@remote.test");
    assert_eq!(msgs[0].recipients, ["\"j doe\"@example.test"]);
}
