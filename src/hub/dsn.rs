//! Delivery status notifications (RFC 3464) the hub sends to a sender, as RFC 3461 lets the
//! sender ask: a failure report unless NOTIFY leaves FAILURE out, a success report on
//! NOTIFY=SUCCESS, nothing on NOTIFY=NEVER.
//!
//! The mailbox nodes are final delivery and never report: the hub reports for them, so a
//! recipient a node accepted is `delivered`. The report is built with mail-builder: a
//! `multipart/report` with a human-readable part, the `message/delivery-status` part and the
//! original's header (`text/rfc822-headers`) or, for a failure with RET=FULL, the whole original
//! (`message/rfc822`).

use chrono::{DateTime, TimeZone, Utc};
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;
use store::hub::{Recipient, Ret};

/// What became of one recipient, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A mailbox node accepted the message (final delivery).
    Delivered,
    /// It failed permanently, or expired.
    Failed {
        /// The SMTP reply code that decided it (554 for expiry).
        code: u16,
        /// The reply or reason text.
        reason: String,
    },
}

/// One recipient's entry in a report.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The recipient address (Final-Recipient).
    pub address: String,
    /// ORCPT as `addr-type;address` (Original-Recipient), when the sender gave one.
    pub orcpt: Option<String>,
    /// What happened.
    pub action: Action,
    /// The mailbox node that answered (Remote-MTA), if one did.
    pub remote_mta: Option<String>,
    /// When it happened (Last-Attempt-Date).
    pub at: DateTime<Utc>,
}

impl Notice {
    /// The notice for `rcpt`, or `None` when its NOTIFY does not ask for this kind of report:
    /// no NOTIFY means failures only (RFC 3461 §4.1), NEVER means nothing.
    pub fn requested(
        rcpt: &Recipient,
        action: Action,
        remote_mta: Option<&str>,
        at: DateTime<Utc>,
    ) -> Option<Notice> {
        let notify = rcpt.dsn.notify;
        let wanted = match action {
            Action::Delivered => notify.is_some_and(|n| n.success),
            Action::Failed { .. } => notify.is_none_or(|n| n.failure),
        };
        wanted.then(|| Notice {
            address: rcpt.address.clone(),
            orcpt: rcpt.dsn.orcpt.clone(),
            action,
            remote_mta: remote_mta.map(str::to_string),
            at,
        })
    }

    fn failed(&self) -> bool {
        matches!(self.action, Action::Failed { .. })
    }
}

/// Everything the report needs.
pub struct Report<'a> {
    /// The reporting hub's host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The original Message-ID.
    pub original_message_id: &'a str,
    /// Who gets the report (the original reverse path).
    pub to: &'a str,
    /// ENVID of the original (Original-Envelope-Id).
    pub envid: Option<&'a str>,
    /// RET of the original: FULL returns the whole message with a failure; otherwise, and
    /// always with a success-only report, the header only.
    pub ret: Option<Ret>,
    /// When the original arrived.
    pub arrival: DateTime<Utc>,
    /// The recipients reported on.
    pub notices: &'a [Notice],
    /// The original message.
    pub original: &'a [u8],
}

impl Report<'_> {
    /// Renders the report as a complete RFC 5322 message with CRLF line endings.
    pub fn render(&self, message_id: &str, now: DateTime<Utc>) -> Vec<u8> {
        let any_failed = self.notices.iter().any(Notice::failed);
        let subject = if any_failed {
            "Undelivered Mail Returned to Sender"
        } else {
            "Successful Mail Delivery Report"
        };
        let report = MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            vec![
                MimePart::new("text/plain", self.human()),
                MimePart::new("message/delivery-status", self.status().into_bytes())
                    .transfer_encoding("7bit"),
                self.returned(any_failed),
            ],
        );
        let mut message = MessageBuilder::new()
            .from((
                "Mail Delivery System".to_string(),
                format!("MAILER-DAEMON@{}", self.reporting_mta),
            ))
            .to(self.to)
            .subject(subject)
            .date(now.timestamp())
            .message_id(message_id.trim_matches(['<', '>']))
            .header("Auto-Submitted", Raw::new("auto-replied"))
            .body(report);
        let original_id = self.original_message_id.trim_matches(['<', '>']);
        if !original_id.is_empty() {
            message = message.in_reply_to(original_id);
        }
        let mut out = Vec::new();
        message.serialize(&mut out);
        out
    }

    fn human(&self) -> String {
        let mut text = format!(
            "This is the mail system at host {}.\r\n\r\n",
            self.reporting_mta
        );
        for n in self.notices {
            let line = match &n.action {
                Action::Delivered => format!(
                    "<{}>: delivered to its mailbox server{}\r\n",
                    n.address,
                    n.remote_mta
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
                Action::Failed { code, reason } => format!(
                    "<{}>: could not be delivered: {code} {}\r\n",
                    n.address,
                    one_line(reason)
                ),
            };
            text.push_str(&line);
        }
        text
    }

    /// The `message/delivery-status` body: per-message fields, then a block per recipient, in
    /// the order of RFC 3464 §2.2 and §2.3.
    fn status(&self) -> String {
        let mut status = String::new();
        if let Some(envid) = self.envid {
            status.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
        }
        status.push_str(&format!(
            "Reporting-MTA: dns; {}\r\nArrival-Date: {}\r\n",
            self.reporting_mta,
            self.arrival.to_rfc2822()
        ));
        for n in self.notices {
            status.push_str("\r\n");
            if let Some(orcpt) = &n.orcpt {
                status.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
            }
            status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", n.address));
            match &n.action {
                Action::Delivered => status.push_str("Action: delivered\r\nStatus: 2.0.0\r\n"),
                Action::Failed { code, reason } => status.push_str(&format!(
                    "Action: failed\r\nStatus: {}\r\n",
                    status_code(*code, reason)
                )),
            }
            if let Some(mta) = &n.remote_mta {
                status.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
            }
            if let Action::Failed { code, reason } = &n.action {
                status.push_str(&format!(
                    "Diagnostic-Code: smtp; {code} {}\r\n",
                    one_line(reason)
                ));
            }
            status.push_str(&format!("Last-Attempt-Date: {}\r\n", n.at.to_rfc2822()));
        }
        status
    }

    /// The original: whole with RET=FULL when something failed (RET is about failure reports,
    /// RFC 3461 §4.3), otherwise only its header.
    fn returned(&self, any_failed: bool) -> MimePart<'_> {
        let (kind, content) = if any_failed && self.ret == Some(Ret::Full) {
            ("message/rfc822", self.original)
        } else {
            ("text/rfc822-headers", header_block(self.original))
        };
        let encoding = if content.is_ascii() { "7bit" } else { "8bit" };
        MimePart::new(kind, content).transfer_encoding(encoding)
    }
}

/// A stored millisecond time as a date for the report.
pub fn date(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
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

/// The original's header block (up to the empty line), so the sender can tell which message it was.
fn header_block(msg: &[u8]) -> &[u8] {
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &msg[..i + 2],
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use mailparse::{MailHeaderMap, ParsedMail};
    use store::hub::{Notify, RcptDsn, RcptStatus};

    use super::*;

    const ORIGINAL: &[u8] = b"Subject: hello\r\nMessage-ID: <m1@x>\r\n\r\nsecret body\r\n";

    fn rcpt(address: &str, notify: Option<Notify>, orcpt: Option<&str>) -> Recipient {
        Recipient {
            address: address.into(),
            cms: "cms1".into(),
            storage_group: "SG1".into(),
            status: RcptStatus::Pending,
            dsn: RcptDsn {
                notify,
                orcpt: orcpt.map(str::to_string),
            },
        }
    }

    fn failed(code: u16, reason: &str) -> Action {
        Action::Failed {
            code,
            reason: reason.into(),
        }
    }

    fn render(notices: &[Notice], envid: Option<&str>, ret: Option<Ret>) -> Vec<u8> {
        Report {
            reporting_mta: "hub1.test",
            original_message_id: "<m1@x>",
            to: "bob@example.test",
            envid,
            ret,
            arrival: Utc::now(),
            notices,
            original: ORIGINAL,
        }
        .render("<dsn1@hub1.test>", Utc::now())
    }

    /// The per-message fields and each recipient's fields, as `(name, value)` blocks.
    fn fields(report: &ParsedMail) -> Vec<Vec<(String, String)>> {
        let status = report.subparts[1]
            .get_body()
            .expect("a readable status part");
        status
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .map(|block| {
                block
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    fn field<'f>(block: &'f [(String, String)], name: &str) -> Option<&'f str> {
        block
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn failure_report_has_the_rfc_3464_fields() {
        let at = Utc::now();
        let notices = vec![Notice::requested(
            &rcpt("carol@example.test", None, Some("rfc822;Carol@Old.test")),
            failed(550, "5.1.1 no such mailbox"),
            Some("node1"),
            at,
        )
        .expect("no NOTIFY asks for failures")];
        let raw = render(&notices, Some("QQ314159"), None);
        let report = mailparse::parse_mail(&raw).expect("the DSN is valid MIME");
        assert_eq!(report.ctype.mimetype, "multipart/report");
        assert_eq!(
            report.ctype.params.get("report-type").map(String::as_str),
            Some("delivery-status")
        );
        assert_eq!(
            report.headers.get_first_value("Subject").as_deref(),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(
            report.headers.get_first_value("In-Reply-To").as_deref(),
            Some("<m1@x>")
        );
        assert_eq!(report.subparts.len(), 3);
        assert_eq!(report.subparts[1].ctype.mimetype, "message/delivery-status");
        let blocks = fields(&report);
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        assert_eq!(field(&blocks[0], "Original-Envelope-Id"), Some("QQ314159"));
        assert_eq!(field(&blocks[0], "Reporting-MTA"), Some("dns; hub1.test"));
        assert!(field(&blocks[0], "Arrival-Date").is_some());
        let r = &blocks[1];
        assert_eq!(
            field(r, "Original-Recipient"),
            Some("rfc822;Carol@Old.test")
        );
        assert_eq!(
            field(r, "Final-Recipient"),
            Some("rfc822; carol@example.test")
        );
        assert_eq!(field(r, "Action"), Some("failed"));
        assert_eq!(field(r, "Status"), Some("5.1.1"));
        assert_eq!(field(r, "Remote-MTA"), Some("dns; node1"));
        assert_eq!(
            field(r, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 no such mailbox")
        );
        assert_eq!(
            field(r, "Last-Attempt-Date"),
            Some(at.to_rfc2822().as_str())
        );
        let returned = &report.subparts[2];
        assert_eq!(returned.ctype.mimetype, "text/rfc822-headers");
        let headers = returned.get_body().expect("readable headers");
        assert!(headers.contains("Subject: hello"), "{headers:?}");
        assert!(!headers.contains("secret body"), "no RET: header only");
    }

    #[test]
    fn ret_full_returns_the_body_with_a_failure_and_hdrs_does_not() {
        let n = Notice::requested(
            &rcpt("carol@example.test", None, None),
            failed(554, "4.4.7 message expired"),
            None,
            Utc::now(),
        )
        .expect("a failure report");
        let full = render(std::slice::from_ref(&n), None, Some(Ret::Full));
        let report = mailparse::parse_mail(&full).expect("valid MIME");
        assert_eq!(report.subparts[2].ctype.mimetype, "message/rfc822");
        let returned = String::from_utf8_lossy(&full).into_owned();
        assert!(returned.contains("secret body"), "{returned}");
        let blocks = fields(&report);
        assert_eq!(field(&blocks[0], "Original-Envelope-Id"), None);
        assert_eq!(
            field(&blocks[1], "Remote-MTA"),
            None,
            "expiry: no node answered"
        );
        assert_eq!(field(&blocks[1], "Original-Recipient"), None);
        assert_eq!(field(&blocks[1], "Status"), Some("4.4.7"));

        let hdrs = render(&[n], None, Some(Ret::Hdrs));
        let report = mailparse::parse_mail(&hdrs).expect("valid MIME");
        assert_eq!(report.subparts[2].ctype.mimetype, "text/rfc822-headers");
        assert!(!String::from_utf8_lossy(&hdrs).contains("secret body"));
    }

    #[test]
    fn success_report_says_delivered_and_returns_headers_only() {
        let success = Some(Notify {
            success: true,
            failure: false,
            delay: false,
        });
        let n = Notice::requested(
            &rcpt("alice@example.test", success, None),
            Action::Delivered,
            Some("node2"),
            Utc::now(),
        )
        .expect("NOTIFY=SUCCESS asks for it");
        let raw = render(&[n], Some("env1"), Some(Ret::Full));
        let report = mailparse::parse_mail(&raw).expect("valid MIME");
        assert_eq!(
            report.headers.get_first_value("Subject").as_deref(),
            Some("Successful Mail Delivery Report")
        );
        let blocks = fields(&report);
        assert_eq!(field(&blocks[1], "Action"), Some("delivered"));
        assert_eq!(field(&blocks[1], "Status"), Some("2.0.0"));
        assert_eq!(field(&blocks[1], "Remote-MTA"), Some("dns; node2"));
        assert_eq!(field(&blocks[1], "Diagnostic-Code"), None);
        assert_eq!(report.subparts[2].ctype.mimetype, "text/rfc822-headers");
        assert!(
            !String::from_utf8_lossy(&raw).contains("secret body"),
            "RET=FULL applies to failure reports only"
        );
    }

    #[test]
    fn notify_decides_which_reports_are_sent() {
        let n = |success, failure, delay| {
            Some(Notify {
                success,
                failure,
                delay,
            })
        };
        // (NOTIFY, a delivery reported, a failure reported)
        let table = [
            (None, false, true),
            (n(false, false, false), false, false), // NEVER
            (n(true, false, false), true, false),
            (n(false, true, false), false, true),
            (n(true, true, false), true, true),
            (n(false, false, true), false, false), // DELAY only
        ];
        for (notify, delivered, failure) in table {
            let r = rcpt("a@example.test", notify, None);
            let got_delivered =
                Notice::requested(&r, Action::Delivered, None, Utc::now()).is_some();
            let got_failure = Notice::requested(&r, failed(550, "no"), None, Utc::now()).is_some();
            assert_eq!(
                (got_delivered, got_failure),
                (delivered, failure),
                "{notify:?}"
            );
        }
    }

    #[test]
    fn status_falls_back_to_reply_class() {
        assert_eq!(status_code(554, "rejected"), "5.0.0");
        assert_eq!(status_code(451, "later"), "4.0.0");
        assert_eq!(status_code(550, "5.7.1 denied"), "5.7.1");
    }
}
