//! The headers added to every accepted message: `Received:` (RFC 5321 §4.4) for tracing
//! its path, and a `Message-ID:` when it has none, because the mailbox store deduplicates
//! resubmitted messages by Message-ID and so every message must carry one.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use mailparse::MailHeaderMap;

/// What the `Received:` header records about how the message arrived.
pub(crate) struct Trace<'a> {
    /// The name the client gave in EHLO/HELO.
    pub helo: &'a str,
    /// Whether the client said EHLO (`with ESMTP`) or HELO (`with SMTP`), RFC 3848.
    pub esmtp: bool,
    /// Whether the message came over TLS: `with ESMTPS` after EHLO (RFC 3848 has no keyword
    /// for HELO over TLS, so that stays `SMTP`).
    pub tls: bool,
    /// The client's address, as seen on the socket (not as claimed).
    pub peer: IpAddr,
    /// Our own name.
    pub hostname: &'a str,
    /// The session-scoped id of this message, to match the header with our logs.
    pub id: &'a str,
    /// The accepted recipients; named in the header only when there is exactly one, so a
    /// copy never discloses the other (possibly Bcc) recipients.
    pub recipients: &'a [String],
    /// When the message was accepted.
    pub date: DateTime<Utc>,
}

/// A message with its headers added.
#[derive(Debug)]
pub(crate) struct Stamped {
    /// `Received:`, then `Message-ID:` if one was generated, then the message as received.
    pub data: Vec<u8>,
    /// The Message-ID: the message's own (trimmed), or the generated one.
    pub message_id: String,
}

/// Prepends the trace header and, if needed, a generated Message-ID.
///
/// The message's header block is parsed only to find an existing Message-ID. A header block
/// that cannot be parsed, or a blank Message-ID, counts as none: the message is still
/// accepted (refusing it would only make the sender retry the same bytes) and gets a
/// generated id. Ours is prepended above the original headers, so it is the first
/// Message-ID every later parser (including our mailbox nodes) finds.
pub(crate) fn stamp(body: Vec<u8>, trace: &Trace<'_>) -> Stamped {
    let mut head = received(trace);
    let message_id = match existing_message_id(&body) {
        Some(id) => id,
        None => {
            let id = format!("<{:032x}@{}>", rand::random::<u128>(), trace.hostname);
            head.push_str(&format!("Message-ID: {id}\r\n"));
            id
        }
    };
    let mut data = Vec::with_capacity(head.len() + body.len());
    data.extend_from_slice(head.as_bytes());
    data.extend_from_slice(&body);
    Stamped { data, message_id }
}

/// The first Message-ID header's value, trimmed; `None` if absent, blank or unparseable.
fn existing_message_id(body: &[u8]) -> Option<String> {
    let (headers, _) = mailparse::parse_headers(body).ok()?;
    let value = headers.get_first_value("Message-ID")?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// The `Received:` header, folded the way Postfix folds it to stay under 78 columns.
fn received(t: &Trace<'_>) -> String {
    let literal = match t.peer {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let protocol = match (t.esmtp, t.tls) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, _) => "SMTP",
    };
    let head = format!(
        "Received: from {} ({literal})\r\n\tby {} (hubrelay) with {protocol} id {}",
        clean(t.helo),
        t.hostname,
        t.id
    );
    let date = t.date.to_rfc2822();
    match t.recipients {
        [one] => format!("{head}\r\n\tfor <{}>; {date}\r\n", clean(one)),
        _ => format!("{head};\r\n\t{date}\r\n"),
    }
}

/// Client-supplied text made safe for a header: anything that could end the header, break
/// its comment or clause structure, or is not ASCII becomes `?`.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            let safe =
                c.is_ascii_graphic() && !matches!(c, '(' | ')' | '<' | '>' | ';' | '\\' | '"');
            if safe {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{stamp, Stamped, Trace};
    use chrono::{TimeZone, Utc};

    fn stamp_with(body: &[u8], recipients: &[String], helo: &str) -> Stamped {
        stamp_over(body, recipients, helo, false)
    }

    fn stamp_over(body: &[u8], recipients: &[String], helo: &str, tls: bool) -> Stamped {
        let trace = Trace {
            helo,
            esmtp: true,
            tls,
            peer: "192.0.2.7".parse().expect("literal address"),
            hostname: "hub1.example.test",
            id: "abc.1",
            recipients,
            date: Utc
                .with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
                .single()
                .expect("valid date"),
        };
        stamp(body.to_vec(), &trace)
    }

    fn text(s: &Stamped) -> &str {
        std::str::from_utf8(&s.data).expect("test messages are UTF-8")
    }

    #[test]
    fn received_names_single_recipient() {
        let rcpts = ["alice@example.test".to_string()];
        let s = stamp_with(b"Message-ID: <x@y>\r\n\r\nhi\r\n", &rcpts, "client.test");
        assert_eq!(
            text(&s),
            "Received: from client.test ([192.0.2.7])\r\n\tby hub1.example.test (hubrelay) with ESMTP id abc.1\r\n\
             \tfor <alice@example.test>; Sun, 22 Nov 2026 10:00:00 +0000\r\n\
             Message-ID: <x@y>\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn received_says_esmtps_over_tls() {
        let s = stamp_over(b"Message-ID: <x@y>\r\n\r\n", &[], "client.test", true);
        assert!(
            text(&s).starts_with(
                "Received: from client.test ([192.0.2.7])\r\n\tby hub1.example.test (hubrelay) with ESMTPS id abc.1;"
            ),
            "{}",
            text(&s)
        );
    }

    #[test]
    fn received_omits_several_recipients() {
        let rcpts = ["a@example.test".to_string(), "b@example.test".to_string()];
        let s = stamp_with(b"Message-ID: <x@y>\r\n\r\n", &rcpts, "client.test");
        assert!(text(&s).starts_with(
            "Received: from client.test ([192.0.2.7])\r\n\tby hub1.example.test (hubrelay) with ESMTP id abc.1;\r\n\tSun, 22 Nov"
        ));
        assert!(!text(&s).contains("a@example.test"));
    }

    #[test]
    fn hostile_helo_cannot_inject_headers() {
        let s = stamp_with(b"Message-ID: <x@y>\r\n\r\n", &[], "evil)\r\nBcc:\tx;(");
        let first_line = text(&s).lines().next().expect("a Received line");
        assert_eq!(first_line, "Received: from evil???Bcc:?x?? ([192.0.2.7])");
    }

    #[test]
    fn message_id_kept_when_present() {
        let s = stamp_with(
            b"Subject: s\r\nmessage-id:   <kept@sender.test>  \r\n\r\nbody\r\n",
            &[],
            "c",
        );
        assert_eq!(s.message_id, "<kept@sender.test>");
        assert_eq!(
            text(&s).matches("essage-").count(),
            1,
            "no second Message-ID added"
        );
    }

    #[test]
    fn message_id_generated_when_missing_blank_or_unparseable() {
        let bodies: [&[u8]; 4] = [
            b"Subject: s\r\n\r\nbody\r\n",
            b"Message-ID:   \r\nSubject: s\r\n\r\n",
            b"",
            b"\xff\xfe no header block at all",
        ];
        for body in bodies {
            let s = stamp_with(body, &[], "c");
            let id = &s.message_id;
            let local = id
                .strip_prefix('<')
                .and_then(|r| r.strip_suffix("@hub1.example.test>"))
                .unwrap_or_else(|| panic!("generated id {id:?} has the wrong shape"));
            assert_eq!(local.len(), 32);
            assert!(local.chars().all(|c| c.is_ascii_hexdigit()));
            let header = format!("\r\nMessage-ID: {id}\r\n");
            let at = s
                .data
                .windows(header.len())
                .position(|w| w == header.as_bytes());
            assert!(
                at.is_some(),
                "generated header missing in {:?}",
                text_lossy(&s.data)
            );
            assert!(
                s.data.ends_with(body),
                "original message must follow the added headers"
            );
        }
    }

    #[test]
    fn generated_ids_differ() {
        let a = stamp_with(b"\r\n", &[], "c").message_id;
        let b = stamp_with(b"\r\n", &[], "c").message_id;
        assert_ne!(a, b);
    }

    fn text_lossy(data: &[u8]) -> String {
        String::from_utf8_lossy(data).into_owned()
    }
}
