//! The hub's persistent state on sled: the delivery queue, message bodies, the transport dumpster
//! and resubmission requests.
//!
//! Everything that must stay consistent (a message and its body, dumpster entries and their
//! statistics, blob reference counts) changes in one sled transaction, so a crash or restart can
//! never show half an operation. sled transactions cannot scan, so operations that must find
//! entries by order (eviction, expiry, resubmission) plan with range scans first and then commit
//! the plan in a transaction; a mutex over those planners keeps the plan valid until it commits.

mod bodies;
mod dumpster;
mod hold;
mod keys;
mod queue;
mod resubmit;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

pub use crate::db::Recovery;
use crate::db::Reopenable;
use crate::segments::{SegmentError, SegmentUsage, Segments};

/// Milliseconds since the Unix epoch; callers pass the time so the store is deterministic.
pub type Millis = u64;

/// Per-recipient delivery state kept with a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptStatus {
    /// Not tried yet.
    Pending,
    /// Accepted by the recipient's mailbox server.
    Delivered {
        /// When it was accepted.
        at_ms: Millis,
    },
    /// Permanently rejected (or expired); the sender gets a DSN.
    Failed {
        /// SMTP reply code.
        code: u16,
        /// Reply text or local reason.
        reason: String,
        /// When it failed.
        at_ms: Millis,
    },
    /// Temporarily failed; will be retried.
    Deferred {
        /// Why the last attempt did not succeed.
        reason: String,
    },
}

impl RcptStatus {
    /// True while the recipient still needs a delivery attempt (Pending or Deferred), which is
    /// what keeps a message in the queue.
    pub fn is_open(&self) -> bool {
        matches!(self, RcptStatus::Pending | RcptStatus::Deferred { .. })
    }
}

/// One recipient of a queued message, with the routing facts delivery needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The mailbox address.
    pub address: String,
    /// The clustered mailbox server hosting the mailbox.
    pub cms: String,
    /// The storage group holding the mailbox: the dumpster's unit of accounting.
    pub storage_group: String,
    /// Delivery state.
    pub status: RcptStatus,
    /// What the sender asked to be told about this recipient (RFC 3461); absent in queues
    /// written before DSN support, which then get the default (failures only).
    #[serde(default)]
    pub dsn: RcptDsn,
}

/// RFC 3461 RET: what a failure DSN returns of the original message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header only.
    Hdrs,
}

/// RFC 3461 NOTIFY of one recipient. NEVER is all three false, which is different from no
/// NOTIFY at all (`None` in [`RcptDsn::notify`]: failures only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// SUCCESS: report delivery.
    pub success: bool,
    /// FAILURE: report a permanent failure or expiry.
    pub failure: bool,
    /// DELAY: report a delay (accepted; the hub sends no delay reports).
    pub delay: bool,
}

/// The per-message DSN request of MAIL FROM (RFC 3461 §4.3, §4.4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDsn {
    /// RET, if given.
    pub ret: Option<Ret>,
    /// ENVID, decoded from xtext: echoed as Original-Envelope-Id so the sender can match the report.
    pub envid: Option<String>,
}

/// The per-recipient DSN request of RCPT TO (RFC 3461 §4.1, §4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptDsn {
    /// NOTIFY, if given.
    pub notify: Option<Notify>,
    /// ORCPT as `addr-type;address`, the address decoded from xtext: echoed as Original-Recipient.
    pub orcpt: Option<String>,
}

/// A message in the hub's delivery queue. The body lives in a shared, reference-counted blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Queue id (assigned by the store).
    pub id: u64,
    /// Body blob id (assigned by the store).
    pub blob: u64,
    /// RFC 5322 Message-ID, with the angle brackets.
    pub message_id: String,
    /// Reverse path ("" = null sender).
    pub sender: String,
    /// Hub receive time, kept through resubmission: it is the dumpster's "oldest".
    pub received_ms: Millis,
    /// When undelivered recipients fail.
    pub expires_ms: Millis,
    /// Body bytes.
    pub size: u64,
    /// Recipients with their delivery state.
    pub recipients: Vec<Recipient>,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (the due index is keyed on it).
    pub next_attempt_ms: Millis,
    /// Id of the resubmission request that queued this copy.
    pub resubmission: Option<String>,
    /// RET and ENVID of the original submission; absent in queues written before DSN support.
    #[serde(default)]
    pub dsn: MessageDsn,
    /// When an administrator put the message on hold. A held message is out of the due index and
    /// is neither attempted nor expired until it is released; absent in queues written before
    /// holds, which are then not held.
    #[serde(default)]
    pub held_since_ms: Option<Millis>,
}

impl QueuedMessage {
    /// True when no recipient needs another attempt, so the message leaves the queue.
    pub fn is_finished(&self) -> bool {
        !self.recipients.iter().any(|r| r.status.is_open())
    }

    /// True while an administrator holds the message back from delivery and expiry.
    pub fn is_held(&self) -> bool {
        self.held_since_ms.is_some()
    }
}

/// What the caller gives to enqueue; the store assigns id and blob.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// RFC 5322 Message-ID, with the angle brackets.
    pub message_id: String,
    /// Reverse path ("" = null sender).
    pub sender: String,
    /// Hub receive time.
    pub received_ms: Millis,
    /// When undelivered recipients fail.
    pub expires_ms: Millis,
    /// Recipients, normally all Pending.
    pub recipients: Vec<Recipient>,
    /// RET and ENVID given at MAIL FROM.
    pub dsn: MessageDsn,
}

/// Dumpster bounds for one hub (per storage group): MaxDumpsterSizePerStorageGroup and
/// MaxDumpsterTime.
#[derive(Debug, Clone, Copy)]
pub struct DumpsterLimits {
    /// Total body bytes one SG's dumpster may hold.
    pub max_bytes_per_sg: u64,
    /// How long after delivery an entry is kept.
    pub max_age_ms: Millis,
}

impl DumpsterLimits {
    /// Entries delivered before this instant are expired at `now_ms`.
    fn cutoff(&self, now_ms: Millis) -> Millis {
        now_ms.saturating_sub(self.max_age_ms)
    }
}

/// One dumpster entry: one message delivered for one storage group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpsterEntry {
    /// The storage group the recipients belong to.
    pub storage_group: String,
    /// RFC 5322 Message-ID: the mailbox drops resubmitted duplicates by it.
    pub message_id: String,
    /// Reverse path.
    pub sender: String,
    /// The recipients of this SG just delivered; a resubmission goes to them only.
    pub recipients: Vec<String>,
    /// The CMS hosting the SG.
    pub cms: String,
    /// Hub receive time (reported as the dumpster's "oldest").
    pub received_ms: Millis,
    /// Delivery time: the order of eviction, expiry and resubmission windows.
    pub delivered_ms: Millis,
    /// Body bytes, counted against MaxDumpsterSizePerStorageGroup.
    pub size: u64,
    /// Body blob, shared with the queue and other SGs' entries.
    pub blob: u64,
}

/// Incrementally maintained statistics of one SG's dumpster on this hub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpsterStats {
    /// Entries held.
    pub items: u64,
    /// Body bytes held.
    pub bytes: u64,
    /// Hub receive time of the oldest-received entry held (DumpsterStatistics "oldest").
    pub oldest_received_ms: Option<Millis>,
    /// Delivery time of the oldest-delivered entry held (the next to be evicted).
    pub oldest_delivered_ms: Option<Millis>,
    /// Entries removed to respect the size bound, since the store was created.
    pub evicted: u64,
    /// Entries removed for age, since the store was created.
    pub expired: u64,
    /// Deliveries not kept because one message alone exceeded the size bound.
    pub too_large: u64,
}

/// Where a resubmission request stopped: the dumpster entry it queued last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResubmitCursor {
    /// Delivery time of the last entry queued.
    pub delivered_ms: Millis,
    /// Its sequence number, which orders entries delivered in the same millisecond.
    pub seq: u64,
}

/// Which dumpster entries of a window a request redelivers: the filters of Exchange 2013's
/// `Add-ResubmitRequest`. The default takes every entry, as a mailbox server's request after a
/// lossy failover must.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResubmitFilter {
    /// Only entries delivered to this recipient (case-insensitive), redelivered to it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Only entries from this reverse path (case-insensitive; `""` is the null sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Only entries with this Message-ID (angle brackets optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Count the matching entries and queue nothing.
    #[serde(default)]
    pub test_only: bool,
}

impl ResubmitFilter {
    /// The recipients of `entry` this filter redelivers to; empty when the entry does not match.
    pub fn recipients(&self, entry: &DumpsterEntry) -> Vec<String> {
        let sender_ok = self
            .sender
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(&entry.sender));
        let id_ok = self
            .message_id
            .as_deref()
            .is_none_or(|id| bracketed(id) == bracketed(&entry.message_id));
        if !(sender_ok && id_ok) {
            return Vec::new();
        }
        entry
            .recipients
            .iter()
            .filter(|r| {
                self.recipient
                    .as_deref()
                    .is_none_or(|want| want.eq_ignore_ascii_case(r))
            })
            .cloned()
            .collect()
    }
}

/// A Message-ID with its angle brackets, however it was written.
fn bracketed(id: &str) -> String {
    format!(
        "<{}>",
        id.trim().trim_start_matches('<').trim_end_matches('>')
    )
}

/// A persisted resubmission request and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResubmitRequest {
    /// Caller-chosen id; the same id twice is the same request (idempotency).
    pub id: String,
    /// Storage group to redeliver.
    pub storage_group: String,
    /// Window start (delivery time, inclusive).
    pub low_ms: Millis,
    /// Window end (delivery time, inclusive).
    pub high_ms: Millis,
    /// When the request was first received.
    pub created_ms: Millis,
    /// Which entries of the window, and whether to queue them or only count them.
    #[serde(default)]
    pub filter: ResubmitFilter,
    /// True once every window entry has been queued (or counted).
    pub done: bool,
    /// How many entries have been queued (or, test-only, counted) so far.
    pub messages: u64,
    /// Resume point: entries up to and including it are already queued.
    pub cursor: Option<ResubmitCursor>,
}

/// Errors of the hub store; each says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum HubStoreError {
    /// Another process (or another handle in this one) has the store open.
    #[error("hub store {path} is locked by another process: {source}")]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// sled's report.
        source: sled::Error,
    },
    /// sled failed (I/O, disk full, corruption sled itself detected).
    #[error("hub store: {0}")]
    Sled(#[from] sled::Error),
    /// The store failed (a disk error) and has not been opened again yet: see
    /// [`HubStore::recover`].
    #[error("hub store {path} is closed after a failure ({reason}); it is opened again once it can be written")]
    Closed {
        /// The store directory.
        path: PathBuf,
        /// The failure, or why opening it again failed.
        reason: String,
    },
    /// A body segment could not be read or written.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A stored key or value could not be decoded.
    #[error("corrupt record in tree `{tree}` at key \"{key}\": {reason}")]
    Corrupt {
        /// Tree name.
        tree: &'static str,
        /// The key, printable ASCII as is, other bytes escaped.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
    /// A dumpster entry or message references a blob the store does not hold.
    #[error("unknown blob {0}")]
    UnknownBlob(u64),
    /// `record_attempt` or an administrator's action for a message that is not (or no longer)
    /// queued.
    #[error("message {0:x} is not in the queue")]
    UnknownMessage(u64),
    /// `hold` of a message already held: nothing changed, and its hold time stays.
    #[error("message {0:x} is already held")]
    AlreadyHeld(u64),
    /// `release` of a message that is not held.
    #[error("message {0:x} is not held")]
    NotHeld(u64),
    /// `retry_now` of a held message: it must be released first.
    #[error("message {0:x} is held; release it to deliver it")]
    Held(u64),
    /// `record_attempt` with a message whose blob differs from the queued one.
    #[error("message {id} names blob {given} but the queue holds blob {stored}")]
    BlobMismatch {
        /// Queue id.
        id: u64,
        /// The blob in the caller's message.
        given: u64,
        /// The blob in the queue.
        stored: u64,
    },
    /// `resubmit_step` for a request that `resubmit_begin` never created.
    #[error("unknown resubmission request `{0}`")]
    UnknownRequest(String),
}

/// The directory of the body segments inside the store's.
const SEGMENTS: &str = "segments";

/// Size of a hub's body segments. Small, because a segment is given back only once all of it is
/// delivered and out of the dumpster, and the dumpster's bound may be a few MB per storage group:
/// the disk a hub takes stays within its bounds plus about one segment per storage group.
const SEGMENT_BYTES: u64 = 4 << 20;

/// The hub's store: one sled database with a tree per kind of record.
pub struct HubStore {
    db: Reopenable<Open>,
    /// The message bodies, in segment files under the store's directory.
    bodies: Segments,
    /// Held by every operation that plans dumpster or blob-refcount changes outside a transaction,
    /// so the plan is still true when its transaction commits.
    planner: Mutex<()>,
    /// Queue length, counted at open and kept current after each commit (sled's `len` is a scan).
    queue_len: AtomicUsize,
}

impl HubStore {
    /// Opens (or creates) the hub's store under `path` (a directory), keeping at most
    /// `cache_bytes` of it cached in memory. Errors clearly if it is locked by another process.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<HubStore, HubStoreError> {
        let db = Reopenable::open(path, cache_bytes, Open::new).map_err(|e| locked(path, e))?;
        let queue_len = AtomicUsize::new(db.get().map_or(0, |o| o.trees.queue.len()));
        let store = HubStore {
            db,
            bodies: Segments::open(&path.join(SEGMENTS), SEGMENT_BYTES)?,
            planner: Mutex::new(()),
            queue_len,
        };
        store.recount_bodies()?;
        Ok(store)
    }

    /// After a disk error: probes the store with a write and, if that fails, opens it again (sled
    /// fails every write after one I/O error until then). After [`Recovery::Reopened`] the queue
    /// holds what was flushed before the failure: the caller schedules it again.
    pub fn recover(&self) -> Result<Recovery, HubStoreError> {
        let _plans = self.lock_planner();
        let recovery = self.db.recover().map_err(|e| locked(self.db.path(), e))?;
        if recovery == Recovery::Reopened {
            let len = self.trees()?.trees.queue.len();
            self.queue_len
                .store(len, std::sync::atomic::Ordering::SeqCst);
            // Back at its last flush, the index may point at bodies it had dropped since, and
            // no longer at bodies appended since.
            self.recount_bodies()?;
        }
        Ok(recovery)
    }

    /// The open database and its trees, for the length of one operation.
    fn trees(&self) -> Result<std::sync::Arc<Open>, HubStoreError> {
        self.db.get().map_err(|reason| HubStoreError::Closed {
            path: self.db.path().to_path_buf(),
            reason,
        })
    }

    /// fsyncs everything written so far. The caller does group commit around this (many writers,
    /// one flush); it may be called from several threads at once.
    ///
    /// Call it regularly even when nothing waits for durability: sled 0.34 reclaims log space
    /// only for flushed writes, so a long unflushed run of transactions grows the files by
    /// hundreds of MB per minute, and under that backlog sled's IO threads have been seen to
    /// deadlock (upstream fix spacejam/sled#1269 is in no 0.34 release).
    pub fn flush(&self) -> Result<(), HubStoreError> {
        self.bodies.sync()?;
        self.trees()?.db.flush()?;
        Ok(())
    }

    /// The body segments' files, size and live bytes (for the disk a hub takes).
    pub fn body_usage(&self) -> SegmentUsage {
        self.bodies.usage()
    }

    /// Serialises planners. The mutex guards no data, so a panic elsewhere cannot leave anything
    /// inconsistent behind it and poisoning is ignored.
    fn lock_planner(&self) -> MutexGuard<'_, ()> {
        self.planner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh id for queue entries, blobs and dumpster sequence numbers. sled never hands out
    /// the same id twice, even across crashes, and no transaction has to serialise on a counter.
    fn next_id(&self) -> Result<u64, HubStoreError> {
        Ok(self.trees()?.db.generate_id()?)
    }
}

/// The database and its trees, as opened (again).
struct Open {
    db: sled::Db,
    trees: tx::Trees,
}

impl Open {
    fn new(db: sled::Db) -> Result<Open, sled::Error> {
        let trees = tx::Trees::open(&db)?;
        Ok(Open { db, trees })
    }
}

impl AsRef<sled::Db> for Open {
    fn as_ref(&self) -> &sled::Db {
        &self.db
    }
}

impl std::ops::Deref for Open {
    type Target = tx::Trees;
    fn deref(&self) -> &tx::Trees {
        &self.trees
    }
}

/// sled's error, told apart when it is another process's lock on the store.
fn locked(path: &Path, e: sled::Error) -> HubStoreError {
    if crate::db::is_locked(&e) {
        HubStoreError::Locked {
            path: path.to_path_buf(),
            source: e,
        }
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests;
