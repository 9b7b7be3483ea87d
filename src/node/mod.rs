//! The mailbox node role: one of the two nodes of a clustered mailbox server.
//!
//! The active node accepts deliveries from hubs. Each message is appended to its storage group's
//! transaction log, the log is fsynced (one fsync for every message that arrived meanwhile), the
//! records are applied to the mailbox store, and only then does the hub get its 250. A message whose
//! Message-ID a mailbox already holds is acknowledged and dropped, so redelivery — after a hub crash,
//! or a dumpster resubmission — never doubles mail. Until failover exists, the first node of a CMS is
//! active and the other answers 451 4.3.2.

pub mod inbound;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use store::mailbox::{MailboxError, MailboxStore};
use store::txlog::{LogPosition, TxLog, TxLogError};
use tracing::info;

use crate::config::Site;
use writer::SgWriter;

/// Why a node could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The mailbox store failed.
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    /// A transaction log failed.
    #[error(transparent)]
    Log(#[from] TxLogError),
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
    writers: HashMap<String, SgWriter>,
    active: AtomicBool,
}

impl MailboxNode {
    /// Opens the node's store and logs under `dir`, replaying any logged record the store had not
    /// applied yet (a crash between fsync and apply loses nothing).
    pub fn open(
        site: Arc<Site>,
        name: &str,
        cms: usize,
        dir: &Path,
    ) -> Result<Arc<MailboxNode>, NodeError> {
        let store = Arc::new(MailboxStore::open(&dir.join("store"))?);
        let c = &site.cms[cms];
        let mut writers = HashMap::new();
        for sg in &c.storage_groups {
            let mut log = TxLog::open(&dir.join("logs").join(&sg.name), &sg.name, c.log_file_size)?;
            let replayed = replay(&store, &sg.name, &mut log)?;
            if replayed > 0 {
                info!(node = name, storage_group = %sg.name, records = replayed, "replayed logged records");
            }
            writers.insert(
                sg.name.clone(),
                SgWriter::start(sg.name.clone(), log, store.clone()),
            );
        }
        let active = c.nodes.first().is_some_and(|n| n.name == name);
        Ok(Arc::new(MailboxNode {
            name: name.to_string(),
            hostname: format!("{name}.{}", c.name),
            site: site.clone(),
            cms,
            store,
            writers,
            active: AtomicBool::new(active),
        }))
    }

    /// True while this node holds the CMS's databases.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// The writer of storage group `sg`.
    pub fn writer(&self, sg: &str) -> Option<&SgWriter> {
        self.writers.get(sg)
    }
}

/// Applies every logged record after the store's checkpoint; returns how many were applied.
fn replay(store: &MailboxStore, sg: &str, log: &mut TxLog) -> Result<usize, NodeError> {
    let checkpoint = store.checkpoint(sg)?.map(|(pos, _)| pos);
    let first = checkpoint.map(|p| p.generation).unwrap_or(1).max(1);
    let mut applied = 0;
    for generation in first..=log.current_generation() {
        for (index, rec) in log.records(generation)?.into_iter().enumerate() {
            let pos = LogPosition {
                generation,
                index: index as u32,
            };
            if checkpoint.is_some_and(|c| pos <= c) {
                continue;
            }
            store.apply(sg, pos, &rec)?;
            applied += 1;
        }
    }
    Ok(applied)
}
