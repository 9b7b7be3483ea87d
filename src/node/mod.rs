//! The mailbox node role: one of the two nodes of a clustered mailbox server.
//!
//! While active, the node accepts deliveries from hubs: each message is appended to its storage
//! group's transaction log, the log is fsynced (one fsync for every message that arrived meanwhile),
//! the records are applied to the mailbox store, and only then — if the node still holds authority
//! for the epoch it wrote in — does the hub get its 250. A message a mailbox already holds (same
//! Message-ID and content) is acknowledged and dropped, so redelivery — after a hub crash, or a
//! dumpster resubmission — never doubles mail.
//!
//! While passive, it pulls the active node's closed log generations ([`replication`]), verifies and
//! replays them. The [`driver`] feeds the cluster state machine (`crate::cluster::machine`) and carries
//! out its decisions: mounting (after a lossy failover, asking every hub to resubmit — [`outstanding`])
//! and demoting.

pub mod checkpoint;
pub mod copy_admin;
pub mod disk;
pub mod driver;
pub mod inbound;
pub mod metrics;
pub mod outstanding;
pub mod replication;
pub mod seed;
pub mod state;
pub mod truncation;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use store::mailbox::{MailboxError, MailboxStore};
use store::txlog::{LogPosition, LogRecord, TxLog, TxLogError};
use tracing::{info, warn};

use crate::client::AdminClient;
use crate::clock::{mono_ms, now_ms};
use crate::cluster::machine::{Machine, Timing};
use crate::cluster::witness::{EtcdWitness, ShareWitness, Witness};
use crate::config::{Node, Site, WitnessConfig};
use crate::space::Space;
use metrics::NodeMetrics;
use replication::CopyState;
use state::{EpochStart, NodeState, StateError};
use writer::SgWriter;

/// Why a node could not start or change role.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The mailbox store failed.
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    /// A transaction log failed.
    #[error(transparent)]
    Log(#[from] TxLogError),
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The admin client (heartbeats, log shipping, resubmission requests) cannot be set up.
    #[error(transparent)]
    AdminClient(#[from] crate::client::ClientError),
    /// The witness could not be prepared (its directory, or the etcd client's files).
    #[error("witness {at}: {reason}")]
    Witness {
        /// The directory or the etcd endpoints.
        at: String,
        /// What went wrong.
        reason: String,
    },
}

/// One running mailbox node.
pub struct MailboxNode {
    /// This node's name.
    pub name: String,
    /// The site it belongs to.
    pub site: Arc<Site>,
    /// Index of its CMS in `site.cms`.
    pub cms: usize,
    /// Host name used in greetings and Received headers.
    pub hostname: String,
    /// The mailboxes (its copy of every storage group of the CMS).
    pub store: Arc<MailboxStore>,
    /// The other node of the CMS.
    pub peer: Node,
    /// The file share witness.
    pub witness: Witness,
    /// Cluster timings.
    pub timing: Timing,
    /// Admin API client (log shipping, resubmission requests, moves).
    pub client: AdminClient,
    /// Its Prometheus metrics, served at /metrics.
    pub metrics: NodeMetrics,
    /// Free space where its store and logs are, against `min_free_space`.
    pub space: Space,
    disk: disk::DiskWatch,
    /// Admin API client for heartbeats, with a timeout shorter than the heartbeat period.
    heartbeats: AdminClient,
    /// Admin API client for a scheduled move's takeover call (the target copies, then mounts).
    moves: AdminClient,
    /// Admin API client for reseeds: a snapshot takes as long as the database is big.
    seeds: AdminClient,
    dir: PathBuf,
    machine: Mutex<Machine>,
    writers: Mutex<Option<HashMap<String, SgWriter>>>,
    copies: Mutex<BTreeMap<String, CopyState>>,
    /// While active: what the other node's copy reported it needs, per storage group (what log
    /// truncation keeps for it); forgotten at every mount and demotion.
    copy_needs: Mutex<HashMap<String, truncation::CopyNeed>>,
    state: Mutex<NodeState>,
    /// A scheduled move is under way (or failed and waits to take the lease back): refuse deliveries.
    moving: AtomicBool,
    /// The move's sealed writers wait for the lease to come back: a move whose target may still mount.
    handover_pending: AtomicBool,
    /// Serializes the execution of cluster actions.
    exec: tokio::sync::Mutex<()>,
}

impl MailboxNode {
    /// Opens the node's store and state under `dir`; it starts passive and the driver earns it a role.
    pub fn open(
        site: Arc<Site>,
        name: &str,
        cms: usize,
        dir: &Path,
    ) -> Result<Arc<MailboxNode>, NodeError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let store = Arc::new(MailboxStore::open(
            &dir.join("store"),
            site.dedup_retention.as_millis() as u64,
            site.store_cache_size,
        )?);
        let c = &site.cms[cms];
        let state = NodeState::load(dir)?;
        let witness = match &c.witness {
            WitnessConfig::Share(path) => {
                let witness_dir = match dir.parent() {
                    Some(data) if path.is_relative() => data.join(path),
                    _ => path.clone(),
                };
                // Provisioning the share is part of setting the CMS up; once running, a missing
                // directory means the witness is unavailable and is reported as such.
                std::fs::create_dir_all(&witness_dir).map_err(|e| NodeError::Witness {
                    at: witness_dir.display().to_string(),
                    reason: e.to_string(),
                })?;
                Witness::Share(ShareWitness::new(&witness_dir, name))
            }
            WitnessConfig::Etcd(etcd) => Witness::Etcd(EtcdWitness::new(etcd, name).map_err(
                |e| NodeError::Witness {
                    at: etcd.endpoints.join(","),
                    reason: e.to_string(),
                },
            )?),
        };
        // Under admin_tls = "mutual" every call to another role presents this node's certificate.
        let identity = c
            .nodes
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.tls.as_ref());
        let first = c.nodes.first().is_some_and(|n| n.name == name);
        let peer = c
            .nodes
            .iter()
            .find(|n| n.name != name)
            .cloned()
            .expect("config validation guarantees two nodes per CMS");
        let timing = Timing::default();
        let machine = Machine::new(
            name,
            first,
            state.cluster.clone(),
            timing,
            c.auto_database_mount_dial.max_lost_logs(),
            mono_ms(),
            rand::random(),
        );
        let node = Arc::new(MailboxNode {
            name: name.to_string(),
            hostname: format!("{name}.{}", c.name),
            site: site.clone(),
            cms,
            store,
            peer,
            witness,
            timing,
            client: AdminClient::presenting(&site, identity, crate::client::TIMEOUT)?,
            metrics: NodeMetrics::new(
                name,
                &c.name,
                &c.storage_groups
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>(),
            ),
            space: Space::new(
                vec![dir.to_path_buf(), dir.join("logs")],
                site.min_free_space,
            ),
            disk: disk::DiskWatch::default(),
            heartbeats: AdminClient::presenting(
                &site,
                identity,
                std::time::Duration::from_millis(400),
            )?,
            moves: AdminClient::presenting(&site, identity, std::time::Duration::from_secs(40))?,
            seeds: AdminClient::presenting(
                &site,
                identity,
                std::time::Duration::from_secs(7 * 86_400),
            )?,
            dir: dir.to_path_buf(),
            machine: Mutex::new(machine),
            writers: Mutex::new(None),
            copies: Mutex::new(BTreeMap::new()),
            copy_needs: Mutex::new(HashMap::new()),
            state: Mutex::new(state),
            moving: AtomicBool::new(false),
            handover_pending: AtomicBool::new(false),
            exec: tokio::sync::Mutex::new(()),
        });
        node.open_copies()?;
        Ok(node)
    }

    /// The storage groups of this node's CMS.
    pub fn storage_groups(&self) -> Vec<String> {
        self.site.cms[self.cms]
            .storage_groups
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    fn log_dir(&self, sg: &str) -> PathBuf {
        self.dir.join("logs").join(sg)
    }

    /// The cluster machine (held briefly).
    pub fn machine(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The persisted state (held briefly).
    pub fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The copies (held briefly, never across an await).
    pub fn copies(&self) -> MutexGuard<'_, BTreeMap<String, CopyState>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves the state with the machine's persisted part.
    pub fn persist(&self) -> Result<(), StateError> {
        let cluster = self.machine().persisted();
        let mut st = self.state();
        st.cluster = cluster;
        st.save(&self.dir)
    }

    /// True while this node may take deliveries: active with quorum, databases mounted, no move.
    pub fn is_active(&self) -> bool {
        !self.moving.load(Ordering::SeqCst)
            && self.machine().may_serve(mono_ms())
            && self
                .writers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// The fence before a 250: after the fsync, the node acknowledges only if it is still active
    /// in `epoch` with quorum (peer contact or the witness lease), judged now. A record written but
    /// not acknowledged may stay or go; the hub delivers it again, and dedup drops the extra copy.
    pub fn holds_authority(&self, epoch: u64) -> bool {
        let m = self.machine();
        m.epoch() == epoch && m.may_serve(mono_ms())
    }

    /// Every writer while mounted.
    pub fn writers(&self) -> Vec<(String, SgWriter)> {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| w.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The writer of storage group `sg` while mounted.
    pub fn writer(&self, sg: &str) -> Option<SgWriter> {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|w| w.get(sg).cloned())
    }

    /// LastLogGenerated per storage group while mounted (empty otherwise).
    pub fn generated(&self) -> BTreeMap<String, u64> {
        let writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        writers
            .as_ref()
            .map(|w| {
                w.iter()
                    .map(|(sg, wr)| (sg.clone(), wr.last_generated()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks a scheduled move under way (deliveries get 451 meanwhile).
    pub fn set_moving(&self, moving: bool) {
        self.moving.store(moving, Ordering::SeqCst);
    }

    /// Opens a copy per storage group (the passive side), from the logs on disk.
    fn open_copies(&self) -> Result<(), NodeError> {
        // Read before the copies' lock: the state is never locked inside it.
        let suspended: Vec<String> = self
            .storage_groups()
            .into_iter()
            .filter(|sg| self.suspended_by_admin(sg))
            .collect();
        let cut_short = self.state().seeding.clone();
        let mut copies = self.copies();
        copies.clear();
        for sg in self.storage_groups() {
            let copy = store::txlog::LogCopy::open(&self.log_dir(&sg), &sg)?;
            if cut_short.contains(&sg) {
                // Half a snapshot: nothing here to replay into; it must be reseeded.
                let mut cs = CopyState::new(copy);
                cs.needs_reseed = Some(
                    "a reseed was cut short (the node stopped); the copy is incomplete until reseeded again".into(),
                );
                warn!(node = %self.name, storage_group = %sg, "a reseed of this copy was cut short; run copy update again");
                copies.insert(sg, cs);
                continue;
            }
            // The store's applies are not fsynced: after a crash it can be behind the copied logs,
            // and copying on would move its checkpoint past the records it lost.
            let replayed = replication::replay_all(&self.store, &sg, &copy)?;
            if replayed > 0 {
                tracing::debug!(node = %self.name, storage_group = %sg, replayed, "replayed copied logs into the store");
            }
            let mut cs = CopyState::new(copy);
            if suspended.contains(&sg) {
                cs.suspended = true;
                cs.status = crate::wire::cluster::SummaryCopyStatus::Suspended;
            }
            copies.insert(sg, cs);
        }
        Ok(())
    }

    /// Mounts the databases as active at `epoch`: the copies become logs to write, every copied
    /// record is replayed, and a failover mount asks every hub of the site to resubmit.
    pub fn mount(
        &self,
        epoch: u64,
        missing: &BTreeMap<String, u64>,
        failover: bool,
    ) -> Result<(), NodeError> {
        let c = &self.site.cms[self.cms];
        let mut copies = std::mem::take(&mut *self.copies());
        let mut writers = HashMap::new();
        let mut starts = BTreeMap::new();
        let mut lossy_from = BTreeMap::new();
        for sg in self.storage_groups() {
            if let Some(cs) = copies.remove(&sg) {
                replication::replay_all(&self.store, &sg, &cs.copy)?;
            }
            let mut log = TxLog::open(&self.log_dir(&sg), &sg, c.log_file_size)?;
            replay_own(&self.store, &sg, &log)?;
            log.begin_epoch(epoch)?;
            log.sync()?;
            starts.insert(sg.clone(), log.current_generation());
            if failover || missing.get(&sg).copied().unwrap_or(0) > 0 {
                // Each hub's own stamp on the newest record from it held here: the windows rest
                // on the hubs' clocks, not on the clock of the node that wrote the records.
                lossy_from.insert(sg.clone(), self.store.hub_anchors(&sg)?);
            }
            writers.insert(
                sg.clone(),
                SgWriter::start(sg, log, epoch, c.log_file_size, self.store.clone()),
            );
        }
        {
            let mut st = self.state();
            st.epochs.push(EpochStart { epoch, starts });
            for sg in self.storage_groups() {
                st.copied_epoch.insert(sg, epoch);
            }
            // An active node has no copy to keep suspended; the note stays for `status`.
            for note in st.copy_notes.values_mut() {
                note.suspended = false;
            }
            if !lossy_from.is_empty() {
                outstanding::request_all(
                    &self.site,
                    &mut st,
                    &c.name,
                    epoch,
                    &lossy_from,
                    now_ms(),
                );
            }
        }
        self.copy_needs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.writers.lock().unwrap_or_else(|p| p.into_inner()) = Some(writers);
        self.persist()?;
        let known_lost = missing.values().any(|n| *n > 0);
        if failover {
            self.metrics.failover(known_lost);
        }
        if lossy_from.is_empty() {
            info!(node = %self.name, epoch, "databases mounted");
        } else if known_lost {
            warn!(node = %self.name, epoch, missing = ?missing, "databases mounted after a lossy failover; asking every hub to resubmit");
        } else {
            warn!(node = %self.name, epoch, "databases mounted after a failover; logs written since the lost node's last report may be missing, so every hub is asked to resubmit");
        }
        Ok(())
    }

    /// Dismounts: stops the writers and becomes a copy of the other node.
    pub fn demote(&self) -> Result<(), NodeError> {
        let writers = self
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if writers.is_some() {
            info!(node = %self.name, "databases dismounted; copying from the other node");
        }
        // Each writer finishes its batch and lets go of the log before the directories reopen as
        // copies; writes still queued, or held by sessions, are refused from here on.
        if let Some(w) = writers {
            for (_, wr) in w {
                wr.stop();
            }
        }
        self.moving.store(false, Ordering::SeqCst);
        self.handover_pending.store(false, Ordering::SeqCst);
        self.open_copies()?;
        self.persist()?;
        Ok(())
    }
}

/// Applies records of this node's own log that the store had not applied yet (a crash between
/// fsync and apply loses nothing).
pub(crate) fn replay_own(store: &MailboxStore, sg: &str, log: &TxLog) -> Result<usize, NodeError> {
    let from = store.replay_from();
    let checkpoint = store.checkpoint(sg)?.map(|(pos, _)| pos);
    let first = checkpoint.map(|p| p.generation).unwrap_or(1).max(1);
    let mut applied = 0;
    for generation in first..=log.current_generation() {
        let records = log.records(generation)?;
        let batch: Vec<(LogPosition, &LogRecord)> = replication::positioned(generation, &records)
            .filter(|(pos, _)| checkpoint.is_none_or(|c| *pos > c))
            .collect();
        store.reapply_batch(sg, &batch)?;
        applied += batch.len();
    }
    store.replay_done(sg, from);
    Ok(applied)
}
