//! The site dashboard in a real headless Chromium, against four separate processes (hub1, hub2,
//! node1, node2): what the page shows before any mail, after a message, and after `kill -9` of the
//! active node, with screenshots kept under `target/test-artifacts/`.
//!
//! Chromium comes from `tests/dashboard/install-chromium.sh` (Debian's package). Where it cannot
//! be installed the test says so on stderr and passes without running.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{one_at_a_time, start_all};
use common::{smtplib_send, TestSite, TOKEN};

/// How long the page may take to show a change (each look is a whole browser run).
const WAIT: Duration = Duration::from_secs(90);

/// Headless Chromium with a private profile, so runs alongside never share state.
struct Browser {
    bin: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Installs Chromium if it is missing; `Err` with the reason where it cannot be had.
    fn get() -> Result<Browser, String> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/install-chromium.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        Ok(Browser { bin, profile })
    }

    /// Runs Chromium on `url` with `args`, bounded in time; panics with its output on failure.
    fn run(&self, args: &[&str], url: &str) -> String {
        let out = Command::new("timeout")
            .arg("120")
            .arg(&self.bin)
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--no-proxy-server",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--hide-scrollbars",
                // Long enough for the page to load, fetch /api/site and draw it, then poll again.
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium {args:?} {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The page's DOM after its scripts ran, opened with `#token=<token>` as a link would.
    fn dom(&self, admin_port: u16, token: &str) -> String {
        self.run(&["--dump-dom"], &page(admin_port, token))
    }

    /// Re-reads the page until `check` passes on it; panics with the last complaint after
    /// [`WAIT`].
    fn wait(
        &self,
        admin_port: u16,
        what: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> String {
        let start = Instant::now();
        loop {
            let dom = self.dom(admin_port, TOKEN);
            match check(&dom) {
                Ok(()) => return dom,
                Err(why) => assert!(
                    start.elapsed() < WAIT,
                    "the dashboard never showed {what}: {why}\n{dom}"
                ),
            }
        }
    }

    /// A screenshot of the page, kept as `target/test-artifacts/dashboard-<name>.png`.
    fn screenshot(&self, admin_port: u16, name: &str) -> PathBuf {
        let dir = artifacts();
        std::fs::create_dir_all(&dir).expect("artifact directory");
        let path = dir.join(format!("dashboard-{name}.png"));
        let _ = std::fs::remove_file(&path);
        self.run(
            &[
                &format!("--screenshot={}", path.display()),
                "--window-size=1400,1800",
            ],
            &page(admin_port, TOKEN),
        );
        let png = std::fs::read(&path).expect("the screenshot was written");
        assert!(
            png.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
        say(&format!("dashboard screenshot: {}", path.display()));
        path
    }
}

/// Writes a line to stderr past the test harness's capture, so a skip or an artifact's path shows
/// in the output of a passing test too.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn page(admin_port: u16, token: &str) -> String {
    format!("http://127.0.0.1:{admin_port}/#token={token}")
}

/// `target/test-artifacts`, beside the `debug` directory this test runs from (so it follows
/// `CARGO_TARGET_DIR`).
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    target.join("test-artifacts")
}

/// The attributes of the first element carrying `attr="value"`.
fn element(dom: &str, attr: &str, value: &str) -> Option<BTreeMap<String, String>> {
    let at = dom.find(&format!(" {attr}=\"{value}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let mut attrs = BTreeMap::new();
    let mut rest = &dom[start + 1..end];
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let value_and_more = &rest[eq + 2..];
        let close = value_and_more.find('"')?;
        attrs.insert(name, value_and_more[..close].to_string());
        rest = &value_and_more[close + 1..];
    }
    Some(attrs)
}

/// Checks that the element with `attr="value"` has `want` for `key`.
fn shows(dom: &str, (attr, value): (&str, &str), key: &str, want: &str) -> Result<(), String> {
    let attrs =
        element(dom, attr, value).ok_or_else(|| format!("no element {attr}=\"{value}\""))?;
    match attrs.get(key) {
        Some(v) if v == want => Ok(()),
        other => Err(format!(
            "{attr}=\"{value}\" has {key}={other:?}, not {want:?}"
        )),
    }
}

fn all(checks: &[Result<(), String>]) -> Result<(), String> {
    checks
        .iter()
        .cloned()
        .collect::<Result<Vec<()>, String>>()
        .map(|_| ())
}

fn wait_active(site: &TestSite, node: &str) {
    common::wait_for(
        WAIT,
        &format!("{node} active with its copy healthy"),
        || {
            let (_, v) = site.cli_json(&["status", "--cms", "cms1"]);
            let healthy = v["storage_groups"].as_array().is_some_and(|g| {
                !g.is_empty() && g.iter().all(|g| g["summary_copy_status"] == "Healthy")
            });
            (v["active_node"] == node && healthy).then_some(())
        },
    );
}

#[test]
fn the_dashboard_shows_the_site_live() {
    let _turn = one_at_a_time();
    let browser = match Browser::get() {
        Ok(b) => b,
        Err(reason) => {
            say(&format!(
                "SKIPPED: dashboard test: Chromium could not be installed ({reason})"
            ));
            return;
        }
    };
    let started = Instant::now();
    let site = TestSite::new("", &[]);
    let p = site.ports.clone();
    let mut procs = start_all(&site);
    wait_active(&site, "node1");

    // A wrong token is refused: the page asks for one and shows nothing of the site.
    let refused = browser.dom(p.hub1_admin, "wrong");
    shows(&refused, ("id", "status"), "data-state", "login")
        .unwrap_or_else(|e| panic!("{e}\n{refused}"));
    assert!(element(&refused, "data-hub", "hub1").is_none(), "{refused}");

    let before = browser.wait(p.hub1_admin, "the site before any mail", |dom| {
        all(&[
            shows(dom, ("data-hub", "hub1"), "data-up", "true"),
            shows(dom, ("data-hub", "hub2"), "data-up", "true"),
            shows(dom, ("data-hub", "hub1"), "data-queue", "0"),
            shows(dom, ("data-hub", "hub2"), "data-queue", "0"),
            shows(dom, ("data-dumpster", "hub1/SG1"), "data-items", "0"),
            shows(dom, ("data-node", "node1"), "data-role", "Active"),
            shows(dom, ("data-node", "node2"), "data-role", "Passive"),
            shows(dom, ("data-cms", "cms1"), "data-active", "node1"),
            shows(dom, ("data-cms", "cms1"), "data-quorum", "Healthy"),
            shows(dom, ("data-copy", "SG1"), "data-copy-status", "Healthy"),
            shows(dom, ("data-timeline", "SG1"), "data-state", "covered"),
        ])
    });
    assert!(
        !before.contains(TOKEN),
        "the page shows the admin token:\n{before}"
    );

    let (code, out) = smtplib_send(
        p.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &common::message(Some("<dash-1@client.test>"), "dashboard"),
    );
    assert_eq!(code, 0, "{out}");
    let after_mail = browser.wait(p.hub1_admin, "hub1's dumpster holding the message", |dom| {
        all(&[
            shows(dom, ("data-dumpster", "hub1/SG1"), "data-items", "1"),
            shows(dom, ("data-dumpster", "hub2/SG1"), "data-items", "0"),
            shows(dom, ("data-dumpster", "hub1/SG2"), "data-items", "0"),
            shows(dom, ("data-hub", "hub1"), "data-queue", "0"),
            shows(dom, ("data-lane", "hub1"), "data-state", "covered"),
        ])
    });
    assert!(
        element(&after_mail, "data-reach", "hub1").is_some(),
        "hub1's reach bar:\n{after_mail}"
    );
    browser.screenshot(p.hub1_admin, "after-mail");

    procs[0].take().expect("node1").kill9();
    // Read from node2's own admin address: every role serves the page.
    let after_kill = browser.wait(p.node2_admin, "node2 active after node1's kill", |dom| {
        all(&[
            shows(dom, ("data-node", "node1"), "data-up", "false"),
            shows(dom, ("data-node", "node1"), "data-role", "Down"),
            shows(dom, ("data-node", "node2"), "data-role", "Active"),
            shows(dom, ("data-cms", "cms1"), "data-active", "node2"),
            shows(dom, ("data-hub", "hub1"), "data-up", "true"),
        ])
    });
    assert!(
        !after_kill.contains(TOKEN),
        "the page shows the admin token"
    );
    browser.screenshot(p.node2_admin, "after-failover");
    say(&format!("dashboard test took {:?}", started.elapsed()));
}

#[test]
fn a_failover_that_would_lose_mail_shows_red() {
    let _turn = one_at_a_time();
    let browser = match Browser::get() {
        Ok(b) => b,
        Err(reason) => {
            say(&format!(
                "SKIPPED: dashboard test: Chromium could not be installed ({reason})"
            ));
            return;
        }
    };
    // Logs close every few messages, so the passive replays some; the dumpster holds only a few.
    let site = TestSite::new("max_dumpster_size_per_storage_group = \"2KB\"", &[]);
    let text = std::fs::read_to_string(site.config()).expect("config");
    let text = text.replace(
        "witness = \"witness/cms1\"",
        "witness = \"witness/cms1\"\nlog_file_size = \"4KiB\"",
    );
    std::fs::write(site.config(), text).expect("write config");
    let p = site.ports.clone();
    let _procs = start_all(&site);
    wait_active(&site, "node1");
    let mut smtp = common::Smtplib::start();
    let mut send = |prefix: &str, n: usize| {
        for i in 0..n {
            let m = common::message(
                Some(&format!("<{prefix}-{i}@client.test>")),
                &"x".repeat(300),
            );
            let r = smtp.send(p.hub1, "bob@example.test", &["alice@example.test"], &m);
            assert!(r.starts_with("refused {}"), "{r}");
        }
    };
    send("replayed", 20);
    common::wait_for(WAIT, "the passive to replay a log", || {
        let (_, v) = site.cli_json(&["status", "--cms", "cms1"]);
        (v["storage_groups"][0]["newest_replayed"].is_string()).then_some(())
    });
    // From now on nothing more replays, while the dumpster lets the oldest entries go.
    let (status, body) = common::api(
        p.node2_admin,
        "POST",
        "/api/copy/SG1/suspend",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    send("unreplicated", 20);
    common::wait_queue_empty(p.hub1_admin);
    let dom = browser.wait(p.hub1_admin, "a gap in hub1's reach", |dom| {
        all(&[
            shows(dom, ("data-timeline", "SG1"), "data-state", "gap"),
            shows(dom, ("data-lane", "hub1"), "data-state", "gap"),
            shows(dom, ("data-lane", "hub2"), "data-state", "covered"),
            // Not the copy's SummaryCopyStatus: a copy round in flight when the suspend lands
            // can leave it Healthy, and then ServiceDown, instead of Suspended (a node issue).
        ])
    });
    let gap = element(&dom, "data-gap", "hub1").unwrap_or_else(|| panic!("no red bar:\n{dom}"));
    assert!(
        gap.get("style").is_some_and(|s| s.contains("width")),
        "{gap:?}"
    );
    browser.screenshot(p.hub1_admin, "gap");
}

#[test]
fn the_site_document_shows_what_is_down_and_the_queue_age() {
    let site = TestSite::new("", &[]);
    let p = site.ports.clone();
    // Only hub1 runs: the message waits in its queue for a node.
    let _hub1 = site.start(&["hub", "--name", "hub1"]);
    let (code, out) = smtplib_send(
        p.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &common::message(Some("<queued@client.test>"), "queued"),
    );
    assert_eq!(code, 0, "{out}");
    let queue = common::api_json(p.hub1_admin, "GET", "/api/queue", None);
    assert_eq!(queue["messages"], 1, "{queue}");
    assert!(queue["oldest_age_seconds"].is_u64(), "{queue}");
    let (status, _) = common::api(p.hub1_admin, "GET", "/api/site", None, None);
    assert_eq!(status, 401);
    let (status, page) = common::api(p.hub1_admin, "GET", "/", None, None);
    assert_eq!(status, 200);
    assert!(page.contains("dashboard.js"), "{page}");
    let doc = common::api_json(p.hub1_admin, "GET", "/api/site", None);
    assert_eq!(doc["hubs"][0]["up"], true, "{doc:#}");
    assert_eq!(doc["hubs"][0]["queue_messages"], 1, "{doc:#}");
    assert!(
        doc["hubs"][0]["queue_oldest_age_seconds"].is_u64(),
        "{doc:#}"
    );
    assert_eq!(doc["hubs"][1]["up"], false, "{doc:#}");
    assert!(doc["hubs"][1]["error"].is_string(), "{doc:#}");
    assert_eq!(
        doc["cms"][0]["unreachable"],
        serde_json::json!(["node1", "node2"]),
        "{doc:#}"
    );
    assert_eq!(doc["cms"][0]["quorum"], "Lost", "{doc:#}");
    assert_eq!(doc["coverage"][0]["state"], "unknown", "{doc:#}");
    assert_eq!(doc["coverage"][0]["hubs"][1]["state"], "unknown", "{doc:#}");
}
