//! Message bodies in append-only segment files beside sled, so a body is written once.
//!
//! In sled a body is written to its log, then again with every rewrite of the leaf pages that hold
//! its pieces, and freed space is reclaimed only as pages are rewritten: a node store took
//! 2.3–2.7× the payload it held. Here a body is one checksummed record appended to a segment
//! file, and sled keeps only where it is ([`BodyAt`]). A segment is deleted once nothing points
//! into it, and one that is mostly dead is compacted: its live bodies are appended again and the
//! pointers moved (by the store that owns them, in one transaction).
//!
//! Durability: [`Segments::sync`] makes every body appended so far durable; a store syncs before
//! the transaction that points at the bodies, so a pointer never outlives its body. A segment is
//! removed only after the store flushed the state in which nothing points into it.
//!
//! Record layout: `"HRB1"`, the body length (u64 BE), the body's CRC-32 (u32 BE), the body.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

const MAGIC: &[u8; 4] = b"HRB1";
const HEADER: u64 = 16;
/// Segment file handles kept open besides the one being appended to; reads of other segments
/// open their file again. Bounds the descriptors a store holds whatever its size.
const HANDLES: usize = 64;

/// Where one body is: its record in a segment, with its length and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyAt {
    /// The segment's number (its file name).
    pub segment: u64,
    /// Where its record starts in the segment.
    pub offset: u64,
    /// The body's length in bytes.
    pub len: u64,
    /// The body's CRC-32.
    pub crc: u32,
}

impl BodyAt {
    /// Length of [`BodyAt::encode`]'s output.
    pub const ENCODED: usize = 28;

    /// Fixed-width big-endian form, stored in the index that points at the body.
    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut out = [0u8; Self::ENCODED];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..24].copy_from_slice(&self.len.to_be_bytes());
        out[24..].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// The inverse of [`BodyAt::encode`]; `None` unless `raw` has exactly its length.
    pub fn decode(raw: &[u8]) -> Option<BodyAt> {
        let raw: &[u8; Self::ENCODED] = raw.try_into().ok()?;
        let u64_at = |i: usize| u64::from_be_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        Some(BodyAt {
            segment: u64_at(0),
            offset: u64_at(8),
            len: u64_at(16),
            crc: u32::from_be_bytes(raw[24..].try_into().expect("4 bytes")),
        })
    }

    /// Bytes its record takes in the segment.
    fn record_len(&self) -> u64 {
        HEADER + self.len
    }
}

/// What went wrong with a segment file.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Reading, writing or syncing a segment file (or its directory) failed.
    #[error("body segment {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A record does not hold what its pointer says.
    #[error("body segment {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// The record's offset.
        offset: u64,
        /// What did not match.
        reason: String,
    },
    /// The segment was compacted away after the pointer was read: read the pointer again.
    #[error("body segment {0:016x} was compacted away")]
    Gone(u64),
}

/// The segments of one store, in one directory.
pub(crate) struct Segments {
    dir: PathBuf,
    /// A segment is sealed once it reaches this size (a larger body gets a segment of its own).
    segment_bytes: u64,
    state: Mutex<State>,
    /// Held for the length of a [`Segments::sync`].
    syncing: Mutex<()>,
}

struct State {
    /// Every segment on disk, with its size and the bytes of its records still pointed at.
    usage: BTreeMap<u64, Usage>,
    /// The segment appended to, once one was opened since start.
    active: Option<Active>,
    /// Number of the next segment to create.
    next: u64,
    /// Files that may hold records not synced yet (the active one, and any sealed meanwhile).
    unsynced: Vec<Unsynced>,
    /// A segment was created since the last sync: the directory entry must be made durable too.
    dir_unsynced: bool,
    /// Open handles of sealed segments, for reads.
    handles: HashMap<u64, Arc<File>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    size: u64,
    live: u64,
}

struct Active {
    id: u64,
    file: Arc<File>,
}

/// A segment file and how much of it the last sync covered: a sync skips a file that has not
/// grown since (the hub's round syncs its bodies, then flushes the store, which syncs again).
struct Unsynced {
    id: u64,
    file: Arc<File>,
    synced: u64,
}

/// What [`Segments::plan`] found to give back.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Sealed segments nothing points into: delete them once the store's state is flushed.
    pub empty: Vec<u64>,
    /// Sealed segments mostly dead: move their live bodies, then they are empty.
    pub sparse: Vec<u64>,
}

/// What a compaction round gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Live bodies moved out of mostly-dead segments.
    pub moved: u64,
    /// Segment files deleted.
    pub removed: u64,
    /// Their bytes.
    pub freed: u64,
}

/// A body to move: the key of the index entry that points at it, where it was, where it is now.
pub(crate) struct Move {
    pub key: sled::IVec,
    pub old: BodyAt,
    pub new: BodyAt,
}

/// Bytes of live bodies one compaction round moves at most, so a round stays short and the
/// writers appending beside it are not held up for long.
const MOVE_PER_ROUND: u64 = 64 << 20;

/// Totals over a store's segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentUsage {
    /// Segment files on disk.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Bytes of records something still points at.
    pub live: u64,
}

impl Segments {
    /// Opens the segments under `dir` (created if missing). Every existing segment is sealed and
    /// counted dead until [`Segments::recount`] says what points into it.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Segments, SegmentError> {
        let io = |source| SegmentError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut usage = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            let size = entry.metadata().map_err(io)?.len();
            usage.insert(id, Usage { size, live: 0 });
        }
        let next = usage.keys().next_back().map_or(1, |id| id + 1);
        Ok(Segments {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(State {
                usage,
                active: None,
                next,
                unsynced: Vec::new(),
                dir_unsynced: false,
                handles: HashMap::new(),
            }),
            syncing: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a whole assignment: nothing is half-done after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.seg"))
    }

    /// Appends `body` as a new record and counts it live. Not durable until [`Segments::sync`];
    /// if the pointer to it is never committed, [`Segments::release`] it.
    pub fn append(&self, body: &[u8]) -> Result<BodyAt, SegmentError> {
        let mut state = self.lock();
        let record = HEADER + body.len() as u64;
        let (id, file) = self.active_for(&mut state, record)?;
        let offset = state.usage.get(&id).map_or(0, |u| u.size);
        let at = BodyAt {
            segment: id,
            offset,
            len: body.len() as u64,
            crc: crc32fast::hash(body),
        };
        let mut bytes = Vec::with_capacity(record as usize);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&at.len.to_be_bytes());
        bytes.extend_from_slice(&at.crc.to_be_bytes());
        bytes.extend_from_slice(body);
        if let Err(source) = file.write_all_at(&bytes, offset) {
            // Cut what was written of it (a full disk lets a file shrink), so the segment still
            // ends where its records do; if even that fails, append to a fresh one from here on.
            if file.set_len(offset).is_err() {
                state.active = None;
            }
            return Err(SegmentError::Io {
                path: self.path(id),
                source,
            });
        }
        let usage = state.usage.entry(id).or_default();
        usage.size = offset + record;
        usage.live += record;
        Ok(at)
    }

    /// The segment to append a record of `record` bytes to: the active one while it has room
    /// (or is empty), else a new one.
    fn active_for(&self, state: &mut State, record: u64) -> Result<(u64, Arc<File>), SegmentError> {
        if let Some(active) = &state.active {
            let size = state.usage.get(&active.id).map_or(0, |u| u.size);
            if size == 0 || size + record <= self.segment_bytes {
                return Ok((active.id, active.file.clone()));
            }
        }
        let id = state.next;
        let path = self.path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| SegmentError::Io { path, source })?;
        let file = Arc::new(file);
        state.next += 1;
        state.usage.insert(id, Usage::default());
        state.unsynced.push(Unsynced {
            id,
            file: file.clone(),
            synced: 0,
        });
        state.dir_unsynced = true;
        state.active = Some(Active {
            id,
            file: file.clone(),
        });
        Ok((id, file))
    }

    /// Makes every record appended so far durable (with the directory entries of new segments).
    /// The fsyncs run outside the state's lock, so reads and appends go on meanwhile; syncs run one
    /// at a time, so none returns while another still syncs what it counts on.
    pub fn sync(&self) -> Result<(), SegmentError> {
        let _one = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        let (files, dir) = {
            let mut state = self.lock();
            let files: Vec<(u64, Arc<File>, u64)> = state
                .unsynced
                .iter()
                .filter_map(|u| {
                    let size = state.usage.get(&u.id).map_or(0, |usage| usage.size);
                    (size != u.synced).then(|| (u.id, u.file.clone(), size))
                })
                .collect();
            (files, std::mem::take(&mut state.dir_unsynced))
        };
        let synced = files.iter().try_for_each(|(id, file, _)| {
            file.sync_data().map_err(|source| SegmentError::Io {
                path: self.path(*id),
                source,
            })
        });
        let synced = synced.and_then(|()| match dir {
            false => Ok(()),
            true => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| SegmentError::Io {
                    path: self.dir.clone(),
                    source,
                }),
        });
        let mut state = self.lock();
        if synced.is_err() {
            state.dir_unsynced |= dir;
            return synced;
        }
        // What was written before this sync began is durable; a sealed segment synced at its
        // final size needs no sync again.
        let active = state.active.as_ref().map(|a| a.id);
        let State {
            unsynced, usage, ..
        } = &mut *state;
        for (id, _, size) in &files {
            if let Some(u) = unsynced.iter_mut().find(|u| u.id == *id) {
                u.synced = u.synced.max(*size);
            }
        }
        unsynced.retain(|u| {
            Some(u.id) == active || usage.get(&u.id).is_some_and(|usage| usage.size != u.synced)
        });
        Ok(())
    }

    /// The body at `at`, checked against its length and checksum.
    pub fn read(&self, at: &BodyAt) -> Result<Vec<u8>, SegmentError> {
        let file = self.handle(at.segment)?;
        let path = || self.path(at.segment);
        let mut record = vec![0u8; at.record_len() as usize];
        file.read_exact_at(&mut record, at.offset)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::UnexpectedEof => SegmentError::Corrupt {
                    path: path(),
                    offset: at.offset,
                    reason: format!("the segment ends before the record's {} bytes", at.len),
                },
                _ => SegmentError::Io {
                    path: path(),
                    source,
                },
            })?;
        let corrupt = |reason: String| SegmentError::Corrupt {
            path: path(),
            offset: at.offset,
            reason,
        };
        if &record[..4] != MAGIC {
            return Err(corrupt("no record starts here".into()));
        }
        let len = u64::from_be_bytes(record[4..12].try_into().expect("8 bytes"));
        let crc = u32::from_be_bytes(record[12..16].try_into().expect("4 bytes"));
        if len != at.len || crc != at.crc {
            return Err(corrupt(format!(
                "the record is {len} bytes with checksum {crc:08x}, the pointer says {} and {:08x}",
                at.len, at.crc
            )));
        }
        let body = record.split_off(HEADER as usize);
        if crc32fast::hash(&body) != crc {
            return Err(corrupt("the body does not match its checksum".into()));
        }
        Ok(body)
    }

    /// The body the store's index points at now: `pointer` reads the pointer (`None`: the index
    /// has none) and is read again when a compaction moved the body between the two reads. A
    /// pointer into a deleted segment three times running is an error, not a wait.
    pub fn read_current<E: From<SegmentError>>(
        &self,
        mut pointer: impl FnMut() -> Result<Option<BodyAt>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let mut gone = 0;
        for _ in 0..3 {
            let Some(at) = pointer()? else {
                return Ok(None);
            };
            match self.read(&at) {
                Err(SegmentError::Gone(id)) => gone = id,
                other => return Ok(Some(other?)),
            }
        }
        Err(SegmentError::Gone(gone).into())
    }

    /// An open handle of segment `id`.
    fn handle(&self, id: u64) -> Result<Arc<File>, SegmentError> {
        let mut state = self.lock();
        if let Some(active) = state.active.as_ref().filter(|a| a.id == id) {
            return Ok(active.file.clone());
        }
        if let Some(file) = state.handles.get(&id) {
            return Ok(file.clone());
        }
        if !state.usage.contains_key(&id) {
            return Err(SegmentError::Gone(id));
        }
        let path = self.path(id);
        let file = Arc::new(File::open(&path).map_err(|source| SegmentError::Io { path, source })?);
        if state.handles.len() >= HANDLES {
            if let Some(&evict) = state.handles.keys().next() {
                state.handles.remove(&evict);
            }
        }
        state.handles.insert(id, file.clone());
        Ok(file)
    }

    /// Nothing points at `at` any more (its pointer's removal is committed).
    pub fn release(&self, at: &BodyAt) {
        if let Some(usage) = self.lock().usage.get_mut(&at.segment) {
            usage.live = usage.live.saturating_sub(at.record_len());
        }
    }

    /// Sets what is live to exactly `live`: at open, and after the store's index went back to
    /// its last flushed state.
    pub fn recount(&self, live: impl IntoIterator<Item = BodyAt>) {
        let mut state = self.lock();
        for usage in state.usage.values_mut() {
            usage.live = 0;
        }
        for at in live {
            if let Some(usage) = state.usage.get_mut(&at.segment) {
                usage.live += at.record_len();
            }
        }
    }

    /// Sealed segments to delete or compact. A segment is compacted once less than half of it is
    /// live: moving its bodies then costs at most as much as it gives back.
    pub fn plan(&self) -> Plan {
        let state = self.lock();
        let active = state.active.as_ref().map(|a| a.id);
        let mut plan = Plan::default();
        for (&id, usage) in state.usage.iter().filter(|(&id, _)| Some(id) != active) {
            if usage.live == 0 {
                plan.empty.push(id);
            } else if usage.live * 2 < usage.size {
                plan.sparse.push(id);
            }
        }
        plan
    }

    /// Deletes sealed segment `id` if nothing points into it; the caller has flushed the state
    /// in which that is so. Returns the bytes given back.
    pub fn remove_empty(&self, id: u64) -> Result<u64, SegmentError> {
        let mut state = self.lock();
        let Some(usage) = state.usage.get(&id).copied() else {
            return Ok(0);
        };
        if usage.live > 0 || state.active.as_ref().is_some_and(|a| a.id == id) {
            return Ok(0);
        }
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SegmentError::Io { path, source }),
        }
        state.usage.remove(&id);
        state.handles.remove(&id);
        state.unsynced.retain(|u| u.id != id);
        Ok(usage.size)
    }

    /// One round of giving disk back, for a store whose index entries point at bodies here:
    /// moves the live bodies of mostly-dead segments (up to [`MOVE_PER_ROUND`]; `pointers` lists
    /// every entry's key and pointer, `repoint` moves in one transaction each pointer that still
    /// points where it did and says which it moved), then `flush`es the store and deletes the
    /// segments nothing points into. Runs beside every other operation of the store, but not
    /// beside another round. A crash at any point loses no body: a segment goes only once the
    /// state without pointers into it is flushed, and a moved body's old copy stays until then.
    pub fn compact<E, I>(
        &self,
        pointers: impl FnOnce() -> Result<I, E>,
        repoint: impl FnOnce(&[Move]) -> Result<Vec<bool>, E>,
        flush: impl FnOnce() -> Result<(), E>,
    ) -> Result<Compaction, E>
    where
        E: From<SegmentError>,
        I: Iterator<Item = Result<(sled::IVec, BodyAt), E>>,
    {
        let mut done = Compaction::default();
        let sparse = self.plan().sparse;
        if !sparse.is_empty() {
            let mut moves = Vec::new();
            let mut bytes = 0;
            for pointer in pointers()? {
                let (key, old) = pointer?;
                if bytes >= MOVE_PER_ROUND {
                    break;
                }
                if sparse.contains(&old.segment) {
                    // Only a round deletes segments, so `old`'s is still there.
                    let new = self.append(&self.read(&old)?)?;
                    bytes += old.len;
                    moves.push(Move { key, old, new });
                }
            }
            if !moves.is_empty() {
                let moved = self.sync().map_err(E::from).and_then(|()| repoint(&moves));
                let moved = match moved {
                    Ok(moved) => moved,
                    Err(e) => {
                        moves.iter().for_each(|m| self.release(&m.new));
                        return Err(e);
                    }
                };
                for (m, moved) in moves.iter().zip(moved) {
                    self.release(if moved { &m.old } else { &m.new });
                    done.moved += u64::from(moved);
                }
            }
        }
        let empty = self.plan().empty;
        if empty.is_empty() {
            return Ok(done);
        }
        flush()?;
        for id in empty {
            let freed = self.remove_empty(id)?;
            if freed > 0 {
                done.removed += 1;
                done.freed += freed;
            }
        }
        Ok(done)
    }

    /// Files, bytes and live bytes over all segments.
    pub fn usage(&self) -> SegmentUsage {
        let state = self.lock();
        SegmentUsage {
            files: state.usage.len() as u64,
            bytes: state.usage.values().map(|u| u.size).sum(),
            live: state.usage.values().map(|u| u.live).sum(),
        }
    }
}
