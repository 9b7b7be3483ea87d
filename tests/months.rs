//! Months, not minutes, with four separate processes: log generations behind every checkpoint are
//! deleted on both nodes, a copy left further behind than `max_log_backlog` is given up and says it
//! needs a reseed, and a reseed seeds the copy from a snapshot of the active's database (while
//! mail keeps coming) after which the copy holds exactly what the active holds.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{cms_site, one_at_a_time, start_all, wait_status};
use common::TestSite;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A site whose logs close at 4 KiB (a handful of messages each) with `cms_extra` lines.
fn site(cms_extra: &str) -> TestSite {
    cms_site(&format!(
        "auto_database_mount_dial = \"BestAvailability\"\n{cms_extra}"
    ))
}

fn sg1(v: &Value) -> &Value {
    &v["storage_groups"][0]
}

/// The closed generations in a node's SG1 log directory, and the first one it keeps.
fn generations(site: &TestSite, node: &str) -> (Vec<u64>, u64) {
    let dir = site.data().join(node).join("logs").join("SG1");
    let mut gens: Vec<u64> = std::fs::read_dir(&dir)
        .expect("log dir")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.strip_prefix("E00-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    gens.sort_unstable();
    let base = std::fs::read_to_string(dir.join("E00.base"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1);
    (gens, base)
}

fn health(site: &TestSite) -> (i32, String) {
    let out = Command::new(common::bin())
        .args(["health", "--config"])
        .arg(site.config())
        .output()
        .expect("health");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn node_post(port: u16, path: &str) {
    common::api_json(port, "POST", path, None);
}

/// The sum of a node's `/metrics` samples of `name` (every storage group).
fn node_metric(admin_port: u16, name: &str) -> u64 {
    let (status, text) = common::api(admin_port, "GET", "/metrics", Some("test-token"), None);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn logs_behind_every_checkpoint_go_and_a_reseed_seeds_from_a_snapshot_under_load() {
    let _turn = one_at_a_time();
    let site = site("log_tail = 2");
    let _procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active", |v| {
        v["active_node"] == "node1" && sg1(v)["summary_copy_status"] == "Healthy"
    });
    let first = common::message_ids("first", 0..400);
    common::send_to_alice(site.ports.hub1, &first, 600);
    common::wait_alice_exactly(&site, &first, WAIT);
    // Both nodes delete what is behind their checkpoints (and the copy's), keeping the tail.
    let start = Instant::now();
    let (active, passive) = loop {
        let (a, b) = (generations(&site, "node1"), generations(&site, "node2"));
        if a.1 > 20 && b.1 > 20 && a.0.len() <= 4 && b.0.len() <= 4 {
            break (a, b);
        }
        assert!(
            start.elapsed() < WAIT,
            "logs were not truncated: node1 {a:?}, node2 {b:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("after 400 messages: node1 keeps {active:?}, node2 keeps {passive:?}");
    assert!(
        node_metric(site.ports.node1_admin, "hubrelay_log_truncated_bytes_total") > 0,
        "the truncation is counted"
    );

    // A reseed of node2 from node1's snapshot while mail keeps coming through hub2.
    let during = common::message_ids("during", 0..150);
    let sender = {
        let during = during.clone();
        let port = site.ports.hub2;
        std::thread::spawn(move || common::send_to_alice(port, &during, 600))
    };
    let (code, out) = site.cli_json(&["copy", "update", "--cms", "cms1", "--storage-group", "SG1"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["node"], "node2", "{out}");
    let seeded = &out["seeded"];
    assert!(seeded["done"].as_bool() == Some(true), "{out}");
    assert!(
        seeded["records"].as_u64().is_some_and(|n| n >= 400),
        "the snapshot held the history the logs no longer do: {out}"
    );
    assert_eq!(out["status"]["summary_copy_status"], "Healthy", "{out}");
    sender.join().expect("sender");
    let mut all = first.clone();
    all.extend(during.iter().cloned());
    common::wait_alice_exactly(&site, &all, WAIT);
    wait_status(&site, WAIT, "node2 caught up", |v| {
        sg1(v)["summary_copy_status"] == "Healthy"
            && sg1(v)["copy_queue_length"].as_u64().is_some_and(|q| q <= 1)
    });
    // The reseeded copy holds exactly what node1 holds: move to it and list from it.
    let (code, out) = site.cli_json(&["move", "--cms", "cms1", "--target", "node2"]);
    assert_eq!(code, 0, "{out}");
    wait_status(&site, WAIT, "node2 active", |v| v["active_node"] == "node2");
    common::wait_alice_exactly(&site, &all, WAIT);
    let (_, stats) = site.cli_json(&["stats", "--storage-group", "SG1"]);
    assert_eq!(
        stats["outstanding_dumpster_requests"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "a lossless move needs no resubmission: {stats}"
    );
}

#[test]
fn a_copy_further_behind_than_max_log_backlog_needs_a_reseed_and_health_says_how() {
    let _turn = one_at_a_time();
    let site = site("log_tail = 1\nmax_log_backlog = \"16KiB\"");
    let _procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active, node2 healthy", |v| {
        v["active_node"] == "node1" && sg1(v)["summary_copy_status"] == "Healthy"
    });
    node_post(site.ports.node2_admin, "/api/copy/SG1/suspend");
    let msgs = common::message_ids("behind", 0..200);
    common::send_to_alice(site.ports.hub1, &msgs, 600);
    common::wait_alice_exactly(&site, &msgs, WAIT);
    // node1 stops keeping logs for the suspended copy once they pass the bound: its log
    // directory comes back near the bound (the tail, the open generation, 16 KiB for the copy).
    let dir = site.data().join("node1").join("logs").join("SG1");
    let start = Instant::now();
    while generations(&site, "node1").1 <= 2 || dir_bytes(&dir) > 64 * 1024 {
        assert!(
            start.elapsed() < WAIT,
            "node1 kept its logs for the copy: {:?}, {} bytes",
            generations(&site, "node1"),
            dir_bytes(&dir)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    node_post(site.ports.node2_admin, "/api/copy/SG1/resume");
    let v = wait_status(&site, WAIT, "node2 FailedAndSuspended", |v| {
        sg1(v)["summary_copy_status"] == "FailedAndSuspended"
    });
    assert!(
        sg1(&v)["error"]
            .as_str()
            .is_some_and(|e| e.contains("needs reseed")),
        "{v:#}"
    );
    let (code, text) = health(&site);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL")
            && l.contains("CopyFailed")
            && l.contains("hubrelay copy update --cms cms1 --storage-group SG1")),
        "{text}"
    );
    // The fix health names works, and the copy then holds every message once.
    let (code, out) = site.cli_json(&["copy", "update", "--cms", "cms1", "--storage-group", "SG1"]);
    assert_eq!(code, 0, "{out}");
    let (code, text) = health(&site);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("CopyFailed")),
        "{code} {text}"
    );
    let (code, out) = site.cli_json(&["move", "--cms", "cms1", "--target", "node2"]);
    assert_eq!(code, 0, "{out}");
    wait_status(&site, WAIT, "node2 active", |v| v["active_node"] == "node2");
    common::wait_alice_exactly(&site, &msgs, WAIT);
}
