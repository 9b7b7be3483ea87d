//! The hub's own time in a delivered message: what a lossy mount anchors each hub's resubmission
//! window on, so that the window rests on that hub's clock and not on the clock of whichever node
//! wrote the record.
//!
//! Every message a hub accepts gets its `Received:` header (`by <hub host> (hubrelay) ...; <date>`,
//! the hub's receive time), and every delivery a node takes gets the node's own on top. So in a
//! record's body the first header field is the node's and the second is the hub's — written by the
//! hub, not by its client, whose headers (forged ones included) all come after it. The hub receives
//! a message before it delivers it, so that time is a lower bound, on the hub's own clock, of the
//! hub's delivery time of this record and of every record it delivered after it. Records written
//! by every earlier release carry the same two headers, so old logs give anchors too.

use serde::{Deserialize, Serialize};

use crate::txlog::Millis;

/// A time a hub stamped on a message it received, as found in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStamp {
    /// The hub's host name as its `Received:` header names it (lower-cased).
    pub host: String,
    /// The hub's receive time, to the second (its clock, ms since the Unix epoch).
    pub time_ms: Millis,
}

/// Only the start of a message is read: both trace headers are far shorter (SMTP lines are).
const HEAD_LIMIT: usize = 16 * 1024;

/// The hub stamp of a delivered message: the second header field, if it is a hubrelay
/// `Received:` header with a date. `None` for anything else (a DSN the hub wrote itself, a
/// message of another origin).
pub fn hub_stamp(message: &[u8]) -> Option<HubStamp> {
    let head = &message[..message.len().min(HEAD_LIMIT)];
    let (node, next) = mailparse::parse_header(head).ok()?;
    if !node.get_key_ref().eq_ignore_ascii_case("received") {
        return None;
    }
    let (hub, _) = mailparse::parse_header(head.get(next..)?).ok()?;
    if !hub.get_key_ref().eq_ignore_ascii_case("received") {
        return None;
    }
    received(std::str::from_utf8(hub.get_value_raw()).ok()?)
}

/// `from X (...) by HOST (hubrelay) with P id I [for <R>]; DATE`: the host and the date.
fn received(value: &str) -> Option<HubStamp> {
    let (clauses, date) = value.rsplit_once(';')?;
    let words: Vec<&str> = clauses.split_whitespace().collect();
    let by = words.iter().position(|w| w.eq_ignore_ascii_case("by"))?;
    let host = words.get(by + 1)?;
    if words.get(by + 2) != Some(&"(hubrelay)") {
        return None;
    }
    let date = date.split_whitespace().collect::<Vec<_>>().join(" ");
    let seconds = mailparse::dateparse(&date).ok()?;
    let time_ms = u64::try_from(seconds).ok()?.checked_mul(1_000)?;
    Some(HubStamp {
        host: host.to_ascii_lowercase(),
        time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NODE: &str = "Received: from hub1.site1 ([127.0.0.1])\r\n\tby node1.cms1 (hubrelay) with ESMTP id n.1;\r\n\tSun, 22 Nov 2026 11:00:00 +0000\r\n";
    /// 2026-11-22T10:00:00Z.
    const AT: Millis = 1_795_341_600_000;

    fn hub(host: &str, rcpt: bool) -> String {
        let head = format!("Received: from client.test ([192.0.2.7])\r\n\tby {host} (hubrelay) with ESMTP id abc.1");
        if rcpt {
            format!("{head}\r\n\tfor <alice@example.test>; Sun, 22 Nov 2026 10:00:00 +0000\r\n")
        } else {
            format!("{head};\r\n\tSun, 22 Nov 2026 10:00:00 +0000\r\n")
        }
    }

    #[test]
    fn the_second_header_is_the_hubs() {
        for rcpt in [true, false] {
            let msg = format!(
                "{NODE}{}Message-ID: <x@y>\r\n\r\nhi\r\n",
                hub("Hub1.Site1", rcpt)
            );
            assert_eq!(
                hub_stamp(msg.as_bytes()),
                Some(HubStamp {
                    host: "hub1.site1".into(),
                    time_ms: AT
                })
            );
        }
    }

    #[test]
    fn a_clients_forged_header_below_the_hubs_is_never_read() {
        let forged = "Received: from x by hub2.site1 (hubrelay) with ESMTP id f; Mon, 1 Jan 2074 00:00:00 +0000\r\n";
        let msg = format!("{NODE}{}{forged}\r\nhi\r\n", hub("hub1.site1", true));
        assert_eq!(
            hub_stamp(msg.as_bytes()).map(|s| s.host),
            Some("hub1.site1".into())
        );
    }

    #[test]
    fn no_stamp_without_both_trace_headers() {
        let dsn = format!("{NODE}From: MAILER-DAEMON\r\nSubject: x\r\n\r\nbody\r\n");
        assert_eq!(hub_stamp(dsn.as_bytes()), None);
        let foreign = format!("{NODE}Received: from a by mx.other (Postfix) with ESMTP id Q; Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n");
        assert_eq!(hub_stamp(foreign.as_bytes()), None);
        let undated =
            format!("{NODE}Received: from a by hub1.site1 (hubrelay) with ESMTP id Q\r\n\r\n");
        assert_eq!(hub_stamp(undated.as_bytes()), None);
        assert_eq!(
            hub_stamp(hub("hub1.site1", true).as_bytes()),
            None,
            "only one header"
        );
        assert_eq!(hub_stamp(b""), None);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = hub_stamp(&bytes);
        }

        #[test]
        fn any_hub_and_second_round_trip(host in "[a-z][a-z0-9-]{0,12}\\.[a-z0-9]{1,8}", secs in 0i64..4_000_000_000) {
            let date = chrono_free_rfc2822(secs);
            let msg = format!("{NODE}Received: from c ([192.0.2.1])\r\n\tby {host} (hubrelay) with ESMTPS id 1;\r\n\t{date}\r\n\r\n");
            let got = hub_stamp(msg.as_bytes());
            prop_assert_eq!(got, Some(HubStamp { host, time_ms: secs as u64 * 1_000 }));
        }
    }

    /// An RFC 2822 date for `secs` after the epoch, in UTC (the store has no date library).
    fn chrono_free_rfc2822(secs: i64) -> String {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{day} {} {year} {:02}:{:02}:{:02} +0000",
            MONTHS[(month - 1) as usize],
            rem / 3_600,
            rem % 3_600 / 60,
            rem % 60
        )
    }
}
