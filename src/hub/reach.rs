//! Whether a mailbox node answers, as one hub sees it from its own connections to it.
//!
//! A node on the site's network answers an *opening* — a new connection (greeting, EHLO,
//! STARTTLS) or MAIL on a kept one — within milliseconds and without touching its disk, so openings
//! tell a silent next hop (packets dropped, link down, process stopped) from a slow one. A node
//! that has kept an opening waiting without answering anything is *quiet* after [`SILENT_AFTER`]
//! and *silent* after [`PASS_BY_AFTER`]; one whose last opening failed (refused, broken, or
//! unanswered for `node_connect_timeout`) is *failed* until one is answered again.
//!
//! - **Intake** asks the short question, because a wrong answer costs nothing: a node that is
//!   quiet or failed is not *answering*, and a new message whose first attempt would start there
//!   is admitted without an in-flow token ([`super::flow`]); that attempt would be a wait on the
//!   node, not work of the hub, and the queue on disk is there to absorb the outage. A node that
//!   only paused (a loaded machine stalls a process for tens of milliseconds) costs a few messages
//!   their place in the backlog, not a delay.
//! - **Routing** asks the long one, because passing a node by defers the message by `retry_min`:
//!   attempts pass a silent node by, try failed nodes after the others, and open to a failed one
//!   only while no other opening to it is under way (the probe that finds out whether it answers
//!   again). So a silent next hop holds the openings of [`PASS_BY_AFTER`] for
//!   `node_connect_timeout`, not one per message, and none of them holds intake back.
//!
//! Free of I/O: every call takes the time, so the rules are tested here.

use std::time::{Duration, Instant};

/// How long a node may keep an opening waiting, answering nothing, before it counts as silent.
/// Openings take well under a millisecond on loopback and a few on a LAN, and a busy node answers
/// one connection or another all the time. A false alarm defers the few messages that come
/// meanwhile by `retry_min`; every millisecond here is more openings left hanging on a silent node,
/// holding delivery slots and the in-flow tokens of the messages that came first.
pub const SILENT_AFTER: Duration = Duration::from_millis(20);

/// How long a node may keep an opening waiting, answering nothing, before attempts pass it by.
/// Long enough that a loaded node's pause is not taken for an outage (with 20 ms, a few messages
/// in a thousand were deferred a second at 1,800 msg/s: `hubrelay bench` e2e p99 1,077 ms), short
/// next to `node_connect_timeout`.
pub const PASS_BY_AFTER: Duration = Duration::from_millis(500);

/// Why an attempt leaves a node alone (the reason a deferral gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeftAlone {
    /// An opening has waited [`PASS_BY_AFTER`] with nothing answered.
    #[error("silent: a connection has waited over {PASS_BY_AFTER:?} and nothing was answered")]
    Silent,
    /// The last opening failed and another attempt is finding out whether it answers again.
    #[error("its last connection failed, and another delivery is trying it")]
    Probing,
}

/// One node's record of openings.
#[derive(Debug, Default)]
pub struct Reach {
    /// Openings started and not yet answered or failed.
    waiting: u32,
    /// Since when an opening has waited with nothing answered (`None` while none waits).
    silent_since: Option<Instant>,
    /// The last opening to end failed, and none has been answered since.
    failed: bool,
}

impl Reach {
    /// Whether an opening is worth making now: not while the node is silent; after a failure
    /// only when no other opening to it is under way (the one that finds out whether it answers
    /// again).
    pub fn check(&self, now: Instant) -> Result<(), LeftAlone> {
        if self.quiet_for(now, PASS_BY_AFTER) {
            Err(LeftAlone::Silent)
        } else if self.failed && self.waiting > 0 {
            Err(LeftAlone::Probing)
        } else {
            Ok(())
        }
    }

    /// Starts an opening if [`Reach::check`] allows one.
    pub fn start(&mut self, now: Instant) -> Result<(), LeftAlone> {
        self.check(now)?;
        self.waiting += 1;
        self.silent_since.get_or_insert(now);
        Ok(())
    }

    /// The node answered an opening, whatever the reply (a passive node's 4xx is an answer).
    pub fn answered(&mut self, now: Instant) {
        self.waiting = self.waiting.saturating_sub(1);
        self.failed = false;
        self.silent_since = (self.waiting > 0).then_some(now);
    }

    /// An opening failed: refused, broken, or unanswered for `node_connect_timeout`.
    pub fn failed(&mut self) {
        self.waiting = self.waiting.saturating_sub(1);
        self.failed = true;
        if self.waiting == 0 {
            self.silent_since = None;
        }
    }

    /// Whether the last opening to end failed, with no answer since.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Whether a new message can count on the node to answer its first attempt soon.
    pub fn answering(&self, now: Instant) -> bool {
        !self.failed && !self.quiet_for(now, SILENT_AFTER)
    }

    /// Whether an opening has waited `long` with nothing answered.
    fn quiet_for(&self, now: Instant, long: Duration) -> bool {
        self.silent_since
            .is_some_and(|t| now.saturating_duration_since(t) >= long)
    }
}

/// The order in which an attempt tries the nodes of a CMS: from `preferred` (the node that last
/// took a message) round the list, except that nodes whose last opening failed come after the
/// others, so an answering node is never kept waiting behind a silent one.
pub fn attempt_order(preferred: usize, failed: &[bool]) -> Vec<usize> {
    let n = failed.len();
    let mut order: Vec<usize> = (0..n).map(|i| (preferred + i) % n.max(1)).collect();
    order.sort_by_key(|&i| failed[i]);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(start: Instant, n: u64) -> Instant {
        start + Duration::from_millis(n)
    }

    #[test]
    fn a_node_is_answering_until_an_opening_waits_too_long() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(
            r.answering(t),
            "an unknown node is given the benefit of the doubt"
        );
        assert!(r.start(t).is_ok());
        assert!(r.answering(ms(t, 19)));
        assert!(!r.answering(ms(t, 20)), "silent for SILENT_AFTER");
        r.answered(ms(t, 25));
        assert!(r.answering(ms(t, 500)), "an answer ends the silence");
    }

    #[test]
    fn openings_started_while_one_waits_do_not_reset_the_silence() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(r.start(t).is_ok());
        assert!(r.start(ms(t, 15)).is_ok());
        assert!(!r.answering(ms(t, 20)));
    }

    #[test]
    fn a_quiet_node_is_not_counted_on_but_still_tried() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(r.start(t).is_ok());
        assert!(!r.answering(ms(t, 20)), "quiet: no token for its messages");
        assert!(
            r.start(ms(t, 20)).is_ok(),
            "but a pause is no reason to defer"
        );
        assert!(r.start(ms(t, 400)).is_ok());
        r.answered(ms(t, 450));
        assert!(r.answering(ms(t, 451)), "it answered: counted on again");
    }

    #[test]
    fn a_silent_node_is_passed_by_until_it_answers_or_fails() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(r.start(t).is_ok());
        assert!(r.start(ms(t, 499)).is_ok(), "not silent yet");
        assert_eq!(
            r.start(ms(t, 500)),
            Err(LeftAlone::Silent),
            "no more openings hang on it"
        );
        assert_eq!(r.start(ms(t, 1_000)), Err(LeftAlone::Silent));
        r.answered(ms(t, 1_001));
        assert!(
            r.start(ms(t, 1_002)).is_ok(),
            "it answered one: it is not silent"
        );
        r.answered(ms(t, 1_003));
        r.answered(ms(t, 1_003));
        assert!(r.start(ms(t, 2_000)).is_ok() && r.start(ms(t, 2_000)).is_ok());
        r.failed();
        assert_eq!(
            r.start(ms(t, 2_001)),
            Err(LeftAlone::Probing),
            "an opening from before still waits"
        );
        r.failed();
        assert!(r.start(ms(t, 2_002)).is_ok(), "all ended failed: the probe");
    }

    #[test]
    fn an_answer_restarts_the_clock_for_the_openings_still_waiting() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(r.start(t).is_ok());
        assert!(r.start(ms(t, 1)).is_ok());
        r.answered(ms(t, 10));
        assert!(r.answering(ms(t, 29)), "heard from 10 ms ago");
        assert!(
            !r.answering(ms(t, 30)),
            "the other opening waited 20 ms since"
        );
        r.answered(ms(t, 31));
        assert!(r.answering(ms(t, 1000)), "nothing waits");
    }

    #[test]
    fn an_answering_node_takes_any_number_of_openings() {
        let t = Instant::now();
        let mut r = Reach::default();
        for _ in 0..64 {
            assert!(r.start(t).is_ok());
        }
        for _ in 0..64 {
            r.answered(ms(t, 1));
        }
        assert!(r.answering(ms(t, 1000)));
    }

    #[test]
    fn after_a_failure_one_opening_at_a_time_until_one_is_answered() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(r.start(t).is_ok());
        r.failed();
        assert!(r.is_failed());
        assert!(!r.answering(ms(t, 1)), "a failed node is not counted on");
        assert!(r.start(ms(t, 1)).is_ok(), "the probe");
        assert_eq!(
            r.start(ms(t, 2)),
            Err(LeftAlone::Probing),
            "left alone while the probe waits"
        );
        r.failed();
        assert!(
            r.start(ms(t, 3)).is_ok(),
            "the next probe, as soon as one ended"
        );
        r.answered(ms(t, 4));
        assert!(!r.is_failed());
        assert!(r.answering(ms(t, 4)));
        assert!(
            r.start(ms(t, 5)).is_ok() && r.start(ms(t, 5)).is_ok(),
            "concurrent again"
        );
    }

    #[test]
    fn a_failure_while_others_wait_keeps_the_silence_and_blocks_probes() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(r.start(t).is_ok());
        assert!(r.start(ms(t, 1)).is_ok());
        r.failed();
        assert!(
            r.start(ms(t, 2)) == Err(LeftAlone::Probing),
            "an opening from before the failure still waits"
        );
        r.failed();
        assert!(r.start(ms(t, 3)).is_ok());
    }

    #[test]
    fn a_passive_answer_clears_a_failure() {
        let t = Instant::now();
        let mut r = Reach::default();
        assert!(r.start(t).is_ok());
        r.failed();
        assert!(r.start(ms(t, 1)).is_ok());
        // A 4xx at MAIL is an answer: the node is reachable, just not active.
        r.answered(ms(t, 2));
        assert!(!r.is_failed() && r.answering(ms(t, 2)));
    }

    #[test]
    fn failed_nodes_are_tried_last() {
        assert_eq!(attempt_order(0, &[false, false]), vec![0, 1]);
        assert_eq!(attempt_order(1, &[false, false]), vec![1, 0]);
        assert_eq!(attempt_order(0, &[true, false]), vec![1, 0]);
        assert_eq!(attempt_order(1, &[false, true]), vec![0, 1]);
        assert_eq!(attempt_order(1, &[true, true]), vec![1, 0]);
        assert_eq!(attempt_order(0, &[]), Vec::<usize>::new());
    }
}
