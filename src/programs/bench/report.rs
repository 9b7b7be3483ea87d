//! What `hubrelay bench` makes of its measurements: the exactly-once tally, percentiles, rates,
//! the replication state at the end, and the report in text and JSON. Pure functions, so each
//! figure can be tested apart from a running site.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use chrono::DateTime;
use serde::Serialize;

use super::load::{Accepted, Outcome, Plan};
use crate::wire::cluster::NodeStatus;
use crate::wire::cluster::SummaryCopyStatus;

/// Nearest-rank percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Half the messages took at most this long.
    pub p50: f64,
    /// 99 in 100 took at most this long.
    pub p99: f64,
    /// The slowest.
    pub max: f64,
}

impl Latency {
    /// The percentiles of `samples` (sorted here); `None` without samples.
    pub fn of(samples: &mut [f64]) -> Option<Latency> {
        samples.sort_unstable_by(f64::total_cmp);
        Some(Latency {
            p50: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            max: *samples.last()?,
        })
    }
}

/// The nearest-rank `p`th percentile of `sorted` (ascending): the smallest sample that at least
/// `p` percent of the samples do not exceed. Always a measured value, never an interpolation.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// `count` per second over `seconds`, to a tenth; `None` for an empty or zero span.
pub fn rate(count: usize, seconds: Option<f64>) -> Option<f64> {
    seconds
        .filter(|s| *s > 0.0)
        .map(|s| (count as f64 / s * 10.0).round() / 10.0)
}

/// The sum of the `hubrelay_messages_stored_total` samples (every storage group) in a node's
/// OpenMetrics text: mailbox copies stored by deliveries to it since it started.
pub fn stored_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("hubrelay_messages_stored_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// VmHWM (the peak resident set) in bytes, from the text of `/proc/<pid>/status`.
pub fn peak_rss(proc_status: &str) -> Option<u64> {
    let line = proc_status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A mailbox copy the listing shows: which mailbox, which message of the plan, when stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// The mailbox (its number in the plan).
    pub mailbox: usize,
    /// The message (its index in the plan).
    pub index: usize,
    /// Its delivery time in the listing (ms since the epoch).
    pub delivered_ms: u64,
}

/// Every accepted message checked against the mailboxes.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    /// Accepted messages in every one of their mailboxes.
    pub delivered: usize,
    /// Accepted messages missing from at least one of their mailboxes.
    pub lost: usize,
    /// Accepted messages stored more than once in at least one mailbox.
    pub duplicates: usize,
    /// Messages of the run stored although the client got no 250 for them (its error came after
    /// the hub had the message): not lost, but reported.
    pub unacknowledged: usize,
    /// The newest delivery time of an accepted message.
    pub last_stored_ms: Option<u64>,
    /// Per delivered message: MAIL to its last mailbox copy's delivery time, in ms.
    pub end_to_end_ms: Vec<f64>,
}

/// Checks that each accepted message is in each of its mailboxes exactly once.
pub fn tally(plan: &Plan, accepted: &[Accepted], listed: &[Listed]) -> Tally {
    let mut copies: HashMap<(usize, usize), u32> = HashMap::new();
    let mut newest: HashMap<usize, u64> = HashMap::new();
    for l in listed {
        *copies.entry((l.index, l.mailbox)).or_default() += 1;
        let t = newest.entry(l.index).or_default();
        *t = (*t).max(l.delivered_ms);
    }
    let acked: HashSet<usize> = accepted.iter().map(|a| a.index).collect();
    let mut t = Tally {
        unacknowledged: newest.keys().filter(|i| !acked.contains(i)).count(),
        ..Tally::default()
    };
    for a in accepted {
        let counts: Vec<u32> = plan
            .mailboxes_of(a.index)
            .map(|k| copies.get(&(a.index, k)).copied().unwrap_or(0))
            .collect();
        if counts.iter().any(|&c| c > 1) {
            t.duplicates += 1;
        }
        if counts.contains(&0) {
            t.lost += 1;
            continue;
        }
        t.delivered += 1;
        let stored = newest.get(&a.index).copied().unwrap_or_default();
        t.last_stored_ms = t.last_stored_ms.max(Some(stored));
        // Both times are this machine's wall clock in whole ms (so a figure is within 1 ms);
        // a clock stepped back meanwhile gives 0, not a negative latency.
        t.end_to_end_ms
            .push(stored.saturating_sub(a.start_ms) as f64);
    }
    t
}

/// One storage group's replication when the last message was stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replication {
    /// The storage group.
    pub storage_group: String,
    /// The active node.
    pub active_node: Option<String>,
    /// The passive node, whose copy this is.
    pub passive_node: Option<String>,
    /// LastLogGenerated (the active's).
    pub last_log_generated: Option<u64>,
    /// LastLogCopied of the passive copy.
    pub last_log_copied: Option<u64>,
    /// LastLogReplayed of the passive copy.
    pub last_log_replayed: Option<u64>,
    /// Generations generated but not copied (the open one always counts: only closed logs ship).
    pub copy_queue_length: Option<u64>,
    /// Generations copied but not replayed.
    pub replay_queue_length: Option<u64>,
    /// SummaryCopyStatus of the passive copy.
    pub summary_copy_status: Option<SummaryCopyStatus>,
    /// How much older the passive's newest replayed record is than the active's newest record, in
    /// seconds: the stretch of the newest mail a failover now would need the dumpsters for.
    pub replay_lag_seconds: Option<f64>,
}

/// The replication of every storage group, from the two nodes' `GET /api/status`.
pub fn replication(active: Option<&NodeStatus>, passive: Option<&NodeStatus>) -> Vec<Replication> {
    let newest = |s: &Option<String>| {
        s.as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    };
    let names: Vec<&String> = active
        .or(passive)
        .map(|n| n.storage_groups.iter().map(|g| &g.name).collect())
        .unwrap_or_default();
    names
        .into_iter()
        .map(|sg| {
            let a = active.and_then(|n| n.storage_groups.iter().find(|g| &g.name == sg));
            let p = passive.and_then(|n| n.storage_groups.iter().find(|g| &g.name == sg));
            // The active's own LastLogGenerated is the truth; the passive's is as of its last copy round.
            let generated = match (a, p) {
                (Some(a), Some(p)) => Some(a.last_log_generated.max(p.last_log_generated)),
                (a, p) => a.or(p).map(|g| g.last_log_generated),
            };
            let copied = p.and_then(|p| p.last_log_copied);
            // Nothing replayed on the passive yet gives no figure; the generations tell.
            let lag = a
                .and_then(|a| newest(&a.newest_replayed))
                .zip(p.and_then(|p| newest(&p.newest_replayed)))
                .map(|(a, p)| (a - p).max(0) as f64 / 1000.0);
            Replication {
                storage_group: sg.clone(),
                active_node: active.map(|n| n.node.clone()),
                passive_node: passive.map(|n| n.node.clone()),
                last_log_generated: generated,
                last_log_copied: copied,
                last_log_replayed: p.and_then(|p| p.last_log_replayed),
                copy_queue_length: generated.zip(copied).map(|(g, c)| g.saturating_sub(c)),
                replay_queue_length: p.and_then(|p| p.replay_queue_length),
                summary_copy_status: p.and_then(|p| p.summary_copy_status),
                replay_lag_seconds: lag,
            }
        })
        .collect()
}

/// The result of a run: `hubrelay bench --json` prints it as is (the field names are stable and
/// documented in the README).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Messages asked for.
    pub messages: usize,
    /// Body bytes of each.
    pub size: u64,
    /// Concurrent sessions.
    pub concurrency: usize,
    /// Recipients per message.
    pub recipients: usize,
    /// Messages a hub answered 250 for.
    pub accepted: usize,
    /// Messages not accepted.
    pub failed: usize,
    /// Accepted messages found in every one of their mailboxes.
    pub delivered: usize,
    /// Accepted messages missing from a mailbox.
    pub lost: usize,
    /// Accepted messages stored more than once in a mailbox.
    pub duplicates: usize,
    /// Messages stored without a 250 at the client.
    pub stored_unacknowledged: usize,
    /// First connect to the last 250.
    pub accept_seconds: Option<f64>,
    /// First connect to the last message stored.
    pub deliver_seconds: Option<f64>,
    /// `accepted / accept_seconds`.
    pub accepted_per_second: Option<f64>,
    /// `delivered / deliver_seconds`.
    pub delivered_per_second: Option<f64>,
    /// MAIL to the 250 after DATA, at the client.
    pub accept_latency_ms: Option<Latency>,
    /// MAIL to the message's log record on the active node (its delivery time in the mailbox).
    pub end_to_end_latency_ms: Option<Latency>,
    /// Per storage group, when the last message was stored.
    pub replication: Vec<Replication>,
    /// Peak resident set (VmHWM) of each role process, in bytes (null where unreadable).
    pub peak_rss_bytes: BTreeMap<String, Option<u64>>,
    /// Whether delivery stopped making progress before every accepted message was stored.
    pub stalled: bool,
    /// The first few client errors.
    pub errors: Vec<String>,
    /// Every message accepted, and each stored exactly once.
    pub ok: bool,
}

impl Report {
    /// The report of a run of `plan`: what the load generator saw, the mailboxes' copies of the
    /// run's messages, and what was read from the site at the end.
    pub fn compose(
        plan: &Plan,
        outcome: Outcome,
        listed: &[Listed],
        replication: Vec<Replication>,
        peak_rss_bytes: BTreeMap<String, Option<u64>>,
        stalled: bool,
    ) -> Report {
        let tally = tally(plan, &outcome.accepted, listed);
        let mut accept: Vec<f64> = outcome.accepted.iter().map(|a| a.accept_ms).collect();
        let mut end_to_end = tally.end_to_end_ms;
        let accept_seconds = outcome.accept_span.map(|d| d.as_millis() as f64 / 1000.0);
        let deliver_seconds = tally
            .last_stored_ms
            .map(|t| t.saturating_sub(outcome.first_connect_ms) as f64 / 1000.0);
        let mut r = Report {
            messages: plan.messages,
            size: plan.size as u64,
            concurrency: plan.concurrency,
            recipients: plan.recipients,
            accepted: outcome.accepted.len(),
            failed: outcome.failed,
            delivered: tally.delivered,
            lost: tally.lost,
            duplicates: tally.duplicates,
            stored_unacknowledged: tally.unacknowledged,
            accept_seconds,
            deliver_seconds,
            accepted_per_second: rate(outcome.accepted.len(), accept_seconds),
            delivered_per_second: rate(tally.delivered, deliver_seconds),
            accept_latency_ms: Latency::of(&mut accept),
            end_to_end_latency_ms: Latency::of(&mut end_to_end),
            replication,
            peak_rss_bytes,
            stalled,
            errors: outcome.errors,
            ok: false,
        };
        r.ok = r.problem().is_none();
        r
    }

    /// What went wrong, in one line, or `None` when the run is clean.
    pub fn problem(&self) -> Option<String> {
        if self.lost > 0 || self.duplicates > 0 {
            Some(format!(
                "MAIL LOST OR DOUBLED: {} of {} accepted messages missing from their mailboxes, {} stored more than once",
                self.lost, self.accepted, self.duplicates
            ))
        } else if self.failed > 0 {
            Some(format!(
                "{} of {} messages were not accepted",
                self.failed, self.messages
            ))
        } else {
            None
        }
    }

    /// The text report.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let ms = |l: &Option<Latency>| match l {
            Some(l) => format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.p50, l.p99, l.max
            ),
            None => "-".into(),
        };
        let per_s = |r: Option<f64>, s: Option<f64>| match (r, s) {
            (Some(r), Some(s)) => format!("{r:.1} msg/s ({s:.2} s)"),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "hubrelay bench: {} messages of {} (body), {} sessions over 2 hubs, {} recipient(s) each",
            self.messages,
            bytes(self.size),
            self.concurrency,
            self.recipients
        );
        let _ = writeln!(
            o,
            "  accepted            {} of {}: {}   first connect to last 250",
            self.accepted,
            self.messages,
            per_s(self.accepted_per_second, self.accept_seconds)
        );
        let _ = writeln!(
            o,
            "  delivered           {}: {}   first connect to last stored",
            self.delivered,
            per_s(self.delivered_per_second, self.deliver_seconds)
        );
        let _ = writeln!(
            o,
            "  accept latency      {}   MAIL to 250 after DATA, at the client",
            ms(&self.accept_latency_ms)
        );
        let _ = writeln!(
            o,
            "  end-to-end latency  {}   MAIL to the log record on the active node",
            ms(&self.end_to_end_latency_ms)
        );
        let _ = writeln!(o, "  replication when the last message was stored:");
        for r in &self.replication {
            let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
            let _ = writeln!(
                o,
                "    {} on {} (active {}): LastLogGenerated {}, LastLogCopied {}, LastLogReplayed {}, CopyQueueLength {}, ReplayQueueLength {}, {}; {}",
                r.storage_group,
                r.passive_node.as_deref().unwrap_or("-"),
                r.active_node.as_deref().unwrap_or("-"),
                opt(r.last_log_generated),
                opt(r.last_log_copied),
                opt(r.last_log_replayed),
                opt(r.copy_queue_length),
                opt(r.replay_queue_length),
                r.summary_copy_status.map_or("-".into(), |s| format!("{s:?}")),
                r.replay_lag_seconds.map_or(
                    "no record replayed yet (only closed generations ship)".into(),
                    |s| format!("newest replayed record {s:.2} s older than the active's newest")
                ),
            );
        }
        let rss: Vec<String> = self
            .peak_rss_bytes
            .iter()
            .map(|(role, b)| match b {
                Some(b) => format!("{role} {}", bytes(*b)),
                None => format!("{role} -"),
            })
            .collect();
        let _ = writeln!(o, "  peak RSS (VmHWM)    {}", rss.join(", "));
        if self.stored_unacknowledged > 0 {
            let _ = writeln!(
                o,
                "  {} message(s) without a 250 at the client were stored all the same",
                self.stored_unacknowledged
            );
        }
        for e in &self.errors {
            let _ = writeln!(o, "  client error: {e}");
        }
        if self.stalled {
            let _ = writeln!(
                o,
                "  delivery stopped making progress before every accepted message was stored"
            );
        }
        let _ = match self.problem() {
            Some(p) => writeln!(o, "Verdict: {p}"),
            None => writeln!(
                o,
                "Verdict: all {} messages accepted and stored exactly once (0 lost, 0 duplicated)",
                self.accepted
            ),
        };
        o
    }
}

/// A byte count for people: bytes, KiB or MiB.
fn bytes(n: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    match n {
        n if n < KIB => format!("{n} bytes"),
        n if n % KIB == 0 && n < MIB => format!("{} KiB", n / KIB),
        n if n < MIB => format!("{:.1} KiB", n as f64 / KIB as f64),
        n if n % MIB == 0 => format!("{} MiB", n / MIB),
        n => format!("{:.1} MiB", n as f64 / MIB as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::cluster::SgCopyStatus;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile(&sorted, 99.0), Some(99.0));
        assert_eq!(percentile(&sorted, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0], 99.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn latency_sorts_its_samples_and_p99_is_at_least_p50() {
        let mut samples = vec![9.0, 1.0, 5.0, 3.0, 7.0, 100.0, 2.0];
        let l = Latency::of(&mut samples).expect("samples");
        assert_eq!(
            l,
            Latency {
                p50: 5.0,
                p99: 100.0,
                max: 100.0
            }
        );
        assert!(Latency::of(&mut []).is_none());
        let mut many: Vec<f64> = (0..1000).map(|i| f64::from((i * 7919) % 1000)).collect();
        let l = Latency::of(&mut many).expect("samples");
        assert_eq!((l.p50, l.p99, l.max), (499.0, 989.0, 999.0));
    }

    #[test]
    fn byte_counts_read_as_given() {
        assert_eq!(bytes(200), "200 bytes");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(1500), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(52_690_944), "50.2 MiB");
    }

    #[test]
    fn rates_need_a_span() {
        assert_eq!(rate(200, Some(2.0)), Some(100.0));
        assert_eq!(rate(2000, Some(1.265)), Some(1581.0));
        assert_eq!(rate(200, Some(0.0)), None);
        assert_eq!(rate(200, None), None);
    }

    #[test]
    fn stored_total_sums_every_storage_group_and_nothing_else() {
        let text = "# HELP hubrelay_messages_stored Mailbox copies\n\
            # TYPE hubrelay_messages_stored counter\n\
            hubrelay_messages_stored_total{storage_group=\"SG1\",node=\"node1\",cms=\"cms1\"} 120\n\
            hubrelay_messages_stored_total{storage_group=\"SG2\",node=\"node1\",cms=\"cms1\"} 80\n\
            hubrelay_duplicates_dropped_total{storage_group=\"SG1\",node=\"node1\",cms=\"cms1\"} 5\n\
            # EOF\n";
        assert_eq!(stored_total(text), 200);
        assert_eq!(stored_total("# EOF\n"), 0);
    }

    #[test]
    fn peak_rss_reads_vm_hwm() {
        let status =
            "Name:\thubrelay\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(peak_rss(status), Some(51234 * 1024));
        assert_eq!(peak_rss("Name:\tkthreadd\n"), None);
    }

    fn accepted(index: usize, start_ms: u64) -> Accepted {
        Accepted {
            index,
            start_ms,
            accept_ms: 1.0,
        }
    }

    fn listed(mailbox: usize, index: usize, delivered_ms: u64) -> Listed {
        Listed {
            mailbox,
            index,
            delivered_ms,
        }
    }

    #[test]
    fn tally_counts_delivered_lost_doubled_and_unacknowledged() {
        // Two recipients each: message i goes to mailboxes i and i+1.
        let plan = Plan::new(5, 10, 1, 2, "r".into());
        let acked = [
            accepted(0, 1_000),
            accepted(1, 1_000),
            accepted(2, 1_000),
            accepted(3, 2_000),
        ];
        let stored = [
            // 0: both copies; e2e to the later one.
            listed(0, 0, 1_010),
            listed(1, 0, 1_030),
            // 1: one copy missing.
            listed(1, 1, 1_020),
            // 2: both, one twice.
            listed(2, 2, 1_040),
            listed(3, 2, 1_050),
            listed(3, 2, 1_900),
            // 3: stored "before" the start (the clock stepped back): 0, not negative.
            listed(3, 3, 1_998),
            listed(4, 3, 1_999),
            // 4: never acknowledged, stored all the same.
            listed(4, 4, 2_100),
        ];
        let t = tally(&plan, &acked, &stored);
        assert_eq!(
            t,
            Tally {
                delivered: 3,
                lost: 1,
                duplicates: 1,
                unacknowledged: 1,
                last_stored_ms: Some(1_999),
                end_to_end_ms: vec![30.0, 900.0, 0.0],
            }
        );
    }

    #[test]
    fn tally_of_a_clean_run_has_nothing_lost_or_doubled() {
        let plan = Plan::new(3, 10, 1, 1, "r".into());
        let acked = [accepted(0, 0), accepted(1, 0), accepted(2, 0)];
        let stored = [listed(0, 0, 5), listed(1, 1, 6), listed(2, 2, 7)];
        let t = tally(&plan, &acked, &stored);
        assert_eq!((t.delivered, t.lost, t.duplicates), (3, 0, 0));
        assert_eq!(t.last_stored_ms, Some(7));
    }

    fn outcome(accepted: Vec<Accepted>, failed: usize) -> Outcome {
        Outcome {
            first_connect_ms: 1_000,
            accept_span: Some(std::time::Duration::from_millis(2_000)),
            accepted,
            failed,
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_report_is_ok_only_when_everything_was_accepted_and_stored_once() {
        let plan = Plan::new(2, 4096, 2, 1, "r".into());
        let both = vec![accepted(0, 1_000), accepted(1, 1_100)];
        let stored = [listed(0, 0, 1_500), listed(1, 1, 3_000)];
        let r = Report::compose(
            &plan,
            outcome(both.clone(), 0),
            &stored,
            Vec::new(),
            BTreeMap::new(),
            false,
        );
        assert!(r.ok, "{r:?}");
        assert_eq!(r.problem(), None);
        assert_eq!(
            (r.accept_seconds, r.accepted_per_second),
            (Some(2.0), Some(1.0))
        );
        assert_eq!(
            (r.deliver_seconds, r.delivered_per_second),
            (Some(2.0), Some(1.0))
        );
        let e2e = r.end_to_end_latency_ms.expect("latency");
        assert_eq!((e2e.p50, e2e.p99), (500.0, 1900.0));
        assert!(r
            .text()
            .contains("Verdict: all 2 messages accepted and stored exactly once"));

        let lost = Report::compose(
            &plan,
            outcome(both, 0),
            &stored[..1],
            Vec::new(),
            BTreeMap::new(),
            true,
        );
        assert!(!lost.ok);
        assert_eq!(lost.lost, 1);
        let p = lost.problem().expect("a problem");
        assert!(p.starts_with("MAIL LOST OR DOUBLED: 1 of 2"), "{p}");
        assert!(lost.text().contains(&format!("Verdict: {p}")));

        let refused = Report::compose(
            &plan,
            outcome(vec![accepted(0, 1_000)], 1),
            &stored[..1],
            Vec::new(),
            BTreeMap::new(),
            false,
        );
        assert!(!refused.ok);
        assert_eq!(
            refused.problem().as_deref(),
            Some("1 of 2 messages were not accepted")
        );
    }

    fn node(name: &str, sg: SgCopyStatus) -> NodeStatus {
        NodeStatus {
            node: name.into(),
            cms: "cms1".into(),
            role: "Active".into(),
            reason: None,
            mounted: true,
            epoch: 1,
            sees_peer: true,
            witness_ok: true,
            lease_holder: None,
            storage_groups: vec![sg],
        }
    }

    fn sg(generated: u64, copied: Option<u64>, newest: &str) -> SgCopyStatus {
        SgCopyStatus {
            name: "SG1".into(),
            last_log_generated: generated,
            last_log_copied: copied,
            last_log_replayed: copied,
            copy_queue_length: copied.map(|c| generated - c),
            replay_queue_length: copied.map(|_| 0),
            summary_copy_status: copied.map(|_| SummaryCopyStatus::Healthy),
            error: None,
            newest_replayed: Some(newest.into()),
            behind_since: None,
            copy_command: None,
            resubmission_errors: Vec::new(),
            seed: None,
        }
    }

    #[test]
    fn replication_measures_the_passive_against_the_active() {
        let a = node("node1", sg(7, None, "2026-11-22T10:00:02.500Z"));
        // The passive's LastLogGenerated is as of its last copy round: the active's counts.
        let p = node("node2", sg(6, Some(5), "2026-11-22T10:00:01.250Z"));
        let r = replication(Some(&a), Some(&p));
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.active_node.as_deref(), Some("node1"));
        assert_eq!(r.passive_node.as_deref(), Some("node2"));
        assert_eq!(r.last_log_generated, Some(7));
        assert_eq!(r.last_log_replayed, Some(5));
        assert_eq!(r.copy_queue_length, Some(2));
        assert_eq!(r.replay_lag_seconds, Some(1.25));
        assert_eq!(r.summary_copy_status, Some(SummaryCopyStatus::Healthy));
        let alone = replication(Some(&a), None);
        assert_eq!(alone[0].copy_queue_length, None);
        assert_eq!(alone[0].replay_lag_seconds, None);
    }
}
