//! Continuous replication on the passive node: pull the active node's closed log generations over
//! the admin API, verify each (checksum, storage group, generation sequence) before keeping it, and
//! replay it into this node's copy of the mailbox store. A corrupt log is refused and the copy
//! reports Failed, never replaying past it.
//!
//! A node returning after a failover first discards what diverged: every generation from the first
//! epoch it did not follow (the epoch history comes from the active node), and the store changes
//! those generations made; then it copies from there (an incremental reseed).

use serde::{Deserialize, Serialize};
use store::mailbox::{MailboxError, MailboxStore};
use store::txlog::{LogCopy, LogPosition, LogRecord};
use tracing::{debug, info, warn};

use super::state::EpochStart;
use super::{MailboxNode, NodeError};
use crate::client::encode;
use crate::wire::cluster::SummaryCopyStatus;

/// The active node's answer to `GET /api/logs/{sg}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogStatus {
    /// The active node's epoch.
    pub epoch: u64,
    /// Its epoch history (where each epoch's logs begin).
    pub epochs: Vec<EpochStart>,
    /// LastLogGenerated.
    pub last_generated: u64,
    /// Highest closed generation (what can be copied).
    pub last_closed: u64,
}

/// One storage group's copy on the passive node.
pub struct CopyState {
    /// The copied generations on disk.
    pub copy: LogCopy,
    /// LastLogGenerated last reported by the active node.
    pub remote_generated: u64,
    /// The status.
    pub status: SummaryCopyStatus,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Suspended by the administrator.
    pub suspended: bool,
    /// The active epoch this copy was last checked against (generation by generation).
    pub verified_epoch: Option<u64>,
    /// When a copy round last heard from the active node: a status older than that is stale.
    pub contact: Option<std::time::Instant>,
    /// Since when (ms since the epoch) the copy has not been Healthy, as copy rounds saw it:
    /// how long it has been behind decides whether the dumpster still covers what it lacks.
    pub unhealthy_since_ms: Option<u64>,
    /// Suspended by the node itself while its disk is short of `min_free_space` (the reason):
    /// resumed by itself once there is room, unlike an administrator's suspension.
    pub disk_full: Option<String>,
    /// The last copy or replay failed on a disk error (not a bad log): the next round tries
    /// again, and replays first what was copied but not applied.
    pub io_failed: bool,
    /// The active node no longer holds a generation this copy needs (why): replication stops
    /// until a reseed (`copy update`).
    pub needs_reseed: Option<String>,
    /// A reseed under way, with its progress.
    pub seeding: Option<std::sync::Arc<super::seed::Seeding>>,
    /// How the last reseed went, once it installed its snapshot (shown by `status`).
    pub last_seed: Option<crate::wire::cluster::SeedProgress>,
}

impl CopyState {
    /// Whether `seeding` is this copy's reseed under way (a newer one, a mount or a demotion
    /// replaces it, and the older must then leave the copy alone).
    pub fn seeding_is(&self, seeding: &std::sync::Arc<super::seed::Seeding>) -> bool {
        self.seeding
            .as_ref()
            .is_some_and(|s| std::sync::Arc::ptr_eq(s, seeding))
    }

    /// A copy not yet in contact with the active node.
    pub fn new(copy: LogCopy) -> CopyState {
        CopyState {
            copy,
            remote_generated: 0,
            status: SummaryCopyStatus::Initializing,
            error: None,
            suspended: false,
            verified_epoch: None,
            contact: None,
            unhealthy_since_ms: None,
            disk_full: None,
            io_failed: false,
            needs_reseed: None,
            seeding: None,
            last_seed: None,
        }
    }
}

/// Where a copy stops agreeing with the active's epoch history.
#[derive(Debug, PartialEq, Eq)]
enum Mismatch {
    /// Every generation held agrees.
    None,
    /// From this generation on the copy holds what another epoch wrote: discard it.
    From(u64),
    /// Its first held generation already disagrees, and the active's epoch for it began before
    /// it: the truncated generations before may disagree too, and nothing is left to compare.
    BeforeFirstKept(u64),
}

/// The first generation `copy` holds that the active's `history` says was written in another
/// epoch (or that no epoch of the history wrote), if any. Only generations held are compared
/// (truncation deleted the others).
fn first_mismatch(copy: &LogCopy, sg: &str, history: &[EpochStart]) -> Result<Mismatch, NodeError> {
    let first = copy.first_kept();
    for generation in first..=copy.last_held() {
        let expected = history
            .iter()
            .rfind(|e| e.starts.get(sg).is_some_and(|s| *s <= generation));
        if expected.map(|e| e.epoch) != Some(copy.epoch_of(generation)?) {
            let began_before = expected
                .and_then(|e| e.starts.get(sg))
                .is_some_and(|s| *s < first);
            return Ok(if generation == first && began_before {
                Mismatch::BeforeFirstKept(generation)
            } else {
                Mismatch::From(generation)
            });
        }
    }
    Ok(Mismatch::None)
}

/// Replays every copied generation the store has not applied (idempotent: applying a position twice
/// changes nothing, so a crash mid-replay and a restart give the same store).
pub fn replay_all(store: &MailboxStore, sg: &str, copy: &LogCopy) -> Result<usize, NodeError> {
    let from = store.replay_from();
    let checkpoint = store.checkpoint(sg)?.map(|(pos, _)| pos);
    let first = checkpoint.map(|p| p.generation).unwrap_or(1).max(1);
    let mut applied = 0;
    for generation in first..=copy.last_copied() {
        let records = copy.records(generation)?;
        applied += apply_generation(store, sg, generation, &records, MailboxStore::reapply_batch)?;
    }
    store.replay_done(sg, from);
    Ok(applied)
}

/// How records reach the store: [`MailboxStore::apply_batch`] as copied,
/// [`MailboxStore::reapply_batch`] in a replay.
type Apply =
    fn(&MailboxStore, &str, &[(LogPosition, &LogRecord)]) -> Result<Vec<usize>, MailboxError>;

/// Applies one generation as one batch (one sync of its bodies).
fn apply_generation(
    store: &MailboxStore,
    sg: &str,
    generation: u64,
    records: &[LogRecord],
    apply: Apply,
) -> Result<usize, NodeError> {
    let batch: Vec<(LogPosition, &LogRecord)> = positioned(generation, records).collect();
    apply(store, sg, &batch)?;
    Ok(batch.len())
}

/// The records of one generation with their positions, in log order.
pub(crate) fn positioned(
    generation: u64,
    records: &[LogRecord],
) -> impl Iterator<Item = (LogPosition, &LogRecord)> {
    (0u32..).zip(records).map(move |(index, rec)| {
        let pos = LogPosition { generation, index };
        (pos, rec)
    })
}

impl CopyState {
    /// Records what a copy round found. A suspension wins: a round that was under way when the
    /// administrator suspended the copy must not report it Healthy again (which would then
    /// turn into ServiceDown, since a suspended copy hears nothing from the active node).
    pub fn settle(&mut self, status: SummaryCopyStatus, error: Option<String>) {
        if !self.suspended {
            self.status = status;
        }
        if error.is_some() {
            self.error = error;
        }
    }

    /// Why the copy is not Healthy, as `status` shows it: the node's own suspension for a full
    /// disk, else the last failure.
    pub fn reported_error(&self) -> Option<String> {
        self.needs_reseed
            .clone()
            .or_else(|| self.disk_full.clone())
            .or_else(|| self.error.clone())
    }

    /// SummaryCopyStatus as reported now: Healthy or Synchronizing only while copy rounds reach
    /// the active node, so a copy that has stopped hearing from it never looks caught up.
    pub fn reported_status(&self) -> SummaryCopyStatus {
        if self.seeding.is_some() {
            return SummaryCopyStatus::Seeding;
        }
        if self.needs_reseed.is_some() {
            return SummaryCopyStatus::FailedAndSuspended;
        }
        if self.disk_full.is_some() {
            return SummaryCopyStatus::Suspended;
        }
        match self.status {
            SummaryCopyStatus::Healthy | SummaryCopyStatus::Synchronizing
                if self.contact.is_none_or(|t| t.elapsed() > STALE_CONTACT) =>
            {
                SummaryCopyStatus::ServiceDown
            }
            s => s,
        }
    }
}

/// How long a copy may go without hearing from the active node before it reports ServiceDown.
const STALE_CONTACT: std::time::Duration = std::time::Duration::from_secs(2);

impl MailboxNode {
    /// One round of copying for every storage group from the active peer.
    pub async fn copy_round(&self) {
        for sg in self.storage_groups() {
            if let Err(e) = self.copy_sg(&sg).await {
                warn!(node = %self.name, storage_group = %sg, error = %e, "copy failed");
            }
            self.note_health(&sg);
        }
    }

    /// Starts or ends the copy's unhealthy period after a round (suspended copies included).
    fn note_health(&self, sg: &str) {
        if let Some(cs) = self.copies().get_mut(sg) {
            if cs.reported_status() == SummaryCopyStatus::Healthy {
                cs.unhealthy_since_ms = None;
            } else if cs.unhealthy_since_ms.is_none() {
                cs.unhealthy_since_ms = Some(crate::clock::now_ms());
            }
        }
    }

    async fn copy_sg(&self, sg: &str) -> Result<(), NodeError> {
        let (stopped, io_failed, report) = self.copies().get(sg).map_or((true, false, None), |c| {
            let refused = c.status == SummaryCopyStatus::Failed && !c.io_failed;
            let stopped = c.suspended
                || refused
                || c.disk_full.is_some()
                || c.needs_reseed.is_some()
                || c.seeding.is_some();
            // What this copy holds, for the active's log truncation: only once it follows the
            // active's epoch (checked in an earlier round), so the report cannot be stale.
            let report = c
                .verified_epoch
                .map(|epoch| (epoch, c.copy.last_copied() + 1));
            (stopped, c.io_failed, report)
        });
        if stopped {
            return Ok(());
        }
        if io_failed {
            self.replay_after_disk_error(sg)?;
        }
        let path = match report {
            Some((epoch, next)) => format!("/api/logs/{}?epoch={epoch}&next={next}", encode(sg)),
            None => format!("/api/logs/{}", encode(sg)),
        };
        let status: LogStatus = match self.client.get(self.peer.admin, &path).await {
            Ok(s) => s,
            Err(_) => {
                self.set_status(sg, SummaryCopyStatus::ServiceDown, None);
                return Ok(());
            }
        };
        if !self.follow_epoch(sg, &status)? {
            return Ok(());
        }
        let mut next = self
            .copies()
            .get(sg)
            .map(|c| c.copy.last_copied() + 1)
            .unwrap_or(1);
        while next <= status.last_closed {
            // Checked again per generation: a suspension stops a round already under way.
            if self
                .copies()
                .get(sg)
                .is_none_or(|c| c.suspended || c.seeding.is_some())
            {
                return Ok(());
            }
            let path = format!("/api/logs/{}/{next}", encode(sg));
            let bytes = match self.client.get_bytes(self.peer.admin, &path).await {
                Ok(b) => b,
                Err(crate::client::ClientError::Status {
                    status: 410,
                    message,
                    ..
                }) => {
                    self.lost_by_active(sg, next, &message);
                    return Ok(());
                }
                Err(_) => {
                    self.set_status(sg, SummaryCopyStatus::ServiceDown, None);
                    return Ok(());
                }
            };
            let stored = {
                let mut copies = self.copies();
                let Some(cs) = copies.get_mut(sg) else {
                    return Ok(());
                };
                cs.copy.store(next, &bytes)
            };
            match stored {
                Ok(records) => {
                    if let Err(e) =
                        apply_generation(&self.store, sg, next, &records, MailboxStore::apply_batch)
                    {
                        self.disk_error(sg, &e.to_string());
                        return Err(e);
                    }
                }
                Err(e @ store::txlog::TxLogError::Io { .. }) => {
                    self.disk_error(sg, &e.root_cause());
                    return Ok(());
                }
                Err(e) => {
                    warn!(node = %self.name, storage_group = %sg, generation = next, error = %e, "log refused; replication stopped");
                    self.set_status(sg, SummaryCopyStatus::Failed, Some(e.to_string()));
                    return Ok(());
                }
            }
            next += 1;
        }
        let mut copies = self.copies();
        if let Some(cs) = copies.get_mut(sg) {
            cs.remote_generated = status.last_generated;
            cs.contact = Some(std::time::Instant::now());
            let caught_up = if cs.copy.last_copied() >= status.last_closed {
                SummaryCopyStatus::Healthy
            } else {
                SummaryCopyStatus::Synchronizing
            };
            cs.settle(caught_up, None);
            cs.error = None;
        }
        Ok(())
    }

    /// Makes this copy a prefix of the active node's history before anything is copied from it.
    /// Returns false when the answer must be ignored: it comes from a node that has since lost
    /// its authority (a later epoch is known here), or this node mounted meanwhile.
    ///
    /// Every generation held is compared with the active's epoch history by the epoch stamped in
    /// its header (a generation is written in exactly one epoch, so the same number written by two
    /// nodes in different epochs differs here); from the first one that differs everything is
    /// discarded, in the store too, and the hubs are asked to resubmit what the discarded records
    /// delivered: a node acknowledges only with authority, but a reply can leave late.
    fn follow_epoch(&self, sg: &str, status: &LogStatus) -> Result<bool, NodeError> {
        let known = self.machine().highest_known_epoch();
        if status.epoch < known || !status.epochs.iter().any(|e| e.epoch == status.epoch) {
            debug!(node = %self.name, storage_group = %sg, epoch = status.epoch, known, "ignoring a log status from an epoch that has lost its authority");
            return Ok(false);
        }
        let verified = self
            .copies()
            .get(sg)
            .is_some_and(|c| c.verified_epoch == Some(status.epoch));
        if verified {
            return Ok(true);
        }
        let mismatch = {
            let copies = self.copies();
            let Some(cs) = copies.get(sg) else {
                return Ok(false);
            };
            first_mismatch(&cs.copy, sg, &status.epochs)?
        };
        if let Mismatch::BeforeFirstKept(g) = mismatch {
            self.lost_by_active(
                sg,
                g,
                "this copy's first log generation differs from the active's history, which began before it; older generations are truncated here",
            );
            return Ok(false);
        }
        if let Mismatch::From(g) = mismatch {
            let removed = self.store.discard_from(sg, g)?;
            if let Some(cs) = self.copies().get_mut(sg) {
                cs.copy.truncate_from(g)?;
            }
            info!(node = %self.name, storage_group = %sg, from_generation = g, removed, epoch = status.epoch, "discarded logs that differ from the active node's; copying from it");
            if removed > 0 {
                let anchors = self.store.hub_anchors(sg)?;
                let c = &self.site.cms[self.cms];
                let mut st = self.state();
                super::outstanding::request_discarded(
                    &self.site,
                    &mut st,
                    &format!(
                        "{}-{}-discarded-e{}-{sg}-g{g}",
                        c.name, self.name, status.epoch
                    ),
                    sg,
                    &anchors,
                    crate::clock::now_ms(),
                );
                warn!(node = %self.name, storage_group = %sg, removed, "discarded deliveries may have been acknowledged; asking every hub to resubmit them");
            }
        }
        {
            // Under the copies lock, so a mount (which takes the copies) either sees this history
            // and appends its own epoch to it, or makes this answer moot.
            let mut copies = self.copies();
            let Some(cs) = copies.get_mut(sg) else {
                return Ok(false);
            };
            cs.verified_epoch = Some(status.epoch);
            let mut st = self.state();
            st.epochs = status.epochs.clone();
            st.copied_epoch.insert(sg.to_string(), status.epoch);
        }
        self.persist()?;
        Ok(true)
    }

    /// The active node no longer has generation `generation`: this copy cannot catch up by log
    /// shipping and needs a reseed. Stops replication (FailedAndSuspended) until `copy update`.
    fn lost_by_active(&self, sg: &str, generation: u64, why: &str) {
        let reason = format!(
            "needs reseed: the active node no longer keeps log generation {generation} ({why})"
        );
        warn!(node = %self.name, storage_group = %sg, generation, reason, "copy cannot catch up from the logs; replication stopped until a reseed");
        if let Some(cs) = self.copies().get_mut(sg) {
            cs.needs_reseed = Some(reason);
        }
    }

    /// A copy or replay that failed on the disk: reported Failed with the path, and tried again
    /// next round (a bad log, by contrast, stops replication until an administrator acts).
    fn disk_error(&self, sg: &str, error: &str) {
        warn!(node = %self.name, storage_group = %sg, error, "copy failed on a disk error; trying again next round");
        if let Some(cs) = self.copies().get_mut(sg) {
            cs.io_failed = true;
            cs.settle(SummaryCopyStatus::Failed, Some(error.to_string()));
        }
    }

    /// Before copying on after a disk error: applies what was copied but not replayed (the
    /// store may also have been opened again and lost applies it had not flushed).
    fn replay_after_disk_error(&self, sg: &str) -> Result<(), NodeError> {
        let copies = self.copies();
        let Some(cs) = copies.get(sg) else {
            return Ok(());
        };
        match replay_all(&self.store, sg, &cs.copy) {
            Ok(n) => {
                drop(copies);
                if let Some(cs) = self.copies().get_mut(sg) {
                    cs.io_failed = false;
                    cs.error = None;
                }
                info!(node = %self.name, storage_group = %sg, replayed = n, "copy writable again; replication resumed");
                Ok(())
            }
            Err(e) => {
                drop(copies);
                self.disk_error(sg, &e.to_string());
                Err(e)
            }
        }
    }

    fn set_status(&self, sg: &str, status: SummaryCopyStatus, error: Option<String>) {
        if let Some(cs) = self.copies().get_mut(sg) {
            cs.settle(status, error);
        }
    }

    /// Suspends or resumes a copy (administrator).
    pub fn suspend(&self, sg: &str, suspended: bool) -> bool {
        match self.copies().get_mut(sg) {
            Some(cs) => {
                cs.suspended = suspended;
                cs.status = if suspended {
                    SummaryCopyStatus::Suspended
                } else {
                    SummaryCopyStatus::Initializing
                };
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CopyState, SummaryCopyStatus};

    fn copy(dir: &std::path::Path) -> CopyState {
        CopyState::new(store::txlog::LogCopy::open(dir, "SG1").expect("open copy"))
    }

    /// Builds a log of generations 1..=6 (epoch 4 for 1..=3, epoch 5 for 4..=6) as a copy.
    fn copy_of_two_epochs(dir: &std::path::Path) -> store::txlog::LogCopy {
        use store::txlog::{LogRecord, TxLog};
        let mut log = TxLog::open(dir, "SG1", 4096).expect("log");
        for g in 1..=6u64 {
            log.begin_epoch(if g <= 3 { 4 } else { 5 }).expect("epoch");
            log.append(&LogRecord {
                message_id: format!("<m{g}>"),
                recipients: vec!["alice@example.test".into()],
                sender: "bob@example.test".into(),
                time_ms: g,
                body: b"x".to_vec(),
            })
            .expect("append");
            log.roll().expect("roll");
        }
        drop(log);
        store::txlog::LogCopy::open(dir, "SG1").expect("copy")
    }

    fn history(starts: &[(u64, u64)]) -> Vec<super::EpochStart> {
        starts
            .iter()
            .map(|(epoch, start)| super::EpochStart {
                epoch: *epoch,
                starts: [("SG1".to_string(), *start)].into(),
            })
            .collect()
    }

    #[test]
    fn divergence_is_found_among_the_generations_held_and_never_guessed_below_them() {
        use super::{first_mismatch, Mismatch};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut copy = copy_of_two_epochs(dir.path());
        let agree = history(&[(4, 1), (5, 4)]);
        assert_eq!(
            first_mismatch(&copy, "SG1", &agree).unwrap(),
            Mismatch::None
        );
        // The active's epoch 6 began at 5: this copy's 5 and 6 (epoch 5) diverged.
        let later = history(&[(4, 1), (5, 4), (6, 5)]);
        assert_eq!(
            first_mismatch(&copy, "SG1", &later).unwrap(),
            Mismatch::From(5)
        );
        copy.truncate_before(5).expect("truncate");
        assert_eq!(
            first_mismatch(&copy, "SG1", &later).unwrap(),
            Mismatch::From(5)
        );
        // The active's epoch 6 began at 3, below what is kept here: 3 and 4 are gone, so how far
        // back this copy diverged cannot be told; it needs a reseed.
        let earlier = history(&[(4, 1), (6, 3)]);
        assert_eq!(
            first_mismatch(&copy, "SG1", &earlier).unwrap(),
            Mismatch::BeforeFirstKept(5)
        );
    }

    #[test]
    fn a_round_under_way_does_not_undo_a_suspension() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cs = copy(dir.path());
        cs.settle(SummaryCopyStatus::Healthy, None);
        assert_eq!(cs.status, SummaryCopyStatus::Healthy);

        // The administrator suspends while a round is copying; the round then finishes.
        cs.suspended = true;
        cs.status = SummaryCopyStatus::Suspended;
        cs.settle(SummaryCopyStatus::Healthy, None);
        cs.settle(SummaryCopyStatus::ServiceDown, Some("peer gone".into()));
        assert_eq!(cs.status, SummaryCopyStatus::Suspended);
        assert_eq!(cs.reported_status(), SummaryCopyStatus::Suspended);
        assert_eq!(
            cs.error.as_deref(),
            Some("peer gone"),
            "what the round saw is kept"
        );
    }
}
