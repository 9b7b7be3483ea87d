//! `hubrelay bench` end to end: it starts its own private site (four processes), sends through
//! both hubs with its load generator, and its JSON report must account for every message.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn a_short_bench_delivers_every_message_once_and_reports_every_figure() {
    let start = Instant::now();
    let child = Command::new(common::bin())
        .args(["bench", "--messages", "200", "--concurrency", "4", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hubrelay bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("hubrelay bench");
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}: {text}{stderr}",
        out.status
    );
    assert!(
        start.elapsed() < Duration::from_secs(50),
        "a 200-message bench took {:?}",
        start.elapsed()
    );
    let v: Value = serde_json::from_str(&text).expect("one JSON document");

    assert_eq!(v["messages"], 200, "{v:#}");
    assert_eq!(v["concurrency"], 4, "{v:#}");
    assert_eq!(v["size"], 4096, "the default size is 4KiB: {v:#}");
    assert_eq!(v["accepted"], 200, "{v:#}");
    assert_eq!(v["delivered"], 200, "{v:#}");
    assert_eq!(v["failed"], 0, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["duplicates"], 0, "{v:#}");
    assert_eq!(v["ok"], true, "{v:#}");

    let positive = |key: &str| {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key}: {v:#}"));
        assert!(x > 0.0, "{key} = {x}: {v:#}");
        x
    };
    positive("accepted_per_second");
    positive("delivered_per_second");
    // The last message is stored after a hub accepted it (both figures are to the ms).
    assert!(
        positive("deliver_seconds") + 0.005 >= positive("accept_seconds"),
        "{v:#}"
    );
    for key in ["accept_latency_ms", "end_to_end_latency_ms"] {
        let l = &v[key];
        let p50 = l["p50"]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}.p50: {v:#}"));
        let p99 = l["p99"]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}.p99: {v:#}"));
        let max = l["max"]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}.max: {v:#}"));
        assert!(p50 >= 0.0 && p99 >= p50 && max >= p99, "{key}: {v:#}");
    }
    assert!(
        v["accept_latency_ms"]["p50"].as_f64() > Some(0.0),
        "accepting a message takes some time: {v:#}"
    );

    let rss = v["peak_rss_bytes"].as_object().expect("peak_rss_bytes");
    let mut roles: Vec<&String> = rss.keys().collect();
    roles.sort();
    assert_eq!(roles, ["hub1", "hub2", "node1", "node2"], "{v:#}");
    for (role, bytes) in rss {
        let b = bytes.as_u64().unwrap_or_else(|| panic!("{role}: {v:#}"));
        assert!(b > 1 << 20, "{role} peak RSS {b} bytes: {v:#}");
    }

    let groups = v["replication"].as_array().expect("replication");
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["storage_group"].as_str().expect("storage_group"))
        .collect();
    assert_eq!(names, ["SG1", "SG2"], "{v:#}");
    for g in groups {
        assert_eq!(g["active_node"], "node1", "{v:#}");
        assert_eq!(g["passive_node"], "node2", "{v:#}");
        assert!(g["last_log_generated"].as_u64() >= Some(1), "{v:#}");
        assert!(g["copy_queue_length"].as_u64().is_some(), "{v:#}");
    }

    // The README documents every field of the report.
    let readme = include_str!("../README.md");
    let section = readme
        .split("### Sizing with `hubrelay bench`")
        .nth(1)
        .expect("README has the bench section");
    let undocumented: Vec<&String> = v
        .as_object()
        .expect("an object")
        .keys()
        .chain(groups[0].as_object().expect("an object").keys())
        .filter(|k| !section.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "fields missing from the README: {undocumented:?}"
    );

    let site = std::env::temp_dir().join(format!("hubrelay-bench-{pid}"));
    assert!(
        !site.exists(),
        "the private site was left in {}",
        site.display()
    );
}

#[test]
fn bad_options_are_usage_errors() {
    for args in [
        &["bench", "--concurrency", "0"][..],
        &["bench", "--messages", "0"],
        &["bench", "--recipients", "101"],
        &["bench", "--size", "lots"],
        &["bench", "--size", "1GiB"],
    ] {
        let out = Command::new(common::bin())
            .args(args)
            .output()
            .expect("run hubrelay");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
