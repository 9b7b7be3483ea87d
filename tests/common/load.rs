//! Mail sent in the background through both hubs of a test site while a test injects a fault, and
//! the check that every message a hub answered 250 for is in the mailbox exactly once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Smtplib, TestSite};

/// Mail sent in the background through both hubs.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    sender: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    /// Waits until `more` further messages have been acknowledged.
    pub fn wait_acked(&self, more: usize) {
        let want = self.acked.load(Ordering::SeqCst) + more;
        let started = Instant::now();
        while self.acked.load(Ordering::SeqCst) < want {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the load stalled at {} acknowledged",
                self.acked.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it, checks every message that got its 250 is in alice's mailbox exactly once, and
    /// returns how many there were.
    pub fn finish(self, site: &TestSite) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let acked = self.sender.join().expect("sender");
        assert!(
            acked.len() > 20,
            "too little load: {} acknowledged",
            acked.len()
        );
        every_250_once(site, &acked);
        acked.len()
    }
}

/// Sends to alice through both hubs until stopped (at most `max` messages, at most 90 s), one SMTP
/// session each.
pub fn load(site: &TestSite, prefix: &'static str, max: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let ports = (site.ports.hub1, site.ports.hub2);
    let (stopped, count) = (stop.clone(), acked_count.clone());
    let sender = std::thread::spawn(move || {
        let stop = stopped;
        let mut client = Smtplib::start();
        let mut acked = Vec::new();
        let started = Instant::now();
        for i in 0..max {
            if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(90) {
                break;
            }
            let id = format!("<{prefix}-{i}@load.test>");
            let port = if i % 2 == 0 { ports.0 } else { ports.1 };
            let reply = client.send(
                port,
                "bob@example.test",
                &["alice@example.test"],
                &super::message(Some(&id), prefix),
            );
            if reply.starts_with("refused {}") {
                acked.push(id);
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
        acked
    });
    Load {
        stop,
        acked: acked_count,
        sender,
    }
}

/// Every acknowledged message is in alice's mailbox exactly once (and nothing else is).
pub fn every_250_once(site: &TestSite, acked: &[String]) {
    assert_eq!(
        acked.iter().collect::<BTreeSet<_>>().len(),
        acked.len(),
        "a Message-ID was sent twice"
    );
    super::wait_alice_exactly(site, acked, Duration::from_secs(60));
}
