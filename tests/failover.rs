//! Cluster continuous replication end to end, with four separate processes (hub1, hub2, node1,
//! node2): log shipping, automatic failover after `kill -9`, dumpster recovery, the old active's
//! return, witness cases (one share reached through a different mount point on each node too), a
//! corrupt log, and the mount dial.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{active_is, cms_site, one_at_a_time, start_all, status, wait_status};
use common::{Proc, TestSite};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A site whose CMS closes logs at 4 KiB (logs ship during a test) with the given mount dial.
fn site(dial: &str) -> TestSite {
    cms_site(&format!("auto_database_mount_dial = \"{dial}\""))
}

fn outstanding(site: &TestSite) -> Vec<Value> {
    let (code, v) = site.cli_json(&["stats", "--storage-group", "SG1"]);
    assert_eq!(code, 0, "{v}");
    v["outstanding_dumpster_requests"]
        .as_array()
        .expect("array")
        .clone()
}

fn wait_no_outstanding(site: &TestSite) {
    let start = Instant::now();
    while !outstanding(site).is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "requests stayed outstanding: {:?}",
            outstanding(site)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill9_of_the_active_fails_over_and_the_dumpster_fills_the_gap() {
    let _turn = one_at_a_time();
    let site = site("GoodAvailability");
    let mut procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let all = common::message_ids("ccr", 0..200);
    common::send_to_alice(site.ports.hub1, &all[..100], 300);
    common::send_to_alice(site.ports.hub2, &all[100..], 300);
    common::wait_alice_exactly(&site, &all, WAIT);
    wait_copied_up(&site);
    // Freeze the copy, then the newest messages sit in logs node2 never gets: the kill is lossy.
    node_post(site.ports.node2_admin, "/api/copy/SG1/suspend");
    let tail = common::message_ids("ccr-tail", 0..8);
    common::send_to_alice(site.ports.hub1, &tail[..4], 300);
    common::send_to_alice(site.ports.hub2, &tail[4..], 300);
    let mut all = all;
    all.extend(tail.iter().cloned());
    common::wait_alice_exactly(&site, &all, WAIT);
    procs[0].take().expect("node1").kill9();
    let started = Instant::now();
    let after = wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failover took {:?}",
        started.elapsed()
    );
    assert_eq!(after["passive_node"], "node1", "{after:#}");
    common::wait_alice_exactly(&site, &all, WAIT);
    wait_no_outstanding(&site);
    let log = procs[1].as_ref().expect("node2").log();
    assert!(
        log.contains("lossy failover"),
        "the failover must have lost logs for this test: {log}"
    );
}

#[test]
fn a_hub_down_during_failover_stays_outstanding_until_it_returns() {
    let _turn = one_at_a_time();
    let site = site("GoodAvailability");
    let mut procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let first = common::message_ids("early", 0..60);
    common::send_to_alice(site.ports.hub1, &first, 300);
    common::wait_alice_exactly(&site, &first, WAIT);
    wait_copied_up(&site);
    node_post(site.ports.node2_admin, "/api/copy/SG1/suspend");
    // The last messages go through hub2 only and never reach node2: only hub2's dumpster has them.
    let last = common::message_ids("late", 0..5);
    common::send_to_alice(site.ports.hub2, &last, 300);
    let mut all = first.clone();
    all.extend(last.iter().cloned());
    common::wait_alice_exactly(&site, &all, WAIT);
    procs[3].take().expect("hub2").kill9();
    procs[0].take().expect("node1").kill9();
    wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    let start = Instant::now();
    loop {
        let out = outstanding(&site);
        if out.iter().any(|o| o["hub"] == "hub2") && !out.iter().any(|o| o["hub"] == "hub1") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "hub2 never listed as outstanding alone: {out:?}\nnode2 log:\n{}",
            procs[1].as_ref().expect("node2").log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = site.mailbox_ids("alice@example.test");
    assert!(
        last.iter().any(|l| !listed.contains(l)),
        "the open log's messages were lost before hub2 returns"
    );
    let _hub2 = site.start(&["hub", "--name", "hub2"]);
    common::wait_alice_exactly(&site, &all, WAIT);
    wait_no_outstanding(&site);
}

/// The SG2 entry of a `status`, `stats` or `health` document's storage-group list.
fn sg2(list: &Value) -> Value {
    list.as_array()
        .and_then(|a| {
            a.iter()
                .find(|g| g["name"] == "SG2" || g["storage_group"] == "SG2")
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// A hub that answers a resubmission request with an error (here: its site file lacks SG2, so it
/// answers 404) is not a silent outstanding entry: `stats` lists it as refused, `status` shows the
/// error under the storage group, and `health` FAILs naming the hub and its answer. Once the hub is
/// fixed, the node's next ask is served and all of it clears by itself.
#[test]
fn a_hub_that_refuses_a_resubmission_request_fails_health_until_it_accepts() {
    let _turn = one_at_a_time();
    let site = site("GoodAvailability");
    let text = std::fs::read_to_string(site.config()).expect("config");
    let without_sg2 = site.dir.path().join("hub2-without-sg2.toml");
    let sg2_block = "[[cms.storage_group]]\nname = \"SG2\"\nmailboxes = [\"carol@example.test\"]\n";
    assert!(text.contains(sg2_block), "{text}");
    std::fs::write(&without_sg2, text.replace(sg2_block, "")).expect("write config");
    let mut procs = [
        Some(site.start(&["node", "--name", "node1"])),
        Some(site.start(&["node", "--name", "node2"])),
        Some(site.start(&["hub", "--name", "hub1"])),
        Some(site.start_with(&without_sg2, &["hub", "--name", "hub2"])),
    ];
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let all = common::message_ids("refused", 0..20);
    common::send_to_alice(site.ports.hub1, &all, 300);
    common::wait_alice_exactly(&site, &all, WAIT);
    wait_copied_up(&site);
    procs[0].take().expect("node1").kill9();
    let v = wait_status(&site, WAIT, "hub2's refusal under SG2", |v| {
        sg2(&v["storage_groups"])["resubmission_errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["hub"] == "hub2"))
    });
    let errors = sg2(&v["storage_groups"])["resubmission_errors"].clone();
    assert_eq!(
        errors.as_array().map(Vec::len),
        Some(1),
        "only hub2 refuses: {v:#}"
    );
    let error = errors[0]["error"].as_str().expect("error");
    assert!(error.starts_with("404") && error.contains("SG2"), "{error}");
    assert_eq!(errors[0]["node"], "node2", "{errors}");

    let (code, health) = site.cli_json(&["health"]);
    assert_eq!(code, 1, "a refused request fails health: {health:#}");
    let lines: Vec<&Value> = health
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["check"] == "DumpsterResubmission" && c["result"] == "FAIL")
        .collect();
    assert_eq!(lines.len(), 1, "{health:#}");
    let detail = lines[0]["detail"].as_str().expect("detail");
    assert!(
        detail.contains("hub2") && detail.contains("404"),
        "{detail}"
    );

    let (code, stats) = site.cli_json(&["stats"]);
    assert_eq!(code, 0, "{stats}");
    let stats = sg2(&stats);
    let hubs = |key: &str| -> Vec<Value> {
        stats[key]
            .as_array()
            .map(|a| a.iter().map(|r| r["hub"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(hubs("refused_dumpster_requests"), ["hub2"], "{stats:#}");
    assert!(
        !hubs("outstanding_dumpster_requests").contains(&Value::from("hub2")),
        "a refused request is not listed as outstanding: {stats:#}"
    );

    // Fixed: hub2 with the whole site file. The node's next ask is served.
    procs[3].take().expect("hub2").kill9();
    procs[3] = Some(site.start(&["hub", "--name", "hub2"]));
    wait_no_outstanding(&site);
    let v = wait_status(&site, WAIT, "the refusal cleared", |v| {
        sg2(&v["storage_groups"])["resubmission_errors"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    let (code, stats) = site.cli_json(&["stats", "--storage-group", "SG2"]);
    assert_eq!(code, 0, "{stats}");
    assert_eq!(
        stats["refused_dumpster_requests"],
        serde_json::json!([]),
        "{stats:#}"
    );
    let (_, health) = site.cli_json(&["health"]);
    assert!(
        health
            .as_array()
            .expect("checks")
            .iter()
            .filter(|c| c["check"] == "DumpsterResubmission")
            .all(|c| c["result"] == "PASS"),
        "{health:#}\n{v:#}"
    );
}

#[test]
fn the_old_active_returns_as_passive_and_catches_up() {
    let _turn = one_at_a_time();
    let site = site("BestAvailability");
    let mut procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let before = common::message_ids("before", 0..40);
    common::send_to_alice(site.ports.hub1, &before, 300);
    common::wait_alice_exactly(&site, &before, WAIT);
    // Within the dial: a kill right after a burst can leave more logs uncopied than
    // BestAvailability allows, and then node2 rightly stays dismounted.
    wait_copied_up(&site);
    procs[0].take().expect("node1").kill9();
    wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    let after = common::message_ids("after", 0..40);
    common::send_to_alice(site.ports.hub2, &after, 300);
    let mut all = before.clone();
    all.extend(after.iter().cloned());
    common::wait_alice_exactly(&site, &all, WAIT);
    let _node1 = site.start(&["node", "--name", "node1"]);
    let v = wait_status(&site, WAIT, "node1 passive and healthy", |v| {
        let sg = &v["storage_groups"][0];
        active_is(v, "node2")
            && v["passive_node"] == "node1"
            && sg["summary_copy_status"] == "Healthy"
            // Only closed logs ship: the active's open generation is the one log still queued.
            && sg["copy_queue_length"].as_u64().is_some_and(|q| q <= 1)
    });
    assert_eq!(v["quorum"], "Healthy", "{v:#}");
    wait_no_outstanding(&site);
    // A full reseed of node1's copy (Update-StorageGroupCopy): everything dropped and copied
    // again.
    let (code, out) = site.cli_json(&["copy", "update", "--cms", "cms1", "--storage-group", "SG1"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out["node"], "node1",
        "the copy is on the passive node: {out}"
    );
    wait_copied_up(&site);
    // Its copy matches the active's: move back (lossless) and list the mailbox from node1.
    let (code, out) = site.cli_json(&["move", "--cms", "cms1", "--target", "node1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out["millis"].as_u64().expect("millis") < 5_000, "{out}");
    wait_status(&site, WAIT, "node1 active again", |v| active_is(v, "node1"));
    common::wait_alice_exactly(&site, &all, WAIT);
    assert!(
        outstanding(&site).is_empty(),
        "a scheduled move needs no resubmission"
    );
}

/// POSTs to a node's admin API (copy suspend/resume).
fn node_post(port: u16, path: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import urllib.request,sys;r=urllib.request.Request(sys.argv[1],method='POST',headers={'Authorization':'Bearer test-token'});print(urllib.request.urlopen(r).status)",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until node2 has copied every closed log (so a later suspension freezes a known point).
fn wait_copied_up(site: &TestSite) {
    wait_status(site, WAIT, "node2 caught up", |v| {
        let sg = &v["storage_groups"][0];
        sg["summary_copy_status"] == "Healthy"
            && sg["copy_queue_length"].as_u64().is_some_and(|q| q <= 1)
    });
}

fn signal(p: &Proc, sig: &str) {
    let pid = p.child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("kill")
        .success());
}

#[test]
fn cut_off_nodes_never_make_two_actives_and_a_lost_witness_only_warns() {
    let _turn = one_at_a_time();
    let site = site("GoodAvailability");
    let procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let node1 = procs[0].as_ref().expect("node1");
    let node2 = procs[1].as_ref().expect("node2");

    // node2 frozen: no heartbeats either way; node1 keeps the witness and stays the only active.
    signal(node2, "-STOP");
    std::thread::sleep(Duration::from_secs(4)); // longer than a failover takes: nothing must change
    let v = status(&site);
    assert!(active_is(&v, "node1"), "{v:#}");
    signal(node2, "-CONT");
    wait_status(&site, WAIT, "node2 passive again", |v| {
        active_is(v, "node1")
            && v["nodes"].as_array().is_some_and(|n| n.len() == 2)
            && v["quorum"] == "Healthy"
    });

    // node1 frozen: node2 takes over; node1, resumed, must not serve.
    signal(node1, "-STOP");
    wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    signal(node1, "-CONT");
    let v = wait_status(&site, WAIT, "both answering", |v| {
        v["nodes"].as_array().is_some_and(|n| n.len() == 2)
    });
    let mounted: Vec<&Value> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["mounted"] == true)
        .collect();
    assert_eq!(mounted.len(), 1, "exactly one node takes deliveries: {v:#}");
    assert_eq!(mounted[0]["node"], "node2");

    // The witness share disappears while both nodes are up: no failover, health WARNs.
    let witness = site.data().join("witness");
    let moved = site.data().join("witness-away");
    std::fs::rename(&witness, &moved).expect("take the witness away");
    let v = wait_status(&site, WAIT, "witness unavailable", |v| {
        v["witness"] == "Unavailable"
    });
    assert!(active_is(&v, "node2"), "{v:#}");
    let out = Command::new(common::bin())
        .args(["health", "--config"])
        .arg(site.config())
        .output()
        .expect("health");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("WARN") && l.contains("FileShareWitness")),
        "{text}"
    );
    assert!(active_is(&status(&site), "node2"));
    std::fs::rename(&moved, &witness).expect("witness back");
}

#[test]
fn corrupt_log_is_refused_a_lossier_failover_than_the_dial_does_not_mount_and_restore_recovers() {
    let _turn = one_at_a_time();
    let site = site("Lossless");
    let mut procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let copy = |args: &[&str]| {
        let mut all = vec!["copy"];
        all.extend(args);
        all.extend(["--cms", "cms1", "--storage-group", "SG1"]);
        site.cli_json(&all)
    };
    let (code, out) = copy(&["suspend", "--comment", "hold the copy for the test"]);
    assert_eq!((code, out["node"].as_str()), (0, Some("node2")), "{out}");
    assert_eq!(out["status"]["summary_copy_status"], "Suspended", "{out}");
    let (_, v) = site.cli_json(&["status", "--cms", "cms1"]);
    let note = &v["storage_groups"][0]["copy_command"];
    assert_eq!(
        (
            note["command"].as_str(),
            note["comment"].as_str(),
            note["suspended"].as_bool()
        ),
        (
            Some("suspend"),
            Some("hold the copy for the test"),
            Some(true)
        ),
        "status shows the command and its comment: {v:#}"
    );
    // Restore is for a lost active node: refused while node1 serves.
    let (code, out) = copy(&["restore"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.to_string().contains("hubrelay move"), "{out}");
    let msgs = common::message_ids("dial", 0..60);
    common::send_to_alice(site.ports.hub1, &msgs, 300);
    common::wait_alice_exactly(&site, &msgs, WAIT);
    // Corrupt the newest closed log on the active before node2 copies it.
    let logs = site.data().join("node1").join("logs").join("SG1");
    let mut closed: Vec<_> = std::fs::read_dir(&logs)
        .expect("logs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    closed.sort();
    let victim = closed.first().expect("a closed log").clone();
    let mut bytes = std::fs::read(&victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&victim, bytes).expect("corrupt");
    let (code, out) = copy(&["resume"]);
    assert_eq!(code, 0, "{out}");
    let v = wait_status(&site, WAIT, "copy failed", |v| {
        v["storage_groups"][0]["summary_copy_status"] == "Failed"
    });
    let err = v["storage_groups"][0]["error"].as_str().unwrap_or("");
    assert!(!err.is_empty(), "the refusal is reported: {v:#}");
    assert_eq!(
        v["storage_groups"][0]["last_log_copied"].as_u64(),
        Some(0),
        "nothing past the corrupt log: {v:#}"
    );

    // Lossless dial with logs missing: node2 must not mount, and says why.
    procs[0].take().expect("node1").kill9();
    let v = wait_status(&site, WAIT, "node2 dismounted", |v| {
        v["dismounted_reason"]
            .as_str()
            .is_some_and(|r| r.contains("lost"))
    });
    assert!(v["active_node"].is_null(), "{v:#}");
    let out = Command::new(common::bin())
        .args(["health", "--config"])
        .arg(site.config())
        .output()
        .expect("health");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("DatabasesDismountedAfterFailover")),
        "{text}"
    );
    // A reseed now would delete node2's copy with nothing to copy back from.
    let (code, out) = copy(&["update"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.to_string().contains("reseeding would delete"), "{out}");
    // The administrator accepts the loss (Restore-StorageGroupCopy): node2 mounts beyond the
    // dial, and the hubs' dumpsters bring back every message, once.
    let (code, out) = copy(&["restore", "--comment", "node1 is gone for good"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (out["node"].as_str(), out["role"].as_str()),
        (Some("node2"), Some("Active")),
        "{out}"
    );
    wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    common::wait_alice_exactly(&site, &msgs, WAIT);
    wait_no_outstanding(&site);
    let (_, v) = site.cli_json(&["status", "--cms", "cms1"]);
    let note = &v["storage_groups"][0]["copy_command"];
    assert_eq!(
        (
            note["command"].as_str(),
            note["node"].as_str(),
            note["suspended"].as_bool()
        ),
        (Some("restore"), Some("node2"), Some(false)),
        "{v:#}"
    );
}

#[test]
fn demo_reports_a_lossy_failover_fully_recovered() {
    let _turn = one_at_a_time();
    let out = Command::new(common::bin())
        .args(["demo", "--json"])
        .output()
        .expect("demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).expect("one JSON document");
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["lost_before_recovery"].as_u64().expect("count") > 0,
        "the failover must lose mail first: {v:#}"
    );
    assert_eq!(v["recovered"], v["lost_before_recovery"], "{v:#}");
    assert_eq!(v["duplicates"], 0, "{v:#}");
    assert!(
        v["failover_seconds"].as_f64().expect("seconds") < 10.0,
        "{v:#}"
    );
}

/// Heartbeats, lease renewal and the admin API never wait behind a disk write: with every log write
/// of the active taking 3 s (longer than the peer timeout) for 10 s, deliveries slow down but no
/// failover happens, and everything sent arrives once.
#[cfg(feature = "fault-injection")]
#[test]
fn a_slow_disk_delays_deliveries_but_never_heartbeats() {
    let _turn = one_at_a_time();
    let site = site("GoodAvailability");
    let _procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let mut all = common::message_ids("before-slow", 0..5);
    common::send_to_alice(site.ports.hub1, &all, 300);
    common::wait_alice_exactly(&site, &all, WAIT);
    let epoch = |v: &Value, node: &str| {
        v["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["node"] == node))
            .and_then(|n| n["epoch"].as_u64())
    };
    let before = status(&site);
    let switch = site.data().join("node1/logs/SLOW-WRITES");
    std::fs::write(&switch, b"").expect("slow-disk switch");
    let slow = common::message_ids("slow", 0..6);
    common::send_to_alice(site.ports.hub1, &slow, 300);
    // Sampled over a period on purpose: the property is that nothing happens.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let v = status(&site);
        assert!(
            active_is(&v, "node1"),
            "a slow disk caused a failover: {v:#}"
        );
        assert_eq!(epoch(&v, "node1"), epoch(&before, "node1"), "{v:#}");
        assert_eq!(v["quorum"], "Healthy", "heartbeats stalled: {v:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::fs::remove_file(&switch).expect("remove switch");
    all.extend(slow);
    common::wait_alice_exactly(&site, &all, WAIT);
}

/// A bind mount for one test (root, as CI runs); unmounted when dropped.
struct Bind(std::path::PathBuf);

impl Bind {
    fn mount(from: &std::path::Path, on: &std::path::Path) -> Bind {
        std::fs::create_dir_all(on).expect("mount point");
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(on)
            .status()
            .expect("run mount")
            .success();
        assert!(
            ok,
            "this test bind-mounts the witness share twice, which needs root (CI runs as root)"
        );
        Bind(on.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The lease as a node at `dir` reads it: (holder, version).
fn lease_at(dir: &std::path::Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(dir.join("cms1/witness.lease")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some((v["holder"].as_str()?.to_string(), v["version"].as_u64()?))
}

#[test]
fn a_witness_share_mounted_at_a_different_path_on_each_node_fails_over() {
    let _turn = one_at_a_time();
    let site = site("GoodAvailability");
    // Each node has a data directory of its own, as on its own host; `witness = "witness/cms1"`
    // is relative to it, so each reaches the one share through its own mount point.
    let share = site.data().join("share");
    std::fs::create_dir_all(&share).expect("share");
    let (root1, root2) = (site.data().join("host1"), site.data().join("host2"));
    let _m1 = Bind::mount(&share, &root1.join("witness"));
    let _m2 = Bind::mount(&share, &root2.join("witness"));
    let node1 = Proc::start(&site.config(), &root1, &["node", "--name", "node1"]);
    let _node2 = Proc::start(&site.config(), &root2, &["node", "--name", "node2"]);
    let _h1 = site.start(&["hub", "--name", "hub1"]);
    let _h2 = site.start(&["hub", "--name", "hub2"]);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    // One lease, seen the same through both mount points.
    let (w1, w2) = (root1.join("witness"), root2.join("witness"));
    let seen = common::wait_for(WAIT, "node1's lease on the share", || {
        lease_at(&w1).filter(|(holder, _)| holder == "node1")
    });
    assert_eq!(lease_at(&w2).map(|(h, _)| h), Some(seen.0));
    let before = common::message_ids("share", 0..60);
    common::send_to_alice(site.ports.hub1, &before[..30], 300);
    common::send_to_alice(site.ports.hub2, &before[30..], 300);
    common::wait_alice_exactly(&site, &before, WAIT);
    wait_copied_up(&site);
    node1.kill9();
    let started = Instant::now();
    wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failover took {:?}",
        started.elapsed()
    );
    // node2 took the lease through its own mount point; node1's shows it.
    common::wait_for(WAIT, "node2's lease seen through node1's mount", || {
        lease_at(&w1).filter(|(holder, _)| holder == "node2")
    });
    let after = common::message_ids("share-after", 0..30);
    common::send_to_alice(site.ports.hub1, &after, 300);
    let mut all = before;
    all.extend(after);
    common::wait_alice_exactly(&site, &all, WAIT);
}

/// A 250 held up past a failover (the active paused between its last authority check and the
/// reply, here by the fault-injection switch `HOLD-ACKS` and SIGSTOP) names an epoch the hub has
/// meanwhile seen superseded by the new active's resubmission request: the hub delivers the
/// message again, so it is not left in the old active's discarded history alone.
#[cfg(feature = "fault-injection")]
#[test]
fn a_late_acknowledgement_from_a_superseded_epoch_is_delivered_again() {
    let _turn = one_at_a_time();
    let site = site("BestAvailability");
    let procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    let before = common::message_ids("before-hold", 0..20);
    common::send_to_alice(site.ports.hub1, &before, 200);
    common::wait_alice_exactly(&site, &before, WAIT);
    wait_copied_up(&site);
    // node2's copy stops, so the held message is in no log node2 gets.
    node_post(site.ports.node2_admin, "/api/copy/SG1/suspend");
    let hold = site.data().join("node1").join("logs").join("HOLD-ACKS");
    std::fs::write(&hold, b"").expect("the switch");
    let held = common::message_ids("held", 0..1);
    common::send_to_alice(site.ports.hub1, &held, 200);
    let node1 = procs[0].as_ref().expect("node1");
    common::wait_for(WAIT, "node1 holding its 250", || {
        node1
            .log()
            .contains("holding the acknowledgement")
            .then_some(())
    });
    signal(node1, "-STOP");
    wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    wait_no_outstanding(&site);
    std::fs::remove_file(&hold).expect("switch off");
    signal(node1, "-CONT");
    let mut all = before;
    all.extend(held);
    common::wait_alice_exactly(&site, &all, WAIT);
    let hub1 = procs[2].as_ref().expect("hub1");
    common::wait_for(WAIT, "hub1 to say it delivered the late one again", || {
        hub1.log()
            .contains("acknowledged in an epoch a newer one had superseded")
            .then_some(())
    });
}
