//! Checkpoints and log truncation on a running node, so that log disk stays bounded over months.
//!
//! Each round reads every storage group's replay checkpoint, flushes the mailbox store (after which
//! every record up to those checkpoints is durable), and deletes the log generations that
//! [`truncation::decide`] says nothing needs any more: on the active, behind its checkpoint, the
//! passive's reported copy position and the tail; on the passive, behind its checkpoint and the
//! tail. The round runs under the cluster action lock, so a mount or demotion never sees a log
//! directory change under it.

use std::collections::HashMap;
use std::sync::Arc;

use store::txlog::{self, Truncated};
use tracing::{debug, info, warn};

use super::truncation::{self, CopyNeed, Inputs};
use super::{MailboxNode, NodeError};

impl MailboxNode {
    /// One checkpoint and truncation round (on a blocking thread: it flushes and deletes files).
    pub async fn truncate_round(self: &Arc<Self>) {
        let _one_at_a_time = self.exec.lock().await;
        let node = self.clone();
        match tokio::task::spawn_blocking(move || node.truncate_logs()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(node = %self.name, error = %e, "log truncation failed; trying again next round")
            }
            Err(e) => warn!(node = %self.name, error = %e, "log truncation task failed"),
        }
    }

    /// What the other node's copy of `sg` reported it needs, while this node is active.
    pub fn note_copy_report(&self, sg: &str, epoch: u64, next: u64) {
        let Some(w) = self.writer(sg) else { return };
        if w.epoch() != epoch {
            return;
        }
        let first = txlog::first_kept(&self.log_dir(sg)).unwrap_or(1);
        let need = if next < first {
            // It needs what is gone: it will be told so, and holds nothing back.
            CopyNeed::Abandoned
        } else {
            CopyNeed::From(next)
        };
        self.copy_needs().insert(sg.to_string(), need);
    }

    pub(super) fn copy_needs(&self) -> std::sync::MutexGuard<'_, HashMap<String, CopyNeed>> {
        self.copy_needs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn truncate_logs(&self) -> Result<(), NodeError> {
        let c = &self.site.cms[self.cms];
        let mut checkpoints = HashMap::new();
        for sg in self.storage_groups() {
            let generation = self.store.checkpoint(&sg)?.map(|(p, _)| p.generation);
            checkpoints.insert(sg, generation);
        }
        // Everything applied before the checkpoints were read is durable from here on.
        self.store.flush()?;
        for (sg, checkpoint) in checkpoints {
            let dir = self.log_dir(&sg);
            let base = Inputs {
                first_kept: 0,
                last_closed: 0,
                checkpoint,
                tail: c.log_tail,
                copy: None,
                sizes: Vec::new(),
                max_backlog: c.max_log_backlog,
                verified: true,
            };
            let done = match self.writer(&sg) {
                Some(w) => {
                    let first_kept = txlog::first_kept(&dir)?;
                    let last_closed = w.last_closed();
                    let need = *self
                        .copy_needs()
                        .entry(sg.clone())
                        .or_insert(CopyNeed::Unknown);
                    let i = Inputs {
                        first_kept,
                        last_closed,
                        copy: Some(need),
                        sizes: (first_kept..=last_closed)
                            .map(|g| txlog::closed_bytes(&dir, g, g))
                            .collect(),
                        ..base
                    };
                    let d = truncation::decide(&i);
                    if d.abandon_copy {
                        self.copy_needs().insert(sg.clone(), CopyNeed::Abandoned);
                        warn!(node = %self.name, storage_group = %sg, max_log_backlog = c.max_log_backlog, "the other node's copy is further behind than max_log_backlog; logs are no longer kept for it, and it needs a reseed");
                    }
                    txlog::truncate_before(&dir, d.truncate_before)?
                }
                None => {
                    let mut copies = self.copies();
                    let Some(cs) = copies.get_mut(&sg) else {
                        continue;
                    };
                    let i = Inputs {
                        first_kept: cs.copy.first_kept(),
                        last_closed: cs.copy.last_copied(),
                        verified: cs.verified_epoch.is_some() && cs.seeding.is_none(),
                        ..base
                    };
                    let d = truncation::decide(&i);
                    cs.copy.truncate_before(d.truncate_before)?
                }
            };
            self.note_truncated(&sg, done);
        }
        Ok(())
    }

    fn note_truncated(&self, sg: &str, done: Truncated) {
        if done.generations == 0 {
            return;
        }
        self.metrics.log_truncated(sg, done.bytes);
        let first = done.first_kept;
        if done.generations > 16 {
            info!(node = %self.name, storage_group = %sg, generations = done.generations, bytes = done.bytes, first_kept = first, "log generations behind the checkpoint deleted");
        } else {
            debug!(node = %self.name, storage_group = %sg, generations = done.generations, bytes = done.bytes, first_kept = first, "log generations behind the checkpoint deleted");
        }
    }
}
