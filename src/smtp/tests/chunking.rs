//! CHUNKING (RFC 3030): BDAT chunks are the message's bytes exactly (no dot-stuffing, no
//! terminator), read by their announced size whatever they contain; a refused BDAT is read and
//! dropped before its reply; DATA and BDAT do not mix in one transaction; a message over the size
//! limit is refused at the chunk that crossed it and nothing of it is kept.

use super::{config, Harness, TestBackend};

/// The message the backend got, after the `Received:` line the session prepends.
fn body_after_received(data: &[u8]) -> String {
    let text = String::from_utf8(data.to_vec()).expect("UTF-8 test message");
    let at = text.find("\r\n").expect("a Received: line") + 2;
    let rest = &text[at..];
    // A folded Received: continues on lines that start with white space.
    let mut lines = rest.split_inclusive("\r\n").peekable();
    while lines.next_if(|l| l.starts_with([' ', '\t'])).is_some() {}
    lines.collect()
}

async fn transaction(h: &mut Harness) {
    let ehlo = h.cmd("EHLO client.test", "250-").await;
    assert!(
        ehlo.contains("\r\n250-CHUNKING\r\n") || ehlo.contains("\r\n250 CHUNKING\r\n"),
        "{ehlo}"
    );
    h.cmd("MAIL FROM:<bob@example.test>", "250 2.1.0").await;
    h.cmd("RCPT TO:<alice@example.test>", "250 2.1.5").await;
}

#[tokio::test]
async fn a_message_in_chunks_is_taken_byte_for_byte() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    transaction(&mut h).await;
    let first = "Message-ID: <chunks@client.test>\r\nSubject: in chunks\r\n\r\n.a dot stays\r\n";
    h.client
        .send(format!("BDAT {}\r\n{first}", first.len()))
        .await;
    let reply = h.client.expect("250 2.0.0").await;
    assert!(
        reply.contains(&format!("{} octets received", first.len())),
        "{reply}"
    );
    // Command words inside a chunk are data; the reply to the last chunk is the message's.
    let last = "QUIT\r\n.\r\nend\r\n";
    h.client
        .send(format!("BDAT {} LAST\r\n{last}", last.len()))
        .await;
    h.client
        .expect("250 2.0.0 queued as <chunks@client.test>")
        .await;
    h.cmd("NOOP", "250").await;
    let got = h.backend.delivered();
    assert_eq!(got.len(), 1);
    assert_eq!(body_after_received(&got[0].data), format!("{first}{last}"));
}

#[tokio::test]
async fn pipelined_chunks_and_an_empty_last_chunk() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    transaction(&mut h).await;
    let body = "Message-ID: <piped@client.test>\r\n\r\nhello";
    h.client
        .send(format!(
            "BDAT {}\r\n{body}BDAT 0 LAST\r\nNOOP\r\n",
            body.len()
        ))
        .await;
    h.client.expect("250 2.0.0").await;
    h.client
        .expect("250 2.0.0 queued as <piped@client.test>")
        .await;
    h.client.expect("250").await;
    // The last line had no CRLF: it gets one, as a DATA message always ends with one.
    let got = h.backend.delivered();
    assert_eq!(body_after_received(&got[0].data), format!("{body}\r\n"));
}

#[tokio::test]
async fn a_refused_bdat_is_read_and_dropped_before_its_reply() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.cmd("EHLO client.test", "250-").await;
    // No transaction: the chunk (which looks like commands) is dropped, not run.
    let chunk = "MAIL FROM:<x@example.test>\r\n";
    h.client
        .send(format!("BDAT {} LAST\r\n{chunk}", chunk.len()))
        .await;
    h.client.expect("503 5.5.1 need MAIL before BDAT").await;
    h.cmd("MAIL FROM:<bob@example.test>", "250 2.1.0").await;
    h.client.send("BDAT 3\r\nabc".to_string()).await;
    h.client.expect("503 5.5.1 need RCPT before BDAT").await;
    h.cmd("RCPT TO:<alice@example.test>", "250 2.1.5").await;
    h.client.send("BDAT 3\r\nabc".to_string()).await;
    h.client.expect("250 2.0.0").await;
    h.cmd("DATA", "503 5.5.1 DATA cannot follow BDAT").await;
    // RSET ends the BDAT transaction and drops its chunks; DATA works in the next one.
    h.cmd("RSET", "250").await;
    h.cmd("MAIL FROM:<bob@example.test>", "250 2.1.0").await;
    h.cmd("RCPT TO:<alice@example.test>", "250 2.1.5").await;
    h.cmd("DATA", "354").await;
    h.client
        .send("Message-ID: <after-rset@client.test>\r\n\r\nbody\r\n.\r\n".to_string())
        .await;
    h.client
        .expect("250 2.0.0 queued as <after-rset@client.test>")
        .await;
    let got = h.backend.delivered();
    assert_eq!(got.len(), 1, "only the DATA message");
    assert!(!String::from_utf8_lossy(&got[0].data).contains("abc"));
}

#[tokio::test]
async fn malformed_sizes_are_syntax_errors_and_a_wrong_last_total_is_read_as_announced() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    transaction(&mut h).await;
    for bad in [
        "BDAT",
        "BDAT abc",
        "BDAT -1",
        "BDAT 5 FIRST",
        "BDAT 5 LAST LAST",
        "BDAT 99999999999999999999999",
        "BDAT 1x",
    ] {
        let reply = h.cmd(bad, "5").await;
        assert!(
            reply.starts_with("501") || reply.starts_with("500"),
            "{bad}: {reply}"
        );
    }
    // The client announces 10 bytes and sends 5 and a command: the server reads 10, so the
    // command's first bytes are the message's end and what is left is a line of its own.
    h.client
        .send("BDAT 10 LAST\r\nMessage-ID: <short@x>\r\n".to_string())
        .await;
    h.client.expect("250 2.0.0").await;
    // ": <short@x>" is then a command line of its own.
    h.client.expect("500").await;
    let got = h.backend.delivered();
    assert_eq!(got.len(), 1);
    // Ten bytes exactly (a Message-ID of its own is added, as to any message without one).
    assert!(
        body_after_received(&got[0].data).ends_with(">\r\nMessage-ID\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got[0].data)
    );
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_at_the_chunk_that_crossed_it() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    transaction(&mut h).await;
    let big = "x".repeat(900) + "\r\n";
    let mut chunk = String::new();
    while chunk.len() < 10_500 {
        chunk.push_str(&big);
    }
    h.client
        .send(format!("BDAT {}\r\n{chunk}", chunk.len()))
        .await;
    h.client.expect("552 5.3.4").await;
    // The transaction is over: its last chunk is refused (and read, so the session stays in step).
    h.client.send("BDAT 3 LAST\r\nend".to_string()).await;
    h.client.expect("503 5.5.1 need MAIL before BDAT").await;
    h.cmd("NOOP", "250").await;
    assert!(h.backend.delivered().is_empty());
}
