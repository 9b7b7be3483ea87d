//! The SMTP edge of a hub, against real processes: what reaches the next hop when a client sends
//! bare CR or LF, strict paths answered to Python's smtplib, and the per-client connection cap.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Raw, TestSite};

const WAIT: Duration = Duration::from_secs(20);

/// A next hop that records the bytes of every DATA exactly as they arrive, in place of node1 (the
/// hub finds node2 down and delivers here). It ends data only at CRLF.CRLF, like our receiver; a
/// bare line end sent by the hub stays in what it records.
fn recording_next_hop(port: u16) -> mpsc::Receiver<Vec<u8>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the next hop's port");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve_next_hop(stream, tx));
        }
    });
    rx
}

fn serve_next_hop(stream: std::net::TcpStream, tx: mpsc::Sender<Vec<u8>>) {
    let mut out = stream.try_clone().expect("clone the stream");
    let mut input = BufReader::new(stream);
    let _ = out.write_all(b"220 next-hop ESMTP\r\n");
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match verb.as_slice() {
            b"EHLO" => b"250-next-hop\r\n250 PIPELINING\r\n",
            b"DATA" => {
                let _ = out.write_all(b"354 go on\r\n");
                let mut data = Vec::new();
                let mut byte = [0u8];
                while !data.ends_with(b"\r\n.\r\n") {
                    if input.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    data.push(byte[0]);
                }
                if tx.send(data).is_err() {
                    return;
                }
                b"250 2.0.0 stored\r\n"
            }
            b"QUIT" => {
                let _ = out.write_all(b"221 bye\r\n");
                return;
            }
            _ => b"250 2.0.0 ok\r\n",
        };
        if out.write_all(reply).is_err() {
            return;
        }
    }
}

/// The offsets of every CR not followed by LF and every LF not preceded by CR.
fn bare_line_ends(data: &[u8]) -> Vec<usize> {
    (0..data.len())
        .filter(|&i| match data[i] {
            b'\r' => data.get(i + 1) != Some(&b'\n'),
            b'\n' => i == 0 || data[i - 1] != b'\r',
            _ => false,
        })
        .collect()
}

/// Sends one message over `raw` and returns the reply to its end of data.
fn send_message(raw: &mut Raw, rcpt: &str, data: &[u8]) -> String {
    assert!(raw.cmd("MAIL FROM:<bob@example.test>").starts_with("250"));
    assert!(raw.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(data);
    raw.reply()
}

/// Waits for the next hop to receive the message carrying `marker`.
fn received_with(hop: &mpsc::Receiver<Vec<u8>>, marker: &str) -> Vec<u8> {
    loop {
        let data = hop
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{marker} never reached the next hop"));
        if data.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            return data;
        }
    }
}

#[test]
fn bare_line_ends_are_normalised_or_refused_and_never_passed_on() {
    let site = TestSite::new("", &[]);
    let reject = site.write_config("reject.toml", "bare_newline = \"reject\"", &[]);
    let hop = recording_next_hop(site.ports.node1);
    let _normalizing = site.start(&["hub", "--name", "hub1"]);
    let _rejecting = site.start_with(&reject, &["hub", "--name", "hub2"]);

    let smuggled = "MAIL FROM:<evil@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n";
    // Each fake end of data a lenient next hop might honour, and the lines the message must
    // have once normalised (bare LF is a line end, bare CR is dropped).
    let variants: [(&str, &str); 6] = [
        ("\n.\n", "\r\n.\r\n"),
        ("\n.\r\n", "\r\n.\r\n"),
        ("\r.\r\n", ".\r\n"),
        ("\r.\r", "."),
        ("\n", "\r\n"),
        ("\r\n.\r\r\n", "\r\n.\r\n"),
    ];
    let mut normalizing = Raw::connect(site.ports.hub1);
    normalizing.cmd("EHLO client.test");
    let mut rejecting = Raw::connect(site.ports.hub2);
    rejecting.cmd("EHLO client.test");
    for (n, (fake_end, normalised)) in variants.iter().enumerate() {
        let marker = format!("variant-{n}");
        let data = format!(
            "Message-ID: <{marker}@client.test>\r\nSubject: {marker}\r\n\r\nbefore{fake_end}{smuggled}after\r\n.\r\n"
        );
        let reply = send_message(&mut normalizing, "bob@example.test", data.as_bytes());
        assert!(reply.starts_with("250"), "{fake_end:?}: {reply}");
        let got = received_with(&hop, &marker);
        assert_eq!(
            bare_line_ends(&got),
            Vec::<usize>::new(),
            "{fake_end:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        // The next hop reads the message back by removing one dot from lines that start with
        // one (RFC 5321 §4.5.2); the hub stuffs the dots of the normalised lines.
        let unstuffed = String::from_utf8_lossy(&got).replace("\r\n..", "\r\n.");
        let body = format!("\r\n\r\nbefore{normalised}{smuggled}after\r\n.\r\n");
        assert!(unstuffed.ends_with(&body), "{fake_end:?}: {unstuffed:?}");

        let rejected_marker = format!("rejected-{n}");
        let data = data.replace(&marker, &rejected_marker);
        let reply = send_message(&mut rejecting, "bob@example.test", data.as_bytes());
        assert!(reply.starts_with("550 5.5.2"), "{fake_end:?}: {reply}");
        assert!(
            rejecting.cmd("NOOP").starts_with("250"),
            "{fake_end:?}: the session is out of step after the refusal"
        );
    }

    // A message of bare-LF lines (only its last line ends properly) arrives whole.
    let unix = "Message-ID: <unix@client.test>\nSubject: unix lines\n\nline one\nline two\nlast line\r\n.\r\n";
    assert!(
        send_message(&mut normalizing, "alice@example.test", unix.as_bytes()).starts_with("250")
    );
    let got = received_with(&hop, "unix@client.test");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.ends_with("Message-ID: <unix@client.test>\r\nSubject: unix lines\r\n\r\nline one\r\nline two\r\nlast line\r\n.\r\n"),
        "{text:?}"
    );

    // The rejecting hub still takes a clean message in the same session, and passes on none
    // of the refused ones.
    let clean = "Message-ID: <clean@client.test>\r\nSubject: clean\r\n\r\nfine\r\n.\r\n";
    assert!(
        send_message(&mut rejecting, "alice@example.test", clean.as_bytes()).starts_with("250")
    );
    // Every earlier message was awaited at the next hop, and each refused one got its 550
    // before this was sent: the next delivery must be this one.
    let data = hop
        .recv_timeout(WAIT)
        .expect("the clean message reaches the next hop");
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.contains("clean@client.test"),
        "a refused message was delivered: {text:?}"
    );
}

#[test]
fn malformed_paths_get_501_or_553_from_smtplib_and_the_session_goes_on() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let script = r#"
import smtplib, sys, json
port = int(sys.argv[1])
out = []
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("client.test")
    for sender in ["user@", "@example.test", "us er@example.test", "a..b@example.test", "user@exa_mple.test"]:
        out.append(["MAIL", sender, s.mail(sender)[0]])
    s.rset()
    s.mail("")
    for rcpt in ["alice@", "@example.test", "ali\x01ce@example.test", "alice@example..test"]:
        out.append(["RCPT", rcpt, s.rcpt(rcpt)[0]])
    code = s.rcpt("alice@example.test")[0]
    out.append(["RCPT", "alice@example.test", code])
    s.data(b"Message-ID: <after-bad-paths@client.test>\r\nSubject: ok\r\n\r\nok\r\n")
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &site.ports.hub1.to_string()])
        .output()
        .expect("python3 must be installed for the tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<(String, String, u16)> =
        serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    let expected = [
        ("MAIL", "user@", 553),
        ("MAIL", "@example.test", 553),
        ("MAIL", "us er@example.test", 501),
        ("MAIL", "a..b@example.test", 553),
        ("MAIL", "user@exa_mple.test", 553),
        ("RCPT", "alice@", 553),
        ("RCPT", "@example.test", 553),
        ("RCPT", "ali\u{1}ce@example.test", 501),
        ("RCPT", "alice@example..test", 553),
        ("RCPT", "alice@example.test", 250),
    ];
    let expected: Vec<(String, String, u16)> = expected
        .iter()
        .map(|(v, a, c)| (v.to_string(), a.to_string(), *c))
        .collect();
    assert_eq!(got, expected);
    // The null sender was accepted, and the message after the refusals was delivered.
    let ids = site.wait_mailbox("alice@example.test", WAIT, |ids| !ids.is_empty());
    assert_eq!(ids, vec!["<after-bad-paths@client.test>".to_string()]);
}

#[test]
fn per_client_cap_refuses_the_extra_connection_and_loses_nothing() {
    let site = TestSite::new(
        "max_connections_per_client = 2\nconnection_limit_exceptions = []",
        &[],
    );
    let _s = site.start(&["site"]);
    let mut first = Raw::connect(site.ports.hub1);
    let mut second = Raw::connect(site.ports.hub1);
    let mut third = std::net::TcpStream::connect(("127.0.0.1", site.ports.hub1)).expect("connect");
    third.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut refusal = String::new();
    third
        .read_to_string(&mut refusal)
        .expect("read the refusal");
    assert!(refusal.starts_with("421 4.7.0"), "{refusal:?}");

    for (n, raw) in [&mut first, &mut second].into_iter().enumerate() {
        raw.cmd("EHLO client.test");
        let data =
            format!("Message-ID: <capped-{n}@client.test>\r\nSubject: {n}\r\n\r\nx\r\n.\r\n");
        assert!(send_message(raw, "alice@example.test", data.as_bytes()).starts_with("250"));
    }
    let mut ids = site.wait_mailbox("alice@example.test", WAIT, |ids| ids.len() == 2);
    // Two sessions, two deliveries that may finish in either order (both are retried together
    // when the node was not active yet).
    ids.sort();
    assert_eq!(
        ids,
        vec![
            "<capped-0@client.test>".to_string(),
            "<capped-1@client.test>".to_string()
        ]
    );
}

#[test]
fn a_message_sent_with_bdat_reaches_the_mailbox_byte_for_byte_through_hub_and_node() {
    let site = TestSite::new("", &[]);
    let _s = site.start(&["site"]);
    let mut raw = Raw::connect(site.ports.hub1);
    let ehlo = raw.cmd("EHLO client.test");
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    assert!(raw.cmd("MAIL FROM:<bob@example.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    // Lines that DATA would dot-stuff (the hub does so on its way to the node) and a chunk
    // boundary inside a line.
    let first = "Message-ID: <bdat@client.test>\r\nSubject: chunks\r\n\r\n.one dot\r\n..two";
    let last = " dots\r\n.\r\nthe end\r\n";
    raw.send(format!("BDAT {}\r\n{first}", first.len()).as_bytes());
    let reply = raw.reply();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    raw.send(format!("BDAT {} LAST\r\n{last}", last.len()).as_bytes());
    let reply = raw.reply();
    assert!(reply.starts_with("250"), "{reply}");
    // A DATA in the same transaction as BDAT is refused; the session goes on.
    assert!(raw.cmd("MAIL FROM:<bob@example.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    raw.send(b"BDAT 4\r\nabcd");
    assert!(raw.reply().starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("503"));
    assert!(raw.cmd("RSET").starts_with("250"));
    assert!(raw.cmd("QUIT").starts_with("221"));

    common::wait_alice_exactly(&site, &["<bdat@client.test>".to_string()], WAIT);
    let stored = site.stored_message("alice@example.test", "<bdat@client.test>");
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.ends_with("Subject: chunks\r\n\r\n.one dot\r\n..two dots\r\n.\r\nthe end\r\n"),
        "{stored:?}"
    );
}
