//! Opening a sled database the way every store here needs it.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long [`open`] retries a held lock. sled releases its file lock when its last background
/// task lets go of the file, a few milliseconds after the previous handle in this process was
/// dropped (measured: up to ~25 ms), so an in-process reopen would otherwise fail now and then.
/// A lock held by another process is still reported, this much later.
const LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Opens (or creates) the sled database at `path` with at most `cache_bytes` cached, waiting out
/// a lock that a just-dropped handle of this process still holds.
pub(crate) fn open(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
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

/// sled 0.34 reports a held file lock only as this io::Error text (ErrorKind::Other).
pub(crate) fn is_locked(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}
