//! Black-box tests of what a running site tells operators: `/metrics` of hubs and nodes (values
//! that must follow from the mail sent, escaped label values, the full list of metric names),
//! `--log-format json`, `HUBRELAY_LOG`, and the sizing warnings at start-up and in `health`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{api, message, smtplib_send, wait_for, wait_queue_empty, TestSite, TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A storage group name with a quote and a backslash: its label value must come out escaped.
const ODD_SG: &str = r#"SG"2\x"#;

/// The operations guide, whose metrics table is the list of what hubs and nodes serve.
const GUIDE: &str = include_str!("../docs/operations.md");

/// The metric families `docs/operations.md` lists for `role` ("hub" or "node"), as OpenMetrics
/// family names (counters without `_total`), so a metric served but not documented fails.
fn documented_families(role: &str) -> BTreeSet<String> {
    let section = GUIDE
        .split("\n## ")
        .find(|s| s.starts_with("7. Metrics"))
        .expect("docs/operations.md has a section `## 7. Metrics`");
    let families: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.trim_matches('`');
            let kind = *cells.get(2)?;
            cells.get(3)?.split(',').any(|r| r.trim() == role).then(|| {
                match kind {
                    "counter" => name
                        .strip_suffix("_total")
                        .expect("a counter ends in _total"),
                    _ => name,
                }
                .to_string()
            })
        })
        .collect();
    assert!(
        families.len() > 10,
        "too few {role} metrics in the guide: {families:?}"
    );
    families
}

/// One scrape, parsed.
#[derive(Debug, Default)]
struct Scrape {
    /// Family name → (type, help).
    families: BTreeMap<String, (String, String)>,
    /// (sample name, labels) → value.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    text: String,
}

impl Scrape {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{}", self.text))
    }

    fn family_names(&self) -> BTreeSet<&str> {
        self.families.keys().map(String::as_str).collect()
    }
}

/// Parses OpenMetrics text: `# HELP`/`# TYPE` lines and samples with escaped label values.
fn parse(text: &str) -> Scrape {
    let mut s = Scrape {
        text: text.to_string(),
        ..Scrape::default()
    };
    assert!(text.ends_with("# EOF\n"), "no # EOF:\n{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            s.families.entry(name.into()).or_default().1 = help.into();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name type");
            s.families.entry(name.into()).or_default().0 = kind.into();
        } else if line.starts_with('#') {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("}"))),
                None => (series, BTreeMap::new()),
            };
            s.samples.push((name.to_string(), labels, value));
        }
    }
    s
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in the values.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} is not quoted in {text}"
        );
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '"' => break,
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    c @ ('"' | '\\') => value.push(c),
                    c => panic!("bad escape \\{c} in {text}"),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

fn scrape(admin_port: u16) -> Scrape {
    let (status, text) = api(admin_port, "GET", "/metrics", Some(TOKEN), None);
    assert_eq!(status, 200, "{text}");
    parse(&text)
}

/// Polls a scrape of `admin_port` until `pred` holds.
fn wait_scrape(admin_port: u16, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = Instant::now();
    loop {
        let s = scrape(admin_port);
        if pred(&s) {
            return s;
        }
        assert!(start.elapsed() < WAIT, "never saw {what}:\n{}", s.text);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `hubrelay status` until one node is active and the other's copies are Healthy;
/// returns the (active, passive) admin ports.
fn wait_healthy(site: &TestSite) -> (u16, u16) {
    let v = wait_for(WAIT, "an active node with a healthy copy", || {
        let (_, v) = site.cli_json(&["status", "--cms", "cms1"]);
        let healthy = v["storage_groups"].as_array().is_some_and(|g| {
            !g.is_empty() && g.iter().all(|g| g["summary_copy_status"] == "Healthy")
        });
        (v["active_node"].is_string() && healthy).then_some(v)
    });
    let p = &site.ports;
    match v["active_node"].as_str() {
        Some("node1") => (p.node1_admin, p.node2_admin),
        _ => (p.node2_admin, p.node1_admin),
    }
}

/// The test site with SG2 renamed to [`ODD_SG`].
fn odd_site(site_extra: &str) -> TestSite {
    let site = TestSite::new(site_extra, &[]);
    let text = std::fs::read_to_string(site.config()).expect("read config");
    let text = text.replace("name = \"SG2\"", &format!("name = '{ODD_SG}'"));
    std::fs::write(site.config(), text).expect("write config");
    site
}

fn send(site: &TestSite, to: &[&str], mid: &str, subject: &str) {
    let (code, out) = smtplib_send(
        site.ports.hub1,
        "bob@example.test",
        to,
        &message(Some(mid), subject),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("refused {}"), "{out}");
}

#[test]
fn metrics_follow_the_mail_sent_and_escape_label_values() {
    let site = odd_site("");
    let _proc = site.start(&["site"]);
    let (active, passive) = wait_healthy(&site);

    send(
        &site,
        &["alice@example.test", "carol@example.test"],
        "<m1@metrics.test>",
        "one",
    );
    site.wait_mailbox("carol@example.test", WAIT, |ids| ids.len() == 1);
    wait_queue_empty(site.ports.hub1_admin);
    // The same message again: the node drops alice's second copy.
    send(&site, &["alice@example.test"], "<m1@metrics.test>", "one");
    wait_queue_empty(site.ports.hub1_admin);

    let hub = scrape(site.ports.hub1_admin);
    let h = [("hub", "hub1")];
    assert_eq!(hub.value("hubrelay_messages_received_total", &h), 2.0);
    assert_eq!(hub.value("hubrelay_recipients_delivered_total", &h), 3.0);
    assert_eq!(hub.value("hubrelay_recipients_deferred_total", &h), 0.0);
    assert_eq!(hub.value("hubrelay_recipients_failed_total", &h), 0.0);
    assert_eq!(hub.value("hubrelay_dsn_total", &h), 0.0);
    assert_eq!(hub.value("hubrelay_resubmitted_entries_total", &h), 0.0);
    assert_eq!(
        hub.value("hubrelay_delivery_latency_seconds_count", &h),
        3.0
    );
    assert_eq!(
        hub.value(
            "hubrelay_delivery_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(hub.value("hubrelay_queue_messages", &h), 0.0);
    assert_eq!(hub.value("hubrelay_queue_oldest_age_seconds", &h), 0.0);
    // Each delivery keeps a dumpster entry per storage group, a duplicate's too.
    let sg1 = [("hub", "hub1"), ("storage_group", "SG1")];
    let odd = [("hub", "hub1"), ("storage_group", ODD_SG)];
    assert_eq!(hub.value("hubrelay_dumpster_items", &sg1), 2.0);
    assert_eq!(hub.value("hubrelay_dumpster_items", &odd), 1.0);
    assert!(hub.value("hubrelay_dumpster_bytes", &odd) > 0.0);
    assert!(hub.value("hubrelay_dumpster_coverage_seconds", &sg1) > 0.0);
    assert!(hub.value("hubrelay_dumpster_coverage_seconds", &sg1) < WAIT.as_secs_f64());
    assert_eq!(hub.value("hubrelay_dumpster_evictions_total", &sg1), 0.0);
    // The crate escapes the quote and the backslash.
    assert!(
        hub.text.contains(r#"storage_group="SG\"2\\x""#),
        "{}",
        hub.text
    );
    // The other hub delivered nothing.
    let hub2 = scrape(site.ports.hub2_admin);
    assert_eq!(
        hub2.value("hubrelay_messages_received_total", &[("hub", "hub2")]),
        0.0
    );

    let node = scrape(active);
    let a = node.samples[0].1.get("node").cloned().expect("node label");
    let n = |sg| [("node", a.as_str()), ("storage_group", sg)];
    assert_eq!(node.value("hubrelay_node_active", &[]), 1.0);
    assert!(node.value("hubrelay_node_epoch", &[]) >= 1.0);
    assert_eq!(node.value("hubrelay_messages_stored_total", &n("SG1")), 1.0);
    assert_eq!(
        node.value("hubrelay_messages_stored_total", &n(ODD_SG)),
        1.0
    );
    assert_eq!(
        node.value("hubrelay_duplicates_dropped_total", &n("SG1")),
        1.0
    );
    assert_eq!(
        node.value("hubrelay_duplicates_dropped_total", &n(ODD_SG)),
        0.0
    );
    assert!(node.value("hubrelay_last_log_generated", &n("SG1")) >= 1.0);
    assert!(node.value("hubrelay_seconds_since_last_replayed", &n("SG1")) >= 0.0);
    assert_eq!(
        node.value("hubrelay_failovers_total", &[("kind", "lossy")]),
        0.0
    );
    assert_eq!(node.value("hubrelay_moves_total", &[]), 0.0);
    assert!(
        node.get("hubrelay_copy_queue_length", &[]).is_none(),
        "the active has no copy"
    );

    let copy = wait_scrape(passive, "a healthy copy", |s| {
        s.get(
            "hubrelay_copy_status",
            &[("storage_group", ODD_SG), ("status", "Healthy")],
        ) == Some(1.0)
    });
    assert_eq!(copy.value("hubrelay_node_active", &[]), 0.0);
    assert_eq!(
        copy.value(
            "hubrelay_copy_status",
            &[("storage_group", "SG1"), ("status", "Suspended")]
        ),
        0.0
    );
    assert!(copy
        .get("hubrelay_copy_queue_length", &[("storage_group", "SG1")])
        .is_some());
    assert_eq!(
        copy.value("hubrelay_copy_behind_seconds", &[("storage_group", "SG1")]),
        0.0
    );
    assert_eq!(
        copy.value(
            "hubrelay_messages_stored_total",
            &[("storage_group", "SG1")]
        ),
        0.0,
        "replay is not delivery"
    );

    // Every family has a HELP text and a type, and the families are exactly those the operations
    // guide lists: a new metric must be documented there.
    for s in [&hub, &node, &copy] {
        for (name, (kind, help)) in &s.families {
            assert!(!kind.is_empty() && help.len() > 10, "{name}: {kind} {help}");
        }
    }
    let expected = documented_families("hub");
    assert_eq!(
        hub.family_names(),
        expected.iter().map(String::as_str).collect()
    );
    // A family without a series is left out: the copy's only exist on the passive node.
    let expected = documented_families("node");
    let both: BTreeSet<&str> = node
        .family_names()
        .union(&copy.family_names())
        .copied()
        .collect();
    assert_eq!(both, expected.iter().map(String::as_str).collect());
}

/// Starts `hubrelay <args> --config … --data …` with `HUBRELAY_LOG=filter` and waits for `ready`;
/// returns the child and its stderr file.
fn start_with_filter(site: &TestSite, args: &[&str], filter: &str) -> (Child, std::path::PathBuf) {
    std::fs::create_dir_all(site.data()).expect("data dir");
    let log = site.data().join(format!("{}.log", args.join("-")));
    let mut child = Command::new(common::bin())
        .args(args)
        .arg("--config")
        .arg(site.config())
        .arg("--data")
        .arg(site.data())
        .env("HUBRELAY_LOG", filter)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn hubrelay");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let ready = stdout.lines().map_while(Result::ok).any(|l| l == "ready");
    assert!(
        ready,
        "hubrelay {args:?} did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (child, log)
}

/// Every line of `text` as a JSON object.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v.is_object(), "{l}");
            for field in ["timestamp", "level", "target"] {
                assert!(v[field].is_string(), "no {field} in {l}");
            }
            assert!(v["fields"]["message"].is_string(), "no message in {l}");
            v
        })
        .collect()
}

#[test]
fn json_log_lines_carry_span_fields() {
    let site = TestSite::new("", &[]);
    let proc = site.start(&["site", "--log-format", "json"]);
    send(
        &site,
        &["alice@example.test"],
        "<json@metrics.test>",
        "json",
    );
    site.wait_mailbox("alice@example.test", WAIT, |ids| ids.len() == 1);
    let lines = wait_for(WAIT, "the hub's `delivered` log line", || {
        let lines = json_lines(&proc.log());
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "delivered")
            .then_some(lines)
    });
    let delivered = lines
        .iter()
        .find(|v| v["fields"]["message"] == "delivered")
        .expect("delivered line");
    assert_eq!(delivered["level"], "INFO");
    assert_eq!(delivered["fields"]["storage_group"], "SG1");
    // From the hub's `deliver` span, both as the current span and in the span list.
    assert_eq!(delivered["span"]["name"], "deliver");
    assert_eq!(delivered["span"]["message_id"], "<json@metrics.test>");
    assert_eq!(delivered["span"]["hub"], "hub1");
    assert!(delivered["span"]["queue_id"].is_number(), "{delivered}");
    assert!(
        delivered["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["message_id"] == "<json@metrics.test>")),
        "{delivered}"
    );
    // The node's acknowledgement names node, epoch and message.
    let ack = lines
        .iter()
        .find(|v| v["fields"]["message"] == "acknowledged")
        .expect("acknowledged line");
    assert_eq!(ack["fields"]["message_id"], "<json@metrics.test>");
    assert!(
        ack["fields"]["epoch"].as_u64().is_some_and(|e| e >= 1),
        "{ack}"
    );
}

#[test]
fn an_undersized_dumpster_warns_at_start_up_and_in_health() {
    let site = TestSite::new(
        "max_message_size = \"10MB\"\nmax_dumpster_size_per_storage_group = \"12MB\"",
        &[],
    );
    let (mut hub, log) = start_with_filter(
        &site,
        &["hub", "--name", "hub1", "--log-format", "json"],
        "warn",
    );
    let text = std::fs::read_to_string(&log).expect("log");
    let lines = json_lines(&text);
    let _ = hub.kill();
    let _ = hub.wait();
    // HUBRELAY_LOG=warn: the warning and nothing below it.
    assert!(
        lines
            .iter()
            .all(|v| v["level"] == "WARN" || v["level"] == "ERROR"),
        "{text}"
    );
    let warning = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("below 1.5 × max_message_size"))
        })
        .unwrap_or_else(|| panic!("no sizing warning in:\n{text}"));
    let m = warning["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("(12000000 bytes)") && m.contains("(10000000 bytes"),
        "{m}"
    );

    let out = Command::new(common::bin())
        .args(["health", "--config"])
        .arg(site.config())
        .output()
        .expect("health");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("WARN")
            && l.contains("DumpsterSize")
            && l.contains("12000000 bytes")),
        "{stdout}"
    );
}

#[test]
fn a_copy_behind_longer_than_max_dumpster_time_warns_in_health() {
    let site = TestSite::new("max_dumpster_time = \"2s\"", &[]);
    let _proc = site.start(&["site"]);
    let (_, passive) = wait_healthy(&site);
    let health = || {
        let out = Command::new(common::bin())
            .args(["health", "--config"])
            .arg(site.config())
            .output()
            .expect("health");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = health();
    assert!(
        text.lines()
            .any(|l| l.starts_with("PASS") && l.contains("DumpsterSize")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("PASS") && l.contains("DumpsterTime")),
        "{text}"
    );
    let (status, body) = api(passive, "POST", "/api/copy/SG1/suspend", Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    let text = wait_for(WAIT, "a DumpsterTime warning", || {
        let text = health();
        text.lines()
            .any(|l| l.starts_with("WARN") && l.contains("DumpsterTime") && l.contains("SG1:"))
            .then_some(text)
    });
    assert!(
        text.contains("longer than max_dumpster_time (2s)"),
        "{text}"
    );
    let copy = scrape(passive);
    assert!(copy.value("hubrelay_copy_behind_seconds", &[("storage_group", "SG1")]) > 2.0);
    assert_eq!(
        copy.value(
            "hubrelay_copy_status",
            &[("storage_group", "SG1"), ("status", "Suspended")]
        ),
        1.0
    );
}
