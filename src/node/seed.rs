//! Reseeding a copy from a snapshot of the active node's database (`copy update`), so that its time
//! follows the size of the database, not the number of log generations ever written (most of
//! which truncation has deleted).
//!
//! The active node streams its store's records of the storage group up to its checkpoint
//! (`store::mailbox::snapshot`) while intake goes on, and keeps its logs from the checkpoint's
//! generation for the copy. The copy clears the storage group, installs the records, flushes, and
//! makes the checkpoint's generation the next one to copy; log shipping then goes on from there.
//! A reseed under way is recorded in the node's state first, so one cut short by a crash is
//! reported ("run copy update again") instead of leaving a half-filled copy that looks whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::mailbox::snapshot::{Decoder, Frame, SnapshotHeader, SnapshotReader};
use store::txlog::LogPosition;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::truncation::CopyNeed;
use super::{MailboxNode, NodeError};
use crate::client::encode;
use crate::wire::cluster::{SeedProgress, SummaryCopyStatus};

/// How long the snapshot stream may stall before the reseed is given up.
const STALL: Duration = Duration::from_secs(60);
/// Pieces of the snapshot in flight between the download and the installer.
const IN_FLIGHT: usize = 16;

/// Counters of a reseed under way, shared by its task and `status`.
#[derive(Debug)]
pub struct Seeding {
    started: Instant,
    records: AtomicU64,
    total: AtomicU64,
    bytes: AtomicU64,
}

impl Seeding {
    fn new() -> Seeding {
        Seeding {
            started: Instant::now(),
            records: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Progress as `status` shows it.
    pub fn progress(&self) -> SeedProgress {
        let elapsed = self.started.elapsed();
        let records = self.records.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-3);
        let eta_s = (records > 0 && total >= records)
            .then(|| ((total - records) as f64 * secs / records as f64).ceil() as u64);
        SeedProgress {
            records,
            records_total: total,
            bytes,
            elapsed_ms: elapsed.as_millis() as u64,
            bytes_per_s: (bytes as f64 / secs) as u64,
            eta_s,
            done: false,
        }
    }
}

/// Why a reseed stopped.
#[derive(Debug, thiserror::Error)]
enum SeedError {
    #[error("the active node: {0}")]
    Source(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{0}")]
    Snapshot(String),
    #[error("this node's role changed during the reseed")]
    Overtaken,
}

impl MailboxNode {
    /// The active side: a snapshot of `sg` up to its checkpoint now, and the logs from the
    /// checkpoint's generation kept for the copy (taken under the cluster action lock, so no
    /// truncation round runs between reading the checkpoint and keeping them).
    pub async fn snapshot_source(
        &self,
        sg: &str,
    ) -> Result<Option<(SnapshotHeader, SnapshotReader)>, NodeError> {
        let _one_at_a_time = self.exec.lock().await;
        if self.writer(sg).is_none() {
            return Ok(None);
        }
        let checkpoint = self.store.checkpoint(sg)?.map(|(p, _)| p);
        let upto = checkpoint.unwrap_or(LogPosition {
            generation: 0,
            index: 0,
        });
        let (records, reader) = self.store.snapshot(sg, upto)?;
        let first = checkpoint.map_or(1, |p| p.generation);
        self.copy_needs()
            .insert(sg.to_string(), CopyNeed::From(first));
        info!(node = %self.name, storage_group = %sg, records, checkpoint = ?checkpoint, "serving a snapshot to reseed the other node's copy");
        Ok(Some((
            SnapshotHeader {
                storage_group: sg.to_string(),
                checkpoint,
                records,
            },
            reader,
        )))
    }

    /// Starts reseeding this node's copy of `sg` (Update-StorageGroupCopy). Returns false if
    /// there is no copy here. The reseed goes on in the background; `status` shows its progress.
    pub fn start_reseed(self: &Arc<Self>, sg: &str) -> Result<bool, NodeError> {
        let seeding = Arc::new(Seeding::new());
        {
            let mut copies = self.copies();
            let Some(cs) = copies.get_mut(sg) else {
                return Ok(false);
            };
            cs.seeding = Some(seeding.clone());
            cs.status = SummaryCopyStatus::Seeding;
            cs.error = None;
            cs.needs_reseed = None;
            cs.suspended = false;
            cs.io_failed = false;
            cs.verified_epoch = None;
        }
        {
            let mut st = self.state();
            st.copied_epoch.remove(sg);
            st.seeding.insert(sg.to_string());
        }
        self.persist()?;
        let node = self.clone();
        let sg = sg.to_string();
        tokio::spawn(async move {
            let result = node.seed(&sg, &seeding).await;
            let mut copies = node.copies();
            let ours = copies.get_mut(&sg).filter(|cs| cs.seeding_is(&seeding));
            match (result, ours) {
                (Ok(()), _) => {
                    let p = seeding.progress();
                    info!(node = %node.name, storage_group = %sg, records = p.records, bytes = p.bytes, seconds = p.elapsed_ms as f64 / 1000.0, "copy reseeded from the active node's snapshot; copying its logs from here");
                }
                (Err(e), Some(cs)) => {
                    warn!(node = %node.name, storage_group = %sg, error = %e, "reseed failed");
                    cs.seeding = None;
                    cs.needs_reseed = Some(format!("reseed failed: {e}"));
                }
                (Err(e), None) => {
                    warn!(node = %node.name, storage_group = %sg, error = %e, "reseed given up")
                }
            }
        });
        Ok(true)
    }

    /// Whether `seeding` is still this copy's reseed (a mount or demotion replaces the copies).
    fn still_seeding(&self, sg: &str, seeding: &Arc<Seeding>) -> bool {
        self.copies()
            .get(sg)
            .is_some_and(|cs| cs.seeding_is(seeding))
    }

    async fn seed(self: &Arc<Self>, sg: &str, seeding: &Arc<Seeding>) -> Result<(), SeedError> {
        // Drop what the copy holds: the store's records of the SG, then every log generation.
        let node = self.clone();
        let name = sg.to_string();
        let cleared = tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
            node.store.clear(&name)?;
            if let Some(cs) = node.copies().get_mut(&name) {
                cs.copy.restart_at(1)?;
            }
            Ok(())
        });
        cleared
            .await
            .map_err(|e| SeedError::Snapshot(e.to_string()))??;
        let path = format!("/api/snapshot/{}", encode(sg));
        let mut download = self
            .seeds
            .download(self.peer.admin, &path)
            .await
            .map_err(|e| SeedError::Source(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let node = self.clone();
        let (name, counters) = (sg.to_string(), seeding.clone());
        let installer = tokio::task::spawn_blocking(move || node.install(&name, rx, &counters));
        loop {
            let chunk = tokio::time::timeout(STALL, download.chunk())
                .await
                .map_err(|_| SeedError::Source(format!("no data for {} s", STALL.as_secs())))?
                .map_err(|e| SeedError::Source(e.to_string()))?;
            let Some(chunk) = chunk else { break };
            seeding
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        drop(tx);
        let checkpoint = installer
            .await
            .map_err(|e| SeedError::Snapshot(e.to_string()))??;
        if !self.still_seeding(sg, seeding) {
            return Err(SeedError::Overtaken);
        }
        // Installed records are not fsynced one by one: flush before the copy counts on them.
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.store.flush())
            .await
            .map_err(|e| SeedError::Snapshot(e.to_string()))?
            .map_err(NodeError::from)?;
        {
            let mut copies = self.copies();
            let Some(cs) = copies.get_mut(sg).filter(|cs| cs.seeding_is(seeding)) else {
                return Err(SeedError::Overtaken);
            };
            cs.copy
                .restart_at(checkpoint.map_or(1, |p| p.generation))
                .map_err(NodeError::from)?;
            cs.seeding = None;
            cs.last_seed = Some(SeedProgress {
                done: true,
                eta_s: Some(0),
                ..seeding.progress()
            });
            cs.status = SummaryCopyStatus::Initializing;
        }
        self.state().seeding.remove(sg);
        self.persist().map_err(NodeError::from)?;
        Ok(())
    }

    /// Decodes the snapshot as it arrives and installs its records (blocking thread). Returns
    /// its checkpoint once the trailer checked out.
    fn install(
        &self,
        sg: &str,
        mut rx: mpsc::Receiver<Vec<u8>>,
        seeding: &Seeding,
    ) -> Result<Option<LogPosition>, SeedError> {
        let mut decoder = Decoder::default();
        let mut checkpoint = None;
        while let Some(piece) = rx.blocking_recv() {
            decoder.push(&piece);
            while let Some(frame) = decoder
                .next_frame()
                .map_err(|e| SeedError::Snapshot(e.to_string()))?
            {
                match frame {
                    Frame::Header(h) if h.storage_group == sg => {
                        seeding.total.store(h.records, Ordering::Relaxed);
                        checkpoint = h.checkpoint;
                    }
                    Frame::Header(h) => {
                        return Err(SeedError::Snapshot(format!(
                            "a snapshot of {} was sent for {sg}",
                            h.storage_group
                        )))
                    }
                    Frame::Record(r) => {
                        self.store.install(sg, &r).map_err(NodeError::from)?;
                        seeding.records.fetch_add(1, Ordering::Relaxed);
                    }
                    Frame::End => {}
                }
            }
        }
        if !decoder.complete() {
            return Err(SeedError::Snapshot(format!(
                "the snapshot ended early, after {} records",
                seeding.records.load(Ordering::Relaxed)
            )));
        }
        Ok(checkpoint)
    }
}
