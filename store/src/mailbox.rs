//! The mailbox store of a mailbox node: messages per mailbox, deduplicated by Message-ID and content.
//!
//! A delivery is a duplicate when the mailbox holds the same Message-ID *and* the same content, as a
//! digest of the headers and body without the trace headers hubs add (`Received`, `Return-Path`,
//! `Delivered-To`): a dumpster resubmission, or the same message re-sent through the other hub, is
//! dropped, while a different message that reuses a Message-ID (broken clients, list software,
//! forgers) is stored. A dedup key counts for `retention` after the record that made it, judged by
//! record times only, so the active node and a passive replaying the same log decide alike.
//!
//! It is only ever changed by applying transaction log records ([`MailboxStore::apply`]), on the
//! active node right after the log sync and on the passive node when replaying shipped logs. Each
//! apply is one sled transaction that also records the record's position, so the store always
//! equals the log replayed up to some position, and that position is the replay checkpoint. Applies
//! are not fsynced: after a crash sled recovers to an earlier consistent state and the node replays
//! the durable log from the checkpoint; applying a position twice is a no-op, so replay is safe to
//! repeat. Dedup by Message-ID and content is what lets the hubs' dumpster resubmissions after a
//! lossy failover bring back exactly the messages that were lost.
//!
//! Per storage group and hub it also keeps the hub's own time on the newest record from that hub
//! ([`stamp`]), maintained by the same applies, so a copy rebuilds it by replay: what a lossy mount
//! anchors that hub's resubmission window on.

pub mod snapshot;
pub mod stamp;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

pub use crate::db::Recovery;
use crate::db::Reopenable;
use crate::segments::{BodyAt, Compaction, SegmentError, SegmentUsage, Segments};
use crate::txlog::{LogPosition, LogRecord, Millis};
use stamp::HubStamp;
use tracing::warn;

/// The directory of the body segments inside the store's.
const SEGMENTS: &str = "segments";
/// Size of a node's body segments: a mailbox keeps its messages, so segments mostly fill and stay;
/// larger ones mean fewer files for a large store.
const SEGMENT_BYTES: u64 = 16 << 20;

/// How many applied records `discard_from` undoes per transaction (bounds its memory).
const DISCARD_CHUNK: usize = 512;
/// How many kept records `discard_from` looks back through for a hub's newest stamp before it
/// gives that hub no anchor (its whole dumpster is then asked for, which is safe).
const RESTAMP_SCAN: usize = 100_000;

/// One message in one mailbox, as `hubrelay mailbox` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The mailbox (lower-cased address).
    pub address: String,
    /// Message-ID; different messages that reuse one are each stored.
    pub message_id: String,
    /// Body size in bytes.
    pub size: u64,
    /// When the active node accepted the delivery (the log record's time).
    pub delivered_ms: Millis,
    /// The log record that delivered it.
    pub position: LogPosition,
}

/// Why a mailbox store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The sled database could not be opened.
    #[error("cannot open mailbox store at {}: {source}", path.display())]
    Open {
        /// Database directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: sled::Error,
    },
    /// sled failed (I/O, or damage it detected).
    #[error("mailbox store: {0}")]
    Sled(#[from] sled::Error),
    /// A body segment could not be read or written.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The store failed (a disk error) and has not been opened again yet: see
    /// [`MailboxStore::recover`].
    #[error("mailbox store {} is closed after a failure ({reason}); it is opened again once it can be written", path.display())]
    Closed {
        /// Database directory.
        path: PathBuf,
        /// The failure, or why opening it again failed.
        reason: String,
    },
    /// The store was opened again after a failure and may have lost applies it had not
    /// flushed: nothing more of `storage_group` is applied until its log has been replayed into
    /// it ([`MailboxStore::replay_done`]), or a gap would open behind the checkpoint for good.
    #[error("mailbox store was opened again after a failure; {storage_group} waits for its log to be replayed into it")]
    NotReplayed {
        /// The storage group.
        storage_group: String,
    },
    /// An entry that does not decode or points at nothing: the database is damaged.
    #[error("mailbox store holds a damaged {what}: {reason}")]
    Corrupt {
        /// Kind of entry.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A storage group name or address longer than a key can hold.
    #[error("{what} is too long for a key ({len} bytes, at most 65535)")]
    TooLong {
        /// "storage group" or "address".
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// The mailbox store, on its own sled database.
pub struct MailboxStore {
    db: Reopenable<Trees>,
    /// The message bodies, in segment files under the store's directory (shared with snapshot
    /// readers).
    bodies: Arc<Segments>,
    /// How long a dedup key counts after the record that made it (ms).
    retention: Millis,
    /// Per storage group, the handle count ([`Reopenable::get_counted`]) its log was last replayed
    /// into; [`MailboxStore::apply`] takes records only through a handle of that count (0: as
    /// opened at start, when the node replays before it serves).
    replayed: Mutex<HashMap<String, u64>>,
}

/// The database and its trees, as opened (again).
struct Trees {
    db: sled::Db,
    /// `address ++ seq` → [`Copy`]: each mailbox's messages in delivery order.
    messages: Tree,
    /// `address ++ message_id ++ 0 ++ digest` → seq ++ record time: the dedup index (a key counts
    /// for `retention` after its record time, and is swept after that).
    ids: Tree,
    /// `sg ++ generation ++ index` → [`Applied`]: every applied record in log order. The last key of
    /// an SG is its replay checkpoint; the keys from a generation on are what `discard_from` undoes.
    applied: Tree,
    /// Same key as `applied` → where its body is in the segments ([`BodyAt`]), stored once per
    /// record however many mailboxes share it.
    body_at: Tree,
    /// Same key as `applied` → body in pieces (`crate::pieces`), as earlier releases stored it:
    /// read and removed, never written.
    bodies: Tree,
    /// `sg ++ hub host` → [`Anchor`]: the hub's stamp on the newest applied record from it. One
    /// key per hub that ever delivered to the SG, so it does not grow with time.
    anchors: Tree,
}

impl Trees {
    fn new(db: sled::Db) -> Result<Trees, sled::Error> {
        Ok(Trees {
            messages: db.open_tree("messages")?,
            ids: db.open_tree("ids")?,
            applied: db.open_tree("applied")?,
            body_at: db.open_tree("body_at")?,
            bodies: db.open_tree("bodies")?,
            anchors: db.open_tree("anchors")?,
            db,
        })
    }
}

impl AsRef<sled::Db> for Trees {
    fn as_ref(&self) -> &sled::Db {
        &self.db
    }
}

/// The newest applied record of a storage group from one hub, with that hub's own stamp.
#[derive(Serialize, Deserialize)]
struct Anchor {
    /// The hub's receive time on it (the hub's clock).
    time_ms: Millis,
    /// The record.
    position: LogPosition,
}

/// A mailbox's copy of a message, with the storage group whose log delivered it (to find the body).
#[derive(Serialize, Deserialize)]
struct Copy {
    sg: String,
    message: StoredMessage,
}

/// What applying one record did, so that it can be undone without a scan.
#[derive(Serialize, Deserialize)]
struct Applied {
    position: LogPosition,
    message_id: String,
    time_ms: Millis,
    /// Sequence number of the copies this record added (one per record, from sled's id generator).
    seq: u64,
    /// Mailboxes that received a copy (the others already held this very message).
    added: Vec<String>,
    /// The content digest (hex) of the dedup keys it made.
    #[serde(default)]
    digest: String,
    /// The hub's stamp on it, to find a hub's previous anchor when newer records are discarded
    /// (absent in records applied by an earlier release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stamp: Option<HubStamp>,
}

/// What applying a record writes, worked out before its transaction.
struct Prepared {
    key: Vec<u8>,
    pos: LogPosition,
    seq: u64,
    digest: [u8; 32],
    stamp: Option<HubStamp>,
    anchor: Option<(Vec<u8>, Vec<u8>)>,
    entry: Vec<u8>,
    /// Per recipient: its dedup key, mailbox key and mailbox entry.
    copies: Vec<CopyKeys>,
}

/// How a record's transaction ended.
enum Committed {
    /// Applied (or found applied), adding this many copies.
    Added(usize),
    /// A copy is due but no body was staged: nothing was written.
    NeedsBody,
}

/// Headers a relay adds or rewrites on the way; they do not make a message a different one.
const TRACE_HEADERS: [&str; 3] = ["received", "return-path", "delivered-to"];

/// What a re-sent or resubmitted copy keeps of a message, hashed (SHA-256): every header but the
/// trace headers (name and raw value, in order) and the body. With the Message-ID it tells a copy
/// of a message from a different message reusing the ID. It depends on the message bytes alone,
/// so the active node and a passive replaying the log compute the same digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentDigest([u8; 32]);

impl ContentDigest {
    /// The digest of `message` (headers and body as delivered). A header block mailparse cannot
    /// split is hashed whole, trace headers included: such a message is only a duplicate of the
    /// very same bytes.
    pub fn of(message: &[u8]) -> ContentDigest {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match mailparse::parse_headers(message) {
            Ok((headers, body_at)) => {
                for header in headers.iter().filter(|hd| {
                    !TRACE_HEADERS.contains(&hd.get_key_ref().to_ascii_lowercase().as_str())
                }) {
                    h.update(header.get_key_ref().to_ascii_lowercase().as_bytes());
                    h.update(b":");
                    h.update(header.get_value_raw());
                    h.update(b"\n");
                }
                h.update(b"\0");
                h.update(message.get(body_at..).unwrap_or_default());
            }
            Err(_) => h.update(message),
        }
        ContentDigest(h.finalize().into())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl MailboxStore {
    /// Opens (creating) the store in its own sled database directory, keeping at most
    /// `cache_bytes` of it cached in memory; dedup keys count for `retention` ms after the record
    /// that made them.
    pub fn open(
        path: &Path,
        retention: Millis,
        cache_bytes: u64,
    ) -> Result<MailboxStore, MailboxError> {
        let db = Reopenable::open(path, cache_bytes, Trees::new).map_err(|source| {
            MailboxError::Open {
                path: path.to_owned(),
                source,
            }
        })?;
        let store = MailboxStore {
            db,
            bodies: Arc::new(Segments::open(&path.join(SEGMENTS), SEGMENT_BYTES)?),
            retention,
            replayed: Mutex::new(HashMap::new()),
        };
        store.recount_bodies()?;
        Ok(store)
    }

    /// Sets the live bytes of every segment from the body index (at open, after a reopen).
    fn recount_bodies(&self) -> Result<(), MailboxError> {
        let t = self.t()?;
        let mut live = Vec::new();
        for item in t.body_at.iter() {
            let (_, raw) = item?;
            live.push(body_pointer(&raw)?);
        }
        self.bodies.recount(live);
        Ok(())
    }

    /// One round of giving disk back ([`Segments::compact`]): after a storage group was cleared
    /// or discarded its bodies' segments go, and mostly unused ones are compacted.
    pub fn compact_bodies(&self) -> Result<Compaction, MailboxError> {
        let body_at = self.t()?.body_at.clone();
        self.bodies.compact(
            || {
                Ok(body_at.iter().map(|item| {
                    let (key, raw) = item?;
                    Ok((key, body_pointer(&raw)?))
                }))
            },
            |moves| {
                let mut moved = Vec::with_capacity(moves.len());
                for m in moves {
                    let swapped = body_at.compare_and_swap(
                        &m.key,
                        Some(&m.old.encode()[..]),
                        Some(&m.new.encode()[..]),
                    )?;
                    moved.push(swapped.is_ok());
                }
                Ok(moved)
            },
            || self.flush(),
        )
    }

    /// The body segments' files, size and live bytes.
    pub fn body_usage(&self) -> SegmentUsage {
        self.bodies.usage()
    }

    /// After a disk error: probes the store with a write and, if that fails, opens it again (sled
    /// fails every write after one I/O error until then). After [`Recovery::Reopened`] the store
    /// holds what was flushed before the failure: the caller replays its logs into it again.
    pub fn recover(&self) -> Result<Recovery, MailboxError> {
        let recovery = self.db.recover().map_err(|source| MailboxError::Open {
            path: self.db.path().to_owned(),
            source,
        })?;
        if recovery == Recovery::Reopened {
            self.recount_bodies()?;
        }
        Ok(recovery)
    }

    /// The open database and its trees, for the length of one operation.
    fn t(&self) -> Result<Arc<Trees>, MailboxError> {
        self.db.get().map_err(|reason| self.closed(reason))
    }

    /// True if `address` (lower-cased by the caller) holds this very message (same Message-ID and
    /// content digest) from a record no older than the retention at `now`.
    pub fn contains(
        &self,
        address: &str,
        message_id: &str,
        digest: &ContentDigest,
        now: Millis,
    ) -> Result<bool, MailboxError> {
        let t = self.t()?;
        let key = id_key(&address_key(address)?, message_id, &digest.0);
        Ok(t.ids.get(key)?.is_some_and(|v| self.counts(&v, now)))
    }

    /// Whether a dedup entry still counts against a record made at `time`.
    fn counts(&self, entry: &[u8], time: Millis) -> bool {
        let made = entry
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        made.saturating_add(self.retention) > time
    }

    /// Removes dedup keys that no record can match any more: a key of a mailbox of storage group
    /// `sg` goes once it no longer counts at the time of `sg`'s newest applied record less `margin`
    /// (for clock skew between nodes), since records after it are not older than that. Each SG is
    /// judged by its own checkpoint (a mailbox is in one SG, and only its SG's records consult its
    /// keys), so a quiet SG does not hold back the others'; an SG with nothing applied has no keys.
    /// Returns how many went.
    pub fn sweep_dedup(&self, sgs: &[String], margin: Millis) -> Result<usize, MailboxError> {
        let t = self.t()?;
        let mut cutoffs = HashMap::new();
        for sg in sgs {
            if let Some((_, t)) = self.checkpoint(sg)? {
                cutoffs.insert(sg.as_str(), t.saturating_sub(margin));
            }
        }
        let Some(&latest) = cutoffs.values().max() else {
            return Ok(0);
        };
        let mut removed = 0;
        for item in t.ids.iter() {
            let (key, value) = item?;
            if self.counts(&value, latest) {
                continue;
            }
            // The SG of the copy that made the key; a key whose SG is unknown here stays.
            let Some(cutoff) = self
                .sg_of_key(&key, &value)?
                .and_then(|sg| cutoffs.get(sg.as_str()).copied())
            else {
                continue;
            };
            // Only if unchanged meanwhile (an apply may have renewed it).
            if !self.counts(&value, cutoff)
                && t.ids
                    .compare_and_swap(&key, Some(value), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The storage group of the copy a dedup entry points at (`None` if the copy is gone).
    fn sg_of_key(&self, key: &[u8], entry: &[u8]) -> Result<Option<String>, MailboxError> {
        let t = self.t()?;
        let damaged = || MailboxError::Corrupt {
            what: "dedup key",
            reason: format!("{} bytes, too short for its address and entry", key.len()),
        };
        let len = key
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(damaged)?;
        let mut message = key.get(..2 + len).ok_or_else(damaged)?.to_vec();
        message.extend_from_slice(entry.get(..8).ok_or_else(damaged)?);
        match t.messages.get(message)? {
            Some(copy) => Ok(Some(decode::<Copy>(&copy, "mailbox entry")?.sg)),
            None => Ok(None),
        }
    }

    /// Applies the record at `pos` of storage group `sg`'s log: every recipient not holding this
    /// message (Message-ID and content digest, within the retention) gets a copy (the body is stored once for all of them), and `pos` becomes the
    /// checkpoint, in one transaction. Returns how many copies were added (0: all duplicates, or the
    /// position was applied before).
    ///
    /// After the store was opened again it refuses ([`MailboxError::NotReplayed`]) until the
    /// storage group's log has been replayed with [`MailboxStore::reapply`]: a record applied
    /// first would move the checkpoint past the applies the failure lost.
    pub fn apply(
        &self,
        sg: &str,
        pos: LogPosition,
        rec: &LogRecord,
    ) -> Result<usize, MailboxError> {
        Ok(self.apply_batch(sg, &[(pos, rec)])?[0])
    }

    /// [`MailboxStore::apply`] for records in log order, with one sync of their bodies before the
    /// first transaction points at one. Returns the copies each record added.
    pub fn apply_batch(
        &self,
        sg: &str,
        records: &[(LogPosition, &LogRecord)],
    ) -> Result<Vec<usize>, MailboxError> {
        let (count, t) = self.db.get_counted();
        let t = t.map_err(|reason| self.closed(reason))?;
        let replayed = self.replayed_count(sg);
        if count != replayed {
            return Err(MailboxError::NotReplayed {
                storage_group: sg.to_string(),
            });
        }
        self.apply_all(&t, sg, records)
    }

    /// [`MailboxStore::apply_batch`] for a replay of the log from the checkpoint on, which is
    /// what makes the store whole again after it was opened again.
    pub fn reapply_batch(
        &self,
        sg: &str,
        records: &[(LogPosition, &LogRecord)],
    ) -> Result<Vec<usize>, MailboxError> {
        let t = self.t()?;
        self.apply_all(&t, sg, records)
    }

    /// Where a replay starts from: call before reading the checkpoint, and hand the value to
    /// [`MailboxStore::replay_done`] once everything after it is reapplied.
    pub fn replay_from(&self) -> u64 {
        self.db.count()
    }

    /// The log of `sg` is replayed into the store as it was at `from` ([`MailboxStore::replay_from`]):
    /// [`MailboxStore::apply`] takes its records again, unless the store was opened again since.
    pub fn replay_done(&self, sg: &str, from: u64) {
        let mut replayed = self.replayed.lock().unwrap_or_else(PoisonError::into_inner);
        let r = replayed.entry(sg.to_string()).or_insert(0);
        *r = (*r).max(from);
    }

    fn replayed_count(&self, sg: &str) -> u64 {
        let replayed = self.replayed.lock().unwrap_or_else(PoisonError::into_inner);
        replayed.get(sg).copied().unwrap_or(0)
    }

    fn closed(&self, reason: String) -> MailboxError {
        MailboxError::Closed {
            path: self.db.path().to_owned(),
            reason,
        }
    }

    /// Applies `records`: the bodies of those that may add a copy are appended and synced first,
    /// then each record is one transaction.
    fn apply_all(
        &self,
        t: &Trees,
        sg: &str,
        records: &[(LogPosition, &LogRecord)],
    ) -> Result<Vec<usize>, MailboxError> {
        let mut prepared = Vec::with_capacity(records.len());
        for &(pos, rec) in records {
            prepared.push(self.prepare(t, sg, pos, rec)?);
        }
        let mut ats = Vec::with_capacity(records.len());
        let staged = prepared.iter().zip(records).try_for_each(|(p, (_, rec))| {
            let needed = p.as_ref().is_some_and(|p| self.may_add(t, p, rec.time_ms));
            ats.push(if needed {
                Some(self.bodies.append(&rec.body)?)
            } else {
                None
            });
            Ok::<_, MailboxError>(())
        });
        let synced = staged.and_then(|()| {
            if ats.iter().any(Option::is_some) {
                self.bodies.sync()?;
            }
            Ok(())
        });
        if let Err(e) = synced {
            ats.iter().flatten().for_each(|at| self.bodies.release(at));
            return Err(e);
        }
        let mut added = Vec::with_capacity(records.len());
        let mut pending = prepared.into_iter().zip(ats).zip(records);
        for ((p, at), (_, rec)) in pending.by_ref() {
            let result = match p {
                Some(p) => self.commit(t, sg, &p, rec, at),
                None => Ok(0),
            };
            match result {
                Ok(n) => added.push(n),
                Err(e) => {
                    // Bodies staged for the records not applied are nobody's.
                    for ((_, at), _) in pending {
                        at.iter().for_each(|at| self.bodies.release(at));
                    }
                    return Err(e);
                }
            }
        }
        Ok(added)
    }

    /// Whether applying `p` would give some recipient a copy, so its body must be stored (read
    /// outside the transaction; [`MailboxStore::commit`] stores it anyway if that changed).
    fn may_add(&self, t: &Trees, p: &Prepared, time_ms: Millis) -> bool {
        p.copies.iter().any(|(id, _, _)| {
            !t.ids
                .get(id)
                .ok()
                .flatten()
                .is_some_and(|v| self.counts(&v, time_ms))
        })
    }

    /// Everything applying `rec` writes that does not depend on what the store holds; `None` if
    /// its position is applied already.
    fn prepare(
        &self,
        t: &Trees,
        sg: &str,
        pos: LogPosition,
        rec: &LogRecord,
    ) -> Result<Option<Prepared>, MailboxError> {
        let key = record_key(&sg_key(sg)?, pos);
        if t.applied.contains_key(&key)? {
            return Ok(None);
        }
        let seq = t.db.generate_id()?;
        let size = rec.body.len() as u64;
        let digest = ContentDigest::of(&rec.body).0;
        let stamp = stamp::hub_stamp(&rec.body);
        let anchor = match &stamp {
            Some(s) => Some((
                anchor_key(sg, &s.host)?,
                encode(&Anchor {
                    time_ms: s.time_ms,
                    position: pos,
                }),
            )),
            None => None,
        };
        let mut entry = seq.to_be_bytes().to_vec();
        entry.extend_from_slice(&rec.time_ms.to_be_bytes());
        let template = StoredMessage {
            address: String::new(),
            message_id: rec.message_id.clone(),
            size,
            delivered_ms: rec.time_ms,
            position: pos,
        };
        let copies = copy_keys(sg, &rec.recipients, &template, &digest, seq)?;
        Ok(Some(Prepared {
            key,
            pos,
            seq,
            digest,
            stamp,
            anchor,
            entry,
            copies,
        }))
    }

    /// The transaction of one record, its body (if any copy needs it) at `at`. A body the
    /// record turns out not to need is released; one it needs but was not staged is appended and
    /// synced here.
    fn commit(
        &self,
        t: &Trees,
        sg: &str,
        p: &Prepared,
        rec: &LogRecord,
        at: Option<BodyAt>,
    ) -> Result<usize, MailboxError> {
        let mut at = at;
        loop {
            let committed = self.transact_record(t, p, rec, at).inspect_err(|_| {
                at.iter().for_each(|at| self.bodies.release(at));
            })?;
            match committed {
                Committed::Added(n) => {
                    if n == 0 {
                        at.iter().for_each(|at| self.bodies.release(at));
                    }
                    return Ok(n);
                }
                Committed::NeedsBody => {
                    warn!(storage_group = sg, message_id = %rec.message_id, "a copy became due between the dedup check and its transaction; storing its body now");
                    let staged = self.bodies.append(&rec.body)?;
                    self.bodies.sync()?;
                    at = Some(staged);
                }
            }
        }
    }

    fn transact_record(
        &self,
        t: &Trees,
        p: &Prepared,
        rec: &LogRecord,
        at: Option<BodyAt>,
    ) -> Result<Committed, MailboxError> {
        /// Why a record's transaction stopped without writing anything.
        struct NeedsBody;
        let trees = (&t.messages, &t.ids, &t.applied, &t.body_at, &t.anchors);
        let result = trees.transaction(|(messages, ids, applied, body_at, anchors)| {
            if applied.get(&p.key)?.is_some() {
                return Ok(Committed::Added(0));
            }
            let mut added = Vec::new();
            for (address, (id, message, copy)) in rec.recipients.iter().zip(&p.copies) {
                // Sees this transaction's own inserts, so a recipient listed twice gets one copy.
                if ids.get(id)?.is_some_and(|v| self.counts(&v, rec.time_ms)) {
                    continue;
                }
                ids.insert(id.as_slice(), p.entry.as_slice())?;
                messages.insert(message.as_slice(), copy.as_slice())?;
                added.push(address.clone());
            }
            if !added.is_empty() {
                match at {
                    Some(at) => body_at.insert(p.key.as_slice(), &at.encode())?,
                    None => return Err(ConflictableTransactionError::Abort(NeedsBody)),
                };
            }
            let count = added.len();
            let record = Applied {
                position: p.pos,
                message_id: rec.message_id.clone(),
                time_ms: rec.time_ms,
                seq: p.seq,
                added,
                digest: hex(&p.digest),
                stamp: p.stamp.clone(),
            };
            applied.insert(p.key.as_slice(), encode(&record))?;
            // Records apply in log order, so the last one from a hub is its newest.
            if let Some((k, v)) = &p.anchor {
                anchors.insert(k.as_slice(), v.as_slice())?;
            }
            Ok::<_, ConflictableTransactionError<NeedsBody>>(Committed::Added(count))
        });
        match result {
            Ok(done) => Ok(done),
            Err(TransactionError::Abort(NeedsBody)) => Ok(Committed::NeedsBody),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// The mailbox's messages in delivery order.
    pub fn list(&self, address: &str) -> Result<Vec<StoredMessage>, MailboxError> {
        let t = self.t()?;
        t.messages
            .scan_prefix(address_key(address)?)
            .map(|item| {
                let (_, value) = item?;
                Ok(decode::<Copy>(&value, "mailbox entry")?.message)
            })
            .collect()
    }

    /// The body of `message_id` in `address`, if the mailbox holds it. A mailbox may hold several
    /// different messages that reuse one Message-ID: this is the first delivered of them. It scans
    /// the mailbox in delivery order rather than the dedup index, whose keys expire and are swept
    /// while the copies stay.
    pub fn body(&self, address: &str, message_id: &str) -> Result<Option<Vec<u8>>, MailboxError> {
        let t = self.t()?;
        let mut first = None;
        for item in t.messages.scan_prefix(address_key(address)?) {
            let (_, value) = item?;
            let copy: Copy = decode(&value, "mailbox entry")?;
            if copy.message.message_id == message_id {
                first = Some(copy);
                break;
            }
        }
        let Some(copy) = first else {
            return Ok(None);
        };
        let key = record_key(&sg_key(&copy.sg)?, copy.message.position);
        let body = read_body(&t, &self.bodies, &key)?.ok_or_else(|| MailboxError::Corrupt {
            what: "body",
            reason: format!("{message_id} in {address} has no body"),
        })?;
        Ok(Some(body))
    }

    /// The last applied position of `sg` (LastLogReplayed is its generation) and the time of that
    /// record on the clock of the node that wrote it (shown, and the dedup sweep's cutoff; a lossy
    /// failover's windows use [`MailboxStore::hub_anchors`] instead). `None` before any apply.
    pub fn checkpoint(&self, sg: &str) -> Result<Option<(LogPosition, Millis)>, MailboxError> {
        let t = self.t()?;
        let Some(item) = t.applied.scan_prefix(sg_key(sg)?).next_back() else {
            return Ok(None);
        };
        let (_, value) = item?;
        let applied: Applied = decode(&value, "applied record")?;
        Ok(Some((applied.position, applied.time_ms)))
    }

    /// Per hub host (lower-cased, as its `Received:` header names it), the hub's own stamp on the
    /// newest record of `sg` applied from it: a time on that hub's clock before which it delivered
    /// nothing this store is missing. A hub with no stamped record here is absent.
    pub fn hub_anchors(&self, sg: &str) -> Result<BTreeMap<String, Millis>, MailboxError> {
        let t = self.t()?;
        let prefix = sg_key(sg)?;
        t.anchors
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item?;
                let host = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                Ok((host, decode::<Anchor>(&value, "hub anchor")?.time_ms))
            })
            .collect()
    }

    /// After records of `sg` from `generation` on were discarded: every hub anchor on a discarded
    /// record moves back to the hub's newest kept stamped record (looking back at most
    /// [`RESTAMP_SCAN`] records), or goes, and the hub's whole dumpster is asked for instead.
    fn restamp_from(&self, sg: &str, generation: u64) -> Result<(), MailboxError> {
        let t = self.t()?;
        let prefix = sg_key(sg)?;
        let mut lost = Vec::new();
        for item in t.anchors.scan_prefix(&prefix) {
            let (key, value) = item?;
            if decode::<Anchor>(&value, "hub anchor")?.position.generation >= generation {
                let host = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                lost.push((key, host));
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        let mut found: HashMap<String, Anchor> = HashMap::new();
        for item in t.applied.scan_prefix(&prefix).rev().take(RESTAMP_SCAN) {
            let (_, value) = item?;
            let applied: Applied = decode(&value, "applied record")?;
            if let Some(s) = applied.stamp {
                if lost.iter().any(|(_, host)| *host == s.host) && !found.contains_key(&s.host) {
                    let anchor = Anchor {
                        time_ms: s.time_ms,
                        position: applied.position,
                    };
                    found.insert(s.host, anchor);
                    if found.len() == lost.len() {
                        break;
                    }
                }
            }
        }
        for (key, host) in lost {
            match found.get(&host) {
                Some(anchor) => t.anchors.insert(key, encode(anchor))?,
                None => t.anchors.remove(key)?,
            };
        }
        Ok(())
    }

    /// Undoes everything `sg` applied from `generation` on (logs that diverged from the new active)
    /// and so moves the checkpoint back to the last record before it. Walks the applied index
    /// backwards in chunks, one transaction each, so a crash part-way still leaves the store equal to
    /// a log prefix. Returns how many mailbox copies were removed.
    pub fn discard_from(&self, sg: &str, generation: u64) -> Result<u64, MailboxError> {
        let t = self.t()?;
        let prefix = sg_key(sg)?;
        let first = record_key(
            &prefix,
            LogPosition {
                generation,
                index: 0,
            },
        );
        let mut last = record_key(
            &prefix,
            LogPosition {
                generation: u64::MAX,
                index: u32::MAX,
            },
        );
        let mut removed = 0u64;
        loop {
            let mut chunk = Vec::new();
            for item in t
                .applied
                .range(first.clone()..=last.clone())
                .rev()
                .take(DISCARD_CHUNK)
            {
                let (key, value) = item?;
                let applied: Applied = decode(&value, "applied record")?;
                let digest = unhex(&applied.digest).ok_or_else(|| MailboxError::Corrupt {
                    what: "applied record",
                    reason: format!("bad digest {:?}", applied.digest),
                })?;
                let mut copies = Vec::with_capacity(applied.added.len());
                for address in &applied.added {
                    let addr = address_key(address)?;
                    copies.push((
                        id_key(&addr, &applied.message_id, &digest),
                        message_key(&addr, applied.seq),
                    ));
                }
                chunk.push((key, applied.seq.to_be_bytes(), copies));
            }
            let Some((lowest, _, _)) = chunk.last() else {
                self.restamp_from(sg, generation)?;
                return Ok(removed);
            };
            last = lowest.to_vec();
            let released = RefCell::new(Vec::new());
            let trees = (&t.messages, &t.ids, &t.applied, &t.bodies, &t.body_at);
            trees
                .transaction(|(messages, ids, applied, bodies, body_at)| {
                    // sled may run this again after a conflict: only the last run counts.
                    released.borrow_mut().clear();
                    for (key, seq, copies) in &chunk {
                        for (id, message) in copies {
                            messages.remove(message.as_slice())?;
                            // Only the dedup entry this record created (a later record may
                            // have renewed an expired one).
                            if ids.get(id)?.and_then(|v| v.get(..8).map(<[u8]>::to_vec))
                                == Some(seq.to_vec())
                            {
                                ids.remove(id.as_slice())?;
                            }
                        }
                        crate::pieces::remove(bodies, key)?;
                        if let Some(raw) = body_at.remove(key)? {
                            released.borrow_mut().push(raw);
                        }
                        applied.remove(key)?;
                    }
                    Ok::<_, ConflictableTransactionError<MailboxError>>(())
                })
                .map_err(from_tx)?;
            for raw in released.into_inner() {
                self.bodies.release(&body_pointer(&raw)?);
            }
            removed += chunk
                .iter()
                .map(|(_, _, copies)| copies.len() as u64)
                .sum::<u64>();
            if chunk.len() < DISCARD_CHUNK {
                self.restamp_from(sg, generation)?;
                return Ok(removed);
            }
        }
    }

    /// Drops all data of `sg` (before a full reseed of its copy).
    pub fn clear(&self, sg: &str) -> Result<(), MailboxError> {
        self.discard_from(sg, 0).map(|_| ())
    }

    /// Makes every apply so far durable (applies are not fsynced one by one; the log is).
    pub fn flush(&self) -> Result<(), MailboxError> {
        let t = self.t()?;
        self.bodies.sync()?;
        t.db.flush()?;
        Ok(())
    }
}

/// What storing one mailbox's copy writes: its dedup key, its mailbox key and its mailbox entry.
type CopyKeys = (Vec<u8>, Vec<u8>, Vec<u8>);

/// For each of `addresses`, the dedup key, the mailbox key and the mailbox entry of its copy of the
/// message `template` describes (its address left out), under sequence number `seq`.
fn copy_keys(
    sg: &str,
    addresses: &[String],
    template: &StoredMessage,
    digest: &[u8],
    seq: u64,
) -> Result<Vec<CopyKeys>, MailboxError> {
    addresses
        .iter()
        .map(|address| {
            let addr = address_key(address)?;
            let copy = encode(&Copy {
                sg: sg.to_owned(),
                message: StoredMessage {
                    address: address.clone(),
                    ..template.clone()
                },
            });
            Ok((
                id_key(&addr, &template.message_id, digest),
                message_key(&addr, seq),
                copy,
            ))
        })
        .collect()
}

/// `len u16 ++ name`: the length prefix keeps one name's keys from being a prefix of another's.
fn name_key(name: &str, what: &'static str) -> Result<Vec<u8>, MailboxError> {
    let len = u16::try_from(name.len()).map_err(|_| MailboxError::TooLong {
        what,
        len: name.len(),
    })?;
    let mut key = Vec::with_capacity(2 + name.len() + 12);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    Ok(key)
}

fn sg_key(sg: &str) -> Result<Vec<u8>, MailboxError> {
    name_key(sg, "storage group")
}

fn address_key(address: &str) -> Result<Vec<u8>, MailboxError> {
    name_key(address, "address")
}

/// `sg ++ host`: the SG's length prefix keeps one SG's anchors apart from another's.
fn anchor_key(sg: &str, host: &str) -> Result<Vec<u8>, MailboxError> {
    let mut key = sg_key(sg)?;
    key.extend_from_slice(host.as_bytes());
    Ok(key)
}

/// `sg ++ generation BE ++ index BE`, so an SG's records sort in log order.
/// A pointer as the body index stores it.
fn body_pointer(raw: &[u8]) -> Result<BodyAt, MailboxError> {
    BodyAt::decode(raw).ok_or_else(|| MailboxError::Corrupt {
        what: "body pointer",
        reason: format!("{} bytes, not {}", raw.len(), BodyAt::ENCODED),
    })
}

/// The body of the record under `key`, wherever it is stored; `None` if it has none.
fn read_body(t: &Trees, segments: &Segments, key: &[u8]) -> Result<Option<Vec<u8>>, MailboxError> {
    let in_segment = segments.read_current(|| match t.body_at.get(key)? {
        Some(raw) => Ok::<_, MailboxError>(Some(body_pointer(&raw)?)),
        None => Ok(None),
    })?;
    match in_segment {
        Some(body) => Ok(Some(body)),
        // Stored by an earlier release, or no body at all.
        None => Ok(crate::pieces::read(&t.bodies, key)?),
    }
}

fn record_key(sg: &[u8], pos: LogPosition) -> Vec<u8> {
    let mut key = sg.to_vec();
    key.extend_from_slice(&pos.generation.to_be_bytes());
    key.extend_from_slice(&pos.index.to_be_bytes());
    key
}

fn message_key(address: &[u8], seq: u64) -> Vec<u8> {
    let mut key = address.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `address ++ message_id ++ 0 ++ digest`: a Message-ID holds no NUL, so the IDs of one mailbox
/// never prefix each other's keys.
fn id_key(address: &[u8], message_id: &str, digest: &[u8]) -> Vec<u8> {
    let mut key = address.to_vec();
    key.extend_from_slice(message_id.as_bytes());
    key.push(0);
    key.extend_from_slice(digest);
    key
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("structs of strings and integers always serialize to JSON")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, MailboxError> {
    serde_json::from_slice(bytes).map_err(|e| MailboxError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

fn from_tx(e: TransactionError<MailboxError>) -> MailboxError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => MailboxError::Sled(e),
    }
}
