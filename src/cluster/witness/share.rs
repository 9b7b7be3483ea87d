//! The file share witness: the tie-breaking vote of a two-node clustered mailbox server.
//!
//! A node may be active only while it sees its peer or holds the witness lease, so when the nodes
//! lose each other at most one of them can go on (or come up) as active: the one holding the lease.
//! The witness is a directory on a share both nodes reach; like the Exchange 2007 file share witness
//! it keeps no state beyond that lease (who, which epoch, which write).
//!
//! Files in the directory:
//! - `witness.lease`: the [`Lease`] as JSON, only ever replaced whole (temp file, fsync, rename,
//!   directory fsync), so a reader sees the old or the new lease, never half of one;
//! - `witness.lock`: present while a node is in a read-modify-write of the lease; created with
//!   `create_new`, so only one node at a time gets it. Its content is unique to each taking, so a
//!   lock left by a crashed node can be recognised and broken.
//!
//! No wall clock and no file time is read or compared: the nodes sit on different hosts whose clocks
//! may be hours apart or step at any moment. Time is passed in, on the caller's own monotonic clock,
//! and never leaves the process:
//! - the holder counts on its lease for `duration` from just *before* the write that took or renewed
//!   it, less a safety margin ([`crate::cluster::machine`]);
//! - every write bumps the lease's `version`, and the other node takes the lease only once it has
//!   seen the same version, unchanged, for a full `duration` of its own clock. It first saw that
//!   version after the write ended, so the holder has stopped counting on it by then, whatever the
//!   two clocks read: they need only run at about the same rate.
//!
//! A lock is broken the same way: once the same lock content has been seen for `stale_lock_ms` of
//! the observer's clock. That assumes no node stays inside its read-modify-write that long (a few
//! file operations against the default of two seconds); a node that stalls so long may find its lock
//! broken, and then gives up with [`WitnessError::Busy`] rather than writing.
//!
//! What the share must provide (NFS, SMB, or a local file system in tests): an exclusive create that
//! fails when the file exists (`O_EXCL`: NFSv3 and later, SMB `FILE_CREATE`), a `rename` that
//! replaces its target atomically, `fsync` of files and of the directory, and reads that see the
//! other node's completed writes (close-to-open consistency: every read here opens the file anew).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{Clock, Lease, Seen, WitnessError};

/// Name of the lease file in the witness directory.
const LEASE_FILE: &str = "witness.lease";
/// Name of the lock file in the witness directory.
const LOCK_FILE: &str = "witness.lock";

/// How long the same lock must be seen before this node breaks it, unless
/// [`ShareWitness::with_stale_lock_ms`] says otherwise: far longer than any read-modify-write, short next
/// to the cluster's failover timings.
pub const DEFAULT_STALE_LOCK_MS: u64 = 2_000;

/// Makes every lock a node takes distinct, so breaking a stale lock can tell it from a fresh one.
static LOCK_SEQ: AtomicU64 = AtomicU64::new(0);

/// One node's handle on the witness directory. Clones share what this node has seen, so the
/// driver's tasks time the other node's writes together.
#[derive(Debug, Clone)]
pub struct ShareWitness {
    dir: PathBuf,
    node: String,
    stale_lock_ms: u64,
    memory: Arc<Mutex<Memory>>,
}

/// What this node last saw in the witness directory, and since when (its own monotonic clock).
#[derive(Debug, Default)]
struct Memory {
    /// The other node's lease as (holder, version), and when this node first saw it.
    lease: Option<((String, u64), u64)>,
    /// The lock file's content, and when this node first saw it.
    lock: Option<(Vec<u8>, u64)>,
}

/// What a lock file records: who took it, and a sequence that makes each taking distinct.
#[derive(Debug, Serialize, Deserialize)]
struct LockInfo {
    node: String,
    seq: String,
}

/// The witness lock, held for one read-modify-write; removed on drop if it is still ours.
struct LockGuard {
    path: PathBuf,
    content: Vec<u8>,
}

impl ShareWitness {
    /// A handle for `node` on the witness directory `dir`. Does not touch the disk: the share may be
    /// down when the node starts, which is a state to report, not a reason to fail.
    pub fn new(dir: &Path, node: &str) -> ShareWitness {
        ShareWitness {
            dir: dir.to_path_buf(),
            node: node.to_string(),
            stale_lock_ms: DEFAULT_STALE_LOCK_MS,
            memory: Arc::default(),
        }
    }

    /// Sets how long the same lock must be seen before it counts as left by a crashed node.
    pub fn with_stale_lock_ms(mut self, stale_lock_ms: u64) -> ShareWitness {
        self.stale_lock_ms = stale_lock_ms;
        self
    }

    /// Reads the current lease (`None` if there is none). Takes no lock: the lease file is only ever
    /// replaced whole. `Unavailable` if the directory cannot be read, `Corrupt` if the file is not a
    /// lease.
    pub fn read(&self) -> Result<Option<Lease>, WitnessError> {
        self.check_dir()?;
        self.read_lease()
    }

    /// Reads the lease and notes its version with the time on `clock` (this node's monotonic
    /// clock, read after the file), so that a holder that stops renewing is timed from its last
    /// write, not from when this node next looks. A node that does not hold the lease calls it on
    /// every tick. `duration_ms`: this node's lease duration, the least it waits.
    pub fn observe(&self, clock: Clock, duration_ms: u64) -> Result<Option<Seen>, WitnessError> {
        self.check_dir()?;
        let lease = self.read_lease()?;
        let now_ms = clock();
        Ok(lease.map(|lease| self.judge(lease, now_ms, duration_ms)))
    }

    /// Takes the lease for `duration_ms` if it is free (none, released, or the other node's seen
    /// unchanged for a full lease duration of this node's clock) or already ours (renewal),
    /// recording `epoch`. `clock` is this node's monotonic clock: a lease of ours is counted from
    /// before anything is written, the other node's from after its lease was read. Returns the lease
    /// now in force: ours, or the other holder's, which tells the caller it failed.
    ///
    /// A corrupt lease file counts as free and is overwritten (with a warning): the witness keeps
    /// nothing worth more than the lease itself, and refusing would leave the cluster without a vote
    /// until an operator cleaned up. Lease files are only written whole, so corruption means something
    /// outside this protocol wrote there.
    ///
    /// Never creates the witness directory: a missing directory means the share is down
    /// (`Unavailable`), and a local directory in its place would be a witness only one node sees.
    pub fn acquire(
        &self,
        clock: Clock,
        duration_ms: u64,
        epoch: u64,
        note: Option<&BTreeMap<String, u64>>,
    ) -> Result<Seen, WitnessError> {
        let start_ms = clock();
        self.check_dir()?;
        let lock = self.lock(clock)?;
        let current = match self.read_lease() {
            Ok(current) => current,
            Err(WitnessError::Corrupt { at, reason }) => {
                warn!(
                    path = %at, %reason, node = %self.node,
                    "corrupt witness lease counts as free; overwriting it"
                );
                None
            }
            Err(e) => return Err(e),
        };
        let now_ms = clock();
        if let Some(lease) = current.clone().filter(|l| l.holder != self.node) {
            let seen = self.judge(lease, now_ms, duration_ms);
            if now_ms < seen.until_ms {
                return Ok(seen);
            }
            debug!(
                node = %self.node, from = %seen.lease.holder, epoch,
                released = seen.lease.released, "taking the witness lease"
            );
        }
        // The highest epoch ever active stays recorded, with its note, whoever holds the lease.
        let (epoch, last_log_generated) = match &current {
            Some(p) => (
                epoch.max(p.epoch),
                note.cloned()
                    .unwrap_or_else(|| p.last_log_generated.clone()),
            ),
            None => (epoch, note.cloned().unwrap_or_default()),
        };
        let next = Lease {
            holder: self.node.clone(),
            epoch,
            version: current.as_ref().map_or(0, |c| c.version) + 1,
            duration_ms,
            released: false,
            last_log_generated,
        };
        lock.verify()?;
        self.write_lease(&next)?;
        Ok(Seen {
            lease: next,
            until_ms: start_ms.saturating_add(duration_ms),
        })
    }

    /// Gives the lease up if we hold it (scheduled move, clean shutdown), so the other node can take it
    /// at once instead of waiting out a lease duration. The caller must have stopped acting as holder
    /// first.
    ///
    /// The lease stays on file, marked released (the last holder stays visible). No lease, another
    /// node's lease, one already released or a corrupt file: there is nothing of ours to give up, so
    /// nothing is written.
    pub fn release(&self, clock: Clock) -> Result<(), WitnessError> {
        self.check_dir()?;
        let lock = self.lock(clock)?;
        match self.read_lease() {
            Ok(Some(lease)) if lease.holder == self.node && !lease.released => {
                let released = Lease {
                    version: lease.version + 1,
                    released: true,
                    ..lease
                };
                lock.verify()?;
                self.write_lease(&released)
            }
            Ok(_) => Ok(()),
            Err(WitnessError::Corrupt { at, reason }) => {
                warn!(
                    path = %at, %reason, node = %self.node,
                    "corrupt witness lease; nothing to release"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// What `lease` means to this node at `now_ms`. Released: free now. Ours: nothing to count on
    /// from a read (after a restart, say); only a write of ours starts a lease duration, so
    /// [`Self::acquire`] renews it. The other node's: free once this node has seen the same version
    /// for the longer of the lease's duration and its own.
    fn judge(&self, lease: Lease, now_ms: u64, duration_ms: u64) -> Seen {
        let until_ms = if lease.released || lease.holder == self.node {
            now_ms
        } else {
            let key = (lease.holder.clone(), lease.version);
            let mut memory = self.memory();
            let since = match &memory.lease {
                Some((seen, since)) if *seen == key => *since,
                _ => {
                    memory.lease = Some((key, now_ms));
                    now_ms
                }
            };
            since.saturating_add(duration_ms.max(lease.duration_ms))
        };
        Seen { lease, until_ms }
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        // The memory is two plain values, consistent after any panic in between.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lease_path(&self) -> PathBuf {
        self.dir.join(LEASE_FILE)
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// A file of our own in the witness directory, distinct from the other node's.
    fn own_path(&self, base: &str, suffix: &str) -> PathBuf {
        let node: String = self
            .node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{base}.{node}.{suffix}"))
    }

    fn check_dir(&self) -> Result<(), WitnessError> {
        match fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(WitnessError::Unavailable {
                at: self.dir.display().to_string(),
                reason: "not a directory".to_string(),
            }),
            Err(e) => Err(unavailable(&self.dir, &e)),
        }
    }

    fn read_lease(&self) -> Result<Option<Lease>, WitnessError> {
        let path = self.lease_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(&path, &e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| WitnessError::Corrupt {
                at: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Replaces the lease file whole: temp file, fsync, rename over, fsync the directory (so the rename
    /// itself survives a crash of the share's host).
    fn write_lease(&self, lease: &Lease) -> Result<(), WitnessError> {
        let tmp = self.own_path(LEASE_FILE, "tmp");
        let bytes =
            serde_json::to_vec(lease).expect("a Lease (strings and integers) always serialises");
        let written = File::create(&tmp).and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(unavailable(&tmp, &e));
        }
        let path = self.lease_path();
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(unavailable(&path, &e));
        }
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| unavailable(&self.dir, &e))
    }

    /// Takes the witness lock, breaking it first if it was left by a crashed node.
    fn lock(&self, clock: Clock) -> Result<LockGuard, WitnessError> {
        if let Some(guard) = self.try_lock()? {
            return Ok(guard);
        }
        if !self.break_if_stale(clock)? {
            return Err(WitnessError::Busy);
        }
        self.try_lock()?.ok_or(WitnessError::Busy)
    }

    /// Creates the lock file (`None` if it exists).
    fn try_lock(&self) -> Result<Option<LockGuard>, WitnessError> {
        let path = self.lock_path();
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(unavailable(&path, &e)),
        };
        let info = LockInfo {
            node: self.node.clone(),
            seq: format!(
                "{}-{}",
                std::process::id(),
                LOCK_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let content =
            serde_json::to_vec(&info).expect("a LockInfo (strings and integers) always serialises");
        if let Err(e) = file.write_all(&content) {
            let _ = fs::remove_file(&path);
            return Err(unavailable(&path, &e));
        }
        Ok(Some(LockGuard { path, content }))
    }

    /// Removes the lock if this node has seen the same lock (content) for `stale_lock_ms` of its own
    /// clock; true if the lock is gone (so it is worth trying to take it again). A lock without
    /// content (its node crashed between creating and writing it) ages the same way.
    ///
    /// The lock is renamed aside rather than deleted, then compared with what was judged stale: if the
    /// other node released it and took a fresh one in between, the fresh one is linked back (a hard link
    /// never replaces an existing file) and we report it still taken.
    fn break_if_stale(&self, clock: Clock) -> Result<bool, WitnessError> {
        let path = self.lock_path();
        let seen = match fs::read(&path) {
            Ok(seen) => seen,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(unavailable(&path, &e)),
        };
        let now_ms = clock();
        let since = {
            let mut memory = self.memory();
            match &memory.lock {
                Some((content, since)) if *content == seen => *since,
                _ => {
                    memory.lock = Some((seen.clone(), now_ms));
                    now_ms
                }
            }
        };
        if now_ms < since.saturating_add(self.stale_lock_ms) {
            return Ok(false);
        }
        let aside = self.own_path(LOCK_FILE, "stale");
        match fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(unavailable(&path, &e)),
        }
        let taken = fs::read(&aside);
        let same = matches!(&taken, Ok(taken) if *taken == seen);
        if !same {
            if let Err(e) = fs::hard_link(&aside, &path) {
                debug!(
                    error = %e,
                    "a newer witness lock is in place; not restoring the one moved aside"
                );
            }
        }
        if let Err(e) = fs::remove_file(&aside) {
            return Err(unavailable(&aside, &e));
        }
        if same {
            self.memory().lock = None;
            warn!(
                node = %self.node, seen_for_ms = now_ms - since,
                "broke a stale witness lock left by a crashed node"
            );
        }
        Ok(same)
    }
}

impl LockGuard {
    /// Checks the lock is still ours just before writing: if it was broken as stale, another node may
    /// be writing, and we must not.
    fn verify(&self) -> Result<(), WitnessError> {
        match fs::read(&self.path) {
            Ok(content) if content == self.content => Ok(()),
            Ok(_) => Err(WitnessError::Busy),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(WitnessError::Busy),
            Err(e) => Err(unavailable(&self.path, &e)),
        }
    }
}

impl Drop for LockGuard {
    /// Removes the lock unless it was broken and retaken by the other node meanwhile. A lock that
    /// cannot be removed is logged; the other node breaks it once it is stale.
    fn drop(&mut self) {
        match fs::read(&self.path) {
            Ok(content) if content == self.content => {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "could not remove the witness lock");
                }
            }
            Ok(_) => {
                warn!(path = %self.path.display(), "our witness lock was broken as stale while held")
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "could not check the witness lock")
            }
        }
    }
}

fn unavailable(path: &Path, e: &io::Error) -> WitnessError {
    WitnessError::Unavailable {
        at: path.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
