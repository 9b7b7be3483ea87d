//! The etcd witness against a real etcd server (Debian's etcd-server, one member on free loopback
//! ports): the lease itself (one holder, freed only by etcd's own expiry or a release, the note
//! board kept), CCR failover after `kill -9` of the active with etcd as the witness, and etcd
//! killed and restarted under load while both nodes see each other (nothing changes: quorum by the
//! peer). Partitions of a node from etcd run in the namespace campaign (`campaign.py --netns
//! --witness etcd`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{active_is, cms_site_with_witness, one_at_a_time, start_all, wait_status};
use common::etcd::Etcd;
use common::load::load;
use common::TestSite;
use hubrelay::cluster::witness::{EtcdWitness, Witness};
use hubrelay::config::EtcdConfig;

const WAIT: Duration = Duration::from_secs(30);
/// The nodes' lease duration (the failover machine's default).
const LEASE_MS: u64 = 3_000;

fn witness(etcd: &Etcd, node: &str) -> Witness {
    let config = EtcdConfig {
        endpoints: vec![
            // A dead endpoint first: every operation must get past it to the live one.
            format!("http://127.0.0.1:{}", common::free_port()),
            format!("http://127.0.0.1:{}", etcd.port),
        ],
        prefix: "/hubrelay/test".into(),
        tls_ca: None,
        tls_client: None,
        user: None,
        password_file: None,
    };
    Witness::Etcd(EtcdWitness::new(&config, node).expect("witness"))
}

fn now_ms() -> u64 {
    hubrelay::clock::mono_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_freed_only_by_etcds_expiry_or_a_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path());
    let a = witness(&etcd, "node1");
    let b = witness(&etcd, "node2");
    let generated: BTreeMap<String, u64> = [("SG1".to_string(), 12)].into();

    let held = a
        .acquire(LEASE_MS, 3, Some(generated.clone()))
        .await
        .expect("a takes");
    assert_eq!(held.lease.holder, "node1");
    let renewed = a
        .acquire(LEASE_MS, 3, Some(generated.clone()))
        .await
        .expect("a renews");
    assert_eq!(renewed.lease.holder, "node1");
    assert!(renewed.until_ms >= held.until_ms);

    // b sees a's lease, with a's note, and cannot take it while a renews.
    let seen = b
        .observe(LEASE_MS)
        .await
        .expect("observe")
        .expect("a lease");
    assert_eq!(seen.lease.holder, "node1");
    assert_eq!(seen.lease.epoch, 3);
    assert_eq!(seen.lease.last_log_generated, generated);
    let refused = b.acquire(LEASE_MS, 1, None).await.expect("b asks");
    assert_eq!(refused.lease.holder, "node1");

    // a stops renewing (a crash). b takes the lease only once etcd has expired a's key, which is
    // never before a stops counting on it: both read the same monotonic clock here.
    let a_counts_until = renewed.until_ms;
    let taken_at = loop {
        let s = b.acquire(LEASE_MS, 1, None).await.expect("b asks");
        if s.lease.holder == "node2" {
            break now_ms();
        }
        assert!(
            now_ms() < a_counts_until + 10_000,
            "etcd never expired node1's key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        taken_at >= a_counts_until,
        "node2 took the lease {} ms before node1 stopped counting on it",
        a_counts_until - taken_at
    );
    // The note survives the holder: the highest epoch (3, not b's 1) and node1's generations.
    let mine = b.acquire(LEASE_MS, 1, None).await.expect("b renews");
    assert_eq!(mine.lease.epoch, 3);
    assert_eq!(mine.lease.last_log_generated, generated);

    // A release frees it at once.
    b.release().await.expect("release");
    let started = Instant::now();
    let back = a.acquire(LEASE_MS, 4, None).await.expect("a takes back");
    assert_eq!(back.lease.holder, "node1");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(back.lease.epoch, 4);

    // etcd gone: both say so, and neither believes it holds anything.
    drop(etcd);
    assert!(a.acquire(LEASE_MS, 4, None).await.is_err());
    assert!(b.observe(LEASE_MS).await.is_err());
}

/// The etcd witness site: logs close at 4 KiB, the dial allows a lossy failover.
fn etcd_site(etcd: &Etcd) -> TestSite {
    cms_site_with_witness(
        &etcd.witness("hubrelay/cms1"),
        "auto_database_mount_dial = \"BestAvailability\"",
    )
}

#[test]
fn kill9_of_the_active_fails_over_through_the_etcd_witness_under_load() {
    let _turn = one_at_a_time();
    let etcd_dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(etcd_dir.path());
    let site = etcd_site(&etcd);
    let mut procs = start_all(&site);
    let v = wait_status(&site, WAIT, "node1 active", |v| active_is(v, "node1"));
    assert_eq!(v["witness"], "Online", "{v:#}");
    let text = std::process::Command::new(common::bin())
        .args(["status", "--config"])
        .arg(site.config())
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("EtcdWitness: Online"), "{text}");

    let load = load(&site, "kill9", 3_000);
    load.wait_acked(30);
    procs[0].take().expect("node1").kill9();
    let started = Instant::now();
    let after = wait_status(&site, WAIT, "node2 active", |v| active_is(v, "node2"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    assert_eq!(after["witness"], "Online", "{after:#}");
    load.wait_acked(30);
    let acked = load.finish(&site);
    eprintln!(
        "failover through etcd in {:.1} s; {acked} acknowledged, each once",
        took.as_secs_f64()
    );
}

#[test]
fn etcd_killed_and_restarted_under_load_changes_nothing_while_the_nodes_see_each_other() {
    let _turn = one_at_a_time();
    let etcd_dir = tempfile::tempdir().expect("tempdir");
    let mut etcd = Etcd::start(etcd_dir.path());
    let site = etcd_site(&etcd);
    let _procs = start_all(&site);
    wait_status(&site, WAIT, "node1 active, copy healthy", |v| {
        active_is(v, "node1") && v["quorum"] == "Healthy"
    });
    let load = load(&site, "etcd-down", 3_000);
    load.wait_acked(20);
    etcd.kill9();
    let v = wait_status(&site, WAIT, "witness unavailable", |v| {
        v["witness"] == "Unavailable"
    });
    assert!(active_is(&v, "node1"), "{v:#}");
    // Several lease durations without etcd: quorum by the peer keeps node1 active.
    std::thread::sleep(Duration::from_millis(4 * LEASE_MS));
    let v = wait_status(&site, WAIT, "node1 still active", |v| {
        v["active_node"].is_string()
    });
    assert!(
        active_is(&v, "node1"),
        "etcd's loss moved the databases: {v:#}"
    );
    let out = std::process::Command::new(common::bin())
        .args(["health", "--config"])
        .arg(site.config())
        .output()
        .expect("health");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("WARN") && l.contains("EtcdWitness")),
        "{text}"
    );
    etcd.restart();
    let v = wait_status(&site, WAIT, "witness online again", |v| {
        v["witness"] == "Online"
    });
    assert!(active_is(&v, "node1"), "{v:#}");
    load.wait_acked(20);
    load.finish(&site);
    // Never a failover: node1's epoch is the one it mounted at first.
    let v = common::cluster::status(&site);
    let epochs: Vec<u64> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["mounted"] == true)
        .map(|n| n["epoch"].as_u64().expect("epoch"))
        .collect();
    assert_eq!(epochs, vec![1], "{v:#}");
}
