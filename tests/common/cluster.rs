//! A CMS under test with four separate processes (hub1, hub2, node1, node2): the site, starting
//! them, and reading `hubrelay status` until it shows what a test waits for.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Proc, TestSite};

/// Each such test runs four processes whose heartbeats have sub-second deadlines; on a 2-core
/// machine several sites at once starve each other into failovers nobody asked for, so the tests
/// of one binary take turns.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// A site whose CMS closes logs at 4 KiB (a few messages each, so logs ship during a test), with
/// `cms_lines` added to its `[[cms]]` table.
pub fn cms_site(cms_lines: &str) -> TestSite {
    cms_site_with_witness("witness/cms1", cms_lines)
}

/// [`cms_site`] with another `witness` (an `etcd://` address, say).
pub fn cms_site_with_witness(witness: &str, cms_lines: &str) -> TestSite {
    let site = TestSite::new("", &[]);
    let text = std::fs::read_to_string(site.config()).expect("config");
    let text = text.replace(
        "witness = \"witness/cms1\"",
        &format!("witness = \"{witness}\"\nlog_file_size = \"4KiB\"\n{cms_lines}"),
    );
    std::fs::write(site.config(), text).expect("write config");
    site
}

/// Starts node1, node2, hub1 and hub2 (in that order, each waited for by its `ready` line).
pub fn start_all(site: &TestSite) -> [Option<Proc>; 4] {
    let n1 = site.start(&["node", "--name", "node1"]);
    let n2 = site.start(&["node", "--name", "node2"]);
    let h1 = site.start(&["hub", "--name", "hub1"]);
    let h2 = site.start(&["hub", "--name", "hub2"]);
    [Some(n1), Some(n2), Some(h1), Some(h2)]
}

/// `hubrelay status --cms cms1 --json`.
pub fn status(site: &TestSite) -> Value {
    site.cli_json(&["status", "--cms", "cms1"]).1
}

/// Polls `hubrelay status` until `pred` holds; panics with the last status after `limit`.
pub fn wait_status(
    site: &TestSite,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let v = status(site);
        if pred(&v) {
            return v;
        }
        assert!(start.elapsed() < limit, "status never showed {what}: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `status` names `node` active.
pub fn active_is(v: &Value, node: &str) -> bool {
    v["active_node"].as_str() == Some(node)
}
