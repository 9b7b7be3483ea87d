//! A disk that fills, under load, with four separate processes: each role's data directory on a
//! small tmpfs of its own that the test mounts (as root) and fills with a file. A role short of
//! `min_free_space` refuses new mail with 452 4.3.1 and takes it again by itself within seconds of
//! space coming back, also after the disk filled to the last byte and its store failed; an active
//! node hands its databases to the passive by a scheduled move (no resubmission), and its copy,
//! suspended while it is full, is Healthy again once there is room. Every message a client got 250
//! for is in its mailbox exactly once.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::one_at_a_time;
use common::{api, wait_for, Proc, Raw, Smtplib, TestSite};
use serde_json::Value;

/// The reserve of these sites, and the tmpfs each full role is given.
const RESERVE: &str = "16MiB";
const RESERVE_BYTES: u64 = 16 << 20;
const TMPFS_SIZE: &str = "64m";
/// How long a role may take to accept again once space is back (the bar).
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// A tmpfs mounted on a role's data directory for one test; unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        std::fs::create_dir_all(path).expect("data dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={TMPFS_SIZE}"),
                "hubrelay-test",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "these tests mount a small tmpfs to fill, which needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Free bytes, as the roles read them.
    fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.path).expect("statvfs");
        s.f_bavail * s.f_frsize
    }

    /// Fills the file system with one more file until at most `leave` bytes are free (0: until
    /// the write fails for want of space). Returns the file, to remove when space is to come back.
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self
            .path
            .join(format!("test-filler-{}", common::free_port()));
        let mut f = File::create(&path).expect("filler");
        let chunk = vec![0u8; 256 << 10];
        while self.free() > leave {
            let n = (self.free() - leave).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n])
                .and_then(|()| f.sync_all())
                .is_err()
            {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Messages sent one after another to alice through a hub until stopped (at most 3,000 or two
/// minutes), with what the client was told of each.
struct Load {
    stop: Arc<AtomicBool>,
    told: Arc<Mutex<BTreeMap<String, String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let told = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, t) = (stop.clone(), told.clone());
        let thread = std::thread::spawn(move || {
            let mut client = Smtplib::start();
            let started = Instant::now();
            for n in 0..3_000 {
                if s.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(120) {
                    return;
                }
                let mid = format!("<disk-{n}@client.test>");
                let msg = format!(
                    "From: bob@example.test\r\nTo: alice@example.test\r\nSubject: disk {n}\r\nMessage-ID: {mid}\r\n\r\n{}\r\n",
                    (0..25).map(|_| "x".repeat(76)).collect::<Vec<_>>().join("\r\n")
                );
                let outcome = client.send(port, "bob@example.test", &["alice@example.test"], &msg);
                t.lock().unwrap().insert(mid, outcome);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Load {
            stop,
            told,
            thread: Some(thread),
        }
    }

    /// Message-IDs the hub answered 250 for so far.
    fn acknowledged(&self) -> Vec<String> {
        let told = self.told.lock().unwrap();
        told.iter()
            .filter(|(_, o)| o.trim() == "refused {}")
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn refusals(&self) -> Vec<String> {
        let told = self.told.lock().unwrap();
        told.values()
            .filter(|o| o.trim() != "refused {}")
            .cloned()
            .collect()
    }

    /// Waits until `n` more messages than now are acknowledged; returns how long that took.
    fn wait_acknowledged(&self, more: usize, limit: Duration, what: &str) -> Duration {
        let start = Instant::now();
        let want = self.acknowledged().len() + more;
        wait_for(limit, what, || {
            (self.acknowledged().len() >= want).then_some(())
        });
        start.elapsed()
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        self.acknowledged()
    }
}

/// A site with `min_free_space = reserve` whose `role` has a tmpfs of its own, its four roles
/// running (node1 active) and load through hub1 under way. Dropped in field order: the processes
/// stop before their file system goes.
struct Run {
    /// node1, node2, hub1, hub2.
    procs: Vec<Proc>,
    load: Load,
    disk: Tmpfs,
    site: TestSite,
    /// Held until everything above has stopped.
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Run {
    fn start(reserve: &str, role: &str) -> Run {
        let turn = one_at_a_time();
        let site = TestSite::new(&format!("min_free_space = \"{reserve}\""), &[]);
        let disk = Tmpfs::mount(&site.data().join(role));
        let procs = ["node1", "node2"]
            .map(|n| site.start(&["node", "--name", n]))
            .into_iter()
            .chain(["hub1", "hub2"].map(|h| site.start(&["hub", "--name", h])))
            .collect();
        wait_status(&site, Duration::from_secs(30), "node1 active", |v| {
            v["active_node"] == "node1"
        });
        let load = Load::start(site.ports.hub1);
        load.wait_acknowledged(20, Duration::from_secs(30), "the first messages");
        Run {
            procs,
            load,
            disk,
            site,
            _turn: turn,
        }
    }
}

fn status(site: &TestSite) -> Value {
    site.cli_json(&["status", "--cms", "cms1"]).1
}

fn wait_status(site: &TestSite, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) {
    wait_for(limit, what, || pred(&status(site)).then_some(()));
}

/// `hubrelay health --json`'s DiskSpace lines.
fn disk_checks(site: &TestSite) -> Vec<Value> {
    let (_, v) = site.cli_json(&["health"]);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["check"] == "DiskSpace")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// MAIL FROM on a fresh session to `port`: the reply line.
fn mail_from(port: u16) -> String {
    let mut s = Raw::connect(port);
    s.cmd("EHLO client.test");
    s.cmd("MAIL FROM:<bob@example.test>")
}

/// Every acknowledged message in alice's mailbox exactly once, nothing listed twice.
fn assert_exactly_once(site: &TestSite, acknowledged: &[String]) {
    let got = site.wait_mailbox("alice@example.test", Duration::from_secs(60), |got| {
        acknowledged.iter().all(|m| got.contains(m))
    });
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &got {
        *count.entry(id.as_str()).or_default() += 1;
    }
    let doubled: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    for id in acknowledged {
        assert_eq!(count.get(id.as_str()), Some(&1), "{id} not stored once");
    }
}

#[test]
fn a_full_hub_refuses_with_452_and_takes_mail_again_by_itself() {
    let run = Run::start(RESERVE, "hub1");

    // Short of the reserve: 452 at MAIL, and every report names the directory.
    let below = run.disk.fill(RESERVE_BYTES / 2);
    let reply = wait_for(Duration::from_secs(5), "452 at MAIL FROM", || {
        let r = mail_from(run.site.ports.hub1);
        r.starts_with("452").then_some(r)
    });
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    let path = run.disk.path.display().to_string();
    let readings = common::api_json(run.site.ports.hub1_admin, "GET", "/api/disk", None);
    assert!(
        readings[0]["path"] == path.as_str()
            && readings[0]["free_bytes"].as_u64() < readings[0]["reserve_bytes"].as_u64(),
        "{readings}"
    );
    let checks = disk_checks(&run.site);
    assert!(
        checks.iter().any(|c| c["result"] == "FAIL"
            && c["detail"]
                .as_str()
                .is_some_and(|d| d.contains("hub1") && d.contains(&path))),
        "{checks:?}"
    );
    let (_, metrics) = api(
        run.site.ports.hub1_admin,
        "GET",
        "/metrics",
        Some(common::TOKEN),
        None,
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("hubrelay_disk_full{")
            && l.contains(&path)
            && l.ends_with(" 1")),
        "{metrics}"
    );

    std::fs::remove_file(&below).expect("free space");
    let took = run
        .load
        .wait_acknowledged(1, BACK_WITHIN, "a 250 within 10 s of space coming back");
    eprintln!("hub1 accepted again {took:?} after space came back");
    run.load
        .wait_acknowledged(20, Duration::from_secs(30), "more messages");
    let refused = run.load.refusals();
    let acknowledged = run.load.finish();
    assert!(
        refused.iter().any(|r| r.contains("452")),
        "the client never saw a 452: {refused:?}"
    );
    common::wait_queue_empty(run.site.ports.hub1_admin);
    assert_exactly_once(&run.site, &acknowledged);
}

#[test]
fn a_full_active_node_hands_over_by_a_move_and_its_copy_comes_back_healthy() {
    let run = Run::start(RESERVE, "node1");

    let filler = run.disk.fill(RESERVE_BYTES / 2);
    let filled = Instant::now();
    wait_status(&run.site, Duration::from_secs(15), "node2 active", |v| {
        v["active_node"] == "node2"
    });
    eprintln!(
        "node1 handed over {:?} after its disk filled",
        filled.elapsed()
    );
    let node1_log = std::fs::read_to_string(&run.procs[0].stderr).unwrap_or_default();
    assert!(
        node1_log.contains("handing the databases over by a scheduled move"),
        "{node1_log}"
    );
    run.load
        .wait_acknowledged(20, Duration::from_secs(30), "messages through node2");
    let path = run.disk.path.display().to_string();
    wait_status(
        &run.site,
        Duration::from_secs(10),
        "node1's copy suspended for the disk",
        |v| {
            v["storage_groups"].as_array().is_some_and(|g| {
                g.iter().all(|g| {
                    g["summary_copy_status"] == "Suspended"
                        && g["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("disk full") && e.contains(&path))
                })
            })
        },
    );
    let checks = disk_checks(&run.site);
    assert!(
        checks.iter().any(|c| c["result"] == "FAIL"
            && c["detail"]
                .as_str()
                .is_some_and(|d| d.contains("node1") && d.contains(&path))),
        "{checks:?}"
    );

    std::fs::remove_file(&filler).expect("free space");
    let back = Instant::now();
    wait_status(&run.site, BACK_WITHIN, "node1's copy Healthy again", |v| {
        v["storage_groups"]
            .as_array()
            .is_some_and(|g| g.iter().all(|g| g["summary_copy_status"] == "Healthy"))
    });
    eprintln!(
        "node1's copies Healthy {:?} after space came back",
        back.elapsed()
    );
    run.load
        .wait_acknowledged(20, Duration::from_secs(30), "more messages");
    let acknowledged = run.load.finish();
    common::wait_queue_empty(run.site.ports.hub1_admin);
    // A scheduled move: nothing to resubmit.
    let (_, stats) = run.site.cli_json(&["stats", "--storage-group", "SG1"]);
    assert_eq!(
        stats["outstanding_dumpster_requests"],
        Value::Array(vec![]),
        "{stats}"
    );
    assert!(
        !std::fs::read_to_string(&run.procs[1].stderr)
            .unwrap_or_default()
            .contains("lossy failover"),
        "the handover was lossy"
    );
    assert_exactly_once(&run.site, &acknowledged);
}

#[test]
fn a_hub_whose_disk_fills_to_the_last_byte_comes_back_by_itself() {
    // No reserve: the run.disk fills under run.load and the store's writes fail: a body's append to
    // its segment, or sled, which then fails every write until the store is opened again.
    let run = Run::start("0", "hub1");
    let full = run.disk.fill(0);
    let hub_log = || std::fs::read_to_string(&run.procs[2].stderr).unwrap_or_default();
    wait_for(Duration::from_secs(20), "the hub store to fail", || {
        hub_log().contains("No space left on device").then_some(())
    });
    let segments = run.site.data().join("hub1/segments");
    let files = || std::fs::read_dir(&segments).map_or(0, |d| d.count());
    let while_full = files();
    std::fs::remove_file(&full).expect("free space");
    let took = run
        .load
        .wait_acknowledged(1, BACK_WITHIN, "a 250 within 10 s of space coming back");
    eprintln!("hub1 accepted again {took:?} after space came back");
    assert!(
        !hub_log().contains("database failed") || hub_log().contains("database opened again"),
        "{}",
        hub_log()
    );
    assert!(
        while_full <= 4,
        "failed appends left {while_full} segment files behind"
    );
    run.load
        .wait_acknowledged(20, Duration::from_secs(30), "more messages");
    let acknowledged = run.load.finish();
    common::wait_queue_empty(run.site.ports.hub1_admin);
    assert_exactly_once(&run.site, &acknowledged);
}
