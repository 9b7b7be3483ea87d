//! The witness: the tie-breaking vote of a two-node clustered mailbox server.
//!
//! A node may be active only while it sees its peer or holds the witness lease, so when the nodes
//! lose each other at most one of them can go on (or come up) as active: the one holding the lease.
//! Two kinds, chosen by the CMS's `witness` key:
//! - [`share`]: a directory on a file share both nodes reach, like the Exchange 2007 file share
//!   witness (a path);
//! - [`etcd`]: an etcd cluster the site already runs (`etcd://host:2379/prefix`), whose own leases
//!   expire on the etcd server, so no host's clock is compared with another's there either.
//!
//! Both answer the same three questions for the failover machine ([`crate::cluster::machine`]):
//! who holds the lease and until when on *this node's* monotonic clock ([`Seen`]), take or renew
//! it, give it up. The lease also carries the note board: the highest epoch ever active and that
//! node's LastLogGenerated per storage group.

pub mod etcd;
pub mod share;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::mono_ms;
pub use etcd::EtcdWitness;
pub use share::ShareWitness;

/// This node's monotonic clock in ms, read where the protocol needs it: before a write of its own,
/// after a read of the other node's.
pub type Clock<'a> = &'a dyn Fn() -> u64;

/// What the witness holds: the one thing it remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node that holds (or last held) the lease.
    pub holder: String,
    /// The highest epoch ever active, recorded by whoever wrote the lease last.
    pub epoch: u64,
    /// Grows with every write (take, renewal, release): the share witness times the holder from
    /// the moment it last saw this change, on its own clock; for etcd it is the key's revision.
    #[serde(default)]
    pub version: u64,
    /// How long the holder counts on this write. The other node waits at least this long and at
    /// least its own lease duration, so a lease written before this field existed (0) is safe.
    #[serde(default)]
    pub duration_ms: u64,
    /// Given up by its holder (scheduled move, clean shutdown) or expired on the etcd server: free
    /// at once.
    #[serde(default)]
    pub released: bool,
    /// The note board: LastLogGenerated per storage group of the node active at `epoch`, so a node
    /// that comes back while its peer is gone still knows how many logs a mount would lose.
    #[serde(default)]
    pub last_log_generated: BTreeMap<String, u64>,
}

/// The lease as this node sees it, with what it means on this node's own monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The lease in force.
    pub lease: Lease,
    /// If it is ours: until when we may count on it (before the safety margin). If it is the other
    /// node's: from when we may take it, should it not be renewed.
    pub until_ms: u64,
}

/// Why the witness could not answer.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The share or the etcd cluster did not answer (missing directory, I/O error, no endpoint
    /// reachable, no etcd leader): the witness cannot vote.
    #[error("witness {at} unavailable: {reason}")]
    Unavailable {
        /// The file, directory or endpoint that failed.
        at: String,
        /// What failed.
        reason: String,
    },
    /// What the witness holds is not a lease.
    #[error("witness lease {at} is corrupt: {reason}")]
    Corrupt {
        /// The lease file or key.
        at: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The etcd cluster refused the credentials or the certificate configured for it: a
    /// configuration error to report, not a vote.
    #[error("etcd witness {endpoint} refused this node: {reason}")]
    Refused {
        /// The endpoint that refused.
        endpoint: String,
        /// What it said.
        reason: String,
    },
    /// Another node is updating the witness right now; try again on the next tick.
    #[error("witness busy: another node is updating it")]
    Busy,
}

/// One node's handle on its CMS's witness. Clones share what the node has seen.
#[derive(Debug, Clone)]
pub enum Witness {
    /// A directory on a file share.
    Share(ShareWitness),
    /// Keys under a prefix in an etcd cluster.
    Etcd(EtcdWitness),
}

impl Witness {
    /// Reads the lease (`None` if there is none) and notes what it means on this node's clock.
    /// `duration_ms`: this node's lease duration, the least it waits for the other node's lease.
    pub async fn observe(&self, duration_ms: u64) -> Result<Option<Seen>, WitnessError> {
        match self {
            Witness::Share(w) => {
                let w = w.clone();
                blocking(move || w.observe(&mono_ms, duration_ms)).await
            }
            Witness::Etcd(w) => w.observe(duration_ms).await,
        }
    }

    /// Takes the lease for `duration_ms` if it is free or already ours, recording `epoch` (the
    /// witness keeps the highest) and, from an active node, its LastLogGenerated as the note.
    /// Returns the lease in force: ours, or the other holder's, which tells the caller it failed.
    pub async fn acquire(
        &self,
        duration_ms: u64,
        epoch: u64,
        note: Option<BTreeMap<String, u64>>,
    ) -> Result<Seen, WitnessError> {
        match self {
            Witness::Share(w) => {
                let w = w.clone();
                blocking(move || w.acquire(&mono_ms, duration_ms, epoch, note.as_ref())).await
            }
            Witness::Etcd(w) => w.acquire(duration_ms, epoch, note.as_ref()).await,
        }
    }

    /// Gives the lease up if this node holds it (scheduled move, clean shutdown), so the other node
    /// can take it at once. The caller must have stopped acting as holder first.
    pub async fn release(&self) -> Result<(), WitnessError> {
        match self {
            Witness::Share(w) => {
                let w = w.clone();
                blocking(move || w.release(&mono_ms)).await
            }
            Witness::Etcd(w) => w.release().await,
        }
    }
}

/// Runs a file share operation on a blocking thread: a share that hangs must not stall the runtime.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, WitnessError> + Send + 'static,
) -> Result<T, WitnessError> {
    tokio::task::spawn_blocking(op).await.unwrap_or_else(|e| {
        Err(WitnessError::Unavailable {
            at: "file share witness task".into(),
            reason: e.to_string(),
        })
    })
}
