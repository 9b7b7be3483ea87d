//! The transport dumpster: per-SG entries bounded by size and age, with counters kept in step.
//!
//! Eviction and expiry both remove an SG's first keys in the delivery index, window selection is
//! a range scan of it, and the oldest receive time is the first key of the receive index: every
//! operation costs O(log n) per entry it touches, never a scan of the dumpster.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use super::keys::{corrupt, decode, parse_timed_key, sg_prefix, timed_key};
use super::tx::{Cause, Plan, SgCounters, StoredEntry, DUMPSTER, RECEIVED, STATS};
use super::{
    DumpsterEntry, DumpsterLimits, DumpsterStats, HubStore, HubStoreError, Millis, ResubmitCursor,
};

/// Entries removed per transaction when draining a backlog, so a long-unswept dumpster or a
/// lowered size bound never turns into one huge transaction.
const CHUNK: usize = 256;

impl HubStore {
    /// Stats of one SG in O(log n). Expired entries are swept first (O(log n) each), so they are
    /// never counted. An SG this hub never delivered to has all-zero stats.
    pub fn dumpster_stats(
        &self,
        sg: &str,
        now_ms: Millis,
        limits: DumpsterLimits,
    ) -> Result<DumpsterStats, HubStoreError> {
        let _planning = self.lock_planner();
        self.drain_expired(sg, limits.cutoff(now_ms))?;
        let c = self.counters(sg)?;
        let prefix = sg_prefix(sg);
        Ok(DumpsterStats {
            items: c.items,
            bytes: c.bytes,
            oldest_received_ms: first_time(&self.trees()?.received, RECEIVED, &prefix)?,
            oldest_delivered_ms: first_time(&self.trees()?.dumpster, DUMPSTER, &prefix)?,
            evicted: c.evicted,
            expired: c.expired,
            too_large: c.too_large,
        })
    }

    /// Delivery time of the newest entry of `sg`, expired or not, in O(log n): where a
    /// resubmission window that is left open must end at the latest, also when this hub's clock
    /// has stepped back since.
    pub fn newest_delivered(&self, sg: &str) -> Result<Option<Millis>, HubStoreError> {
        match self
            .trees()?
            .dumpster
            .scan_prefix(sg_prefix(sg))
            .keys()
            .next_back()
        {
            Some(key) => Ok(Some(parse_timed_key(DUMPSTER, &key?)?.0)),
            None => Ok(None),
        }
    }

    /// SGs with a stats record: every SG this hub has kept (or refused) a dumpster entry for.
    pub fn storage_groups(&self) -> Result<Vec<String>, HubStoreError> {
        self.trees()?
            .stats
            .iter()
            .keys()
            .map(|key| {
                let key = key?;
                String::from_utf8(key.to_vec())
                    .map_err(|_| corrupt(STATS, &key, "storage group name is not UTF-8"))
            })
            .collect()
    }

    /// Removes every entry (all SGs) delivered before `now_ms - max_age_ms`. Returns how many.
    pub fn sweep_expired(
        &self,
        now_ms: Millis,
        limits: DumpsterLimits,
    ) -> Result<u64, HubStoreError> {
        let _planning = self.lock_planner();
        let cutoff = limits.cutoff(now_ms);
        let mut swept = 0;
        for sg in self.storage_groups()? {
            swept += self.drain_expired(&sg, cutoff)?;
        }
        Ok(swept)
    }

    /// Entries of `sg` with `low_ms <= delivered_ms <= high_ms`, not expired, in delivery order
    /// (a range scan, O(log n + k)).
    pub fn dumpster_window(
        &self,
        sg: &str,
        low_ms: Millis,
        high_ms: Millis,
        now_ms: Millis,
        limits: DumpsterLimits,
    ) -> Result<Vec<DumpsterEntry>, HubStoreError> {
        let window = Window {
            low_ms: low_ms.max(limits.cutoff(now_ms)),
            high_ms,
        };
        let entries = self.window(sg, window, None, usize::MAX)?;
        Ok(entries.into_iter().map(|e| e.entry).collect())
    }

    /// Up to `limit` entries of `sg` inside `window`, in delivery order, after `after` if given.
    pub(super) fn window(
        &self,
        sg: &str,
        window: Window,
        after: Option<ResubmitCursor>,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, HubStoreError> {
        let prefix = sg_prefix(sg);
        let first = timed_key(&prefix, window.low_ms, 0);
        let last = timed_key(&prefix, window.high_ms, u64::MAX);
        let start = match after.map(|c| timed_key(&prefix, c.delivered_ms, c.seq)) {
            Some(cursor) if cursor >= first => Bound::Excluded(cursor),
            _ => Bound::Included(first),
        };
        let empty = match &start {
            Bound::Excluded(k) => *k >= last,
            Bound::Included(k) => *k > last,
            Bound::Unbounded => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        self.trees()?
            .dumpster
            .range((start, Bound::Included(last)))
            .take(limit)
            .map(stored_entry)
            .collect()
    }

    /// Plans storing `delivered`: entries larger than `max_bytes` are only counted; the others
    /// are inserted, evicting per SG until it fits. Call with the planner lock held.
    pub(super) fn plan_deliveries(
        &self,
        delivered: Vec<DumpsterEntry>,
        max_bytes: u64,
    ) -> Result<Plan, HubStoreError> {
        let mut plan = Plan::default();
        let mut by_sg: BTreeMap<String, Vec<StoredEntry>> = BTreeMap::new();
        for entry in delivered {
            if entry.size > max_bytes {
                plan.discard(&entry.storage_group, Cause::TooLarge);
            } else {
                let seq = self.next_id()?;
                let sg = entry.storage_group.clone();
                by_sg
                    .entry(sg)
                    .or_default()
                    .push(StoredEntry { seq, entry });
            }
        }
        for (sg, new) in by_sg {
            self.plan_insert(&mut plan, &sg, new, max_bytes)?;
        }
        Ok(plan)
    }

    /// Adds `new` entries of `sg` to `plan`, evicting the oldest-delivered until the SG holds at
    /// most `max_bytes`. Old and new entries are merged in delivery order, because a new entry
    /// may carry an older delivery time than entries already kept.
    fn plan_insert(
        &self,
        plan: &mut Plan,
        sg: &str,
        mut new: Vec<StoredEntry>,
        max_bytes: u64,
    ) -> Result<(), HubStoreError> {
        new.sort_by_key(StoredEntry::order);
        let mut new = VecDeque::from(new);
        let mut bytes = self.counters(sg)?.bytes + new.iter().map(|e| e.entry.size).sum::<u64>();
        let mut old = self.trees()?.dumpster.scan_prefix(sg_prefix(sg));
        let mut next_old = old.next().map(stored_entry).transpose()?;
        while bytes > max_bytes {
            let new_is_older = match (&next_old, new.front()) {
                (Some(o), Some(n)) => n.order() < o.order(),
                (None, _) => true,
                (Some(_), None) => false,
            };
            let victim = if new_is_older {
                new.pop_front().map(|e| (e, true))
            } else {
                next_old.take().map(|e| (e, false))
            };
            let Some((victim, is_new)) = victim else {
                tracing::warn!(sg, bytes, "dumpster counters exceed the entries stored");
                break;
            };
            bytes = bytes.saturating_sub(victim.entry.size);
            if is_new {
                plan.discard(sg, Cause::Evicted);
            } else {
                plan.remove(victim, Cause::Evicted);
                next_old = old.next().map(stored_entry).transpose()?;
            }
        }
        new.into_iter().for_each(|e| plan.insert(e));
        Ok(())
    }

    /// Evicts `sg`'s oldest entries until it holds at most `max_bytes` (a no-op unless the
    /// bound was lowered). Call with the planner lock held.
    pub(super) fn trim_to(&self, sg: &str, max_bytes: u64) -> Result<u64, HubStoreError> {
        let mut bytes = self.counters(sg)?.bytes;
        self.drain_head(sg, Cause::Evicted, |e| {
            let over = bytes > max_bytes;
            if over {
                bytes = bytes.saturating_sub(e.entry.size);
            }
            over
        })
    }

    /// Removes `sg`'s entries delivered before `cutoff`. Call with the planner lock held.
    fn drain_expired(&self, sg: &str, cutoff: Millis) -> Result<u64, HubStoreError> {
        self.drain_head(sg, Cause::Expired, |e| e.entry.delivered_ms < cutoff)
    }

    /// Removes `sg`'s oldest-delivered entries while `take` accepts them, `CHUNK` per
    /// transaction. Returns how many were removed.
    fn drain_head(
        &self,
        sg: &str,
        cause: Cause,
        mut take: impl FnMut(&StoredEntry) -> bool,
    ) -> Result<u64, HubStoreError> {
        let prefix = sg_prefix(sg);
        let mut removed = 0;
        loop {
            let mut plan = Plan::default();
            let mut chunk = 0;
            for item in self.trees()?.dumpster.scan_prefix(&prefix).take(CHUNK) {
                let entry = stored_entry(item)?;
                if !take(&entry) {
                    break;
                }
                plan.remove(entry, cause);
                chunk += 1;
            }
            if chunk > 0 {
                self.transact(|tx| plan.apply(tx))?;
                removed += chunk as u64;
                tracing::debug!(sg, chunk, ?cause, "dumpster entries removed");
            }
            if chunk < CHUNK {
                return Ok(removed);
            }
        }
    }

    /// One SG's persisted counters (zero if it has none yet).
    fn counters(&self, sg: &str) -> Result<SgCounters, HubStoreError> {
        match self.trees()?.stats.get(sg.as_bytes())? {
            Some(raw) => decode(STATS, sg.as_bytes(), &raw),
            None => Ok(SgCounters::default()),
        }
    }
}

/// An inclusive range of delivery times.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub low_ms: Millis,
    pub high_ms: Millis,
}

/// Decodes one item of a delivery-index scan.
fn stored_entry(
    item: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<StoredEntry, HubStoreError> {
    let (key, raw) = item?;
    let (_, seq) = parse_timed_key(DUMPSTER, &key)?;
    Ok(StoredEntry {
        seq,
        entry: decode(DUMPSTER, &key, &raw)?,
    })
}

/// The time in the first key under `prefix` of a (SG, time, seq) index: its minimum, O(log n).
fn first_time(
    tree: &sled::Tree,
    name: &'static str,
    prefix: &[u8],
) -> Result<Option<Millis>, HubStoreError> {
    match tree.scan_prefix(prefix).keys().next() {
        Some(key) => Ok(Some(parse_timed_key(name, &key?)?.0)),
        None => Ok(None),
    }
}
