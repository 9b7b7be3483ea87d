//! Resubmission: putting dumpster entries of a storage group back in the delivery queue.
//!
//! A request's window is resolved on this hub's own clock when it is first recorded
//! ([`crate::clock::window::resolve`]): a mailbox node sends a start this hub stamped itself and no
//! end, so no other host's clock can turn it inside out; an explicit window (an operator's, or a
//! node of the previous release) is served as asked and refused if it ends before it starts.
//!
//! A request is persisted before any work, and every batch of re-queued messages is written in the same
//! transaction as the request's cursor, so a hub restarted mid-request resumes where it stopped and
//! never queues an entry twice. The same request id again reports the stored progress, and takes
//! the work up again if no task is doing it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::hub::{Millis, ResubmitFilter, ResubmitRequest};
use tokio::time::Instant;
use tracing::{info, info_span, Instrument};

use super::{Hub, HubError};
use crate::clock::now_ms;
use crate::clock::window::resolve;

/// Most entries re-queued per transaction.
const BATCH: usize = 200;

/// Holds one resubmission to `rate` entries per second, so a large dumpster does not crowd out
/// the new active node's normal traffic: batches of at most one second's worth, each followed by
/// a wait until the entries queued so far are due at that rate (on tokio's clock, so the task
/// yields and tests can pause time).
struct Pace {
    /// Entries per second (the config refuses 0; treated as 1 here).
    rate: u64,
    started: Instant,
    queued: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1),
            started: Instant::now(),
            queued: 0,
        }
    }

    /// How many entries the next batch may re-queue.
    fn batch(&self) -> usize {
        usize::try_from(self.rate).map_or(BATCH, |r| r.min(BATCH))
    }

    /// Counts `queued` more entries and waits until the rate allows the next batch.
    async fn after(&mut self, queued: usize) {
        self.queued += queued as u64;
        tokio::time::sleep_until(self.started + due(self.queued, self.rate)).await;
    }
}

/// How long after its start a resubmission at `rate` entries per second may have queued `queued`.
fn due(queued: u64, rate: u64) -> Duration {
    Duration::from_millis(queued.saturating_mul(1_000) / rate.max(1))
}

/// The requests a task is working on, so one is never worked twice at once.
pub(super) type Resubmitting = Arc<Mutex<HashSet<String>>>;

/// Marks a request worked while it lives.
struct Running {
    set: Resubmitting,
    id: String,
}

impl Running {
    /// `None` when a task already works `id`.
    fn start(set: &Resubmitting, id: &str) -> Option<Running> {
        let fresh = lock(set).insert(id.to_string());
        fresh.then(|| Running {
            set: set.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

/// The set guards no invariant a panic could break, so poisoning is ignored.
fn lock(set: &Resubmitting) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    /// Records request `id` (if new) for the window `(low, high)` as asked (`high` open: see the
    /// module's doc) and starts working it in the background; returns its state. `filter`
    /// narrows the window's entries (an operator's targeted request); a mailbox server's
    /// request after a failover takes them all.
    pub async fn resubmit(
        self: &Arc<Self>,
        id: &str,
        sg: &str,
        (low, high): (Millis, Option<Millis>),
        filter: &ResubmitFilter,
    ) -> Result<ResubmitRequest, HubError> {
        let now = now_ms();
        let window = resolve(low, high, now, self.store.newest_delivered(sg)?)?;
        if window.widened {
            tracing::warn!(request = id, storage_group = sg, asked = %crate::clock::rfc3339(low), served = %window, "the asked start lies in this hub's future (its clock stepped back since it stamped it): resubmitting the whole dumpster");
        }
        let (req, _created) =
            self.store
                .resubmit_begin(id, sg, (window.low_ms, window.high_ms), filter, now)?;
        // Started before the wait for durability, and again on any later ask while the request
        // is unfinished and nothing works it: a caller that gives up during the wait (the node's
        // HTTP timeout drops this future), or a run stopped by an error, must not leave a
        // persisted request that no task serves until the hub restarts.
        if !req.done {
            self.clone().spawn_resubmission(req.id.clone());
        }
        self.durable().await?;
        Ok(req)
    }

    /// Continues every unfinished request (after a restart).
    pub fn resume_resubmissions(self: &Arc<Self>) -> Result<(), HubError> {
        for r in self.store.resubmit_requests()? {
            if !r.done {
                info!(request = %r.id, storage_group = %r.storage_group, "resuming resubmission");
                self.clone().spawn_resubmission(r.id);
            }
        }
        Ok(())
    }

    /// Works request `id` in the background, unless a task already does.
    fn spawn_resubmission(self: Arc<Self>, id: String) {
        let Some(running) = Running::start(&self.resubmitting, &id) else {
            return;
        };
        let span = info_span!("resubmit", request = %id, hub = %self.name);
        tokio::spawn(
            async move {
                let _running = running;
                if let Err(e) = self.run_resubmission(&id).await {
                    tracing::error!(error = %e, "resubmission stopped; it resumes when the mailbox server asks again");
                }
            }
            .instrument(span),
        );
    }

    async fn run_resubmission(&self, id: &str) -> Result<(), HubError> {
        let mut pace = Pace::new(self.site.resubmit_rate);
        loop {
            let now = now_ms();
            let expires = now + self.site.message_expiry.as_millis() as u64;
            let store = self.store.clone();
            let limits = self.limits();
            let rid = id.to_string();
            let batch = pace.batch();
            let (req, queued) = tokio::task::spawn_blocking(move || {
                store.resubmit_step(&rid, batch, now, expires, limits)
            })
            .await
            .map_err(|e| HubError::Task(e.to_string()))??;
            self.durable().await?;
            self.metrics.resubmitted(queued.len());
            for m in &queued {
                self.schedule(now, m.id);
            }
            if req.done {
                info!(storage_group = %req.storage_group, messages = req.messages, "resubmission done");
                return Ok(());
            }
            pace.after(queued.len()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Site;
    use std::path::Path;

    #[test]
    fn a_request_is_worked_by_one_task_at_a_time() {
        let set = Resubmitting::default();
        let first = Running::start(&set, "r1").expect("not running yet");
        assert!(Running::start(&set, "r1").is_none(), "worked twice");
        assert!(
            Running::start(&set, "r2").is_some(),
            "another request is independent"
        );
        drop(first);
        assert!(
            Running::start(&set, "r1").is_some(),
            "free again once the task ends"
        );
    }

    /// A request the store holds unfinished with no task working it — what an ask left behind
    /// when its caller gave up during the wait for durability, or a run that stopped on an error —
    /// is taken up again by the next ask instead of waiting for a restart. Found by the fault
    /// campaign: a node's request stayed outstanding until the site was given up on.
    #[tokio::test]
    async fn an_unserved_request_is_taken_up_again_when_asked() {
        let text = include_str!("../../config/site.toml");
        let site = Arc::new(Site::parse(Path::new("site.toml"), text).expect("example site"));
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Hub::open(site, "hub1", dir.path()).expect("open hub");
        let filter = ResubmitFilter::default();
        let (_, created) = hub
            .store
            .resubmit_begin("r1", "SG1", (0, now_ms()), &filter, now_ms())
            .expect("persist the request");
        assert!(created);
        let asked = hub
            .resubmit("r1", "SG1", (0, Some(now_ms())), &filter)
            .await
            .expect("ask");
        assert!(!asked.done, "nothing worked it yet");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stored = hub.store.resubmit_requests().expect("requests");
            if stored.iter().any(|r| r.id == "r1" && r.done) {
                break;
            }
            assert!(Instant::now() < deadline, "never worked: {stored:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A mailbox node's request (no end) is closed on this hub's clock and never refused, also
    /// when its start lies in this hub's future; an explicit window that ends before it starts is
    /// refused and not recorded.
    #[tokio::test]
    async fn an_open_window_is_closed_on_the_hubs_clock_and_an_inverted_one_refused() {
        use crate::clock::window::MARGIN_MS;
        let text = include_str!("../../config/site.toml");
        let site = Arc::new(Site::parse(Path::new("site.toml"), text).expect("example site"));
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Hub::open(site, "hub1", dir.path()).expect("open hub");
        let filter = ResubmitFilter::default();
        let now = now_ms();
        let anchored = hub
            .resubmit("anchored", "SG1", (now - 60_000, None), &filter)
            .await
            .expect("served");
        assert_eq!(anchored.low_ms, now - 60_000);
        assert!(anchored.high_ms >= now + MARGIN_MS, "{anchored:?}");
        let ahead = hub
            .resubmit("ahead", "SG1", (now + 3_600_000, None), &filter)
            .await
            .expect("served");
        assert_eq!(
            ahead.low_ms, 0,
            "a start in the hub's future: the whole dumpster"
        );
        assert!(ahead.high_ms >= now + MARGIN_MS, "{ahead:?}");
        match hub
            .resubmit("inverted", "SG1", (now, Some(now - 1)), &filter)
            .await
        {
            Err(HubError::Window(e)) => assert!(e.to_string().contains("is after"), "{e}"),
            other => panic!("an inverted window must be refused: {other:?}"),
        }
        let stored = hub.store.resubmit_requests().expect("requests");
        assert!(stored.iter().all(|r| r.id != "inverted"), "{stored:?}");
    }

    #[test]
    fn entries_are_due_at_the_configured_rate() {
        assert_eq!(due(0, 500), Duration::ZERO);
        assert_eq!(due(200, 500), Duration::from_millis(400));
        assert_eq!(due(1_000, 500), Duration::from_secs(2));
        assert_eq!(due(3, 1), Duration::from_secs(3));
        // A rate of 0 never reaches here (the config refuses it), and would not divide by zero.
        assert_eq!(due(5, 0), Duration::from_secs(5));
    }

    #[test]
    fn a_batch_is_at_most_one_second_of_the_rate() {
        assert_eq!(Pace::new(500).batch(), BATCH);
        assert_eq!(Pace::new(50).batch(), 50);
        assert_eq!(Pace::new(1).batch(), 1);
        assert_eq!(Pace::new(0).batch(), 1);
    }

    /// Re-queues `n` entries the way `run_resubmission` does (a step queues at most a batch, then
    /// waits) and returns how long that took on tokio's clock.
    async fn resubmit(n: u64, rate: u64) -> Duration {
        let start = Instant::now();
        let mut pace = Pace::new(rate);
        let mut left = n;
        while left > 0 {
            let step = (pace.batch() as u64).min(left);
            left -= step;
            pace.after(step as usize).await;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn n_entries_at_rate_r_take_n_over_r_seconds() {
        for (n, rate) in [(1_000, 500), (1_000, 100), (7, 1), (450, 300)] {
            let took = resubmit(n, rate).await;
            let expected = Duration::from_secs_f64(n as f64 / rate as f64);
            assert!(
                took >= expected && took < expected + Duration::from_millis(10),
                "{n} entries at {rate}/s took {took:?}, expected {expected:?}"
            );
        }
    }
}
