//! Wall-clock steps under load, as NTP, an operator's `date -s` or a restored VM make them: the
//! active node's wall clock is moved by libfaketime (through a file the test rewrites; its monotonic
//! clock is left alone, as a real step leaves it), with separate processes for every role.
//!
//! libfaketime comes from `tests/clocks/install-faketime.sh` (Debian's package). Where it cannot be
//! installed the test fails and says why: a clock fault that was not injected proves nothing.
//!
//! Every test here runs a four-process site with sub-second heartbeat deadlines; they take turns.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::one_at_a_time;
use common::{api_json, message, Proc, Smtplib, TestSite};

/// How long anything may take to settle.
const WAIT: Duration = Duration::from_secs(60);

/// From `kill -9` of the active to the passive mounted: peer timeout (1.5 s) and a lease duration
/// (3 s) of the passive's own clock, with room for ticks and a loaded machine. Before leases were
/// timed on monotonic clocks this took an hour after a one-hour step.
const FAILOVER_BOUND: Duration = Duration::from_secs(12);

fn libfaketime() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clocks/install-faketime.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run install-faketime.sh");
    assert!(
        out.status.success(),
        "libfaketime is needed to step a node's clock: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A node whose wall clock reads real time shifted by the offset in `shift` (e.g. `+1h`, `+0`),
/// re-read on every call; its monotonic clock is untouched.
fn start_shifted(site: &TestSite, name: &str, lib: &Path, shift: &Path) -> Proc {
    std::fs::write(shift, "+0\n").expect("write clock shift");
    let no = Path::new("1");
    Proc::start_env(
        &site.config(),
        &site.data(),
        &["node", "--name", name],
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", shift),
            ("FAKETIME_NO_CACHE", no),
            ("DONT_FAKE_MONOTONIC", no),
        ],
    )
}

/// The four roles of `site`, node1 with a clock the test steps through the returned file; waits
/// until node1 is active.
fn start_with_shifted_node1(site: &TestSite, lib: &Path) -> (PathBuf, Proc, [Proc; 3]) {
    let shift = site.dir.path().join("node1-clock");
    let node1 = start_shifted(site, "node1", lib, &shift);
    let others = [
        site.start(&["node", "--name", "node2"]),
        site.start(&["hub", "--name", "hub1"]),
        site.start(&["hub", "--name", "hub2"]),
    ];
    wait_active(site, "node1");
    (shift, node1, others)
}

fn status(site: &TestSite) -> serde_json::Value {
    site.cli_json(&["status", "--cms", "cms1"]).1
}

fn wait_active(site: &TestSite, node: &str) -> Duration {
    let start = Instant::now();
    loop {
        let v = status(site);
        if v["active_node"].as_str() == Some(node) {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "{node} never became active: {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The witness lease file as it is now.
fn lease(site: &TestSite) -> Vec<u8> {
    std::fs::read(site.data().join("witness/cms1/witness.lease")).unwrap_or_default()
}

/// Waits until the holder has rewritten the lease `n` times (renewals, with whatever its clock
/// reads).
fn wait_renewals(site: &TestSite, n: u64) {
    let mut last = lease(site);
    let mut seen = 0;
    let start = Instant::now();
    while seen < n {
        assert!(start.elapsed() < WAIT, "the lease was not renewed");
        std::thread::sleep(Duration::from_millis(20));
        let now = lease(site);
        if now != last {
            seen += 1;
            last = now;
        }
    }
}

/// Sends `count` messages to alice through the two hubs in turn; returns the Message-IDs the
/// client got a 250 for.
fn send(site: &TestSite, client: &mut Smtplib, prefix: &str, count: usize) -> Vec<String> {
    send_to(site, client, "alice@example.test", prefix, count)
}

/// [`send`] to `rcpt`.
fn send_to(
    site: &TestSite,
    client: &mut Smtplib,
    rcpt: &str,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..count {
        let id = format!("<{prefix}-{i}@clocks.test>");
        let port = if i % 2 == 0 {
            site.ports.hub1
        } else {
            site.ports.hub2
        };
        let reply = client.send(
            port,
            "bob@example.test",
            &[rcpt],
            &message(Some(&id), prefix),
        );
        if reply.starts_with("refused {}") {
            acked.push(id);
        }
    }
    acked
}

/// Sequence 1 of the issue about real hosts: the active's wall clock runs an hour ahead for a few
/// renewals, is set back, then the active is killed. The passive must take over within the lease
/// time, and every message a client got 250 for must be in the mailbox exactly once.
#[test]
fn a_clock_step_on_the_active_then_a_crash_fails_over_within_the_lease_time() {
    let _turn = one_at_a_time();
    let lib = libfaketime();
    let site = TestSite::new("", &[]);
    let (shift, node1, _others) = start_with_shifted_node1(&site, &lib);
    let mut client = Smtplib::start();
    let mut acked = send(&site, &mut client, "before", 20);

    std::fs::write(&shift, "+1h\n").expect("step the clock");
    acked.extend(send(&site, &mut client, "ahead", 20));
    wait_renewals(&site, 3);
    std::fs::write(&shift, "+0\n").expect("set the clock back");
    acked.extend(send(&site, &mut client, "back", 20));
    wait_renewals(&site, 2);

    node1.kill9();
    let took = wait_active(&site, "node2");
    assert!(
        took < FAILOVER_BOUND,
        "failover after a clock step took {took:?}"
    );
    acked.extend(send(&site, &mut client, "after", 20));
    assert_eq!(acked.len(), 80, "every message must have been acknowledged");

    let want: BTreeSet<String> = acked.iter().cloned().collect();
    let ids = site.wait_mailbox("alice@example.test", WAIT, |ids| {
        want.iter().all(|w| ids.contains(w))
    });
    for id in &want {
        let n = ids.iter().filter(|i| *i == id).count();
        assert_eq!(n, 1, "{id} is in the mailbox {n} times");
    }
}

/// Waits until `rcpt`'s mailbox holds every one of `want`, then checks each is there once.
fn exactly_once(site: &TestSite, rcpt: &str, want: &[String]) {
    let ids = site.wait_mailbox(rcpt, WAIT, |ids| want.iter().all(|w| ids.contains(w)));
    for id in want {
        let n = ids.iter().filter(|i| *i == id).count();
        assert_eq!(n, 1, "{id} is in {rcpt}'s mailbox {n} times");
    }
}

/// Resubmission requests of SG1 and SG2 not completed yet (outstanding and refused), as `stats`
/// lists them.
fn unfinished_requests(site: &TestSite) -> Vec<serde_json::Value> {
    let (code, v) = site.cli_json(&["stats"]);
    assert_eq!(code, 0, "{v}");
    v.as_array()
        .expect("one object per storage group")
        .iter()
        .flat_map(|sg| {
            let of = |key: &str| sg[key].as_array().cloned().unwrap_or_default();
            of("outstanding_dumpster_requests")
                .into_iter()
                .chain(of("refused_dumpster_requests"))
        })
        .collect()
}

fn wait_no_requests(site: &TestSite) {
    let start = Instant::now();
    loop {
        let left = unfinished_requests(site);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "resubmission requests never completed: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 26, item 3: the active's wall clock runs an hour ahead while mail is delivered and
/// copied, so the records the passive replays carry times an hour in the future. The copy is then
/// suspended (what is delivered next stays only in the active's logs and the hubs' dumpsters),
/// and the active is killed: a lossy failover. Asked from "newest record time − 5 min" to the new
/// active's now, both hubs used to get windows that started 55 minutes after they ended, refused
/// them, and the requests stayed outstanding while the lost mail never came back. Every message a
/// client got 250 for must end in its mailbox exactly once, with no request left outstanding or
/// refused and no hub holding an inverted window; and so after the old active returns (with a
/// right clock) and discards what diverged.
#[test]
fn a_lossy_failover_after_the_active_ran_ahead_brings_every_lost_message_back_once() {
    let _turn = one_at_a_time();
    let lib = libfaketime();
    let site = TestSite::new("", &[]);
    // Logs close at 4 KiB (a few messages each), so they ship during the test.
    let text = std::fs::read_to_string(site.config()).expect("config");
    let text = text.replace(
        "witness = \"witness/cms1\"",
        "witness = \"witness/cms1\"\nlog_file_size = \"4KiB\"",
    );
    std::fs::write(site.config(), text).expect("write config");
    let (shift, node1, _others) = start_with_shifted_node1(&site, &lib);
    let mut client = Smtplib::start();

    std::fs::write(&shift, "+1h\n").expect("step the clock");
    let mut alice = send(&site, &mut client, "ahead", 30);
    let mut carol = send_to(&site, &mut client, "carol@example.test", "ahead-c", 30);
    exactly_once(&site, "alice@example.test", &alice);
    exactly_once(&site, "carol@example.test", &carol);
    // node2 replays records written an hour ahead of every other clock of the site.
    let an_hour_ahead = chrono::Utc::now() + chrono::Duration::minutes(30);
    let start = Instant::now();
    loop {
        let v = status(&site);
        let replayed_ahead = |sg: &serde_json::Value| {
            sg["newest_replayed"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > an_hour_ahead)
        };
        let caught_up =
            |sg: &serde_json::Value| sg["copy_queue_length"].as_u64().is_some_and(|q| q <= 1);
        let sgs = v["storage_groups"].as_array().cloned().unwrap_or_default();
        if sgs.len() == 2 && sgs.iter().all(|sg| replayed_ahead(sg) && caught_up(sg)) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "node2 never replayed a record written an hour ahead: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for sg in ["SG1", "SG2"] {
        api_json(
            site.ports.node2_admin,
            "POST",
            &format!("/api/copy/{sg}/suspend"),
            None,
        );
    }
    // Only in node1's logs and the hubs' dumpsters from here on: lost by the failover.
    let lost_alice = send(&site, &mut client, "lost", 6);
    let lost_carol = send_to(&site, &mut client, "carol@example.test", "lost-c", 6);
    assert_eq!(
        (lost_alice.len(), lost_carol.len()),
        (6, 6),
        "every message must be acknowledged"
    );
    alice.extend(lost_alice.iter().cloned());
    carol.extend(lost_carol.iter().cloned());
    exactly_once(&site, "alice@example.test", &alice);
    exactly_once(&site, "carol@example.test", &carol);

    node1.kill9();
    wait_active(&site, "node2");
    exactly_once(&site, "alice@example.test", &alice);
    exactly_once(&site, "carol@example.test", &carol);
    wait_no_requests(&site);

    // Each hub recorded each request with a window that starts before it ends, and between them
    // they put back at least every message node2 never had.
    let epoch = status(&site)["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == "node2")
        .and_then(|n| n["epoch"].as_u64())
        .expect("node2's epoch");
    for (sg, lost) in [("SG1", &lost_alice), ("SG2", &lost_carol)] {
        let mut resubmitted = 0;
        for admin in [site.ports.hub1_admin, site.ports.hub2_admin] {
            let r = api_json(
                admin,
                "GET",
                &format!("/api/resubmit/cms1-epoch{epoch}-{sg}"),
                None,
            );
            let at = |k: &str| {
                chrono::DateTime::parse_from_rfc3339(r[k].as_str().expect("a time"))
                    .expect("RFC 3339")
            };
            assert!(at("low") <= at("high"), "inverted window: {r}");
            assert_eq!(r["done"], true, "{r}");
            resubmitted += r["messages"].as_u64().expect("messages");
        }
        assert!(
            resubmitted >= lost.len() as u64,
            "{sg}: {resubmitted} resubmitted, {} lost",
            lost.len()
        );
    }
    let (_, health) = site.cli_json(&["health"]);
    let refused: Vec<&serde_json::Value> = health
        .as_array()
        .expect("health lines")
        .iter()
        .filter(|c| c["check"] == "DumpsterResubmission" && c["result"] != "PASS")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");

    // The old active comes back with a right clock, discards the logs that diverged and asks the
    // hubs for what they held: nothing doubles, nothing stays outstanding.
    let _node1 = start_shifted(&site, "node1", &lib, &shift);
    let start = Instant::now();
    loop {
        let v = status(&site);
        if v["passive_node"] == "node1"
            && v["storage_groups"]
                .as_array()
                .is_some_and(|s| s.iter().all(|g| g["summary_copy_status"] == "Healthy"))
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "node1 never caught up: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_no_requests(&site);
    let after = send(&site, &mut client, "after", 4);
    alice.extend(after);
    exactly_once(&site, "alice@example.test", &alice);
    exactly_once(&site, "carol@example.test", &carol);
}
