//! The file share witness: the tie-breaking vote of a two-node clustered mailbox server.
//!
//! A node may be active only while it sees its peer or holds the witness lease, so when the nodes
//! lose each other at most one of them can go on (or come up) as active: the one holding the lease.
//! The witness is a directory on a share both nodes reach; like the Exchange 2007 file share witness
//! it keeps no state beyond that lease (who, which epoch, until when).
//!
//! Files in the directory:
//! - `witness.lease`: the [`Lease`] as JSON, only ever replaced whole (temp file, fsync, rename,
//!   directory fsync), so a reader sees the old or the new lease, never half of one;
//! - `witness.lock`: present while a node is in a read-modify-write of the lease; created with
//!   `create_new`, so only one node at a time gets it. It records who took it and when, so that a lock
//!   left by a crashed node can be broken after `stale_lock_ms`.
//!
//! Time is passed in (ms since the Unix epoch); this module never reads the clock. Both nodes use the
//! same clock but allow for skew: a holder stops counting on its lease `safety_ms` before the recorded
//! expiry ([`holds`]), while the other node takes it only at or after the recorded expiry.
//!
//! Breaking a stale lock assumes no node stays inside its read-modify-write for `stale_lock_ms`
//! (a few file operations against the default of two seconds); a node that stalls that long may find
//! its lock broken, and then gives up with [`WitnessError::Busy`] rather than writing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// Name of the lease file in the witness directory.
const LEASE_FILE: &str = "witness.lease";
/// Name of the lock file in the witness directory.
const LOCK_FILE: &str = "witness.lock";

/// How old a lock must be before another node breaks it, unless [`Witness::with_stale_lock_ms`] says
/// otherwise: far longer than any read-modify-write, short next to the cluster's failover timings.
pub const DEFAULT_STALE_LOCK_MS: u64 = 2_000;

/// Makes every lock a node takes distinct, so breaking a stale lock can tell it from a fresh one.
static LOCK_SEQ: AtomicU64 = AtomicU64::new(0);

/// What the lease file says: the one thing the witness remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node that holds (or last held) the lease.
    pub holder: String,
    /// The holder's epoch when it took or renewed the lease, for the other node and the operator.
    pub epoch: u64,
    /// The lease is in force before this instant (ms since the Unix epoch) and free from it on.
    pub expires_ms: u64,
    /// The note board: LastLogGenerated per storage group of the node active at `epoch`, so a node
    /// that comes back while its peer is gone still knows how many logs a mount would lose.
    #[serde(default)]
    pub last_log_generated: BTreeMap<String, u64>,
}

/// Why the witness could not answer.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The witness directory is missing, not a directory, not permitted or failing I/O: the share is
    /// down, so the witness cannot vote.
    #[error("file share witness {} unavailable: {reason}", path.display())]
    Unavailable {
        /// The file or directory that failed.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The lease file is not a lease.
    #[error("file share witness lease {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The lease file.
        path: PathBuf,
        /// Why it does not parse.
        reason: String,
    },
    /// Another node is updating the witness right now; try again on the next tick.
    #[error("file share witness busy: another node is updating it")]
    Busy,
}

/// One node's handle on the witness directory.
#[derive(Debug, Clone)]
pub struct Witness {
    dir: PathBuf,
    node: String,
    stale_lock_ms: u64,
}

/// What a lock file records: enough to judge its age and to recognise it again.
#[derive(Debug, Serialize, Deserialize)]
struct LockInfo {
    node: String,
    created_ms: u64,
    seq: String,
}

/// The witness lock, held for one read-modify-write; removed on drop if it is still ours.
struct LockGuard {
    path: PathBuf,
    content: Vec<u8>,
}

impl Witness {
    /// A handle for `node` on the witness directory `dir`. Does not touch the disk: the share may be
    /// down when the node starts, which is a state to report, not a reason to fail.
    pub fn new(dir: &Path, node: &str) -> Witness {
        Witness {
            dir: dir.to_path_buf(),
            node: node.to_string(),
            stale_lock_ms: DEFAULT_STALE_LOCK_MS,
        }
    }

    /// Sets how old a lock must be before it counts as left by a crashed node and is broken.
    pub fn with_stale_lock_ms(mut self, stale_lock_ms: u64) -> Witness {
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

    /// Takes the lease for `duration_ms` from `now_ms` if it is free (none, or expired at `now_ms`) or
    /// already ours (renewal), recording `epoch`. Returns the lease now in force: ours, or the other
    /// holder's, which tells the caller it failed.
    ///
    /// A renewal never moves the expiry earlier: the holder may already count on the old one.
    ///
    /// A corrupt lease file counts as expired and is overwritten (with a warning): the witness keeps
    /// nothing worth more than the lease itself, and refusing would leave the cluster without a vote
    /// until an operator cleaned up. Lease files are only written whole, so corruption means something
    /// outside this protocol wrote there.
    ///
    /// Never creates the witness directory: a missing directory means the share is down
    /// (`Unavailable`), and a local directory in its place would be a witness only one node sees.
    pub fn acquire(
        &self,
        now_ms: u64,
        duration_ms: u64,
        epoch: u64,
        note: Option<&BTreeMap<String, u64>>,
    ) -> Result<Lease, WitnessError> {
        self.check_dir()?;
        let lock = self.lock(now_ms)?;
        let current = match self.read_lease() {
            Ok(current) => current,
            Err(WitnessError::Corrupt { path, reason }) => {
                warn!(
                    path = %path.display(), %reason, node = %self.node,
                    "corrupt witness lease counts as expired; overwriting it"
                );
                None
            }
            Err(e) => return Err(e),
        };
        let until = now_ms.saturating_add(duration_ms);
        // The highest epoch ever active stays recorded, with its note, whoever holds the lease.
        let carry = |prev: Option<&Lease>| match prev {
            Some(p) => (
                epoch.max(p.epoch),
                note.cloned()
                    .unwrap_or_else(|| p.last_log_generated.clone()),
            ),
            None => (epoch, note.cloned().unwrap_or_default()),
        };
        let next = match current {
            Some(lease) if lease.holder == self.node => {
                let (epoch, last_log_generated) = carry(Some(&lease));
                Lease {
                    holder: lease.holder,
                    epoch,
                    expires_ms: lease.expires_ms.max(until),
                    last_log_generated,
                }
            }
            Some(lease) if now_ms < lease.expires_ms => return Ok(lease),
            previous => {
                if let Some(previous) = &previous {
                    debug!(
                        node = %self.node, from = %previous.holder, epoch,
                        "taking the expired witness lease"
                    );
                }
                let (epoch, last_log_generated) = carry(previous.as_ref());
                Lease {
                    holder: self.node.clone(),
                    epoch,
                    expires_ms: until,
                    last_log_generated,
                }
            }
        };
        lock.verify()?;
        self.write_lease(&next)?;
        Ok(next)
    }

    /// Gives the lease up if we hold it (scheduled move, clean shutdown), so the other node can take it
    /// at once instead of waiting for the expiry. The caller must have stopped acting as holder first.
    ///
    /// The lease stays on file with its expiry set to `now_ms` (the last holder stays visible); the
    /// other node can take it from `now_ms` on. No lease, another node's lease or a corrupt file: there
    /// is nothing of ours to give up, so nothing is written.
    pub fn release(&self, now_ms: u64) -> Result<(), WitnessError> {
        self.check_dir()?;
        let lock = self.lock(now_ms)?;
        match self.read_lease() {
            Ok(Some(lease)) if lease.holder == self.node && now_ms < lease.expires_ms => {
                let released = Lease {
                    expires_ms: now_ms,
                    ..lease
                };
                lock.verify()?;
                self.write_lease(&released)
            }
            Ok(_) => Ok(()),
            Err(WitnessError::Corrupt { path, reason }) => {
                warn!(
                    path = %path.display(), %reason, node = %self.node,
                    "corrupt witness lease; nothing to release"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
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
                path: self.dir.clone(),
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
                path,
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
    fn lock(&self, now_ms: u64) -> Result<LockGuard, WitnessError> {
        if let Some(guard) = self.try_lock(now_ms)? {
            return Ok(guard);
        }
        if !self.break_if_stale(now_ms)? {
            return Err(WitnessError::Busy);
        }
        self.try_lock(now_ms)?.ok_or(WitnessError::Busy)
    }

    /// Creates the lock file (`None` if it exists).
    fn try_lock(&self, now_ms: u64) -> Result<Option<LockGuard>, WitnessError> {
        let path = self.lock_path();
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(unavailable(&path, &e)),
        };
        let info = LockInfo {
            node: self.node.clone(),
            created_ms: now_ms,
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

    /// Removes the lock if it is at least `stale_lock_ms` old; true if the lock is gone (so it is worth
    /// trying to take it again).
    ///
    /// The lock is renamed aside rather than deleted, then compared with what was judged stale: if the
    /// other node released it and took a fresh one in between, the fresh one is linked back (a hard link
    /// never replaces an existing file) and we report it still taken.
    fn break_if_stale(&self, now_ms: u64) -> Result<bool, WitnessError> {
        let path = self.lock_path();
        let seen = match fs::read(&path) {
            Ok(seen) => seen,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(unavailable(&path, &e)),
        };
        // A lock without readable content was left by a node that crashed between creating and writing
        // it; its file time stands in for the missing `created_ms`.
        let created_ms = match serde_json::from_slice::<LockInfo>(&seen) {
            Ok(info) => info.created_ms,
            Err(_) => match modified_ms(&path) {
                Some(ms) => ms,
                None => return Ok(false),
            },
        };
        if now_ms < created_ms.saturating_add(self.stale_lock_ms) {
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
            warn!(
                node = %self.node, created_ms, now_ms,
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

/// True if `lease` lets `node` act as its holder at `now_ms`: it is `node`'s and more than `safety_ms`
/// remain, which covers clock skew and the delay between this check and the next.
pub fn holds(lease: &Lease, node: &str, now_ms: u64, safety_ms: u64) -> bool {
    lease.holder == node && now_ms.saturating_add(safety_ms) < lease.expires_ms
}

fn unavailable(path: &Path, e: &io::Error) -> WitnessError {
    WitnessError::Unavailable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The file's modification time in ms since the Unix epoch, if the file system gives one.
fn modified_ms(path: &Path) -> Option<u64> {
    let modified = fs::metadata(path).and_then(|meta| meta.modified()).ok()?;
    let since = modified.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Barrier;

    use tempfile::TempDir;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const A: &str = "node-a";
    const B: &str = "node-b";

    fn share() -> Result<TempDir, io::Error> {
        tempfile::tempdir()
    }

    fn files(dir: &Path) -> Result<Vec<String>, io::Error> {
        let mut names = fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(names)
    }

    fn write_lock(dir: &Path, node: &str, created_ms: u64) -> Result<(), io::Error> {
        let info = LockInfo {
            node: node.to_string(),
            created_ms,
            seq: "crashed".to_string(),
        };
        fs::write(dir.join(LOCK_FILE), serde_json::to_vec(&info)?)
    }

    #[test]
    fn acquire_free_gives_us_the_lease_and_leaves_only_the_lease_file() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        assert_eq!(a.read()?, None);
        let lease = a.acquire(1_000, 500, 3, None)?;
        let ours = Lease {
            holder: A.to_string(),
            epoch: 3,
            expires_ms: 1_500,
            last_log_generated: BTreeMap::new(),
        };
        assert_eq!(lease, ours);
        assert_eq!(a.read()?, Some(ours));
        assert_eq!(files(dir.path())?, vec![LEASE_FILE.to_string()]);
        Ok(())
    }

    #[test]
    fn other_node_cannot_take_before_expiry_but_can_at_it() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        let b = Witness::new(dir.path(), B);
        let a_lease = a.acquire(1_000, 500, 1, None)?;

        let seen = b.acquire(1_499, 500, 2, None)?;
        assert_eq!(seen, a_lease, "b must get a's lease back, not its own");
        assert!(!holds(&seen, B, 1_499, 0));
        assert_eq!(a.read()?, Some(a_lease));

        let taken = b.acquire(1_500, 500, 2, None)?;
        assert_eq!(taken.holder, B);
        assert_eq!(taken.expires_ms, 2_000);
        assert!(holds(&taken, B, 1_500, 100));
        assert_eq!(a.read()?, Some(taken));
        Ok(())
    }

    #[test]
    fn renewal_extends_and_never_shortens() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        let b = Witness::new(dir.path(), B);
        a.acquire(1_000, 500, 1, None)?;
        assert_eq!(a.acquire(1_200, 500, 1, None)?.expires_ms, 1_700);
        assert_eq!(
            b.acquire(1_600, 500, 2, None)?.holder,
            A,
            "renewed lease must still be in force"
        );
        assert_eq!(
            a.acquire(1_100, 100, 1, None)?.expires_ms,
            1_700,
            "late renewal must not shorten"
        );
        assert_eq!(b.acquire(1_700, 500, 2, None)?.holder, B);
        Ok(())
    }

    #[test]
    fn release_lets_the_other_node_take_it_at_once() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        let b = Witness::new(dir.path(), B);
        a.acquire(1_000, 500, 1, None)?;
        b.release(1_050)?;
        assert_eq!(
            a.read()?.map(|l| l.holder),
            Some(A.to_string()),
            "b cannot release a's lease"
        );
        assert_eq!(b.acquire(1_050, 500, 2, None)?.holder, A);

        a.release(1_100)?;
        let released = a.read()?.ok_or("released lease vanished")?;
        assert_eq!(released.expires_ms, 1_100);
        assert!(!holds(&released, A, 1_100, 0));
        let taken = b.acquire(1_100, 500, 2, None)?;
        assert_eq!(taken.holder, B);
        assert_eq!(taken.expires_ms, 1_600);
        Ok(())
    }

    #[test]
    fn epoch_is_recorded() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        a.acquire(1_000, 500, 7, None)?;
        assert_eq!(a.read()?.map(|l| l.epoch), Some(7));
        a.acquire(1_100, 500, 8, None)?;
        assert_eq!(a.read()?.map(|l| l.epoch), Some(8));
        Ok(())
    }

    #[test]
    fn missing_directory_is_unavailable_and_is_not_created() -> TestResult {
        let root = share()?;
        let dir = root.path().join("share");
        let a = Witness::new(&dir, A);
        assert!(matches!(a.read(), Err(WitnessError::Unavailable { .. })));
        assert!(matches!(
            a.acquire(1_000, 500, 1, None),
            Err(WitnessError::Unavailable { .. })
        ));
        assert!(matches!(
            a.release(1_000),
            Err(WitnessError::Unavailable { .. })
        ));
        assert!(!dir.exists());
        assert!(files(root.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn stale_lock_is_broken_fresh_lock_is_busy() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        write_lock(dir.path(), B, 1_000)?;
        assert!(matches!(
            a.acquire(1_000, 500, 1, None),
            Err(WitnessError::Busy)
        ));
        assert!(matches!(a.release(2_999), Err(WitnessError::Busy)));
        assert!(matches!(
            a.acquire(2_999, 500, 1, None),
            Err(WitnessError::Busy)
        ));
        assert_eq!(a.read()?, None, "a busy acquire must not write");

        assert_eq!(a.acquire(3_000, 500, 1, None)?.holder, A);
        assert_eq!(files(dir.path())?, vec![LEASE_FILE.to_string()]);
        Ok(())
    }

    #[test]
    fn empty_lock_ages_by_its_file_time() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        fs::write(dir.path().join(LOCK_FILE), b"")?;
        let made = modified_ms(&dir.path().join(LOCK_FILE)).ok_or("no file time")?;
        assert!(matches!(
            a.acquire(made, 500, 1, None),
            Err(WitnessError::Busy)
        ));
        let now = made + DEFAULT_STALE_LOCK_MS;
        assert_eq!(a.acquire(now, 500, 1, None)?.holder, A);
        Ok(())
    }

    #[test]
    fn corrupt_lease_is_reported_then_overwritten_by_acquire() -> TestResult {
        let dir = share()?;
        let a = Witness::new(dir.path(), A);
        let b = Witness::new(dir.path(), B);
        fs::write(
            dir.path().join(LEASE_FILE),
            b"{\"holder\": \"node-b\", \"epo",
        )?;
        assert!(matches!(a.read(), Err(WitnessError::Corrupt { .. })));
        b.release(1_000)?;
        assert!(
            matches!(a.read(), Err(WitnessError::Corrupt { .. })),
            "release must not touch it"
        );

        let lease = a.acquire(1_000, 500, 4, None)?;
        assert_eq!(lease.holder, A);
        assert_eq!(a.read()?, Some(lease));
        Ok(())
    }

    /// Retries `op` while the other node holds the lock (as a node would on its next tick), so every
    /// attempt has an outcome; bounded, so a lock that is never freed fails the test, not hangs it.
    fn past_busy<T>(mut op: impl FnMut() -> Result<T, WitnessError>) -> Result<T, WitnessError> {
        for _ in 0..1_000_000 {
            match op() {
                Err(WitnessError::Busy) => std::thread::yield_now(),
                done => return done,
            }
        }
        Err(WitnessError::Busy)
    }

    /// Two nodes race for the lease in rounds on a shared logical clock, renewing, releasing now and
    /// then, and each records the spans it believed itself holder ([`holds`] with the safety margin,
    /// cut short by a release). No two spans of different nodes may overlap.
    #[test]
    fn two_nodes_hammering_never_both_hold() -> TestResult {
        const ITERATIONS: u64 = 400;
        const DURATION: u64 = 20;
        const SAFETY: u64 = 3;
        let dir = share()?;
        let clock = AtomicU64::new(1);
        let barrier = Barrier::new(2);

        let run = |node: &str| -> Result<Vec<(u64, u64)>, WitnessError> {
            let witness = Witness::new(dir.path(), node);
            let mut spans: Vec<(u64, u64)> = Vec::new();
            let mut failure = None;
            barrier.wait();
            for i in 0..ITERATIONS {
                if failure.is_none() {
                    let now = clock.fetch_add(1, Ordering::SeqCst);
                    match past_busy(|| witness.acquire(now, DURATION, i, None)) {
                        Ok(lease) if holds(&lease, node, now, SAFETY) => {
                            spans.push((now, lease.expires_ms - SAFETY));
                            if spans.len() % 10 == 0 {
                                let now = clock.fetch_add(1, Ordering::SeqCst);
                                match past_busy(|| witness.release(now)) {
                                    Ok(()) => spans.iter_mut().for_each(|s| s.1 = s.1.min(now)),
                                    Err(e) => failure = Some(e),
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => failure = Some(e),
                    }
                }
                // Both nodes race again in the next round, however the threads are scheduled; a node
                // that failed keeps turning up so the other is not left waiting.
                barrier.wait();
            }
            failure.map_or(Ok(spans), Err)
        };
        let (spans_a, spans_b) = std::thread::scope(|s| {
            let a = s.spawn(|| run(A));
            let b = s.spawn(|| run(B));
            (a.join(), b.join())
        });
        let spans_a = spans_a.map_err(|_| "node-a thread panicked")??;
        let spans_b = spans_b.map_err(|_| "node-b thread panicked")??;

        // Live locks are never judged stale here: the whole run spans less than stale_lock_ms.
        assert!(clock.load(Ordering::SeqCst) < DEFAULT_STALE_LOCK_MS);
        assert!(
            !spans_a.is_empty() && !spans_b.is_empty(),
            "both nodes must have held the lease"
        );
        for a in &spans_a {
            for b in &spans_b {
                assert!(a.1 <= b.0 || b.1 <= a.0, "both held: a {a:?}, b {b:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn highest_epoch_and_its_note_survive_a_takeover_without_a_mount() -> TestResult {
        let dir = tempfile::tempdir()?;
        let a = Witness::new(dir.path(), A);
        let b = Witness::new(dir.path(), B);
        let note = BTreeMap::from([("SG1".to_string(), 42)]);
        a.acquire(1_000, 500, 7, Some(&note))?;
        // B takes the expired lease as a candidate (its own epoch is lower, no note of its own).
        let taken = b.acquire(2_000, 500, 3, None)?;
        assert_eq!(taken.holder, B);
        assert_eq!(taken.epoch, 7, "the highest epoch stays recorded");
        assert_eq!(
            taken.last_log_generated, note,
            "the active node's note is carried over"
        );
        // Once B is active it writes its own note.
        let own = BTreeMap::from([("SG1".to_string(), 45)]);
        assert_eq!(
            b.acquire(2_100, 500, 8, Some(&own))?.last_log_generated,
            own
        );
        Ok(())
    }

    #[test]
    fn holds_needs_the_holder_and_the_safety_margin() {
        let lease = Lease {
            holder: A.to_string(),
            epoch: 1,
            expires_ms: 1_500,
            last_log_generated: BTreeMap::new(),
        };
        assert!(holds(&lease, A, 1_399, 100));
        assert!(!holds(&lease, A, 1_400, 100));
        assert!(!holds(&lease, B, 1_000, 0));
        assert!(!holds(&lease, A, u64::MAX, 0));
    }
}
