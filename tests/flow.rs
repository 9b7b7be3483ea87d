//! Intake follows delivery (`in_flow_delay`), against a running hub: while its deliveries are
//! stuck, the hub holds back the 250 of new messages once 128 wait for their first attempt, yet
//! refuses none, and every message it acknowledged reaches its mailbox exactly once when the
//! mailbox servers answer again.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{message, metric, Smtplib, TestSite};

/// New messages that may wait for a first attempt before intake slows (the hub's constant).
const BACKLOG: usize = 128;
/// The `in_flow_delay` of this test's site.
const DELAY: Duration = Duration::from_millis(700);

#[test]
fn stuck_deliveries_slow_intake_but_nothing_is_refused_or_lost() {
    let site = TestSite::new(&format!("in_flow_delay = \"{}ms\"", DELAY.as_millis()), &[]);
    // node1's SMTP address takes connections and never answers, so every attempt hangs; node2's
    // refuses them. Nothing is delivered, and no attempt ends, until the tarpit goes.
    let tarpit = TcpListener::bind(("127.0.0.1", site.ports.node1)).expect("bind the tarpit");
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
    drop(tarpit);
    let _node1 = site.start(&["node", "--name", "node1"]);
    let _node2 = site.start(&["node", "--name", "node2"]);
    let stored = site.wait_mailbox("alice@example.test", Duration::from_secs(60), |ids| {
        ids.len() >= acknowledged.len()
    });
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &stored {
        *count.entry(id.as_str()).or_default() += 1;
    }
    for id in &acknowledged {
        assert_eq!(count.get(id.as_str()), Some(&1), "{id} in {stored:?}");
    }
    assert_eq!(stored.len(), acknowledged.len(), "{stored:?}");
    drop(hub);
}
