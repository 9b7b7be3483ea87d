//! Delivery status notifications (RFC 3464): what a sender gets back when a recipient fails for good.
//!
//! The report is generated, not parsed, so it is written out directly: a `multipart/report` with a
//! human-readable part, the `message/delivery-status` part and the original headers.

use chrono::{DateTime, Utc};

/// One recipient that failed permanently (or expired).
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// The recipient address.
    pub address: String,
    /// The SMTP reply code that decided it (or 4xx/5xx for expiry).
    pub code: u16,
    /// The reply or reason text.
    pub reason: String,
}

/// Everything the report needs.
pub struct Report<'a> {
    /// The reporting hub's host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The original Message-ID.
    pub original_message_id: &'a str,
    /// Who gets the report (the original reverse path).
    pub to: &'a str,
    /// When the original arrived.
    pub arrival: DateTime<Utc>,
    /// The failed recipients.
    pub failed: &'a [FailedRecipient],
    /// The original message, of which only the header is returned.
    pub original: &'a [u8],
}

impl Report<'_> {
    /// Renders the report as a complete RFC 5322 message with CRLF line endings.
    pub fn render(&self, message_id: &str, now: DateTime<Utc>) -> Vec<u8> {
        let boundary = format!("hubrelay-dsn-{}", message_id.trim_matches(['<', '>']));
        let mut human = String::from("This is the mail system at host ");
        human.push_str(self.reporting_mta);
        human.push_str(
            ".\r\n\r\nYour message could not be delivered to one or more recipients.\r\n\r\n",
        );
        for f in self.failed {
            human.push_str(&format!(
                "<{}>: {} {}\r\n",
                f.address,
                f.code,
                one_line(&f.reason)
            ));
        }
        let mut status = format!(
            "Reporting-MTA: dns; {}\r\nArrival-Date: {}\r\n",
            self.reporting_mta,
            self.arrival.to_rfc2822()
        );
        for f in self.failed {
            status.push_str(&format!(
                "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {} {}\r\n",
                f.address,
                status_code(f.code, &f.reason),
                f.code,
                one_line(&f.reason)
            ));
        }
        let headers = header_block(self.original);
        let mut out = format!(
            "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
             To: <{to}>\r\n\
             Subject: Undelivered Mail Returned to Sender\r\n\
             Date: {date}\r\n\
             Message-ID: {message_id}\r\n\
             In-Reply-To: {orig}\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{human}\r\n\
             --{boundary}\r\n\
             Content-Type: message/delivery-status\r\n\r\n{status}\r\n\
             --{boundary}\r\n\
             Content-Type: text/rfc822-headers\r\n\r\n",
            mta = self.reporting_mta,
            to = self.to,
            date = now.to_rfc2822(),
            orig = self.original_message_id,
        )
        .into_bytes();
        out.extend_from_slice(headers);
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        out
    }
}

/// The enhanced status code of a reply text if it has one, else the class from the reply code.
fn status_code(code: u16, reason: &str) -> String {
    let found = reason.split_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    });
    match found {
        Some(s) => s.to_string(),
        None if code >= 500 => "5.0.0".to_string(),
        None => "4.0.0".to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The original's header block (up to the empty line), so the sender can tell which message bounced.
fn header_block(msg: &[u8]) -> &[u8] {
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &msg[..i + 2],
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_each_failed_recipient_and_the_original() {
        let original = b"Subject: hello\r\nMessage-ID: <m1@x>\r\n\r\nsecret body\r\n";
        let failed = vec![FailedRecipient {
            address: "carol@example.test".into(),
            code: 550,
            reason: "5.1.1 no such mailbox".into(),
        }];
        let r = Report {
            reporting_mta: "hub1.test",
            original_message_id: "<m1@x>",
            to: "bob@example.test",
            arrival: Utc::now(),
            failed: &failed,
            original,
        };
        let text = String::from_utf8(r.render("<dsn1@hub1.test>", Utc::now())).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; carol@example.test"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Subject: hello"));
        assert!(!text.contains("secret body"), "only the header is returned");
        let parsed = mailparse::parse_mail(text.as_bytes()).expect("the DSN is valid MIME");
        assert_eq!(parsed.subparts.len(), 3);
        assert_eq!(parsed.subparts[1].ctype.mimetype, "message/delivery-status");
    }

    #[test]
    fn status_falls_back_to_reply_class() {
        assert_eq!(status_code(554, "rejected"), "5.0.0");
        assert_eq!(status_code(451, "later"), "4.0.0");
        assert_eq!(status_code(550, "5.7.1 denied"), "5.7.1");
    }
}
