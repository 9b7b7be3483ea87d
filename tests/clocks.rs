//! Wall-clock steps under load, as NTP, an operator's `date -s` or a restored VM make them: the
//! active node's wall clock is moved by libfaketime (through a file the test rewrites; its monotonic
//! clock is left alone, as a real step leaves it), with separate processes for every role.
//!
//! libfaketime comes from `tests/clocks/install-faketime.sh` (Debian's package). Where it cannot be
//! installed the test fails and says why: a clock fault that was not injected proves nothing.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{message, Proc, Smtplib, TestSite};

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
            &["alice@example.test"],
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
    let lib = libfaketime();
    let site = TestSite::new("", &[]);
    let shift = site.dir.path().join("node1-clock");
    let node1 = start_shifted(&site, "node1", &lib, &shift);
    let _node2 = site.start(&["node", "--name", "node2"]);
    let _hub1 = site.start(&["hub", "--name", "hub1"]);
    let _hub2 = site.start(&["hub", "--name", "hub2"]);
    wait_active(&site, "node1");
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
