//! Intake follows delivery (`in_flow_delay`), against a running hub, and follows the hub's own
//! work rather than a silent next hop:
//!
//! - while a node answers but its deliveries are stuck, the hub holds back the 250 of new messages
//!   once 128 wait for their first attempt, yet refuses none;
//! - while the nodes take connections and never answer (packets dropped, a stopped process), the
//!   hub's acknowledgements stay quick (p99 under 50 ms, issue 26) and nothing is held back;
//!
//! and in both, every message the hub acknowledged reaches its mailbox exactly once when the
//! mailbox servers answer again.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{api_json, message, metric, Smtplib, TestSite};

/// The tests of this file run one at a time: the silent next hop test measures acknowledgement
/// times, which the other's 130 sessions and hanging deliveries would share the CPU with.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// New messages that may wait for a first attempt before intake slows (the hub's constant).
const BACKLOG: usize = 128;
/// The `in_flow_delay` of the first test's site.
const DELAY: Duration = Duration::from_millis(700);

/// What a fake node on a node's SMTP port does with the connections it takes.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Never sends a byte: no greeting, as a next hop whose packets are dropped.
    Silent,
    /// Answers every command up to DATA, then never acknowledges the message: a node whose
    /// deliveries are stuck (its disk, say) while it still answers.
    StuckInData,
}

/// A fake node listening on a 127.0.0.1 port; dropping it closes the port and every connection
/// it took, so a real node can take the port over.
struct FakeNode {
    port: u16,
    stop: Arc<AtomicBool>,
    taken: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeNode {
    fn start(port: u16, behaviour: Behaviour) -> FakeNode {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the fake node");
        let stop = Arc::new(AtomicBool::new(false));
        let taken: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (stop, taken) = (stop.clone(), taken.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let mine = stream.try_clone().expect("clone the connection");
                    taken.lock().unwrap().push(stream);
                    if let Behaviour::StuckInData = behaviour {
                        std::thread::spawn(move || stuck_in_data(mine));
                    }
                }
            })
        };
        FakeNode {
            port,
            stop,
            taken,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the acceptor, which then sees `stop` and closes the port.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.taken.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Speaks SMTP until the end of the first message's data, then only reads.
fn stuck_in_data(stream: TcpStream) {
    let mut out = stream.try_clone().expect("clone");
    let mut lines = BufReader::new(stream);
    let mut reply = |text: &str| out.write_all(text.as_bytes()).is_ok();
    if !reply("220 stuck.test ESMTP\r\n") {
        return;
    }
    let mut in_data = false;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if in_data {
            // The message's final dot gets no answer, ever; the rest is read and dropped.
            continue;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let answered = match verb.as_str() {
            "DATA" => {
                in_data = true;
                reply("354 go ahead\r\n")
            }
            "QUIT" => return,
            _ => reply("250 ok\r\n"),
        };
        if !answered {
            return;
        }
    }
}

/// Counts each Message-ID in `stored` and checks every acknowledged one is there exactly once
/// and nothing else is.
fn assert_exactly_once(acknowledged: &[String], stored: &[String]) {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for id in stored {
        *count.entry(id.as_str()).or_default() += 1;
    }
    for id in acknowledged {
        assert_eq!(count.get(id.as_str()), Some(&1), "{id} in {stored:?}");
    }
    assert_eq!(stored.len(), acknowledged.len(), "{stored:?}");
}

#[test]
fn stuck_deliveries_slow_intake_but_nothing_is_refused_or_lost() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let site = TestSite::new(&format!("in_flow_delay = \"{}ms\"", DELAY.as_millis()), &[]);
    // node1 answers every command but never acknowledges a message, so every attempt hangs after
    // DATA; node2's port refuses connections. No attempt ends until node1's stand-in goes.
    let stuck = FakeNode::start(site.ports.node1, Behaviour::StuckInData);
    let hub = site.start(&["hub", "--name", "hub1"]);
    let port = site.ports.hub1;
    let admin = site.ports.hub1_admin;

    let mut client = Smtplib::start();
    let mut acknowledged = Vec::new();
    let mut send = |n: usize| {
        let id = format!("<flow-{n}@client.test>");
        let started = Instant::now();
        let outcome = client.send(
            port,
            "sender@example.test",
            &["alice@example.test"],
            &message(Some(&id), &format!("flow {n}")),
        );
        assert!(outcome.starts_with("refused {}"), "message {n}: {outcome}");
        acknowledged.push(id);
        started.elapsed()
    };
    for n in 0..BACKLOG {
        send(n);
    }
    assert_eq!(metric(admin, "hubrelay_in_flow_delayed_total"), 0);
    // The backlog is full: the next two are held back for the whole delay, then accepted.
    for n in BACKLOG..BACKLOG + 2 {
        let took = send(n);
        assert!(took >= DELAY, "message {n} was accepted after {took:?}");
    }
    assert_eq!(metric(admin, "hubrelay_in_flow_delayed_total"), 2);

    // The mailbox servers come back: every acknowledged message arrives exactly once.
    drop(stuck);
    let _node1 = site.start(&["node", "--name", "node1"]);
    let _node2 = site.start(&["node", "--name", "node2"]);
    let stored = site.wait_mailbox("alice@example.test", Duration::from_secs(60), |ids| {
        ids.len() >= acknowledged.len()
    });
    assert_exactly_once(&acknowledged, &stored);
    drop(hub);
}

/// Client sessions of the silent next hop test, and messages each sends.
const SESSIONS: usize = 8;
const PER_SESSION: usize = 50;
/// The test site's `node_connect_timeout`: short, so that the run (about a second) also covers
/// what comes after the first openings fail: probes, and the deferrals of the retries written
/// beside the new messages.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// The bound issue 26 sets on the hub's acknowledgements during a silent cut.
const ACK_P99_BOUND: Duration = Duration::from_millis(50);

/// One message of [`send_concurrently`], as its client saw it.
#[derive(serde::Deserialize)]
struct Sent {
    message_id: String,
    /// `ok`, or what went wrong.
    outcome: String,
    /// The acknowledgement: from the end of the message's data to the hub's reply, in seconds.
    ack: f64,
    /// The whole transaction: from MAIL to that reply (the accept latency of `hubrelay bench`).
    accept: f64,
}

/// Sends `sessions` × `per_session` messages to alice through `port` over concurrent smtplib
/// sessions (one per thread, messages back to back).
fn send_concurrently(port: u16, sessions: usize, per_session: usize) -> Vec<Sent> {
    let script = r#"
import json, smtplib, sys, threading, time
port, sessions, per_session = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
results, lock = [], threading.Lock()
def send(s, mid, msg):
    code, reply = s.mail("sender@example.test")
    assert code == 250, (code, reply)
    code, reply = s.rcpt("alice@example.test")
    assert code == 250, (code, reply)
    code, reply = s.docmd("DATA")
    assert code == 354, (code, reply)
    data = smtplib.quotedata(msg)
    if not data.endswith("\r\n"):
        data += "\r\n"
    dot = time.perf_counter()
    s.send(data + ".\r\n")
    code, reply = s.getreply()
    assert code == 250, (code, reply)
    return dot
def session(k):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        for n in range(per_session):
            mid = "<silent-%d-%d@client.test>" % (k, n)
            msg = ("From: bob@example.test\r\nTo: alice@example.test\r\nSubject: silent %d %d\r\n"
                   "Message-ID: %s\r\n\r\nHello.\r\n" % (k, n, mid))
            started = dot = time.perf_counter()
            try:
                dot = send(s, mid, msg)
                outcome = "ok"
            except Exception as e:
                outcome = "error %r" % e
            end = time.perf_counter()
            with lock:
                results.append({"message_id": mid, "outcome": outcome,
                                "ack": end - dot, "accept": end - started})
threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([
            port.to_string(),
            sessions.to_string(),
            per_session.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("python3 must be installed for the tests");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The p50, p99 and maximum of some times (nearest rank: always a measured value).
struct Quantiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Quantiles {
    fn of(seconds: impl Iterator<Item = f64>) -> Quantiles {
        let mut sorted: Vec<Duration> = seconds.map(Duration::from_secs_f64).collect();
        sorted.sort();
        let rank = |p: f64| {
            let r = (p / 100.0 * sorted.len() as f64).ceil() as usize;
            sorted[r.clamp(1, sorted.len()) - 1]
        };
        Quantiles {
            p50: rank(50.0),
            p99: rank(99.0),
            max: rank(100.0),
        }
    }
}

impl std::fmt::Display for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// One silent cut: a fresh site whose nodes' ports take connections and never send a byte, its
/// hub, and the messages sent through it (all acknowledged, all still queued).
struct Cut {
    site: TestSite,
    silent: (FakeNode, FakeNode),
    hub: common::Proc,
    sent: Vec<Sent>,
    ack: Quantiles,
}

impl Cut {
    fn run() -> Cut {
        // in_flow_delay is left at its default, 1s.
        let site = TestSite::new(
            &format!(
                "node_connect_timeout = \"{}ms\"",
                CONNECT_TIMEOUT.as_millis()
            ),
            &[],
        );
        // And so are the retry intervals (1s, doubling): the harness's 200ms to 1s would retry
        // every queued message every second, and in a debug build on a shared machine those
        // deferrals, not intake, would be what is measured.
        let harness = "retry_min = \"200ms\"\nretry_max = \"1s\"\n";
        let config = std::fs::read_to_string(site.config()).expect("read site.toml");
        assert!(config.contains(harness), "{config}");
        std::fs::write(site.config(), config.replace(harness, "")).expect("write site.toml");
        let silent = (
            FakeNode::start(site.ports.node1, Behaviour::Silent),
            FakeNode::start(site.ports.node2, Behaviour::Silent),
        );
        let hub = site.start(&["hub", "--name", "hub1"]);
        let admin = site.ports.hub1_admin;

        let sent = send_concurrently(site.ports.hub1, SESSIONS, PER_SESSION);
        assert_eq!(sent.len(), SESSIONS * PER_SESSION);
        for r in &sent {
            assert_eq!(r.outcome, "ok", "{}", r.message_id);
        }
        let ack = Quantiles::of(sent.iter().map(|r| r.ack));
        let accept = Quantiles::of(sent.iter().map(|r| r.accept));
        eprintln!(
            "silent next hop, {} messages over {SESSIONS} sessions: acknowledgement (end of data to 250) {ack}; MAIL to 250 {accept}",
            sent.len()
        );
        assert_eq!(
            metric(admin, "hubrelay_in_flow_delayed_total"),
            0,
            "no message waited for an in-flow token"
        );
        // Nothing was delivered and nothing lost: every acknowledged message is still queued.
        let queue = api_json(admin, "GET", "/api/queue", None);
        assert_eq!(
            queue["messages"].as_u64(),
            Some(sent.len() as u64),
            "{queue}"
        );
        Cut {
            site,
            silent,
            hub,
            sent,
            ack,
        }
    }
}

/// Silent cuts measured before the acknowledgement bound is judged on the best of them: other
/// work on a shared machine can only add delay to a run, while a hub that holds 250s back for a
/// silent next hop (1 s at p99 before issue 26) does so in every run.
const CUTS: usize = 3;

#[test]
fn a_silent_next_hop_does_not_slow_intake() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cut = Cut::run();
    let mut p99s = vec![cut.ack.p99];
    while cut.ack.p99 >= ACK_P99_BOUND && p99s.len() < CUTS {
        cut = Cut::run();
        p99s.push(cut.ack.p99);
    }
    assert!(
        cut.ack.p99 < ACK_P99_BOUND,
        "acknowledgement p99 of {CUTS} silent cuts: {p99s:?}"
    );

    // The next hop answers again: every acknowledged message arrives exactly once.
    let Cut {
        site,
        silent,
        hub,
        sent,
        ..
    } = cut;
    drop(silent);
    let _node1 = site.start(&["node", "--name", "node1"]);
    let _node2 = site.start(&["node", "--name", "node2"]);
    let acknowledged: Vec<String> = sent.into_iter().map(|r| r.message_id).collect();
    let stored = site.wait_mailbox("alice@example.test", Duration::from_secs(60), |ids| {
        ids.len() >= acknowledged.len()
    });
    assert_exactly_once(&acknowledged, &stored);
    drop(hub);
}

/// A fake node that speaks SMTP and stores nothing; once `mute` is set, the connections it took
/// before stop answering (the peer of a kept connection vanished without a reset), while new ones
/// are answered as before.
struct MutingNode {
    mute: Arc<AtomicBool>,
    /// Connections taken before the mute.
    kept: Arc<Mutex<usize>>,
    /// Message-IDs acknowledged on connections taken after it.
    after: Arc<Mutex<Vec<String>>>,
}

impl MutingNode {
    fn start(port: u16) -> MutingNode {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the fake node");
        let node = MutingNode {
            mute: Arc::default(),
            kept: Arc::default(),
            after: Arc::default(),
        };
        let (mute, kept, after) = (node.mute.clone(), node.kept.clone(), node.after.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(200) {
                let Ok(stream) = stream else { continue };
                let late = mute.load(Ordering::SeqCst);
                if !late {
                    *kept.lock().unwrap() += 1;
                }
                let (mute, after) = (mute.clone(), after.clone());
                std::thread::spawn(move || speak(stream, late, &mute, &after));
            }
        });
        node
    }
}

/// SMTP for one connection; one taken before the mute goes silent once it is set.
fn speak(stream: TcpStream, late: bool, mute: &AtomicBool, after: &Mutex<Vec<String>>) {
    let mut out = stream.try_clone().expect("clone");
    let mut lines = BufReader::new(stream);
    let _ = out.write_all(b"220 muting.test ESMTP\r\n");
    let (mut in_data, mut message_id) = (false, String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if !late && mute.load(Ordering::SeqCst) {
            continue;
        }
        let answer: &[u8] = if in_data {
            if let Some(id) = line.strip_prefix("Message-ID: ") {
                message_id = id.trim().to_string();
            }
            if line != ".\r\n" {
                continue;
            }
            in_data = false;
            if late {
                after.lock().unwrap().push(std::mem::take(&mut message_id));
            } else {
                // Slow before the mute, so that deliveries overlap and the hub keeps several
                // connections.
                std::thread::sleep(Duration::from_millis(300));
            }
            b"250 2.0.0 stored (epoch 1)\r\n"
        } else {
            match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                "EHLO" => b"250-muting.test\r\n250 8BITMIME\r\n",
                "AUTH" => b"502 5.5.1 not here\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                "QUIT" => return,
                _ => b"250 ok\r\n",
            }
        };
        if out.write_all(answer).is_err() {
            return;
        }
    }
}

#[test]
fn kept_connections_to_a_vanished_peer_are_dropped_together() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // node2 is not there (refused at once); node1's kept connections go dead together.
    let site = TestSite::new("node_connect_timeout = \"1s\"", &[]);
    let node = MutingNode::start(site.ports.node1);
    let _hub = site.start(&["hub", "--name", "hub1"]);
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let port = site.ports.hub1;
            std::thread::spawn(move || {
                let mut client = Smtplib::start();
                let id = format!("<before-{i}@client.test>");
                client.send(
                    port,
                    "bob@example.test",
                    &["alice@example.test"],
                    &message(Some(&id), "before"),
                )
            })
        })
        .collect();
    for s in senders {
        assert!(s.join().expect("sender").starts_with("refused {}"));
    }
    common::wait_queue_empty(site.ports.hub1_admin);
    let kept = *node.kept.lock().unwrap();
    assert!(
        kept >= 4,
        "too few kept connections for the test to mean anything: {kept}"
    );
    node.mute.store(true, Ordering::SeqCst);

    let started = Instant::now();
    let mut client = Smtplib::start();
    let reply = client.send(
        site.ports.hub1,
        "bob@example.test",
        &["alice@example.test"],
        &message(Some("<after@client.test>"), "after"),
    );
    assert!(reply.starts_with("refused {}"), "{reply}");
    common::wait_for(
        Duration::from_secs(30),
        "the message on a new connection",
        || {
            node.after
                .lock()
                .unwrap()
                .contains(&"<after@client.test>".to_string())
                .then_some(())
        },
    );
    let took = started.elapsed();
    // One kept connection found dead (node_connect_timeout, 1 s), then a new one after
    // retry_min; trying the other kept ones one by one would take a second each.
    assert!(
        took < Duration::from_millis(2_800),
        "delivered {took:?} after the kept connections went dead ({kept} kept)"
    );
}
