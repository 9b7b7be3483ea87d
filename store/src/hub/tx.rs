//! The trees, the transaction helper, and the transactional record operations shared by the
//! queue, the dumpster and resubmission.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::bodies::BlobRef;
use super::keys::{corrupt, decode, due_key, id_key, sg_prefix, timed_key};
use super::{DumpsterEntry, HubStore, HubStoreError, QueuedMessage};
use crate::segments::BodyAt;

pub(super) const QUEUE: &str = "queue";
pub(super) const DUE: &str = "due";
pub(super) const BLOBS: &str = "blobs";
pub(super) const REFS: &str = "blob_refs";
pub(super) const DUMPSTER: &str = "dumpster";
pub(super) const RECEIVED: &str = "dumpster_received";
pub(super) const STATS: &str = "dumpster_stats";
pub(super) const RESUBMIT: &str = "resubmit";

/// Result inside a transaction closure: our errors abort it, sled's storage errors pass through.
pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<HubStoreError>>;

impl From<HubStoreError> for ConflictableTransactionError<HubStoreError> {
    fn from(e: HubStoreError) -> Self {
        ConflictableTransactionError::Abort(e)
    }
}

/// One tree per kind of record.
pub(super) struct Trees {
    /// queue id → QueuedMessage (JSON).
    pub queue: sled::Tree,
    /// (next_attempt_ms, id) → "".
    pub due: sled::Tree,
    /// (blob id, piece) → body bytes, in pieces (see `crate::pieces`).
    pub blobs: sled::Tree,
    /// blob id → reference count (u64 BE); kept apart so a count change never rewrites the body.
    pub refs: sled::Tree,
    /// (SG, delivered_ms, seq) → DumpsterEntry (JSON): eviction/expiry order and windows.
    pub dumpster: sled::Tree,
    /// (SG, received_ms, seq) → "": the oldest receive time is its first key.
    pub received: sled::Tree,
    /// SG name → SgCounters (JSON).
    pub stats: sled::Tree,
    /// request id → ResubmitRequest (JSON).
    pub resubmit: sled::Tree,
}

impl Trees {
    pub(super) fn open(db: &sled::Db) -> Result<Trees, sled::Error> {
        Ok(Trees {
            queue: db.open_tree(QUEUE)?,
            due: db.open_tree(DUE)?,
            blobs: db.open_tree(BLOBS)?,
            refs: db.open_tree(REFS)?,
            dumpster: db.open_tree(DUMPSTER)?,
            received: db.open_tree(RECEIVED)?,
            stats: db.open_tree(STATS)?,
            resubmit: db.open_tree(RESUBMIT)?,
        })
    }
}

/// The transactional view of `Trees`, handed to transaction closures.
pub(super) struct Tx<'a> {
    pub queue: &'a TransactionalTree,
    pub due: &'a TransactionalTree,
    pub blobs: &'a TransactionalTree,
    pub refs: &'a TransactionalTree,
    pub dumpster: &'a TransactionalTree,
    pub received: &'a TransactionalTree,
    pub stats: &'a TransactionalTree,
    pub resubmit: &'a TransactionalTree,
    /// Bodies whose last reference this run of the transaction dropped; given back to the
    /// segments once it commits.
    pub released: &'a RefCell<Vec<BodyAt>>,
}

impl HubStore {
    /// Runs `f` as one sled transaction over all trees. sled may rerun `f`, so it must only
    /// depend on its inputs and what it reads through `Tx`.
    pub(super) fn transact<R>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<R>,
    ) -> Result<R, HubStoreError> {
        let t = self.trees()?;
        let trees = (
            &t.queue,
            &t.due,
            &t.blobs,
            &t.refs,
            &t.dumpster,
            &t.received,
            &t.stats,
            &t.resubmit,
        );
        let released = RefCell::new(Vec::new());
        let result = trees
            .transaction(|v| {
                // sled may run this again after a conflict: only the last run counts.
                released.borrow_mut().clear();
                f(&Tx {
                    queue: &v.0,
                    due: &v.1,
                    blobs: &v.2,
                    refs: &v.3,
                    dumpster: &v.4,
                    received: &v.5,
                    stats: &v.6,
                    resubmit: &v.7,
                    released: &released,
                })
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => HubStoreError::Sled(e),
            })?;
        for at in released.into_inner() {
            self.bodies.release(&at);
        }
        Ok(result)
    }
}

impl Tx<'_> {
    /// Writes a queued message and, unless it is held, its due index entry.
    pub(super) fn put_message(&self, msg: &QueuedMessage) -> TxResult<()> {
        self.queue.insert(&id_key(msg.id), json(msg)?)?;
        if !msg.is_held() {
            self.due
                .insert(&due_key(msg.next_attempt_ms, msg.id), &[])?;
        }
        Ok(())
    }

    /// Removes a queued message and its due index entry (a held one has none), returning what
    /// was stored.
    pub(super) fn take_message(&self, id: u64) -> TxResult<QueuedMessage> {
        let key = id_key(id);
        let raw = self
            .queue
            .remove(&key)?
            .ok_or(HubStoreError::UnknownMessage(id))?;
        let stored: QueuedMessage = decode(QUEUE, &key, &raw)?;
        self.due.remove(&due_key(stored.next_attempt_ms, id))?;
        Ok(stored)
    }
}

/// Serialises a record for storage.
pub(super) fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, HubStoreError> {
    Ok(serde_json::to_vec(value)?)
}

/// The persisted per-SG counters; the "oldest" statistics are read from the indexes instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SgCounters {
    pub items: u64,
    pub bytes: u64,
    pub evicted: u64,
    pub expired: u64,
    pub too_large: u64,
}

/// Why an entry leaves (or never enters) the dumpster; each has its own counter.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cause {
    Evicted,
    Expired,
    TooLarge,
}

/// Changes to one SG's counters, applied to the stored counters inside the transaction.
#[derive(Debug, Default)]
struct CounterDelta {
    added_items: u64,
    added_bytes: u64,
    removed_items: u64,
    removed_bytes: u64,
    evicted: u64,
    expired: u64,
    too_large: u64,
}

impl CounterDelta {
    fn count(&mut self, cause: Cause) {
        match cause {
            Cause::Evicted => self.evicted += 1,
            Cause::Expired => self.expired += 1,
            Cause::TooLarge => self.too_large += 1,
        }
    }

    fn apply(&self, sg: &str, c: &mut SgCounters) -> Result<(), HubStoreError> {
        let underflow = || {
            corrupt(
                STATS,
                sg.as_bytes(),
                "counters lower than the entries removed",
            )
        };
        c.items = (c.items + self.added_items)
            .checked_sub(self.removed_items)
            .ok_or_else(underflow)?;
        c.bytes = (c.bytes + self.added_bytes)
            .checked_sub(self.removed_bytes)
            .ok_or_else(underflow)?;
        c.evicted += self.evicted;
        c.expired += self.expired;
        c.too_large += self.too_large;
        Ok(())
    }
}

/// A dumpster entry with the sequence number that makes its keys unique.
#[derive(Debug, Clone)]
pub(super) struct StoredEntry {
    pub seq: u64,
    pub entry: DumpsterEntry,
}

impl StoredEntry {
    /// Eviction/expiry/window order within one SG.
    pub(super) fn order(&self) -> (u64, u64) {
        (self.entry.delivered_ms, self.seq)
    }

    pub(super) fn primary_key(&self) -> Vec<u8> {
        let prefix = sg_prefix(&self.entry.storage_group);
        timed_key(&prefix, self.entry.delivered_ms, self.seq)
    }

    fn received_key(&self) -> Vec<u8> {
        let prefix = sg_prefix(&self.entry.storage_group);
        timed_key(&prefix, self.entry.received_ms, self.seq)
    }
}

/// Dumpster and blob-refcount changes worked out with range scans before a transaction, then
/// applied inside it together with the counters they imply.
#[derive(Debug, Default)]
pub(super) struct Plan {
    removals: Vec<StoredEntry>,
    inserts: Vec<StoredEntry>,
    counters: BTreeMap<String, CounterDelta>,
    refs: BTreeMap<u64, i64>,
}

impl Plan {
    /// Removes a stored entry (dropping its blob reference).
    pub(super) fn remove(&mut self, e: StoredEntry, cause: Cause) {
        let c = self.counters_of(&e.entry.storage_group);
        c.removed_items += 1;
        c.removed_bytes += e.entry.size;
        c.count(cause);
        self.add_ref(e.entry.blob, -1);
        self.removals.push(e);
    }

    /// Stores a new entry (taking a blob reference).
    pub(super) fn insert(&mut self, e: StoredEntry) {
        let c = self.counters_of(&e.entry.storage_group);
        c.added_items += 1;
        c.added_bytes += e.entry.size;
        self.add_ref(e.entry.blob, 1);
        self.inserts.push(e);
    }

    /// Counts an entry that is never stored (too large, or evicted by its own insertion).
    pub(super) fn discard(&mut self, sg: &str, cause: Cause) {
        self.counters_of(sg).count(cause);
    }

    /// Adjusts a blob's reference count by `delta`.
    pub(super) fn add_ref(&mut self, blob: u64, delta: i64) {
        *self.refs.entry(blob).or_default() += delta;
    }

    /// Entries this plan evicts (including new ones it never stores).
    pub(super) fn evicted(&self) -> u64 {
        self.counters.values().map(|c| c.evicted).sum()
    }

    fn counters_of(&mut self, sg: &str) -> &mut CounterDelta {
        self.counters.entry(sg.to_string()).or_default()
    }

    /// Applies the plan inside `tx`. A planned removal that is no longer stored means the plan
    /// went stale, which the planner lock rules out; it aborts rather than miscount.
    pub(super) fn apply(&self, tx: &Tx<'_>) -> TxResult<()> {
        for e in &self.removals {
            let key = e.primary_key();
            if tx.dumpster.remove(key.as_slice())?.is_none() {
                return Err(corrupt(DUMPSTER, &key, "planned entry vanished before commit").into());
            }
            tx.received.remove(e.received_key())?;
        }
        for e in &self.inserts {
            tx.dumpster.insert(e.primary_key(), json(&e.entry)?)?;
            tx.received.insert(e.received_key(), &[])?;
        }
        for (sg, delta) in &self.counters {
            let mut counters = read_counters(tx.stats, sg)?;
            delta.apply(sg, &mut counters)?;
            tx.stats.insert(sg.as_bytes(), json(&counters)?)?;
        }
        for (&blob, &delta) in &self.refs {
            adjust_refs(tx, blob, delta)?;
        }
        Ok(())
    }
}

/// Reads one SG's counters inside a transaction (zero if it has none yet).
fn read_counters(stats: &TransactionalTree, sg: &str) -> TxResult<SgCounters> {
    Ok(match stats.get(sg.as_bytes())? {
        Some(raw) => decode(STATS, sg.as_bytes(), &raw)?,
        None => SgCounters::default(),
    })
}

/// Changes a blob's reference count; at zero the blob and its count are deleted.
fn adjust_refs(tx: &Tx<'_>, blob: u64, delta: i64) -> TxResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let key = id_key(blob);
    let raw = tx.refs.get(key)?.ok_or(HubStoreError::UnknownBlob(blob))?;
    let mut stored = BlobRef::decode(&key, &raw)?;
    stored.count = stored
        .count
        .checked_add_signed(delta)
        .ok_or_else(|| corrupt(REFS, &key, "reference count would go below zero"))?;
    if stored.count > 0 {
        tx.refs.insert(&key, stored.encode())?;
        return Ok(());
    }
    tx.refs.remove(&key)?;
    match stored.at {
        Some(at) => tx.released.borrow_mut().push(at),
        None => crate::pieces::remove(tx.blobs, &key)?,
    }
    Ok(())
}
