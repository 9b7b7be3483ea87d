//! Write-ahead transaction log of one storage group, and the passive node's copy of it.
//!
//! Like ESE logs in Exchange: a directory per storage group holds numbered generations. The active
//! node appends to the *open* generation `E00-<generation, 10 digits>.open`; when it reaches
//! `log_file_size` at a sync it is sealed, fsynced and renamed to the *closed* name
//! `E00-<generation>.log`. Only closed generations are shipped; the passive keeps them under the same
//! closed names, so either node can open the other role's directory after a failover or switchover
//! and carry on with the same numbering. The byte layout is documented in [`format`].
//!
//! Generations behind a checkpoint are deleted ([`truncate_before`]): the file `E00.base` names the
//! first generation the directory still holds, written before anything older is removed, so a
//! crash part-way leaves leftovers that the next listing removes, never a gap.
//!
//! Every file is born complete (written to `<name>.<pid>.tmp`, fsynced, renamed, directory
//! fsynced), so the only partial state a crash can leave is a temporary file of a process that is
//! gone (a listing removes those; never one of its own process, which may be a write in flight
//! beside it: a truncation runs beside the writer) or a torn tail at the end of the open generation, which
//! [`TxLog::open`] cuts off. A failed write or fsync poisons a [`TxLog`]; reopening it runs that same
//! crash recovery, which is the one path trusted to sort out a half-done operation.

mod format;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use format::{End, Header};

/// Time in milliseconds since the Unix epoch (the store never reads the clock itself).
pub type Millis = u64;

/// One delivery as the active node logged it: everything replay needs to rebuild the mailbox store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Message-ID, the key the mailbox store deduplicates on.
    pub message_id: String,
    /// Lower-cased mailbox addresses this delivery is for.
    pub recipients: Vec<String>,
    /// Envelope sender.
    pub sender: String,
    /// When the active node accepted the delivery.
    pub time_ms: Millis,
    /// The message as received.
    pub body: Vec<u8>,
}

/// Where a record sits: generation and index within it. Orders like the log itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// Log generation (1, 2, 3…).
    pub generation: u64,
    /// Index of the record within its generation, from 0.
    pub index: u32,
}

/// Why a log operation failed; corrupt or misplaced logs say which generation and why.
#[derive(Debug, thiserror::Error)]
pub enum TxLogError {
    /// The file system refused an operation.
    #[error("transaction log I/O on {}: {source}", path.display())]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Bytes that are not a valid log generation (damage, truncation, garbage).
    #[error("log generation {generation} is corrupt: {reason}")]
    Corrupt {
        /// Generation being read.
        generation: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A generation that does not follow the previous one.
    #[error("log generation out of sequence: expected {expected}, found {found}")]
    OutOfSequence {
        /// The generation that should come next.
        expected: u64,
        /// The generation offered or found.
        found: u64,
    },
    /// A generation written for another storage group.
    #[error("log generation {generation} belongs to storage group {found:?}, not {expected:?}")]
    WrongStorageGroup {
        /// Generation being read.
        generation: u64,
        /// The storage group of this log.
        expected: String,
        /// The storage group named in the file.
        found: String,
    },
    /// The generation is not closed yet (or never existed), so it cannot be shipped.
    #[error("log generation {generation} is not a closed generation of this log")]
    NotClosed {
        /// Generation asked for.
        generation: u64,
    },
    /// The generation is not in the log directory.
    #[error("log generation {generation} is missing")]
    Missing {
        /// Generation asked for.
        generation: u64,
    },
    /// The generation was truncated: every record in it is in the store behind a checkpoint, and
    /// the log now starts later. A copy that still needs it must be reseeded.
    #[error(
        "log generation {generation} was truncated (the log now starts at generation {first})"
    )]
    Truncated {
        /// Generation asked for.
        generation: u64,
        /// The first generation the log still holds (or will write).
        first: u64,
    },
    /// The copy still holds this generation as written while this node was active; it must be
    /// dropped with `truncate_from` (and undone in the store) before the new active's one is kept.
    #[error("log generation {generation} holds records written while active; truncate it first")]
    Diverged {
        /// Generation in conflict.
        generation: u64,
    },
    /// Generation numbers start at 1.
    #[error("log generation numbers start at 1")]
    GenerationZero,
    /// A record too large for the frame's 32-bit length.
    #[error("log record of {size} bytes is too large")]
    RecordTooLarge {
        /// Encoded size of the record.
        size: usize,
    },
    /// A storage group name that cannot go into a header (empty, or longer than 65535 bytes).
    #[error("invalid storage group name {0:?}")]
    InvalidStorageGroup(String),
    /// An earlier write or fsync failed; the state on disk is uncertain until the log is reopened.
    #[error("transaction log of {storage_group} failed earlier ({reason}); reopen it")]
    Poisoned {
        /// The storage group of this log.
        storage_group: String,
        /// The earlier failure.
        reason: String,
    },
}

impl TxLogError {
    /// What first went wrong: an error about an earlier failure names that failure, not itself,
    /// so reporting a failure again and again never wraps it in itself.
    pub fn root_cause(&self) -> String {
        match self {
            TxLogError::Poisoned { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// The active node's log: appends, group commit, closing and rolling generations.
#[derive(Debug)]
pub struct TxLog {
    dir: PathBuf,
    storage_group: String,
    log_file_size: u64,
    /// The open generation, opened in append mode.
    file: File,
    generation: u64,
    last_closed: u64,
    /// Bytes of the open generation that hold whole records (everything written so far).
    len: u64,
    /// Records in the open generation.
    records: u32,
    /// Epoch stamped in the open generation's header (and every generation this handle creates).
    epoch: u64,
    /// Set by a failed write or fsync.
    poisoned: Option<String>,
}

impl TxLog {
    /// Opens (creating `dir` if needed) the log of `storage_group`: generation 1 if empty, else the
    /// open generation with any torn tail cut off, or a fresh one after the last closed.
    pub fn open(dir: &Path, storage_group: &str, log_file_size: u64) -> Result<TxLog, TxLogError> {
        check_storage_group(storage_group)?;
        let listing = Listing::read(dir)?;
        let last_closed = listing.last_closed();
        let (file, generation, len, records, epoch) = match listing.open {
            Some(generation) => {
                let path = dir.join(open_name(generation));
                let open = inspect_open(&path, storage_group, generation)?;
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_at(&path))?;
                if open.valid < open.file_len {
                    warn!(
                        storage_group,
                        generation,
                        dropped = open.file_len - open.valid,
                        "cutting torn tail off the open log generation"
                    );
                    file.set_len(open.valid)
                        .and_then(|()| file.sync_all())
                        .map_err(io_at(&path))?;
                }
                (file, generation, open.valid, open.records, open.epoch)
            }
            None => {
                let generation = last_closed + 1;
                // Every generation truncated: the next epoch stamps the new one anyway.
                let epoch = match listing.closed.last() {
                    None => 0,
                    Some(&g) => read_header(dir, &closed_name(g), g)?.epoch,
                };
                let (file, len) = create_open(dir, storage_group, generation, epoch)?;
                (file, generation, len, 0, epoch)
            }
        };
        Ok(TxLog {
            dir: dir.to_owned(),
            storage_group: storage_group.to_owned(),
            log_file_size,
            file,
            generation,
            last_closed,
            len,
            records,
            epoch,
            poisoned: None,
        })
    }

    /// Makes every record appended from now on belong to `epoch`: a generation belongs to exactly
    /// one epoch, so an open generation holding records of another epoch is closed first, and an
    /// empty one is stamped anew. Returns the generation closed, if any.
    pub fn begin_epoch(&mut self, epoch: u64) -> Result<Option<u64>, TxLogError> {
        self.check()?;
        if self.epoch == epoch {
            return Ok(None);
        }
        let previous = self.epoch;
        self.epoch = epoch;
        let result = if self.records > 0 {
            self.close_current().map(Some)
        } else {
            self.guarded(|log| {
                let (file, len) = create_open(&log.dir, &log.storage_group, log.generation, epoch)?;
                log.file = file;
                log.len = len;
                Ok(None)
            })
        };
        if result.is_err() {
            self.epoch = previous;
        }
        result
    }

    /// The epoch stamped in the open generation.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Writes `rec` to the open generation without fsync (group commit: `sync` makes it durable).
    pub fn append(&mut self, rec: &LogRecord) -> Result<LogPosition, TxLogError> {
        self.check()?;
        if self.records == u32::MAX {
            // The index would overflow; a new generation restarts it.
            self.close_current()?;
        }
        let frame =
            format::encode_frame(rec).map_err(|size| TxLogError::RecordTooLarge { size })?;
        if let Err(e) = self.file.write_all(&frame) {
            // A partial frame would sit between records and hide every later one; cut it off.
            // (Append mode: the next write lands at the new end.)
            if let Err(cut) = self.file.set_len(self.len) {
                self.poisoned = Some(format!("cutting off a failed append: {cut}"));
            }
            return Err(io_at(&self.open_path())(e));
        }
        let pos = LogPosition {
            generation: self.generation,
            index: self.records,
        };
        self.records += 1;
        self.len += frame.len() as u64;
        Ok(pos)
    }

    /// One fsync for everything appended so far; then closes the generation (and opens the next)
    /// if it reached `log_file_size`. Returns the generations closed by this call (usually none).
    pub fn sync(&mut self) -> Result<Vec<u64>, TxLogError> {
        self.check()?;
        if let Err(e) = self.file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: trust nothing.
            self.poisoned = Some(format!("fsync: {e}"));
            return Err(io_at(&self.open_path())(e));
        }
        if self.records > 0 && self.len >= self.log_file_size {
            Ok(vec![self.close_current()?])
        } else {
            Ok(Vec::new())
        }
    }

    /// Closes the open generation now even if not full (a scheduled move ships everything).
    /// No-op if it holds no records. Returns the generation closed, if any.
    pub fn roll(&mut self) -> Result<Option<u64>, TxLogError> {
        self.check()?;
        if self.records == 0 {
            return Ok(None);
        }
        self.close_current().map(Some)
    }

    /// The open generation (the one `append` writes to).
    pub fn current_generation(&self) -> u64 {
        self.generation
    }

    /// Highest closed generation, 0 if none: what the passive can copy.
    pub fn last_closed(&self) -> u64 {
        self.last_closed
    }

    /// LastLogGenerated as Exchange means it: the highest generation that holds records, open or
    /// closed. A lost active reports it so the passive can count the logs it never received.
    pub fn last_generated(&self) -> u64 {
        if self.records > 0 {
            self.generation
        } else {
            self.last_closed
        }
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Raw bytes of a closed generation, to ship to the passive (which verifies them).
    pub fn read_closed(&self, generation: u64) -> Result<Vec<u8>, TxLogError> {
        if generation == 0 || generation > self.last_closed {
            return Err(TxLogError::NotClosed { generation });
        }
        read_generation(&self.dir, generation)
    }

    /// Records of a generation, open or closed, in log order (replay at start-up).
    pub fn records(&self, generation: u64) -> Result<Vec<LogRecord>, TxLogError> {
        if generation != self.generation {
            return closed_records(&self.dir, &self.storage_group, self.last_closed, generation);
        }
        let path = self.open_path();
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let corrupt = |reason: String| TxLogError::Corrupt { generation, reason };
        // Only the prefix this handle wrote is known to hold whole records.
        let known = usize::try_from(self.len)
            .ok()
            .and_then(|n| bytes.get(..n))
            .ok_or_else(|| corrupt("open generation shorter than written".into()))?;
        let header = format::parse_header(known).map_err(corrupt)?;
        let scan = format::scan(known.get(header.len..).unwrap_or_default());
        match scan.end {
            End::Clean if scan.records.len() == self.records as usize => Ok(scan.records),
            End::Bad(reason) => Err(corrupt(reason)),
            _ => Err(corrupt("open generation changed under the log".into())),
        }
    }

    /// Drops generations >= `generation`, closed and open, and restarts at `generation`: a returning
    /// old active discarding the logs that diverged from the new active. No-op past the open one.
    pub fn truncate_from(&mut self, generation: u64) -> Result<(), TxLogError> {
        self.check()?;
        if generation == 0 {
            return Err(TxLogError::GenerationZero);
        }
        if generation > self.generation {
            return Ok(());
        }
        self.guarded(|log| log.try_truncate(generation))
    }

    fn try_truncate(&mut self, generation: u64) -> Result<(), TxLogError> {
        let first = read_base(&self.dir)?;
        if generation < first {
            return Err(TxLogError::Truncated { generation, first });
        }
        // Highest first, so a crash part-way leaves a contiguous log that reopens cleanly.
        let open = self.open_path();
        fs::remove_file(&open).map_err(io_at(&open))?;
        remove_closed_from(&self.dir, generation, self.last_closed)?;
        sync_dir(&self.dir)?;
        // Listed again: if nothing older is left, there is no closed generation at all.
        self.last_closed = Listing::read(&self.dir)?.last_closed();
        let (file, len) = create_open(&self.dir, &self.storage_group, generation, self.epoch)?;
        self.file = file;
        self.generation = generation;
        self.len = len;
        self.records = 0;
        Ok(())
    }

    fn check(&self) -> Result<(), TxLogError> {
        match &self.poisoned {
            None => Ok(()),
            Some(reason) => Err(TxLogError::Poisoned {
                storage_group: self.storage_group.clone(),
                reason: reason.clone(),
            }),
        }
    }

    fn open_path(&self) -> PathBuf {
        self.dir.join(open_name(self.generation))
    }

    /// Seals, fsyncs and renames the open generation, then starts the next one.
    fn close_current(&mut self) -> Result<u64, TxLogError> {
        self.guarded(Self::try_close)
    }

    /// Runs a multi-step file operation; a failure part-way poisons the log, since only reopening
    /// (crash recovery) can tell which steps reached the disk.
    fn guarded<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, TxLogError>,
    ) -> Result<T, TxLogError> {
        let result = op(self);
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
        }
        result
    }

    fn try_close(&mut self) -> Result<u64, TxLogError> {
        let closed = self.generation;
        let open = self.open_path();
        self.file
            .write_all(&format::encode_seal(self.records))
            .and_then(|()| self.file.sync_data())
            .map_err(io_at(&open))?;
        let target = self.dir.join(closed_name(closed));
        fs::rename(&open, &target).map_err(io_at(&target))?;
        sync_dir(&self.dir)?;
        self.last_closed = closed;
        let (file, len) = create_open(&self.dir, &self.storage_group, closed + 1, self.epoch)?;
        self.file = file;
        self.generation = closed + 1;
        self.len = len;
        self.records = 0;
        Ok(closed)
    }
}

/// Validates a shipped log file: header, storage group, generation == `expected_generation`, every
/// checksum, the seal and no trailing bytes. Returns its records. Never panics, whatever the input.
pub fn verify(
    bytes: &[u8],
    storage_group: &str,
    expected_generation: u64,
) -> Result<Vec<LogRecord>, TxLogError> {
    let corrupt = |reason: String| TxLogError::Corrupt {
        generation: expected_generation,
        reason,
    };
    let header = format::parse_header(bytes).map_err(corrupt)?;
    check_header(&header, storage_group, expected_generation)?;
    let scan = format::scan(bytes.get(header.len..).unwrap_or_default());
    let count = scan.records.len();
    match scan.end {
        End::Sealed {
            count: sealed,
            trailing,
        } if sealed as usize == count && trailing == 0 => Ok(scan.records),
        End::Sealed {
            count: sealed,
            trailing: 0,
        } => Err(corrupt(format!(
            "seal counts {sealed} records, file holds {count}"
        ))),
        End::Sealed { trailing, .. } => Err(corrupt(format!("{trailing} bytes after the seal"))),
        End::Clean => Err(corrupt(format!(
            "no seal after {count} records: truncated or never closed"
        ))),
        End::Bad(reason) => Err(corrupt(reason)),
    }
}

/// The passive node's copy of a storage group's log: verified closed generations, in sequence.
#[derive(Debug)]
pub struct LogCopy {
    dir: PathBuf,
    storage_group: String,
    /// The first generation held (or copied next, if none is held).
    base: u64,
    last_copied: u64,
    /// Generation of a non-empty open log left from when this node was active.
    diverged: Option<u64>,
}

impl LogCopy {
    /// Opens (creating `dir` if needed) a copy. An open generation left from being active is
    /// removed if it holds no records and otherwise kept (see [`LogCopy::diverged`]).
    pub fn open(dir: &Path, storage_group: &str) -> Result<LogCopy, TxLogError> {
        check_storage_group(storage_group)?;
        let listing = Listing::read(dir)?;
        let mut diverged = None;
        if let Some(generation) = listing.open {
            let path = dir.join(open_name(generation));
            if inspect_open(&path, storage_group, generation)?.records == 0 {
                fs::remove_file(&path).map_err(io_at(&path))?;
                sync_dir(dir)?;
            } else {
                diverged = Some(generation);
            }
        }
        Ok(LogCopy {
            dir: dir.to_owned(),
            storage_group: storage_group.to_owned(),
            base: listing.base,
            last_copied: listing.last_closed(),
            diverged,
        })
    }

    /// LastLogCopied: highest generation held, 0 if none.
    pub fn last_copied(&self) -> u64 {
        self.last_copied
    }

    /// The first generation held: everything before it was truncated (it is in the store behind
    /// its checkpoint), or was never copied here (a copy seeded from a snapshot).
    pub fn first_kept(&self) -> u64 {
        self.base
    }

    /// Deletes the copied generations before `generation` (see [`truncate_before`]); at most up
    /// to the next one to copy. Returns what went.
    pub fn truncate_before(&mut self, generation: u64) -> Result<Truncated, TxLogError> {
        let done = truncate_before(&self.dir, generation.min(self.last_copied + 1))?;
        self.base = read_base(&self.dir)?;
        Ok(done)
    }

    /// Drops every generation held and makes `generation` the next one to copy: a reseed from a
    /// snapshot that holds everything before it. Files go first (highest first), the new base
    /// after, so a crash part-way leaves a contiguous log the next open accepts.
    pub fn restart_at(&mut self, generation: u64) -> Result<(), TxLogError> {
        if generation == 0 {
            return Err(TxLogError::GenerationZero);
        }
        if let Some(open) = self.diverged.take() {
            let path = self.dir.join(open_name(open));
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
        remove_closed_from(&self.dir, self.base, self.last_copied)?;
        sync_dir(&self.dir)?;
        write_atomic(&self.dir, BASE_FILE, format!("{generation}\n").as_bytes())?;
        self.base = generation;
        self.last_copied = generation - 1;
        Ok(())
    }

    /// The generation of records this node logged while it was active and that no copy has
    /// confirmed: the caller must undo them in the store and `truncate_from` it before copying on.
    pub fn diverged(&self) -> Option<u64> {
        self.diverged
    }

    /// The copy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Verifies a shipped generation and keeps it (tmp + fsync + rename + directory fsync). Refuses
    /// anything but `last_copied + 1`, so logs are never replayed out of order. Returns its records.
    pub fn store(&mut self, generation: u64, bytes: &[u8]) -> Result<Vec<LogRecord>, TxLogError> {
        let expected = self.last_copied + 1;
        if generation != expected {
            return Err(TxLogError::OutOfSequence {
                expected,
                found: generation,
            });
        }
        if self.diverged == Some(generation) {
            return Err(TxLogError::Diverged { generation });
        }
        let records = verify(bytes, &self.storage_group, generation)?;
        write_atomic(&self.dir, &closed_name(generation), bytes)?;
        self.last_copied = generation;
        Ok(records)
    }

    /// The epoch stamped in a generation this copy holds (closed, or the diverged open one).
    pub fn epoch_of(&self, generation: u64) -> Result<u64, TxLogError> {
        let name = if self.diverged == Some(generation) {
            open_name(generation)
        } else if generation < self.base {
            return Err(TxLogError::Truncated {
                generation,
                first: self.base,
            });
        } else if generation <= self.last_copied {
            closed_name(generation)
        } else {
            return Err(TxLogError::Missing { generation });
        };
        Ok(read_header(&self.dir, &name, generation)?.epoch)
    }

    /// Highest generation held: the diverged open one if any, else LastLogCopied.
    pub fn last_held(&self) -> u64 {
        self.diverged.unwrap_or(self.last_copied)
    }

    /// Records of a copied generation (verified again: the disk may have rotted since).
    pub fn records(&self, generation: u64) -> Result<Vec<LogRecord>, TxLogError> {
        closed_records(&self.dir, &self.storage_group, self.last_copied, generation)
    }

    /// Drops generations >= `generation` (copied ones and a diverged open one); copying resumes there.
    pub fn truncate_from(&mut self, generation: u64) -> Result<(), TxLogError> {
        if generation == 0 {
            return Err(TxLogError::GenerationZero);
        }
        if generation < self.base {
            return Err(TxLogError::Truncated {
                generation,
                first: self.base,
            });
        }
        if let Some(open) = self.diverged.filter(|&g| g >= generation) {
            let path = self.dir.join(open_name(open));
            fs::remove_file(&path).map_err(io_at(&path))?;
            self.diverged = None;
        }
        remove_closed_from(&self.dir, generation, self.last_copied)?;
        sync_dir(&self.dir)?;
        self.last_copied = Listing::read(&self.dir)?.last_closed();
        Ok(())
    }
}

/// Generations found in a log directory, checked to be contiguous.
struct Listing {
    /// The first generation the directory holds or will hold (`E00.base`, 1 without the file).
    base: u64,
    /// Closed generations, ascending, without gaps, starting at `base`.
    closed: Vec<u64>,
    /// The open generation, if any; always `last closed + 1` when there are closed ones.
    open: Option<u64>,
}

impl Listing {
    /// Lists `dir` (creating it), removing leftovers of interrupted atomic writes and of an
    /// interrupted truncation (closed generations before the base).
    fn read(dir: &Path) -> Result<Listing, TxLogError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let base = read_base(dir)?;
        let mut closed = Vec::new();
        let mut open = Vec::new();
        let mut removed = false;
        for entry in fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let leftover = name.starts_with("E00") && name.ends_with(".tmp") && !ours(name);
            let truncated = parse_name(name, "log").filter(|g| *g < base).is_some();
            if leftover || truncated {
                fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
                removed = true;
            } else if let Some(g) = parse_name(name, "log") {
                closed.push(g);
            } else if let Some(g) = parse_name(name, "open") {
                open.push(g);
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        closed.sort_unstable();
        open.sort_unstable();
        if let Some(&first) = closed.first().filter(|g| **g != base) {
            return Err(TxLogError::OutOfSequence {
                expected: base,
                found: first,
            });
        }
        if let Some(w) = closed.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(TxLogError::OutOfSequence {
                expected: w[0] + 1,
                found: w[1],
            });
        }
        let open = match (open.as_slice(), closed.last()) {
            ([], _) => None,
            ([g], None) if *g >= base => Some(*g),
            ([g], None) => {
                return Err(TxLogError::OutOfSequence {
                    expected: base,
                    found: *g,
                })
            }
            ([g], Some(last)) if *g == last + 1 => Some(*g),
            ([g], Some(last)) => {
                return Err(TxLogError::OutOfSequence {
                    expected: last + 1,
                    found: *g,
                })
            }
            ([first, second, ..], _) => {
                return Err(TxLogError::Corrupt {
                    generation: *second,
                    reason: format!("open while generation {first} is open too"),
                })
            }
        };
        Ok(Listing { base, closed, open })
    }

    /// Highest closed generation; `base - 1` when every closed one was truncated.
    fn last_closed(&self) -> u64 {
        self.closed.last().copied().unwrap_or(self.base - 1)
    }
}

/// Name of the file holding the first generation a log directory keeps.
const BASE_FILE: &str = "E00.base";

/// The first generation kept in `dir` (1 if nothing was ever truncated).
fn read_base(dir: &Path) -> Result<u64, TxLogError> {
    let path = dir.join(BASE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(g) if g >= 1 => Ok(g),
            _ => Err(TxLogError::Corrupt {
                generation: 0,
                reason: format!("{} holds {:?}, not a generation", path.display(), text),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(1),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// What [`truncate_before`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Closed generations deleted.
    pub generations: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The first generation kept now (0 when nothing was deleted).
    pub first_kept: u64,
}

/// Deletes the closed generations of the log in `dir` before `generation`, which becomes the first
/// one kept. `generation` may be at most one past the last closed generation: the open generation
/// (and a copy's next one) is never removed. The base is written (atomically, fsynced) before any
/// file goes, so a crash part-way leaves only files the next listing removes. No-op if nothing
/// before `generation` is left. Safe beside a writer appending to the same directory (it never
/// touches closed files) but not beside another truncation of it.
pub fn truncate_before(dir: &Path, generation: u64) -> Result<Truncated, TxLogError> {
    let listing = Listing::read(dir)?;
    if generation <= listing.base {
        return Ok(Truncated::default());
    }
    let last = listing.last_closed();
    if generation > last + 1 {
        return Err(TxLogError::NotClosed {
            generation: generation - 1,
        });
    }
    write_atomic(dir, BASE_FILE, format!("{generation}\n").as_bytes())?;
    let mut done = Truncated {
        first_kept: generation,
        ..Truncated::default()
    };
    for g in listing.base..generation {
        let path = dir.join(closed_name(g));
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => {
                done.generations += 1;
                done.bytes += size;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
    }
    sync_dir(dir)?;
    Ok(done)
}

/// The first generation the log in `dir` holds (or will write next, if it holds none).
pub fn first_kept(dir: &Path) -> Result<u64, TxLogError> {
    read_base(dir)
}

/// Bytes of the closed generations `from..=last` in `dir` (what keeping them costs), skipping any
/// that are gone.
pub fn closed_bytes(dir: &Path, from: u64, last: u64) -> u64 {
    (from.max(1)..=last)
        .filter_map(|g| fs::metadata(dir.join(closed_name(g))).ok())
        .map(|m| m.len())
        .sum()
}

/// What crash recovery found in an open generation.
struct OpenState {
    records: u32,
    epoch: u64,
    /// Bytes of header and whole records; anything after is a torn tail.
    valid: u64,
    file_len: u64,
}

/// Reads an open generation: its header must be intact (files are created whole), its records are
/// counted up to the first frame that is torn, damaged or a seal (an interrupted close).
fn inspect_open(
    path: &Path,
    storage_group: &str,
    generation: u64,
) -> Result<OpenState, TxLogError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    let header = format::parse_header(&bytes)
        .map_err(|reason| TxLogError::Corrupt { generation, reason })?;
    check_header(&header, storage_group, generation)?;
    let scan = format::scan(bytes.get(header.len..).unwrap_or_default());
    let records = u32::try_from(scan.records.len()).map_err(|_| TxLogError::Corrupt {
        generation,
        reason: "more records than a generation can index".into(),
    })?;
    Ok(OpenState {
        records,
        epoch: header.epoch,
        valid: (header.len + scan.valid) as u64,
        file_len: bytes.len() as u64,
    })
}

fn check_header(header: &Header, storage_group: &str, generation: u64) -> Result<(), TxLogError> {
    if header.generation != generation {
        return Err(TxLogError::OutOfSequence {
            expected: generation,
            found: header.generation,
        });
    }
    if header.storage_group != storage_group {
        return Err(TxLogError::WrongStorageGroup {
            generation,
            expected: storage_group.to_owned(),
            found: header.storage_group.clone(),
        });
    }
    Ok(())
}

fn check_storage_group(storage_group: &str) -> Result<(), TxLogError> {
    if storage_group.is_empty() || storage_group.len() > usize::from(u16::MAX) {
        return Err(TxLogError::InvalidStorageGroup(storage_group.to_owned()));
    }
    Ok(())
}

fn closed_records(
    dir: &Path,
    storage_group: &str,
    last_closed: u64,
    generation: u64,
) -> Result<Vec<LogRecord>, TxLogError> {
    if generation == 0 || generation > last_closed {
        return Err(TxLogError::Missing { generation });
    }
    verify(&read_closed(dir, generation)?, storage_group, generation)
}

/// Raw bytes of closed generation `generation` in log directory `dir`, for shipping by a reader that
/// does not hold the [`TxLog`] (closed files never change; the caller knows it is closed).
pub fn read_closed(dir: &Path, generation: u64) -> Result<Vec<u8>, TxLogError> {
    match read_generation(dir, generation) {
        Err(TxLogError::Missing { .. }) => match read_base(dir)? {
            first if generation < first => Err(TxLogError::Truncated { generation, first }),
            _ => Err(TxLogError::Missing { generation }),
        },
        other => other,
    }
}

/// Reads just the header of generation file `name` (never the whole file).
fn read_header(dir: &Path, name: &str, generation: u64) -> Result<Header, TxLogError> {
    use std::io::Read;
    let path = dir.join(name);
    let mut prefix = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(format::MAX_HEADER_LEN).read_to_end(&mut prefix))
        .map_err(io_at(&path))?;
    format::parse_header(&prefix).map_err(|reason| TxLogError::Corrupt { generation, reason })
}

fn read_generation(dir: &Path, generation: u64) -> Result<Vec<u8>, TxLogError> {
    let path = dir.join(closed_name(generation));
    fs::read(&path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TxLogError::Missing { generation },
        _ => TxLogError::Io { path, source },
    })
}

/// Removes closed generations `from..=last`, highest first; a missing file is already gone.
fn remove_closed_from(dir: &Path, from: u64, last: u64) -> Result<(), TxLogError> {
    for g in (from..=last).rev() {
        let path = dir.join(closed_name(g));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_at(&path)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Creates the open generation whole (header only) and returns it in append mode with its length.
fn create_open(
    dir: &Path,
    storage_group: &str,
    generation: u64,
    epoch: u64,
) -> Result<(File, u64), TxLogError> {
    let header = format::encode_header(storage_group, generation, epoch);
    let path = write_atomic(dir, &open_name(generation), &header)?;
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_at(&path))?;
    Ok((file, header.len() as u64))
}

/// Writes `name` so that it exists either complete or not at all, durably.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, TxLogError> {
    let tmp = dir.join(format!("{name}{}", tmp_suffix()));
    let path = dir.join(name);
    File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(io_at(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_at(&path))?;
    sync_dir(dir)?;
    Ok(path)
}

/// The ending of this process's temporary files: `.<pid>.tmp`.
fn tmp_suffix() -> String {
    format!(".{}.tmp", std::process::id())
}

/// Whether a temporary file is this process's, so possibly a write in flight (the writer's next
/// open generation while a truncation lists the directory, or a truncation's base while the
/// writer reopens): only those of a process that is gone are leftovers.
fn ours(name: &str) -> bool {
    name.ends_with(&tmp_suffix())
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), TxLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> TxLogError + '_ {
    move |source| TxLogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn closed_name(generation: u64) -> String {
    format!("E00-{generation:010}.log")
}

fn open_name(generation: u64) -> String {
    format!("E00-{generation:010}.open")
}

/// The generation named by `name` if it is exactly `E00-<generation>.<ext>` as this module writes it.
fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let digits = name
        .strip_prefix("E00-")?
        .strip_suffix(ext)?
        .strip_suffix('.')?;
    let generation: u64 = digits.parse().ok()?;
    (format!("{generation:010}") == digits).then_some(generation)
}
