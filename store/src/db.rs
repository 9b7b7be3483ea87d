//! Opening a sled database the way every store here needs it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tracing::warn;

/// How long [`open`] retries a held lock. sled releases its file lock when its last background
/// task lets go of the file, a few milliseconds after the previous handle in this process was
/// dropped (measured: up to ~25 ms), so an in-process reopen would otherwise fail now and then.
/// A lock held by another process is still reported, this much later.
const LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Opens (or creates) the sled database at `path` with at most `cache_bytes` cached, waiting out
/// a lock that a just-dropped handle of this process still holds.
pub(crate) fn open(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    remove_unfinished_snapshots(path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
        {
            Err(e) if is_locked(&e) && Instant::now() < deadline => std::thread::sleep(LOCK_RETRY),
            other => return other,
        }
    }
}

/// Removes the snapshot files sled 0.34 left half-written (`snap.<lsn>.generating`).
///
/// sled writes a snapshot under that name and renames it once it is complete and synced, so such
/// a file is never a snapshot; but when its write failed (a full disk, a crash) the next open takes
/// it for the newest snapshot and fails with "Read corrupted data" for good (spacejam/sled#1527).
/// Without it sled starts from the previous snapshot and replays its own log from there.
fn remove_unfinished_snapshots(path: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            warn!(file = %entry.path().display(), "removing a snapshot sled did not finish writing");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// sled 0.34 reports a held file lock only as this io::Error text (ErrorKind::Other).
pub(crate) fn is_locked(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// A sled database that can be opened again in place, with what is built on it (its trees).
///
/// sled 0.34 fails every write after one I/O error (a full disk, say) until the database is
/// opened anew: its page cache keeps the first error for good. A role that must come back by
/// itself once space is free again probes the database with [`Reopenable::recover`] and gets a
/// fresh handle; callers hold an `Arc` of the current one only for the length of an operation, so
/// the old handle (and sled's file lock) is gone moments after it is replaced.
pub(crate) struct Reopenable<T> {
    path: PathBuf,
    cache_bytes: u64,
    make: fn(sled::Db) -> Result<T, sled::Error>,
    /// `Err(why)` while closed: after a failed probe until a reopen succeeds. The count goes up
    /// each time the handle is closed or replaced, under the same lock: see [`Reopenable::get_counted`].
    current: RwLock<(u64, Result<Arc<T>, String>)>,
}

/// What [`Reopenable::recover`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The database took a write: nothing to do.
    Healthy,
    /// It had failed and was opened again: what was not flushed before the failure is gone, so
    /// anything derived from it must be rebuilt (rescheduled, replayed).
    Reopened,
}

/// Key of the probe write in sled's default tree; nothing reads it.
const PROBE_KEY: &[u8] = b"\0writable-probe";

impl<T: AsRef<sled::Db>> Reopenable<T> {
    /// Opens the database at `path` and builds `T` on it with `make`.
    pub(crate) fn open(
        path: &Path,
        cache_bytes: u64,
        make: fn(sled::Db) -> Result<T, sled::Error>,
    ) -> Result<Reopenable<T>, sled::Error> {
        let t = make(open(path, cache_bytes)?)?;
        Ok(Reopenable {
            path: path.to_path_buf(),
            cache_bytes,
            make,
            current: RwLock::new((0, Ok(Arc::new(t)))),
        })
    }

    /// The current handle, or why there is none (a reopen has not succeeded yet).
    pub(crate) fn get(&self) -> Result<Arc<T>, String> {
        self.get_counted().1
    }

    /// The current handle with how many times the handle has been closed or replaced before it.
    /// Whatever was written through a handle with a lower count and not flushed may be gone, so a
    /// caller that must not leave gaps compares the count with the one it last made good.
    pub(crate) fn get_counted(&self) -> (u64, Result<Arc<T>, String>) {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The count [`Reopenable::get_counted`] gives now.
    pub(crate) fn count(&self) -> u64 {
        self.get_counted().0
    }

    fn set(&self, handle: Result<Arc<T>, String>) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = (current.0 + 1, handle);
    }

    /// The database's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes and flushes a probe; if that fails, closes the database and opens it again
    /// (sled's recovery keeps everything flushed before the failure).
    pub(crate) fn recover(&self) -> Result<Recovery, sled::Error> {
        if let Ok(t) = self.get() {
            let db: &sled::Db = t.as_ref().as_ref();
            let probe = db
                .insert(PROBE_KEY, &[])
                .and_then(|_| db.flush().map(|_| ()));
            match probe {
                Ok(()) => return Ok(Recovery::Healthy),
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "database failed; closing it to open it again");
                    self.set(Err(e.to_string()));
                }
            }
        }
        let t = open(&self.path, self.cache_bytes).and_then(self.make);
        match t {
            Ok(t) => {
                self.set(Ok(Arc::new(t)));
                warn!(path = %self.path.display(), "database opened again after a failure; writes accepted");
                Ok(Recovery::Reopened)
            }
            Err(e) => {
                self.set(Err(format!("opening it again failed: {e}")));
                Err(e)
            }
        }
    }
}
