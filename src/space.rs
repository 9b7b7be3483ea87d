//! Free space on the file systems a role writes to, against the reserve it keeps free
//! (`min_free_space`).
//!
//! Like Postfix's `queue_minfree`: a role stops taking new work while any of its directories has
//! less than the reserve free (452 4.3.1), so that what it already holds can still be written,
//! delivered and given back, and it takes work again by itself as soon as there is room. A disk
//! that fills to the last byte anyway (another program, a reserve set too small) fails the
//! role's writes; the stores open themselves again once they can be written
//! (`store::db::Reopenable`), so that too clears without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How long a reading is reused: `statvfs` is cheap, but a busy role checks on every MAIL FROM.
const REFRESH: Duration = Duration::from_millis(100);

/// One directory's file system, as last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// The directory the role writes to.
    pub path: PathBuf,
    /// Bytes an unprivileged writer may still use (`f_bavail`).
    pub free_bytes: u64,
    /// Size of the file system.
    pub total_bytes: u64,
    /// The reserve the role keeps free there.
    pub reserve_bytes: u64,
}

impl Reading {
    /// Less than the reserve is free: new work is refused.
    pub fn low(&self) -> bool {
        self.free_bytes < self.reserve_bytes
    }

    /// What an operator reads in `health`, the dashboard and the log.
    pub fn describe(&self) -> String {
        format!(
            "{} has {} free of {}, less than min_free_space ({})",
            self.path.display(),
            bytesize::ByteSize(self.free_bytes),
            bytesize::ByteSize(self.total_bytes),
            bytesize::ByteSize(self.reserve_bytes)
        )
    }
}

/// The directories of one role and the reserve it keeps on each.
pub struct Space {
    paths: Vec<PathBuf>,
    reserve: u64,
    last: Mutex<Option<(Instant, Vec<Reading>)>>,
    /// Whether the last reading was low, so the change is logged once each way.
    was_low: AtomicBool,
}

impl Space {
    /// Watches `paths` (directories; several on one file system are reported once), keeping
    /// `reserve` bytes free on each.
    pub fn new(paths: Vec<PathBuf>, reserve: u64) -> Space {
        Space {
            paths,
            reserve,
            last: Mutex::new(None),
            was_low: AtomicBool::new(false),
        }
    }

    /// Every directory's file system, read at most [`REFRESH`] ago. A directory that cannot be
    /// read (not created yet) is left out: it holds nothing to protect.
    pub fn readings(&self) -> Vec<Reading> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, readings)) = last.as_ref() {
            if at.elapsed() < REFRESH {
                return readings.clone();
            }
        }
        let mut seen = Vec::new();
        let readings: Vec<Reading> = self
            .paths
            .iter()
            .filter_map(|p| {
                let (fs, reading) = self.read(p)?;
                (!seen.contains(&fs)).then(|| {
                    seen.push(fs);
                    reading
                })
            })
            .collect();
        *last = Some((Instant::now(), readings.clone()));
        drop(last);
        self.note(&readings);
        readings
    }

    /// The first directory with less than the reserve free, if any.
    pub fn low(&self) -> Option<Reading> {
        self.readings().into_iter().find(Reading::low)
    }

    /// The reading of `path`'s file system, with the file system's id (several directories on
    /// one are reported once, under the first).
    fn read(&self, path: &Path) -> Option<(u64, Reading)> {
        let s = rustix::fs::statvfs(path).ok()?;
        let reading = Reading {
            path: path.to_path_buf(),
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            reserve_bytes: self.reserve,
        };
        Some((s.f_fsid, reading))
    }

    /// One log line when the role starts refusing for want of space, and one when it stops.
    fn note(&self, readings: &[Reading]) {
        let low = readings.iter().find(|r| r.low());
        if self.was_low.swap(low.is_some(), Ordering::SeqCst) == low.is_some() {
            return;
        }
        match low {
            Some(r) => warn!(
                path = %r.path.display(),
                free_bytes = r.free_bytes,
                reserve_bytes = r.reserve_bytes,
                "disk full: {}; new mail refused with 452 4.3.1 until there is room",
                r.describe()
            ),
            None => info!("disk space back above min_free_space; new mail accepted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_is_low_and_zero_never_is() {
        let dir = tempfile::tempdir().unwrap();
        let never = Space::new(vec![dir.path().to_path_buf()], 0);
        let r = never.readings();
        assert_eq!(r.len(), 1);
        assert!(r[0].total_bytes > 0 && r[0].free_bytes <= r[0].total_bytes);
        assert!(never.low().is_none());
        let always = Space::new(vec![dir.path().to_path_buf()], u64::MAX);
        let low = always.low().expect("low");
        assert!(low.describe().contains("less than min_free_space"));
        assert!(low.describe().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn directories_on_one_file_system_are_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let space = Space::new(vec![dir.path().to_path_buf(), sub], 0);
        let r = space.readings();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].path, dir.path());
    }

    #[test]
    fn a_directory_not_there_is_left_out() {
        let space = Space::new(vec![PathBuf::from("/nonexistent/hubrelay")], u64::MAX);
        assert!(space.readings().is_empty());
        assert!(space.low().is_none());
    }
}
