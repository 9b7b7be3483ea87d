//! Resubmission: putting dumpster entries of a storage group back in the delivery queue.
//!
//! A request is persisted before any work, and every batch of re-queued messages is written in the same
//! transaction as the request's cursor, so a hub restarted mid-request resumes where it stopped and
//! never queues an entry twice. The same request id again only reports the stored progress.

use std::sync::Arc;
use std::time::Duration;

use store::hub::{Millis, ResubmitFilter, ResubmitRequest};
use tokio::time::Instant;
use tracing::{info, info_span, Instrument};

use super::{Hub, HubError};
use crate::runtime::now_ms;

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

impl Hub {
    /// Records request `id` (if new) and starts working it in the background; returns its state.
    /// `filter` narrows the window's entries (an operator's targeted request); a mailbox
    /// server's request after a failover takes them all.
    pub async fn resubmit(
        self: &Arc<Self>,
        id: &str,
        sg: &str,
        window: (Millis, Millis),
        filter: &ResubmitFilter,
    ) -> Result<ResubmitRequest, HubError> {
        let (req, created) = self
            .store
            .resubmit_begin(id, sg, window, filter, now_ms())?;
        self.durable().await?;
        if created {
            self.clone().spawn_resubmission(req.id.clone());
        }
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

    fn spawn_resubmission(self: Arc<Self>, id: String) {
        let span = info_span!("resubmit", request = %id, hub = %self.name);
        tokio::spawn(
            async move {
                if let Err(e) = self.run_resubmission(&id).await {
                    tracing::error!(error = %e, "resubmission stopped; it resumes at the next start");
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
