//! Resubmission: putting dumpster entries of a storage group back in the delivery queue.
//!
//! A request is persisted before any work, and every batch of re-queued messages is written in the same
//! transaction as the request's cursor, so a hub restarted mid-request resumes where it stopped and
//! never queues an entry twice. The same request id again only reports the stored progress.

use std::sync::Arc;

use store::hub::{Millis, ResubmitRequest};
use tracing::{info, info_span, Instrument};

use super::{Hub, HubError};
use crate::runtime::now_ms;

/// Most entries re-queued per transaction.
const BATCH: usize = 200;

/// How long after its start a resubmission may have re-queued `queued` entries at `rate` per
/// second: it waits until then before the next batch.
fn paced(queued: u64, rate: u64) -> std::time::Duration {
    std::time::Duration::from_millis(queued.saturating_mul(1_000) / rate.max(1))
}

impl Hub {
    /// Records request `id` (if new) and starts working it in the background; returns its state.
    pub async fn resubmit(
        self: &Arc<Self>,
        id: &str,
        sg: &str,
        low_ms: Millis,
        high_ms: Millis,
    ) -> Result<ResubmitRequest, HubError> {
        let (req, created) = self
            .store
            .resubmit_begin(id, sg, low_ms, high_ms, now_ms())?;
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
        let rate = self.site.resubmit_rate;
        let batch = BATCH.min(usize::try_from(rate).unwrap_or(BATCH)).max(1);
        let started = tokio::time::Instant::now();
        let mut queued_total = 0u64;
        loop {
            let now = now_ms();
            let expires = now + self.site.message_expiry.as_millis() as u64;
            let store = self.store.clone();
            let limits = self.limits();
            let rid = id.to_string();
            let (req, queued) = tokio::task::spawn_blocking(move || {
                store.resubmit_step(&rid, batch, now, expires, limits)
            })
            .await
            .map_err(|e| HubError::Task(e.to_string()))??;
            self.durable().await?;
            for m in &queued {
                self.schedule(now, m.id);
            }
            if req.done {
                info!(storage_group = %req.storage_group, messages = req.messages, "resubmission done");
                return Ok(());
            }
            queued_total += queued.len() as u64;
            tokio::time::sleep_until(started + paced(queued_total, rate)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pacing_holds_the_configured_rate() {
        assert_eq!(paced(0, 500), Duration::ZERO);
        assert_eq!(paced(200, 500), Duration::from_millis(400));
        assert_eq!(paced(1_000, 500), Duration::from_secs(2));
        assert_eq!(paced(3, 1), Duration::from_secs(3));
        // A rate of 0 never reaches here (the config refuses it), and would not divide by zero.
        assert_eq!(paced(5, 0), Duration::from_secs(5));
    }
}
